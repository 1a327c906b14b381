"""The relay: moves committed outbox rows to the transport and into the event log.

It never tracks progress by a position alone, which would skip a transaction that
commits late (docs/guarantees.md, "2. At least once"): it takes whichever committed rows
exist, oldest first, and deletes them as it moves them. On PostgreSQL the take starts
above the positions it has passed and looks up, by position, each one it saw missing
below them until its writer has ended (``Frontier``; docs/internals.md, "The relay's
frontier"), so its cost does not grow with the rows deleted since the oldest snapshot.
When the transport lives in the same database the move is one short transaction;
otherwise one relay at a time, under a session lock, reads rows from the same frontier,
sends them with no transaction open, then deletes them (on SQLite, rows are leased in
database time instead).

A row that no stage can take (written around ``publish()``) never holds the others back:
it becomes a ``(relay)`` dead letter with its reason (docs/guarantees.md, "What publish
refuses"). A broker's rows are checked before they are sent, so a batch is never sent
twice because of one of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    OperationalError,
    connections,
    transaction,
)
from django.db.models.functions import Now
from django.utils.dateparse import parse_datetime

from .. import instrumentation, logfields, moving, retention
from ..conf import get_settings
from ..envelope import parse_uuid, validate_metadata, validate_type, validate_version
from ..exceptions import InvalidEvent, PublishRefused
from ..stores import DatabaseStore, FanOut
from ..subscriptions import fan_out, store_of, with_own_handlers
from ..text import storable
from ..transports.base import Outgoing, Transport
from ..validation import check_storable, check_text, validate_key
from . import failpoints, sql

logger = logging.getLogger("django_events.relay")

RELAY_LOCK = 0x6465_7665_6E74  # one relay moves at a time per database: keeps publish order
_PRUNE_EVERY = 60.0
_PRUNE_BATCHES = 10  # per kind and pass: retention never holds the relay up for long
UNSUBSCRIBED_WARN_EVERY = 600.0  # seconds between warnings about one unsubscribed type
# The take's frontier on PostgreSQL (docs/internals.md, "The relay's frontier").
GAP_GRACE = 1.0  # seconds after a gap is seen before its writer's horizon is read
MAX_GAPS = 10_000  # more gaps than this and takes start from the lowest position again
RESCAN_EVERY = 60.0  # seconds between full takes from the lowest position
RESCAN_TIMEOUT = 0.25  # seconds a full take may run on the server before it is cancelled
_OUTBOX_FIELDS = (
    "position, event_id, type, key, version, data, metadata, occurred_at, source, "
    "correlation_id, causation_id"
)
_TEXT_FIELDS = (
    "event_id",
    "type",
    "key",
    "data",
    "metadata",
    "occurred_at",
    "source",
    "correlation_id",
    "causation_id",
)
"""An outbox row's text fields, any of which raw SQL can fill with bytes that are not UTF-8
on SQLite (``row_problem``)."""
_OCCURRED_AT = [name.strip() for name in _OUTBOX_FIELDS.split(",")].index("occurred_at")
_LOG_COLUMNS = (
    "id, position, type, key, version, data, metadata, occurred_at, source, "
    "correlation_id, causation_id, recorded_at"
)


class Frontier:
    """Where the relay's take starts on one PostgreSQL database (docs/internals.md, "The
    relay's frontier").

    A deleted outbox row keeps its index entry until no snapshot can see it, so a take that
    starts at the lowest position walks every row taken since the oldest open snapshot
    began: behind an idle transaction that holds one, each take costs more than the last
    (docs/performance.md, H1). The frontier remembers instead where the takes reached:
    every position up to ``top`` has been taken, is a *gap* (a position seen missing while
    a higher one was taken: an insert not yet committed, or rolled back), or is known to be
    in the event log. A take reads the rows above ``top`` and looks each gap up by its
    position, so its cost follows what it moves, not what was deleted before it.

    A gap is looked up at every take until the transaction that wrote it has ended: its
    ``horizon`` is the snapshot's ``xmax`` read at least ``GAP_GRACE`` seconds after the gap
    was seen, and once a take's snapshot has its ``xmin`` at or past it, every transaction
    that could have written the position has ended, so a row there would have been visible
    to that very take. Until ``top`` is known (a new relay), takes start at the lowest
    position, and ``top`` is set only once the same horizon rule proves nothing below it
    can still commit. A full take from the lowest position runs every ``RESCAN_EVERY``
    seconds as well, for rows no rule foresees (a position given explicitly, a sequence
    reset); one that finds a row below ``top`` that was no gap starts the frontier over.
    """

    def __init__(self) -> None:
        self.top: int | None = None
        self.gaps: dict[int, list[Any]] = {}  # position -> [seen at, horizon or None]
        self._settling: list[Any] | None = None  # [candidate top, horizon or None, since]
        self._seen_top: int | None = None
        self.rescanned_at = time.monotonic()

    def full(self, now: float) -> bool:
        """Whether the next take starts at the lowest position."""
        return self.top is None or now - self.rescanned_at >= RESCAN_EVERY

    def reset(self) -> None:
        self.top, self.gaps, self._settling, self._seen_top = None, {}, None, None

    def after_take(
        self, taken: list[int], snapshot: tuple[int, int], *, full: bool, drained: bool, now: float
    ) -> list[int]:
        """Record a take (the positions it moved, its snapshot's ``xmin`` and ``xmax``);
        return the new gaps, for the caller to look up in the event log."""
        xmin, xmax = snapshot
        if full:
            self.rescanned_at = now
        if self.top is None:
            return self._settle(taken, xmin, xmax, drained=drained, now=now)
        top = self.top
        if full and any(p < top and p not in self.gaps for p in taken):
            logger.warning(
                "The relay found outbox rows below positions it had passed (written with an "
                "explicit position, or the sequence was reset): its takes start from the "
                "lowest position again until it has caught up"
            )
            self.reset()
            return []
        for position in taken:
            self.gaps.pop(position, None)
        for position, gap in list(self.gaps.items()):
            if gap[1] is not None and xmin >= gap[1]:
                del self.gaps[position]  # its writer ended before this take, which saw no row
            elif gap[1] is None and now - gap[0] >= GAP_GRACE:
                gap[1] = xmax
        highest = max(taken, default=top)
        if highest <= top:
            return []
        if highest - top - len(taken) + len(self.gaps) > MAX_GAPS:
            self.reset()  # too many to look up one by one: take from the lowest again
            return []
        moved = set(taken)
        new = [p for p in range(top + 1, highest) if p not in moved]
        for position in new:
            self.gaps[position] = [now, None]
        self.top = highest
        return new

    def _settle(
        self, taken: list[int], xmin: int, xmax: int, *, drained: bool, now: float
    ) -> list[int]:
        if taken:
            self._seen_top = max(self._seen_top or 0, max(taken))
        if not drained or self._seen_top is None:
            return []
        if self._settling is None:
            self._settling = [self._seen_top, None, now]
            return []
        candidate, horizon, since = self._settling
        if horizon is None:
            if now - since >= GAP_GRACE:
                self._settling[1] = xmax
            return []
        if xmin < horizon:
            return []
        # Every writer of a position up to the candidate has ended, and this take, which
        # started from the lowest position, left nothing visible behind it.
        self._settling = None
        self.top = candidate
        return self.after_take(taken, (xmin, xmax), full=False, drained=True, now=now)

    def forget(self, positions: Sequence[int]) -> None:
        """Gaps found in the event log: another relay moved them."""
        for position in positions:
            self.gaps.pop(position, None)


@dataclass(frozen=True)
class _Plan:
    """One take on PostgreSQL, planned from the frontier: the rows it reads (``candidates``,
    common table expressions, and ``which``, a condition on ``position``, with ``params``)
    and what moving the frontier afterwards needs (docs/internals.md, "The relay's
    frontier"). The same-database move deletes these rows; a broker's relay reads them,
    sends them, then deletes them."""

    frontier: Frontier | None  # None: one row by its position, which moves no frontier
    full: bool
    now: float
    timeout: float  # seconds the server lets the take run
    candidates: str
    which: str
    params: list[Any]

    def select(
        self, dialect: sql.Dialect, log: str, columns: str, subscriptions: str | None = None
    ) -> tuple[str, list[Any]]:
        """The statement's final ``SELECT``: ``columns`` of each row of ``taken`` (the
        first of them its position), then the snapshot's ``xmin`` and ``xmax``, in one row
        of NULLs when nothing was taken. Then, in the first row only (the others carry
        NULLs): the positions in the event log between the frontier and the highest
        position taken (another relay moved them: not gaps), and the rows of the
        ``subscriptions`` table as JSON text, when it is named (``_fan_out_in_take``).
        In every row, the positions were a copy of the whole list: a relay whose frontier
        had fallen a few thousand positions behind another's got a batch of 1,000 rows
        back with that list 1,000 times (docs/internals.md, "The relay's frontier")."""
        top = self.frontier.top if self.frontier is not None else None
        first = "taken.position = (SELECT min(position) FROM taken)"
        passed, params = "NULL::bigint[]", []
        if top is not None:
            passed = (
                f"CASE WHEN {first} THEN ARRAY(SELECT position FROM {log} WHERE position > %s "
                "AND position < (SELECT max(position) FROM taken)) END"
            )
            params = [top]
        stored = "NULL::text"
        if subscriptions is not None:
            stored = (
                f"CASE WHEN {first} THEN (SELECT "
                'coalesce(json_agg(json_build_array(event_type, "group", ordered)), '
                f"'[]')::text FROM {subscriptions}) END"
            )
        return (
            f"SELECT {columns}, s.*, {passed}, {stored} FROM (SELECT "
            f"{dialect.snapshot_bounds()}) s LEFT JOIN taken ON true ORDER BY 1",
            params,
        )


class Take(NamedTuple):
    """What one take moved: its rows, how many rows left the outbox (set-aside ones too),
    and the subscriptions it read in its own snapshot (None: the relay reads them)."""

    rows: list[Outgoing]
    left: int
    subscriptions: FanOut | None


def _with_snapshot(
    rows: Sequence[Sequence[Any]],
) -> tuple[list[Sequence[Any]], tuple[int, int], list[int] | None, FanOut | None]:
    """Split what ``_Plan.select`` returns: the rows taken, the snapshot bounds, the
    positions passed, and the subscriptions read with them (None when not read)."""
    *_, xmin, xmax, passed, stored = rows[0]
    taken = [row[:-4] for row in rows if row[0] is not None]
    subscriptions = None
    if stored is not None:
        subscriptions = [
            (kind, group, bool(ordered)) for kind, group, ordered in json.loads(stored)
        ]
    return taken, (xmin, xmax), passed, subscriptions


class Relay:
    def __init__(
        self,
        transport: Transport | None = None,
        databases: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> None:
        conf = get_settings()
        self.transport = transport or moving.switch()  # follows a live move (moving.py)
        self.databases = tuple(databases or conf.outbox_databases)
        self.batch_size = batch_size or conf.relay_batch_size
        self._pruned_at = 0.0
        self._purge_resume: dict[tuple[str, str], Any] = {}
        self._unsubscribed_warned: dict[str, float] = {}
        self._frontiers: dict[str, Frontier] = {}
        self.statement_timeout = get_settings().call_timeout / 2
        """Seconds the server lets a take, and the wait for the relay lock, run before it
        cancels them (half of ``CALL_TIMEOUT``: the server ends the statement, and with it
        the lock, well before the watchdog cuts the connection)."""

    def run_once(self) -> int:
        """Move everything committed so far; return how many events moved."""
        moved = 0
        for using in self.databases:
            while True:
                started = time.time_ns()
                count = self.relay_batch(using)
                instrumentation.relayed(using, count, started)
                moved += count
                if count < self.batch_size:
                    break
        self._maybe_prune()
        self.transport.housekeeping()
        return moved

    def relay_batch(self, using: str) -> int:
        """Move one batch; return how many rows left the outbox.

        A row that cannot be moved because of what it holds (the shared validation, the
        database or the transport refuses it) is set aside as a ``(relay)`` dead letter
        with its reason, and the rest move on in position order: no row is retried
        forever, and none holds back the events behind it.
        """
        set_aside = 0
        while True:
            try:
                return set_aside + self._relay_batch(using)
            except OperationalError as exc:
                if not sql.dialect(using).timed_out(exc):
                    raise
                # The server ended the take or the wait for the lock: nothing is held, and
                # the next batch tries again (docs/internals.md, "The relay's frontier").
                logger.warning("The relay's take was cancelled on the server: %s", exc)
                if frontier := self._frontiers.get(using):
                    frontier.rescanned_at = time.monotonic()  # a full take waits its turn
                return set_aside
            except (DataError, IntegrityError) as exc:
                found = self._after_refusal(using, exc)
                if not found:
                    raise
                set_aside += found

    def _subscriptions(
        self, rows: Sequence[Outgoing], stored: FanOut | None = None
    ) -> list[tuple[str, str, bool]]:
        """Read after the rows were taken (in the same transaction, for the database
        transport), or by the take itself (``stored``): every subscription declared before
        these events committed is in it. None is needed where the broker fans out itself
        (``routes_itself``)."""
        if self.transport.routes_itself or not rows:
            return []
        if stored is not None:
            return with_own_handlers(stored)
        return fan_out(self.transport)

    def _fan_out_in_take(self, using: str) -> str | None:
        """The subscription table the take reads with its rows, in its own snapshot: one
        round trip less per batch (docs/internals.md, "The relay's frontier"). None where
        the subscriptions live elsewhere, are cached (``SUBSCRIPTIONS_CACHE``) or unneeded."""
        transport = self.transport
        if transport.routes_itself or not transport.shares_subscriptions:
            return None
        if get_settings().subscriptions_cache > 0:
            return None
        store = store_of(transport)
        if not isinstance(store, DatabaseStore) or store.using != using:
            return None
        return sql.table(connections[using], "Subscription")

    def _relay_batch(self, using: str) -> int:
        if self.transport.joins_outbox_transaction(using):
            with sql.bounded_atomic(using):
                rows, left, stored = self._take(using)
                subscriptions = self._subscriptions(rows, stored)
                self._publish_logged(rows, subscriptions)
                if rows:
                    failpoints.hit("relay.after_take")
            self._warn_unsubscribed(rows, subscriptions)
            return left
        if isinstance(sql.dialect(using), sql.PostgreSQL):  # a lock, not one writer
            return self._send_under_lock(using)
        taken = self._lease(using)
        self._send(using, taken)
        return len(taken)

    def _publish_logged(
        self, rows: Sequence[Outgoing], subscriptions: list[tuple[str, str, bool]]
    ) -> None:
        """Hand rows just moved into the log, in the same transaction, to the transport."""
        if self.transport.reads_log:  # every group's cursor reads the log itself
            self.transport.logged(rows)
        else:
            self.transport.publish(rows, subscriptions)

    def _warn_unsubscribed(
        self, rows: Sequence[Outgoing], subscriptions: list[tuple[str, str, bool]]
    ) -> None:
        """Warn when an event reaches no group (a typo in a type, or a handler not
        imported): it is kept in the event log, but no handler will see it. Once per
        type every ``UNSUBSCRIBED_WARN_EVERY`` seconds, so a busy type does not flood.
        Not for a broker that fans out itself: only it knows who subscribes."""
        if not rows or self.transport.routes_itself:
            return
        subscribed = {event_type for event_type, _, _ in subscriptions}
        now = time.monotonic()
        for event_type in sorted({row.type for row in rows} - subscribed):
            warned = self._unsubscribed_warned.get(event_type)
            if warned is not None and now - warned < UNSUBSCRIBED_WARN_EVERY:
                continue
            self._unsubscribed_warned[event_type] = now
            logger.warning(
                "Relayed %s events, to which no group subscribes: they are in the event log, "
                "but no handler sees them (next warning for this type in %.0f minutes at "
                "the earliest)",
                event_type,
                UNSUBSCRIBED_WARN_EVERY / 60,
                extra=logfields.for_service(event_type=event_type),
            )

    def _send_under_lock(self, using: str) -> int:
        """One relay at a time sends, holding a session lock instead of leasing rows: no
        row is written before the send, and a relay that dies releases the lock with its
        connection. The rows are read from the frontier, in a read the server bounds, and
        the frontier moves once they have left the outbox (docs/internals.md, "The relay's
        frontier")."""
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [RELAY_LOCK])
            if not cursor.fetchone()[0]:
                return 0  # another relay is sending; it drains what is here
            try:
                plan = self._plan(using, lock="")
                bound, bound_params = sql.dialect(using).bounded_transaction(plan.timeout)
                with sql.bounded_atomic(using):
                    cursor.execute(f"SELECT {bound}", bound_params)
                    taken, snapshot, passed = self._read(cursor, using, plan)
                self._send(using, taken)
                # Sent and logged, or set aside: every row read has left the outbox.
                self._advance(using, plan, [row.position for row, _ in taken], snapshot, passed)
            finally:
                with contextlib.suppress(DatabaseError):  # a lost connection lost the lock too
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [RELAY_LOCK])
        return len(taken)

    def _send(self, using: str, taken: list[tuple[Outgoing, bool]]) -> None:
        """Send to a transport outside the database: every row is checked first and a bad
        one set aside, so a send never fails on a row's content; what the transport still
        refuses is set aside after the others went; and what was sent is never sent
        again, even if the event log refuses one row of it."""
        rows = self._screen(using, taken)
        if not rows:
            return
        subscriptions = self._subscriptions(rows)
        try:
            if self.transport.routes_itself:
                self.transport.publish_to_all(rows)
            else:
                self.transport.publish(rows, subscriptions)
        except PublishRefused as exc:
            set_aside(
                using,
                [
                    (
                        row,
                        "PublishRefused",
                        f"the transport refused it: {exc.refused[row.position]}",
                    )
                    for row in rows
                    if row.position in exc.refused
                ],
            )
            rows = [row for row in rows if row.position not in exc.refused]
        failpoints.hit("relay.after_publish")
        try:
            with transaction.atomic(using=using):
                self._complete(using, rows)
        except (DataError, IntegrityError):
            for row in rows:
                try:
                    with transaction.atomic(using=using):
                        self._complete(using, [row])
                except (DataError, IntegrityError) as exc:
                    why = f"it was sent, but the event log refused it: {exc}"
                    set_aside(using, [(row, type(exc).__name__, why)])
        self._warn_unsubscribed(rows, subscriptions)

    def _screen(self, using: str, taken: list[tuple[Outgoing, bool]]) -> list[Outgoing]:
        """The rows that pass the shared validation; the others are set aside."""
        bad = screen(taken, get_settings().max_payload_bytes * 2)
        if not bad:
            return [row for row, _ in taken]
        set_aside(using, bad)
        refused = {row.position for row, _, _ in bad}
        return [row for row, _ in taken if row.position not in refused]

    def _after_refusal(self, using: str, exc: Exception) -> int:
        """The database refused a batch: set aside the rows the shared validation refuses;
        if it refuses none, move the rows one at a time, each in its own transaction, and
        set aside the one the database refuses. Returns how many rows left the outbox."""
        taken = self._peek(using)
        bad = screen(taken, get_settings().max_payload_bytes * 2)
        if bad:
            set_aside(using, bad)
            return len(bad)
        if not taken or not self.transport.joins_outbox_transaction(using):
            return 0
        logger.warning("The relay's batch failed (%s); moving its rows one at a time", exc)
        for row, _ in taken:
            try:
                with sql.bounded_atomic(using):
                    moved, _, stored = self._take(using, row.position)
                    self._publish_logged(moved, self._subscriptions(moved, stored))
            except (DataError, IntegrityError) as refused:
                why = f"the database refused it: {refused}"
                set_aside(using, [(row, type(refused).__name__, why)])
        return len(taken)

    def _peek(self, using: str) -> list[tuple[Outgoing, bool]]:
        """The rows the next take reads, left in place."""
        connection = connections[using]
        with connection.cursor() as cursor:
            if isinstance(sql.dialect(using), sql.PostgreSQL):
                return self._read(cursor, using, self._plan(using, lock=""))[0]
            outbox = sql.table(connection, "OutboxMessage")
            log = sql.table(connection, "EventRecord")
            with sql.lenient_text(using):
                cursor.execute(
                    f"SELECT {_OUTBOX_FIELDS}, {_logged(outbox, log)} FROM {outbox} "
                    "ORDER BY position LIMIT %s",
                    [self.batch_size],
                )
                return _taken(cursor.fetchall())

    # -- the frontier's take on PostgreSQL ----------------------------------------------

    def _plan(self, using: str, *, lock: str) -> _Plan:
        """Where the next batch is taken from: above the frontier and its gaps, or from the
        lowest position while the frontier is not known and once every ``RESCAN_EVERY``
        seconds. ``lock``: appended to each row selection (the same-database move locks
        what it deletes; a broker's read locks nothing)."""
        outbox = sql.table(connections[using], "OutboxMessage")
        frontier = self._frontiers.setdefault(using, Frontier())
        now = time.monotonic()
        top = frontier.top
        if top is None or frontier.full(now):
            timeout = RESCAN_TIMEOUT if top is not None else self.statement_timeout
            which = f"position IN (SELECT position FROM {outbox} ORDER BY position LIMIT %s{lock})"
            return _Plan(frontier, True, now, timeout, "", which, [self.batch_size])
        candidates = (
            f"g AS (SELECT position FROM {outbox} WHERE position = ANY(%s::bigint[]){lock}), "
            f"f AS (SELECT position FROM {outbox} WHERE position > %s ORDER BY position "
            f"LIMIT %s{lock}), "
        )
        which = sql.dialect(using).in_query(
            "position", "SELECT position FROM g UNION ALL SELECT position FROM f"
        )
        params = [sorted(frontier.gaps), top, self.batch_size]
        return _Plan(frontier, False, now, self.statement_timeout, candidates, which, params)

    def _read(
        self, cursor: Any, using: str, plan: _Plan
    ) -> tuple[list[tuple[Outgoing, bool]], tuple[int, int], list[int] | None]:
        """Read, without moving, the rows ``plan`` takes (with their ``_logged`` column),
        the statement's snapshot bounds, and the positions other relays passed."""
        connection = connections[using]
        dialect = sql.dialect(using)
        outbox = sql.table(connection, "OutboxMessage")
        log = sql.table(connection, "EventRecord")
        select, params = plan.select(dialect, log, "taken.*")
        # The time as text: one psycopg cannot convert (after year 9999, infinity) failed
        # the whole fetch, at every pass (docs/guarantees.md, "What publish refuses").
        fields = _OUTBOX_FIELDS.replace(
            "occurred_at,", f"{dialect.as_text('occurred_at')} AS occurred_at,"
        )
        cursor.execute(
            f"WITH {plan.candidates}taken AS (SELECT {fields}, {_logged(outbox, log)} "
            f"FROM {outbox} WHERE {plan.which}) {select}",
            [*plan.params, *params],
        )
        rows, snapshot, passed, _ = _with_snapshot(cursor.fetchall())
        return _taken([_with_time(row) for row in rows]), snapshot, passed

    def _advance(
        self,
        using: str,
        plan: _Plan,
        positions: list[int],
        snapshot: tuple[int, int],
        passed: list[int] | None,
    ) -> None:
        """Move the frontier past a take whose rows have all left the outbox; look its new
        gaps up in the event log when the take could not (``passed`` is None)."""
        frontier = plan.frontier
        if frontier is None:
            return
        from_gaps = sum(1 for p in positions if p in frontier.gaps)
        drained = len(positions) - from_gaps < self.batch_size
        new = frontier.after_take(
            positions, snapshot, full=plan.full, drained=drained, now=plan.now
        )
        if not new:
            return
        if passed is not None:
            frontier.forget(passed)
            return
        log = sql.table(connections[using], "EventRecord")
        with contextlib.suppress(DatabaseError), connections[using].cursor() as lookup:
            lookup.execute(f"SELECT position FROM {log} WHERE position = ANY(%s::bigint[])", [new])
            frontier.forget([row[0] for row in lookup.fetchall()])

    # -- same-database move -------------------------------------------------------------

    def _take_postgresql(self, using: str, position: int | None) -> Take:
        """The take on PostgreSQL: one statement, bounded on the server, that starts from
        the frontier when it is known (docs/internals.md, "The relay's frontier")."""
        dialect = sql.dialect(using)
        connection = connections[using]
        outbox = sql.table(connection, "OutboxMessage")
        log = sql.table(connection, "EventRecord")
        if position is None:
            plan = self._plan(using, lock=dialect.skip_locked)
        else:
            now, timeout = time.monotonic(), self.statement_timeout
            plan = _Plan(None, True, now, timeout, "", "position = %s", [position])
        bound, bound_params = dialect.bounded_transaction(plan.timeout)
        select, params = plan.select(
            dialect,
            log,
            "taken.position, taken.event_id, taken.type, taken.key",
            self._fan_out_in_take(using),
        )
        # ``txid`` (the column's default, the transaction's id) only where cursors read
        # the log; NULL, in no window and outside the log's partial txid index, where
        # delivery rows carry the events (docs/internals.md, "Log rows outside the cursors").
        txid = "pg_current_xact_id()" if self.transport.reads_log else "NULL"
        with sql.cursor(connection, prepared=True) as cursor:
            cursor.execute(
                f"SELECT {bound}, pg_advisory_xact_lock(%s), {sql.RELAXED_COMMIT}",
                [*bound_params, RELAY_LOCK],
            )
            cursor.execute(
                f"WITH {plan.candidates}taken AS (DELETE FROM {outbox} WHERE {plan.which} "
                f"RETURNING {_OUTBOX_FIELDS}), "
                "parsed AS MATERIALIZED (SELECT *, data::jsonb AS d, "
                "COALESCE(NULLIF(metadata, ''), '{}')::jsonb AS m FROM taken), "
                f"logged AS (INSERT INTO {log} ({_LOG_COLUMNS}, txid) SELECT event_id, "
                "position, type, key, version, CASE WHEN jsonb_typeof(d) = 'object' THEN d END, "
                "CASE WHEN jsonb_typeof(m) = 'object' THEN m END, "
                "occurred_at, source, correlation_id, causation_id, statement_timestamp(), "
                f"{txid} FROM parsed) {select}",
                [*plan.params, *params],
            )
            rows, snapshot, passed, stored = _with_snapshot(cursor.fetchall())
        moved = [Outgoing(*row) for row in rows]
        positions = [row.position for row in moved]
        # Only a committed take moves the frontier: a rolled-back one left its rows.
        transaction.on_commit(
            lambda: self._advance(using, plan, positions, snapshot, passed), using=using
        )
        return Take(moved, len(moved), stored)

    def _take(self, using: str, position: int | None = None) -> Take:
        """Move the next batch (or the row at ``position``) into the event log; return the
        rows moved, how many rows left the outbox (those set aside count too), and the
        subscriptions when the take read them.

        On PostgreSQL the rows never leave the database: jsonb refuses what cannot be
        stored, and data or metadata that is not a JSON object becomes NULL, which the log
        refuses; either fails the batch, and ``_after_refusal`` finds the row. On SQLite,
        which stores JSON as text, the rows are checked here as they are moved."""
        dialect = sql.dialect(using)
        if isinstance(dialect, sql.PostgreSQL):
            return self._take_postgresql(using, position)
        connection = connections[using]
        outbox = sql.table(connection, "OutboxMessage")
        log = sql.table(connection, "EventRecord")
        if position is None:
            which = f"position IN (SELECT position FROM {outbox} ORDER BY position LIMIT %s)"
            params: list[Any] = [self.batch_size]
        else:
            which, params = "position = %s", [position]
        # Text that is not UTF-8 (written by raw SQL) sets its own row aside (``row_problem``)
        # rather than failing the read of every batch that holds it.
        with connection.cursor() as cursor, sql.lenient_text(using):
            cursor.execute(f"DELETE FROM {outbox} WHERE {which} RETURNING {_OUTBOX_FIELDS}", params)
            taken = _marked(cursor, dialect, log, cursor.fetchall())
            left = len(taken)
            bad = screen(taken, get_settings().max_payload_bytes * 2)
            if bad:
                set_aside(using, bad, removed=True)
                refused = {row.position for row, _, _ in bad}
                taken = [(row, logged) for row, logged in taken if row.position not in refused]
            rows = [row for row, _ in taken]
            reads_log = self.transport.reads_log
            if rows and reads_log:
                rows = _repositioned(using, rows)
            if rows:
                # Where delivery rows carry the events, each row's rowid is minus its
                # position, which the cursors skip (docs/internals.md, "Log rows outside
                # the cursors"); where cursors read the log, the next rowid.
                cursor.executemany(
                    f"INSERT INTO {log} (rowid, {_LOG_COLUMNS}) VALUES "
                    f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {dialect.now()})",
                    [
                        (
                            None if reads_log else -r.position,
                            dialect.uuid_value(r.event_id),
                            r.position,
                            r.type,
                            r.key,
                            r.version,
                            r.data,
                            r.metadata or "{}",
                            r.occurred_at,
                            r.source,
                            r.correlation_id,
                            r.causation_id,
                        )
                        for r in rows
                    ],
                )
        moved = [Outgoing(row.position, row.event_id, row.type, row.key) for row in rows]
        return Take(moved, left, None)

    # -- leased move to an external transport -------------------------------------------

    def _lease(self, using: str) -> list[tuple[Outgoing, bool]]:
        connection = connections[using]
        dialect = sql.dialect(using)
        outbox = sql.table(connection, "OutboxMessage")
        log = sql.table(connection, "EventRecord")
        lock = dialect.skip_locked
        with connection.cursor() as cursor, sql.lenient_text(using):
            cursor.execute(
                f"UPDATE {outbox} SET claimed_until = {dialect.now_plus()} WHERE position IN "
                f"(SELECT position FROM {outbox} WHERE claimed_until IS NULL OR claimed_until < "
                f"{dialect.now()} ORDER BY position LIMIT %s{lock}) "
                f"RETURNING {_OUTBOX_FIELDS}",
                [dialect.seconds(get_settings().lease), self.batch_size],
            )
            return _marked(cursor, dialect, log, cursor.fetchall())

    def _complete(self, using: str, rows: Sequence[Outgoing]) -> None:
        connection = connections[using]
        dialect = sql.dialect(using)
        outbox = sql.table(connection, "OutboxMessage")
        log = sql.table(connection, "EventRecord")
        positions = [row.position for row in rows]
        postgresql = isinstance(dialect, sql.PostgreSQL)
        data = "data::jsonb" if postgresql else "data"
        metadata = "COALESCE(NULLIF(metadata, ''), '{}')" + ("::jsonb" if postgresql else "")
        # Logged outside every log-transport cursor (``txid`` NULL; on SQLite the rowid
        # minus the position, as ``log.keep_from_cursors`` writes them): this transport
        # delivered them, and during a move out of the log transport its cursors must not
        # hand them out again (docs/moving.md, "Out of the log transport").
        with connection.cursor() as cursor:
            if postgresql:
                cursor.execute(
                    f"WITH moved AS (DELETE FROM {outbox} WHERE position = ANY(%s) "
                    f"RETURNING {_OUTBOX_FIELDS}) INSERT INTO {log} ({_LOG_COLUMNS}, txid) "
                    f"SELECT event_id, position, type, key, version, {data}, {metadata}, "
                    "occurred_at, source, correlation_id, causation_id, statement_timestamp(), "
                    "NULL FROM moved ON CONFLICT DO NOTHING",
                    [positions],
                )
                return
            cursor.execute(
                f"INSERT INTO {log} (rowid, {_LOG_COLUMNS}) SELECT -position, event_id, "
                f"position, type, key, version, {data}, {metadata}, occurred_at, source, "
                f"correlation_id, causation_id, {dialect.now()} FROM {outbox} "
                f"WHERE position IN ({sql.in_list(len(positions))}) "
                "ON CONFLICT DO NOTHING",
                positions,
            )
            cursor.execute(
                f"DELETE FROM {outbox} WHERE position IN ({sql.in_list(len(positions))})",
                positions,
            )

    # -- retention ----------------------------------------------------------------------

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        if any(seconds is not None for seconds in retention.configured().values()):
            retention.purge_expired(
                [*self.databases, self.transport.database],
                max_batches=_PRUNE_BATCHES,
                resume=self._purge_resume,
            )


def _repositioned(using: str, rows: list[Outgoing]) -> list[Outgoing]:
    """SQLite, for a transport whose cursors read the log: the rows with new positions,
    drawn as ``publish()`` draws them. An outbox row keeps the position it took when it
    was written, but ``publish()`` may have logged later events above it since, which a
    group's cursor, a position on SQLite, has passed (docs/internals.md, "The log
    transport on SQLite")."""
    from ..transports.log import draw_positions

    first = draw_positions(using, len(rows))
    return [replace(row, position=first + n) for n, row in enumerate(rows)]


QUARANTINE_GROUP = "(relay)"
"""The dead letters of outbox rows the relay could not move (not a real consumer group)."""


def _logged(outbox: str, log: str) -> str:
    """A column saying whether the row's event id is in the log already: a row written
    around ``publish()`` with a relayed event's id, to be set aside before it is sent."""
    return f"EXISTS (SELECT 1 FROM {log} e WHERE e.id = {outbox}.event_id)"


def _marked(
    cursor: Any, dialect: sql.Dialect, log: str, rows: Sequence[Sequence[Any]]
) -> list[tuple[Outgoing, bool]]:
    """Rows taken without their ``_logged`` column, marked by one lookup in the log's
    index. SQLite cannot use an index for a subquery in ``RETURNING``: each row's
    ``_logged`` there scanned the whole log, so a take cost grew with the log
    (docs/internals.md, "The relay on SQLite")."""
    if not rows:
        return []
    ids = list({row[1] for row in rows})
    condition, params = dialect.in_values("id", ids)
    cursor.execute(f"SELECT id FROM {log} WHERE {condition}", params)
    logged = {found for (found,) in cursor.fetchall()}
    return _taken([(*row, row[1] in logged) for row in rows])


def _taken(rows: Sequence[Sequence[Any]]) -> list[tuple[Outgoing, bool]]:
    """Rows read with their ``_logged`` column, in position order, each event id a
    ``uuid.UUID`` as ``Outgoing`` declares (SQLite's driver reads it as text)."""
    taken = [(Outgoing(row[0], _uuid_or_raw(row[1]), *row[2:-1]), bool(row[-1])) for row in rows]
    return sorted(taken, key=lambda item: item[0].position)


def _with_time(row: Sequence[Any]) -> Sequence[Any]:
    """A row whose ``occurred_at`` was read as text (``Dialect.as_text``), with it as an
    aware datetime; a time Python cannot hold either stays text, which the transport's
    envelope carries as it is and the consumer's decoder names (``wire_time``)."""
    index = _OCCURRED_AT
    try:
        value = parse_datetime(row[index])  # any digits of a second (3.10's fromisoformat not)
    except (TypeError, ValueError):
        return row
    return row if value is None else (*row[:index], value, *row[index + 1 :])


def _uuid_or_raw(value: Any) -> Any:
    """``value`` as a ``uuid.UUID``; as it was if it is none, for ``screen`` to set aside."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return parse_uuid(value)
    except (TypeError, ValueError, AttributeError):
        return value


def screen(
    taken: Sequence[tuple[Outgoing, bool]], max_bytes: int
) -> list[tuple[Outgoing, str, str]]:
    """The rows to set aside, as ``(row, error class, reason)``: those the shared
    validation refuses (``publish()`` never writes them; something writing to the table
    directly can) and those whose event id is logged already or repeats an earlier row's."""
    bad = []
    seen: set[str] = set()
    for row, logged in taken:
        event_id = str(row.event_id)
        if logged:
            why = f"event id {event_id} is in the event log already (another event has it)"
            bad.append((row, "DuplicateEvent", why))
        elif event_id in seen:
            why = f"event id {event_id} is also on an earlier outbox row, which was moved"
            bad.append((row, "DuplicateEvent", why))
        elif problem := row_problem(row, max_bytes):
            bad.append((row, "UndecodableEvent", problem))
        seen.add(event_id)
    return bad


def row_problem(row: Outgoing, max_bytes: int) -> str | None:
    """Why an outbox row breaks the rule ``publish()`` enforces (django_events.validation),
    or None: what a consumer could not decode, or a database or transport could not keep."""
    unreadable = sql.not_utf8((name, getattr(row, name)) for name in _TEXT_FIELDS)
    if unreadable:  # SQLite keeps what raw SQL wrote (``sql.lenient_text``)
        return unreadable
    if not isinstance(_uuid_or_raw(row.event_id), uuid.UUID):
        return f"event id {str(row.event_id)[:100]!r} is not a UUID"
    try:
        validate_type(row.type)
        validate_version(row.version)
        validate_key(row.key)
        check_text(row.source or "", "source")
    except (InvalidEvent, ValueError) as exc:
        return str(exc)
    for name, text, blank_ok in (("data", row.data, False), ("metadata", row.metadata, True)):
        if blank_ok and (not text or text == "{}"):  # no metadata: publish() stores "{}"
            continue
        if not isinstance(text, str):
            return f"{name} is not text"
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return f"{name} is {size} bytes, over the {max_bytes}-byte limit consumers read"
        try:
            check_storable(text, name)
            value = json.loads(text)
        except InvalidEvent as exc:
            return str(exc)
        except ValueError as exc:
            return f"{name} is not valid JSON ({exc})"
        if not isinstance(value, dict):
            return f"{name} is not a JSON object"
        if name == "metadata":
            try:
                validate_metadata(value)
            except InvalidEvent as exc:
                return str(exc)
    return None


def set_aside(
    using: str, bad: Sequence[tuple[Outgoing, str, str]], *, removed: bool = False
) -> None:
    """Keep each row, raw, as a dead letter of the ``(relay)`` group with its reason, and
    remove it from the outbox, in one transaction. A row another relay removed meanwhile
    is left to that relay, so no row becomes two dead letters. ``removed``: the caller's
    transaction has deleted the rows already."""
    from ..models import DeadLetter
    from ..triage import fingerprint

    if not bad:
        return
    connection = connections[using]
    outbox = sql.table(connection, "OutboxMessage")
    positions = [row.position for row, _, _ in bad]
    with transaction.atomic(using=using):
        if not removed:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {outbox} WHERE position IN ({sql.in_list(len(positions))}) "
                    "RETURNING position",
                    positions,
                )
                mine = {row[0] for row in cursor.fetchall()}
            bad = [item for item in bad if item[0].position in mine]
        for row, error_class, problem in bad:
            DeadLetter.objects.using(using).create(
                event_id=_uuid_or_nil(row.event_id),
                group=QUARANTINE_GROUP,
                handler="django_events.relay",
                attempts=1,
                error_class=error_class,
                error_message=storable(f"Outbox row {row.position} ({row.type}): {problem}"),
                traceback=storable(
                    f"data: {str(row.data)[:65536]}\nmetadata: {str(row.metadata)[:65536]}"
                ),
                fingerprint=fingerprint(error_class, "django_events.relay", ""),
                first_failed_at=Now(),
                last_failed_at=Now(),
            )
    for row, error_class, problem in bad:
        logger.error(
            "Outbox row %s set aside as a dead letter (%s): %s",
            row.position,
            error_class,
            problem,
            extra=logfields.for_service(
                event_id=str(row.event_id), event_type=row.type, group=QUARANTINE_GROUP
            ),
        )


def _uuid_or_nil(value: Any) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return uuid.UUID(int=0)  # the reason says what the id was
