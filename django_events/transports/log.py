"""Level 0, second generation (preview): each group reads the event log through a cursor.

Today's database transport writes one delivery row per event and group, updates it at
the claim and deletes it at the acknowledgement. Here a group's progress is a cursor
over the log, appended by each claim that moves it, and a claimed batch is one lease
row: the per-event writes are gone for every event that succeeds at its first attempt.
Events that fail, wait behind their key (ordered subscriptions), are of a type the
claiming worker does not handle, or were replayed or released become ordinary delivery
rows and take the path of ``DatabaseTransport``, which this class extends. The design,
its measurements and what each guarantee rests on: docs/internals.md, "The log
transport". PostgreSQL only for now.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from django.core.checks import CheckMessage, Error
from django.db import OperationalError, connections, transaction

from ..engine import sql
from ..stores import DatabaseStore, Declaration, Wanted
from .base import Claimed, GroupStatus, Outgoing, text_size, within_budget
from .database import DatabaseTransport

ROTATE_EVERY = 10.0
"""Seconds between rotations of the cursor and lease tables (``rotate``), or, with
rotation off, between deletions of the cursor rows older than each group's newest."""

ROTATION_WAIT = 0.1
"""Seconds a rotation waits for a lock before it gives up (it tries again a second later):
while it waits for a partition, statements on the table queue behind it."""

ROTATION_LOCK = 0x6465_7672_6F74
"""PostgreSQL advisory lock: one rotation at a time per database."""

TABLES = ("django_events_cursor", "django_events_lease")
"""The rotated tables; each has partitions ``_0`` and ``_1`` (migration 0015)."""

PAGE = 8192
"""Bytes: a slot of one page at most is not worth a rotation (an idle database's cursors)."""

GROUP_LOCK = 1684371062
"""The first key of a group's advisory lock, ``(GROUP_LOCK, hashtext(group))``, which
each claim takes first (migration 0015's claim function)."""


class LeaseReceipt(NamedTuple):
    """The receipt of an event claimed from the log: its batch's lease row, its place."""

    lease: int
    position: int
    token: str


class LogStore(DatabaseStore):
    """The ``Subscription`` table, where declaring a new group also starts its cursor, in
    the declaring transaction (``start_cursors``)."""

    def declare(self, service: str, wanted: Wanted, *, replace: bool) -> Declaration:
        with transaction.atomic(using=self.using):
            result = super().declare(service, wanted, replace=replace)
            start_cursors(self.using, sorted({group for group, _ in result.added}))
        return result


def heads(cursors: str, where: str = "") -> str:
    """SQL: each group's newest cursor row (its place), from the cursor table ``cursors``,
    optionally only the rows ``where`` allows."""
    where = f" WHERE {where}" if where else ""
    return (
        f"(SELECT DISTINCT ON (c.group_name) c.* FROM {cursors} c{where} "
        "ORDER BY c.group_name, c.id DESC)"
    )


def not_passed(row: str, head: str) -> str:
    """SQL: the log row ``row`` is one the cursor ``head`` has not passed yet: committed
    after its window, or in the window beyond its position (docs/internals.md, "The log
    transport"). Rows logged before migration 0014 (no ``txid``) are in no window."""
    return (
        f"{row}.txid IS NOT NULL AND (NOT pg_visible_in_snapshot({row}.txid, "
        f"{head}.hi::pg_snapshot) OR (NOT pg_visible_in_snapshot({row}.txid, "
        f"{head}.lo::pg_snapshot) AND {row}.position > {head}.pos))"
    )


def start_cursors(using: str, groups: Sequence[str]) -> None:
    """Give each of ``groups`` that has no cursor one where the most advanced group is, in
    its slot, or at the log's beginning if no group has one (docs/internals.md, "The log
    transport")."""
    if not groups:
        return
    connection = connections[using]
    cursors = sql.table(connection, "GroupCursor")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {cursors} (slot, group_name, lo, hi, pos, last, created_at) "
            "SELECT COALESCE(f.slot, 0), g, COALESCE(f.lo, '1:1:'), COALESCE(f.hi, '1:1:'), "
            "COALESCE(f.pos, 0), COALESCE(f.last, 0), statement_timestamp() "
            "FROM unnest(%s::text[]) AS g "
            f"LEFT JOIN (SELECT h.slot, h.lo, h.hi, h.pos, h.last FROM {heads(cursors)} h "
            "ORDER BY pg_snapshot_xmax(h.hi::pg_snapshot) DESC, h.pos DESC LIMIT 1) f ON TRUE "
            f"WHERE NOT EXISTS (SELECT 1 FROM {cursors} c WHERE c.group_name = g)",
            [list(groups)],
        )


def place_cursors_now(using: str, groups: Sequence[str]) -> None:
    """Give each of ``groups``, each group with a subscription and each with a cursor a new
    cursor at this transaction's snapshot: past every event committed so far, before every
    one committed later, whatever its position. The move from ``DatabaseTransport`` calls
    it under the relay's lock (docs/moving.md, "Into the log transport")."""
    connection = connections[using]
    cursors = sql.table(connection, "GroupCursor")
    subscriptions = sql.table(connection, "Subscription")
    event = sql.table(connection, "EventRecord")
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH top AS (SELECT COALESCE(max(position), 0) AS pos FROM {event}), "
            "snap AS (SELECT pg_current_snapshot()::text AS s), "
            "g AS (SELECT unnest(%s::text[]) AS name UNION SELECT "
            f'"group" FROM {subscriptions} UNION SELECT group_name FROM {cursors}), '
            # Any slot keeps a cursor (a rotation copies the heads of the slot it empties):
            # the newest cursor's, where the claims write.
            f"slot AS (SELECT COALESCE((SELECT c.slot FROM {cursors} c ORDER BY c.id DESC "
            "LIMIT 1), 0) AS n) "
            f"INSERT INTO {cursors} (slot, group_name, lo, hi, pos, last, created_at) "
            "SELECT slot.n, g.name, snap.s, snap.s, top.pos, top.pos, statement_timestamp() "
            "FROM g, snap, top, slot",
            [list(groups)],
        )


def rotate(using: str) -> bool:
    """Empty the slot of the cursor and lease tables the claims write into by ``TRUNCATE``,
    which frees its space whatever snapshots are held, after copying each group's cursor
    and every lease found there into the other slot, ids kept. Returns ``False`` if it
    gave up: another rotation runs, or a lock was not granted within ``ROTATION_WAIT`` (a
    claim of a group, or an acknowledgement, in flight); ``True`` if it rotated, or if
    the slot holds one page at most, nothing worth freeing. Each claim takes its group's
    lock first, and every statement on these tables locks both partitions before it
    takes its snapshot, so whatever runs after the rotation finds the copies
    (docs/internals.md, "The log transport")."""
    connection = connections[using]
    cursors = sql.table(connection, "GroupCursor")
    leases = sql.table(connection, "Lease")
    names = [[f"{table}_{slot}" for table in TABLES] for slot in (0, 1)]
    wait = f"{round(ROTATION_WAIT * 1000)}ms"
    try:
        with sql.bounded_atomic(using), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_xact_lock(%s), set_config('lock_timeout', %s, true)",
                [ROTATION_LOCK, wait],
            )
            if not cursor.fetchone()[0]:
                return False
            # The slot with more pages: the one the claims write into.
            cursor.execute(
                "SELECT pg_relation_size(%s) + pg_relation_size(%s), "
                "pg_relation_size(%s) + pg_relation_size(%s)",
                [*names[0], *names[1]],
            )
            sizes = cursor.fetchone()
            old = int(sizes[1] > sizes[0])
            if sizes[old] <= PAGE:
                return True
            old_cursors, old_leases = map(connection.ops.quote_name, names[old])
            cursor.execute(
                f"SELECT count(pg_advisory_xact_lock(%s, hashtext(g.group_name))) FROM "
                f"(SELECT DISTINCT group_name FROM {old_cursors} ORDER BY group_name) g",
                [GROUP_LOCK],
            )
            cursor.execute(f"LOCK TABLE {old_cursors}, {old_leases} IN ACCESS EXCLUSIVE MODE")
            cursor.execute(
                f"INSERT INTO {cursors} (slot, id, group_name, lo, hi, pos, last, created_at) "
                "SELECT 1 - h.slot, h.id, h.group_name, h.lo, h.hi, h.pos, h.last, h.created_at "
                f"FROM {heads(cursors)} h WHERE h.slot = %s",
                [old],
            )
            cursor.execute(
                f"INSERT INTO {leases} (slot, id, group_name, positions, claimed_alone, "
                "claimed_until, claimer, lease_token) SELECT 1 - k.slot, k.id, k.group_name, "
                "k.positions, k.claimed_alone, k.claimed_until, k.claimer, k.lease_token "
                f"FROM {old_leases} k"
            )
            cursor.execute(f"TRUNCATE {old_cursors}, {old_leases}")
    except OperationalError as exc:
        if sql.dialect(using).timed_out(exc):
            return False
        raise
    return True


class LogTransport(DatabaseTransport):
    """Groups read the log through cursors; a claimed batch is one lease row."""

    reads_log = True

    ack_locks_batch = True
    """Acking an event rewrites its batch's one lease row: a batch of one acked first would
    keep the heartbeat from renewing the rest of the batch while its handler runs
    (docs/internals.md, "The log transport")."""

    accepted_options = DatabaseTransport.accepted_options | {"rotate"}

    def __init__(self, alias: str, options: dict[str, Any], context: Any = None) -> None:
        super().__init__(alias, options, context)
        self.rotates = bool(options.get("rotate", False))
        """Empty the cursor and lease tables by rotation (``rotate``) rather than pruning
        old cursor rows by ``DELETE``. Off by default: measured, it holds claims and
        acknowledgements back while it waits for its locks (docs/internals.md, "The log
        transport")."""
        self._rotate_at = 0.0
        self._group_turn = 0

    def subscription_store(self) -> LogStore:
        if self._store is None or not isinstance(self._store, LogStore):
            self._store = LogStore(self.database)
        return self._store

    def check(self) -> list[CheckMessage]:
        errors = super().check()
        if self.database in connections.settings and self._connection.vendor != "postgresql":
            errors.append(
                Error(
                    f"LogTransport {self.alias!r} needs PostgreSQL (snapshot windows over the "
                    f"log); database {self.database!r} is {self._connection.vendor}.",
                    hint="Use django_events.transports.database.DatabaseTransport there.",
                    id="django_events.E004",
                )
            )
        return errors

    def setup(
        self, subscriptions: Sequence[tuple[str, str, bool]], *, dry_run: bool = False
    ) -> list[str]:
        groups = sorted({group for _, group, _ in subscriptions})
        if not dry_run:
            start_cursors(self.database, groups)
        return []

    # -- relay side ---------------------------------------------------------------------

    def logged(self, events: Sequence[Outgoing]) -> None:
        """The relay moved ``events`` into the log: every group's cursor reads them
        there, so only idle workers need waking."""
        if events:
            self._wake()

    def housekeeping(self) -> None:
        super().housekeeping()
        now = time.monotonic()
        if now < self._rotate_at:
            return
        if not self.rotates:
            self._rotate_at = now + ROTATE_EVERY
            cursors = sql.table(self._connection, "GroupCursor")
            self._execute(
                f"DELETE FROM {cursors} c WHERE c.id < (SELECT max(h.id) FROM {cursors} h "
                "WHERE h.group_name = c.group_name)",
                [],
            )
            return
        # A rotation that gave up tries again soon: it waits for no more than a moment.
        done = rotate(self.database)
        self._rotate_at = now + (ROTATE_EVERY if done else ROTATE_EVERY / 10)

    # -- worker side --------------------------------------------------------------------

    def _claim_waiting(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        pairs: list[tuple[str, str]] | None,
        types: Mapping[str, Collection[str]] | None,
        max_bytes: int | None,
    ) -> list[Claimed]:
        """Delivery rows first (retries, events waiting behind their key, given back),
        then the groups' cursors; what a cursor diverts to delivery rows is claimed in the
        same call when there is room."""
        claimed = super()._claim_waiting(groups, limit, lease, pairs, types, max_bytes)
        room = limit - len(claimed)
        budget = None if max_bytes is None else max_bytes - sum(c.size for c in claimed)
        if room <= 0 or (budget is not None and budget <= 0 and claimed):
            return claimed
        leased, diverted = self._from_log(groups, room, lease, types, budget)
        claimed += leased
        room = limit - len(claimed)
        if diverted and room > 0:
            self._lower_floors(diverted)
            budget = None if max_bytes is None else max_bytes - sum(c.size for c in claimed)
            if budget is None or budget > 0 or not claimed:
                claimed += super()._claim_waiting(groups, room, lease, pairs, types, budget)
        return claimed

    def _from_log(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        types: Mapping[str, Collection[str]] | None,
        max_bytes: int | None,
    ) -> tuple[list[Claimed], list[tuple[str, str, int]]]:
        """Claim up to ``limit`` events from the groups' cursors, groups taking turns at
        coming first; returns them and the ``(group, type, position)`` of those diverted."""
        self._group_turn = (self._group_turn + 1) % len(groups)
        turned = [*groups[self._group_turn :], *groups[: self._group_turn]]
        claimed: list[Claimed] = []
        diverted: list[tuple[str, str, int]] = []
        alone = limit == 1
        own = self.context.subscriptions()
        for group in turned:
            want = limit - len(claimed)
            if want <= 0:
                break
            token = uuid.uuid4().hex
            handled = None if types is None else sorted(types.get(group, ()))
            # This deployment's own handlers count as declared, even before they are stored
            # (as the relay's fan-out counts them).
            mine = sorted({t for t, g, _ in own if g == group})
            mine_ordered = sorted({t for t, g, o in own if g == group and o})
            rows = self._execute(
                "SELECT * FROM django_events_log_claim(%s, %s, %s, %s, %s, %s, %s, %s)",
                [group, want, token, float(lease), handled, alone, mine, mine_ordered],
            )
            for row in rows:
                if row[0] is None:
                    diverted.append((group, row[3], row[1]))
                    continue
                claimed.append(self._leased(group, row, token))
        if max_bytes is not None and claimed:
            sizes = (c.size for c in claimed)
            taken = within_budget(sizes, max_bytes)
            if taken < len(claimed):
                self.release(claimed[taken:])
                claimed = claimed[:taken]
        return claimed, diverted

    def _leased(self, group: str, row: Sequence[Any], token: str) -> Claimed:
        lease_id, position, event_id, *stored = row
        claimed = self._claimed((None, event_id, group, 1, None, event_id, *stored), token)
        claimed.receipt = LeaseReceipt(lease_id, position, token)
        claimed.size = text_size(stored[3], stored[4])
        return claimed

    def _lower_floors(self, diverted: Sequence[tuple[str, str, int]]) -> None:
        """Delivery rows were just written at these positions: a claim's floor must not
        pass them by (docs/internals.md, "The claim's floor")."""
        for group, event_type, position in diverted:
            for pair in ((group, event_type), (group, "")):
                if pair in self._floors and self._floors[pair] > position:
                    self._floors[pair] = position

    def _orphan(
        self, groups: Sequence[str], lease: float, pairs: list[tuple[str, str]] | None
    ) -> list[Claimed]:
        self._break_up_dead_leases()
        return super()._orphan(groups, lease, pairs)

    def _break_up_dead_leases(self) -> None:
        """A lease whose time ran out, or whose claimer's connection is gone, becomes one
        claimed-looking delivery row per event, with its lease, claimer and whether it was
        claimed alone: the orphan claim then brings each back alone, and counts the death
        as an attempt only for an event claimed alone, as for any delivery row."""
        delivery, event = self._tables()
        leases = sql.table(self._connection, "Lease")
        self._execute(
            f"WITH dead AS (DELETE FROM {leases} l WHERE l.id = ANY(ARRAY(SELECT d.id FROM "
            f"{leases} d WHERE d.claimed_until < statement_timestamp() OR NOT EXISTS (SELECT 1 "
            "FROM pg_stat_activity a WHERE a.pid = d.claimer) FOR UPDATE SKIP LOCKED)) "
            "RETURNING l.*) "
            f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, ordered, "
            "attempts, available_at, claimed_until, claimed_alone, claimer, lease_token, parked, "
            "last_error, created_at) SELECT e.id, d.group_name, e.type, e.position, e.key, "
            "FALSE, 1, statement_timestamp(), d.claimed_until, d.claimed_alone, d.claimer, "
            f"d.lease_token, FALSE, '', statement_timestamp() FROM dead d "
            f"CROSS JOIN LATERAL unnest(d.positions) AS p(position) JOIN {event} e "
            "ON e.position = p.position",
            [],
        )

    # -- outcomes -----------------------------------------------------------------------

    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        rows, leased = _split(claimed)
        if rows:
            super().renew(rows, lease)
        if not leased:
            return
        leases = sql.table(self._connection, "Lease")
        # A handler's transaction holds its lease with FOR KEY SHARE (``hold``, a batch of
        # one too: ``ack_locks_batch``), which this lock does not wait for: the batch's
        # other events stay leased while one is handled. A lease being acknowledged is
        # locked FOR UPDATE: skip it (docs/internals.md, "The log transport").
        self._execute(
            f"UPDATE {leases} SET claimed_until = statement_timestamp() + make_interval(secs => "
            f"%s) WHERE id = ANY(ARRAY(SELECT id FROM {leases} WHERE id = ANY(%s) AND "
            "lease_token = ANY(%s) FOR NO KEY UPDATE SKIP LOCKED))",
            [
                float(lease),
                sorted({c.receipt.lease for c in leased}),
                sorted({c.receipt.token for c in leased}),
            ],
        )

    def hold(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        rows, leased = _split(claimed)
        held = super().hold(rows) if rows else []
        if not leased:
            return held
        leases = sql.table(self._connection, "Lease")
        # FOR KEY SHARE: no break-up (a delete) takes the lease from under the handler,
        # and the heartbeat's renewal (an update of ``claimed_until``) is not held back,
        # since one lease row keeps the whole batch (docs/internals.md, "The log transport").
        found = self._execute(
            f"SELECT id, lease_token, positions FROM {leases} WHERE id = ANY(%s) "
            "ORDER BY id FOR KEY SHARE",
            [sorted({c.receipt.lease for c in leased})],
        )
        holding = {(i, p, t) for i, t, positions in found for p in positions}
        return held + [c for c in leased if tuple(c.receipt) in holding]

    def ack_many(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        rows, leased = _split(claimed)
        acked = {id(c) for c in [*(super().ack_many(rows) if rows else []), *self._trim(leased)]}
        return [c for c in claimed if id(c) in acked]

    def ack(self, claimed: Claimed) -> bool:
        return bool(self.ack_many([claimed]))

    def _trim(self, leased: Sequence[Claimed]) -> list[Claimed]:
        """Take these events out of their leases (a lease left empty is deleted); return
        those whose lease still held them."""
        if not leased:
            return []
        leases = sql.table(self._connection, "Lease")
        rows = self._execute(
            "WITH a AS (SELECT u.id, u.token, array_agg(u.position) AS ps FROM "
            "unnest(%s::bigint[], %s::text[], %s::bigint[]) AS u(id, token, position) "
            "GROUP BY u.id, u.token), "
            f"old AS (SELECT l.id, l.positions FROM {leases} l JOIN a ON a.id = l.id "
            "AND a.token = l.lease_token FOR UPDATE OF l), "
            f"gone AS (DELETE FROM {leases} l USING old, a WHERE l.id = old.id AND a.id = old.id "
            "AND old.positions <@ a.ps), "
            f"kept AS (UPDATE {leases} l SET positions = ARRAY(SELECT p FROM "
            "unnest(old.positions) AS p WHERE p <> ALL(a.ps) ORDER BY p) FROM old, a "
            "WHERE l.id = old.id AND a.id = old.id AND NOT old.positions <@ a.ps) "
            "SELECT old.id, p FROM old JOIN a ON a.id = old.id CROSS JOIN LATERAL "
            "unnest(old.positions) AS p WHERE p = ANY(a.ps)",
            [
                [c.receipt.lease for c in leased],
                [c.receipt.token for c in leased],
                [c.receipt.position for c in leased],
            ],
        )
        held = {(lease_id, position) for lease_id, position in rows}
        return [c for c in leased if (c.receipt.lease, c.receipt.position) in held]

    def _return(
        self, leased: Sequence[Claimed], *, delay: float, error: str, counted: bool
    ) -> list[Claimed]:
        """Move events out of their leases into delivery rows, due in ``delay`` seconds:
        a retry (``counted``: the attempt stays counted) or a release (given back)."""
        delivery, event = self._tables()
        with transaction.atomic(using=self.database):
            held = self._trim(leased)
            if not held:
                return []
            attempts = [c.attempt if counted else max(c.attempt - 1, 0) for c in held]
            failed = "statement_timestamp()" if counted else "NULL"
            self._execute(
                f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, "
                "ordered, attempts, available_at, claimed_alone, parked, last_error, "
                "first_failed_at, created_at) SELECT e.id, u.g, e.type, e.position, e.key, "
                "FALSE, u.a, statement_timestamp() + make_interval(secs => %s), FALSE, FALSE, "
                f"%s, {failed}, statement_timestamp() FROM unnest(%s::bigint[], %s::text[], "
                f"%s::integer[]) AS u(p, g, a) JOIN {event} e ON e.position = u.p",
                [
                    float(delay),
                    error[:2000],
                    [c.receipt.position for c in held],
                    [c.group for c in held],
                    attempts,
                ],
            )
        self._floor_may_be_passed()
        return held

    def release(self, claimed: Sequence[Claimed]) -> None:
        rows, leased = _split(claimed)
        if rows:
            super().release(rows)
        if leased:
            self._return(leased, delay=0.0, error="", counted=False)

    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        if isinstance(claimed.receipt, LeaseReceipt):
            self._return([claimed], delay=delay, error=error, counted=True)
        else:
            super().retry_later(claimed, delay, error)

    def dead_letter(self, claimed: Claimed) -> bool:
        if isinstance(claimed.receipt, LeaseReceipt):
            # Leased events are unordered: nothing stays parked.
            return bool(self._trim([claimed]))
        return super().dead_letter(claimed)

    # -- what the admin and ``events_status`` see ---------------------------------------

    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        """Delivery rows as for ``DatabaseTransport``, plus, for the groups asked only, the
        log's events past each one's cursor (pending) and its leases (in flight): a group
        nobody consumes has its cursor far back, and counting what it is owed walks the
        log from there (a worker's chart sample, once a minute, stalled it for seconds)."""
        found = super().status(groups)
        cursors = sql.table(self._connection, "GroupCursor")
        leases = sql.table(self._connection, "Lease")
        subscriptions = sql.table(self._connection, "Subscription")
        _, event = self._tables()
        # Past the cursor, found from its window's oldest transaction on.
        past = (
            f"FROM {event} l WHERE l.txid >= pg_snapshot_xmin(h.lo::pg_snapshot) "
            f'AND l.type IN (SELECT s.event_type FROM {subscriptions} s WHERE s."group" = '
            f"h.group_name) AND {not_passed('l', 'h')}"
        )
        rows = self._execute(
            f"SELECT h.group_name, (SELECT count(*) {past}), (SELECT extract(epoch FROM "
            f"statement_timestamp() - min(l.recorded_at)) {past}), "
            f"(SELECT COALESCE(sum(cardinality(k.positions)), 0) FROM {leases} k WHERE "
            "k.group_name = h.group_name AND k.claimed_until >= statement_timestamp()) FROM "
            f"{heads(cursors, 'c.group_name = ANY(%s)')} h",
            [list(groups)],
        )
        for group, pending, age, in_flight in rows:
            was = found.get(group, GroupStatus())
            oldest = was.oldest_pending_age_s
            if age is not None:
                oldest = max(oldest or 0.0, round(float(age), 3))
            found[group] = GroupStatus(
                pending=was.pending + int(pending),
                in_flight=was.in_flight + int(in_flight),
                oldest_pending_age_s=oldest,
                retrying=was.retrying,
                parked=was.parked,
                lagging=was.lagging,
            )
        return {group: found.get(group, GroupStatus()) for group in sorted({*groups, *found})}


def _split(claimed: Sequence[Claimed]) -> tuple[list[Claimed], list[Claimed]]:
    """The claims made from delivery rows, and those made from the log."""
    rows: list[Claimed] = []
    leased: list[Claimed] = []
    for item in claimed:
        (leased if isinstance(item.receipt, LeaseReceipt) else rows).append(item)
    return rows, leased
