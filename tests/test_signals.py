"""Signals for metrics: ``event_published``, ``event_handled`` and ``event_dead_lettered``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import transaction
from django.dispatch import Signal
from django.test import override_settings

from django_events import publish
from django_events.engine.worker import Worker
from django_events.models import DeadLetter, Delivery, EventRecord
from django_events.outbox import publish as publish_function
from django_events.registry import Handler
from django_events.signals import event_dead_lettered, event_handled, event_published
from django_events.testing import deliver
from tests.testapp import events as test_handlers

pytestmark = pytest.mark.django_db

Received = list[dict[str, Any]]


@pytest.fixture
def listen() -> Iterator[Callable[[Signal], Received]]:
    """``listen(signal)`` connects a receiver for the test; returns the kwargs it gets."""
    connected: list[tuple[Signal, Callable[..., None]]] = []

    def connect(signal: Signal) -> Received:
        calls: Received = []

        def receiver(**kwargs: Any) -> None:
            kwargs.pop("signal")
            calls.append(kwargs)

        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))
        return calls

    yield connect
    for signal, receiver in connected:
        signal.disconnect(receiver)


def deliver_until_done() -> None:
    """``deliver()`` until nothing is handled and nothing is left to retry."""
    for _ in range(10):
        if deliver() == 0 and not Delivery.objects.exists():
            return
    raise AssertionError("events still pending after 10 deliver() calls")


# --- event_published ------------------------------------------------------------------------


def test_event_published_is_sent_with_the_envelope_and_database(listen: Any) -> None:
    published = listen(event_published)
    event = publish("test.happened", {"n": 1}, key="k")

    assert len(published) == 1
    assert published[0]["sender"] is publish_function
    assert published[0]["event"] is event
    assert published[0]["using"] == "default"


def test_event_published_is_sent_inside_the_transaction_even_if_it_rolls_back(
    listen: Any,
) -> None:
    published = listen(event_published)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        publish("test.happened", {"n": 1})
        assert len(published) == 1  # sent before the transaction ends
        1 / 0  # noqa: B018
    assert [call["event"].data for call in published] == [{"n": 1}]


def test_event_published_is_not_sent_for_a_refused_event(listen: Any) -> None:
    published = listen(event_published)
    with pytest.raises(ValueError):
        publish("test.happened", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        publish("Not.Valid", {})
    assert published == []


# --- event_handled --------------------------------------------------------------------------


def test_event_handled_is_sent_per_group_with_handler_attempt_and_duration(
    listen: Any,
) -> None:
    handled = listen(event_handled)
    event = publish("test.happened", {"n": 1})
    deliver()

    by_group = {call["group"]: call for call in handled}
    assert sorted(by_group) == ["alpha", "beta"]
    assert len(handled) == 2
    for group, func in (("alpha", test_handlers.alpha), ("beta", test_handlers.beta)):
        call = by_group[group]
        assert call["sender"] is Worker
        assert call["event"].id == event.id
        assert call["event"].data == {"n": 1}
        assert isinstance(call["handler"], Handler)
        assert call["handler"].func is func
        assert call["handler"].group == group
        assert call["attempt"] == 1
        assert isinstance(call["duration"], float)
        assert 0 <= call["duration"] < 30


def test_event_handled_duration_measures_the_handler(listen: Any) -> None:
    handled = listen(event_handled)
    publish("test.happened", {"n": 1, "sleep": 0.2})
    deliver(["alpha"])
    assert [call["group"] for call in handled] == ["alpha"]
    assert handled[0]["duration"] >= 0.2


def test_event_handled_reports_the_attempt_that_succeeded(listen: Any) -> None:
    handled = listen(event_handled)
    with override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 60}):
        publish("test.happened", {"n": 1, "fail": True})
        deliver(["alpha"])  # attempt 1 fails, retry due in a minute
    assert handled == []
    # The cause is gone; make the retry due now and let it succeed.
    EventRecord.objects.update(data={"n": 1})
    Delivery.objects.update(available_at=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
    deliver(["alpha"])
    assert [(call["group"], call["attempt"]) for call in handled] == [("alpha", 2)]


def test_event_handled_is_not_sent_for_failed_attempts(listen: Any) -> None:
    handled = listen(event_handled)
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 0}):
        publish("test.happened", {"n": 1, "fail": True})
        deliver_until_done()
    assert handled == []


# --- event_dead_lettered --------------------------------------------------------------------


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 0})
def test_event_dead_lettered_is_sent_with_the_stored_dead_letter(listen: Any) -> None:
    dead = listen(event_dead_lettered)
    event = publish("test.happened", {"n": 5, "fail": True})
    deliver_until_done()

    assert len(dead) == 2
    by_group = {call["dead_letter"].group: call["dead_letter"] for call in dead}
    assert sorted(by_group) == ["alpha", "beta"]
    for group, letter in by_group.items():
        assert isinstance(letter, DeadLetter)
        assert letter.pk is not None
        assert letter.event_id == event.id
        assert letter.attempts == 2
        assert letter.handler == f"tests.testapp.events.{group}"
        assert letter.error_class == "RuntimeError"
        assert letter.error_message == "asked to fail: 5"
        assert "RuntimeError: asked to fail: 5" in letter.traceback
        assert letter.state == DeadLetter.State.OPEN
        stored = DeadLetter.objects.get(pk=letter.pk)  # what was sent is what was stored
        assert (stored.group, stored.attempts, stored.event_id) == (group, 2, event.id)
    assert all(call["sender"] is Worker for call in dead)
    assert DeadLetter.objects.count() == 2
    assert set(DeadLetter.objects.values_list("attempts", flat=True)) == {2}


def test_event_dead_lettered_is_not_sent_before_the_last_attempt(listen: Any) -> None:
    dead = listen(event_dead_lettered)
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 60}):
        publish("test.happened", {"n": 1, "fail": True})
        deliver()  # first attempt fails; the retry is not due
    assert dead == []
    assert not DeadLetter.objects.exists()


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1, "BACKOFF_BASE": 0})
def test_event_dead_lettered_carries_real_timestamps(listen: Any) -> None:
    dead = listen(event_dead_lettered)
    publish("test.happened", {"n": 1, "fail": True})
    deliver_until_done()

    assert len(dead) == 2
    for call in dead:
        letter = call["dead_letter"]
        assert isinstance(letter.first_failed_at, dt.datetime)
        assert isinstance(letter.last_failed_at, dt.datetime)
        assert letter.first_failed_at <= letter.last_failed_at


# --- receivers that fail --------------------------------------------------------------------


def test_failing_worker_signal_receivers_do_not_stop_delivery(
    listen: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("metrics backend is down")

    handled = listen(event_handled)
    event_handled.connect(broken, weak=False)
    event_dead_lettered.connect(broken, weak=False)
    try:
        with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1, "BACKOFF_BASE": 0}):
            ok = publish("test.happened", {"n": 1})
            publish("test.happened", {"n": 2, "fail": True})
            assert deliver() == 2
    finally:
        event_handled.disconnect(broken)
        event_dead_lettered.disconnect(broken)

    assert sorted(call["group"] for call in handled) == ["alpha", "beta"]
    assert all(call["event"].id == ok.id for call in handled)
    assert DeadLetter.objects.count() == 2
    assert not Delivery.objects.exists()
    failures = [r for r in caplog.records if "Signal receiver" in r.getMessage()]
    assert len(failures) == 4  # two handled, two dead-lettered; each logged
