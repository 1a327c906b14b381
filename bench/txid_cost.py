"""What the log's ``txid`` costs a ``DatabaseTransport`` installation, which does not read
it (docs/internals.md, "Log rows outside the cursors").

``python -m bench.txid_cost``: on a private cluster (WAL is counted for the whole server)
with ``full_page_writes`` off, so the bytes are the records' own and not the page images a
checkpoint happens to force, the migrated log table takes 2,000 rows shaped as the relay
writes them, one per transaction and in batches of 100, three ways: as migrations
0014-0016 left them (the transaction's id, in a full index), as 0017 and its relay write
them (NULL, outside the partial index), and with no index at all (the floor); medians of
3 rounds, the variants alternating.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import uuid

import django
import psycopg

ROWS = 2000
ROUNDS = 3
INSERT = (
    "INSERT INTO django_events_event (id, position, type, version, key, data, metadata, "
    "occurred_at, source, correlation_id, causation_id, recorded_at, txid) VALUES "
    "(%s, %s, 'bench.noop', 1, NULL, %s::jsonb, '{}'::jsonb, %s, 'bench', %s, NULL, "
    "statement_timestamp(), {txid})"
)
FULL = "CREATE INDEX IF NOT EXISTS bench_txid_full ON django_events_event (txid)"
PARTIAL = (
    "CREATE INDEX IF NOT EXISTS django_events_event_txid_set ON django_events_event (txid) "
    "WHERE txid IS NOT NULL"
)
DROP_FULL = "DROP INDEX IF EXISTS bench_txid_full"
DROP_PARTIAL = "DROP INDEX IF EXISTS django_events_event_txid_set"
VARIANTS = {
    "0014-0016": ((DROP_PARTIAL, FULL), "pg_current_xact_id()"),
    "0017": ((DROP_FULL, PARTIAL), "NULL"),
    "no index": ((DROP_FULL, DROP_PARTIAL), "NULL"),
}
"""Each variant's index statements, and the ``txid`` its rows get."""


def wal_per_row(
    conn: psycopg.Connection[tuple], per_transaction: int, start: int, txid: str
) -> float:
    payload = json.dumps({"order_id": 1, "total": "19.90", "items": [{"sku": "A-1", "qty": 2}]})
    before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    for first in range(start, start + ROWS, per_transaction):
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                INSERT.replace("{txid}", txid),
                [
                    (
                        uuid.uuid4(),
                        position,
                        payload,
                        dt.datetime.now(dt.timezone.utc),
                        uuid.uuid4(),
                    )
                    for position in range(first, first + per_transaction)
                ],
            )
    used = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", before).fetchone()
    return float(used[0]) / ROWS  # type: ignore[index]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    django.setup()
    from bench import private

    results: dict[tuple[str, int], list[float]] = {}
    with private.cluster(autovacuum=False) as server:
        private.migrated_database(server, "txid")
        with server.connect("txid") as conn:
            conn.autocommit = True
            conn.execute("ALTER SYSTEM SET full_page_writes = off")
            conn.execute("SELECT pg_reload_conf()")
            position = 1
            for _ in range(ROUNDS):
                for name, (statements, txid) in VARIANTS.items():
                    for statement in statements:
                        conn.execute(statement)
                    for per_transaction in (1, 100):
                        cost = wal_per_row(conn, per_transaction, position, txid)
                        results.setdefault((name, per_transaction), []).append(cost)
                        position += ROWS
    for per_transaction in (1, 100):
        costs = {name: statistics.median(results[(name, per_transaction)]) for name in VARIANTS}
        floor = costs["no index"]
        print(
            f"{per_transaction:>3} per transaction, bytes of WAL per row: "
            + ", ".join(f"{name} {cost:.0f} ({cost - floor:+.0f})" for name, cost in costs.items())
        )


if __name__ == "__main__":
    main()
