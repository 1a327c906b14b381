"""Settings of ``python -m bench.dashboard``'s processes: the test app on a database of its
own, the Prometheus endpoint mounted (tests.urls), and, where the script asks for it, the
OpenTelemetry SDK exporting this process's instruments on a port for Prometheus."""

import os

from tests.settings_postgres import *  # noqa: F403
from tests.settings_postgres import DATABASES, DJANGO_EVENTS

DATABASES["default"]["NAME"] = os.environ["DJANGO_EVENTS_BENCH_DB"]
DJANGO_EVENTS = {**DJANGO_EVENTS, "METRICS_TOKEN": os.environ["DASHBOARD_METRICS_TOKEN"]}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "ERROR"}}

if os.environ.get("DASHBOARD_OTEL_PORT"):  # docs/observability.md, "OpenTelemetry counters"
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    start_http_server(int(os.environ["DASHBOARD_OTEL_PORT"]), addr="127.0.0.1")
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
