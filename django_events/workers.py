"""The worker registry: which ``consume_events`` processes are alive, and what each is doing.

A worker inserts its :class:`~django_events.models.WorkerRecord` when it starts and marks
it stopped on a clean exit. In between, the worker's heartbeat thread (the one that
renews leases) updates it at most once per ``WORKERS["HEARTBEAT"]`` seconds with the
event in hand, which the loop keeps in memory only: the per-event cost is two attribute
writes, never a query (docs/admin.md, "Workers"). Because the heartbeat thread writes
while a handler runs, a handler that hangs shows as a live worker whose current event
keeps ageing (stuck, past ``STUCK_AFTER``), and a killed worker's row stops moving and
reads as dead after ``DEAD_AFTER`` heartbeats. Every time is the database's.

Rows not seen for ``WORKERS["RETENTION"]`` are deleted whenever a worker starts or stops.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Value
from django.db.models.functions import Now

from .conf import get_settings
from .models import WorkerRecord

if TYPE_CHECKING:
    from .transports.base import Claimed

logger = logging.getLogger("django_events.workers")

LIVE, STUCK, DEAD, STOPPED = "live", "stuck", "dead", "stopped"
LISTED = 500
"""Most rows a listing returns: retention keeps the table small; this bounds a page."""


class Presence:
    """One worker's row: written at start, by the heartbeat thread, and at exit.

    ``handling(claimed)`` is a context manager around each handler call; it only records
    the event and a monotonic time in memory, for the next heartbeat to write.
    """

    def __init__(self, name: str, groups: Sequence[str], transport: str, using: str) -> None:
        conf = get_settings().workers
        self.name = name
        self.groups = list(groups)
        self.transport = transport
        self.using = using
        self.interval = conf.heartbeat
        self.retention = conf.retention
        self.registered = False
        self._current: tuple[Claimed, float] | None = None
        self._due = 0.0

    # -- the loop's side: memory only ------------------------------------------------

    def handling(self, claimed: Claimed) -> Presence:
        self._current = (claimed, time.monotonic())
        return self

    def __enter__(self) -> Presence:
        return self

    def __exit__(self, *exc: object) -> None:
        self._current = None

    # -- writes ----------------------------------------------------------------------

    def register(self) -> None:
        """Insert this worker's row (and prune rows gone silent for ``RETENTION``)."""
        from . import __version__

        self.registered = True
        self._due = time.monotonic() + self.interval * 0.95
        try:
            prune(self.using, self.retention)
            WorkerRecord.objects.using(self.using).create(
                name=self.name,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                service=get_settings().service,
                version=__version__,
                groups=self.groups,
                transport=self.transport,
            )
        except Exception:
            # The heartbeat inserts it later; a worker does not stop for its registry row.
            logger.warning("Could not register worker %s", self.name, exc_info=True)

    def beat(self) -> None:
        """Write last seen and the current event, if a heartbeat interval has passed.

        Called by the heartbeat thread on each wake; errors are logged, never raised.
        """
        now = time.monotonic()
        if not self.registered or now < self._due:
            return
        self._due = now + self.interval * 0.95  # wakes drift a little; 5% keeps one per wake
        current = self._current
        fields: dict[str, Any] = {"last_seen_at": Now()}
        if current is None:
            fields.update(event_id=None, event_type="", event_group="", event_since=None)
        else:
            claimed, since = current
            fields.update(
                event_id=claimed.event_id,
                event_type=claimed.event_type,
                event_group=claimed.group,
                event_since=_ago(time.monotonic() - since),
            )
        try:
            rows = WorkerRecord.objects.using(self.using).filter(name=self.name)
            if not rows.update(**fields):
                self.register()  # pruned, or never inserted (the database was away)
        except Exception:
            logger.warning("Could not write worker %s's heartbeat", self.name, exc_info=True)
            connections[self.using].close()

    def stop(self) -> None:
        """Mark the row stopped: a clean exit, not a death."""
        if not self.registered:
            return
        self.registered = False
        try:
            WorkerRecord.objects.using(self.using).filter(name=self.name).update(
                last_seen_at=Now(),
                stopped_at=Now(),
                event_id=None,
                event_type="",
                event_group="",
                event_since=None,
            )
            prune(self.using, self.retention)
        except Exception:
            logger.warning("Could not mark worker %s stopped", self.name, exc_info=True)


def prune(using: str, retention: float) -> int:
    """Delete the rows of workers not seen for ``retention`` seconds (dead or stopped)."""
    with transaction.atomic(using=using):
        rows = WorkerRecord.objects.using(using).filter(last_seen_at__lt=_ago(retention))
        deleted, _ = rows.delete()
    return deleted


def _ago(seconds: float) -> ExpressionWrapper:
    """The database's now less ``seconds``: every time here is the database's."""
    return ExpressionWrapper(
        Now() - Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )


def _age(column: str) -> ExpressionWrapper:
    return ExpressionWrapper(Now() - F(column), output_field=DurationField())


def listing(using: str = "default") -> list[dict[str, Any]]:
    """Every registered worker with its state, live ones first: one query.

    ``state`` is live, stuck (live, its handler running past ``STUCK_AFTER``), dead
    (silent for ``DEAD_AFTER`` heartbeats) or stopped (exited cleanly).
    """
    conf = get_settings().workers
    rows = (
        WorkerRecord.objects.using(using)
        .annotate(seen_ago=_age("last_seen_at"), busy_for=_age("event_since"))
        .order_by("-last_seen_at")[:LISTED]
    )
    found = [_describe(row, conf.heartbeat * conf.dead_after, conf.stuck_after) for row in rows]
    order = {STUCK: 0, LIVE: 1, DEAD: 2, STOPPED: 3}
    found.sort(key=lambda w: (order[w["state"]], w["host"], w["pid"]))
    return found


def _describe(row: Any, dead_after: float, stuck_after: float) -> dict[str, Any]:
    seen_ago = max(0.0, row.seen_ago.total_seconds())
    busy_for = None if row.busy_for is None else row.busy_for.total_seconds()
    if row.stopped_at is not None:
        state = STOPPED
    elif seen_ago > dead_after:
        state = DEAD
    elif busy_for is not None and busy_for > stuck_after:
        state = STUCK
    else:
        state = LIVE
    current = None
    if row.event_id is not None and busy_for is not None:
        current = {
            "event_id": str(row.event_id),
            "event_type": row.event_type,
            "group": row.event_group,
            "since": row.event_since.isoformat(),
            # A dead worker's event ran for as long as it was seen running it.
            "running_s": round(max(0.0, busy_for - (seen_ago if state == DEAD else 0)), 1),
        }
    return {
        "name": row.name,
        "host": row.host,
        "pid": row.pid,
        "service": row.service,
        "version": row.version,
        "groups": list(row.groups),
        "transport": row.transport,
        "started_at": row.started_at.isoformat(),
        "last_seen_at": row.last_seen_at.isoformat(),
        "last_seen_s": round(seen_ago, 1),
        "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None,
        "state": state,
        "stuck": state == STUCK,
        "current": current,
    }
