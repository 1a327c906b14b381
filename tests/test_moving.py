"""Moving from the database to Redis Streams while workers run (docs/moving.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_events import moving, publish, triage
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.exceptions import EventsConfigurationError
from django_events.models import DeadLetter, Move
from django_events.registry import registry
from django_events.transports import transports

from .conftest import ROOT, Workers, wait_until
from .rabbitmq_support import BACKEND as RABBIT
from .rabbitmq_support import RABBITMQ_URL, delete_everything, needs_rabbitmq, publish_raw, recorded
from .redis_support import BACKEND, REDIS_URL, delete_prefix, needs_redis, unique_prefix
from .testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), needs_redis()]
DATABASE = "django_events.transports.database.DatabaseTransport"
MOVE = ["move_transport", "default", "new", "--interval", "0.2", "--grace", "1"]


TRANSPORTS = {
    "database": lambda prefix, endpoint: {"BACKEND": DATABASE},
    "log": lambda prefix, endpoint: {"BACKEND": "django_events.transports.log.LogTransport"},
    "redis": lambda prefix, endpoint: {
        "BACKEND": BACKEND,
        "OPTIONS": {"url": REDIS_URL, "prefix": prefix},
    },
    "rabbitmq": lambda prefix, endpoint: {
        "BACKEND": RABBIT,
        "OPTIONS": {"url": RABBITMQ_URL, "prefix": recorded(prefix.replace(":", "."))},
    },
    "sqs": lambda prefix, endpoint: {  # FIFO: it keeps per-key order
        "BACKEND": "django_events.transports.sqs.SnsSqsTransport",
        "OPTIONS": {
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "prefix": prefix.replace(":", "-") + "-",
            "wait_time": 0,
            "dead_letter_poll": 0.2,
            "fifo": True,
        },
    },
}
GROUPS = ("alpha", "beta", "chain", "limited", "sequence")


@contextmanager
def moving_between(old: str, new: str, endpoint: str = "") -> Iterator[dict[str, str]]:
    """``old`` as the default transport and ``new`` under the alias ``new``, for this
    process and as a subprocess's environment; what the brokers held is deleted after.
    ``endpoint``: moto's, for SNS + SQS."""
    prefix = unique_prefix()
    events = {
        **settings.DJANGO_EVENTS,
        "LEASE": 2,
        "TRANSPORTS": {
            "default": TRANSPORTS[old](prefix, endpoint),
            "new": TRANSPORTS[new](prefix, endpoint),
        },
    }
    try:
        with override_settings(DJANGO_EVENTS=events):
            transports.reset()
            yield {
                "DJANGO_EVENTS_TEST_OVERRIDES": json.dumps(events),
                "DJANGO_EVENTS_TEST_SILENCED": json.dumps(["django_events.E008"]),
            }
            for alias, kind in (("default", old), ("new", new)):
                if kind == "rabbitmq":
                    delete_everything(transports[alias], GROUPS)
    finally:
        transports.reset()
        delete_prefix(prefix)


@pytest.fixture
def two_transports() -> Iterator[dict[str, str]]:
    with moving_between("database", "redis") as env:
        yield env


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
    moving.prepare(transports["new"])
    moving.record_cutover(moving.start("default", "new"))
    switch.route()
    publish("test.sequenced", {"n": 3}, key="k")
    relay.run_once()
    assert transports["new"].status(["sequence"])["sequence"].pending == 1, "3 is on Redis"
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
    move_under_load(workers, two_transports, kill_ordered=False)


def test_out_of_the_log_transport_every_worker_follows_and_nothing_is_lost(workers: Workers):
    """From the log transport (publishers write the log, cursors read it) to Redis: from
    the cutover, publishers write the outbox and relays send to Redis, logging outside the
    cursors (docs/moving.md, "Out of the log transport")."""
    with moving_between("log", "redis") as env:
        # Every group's cursor, as `migrate` starts them (its declaration, post_migrate):
        # the test database was flushed under the database transport's settings.
        transports["default"].setup(registry.subscriptions())
        move_under_load(workers, env, kill_ordered=False)


def move_under_load(workers: Workers, env: dict[str, str], *, kill_ordered: bool) -> None:
    """Two workers run on the default transport; the move starts with events in flight,
    more are published during it, and the alpha/beta worker (with ``kill_ordered``, the
    ordered group's too) is killed with SIGKILL mid-move and replaced. Every event is
    handled once per group, each key in order, and a relay started after the move sends
    to the new transport only."""
    unordered = workers.start("--group", "alpha", "--group", "beta", **env)
    ordered = workers.start("--group", "sequence", **env)
    published = 0

    def burst(count: int) -> None:
        nonlocal published
        for n in range(published, published + count):
            publish("test.happened", {"n": n, "sleep": 0.01})
            publish("test.sequenced", {"n": n, "sleep": 0.01}, key=f"k{n % 4}")
        published += count

    burst(40)
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
        burst(40)
        killed = [unordered, ordered] if kill_ordered else [unordered]
        for proc in killed:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        burst(40)
        workers.start("--group", "alpha", "--group", "beta", **env)
        if kill_ordered:
            workers.start("--group", "sequence", **env)
        output, _ = mover.communicate(timeout=90)
    finally:
        if mover.poll() is None:
            mover.kill()
    assert mover.returncode == 0, output
    assert "Done:" in output, output
    assert Move.objects.get().finished_at is not None
    for group in ("alpha", "beta", "sequence"):
        wait_until(
            lambda group=group: Effect.objects.filter(group=group).count() >= published,
            what=f"every {group} event handled",
        )
    for group in ("alpha", "beta", "sequence"):
        ids = list(Effect.objects.filter(group=group).values_list("event_id", flat=True))
        assert len(ids) == len(set(ids)) == published, f"{group}: once each"
    order = handled_order("sequence")
    assert all(ns == sorted(ns) for ns in order.values()), {k: str(ns) for k, ns in order.items()}
    # After the move a relay sends to the new transport, even one started afresh.
    workers.stop_all()
    publish("test.happened", {"n": -1})
    relayed = workers.run("relay_events", "--once", **env)
    assert relayed.returncode == 0, relayed.stderr
    assert transports["default"].status(["alpha"])["alpha"].pending == 0
    assert transports["new"].status(["alpha"])["alpha"].pending == 1


def test_a_process_that_cannot_follow_the_move_stops_saying_why(two_transports: Any):
    Move.objects.create(from_alias="default", to_alias="elsewhere")
    switch = moving.Switch(transports["default"], ttl=0)
    with pytest.raises(EventsConfigurationError, match="has no 'elsewhere'"):
        switch.claim(["alpha"], 10, 30.0)


def test_the_command_refuses_a_second_move_and_a_move_to_itself(two_transports: Any):
    Move.objects.create(from_alias="default", to_alias="new")
    with pytest.raises(CommandError, match="is in progress; finish it first"):
        call_command("move_transport", "new", "default", grace=0, interval=0)
    with pytest.raises(CommandError, match="the same transport"):
        call_command("move_transport", "new", "new")
    assert Move.objects.count() == 1


def test_on_a_terminal_the_command_draws_a_progress_bar(
    workers: Workers, two_transports: dict[str, str]
):
    import os
    import pty

    main, terminal = pty.openpty()
    command = [sys.executable, "-m", "django", *MOVE[:3], "--interval", "0", "--grace", "0"]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=workers.env(**two_transports), stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, output
    assert f"\r[{'#' * 30}] 0/0 drained, 0 owed".encode() in output, output


def test_a_dead_letter_parks_its_key_on_the_new_side_until_discarded(two_transports: Any):
    switch = moving.Switch(transports["default"], ttl=0)
    relay = Relay(switch)
    publish("test.sequenced", {"n": 1, "fail": True}, key="k")
    relay.run_once()
    moving.prepare(transports["new"])
    moving.record_cutover(moving.start("default", "new"))
    switch.route()
    publish("test.sequenced", {"n": 2}, key="k")
    relay.run_once()
    worker = Worker(["sequence"], transport=switch, relay=False)
    worker.run(once=True, wait_for_retries=1)
    dead = DeadLetter.objects.get(group="sequence")
    assert not Effect.objects.exists(), "2 waits behind the dead letter of 1"
    triage.discard([dead], None, "not needed", actor="test")
    Worker(["sequence"], transport=switch, relay=False).run(once=True)
    assert handled_order("sequence") == {"k": [2]}


@pytest.fixture
def rabbitmq_to_database() -> Iterator[dict[str, str]]:
    with moving_between("rabbitmq", "database") as env:
        yield env


def _relays_switching_one_after_the_other() -> dict[str, list[int]]:
    """RabbitMQ to the database, key ``k``: 1 goes to RabbitMQ before the move; then a
    relay that has read the move sends 2 to the database while one that has not read it
    yet (relays switch within a poll, each on its own) sends 3 to RabbitMQ. One worker
    that has read the move drains both sides."""
    late = moving.Switch(transports["default"], ttl=3600)  # reads the route once: no move
    late.route()
    prompt = moving.Switch(transports["default"], ttl=0)
    publish("test.sequenced", {"n": 1}, key="k")
    Relay(late).run_once()
    moving.prepare(transports["new"])
    moving.record_cutover(moving.start("default", "new"))
    prompt.route()
    publish("test.sequenced", {"n": 2}, key="k")
    Relay(prompt).run_once()
    publish("test.sequenced", {"n": 3}, key="k")
    Relay(late).run_once()
    late.close()
    assert transports["new"].status(["sequence"])["sequence"].pending == 1, "2 is on the database"
    worker = Worker(["sequence"], transport=prompt, relay=False)
    try:
        wait_until(
            lambda: worker.process_batch() >= 0 and Effect.objects.count() >= 3,
            what="the three events handled",
        )
    finally:
        prompt.close()
    return handled_order("sequence")


@needs_rabbitmq()
def test_an_event_on_the_old_side_waits_for_an_earlier_one_on_the_new(
    rabbitmq_to_database: Any,
):
    """The old side is held too: 3 reached RabbitMQ after 2 reached the database."""
    assert _relays_switching_one_after_the_other() == {"k": [1, 2, 3]}


@needs_rabbitmq()
@pytest.mark.parametrize(
    ("old", "new", "alias"),
    [("rabbitmq", "database", "default"), ("database", "rabbitmq", "new")],
    ids=["on-the-old-side", "on-the-new-side"],
)
def test_another_services_event_is_not_held(old: str, new: str, alias: str):
    """An event in neither this log nor this outbox (another service published it to the
    shared exchange) has no place among this deployment's positions: it is handled."""
    with moving_between(old, new):
        switch = moving.Switch(transports["default"], ttl=0)
        moving.prepare(transports["new"])
        moving.start("default", "new")
        switch.route()
        rabbit = transports[alias]
        moving.prepare(rabbit)  # its queues, as setup_events declares them
        event_id = str(uuid.uuid4())
        head = {"specversion": "1.0", "id": event_id, "type": "test.sequenced", "source": "x"}
        body = {**head, "time": "2026-01-01T00:00:00+00:00", "partitionkey": "k", "data": {"n": 7}}
        publish_raw(
            rabbit.queue("sequence"),
            json.dumps(body).encode(),
            message_id=event_id,
            type="test.sequenced",
            headers={"key": "k"},
        )
        worker = Worker(["sequence"], transport=switch, relay=False)
        try:
            wait_until(
                lambda: worker.process_batch() >= 0 and Effect.objects.exists(),
                timeout=10,
                what="the other service's event handled",
            )
        finally:
            switch.close()
    assert handled_order("sequence") == {"k": [7]}


@needs_rabbitmq()
def test_a_dead_letter_on_rabbitmq_frees_its_key_on_that_side_during_a_move(
    rabbitmq_to_database: Any,
):
    """On the side moved from, its own rule: RabbitMQ frees a dead letter's key, so 2
    (behind 1's dead letter on RabbitMQ) is handled, where the new side would park it."""
    switch = moving.Switch(transports["default"], ttl=0)
    relay = Relay(switch)
    publish("test.sequenced", {"n": 1, "fail": True}, key="k")
    publish("test.sequenced", {"n": 2}, key="k")
    relay.run_once()
    moving.prepare(transports["new"])
    moving.start("default", "new")
    switch.route()
    worker = Worker(["sequence"], transport=switch, relay=False)
    try:
        wait_until(
            lambda: worker.process_batch() >= 0 and Effect.objects.exists(),
            what="2 handled behind the dead letter of 1",
        )
    finally:
        switch.close()
    assert DeadLetter.objects.get(group="sequence").state == DeadLetter.State.OPEN
    assert handled_order("sequence") == {"k": [2]}


def test_relays_send_to_the_old_side_until_the_cutover(two_transports: Any):
    """Until the command records the cutover (once every process has had time to read
    the move, so every worker holds keys on both sides), relays keep sending to the old
    transport; a worker that has not read the move yet cannot overtake the new side."""
    switch = moving.Switch(transports["default"], ttl=0)
    relay = Relay(switch)
    moving.prepare(transports["new"])
    move = moving.start("default", "new")
    switch.route()
    publish("test.sequenced", {"n": 1}, key="k")
    relay.run_once()
    assert transports["new"].status(["sequence"])["sequence"].pending == 0, "1 stays old"
    moving.record_cutover(move)
    switch.route()
    publish("test.sequenced", {"n": 2}, key="k")
    relay.run_once()
    assert transports["new"].status(["sequence"])["sequence"].pending == 1, "2 is on Redis"
    Worker(["sequence"], transport=switch, relay=False).run(once=True)
    assert handled_order("sequence") == {"k": [1, 2]}
