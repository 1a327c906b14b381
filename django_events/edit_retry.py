"""Edit and retry: a dead letter's payload, corrected by an operator, handled as a new event.

For a payload no code change can fix (a typo in an address, a value an upstream bug
produced). Off unless ``DJANGO_EVENTS["ADMIN_EDIT_RETRY"]`` is True, and behind its own
permission, ``django_events.edit_deadletter``, with ``view_payload`` (nobody edits what
they may not read). The edited payload passes the same checks as ``publish()`` (a JSON
object, size, storable values) and the typed declaration of the event's type and version.

The original event stays in the log unchanged. The correction is a new event with a new
id, the original's type, version, key, metadata and time of occurrence, its correlation
id (or its id, if it had none), and the original's id as causation id, delivered to the
dead letter's one group only; the dead letter is marked retried, naming the new event,
and the admin log records the diff (docs/admin.md, "Edit and retry").
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from .conf import get_settings
from .engine.relay import QUARANTINE_GROUP
from .envelope import encode_data
from .exceptions import InvalidEvent
from .models import DeadLetter, EventRecord, OutboxMessage
from .transports import transports
from .transports.log import keep_from_cursors
from .triage import VIEW_PAYLOAD, event_of
from .typed import check_data, declaration
from .validation import check_storable

logger = logging.getLogger("django_events.triage")

PERMISSION = "django_events.edit_deadletter"
SETTING = "ADMIN_EDIT_RETRY"

Change = tuple[str, Any, Any]
"""``(path, old, new)``; a missing value is ``MISSING``."""
MISSING = "(absent)"


@dataclass(frozen=True)
class Edited:
    """What an edit and retry did."""

    dead_letter: DeadLetter
    event_id: uuid.UUID
    changes: list[Change]

    @property
    def message(self) -> str:
        return (
            f"Retried dead letter {self.dead_letter.pk} as new event {self.event_id} "
            f"(group {self.dead_letter.group}); {len(self.changes)} change"
            f"{'s' if len(self.changes) != 1 else ''}."
        )


def enabled() -> bool:
    return get_settings().admin_edit_retry


def allowed(user: Any) -> bool:
    """Whether ``user`` may edit and retry now (the setting is on and they hold both
    ``edit_deadletter`` and ``view_payload``)."""
    return (
        enabled()
        and user is not None
        and user.is_active
        and user.has_perm(PERMISSION)
        and user.has_perm(VIEW_PAYLOAD)
    )


def check_permission(user: Any) -> None:
    if not enabled():
        raise PermissionDenied(f"Edit and retry is off (DJANGO_EVENTS['{SETTING}']).")
    if not allowed(user):
        raise PermissionDenied(f"needs the {PERMISSION} and {VIEW_PAYLOAD} permissions")


def rule(event: EventRecord) -> str:
    """In words, what the edited payload of ``event`` is checked against."""
    cls = declaration(event.type, event.version)
    if cls is None:
        return (
            "No typed declaration of this type and version here: the payload is checked as "
            "a JSON object within the size limit only."
        )
    return f"The payload must fit its typed declaration, {cls.__module__}.{cls.__qualname__}."


def parse(text: str, event_type: str, version: int) -> dict[str, Any]:
    """The edited payload, or ``InvalidEvent`` naming what is wrong (nothing is written).

    Size and nesting are checked before the text is parsed."""
    limit = get_settings().max_payload_bytes
    if len(text.encode("utf-8", "surrogatepass")) > limit * 2 + 1024:  # pretty-printed
        raise InvalidEvent(f"The payload is over the MAX_PAYLOAD_BYTES limit of {limit}.")
    check_storable(text, "data")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"The payload is not JSON: {exc}.") from None
    encode_data(data, limit)  # a JSON object, within the limit, every value storable
    check_data(event_type, version, data)
    return data


def diff(old: Any, new: Any, path: str = "data") -> list[Change]:
    """Every changed leaf between two JSON values, objects compared key by key."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[Change] = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}"
            if key not in new:
                found.append((where, old[key], MISSING))
            elif key not in old:
                found.append((where, MISSING, new[key]))
            else:
                found.extend(diff(old[key], new[key], where))
        return found
    same = type(old) is type(new) and old == new
    return [] if same else [(path, old, new)]


def describe(changes: list[Change]) -> str:
    return "; ".join(f"{path}: {_show(old)} → {_show(new)}" for path, old, new in changes)


def _show(value: Any) -> str:
    return value if value is MISSING else json.dumps(value, ensure_ascii=False)


def edit_and_retry(dead: DeadLetter, text: str, user: Any, reason: str = "") -> Edited:
    """Validate ``text`` as the new payload of ``dead``'s event and deliver it, as a new
    event, to ``dead``'s group. Raises ``PermissionDenied``, ``InvalidEvent`` (the payload,
    or unchanged) or ``LookupError`` (not open, no event to edit); nothing is written then.

    With a transport that keeps its queue in the dead letters' database, everything
    commits together; otherwise the new event is logged and handed to the transport
    first and the dead letter marked right after, so a crash in between leaves it open.
    """
    check_permission(user)
    transport = transports["default"]
    using = transport.database
    together = transport.joins_outbox_transaction(using)
    with transaction.atomic(using=using):
        dead = DeadLetter.objects.using(using).select_for_update().get(pk=dead.pk)
        original = _editable(dead)
        data = parse(text, original.type, original.version)
        changes = diff(original.data, data)
        if not changes:
            raise InvalidEvent("The payload is unchanged; use Retry to deliver it as it is.")
        new_id = _log(original, data, using)
        if together:
            _deliver(transport, dead, new_id)
            _resolve(dead, new_id, changes, user, reason)
    if not together:
        _deliver(transport, dead, new_id)
        with transaction.atomic(using=using):
            dead = DeadLetter.objects.using(using).select_for_update().get(pk=dead.pk)
            _resolve(dead, new_id, changes, user, reason)
    return Edited(dead, new_id, changes)


def _editable(dead: DeadLetter) -> EventRecord:
    if dead.state != str(DeadLetter.State.OPEN):
        raise LookupError(f"Dead letter {dead.pk} is {dead.state}, no longer open.")
    if dead.group == QUARANTINE_GROUP:
        raise LookupError(
            f"Dead letter {dead.pk} is an outbox row the relay set aside; publish the "
            "corrected event instead."
        )
    original = event_of(dead)
    if original is None:
        raise LookupError(f"Event {dead.event_id} is no longer in the event log.")
    return original


def _log(original: EventRecord, data: dict[str, Any], using: str) -> uuid.UUID:
    """Write the new event into the log, at a position from the outbox's sequence (taken
    by a row inserted and deleted in this transaction, so no relay ever sees it), out of
    every group's cursor: it is the dead letter's group's only, which its delivery row
    (``_deliver``) carries it to, whatever the transport (docs/internals.md, "The log
    transport", log rows for one group)."""
    new_id = uuid.uuid4()
    slot = OutboxMessage.objects.using(using).create(
        event_id=new_id, type=original.type, data="{}", occurred_at=timezone.now()
    )
    OutboxMessage.objects.using(using).filter(pk=slot.pk).delete()
    EventRecord.objects.using(using).create(
        id=new_id,
        position=slot.pk,
        type=original.type,
        version=original.version,
        key=original.key,
        data=data,
        metadata=original.metadata,
        occurred_at=original.occurred_at,
        source=original.source,
        correlation_id=original.correlation_id or original.id,
        causation_id=original.id,
    )
    keep_from_cursors(using, [new_id])
    return new_id


def _deliver(transport: Any, dead: DeadLetter, new_id: uuid.UUID) -> None:
    # The original's delivery is given up first: for an ordered handler it holds the key,
    # and the corrected event, later in the key's order, would wait behind it for ever.
    transport.discard(dead.event_id, dead.group)
    transport.redeliver(new_id, dead.group)


def _resolve(
    dead: DeadLetter, new_id: uuid.UUID, changes: list[Change], user: Any, reason: str
) -> None:
    why = f": {reason}" if reason else ""
    dead.state = str(DeadLetter.State.RETRIED)
    dead.resolved_at = timezone.now()
    dead.resolved_by = user.get_username()[:150]
    dead.reason = f"Edited and retried as event {new_id}{why}"
    dead.save(update_fields=["state", "resolved_at", "resolved_by", "reason"])
    if apps.is_installed("django.contrib.admin"):
        from django.contrib.admin.models import CHANGE, LogEntry

        LogEntry.objects.log_actions(
            user_id=user.pk,
            queryset=[dead],
            action_flag=CHANGE,
            change_message=(
                f"Edited and retried as event {new_id} (group {dead.group}){why}. "
                f"{EDIT_MARK} {describe(changes)}"
            ),
        )
    logger.warning(
        "Dead letter %s edited and retried by %s as event %s, group %s; changed %s%s",
        dead.pk,
        dead.resolved_by,
        new_id,
        dead.group,
        ", ".join(path for path, _, _ in changes),  # paths only: values may be personal
        why,
    )


EDIT_MARK = "Changes:"
"""Starts the diff in the admin log entry; the history page masks what follows for
users without ``view_payload``."""
