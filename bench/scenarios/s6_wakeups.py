"""S6: 8 concurrent publishers, with publish()'s NOTIFY wake-up on and off."""

from __future__ import annotations

import json

from bench import pg
from bench.runner import Context, Goal, Row, alternate, ratio_row

ID = "S6"
TITLE = "8 concurrent publishers, wake-ups on"
BASELINE = "wake-ups off"
GOAL = Goal(">=", 0.9)
PUBLISHERS = 8


def run(ctx: Context) -> list[Row]:
    count = ctx.size(400, 60)
    procs = [pg.child("publisher", {}) for _ in range(PUBLISHERS)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

        def round_(wakeups: bool) -> float:
            pg.reset_events()
            line = json.dumps({"count": count, "wakeups": wakeups}) + "\n"
            for p in procs:
                p.stdin.write(line)  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            got = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
            total = sum(g["count"] for g in got)
            return total / (max(g["t1"] for g in got) - min(g["t0"] for g in got))

        got = alternate(ctx, {"off": lambda: round_(False), "on": lambda: round_(True)})
        with pg.connect() as conn:
            # What publish() wrote: outbox rows, or log rows on the log transport.
            table = "django_events_event" if pg.LOG_TRANSPORT else "django_events_outbox"
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        assert row and row[0] == count * PUBLISHERS
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
        pg.stop(procs)
        pg.reset_events()
    return [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "throughput",
            "events/s",
            got["on"],
            got["off"],
            GOAL,
            higher_is_better=True,
            notes=f"{PUBLISHERS} processes x {count} transactions of one publish() each; "
            "'off' suppresses the outbox NOTIFY by patching "
            "outbox._notified_in_this_transaction in the publishers (no setting for it)",
        ),
    ]
