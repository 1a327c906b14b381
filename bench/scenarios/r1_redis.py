"""R1: Redis Streams transport; joins when the transport lands (one module, this one)."""

from __future__ import annotations

import importlib.util

from bench.runner import Context, Goal, Row, na_row

ID = "R1"
TITLE = "Redis Streams transport, end to end"
BASELINE = "raw redis-py XADD / XREADGROUP / XACK"
GOAL: Goal | None = None
TRANSPORT = "django_events.transports.redis"


def run(ctx: Context) -> list[Row]:
    if importlib.util.find_spec(TRANSPORT) is None:
        return [
            na_row(
                ID,
                TITLE,
                BASELINE,
                GOAL,
                f"not measured: {TRANSPORT} does not exist yet (planned transport)",
            )
        ]
    return [
        na_row(
            ID, TITLE, BASELINE, GOAL, "the transport exists but this scenario is not written yet"
        )
    ]
