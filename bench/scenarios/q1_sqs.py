"""Q1: SNS/SQS transport; joins when the transport lands (one module, this one)."""

from __future__ import annotations

import importlib.util

from bench.runner import Context, Goal, Row, na_row

ID = "Q1"
TITLE = "SNS + SQS transport, end to end"
BASELINE = "raw boto3 PublishBatch / ReceiveMessage / DeleteMessageBatch"
GOAL: Goal | None = None
TRANSPORT = "django_events.transports.sqs"


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
