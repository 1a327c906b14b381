"""Level 0, second generation: each group reads the event log through a cursor.

Today's database transport writes one delivery row per event and group, updates it at
the claim and deletes it at the acknowledgement. Here a group's progress is a cursor
over the log, appended by each claim that moves it, and a claimed batch is one lease
row: the per-event writes are gone for every event that succeeds at its first attempt.
Events that fail, wait behind their key (ordered subscriptions), are of a type the
claiming worker does not handle, or were replayed or released become ordinary delivery
rows and take the path of ``DatabaseTransport``, which this class extends. The design,
its measurements and what each guarantee rests on: docs/internals.md, "The log
transport". On PostgreSQL a cursor is a window of commits between two snapshots; on
SQLite, which has one writer, a position (``SQLiteLog``).
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from django.core.checks import CheckMessage, Error
from django.db import DatabaseError, OperationalError, connections, transaction

from ..engine import sql
from ..engine.sql import index_scans_only
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
        f"{head}.lo::pg_snapshot) AND {row}.position > {head}.pos)) "
        f"AND NOT {handed_itself(row, head)}"
    )


def handed_itself(row: str, head: str) -> str:
    """SQL: the log row ``row`` is one this transaction published and its claim already
    handed to the group of cursor ``head`` (a claim inside the publishing transaction,
    ``deliver()`` in a ``TestCase``: migration 0016 and docs/internals.md, "The log
    transport"). Its xid is running in every snapshot the cursor stores, so the snapshots
    alone would count it owed. The transaction's xid is read once per statement (an
    InitPlan); for any other row the test is one comparison."""
    mark = f"current_setting('django_events.own_' || md5({head}.group_name), true)"
    return (
        f"(CASE WHEN {row}.txid = (SELECT pg_current_xact_id_if_assigned()) THEN "
        f"{row}.position <= COALESCE(NULLIF({mark}, '')::bigint, 0) ELSE FALSE END)"
    )


def start_cursors(using: str, groups: Sequence[str]) -> None:
    """Give each of ``groups`` that has no cursor one where the most advanced group is, or
    at the log's beginning if no group has one (docs/internals.md, "The log transport"),
    in the caller's transaction (one of its own if there is none), under each such
    group's claim lock to its commit: a claim meanwhile would start a cursor too."""
    if groups:
        with transaction.atomic(using=using):
            log_sql(using).start_cursors_beside_claims(using, groups)


def delivered_elsewhere(using: str) -> bool:
    """Whether ``using``'s log holds events a transport without cursors has handled: no
    group has a cursor and no move is under way, yet the inbox, the delivery rows or the
    dead letters hold something. Here a group's cursor is written before any of its
    events is handed out (a claim or a fan-out starts it), so that history is another
    transport's, and a first claim would start at the log's beginning (the check E011;
    docs/internals.md, "The log transport", the switch's guard)."""
    from ..models import DeadLetter, Delivery, EventRecord, GroupCursor, InboxRecord, Move

    try:
        if GroupCursor.objects.using(using).exists():
            return False
        if not EventRecord.objects.using(using).exists():
            return False
        # A move into this transport shares its database, where its row is.
        if Move.objects.using(using).filter(finished_at__isnull=True).exists():
            return False
        handled = (InboxRecord, Delivery, DeadLetter)
        return any(model.objects.using(using).exists() for model in handled)
    except DatabaseError:  # not migrated yet: `migrate` and the worker say so
        return False


def place_cursors_now(using: str, groups: Sequence[str]) -> None:
    """Give each of ``groups``, each group with a subscription and each with a cursor a new
    cursor past every event committed so far and before every one committed later. The
    move from ``DatabaseTransport`` calls it in the transaction that records the cutover,
    under the relay's lock (docs/moving.md, "Into the log transport")."""
    log_sql(using).place_cursors_now(using, groups)


def keep_from_cursors(using: str, event_ids: Sequence[uuid.UUID]) -> None:
    """Take these log rows, written in this transaction for the groups given delivery rows
    only (edit and retry's corrected copy), out of every group's cursor: on PostgreSQL
    ``txid`` becomes NULL, in no window; on SQLite the row's ``rowid`` becomes its position
    negated, which no other row's is, and the position walks skip it. Replay, retention's
    delivery-row guard and the admin read them as any row (docs/internals.md, "The log
    transport", log rows for one group)."""
    if event_ids:
        log_sql(using).keep_from_cursors(using, event_ids)


def _execute(using: str, query: str, params: Sequence[Any], *, prepared: bool = False) -> Any:
    with sql.cursor(connections[using], prepared=prepared) as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else cursor.rowcount


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
        self._rows_first = True
        """The next claim looks at delivery rows before the cursors: the last look found
        some, or none was taken (``_claim_waiting``)."""
        self._declared_started = False
        """Every declared group's cursor has been started, once, before the first claim
        (``_start_declared``)."""

    @property
    def _log(self) -> LogSQL:
        return log_sql(self.database)

    def subscription_store(self) -> LogStore:
        if self._store is None or not isinstance(self._store, LogStore):
            self._store = LogStore(self.database)
        return self._store

    def check(self) -> list[CheckMessage]:
        errors = super().check()
        if (
            self.rotates
            and self.database in connections.settings
            and self._connection.vendor != "postgresql"
        ):
            errors.append(
                Error(
                    f"LogTransport {self.alias!r} sets OPTIONS['rotate'], which needs "
                    f"PostgreSQL (partitions emptied by TRUNCATE); database {self.database!r} "
                    f"is {self._connection.vendor}, where old cursor rows are deleted instead.",
                    hint="Remove 'rotate' from the transport's OPTIONS.",
                    id="django_events.E010",
                )
            )
        return errors

    def check_server(self) -> list[CheckMessage]:
        errors = super().check_server()
        if self.database in connections.settings and delivered_elsewhere(self.database):
            errors.append(
                Error(
                    f"LogTransport {self.alias!r}: database {self.database!r} holds events "
                    "another transport has handled (inbox records, delivery rows or dead "
                    "letters) and no group has a cursor yet, so each group's first claim "
                    "would start at the log's beginning and hand out again every event "
                    "logged since migration 0014.",
                    hint="Switch with the recorded move, which starts the cursors at its "
                    "cutover: keep DatabaseTransport as 'default', add this transport under "
                    "another alias and run 'manage.py move_transport default <alias>' "
                    '(docs/moving.md, "Into the log transport").',
                    id="django_events.E011",
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

    def _fan_out(
        self,
        events: Sequence[Outgoing],
        subscriptions: Sequence[tuple[str, str, bool]],
        *,
        again: bool,
    ) -> None:
        """Delivery rows, as ``DatabaseTransport`` writes them, for the groups ``events``
        reach by no other path: a group whose cursor has not passed an event, or whose
        lease holds it, gets it there, and a row too would be a second delivery (two
        dead letters for one event). A replay of what a group still owes writes nothing
        for it; ``again`` (``republish``) also skips the events a group owes in a
        delivery row, as there. A group with no cursor yet gets its cursor first, in this
        transaction: its first claim would start one where the most advanced group is,
        perhaps before these events, and hand them out beside their rows
        (docs/internals.md, "One path per event")."""
        groups = sorted({group for _, group, _ in subscriptions})
        with transaction.atomic(using=self.database):
            self._log.start_cursors_beside_claims(self.database, groups)
            owed = self._owed_already(events, groups)
            if not owed:
                super()._fan_out(events, subscriptions, again=again)
                return
            for group in groups:
                rest = [event for event in events if (group, event.position) not in owed]
                if rest:
                    mine = [s for s in subscriptions if s[1] == group]
                    super()._fan_out(rest, mine, again=again)

    def redeliver(self, event_id: uuid.UUID, group: str) -> None:
        """``DatabaseTransport``'s delivery row (a dead letter retried or redirected),
        unless ``group`` subscribes to the event's type and its cursor has not passed the
        event or its lease holds it: the group gets it there, and a row too would be a
        second delivery. A group with no cursor yet gets it first, as in ``_fan_out``
        (docs/internals.md, "One path per event")."""
        with transaction.atomic(using=self.database):
            self._log.start_cursors_beside_claims(self.database, [group])
            _, event = self._tables()
            found = self._execute(
                f"SELECT position, type FROM {event} WHERE id = %s",
                [self._sql.uuid_value(event_id)],
            )
            owed = (
                found
                and self._subscribes(group, found[0][1])
                and self._log.owed_already(self.database, [group], [found[0][0]])
            )
            if not owed:  # or not in the log at all: DatabaseTransport's error says so
                super().redeliver(event_id, group)

    def _subscribes(self, group: str, event_type: str) -> bool:
        """Whether a claim of ``group`` walks ``event_type``: a stored subscription (any
        service's) or this deployment's own handler."""
        pairs = [*self.subscription_store().fan_out(), *self.context.subscriptions()]
        return any((t, g) == (event_type, group) for t, g, _ in pairs)

    def _owed_already(
        self, events: Sequence[Outgoing], groups: Collection[str]
    ) -> set[tuple[str, int]]:
        """The (group, position) pairs of ``events`` and ``groups`` that a cursor or a
        lease of the group will hand out anyway."""
        if not events or not groups:
            return set()
        rows = self._log.owed_already(self.database, sorted(groups), [e.position for e in events])
        return {(group, int(position)) for group, position in rows}

    def housekeeping(self) -> None:
        super().housekeeping()
        now = time.monotonic()
        if now < self._rotate_at:
            return
        if not self.rotates:
            self._rotate_at = now + ROTATE_EVERY
            cursors = sql.table(self._connection, "GroupCursor")
            self._execute(
                f"DELETE FROM {cursors} AS c WHERE c.id < (SELECT max(h.id) FROM {cursors} h "
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
        """Delivery rows (retries, ordered types, given back) and the groups' cursors;
        what a cursor diverts to delivery rows is claimed in the same call when there is
        room.

        Delivery rows come first, unless the last look at them found none: then the
        cursors do, and a call whose cursors gave events skips the rows and looks at them
        first next time. A wake-up on an idle worker reaches the handler without a claim
        of rows that are not there, and rows wait at most one call (docs/internals.md,
        "The log transport", the claim's order). Key order does not depend on it: an
        ordered type's events are all delivery rows."""
        rows_first = self._rows_first
        looked = found = False
        claimed: list[Claimed] = []
        if rows_first:
            claimed = super()._claim_waiting(groups, limit, lease, pairs, types, max_bytes)
            looked, found = True, bool(claimed)
        room = limit - len(claimed)
        budget = None if max_bytes is None else max_bytes - sum(c.size for c in claimed)
        if room > 0 and (budget is None or budget > 0 or not claimed):
            leased, diverted = self._from_log(groups, room, lease, types, budget)
            claimed += leased
            room = limit - len(claimed)
            if diverted:
                self._lower_floors(diverted)
            budget = None if max_bytes is None else max_bytes - sum(c.size for c in claimed)
            fits = budget is None or budget > 0 or not claimed
            if room > 0 and fits and (diverted or not (rows_first or leased)):
                rows = super()._claim_waiting(groups, room, lease, pairs, types, budget)
                claimed += rows
                looked, found = True, found or bool(rows)
            found = found or bool(diverted)
        self._rows_first = found or not looked
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
        if not self._declared_started:
            self._start_declared()
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
            rows = self._log.claim(
                self.database, group, want, token, lease, handled, alone, mine, mine_ordered
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

    def _start_declared(self) -> None:
        """Start the cursor of every group declared here (the subscriptions of every
        service, and this deployment's own) that has none, before this process's first
        claim. Groups declared under another transport's store (``migrate`` on the
        database transport, before ``BACKEND`` named this one) have no cursor: without
        this, the first group to claim would start at the log's beginning and each of the
        others where that one had got to, past events it never saw. Started together they
        all start at the beginning; a group declared later starts where the most advanced
        is, as before (docs/internals.md, "The log transport", "A group's start")."""
        from ..models import Subscription

        declared = set(Subscription.objects.using(self.database).values_list("group", flat=True))
        own = {group for _, group, _ in self.context.subscriptions()}
        start_cursors(self.database, sorted(declared | own))
        self._declared_started = True

    def _leased(self, group: str, row: Sequence[Any], token: str) -> Claimed:
        lease_id, position, event_id, *stored = row
        claimed = self._claimed(
            (None, event_id, group, 1, None, event_id, *stored), token, log_position=position
        )
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
        """A lease whose time ran out, or (PostgreSQL) whose claimer's connection is gone,
        becomes one claimed-looking delivery row per event, with its lease, claimer and
        whether it was claimed alone: the orphan claim then brings each back alone, and
        counts the death as an attempt only for an event claimed alone, as for any
        delivery row."""
        self._log.break_up_dead_leases(self.database)

    # -- outcomes -----------------------------------------------------------------------

    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        rows, leased = _split(claimed)
        if rows:
            super().renew(rows, lease)
        if leased:
            self._log.renew(
                self.database,
                sorted({c.receipt.lease for c in leased}),
                sorted({c.receipt.token for c in leased}),
                lease,
            )

    def hold(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        rows, leased = _split(claimed)
        held = super().hold(rows) if rows else []
        if not leased:
            return held
        found = self._log.hold(self.database, sorted({c.receipt.lease for c in leased}))
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
        held = self._log.trim(self.database, [tuple(c.receipt) for c in leased])
        return [c for c in leased if (c.receipt.lease, c.receipt.position) in held]

    def _return(
        self, leased: Sequence[Claimed], *, delay: float, error: str, counted: bool
    ) -> list[Claimed]:
        """Move events out of their leases into delivery rows, due in ``delay`` seconds:
        a retry (``counted``: the attempt stays counted) or a release (given back)."""
        with transaction.atomic(using=self.database):
            held = self._trim(leased)
            if not held:
                return []
            returned = [
                (c.receipt.position, c.group, c.attempt if counted else max(c.attempt - 1, 0))
                for c in held
            ]
            self._log.to_deliveries(
                self.database, returned, delay=delay, error=error[:2000], counted=counted
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
        log's events past each one's cursor (pending) and its leases (in flight), found
        the way a claim finds them: index scans only, never the whole log (a worker's
        chart sample, once a minute, stalled it for seconds: docs/internals.md, "The log
        transport", status)."""
        found = super().status(groups)
        for group, pending, age, in_flight in self._log.status(self.database, groups):
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

    def backlog_by_type(self) -> dict[tuple[str, str], int]:
        """Delivery rows as ``DatabaseTransport`` counts them, plus, per group and type,
        the log's events of a subscribed type its cursor has not passed and those in its
        leases: what a retired subscription still holds (``events_status``, the admin,
        W050). It walks the log from every group's cursor, as ``status()`` does for the
        groups it is asked about (docs/internals.md, "The log transport")."""
        found = super().backlog_by_type()
        for group, event_type, count in self._log.backlog(self.database):
            found[(group, event_type)] = found.get((group, event_type), 0) + int(count)
        return found

    def drop_backlog(self, group: str, event_type: str) -> int:
        """The pair's delivery rows are deleted; its events past the group's cursor are
        dropped by the subscription's removal itself (a claim walks the subscribed types
        only), and counted here, so the operator is told what went."""
        dropped = super().drop_backlog(group, event_type)
        return dropped + int(self._log.past_cursor(self.database, group, event_type))


def _split(claimed: Sequence[Claimed]) -> tuple[list[Claimed], list[Claimed]]:
    """The claims made from delivery rows, and those made from the log."""
    rows: list[Claimed] = []
    leased: list[Claimed] = []
    for item in claimed:
        (leased if isinstance(item.receipt, LeaseReceipt) else rows).append(item)
    return rows, leased


class LogSQL:
    """The log transport's statements that differ between databases: one class per
    database, chosen once per alias by ``log_sql(using)``, as the engine's dialects are
    (docs/internals.md, "One class per database"). A receipt is ``(lease, position,
    token)``; a claim returns rows shaped as the PostgreSQL claim function's: the lease
    id (``None`` for an event diverted to a delivery row), the position, then the event's
    stored fields (``DatabaseTransport._claimed``'s order)."""

    def start_cursors(self, using: str, groups: Sequence[str]) -> None:
        raise NotImplementedError

    def place_cursors_now(self, using: str, groups: Sequence[str]) -> None:
        raise NotImplementedError

    def start_cursors_beside_claims(self, using: str, groups: Sequence[str]) -> None:
        """``start_cursors`` outside a claim (a replay's publish), in the caller's
        transaction: a group without a cursor gets exactly one, here or by its claim,
        never both. On SQLite any writer waits for the one before it."""
        self.start_cursors(using, groups)

    def keep_from_cursors(self, using: str, event_ids: Sequence[uuid.UUID]) -> None:
        """``keep_from_cursors``: mark these log rows so that no cursor reads them."""
        raise NotImplementedError

    def claim(
        self,
        using: str,
        group: str,
        want: int,
        token: str,
        lease: float,
        handled: list[str] | None,
        alone: bool,
        mine: list[str],
        mine_ordered: list[str],
    ) -> list[Sequence[Any]]:
        raise NotImplementedError

    def break_up_dead_leases(self, using: str) -> None:
        raise NotImplementedError

    def renew(self, using: str, leases: list[int], tokens: list[str], lease: float) -> None:
        raise NotImplementedError

    def hold(self, using: str, leases: list[int]) -> list[tuple[int, str, list[int]]]:
        """Each of ``leases`` still there, as ``(id, token, positions)``, kept from a
        break-up until the caller's transaction ends."""
        raise NotImplementedError

    def trim(self, using: str, receipts: list[tuple[int, int, str]]) -> set[tuple[int, int]]:
        """Take the receipts' positions out of their leases (one left empty is deleted);
        return the ``(lease, position)`` pairs whose lease still held them."""
        raise NotImplementedError

    def to_deliveries(
        self,
        using: str,
        returned: list[tuple[int, str, int]],
        *,
        delay: float,
        error: str,
        counted: bool,
    ) -> None:
        """One delivery row per ``(position, group, attempts)``, due in ``delay`` seconds."""
        raise NotImplementedError

    def status(self, using: str, groups: Sequence[str]) -> list[Sequence[Any]]:
        """Per group of ``groups`` with a cursor: its events past the cursor, the oldest
        one's age in seconds, and the events in its live leases."""
        raise NotImplementedError

    def backlog(self, using: str) -> list[Sequence[Any]]:
        """``(group, type, count)``: each group's events of its subscribed types past its
        cursor, and those in its leases (a pair may come twice: the caller adds them)."""
        raise NotImplementedError

    def past_cursor(self, using: str, group: str, event_type: str) -> int:
        """``group``'s events of ``event_type`` past its cursor, subscribed or not."""
        raise NotImplementedError

    def unread(self, connection: Any) -> str:
        """A condition on the log row ``t``: no lease holds it and no group's cursor still
        owes it (retention's guard)."""
        raise NotImplementedError

    def read_by_its_group(self, connection: Any) -> str:
        """A condition on the inbox row ``t``: its group ``t.group_name`` is owed
        ``t.event_id`` by none of its leases, and its cursor has passed the event's log row
        (whatever the type: a pair declared again is owed what the cursor has not passed).
        One primary-key lookup of the log row per inbox row; no log row, nothing owed
        (retention's inbox guard, beside the delivery rows')."""
        raise NotImplementedError

    def owed_already(
        self, using: str, groups: list[str], positions: list[int]
    ) -> list[Sequence[Any]]:
        """The ``(group, position)`` pairs of ``groups`` and ``positions`` that the
        group's cursor has not passed or one of its leases holds."""
        raise NotImplementedError


class PostgreSQLLog(LogSQL):
    """Cursors over windows of commits, the claim in the PL/pgSQL function
    ``django_events_log_claim`` (migration 0015): positions are drawn before commit, so
    commit order is not position order here."""

    def start_cursors(self, using: str, groups: Sequence[str]) -> None:
        cursors = sql.table(connections[using], "GroupCursor")
        _execute(
            using,
            f"INSERT INTO {cursors} (slot, group_name, lo, hi, pos, last, created_at) "
            "SELECT COALESCE(f.slot, 0), g, COALESCE(f.lo, '1:1:'), COALESCE(f.hi, '1:1:'), "
            "COALESCE(f.pos, 0), COALESCE(f.last, 0), statement_timestamp() "
            "FROM unnest(%s::text[]) AS g "
            f"LEFT JOIN (SELECT h.slot, h.lo, h.hi, h.pos, h.last FROM {heads(cursors)} h "
            "ORDER BY pg_snapshot_xmax(h.hi::pg_snapshot) DESC, h.pos DESC LIMIT 1) f ON TRUE "
            f"WHERE NOT EXISTS (SELECT 1 FROM {cursors} c WHERE c.group_name = g)",
            [list(groups)],
        )

    def start_cursors_beside_claims(self, using: str, groups: Sequence[str]) -> None:
        cursors = sql.table(connections[using], "GroupCursor")
        # Each claim takes its group's lock before it starts the group's cursor: taken
        # here too, until the caller's commit, for the groups that have none (a claim
        # that finds it taken waits for it briefly, then passes on to its next group;
        # docs/internals.md, "The log transport"). The insert that follows,
        # a statement of its own, sees a cursor a claim committed meanwhile.
        missing = _execute(
            using,
            "SELECT g, pg_advisory_xact_lock(%s, hashtext(g)) FROM unnest(%s::text[]) AS g "
            f"WHERE NOT EXISTS (SELECT 1 FROM {cursors} c WHERE c.group_name = g)",
            [GROUP_LOCK, sorted(groups)],
        )
        if missing:
            self.start_cursors(using, [group for group, _ in missing])

    def place_cursors_now(self, using: str, groups: Sequence[str]) -> None:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        subscriptions = sql.table(connection, "Subscription")
        event = sql.table(connection, "EventRecord")
        # At this transaction's snapshot: past every event committed so far, before every
        # one committed later, whatever its position.
        _execute(
            using,
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

    def keep_from_cursors(self, using: str, event_ids: Sequence[uuid.UUID]) -> None:
        # In no window, as the rows logged before migration 0014 (``not_passed``, the
        # claim function): the version written with the transaction's id is never
        # visible to another, and ``txid`` is indexed, so the update is not HOT.
        event = sql.table(connections[using], "EventRecord")
        _execute(
            using,
            f"UPDATE {event} SET txid = NULL WHERE id = ANY(%s::uuid[])",
            [list(event_ids)],
        )

    def claim(
        self,
        using: str,
        group: str,
        want: int,
        token: str,
        lease: float,
        handled: list[str] | None,
        alone: bool,
        mine: list[str],
        mine_ordered: list[str],
    ) -> list[Sequence[Any]]:
        return _execute(
            using,
            "SELECT * FROM django_events_log_claim(%s, %s, %s, %s, %s, %s, %s, %s)",
            [group, want, token, float(lease), handled, alone, mine, mine_ordered],
            prepared=True,
        )

    def break_up_dead_leases(self, using: str) -> None:
        connection = connections[using]
        delivery = sql.table(connection, "Delivery")
        event = sql.table(connection, "EventRecord")
        leases = sql.table(connection, "Lease")
        _execute(
            using,
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

    def renew(self, using: str, leases: list[int], tokens: list[str], lease: float) -> None:
        table = sql.table(connections[using], "Lease")
        # A handler's transaction holds its lease with FOR KEY SHARE (``hold``, a batch of
        # one too: ``ack_locks_batch``), which this lock does not wait for: the batch's
        # other events stay leased while one is handled. A lease being acknowledged is
        # locked FOR UPDATE: skip it (docs/internals.md, "The log transport").
        _execute(
            using,
            f"UPDATE {table} SET claimed_until = statement_timestamp() + make_interval(secs => "
            f"%s) WHERE id = ANY(ARRAY(SELECT id FROM {table} WHERE id = ANY(%s) AND "
            "lease_token = ANY(%s) FOR NO KEY UPDATE SKIP LOCKED))",
            [float(lease), leases, tokens],
        )

    def hold(self, using: str, leases: list[int]) -> list[tuple[int, str, list[int]]]:
        table = sql.table(connections[using], "Lease")
        # FOR KEY SHARE: no break-up (a delete) takes the lease from under the handler,
        # and the heartbeat's renewal (an update of ``claimed_until``) is not held back,
        # since one lease row keeps the whole batch (docs/internals.md, "The log transport").
        return _execute(
            using,
            f"SELECT id, lease_token, positions FROM {table} WHERE id = ANY(%s) "
            "ORDER BY id FOR KEY SHARE",
            [leases],
            prepared=True,
        )

    def trim(self, using: str, receipts: list[tuple[int, int, str]]) -> set[tuple[int, int]]:
        table = sql.table(connections[using], "Lease")
        rows = _execute(
            using,
            "WITH a AS (SELECT u.id, u.token, array_agg(u.position) AS ps FROM "
            "unnest(%s::bigint[], %s::text[], %s::bigint[]) AS u(id, token, position) "
            "GROUP BY u.id, u.token), "
            f"old AS (SELECT l.id, l.positions FROM {table} l JOIN a ON a.id = l.id "
            "AND a.token = l.lease_token FOR UPDATE OF l), "
            f"gone AS (DELETE FROM {table} l USING old, a WHERE l.id = old.id AND a.id = old.id "
            "AND old.positions <@ a.ps), "
            f"kept AS (UPDATE {table} l SET positions = ARRAY(SELECT p FROM "
            "unnest(old.positions) AS p WHERE p <> ALL(a.ps) ORDER BY p) FROM old, a "
            "WHERE l.id = old.id AND a.id = old.id AND NOT old.positions <@ a.ps) "
            "SELECT old.id, p FROM old JOIN a ON a.id = old.id CROSS JOIN LATERAL "
            "unnest(old.positions) AS p WHERE p = ANY(a.ps)",
            [[r[0] for r in receipts], [r[2] for r in receipts], [r[1] for r in receipts]],
            prepared=True,
        )
        return {(lease_id, position) for lease_id, position in rows}

    def to_deliveries(
        self,
        using: str,
        returned: list[tuple[int, str, int]],
        *,
        delay: float,
        error: str,
        counted: bool,
    ) -> None:
        connection = connections[using]
        delivery = sql.table(connection, "Delivery")
        event = sql.table(connection, "EventRecord")
        failed = "statement_timestamp()" if counted else "NULL"
        _execute(
            using,
            f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, "
            "ordered, attempts, available_at, claimed_alone, parked, last_error, "
            "first_failed_at, created_at) SELECT e.id, u.g, e.type, e.position, e.key, "
            "FALSE, u.a, statement_timestamp() + make_interval(secs => %s), FALSE, FALSE, "
            f"%s, {failed}, statement_timestamp() FROM unnest(%s::bigint[], %s::text[], "
            f"%s::integer[]) AS u(p, g, a) JOIN {event} e ON e.position = u.p",
            [float(delay), error, *(list(column) for column in zip(*returned, strict=True))],
        )

    def status(self, using: str, groups: Sequence[str]) -> list[Sequence[Any]]:
        # Index scans only, never the whole log: a worker's chart sample, once a minute,
        # stalled it for seconds (docs/internals.md, "The log transport", status).
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        leases = sql.table(connection, "Lease")
        with index_scans_only(using):
            return _execute(
                using,
                f"SELECT h.group_name, o.n, extract(epoch FROM statement_timestamp() - "
                f"o.oldest), (SELECT COALESCE(sum(cardinality(k.positions)), 0) FROM {leases} "
                "k WHERE k.group_name = h.group_name AND k.claimed_until >= "
                f"statement_timestamp()) FROM {heads(cursors, 'c.group_name = ANY(%s)')} h "
                f"CROSS JOIN LATERAL {self._owed(connection, 'h')} o",
                [list(groups)],
            )

    def _owed(self, connection: Any, head: str) -> str:
        """SQL: a one-row table, ``n`` and ``oldest`` (``recorded_at``), of the log rows of
        its group's types the cursor ``head`` has not passed (``not_passed``), in the
        claim's three index walks: the rest of the open window, by position up to its
        ``last``; what committed after ``hi``, through the txid index (the xids begun
        since ``hi``, and those running at ``hi``)."""
        return (
            f"(SELECT count(*) AS n, min(w.recorded_at) AS oldest FROM "
            f"{self._walks(connection, head)} w WHERE {self._subscribed(connection, head)})"
        )

    def _walks(self, connection: Any, head: str) -> str:
        """SQL: the log rows (``type``, ``recorded_at``) the cursor ``head`` has not passed,
        of every type, in the claim's three index walks (``_owed``)."""
        event = sql.table(connection, "EventRecord")
        hi, lo = f"{head}.hi::pg_snapshot", f"{head}.lo::pg_snapshot"
        return (
            f"(SELECT l.type, l.recorded_at FROM {event} l WHERE l.position > {head}.pos "
            f"AND l.position <= {head}.last AND pg_visible_in_snapshot(l.txid, {hi}) "
            f"AND NOT pg_visible_in_snapshot(l.txid, {lo}) "
            f"UNION ALL SELECT l.type, l.recorded_at FROM {event} l "
            f"WHERE l.txid >= pg_snapshot_xmax({hi}) AND NOT {handed_itself('l', head)} "
            f"UNION ALL SELECT l.type, l.recorded_at FROM {event} l "
            f"WHERE l.txid = ANY(ARRAY(SELECT pg_snapshot_xip({hi}))) "
            f"AND NOT {handed_itself('l', head)})"
        )

    def _subscribed(self, connection: Any, head: str) -> str:
        """SQL: the walked row ``w`` is of a type the group of cursor ``head`` subscribes to."""
        subscriptions = sql.table(connection, "Subscription")
        return (
            f'w.type IN (SELECT s.event_type FROM {subscriptions} s WHERE s."group" '
            f"= {head}.group_name)"
        )

    def backlog(self, using: str) -> list[Sequence[Any]]:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        leases = sql.table(connection, "Lease")
        event = sql.table(connection, "EventRecord")
        with index_scans_only(using):
            return _execute(
                using,
                f"SELECT h.group_name, w.type, count(*) FROM {heads(cursors)} h CROSS JOIN "
                f"LATERAL {self._walks(connection, 'h')} w WHERE "
                f"{self._subscribed(connection, 'h')} GROUP BY h.group_name, w.type "
                f"UNION ALL SELECT k.group_name, l.type, count(*) FROM {leases} k "
                f"JOIN {event} l ON l.position = ANY(k.positions) GROUP BY k.group_name, l.type",
                [],
            )

    def past_cursor(self, using: str, group: str, event_type: str) -> int:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        with index_scans_only(using):
            ((count,),) = _execute(
                using,
                f"SELECT count(*) FROM {heads(cursors, 'c.group_name = %s')} h CROSS JOIN "
                f"LATERAL {self._walks(connection, 'h')} w WHERE w.type = %s",
                [group, event_type],
            )
        return int(count)

    def owed_already(
        self, using: str, groups: list[str], positions: list[int]
    ) -> list[Sequence[Any]]:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        leases = sql.table(connection, "Lease")
        event = sql.table(connection, "EventRecord")
        return _execute(
            using,
            "WITH u AS (SELECT g, p FROM unnest(%s::text[]) AS g, unnest(%s::bigint[]) AS p) "
            f"SELECT u.g, u.p FROM u JOIN {heads(cursors, 'c.group_name = ANY(%s)')} h "
            f"ON h.group_name = u.g JOIN {event} l ON l.position = u.p "
            f"WHERE {not_passed('l', 'h')} "
            f"UNION SELECT u.g, u.p FROM u JOIN {leases} k ON k.group_name = u.g "
            "AND u.p = ANY(k.positions)",
            [groups, positions, groups],
        )

    def unread(self, connection: Any) -> str:
        leases = sql.table(connection, "Lease")
        cursors = sql.table(connection, "GroupCursor")
        subscriptions = sql.table(connection, "Subscription")
        group = connection.ops.quote_name("group")
        return (
            f" AND NOT EXISTS (SELECT 1 FROM {leases} k WHERE t.position = ANY(k.positions))"
            f" AND NOT EXISTS (SELECT 1 FROM {heads(cursors)} h WHERE t.type IN (SELECT "
            f"s.event_type FROM {subscriptions} s WHERE s.{group} = h.group_name) AND "
            f"{not_passed('t', 'h')})"
        )

    def read_by_its_group(self, connection: Any) -> str:
        leases = sql.table(connection, "Lease")
        cursors = sql.table(connection, "GroupCursor")
        event = sql.table(connection, "EventRecord")
        # OFFSET 0 keeps this a subplan run per inbox row, one primary-key lookup of the
        # log row: as a join, the planner hashed the whole log for each batch. LIMIT 1
        # stops ``heads`` at the group's newest row: its DISTINCT ON otherwise reads every
        # cursor row of the group once the newest fails the filter above it
        # (docs/internals.md, "The log transport", Retention).
        head = f"(SELECT * FROM {heads(cursors, 'c.group_name = t.group_name')} g LIMIT 1)"
        return (
            f" AND NOT EXISTS (SELECT 1 FROM {event} l WHERE l.id = t.event_id AND (EXISTS "
            f"(SELECT 1 FROM {leases} k WHERE k.group_name = t.group_name AND l.position = "
            f"ANY(k.positions)) OR EXISTS (SELECT 1 FROM {head} h WHERE "
            f"{not_passed('l', 'h')})) OFFSET 0)"
        )


class SQLiteLog(LogSQL):
    """One writer at a time, which holds the write lock from its first write to its
    commit: log rows take their positions from one counter under that lock
    (``draw_positions``), so they become visible in position order, and a cursor is a
    position. Each claim starts with a write, so it holds the lock before it reads its
    group's cursor (docs/internals.md, "The log transport on SQLite"). Lists travel as
    JSON text, read by ``json_each``, as PostgreSQL's travel as arrays."""

    def _top(self, event: str) -> str:
        """SQL: the highest position drawn so far (committed: one writer)."""
        return (
            "max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = %s), 0), "
            f"COALESCE((SELECT max(position) FROM {event}), 0))"
        )

    def keep_from_cursors(self, using: str, event_ids: Sequence[uuid.UUID]) -> None:
        # The rowid, not a column: the model and the handlers never see it, and the
        # position index holds it beside each position, so the walks test it for free
        # (``_in_reach``). No other row's rowid is minus its position: SQLite gives a new
        # row the highest rowid plus one, and every row logged here has a position above
        # every logged one (``draw_positions``), so its rowid is above minus its own. Not
        # "rowid < 0": with only such rows left, the next row's rowid is one of those.
        # VACUUM keeps rowids: it renumbers only a table with no index.
        event = sql.table(connections[using], "EventRecord")
        ids = [sql.dialect(using).uuid_value(event_id) for event_id in event_ids]
        _execute(
            using,
            f"UPDATE {event} SET rowid = -position WHERE id IN (SELECT value FROM json_each(%s))",
            [json.dumps(ids)],
        )

    def start_cursors(self, using: str, groups: Sequence[str]) -> None:
        cursors = sql.table(connections[using], "GroupCursor")
        now = sql.dialect(using).now()
        # A group's position never goes back: the highest is the most advanced group's.
        furthest = f"COALESCE((SELECT max(f.pos) FROM {cursors} f), 0)"
        _execute(
            using,
            f"INSERT INTO {cursors} (slot, group_name, lo, hi, pos, last, created_at) "
            f"SELECT 0, g.value, '', '', {furthest}, {furthest}, {now} FROM json_each(%s) g "
            f"WHERE NOT EXISTS (SELECT 1 FROM {cursors} c WHERE c.group_name = g.value)",
            [json.dumps(list(groups))],
        )

    def place_cursors_now(self, using: str, groups: Sequence[str]) -> None:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        subscriptions = sql.table(connection, "Subscription")
        event = sql.table(connection, "EventRecord")
        now = sql.dialect(using).now()
        top = self._top(event)
        _execute(
            using,
            f"INSERT INTO {cursors} (slot, group_name, lo, hi, pos, last, created_at) "
            f"SELECT 0, g.name, '', '', {top}, {top}, {now} FROM (SELECT value AS name FROM "
            f'json_each(%s) UNION SELECT "group" FROM {subscriptions} UNION SELECT group_name '
            f"FROM {cursors}) g",
            [_COUNTER, _COUNTER, json.dumps(list(groups))],
        )

    def claim(
        self,
        using: str,
        group: str,
        want: int,
        token: str,
        lease: float,
        handled: list[str] | None,
        alone: bool,
        mine: list[str],
        mine_ordered: list[str],
    ) -> list[Sequence[Any]]:
        connection = connections[using]
        dialect = sql.dialect(using)
        cursors = sql.table(connection, "GroupCursor")
        subscriptions = sql.table(connection, "Subscription")
        event = sql.table(connection, "EventRecord")
        delivery = sql.table(connection, "Delivery")
        leases = sql.table(connection, "Lease")
        now = dialect.now()
        # Text that is not UTF-8 (written by raw SQL) fails its own event, not the read of
        # the batch, which would roll the claim back and stall the group for ever.
        with transaction.atomic(using=using), sql.lenient_text(using):
            # A write first (the group's first cursor, if it has none): from here to the
            # commit this claim holds the lock, so no other claim of the group reads the
            # cursor it is about to move.
            self.start_cursors(using, [group])
            ((pos,),) = _execute(
                using,
                f"SELECT pos FROM {cursors} WHERE group_name = %s ORDER BY id DESC LIMIT 1",
                [group],
            )
            # What the group subscribes to: every service's declarations, and the claiming
            # deployment's own handlers, declared by its code even before they are stored.
            stored = _execute(
                using,
                f'SELECT event_type, ordered FROM {subscriptions} WHERE "group" = %s',
                [group],
            )
            in_order: dict[str, bool] = {}
            for event_type, ordered in [*stored, *((t, t in mine_ordered) for t in mine)]:
                in_order[event_type] = in_order.get(event_type, False) or bool(ordered)
            if not in_order:
                return []
            # ``+type``: the position index, walked from the cursor, never the type index.
            picked = _execute(
                using,
                f"SELECT position, type FROM {event} WHERE position > %s AND +type IN "
                f"(SELECT value FROM json_each(%s)) AND {_in_reach('')} ORDER BY position "
                "LIMIT %s",
                [pos, json.dumps(sorted(in_order)), want],
            )
            if not picked:
                return []  # nothing new: nothing written
            _execute(
                using,
                f"INSERT INTO {cursors} (slot, group_name, lo, hi, pos, last, created_at) "
                f"VALUES (0, %s, '', '', %s, %s, {now})",
                [group, picked[-1][0], picked[-1][0]],
            )
            # Ordered types, and types the claiming worker does not handle, become delivery
            # rows: key order is kept there, and another worker takes what this one cannot.
            diverted = {
                position: event_type
                for position, event_type in picked
                if in_order[event_type] or (handled is not None and event_type not in handled)
            }
            if diverted:
                ordered_types = sorted(t for t, ordered in in_order.items() if ordered)
                _execute(
                    using,
                    f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, "
                    "ordered, attempts, available_at, claimed_alone, parked, last_error, "
                    "created_at) SELECT l.id, %s, l.type, l.position, l.key, l.type IN (SELECT "
                    "value FROM json_each(%s)) AND l.key IS NOT NULL, 0, "
                    f"{now}, FALSE, FALSE, '', {now} FROM {event} l WHERE l.position IN "
                    "(SELECT value FROM json_each(%s))",
                    [group, json.dumps(ordered_types), json.dumps(sorted(diverted))],
                )
            taken = [position for position, _ in picked if position not in diverted]
            leased: list[Sequence[Any]] = []
            if taken:
                ((lease_id,),) = _execute(
                    using,
                    f"INSERT INTO {leases} (slot, group_name, positions, claimed_alone, "
                    f"claimed_until, claimer, lease_token) VALUES (0, %s, %s, %s, "
                    f"{dialect.now_plus()}, NULL, %s) RETURNING id",
                    [group, json.dumps(taken), alone, dialect.seconds(lease), token],
                )
                leased = [
                    (lease_id, *row)
                    for row in _execute(
                        using,
                        "SELECT position, id, type, version, key, data, metadata, "
                        f"{dialect.as_text('occurred_at')}, source, correlation_id, "
                        f"causation_id FROM {event} WHERE position IN (SELECT value FROM "
                        "json_each(%s)) ORDER BY position",
                        [json.dumps(taken)],
                    )
                ]
        others = [(None, p, None, t, *(None,) * 8) for p, t in sorted(diverted.items())]
        return sorted([*leased, *others], key=lambda row: row[1])

    def break_up_dead_leases(self, using: str) -> None:
        # No backend to look up: a lease is dead when its time has run out.
        connection = connections[using]
        dialect = sql.dialect(using)
        delivery = sql.table(connection, "Delivery")
        event = sql.table(connection, "EventRecord")
        leases = sql.table(connection, "Lease")
        now = dialect.now()
        with transaction.atomic(using=using):
            dead = _execute(
                using,
                f"DELETE FROM {leases} WHERE claimed_until < {now} RETURNING group_name, "
                "positions, claimed_until, claimed_alone, claimer, lease_token",
                [],
            )
            for group, positions, until, alone, claimer, token in dead:
                _execute(
                    using,
                    f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, "
                    "ordered, attempts, available_at, claimed_until, claimed_alone, claimer, "
                    "lease_token, parked, last_error, created_at) SELECT e.id, %s, e.type, "
                    f"e.position, e.key, FALSE, 1, {now}, %s, %s, %s, %s, FALSE, '', {now} "
                    f"FROM {event} e WHERE e.position IN (SELECT value FROM json_each(%s))",
                    [group, until, alone, claimer, token, positions],
                )

    def renew(self, using: str, leases: list[int], tokens: list[str], lease: float) -> None:
        dialect = sql.dialect(using)
        table = sql.table(connections[using], "Lease")
        _execute(
            using,
            f"UPDATE {table} SET claimed_until = {dialect.now_plus()} WHERE id IN (SELECT "
            "value FROM json_each(%s)) AND lease_token IN (SELECT value FROM json_each(%s))",
            [dialect.seconds(lease), json.dumps(leases), json.dumps(tokens)],
        )

    def hold(self, using: str, leases: list[int]) -> list[tuple[int, str, list[int]]]:
        # Nothing to lock: a break-up writes, and waits for the handler's commit.
        table = sql.table(connections[using], "Lease")
        rows = _execute(
            using,
            f"SELECT id, lease_token, positions FROM {table} WHERE id IN (SELECT value FROM "
            "json_each(%s)) ORDER BY id",
            [json.dumps(leases)],
        )
        return [(i, token, json.loads(positions)) for i, token, positions in rows]

    def trim(self, using: str, receipts: list[tuple[int, int, str]]) -> set[tuple[int, int]]:
        table = sql.table(connections[using], "Lease")
        acked: dict[tuple[int, str], set[int]] = {}
        for lease_id, position, token in receipts:
            acked.setdefault((lease_id, token), set()).add(position)
        held: set[tuple[int, int]] = set()
        with transaction.atomic(using=using):
            # Read by a write that changes nothing, so the lock is held from the read on.
            rows = _execute(
                using,
                f"UPDATE {table} SET positions = positions WHERE id IN (SELECT value FROM "
                "json_each(%s)) RETURNING id, lease_token, positions",
                [json.dumps(sorted({lease_id for lease_id, _ in acked}))],
            )
            for lease_id, token, positions in rows:
                gone = acked.get((lease_id, token), set())
                old = json.loads(positions)
                left = [p for p in old if p not in gone]
                if len(left) == len(old):
                    continue
                held |= {(lease_id, p) for p in old if p in gone}
                if left:
                    _execute(
                        using,
                        f"UPDATE {table} SET positions = %s WHERE id = %s",
                        [json.dumps(left), lease_id],
                    )
                else:
                    _execute(using, f"DELETE FROM {table} WHERE id = %s", [lease_id])
        return held

    def to_deliveries(
        self,
        using: str,
        returned: list[tuple[int, str, int]],
        *,
        delay: float,
        error: str,
        counted: bool,
    ) -> None:
        connection = connections[using]
        dialect = sql.dialect(using)
        delivery = sql.table(connection, "Delivery")
        event = sql.table(connection, "EventRecord")
        now = dialect.now()
        failed = now if counted else "NULL"
        _execute(
            using,
            f"INSERT INTO {delivery} (event_id, group_name, event_type, position, key, "
            "ordered, attempts, available_at, claimed_alone, parked, last_error, "
            "first_failed_at, created_at) SELECT e.id, json_extract(u.value, '$[1]'), e.type, "
            "e.position, e.key, FALSE, json_extract(u.value, '$[2]'), "
            f"{dialect.now_plus()}, FALSE, FALSE, %s, {failed}, {now} FROM json_each(%s) u "
            f"JOIN {event} e ON e.position = json_extract(u.value, '$[0]')",
            [dialect.seconds(delay), error, json.dumps(returned)],
        )

    def status(self, using: str, groups: Sequence[str]) -> list[Sequence[Any]]:
        connection = connections[using]
        dialect = sql.dialect(using)
        cursors = sql.table(connection, "GroupCursor")
        leases = sql.table(connection, "Lease")
        subscriptions = sql.table(connection, "Subscription")
        event = sql.table(connection, "EventRecord")
        past = (
            f"FROM {event} l WHERE l.position > h.pos AND {_in_reach('l.')} AND l.type IN "
            f'(SELECT s.event_type FROM {subscriptions} s WHERE s."group" = h.group_name)'
        )
        return _execute(
            using,
            f"SELECT h.group_name, (SELECT count(*) {past}), (SELECT "
            f"{dialect.age_seconds('min(l.recorded_at)')} {past}), (SELECT "
            f"COALESCE(sum(json_array_length(k.positions)), 0) FROM {leases} k WHERE "
            f"k.group_name = h.group_name AND k.claimed_until >= {dialect.now()}) FROM "
            f"{_sqlite_heads(cursors, 'c.group_name IN (SELECT value FROM json_each(%s))')} h",
            [json.dumps(list(groups))],
        )

    def backlog(self, using: str) -> list[Sequence[Any]]:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        leases = sql.table(connection, "Lease")
        subscriptions = sql.table(connection, "Subscription")
        event = sql.table(connection, "EventRecord")
        return _execute(
            using,
            f"SELECT h.group_name, l.type, count(*) FROM {_sqlite_heads(cursors)} h "
            f"JOIN {event} l ON l.position > h.pos WHERE {_in_reach('l.')} AND l.type IN "
            "(SELECT s.event_type "
            f'FROM {subscriptions} s WHERE s."group" = h.group_name) '
            "GROUP BY h.group_name, l.type UNION ALL SELECT k.group_name, l.type, count(*) "
            f"FROM {leases} k, json_each(k.positions) p JOIN {event} l ON l.position = p.value "
            "GROUP BY k.group_name, l.type",
            [],
        )

    def past_cursor(self, using: str, group: str, event_type: str) -> int:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        event = sql.table(connection, "EventRecord")
        ((count,),) = _execute(
            using,
            f"SELECT count(*) FROM {_sqlite_heads(cursors, 'c.group_name = %s')} h "
            f"JOIN {event} l ON l.position > h.pos WHERE {_in_reach('l.')} AND l.type = %s",
            [group, event_type],
        )
        return int(count)

    def owed_already(
        self, using: str, groups: list[str], positions: list[int]
    ) -> list[Sequence[Any]]:
        connection = connections[using]
        cursors = sql.table(connection, "GroupCursor")
        leases = sql.table(connection, "Lease")
        event = sql.table(connection, "EventRecord")
        return _execute(
            using,
            "WITH u AS (SELECT g.value AS g, p.value AS p FROM json_each(%s) g, json_each(%s) p) "
            f"SELECT u.g, u.p FROM u JOIN {_sqlite_heads(cursors)} h ON h.group_name = u.g "
            f"JOIN {event} l ON l.position = u.p WHERE u.p > h.pos AND {_in_reach('l.')} "
            f"UNION SELECT u.g, u.p FROM u JOIN {leases} k "
            "ON k.group_name = u.g JOIN json_each(k.positions) q ON q.value = u.p",
            [json.dumps(groups), json.dumps(positions)],
        )

    def unread(self, connection: Any) -> str:
        leases = sql.table(connection, "Lease")
        cursors = sql.table(connection, "GroupCursor")
        subscriptions = sql.table(connection, "Subscription")
        group = connection.ops.quote_name("group")
        return (
            f" AND NOT EXISTS (SELECT 1 FROM {leases} k, json_each(k.positions) p "
            "WHERE p.value = t.position)"
            f" AND NOT EXISTS (SELECT 1 FROM {_sqlite_heads(cursors)} h WHERE t.position > "
            f"h.pos AND {_in_reach('t.')} AND t.type IN (SELECT s.event_type FROM "
            f"{subscriptions} s WHERE s.{group} = h.group_name))"
        )

    def read_by_its_group(self, connection: Any) -> str:
        leases = sql.table(connection, "Lease")
        cursors = sql.table(connection, "GroupCursor")
        event = sql.table(connection, "EventRecord")
        return (
            f" AND NOT EXISTS (SELECT 1 FROM {event} l WHERE l.id = t.event_id AND (EXISTS "
            f"(SELECT 1 FROM {leases} k, json_each(k.positions) p WHERE k.group_name = "
            "t.group_name AND p.value = l.position) OR EXISTS (SELECT 1 FROM "
            f"{_sqlite_heads(cursors, 'c.group_name = t.group_name')} h WHERE l.position > "
            "h.pos)))"
        )


_COUNTER = "django_events_outbox"
"""The ``sqlite_sequence`` row whose counter log positions are drawn from on SQLite: the
outbox's, as PostgreSQL draws them from the outbox's sequence."""


def draw_positions(using: str, count: int) -> int:
    """On SQLite: take ``count`` new positions for log rows about to be inserted in this
    transaction; returns the first. The counter is the outbox's ``AUTOINCREMENT``
    row in ``sqlite_sequence``, so an outbox row never takes a logged position, and,
    unlike the log's highest position, it never goes back when retention deletes the
    newest events. The statement writes, so the lock is held from here to the
    commit: a later writer's positions are higher, and no claim runs in between."""
    event = sql.table(connections[using], "EventRecord")
    top = f"max(seq, COALESCE((SELECT max(position) FROM {event}), 0)) + %s"
    rows = _execute(
        using,
        f"UPDATE sqlite_sequence SET seq = {top} WHERE name = %s RETURNING seq",
        [count, _COUNTER],
    )
    if not rows:  # no outbox row was ever inserted
        rows = _execute(
            using,
            "INSERT INTO sqlite_sequence (name, seq) SELECT %s, "
            f"COALESCE((SELECT max(position) FROM {event}), 0) + %s RETURNING seq",
            [_COUNTER, count],
        )
    return int(rows[0][0]) - count + 1


POSITIONS_AT_MOST = 1024
"""The most positions one draw of ``take_positions`` takes ahead for its transaction."""


class _Drawn:
    """Positions a transaction drew and has not used yet, and what identifies it."""

    __slots__ = ("commit_hooks", "end", "next", "raw", "taken")

    def __init__(self, connection: Any, first: int, end: int, taken: int) -> None:
        self.commit_hooks, self.raw = connection.run_on_commit, connection.connection
        self.next, self.end, self.taken = first, end, taken

    def of(self, connection: Any) -> bool:
        """Whether ``connection`` is still in the transaction that drew these."""
        return (
            self.commit_hooks is connection.run_on_commit
            and self.raw is connection.connection
            and connection.in_atomic_block
            and connection.commit_on_exit
        )


_drawn: weakref.WeakKeyDictionary[Any, _Drawn] = weakref.WeakKeyDictionary()


def take_positions(connection: Any, count: int) -> int:
    """On SQLite: ``count`` positions for log rows ``publish()`` inserts now, inside an
    ``atomic()`` block; returns the first.

    The transaction's first call draws (``draw_positions``), which holds the write lock
    until the commit; later calls in the same transaction take positions already drawn,
    without a statement: a transaction publishing events one ``publish()`` at a time
    paid a draw for each. Once those run out it draws again, as many ahead as it has
    drawn so far (at most ``POSITIONS_AT_MOST``), so the positions left unused at the
    commit, gaps no walk depends on, are fewer than those used (docs/internals.md, "The
    log transport on SQLite").

    A transaction is known by Django's list of commit hooks, which every commit,
    rollback, rollback to a savepoint and reconnection replaces with a new list: the
    positions drawn may then have been rolled back, or committed with the lock released,
    and are drawn anew. Where the application commits by itself (autocommit turned off,
    ``commit_on_exit`` false) nothing marks the end of a transaction: every call draws."""
    drawn = _drawn.get(connection)
    if drawn is not None and not drawn.of(connection):
        drawn = None
    if drawn is not None and drawn.next + count <= drawn.end:
        first = drawn.next
        drawn.next += count
        return first
    before = drawn.taken if drawn is not None else 0
    ahead = min(before, POSITIONS_AT_MOST)
    first = draw_positions(connection.alias, count + ahead)
    _drawn[connection] = _Drawn(
        connection, first + count, first + count + ahead, before + count + ahead
    )
    return first


def _sqlite_heads(cursors: str, where: str = "") -> str:
    """SQL (SQLite): each group's newest cursor row, optionally only those ``where``
    allows (on the rows ``c``)."""
    where = f" WHERE {where}" if where else ""
    return (
        f"(SELECT * FROM {cursors} WHERE id IN (SELECT max(c.id) FROM {cursors} c{where} "
        "GROUP BY c.group_name))"
    )


def _in_reach(row: str) -> str:
    """SQL (SQLite): the log row (``row`` is its alias and a dot, or empty) is one the
    cursors read, not one logged for the groups given delivery rows only
    (``keep_from_cursors``: ``rowid`` is minus its position). The unary ``+`` keeps the term
    from the planner: the walks stay on the position index, whose entries hold both."""
    return f"+{row}rowid <> -{row}position"


LOG_SQL: dict[str, LogSQL] = {"postgresql": PostgreSQLLog(), "sqlite": SQLiteLog()}


def log_sql(using: str) -> LogSQL:
    """The log transport's statements for database ``using``."""
    return LOG_SQL[sql.dialect(using).vendor]
