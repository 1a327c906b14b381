"""S5: commit-to-handler latency at 100 events/s with an idle worker."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from bench import pg
from bench.runner import Context, Goal, Row, percentile, ratio_row

ID = "S5"
TITLE = "commit-to-handler latency at 100 events/s, idle worker"
BASELINE = "raw LISTEN/NOTIFY, then fetch"
GOAL = Goal("<=", 2.0, on="value", unit="ms")
RATE = 100.0


def _paced(count: int, send: object) -> dict[int, float]:
    """Call ``send(i)`` at RATE per second; return i -> perf_counter just after commit."""
    committed: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)  # type: ignore[operator]
        committed[i] = time.perf_counter()
    return committed


def raw_round(count: int) -> list[float]:
    listener = pg.child("raw_listener", {"db": pg.BENCH_DB, "count": count})
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    with pg.connect(autocommit=False) as conn:

        def send(i: int) -> None:
            conn.execute("INSERT INTO bench_lat (n) VALUES (%s)", [i])
            conn.execute("SELECT pg_notify('bench_raw', '')")
            conn.commit()

        committed = _paced(count, send)
    seen = pg.child_result(listener, timeout=60)
    return [(t - committed[n]) * 1e3 for n, t in seen]


def events_round(count: int, path: str, offset: int) -> list[float]:
    from django.db import transaction

    from django_events import publish

    open(path, "w").close()

    def send(i: int) -> None:
        with transaction.atomic():
            publish("bench.latency", {**pg.PAYLOAD, "n": offset + i})

    committed = _paced(count, send)
    deadline = time.perf_counter() + 30
    while True:
        with open(path) as f:
            lines = f.read().splitlines()
        if len(lines) >= count or time.perf_counter() > deadline:
            break
        time.sleep(0.05)
    handled = {int(n): float(t) for n, t in (line.split() for line in lines)}
    assert len(handled) == count, (len(handled), count)
    return [(handled[offset + i] - committed[i]) * 1e3 for i in range(count)]


def run(ctx: Context) -> list[Row]:
    from django.db import connection

    pg.reset_events()
    with pg.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_lat (n integer)")
        conn.execute("TRUNCATE bench_lat")
    connection.ensure_connection()
    count = int(RATE * ctx.size(4, 0.8))
    fd, path = tempfile.mkstemp(prefix="bench-latency-", suffix=".txt")
    os.close(fd)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django",
            "consume_events",
            "--group",
            "bench_latency",
            "--verbosity",
            "0",
        ],
        env=pg.env(BENCH_LATENCY_FILE=path),
        cwd=pg.ROOT,
    )
    p50: dict[str, list[float]] = {"raw": [], "events": []}
    p99: dict[str, list[float]] = {"raw": [], "events": []}
    try:
        events_round(20, path, 10_000_000)  # waits for the worker to start; warms up
        raw_round(20)
        time.sleep(0.5)  # idle again
        for rep in range(ctx.reps):
            for name in ("raw", "events"):
                lat = raw_round(count) if name == "raw" else events_round(count, path, rep * count)
                p50[name].append(percentile(lat, 0.5))
                p99[name].append(percentile(lat, 0.99))
                ctx.log(
                    f"    rep {rep + 1}: {name} p50 {p50[name][-1]:.3f} ms "
                    f"p99 {p99[name][-1]:.3f} ms"
                )
                time.sleep(0.2)  # the worker goes idle between rounds
    finally:
        pg.stop([worker])
        os.unlink(path)
        with pg.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS bench_lat")
    note = (
        f"{count} events per repetition, one transaction each; one consume_events "
        "(relay on) woken by NOTIFY; handler time minus commit return"
    )
    return [
        ratio_row(
            "S5.p50",
            TITLE,
            BASELINE,
            "p50 latency",
            "ms",
            p50["events"],
            p50["raw"],
            Goal("<=", 2.0, on="value", unit="ms"),
            higher_is_better=False,
            notes=note,
        ),
        ratio_row(
            "S5.p99",
            TITLE,
            BASELINE,
            "p99 latency",
            "ms",
            p99["events"],
            p99["raw"],
            Goal("<=", 10.0, on="value", unit="ms"),
            higher_is_better=False,
            notes=note,
        ),
    ]
