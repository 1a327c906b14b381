"""Worker processes on the Redis transport: SIGKILL mid-handler, and what it costs."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from django_events import publish
from django_events.models import Attempt, DeadLetter
from django_events.transports import transports

from .conftest import Workers, wait_until
from .redis_support import delete_prefix, events_settings, needs_redis, unique_prefix
from .testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), needs_redis()]
LEASE = 2


@pytest.fixture
def redis_env() -> Iterator[dict[str, str]]:
    """This test's Redis settings, for this process and as worker environment."""
    prefix = unique_prefix()
    settings = {**events_settings(prefix), "LEASE": LEASE, "BACKOFF_BASE": 0}
    with override_settings(DJANGO_EVENTS=settings):
        transports.reset()
        yield {
            "DJANGO_EVENTS_TEST_OVERRIDES": json.dumps(settings),
            "DJANGO_EVENTS_TEST_SILENCED": json.dumps(["django_events.E008"]),
        }
        transports.reset()
    delete_prefix(prefix)


def test_a_consumer_killed_mid_handler_is_taken_over_after_the_lease(
    workers: Workers, redis_env: dict[str, str], tmp_path: Path
):
    trace = tmp_path / "trace"
    publish("test.happened", {"n": 1, "sleep": 3, "trace": str(trace)})
    first = workers.start("--group", "alpha", **redis_env)
    wait_until(trace.exists, timeout=30, what="the first worker is in the handler")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = workers.start("--group", "alpha", "--no-relay", **redis_env)
    wait_until(lambda: Effect.objects.filter(group="alpha").exists(), timeout=30, what="taken over")
    effect = Effect.objects.get(group="alpha")
    assert effect.pid == second.pid
    assert trace.read_text().splitlines() == ["alpha:1", "alpha:1"], "run twice, effect once"
    assert not DeadLetter.objects.exists()


def test_a_handler_that_kills_its_process_runs_out_of_attempts(
    workers: Workers, redis_env: dict[str, str]
):
    """Attempts are counted at claim: a crash is an attempt, so this does not loop."""
    publish("test.limited", {"n": 1, "crash": True})
    crashes = 0
    for _ in range(3):  # max_attempts=2: two crashes, then the third claim dead-letters it
        proc = workers.start("--group", "limited", **redis_env)
        wait_until(
            lambda proc=proc: proc.poll() is not None or DeadLetter.objects.exists(),
            timeout=30,
            what="a crash or a dead letter",
        )
        if DeadLetter.objects.exists():
            break
        crashes += 1
    assert crashes == 2
    dead = DeadLetter.objects.get()
    assert (dead.group, dead.attempts, dead.error_class) == ("limited", 2, "LeaseExpired")
    assert not Effect.objects.exists()
    # The lost attempt (the second) is what the timeline shows; a crash leaves no row.
    assert list(Attempt.objects.values_list("number", "outcome", "error_class")) == [
        (2, "dead-lettered", "LeaseExpired")
    ]


def test_a_blocking_worker_handles_every_event_published_at_a_steady_pace(
    workers: Workers, redis_env: dict[str, str]
):
    workers.start("--group", "alpha", **redis_env)
    publish("test.happened", {"n": -1})
    wait_until(lambda: Effect.objects.exists(), timeout=30, what="the worker is up")
    started = time.monotonic()
    for n in range(200):
        time.sleep(max(0.0, started + n / 100 - time.monotonic()))
        publish("test.happened", {"n": n})
    wait_until(
        lambda: Effect.objects.filter(group="alpha").count() == 201,
        timeout=30,
        what="every event handled",
    )
