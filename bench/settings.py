"""Benchmark settings: the test settings on a database of their own."""

import os

from bench import engine, otel
from tests.settings_postgres import *  # noqa: F403
from tests.settings_postgres import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
DATABASES["default"]["NAME"] = os.environ.get("DJANGO_EVENTS_BENCH_DB", "django_events_bench")
DJANGO_EVENTS = {"POLL_INTERVAL": 0.2, "BATCH_SIZE": 100, "RELAY_BATCH_SIZE": 1000}
if os.environ.get("DJANGO_EVENTS_BENCH_CHARTS") == "off":  # no chart counts or lag samples
    DJANGO_EVENTS["CHART_RETENTION"] = 0
if os.environ.get("DJANGO_EVENTS_BENCH_PREPARED") == "off":  # A/B of prepared statements
    DJANGO_EVENTS["PREPARED_STATEMENTS"] = False
DJANGO_EVENTS["TRANSPORTS"] = {  # the Level 0 engine measured (bench/engine.py)
    "default": {
        "BACKEND": engine.BACKEND,
        "OPTIONS": {"rotate": os.environ.get("DJANGO_EVENTS_BENCH_ROTATE") == "on"}
        if engine.LOG
        else {},
    }
}
if os.environ.get("DJANGO_EVENTS_BENCH_REDIS_PREFIX"):  # R1's worker: the Redis transport
    DJANGO_EVENTS["TRANSPORTS"] = {
        "default": {
            "BACKEND": "django_events.transports.redis.RedisStreamsTransport",
            "OPTIONS": {
                "url": os.environ["DJANGO_EVENTS_BENCH_REDIS_URL"],
                "prefix": os.environ["DJANGO_EVENTS_BENCH_REDIS_PREFIX"],
            },
        }
    }
if os.environ.get("DJANGO_EVENTS_BENCH_RABBITMQ_PREFIX"):  # RQ1's worker: RabbitMQ
    DJANGO_EVENTS["TRANSPORTS"] = {
        "default": {
            "BACKEND": "django_events.transports.rabbitmq.RabbitMQTransport",
            "OPTIONS": {
                "url": os.environ["DJANGO_EVENTS_BENCH_RABBITMQ_URL"],
                "prefix": os.environ["DJANGO_EVENTS_BENCH_RABBITMQ_PREFIX"],
            },
        }
    }
if os.environ.get("DJANGO_EVENTS_BENCH_SIGNING"):  # R1 with signatures on (docs/services.md)
    DJANGO_EVENTS["SIGNING_KEYS"] = {"bench": "bench-secret-" + "x" * 32}
if os.environ.get("DJANGO_EVENTS_BENCH_OTEL") == "absent":  # O1's workers (bench/otel.py)
    otel.block_import()
elif os.environ.get("DJANGO_EVENTS_BENCH_OTEL") == "on":
    otel.install_sdk()
