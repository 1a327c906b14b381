"""S0: what the raw drivers do on this machine right now; printed as reference."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time

from bench import pg
from bench.runner import Context, Row, percentile, reference_row

ID = "S0"
TITLE = "calibration: raw drivers"
BASELINE = "—"
GOAL = None


def insert_latency(n: int) -> float:
    """L_c: median µs of a single-row autocommit INSERT by raw psycopg."""
    with pg.connect() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_calib (id bigserial PRIMARY KEY, payload text)"
        )
        times = []
        for _ in range(n):
            t = time.perf_counter()
            conn.execute("INSERT INTO bench_calib (payload) VALUES (%s)", [pg.PAYLOAD_TEXT])
            times.append(time.perf_counter() - t)
        conn.execute("TRUNCATE bench_calib")
    return percentile(times, 0.5) * 1e6


def fill_queue(n: int, db: str = pg.BENCH_DB) -> None:
    with pg.connect(db) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_q (id bigserial PRIMARY KEY, payload text NOT NULL)"
        )
        conn.execute("TRUNCATE bench_q")
        conn.execute(
            "INSERT INTO bench_q (payload) SELECT %s FROM generate_series(1, %s)",
            [pg.PAYLOAD_TEXT, n],
        )
        conn.execute("VACUUM ANALYZE bench_q")


def drain_rate(n: int, processes: int = 2, db: str = pg.BENCH_DB) -> float:
    """L_q: rows/s of ``processes`` raw psycopg processes draining ``n`` rows, 100 at a time."""
    fill_queue(n, db)
    procs = [pg.child("raw_drain", {"db": db}) for _ in range(processes)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [pg.child_result(p) for p in procs]
    moved = sum(r["moved"] for r in results)
    assert moved == n, (moved, n)
    return n / (max(r["t1"] for r in results) - min(r["t0"] for r in results))


def sqlite_executemany(n: int) -> float:
    """Rows/s of raw sqlite3 executemany of ``n`` rows in one transaction, on a temp file."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "calib.sqlite3"), isolation_level=None)
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT)")
        rows = [(pg.PAYLOAD_TEXT,)] * n
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO t (payload) VALUES (?)", rows)
        db.execute("COMMIT")
        elapsed = time.perf_counter() - t
        db.close()
    return n / elapsed


def run(ctx: Context) -> list[Row]:
    n_lc = ctx.size(2000, 300)
    n_lq = ctx.size(50_000, 10_000)
    n_sq = ctx.size(100_000, 20_000)
    insert_latency(100)
    lc = [insert_latency(n_lc) for _ in range(ctx.reps)]
    lq = [drain_rate(n_lq) for _ in range(ctx.reps)]
    sq = [sqlite_executemany(n_sq) for _ in range(ctx.reps)]
    ctx.extra["L_c_us"] = lc
    return [
        reference_row(
            "S0.Lc",
            "raw psycopg single-row autocommit INSERT (L_c)",
            "p50 latency",
            "µs",
            lc,
            f"{n_lc} inserts per repetition",
        ),
        reference_row(
            "S0.Lq",
            "raw SKIP LOCKED drain, 2 processes, 100 per DELETE (L_q)",
            "throughput",
            "rows/s",
            lq,
            f"{n_lq:,} rows per repetition",
        ),
        reference_row(
            "S0.sqlite",
            "raw sqlite3 executemany, one transaction",
            "throughput",
            "rows/s",
            sq,
            f"{n_sq:,} rows per repetition",
        ),
    ]
