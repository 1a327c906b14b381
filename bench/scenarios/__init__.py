"""One module per scenario. Each exposes ``ID``, ``TITLE``, ``BASELINE``, ``GOAL`` (or None)
and ``run(ctx) -> list[Row]``; adding a row (R1, Q1, ...) is one new module listed here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = [
    "s0_calibration",
    "s1_publish",
    "s2_batch",
    "s3_relay",
    "s4_end_to_end",
    "s5_latency",
    "s6_wakeups",
    "s7_big_log",
    "s8_snapshot",
    "w1_wal",
    "b1_bloat",
    "h1_held_snapshot",
    "s10_sqlite",
    "m1_memory",
    "r1_redis",
    "q1_sqs",
    "rq1_rabbitmq",
    "admin_changelist",
    "o1_otel",
]


def load() -> list[ModuleType]:
    return [importlib.import_module(f"bench.scenarios.{name}") for name in MODULES]
