"""S10: the embedded default, SQLite, on a temporary file named by BENCH_SQLITE_PATH."""

import os

from bench import engine
from tests.settings_sqlite import *  # noqa: F403
from tests.settings_sqlite import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_SQLITE_PATH", "/tmp/django-events-bench.sqlite3"),  # noqa: S108
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}
DJANGO_EVENTS = {"POLL_INTERVAL": 0.2, "BATCH_SIZE": 100, "RELAY_BATCH_SIZE": 1000}
DJANGO_EVENTS["TRANSPORTS"] = {"default": {"BACKEND": engine.BACKEND}}
