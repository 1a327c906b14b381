"""M1: a consumer's resident memory does not grow with the number of events handled."""

from __future__ import annotations

import subprocess
import sys
import time

from bench import pg
from bench.runner import Context, Goal, Row, na_row, ratio_row

ID = "M1"
TITLE = "consumer resident memory after many events"
BASELINE = "after the first events"
GOAL = Goal("<=", 1.2)


def one_run(total: int, early: int) -> tuple[float, float]:
    import psutil

    pg.reset_events()
    pg.prepublish(total)
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "consume_events", "--group", "bench", "--verbosity", "0"],
        env=pg.env(),
        cwd=pg.ROOT,
    )
    rss_early = None
    try:
        ps = psutil.Process(proc.pid)
        with pg.connect() as conn:
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline:
                row = conn.execute("SELECT count(*) FROM django_events_inbox").fetchone()
                done = row[0] if row else 0
                if rss_early is None and done >= early:
                    rss_early = ps.memory_info().rss
                if done >= total:
                    rss_late = ps.memory_info().rss
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"consumer exited with {proc.returncode}")
                time.sleep(0.05)
            else:
                raise TimeoutError("consumer did not finish")
    finally:
        pg.stop([proc])
    assert rss_early is not None
    return rss_late / 2**20, rss_early / 2**20


def run(ctx: Context) -> list[Row]:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return [na_row(ID, TITLE, BASELINE, GOAL, "psutil is not installed (the bench extra)")]
    total = ctx.size(50_000, 4_000)
    early = ctx.size(10_000, 1_000)
    one_run(min(total, 2000), min(early, 500))  # warm up
    late, first = [], []
    for rep in range(ctx.reps):
        a, b = one_run(total, early)
        late.append(a)
        first.append(b)
        ctx.log(f"    rep {rep + 1}: {b:.1f} MiB after {early:,}, {a:.1f} MiB after {total:,}")
    pg.reset_events()
    return [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "RSS",
            "MiB",
            late,
            first,
            GOAL,
            higher_is_better=False,
            notes=f"one consume_events process; RSS after {total:,} events ÷ RSS after "
            f"{early:,} (the issue says 1M ÷ 10k; scaled to the time budget)",
        ),
    ]
