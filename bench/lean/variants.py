"""The four table designs of the prototype, each as the SQL a publisher, a consumer and a
background task (A's relay, C's rotation) run. Plain psycopg, one connection per caller.

A copies the engine's statements (django_events/outbox.py, engine/relay.py,
transports/database.py, engine/inbox.py) on the migrated tables; B, B2 and C add their own
tables beside them in the same database and share its inbox table.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import psycopg

from bench.pg import PAYLOAD_TEXT

BATCH = 50  # events a claim asks for
RELAY_BATCH = 500
LEASE = "interval '30 seconds'"
RELAXED = "set_config('synchronous_commit', 'off', true)"  # the engine's claim and relay
TYPE = "bench.noop"


@dataclass
class Batch:
    """What one claim handed out: the receipts to acknowledge and the events' ids."""

    group: str
    receipts: list[int]
    event_ids: list[uuid.UUID]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    lease: int | None = None  # B2, D: the id of the batch's lease row


@dataclass
class ConsumerState:
    """Per consumer: A's floors, when the periodic probes last ran."""

    floors: dict[str, int] = field(default_factory=dict)
    floors_at: float = -1.0
    probed_at: float = -1.0


def record_inbox(conn: psycopg.Connection, batch: Batch) -> None:
    """The engine's inbox.record_many: one statement, skip what is already there."""
    conn.execute(
        "INSERT INTO django_events_inbox (group_name, event_id, handled_at) "
        "SELECT %s, e, statement_timestamp() FROM unnest(%s::uuid[]) AS u(e) "
        "ON CONFLICT (group_name, event_id) DO NOTHING",
        [batch.group, batch.event_ids],
    )


class Variant:
    name = ""
    tables: tuple[str, ...] = ()  # its work tables (not the log, not the inbox)

    def setup(self, conn: psycopg.Connection, groups: list[str]) -> None:
        """Create what the migrated database lacks."""

    def publish(self, conn: psycopg.Connection) -> None:
        raise NotImplementedError

    def claim(self, conn: psycopg.Connection, group: str, state: ConsumerState) -> Batch | None:
        raise NotImplementedError

    def ack(self, conn: psycopg.Connection, batch: Batch) -> int:
        raise NotImplementedError

    def probe(self, conn: psycopg.Connection, group: str) -> None:
        """What a consumer looks for twice a second besides new events (orphans, retries)."""

    def background(self, conn: psycopg.Connection, groups: list[str]) -> bool:
        """One step of the variant's own task; False when it found nothing to do."""
        return False


# ------------------------------------------------------------------------------------ A


class Today(Variant):
    """A: outbox insert, relay (outbox delete, log insert, a delivery per group), claim by
    update, acknowledgement by delete, with the relay's frontier and the claim's floor."""

    name = "A"
    tables = ("django_events_outbox", "django_events_delivery")

    def __init__(self) -> None:
        self.top = 0
        self.full_at = 0.0

    def publish(self, conn: psycopg.Connection) -> None:
        conn.execute(
            "INSERT INTO django_events_outbox (event_id, type, version, key, data, metadata, "
            "occurred_at, source, correlation_id, causation_id, created_at) VALUES "
            "(%s, %s, 1, NULL, %s, '', now(), 'bench', %s, NULL, statement_timestamp())",
            [uuid.uuid4(), TYPE, PAYLOAD_TEXT, uuid.uuid4()],
        )

    def background(self, conn: psycopg.Connection, groups: list[str]) -> bool:
        """The relay's take: from its frontier, from the lowest position now and then
        (the engine's rescan; one publisher makes no gaps here)."""
        full = time.monotonic() - self.full_at > 2.0
        start = 0 if full else self.top
        with conn.transaction():
            conn.execute(f"SELECT pg_advisory_xact_lock(1), {RELAXED}")
            rows = conn.execute(
                "WITH moved AS (DELETE FROM django_events_outbox WHERE position = ANY(ARRAY("
                "SELECT position FROM django_events_outbox WHERE position > %s "
                "ORDER BY position LIMIT %s FOR UPDATE SKIP LOCKED)) RETURNING *), "
                "parsed AS MATERIALIZED (SELECT *, data::jsonb AS d, "
                "COALESCE(NULLIF(metadata, ''), '{}')::jsonb AS m FROM moved), "
                "logged AS (INSERT INTO django_events_event (id, position, type, key, version, "
                "data, metadata, occurred_at, source, correlation_id, causation_id, "
                "recorded_at) SELECT event_id, position, type, key, version, d, m, "
                "occurred_at, source, correlation_id, causation_id, statement_timestamp() "
                "FROM parsed) SELECT position, event_id, type, key FROM moved ORDER BY position",
                [start, RELAY_BATCH],
            ).fetchall()
            if rows:
                columns = zip(
                    *[(e, g, y, p, k) for p, e, y, k in rows for g in groups], strict=True
                )
                conn.execute(
                    "INSERT INTO django_events_delivery (event_id, group_name, event_type, "
                    "position, key, ordered, attempts, available_at, parked, last_error, "
                    "created_at) SELECT e, g, y, p, k, FALSE, 0, statement_timestamp(), FALSE, "
                    "'', statement_timestamp() FROM unnest(%s::uuid[], %s::text[], %s::text[], "
                    "%s::bigint[], %s::text[]) AS u(e, g, y, p, k)",
                    [list(c) for c in columns],
                )
        if full:
            self.full_at = time.monotonic()
        if rows:
            self.top = max(self.top, rows[-1][0])
        return bool(rows)

    def floor(self, conn: psycopg.Connection, group: str, state: ConsumerState) -> int:
        """The claim's floor, read at most once a second (docs/internals.md)."""
        if time.monotonic() - state.floors_at >= 1.0 or group not in state.floors:
            row = conn.execute(
                "SELECT COALESCE((SELECT min(position) FROM django_events_delivery "
                "WHERE group_name = %s AND event_type = %s AND lease_token IS NULL "
                "AND available_at <= statement_timestamp() + interval '2 seconds'), "
                "(SELECT max(position) + 1 FROM django_events_delivery WHERE group_name = %s "
                "AND event_type = %s), 0)",
                [group, TYPE, group, TYPE],
            ).fetchone()
            assert row is not None
            state.floors[group] = int(row[0])
            state.floors_at = time.monotonic()
        return state.floors[group]

    def claim(self, conn: psycopg.Connection, group: str, state: ConsumerState) -> Batch | None:
        floor = self.floor(conn, group, state)
        token = uuid.uuid4().hex
        rows = conn.execute(
            "WITH d AS (UPDATE django_events_delivery SET attempts = attempts + 1, "
            "claimed_alone = FALSE, claimed_until = statement_timestamp() + "
            f"{LEASE}, claimer = pg_backend_pid(), lease_token = %s WHERE id = ANY(ARRAY("
            "SELECT c.id FROM django_events_delivery c WHERE c.group_name = %s "
            "AND c.event_type = %s AND c.position >= %s AND NOT c.parked "
            "AND c.available_at <= statement_timestamp() AND c.lease_token IS NULL "
            "AND (NOT c.ordered OR NOT EXISTS (SELECT 1 FROM django_events_delivery h "
            "WHERE h.ordered AND h.group_name = c.group_name AND h.key = c.key "
            "AND h.position < c.position)) ORDER BY c.position LIMIT %s FOR UPDATE SKIP LOCKED)) "
            "RETURNING id, event_id, attempts, first_failed_at) "
            f"SELECT d.id, d.event_id, e.type, e.data, e.metadata, {RELAXED} FROM d "
            "LEFT JOIN django_events_event e ON e.id = d.event_id ORDER BY d.id",
            [token, group, TYPE, floor, BATCH],
        ).fetchall()
        if not rows:
            return None
        return Batch(group, [r[0] for r in rows], [r[1] for r in rows], token)

    def ack(self, conn: psycopg.Connection, batch: Batch) -> int:
        with conn.transaction():
            conn.execute(
                "SELECT id FROM django_events_delivery WHERE id = ANY(%s) AND lease_token = %s "
                "ORDER BY id FOR UPDATE",
                [batch.receipts, batch.token],
            )
            record_inbox(conn, batch)
            cur = conn.execute(
                "DELETE FROM django_events_delivery WHERE id = ANY(%s) AND lease_token = %s",
                [batch.receipts, batch.token],
            )
        return cur.rowcount

    def probe(self, conn: psycopg.Connection, group: str) -> None:
        conn.execute(
            "SELECT c.id FROM django_events_delivery c WHERE c.id = ANY(ARRAY(SELECT o.id "
            "FROM django_events_delivery o WHERE o.lease_token IS NOT NULL)) "
            "AND c.lease_token IS NOT NULL AND c.claimed_until < statement_timestamp() "
            "LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchall()


# ------------------------------------------------------------------------------------ B


class Lean(Variant):
    """B: publish writes the log row only (with its transaction's xid8); a group's cursor
    is one row holding the window of the log it is handing out, between two snapshots,
    and how far into that window it got; a claimed event gets a row until acknowledged."""

    name = "B"
    tables: tuple[str, ...] = ("lean_cursor", "lean_inflight")
    lease_sql = "NULL::bigint"
    inflight_sql = (
        "CREATE TABLE lean_inflight (group_name text NOT NULL, position bigint NOT NULL, "
        "event_id uuid NOT NULL, key text, attempts integer NOT NULL DEFAULT 1, "
        "available_at timestamptz NOT NULL DEFAULT statement_timestamp(), "
        "claimed_until timestamptz, claimer integer, token text, "
        "last_error text NOT NULL DEFAULT '', PRIMARY KEY (group_name, position))"
    )

    def setup(self, conn: psycopg.Connection, groups: list[str]) -> None:
        conn.execute("CREATE TABLE lean_log (LIKE django_events_event INCLUDING ALL)")
        # The log has its own txid since 0014 (nullable, for old rows); the prototype's is
        # NOT NULL, as a log written only by it would be.
        conn.execute("ALTER TABLE lean_log DROP COLUMN IF EXISTS txid")
        conn.execute("CREATE SEQUENCE lean_log_position_seq OWNED BY lean_log.position")
        conn.execute(
            "ALTER TABLE lean_log ALTER position SET DEFAULT nextval('lean_log_position_seq'), "
            "ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id()"
        )
        conn.execute("CREATE INDEX lean_log_txid ON lean_log (txid)")
        self.create_cursor(conn, groups)
        self.create_inflight(conn)
        body = self.claim_sql().replace("%(g)s", "a_group").replace("%(n)s", "a_n")
        # A function, so that the claim's snapshot is taken after the lock: a statement
        # that waited for another consumer's cursor would read an older log otherwise.
        conn.execute(
            "CREATE FUNCTION lean_claim(a_group text, a_n int, a_token text) RETURNS TABLE "
            "(r_position bigint, r_id uuid, r_lease bigint) LANGUAGE plpgsql "
            # Index scans whatever the estimates: the log's ordered one for the open window,
            # the xid index for the next; never the whole log.
            "SET enable_seqscan = off SET enable_bitmapscan = off AS $$ BEGIN "
            f"PERFORM {RELAXED}; IF NOT ({self.lock_sql}) THEN RETURN; END IF; "
            f"RETURN QUERY {body.replace('%(t)s', 'a_token')}; END $$"
        )

    lock_sql = (
        "EXISTS (SELECT 1 FROM lean_cursor WHERE group_name = a_group FOR UPDATE SKIP LOCKED)"
    )

    def create_cursor(self, conn: psycopg.Connection, groups: list[str]) -> None:
        # Updated at every claim: room on the page keeps its versions HOT.
        conn.execute(
            "CREATE TABLE lean_cursor (group_name text PRIMARY KEY, lo pg_snapshot NOT NULL, "
            "hi pg_snapshot NOT NULL, pos bigint NOT NULL DEFAULT 0, last bigint NOT NULL "
            "DEFAULT 0) WITH (fillfactor = 10)"
        )
        conn.execute(
            "INSERT INTO lean_cursor SELECT g, pg_current_snapshot(), pg_current_snapshot(), 0 "
            "FROM unnest(%s::text[]) AS g",
            [groups],
        )

    def create_inflight(self, conn: psycopg.Connection) -> None:
        conn.execute(self.inflight_sql)
        # Retries only: a claim's row is inserted and deleted without ever entering it.
        conn.execute(
            "CREATE INDEX lean_inflight_due ON lean_inflight (group_name, available_at) "
            "WHERE token IS NULL"
        )

    def publish(self, conn: psycopg.Connection) -> None:
        conn.execute(
            "INSERT INTO lean_log (id, type, version, key, data, metadata, occurred_at, "
            "source, correlation_id, causation_id, recorded_at) VALUES (%s, %s, 1, NULL, "
            "%s::jsonb, '{}'::jsonb, now(), 'bench', %s, NULL, statement_timestamp())",
            [uuid.uuid4(), TYPE, PAYLOAD_TEXT, uuid.uuid4()],
        )

    def window(self, lo: str, hi: str) -> str:
        """The log rows committed between snapshots ``lo`` and ``hi``: the range of xids
        begun between the two snapshots, and the transactions running at ``lo`` looked up
        by their xid (``xip``); two index scans, nothing below them walked."""
        visible = (
            f"pg_visible_in_snapshot(l.txid, {hi}) AND NOT pg_visible_in_snapshot(l.txid, {lo})"
        )
        return (
            f"(SELECT l.position, l.id, l.key FROM lean_log l WHERE l.txid >= "
            f"pg_snapshot_xmax({lo}) AND l.txid < pg_snapshot_xmax({hi}) AND {visible} "
            f"UNION ALL SELECT l.position, l.id, l.key FROM lean_log l WHERE "
            f"l.txid = ANY(ARRAY(SELECT pg_snapshot_xip({lo}))) AND {visible})"
        )

    def cursor_cte(self) -> str:
        """``c``: the group's cursor, locked, or no row if another consumer has it."""
        return "c AS (SELECT lo, hi, pos, last FROM lean_cursor WHERE group_name = %(g)s)"

    def advance_cte(self) -> str:
        """``moved``: the cursor's new place (the same window further on, or the next)."""
        return (
            "moved AS (UPDATE lean_cursor u SET lo = CASE WHEN k.w2 THEN c.hi ELSE c.lo END, "
            "hi = CASE WHEN k.w2 THEN s.now ELSE c.hi END, pos = k.pos, "
            "last = CASE WHEN k.w2 THEN k.last ELSE c.last END FROM c, s, k "
            "WHERE u.group_name = %(g)s AND k.pos IS NOT NULL)"
        )

    def record_cte(self) -> str:
        """``recorded``: the claim's lease, one row per event."""
        return (
            "recorded AS (INSERT INTO lean_inflight (group_name, position, event_id, key, "
            f"claimed_until, claimer, token) SELECT %(g)s, position, id, key, "
            f"statement_timestamp() + {LEASE}, pg_backend_pid(), %(t)s FROM picked "
            "RETURNING position)"
        )

    def claim_sql(self) -> str:
        """Read the next events of the cursor's window, open the next window when this one
        runs out, record the lease and move the cursor: one statement, after the lock."""
        return (
            f"WITH {self.cursor_cte()}, s AS (SELECT pg_current_snapshot() AS now), "
            # The open window, in position order from where the last claim stopped to its
            # highest position: a short walk along the position index.
            "w1 AS (SELECT w.* FROM c CROSS JOIN LATERAL (SELECT l.position, l.id, l.key "
            "FROM lean_log l WHERE l.position > c.pos AND l.position + 0 <= c.last "
            "AND pg_visible_in_snapshot(l.txid, c.hi) AND NOT pg_visible_in_snapshot(l.txid, "
            "c.lo) ORDER BY l.position LIMIT %(n)s) w), "
            # The next window, found through the xid index once, when the open one is done.
            "w2all AS MATERIALIZED (SELECT w.* FROM c, s, LATERAL "
            f"{self.window('c.hi', 's.now')} w WHERE (SELECT count(*) FROM w1) < %(n)s), "
            "w2 AS (SELECT * FROM w2all ORDER BY position "
            "LIMIT %(n)s - (SELECT count(*) FROM w1)), "
            "picked AS (SELECT * FROM w1 UNION ALL SELECT * FROM w2), "
            "k AS (SELECT EXISTS (SELECT 1 FROM w2) AS w2, COALESCE((SELECT max(position) "
            "FROM w2), (SELECT max(position) FROM w1)) AS pos, "
            "(SELECT max(position) FROM w2all) AS last), "
            f"{self.advance_cte()}, {self.record_cte()} "
            f"SELECT p.position, p.id, {self.lease_sql} FROM picked p ORDER BY p.position"
        )

    def claim(self, conn: psycopg.Connection, group: str, state: ConsumerState) -> Batch | None:
        batch = Batch(group, [], [])
        rows = conn.execute(
            "SELECT * FROM lean_claim(%s, %s, %s)", [group, BATCH, batch.token]
        ).fetchall()
        if not rows:
            return None
        batch.receipts, batch.event_ids = [r[0] for r in rows], [r[1] for r in rows]
        batch.lease = rows[0][2]
        return batch

    def ack(self, conn: psycopg.Connection, batch: Batch) -> int:
        with conn.transaction():
            conn.execute(
                "SELECT position FROM lean_inflight WHERE group_name = %s AND position = ANY(%s) "
                "AND token = %s ORDER BY position FOR UPDATE",
                [batch.group, batch.receipts, batch.token],
            )
            record_inbox(conn, batch)
            cur = conn.execute(
                "DELETE FROM lean_inflight WHERE group_name = %s AND position = ANY(%s) "
                "AND token = %s",
                [batch.group, batch.receipts, batch.token],
            )
        return cur.rowcount

    def probe(self, conn: psycopg.Connection, group: str) -> None:
        conn.execute(
            "SELECT position FROM lean_inflight WHERE group_name = %s AND token IS NULL "
            "AND available_at <= statement_timestamp() ORDER BY available_at LIMIT 50 "
            "FOR UPDATE SKIP LOCKED",
            [group],
        ).fetchall()
        conn.execute(
            "SELECT position FROM lean_inflight WHERE token IS NOT NULL "
            "AND claimed_until < statement_timestamp() LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchall()


class LeanBatches(Lean):
    """B2: B with one lease row per claimed batch (its positions and ids as arrays)."""

    name = "B2"
    tables: tuple[str, ...] = ("lean_cursor", "lean_batch")
    lease_sql = "(SELECT id FROM recorded)"

    def create_inflight(self, conn: psycopg.Connection) -> None:
        conn.execute(
            "CREATE TABLE lean_batch (id bigserial PRIMARY KEY, group_name text NOT NULL, "
            "positions bigint[] NOT NULL, event_ids uuid[] NOT NULL, keys text[], "
            "attempts integer NOT NULL DEFAULT 1, claimed_until timestamptz, "
            "claimer integer, token text)"
        )

    def record_cte(self) -> str:
        return (
            "recorded AS (INSERT INTO lean_batch (group_name, positions, event_ids, keys, "
            "claimed_until, claimer, token) SELECT %(g)s, array_agg(position ORDER BY position), "
            "array_agg(id ORDER BY position), array_agg(key ORDER BY position), "
            f"statement_timestamp() + {LEASE}, pg_backend_pid(), %(t)s FROM picked "
            "HAVING count(*) > 0 RETURNING id)"
        )

    def ack(self, conn: psycopg.Connection, batch: Batch) -> int:
        with conn.transaction():
            conn.execute(
                "SELECT id FROM lean_batch WHERE id = %s AND token = %s FOR UPDATE",
                [batch.lease, batch.token],
            )
            record_inbox(conn, batch)
            cur = conn.execute(
                "DELETE FROM lean_batch WHERE id = %s AND token = %s", [batch.lease, batch.token]
            )
        return cur.rowcount * len(batch.event_ids)

    def probe(self, conn: psycopg.Connection, group: str) -> None:
        conn.execute(
            "SELECT id FROM lean_batch WHERE claimed_until < statement_timestamp() "
            "LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchall()


class LeanRotated(Lean):
    """C: B with the in-flight rows in three partitions by a slot of the database's clock
    (ROTATE seconds each); the slot written two periods ago is emptied by TRUNCATE,
    after moving what is still there (retries, slow handlers) to the current slot."""

    name = "C"
    tables = ("lean_cursor", "lean_inflight_0", "lean_inflight_1", "lean_inflight_2")
    ROTATE = 10
    SLOTS = 3

    def __init__(self) -> None:
        self.truncated: int | None = None  # the period whose victim was emptied
        self.truncations = 0

    def create_inflight(self, conn: psycopg.Connection) -> None:
        slot = f"(floor(extract(epoch FROM statement_timestamp()) / {self.ROTATE})::int % 3)"
        conn.execute(
            self.inflight_sql.replace(
                "PRIMARY KEY (group_name, position))",
                f"slot smallint NOT NULL DEFAULT {slot}, "
                "PRIMARY KEY (group_name, position, slot)) PARTITION BY LIST (slot)",
            )
        )
        for n in range(self.SLOTS):
            conn.execute(
                f"CREATE TABLE lean_inflight_{n} PARTITION OF lean_inflight FOR VALUES IN ({n})"
            )
        conn.execute(
            "CREATE INDEX lean_inflight_due ON lean_inflight (group_name, available_at) "
            "WHERE token IS NULL"
        )

    def background(self, conn: psycopg.Connection, groups: list[str]) -> bool:
        row = conn.execute(
            f"SELECT floor(extract(epoch FROM statement_timestamp()) / {self.ROTATE})::bigint"
        ).fetchone()
        assert row is not None
        period = int(row[0])
        if self.truncated == period:
            return False
        current, victim = period % self.SLOTS, (period + 1) % self.SLOTS
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '100ms'")
                conn.execute(f"LOCK TABLE lean_inflight_{victim} IN ACCESS EXCLUSIVE MODE")
                conn.execute(
                    "INSERT INTO lean_inflight (group_name, position, event_id, key, attempts, "
                    "available_at, claimed_until, claimer, token, last_error, slot) SELECT "
                    "group_name, position, event_id, key, attempts, available_at, "
                    f"claimed_until, claimer, token, last_error, {current} "
                    f"FROM lean_inflight_{victim}"
                )
                conn.execute(f"TRUNCATE lean_inflight_{victim}")
        except psycopg.errors.LockNotAvailable:
            return False
        self.truncated = period
        self.truncations += 1
        return True


SLOT = "(floor(extract(epoch FROM statement_timestamp()) / 10)::int % 3)"


class LeanAppendOnly(LeanBatches):
    """D: B2 with nothing updated: a claim inserts the group's new cursor (its head is
    the newest row, read backwards along an index, past no dead entry) under an advisory
    lock; cursors and batch leases live in three partitions by a slot of the database's
    clock, and the slot written two periods ago is emptied by TRUNCATE, after copying
    each group's head and the leases still there into the current slot."""

    name = "D"
    tables = tuple(f"lean_{t}_{n}" for t in ("head", "batch") for n in range(3))
    lock_sql = "pg_try_advisory_xact_lock(hashtext('lean:' || a_group))"

    def __init__(self) -> None:
        self.truncated: int | None = None
        self.truncations = 0

    def create_cursor(self, conn: psycopg.Connection, groups: list[str]) -> None:
        conn.execute(
            "CREATE TABLE lean_head (id bigserial, group_name text NOT NULL, "
            "lo pg_snapshot NOT NULL, hi pg_snapshot NOT NULL, pos bigint NOT NULL, "
            "last bigint NOT NULL DEFAULT 0, "
            f"slot smallint NOT NULL DEFAULT {SLOT}) PARTITION BY LIST (slot)"
        )
        conn.execute(
            "CREATE TABLE lean_batch (id bigserial, group_name text NOT NULL, "
            "positions bigint[] NOT NULL, event_ids uuid[] NOT NULL, keys text[], "
            "attempts integer NOT NULL DEFAULT 1, claimed_until timestamptz, "
            f"claimer integer, token text, slot smallint NOT NULL DEFAULT {SLOT}, "
            "PRIMARY KEY (id, slot)) PARTITION BY LIST (slot)"
        )
        for table in ("head", "batch"):
            for n in range(3):
                conn.execute(
                    f"CREATE TABLE lean_{table}_{n} PARTITION OF lean_{table} FOR VALUES IN ({n})"
                )
        conn.execute("CREATE INDEX lean_head_group ON lean_head (group_name, id)")
        conn.execute(
            "INSERT INTO lean_head (group_name, lo, hi, pos) SELECT g, pg_current_snapshot(), "
            "pg_current_snapshot(), 0 FROM unnest(%s::text[]) AS g",
            [groups],
        )

    def create_inflight(self, conn: psycopg.Connection) -> None:
        pass  # with the cursors: both rotate

    def cursor_cte(self) -> str:
        return (
            "c AS (SELECT lo, hi, pos, last FROM lean_head WHERE group_name = %(g)s "
            "ORDER BY id DESC LIMIT 1)"
        )

    def advance_cte(self) -> str:
        return (
            "moved AS (INSERT INTO lean_head (group_name, lo, hi, pos, last) SELECT %(g)s, "
            "CASE WHEN k.w2 THEN c.hi ELSE c.lo END, CASE WHEN k.w2 THEN s.now ELSE c.hi END, "
            "k.pos, CASE WHEN k.w2 THEN k.last ELSE c.last END FROM c, s, k "
            "WHERE k.pos IS NOT NULL)"
        )

    def background(self, conn: psycopg.Connection, groups: list[str]) -> bool:
        row = conn.execute(
            "SELECT floor(extract(epoch FROM statement_timestamp()) / 10)::bigint"
        ).fetchone()
        assert row is not None
        period = int(row[0])
        if self.truncated == period:
            return False
        current, victim = period % 3, (period + 1) % 3
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '100ms'")
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('lean:' || g)) "
                    "FROM unnest(%s::text[]) AS g ORDER BY g",
                    [sorted(groups)],
                ).fetchall()
                conn.execute(
                    f"LOCK TABLE lean_head_{victim}, lean_batch_{victim} IN ACCESS EXCLUSIVE MODE"
                )
                conn.execute(
                    "INSERT INTO lean_head (group_name, lo, hi, pos, last, slot) SELECT DISTINCT "
                    f"ON (group_name) group_name, lo, hi, pos, last, {current} FROM lean_head "
                    "ORDER BY group_name, id DESC"
                )
                conn.execute(
                    "INSERT INTO lean_batch (id, group_name, positions, event_ids, keys, "
                    "attempts, claimed_until, claimer, token, slot) SELECT id, group_name, "
                    "positions, event_ids, keys, attempts, claimed_until, claimer, token, "
                    f"{current} FROM lean_batch_{victim}"
                )
                conn.execute(f"TRUNCATE lean_head_{victim}, lean_batch_{victim}")
        except psycopg.errors.LockNotAvailable:
            return False
        self.truncated = period
        self.truncations += 1
        return True


VARIANTS: dict[str, type[Variant]] = {
    v.name: v for v in (Today, Lean, LeanBatches, LeanRotated, LeanAppendOnly)
}
