"""What the log's ``txid`` (migration 0014) costs an installation that does not read it
(docs/internals.md, "The log transport").

``python -m bench.txid_cost``: on a private cluster (WAL is counted for the whole server)
with ``full_page_writes`` off, so the bytes are the records' own and not the page images a
checkpoint happens to force, the migrated log table takes 2,000 rows shaped as the relay
writes them, one per transaction and in batches of 100, with the ``txid`` index and
default and without them; medians of 3 rounds, the variants alternating.
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
    "occurred_at, source, correlation_id, causation_id, recorded_at) VALUES "
    "(%s, %s, 'bench.noop', 1, NULL, %s::jsonb, '{}'::jsonb, %s, 'bench', %s, NULL, "
    "statement_timestamp())"
)
WITH = (
    "CREATE INDEX IF NOT EXISTS django_events_event_txid ON django_events_event (txid)",
    "ALTER TABLE django_events_event ALTER COLUMN txid SET DEFAULT pg_current_xact_id()",
)
WITHOUT = (
    "DROP INDEX IF EXISTS django_events_event_txid",
    "ALTER TABLE django_events_event ALTER COLUMN txid DROP DEFAULT",
)


def wal_per_row(conn: psycopg.Connection[tuple], per_transaction: int, start: int) -> float:
    payload = json.dumps({"order_id": 1, "total": "19.90", "items": [{"sku": "A-1", "qty": 2}]})
    before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    for first in range(start, start + ROWS, per_transaction):
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                INSERT,
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
                for name, statements in (("with", WITH), ("without", WITHOUT)):
                    for statement in statements:
                        conn.execute(statement)
                    for per_transaction in (1, 100):
                        cost = wal_per_row(conn, per_transaction, position)
                        results.setdefault((name, per_transaction), []).append(cost)
                        position += ROWS
    for per_transaction in (1, 100):
        with_, without = (
            statistics.median(results[(name, per_transaction)]) for name in ("with", "without")
        )
        print(
            f"{per_transaction:>3} per transaction: {with_:.0f} bytes of WAL per row with txid, "
            f"{without:.0f} without (+{with_ - without:.0f})"
        )


if __name__ == "__main__":
    main()
