"""OpenTelemetry in the three states O1 compares: absent, installed without an SDK, on.

"absent" is an install without the ``otel`` extra; "off" has the API but no tracer or
meter provider set (what most installs that pull the API in as a dependency look like);
"on" is the SDK as docs/observability.md tells users to set it up, a batch span processor
and a periodic metric reader (at the SDK's default interval), exporting nowhere, so what
is measured is the library's hooks and the SDK's bookkeeping, not a collector.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

MODES = ("absent", "off", "on")
_sdk: list[Any] = []  # (tracer provider, meter provider), built once per process


def block_import() -> None:
    """Make ``import opentelemetry`` fail in this process, as if it were not installed
    (before django_events is imported: its one import guard then sets ``otel = None``)."""
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]


def set_mode(mode: str) -> None:
    """Switch this process to ``mode`` (between measurements; django_events imported)."""
    from django_events import instrumentation

    if mode not in MODES:
        raise ValueError(f"unknown OpenTelemetry mode {mode!r}; one of {', '.join(MODES)}")
    if mode == "absent":
        instrumentation.otel = None  # type: ignore[assignment]
        return
    from opentelemetry import trace

    instrumentation.otel = trace
    _unset()
    instrumentation._instruments.clear()
    if mode == "on":
        install_sdk()


def install_sdk() -> None:
    """Set the SDK's tracer and meter providers, exporting nowhere."""
    from opentelemetry import metrics, trace

    if not _sdk:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            MetricExporter,
            MetricExportResult,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Nowhere(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        class NoMetrics(MetricExporter):
            def export(self, metrics_data: Any, **kwargs: Any) -> MetricExportResult:
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 10_000) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
                pass

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(Nowhere()))
        reader = PeriodicExportingMetricReader(NoMetrics())
        _sdk.extend([tracer_provider, MeterProvider(metric_readers=[reader])])
    _unset()
    trace.set_tracer_provider(_sdk[0])
    metrics.set_meter_provider(_sdk[1])


def _unset() -> None:
    """Back to "no provider set": the API's globals are set-once, so reset them as
    opentelemetry-test-utils does."""
    from opentelemetry import metrics, trace
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics._internal._METER_PROVIDER_SET_ONCE = Once()
    metrics._internal._METER_PROVIDER = None
