"""Pause and resume: real workers (subprocesses) on the database and Redis transports stop
claiming a paused group or type within one poll and start again within one poll of the
resume; events keep accumulating meanwhile."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_events import pauses, publish
from django_events.transports import transports
from django_events.transports.database import DatabaseTransport

from .conftest import Workers, wait_until
from .redis_support import delete_prefix, events_settings, needs_redis, unique_prefix
from .testapp.models import Effect
from .transport_support import owed

pytestmark = pytest.mark.django_db(transaction=True)
POLL = 1.0  # the workers' POLL_INTERVAL: how long a pause or a resume may take to apply
SLACK = 4.0  # scheduling on a loaded test machine, and the handler itself


@pytest.fixture(params=["database", pytest.param("redis", marks=needs_redis())])
def worker_env(request: Any) -> Iterator[dict[str, str]]:
    """Worker settings with a one-second poll, on each transport."""
    if request.param == "database":
        yield {"DJANGO_EVENTS_TEST_OVERRIDES": json.dumps({"POLL_INTERVAL": POLL})}
        return
    prefix = unique_prefix()
    conf = {**events_settings(prefix), "POLL_INTERVAL": POLL}
    with override_settings(DJANGO_EVENTS=conf):
        transports.reset()
        yield {
            "DJANGO_EVENTS_TEST_OVERRIDES": json.dumps(conf),
            "DJANGO_EVENTS_TEST_SILENCED": json.dumps(["django_events.E008"]),
        }
        transports.reset()
    delete_prefix(prefix)


def handled(group: str) -> set[int]:
    return set(Effect.objects.filter(group=group).values_list("n", flat=True))


def test_a_paused_group_is_not_claimed_within_one_poll_and_resumes_within_one_poll(
    workers: Workers, worker_env: dict[str, str]
):
    workers.start("--group", "alpha", **worker_env)
    publish("test.happened", {"n": 1})
    wait_until(lambda: handled("alpha") == {1}, timeout=60, what="the worker runs")

    pauses.pause("alpha", reason="CRM outage", by="ops")
    time.sleep(POLL + 0.3)  # one poll: the worker's pause set is now fresh
    publish("test.happened", {"n": 2})
    publish("test.happened", {"n": 3})
    time.sleep(3 * POLL)
    assert handled("alpha") == {1}, "a paused group was claimed"
    if isinstance(transports["default"], DatabaseTransport):  # the log transport's too
        assert owed("alpha") == 2  # still accumulating

    resumed = time.monotonic()
    pauses.resume("alpha")
    wait_until(lambda: handled("alpha") == {1, 2, 3}, timeout=POLL + SLACK, what="resumed")
    took = time.monotonic() - resumed
    print(f"resume to handled: {took:.2f}s (poll {POLL}s)")


def test_a_paused_event_type_is_left_unclaimed_and_other_groups_go_on(
    workers: Workers, worker_env: dict[str, str]
):
    workers.start("--group", "alpha", "--group", "beta", **worker_env)
    publish("test.happened", {"n": 1})
    wait_until(lambda: handled("beta") == {1}, timeout=60, what="the worker runs")

    pauses.pause("beta", event_type="test.happened", reason="bad deploy", by="ops")
    time.sleep(POLL + 0.3)
    publish("test.happened", {"n": 2})
    wait_until(lambda: handled("alpha") == {1, 2}, timeout=30, what="alpha goes on")
    time.sleep(2 * POLL)
    assert handled("beta") == {1}, "a paused type was claimed"

    pauses.resume("beta", event_type="test.happened")
    wait_until(lambda: handled("beta") == {1, 2}, timeout=POLL + SLACK, what="resumed")


def test_the_pause_set_costs_one_query_per_poll_whatever_the_batches(
    django_assert_num_queries: Any,
):
    paused = pauses.PauseSet("default", ttl=60)
    pauses.pause("alpha", reason="x", by="ops")
    with django_assert_num_queries(1):
        for _ in range(100):
            assert paused.get().claimable(["alpha", "beta"]) == ["beta"]
    fresh = pauses.PauseSet("default", ttl=0)
    pauses.resume("alpha")
    assert fresh.get().claimable(["alpha", "beta"]) == ["alpha", "beta"]


def test_a_pause_needs_a_known_group_a_subscribed_type_and_a_reason():
    with pytest.raises(ValueError, match="No consumer group 'alpah' is known here"):
        pauses.pause("alpah", reason="typo", by="ops")
    with pytest.raises(ValueError, match=r"does not subscribe to 'test\.chained'"):
        pauses.pause("alpha", event_type="test.chained", reason="x", by="ops")
    with pytest.raises(ValueError, match="needs a reason"):
        pauses.pause("alpha", reason=" ", by="ops")
    pauses.pause("alpha", reason="first", by="ops")
    with pytest.raises(pauses.AlreadyPaused, match="already paused"):
        pauses.pause("alpha", reason="second", by="other")
    with pytest.raises(pauses.NotPaused):
        pauses.resume("beta")
