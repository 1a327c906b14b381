"""Replay: deliver logged events again to one consumer group, in publish order.

Events go through the configured transport's ``publish``, restricted to the one group,
so a replay reaches handlers exactly as live events do (upcasting and the inbox
included). Events the group already handled are left out (its inbox would skip them
anyway) unless ``reprocess`` removes those inbox records first. Events with an open dead
letter for the group are left out too: retrying the dead letter is how they go again. So
are events whose dead letter for the group an operator discarded, unless
``include_discarded``: a plain replay does not undo that decision.

Progress is kept per group and filters in ``ReplayProgress``, one batch at a time, so an
interrupted replay run again with the same filters continues after the last batch sent.
A replay covers the log up to its last position when the replay started; events logged
later reach the group live.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction
from django.db.models import Count, Exists, F, Max, Min, OuterRef, QuerySet
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from .conf import get_settings
from .engine import failpoints, sql
from .exceptions import EventsError
from .models import DeadLetter, EventRecord, InboxRecord, ReplayProgress
from .registry import registry
from .retention import PURGE_LOCK
from .transports import transports
from .transports.base import Outgoing, Transport, as_outgoing


class ReplayError(EventsError, ValueError):
    """The replay cannot run as asked; nothing was written."""


def parse_moment(text: str, option: str = "date") -> dt.datetime:
    """An ISO 8601 date (midnight) or datetime; a naive one is in the current time zone."""
    # Django's parsers, not fromisoformat: Python 3.10's does not read a "Z" suffix.
    try:
        moment = parse_datetime(text.strip())
        if moment is None and (day := parse_date(text.strip())) is not None:
            moment = dt.datetime.combine(day, dt.time())
    except ValueError:
        moment = None
    if moment is None:
        raise ReplayError(
            f"{option} {text!r} is not an ISO date or datetime "
            "(such as 2026-01-31 or 2026-01-31T14:00:00+01:00)."
        ) from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


@dataclass(frozen=True)
class ReplaySpec:
    """Which events to replay to which group. ``types`` empty means all the group handles."""

    group: str
    types: tuple[str, ...] = ()
    key: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    reprocess: bool = False
    include_discarded: bool = False

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "types": sorted(self.types),
            "key": self.key,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "reprocess": self.reprocess,
        }
        if self.include_discarded:  # absent when off: earlier replays keep their progress
            found["include_discarded"] = True
        return found

    @property
    def filters_key(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class ReplayPlan:
    """What a replay would do now, counted in one query."""

    in_range: int
    already_handled: int
    open_dead_letters: int
    to_replay: int
    discarded: int = 0
    include_discarded: bool = False
    resume_after: int | None = None
    replayed_before: int = 0
    oldest_recorded_at: dt.datetime | None = None
    types: tuple[str, ...] = field(default_factory=tuple)


class Replay:
    """One replay of ``spec``: ``plan`` counts what it would send, ``run`` sends it."""

    def __init__(
        self,
        spec: ReplaySpec,
        *,
        transport: Transport | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.transport = transport or transports["default"]
        self.using = self.transport.database
        self.batch_size = batch_size or get_settings().relay_batch_size
        self.spec = self._validated(spec)
        self.subscriptions = [
            sub for sub in registry.subscriptions([spec.group]) if sub[0] in self.spec.types
        ]

    @staticmethod
    def _validated(spec: ReplaySpec) -> ReplaySpec:
        known = registry.groups()
        if spec.group not in known:
            raise ReplayError(
                f"No handler is registered for group {spec.group!r}; "
                f"known groups: {', '.join(known) or 'none'}."
            )
        handled = sorted(t for t, _, _ in registry.subscriptions([spec.group]))
        unknown = sorted(set(spec.types) - set(handled))
        if unknown:
            raise ReplayError(
                f"Group {spec.group!r} has no handler for {unknown[0]!r}; "
                f"it handles {', '.join(handled)}."
            )
        if spec.since and spec.until and spec.until <= spec.since:
            raise ReplayError(
                f"--until ({spec.until.isoformat()}) must be after --since "
                f"({spec.since.isoformat()})."
            )
        types = tuple(sorted(set(spec.types) or handled))
        return dataclasses.replace(spec, types=types)

    # -- what is in range ---------------------------------------------------------------

    def _matching(self) -> QuerySet[EventRecord]:
        spec = self.spec
        events = EventRecord.objects.using(self.using).filter(type__in=spec.types)
        if spec.key is not None:
            events = events.filter(key=spec.key)
        if spec.since:
            events = events.filter(occurred_at__gte=spec.since)
        if spec.until:
            events = events.filter(occurred_at__lt=spec.until)
        return events

    def _handled(self) -> Exists:
        """The group's inbox holds the event: it was handled already."""
        return Exists(
            InboxRecord.objects.using(self.using).filter(
                group_name=self.spec.group, event_id=OuterRef("id")
            )
        )

    def _dead(self) -> Exists:
        """The event has an open dead letter for the group."""
        return Exists(
            DeadLetter.objects.using(self.using).filter(
                group=self.spec.group, state=DeadLetter.State.OPEN, event_id=OuterRef("id")
            )
        )

    def _discarded(self) -> Exists:
        """An operator discarded a dead letter of the event for the group."""
        return Exists(
            DeadLetter.objects.using(self.using).filter(
                group=self.spec.group, state=DeadLetter.State.DISCARDED, event_id=OuterRef("id")
            )
        )

    def _to_send(self, after: int | None, upto: int | None) -> QuerySet[EventRecord]:
        events = self._matching().filter(~self._dead())
        if not self.spec.include_discarded:
            events = events.filter(~self._discarded())
        if not self.spec.reprocess:
            events = events.filter(~self._handled())
        if after is not None:
            events = events.filter(position__gt=after)
        if upto is not None:
            events = events.filter(position__lte=upto)
        return events.order_by("position")

    def _progress(self) -> ReplayProgress | None:
        return (
            ReplayProgress.objects.using(self.using)
            .filter(group_name=self.spec.group, filters_key=self.spec.filters_key)
            .first()
        )

    def _remaining(self, progress: ReplayProgress | None) -> QuerySet[EventRecord]:
        """What is in range, past the progress of an unfinished replay if there is one."""
        events = self._matching()
        if progress is not None and progress.finished_at is None:
            events = events.filter(
                position__gt=progress.last_position or 0,
                position__lte=progress.upto_position,
            )
        return events

    def preview(self, *, fresh: bool = False) -> QuerySet[EventRecord]:
        """The events a run would send now, in order (from the start if ``fresh``)."""
        progress = None if fresh else self._progress()
        if progress is None or progress.finished_at is not None:
            return self._to_send(None, None)
        return self._to_send(progress.last_position, progress.upto_position)

    def plan(self, *, fresh: bool = False) -> ReplayPlan:
        """Count what a run would send now (from the start if ``fresh``); write nothing."""
        progress = None if fresh else self._progress()
        resuming = progress is not None and progress.finished_at is None
        skipped: Any = ~self._dead()
        discarded = self._discarded() & skipped
        if not self.spec.include_discarded:
            skipped = skipped & ~self._discarded()
        counted = self._remaining(progress).aggregate(
            in_range=Count("id"),
            handled=Count("id", filter=self._handled() & skipped),
            dead=Count("id", filter=self._dead()),
            discarded=Count("id", filter=discarded),
            oldest=Min("recorded_at"),
        )
        handled = counted["handled"]
        return ReplayPlan(
            in_range=counted["in_range"],
            already_handled=handled,
            open_dead_letters=counted["dead"],
            discarded=counted["discarded"],
            include_discarded=self.spec.include_discarded,
            to_replay=counted["in_range"]
            - counted["dead"]
            - (0 if self.spec.include_discarded else counted["discarded"])
            - (0 if self.spec.reprocess else handled),
            resume_after=progress.last_position if resuming and progress else None,
            replayed_before=progress.replayed if resuming and progress else 0,
            oldest_recorded_at=counted["oldest"],
            types=self.spec.types,
        )

    # -- sending ------------------------------------------------------------------------

    def _start(self) -> ReplayProgress:
        """The unfinished progress of this replay, or a new one bounded at the log's end."""
        progress = self._progress()
        if progress is not None and progress.finished_at is None:
            return progress
        upto = EventRecord.objects.using(self.using).aggregate(top=Max("position"))["top"] or 0
        if progress is not None:  # done before: this is a new replay of the same range
            progress.delete()
        return ReplayProgress.objects.using(self.using).create(
            group_name=self.spec.group,
            filters_key=self.spec.filters_key,
            filters=self.spec.as_json(),
            upto_position=upto,
        )

    def restart(self) -> None:
        """Forget the progress of this replay: the next run starts from the beginning."""
        ReplayProgress.objects.using(self.using).filter(
            group_name=self.spec.group, filters_key=self.spec.filters_key
        ).delete()

    def run(
        self,
        *,
        limit: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Send up to ``limit`` events (all if None), batch by batch; return how many.

        Each batch is published and its progress saved in one transaction when the
        transport lives in the log's database; otherwise the progress is saved right after
        the publish, so an interruption between the two sends that batch again on the next
        run (the inbox makes the second delivery a no-op, unless ``reprocess``).
        """
        progress = self._start()
        sent = 0
        while limit is None or sent < limit:
            size = self.batch_size if limit is None else min(self.batch_size, limit - sent)
            with self._batch_transaction():
                batch = as_outgoing(
                    self._to_send(progress.last_position, progress.upto_position)[:size]
                )
                if batch:
                    self._send(progress, batch)
            if not batch:
                self._finish(progress)
                break
            failpoints.hit("replay.after_batch")
            sent += len(batch)
            if on_batch:
                on_batch(sent)
            if len(batch) < size:
                self._finish(progress)
                break
        return sent

    @contextmanager
    def _batch_transaction(self) -> Iterator[None]:
        """Read, publish and record a batch in one transaction when the transport lives
        in the log's database. On PostgreSQL it also holds retention's purge lock, shared,
        so no purge removes an event between this read and the commit of its delivery."""
        if not self.transport.joins_outbox_transaction(self.using):
            yield
            return
        with transaction.atomic(using=self.using):
            if not sql.dialect(self.using).one_writer:
                with connections[self.using].cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [PURGE_LOCK])
            yield

    def _send(self, progress: ReplayProgress, batch: list[Outgoing]) -> None:
        if self.spec.reprocess:
            InboxRecord.objects.using(self.using).filter(
                group_name=self.spec.group, event_id__in=[event.event_id for event in batch]
            ).delete()
        # A group that still owes an event gets no second delivery of it (one path).
        self.transport.republish(batch, self.subscriptions)
        with transaction.atomic(using=self.using):
            ReplayProgress.objects.using(self.using).filter(pk=progress.pk).update(
                last_position=batch[-1].position,
                replayed=F("replayed") + len(batch),
                updated_at=Now(),
            )
        progress.last_position = batch[-1].position
        progress.replayed += len(batch)

    def _finish(self, progress: ReplayProgress) -> None:
        ReplayProgress.objects.using(self.using).filter(pk=progress.pk).update(
            finished_at=Now(), updated_at=Now()
        )
