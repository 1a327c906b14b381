"""What the in-memory transport adds to the contract: settings, sharing, isolation."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from django.test import override_settings

from django_events import publish
from django_events.engine.relay import Relay
from django_events.exceptions import EventsConfigurationError
from django_events.models import Delivery, InboxRecord
from django_events.testing import deliver
from django_events.testing.contract import TYPE, claim_until, make_event
from django_events.transports import transports
from django_events.transports.memory import InMemoryTransport

from .testapp.models import Effect

SUBSCRIBED = [(TYPE, "g1", False)]


@pytest.fixture
def name() -> Iterator[str]:
    name = f"memory-{uuid.uuid4().hex}"
    yield name
    InMemoryTransport("cleanup", {"name": name}).clear()


@pytest.mark.django_db(transaction=True)
def test_configured_as_default_it_carries_events_from_publish_to_handlers(name: str) -> None:
    backend = {"BACKEND": "django_events.transports.memory.InMemoryTransport"}
    with override_settings(
        DJANGO_EVENTS={
            "BACKOFF_BASE": 0,
            "TRANSPORTS": {"default": {**backend, "OPTIONS": {"name": name}}},
        }
    ):
        event = publish("test.happened", {"n": 1})
        assert deliver() == 2
        assert sorted(Effect.objects.values_list("group", "n")) == [("alpha", 1), ("beta", 1)]
        assert InboxRecord.objects.filter(event_id=event.id).count() == 2
        assert not Delivery.objects.exists(), "nothing was queued in the database"
        assert transports["default"].status(["alpha", "beta"])["alpha"].pending == 0


def test_instances_with_one_name_share_a_queue_across_threads(name: str) -> None:
    event = make_event()
    InMemoryTransport("a", {"name": name}).publish([event], SUBSCRIBED)
    claimed: list[uuid.UUID] = []

    def worker() -> None:
        claimed.extend(
            c.event_id for c in InMemoryTransport("b", {"name": name}).claim(["g1"], 10, 30)
        )

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert claimed == [event.event_id]


def test_queues_with_different_names_are_isolated(name: str) -> None:
    InMemoryTransport("a", {"name": name}).publish([make_event()], SUBSCRIBED)
    other = InMemoryTransport("a", {"name": f"{name}-other"})
    assert other.claim(["g1"], 10, 30) == []
    assert len(claim_until(InMemoryTransport("a", {"name": name}), ["g1"], 1, 0)) == 1


def test_the_alias_names_the_queue_by_default() -> None:
    assert InMemoryTransport("demo", {}).name == "demo"


def test_clear_forgets_every_event(name: str) -> None:
    transport = InMemoryTransport("a", {"name": name})
    transport.publish([make_event(), make_event()], SUBSCRIBED)
    transport.clear()
    assert transport.claim(["g1"], 10, 30) == []
    assert transport.status(["g1"])["g1"].pending == 0


def test_an_unknown_option_is_named() -> None:
    with pytest.raises(EventsConfigurationError, match="unknown option 'location'"):
        InMemoryTransport("default", {"location": "x"})


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_several_events_runs_each_handler_once(name: str) -> None:
    """Several events of one group claimed together share one commit (BATCH_TRANSACTIONS):
    each handler runs, once. The worker matches inbox rows by the decoded event's id (a
    batch once skipped every event here, when the transport's ids were text)."""
    backend = {"BACKEND": "django_events.transports.memory.InMemoryTransport"}
    with override_settings(
        DJANGO_EVENTS={
            "BACKOFF_BASE": 0,
            "BATCH_TRANSACTIONS": True,
            "TRANSPORTS": {"default": {**backend, "OPTIONS": {"name": name}}},
        }
    ):
        for n in range(3):
            publish("test.happened", {"n": n})
        assert deliver(["alpha"]) == 3
        assert sorted(Effect.objects.values_list("n", flat=True)) == [0, 1, 2]
        assert InboxRecord.objects.filter(group_name="alpha").count() == 3


@pytest.mark.database_transport  # publish() to the outbox, then the relay
@pytest.mark.django_db(transaction=True)
def test_a_relayed_event_is_claimed_and_discarded_by_its_uuid(name: str) -> None:
    """The relay hands each event id over as a ``uuid.UUID`` (on SQLite too, whose driver
    reads text), so ``Claimed.event_id`` is one and the admin's ``discard`` (which passes
    a UUID) finds the parked event (it once found nothing and left it parked)."""
    transport = InMemoryTransport("a", {"name": name})
    event = publish("test.sequenced", {"n": 1}, key="k1")  # ordered: parked when dead
    Relay(transport=transport).run_once()
    [claimed] = transport.claim(["sequence"], 10, 30)
    assert claimed.event_id == event.id and isinstance(claimed.event_id, uuid.UUID)
    assert transport.dead_letter(claimed)
    assert transport.status(["sequence"])["sequence"].parked == 1
    transport.discard(event.id, "sequence")
    assert transport.status(["sequence"])["sequence"].parked == 0
