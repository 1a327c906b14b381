"""Nothing crashes a worker: whatever goes wrong around one event, the worker records the
event's real reason and moves on; a background thread that dies stops it loudly."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_events import publish
from django_events.engine.worker import Heartbeat, Worker
from django_events.exceptions import BackgroundThreadDied
from django_events.models import DeadLetter, Delivery
from django_events.testing import deliver

from .testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)


def with_transport(backend: str, **extra: Any) -> override_settings:
    return override_settings(
        DJANGO_EVENTS={
            "TRANSPORTS": {"default": {"BACKEND": f"tests.fake_transports.{backend}"}},
            "BACKOFF_BASE": 0,
            **extra,
        }
    )


def alpha_effects() -> list[int | None]:
    return sorted(Effect.objects.filter(group="alpha").values_list("n", flat=True))


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 0})
def test_an_unstorable_error_message_ends_as_a_dead_letter_with_its_real_class():
    for n in range(3):
        publish("test.happened", {"n": n, "unstorable_error": n == 1})
    deliver(["alpha"])
    assert alpha_effects() == [0, 2]
    dead = DeadLetter.objects.get()
    assert (dead.error_class, dead.attempts) == ("ValueError", 2)
    assert dead.error_message == "cannot store \\ud800 or \\x00 as they are"
    assert "\\ud800" in dead.traceback and "\x00" not in dead.traceback


@with_transport("RetryBookkeepingFails")
def test_a_retry_that_cannot_be_recorded_is_kept_as_a_dead_letter_with_the_real_reason():
    for n in range(3):
        publish("test.happened", {"n": n, "fail": n == 1})
    deliver(["alpha"])
    assert alpha_effects() == [0, 2]
    dead = DeadLetter.objects.get()
    assert (dead.error_class, dead.attempts) == ("RuntimeError", 1)
    assert dead.error_message == "asked to fail: 1"
    assert "The retry could not be recorded: RuntimeError: the retry bookkeeping broke" in (
        dead.traceback
    )


@with_transport("DeleteAfterCommitFails", MAX_ATTEMPTS=1)
def test_a_broker_error_after_a_dead_letter_commits_does_not_stop_the_worker(caplog):
    for n in range(4):
        publish("test.happened", {"n": n, "fail": n in (1, 2)})
    deliver(["alpha"])
    assert alpha_effects() == [0, 3]
    assert sorted(DeadLetter.objects.values_list("error_message", flat=True)) == [
        "asked to fail: 1",
        "asked to fail: 2",
    ]
    assert not Delivery.objects.filter(group_name="alpha").exists()
    assert "Could not finish dead-lettering" in caplog.text
    assert "the broker is out of reach" in caplog.text


def _dies(self: Heartbeat) -> None:
    raise RuntimeError("the heartbeat thread died")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_heartbeat_thread_stops_the_worker_loudly(monkeypatch, caplog):
    monkeypatch.setattr(Heartbeat, "run", _dies)
    worker = Worker(["alpha"], relay=False, poll_interval=0.05)
    # Without the check the worker would run on for good; this ends the test either way.
    guard = threading.Timer(20, worker.stop)
    guard.start()
    try:
        with pytest.raises(BackgroundThreadDied, match="django-events-heartbeat"):
            worker.run()
    finally:
        guard.cancel()
    assert "its django-events-heartbeat thread died" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_consume_events_exits_non_zero_when_a_background_thread_dies(monkeypatch):
    monkeypatch.setattr(Heartbeat, "run", _dies)
    # Without the check it would run on for good: SIGTERM stops it, and the test fails.
    stop = threading.Timer(20, os.kill, [os.getpid(), signal.SIGTERM])
    stop.start()
    try:
        with pytest.raises(CommandError, match="heartbeat thread died"):
            call_command("consume_events", "--group", "alpha", "--no-relay")
    finally:
        stop.cancel()


def test_consume_events_started_while_the_database_is_away_waits_for_it(tmp_path):
    """A worker started during a database restart (F6 caught one) does not die declaring
    its subscriptions: it says so and its loop waits for the database as for any outage."""
    import subprocess
    import sys
    import time

    log = tmp_path / "worker.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_postgres", "PGPORT": "1"}
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "django", "consume_events"], stdout=out, stderr=out, env=env
        )
        try:
            deadline = time.monotonic() + 60
            while "Database error; retrying" not in log.read_text():
                assert worker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert worker.poll() is None, "the worker waits for the database"
            assert "Subscriptions not declared now" in log.read_text()
        finally:
            worker.terminate()
            worker.wait(timeout=30)
