"""O1: what OpenTelemetry costs S1 (publish) and S4 (end to end), off and on.

Each is measured three ways, in turn: without OpenTelemetry (the baseline), with the API
installed and no SDK ("off"), and with the SDK recording every span and measurement and
exporting nowhere ("on"); bench/otel.py sets each state up.
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
                pg.prepublish(n)
                return consumers.drain(n)

        return run

    try:
        return alternate(ctx, {mode: drain(mode) for mode in otel.MODES}, warmup=False)
    finally:
        pg.reset_events()


def run(ctx: Context) -> list[Row]:
    p50 = publish_p50(ctx)
    rate = drain_rate(ctx)
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
    ]
