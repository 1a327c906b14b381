"""The transport contract: one pytest suite that every transport passes.

Subclass ``TransportContract`` in a test module and provide a ``transport`` fixture that
yields a fresh, isolated instance; pytest collects the inherited tests::

    class TestMyContract(TransportContract):
        @pytest.fixture
        def transport(self):
            t = MyTransport("contract", {"prefix": f"t-{uuid.uuid4().hex}"})
            yield t
            t.close()

Tests of a feature the transport does not promise (its ``supports_ordering``,
``supports_delayed_retry``, ``persistent``, ``acks_in_transaction`` and ``waits_for_work``
flags) are skipped with a reason naming the flag; ``idempotent_publish`` decides whether a
republished event may arrive twice. Claims are polled (``claim_until``) because brokers deliver
asynchronously. The suite builds ``Outgoing`` events itself and calls the interface
directly; it needs the database (the event log, the inbox) and nothing from settings
beyond the defaults. docs/transports.md describes each promise.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import pytest
from django.db import connections, transaction

from ..envelope import Event
from ..registry import Handler, registry
from ..transports.base import Claimed, FiltersTypes, Outgoing, Transport

TYPE = "contract.happened"
"""Subscribed to by groups ``g1`` and ``g2``."""
OTHER_TYPE = "contract.other"
"""Subscribed to by group ``g3`` only."""
KEYED_TYPE = "contract.keyed"
"""Subscribed to by group ``seq``, ordered."""
SUBSCRIPTIONS: list[tuple[str, str, bool]] = [
    (TYPE, "g1", False),
    (TYPE, "g2", False),
    (OTHER_TYPE, "g3", False),
    (KEYED_TYPE, "seq", True),
]
"""Every ``(event_type, group, ordered)`` the suite uses; ``setup`` provisions them all."""
E2E_TYPE = "contract.end-to-end"
E2E_GROUP = "contract-e2e"
FOLLOW_TYPE = "contract.followed"

_positions = itertools.count(1_000_000_000)


def make_event(
    event_type: str = TYPE,
    *,
    key: str | None = None,
    data: dict[str, Any] | None = None,
    raw_data: str | None = None,
    **fields: Any,
) -> Outgoing:
    """A complete event as the relay hands it to a transport (``raw_data`` as stored)."""
    position = next(_positions)
    event_id = fields.pop("event_id", None) or uuid.uuid4()
    values: dict[str, Any] = {
        "version": 1,
        "metadata": "",
        "occurred_at": dt.datetime.now(dt.timezone.utc),
        "source": "contract",
        "correlation_id": event_id,
        "causation_id": None,
        **fields,
    }
    if raw_data is None:
        raw_data = json.dumps(data if data is not None else {"n": position})
    return Outgoing(
        position=position, event_id=event_id, type=event_type, key=key, data=raw_data, **values
    )


def log_events(events: Sequence[Outgoing], using: str = "default") -> None:
    """Write ``events`` to the event log, as the relay does; already logged ones are kept.

    Raises ``ValueError`` for data or metadata that is not JSON: the log cannot hold it.
    """
    from ..models import EventRecord

    records = [
        EventRecord(
            id=e.event_id,
            position=e.position,
            type=e.type,
            key=e.key,
            version=e.version,
            data=json.loads(e.data),
            metadata=json.loads(e.metadata) if e.metadata else {},
            occurred_at=e.occurred_at or dt.datetime.now(dt.timezone.utc),
            source=e.source,
            correlation_id=e.correlation_id,
            causation_id=e.causation_id,
        )
        for e in events
    ]
    EventRecord.objects.using(using).bulk_create(records, ignore_conflicts=True)


def claim_until(
    transport: Transport,
    groups: Sequence[str],
    n: int,
    timeout: float = 10.0,
    *,
    lease: float = 30.0,
    limit: int | None = None,
) -> list[Claimed]:
    """Claim until ``n`` events are in hand (never asking for more than ``n`` in all, nor
    more than ``limit`` at once) or ``timeout`` seconds pass; returns what was claimed."""
    got: list[Claimed] = []
    deadline = time.monotonic() + timeout
    while True:
        want = n - len(got)
        if limit is not None:
            want = min(want, limit)
        got.extend(transport.claim(list(groups), want, lease))
        if len(got) >= n or time.monotonic() >= deadline:
            return got
        time.sleep(0.02)


def assert_nothing_claimable(
    transport: Transport, groups: Sequence[str], within: float = 0.0, lease: float = 30.0
) -> None:
    """No claim in ``within`` seconds (at least one try) finds anything for ``groups``."""
    deadline = time.monotonic() + within
    while True:
        found = transport.claim(list(groups), 100, lease)
        assert not found, f"expected nothing claimable, got {_describe(found)}"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def _describe(claimed: Sequence[Claimed]) -> list[str]:
    return [f"{c.group}:{c.event_id} (attempt {c.attempt})" for c in claimed]


def _ids(claimed: Sequence[Claimed]) -> list[uuid.UUID]:
    return [c.event_id for c in claimed]


def _requires(flag: str) -> Callable[[Transport], None]:
    def check(transport: Transport) -> None:
        if not getattr(transport, flag):
            pytest.skip(f"{type(transport).__name__}.{flag} is False")

    return check


needs_ordering = _requires("supports_ordering")
needs_delayed_retry = _requires("supports_delayed_retry")
needs_persistence = _requires("persistent")
needs_acks_in_transaction = _requires("acks_in_transaction")
needs_waiting = _requires("waits_for_work")
needs_type_filter = _requires("filters_types")


@contextmanager
def _registered(handler: Handler) -> Iterator[None]:
    """``handler`` is registered for the block only."""
    registry.add(handler)
    try:
        yield
    finally:
        registry._handlers.pop((handler.group, handler.event_type), None)


class TransportContract:
    """Subclass in a test module, provide the ``transport`` fixture; pytest collects the tests."""

    pytestmark = pytest.mark.django_db(transaction=True)

    lease: float = 1.0
    """Seconds used for lease tests (a transport with 1 s granularity keeps 1.0 or more)."""
    retry_delay: float = 1.0
    """Seconds used for ``retry_later`` tests."""
    settle: float = 0.0
    """Extra seconds an eventually consistent transport needs before a claim sees work."""

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        """A fresh, isolated instance; subclasses override this."""
        raise NotImplementedError("Provide a `transport` fixture in your TransportContract.")

    @pytest.fixture
    def provisioned(self, transport: Transport) -> Transport:
        """``transport`` after ``setup`` for every subscription the suite uses."""
        transport.setup(SUBSCRIPTIONS)
        return transport

    # -- hooks ---------------------------------------------------------------------------

    def prepare(self, events: Sequence[Outgoing]) -> None:
        """Make ``events`` exist wherever the transport reads them from, before ``publish``.

        A broker carries whole events and needs nothing. A transport that joins the outbox
        transaction (the database transport) receives only positions and ids and reads
        the rest from the event log: its subclass writes the log here (``log_events``).
        """

    def reopen(self, transport: Transport) -> Transport:
        """A new instance on the same storage, as after a restart of the worker."""
        return type(transport)(transport.alias, dict(transport.options), transport.context)

    # -- helpers -------------------------------------------------------------------------

    def publish(
        self,
        transport: Transport,
        events: Sequence[Outgoing],
        subscriptions: Sequence[tuple[str, str, bool]] = SUBSCRIPTIONS,
    ) -> None:
        self.prepare(events)
        transport.publish(events, subscriptions)

    def claim(
        self, transport: Transport, groups: Sequence[str], n: int = 1, **kwargs: Any
    ) -> list[Claimed]:
        """Exactly ``n`` claims within the settle time, or the test fails."""
        kwargs.setdefault("lease", self.lease)
        got = claim_until(transport, groups, n, timeout=self.settle + 10.0, **kwargs)
        assert len(got) == n, f"expected {n} claimed for {list(groups)}, got {_describe(got)}"
        return got

    def nothing(self, transport: Transport, groups: Sequence[str], within: float = 0.0) -> None:
        assert_nothing_claimable(transport, groups, within=self.settle + within, lease=self.lease)

    def expire(self) -> None:
        """Wait until a lease taken now has run out."""
        time.sleep(self.lease * 1.2 + 0.1)

    # -- publish, claim, ack ---------------------------------------------------------------

    def test_published_event_is_claimed_acked_and_gone(self, provisioned: Transport) -> None:
        event = make_event()
        self.publish(provisioned, [event])
        [claimed] = self.claim(provisioned, ["g1"])
        assert (claimed.group, claimed.event_id, claimed.event_type) == ("g1", event.event_id, TYPE)
        assert claimed.decode_error is None
        assert claimed.event is not None and claimed.event.id == event.event_id
        assert provisioned.ack(claimed) is True
        self.nothing(provisioned, ["g1"], within=self.lease * 1.2)

    def test_claimed_event_carries_the_published_envelope(self, provisioned: Transport) -> None:
        cause = uuid.uuid4()
        event = make_event(
            key="order-1",
            data={"n": 1, "text": "déjà vu", "items": [1, 2.5, None, True]},
            version=3,
            metadata=json.dumps({"tenant": "t1"}),
            source="shop",
            causation_id=cause,
        )
        self.publish(provisioned, [event])
        [claimed] = self.claim(provisioned, ["g1"])
        got = claimed.event
        assert isinstance(got, Event), claimed.decode_error
        assert (got.id, got.type, got.version, got.key) == (event.event_id, TYPE, 3, "order-1")
        assert got.data == {"n": 1, "text": "déjà vu", "items": [1, 2.5, None, True]}
        assert got.metadata == {"tenant": "t1"}
        assert (got.source, got.correlation_id, got.causation_id) == ("shop", event.event_id, cause)
        assert got.occurred_at == event.occurred_at

    def test_an_event_published_twice_reaches_each_subscribed_group(
        self, provisioned: Transport
    ) -> None:
        """The relay sends a batch again if it died before recording the send."""
        event = make_event()
        self.publish(provisioned, [event])
        provisioned.publish([event], SUBSCRIPTIONS)
        claimed = claim_until(provisioned, ["g1", "g2", "g3"], 4, self.settle + 0.5)
        groups = sorted(c.group for c in claimed)
        assert set(groups) == {"g1", "g2"}, _describe(claimed)
        if provisioned.idempotent_publish:
            assert groups == ["g1", "g2"], f"delivered twice: {_describe(claimed)}"
        assert provisioned.ack_many(claimed) == claimed
        self.nothing(provisioned, ["g1", "g2"])

    def test_a_claim_for_some_types_leaves_the_others_unattempted(
        self, provisioned: Transport
    ) -> None:
        """An old worker during a rolling deploy: what only a newer one handles waits for it,
        with no attempt counted (``filters_types``)."""
        needs_type_filter(provisioned)
        known, newer = make_event(), make_event(OTHER_TYPE)
        both = [(TYPE, "g1", False), (OTHER_TYPE, "g1", False)]
        self.publish(provisioned, [newer, known], both)
        claim = cast(FiltersTypes, provisioned).claim

        def until_one(types: list[str]) -> list[Claimed]:
            # a transport may give a passed-over event back with a short delay (Redis)
            deadline = time.monotonic() + self.settle + 10.0
            while True:
                got = claim(["g1"], 10, self.lease, types={"g1": types})
                if got or time.monotonic() >= deadline:
                    return got
                time.sleep(0.02)

        got = until_one([TYPE])
        assert _ids(got) == [known.event_id], _describe(got)
        assert provisioned.ack_many(got) == got
        for _ in range(3):  # passed over again and again: still no attempt counted
            assert claim(["g1"], 10, self.lease, types={"g1": [TYPE]}) == []
            time.sleep(0.3)
        [later] = until_one([TYPE, OTHER_TYPE])
        assert (later.event_id, later.attempt) == (newer.event_id, 1)
        assert provisioned.ack_many([later]) == [later]

    def test_each_subscribed_group_gets_the_event_and_no_other_group_does(
        self, provisioned: Transport
    ) -> None:
        event, other = make_event(), make_event(OTHER_TYPE)
        self.publish(provisioned, [event, other])
        for group, expected in (("g1", event), ("g2", event), ("g3", other)):
            [claimed] = self.claim(provisioned, [group])
            assert claimed.event_id == expected.event_id
            assert provisioned.ack(claimed)
        self.nothing(provisioned, ["g1", "g2", "g3", "seq"])

    def test_restricted_subscriptions_reach_only_the_groups_named(
        self, provisioned: Transport
    ) -> None:
        """Replay and the admin's retry publish to one group even where more subscribe."""
        event = make_event()
        self.publish(provisioned, [event], [(TYPE, "g1", False)])
        [claimed] = self.claim(provisioned, ["g1", "g2"], limit=10)
        assert claimed.group == "g1"
        self.nothing(provisioned, ["g2"], within=0.5)

    def test_a_claim_stops_at_its_byte_budget(self, provisioned: Transport) -> None:
        """``BATCH_BYTES``: a worker's batch is bounded in bytes too, never below one event;
        what the budget left out comes later, its attempt not counted twice."""
        events = [make_event(data={"n": n, "pad": "x" * 20_000}) for n in range(4)]
        self.publish(provisioned, events)
        deadline = time.monotonic() + self.settle + 10.0
        first: list[Claimed] = []
        while not first and time.monotonic() < deadline:
            first = provisioned.claim(["g1"], 10, self.lease, max_bytes=30_000)
            time.sleep(0.02)
        assert len(first) == 1, f"one 20 kB event fits 30 kB, got {_describe(first)}"
        tiny = provisioned.claim(["g1"], 10, self.lease, max_bytes=1)
        assert len(tiny) == 1, "a budget smaller than one event still claims one"
        rest = self.claim(provisioned, ["g1"], 2, limit=10)
        claimed = [*first, *tiny, *rest]
        assert sorted(_ids(claimed)) == sorted(e.event_id for e in events)
        assert [c.attempt for c in claimed] == [1, 1, 1, 1], _describe(claimed)
        assert provisioned.ack_many(claimed) == claimed
        self.nothing(provisioned, ["g1"])

    def test_ack_many_returns_the_claims_that_still_held(self, provisioned: Transport) -> None:
        lost, kept = make_event(), make_event()
        self.publish(provisioned, [lost])
        [stale] = self.claim(provisioned, ["g1"])
        self.expire()
        self.publish(provisioned, [kept])
        claimed = {c.event_id: c for c in self.claim(provisioned, ["g1"], 2, limit=10)}
        assert claimed.keys() == {lost.event_id, kept.event_id}
        assert provisioned.ack_many([stale, claimed[kept.event_id]]) == [claimed[kept.event_id]]
        assert provisioned.ack_many([claimed[lost.event_id]]) == [claimed[lost.event_id]]
        self.nothing(provisioned, ["g1"])

    def test_events_of_one_key_flow_together_in_an_unordered_group(
        self, provisioned: Transport
    ) -> None:
        events = [make_event(key="same") for _ in range(3)]
        self.publish(provisioned, events)
        claimed = self.claim(provisioned, ["g1"], 3, limit=10)
        assert sorted(_ids(claimed)) == sorted(e.event_id for e in events)

    def test_competing_claims_never_share_an_event(self, provisioned: Transport) -> None:
        events = [make_event() for _ in range(24)]
        self.publish(provisioned, events)
        seen: list[uuid.UUID] = []
        errors: list[BaseException] = []
        deadline = time.monotonic() + self.settle + 20

        def consume() -> None:
            try:
                while len(seen) < len(events) and time.monotonic() < deadline:
                    batch = provisioned.claim(["g1"], 3, 30.0)
                    seen.extend(_ids(batch))
                    provisioned.ack_many(batch)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=consume) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert sorted(seen) == sorted(e.event_id for e in events), "each exactly once"

    # -- attempts and leases ---------------------------------------------------------------

    def test_attempt_is_counted_at_claim(self, provisioned: Transport) -> None:
        self.publish(provisioned, [make_event()])
        [claimed] = self.claim(provisioned, ["g1"])
        assert claimed.attempt == 1

    def test_an_expired_lease_makes_the_event_claimable_again_as_the_next_attempt(
        self, provisioned: Transport
    ) -> None:
        event = make_event()
        self.publish(provisioned, [event])
        self.claim(provisioned, ["g1"])
        self.nothing(provisioned, ["g1"])
        self.expire()
        [second] = self.claim(provisioned, ["g1"])
        assert (second.event_id, second.attempt) == (event.event_id, 2)

    def test_a_lease_renewed_in_time_keeps_the_event_from_being_taken(
        self, provisioned: Transport
    ) -> None:
        """As the worker's heartbeat does: renew with the claim's lease, well within it."""
        lease = max(self.lease, 1.0)
        self.publish(provisioned, [make_event()])
        [claimed] = self.claim(provisioned, ["g1"], lease=lease)
        for _ in range(4):
            time.sleep(lease / 2)
            provisioned.renew([claimed], lease)
            assert_nothing_claimable(provisioned, ["g1"], lease=lease)
        assert provisioned.ack(claimed) is True, "the renewed claim still holds"

    def test_a_released_event_is_claimable_at_once_without_counting_an_attempt(
        self, provisioned: Transport
    ) -> None:
        event = make_event()
        self.publish(provisioned, [event])
        [claimed] = self.claim(provisioned, ["g1"])
        provisioned.release([claimed])
        again = claim_until(provisioned, ["g1"], 1, self.settle + self.lease / 2, lease=self.lease)
        assert _ids(again) == [event.event_id], "released, not left to its lease"
        assert again[0].attempt == claimed.attempt == 1

    def test_ack_after_the_claim_was_lost_returns_false(self, provisioned: Transport) -> None:
        self.publish(provisioned, [make_event()])
        [stale] = self.claim(provisioned, ["g1"])
        self.expire()
        [fresh] = self.claim(provisioned, ["g1"])
        assert provisioned.ack(stale) is False
        assert provisioned.ack(fresh) is True
        self.nothing(provisioned, ["g1"])

    # -- retry ------------------------------------------------------------------------------

    def test_a_retried_event_comes_back_as_the_next_attempt(self, provisioned: Transport) -> None:
        event = make_event()
        self.publish(provisioned, [event])
        [claimed] = self.claim(provisioned, ["g1"])
        provisioned.retry_later(claimed, 0, "RuntimeError: boom")
        [again] = self.claim(provisioned, ["g1"])
        assert (again.event_id, again.attempt) == (event.event_id, 2)

    def test_a_retried_event_waits_for_its_delay_without_holding_back_the_group(
        self, provisioned: Transport
    ) -> None:
        needs_delayed_retry(provisioned)
        failing, later = make_event(), make_event()
        self.publish(provisioned, [failing])
        [claimed] = self.claim(provisioned, ["g1"])
        started = time.monotonic()
        provisioned.retry_later(claimed, self.retry_delay, "RuntimeError: boom")
        assert_nothing_claimable(provisioned, ["g1"], within=min(self.settle, self.retry_delay / 2))
        self.publish(provisioned, [later])
        [next_one] = self.claim(provisioned, ["g1"])
        assert next_one.event_id == later.event_id, "the group moves on meanwhile"
        assert provisioned.ack(next_one)
        [retried] = self.claim(provisioned, ["g1"])
        waited = time.monotonic() - started
        assert (retried.event_id, retried.attempt) == (failing.event_id, 2)
        assert waited >= self.retry_delay - 0.05, f"came back after {waited:.2f}s"

    # -- dead letters ------------------------------------------------------------------------

    def test_a_dead_lettered_event_is_not_delivered_again(self, provisioned: Transport) -> None:
        self.publish(provisioned, [make_event()])
        [claimed] = self.claim(provisioned, ["g1"])
        assert provisioned.dead_letter(claimed) is True
        self.expire()
        self.nothing(provisioned, ["g1"])

    def test_dead_letter_after_the_claim_was_lost_returns_false(
        self, provisioned: Transport
    ) -> None:
        self.publish(provisioned, [make_event()])
        [stale] = self.claim(provisioned, ["g1"])
        self.expire()
        [fresh] = self.claim(provisioned, ["g1"])
        assert provisioned.dead_letter(stale) is False
        assert provisioned.ack(fresh) is True

    def test_a_redelivered_dead_letter_comes_back_to_its_group_only_with_attempts_reset(
        self, provisioned: Transport
    ) -> None:
        event = make_event()
        self.publish(provisioned, [event])
        log_events([event], provisioned.database)
        claimed = self.claim(provisioned, ["g1", "g2"], 2, limit=10)
        for item in claimed:
            provisioned.retry_later(item, 0, "RuntimeError: boom")
        for item in self.claim(provisioned, ["g1", "g2"], 2, limit=10):
            assert item.attempt == 2
            assert provisioned.dead_letter(item) is True
        provisioned.redeliver(event.event_id, "g1")
        [again] = self.claim(provisioned, ["g1", "g2"], limit=10)
        assert (again.group, again.event_id, again.attempt) == ("g1", event.event_id, 1)
        assert again.event is not None and again.event.data == json.loads(event.data)
        assert provisioned.ack(again)
        self.nothing(provisioned, ["g1", "g2"], within=0.5)

    def test_redelivering_an_event_missing_from_the_log_raises_lookup_error(
        self, provisioned: Transport
    ) -> None:
        with pytest.raises(LookupError):
            provisioned.redeliver(uuid.uuid4(), "g1")

    def test_discarding_a_dead_letter_leaves_nothing_to_deliver(
        self, provisioned: Transport
    ) -> None:
        event = make_event()
        self.publish(provisioned, [event])
        [claimed] = self.claim(provisioned, ["g1"])
        assert provisioned.dead_letter(claimed)
        provisioned.discard(event.event_id, "g1")
        provisioned.discard(event.event_id, "g1")  # idempotent
        provisioned.discard(uuid.uuid4(), "g1")  # unknown: nothing to do
        self.nothing(provisioned, ["g1"])

    # -- per-key order ------------------------------------------------------------------------

    def test_ordered_events_of_a_key_come_one_at_a_time_in_publish_order(
        self, provisioned: Transport
    ) -> None:
        needs_ordering(provisioned)
        events = [make_event(KEYED_TYPE, key=key) for key in "aabab"]
        unkeyed = [make_event(KEYED_TYPE) for _ in range(2)]
        self.publish(provisioned, [*events, *unkeyed])
        heads = self.claim(provisioned, ["seq"], 4, limit=10)
        expected = {events[0].event_id, events[2].event_id, *(e.event_id for e in unkeyed)}
        assert set(_ids(heads)) == expected, "each key's head, and every event without a key"
        self.nothing(provisioned, ["seq"])
        assert len(provisioned.ack_many(heads)) == 4
        following = self.claim(provisioned, ["seq"], 2, limit=10)
        assert set(_ids(following)) == {events[1].event_id, events[4].event_id}
        self.nothing(provisioned, ["seq"])
        assert len(provisioned.ack_many(following)) == 2
        [last] = self.claim(provisioned, ["seq"], limit=10)
        assert last.event_id == events[3].event_id
        assert provisioned.ack(last)
        self.nothing(provisioned, ["seq"])

    def test_a_released_or_retried_ordered_event_keeps_its_place(
        self, provisioned: Transport
    ) -> None:
        needs_ordering(provisioned)
        first, second = make_event(KEYED_TYPE, key="k"), make_event(KEYED_TYPE, key="k")
        self.publish(provisioned, [first, second])
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        provisioned.release([claimed])
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        assert claimed.event_id == first.event_id
        provisioned.retry_later(claimed, 0, "RuntimeError: boom")
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        assert (claimed.event_id, claimed.attempt) == (first.event_id, 2)

    def test_a_dead_lettered_key_stays_parked_while_other_keys_flow_until_redelivered(
        self, provisioned: Transport
    ) -> None:
        needs_ordering(provisioned)
        stuck, behind = make_event(KEYED_TYPE, key="a"), make_event(KEYED_TYPE, key="a")
        other = make_event(KEYED_TYPE, key="b")
        self.publish(provisioned, [stuck, behind])
        log_events([stuck, behind], provisioned.database)
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        assert claimed.event_id == stuck.event_id
        assert provisioned.dead_letter(claimed) is True
        self.publish(provisioned, [other])
        [flowing] = self.claim(provisioned, ["seq"], limit=10)
        assert flowing.event_id == other.event_id, "another key flows"
        assert provisioned.ack(flowing)
        self.expire()
        self.nothing(provisioned, ["seq"])
        assert provisioned.status(["seq"])["seq"].parked == 1
        provisioned.redeliver(stuck.event_id, "seq")
        [again] = self.claim(provisioned, ["seq"], limit=10)
        assert (again.event_id, again.attempt) == (stuck.event_id, 1)
        self.nothing(provisioned, ["seq"])
        assert provisioned.ack(again)
        [last] = self.claim(provisioned, ["seq"], limit=10)
        assert last.event_id == behind.event_id

    def test_discarding_a_parked_event_releases_its_key(self, provisioned: Transport) -> None:
        needs_ordering(provisioned)
        stuck, behind = make_event(KEYED_TYPE, key="a"), make_event(KEYED_TYPE, key="a")
        self.publish(provisioned, [stuck, behind])
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        assert provisioned.dead_letter(claimed) is True
        self.nothing(provisioned, ["seq"])
        provisioned.discard(stuck.event_id, "seq")
        [next_one] = self.claim(provisioned, ["seq"], limit=10)
        assert next_one.event_id == behind.event_id

    # -- status, lifecycle, decoding ----------------------------------------------------------

    def test_status_counts_pending_and_in_flight_per_group(self, provisioned: Transport) -> None:
        self.publish(provisioned, [make_event() for _ in range(3)], [(TYPE, "g1", False)])
        deadline = time.monotonic() + self.settle + 10
        while provisioned.status(["g1"])["g1"].pending != 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.claim(provisioned, ["g1"])
        status = provisioned.status(["g1", "g2"])
        assert (status["g1"].pending, status["g1"].in_flight) == (2, 1)
        assert (status["g2"].pending, status["g2"].in_flight) == (0, 0), "asked, so reported"

    def test_setup_can_run_again(self, provisioned: Transport) -> None:
        lines = provisioned.setup(SUBSCRIPTIONS)
        assert isinstance(lines, list)
        assert isinstance(provisioned.setup(SUBSCRIPTIONS, dry_run=True), list)

    def test_a_closed_transport_can_be_used_again(self, provisioned: Transport) -> None:
        self.publish(provisioned, [make_event()])
        provisioned.close()
        [claimed] = self.claim(provisioned, ["g1"])
        provisioned.close()
        assert provisioned.ack(claimed) is True

    def test_events_outlive_the_transport_instance(self, provisioned: Transport) -> None:
        needs_persistence(provisioned)
        event = make_event()
        self.publish(provisioned, [event])
        provisioned.close()
        other = self.reopen(provisioned)
        try:
            [claimed] = self.claim(other, ["g1"])
            assert claimed.event_id == event.event_id
        finally:
            other.close()

    # -- waiting for work ------------------------------------------------------------------

    def _wait_for(self, transport: Transport, groups: Sequence[str]) -> None:
        """``wait`` until it says something arrived, within the settle time."""
        deadline = time.monotonic() + self.settle + 10.0
        while not transport.wait(groups, 0.2):
            assert time.monotonic() < deadline, "wait never said that work arrived"

    def test_what_a_wait_received_is_claimed_next(self, provisioned: Transport) -> None:
        needs_waiting(provisioned)
        event = make_event()
        self.publish(provisioned, [event])
        self._wait_for(provisioned, ["g1"])
        got = provisioned.claim(["g1"], 10, self.lease)
        assert _ids(got) == [event.event_id], "claimed at once, as the wait received it"
        assert provisioned.ack(got[0]) is True
        self.nothing(provisioned, ["g1"], within=self.lease * 1.2)

    def test_close_gives_back_what_a_wait_received(self, provisioned: Transport) -> None:
        """A stopping worker does not leave events to wait out a lease nobody renews."""
        needs_waiting(provisioned)
        event = make_event()
        self.publish(provisioned, [event])
        self._wait_for(provisioned, ["g1"])
        provisioned.close()
        other = self.reopen(provisioned)
        try:
            # A long lease: what a dead consumer holds is not taken over within the window.
            got = claim_until(other, ["g1"], 1, timeout=self.settle + 3.0, lease=60.0)
            assert _ids(got) == [event.event_id], "given back at close, not after a lease"
        finally:
            other.close()

    @pytest.mark.parametrize("raw_data", ["{not json", "[1, 2, 3]"])
    def test_an_undecodable_event_is_claimed_with_a_decode_error(
        self, provisioned: Transport, raw_data: str
    ) -> None:
        bad, good = make_event(raw_data=raw_data), make_event()
        self.publish(provisioned, [bad, good])
        claimed = {c.event_id: c for c in self.claim(provisioned, ["g1"], 2, limit=10)}
        assert claimed[bad.event_id].event is None
        assert claimed[bad.event_id].decode_error
        assert claimed[good.event_id].decode_error is None

    def test_ack_commits_with_the_handlers_transaction(self, provisioned: Transport) -> None:
        needs_acks_in_transaction(provisioned)
        self.publish(provisioned, [make_event()])
        [claimed] = self.claim(provisioned, ["g1"])
        with pytest.raises(RuntimeError), transaction.atomic(using=provisioned.database):
            assert provisioned.ack(claimed) is True
            raise RuntimeError("the handler failed")
        self.nothing(provisioned, ["g1"])
        assert provisioned.ack(claimed) is True, "the rolled-back ack did not happen"
        self.nothing(provisioned, ["g1"])

    # -- through the engine ------------------------------------------------------------------

    def test_engine_handles_a_published_event_once_even_when_redelivered(
        self, transport: Transport
    ) -> None:
        from .. import publish
        from ..engine.worker import Worker
        from ..models import EventRecord, InboxRecord, OutboxMessage

        calls: list[uuid.UUID] = []

        def on_event(event: Event) -> None:
            calls.append(event.id)
            publish(FOLLOW_TYPE, {"after": str(event.id)})  # a write in the handler's transaction

        on_event.__qualname__ = "contract_end_to_end"
        with _registered(Handler(func=on_event, group=E2E_GROUP, event_type=E2E_TYPE)):
            transport.setup(registry.subscriptions([E2E_GROUP]))
            with transaction.atomic(using=transport.database):
                event = publish(E2E_TYPE, {"n": 1}, using=transport.database)
            worker = Worker([E2E_GROUP], transport=transport)
            deadline = time.monotonic() + self.settle + 20
            while not calls and time.monotonic() < deadline:
                if not worker.step():
                    time.sleep(0.05)
            while worker.step():
                pass
            assert calls == [event.id]
            assert InboxRecord.objects.filter(group_name=E2E_GROUP, event_id=event.id).exists()

            transport.redeliver(event.id, E2E_GROUP)
            deadline = time.monotonic() + self.settle + 20
            while not worker.process_batch() and time.monotonic() < deadline:
                time.sleep(0.05)
            while worker.step():
                pass
        assert calls == [event.id], "the redelivery had no second effect"
        follow_ups = EventRecord.objects.filter(type=FOLLOW_TYPE).count()
        assert follow_ups + OutboxMessage.objects.filter(type=FOLLOW_TYPE).count() == 1
        assert InboxRecord.objects.filter(group_name=E2E_GROUP).count() == 1
        self.nothing(transport, [E2E_GROUP])
