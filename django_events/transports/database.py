"""Level 0: the database is the queue (PostgreSQL in production, SQLite embedded).

One ``Delivery`` row per (event, group). Workers claim rows with ``FOR UPDATE SKIP
LOCKED`` under a lease in database time, counting the attempt as they claim. Acking
deletes the row inside the handler's own transaction, so on this transport handling and
acking commit together, and the row stays locked against other workers while the
handler runs. Handled rows are deleted, never flagged, so the table stays small.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Warning
from django.db import connections
from django.utils.dateparse import parse_datetime

from ..engine import sql
from ..envelope import build_event, parse_uuid
from ..stores import DatabaseStore
from ..text import storable
from .base import (
    Claimed,
    GroupStatus,
    Outgoing,
    Transport,
    TransportContext,
    decode_failure,
    fallback_id,
    text_size,
    within_budget,
)

DELIVERY_CHANNEL = "django_events_delivery"
ORPHAN_CHECK_INTERVAL = 0.5
"""Seconds between looks for orphaned claims, so a busy worker does not pay for it on
every claim; an orphan waits at most this long once its claimer is known dead (longer
behind a held snapshot, see ``SCAN_SHARE``), or until the worker runs out of work."""
SCAN_SHARE = 0.02
"""The share of a worker's time the two reads whose cost follows the table's dead rows
may take: the look for orphans while there is other work (it reads the whole delivery
table) and the full read of the floors (it walks every index entry from the lowest
position). Each waits at least its last duration divided by this, so behind a held
snapshot they grow rarer instead of taking the worker over (docs/internals.md, "The
claim's floor")."""
ANALYZE_AFTER = 10_000
"""Refresh the planner's statistics after this many new deliveries: a burst otherwise
leaves PostgreSQL planning claims for the near-empty table it last sampled, sorting the
whole backlog on every claim until autovacuum catches up."""
FLOOR_EVERY = 1.0
"""Seconds between reads of the claim's floors: per (group, type), the lowest position a
claim may find (docs/internals.md, "The claim's floor"). Most reads start from the last
floor; a full read from the lowest position comes as often as ``SCAN_SHARE`` allows, and
at least this far apart. A delivery that becomes claimable below its floor (a retry
released by another worker, an event committed late) waits for the next full read."""
_OPTIONS = {"database", "notify"}
STORED = (
    "id",
    "type",
    "version",
    "key",
    "data",
    "metadata",
    "time",
    "source",
    "correlation_id",
    "causation_id",
)
"""The event's stored fields as a claim reads them from the log, in that order."""
MAX_ATTEMPTS_STORED = 2**31 - 2
"""Attempts a delivery row counts up to: one below the top of a 32-bit column."""


class DatabaseTransport(Transport):
    supports_ordering = True
    supports_delayed_retry = True
    persistent = True
    acks_in_transaction = True
    filters_types = True
    shares_subscriptions = True

    accepted_options = frozenset(_OPTIONS)

    def __init__(
        self, alias: str, options: dict[str, Any], context: TransportContext | None = None
    ) -> None:
        super().__init__(alias, options, context)
        self.notify = bool(options.get("notify", True))
        self.wake_channel = DELIVERY_CHANNEL if self.notify else None
        self._unanalyzed = 0
        self._orphans_checked_at = 0.0
        self._orphans_cost = 0.0
        """Seconds the last look for orphans took."""
        self._fitted = 0
        """How many events the last claim cut at ``max_bytes`` kept (0: it was not cut)."""
        self._floors: dict[tuple[str, str], int] = {}
        self._floors_read_at = -math.inf
        self._floors_full_at = -math.inf
        """When the floors were last read from the lowest position (monotonic seconds)."""
        self._floors_full_cost = 0.0
        """Seconds that read took."""
        self._store: DatabaseStore | None = None

    def subscription_store(self) -> DatabaseStore:
        """The ``Subscription`` table of ``database``: Level 0's services share it."""
        if self._store is None:
            self._store = DatabaseStore(self.database)
        return self._store

    # -- helpers ------------------------------------------------------------------------

    @property
    def _connection(self) -> Any:
        return connections[self.database]

    @property
    def _sql(self) -> sql.Dialect:
        return sql.dialect(self.database)

    def _tables(self) -> tuple[str, str]:
        conn = self._connection
        return sql.table(conn, "Delivery"), sql.table(conn, "EventRecord")

    def _execute(self, query: str, params: Sequence[Any], *, prepared: bool = False) -> Any:
        with sql.cursor(self._connection, prepared=prepared) as cursor:
            cursor.execute(query, params)
            return cursor.fetchall() if cursor.description else cursor.rowcount

    # -- checks -------------------------------------------------------------------------

    def check(self) -> list[CheckMessage]:
        errors: list[CheckMessage] = []
        if self.database not in connections.settings:
            return [
                Error(
                    f"DatabaseTransport {self.alias!r} uses database {self.database!r}, "
                    "which is not in DATABASES.",
                    id="django_events.E004",
                )
            ]
        others = [a for a in self.context.outbox_databases if a != self.database]
        if others:
            errors.append(
                Error(
                    f"DJANGO_EVENTS['OUTBOX_DATABASES'] includes {others[0]!r}, but the database "
                    f"transport keeps its queue and event log in {self.database!r}; events "
                    "published elsewhere would not reach it.",
                    hint=f"Publish to {self.database!r} only (publish(..., using=...)).",
                    id="django_events.E009",
                )
            )
        vendor = connections[self.database].vendor
        if vendor not in sql.SUPPORTED_VENDORS:
            errors.append(
                Error(
                    f"Database {self.database!r} is {vendor}: the database transport needs "
                    "PostgreSQL (FOR UPDATE SKIP LOCKED, for competing consumers) or SQLite "
                    "(a single writer).",
                    id="django_events.E004",
                    hint="Use PostgreSQL, or SQLite for a single machine.",
                )
            )
        elif vendor == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
            errors.append(
                Error(
                    f"SQLite {sqlite3.sqlite_version} lacks RETURNING; the database transport "
                    "needs SQLite 3.35 or newer.",
                    id="django_events.E005",
                )
            )
        elif vendor == "postgresql" and self.notify:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                errors.append(
                    Warning(
                        "psycopg 3 is not installed: idle workers fall back to polling "
                        "instead of LISTEN/NOTIFY wake-ups.",
                        id="django_events.W001",
                        hint="pip install 'django-events-outbox[postgres]'",
                    )
                )
        return errors

    # -- relay side ---------------------------------------------------------------------

    def joins_outbox_transaction(self, using: str) -> bool:
        return using == self.database

    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """Fan events out into one delivery row per subscribed group."""
        self._fan_out(events, subscriptions, again=False)

    def republish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """``publish`` for a replay, in the same one statement per batch, which writes no
        row where the group has one for the event already: a row is deleted when the
        event is done, so one still there is owed (waiting, in flight, due for a retry)
        and would deliver it twice (docs/internals.md, "One path per event"). The relay
        never pays for the lookup: its events are new."""
        self._fan_out(events, subscriptions, again=True)

    def _fan_out(
        self,
        events: Sequence[Outgoing],
        subscriptions: Sequence[tuple[str, str, bool]],
        *,
        again: bool,
    ) -> None:
        """One delivery row per event and subscribed group; with ``again``, none where the
        group has one for the event already."""
        by_type: dict[str, list[tuple[str, bool]]] = {}
        for event_type, group, ordered in subscriptions:
            by_type.setdefault(event_type, []).append((group, ordered))
        rows = [
            (
                event.event_id,
                group,
                event.type,
                event.position,
                event.key,
                ordered and event.key is not None,
            )
            for event in events
            for group, ordered in by_type.get(event.type, ())
        ]
        if not rows:
            return
        dialect = self._sql
        delivery, _ = self._tables()
        now = dialect.now()
        columns = (
            f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, ordered, "
            "attempts, available_at, parked, last_error, created_at) "
        )
        # With ``again``, the claim index finds the group's row at the event's position
        # (its type, or none recorded by an older release), then its event id is checked.
        owed = (
            f"WHERE NOT EXISTS (SELECT 1 FROM {delivery} d WHERE d.group_name = u.g AND "
            "d.event_type IN (u.y, '') AND d.position = u.p AND d.event_id = u.e)"
        )
        if isinstance(dialect, sql.PostgreSQL):
            # Six arrays, whatever the batch size: a short statement for the driver to send.
            # The wake-up rides in the same statement, sent only if a row went in.
            wake = (
                f", CASE WHEN count(*) > 0 THEN pg_notify('{DELIVERY_CHANNEL}', '') END"
                if self.notify
                else ""
            )
            ((inserted, *_),) = self._execute(
                f"WITH i AS ({columns}SELECT e, g, y, p, k, o, 0, {now}, FALSE, '', {now} FROM "
                "unnest(%s::uuid[], %s::text[], %s::text[], %s::bigint[], %s::text[], "
                f"%s::bool[]) AS u(e, g, y, p, k, o) {owed if again else ''}RETURNING 1) "
                f"SELECT count(*){wake} FROM i",
                [list(column) for column in zip(*rows, strict=True)],
                prepared=True,
            )
            self._unanalyzed += int(inserted)
            return
        # SQLite: chunks of VALUES, no wake-up (workers poll).
        row_sql = f"(%s, %s, %s, %s, %s, %s, 0, {now}, FALSE, '', {now})"
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            params = [p for row in chunk for p in (dialect.uuid_value(row[0]), *row[1:])]
            if again:  # SQLite names a VALUES list's columns column1, column2...
                values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
                statement = (
                    f"{columns}SELECT e, g, y, p, k, o, 0, {now}, FALSE, '', {now} FROM "
                    "(SELECT column1 AS e, column2 AS g, column3 AS y, column4 AS p, "
                    f"column5 AS k, column6 AS o FROM (VALUES {values})) AS u {owed}"
                )
            else:
                statement = f"{columns}VALUES {', '.join([row_sql] * len(chunk))}"
            self._execute(statement, params)

    def _wake(self) -> None:
        """Wake the workers listening for new deliveries (PostgreSQL; SQLite polls)."""
        if self.notify and self._sql.notifies:
            self._execute("SELECT pg_notify(%s, '')", [DELIVERY_CHANNEL], prepared=True)

    def housekeeping(self) -> None:
        if self._unanalyzed >= ANALYZE_AFTER and isinstance(self._sql, sql.PostgreSQL):
            self._unanalyzed = 0
            delivery, _ = self._tables()
            self._execute(f"ANALYZE {delivery}", [])

    # -- worker side --------------------------------------------------------------------

    def claim(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        *,
        types: Mapping[str, Collection[str]] | None = None,
        max_bytes: int | None = None,
    ) -> list[Claimed]:
        """Claim events for ``groups``, counting an attempt for each.

        With ``types``, only those event types of each group, and deliveries whose type
        was never recorded (written by hand or by an older release), which any worker of
        the group takes as before; the rest wait for a worker that handles them.

        An event whose last claim ended without an outcome is an orphan: its lease expired,
        or (on PostgreSQL) the claiming connection is gone, which is how a killed worker
        shows at once. Orphans come back one at a time, before anything else, so a handler that
        kills its process takes no healthy neighbour down with it. The death counts as an
        attempt only if the orphan had been claimed alone: in a batch, the worker may have
        died on a neighbour, so that attempt is given back. Rows past ``max_bytes`` are
        given back before they are decoded, and after such a cut the next claim asks for
        one row more than fitted, so large events are not read ``limit`` at a time.
        """
        if not groups:
            return []
        pairs = None if types is None else _pairs(groups, types)
        spacing = max(ORPHAN_CHECK_INTERVAL, self._orphans_cost / SCAN_SHARE)
        due = time.monotonic() >= self._orphans_checked_at + spacing
        if due and (orphan := self._orphan(groups, lease, pairs)):
            return orphan
        if max_bytes is not None and self._fitted:  # fetch little past the last claim's fit
            limit = min(limit, self._fitted + 1)
        claimed = self._claim_waiting(groups, limit, lease, pairs, types, max_bytes)
        if not claimed and not due:  # idle anyway: look now
            return self._orphan(groups, lease, pairs)
        return claimed

    def _claim_waiting(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        pairs: list[tuple[str, str]] | None,
        types: Mapping[str, Collection[str]] | None,
        max_bytes: int | None,
    ) -> list[Claimed]:
        """What a claim takes besides orphans: here, the waiting delivery rows."""
        return self._claim(groups, limit, lease, orphans=False, pairs=pairs, max_bytes=max_bytes)

    def _orphan(
        self, groups: Sequence[str], lease: float, pairs: list[tuple[str, str]] | None
    ) -> list[Claimed]:
        started = time.monotonic()
        found = self._claim(groups, 1, lease, orphans=True, pairs=pairs)
        self._orphans_cost = time.monotonic() - started
        # Found one: there may be more, so look again at the next claim.
        self._orphans_checked_at = -math.inf if found else started
        return found

    def _claim(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        *,
        orphans: bool,
        pairs: list[tuple[str, str]] | None = None,
        max_bytes: int | None = None,
    ) -> list[Claimed]:
        dialect = self._sql
        postgresql = isinstance(dialect, sql.PostgreSQL)
        delivery, event = self._tables()
        token = uuid.uuid4().hex
        now = dialect.now()
        if not orphans:
            held = "c.lease_token IS NULL"
        elif postgresql:
            # A claimer whose connection is gone is dead: no need to wait for its lease,
            # only for the retry backoff its death earned (as if the handler had raised).
            context = self.context
            claimed_at = f"(c.claimed_until - make_interval(secs => {float(lease)!r}))"
            backoff = (
                f"LEAST({float(context.backoff_max)!r}, {float(context.backoff_base)!r} "
                "* power(2, GREATEST(c.attempts - 1, 0)))"
            )
            # No index finds held rows (one would make every claim a non-HOT update,
            # docs/internals.md "The delivery table and HOT claims"): one cheap pass picks
            # the held ids, so the costly tests below run on those rows alone (and the
            # plan's estimate stays small enough not to JIT-compile a table-sized scan).
            held = (
                f"c.id = ANY(ARRAY(SELECT o.id FROM {delivery} o WHERE o.lease_token IS NOT "
                f"NULL)) AND c.lease_token IS NOT NULL AND (c.claimed_until < {now} OR ("
                f"{claimed_at} + make_interval(secs => {backoff}) < {now} AND NOT EXISTS "
                "(SELECT 1 FROM pg_stat_activity a WHERE a.pid = c.claimer)))"
            )
        else:
            held = f"c.lease_token IS NOT NULL AND c.claimed_until < {now}"
        claimable = (
            f"NOT c.parked AND c.available_at <= {now} AND {held} "
            f"AND (NOT c.ordered OR NOT EXISTS (SELECT 1 FROM {delivery} h WHERE h.ordered "
            "AND h.group_name = c.group_name AND h.key = c.key AND h.position < c.position))"
        )
        lock = dialect.skip_locked
        if postgresql and not orphans and pairs is not None:
            # One ordered index scan per (group, type) that stops at the limit, however
            # long the backlog, and never walks past types this worker leaves to others.
            # Pairs take turns at coming first so a busy one cannot starve the others.
            self._turn = (getattr(self, "_turn", -1) + 1) % len(pairs)
            turned = [*pairs[self._turn :], *pairs[: self._turn]]
            floors = self._read_floors(turned)
            candidates = (
                "SELECT c.id FROM unnest(%s::text[], %s::text[], %s::bigint[]) "
                "AS g(name, type, floor) "
                f"CROSS JOIN LATERAL (SELECT c.id FROM {delivery} c WHERE c.group_name = g.name "
                f"AND c.event_type = g.type AND c.position >= g.floor AND {claimable} "
                f"ORDER BY c.position LIMIT %s{lock}) c LIMIT %s"
            )
            group_params = [
                [g for g, _ in turned],
                [t for _, t in turned],
                [floors.get(pair, 0) for pair in turned],
                limit,
            ]
        elif postgresql and not orphans:
            # One scan per group that stops at the limit: `group_name = ANY(...)` would
            # sort every pending row instead. Groups take turns at coming first.
            self._turn = (getattr(self, "_turn", -1) + 1) % len(groups)
            candidates = (
                "SELECT c.id FROM unnest(%s::text[]) AS g(name) CROSS JOIN LATERAL "
                f"(SELECT c.id FROM {delivery} c WHERE c.group_name = g.name AND {claimable} "
                f"ORDER BY c.position LIMIT %s{lock}) c LIMIT %s"
            )
            group_params = [[*groups[self._turn :], *groups[: self._turn]], limit]
        else:
            in_groups, group_params = dialect.in_values("c.group_name", groups)
            if pairs is not None:
                # ``pairs`` includes ``(group, "")`` per group: types never recorded.
                typed, typed_params = dialect.in_pairs("(c.group_name, c.event_type)", pairs)
                in_groups = f"{in_groups} AND {typed}"
                group_params += typed_params
            candidates = (
                f"SELECT c.id FROM {delivery} c WHERE {in_groups} AND {claimable} "
                f"ORDER BY c.position LIMIT %s{lock}"
            )
        counted = "CASE WHEN claimed_alone THEN 1 ELSE 0 END" if orphans else "1"
        alone = "TRUE" if orphans or limit == 1 else "FALSE"
        update = (
            # A count written near the column's top by another writer must not overflow
            # and fail the claim of the whole batch.
            f"UPDATE {delivery} SET attempts = CASE WHEN attempts > {MAX_ATTEMPTS_STORED} "
            f"THEN {MAX_ATTEMPTS_STORED} ELSE attempts END + {counted}, claimed_alone = {alone}, "
            f"claimed_until = {dialect.now_plus()}, claimer = {dialect.backend_pid}, "
            f"lease_token = %s WHERE {dialect.in_query('id', candidates)} "
            f"RETURNING id, event_id, group_name, attempts, {dialect.as_text('first_failed_at')} "
            "AS first_failed_at"
        )
        params = [dialect.seconds(lease), token, *group_params, limit]
        # Times come as text, parsed per row: a value the driver cannot convert (written
        # by raw SQL) must fail its own event, not the fetch of the whole batch.
        columns = (
            "e.id, e.type, e.version, e.key, e.data, e.metadata, "
            f"{dialect.as_text('e.occurred_at')}, e.source, e.correlation_id, e.causation_id"
        )
        if postgresql:
            rows = self._execute(
                f"WITH d AS ({update}) "
                f"SELECT d.id, d.event_id, d.group_name, d.attempts, d.first_failed_at, {columns}, "
                f"{sql.RELAXED_COMMIT} "
                f"FROM d LEFT JOIN {event} e ON e.id = d.event_id ORDER BY d.id",
                params,
                prepared=True,
            )
        else:
            # Text that is not UTF-8 (written by raw SQL) fails its own event, not the fetch.
            with sql.lenient_text(self.database):
                claimed = self._execute(update, params)
                if not claimed:
                    return []
                ids = sorted({row[1] for row in claimed if isinstance(row[1], str)})
                events = {
                    row[0]: row
                    for row in self._execute(
                        f"SELECT {columns} FROM {event} e WHERE e.id IN ({sql.in_list(len(ids))})",
                        ids,
                    )
                }
            rows = [(*row, *events.get(row[1], (None,) * 10)) for row in sorted(claimed)]
        taken = within_budget((text_size(row[9], row[10]) for row in rows), max_bytes)
        if not orphans:
            self._fitted = taken if taken < len(rows) else 0
        if taken < len(rows):
            self._give_back([row[0] for row in rows[taken:]], token)
        return [self._claimed(row, token) for row in rows[:taken]]

    def _read_floors(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Per (group, type), the lowest position a claim needs to look from, read at most
        every ``FLOOR_EVERY`` seconds (docs/internals.md, "The claim's floor"): the lowest
        unclaimed delivery due within twice that, else one past the highest delivery, else
        the floor as it was. Deleted deliveries keep their index entries while any snapshot
        may see them, so a claim starting at the lowest position would walk every one
        acknowledged since the oldest open snapshot began. Most reads start from the last
        floor and walk only the last second's; a full read from the lowest position, which
        finds deliveries given back or committed late below the floor, comes as often as
        ``SCAN_SHARE`` allows."""
        now = time.monotonic()
        known = all(p in self._floors for p in pairs)
        if now - self._floors_read_at < FLOOR_EVERY and known:
            return self._floors
        spacing = max(FLOOR_EVERY, self._floors_full_cost / SCAN_SHARE)
        full = not known or now - self._floors_full_at >= spacing
        from_last = "" if full else "AND c.position >= g.last "
        delivery, _ = self._tables()
        dialect = self._sql
        rows = self._execute(
            "SELECT g.name, g.type, COALESCE("
            f"(SELECT min(c.position) FROM {delivery} c WHERE c.group_name = g.name "
            f"AND c.event_type = g.type {from_last}AND c.lease_token IS NULL "
            f"AND c.available_at <= {dialect.now_plus()}), "
            f"(SELECT max(c.position) + 1 FROM {delivery} c WHERE c.group_name = g.name "
            "AND c.event_type = g.type AND c.position >= g.last), g.last) "
            "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS g(name, type, last)",
            [
                dialect.seconds(2 * FLOOR_EVERY),
                [g for g, _ in pairs],
                [t for _, t in pairs],
                [self._floors.get(pair, 0) for pair in pairs],
            ],
        )
        self._floors = {(name, type_): floor for name, type_, floor in rows}
        self._floors_read_at = now
        if full:
            self._floors_full_at, self._floors_full_cost = now, time.monotonic() - now
        return self._floors

    def _floor_may_be_passed(self) -> None:
        """This worker put a delivery back below its floor, perhaps: the next claim reads
        the floors from the lowest position."""
        self._floors_read_at = self._floors_full_at = -math.inf

    def _claimed(
        self, row: Sequence[Any], token: str, *, log_position: int | None = None
    ) -> Claimed:
        """One claimed row as a ``Claimed``. Whatever another writer put in the log or the
        delivery row, the result is an event or a ``decode_error`` naming what is wrong:
        never an exception, which would hand the row back to be claimed again forever.
        ``log_position``: the event was read from the log itself (the log transport's
        lease), not through a delivery row; it names the row in a reason."""
        delivery_id, raw_id, group, attempts, first_failed_at, *stored = row
        if log_position is None:
            where, fallback = f"Delivery {delivery_id}", f"delivery:{delivery_id}"
        else:
            where, fallback = f"The log row at position {log_position}", f"log:{log_position}"
        try:
            event_id = raw_id if isinstance(raw_id, uuid.UUID) else parse_uuid(str(raw_id))
        except ValueError:
            bad_id, event_id = raw_id, fallback_id(fallback)
        else:
            bad_id = None
        claimed = Claimed(
            group=group,
            attempt=attempts if isinstance(attempts, int) else 1,
            receipt=(delivery_id, token),
            event_id=event_id,
            event_type=stored[1] if isinstance(stored[1], str) else "",
            first_failed_at=_time_or_none(first_failed_at),
        )
        if bad_id is not None:
            claimed.decode_error = storable(f"{where} names event {bad_id!r}, which is not a UUID.")
            return claimed
        if stored[0] is None:
            claimed.decode_error = f"Event {event_id} is missing from the event log."
            return claimed
        unreadable = sql.not_utf8(zip(STORED, stored, strict=False))
        if unreadable:
            claimed.decode_error = storable(
                f"Event {event_id} in the log: its {unreadable} (written by raw SQL)."
            )
            return claimed
        try:
            claimed.event = build_event(
                id=event_id if stored[0] == raw_id else stored[0],  # the same id, parsed once
                type=stored[1],
                version=stored[2],
                key=stored[3],
                data=stored[4],
                metadata=stored[5],
                occurred_at=stored[6],
                source=stored[7],
                correlation_id=event_id if stored[8] == stored[0] else stored[8],
                causation_id=stored[9],
                max_bytes=self.context.max_payload_bytes * 2,
            )
        except Exception as exc:  # whatever is wrong with it, it is this event's dead letter
            claimed.decode_error = decode_failure(exc, f"Event {event_id} in the log")
        return claimed

    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        by_token: dict[str, list[int]] = {}
        for item in claimed:
            delivery_id, token = item.receipt
            by_token.setdefault(token, []).append(delivery_id)
        dialect = self._sql
        delivery, _ = self._tables()
        for token, ids in by_token.items():
            # Rows a handler is working on are locked by its transaction; skip them.
            in_ids, params = dialect.in_values("id", ids)
            where = (
                f"id IN (SELECT id FROM {delivery} WHERE {in_ids} AND lease_token = %s"
                f"{dialect.skip_locked})"
            )
            self._execute(
                f"UPDATE {delivery} SET claimed_until = {dialect.now_plus()} WHERE {where}",
                [dialect.seconds(lease), *params, token],
            )

    def release(self, claimed: Sequence[Claimed]) -> None:
        by_token: dict[str, list[int]] = {}
        for item in claimed:
            delivery_id, token = item.receipt
            by_token.setdefault(token, []).append(delivery_id)
        for token, ids in by_token.items():
            self._give_back(ids, token)

    def _give_back(self, ids: Sequence[int], token: str) -> None:
        """Unclaim rows still held under ``token``, their attempt not counted."""
        self._floor_may_be_passed()
        delivery, _ = self._tables()
        self._execute(
            f"UPDATE {delivery} SET attempts = attempts - 1, claimed_until = NULL, "
            f"lease_token = NULL WHERE id IN ({sql.in_list(len(ids))}) AND lease_token = %s",
            [*ids, token],
        )

    def ack(self, claimed: Claimed) -> bool:
        delivery, _ = self._tables()
        delivery_id, token = claimed.receipt
        return bool(
            self._execute(
                f"DELETE FROM {delivery} WHERE id = %s AND lease_token = %s",
                [delivery_id, token],
                prepared=True,
            )
        )

    def hold(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        """Lock the rows still claimed by this lease (PostgreSQL; SQLite has one writer):
        other workers' claims and this worker's heartbeat skip them until the commit."""
        by_receipt = {item.receipt: item for item in claimed}
        lock = self._sql.for_update
        delivery, _ = self._tables()
        held: list[Claimed] = []
        for token in sorted({token for _, token in by_receipt}):
            ids = sorted(delivery_id for delivery_id, t in by_receipt if t == token)
            in_ids, params = self._sql.in_values("id", ids)
            rows = self._execute(
                f"SELECT id FROM {delivery} WHERE {in_ids} AND lease_token = %s ORDER BY id{lock}",
                [*params, token],
                prepared=True,
            )
            held.extend(by_receipt[(row[0], token)] for row in rows)
        return held

    def ack_many(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        by_receipt = {item.receipt: item for item in claimed}
        tokens = {token for _, token in by_receipt}
        if len(tokens) != 1:
            return super().ack_many(claimed)
        delivery, _ = self._tables()
        ids = sorted(delivery_id for delivery_id, _ in by_receipt)
        where, params = self._sql.in_values("id", ids)
        rows = self._execute(
            f"DELETE FROM {delivery} WHERE {where} AND lease_token = %s RETURNING id",
            [*params, *tokens],
            prepared=True,
        )
        token = next(iter(tokens))
        return [by_receipt[(row[0], token)] for row in rows]

    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        self._floor_may_be_passed()
        dialect = self._sql
        delivery, _ = self._tables()
        delivery_id, token = claimed.receipt
        self._execute(
            f"UPDATE {delivery} SET available_at = {dialect.now_plus()}, claimed_until = NULL, "
            f"lease_token = NULL, last_error = %s, first_failed_at = COALESCE(first_failed_at, "
            f"{dialect.now()}) WHERE id = %s AND lease_token = %s",
            [dialect.seconds(delay), error[:2000], delivery_id, token],
        )

    def dead_letter(self, claimed: Claimed) -> bool:
        delivery, _ = self._tables()
        delivery_id, token = claimed.receipt
        # An ordered row stays as a parked head, holding back only its own key.
        parked = self._execute(
            f"UPDATE {delivery} SET parked = TRUE, claimed_until = NULL, lease_token = NULL "
            "WHERE id = %s AND lease_token = %s AND ordered",
            [delivery_id, token],
        )
        removed = self._execute(
            f"DELETE FROM {delivery} WHERE id = %s AND lease_token = %s AND NOT ordered",
            [delivery_id, token],
        )
        return bool(parked or removed)

    def redeliver(self, event_id: uuid.UUID, group: str) -> None:
        self._floor_may_be_passed()
        dialect = self._sql
        delivery, event = self._tables()
        db_id = dialect.uuid_value(event_id)
        now = dialect.now()
        reopened = self._execute(
            f"UPDATE {delivery} SET parked = FALSE, attempts = 0, available_at = {now}, "
            "claimed_until = NULL, lease_token = NULL, first_failed_at = NULL, last_error = '' "
            "WHERE event_id = %s AND group_name = %s",
            [db_id, group],
        )
        if reopened:
            return
        rows = self._execute(f"SELECT type FROM {event} WHERE id = %s", [db_id])
        if not rows:
            raise LookupError(f"Event {event_id} is not in the event log.")
        # The group may belong to another service: its declared subscriptions say if ordered.
        wanted = (rows[0][0], group, True)
        ordered = (
            self.context.ordered(group, rows[0][0]) or wanted in self.subscription_store().fan_out()
        )
        self._execute(
            f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, ordered, "
            "attempts, available_at, parked, last_error, created_at) "
            f"SELECT id, %s, type, position, key, %s AND key IS NOT NULL, 0, {now}, FALSE, '', "
            f"{now} FROM {event} WHERE id = %s",
            [group, ordered, db_id],
        )
        self._wake()

    def discard(self, event_id: uuid.UUID, group: str) -> None:
        delivery, _ = self._tables()
        self._execute(
            f"DELETE FROM {delivery} WHERE event_id = %s AND group_name = %s AND parked",
            [self._sql.uuid_value(event_id), group],
        )

    def backlog_by_type(self) -> dict[tuple[str, str], int]:
        delivery, _ = self._tables()
        rows = self._execute(
            f"SELECT group_name, event_type, COUNT(*) FROM {delivery} "
            "GROUP BY group_name, event_type",
            [],
        )
        return {(group, event_type): int(count) for group, event_type, count in rows}

    def drop_backlog(self, group: str, event_type: str) -> int:
        delivery, _ = self._tables()
        return int(
            self._execute(
                f"DELETE FROM {delivery} WHERE group_name = %s AND event_type = %s",
                [group, event_type],
            )
        )

    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        dialect = self._sql
        delivery, _ = self._tables()
        now = dialect.now()
        waiting = f"NOT parked AND (claimed_until IS NULL OR claimed_until < {now})"
        rows = self._execute(
            f"SELECT group_name, "
            f"SUM(CASE WHEN {waiting} THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN claimed_until >= {now} THEN 1 ELSE 0 END), "
            f"MAX(CASE WHEN {waiting} THEN {dialect.age_seconds('created_at')} END), "
            f"SUM(CASE WHEN {waiting} AND attempts > 0 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN parked THEN 1 ELSE 0 END) "
            f"FROM {delivery} GROUP BY group_name",
            [],
        )
        found = {
            row[0]: GroupStatus(
                pending=int(row[1] or 0),
                in_flight=int(row[2] or 0),
                oldest_pending_age_s=None if row[3] is None else round(float(row[3]), 3),
                retrying=int(row[4] or 0),
                parked=int(row[5] or 0),
            )
            for row in rows
        }
        return {group: found.get(group, GroupStatus()) for group in sorted({*groups, *found})}


def _pairs(groups: Sequence[str], types: Mapping[str, Collection[str]]) -> list[tuple[str, str]]:
    """The (group, type) pairs to claim: each listed type, and ``""`` (type not recorded)."""
    return [(g, t) for g in groups for t in [*sorted(types.get(g, ())), ""]]


def _time_or_none(value: Any) -> dt.datetime | None:
    """A stored time read as text; None if missing or unreadable (it is only a record of
    the first failure, never a reason to refuse the event)."""
    if isinstance(value, str):
        try:
            value = parse_datetime(value) or dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
