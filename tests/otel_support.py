"""The real OpenTelemetry SDK with in-memory exporters, installed for one test.

OpenTelemetry's globals are set once per process; the fixtures put them back to "not
configured" afterwards (as opentelemetry-test-utils does), so later tests run with
tracing off, as users without an SDK do. A test using them is skipped where the SDK is
not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def _reset_tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


def _reset_metrics() -> None:
    from opentelemetry import metrics
    from opentelemetry.util._once import Once

    from django_events import instrumentation

    metrics._internal._METER_PROVIDER_SET_ONCE = Once()
    metrics._internal._METER_PROVIDER = None
    instrumentation._instruments.clear()


@pytest.fixture
def spans() -> Iterator[Any]:
    """An ``InMemorySpanExporter`` receiving every span ended during the test."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_tracing()
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    _reset_tracing()


@pytest.fixture
def meter_reader() -> Iterator[Any]:
    """An ``InMemoryMetricReader`` of everything recorded during the test."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _reset_metrics()
    metrics.set_meter_provider(provider)
    yield reader
    provider.shutdown()
    _reset_metrics()
