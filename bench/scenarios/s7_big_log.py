"""S7: consuming with a large, already-handled event log (and inbox) against an empty one."""

from __future__ import annotations

import time

from bench import pg
from bench.runner import Context, Goal, Row, alternate, ratio_row

ID = "S7"
TITLE = "consume with a large already-handled log"
BASELINE = "an empty log"
GOAL = Goal(">=", 0.85)
BIG_DB = pg.BENCH_DB + "_biglog"


def build_big(rows: int) -> float:
    """A copy of the bench schema holding ``rows`` handled events (log + inbox rows)."""
    from django.db import connections

    connections.close_all()  # CREATE DATABASE … TEMPLATE needs the template unused
    pg.reset_events()
    started = time.perf_counter()
    pg.recreate_database(BIG_DB, template=pg.BENCH_DB)
    with pg.connect(BIG_DB) as conn:
        conn.execute(
            "INSERT INTO django_events_event (id, position, type, key, version, data, metadata, "  # noqa: S608 - fixed SQL
            "occurred_at, source, correlation_id, causation_id, recorded_at) "
            "SELECT u, g, 'bench.noop', NULL, 1, %s::jsonb, '{}'::jsonb, now(), 'bench', u, "
            "NULL, now() FROM (SELECT g, "
            # A day ago, 256 events a millisecond: older than every event published later.
            f"{pg.uuid7_sql(f'{pg.NOW_MS} - 86400000 + g / 256', 'g')} AS u "
            "FROM generate_series(1, %s) g) s",
            [pg.PAYLOAD_TEXT, rows],
        )
        conn.execute(
            "INSERT INTO django_events_inbox (group_name, event_id, handled_at) "
            "SELECT 'bench', id, now() FROM django_events_event"
        )
        # New outbox positions must not collide with the logged ones.
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('django_events_outbox', 'position'), %s)",
            [rows],
        )
        conn.execute("VACUUM ANALYZE django_events_event")
        conn.execute("VACUUM ANALYZE django_events_inbox")
    return time.perf_counter() - started


def run(ctx: Context) -> list[Row]:
    big = ctx.size(1_000_000, 20_000)
    n = ctx.size(10_000, 2_000)
    built = build_big(big)
    ctx.log(f"    built a {big:,}-event log in {built:.1f}s")

    small_consumers = pg.Consumers(2)
    big_consumers = pg.Consumers(2, dbname=BIG_DB)

    def empty() -> float:
        pg.reset_events()
        before = small_consumers.handled()
        pg.prepublish(n)
        return small_consumers.drain(n, before=before)

    def large() -> float:
        before = big_consumers.handled()
        pg.prepublish(n, dbname=BIG_DB)
        return big_consumers.drain(n, before=before)

    try:
        got = alternate(ctx, {"empty": empty, "large": large})
    finally:
        small_consumers.__exit__()
        big_consumers.__exit__()
        pg.drop_database(BIG_DB)
        pg.reset_events()
    return [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "throughput",
            "events/s",
            got["large"],
            got["empty"],
            GOAL,
            higher_is_better=True,
            notes=f"{big:,} handled events in the log and the inbox; {n:,} events "
            "consumed per repetition by 2 consume_events; the two states live in two "
            "databases (two consumers each, idle while the other state runs) so they "
            "can alternate",
        ),
    ]
