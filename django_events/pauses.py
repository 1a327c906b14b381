"""Pause and resume a consumer group, or one event type of it, without a deploy.

A pause is a row of :class:`~django_events.models.Pause`. Workers read the whole (small)
table at most once per poll interval (:class:`PauseSet`), never per event, and leave
what it names unclaimed: a paused group is left out of the claim, a paused type is left
out of the group's type filter, so the transport passes its events over the way it does
for types a worker does not handle. Events keep accumulating meanwhile; deleting the row
(resume) restarts claiming within one poll. On a transport that cannot filter by type
(``filters_types`` False: RabbitMQ) only a whole group's pause applies (docs/admin.md).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from .models import Pause

PERMISSION = "django_events.pause_group"
WHOLE_GROUP = ""


class AlreadyPaused(ValueError):
    """The group (or type) is paused already; the existing pause is kept as it is."""


class NotPaused(LookupError):
    """Nothing to resume: the group (or type) is not paused."""


def pause(
    group: str, *, event_type: str = WHOLE_GROUP, reason: str, by: str, using: str = "default"
) -> Pause:
    """Pause ``group`` (or only ``event_type`` of it); raises :class:`AlreadyPaused`."""
    if not group.strip():
        raise ValueError("A pause needs a group name.")
    if not reason.strip():
        raise ValueError("A pause needs a reason: say why, for whoever resumes it.")
    check_target(group, event_type)
    try:
        with transaction.atomic(using=using):
            row = Pause.objects.using(using).create(
                group=group, event_type=event_type, reason=reason, paused_by=by
            )
    except IntegrityError:
        raise AlreadyPaused(f"{_name(group, event_type)} is already paused.") from None
    row.refresh_from_db(using=using, fields=["paused_at"])
    return row


def resume(group: str, *, event_type: str = WHOLE_GROUP, using: str = "default") -> Pause:
    """Delete the pause of ``group`` (or of ``event_type`` in it) and return what it was;
    raises :class:`NotPaused`."""
    row = Pause.objects.using(using).filter(group=group, event_type=event_type).first()
    if row is None:
        raise NotPaused(f"{_name(group, event_type)} is not paused.")
    pk = row.pk
    row.delete()
    row.pk = pk  # kept, so the admin log can name what was resumed
    return row


def check_target(group: str, event_type: str = WHOLE_GROUP) -> None:
    """Raise ValueError, naming what is known, unless some service declares ``group``
    (and ``event_type`` in it): a pause of a misspelt name would pause nothing."""
    from .conf import get_settings
    from .registry import registry
    from .subscriptions import all_rows
    from .transports import transports

    declared = {(h.group, h.event_type) for h in registry}
    declared |= {(row.group, row.event_type) for row in all_rows(transports["default"])}
    groups = {g for g, _ in declared} | set(get_settings().groups)
    if group not in groups:
        known = ", ".join(sorted(groups)) or "none"
        raise ValueError(f"No consumer group {group!r} is known here (known groups: {known}).")
    if event_type and (group, event_type) not in declared:
        types = ", ".join(sorted(t for g, t in declared if g == group)) or "none"
        raise ValueError(
            f"Group {group!r} does not subscribe to {event_type!r} (it takes: {types})."
        )


def current(using: str = "default") -> list[Pause]:
    """Every pause, by group and type: one query."""
    return list(Pause.objects.using(using).order_by("group", "event_type"))


def describe(row: Pause) -> dict[str, Any]:
    """A pause as ``events_status`` reports it."""
    return {
        "event_type": row.event_type or None,
        "paused_by": row.paused_by,
        "paused_at": row.paused_at.isoformat(),
        "reason": row.reason,
    }


def _name(group: str, event_type: str) -> str:
    return f"Event type {event_type!r} of group {group!r}" if event_type else f"Group {group!r}"


@dataclass(frozen=True)
class Paused:
    """What is paused right now: whole groups, and (group, type) pairs."""

    groups: frozenset[str] = frozenset()
    types: frozenset[tuple[str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.groups or self.types)

    def claimable(self, groups: Sequence[str]) -> list[str]:
        return [group for group in groups if group not in self.groups]

    def filter_types(self, types: Mapping[str, Collection[str]]) -> dict[str, Collection[str]]:
        """``types`` less the paused ones; a paused group keeps no type, so anything of it
        a transport already holds (Redis' last blocking read) is passed over, not run."""
        return {
            group: (
                () if group in self.groups else [t for t in wanted if (group, t) not in self.types]
            )
            for group, wanted in types.items()
        }


NOTHING = Paused()


class PauseSet:
    """The pauses as a worker sees them: read at most once per ``ttl`` seconds (the poll
    interval), so a pause costs one small query per poll, whatever the throughput."""

    def __init__(self, using: str, ttl: float) -> None:
        self.using = using
        self.ttl = ttl
        self._read_at = -float("inf")
        self._paused = NOTHING

    def get(self) -> Paused:
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            rows = Pause.objects.using(self.using).values_list("group", "event_type")
            groups, types = set(), set()
            for group, event_type in rows:
                (types.add((group, event_type)) if event_type else groups.add(group))
            self._paused = Paused(frozenset(groups), frozenset(types))
            self._read_at = now
        return self._paused


def audit(user: Any, row: Pause, action_flag: int, message: str) -> None:
    """Record a pause (ADDITION) or resume (DELETION) by ``user`` in the admin log."""
    from django.contrib.admin.models import LogEntry

    LogEntry.objects.log_actions(
        user_id=user.pk, queryset=[row], action_flag=action_flag, change_message=message
    )
