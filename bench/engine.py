"""Which Level 0 engine the benchmark runs, from ``DJANGO_EVENTS_BENCH_TRANSPORT``: ``log``
(the default: the log transport, which a new project names) or ``database`` (the
first-generation database transport). Read by the settings of every process a run starts,
so a worker runs the engine its scenario measures."""

from __future__ import annotations

import os

BACKENDS = {
    "log": "django_events.transports.log.LogTransport",
    "database": "django_events.transports.database.DatabaseTransport",
}
NAME = os.environ.get("DJANGO_EVENTS_BENCH_TRANSPORT") or "log"
if NAME not in BACKENDS:
    raise SystemExit(
        f"DJANGO_EVENTS_BENCH_TRANSPORT={NAME!r}: expected one of {', '.join(BACKENDS)}."
    )
BACKEND = BACKENDS[NAME]
LOG = NAME == "log"
