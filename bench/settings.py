"""Benchmark settings: the test settings on a database of their own."""

import os

from tests.settings_postgres import *  # noqa: F403
from tests.settings_postgres import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
DATABASES["default"]["NAME"] = os.environ.get("DJANGO_EVENTS_BENCH_DB", "django_events_bench")
DJANGO_EVENTS = {"POLL_INTERVAL": 0.2, "BATCH_SIZE": 100, "RELAY_BATCH_SIZE": 1000}
