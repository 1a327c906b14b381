"""The RabbitMQ transport beyond the contract suite, on the real broker: hostile messages,
fan-out by the broker's bindings, the delivery limit mirrored into ``DeadLetter``,
prefetch, provisioning, delay steps and the broker out of reach."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from django_events import publish
from django_events.engine.worker import Worker
from django_events.exceptions import TransportUnavailable
from django_events.models import Attempt, DeadLetter
from django_events.registry import registry
from django_events.testing.contract import claim_until, make_event
from django_events.transports import transports

from .rabbitmq_support import (
    RABBITMQ_URL,
    PrivateNode,
    delete_everything,
    events_settings,
    free_port,
    needs_rabbitmq,
    publish_raw,
    unique_prefix,
)
from .testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), needs_rabbitmq()]

TYPE = "test.happened"


@pytest.fixture
def rabbit() -> Iterator[Any]:
    prefix = unique_prefix()
    transports.reset()
    with override_settings(
        DJANGO_EVENTS={**events_settings(prefix, dead_letter_poll=0.1), "BACKOFF_BASE": 0},
        SILENCED_SYSTEM_CHECKS=["django_events.E008"],
    ):
        transport = transports["default"]
        transport.setup(registry.subscriptions())
        yield transport
        transports.reset()
    delete_everything(transport, [*registry.groups(), "elsewhere"])


def healthy(count: int = 3) -> list[uuid.UUID]:
    return [publish(TYPE, {"n": n}).id for n in range(count)]


def handled_once(ids: list[uuid.UUID], group: str = "alpha") -> None:
    got = list(Effect.objects.filter(group=group).values_list("event_id", flat=True))
    assert sorted(got) == sorted(ids), "every healthy event handled exactly once"


def run_worker(groups: list[str], rounds: int = 4) -> None:
    for _ in range(rounds):
        Worker(groups).run(once=True)
        time.sleep(0.1)


def envelope(event_id: str) -> bytes:
    head = {"specversion": "1.0", "id": event_id, "type": TYPE, "source": "x"}
    return json.dumps({**head, "time": "2026-01-01T00:00:00+00:00", "data": {"n": 9}}).encode()


@pytest.mark.parametrize(
    ("body", "properties", "reason"),
    [
        (b"\xff\xfe\x00 not utf-8", {}, "RabbitMQ message"),
        (b"not json at all", {"message_id": "not-a-uuid"}, "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, {"type": "test.happened"}, "nests deeper"),
        (b'{"id": "zz", "type": "test.happened"}', {"headers": {"attempts": "many"}}, "missing"),
        (b"{}", {"headers": {"first_failed_at": 12, "key": [1, 2], "attempts": -5}}, "missing"),
    ],
    ids=["binary", "text", "deep", "not-an-envelope", "odd-headers"],
)
def test_a_message_not_ours_is_one_dead_letter_and_its_neighbours_are_handled(
    rabbit, body: bytes, properties: dict[str, Any], reason: str
):
    ids = healthy()
    Worker([], relay=True).step()
    publish_raw(rabbit.queue("alpha"), body, **properties)
    ids += healthy(2)
    Worker([], relay=True).step()
    run_worker(["alpha"])
    handled_once(ids)
    [letter] = DeadLetter.objects.filter(group="alpha")
    assert letter.error_class == "UndecodableEvent"
    assert reason in letter.error_message, letter.error_message
    assert rabbit.status(["alpha"])["alpha"].pending == 0, "acked once dead-lettered"


def test_headers_of_the_wrong_types_around_a_good_envelope_do_not_stop_it(rabbit):
    event_id = str(uuid.uuid4())
    headers = {"attempts": "three", "x-delivery-count": "x", "first_failed_at": b"\xff"}
    publish_raw(rabbit.queue("alpha"), envelope(event_id), message_id=event_id, headers=headers)
    [claimed] = claim_until(rabbit, ["alpha"], 1)
    assert (str(claimed.event_id), claimed.attempt, claimed.decode_error) == (event_id, 1, None)
    assert claimed.first_failed_at is None
    assert rabbit.ack(claimed)


def test_the_relay_reaches_a_queue_another_service_bound_and_a_targeted_publish_does_not(
    rabbit,
):
    from django_events.transports.rabbitmq import RabbitMQTransport

    other = RabbitMQTransport("other", {"url": RABBITMQ_URL, "prefix": rabbit.prefix})
    try:
        other.setup([(TYPE, "elsewhere", False)])  # the other service's own setup_events
        event = make_event(TYPE)
        rabbit.setup([(TYPE, "alpha", False)])
        rabbit.publish_to_all([event])  # as the relay does
        [got] = claim_until(other, ["elsewhere"], 1)
        assert got.event_id == event.event_id
        assert other.ack(got)
        [mine] = claim_until(rabbit, ["alpha"], 1)
        assert rabbit.ack(mine)
        targeted = make_event(TYPE)
        rabbit.publish([targeted], [(TYPE, "alpha", False), (TYPE, "beta", False)])
        assert {c.group for c in claim_until(rabbit, ["alpha", "beta"], 2)} == {"alpha", "beta"}
        assert claim_until(other, ["elsewhere"], 1, timeout=1.0) == [], "named groups only"
    finally:
        other.close()


def test_deliveries_past_the_limit_are_dead_lettered_by_the_broker_and_mirrored(rabbit):
    [event_id] = healthy(1)
    Worker([], relay=True).step()
    limit = rabbit.context.max_attempts("alpha")
    deadline = time.monotonic() + 60
    attempts = []
    while not attempts or attempts[-1] != "dead":  # a lease that keeps running out
        assert time.monotonic() < deadline, f"the broker never dead-lettered it: {attempts}"
        for claimed in claim_until(rabbit, ["alpha"], 1, timeout=1.0, lease=0.01):
            attempts.append("dead" if claimed.receipt.dead else claimed.attempt)
        time.sleep(0.02)
    assert attempts == [*range(1, limit + 2), "dead"], "each given-back delivery counted"
    rabbit.close()  # the claim from the dead-letter queue goes back there
    run_worker(["alpha"])
    [letter] = DeadLetter.objects.filter(group="alpha")
    assert (letter.event_id, letter.error_class) == (event_id, "LeaseExpired")
    assert letter.attempts == limit
    history = Attempt.objects.filter(event_id=event_id, group="alpha")
    assert list(history.values_list("number", "outcome", "error_class")) == [
        (limit, "dead-lettered", "LeaseExpired")
    ], "the mirrored dead letter is in the attempt history"
    assert rabbit.status(["alpha"])["alpha"].parked == 0, "acked in the dead-letter queue"
    assert not Effect.objects.exists()


def test_prefetch_is_batch_size(rabbit):
    rabbit.publish([make_event(TYPE) for _ in range(10)], [(TYPE, "alpha", False)])
    with override_settings(DJANGO_EVENTS={**events_settings(rabbit.prefix), "BATCH_SIZE": 3}):
        current = transports["default"]  # a changed setting builds the transports anew
        held = claim_until(current, ["alpha"], 10, timeout=1.5, limit=10)
        assert len(held) == 3, "at most BATCH_SIZE unacked messages per consumer"
        assert len(current.ack_many(held)) == 3


def test_setup_dry_run_declares_nothing_and_setup_declares_everything(rabbit):
    from django_events.transports.rabbitmq import RabbitMQTransport

    fresh = RabbitMQTransport("fresh", {"url": RABBITMQ_URL, "prefix": unique_prefix()})
    try:
        lines = fresh.setup([(TYPE, "alpha", False)], dry_run=True)
        assert f"binding {fresh.queue('alpha')} <- {fresh.exchange} on {TYPE}" in lines
        assert fresh._depth(fresh.queue("alpha")) is None, "a dry run declares nothing"
        assert fresh.setup([(TYPE, "alpha", False)]) == lines
        assert fresh._depth(fresh.queue("alpha")) == 0
        assert fresh._depth(fresh.queue("alpha", dead=True)) == 0
    finally:
        fresh.close()
        delete_everything(fresh, ["alpha"])


def test_retry_delays_round_up_to_a_step_at_most_one_and_a_half_times_longer():
    from django_events.transports.rabbitmq.messages import MAX_DELAY_MS, delay_step

    assert [delay_step(s) for s in (0, -1, 0.0004, 1.0, 1.2, 2.5, 4, 8, 90)] == [
        0, 0, 1, 1000, 1500, 3000, 4000, 10000, 100_000,
    ]  # fmt: skip
    assert delay_step(10**9) == MAX_DELAY_MS
    for ms in range(1, 200_000, 997):
        step = delay_step(ms / 1000)
        assert ms <= step <= 1.5 * ms


def test_a_broker_out_of_reach_is_transport_unavailable():
    from django_events.transports.rabbitmq import RabbitMQTransport

    away = RabbitMQTransport("away", {"url": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"})
    with pytest.raises(TransportUnavailable):
        away.publish([make_event(TYPE)], [(TYPE, "alpha", False)])
    with pytest.raises(TransportUnavailable):
        away.claim(["alpha"], 10, 30)
    with pytest.raises(TransportUnavailable):
        away.status(["alpha"])
    assert away.setup([(TYPE, "alpha", False)], dry_run=True), "a dry run needs no broker"
    away.close()


def test_a_broker_that_takes_the_connection_and_never_answers_is_named_so(monkeypatch):
    """A node out of file handles completes TCP in the kernel and never answers AMQP: the
    error says that, not a bare timeout (docs/transport-rabbitmq.md, "Sizing the broker")."""
    from django_events.transports.rabbitmq import RabbitMQTransport, link

    monkeypatch.setattr(link, "HANDSHAKE_TIMEOUT", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/%2F"
        away = RabbitMQTransport("silent", {"url": url})
        with pytest.raises(TransportUnavailable, match="did not complete the AMQP handshake"):
            away.claim(["alpha"], 10, 30)
        away.close()


@pytest.fixture
def private_node() -> Iterator[PrivateNode]:
    # Not under pytest's tmp_path: the node runs as the rabbitmq user, who must reach it.
    directory = Path(tempfile.mkdtemp(prefix="de-rabbitmq-"))
    node = PrivateNode(directory)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_while_the_broker_is_away_calls_are_unavailable_and_nothing_is_lost(private_node):
    """A restart of a private node: publishes and claims raise ``TransportUnavailable``
    meanwhile, an ack of a claim from before is refused (the broker gave it back), and
    every confirmed event is there afterwards."""
    from django_events.transports.rabbitmq import RabbitMQTransport

    transport = RabbitMQTransport("private", {"url": private_node.url, "prefix": "restart"})
    events = [make_event(TYPE) for _ in range(3)]
    transport.publish(events, [(TYPE, "alpha", False)])
    [held] = claim_until(transport, ["alpha"], 1, limit=1)
    private_node.stop()
    with pytest.raises(TransportUnavailable):
        transport.publish([make_event(TYPE)], [(TYPE, "alpha", False)])
    with pytest.raises(TransportUnavailable):
        transport.claim(["alpha"], 10, 30)
    assert transport.ack(held) is False, "the claim went with the connection"
    private_node.start()
    back = claim_until(transport, ["alpha"], 3, timeout=30, limit=10)
    assert sorted(c.event_id for c in back) == sorted(e.event_id for e in events)
    assert len(transport.ack_many(back)) == 3
    transport.close()


def test_a_declaration_binds_so_a_relay_that_knows_nothing_of_the_group_reaches_it(rabbit):
    """``migrate`` of another service declares through the transport's store: its group is
    bound, and stored like at Level 0 (events_status, W050, --prune read the rows)."""
    from django_events.models import Subscription
    from django_events.registry import Handler
    from django_events.subscriptions import declare
    from django_events.transports.rabbitmq import RabbitMQTransport

    other = RabbitMQTransport("other", {"url": RABBITMQ_URL, "prefix": rabbit.prefix})
    try:
        handler = Handler(func=lambda event: None, group="elsewhere", event_type=TYPE)
        declare("warehouse", [handler], store=other.subscription_store())
        assert Subscription.objects.filter(service="warehouse", group="elsewhere").exists()
        event = make_event(TYPE)
        rabbit.publish_to_all([event])  # a relay whose own code has no handler
        [got] = claim_until(other, ["elsewhere"], 1)
        assert got.event_id == event.event_id
        assert other.ack(got)
    finally:
        other.close()


def test_renewing_leases_keeps_the_connection_alive_through_a_long_handler(rabbit):
    """AMQP heartbeats of 1 s: a claim held for 5 s, renewed as the worker's heartbeat
    thread does, still acks; the broker would close a connection silent for 2 s."""
    from django_events.transports.rabbitmq import RabbitMQTransport

    slow = RabbitMQTransport("slow", {"url": RABBITMQ_URL, "prefix": rabbit.prefix, "heartbeat": 1})
    try:
        slow.publish([make_event(TYPE)], [(TYPE, "alpha", False)])
        [claimed] = claim_until(slow, ["alpha"], 1, lease=2.0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the handler runs; only the heartbeat thread calls
            time.sleep(0.5)
            slow.renew([claimed], 2.0)
        assert slow.ack(claimed) is True, "the connection outlived the handler"
    finally:
        slow.close()


def test_an_ordered_group_has_one_active_consumer_and_keeps_each_keys_order(rabbit):
    """Two workers of the ordered group ``sequence``: the broker hands its queue to one at
    a time (single active consumer), so the other claims nothing while the first runs,
    and the first hands out each key's events one at a time, in publish order."""
    from django_events.transports.rabbitmq import RabbitMQTransport

    assert rabbit.is_ordered("sequence")
    active = RabbitMQTransport("active", {"url": RABBITMQ_URL, "prefix": rabbit.prefix})
    try:
        assert active.claim(["sequence"], 10, 30) == []  # consuming first: the active one
        assert rabbit.claim(["sequence"], 10, 30) == []  # consuming second: standing by
        events = [make_event("test.sequenced", key=key) for key in "abcabcabca"]
        rabbit.publish(events, [("test.sequenced", "sequence", True)])
        handled: list[uuid.UUID] = []
        while len(handled) < len(events):
            batch = claim_until(active, ["sequence"], 3, timeout=2.0, limit=10)
            assert batch, f"stalled after {len(handled)}"
            assert len({c.receipt.properties.headers["key"] for c in batch}) == len(batch)
            handled += [c.event_id for c in batch]
            assert active.ack_many(batch) == batch
        assert handled == [e.event_id for e in events], "publish order, one per key out"
        assert claim_until(rabbit, ["sequence"], 1, timeout=1.0) == [], "one active consumer"
    finally:
        active.close()


def test_an_ack_of_later_deliveries_leaves_earlier_ones_held(rabbit):
    """Acks go as one ``multiple`` ack only when nothing below the highest tag is still
    held: acking a later claim first must not ack an earlier one, which comes again
    once the connection that held it closes."""
    events = [make_event(TYPE) for _ in range(6)]
    rabbit.publish(events, [(TYPE, "alpha", False)])
    first = claim_until(rabbit, ["alpha"], 3, limit=3)
    second = claim_until(rabbit, ["alpha"], 3, limit=3)
    assert len(first) == len(second) == 3
    assert rabbit.ack_many(second) == second
    rabbit.close()  # what it still held unacked goes back to the broker
    again = claim_until(rabbit, ["alpha"], 3, timeout=5, limit=10)
    assert sorted(c.event_id for c in again) == sorted(c.event_id for c in first)
    assert rabbit.ack_many(again) == again
    assert claim_until(rabbit, ["alpha"], 1, timeout=1.0) == [], "the later ones were acked"


def test_an_ack_after_the_lease_ran_out_settles_what_nobody_took_back(rabbit):
    """A lease that ran out with no claim since (nothing gave the message back) is still
    this channel's delivery: the ack settles it. Dropping it unsettled would hold a
    prefetch slot, and the event, until the connection closed."""
    event = make_event(TYPE)
    rabbit.publish([event], [(TYPE, "alpha", False)])
    [claimed] = claim_until(rabbit, ["alpha"], 1, lease=0.2)
    time.sleep(0.4)
    assert rabbit.ack_many([claimed]) == [claimed]
    assert claim_until(rabbit, ["alpha"], 1, timeout=1.0) == [], "acked, not held unsettled"
    rabbit.close()  # anything left unsettled would come back now
    assert claim_until(rabbit, ["alpha"], 1, timeout=2.0) == [], "nothing was left unsettled"


def test_a_confirmed_publish_returns_when_the_broker_confirms_not_when_its_poll_ends(
    rabbit, monkeypatch
):
    """The relay waits for confirms in polls of the connection: the last confirm must end
    the poll it arrives in. Stretched to 20 s, a poll sat out in full shows as a publish of
    20 s; answered at once it is milliseconds (a liveness bound, not a benchmark)."""
    from django_events.transports.rabbitmq import link

    monkeypatch.setattr(link, "CONFIRM_POLL", 20.0)
    started = time.monotonic()
    rabbit.publish_to_all([make_event(TYPE)])
    assert time.monotonic() - started < 10, "the confirm did not end the poll's wait"
    assert len(claim_until(rabbit, ["alpha"], 1)) == 1


def test_a_new_channel_is_ready_when_the_broker_answers_not_when_its_poll_ends(rabbit, monkeypatch):
    """Opening a channel waits for the broker to turn confirms on, in polls of the
    connection: its answer must end the poll it arrives in. Stretched to 20 s, a poll sat
    out in full shows as a connect of 20 s per channel; answered at once it is milliseconds
    (a liveness bound, not a benchmark)."""
    from django_events.transports.rabbitmq import link

    rabbit.close()
    monkeypatch.setattr(link, "CONFIRM_POLL", 20.0)
    started = time.monotonic()
    rabbit.wait(["alpha"], 0)  # opens the worker's connection and channel
    rabbit.publish_to_all([make_event(TYPE)])  # and the relay's
    assert time.monotonic() - started < 10, "the broker's answer did not end the poll's wait"
    assert len(claim_until(rabbit, ["alpha"], 1)) == 1
