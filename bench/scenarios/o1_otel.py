"""O1: what OpenTelemetry costs S1 (publish) and S4 (end to end), off and on.

Each is measured three ways, in turn: without OpenTelemetry (the baseline), with the API
installed and no SDK ("off"), and with the SDK recording every span and measurement and
exporting nowhere ("on"); bench/otel.py sets each state up. With the SDK on, the SDK's own
span and measurement bookkeeping is a floor no hook can go under; O1.hooks measures the
handler hooks against that floor, in this process, without a database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from bench import otel, pg
from bench.runner import Context, Goal, Row, alternate, percentile, ratio_row

ID = "O1"
TITLE = "OpenTelemetry off and on, S1 and S4"
BASELINE = "the same without OpenTelemetry installed"
GOAL = Goal("<=", 1.05)
OFF, ON = Goal("<=", 1.01), Goal("<=", 1.05)  # the goals
BLOCK = 100  # S1 transactions per state before switching to the next one


def publish_p50(ctx: Context) -> dict[str, list[float]]:
    """S1's publish p50 [ms] per state, the states alternating in blocks."""
    from django.db import connection, transaction

    from django_events import publish
    from tests.testapp.models import Order

    pg.reset_events()
    total = Decimal("19.90")
    payload = dict(pg.PAYLOAD)

    def with_publish() -> None:
        with transaction.atomic():
            order = Order.objects.create(total=total)
            payload["order_id"] = order.pk
            publish("bench.noop", payload)

    connection.ensure_connection()
    per_rep = ctx.size(1500, 300)
    for mode in otel.MODES:  # warm up
        otel.set_mode(mode)
        for _ in range(BLOCK):
            with_publish()
    p50: dict[str, list[float]] = {mode: [] for mode in otel.MODES}
    try:
        for rep in range(ctx.reps):
            samples: dict[str, list[float]] = {mode: [] for mode in otel.MODES}
            for _ in range(per_rep // BLOCK):
                for mode in otel.MODES:
                    otel.set_mode(mode)
                    out = samples[mode]
                    for _ in range(BLOCK):
                        t = time.perf_counter()
                        with_publish()
                        out.append(time.perf_counter() - t)
            for mode, values in samples.items():
                p50[mode].append(percentile(values, 0.5) * 1e3)
            got = ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in p50.items())
            ctx.log(f"    rep {rep + 1}: p50 {got}")
    finally:
        otel.set_mode("off")
    return p50


def drain_rate(ctx: Context) -> dict[str, list[float]]:
    """S4's events/s per state: two consume_events processes started in that state."""
    n = ctx.size(30_000, 3_000)

    def drain(mode: str) -> Callable[[], float]:
        def run() -> float:
            environ = {"DJANGO_EVENTS_BENCH_OTEL": mode}
            with pg.Consumers(2, environ=environ) as consumers:
                pg.reset_events()
                pg.prepublish(min(n, 1000))
                consumers.drain(min(n, 1000))  # warm up the fresh processes
                pg.reset_events()
                before = consumers.handled()
                pg.prepublish(n)
                return consumers.drain(n, before=before)

        return run

    try:
        return alternate(ctx, {mode: drain(mode) for mode in otel.MODES}, warmup=False)
    finally:
        pg.reset_events()


def hook_cost(ctx: Context) -> dict[str, list[float]]:
    """CPU µs per handled event: the worker's hooks (the ``process`` span with its
    attributes, made current; the handled count and two histograms) against the SDK floor
    for the same records (a bare span started and ended, two histogram records)."""
    import uuid

    from opentelemetry import metrics, trace

    from django_events import instrumentation
    from django_events.envelope import Event
    from django_events.transports.base import Claimed

    otel.set_mode("on")
    event = Event(id=uuid.uuid4(), type="bench.noop", data={})
    claimed = Claimed("bench", 1, None, event.id, event.type, event)
    tracer = trace.get_tracer("bench.floor")
    meter = metrics.get_meter("bench.floor")
    floor_histograms = [meter.create_histogram(f"bench.floor.{i}", unit="s") for i in (1, 2)]

    def hooks() -> None:
        with instrumentation.consuming(claimed, event):
            pass
        instrumentation.handled(claimed, event, 0.001)

    def floor() -> None:
        tracer.start_span("process bench").end()
        labels = {"group": "bench", "type": "bench.noop"}
        for histogram in floor_histograms:
            histogram.record(0.001, labels)

    n = ctx.size(20_000, 5_000)
    out: dict[str, list[float]] = {"hooks": [], "floor": []}
    try:
        for _ in range(ctx.reps):
            for name, step in (("hooks", hooks), ("floor", floor)):
                t = time.process_time()
                for _ in range(n):
                    step()
                out[name].append((time.process_time() - t) / n * 1e6)
    finally:
        otel.set_mode("off")
    return out


def run(ctx: Context) -> list[Row]:
    p50 = publish_p50(ctx)
    rate = drain_rate(ctx)
    cost = hook_cost(ctx)
    s1 = "S1: atomic(): create(); publish(), p50"
    s4 = "S4: end to end, 2 consume_events processes"
    on = "the SDK on: every span and measurement recorded, a batch span processor exporting nowhere"
    return [
        ratio_row(
            "O1.s1-off",
            f"{s1}, OpenTelemetry API installed, no SDK",
            BASELINE,
            "p50 latency",
            "ms",
            p50["off"],
            p50["absent"],
            OFF,
            higher_is_better=False,
            notes="states alternate in blocks of 100 transactions",
        ),
        ratio_row(
            "O1.s1-on",
            f"{s1}, OpenTelemetry SDK on",
            BASELINE,
            "p50 latency",
            "ms",
            p50["on"],
            p50["absent"],
            ON,
            higher_is_better=False,
            notes=on,
        ),
        ratio_row(
            "O1.s4-off",
            f"{s4}, OpenTelemetry API installed, no SDK",
            BASELINE,
            "throughput",
            "events/s",
            rate["off"],
            rate["absent"],
            Goal(">=", 0.99),
            higher_is_better=True,
            notes="workers started per state and repetition, warmed up on 1,000 events",
        ),
        ratio_row(
            "O1.s4-on",
            f"{s4}, OpenTelemetry SDK on",
            BASELINE,
            "throughput",
            "events/s",
            rate["on"],
            rate["absent"],
            Goal(">=", 0.95),
            higher_is_better=True,
            notes=on,
        ),
        ratio_row(
            "O1.hooks",
            "the worker's OpenTelemetry hooks per handled event, SDK on, no database",
            "the SDK's floor: a bare span started and ended, two histogram records",
            "CPU time",
            "µs/event",
            cost["hooks"],
            cost["floor"],
            None,
            higher_is_better=False,
            notes="process_time over 20,000 calls per repetition, the two alternating",
        ),
    ]
