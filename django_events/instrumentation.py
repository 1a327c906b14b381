"""What django_events reports to OpenTelemetry: spans, counters and histograms.

The publisher, the relay and the worker call the hooks here and nothing else, so the
engine reads without telemetry noise. OpenTelemetry is optional (the ``otel`` extra):
without it every hook returns at its first line; installed but with no SDK configured,
publish adds no trace context and spans are the API's non-recording ones
(docs/observability.md, "Tracing").

The trace context travels in the event's metadata under the W3C names ``traceparent``
and ``tracestate``; on the wire they are the CloudEvents distributed-tracing extension
attributes (``envelope.split_trace``). A handler's span is a child of the publish span:
one event is handled once per group per attempt, so one parent is the truth, and the
trace reads from the request that published to every handler it caused.

Per event, the SDK's own work is the cost (docs/observability.md, "What it costs"), so the
hooks add as little as they can to it: counters are plain integers summed here and read
by the SDK through asynchronous counters when its reader collects (one callback per
collection instead of an SDK measurement per event), and the publish and handler spans are
started and made current without the generator layers of ``start_as_current_span``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from .envelope import TRACE_KEYS, Event

if TYPE_CHECKING:
    from .transports.base import Claimed

try:  # the one import guard: everything below checks ``otel``
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.trace.status import Status, StatusCode
except ImportError:  # pragma: no cover - exercised by the install without the extra
    otel = None  # type: ignore[assignment]
else:
    _W3C = TraceContextTextMapPropagator()  # the wire's format, whatever the global one is
    try:  # what get_meter_provider() returns before an SDK is set: private to the API
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - a later API: record into its proxy instead
        _UNCONFIGURED_METERS: tuple[type, ...] = (otel_metrics.NoOpMeterProvider,)
        _METER_PROXIES: tuple[type, ...] = ()
    else:
        _UNCONFIGURED_METERS = (_ProxyMeterProvider, otel_metrics.NoOpMeterProvider)
        _METER_PROXIES = (_ProxyMeterProvider,)

SYSTEM = "django_events"
MAX_TRACESTATE = 512  # W3C: a vendor may drop tracestate rather than carry more
_instruments: dict[str, Any] = {}
_tracer_of: list[Any] = [None, None]  # (provider, its tracer)
_NOTHING = nullcontext()


# The answers of metrics_enabled()/tracing_enabled(), with the API's provider global they
# were read from. While no provider is set, get_*_provider() looks OTEL_PYTHON_*_PROVIDER up
# in os.environ on every call (about 0.7 µs each, paid per publish: docs/performance.md,
# "OpenTelemetry (O1)"); the answer can only change when set_*_provider() replaces that
# global, so the API is asked again only then. An API without these globals is asked
# every time. OTEL_PYTHON_*_PROVIDER set after the first check, with no provider set in
# between, is seen once something else asks the API (docs/observability.md, "What it costs").
_UNSEEN = object()
_metrics_seen: tuple[Any, bool] = (_UNSEEN, False)
_tracing_seen: tuple[Any, bool] = (_UNSEEN, False)
_FAST = otel is not None and (
    hasattr(otel, "_TRACER_PROVIDER") and hasattr(otel_metrics._internal, "_METER_PROVIDER")
)


def metrics_enabled() -> bool:
    """True when an OpenTelemetry SDK meter provider is installed."""
    if otel is None:
        return False
    seen = _metrics_seen
    if _FAST and otel_metrics._internal._METER_PROVIDER is seen[0]:
        return seen[1]
    return _ask_metrics()


def _ask_metrics() -> bool:
    """Ask the API; the answer is kept with the global it came from (see _ask_tracing)."""
    global _metrics_seen
    provider = otel_metrics.get_meter_provider()
    enabled = not isinstance(provider, _UNCONFIGURED_METERS)
    _metrics_seen = (None if isinstance(provider, _METER_PROXIES) else provider, enabled)
    return enabled


def tracing_enabled() -> bool:
    """True when an OpenTelemetry SDK (any real tracer provider) is installed."""
    if otel is None:
        return False
    seen = _tracing_seen
    if _FAST and otel._TRACER_PROVIDER is seen[0]:
        return seen[1]
    return _ask_tracing()


def _ask_tracing() -> bool:
    """Ask the API. The answer is kept with the global it came from, not the global read
    afterwards: the API returns its proxy while the global is None, the global itself once
    set (OTEL_PYTHON_TRACER_PROVIDER is loaded by the asking), so a provider another thread
    sets meanwhile changes the global from what is kept, and is asked about next time."""
    global _tracing_seen
    provider = otel.get_tracer_provider()
    enabled = not isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))
    _tracing_seen = (None if isinstance(provider, ProxyTracerProvider) else provider, enabled)
    return enabled


def _tracer() -> Any:
    """This package's tracer, kept while the provider stays (the SDK builds a new one per
    ``get_tracer`` call, which costs more than the span)."""
    provider = otel.get_tracer_provider()
    if _tracer_of[0] is not provider:
        _tracer_of[:] = [provider, provider.get_tracer("django_events")]
    return _tracer_of[1]


# --- publish --------------------------------------------------------------------------------


class _Current:
    """A span made current for a ``with`` block and ended after it, an exception recorded
    on it: what ``start_as_current_span`` does, without its two generator-based context
    managers (docs/observability.md, "What it costs")."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        self.token = otel_context.attach(otel.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        otel_context.detach(self.token)
        span = self.span
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("error.type", type(exc).__qualname__)
        span.end()


def publishing() -> AbstractContextManager[Any]:
    """The producer span around one ``publish_many``, when tracing is on."""
    return _Current(
        _tracer().start_span(
            "send",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
            },
        )
    )


def trace_context(span: Any, metadata: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context of ``span`` to add to an event's metadata: nothing when the
    caller set its own ``traceparent`` or the span is not recorded."""
    if span is None or "traceparent" in metadata:
        return {}
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=otel.set_span_in_context(span))
    if len(carrier.get("tracestate", "")) > MAX_TRACESTATE:
        carrier.pop("tracestate")
    return {key: carrier[key] for key in TRACE_KEYS if carrier.get(key)}


def published_span(span: Any, events: Sequence[Event]) -> None:
    """Name the publish span after what it sent."""
    if not events:
        return
    types = sorted({event.type for event in events})
    span.update_name(f"send {types[0]}" if len(types) == 1 else "send")
    span.set_attribute("messaging.destination.name", ",".join(types))
    span.set_attribute("messaging.batch.message_count", len(events))
    if len(events) == 1:
        span.set_attribute("messaging.message.id", str(events[0].id))


def published(events: Sequence[Event]) -> None:
    """Count events as they are written (the transaction may still roll back)."""
    if not metrics_enabled():
        return
    counter = _counter("django_events.published", "Events published")
    for event in events:
        counter.add((event.type,))


# --- relay ----------------------------------------------------------------------------------


def relayed(using: str, count: int, started_ns: int) -> None:
    """One span and one count per batch that moved events (empty polls record nothing)."""
    if otel is None or not count:
        return
    if metrics_enabled():
        _counter("django_events.relayed", "Events relayed", ("database",)).add((using,), count)
    if not tracing_enabled():
        return
    span = _tracer().start_span(
        "relay",
        kind=SpanKind.INTERNAL,
        start_time=started_ns,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.batch.message_count": count,
            "db.namespace": using,
        },
    )
    span.end()


# --- handlers -------------------------------------------------------------------------------


def consuming(claimed: Claimed, event: Event) -> AbstractContextManager[None]:
    """The consumer span of one handler run, a child of the publish span; an exception
    is recorded on it and goes on to the worker."""
    return _consuming(claimed, event) if tracing_enabled() else _NOTHING


def _consuming(claimed: Claimed, event: Event) -> _Current:
    parent = None
    if "traceparent" in event.metadata:
        parent = _W3C.extract(
            {key: event.metadata[key] for key in TRACE_KEYS if key in event.metadata}
        )
    return _Current(
        _tracer().start_span(
            f"process {claimed.group}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": claimed.group,
                "messaging.consumer.group.name": claimed.group,
                "messaging.message.id": str(event.id),
                "messaging.message.conversation_id": str(event.correlation_id or event.id),
                "django_events.event.type": event.type,
                "django_events.attempt": claimed.attempt,
            },
        )
    )


def handled(claimed: Claimed, event: Event, duration: float) -> None:
    if not metrics_enabled():
        return
    labels = {"group": claimed.group, "type": event.type}
    _counter("django_events.handled", "Events handled", _GROUP_TYPE).add(
        (claimed.group, event.type)
    )
    _histogram("django_events.handler.duration", "Handler run time").record(duration, labels)
    latency = time.time() - event.occurred_at.timestamp()
    _histogram("django_events.delivery.latency", "From publish to handled").record(
        max(latency, 0.0), labels
    )


def failed(claimed: Claimed) -> None:
    """A handler run that raised (whatever comes of it: a retry or a dead letter)."""
    _count("django_events.failed", "Handler runs that raised", claimed)


def retried(claimed: Claimed) -> None:
    _count("django_events.retried", "Events scheduled for another attempt", claimed)


def dead_lettered(claimed: Claimed) -> None:
    _count("django_events.dead_lettered", "Events that became dead letters", claimed)


def _count(name: str, description: str, claimed: Claimed) -> None:
    if not metrics_enabled():
        return
    _counter(name, description, _GROUP_TYPE).add((claimed.group, claimed.event_type))


class _Totals:
    """A monotonic counter summed in plain integers, per tuple of attribute values, and
    reported by an asynchronous counter of the same name at each collection."""

    def __init__(self, name: str, description: str, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.totals: dict[tuple[str, ...], int] = {}
        self.lock = threading.Lock()  # publish() may run in several threads
        otel_metrics.get_meter("django_events").create_observable_counter(
            name, callbacks=[self.observe], unit="{event}", description=description
        )

    def add(self, values: tuple[str, ...], amount: int = 1) -> None:
        with self.lock:
            self.totals[values] = self.totals.get(values, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        with self.lock:
            totals = list(self.totals.items())
        for values, total in totals:
            yield Observation(total, dict(zip(self.keys, values, strict=True)))


_GROUP_TYPE = ("group", "type")
SECONDS_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
"""Bucket bounds of the two histograms: the SDK's default ones (0, 5, 10, 25 ... 10000) are
made for milliseconds and would put every handler run in the first bucket."""


def _counter(name: str, description: str, keys: tuple[str, ...] = ("type",)) -> _Totals:
    found = _instruments.get(name)
    if found is None:
        found = _instruments[name] = _Totals(name, description, keys)
    return found


def _histogram(name: str, description: str) -> Any:
    """One histogram per name, created on first use from the global meter (a proxy until
    an SDK meter provider is set, then the real one)."""
    found = _instruments.get(name)
    if found is None:
        meter = otel_metrics.get_meter("django_events")
        found = _instruments[name] = meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
    return found
