"""What Redis lost comes back from the event log: markers, checkpoints, re-publishing.

For each group the database keeps a checkpoint (``StreamCheckpoint``): a log position
at or below which every event the group subscribes to is finished, and a token that is
also stored in Redis, as a marker member of the group's owed set (scored +inf, so it
never looks owed). The relay's housekeeping compares them:

* marker missing: Redis restarted empty, was flushed, or evicted the group's keys. The
  group's events after the checkpoint are re-published from the log.
* the group owes more events than its stream and retry set hold: entries were deleted
  (an outside ``XTRIM``/``XDEL``). Re-published the same way.

Re-publishing overlaps what was already handled; the inbox makes that harmless. A few
seconds later the same group is topped up once more from the highest position seen at
recovery, for events a relay had sent to the old Redis but not yet logged.

Across services (docs/services.md, "When Redis loses data"): each service can re-publish
only what is in its own event log, so each does, to every group of the shared
subscriptions, with a checkpoint and a marker of its own per group (several publishers'
markers live side by side in a group's owed set; none touches another's). The owed set
mixes every publisher's log positions, so a checkpoint is held back by the lowest event
the group owes from any of them: too low at worst, never too high. What a service knows
of the subscriptions is the hash; if Redis lost the hash too, each running service puts
its own back (``restore_own``), and a group comes back into every publisher's recovery
as soon as its service declares again, its checkpoint still where it was before the loss.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Max
from django.db.models.functions import Now

from ...stores import FanOut
from ..base import logged_events

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from ...models import EventRecord, StreamCheckpoint
    from .transport import RedisStreamsTransport

logger = logging.getLogger("django_events.transports.redis")

TOP_UP_AFTER = 5.0
"""Seconds after a recovery before the group is topped up once more."""
MARKER = "marker:"
"""The owed set's one member that is not an event: ``marker:<token>``, scored +inf. It
lives and dies with the group's data in Redis (a restart, a flush, an eviction)."""
RECOVERY_LOCK_SECONDS = 300
"""One process re-publishes a group at a time; a crashed one's lock expires after this."""


class Recovery:
    def __init__(self, transport: RedisStreamsTransport) -> None:
        self.transport = transport
        self._top_ups: dict[str, tuple[float, int]] = {}
        self._gaps: dict[str, int] = {}
        self._declared: FanOut = []

    @property
    def _db(self) -> str:
        return self.transport.database

    def refresh(self) -> FanOut:
        """Read the shared subscriptions now (never cached: recovery must see a group as
        soon as its service declares it again), after putting back this service's own if
        the store lost them; together with this process's own handlers."""
        stored = self.restore_own()
        merged: dict[tuple[str, str], bool] = {}
        rows = [(t, g, o) for (_, g, t), o in stored.items()]
        rows += self.transport.context.subscriptions()
        for event_type, group, ordered in rows:
            merged[(event_type, group)] = merged.get((event_type, group), False) or ordered
        self._declared = sorted((t, g, o) for (t, g), o in merged.items())
        return self._declared

    def restore_own(self) -> dict[tuple[str, str, str], bool]:
        """The store's subscriptions, ``{(service, group, type): ordered}``. If it lacks any
        of this service's handlers (Redis restarted empty, was flushed or evicted the
        hash), they are declared again first, as a worker starting declares them: added,
        never retiring anything. A service can restore only its own: what other services
        declared comes back when each of them does the same (or deploys, or starts)."""
        store = self.transport.subscription_store()
        missing = self.transport.context.restore_subscriptions(store)
        if not missing:
            return store.declared()
        logger.warning(
            "Subscriptions of this service were missing from %s (Redis lost data?): %d "
            "declared again from this process's handlers",
            store.hash,
            missing,
        )
        return store.declared()

    def groups(self) -> list[str]:
        """Every group of the shared subscriptions (as of the last ``refresh``)."""
        return sorted({group for _, group, _ in self._declared or self.refresh()})

    def _types(self, group: str) -> list[str]:
        return sorted({t for t, g, _ in self._declared or self.refresh() if g == group})

    def _log_top(self) -> int:
        top = _log(self._db).aggregate(top=Max("position"))["top"]
        return int(top or 0)

    def _rows(self) -> dict[str, StreamCheckpoint]:
        rows = _checkpoints(self._db).filter(namespace=self.transport.prefix)
        return {row.group: row for row in rows}

    def recover_lost(self) -> list[str]:
        """Re-publish this service's events to the groups whose Redis data is gone; return
        their names."""
        transport = self.transport
        client = transport.client
        self.refresh()
        groups = self.groups()
        if not groups:
            return []
        rows = self._rows()
        pipe = client.pipeline(transaction=False)
        for group in groups:
            pipe.zcard(transport.owed(group))
            pipe.zrangebyscore(transport.owed(group), "+inf", "+inf")
            pipe.xlen(transport.stream(group))
            pipe.zcard(transport.delayed(group))
        sizes = pipe.execute(raise_on_error=False)
        recovered = []
        for index, group in enumerate(groups):
            found = sizes[index * 4 : index * 4 + 4]
            if any(isinstance(size, Exception) for size in found):
                transport.repair([group])  # a key of the wrong type: set aside, look again
                continue
            row = rows.get(group)
            if row is None:
                self._first_checkpoint(group)
                continue
            owed, markers, length, delayed = found
            owed -= len(markers)
            gap = owed - (length + delayed)
            if MARKER + row.token not in {_text(m) for m in markers}:
                reason = "its data is gone from Redis (restarted empty, flushed or evicted)"
            elif gap > self._gaps.get(group, 0):
                # Entries were deleted. Each publisher re-publishes its own part once; what
                # is still missing after that is another publisher's to put back.
                reason = f"it owes {owed} events but its stream and retries hold {length + delayed}"
            else:
                if gap <= 0:
                    self._gaps.pop(group, None)
                self._maybe_top_up(group)
                continue
            if self.republish(group, row, reason):
                recovered.append(group)
        return recovered

    def _first_checkpoint(self, group: str) -> None:
        """A group seen for the first time: nothing to recover, mark it in both places."""
        token = uuid.uuid4().hex
        top = self._log_top()  # first: every event logged by now was published by now
        lowest = self.transport.client.zrange(self.transport.owed(group), 0, 0, withscores=True)
        if lowest and math.isfinite(float(lowest[0][1])):
            # The relay may have fanned out to this group (another service's, just
            # declared) before this look: what it still owes is not confirmed.
            top = min(top, int(lowest[0][1]) - 1)
        self.transport.ensure_group(group)
        row, _ = _checkpoints(self._db).get_or_create(
            namespace=self.transport.prefix,
            group=group,
            defaults={"position": top, "token": token},
        )
        self.transport.client.zadd(
            self.transport.owed(group), {MARKER + row.token: "+inf"}, nx=True
        )

    def republish(self, group: str, row: StreamCheckpoint, reason: str) -> bool:
        transport = self.transport
        lock = f"{transport.prefix}:recovering:{group}:{row.token}"  # one per publisher
        if not transport.client.set(lock, transport.consumer, nx=True, ex=RECOVERY_LOCK_SECONDS):
            return False  # another process is at it
        try:
            top = self._log_top()
            transport.ensure_group(group, again=True)
            count = self._publish_since(group, row.position)
            # Only this publisher's marker: other services' markers are theirs to check.
            pipe = transport.client.pipeline(transaction=False)
            pipe.zadd(transport.owed(group), {MARKER + row.token: "+inf"})
            pipe.zcard(transport.owed(group))
            pipe.zcount(transport.owed(group), "+inf", "+inf")
            pipe.xlen(transport.stream(group))
            pipe.zcard(transport.delayed(group))
            _, owed, markers, length, delayed = pipe.execute()
            self._gaps[group] = max(0, owed - markers - length - delayed)
        finally:
            transport.client.delete(lock)
        self._top_ups[group] = (time.monotonic() + TOP_UP_AFTER, top)
        # Nothing of this service's log for that group (another service's group, fed by
        # another publisher): worth a line, not a warning.
        logger.log(
            logging.WARNING if count else logging.INFO,
            "Group %s: %s; re-published %d events after log position %d from the event log",
            group,
            reason,
            count,
            row.position,
        )
        return True

    def _maybe_top_up(self, group: str) -> None:
        due = self._top_ups.get(group)
        if due is None or time.monotonic() < due[0]:
            return
        del self._top_ups[group]
        count = self._publish_since(group, due[1])
        if count:
            logger.info("Group %s: topped up %d events after its recovery", group, count)

    def _publish_since(self, group: str, position: int) -> int:
        types = self._types(group)
        subscriptions = [(t, group, False) for t in types]
        batch = self.transport.context.relay_batch_size
        count = 0
        while True:
            ids = list(
                _log(self._db)
                .filter(position__gt=position, type__in=types)
                .order_by("position")
                .values_list("id", flat=True)[:batch]
            )
            if not ids:
                return count
            events = logged_events(ids, self._db)
            self.transport.publish_to_groups(events, subscriptions, force=True)
            count += len(events)
            position = events[-1].position

    def checkpoint(self) -> None:
        """Write each group's confirmed position: below the lowest one it still owes, or
        the top of the log as read before looking at Redis when it owes nothing."""
        transport = self.transport
        rows = self._rows()
        groups = [group for group in self.groups() if group in rows]
        if not groups:
            return
        top = self._log_top()  # first: every event logged by now was published by now
        script = transport._script("SNAPSHOT")
        pipe = transport.client.pipeline(transaction=False)
        for group in groups:
            script(keys=[transport.owed(group)], args=[MARKER + rows[group].token], client=pipe)
        snapshots = pipe.execute()
        with transaction.atomic(using=self._db):
            for group, (marked, lowest) in zip(groups, snapshots, strict=True):
                if not marked:
                    continue  # lost since the last look: recovery first, next time
                owes = lowest and not _text(lowest[0]).startswith(MARKER)
                score = float(lowest[1]) if owes else 0.0
                if not math.isfinite(score):  # not a log position: a member not ours
                    transport.client.zrem(transport.owed(group), lowest[0])
                    continue
                position = min(top, int(score) - 1) if owes else top
                _checkpoints(self._db).filter(
                    namespace=transport.prefix, group=group, token=rows[group].token
                ).update(position=position, updated_at=Now())


def _text(value: Any) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _log(using: str) -> QuerySet[EventRecord]:
    """The event log; models are imported on use, so importing a transport needs no app
    registry (docs/internals.md)."""
    from ...models import EventRecord

    return EventRecord.objects.using(using)


def _checkpoints(using: str) -> QuerySet[StreamCheckpoint]:
    from ...models import StreamCheckpoint

    return StreamCheckpoint.objects.using(using)
