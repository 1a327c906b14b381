"""Per-minute counts of what each group's workers did, for the admin's charts.

A worker counts handled, failed and dead-lettered events in memory, keyed by (minute,
group): a dictionary update per event, no query. At most once a minute it adds them to
:class:`~django_events.models.MinuteStat` with one upsert that adds to the counts other
workers wrote for the same minute (``handled = handled + excluded.handled``); a worker
that stops writes what it counted since.

The same flush starts the minute's lag sample (pending and oldest pending age per group,
read the way ``events_status`` reads them, unless another worker already took this
minute's), its write and the prune of rows older than ``CHART_RETENTION``, on a daemon
thread with its own connection: a count that walks a long backlog then delays the chart,
never a claim. A sample still running a minute later is not doubled; the worker's stop
waits for it briefly, then leaves it. On SQLite the sample stays on the loop: a second
connection would only queue for the one writer lock the worker needs (docs/admin.md,
"Charts"; docs/internals.md, "Chart counts").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.db import connections

from .conf import get_settings
from .engine import sql

if TYPE_CHECKING:
    from .transports.base import Transport

logger = logging.getLogger("django_events.rollup")

FLUSH_EVERY = 60.0
"""Seconds between one worker's writes: at most one upsert a minute, whatever the rate."""
STOP_WAIT = 2.0
"""Seconds a stopping worker waits for a lag sample in flight: a usual one (milliseconds)
lands and closes its connection; a slow one is left to the process's exit, its statement
to ``CALL_TIMEOUT`` (docs/internals.md, "Chart counts")."""
HANDLED, FAILED, DEAD = 0, 1, 2
_COLUMNS = ("minute", "group", "handled", "failed", "dead", "pending", "oldest_pending_age_s")

Row = tuple[int, str, int, int, int, int | None, float | None]
Lag = dict[str, tuple[int, float | None]]


def minute_of(timestamp: float) -> int:
    """The minute (since the Unix epoch, UTC) that holds ``timestamp``."""
    return int(timestamp // 60)


class Rollup:
    """One worker's counts since its last flush, the flush that adds them up, and the
    lag sample it starts."""

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
        self.sampler: threading.Thread | None = None
        """The lag sample in flight on its own thread, if any."""
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
        """Write the counts, then, with ``sample``, start this minute's lag sample and
        the retention prune (on a thread of their own but on SQLite). A failure is
        logged and the counts are kept for the next flush: the charts must never stop a
        worker."""
        retention = get_settings().chart_retention
        if retention == 0 or not self.groups:
            self.counts.clear()
            return
        counts, self.counts = self.counts, {}
        now = minute_of(self.clock())
        try:
            write(self.transport.database, _rows(counts))
        except Exception:
            logger.warning("Could not write the chart counts; kept for the next try", exc_info=True)
            for key, slot in counts.items():
                kept = self.counts.setdefault(key, [0, 0, 0])
                for outcome in (HANDLED, FAILED, DEAD):
                    kept[outcome] += slot[outcome]
        if sample:
            self._start_sample(now, retention)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a sample in flight; True if none is left."""
        sampler = self.sampler
        if sampler is not None:
            sampler.join(timeout)
            if sampler.is_alive():
                return False
            self.sampler = None
        return True

    def _start_sample(self, minute: int, retention: float | None) -> None:
        """Take the sample on the loop (SQLite) or start its thread, unless the last
        one still runs: a minute's sample is skipped, never doubled."""
        database = self.transport.database
        if connections[database].vendor == "sqlite":
            # One writer at a time: a second connection would wait for the lock this
            # worker's claims hold and make them wait for its write (busy timeout), and
            # an in-memory database is private or fails it at once (docs/internals.md,
            # "Chart counts").
            self._sample_and_prune(minute, retention)
            return
        if not self.wait(0):
            logger.warning("The charts' last lag sample still runs; none taken for this minute")
            return
        self.sampler = threading.Thread(
            target=self._sample_on_own_connection,
            args=(minute, retention),
            name="django-events-lag-sample",
            daemon=True,
        )
        self.sampler.start()

    def _sample_on_own_connection(self, minute: int, retention: float | None) -> None:
        """The sampler thread: Django's connections are per thread, so this one opened
        its own, and closes it (only its own) when done."""
        try:
            self._sample_and_prune(minute, retention)
        finally:
            connections.close_all()

    def _sample_and_prune(self, minute: int, retention: float | None) -> None:
        """This minute's lag sample and its write, then the retention prune; a failure
        is logged, never raised (on the thread it would end it silently)."""
        database = self.transport.database
        try:
            lag = self._lag(minute)
            write(database, [(minute, group, 0, 0, 0, n, age) for group, (n, age) in lag.items()])
            if retention is not None:
                prune(database, minute - int(retention // 60))
        except Exception:
            logger.warning("Could not write the charts' lag sample", exc_info=True)

    def _lag(self, minute: int) -> Lag:
        """Pending count and oldest pending age of this worker's groups that have no
        sample for ``minute`` yet: the first worker of a minute samples, the others read
        one small indexed row set and skip the transport's status query. A transport
        that cannot tell (its broker away) costs the sample, never the counts."""
        try:
            return self._sample(minute)
        except Exception:
            logger.warning("Could not sample the lag for the charts", exc_info=True)
            return {}

    def _sample(self, minute: int) -> Lag:
        from .models import MinuteStat

        database = self.transport.database
        with bounded(database, get_settings().call_timeout):
            sampled = set(
                MinuteStat.objects.using(database)
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


@contextmanager
def bounded(using: str, seconds: float) -> Iterator[None]:
    """PostgreSQL: a transaction whose statements and lock waits the server ends after
    ``seconds``, as the watchdog ends the loop's (``CALL_TIMEOUT``), so that a runaway
    count off the loop does not run on once its sample is given up. SQLite: nothing,
    its statements run in this process and a transaction would take the write lock for
    a read."""
    dialect = sql.dialect(using)
    if not dialect.bounds():
        yield
        return
    bound, params = dialect.bounded_transaction(seconds)
    with sql.bounded_atomic(using), connections[using].cursor() as cursor:
        cursor.execute(f"SELECT {bound}", params)
        yield


def _rows(counts: dict[tuple[int, str], list[int]]) -> list[Row]:
    return [
        (minute, group, handled, failed, dead, None, None)
        for (minute, group), (handled, failed, dead) in counts.items()
    ]


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
