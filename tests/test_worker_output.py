"""What a worker and the relay say: one line per event at -v 2, a summary that counts every
outcome, loud warnings when events reach nobody, and retries that happen when the log says."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.test import override_settings

from django_events import publish
from django_events.checks import check_runtime
from django_events.engine.relay import Relay
from django_events.engine.wakeup import local_wakeup
from django_events.engine.worker import Worker
from django_events.models import DeadLetter, Delivery, InboxRecord
from django_events.registry import registry

from .conftest import Workers, wait_until
from .testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_handlers() -> Iterator[None]:
    """A project whose events.py was never imported: no handler is registered."""
    saved = list(registry)
    registry.clear()
    yield
    for entry in saved:
        registry.add(entry)


def test_verbosity_2_logs_each_handled_retried_and_dead_lettered_event(workers: Workers):
    event = publish("test.happened", {"n": 1, "fail_group": "beta"})
    result = workers.run(
        "consume_events",
        "--once",
        "-v",
        "2",
        DJANGO_EVENTS_TEST_OVERRIDES=json.dumps({"MAX_ATTEMPTS": 2}),
    )
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert f"Handled test.happened {event.id} for alpha (attempt 1, " in log, log
    assert f"failed on test.happened {event.id} for beta (attempt 1 of 2, " in log, log
    assert f"Dead letter: test.happened {event.id} for group beta after 2 attempts (the last" in log
    assert "stopped: 1 handled, 1 retried, 1 dead-lettered, 0 skipped" in log, log
    assert " ms)" in log, "each line says how long the handler ran"


def test_default_verbosity_shows_no_line_per_handled_event(workers: Workers):
    publish("test.happened", {"n": 1})
    result = workers.run("consume_events", "--once")
    assert result.returncode == 0, result.stderr
    assert "Handled test.happened" not in result.stderr
    assert "stopped: 2 handled" in result.stderr, result.stderr


def test_summary_counts_events_skipped_as_already_handled(caplog: pytest.LogCaptureFixture):
    event = publish("test.happened", {"n": 1})
    Relay().run_once()
    InboxRecord.objects.create(group_name="alpha", event_id=event.id)
    with caplog.at_level(logging.INFO, logger="django_events"):
        assert Worker(["alpha"], relay=False).run(once=True) == 0
    assert "0 handled, 0 retried, 0 dead-lettered, 1 skipped as already handled" in caplog.text
    assert not Effect.objects.exists()


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 3, "BACKOFF_BASE": 0})
def test_a_run_of_only_failed_attempts_does_not_end_with_zero_events(
    caplog: pytest.LogCaptureFixture,
):
    publish("test.happened", {"n": 1, "fail": True})
    with caplog.at_level(logging.INFO, logger="django_events"):
        Worker(["alpha"]).run(once=True)
    assert "0 handled, 2 retried, 1 dead-lettered, 0 skipped" in caplog.text
    assert "after 0 events" not in caplog.text
    assert DeadLetter.objects.filter(group="alpha").count() == 1


def test_a_worker_without_handlers_warns_loudly(
    no_handlers: None, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="django_events"):
        Worker().run(once=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("No event handlers are registered" in r.getMessage() for r in warnings)
    assert "events.py" in caplog.text, "it says where handlers are looked for"


def test_no_handlers_is_system_check_w006_run_by_consume_events(no_handlers: None):
    assert [m.id for m in check_runtime()] == ["django_events.W006"]
    err = io.StringIO()
    call_command("consume_events", "--once", skip_checks=False, stderr=err, verbosity=0)
    assert "django_events.W006" in err.getvalue()


def test_handlers_registered_means_no_w006():
    assert check_runtime() == []


@pytest.mark.database_transport  # the relay's warning; the log transport has none
def test_relay_warns_once_per_type_about_events_no_group_subscribes_to(
    caplog: pytest.LogCaptureFixture,
):
    relay = Relay()
    with caplog.at_level(logging.WARNING, logger="django_events.relay"):
        publish("test.orphaned", {"n": 1})
        publish("test.happened", {"n": 1})
        relay.run_once()
        publish("test.orphaned", {"n": 2})
        relay.run_once()
        publish("test.abandoned", {"n": 3})
        relay.run_once()
    warned = [r.getMessage() for r in caplog.records if "no group subscribes" in r.getMessage()]
    assert len(warned) == 2, warned
    assert "test.orphaned" in warned[0]
    assert "test.abandoned" in warned[1]
    assert not any("test.happened" in line for line in warned)


@override_settings(DJANGO_EVENTS={"POLL_INTERVAL": 60, "BACKOFF_BASE": 0.2, "MAX_ATTEMPTS": 3})
def test_a_retry_happens_when_the_log_says_not_a_poll_later(tmp_path: Path):
    """The worker polls every 60 s here: the retry, due in at most 0.2 s, must not wait for
    the poll (the database transport's due time wakes nobody)."""
    worker = Worker(["alpha"])

    def run() -> None:
        try:
            worker.run()
        finally:
            connections.close_all()  # this thread's own; the test database must drop

    thread = threading.Thread(target=run)
    publish("test.happened", {"n": 1, "fail_once": str(tmp_path / "failed")})
    thread.start()
    try:
        wait_until(Effect.objects.exists, timeout=20, what="the retry, due in 0.2 s")
    finally:
        worker.stop()
        with transaction.atomic():  # wakes the waiting worker (NOTIFY on PostgreSQL)
            publish("test.happened", {"n": 2})
        local_wakeup.set()  # and on SQLite, where a worker in this process waits on this
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert worker.retried == 1
    assert (tmp_path / "failed").exists(), "the first attempt failed"


@override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0.2, "MAX_ATTEMPTS": 3})
def test_consume_events_once_waits_for_a_retry_due_within_its_bound(tmp_path: Path):
    publish("test.happened", {"n": 1, "fail_once": str(tmp_path / "failed")})
    call_command("consume_events", "--once", "--group", "alpha", verbosity=0)
    assert Effect.objects.filter(group="alpha").count() == 1, "the retry ran before exiting"
    assert not Delivery.objects.filter(group_name="alpha").exists()


@override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 600, "MAX_ATTEMPTS": 3})
def test_consume_events_once_leaves_a_retry_due_later_than_its_bound(tmp_path: Path):
    publish("test.happened", {"n": 1, "fail_once": str(tmp_path / "failed")})
    call_command("consume_events", "--once", "--group", "alpha", verbosity=0)
    assert not Effect.objects.exists()
    assert Delivery.objects.get(group_name="alpha").attempts == 1
