"""S2: publishing 100 events in one transaction against the raw driver's batch insert."""

from __future__ import annotations

import json
import time
import uuid

from bench import pg
from bench.runner import Context, Goal, Row, alternate, ratio_row

ID = "S2"
TITLE = "publish_many() of 100 events in one transaction"
BASELINE = "raw psycopg executemany of 100 comparable rows"
# The rows publish_many() writes: outbox rows, or log rows on the log transport.
SOURCE_TABLE = "django_events_event" if pg.LOG_TRANSPORT else "django_events_outbox"
GOAL = Goal("<=", 1.5)
EVENTS = 100


def run(ctx: Context) -> list[Row]:
    from django.db import connection, transaction

    from django_events import publish, publish_many

    pg.reset_events()
    raw = pg.connect(autocommit=False)
    raw.execute("DROP TABLE IF EXISTS bench_raw_outbox")
    raw.execute(f"CREATE TABLE bench_raw_outbox (LIKE {SOURCE_TABLE} INCLUDING ALL)")
    raw.commit()
    connection.ensure_connection()
    txs = ctx.size(60, 15)

    if pg.LOG_TRANSPORT:  # the log row: its position from the outbox's sequence, jsonb
        insert = (
            "INSERT INTO bench_raw_outbox (id, position, type, version, key, data, metadata, "
            "occurred_at, source, correlation_id, recorded_at) VALUES (%s, "
            "nextval('django_events_outbox_position_seq'::regclass), %s, %s, %s, %s::jsonb, "
            "%s::jsonb, now(), %s, %s, now())"
        )
    else:
        insert = (
            "INSERT INTO bench_raw_outbox (event_id, type, version, key, data, metadata, "
            "occurred_at, source, correlation_id, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, now(), %s, %s, now())"
        )

    def raw_batch() -> float:
        t = time.perf_counter()
        for _ in range(txs):
            rows = []
            for i in range(EVENTS):
                u = uuid.uuid4()
                rows.append(
                    (
                        u,
                        "bench.noop",
                        1,
                        None,
                        json.dumps({**pg.PAYLOAD, "order_id": i}),
                        "{}" if pg.LOG_TRANSPORT else "",
                        "bench",
                        u,
                    )
                )
            with raw.cursor() as cur:
                cur.executemany(insert, rows)
            raw.commit()
        return (time.perf_counter() - t) / txs * 1e3

    def events_batch() -> float:
        payload = dict(pg.PAYLOAD)
        t = time.perf_counter()
        for _ in range(txs):
            with transaction.atomic():
                for i in range(EVENTS):
                    payload["order_id"] = i
                    publish("bench.noop", payload)
        return (time.perf_counter() - t) / txs * 1e3

    def many_batch() -> float:
        t = time.perf_counter()
        for _ in range(txs):
            with transaction.atomic():
                publish_many([("bench.noop", {**pg.PAYLOAD, "order_id": i}) for i in range(EVENTS)])
        return (time.perf_counter() - t) / txs * 1e3

    try:
        got = alternate(ctx, {"raw": raw_batch, "many": many_batch, "publish": events_batch})
    finally:
        raw.execute("DROP TABLE IF EXISTS bench_raw_outbox")
        raw.commit()
        raw.close()
    return [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "time per transaction",
            "ms",
            got["many"],
            got["raw"],
            GOAL,
            higher_is_better=False,
            notes=f"{txs} transactions of {EVENTS} events per repetition; one prepared row "
            "INSERT, pipelined by executemany",
        ),
        ratio_row(
            f"{ID}.loop",
            "publish() x100 in one transaction",
            BASELINE,
            "time per transaction",
            "ms",
            got["publish"],
            got["raw"],
            None,
            higher_is_better=False,
            notes=f"{txs} transactions of {EVENTS} events per repetition; executemany "
            "is psycopg 3's pipelined batch",
        ),
    ]
