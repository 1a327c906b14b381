"""Which engine statements grow in cost while a snapshot is held (docs/performance.md, H1).

``python -m bench.held_profile [rate] [clean] [held]``: H1's setup (a private cluster
with autovacuum on, one paced publisher, two ``consume_events``) with
``pg_stat_statements`` loaded; the snapshot is taken after ``clean`` seconds and held
for ``held``. Every ``STEP`` seconds the statistics are read and the difference printed
per statement: calls, milliseconds, shared buffers and rows per call, so a statement
whose cost follows the snapshot's age shows as a growing column; and the events handled
per second in the window. Statements below 1% of the engine's time are left out.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any, NamedTuple

from bench import pg, private
from bench.scenarios.h1_held_snapshot import read_handled

DB = "h1_profile"
STEP = 15.0
READ = (
    "SELECT queryid, regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time, "
    "shared_blks_hit + shared_blks_read, rows FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)"
)


class Cost(NamedTuple):
    text: str
    calls: int
    ms: float
    blocks: int
    rows: int


Window = tuple[str, float, dict[int, Cost]]  # label, events handled per second, statements


def read(conn: Any) -> dict[int, Cost]:
    return {row[0]: Cost(*row[1:]) for row in conn.execute(READ, [DB])}


def main() -> None:
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
    clean = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    held = float(sys.argv[3]) if len(sys.argv) > 3 else 90
    stamp = tempfile.mkdtemp(prefix="bench-h1-profile-") + "/handled"
    windows: list[Window] = []
    with private.cluster(autovacuum=True, preload="pg_stat_statements") as server:
        private.migrated_database(server, DB)
        with server.connect(DB) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        consumers = pg.Consumers(2, DB, environ={"BENCH_H1_FILE": stamp})
        try:
            publisher = pg.child(
                "paced_publisher",
                {"rate": rate, "seconds": 5 + clean + held + STEP},
                env={"DJANGO_EVENTS_BENCH_DB": DB},
            )
            assert publisher.stdin is not None and publisher.stdout is not None
            assert publisher.stdout.readline().strip() == "ready"
            publisher.stdin.write("go\n")
            publisher.stdin.flush()
            time.sleep(5)
            with pg.connect(DB) as stats:
                holder = observe(stats, stamp, windows, clean, held)
            assert holder.stdin is not None
            holder.stdin.write("done\n")
            holder.stdin.flush()
            pg.child_result(holder)
            pg.child_result(publisher, timeout=held * 3 + 300)
        finally:
            consumers.__exit__()
    report(rate, windows)


def observe(stats: Any, stamp: str, windows: list[Window], clean: float, held: float) -> Any:
    """Read the statistics every ``STEP`` seconds, taking the snapshot after ``clean``;
    returns the holder, still holding it."""
    before, handled, holder = read(stats), len(read_handled(stamp)), None
    t0 = time.monotonic()
    for label, until in plan(clean, held):
        time.sleep(max(0.0, t0 + until - time.monotonic()))
        after, done = read(stats), len(read_handled(stamp))
        windows.append((label, (done - handled) / STEP, diff(before, after)))
        before, handled = after, done
        if holder is None and until >= clean:
            holder = pg.child("snapshot_holder", {"db": DB, "seconds": held + 300})
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    assert holder is not None
    return holder


def plan(clean: float, held: float) -> list[tuple[str, float]]:
    """(label, seconds since the start) for the end of each window."""
    out, t = [], 0.0
    while t + STEP <= clean + 1e-9:
        t += STEP
        out.append((f"clean {t:.0f}s", t))
    while t + STEP <= clean + held + 1e-9:
        t += STEP
        out.append((f"held {t - clean:.0f}s", t))
    return out


def diff(before: dict[int, Cost], after: dict[int, Cost]) -> dict[int, Cost]:
    out = {}
    for qid, now in after.items():
        was = before.get(qid, Cost(now.text, 0, 0.0, 0, 0))
        if now.calls > was.calls:
            out[qid] = Cost(
                now.text,
                now.calls - was.calls,
                now.ms - was.ms,
                now.blocks - was.blocks,
                now.rows - was.rows,
            )
    return out


def report(rate: int, windows: list[Window]) -> None:
    totals: dict[int, float] = {}
    texts: dict[int, str] = {}
    for _, _, window in windows:
        for qid, cost in window.items():
            totals[qid] = totals.get(qid, 0.0) + cost.ms
            texts[qid] = cost.text
    everything = sum(totals.values()) or 1.0
    print(f"offered {rate:,} events/s; windows of {STEP:.0f} s")
    for label, handled, window in windows:
        spent = sum(cost.ms for cost in window.values()) / STEP
        print(f"  {label:>10}: handled {handled:7,.0f}/s, statements {spent:6,.0f} ms/s")
    for qid in sorted(totals, key=totals.__getitem__, reverse=True):
        if totals[qid] < 0.01 * everything:
            continue
        print(f"\n{totals[qid] / everything:5.1%} of the time: {texts[qid][:1500]}")
        for label, _, window in windows:
            c = window.get(qid, Cost("", 0, 0.0, 0, 0))
            n = max(c.calls, 1)
            print(
                f"  {label:>10}: {c.calls:6} calls {c.ms / n:8.3f} ms {c.blocks / n:8.0f} buf "
                f"{c.rows / n:7.1f} rows"
            )


if __name__ == "__main__":
    main()
