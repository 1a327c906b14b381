"""``bench.batch_memory``'s worker: 1 MB payloads, BATCH_SIZE 100, the budget from the env."""

import os

from bench.settings import *  # noqa: F403
from bench.settings import DJANGO_EVENTS

DJANGO_EVENTS = {
    **DJANGO_EVENTS,
    "BATCH_SIZE": 100,
    "CALL_TIMEOUT": 600,  # a 100 MB claim takes longer than 30 s on a loaded machine
    "MAX_PAYLOAD_BYTES": 2 * 1024 * 1024,
    "BATCH_BYTES": int(os.environ.get("BENCH_BATCH_BYTES", 4 * 1024 * 1024)),
}
