"""What Redis lost comes back from the event log: markers, checkpoints, re-publishing.

For each group the database keeps a checkpoint (``StreamCheckpoint``): a log position
at or below which every event the group subscribes to is finished, and a token that is
also stored in Redis, as a marker member of the group's owed set (scored +inf, so it
never looks owed). The relay's housekeeping compares them:

* marker missing or different: Redis restarted empty, was flushed, or evicted the
  group's keys. The group's events after the checkpoint are re-published from the log.
* the group owes more events than its stream and retry set hold: entries were deleted
  (an outside ``XTRIM``/``XDEL``). Re-published the same way.

Re-publishing overlaps what was already handled; the inbox makes that harmless. A few
seconds later the same group is topped up once more from the highest position seen at
recovery, for events a relay had sent to the old Redis but not yet logged.
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

from .base import logged_events

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from ..models import EventRecord, StreamCheckpoint
    from .redis import RedisStreamsTransport

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

    @property
    def _db(self) -> str:
        return self.transport.database

    def groups(self) -> list[str]:
        """The groups this deployment handles: it recovers and checkpoints those."""
        return sorted({group for _, group, _ in self.transport.context.subscriptions()})

    def _types(self, group: str) -> list[str]:
        return sorted({t for t, g, _ in self.transport.context.subscriptions() if g == group})

    def _log_top(self) -> int:
        top = _log(self._db).aggregate(top=Max("position"))["top"]
        return int(top or 0)

    def _rows(self) -> dict[str, StreamCheckpoint]:
        rows = _checkpoints(self._db).filter(namespace=self.transport.prefix)
        return {row.group: row for row in rows}

    def recover_lost(self) -> list[str]:
        """Re-publish the groups whose Redis data is gone; return their names."""
        transport = self.transport
        client = transport.client
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
            if [_text(m) for m in markers] != [MARKER + row.token]:
                reason = "its data is gone from Redis (restarted empty, flushed or evicted)"
            elif owed > length + delayed:
                reason = f"it owes {owed} events but its stream and retries hold {length + delayed}"
            else:
                self._maybe_top_up(group)
                continue
            if self.republish(group, row, reason):
                recovered.append(group)
        return recovered

    def _first_checkpoint(self, group: str) -> None:
        """A group seen for the first time: nothing to recover, mark it in both places."""
        token = uuid.uuid4().hex
        top = self._log_top()
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
        lock = f"{transport.prefix}:recovering:{group}"
        if not transport.client.set(lock, transport.consumer, nx=True, ex=RECOVERY_LOCK_SECONDS):
            return False  # another process is at it
        try:
            top = self._log_top()
            transport.ensure_group(group, again=True)
            count = self._publish_since(group, row.position)
            pipe = transport.client.pipeline(transaction=True)
            pipe.zremrangebyscore(transport.owed(group), "+inf", "+inf")
            pipe.zadd(transport.owed(group), {MARKER + row.token: "+inf"})
            pipe.execute()
        finally:
            transport.client.delete(lock)
        self._top_ups[group] = (time.monotonic() + TOP_UP_AFTER, top)
        logger.warning(
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
        groups = self.groups()
        if not groups:
            return
        top = self._log_top()  # first: every event logged by now was published by now
        script = transport._script("SNAPSHOT")
        pipe = transport.client.pipeline(transaction=False)
        for group in groups:
            script(keys=[transport.owed(group)], client=pipe)
        snapshots = pipe.execute()
        with transaction.atomic(using=self._db):
            for group, (marker, lowest) in zip(groups, snapshots, strict=True):
                if marker is None:
                    continue  # lost since the last look: recovery first, next time
                owes = lowest and not _text(lowest[0]).startswith(MARKER)
                score = float(lowest[1]) if owes else 0.0
                if not math.isfinite(score):  # not a log position: a member not ours
                    transport.client.zrem(transport.owed(group), lowest[0])
                    continue
                position = min(top, int(score) - 1) if owes else top
                _checkpoints(self._db).filter(
                    namespace=transport.prefix, group=group, token=_text(marker)[len(MARKER) :]
                ).update(position=position, updated_at=Now())


def _text(value: Any) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _log(using: str) -> QuerySet[EventRecord]:
    """The event log; models are imported on use, so importing a transport needs no app
    registry (docs/internals.md)."""
    from ..models import EventRecord

    return EventRecord.objects.using(using)


def _checkpoints(using: str) -> QuerySet[StreamCheckpoint]:
    from ..models import StreamCheckpoint

    return StreamCheckpoint.objects.using(using)
