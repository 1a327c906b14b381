"""H1: a steady offered rate with an idle transaction holding a snapshot in the middle.

On a private cluster with autovacuum on (the server's defaults): one publisher process
offers ``rate`` events/s (one transaction per 20 ms tick, ``publish_many()`` of the events
due), two ``consume_events`` handle them. After a warm-up, three phases of equal length:
clean, held (a second connection sits in ``REPEATABLE READ`` after its first statement),
recovery. The handler notes each event's publish time and its own (wall clock), so
everything below comes from the events themselves, whatever tables the engine uses:

- completions: the lowest rate over the phase's 5-second windows ÷ the offered rate;
- pick-up latency: publish() to the handler, p50 and p99 of the events published in
  the phase (the issue's "claim" latency, plus the handler's own transaction start);
- drain: seconds from the snapshot's end until the backlog (published minus handled)
  is back to the clean phase's 99th percentile.
"""

from __future__ import annotations

import bisect
import glob
import math
import os
import tempfile
import time

from bench import pg, private
from bench.runner import Context, Goal, Row, Stats, percentile

ID = "H1"
PRIVATE_SERVER = True  # everything on a cluster of its own: no shared lock, no bench DB
TITLE = "steady rate, an idle transaction holding a snapshot in the middle phase"
BASELINE = "the offered rate"
GOAL = Goal(">=", 0.95)
DB = "h1_events"
WINDOW = 5.0  # seconds a completion rate is averaged over
STEP = 0.1  # seconds between backlog samples


def run(ctx: Context) -> list[Row]:
    rate = ctx.size(2_000, 500)
    phase = ctx.size(90, 20)
    warmup = ctx.size(10, 5)
    folder = tempfile.mkdtemp(prefix="bench-h1-")
    stamp = os.path.join(folder, "handled")
    with private.cluster(autovacuum=True) as server:
        exact = private.migrated_database(server, DB)
        os.environ["BENCH_H1_FILE"] = stamp  # the consumers inherit it
        try:
            consumers = pg.Consumers(2, DB)
        finally:
            del os.environ["BENCH_H1_FILE"]
        try:
            publisher = pg.child(
                "paced_publisher",
                {"rate": rate, "seconds": warmup + 3 * phase},
                env={"DJANGO_EVENTS_BENCH_DB": DB},
            )
            assert publisher.stdin is not None and publisher.stdout is not None
            assert publisher.stdout.readline().strip() == "ready"
            publisher.stdin.write("go\n")
            publisher.stdin.flush()
            time.sleep(warmup + phase)
            holder = pg.child("snapshot_holder", {"db": DB, "seconds": phase + 300})
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            held_from = time.time()
            ctx.log("    snapshot held")
            time.sleep(phase)
            assert holder.stdin is not None
            holder.stdin.write("done\n")
            holder.stdin.flush()
            pg.child_result(holder)
            held_to = time.time()
            ctx.log("    snapshot released")
            published = pg.child_result(publisher, timeout=phase * 3 + 300)
            total = sum(count for _, count in published["ticks"])
            drained = wait_handled(stamp, total, consumers, timeout=max(120.0, 2.0 * phase))
            waited_until = time.time()
            tables = private.table_stats(DB, exact)
        finally:
            consumers.__exit__()
    handled = read_handled(stamp)
    start = published["start"] + warmup
    phases = {
        "clean": (start, held_from),
        "held": (held_from, held_to),
        "recovery": (held_to, published["end"]),
    }
    pub_times = sorted(t for t, count in published["ticks"] for _ in range(count))
    done_times = sorted(h for _, h in handled)
    threshold = max(
        rate * STEP,
        percentile(backlog(pub_times, done_times, start + WINDOW, held_from), 0.99),
    )
    drain = drain_seconds(pub_times, done_times, held_to, threshold)
    never = math.isinf(drain)
    if never:  # JSON has no infinity: report the lower bound, and say so
        drain = waited_until - held_to
    offered = {
        name: sum(1 for t in pub_times if a <= t < b) / (b - a) for name, (a, b) in phases.items()
    }
    note = (
        f"{rate:,} events/s offered by 1 publisher process (a transaction per 20 ms tick), "
        f"2 consume_events; {warmup} s warm-up, then {phase} s clean, {phase} s with the "
        f"snapshot held, {phase} s recovery; private cluster, autovacuum on; published "
        + ", ".join(f"{name} {value:,.0f}/s" for name, value in offered.items())
        + f"; {len(handled):,} of {total:,} handled"
        + ("" if drained else " (NOT all handled within the wait)")
    )
    rows: list[Row] = []
    for name, (a, b) in phases.items():
        windows = [
            sum(1 for _ in range(*span(done_times, w, w + WINDOW))) / WINDOW
            for w in frange(a, b - WINDOW + 1e-9, WINDOW)
        ]
        lows = min(windows) if windows else 0.0
        rows.append(
            value_row(
                f"H1.{name}",
                f"{TITLE}: {name} phase, completions",
                "lowest 5-s completion rate",
                "events/s",
                lows,
                float(rate),
                GOAL,
                f"{note}; completions per 5 s window in this phase: "
                + ", ".join(f"{w:,.0f}" for w in windows),
            )
        )
    for name, (a, b) in phases.items():
        lat = sorted((h - p) * 1e3 for p, h in handled if a <= p < b)
        sent = sum(1 for _ in range(*span(pub_times, a, b)))
        # An event never handled waited at least until the run gave up on it.
        waits = lat + [(waited_until - b) * 1e3] * max(0, sent - len(lat))
        p50 = percentile(waits, 0.5) if waits else float("nan")
        p99 = percentile(waits, 0.99) if waits else float("nan")
        rows.append(
            value_row(
                f"H1.p99.{name}",
                f"{TITLE}: {name} phase, pick-up latency p99",
                "publish() to handler, p99",
                "ms",
                p99,
                None,
                Goal("<=", 100, on="value", unit="ms"),
                f"p50 {p50:,.1f} ms, largest measured {max(lat) if lat else float('nan'):,.0f} "
                f"ms; {len(lat):,} of the {sent:,} events published in the phase handled "
                "(the others count as waiting until the run ended: a lower bound)",
            )
        )
    rows.append(
        value_row(
            "H1.drain",
            f"{TITLE}: backlog drained after the snapshot ends",
            "seconds to drain",
            "s",
            drain,
            None,
            Goal("<=", 10, on="value", unit="s"),
            ("NOT drained when the run ended: a lower bound; " if never else "")
            + f"until published minus handled is back to {threshold:,.0f} (the clean phase's "
            f"99th percentile, sampled every {STEP} s); largest backlog while held "
            f"{max(backlog(pub_times, done_times, held_from, held_to) or [0]):,.0f}; "
            "tables after the run (size, dead tuples): "
            + ", ".join(
                f"{t} {s['bytes'] / 1e6:.1f} MB/{s.get('dead_exact', s['dead']):,}"
                for t, s in tables.items()
            ),
        )
    )
    return rows


def value_row(
    rid: str,
    scenario: str,
    metric: str,
    unit: str,
    value: float,
    offered: float | None,
    goal: Goal,
    notes: str,
) -> Row:
    return Row(
        id=rid,
        scenario=scenario,
        baseline=BASELINE if offered else "—",
        metric=metric,
        unit=unit,
        candidate=Stats.of([value]),
        base=Stats.of([offered]) if offered else None,
        ratio=Stats.of([value / offered]) if offered else None,
        goal=goal,
        notes=notes,
    )


def wait_handled(stamp: str, total: int, consumers: pg.Consumers, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_handled(stamp)) >= total:
            return True
        if any(p.poll() is not None for p in consumers.procs):
            raise RuntimeError("a consumer exited during H1")
        time.sleep(0.5)
    return False


def read_handled(stamp: str) -> list[tuple[float, float]]:
    out = []
    for path in glob.glob(stamp + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    out.append((float(parts[0]), float(parts[1])))
    return out


def span(ordered: list[float], a: float, b: float) -> tuple[int, int]:
    """Index range of the values in [a, b)."""
    return bisect.bisect_left(ordered, a), bisect.bisect_left(ordered, b)


def frange(a: float, b: float, step: float) -> list[float]:
    out, x = [], a
    while x <= b:
        out.append(x)
        x += step
    return out


def backlog(published: list[float], done: list[float], a: float, b: float) -> list[float]:
    return [
        float(bisect.bisect_right(published, t) - bisect.bisect_right(done, t))
        for t in frange(a, b, STEP)
    ]


def drain_seconds(published: list[float], done: list[float], t0: float, limit: float) -> float:
    """Seconds after ``t0`` until the backlog is at most ``limit`` (inf if never)."""
    t = t0
    end = max(done[-1] if done else t0, published[-1] if published else t0)
    while t <= end + STEP:
        if bisect.bisect_right(published, t) - bisect.bisect_right(done, t) <= limit:
            return t - t0
        t += STEP
    return float("inf")
