"""Moving from the log transport to a broker (docs/moving.md, "Out of the log transport").

The broker here is the in-memory transport, which relays as every broker does (send, then
log); tests/test_moving.py moves to Redis Streams with worker processes. Events are counted
where they are claimed, not where they are handled: the inbox would absorb a second
delivery, and the move must not make one."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from io import StringIO
from threading import Thread
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from django_events import moving
from django_events.engine import inbox
from django_events.models import EventRecord, Move
from django_events.registry import registry
from django_events.transports import transports

from .conftest import closing_connections
from .test_move_to_log import GROUPS, MEMORY, burst, drain, owed_per_group, relay

pytestmark = pytest.mark.django_db(transaction=True)

LOG = {"BACKEND": "django_events.transports.log.LogTransport"}
MOVE = ["default", "broker", "--grace", "0.2", "--interval", "0.1"]


@pytest.fixture
def log_and_broker() -> Iterator[None]:
    """The log transport as the default, a broker (in memory) under ``broker``; every
    group's cursor started, as ``setup_events`` and the first worker's declaration do
    (a group's first claim would otherwise start where the most advanced group is)."""
    backends = {"default": LOG, "broker": MEMORY}
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": backends}):
        transports.reset()
        try:
            transports["default"].setup(registry.subscriptions())
            yield
            transports["broker"].clear()  # process-wide, as a broker outlives a test
        finally:
            transports.reset()


def handle_once(switch: moving.Switch, claims: Counter[tuple[str, uuid.UUID]]) -> int:
    """One claim through ``switch``, counted in ``claims``, each event recorded in the
    inbox as a worker's handler would (the switch holds a key's later events until its
    earlier ones are there) and acknowledged."""
    got = switch.claim(sorted(GROUPS), 25, 30.0)
    claims.update((item.group, item.event_id) for item in got)
    with transaction.atomic():
        inbox.record_many("default", [(item.group, item.event_id) for item in got])
    switch.ack_many(got)
    return len(got)


def on_the_broker(group: str) -> int:
    return transports["broker"].status([group])[group].pending


def test_every_event_is_claimed_once_per_group_across_a_move_to_a_broker(log_and_broker: None):
    """Before the move: events in the log, some claimed through the cursors. During it,
    before the cutover: more, relayed into the log. After the cutover: more, sent to the
    broker and logged outside the cursors. Drained through the switch, each (group,
    event) is claimed once, on one side."""
    switch = moving.Switch(transports["default"], ttl=0)
    claims: Counter[tuple[str, uuid.UUID]] = Counter()
    burst(4, "before")
    relay().run_once()
    assert handle_once(switch, claims), "the cursors hand out the log"
    moving.prepare(transports["broker"])
    move = moving.start("default", "broker")
    burst(2, "during")
    relay().run_once()
    assert on_the_broker("alpha") == 0, "before the cutover, relays log for the cursors"
    moving.record_cutover(move)
    burst(3, "after")
    relay().run_once()
    assert on_the_broker("alpha") == 3
    drain(switch, claims, handle_once)
    assert set(claims) == owed_per_group(set())
    assert max(claims.values()) == 1, [key for key, n in claims.items() if n > 1]


def test_the_log_rows_a_broker_relay_writes_are_in_no_cursor(log_and_broker: None):
    """After the cutover the relay sends to the broker, then logs the events: replay and
    the admin read them in the log, and the old side's cursors never claim them."""
    moving.prepare(transports["broker"])
    moving.record_cutover(moving.start("default", "broker"))
    burst(2, "after")
    relay().run_once()
    after = set(EventRecord.objects.filter(data__tag="after").values_list("id", flat=True))
    assert len(after) == 4, "logged"
    claimed = transports["default"].claim(["alpha", "beta", "sequence"], 50, 30.0)
    assert not {item.event_id for item in claimed} & after


def test_the_command_moves_to_a_broker_and_drains_the_cursors(log_and_broker: None):
    """``move_transport default broker``: the log's backlog is drained through the cursors
    by a worker (here: the test's claims), and the move finishes."""
    burst(3, "before")
    relay().run_once()
    claims: Counter[tuple[str, uuid.UUID]] = Counter()
    out = StringIO()
    command = Thread(
        target=closing_connections(lambda: call_command("move_transport", *MOVE, stdout=out))
    )
    command.start()
    drain(moving.Switch(transports["default"], ttl=0), claims, handle_once)
    command.join(60)
    assert not command.is_alive() and "Done: default owes nothing" in out.getvalue(), out.getvalue()
    assert Move.objects.get().finished_at is not None
    assert set(claims) == owed_per_group(set()) and max(claims.values()) == 1


@pytest.mark.parametrize(
    ("new", "why"),
    [("database", "it moves to a broker only"), ("log", "it moves to a broker only")],
)
def test_a_move_out_of_the_log_transport_into_the_same_log_is_refused(new: str, why: str):
    backends: dict[str, Any] = {
        "default": LOG,
        "database": {"BACKEND": "django_events.transports.database.DatabaseTransport"},
        "log": LOG,
    }
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": backends}):
        transports.reset()
        try:
            with pytest.raises(ValueError, match=why):
                moving.check_start("default", new)
        finally:
            transports.reset()
