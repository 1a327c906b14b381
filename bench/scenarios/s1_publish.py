"""S1: the cost of publish() inside the caller's own transaction."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from bench import pg
from bench.runner import Context, Goal, Row, percentile, ratio_row

ID = "S1"
TITLE = "atomic(): Model.objects.create(); publish()"
BASELINE = "the same without publish"
GOAL = Goal("<=", 1.10)
BLOCK = 100  # operations per variant before switching to the next one


def run(ctx: Context) -> list[Row]:
    from django.db import connection, transaction

    from bench.benchapp.models import NaiveOutbox
    from django_events import publish
    from tests.testapp.models import Order

    pg.reset_events()
    total = Decimal("19.90")
    payload = dict(pg.PAYLOAD)

    def plain() -> None:
        with transaction.atomic():
            Order.objects.create(total=total)

    def with_publish() -> None:
        with transaction.atomic():
            order = Order.objects.create(total=total)
            payload["order_id"] = order.pk
            publish("bench.noop", payload)

    def naive() -> None:
        with transaction.atomic():
            order = Order.objects.create(total=total)
            payload["order_id"] = order.pk
            NaiveOutbox.objects.create(type="bench.noop", payload=payload)

    variants: dict[str, Callable[[], None]] = {
        "plain": plain,
        "publish": with_publish,
        "naive": naive,
    }
    connection.ensure_connection()
    per_rep = ctx.size(1500, 300)
    for fn in variants.values():  # warm up
        for _ in range(BLOCK):
            fn()
    p50: dict[str, list[float]] = {k: [] for k in variants}
    p99: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(ctx.reps):
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(per_rep // BLOCK):  # A B C A B C ... in blocks
            for name, fn in variants.items():
                out = samples[name]
                for _ in range(BLOCK):
                    t = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - t)
        for name, values in samples.items():
            p50[name].append(percentile(values, 0.5) * 1e3)
            p99[name].append(percentile(values, 0.99) * 1e3)
        ctx.log(
            f"    rep {rep + 1}: p50 " + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in p50.items())
        )
    note = f"{per_rep} transactions per variant per repetition, in blocks of {BLOCK}"
    return [
        ratio_row(
            "S1.p50",
            TITLE,
            "same without publish",
            "p50 latency",
            "ms",
            p50["publish"],
            p50["plain"],
            Goal("<=", 1.10),
            higher_is_better=False,
            notes=note,
        ),
        ratio_row(
            "S1.p99",
            TITLE,
            "same without publish",
            "p99 latency",
            "ms",
            p99["publish"],
            p99["plain"],
            Goal("<=", 1.25),
            higher_is_better=False,
            notes=note,
        ),
        ratio_row(
            "S1.naive",
            "naive outbox: a second create() of a JSON row",
            "same without it",
            "p50 latency",
            "ms",
            p50["naive"],
            p50["plain"],
            None,
            higher_is_better=False,
            notes="reference (the issue measured ~1.42x)",
        ),
        ratio_row(
            "S1.vs-naive",
            "publish() against the naive outbox",
            "naive outbox",
            "p50 latency",
            "ms",
            p50["publish"],
            p50["naive"],
            None,
            higher_is_better=False,
            notes="reference",
        ),
    ]
