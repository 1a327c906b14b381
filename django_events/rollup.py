"""Per-minute counts of what each group's workers did, for the admin's charts.

A worker counts handled, failed and dead-lettered events in memory, keyed by (minute,
group): a dictionary update per event, no query. At most once a minute it adds them to
:class:`~django_events.models.MinuteStat` with one upsert that adds to the counts other
workers wrote for the same minute (``handled = handled + excluded.handled``), takes a
lag sample (pending and oldest pending age per group, read the way ``events_status``
reads them) unless another worker already took this minute's, and deletes rows older
than ``CHART_RETENTION``. A worker that stops writes what it counted since (docs/admin.md,
"Charts"; docs/internals.md, "Chart counts").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from django.db import connections

from .conf import get_settings
from .engine import sql

if TYPE_CHECKING:
    from .transports.base import Transport

logger = logging.getLogger("django_events.rollup")

FLUSH_EVERY = 60.0
"""Seconds between one worker's writes: at most one upsert a minute, whatever the rate."""
HANDLED, FAILED, DEAD = 0, 1, 2
_COLUMNS = ("minute", "group", "handled", "failed", "dead", "pending", "oldest_pending_age_s")

Row = tuple[int, str, int, int, int, int | None, float | None]


def minute_of(timestamp: float) -> int:
    """The minute (since the Unix epoch, UTC) that holds ``timestamp``."""
    return int(timestamp // 60)


class Rollup:
    """One worker's counts since its last flush, and the flush that adds them up."""

    def __init__(
        self,
        transport: Transport,
        groups: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.groups = list(groups)
        self.clock = clock
        self.counts: dict[tuple[int, str], list[int]] = {}
        self._due = time.monotonic() + FLUSH_EVERY

    def count(self, group: str, outcome: int) -> None:
        """Count one outcome (``HANDLED``, ``FAILED`` or ``DEAD``) for ``group`` now."""
        key = (minute_of(self.clock()), group)
        slot = self.counts.get(key)
        if slot is None:
            slot = self.counts[key] = [0, 0, 0]
        slot[outcome] += 1

    def maybe_flush(self) -> None:
        """Flush if a minute has passed since the last flush (called on every loop)."""
        if time.monotonic() < self._due:
            return
        self._due = time.monotonic() + FLUSH_EVERY
        self.flush()

    def flush(self, *, sample: bool = True) -> None:
        """Write the counts (and, with ``sample``, this minute's lag sample and the
        retention prune). A failure is logged and the counts are kept for the next flush:
        the charts must never stop a worker."""
        retention = get_settings().chart_retention
        if retention == 0 or not self.groups:
            self.counts.clear()
            return
        counts, self.counts = self.counts, {}
        try:
            now = minute_of(self.clock())
            lag = self._lag(now) if sample else {}
            rows: list[Row] = []
            for (minute, group), (handled, failed, dead) in counts.items():
                pending, age = lag.pop(group, (None, None)) if minute == now else (None, None)
                rows.append((minute, group, handled, failed, dead, pending, age))
            rows += [(now, group, 0, 0, 0, pending, age) for group, (pending, age) in lag.items()]
            write(self.transport.database, rows)
            if sample and retention is not None:
                prune(self.transport.database, now - int(retention // 60))
        except Exception:
            logger.warning("Could not write the chart counts; kept for the next try", exc_info=True)
            for key, slot in counts.items():
                kept = self.counts.setdefault(key, [0, 0, 0])
                for outcome in (HANDLED, FAILED, DEAD):
                    kept[outcome] += slot[outcome]

    def _lag(self, minute: int) -> dict[str, tuple[int, float | None]]:
        """Pending count and oldest pending age of this worker's groups that have no
        sample for ``minute`` yet: the first worker of a minute samples, the others read
        one small indexed row set and skip the transport's status query. A transport
        that cannot tell (its broker away) costs the sample, never the counts."""
        try:
            return self._sample(minute)
        except Exception:
            logger.warning("Could not sample the lag for the charts", exc_info=True)
            return {}

    def _sample(self, minute: int) -> dict[str, tuple[int, float | None]]:
        from .models import MinuteStat

        sampled = set(
            MinuteStat.objects.using(self.transport.database)
            .filter(minute=minute, group__in=self.groups, pending__isnull=False)
            .values_list("group", flat=True)
        )
        wanted = [group for group in self.groups if group not in sampled]
        if not wanted:
            return {}
        states = self.transport.status(wanted)
        return {
            group: (states[group].pending, states[group].oldest_pending_age_s)
            for group in wanted
            if group in states
        }


def write(using: str, rows: Sequence[Row]) -> None:
    """Add ``rows`` to the stored minutes in one statement: counts add up, a lag sample
    replaces the one before it, an absent sample (None) keeps it."""
    if not rows:
        return
    connection = connections[using]
    sql.dialect(using)  # refuses another database; PostgreSQL and SQLite both speak this upsert
    table = sql.table(connection, "MinuteStat")
    quote = connection.ops.quote_name
    columns = ", ".join(quote(name) for name in _COLUMNS)
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(rows))
    added = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in _COLUMNS[2:5])
    sampled = "excluded.pending IS NULL"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES {values} "
            f"ON CONFLICT (minute, {quote('group')}) DO UPDATE SET {added}, "
            f"pending = CASE WHEN {sampled} THEN {table}.pending ELSE excluded.pending END, "
            "oldest_pending_age_s = CASE WHEN "
            f"{sampled} THEN {table}.oldest_pending_age_s ELSE excluded.oldest_pending_age_s END",
            [value for row in sorted(rows) for value in row],  # one lock order for all writers
        )


def prune(using: str, before: int) -> int:
    """Delete the minutes before ``before``: a range of the unique index, so cheap."""
    from .models import MinuteStat

    deleted, _ = MinuteStat.objects.using(using).filter(minute__lt=before).delete()
    return deleted
