"""One trace from the request that published to every handler, on each transport."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_events import publish
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.models import EventRecord
from django_events.registry import registry
from django_events.testing import deliver
from django_events.transports import transports

from .redis_support import delete_prefix, events_settings, needs_redis, unique_prefix
from .sqs_server import aws_env, moto_endpoint
from .sqs_server import events_settings as sqs_settings
from .sqs_server import unique_prefix as sqs_prefix

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

trace = pytest.importorskip("opentelemetry.trace")
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def on_redis() -> Iterator[None]:
    prefix = unique_prefix()
    with override_settings(DJANGO_EVENTS={**events_settings(prefix), "BACKOFF_BASE": 0}):
        transports.reset()
        yield
        transports.reset()
    delete_prefix(prefix)


def request_publishing(client, data: dict) -> str:
    """POST to a view that publishes, inside a server span as a web framework's
    instrumentation opens one; returns the request span's trace id."""
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /place/", kind=trace.SpanKind.SERVER) as span:
        response = client.post("/place/", json.dumps(data), content_type="application/json")
        assert response.status_code == 200
        return format(span.get_span_context().trace_id, "032x")


def by_name(exporter: Any) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def assert_one_trace(exporter: Any, trace_id: str) -> dict[str, list]:
    named = by_name(exporter)
    (request,) = named["POST /place/"]
    (sent,) = named["send test.happened"]
    assert sent.parent.span_id == request.context.span_id
    assert sent.kind == trace.SpanKind.PRODUCER
    for group in ("alpha", "beta"):
        (processed,) = named[f"process {group}"]
        assert format(processed.context.trace_id, "032x") == trace_id
        assert processed.parent.span_id == sent.context.span_id, "a child of the publish span"
        assert processed.kind == trace.SpanKind.CONSUMER
        attributes = dict(processed.attributes)
        assert attributes["messaging.system"] == "django_events"
        assert attributes["messaging.destination.name"] == group
        assert attributes["messaging.message.id"] == sent.attributes["messaging.message.id"]
        assert attributes["django_events.event.type"] == "test.happened"
        assert attributes["django_events.attempt"] == 1
    assert named["relay"][0].attributes["messaging.batch.message_count"] >= 1
    return named


@pytest.mark.database_transport  # the relay's span
def test_one_trace_from_the_request_to_both_groups_on_the_database(client, spans):
    trace_id = request_publishing(client, {"n": 1})
    deliver()
    assert_one_trace(spans, trace_id)


@needs_redis()
def test_one_trace_from_the_request_to_both_groups_on_redis(client, spans, on_redis):
    trace_id = request_publishing(client, {"n": 1})
    deliver()
    assert_one_trace(spans, trace_id)


def test_one_trace_from_the_request_to_both_groups_on_sns_and_sqs(
    client, spans, settings, moto_endpoint, aws_env
):
    settings.DJANGO_EVENTS = sqs_settings(moto_endpoint, sqs_prefix())
    transports["default"].setup(registry.subscriptions())
    trace_id = request_publishing(client, {"n": 1})
    Worker(["alpha", "beta"]).run(once=True)
    assert_one_trace(spans, trace_id)


@needs_redis()
def test_the_trace_context_travels_as_the_cloudevents_extension(client, spans, on_redis):
    """On the wire: top-level ``traceparent``, not a metadata entry (there is none left)."""
    request_publishing(client, {"n": 1})
    Relay().run_once()
    transport = transports["default"]
    ((_, entries),) = transport.client.xread({transport.stream("alpha"): 0}, count=1)
    body = json.loads(entries[0][1][b"event"])
    (sent,) = by_name(spans)["send test.happened"]
    assert body["traceparent"].startswith(
        f"00-{sent.context.trace_id:032x}-{sent.context.span_id:016x}-"
    )
    assert "metadata" not in body
    (claimed,) = transport.claim(["alpha"], 10, 30)
    assert claimed.event.metadata == {"traceparent": body["traceparent"]}


def test_a_failing_handler_records_the_error_on_its_span(client, spans):
    request_publishing(client, {"n": 1, "fail_group": "beta"})
    deliver()
    named = by_name(spans)
    (sent,) = named["send test.happened"]
    attempts = named["process beta"]
    assert [span.attributes["django_events.attempt"] for span in attempts] == [1, 2, 3, 4, 5]
    for failed in attempts:
        assert failed.parent.span_id == sent.context.span_id, "every attempt, one parent"
        assert failed.status.status_code == trace.StatusCode.ERROR
        assert "beta asked to fail" in failed.status.description
        (exception,) = [e for e in failed.events if e.name == "exception"]
        assert exception.attributes["exception.type"] == "RuntimeError"
    (ok,) = named["process alpha"]
    assert ok.status.status_code == trace.StatusCode.UNSET


def test_without_an_sdk_publish_adds_no_trace_context():
    event = publish("test.happened", {"n": 1})
    assert "traceparent" not in event.metadata


def test_a_traceparent_the_caller_set_is_kept(spans):
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = publish("test.happened", {"n": 1}, metadata={"traceparent": mine})
    assert event.metadata["traceparent"] == mine


def test_without_opentelemetry_installed_every_hook_stands_aside(client, monkeypatch):
    """As an install without the ``otel`` extra: the module's one import guard."""
    from django_events import instrumentation

    monkeypatch.setattr(instrumentation, "otel", None)
    request_id = client.post(
        "/place/", json.dumps({"n": 1, "fail_group": "beta"}), content_type="application/json"
    )
    assert request_id.status_code == 200
    assert deliver() == 1  # alpha handled it; beta's five failures became a dead letter
    assert "traceparent" not in EventRecord.objects.get().metadata


def test_the_publish_and_handler_spans_stop_being_current_when_they_end(spans):
    """Both are made current for their block only (instrumentation._Current): what runs
    after a publish or a handler is back under the span it ran under."""
    with trace.get_tracer("test").start_as_current_span("outer") as outer:
        publish("test.happened", {"n": 1, "fail_group": "beta"})
        assert trace.get_current_span() is outer
        deliver(["alpha", "beta"])  # one handler that returns, one that raises
        assert trace.get_current_span() is outer
    assert set(by_name(spans)) >= {"outer", "send test.happened", "process alpha", "process beta"}


def test_a_tracer_provider_set_after_the_first_publish_is_used(request):
    """tracing_enabled() keeps its answer while the API's provider stays the same
    (instrumentation._tracing_seen): an SDK installed later must still be seen."""
    assert "traceparent" not in publish("test.happened", {"n": 1}).metadata
    spans = request.getfixturevalue("spans")  # the SDK's provider, set now
    event = publish("test.happened", {"n": 2})
    assert event.metadata["traceparent"].startswith("00-")
    assert [span.name for span in spans.get_finished_spans()] == ["send test.happened"]


def test_providers_named_in_the_environment_are_loaded_at_the_first_check():
    """OTEL_PYTHON_*_PROVIDER, set before the process starts: the API loads them when
    first asked, and the checks ask once (instrumentation._ask_tracing)."""
    pytest.importorskip("opentelemetry.sdk")
    script = (
        "from django_events import instrumentation as i\n"
        "print(i.tracing_enabled(), i.metrics_enabled(), i.tracing_enabled())\n"
    )
    env = {
        **os.environ,
        "OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider",
        "OTEL_PYTHON_METER_PROVIDER": "sdk_meter_provider",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True", "True", "True"]
