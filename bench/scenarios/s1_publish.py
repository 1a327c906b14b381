"""S1: the cost of publish() inside the caller's own transaction."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

from bench import pg
from bench.runner import Context, Goal, Row, percentile, ratio_row

ID = "S1"
TITLE = "atomic(): Model.objects.create(); publish()"
BASELINE = "the same without publish"
GOAL = Goal("<=", 1.10)
BLOCK = 100  # operations per variant before switching to the next one
ROW, TABLE = (
    ("log row", "django_events_event")
    if pg.LOG_TRANSPORT
    else ("outbox row", "django_events_outbox")
)


def run(ctx: Context) -> list[Row]:
    from django.db import connection, transaction

    from bench.benchapp.models import NaiveOutbox
    from django_events import publish
    from django_events.conf import get_settings
    from django_events.engine import sql
    from django_events.outbox import _insert_sql, _log_insert_sql, _position_sequence
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

    # The floor of any outbox: the same row publish() writes (same columns, same values,
    # the same defaults), one raw INSERT through Django's cursor, no NOTIFY, no
    # validation. What publish() costs above it is the library's own. On the log transport
    # publish() writes the log row itself: that row is the floor there.
    source = get_settings().source or get_settings().service
    if pg.LOG_TRANSPORT:
        floor_sql = _log_insert_sql(TABLE, _position_sequence(connection))
    else:
        floor_sql = _insert_sql(TABLE, sql.dialect(connection.alias), 1)

    def floor() -> None:
        with transaction.atomic():
            order = Order.objects.create(total=total)
            payload["order_id"] = order.pk
            event_id = uuid.uuid4()
            with connection.cursor() as cursor:
                cursor.execute(
                    floor_sql,
                    [
                        event_id,
                        "bench.noop",
                        1,
                        None,
                        json.dumps(payload),
                        "{}" if pg.LOG_TRANSPORT else "",
                        dt.datetime.now(dt.timezone.utc),
                        source,
                        event_id,
                        None,
                    ],
                )

    variants: dict[str, Callable[[], None]] = {
        "plain": plain,
        "publish": with_publish,
        "naive": naive,
        "floor": floor,
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
        ratio_row(
            "S1.floor",
            f"the floor: one raw INSERT of the same {ROW} through Django's cursor",
            "same without it",
            "p50 latency",
            "ms",
            p50["floor"],
            p50["plain"],
            None,
            higher_is_better=False,
            notes=f"reference: atomic(): create(); then the {ROW} publish() writes, same columns "
            "and values, one raw INSERT through Django's cursor (bound on the client and "
            "planned at each call), no NOTIFY, no validation (#14 measured 1.28-1.38x for the "
            "outbox row); publish() prepares its INSERT, which plans it once per connection",
        ),
        ratio_row(
            "S1.vs-floor",
            "publish() against the floor (the raw INSERT of the same row)",
            "the floor",
            "p50 latency",
            "ms",
            p50["publish"],
            p50["floor"],
            Goal("<=", 1.05),
            higher_is_better=False,
            notes=f"{note}; wake-ups on (publish() sends its NOTIFY); what is above the floor "
            "is the library's own work",
        ),
    ]
