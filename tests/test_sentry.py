"""A handler's exception reaches Sentry tagged with the event it was handling.

The real ``sentry_sdk`` client, with a transport that keeps the envelopes it would have
sent in memory instead of posting them (no network); a real worker on the database
transport runs the failing handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from django_events import handler, publish, sentry
from django_events.conf import get_settings
from django_events.models import DeadLetter
from django_events.registry import registry
from django_events.testing import deliver

sentry_sdk = pytest.importorskip("sentry_sdk")
pytestmark = pytest.mark.django_db(transaction=True)


class MemoryTransport(sentry_sdk.transport.Transport):
    """What the client would send, kept as event dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)


@pytest.fixture
def reported() -> Iterator[list[dict[str, Any]]]:
    transport = MemoryTransport()
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    yield transport.events
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def exception_of(report: dict[str, Any]) -> dict[str, Any]:
    (exception,) = report["exception"]["values"]
    return exception


def test_a_failing_handler_reaches_sentry_with_the_events_fields_as_tags(reported):
    event = publish("test.happened", {"n": 1, "fail_group": "beta"})
    deliver(["beta"])
    assert DeadLetter.objects.count() == 1
    assert [r["tags"]["django_events.attempt"] for r in reported] == ["1", "2", "3", "4", "5"]
    for report in reported:
        assert report["tags"] == {
            "django_events.event_id": str(event.id),
            "django_events.event_type": "test.happened",
            "django_events.group": "beta",
            "django_events.attempt": report["tags"]["django_events.attempt"],
            "django_events.service": get_settings().service,
        }
        exception = exception_of(report)
        assert exception["type"] == "RuntimeError"
        assert exception["value"] == "beta asked to fail: 1"
        mechanism = exception["mechanism"]  # sentry-sdk 3 adds an exception_id
        assert (mechanism["type"], mechanism["handled"]) == ("django_events", False)


def test_in_a_shared_commit_only_the_failing_event_is_reported_with_its_own_tags(reported):
    """Two events claimed together run in one transaction, each in its own scope."""
    failing = publish("test.happened", {"n": 1, "fail_group": "beta"})
    publish("test.happened", {"n": 2})
    assert deliver(["beta"]) == 1
    assert reported, "the failure was reported"
    assert {r["tags"]["django_events.event_id"] for r in reported} == {str(failing.id)}
    assert [exception_of(r)["value"] for r in reported] == ["beta asked to fail: 1"] * 5


def test_a_handler_that_succeeds_reports_nothing_and_leaves_no_tags_behind(reported):
    publish("test.happened", {"n": 1})
    assert deliver(["beta"]) == 1
    sentry_sdk.capture_message("after the worker")
    (after,) = reported
    assert not any(key.startswith("django_events.") for key in after.get("tags", {}))


@pytest.fixture
def reporting_handler() -> Iterator[None]:
    """A handler of ``sentry.checked`` that reports a message itself and succeeds."""
    saved = list(registry)

    @handler("sentry.checked", group="sentry-test")
    def report(event: Any) -> None:
        sentry_sdk.capture_message("seen by the handler")

    yield
    registry.clear()
    for entry in saved:
        registry.add(entry)


def test_what_a_handler_reports_itself_carries_the_events_tags(reported, reporting_handler):
    event = publish("sentry.checked", {"n": 1})
    assert deliver(["sentry-test"]) == 1
    (report,) = reported
    assert report["message"] == "seen by the handler"
    assert report["tags"]["django_events.event_id"] == str(event.id)
    assert report["tags"]["django_events.group"] == "sentry-test"
    assert report["tags"]["django_events.attempt"] == "1"


def test_before_sentry_is_initialised_the_hook_is_the_shared_no_op(monkeypatch):
    assert not sentry.enabled()
    assert sentry.reporting(None) is sentry._NOTHING  # type: ignore[arg-type]
    monkeypatch.setattr(sentry, "sentry_sdk", None)  # as an install without sentry_sdk
    assert sentry.reporting(None) is sentry._NOTHING  # type: ignore[arg-type]
    publish("test.happened", {"n": 1, "fail_group": "beta"})
    deliver(["beta"])
    assert DeadLetter.objects.count() == 1


def test_an_init_without_a_dsn_sends_nothing_so_the_hook_stands_aside():
    sentry_sdk.init(default_integrations=False, auto_enabling_integrations=False)
    try:
        assert sentry_sdk.get_client().is_active()
        assert not sentry.enabled()
    finally:
        sentry_sdk.get_global_scope().set_client(None)
