"""Moving from the database to Redis Streams while workers run (docs/moving.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from django_events import moving, publish
from django_events.models import Delivery, Move
from django_events.relay import Relay
from django_events.transports import transports
from django_events.worker import Worker

from .conftest import ROOT, Workers, wait_until
from .redis_support import BACKEND, REDIS_URL, delete_prefix, needs_redis, unique_prefix
from .testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), needs_redis()]
DATABASE = "django_events.transports.database.DatabaseTransport"
MOVE = ["move_transport", "default", "redis", "--interval", "0.2", "--grace", "1"]


@pytest.fixture
def two_transports() -> Iterator[dict[str, str]]:
    """The database as the default transport and Redis as ``redis``, for this process and
    as a subprocess's environment."""
    prefix = unique_prefix()
    events = {
        **settings.DJANGO_EVENTS,
        "LEASE": 2,
        "TRANSPORTS": {
            "default": {"BACKEND": DATABASE},
            "redis": {"BACKEND": BACKEND, "OPTIONS": {"url": REDIS_URL, "prefix": prefix}},
        },
    }
    with override_settings(DJANGO_EVENTS=events):
        transports.reset()
        yield {
            "DJANGO_EVENTS_TEST_OVERRIDES": json.dumps(events),
            "DJANGO_EVENTS_TEST_SILENCED": json.dumps(["django_events.E008"]),
        }
        transports.reset()
    delete_prefix(prefix)


def handled_order(group: str) -> dict[str, list[int]]:
    """Each key's ``n`` in the order its group's handler committed them."""
    order: dict[str, list[int]] = {}
    for key, n in Effect.objects.filter(group=group).order_by("id").values_list("key", "n"):
        order.setdefault(key, []).append(n)
    return order


def _move_with_a_key_on_both_sides(hold: bool) -> dict[str, list[int]]:
    """Key ``k``: events 1 and 2 relayed to the database, then the move starts and event
    3 goes to Redis; one worker drains both sides."""
    switch = moving.Switch(transports["default"], ttl=0, hold=hold)
    relay = Relay(switch)
    publish("test.sequenced", {"n": 1}, key="k")
    publish("test.sequenced", {"n": 2}, key="k")
    relay.run_once()
    moving.prepare(transports["redis"])
    moving.start("default", "redis")
    switch.route()
    publish("test.sequenced", {"n": 3}, key="k")
    relay.run_once()
    assert transports["redis"].status(["sequence"])["sequence"].pending == 1, "3 is on Redis"
    Worker(["sequence"], transport=switch, relay=False).run(once=True, wait_for_retries=1)
    return handled_order("sequence")


def test_a_key_with_events_owed_on_the_old_side_is_held_on_the_new(two_transports: Any):
    assert _move_with_a_key_on_both_sides(hold=True) == {"k": [1, 2, 3]}


def test_without_the_hold_the_new_side_overtakes_the_old(two_transports: Any):
    """The control: the same move with the hold switched off breaks the key's order."""
    assert _move_with_a_key_on_both_sides(hold=False) == {"k": [1, 3, 2]}


def test_the_move_is_followed_by_every_worker_and_loses_nothing_through_a_kill(
    workers: Workers, two_transports: dict[str, str]
):
    """Two workers run on the default (database) transport; the move starts with events
    in flight, more are published during it, and the alpha/beta worker is killed with
    SIGKILL mid-move. Every event is handled once per group, each key in order, and what
    is published after the move goes to Redis."""
    env = two_transports
    unordered = workers.start("--group", "alpha", "--group", "beta", **env)
    workers.start("--group", "sequence", **env)
    published = {"alpha": 0, "sequence": 0}

    def burst(start: int, count: int) -> None:
        for n in range(start, start + count):
            publish("test.happened", {"n": n, "sleep": 0.01})
            publish("test.sequenced", {"n": n}, key=f"k{n % 4}")
            published["alpha"] += 1
            published["sequence"] += 1

    burst(0, 40)
    wait_until(lambda: Effect.objects.filter(group="alpha").exists(), what="workers are up")
    mover = subprocess.Popen(
        [sys.executable, "-m", "django", *MOVE],
        cwd=ROOT,
        env=workers.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: Move.objects.exists(), what="the move is recorded")
        burst(40, 40)
        unordered.send_signal(signal.SIGKILL)
        unordered.wait(timeout=10)
        burst(80, 40)
        workers.start("--group", "alpha", "--group", "beta", **env)
        output, _ = mover.communicate(timeout=60)
    finally:
        if mover.poll() is None:
            mover.kill()
    assert mover.returncode == 0, output
    assert "owes nothing" in output, output
    assert Move.objects.get().finished_at is not None
    for group, expected in (("alpha", 120), ("beta", 120), ("sequence", 120)):
        wait_until(
            lambda group=group, expected=expected: (
                Effect.objects.filter(group=group).count() >= expected
            ),
            what=f"every {group} event handled",
        )
    for group in ("alpha", "beta", "sequence"):
        ids = list(Effect.objects.filter(group=group).values_list("event_id", flat=True))
        assert len(ids) == len(set(ids)) == published["alpha"], f"{group}: once each"
    assert all(ns == sorted(ns) for ns in handled_order("sequence").values())
    # After the move a relay sends to Redis, even one started afresh.
    workers.stop_all()
    publish("test.happened", {"n": 1000})
    relayed = workers.run("relay_events", "--once", **env)
    assert relayed.returncode == 0, relayed.stderr
    assert not Delivery.objects.exists()
    assert transports["redis"].status(["alpha"])["alpha"].pending == 1
