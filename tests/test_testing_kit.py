"""``django_events.testing``: ``capture_events()``, ``deliver()`` and the pytest fixtures."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings

from django_events import publish
from django_events.models import DeadLetter, Delivery, EventRecord, OutboxMessage
from django_events.testing import CapturedEvents, capture_events, deliver
from tests.testapp.models import Effect
from tests.transport_support import published_data, published_rows


class Boom(Exception):
    pass


def ns(captured: CapturedEvents) -> list[Any]:
    return [event.data.get("n") for event in captured]


# --- capture_events() inside the test's transaction -----------------------------------------


@pytest.mark.django_db
def test_events_published_in_a_committed_block_are_captured_in_order() -> None:
    with capture_events() as captured:
        first = publish("test.happened", {"n": 1})
        with transaction.atomic():
            publish("test.sequenced", {"n": 2}, key="k")
            with transaction.atomic():
                publish("test.happened", {"n": 3})
        publish("test.chained", {"n": 4})

    assert ns(captured) == [1, 2, 3, 4]
    assert captured.types == ["test.happened", "test.sequenced", "test.happened", "test.chained"]
    assert len(captured) == 4
    assert captured.events[0] is first  # the very envelope publish() returned
    assert [e.data["n"] for e in captured.of_type("test.happened")] == [1, 3]


@pytest.mark.django_db
def test_rolled_back_savepoint_event_is_not_captured() -> None:
    with capture_events() as captured:
        publish("test.happened", {"n": 1})
        with pytest.raises(Boom), transaction.atomic():
            publish("test.happened", {"n": 2})
            raise Boom
        publish("test.happened", {"n": 3})

    assert ns(captured) == [1, 3]
    assert published_rows().count() == 2  # what publish() wrote agrees


@pytest.mark.django_db
def test_event_in_an_inner_savepoint_rolled_back_by_its_outer_one_is_not_captured() -> None:
    with capture_events() as captured:
        with pytest.raises(Boom), transaction.atomic():
            with transaction.atomic():
                publish("test.happened", {"n": 1})  # its own savepoint is released...
            raise Boom  # ...but the enclosing one rolls back
        publish("test.happened", {"n": 2})

    assert ns(captured) == [2]


@pytest.mark.django_db
def test_events_outside_the_block_are_not_captured() -> None:
    publish("test.happened", {"n": 1})
    with capture_events() as captured:
        publish("test.happened", {"n": 2})
    publish("test.happened", {"n": 3})

    assert ns(captured) == [2]


@pytest.mark.django_db
def test_nested_captures_each_see_their_own_block() -> None:
    with capture_events() as outer:
        publish("test.happened", {"n": 1})
        with capture_events() as inner:
            publish("test.happened", {"n": 2})

    assert ns(outer) == [1, 2]
    assert ns(inner) == [2]


@pytest.mark.django_db
def test_refused_publish_is_not_captured() -> None:
    with capture_events() as captured, pytest.raises(ValueError):
        publish("NotAType", {"n": 1})
    assert captured.events == []


# --- capture_events() with real commits -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_outside_a_test_transaction_only_committed_events_are_captured() -> None:
    with capture_events() as captured:
        publish("test.happened", {"n": 1})  # autocommit: committed at once
        with transaction.atomic():
            publish("test.happened", {"n": 2})
            assert ns(captured) == [1, 2]  # pending in an open transaction: counted
        assert ns(captured) == [1, 2]
        with pytest.raises(Boom), transaction.atomic():
            publish("test.happened", {"n": 3})
            raise Boom
        with transaction.atomic():
            publish("test.happened", {"n": 4})
            with pytest.raises(Boom), transaction.atomic():
                publish("test.happened", {"n": 5})
                raise Boom

    assert ns(captured) == [1, 2, 4]
    assert published_data() == [{"n": 1}, {"n": 2}, {"n": 4}]


# --- assert_published -----------------------------------------------------------------------


@pytest.mark.django_db
def test_assert_published_returns_the_one_matching_event() -> None:
    with capture_events() as captured:
        publish("order.placed", {"order_id": 1, "total": Decimal("19.90")})
        placed = publish("order.placed", {"order_id": 2, "total": Decimal("5.00")})
        publish("order.shipped", {"order_id": 2})

    found = captured.assert_published("order.placed", order_id=2)
    assert found is placed
    assert captured.assert_published("order.placed", total="19.90").data["order_id"] == 1
    assert captured.assert_published("order.shipped").data == {"order_id": 2}


@pytest.mark.django_db
def test_assert_published_fails_clearly_when_nothing_matches() -> None:
    with capture_events() as captured:
        publish("order.placed", {"order_id": 1})

    with pytest.raises(AssertionError) as caught:
        captured.assert_published("order.placed", order_id=9)
    message = str(caught.value)
    assert "Expected one 'order.placed' event with {'order_id': 9}, found 0" in message
    assert "published: ['order.placed']" in message

    with pytest.raises(AssertionError, match="found 0"):
        captured.assert_published("order.cancelled")
    with pytest.raises(AssertionError, match="found 0"):
        captured.assert_published("order.placed", total="1")  # a key the data lacks


@pytest.mark.django_db
def test_assert_published_fails_clearly_when_several_match() -> None:
    with capture_events() as captured:
        publish("order.placed", {"order_id": 1, "shop": "a"})
        publish("order.placed", {"order_id": 2, "shop": "a"})

    with pytest.raises(
        AssertionError, match=re.escape("found 2; published: ['order.placed', 'order.placed']")
    ):
        captured.assert_published("order.placed", shop="a")
    with pytest.raises(AssertionError, match="found 2"):
        captured.assert_published("order.placed")


@pytest.mark.django_db
def test_assert_published_ignores_rolled_back_events() -> None:
    with capture_events() as captured, pytest.raises(Boom), transaction.atomic():
        publish("order.placed", {"order_id": 1})
        raise Boom

    with pytest.raises(AssertionError, match="found 0; published: \\[\\]"):
        captured.assert_published("order.placed", order_id=1)


# --- deliver() ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_deliver_runs_every_subscribed_handler_and_returns_the_count() -> None:
    event = publish("test.happened", {"n": 7}, key="k-7")

    assert deliver() == 2
    effects = Effect.objects.order_by("group")
    assert [(e.group, e.event_id, e.n, e.key) for e in effects] == [
        ("alpha", event.id, 7, "k-7"),
        ("beta", event.id, 7, "k-7"),
    ]
    assert EventRecord.objects.filter(id=event.id).exists()
    assert not OutboxMessage.objects.exists()
    assert not Delivery.objects.exists()
    assert deliver() == 0  # nothing left
    assert Effect.objects.count() == 2


@pytest.mark.django_db
def test_deliver_limited_to_groups_runs_only_those() -> None:
    event = publish("test.happened", {"n": 1})

    assert deliver(["alpha"]) == 1
    assert list(Effect.objects.values_list("group", flat=True)) == ["alpha"]
    assert deliver(["beta"]) == 1
    assert sorted(Effect.objects.filter(event_id=event.id).values_list("group", flat=True)) == [
        "alpha",
        "beta",
    ]


@pytest.mark.django_db
@pytest.mark.database_transport  # the log transport's publish() leaves nothing to relay
def test_deliver_without_relay_handles_only_what_was_relayed() -> None:
    publish("test.happened", {"n": 1})

    assert deliver(relay=False) == 0
    assert OutboxMessage.objects.count() == 1
    assert deliver() == 2


@pytest.mark.django_db
def test_deliver_runs_events_published_by_handlers_too() -> None:
    publish("test.chained", {"n": 1})
    assert deliver() == 1
    assert EventRecord.objects.filter(type="test.followed").count() == 1
    assert not OutboxMessage.objects.exists()  # the follow-up was relayed in the same call


@pytest.mark.django_db
@override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 60})
def test_deliver_does_not_raise_when_a_handler_fails_and_leaves_later_retries() -> None:
    publish("test.happened", {"n": 1, "fail": True})
    assert deliver() == 0
    assert not Effect.objects.exists()
    assert Delivery.objects.filter(attempts=1).count() == 2  # both groups owe a retry
    assert deliver() == 0  # the retry is not due yet
    assert Delivery.objects.filter(attempts=1).count() == 2
    assert not DeadLetter.objects.exists()


@pytest.mark.django_db
@override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0, "MAX_ATTEMPTS": 3})
def test_deliver_runs_due_retries_through_to_a_dead_letter() -> None:
    event = publish("test.happened", {"n": 1, "fail": True})
    assert deliver() == 0
    assert sorted(DeadLetter.objects.values_list("group", "attempts", "event_id")) == [
        ("alpha", 3, event.id),
        ("beta", 3, event.id),
    ]
    assert not Delivery.objects.exists()


@pytest.mark.django_db
def test_events_of_a_rolled_back_savepoint_are_never_delivered() -> None:
    with pytest.raises(Boom), transaction.atomic():
        publish("test.happened", {"n": 1})
        raise Boom
    assert deliver() == 0
    assert not Effect.objects.exists()


# --- the pytest plugin ----------------------------------------------------------------------


def test_plugin_is_registered_through_the_entry_point(pytestconfig: pytest.Config) -> None:
    from django_events.testing import pytest_plugin

    assert pytestconfig.pluginmanager.get_plugin("django_events") is pytest_plugin


@pytest.mark.django_db(transaction=True)
def test_captured_events_fixture_counts_committed_events(
    captured_events: CapturedEvents,
) -> None:
    publish("test.happened", {"n": 1})
    with pytest.raises(Boom), transaction.atomic():
        publish("test.happened", {"n": 2})
        raise Boom

    assert ns(captured_events) == [1]
    captured_events.assert_published("test.happened", n=1)


def test_deliver_events_fixture_runs_handlers(deliver_events: Any) -> None:
    publish("test.happened", {"n": 3})
    assert deliver_events(["alpha"]) == 1
    assert deliver_events() == 1
    assert sorted(Effect.objects.filter(n=3).values_list("group", flat=True)) == ["alpha", "beta"]


@pytest.mark.django_db(transaction=True)
def test_fixtures_work_together_in_a_transactional_test(
    captured_events: CapturedEvents, deliver_events: Any
) -> None:
    event = publish("test.chained", {"n": 5})
    assert deliver_events() == 1
    captured_events.assert_published("test.chained", n=5)
    followed = captured_events.assert_published("test.followed", after=str(event.id))
    assert followed.causation_id == event.id
