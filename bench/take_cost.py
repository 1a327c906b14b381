"""What one relay take costs against the dead index entries before it (docs/performance.md,
H1 "After").

``python -m bench.take_cost``: in a scratch database of its own on the local server
(``de_take_cost_<pid>``, dropped at the end, so runs side by side do not collide), a
table shaped like the outbox (a ``bigserial`` primary key), an idle ``REPEATABLE READ``
transaction holding its snapshot, and rows inserted and taken 1,000 at a time until 10k,
50k and 200k entries are dead; at each step the median of 21 takes of 1,000 rows: the
old take (``ORDER BY position LIMIT`` from the lowest position) and the frontier take
(above ``top``, plus 10 gaps looked up by position), as relay.py writes them; for the
database transport's move (``FOR UPDATE SKIP LOCKED``) and for a broker's read (Redis,
SQS, RabbitMQ: no row lock, the rows' data read to be sent).
"""

from __future__ import annotations

import os
import statistics
import time

import psycopg

DB = f"de_take_cost_{os.getpid()}"
SERVER = "host=127.0.0.1 user=postgres dbname="
OLD = "SELECT position FROM o ORDER BY position LIMIT 1000 FOR UPDATE SKIP LOCKED"
NEW = (
    "WITH g AS (SELECT position FROM o WHERE position = ANY(%s::bigint[]) "
    "FOR UPDATE SKIP LOCKED), "
    "f AS (SELECT position FROM o WHERE position > %s ORDER BY position LIMIT 1000 "
    "FOR UPDATE SKIP LOCKED) "
    "SELECT position FROM g UNION ALL SELECT position FROM f"
)
OLD_BROKER = "SELECT position, data FROM o ORDER BY position LIMIT 1000"
NEW_BROKER = (
    "WITH g AS (SELECT position FROM o WHERE position = ANY(%s::bigint[])), "
    "f AS (SELECT position FROM o WHERE position > %s ORDER BY position LIMIT 1000) "
    "SELECT position, data FROM o WHERE position = ANY(ARRAY("
    "SELECT position FROM g UNION ALL SELECT position FROM f))"
)


def timed(conn: psycopg.Connection, query: str, params: tuple = ()) -> float:
    """Median milliseconds of 21 runs, each in its own transaction."""
    out = []
    for _ in range(21):
        with conn.transaction():
            t = time.perf_counter()
            conn.execute(query, params).fetchall()
            out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def main() -> None:
    with psycopg.connect(SERVER + "postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB}")
    try:
        with (
            psycopg.connect(SERVER + DB, autocommit=True) as conn,
            psycopg.connect(SERVER + DB) as holder,
        ):
            conn.execute("CREATE TABLE o (position bigserial PRIMARY KEY, data text)")
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM o")  # the snapshot, held from here on
            dead = 0
            for target in (0, 10_000, 50_000, 200_000):
                while dead < target:
                    conn.execute("INSERT INTO o (data) SELECT '{}' FROM generate_series(1, 1000)")
                    conn.execute(
                        "DELETE FROM o WHERE position IN "
                        "(SELECT position FROM o ORDER BY position LIMIT 1000)"
                    )
                    dead += 1000
                top = conn.execute("SELECT last_value FROM o_position_seq").fetchone()[0]
                conn.execute("INSERT INTO o (data) SELECT '{}' FROM generate_series(1, 100)")
                gaps = list(range(top - 50, top - 40))  # taken already: dead entries
                # top: the highest position taken, as the relay keeps it
                for kind, old_take, new_take in (
                    ("database", OLD, NEW),
                    ("broker", OLD_BROKER, NEW_BROKER),
                ):
                    old, new = timed(conn, old_take), timed(conn, new_take, (gaps, top))
                    print(
                        f"{kind:>8} dead entries {dead:>7,}: old take {old:8.2f} ms, "
                        f"frontier take {new:6.2f} ms, ratio {old / new:6.1f}x"
                    )
                conn.execute("DELETE FROM o WHERE position > %s", [top])
            holder.rollback()
    finally:
        with psycopg.connect(SERVER + "postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    main()
