"""S3: the relay draining the outbox into a null transport, against the raw drain L_q."""

from __future__ import annotations

from bench import pg
from bench.runner import Context, Goal, Row, alternate, na_row, ratio_row
from bench.scenarios.s0_calibration import drain_rate

ID = "S3"
TITLE = "relay drain to a null transport"
BASELINE = "L_q (raw 2-process SKIP LOCKED drain)"
GOAL = Goal(">=", 0.5)


def run(ctx: Context) -> list[Row]:
    if pg.LOG_TRANSPORT:
        return [
            na_row(
                ID,
                TITLE,
                BASELINE,
                GOAL,
                "the log transport has no relay step: publish() writes the log row itself, "
                "so S1.floor (the raw insert of that row) and S2 measure what replaced it",
            )
        ]
    n = ctx.size(100_000, 10_000)

    def relay(n: int = n) -> float:
        pg.reset_events()
        pg.prepublish(n)
        got = pg.run_child("relay_null", {})
        assert got["moved"] == n, got
        return n / got["seconds"]

    drain_rate(2000), relay(2000)  # warm up, small
    got = alternate(ctx, {"L_q": lambda: drain_rate(n), "relay": relay}, warmup=False)
    pg.reset_events()
    return [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "throughput",
            "events/s",
            got["relay"],
            got["L_q"],
            GOAL,
            higher_is_better=True,
            notes=f"{n:,} rows per repetition; one relay process (it holds a lock: one "
            "relay moves at a time), leased path, RELAY_BATCH_SIZE 1000",
        ),
    ]
