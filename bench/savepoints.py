"""The cost of a savepoint per handler, and of capping them per commit.

``python -m bench.savepoints [--events 20000]``: two ``consume_events`` processes drain
``--events`` events whose handler writes one row (so each handler's savepoint takes a
subtransaction id), while another session counts that table's rows in a loop, for
``BATCH_SIZE`` 100 and 500, with the worker's cap of 64
savepoints per commit and without it. More than 64 subtransactions that wrote overflow a
PostgreSQL backend's subtransaction cache, and every snapshot in the database then has
to look up ``pg_subtrans``. Prints each drain's events/s and the reader's queries/s;
variants alternate, and the median of ``--runs`` is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

WORKERS = 2


class Reader(threading.Thread):
    """Another session reading the table the handlers write, as an application would:
    its snapshots are the ones a subtransaction cache overflow slows down."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.queries = 0

    def run(self) -> None:
        from bench import pg

        with pg.connect() as conn:
            while not self.stop.is_set():
                conn.execute("SELECT count(*) FROM benchapp_naiveoutbox").fetchone()
                self.queries += 1


def drain(n: int, batch_size: int, cap: int) -> tuple[float, float]:
    from bench import pg

    pg.reset_events()
    with pg.connect() as conn:
        conn.execute("TRUNCATE benchapp_naiveoutbox")
    pg.prepublish(n, type="bench.write")
    env = pg.env(BENCH_SAVEPOINTS_PER_COMMIT=str(cap))
    command = [sys.executable, "-m", "django", "consume_events", "--group", "bench_write"]
    command += ["--batch-size", str(batch_size), "--verbosity", "0"]
    procs = [subprocess.Popen(command, env=env, cwd=pg.ROOT) for _ in range(WORKERS)]
    reader = Reader()
    try:
        with pg.connect() as conn:

            def started(c):  # type: ignore[no-untyped-def]
                row = c.execute("SELECT EXISTS (SELECT 1 FROM django_events_inbox)").fetchone()
                return bool(row and row[0])

            def done(c):  # type: ignore[no-untyped-def]
                row = c.execute(
                    "SELECT EXISTS (SELECT 1 FROM django_events_outbox) "
                    "OR EXISTS (SELECT 1 FROM django_events_delivery)"
                ).fetchone()
                return not (row and row[0])

            reader.start()
            t0, t1 = pg.wait_steady(conn, started, done, procs, timeout=600)
            reader.stop.set()
            reader.join()
            read_rate = reader.queries / (time.perf_counter() - t0)
            rows = conn.execute("SELECT count(*) FROM benchapp_naiveoutbox").fetchone()
            assert rows and rows[0] == n, (rows, n)
    finally:
        pg.stop(procs)
    return n / (t1 - t0), read_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from bench.__main__ import _setup

    problem = _setup()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    variants = [(b, cap) for b in (100, 500) for cap in (64, 10**6)]
    rates: dict[tuple[int, int], list[tuple[float, float]]] = {v: [] for v in variants}
    drain(2000, 100, 64)  # warm up
    for _ in range(args.runs):
        for batch_size, cap in variants:
            rates[(batch_size, cap)].append(drain(args.events, batch_size, cap))
    for (batch_size, cap), got in rates.items():
        label = "64 per commit" if cap == 64 else "one commit per batch"
        drains, reads = [r for r, _ in got], [q for _, q in got]
        print(
            f"BATCH_SIZE {batch_size}, {label}: median {statistics.median(drains):,.0f} "
            f"events/s ({', '.join(f'{r:,.0f}' for r in drains)}); a reader meanwhile: "
            f"median {statistics.median(reads):,.1f} queries/s "
            f"({', '.join(f'{q:,.1f}' for q in reads)})"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    sys.exit(main())
