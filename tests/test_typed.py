"""Typed events, versions and upcasting: publish, consume, dead-letter retry, redelivery."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db.models.functions import Now
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from django_events import Event, TypedEvent, publish, publish_many
from django_events.engine.relay import Relay
from django_events.envelope import uuid7
from django_events.exceptions import (
    EventContractError,
    EventDeclarationError,
    HandlerRegistrationError,
    InvalidEvent,
    PermanentFailure,
    UnknownEventVersion,
)
from django_events.models import DeadLetter, Delivery, EventRecord, OutboxMessage
from django_events.registry import handler
from django_events.testing import deliver
from django_events.transports import transports
from django_events.transports.base import Transport
from django_events.triage import retry
from django_events.versions import upcast
from tests.testapp import typed_events
from tests.testapp.models import Effect
from tests.testapp.typed_events import Line, ParcelShipped, ParcelShippedV1
from tests.transport_support import published_row, published_rows

pytestmark = pytest.mark.django_db
SHIPPED_AT = dt.datetime(2026, 11, 26, 9, 30, 15, 123456, tzinfo=dt.timezone.utc)


@pytest.fixture(autouse=True)
def _clean_handlers() -> Iterator[None]:
    typed_events.received.clear()
    typed_events.failing.clear()
    yield
    typed_events.received.clear()
    typed_events.failing.clear()


def parcel(**overrides: Any) -> ParcelShipped:
    values: dict[str, Any] = {
        "parcel_id": 7,
        "weight_kg": Decimal("1.250"),
        "carrier": "dhl",
        "shipped_at": SHIPPED_AT,
        "lines": [Line(sku="A-1", quantity=2)],
        "labels": {"fragile": "yes"},
    }
    return ParcelShipped(**{**values, **overrides})


def logged_event(version: int, data: dict[str, Any]) -> Any:
    """An event as another (newer or older) publisher wrote it, bypassing this one's checks."""
    return OutboxMessage.objects.create(
        event_id=uuid7(),
        type="test.parcel_shipped",
        version=version,
        data=json.dumps(data),
        occurred_at=Now(),
    )


# --- declaring ------------------------------------------------------------------------------


def test_declaration_gives_type_version_and_a_frozen_keyword_only_dataclass():
    assert (ParcelShipped.event_type, ParcelShipped.event_version) == ("test.parcel_shipped", 3)
    shipped = parcel()
    assert shipped == parcel() and shipped.envelope is None
    with pytest.raises(AttributeError):
        shipped.carrier = "ups"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ParcelShipped(7, Decimal(1), "dhl")  # type: ignore[misc]


def test_unsupported_field_types_and_reserved_names_fail_at_declaration():
    with pytest.raises(EventDeclarationError, match=r"Bad\.when: unsupported field type"):

        class Bad(TypedEvent, type="test.bad_declared"):
            when: dt.time

    with pytest.raises(EventDeclarationError, match="envelope is reserved"):

        class Reserved(TypedEvent, type="test.bad_declared"):
            envelope: str

    with pytest.raises(EventDeclarationError, match="already declared by"):

        class Again(TypedEvent, type="test.parcel_shipped", version=3):
            parcel_id: int


def test_typed_event_data_is_json_in_the_documented_forms():
    assert parcel().to_data() == {
        "parcel_id": 7,
        "weight_kg": "1.250",
        "carrier": "dhl",
        "shipped_at": "2026-11-26T09:30:15.123456+00:00",
        "lines": [{"sku": "A-1", "quantity": 2}],
        "labels": {"fragile": "yes"},
    }


# --- publishing -----------------------------------------------------------------------------


def test_typed_event_is_published_with_its_type_and_version():
    event = publish(parcel(), key="parcel-7")
    assert (event.type, event.version, event.key) == ("test.parcel_shipped", 3, "parcel-7")
    assert event.data == parcel().to_data()
    stored = published_row(event.id)
    assert (stored["type"], stored["version"]) == ("test.parcel_shipped", 3)
    assert stored["data"] == parcel().to_data()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"parcel_id": "7"}, r"ParcelShipped\.parcel_id: expected int, got str '7'"),
        ({"parcel_id": True}, r"ParcelShipped\.parcel_id: expected int, got bool"),
        ({"weight_kg": 1.25}, r"ParcelShipped\.weight_kg: expected Decimal, got float"),
        ({"weight_kg": Decimal("NaN")}, r"ParcelShipped\.weight_kg: expected Decimal"),
        ({"shipped_at": dt.datetime(2026, 1, 1)}, r"shipped_at: expected an aware datetime"),
        ({"lines": [Line("A", "2")]}, r"ParcelShipped\.lines\[0\]\.quantity: expected int"),
        ({"lines": ("not", "lines")}, r"ParcelShipped\.lines\[0\]: expected Line, got str"),
        ({"labels": {"a": 1}}, r"ParcelShipped\.labels\['a'\]: expected str, got int"),
        ({"carrier": None}, r"ParcelShipped\.carrier: expected str, got None"),
        ({"carier": "dhl"}, r"ParcelShipped has no field 'carier'"),
    ],
)
def test_a_wrong_field_is_named_and_nothing_is_written(values: dict[str, Any], message: str):
    with pytest.raises(InvalidEvent, match=message):
        publish(parcel(**values))
    assert not published_rows().exists()


def test_a_missing_field_is_named():
    with pytest.raises(InvalidEvent, match=r"ParcelShipped\.carrier is required"):
        ParcelShipped(parcel_id=7, weight_kg=Decimal(1))


def test_a_list_changed_after_construction_is_checked_again_at_publish():
    shipped = parcel()
    shipped.lines.append("oops")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match=r"lines\[1\]: expected Line"):
        publish_many([(parcel(parcel_id=8), "p-8"), shipped])
    assert not published_rows().exists(), "all or nothing"


def test_plain_publish_of_a_declared_type_is_checked_against_its_declaration():
    ok = publish("test.parcel_shipped", {"parcel_id": 1, "weight_kg": "2.5", "carrier": "ups"})
    assert ok.version == 3, "the newest declared version by default"
    with pytest.raises(InvalidEvent, match=r"test\.parcel_shipped v3\.carrier: missing"):
        publish("test.parcel_shipped", {"parcel_id": 2, "weight_kg": "2.5"})
    with pytest.raises(InvalidEvent, match=r"v3\.weight_kg: expected Decimal, got str 'heavy'"):
        publish("test.parcel_shipped", {"parcel_id": 2, "weight_kg": "heavy", "carrier": "x"})
    assert published_rows().count() == 1


def test_publishing_an_old_version_is_an_error_unless_allowed():
    old = ParcelShippedV1(parcel_id=1, weight_grams=1500)
    with pytest.raises(InvalidEvent, match="at version 3; publishing version 1 needs"):
        publish(old)
    with pytest.raises(InvalidEvent, match="at version 3; publishing version 2 needs"):
        publish("test.parcel_shipped", {"parcel_id": 1, "weight_kg": "1"}, version=2)
    with pytest.raises(InvalidEvent, match="version 4 is newer than any declared"):
        publish("test.parcel_shipped", {}, version=4)
    assert not published_rows().exists()
    assert publish(old, allow_old_version=True).version == 1


def test_a_typed_event_takes_neither_data_nor_version():
    with pytest.raises(InvalidEvent, match="carries its own data and version"):
        publish(parcel(), {"parcel_id": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="carries its own data and version"):
        publish(parcel(), version=3)


# --- consuming ------------------------------------------------------------------------------


def test_typed_handler_receives_an_instance_with_the_envelope():
    event = publish(parcel(), key="parcel-7")
    deliver(["typed"])
    [got] = typed_events.received
    assert got == parcel()
    assert isinstance(got.weight_kg, Decimal) and got.shipped_at == SHIPPED_AT
    assert got.lines == [Line(sku="A-1", quantity=2)]
    assert isinstance(got.envelope, Event)
    assert (got.envelope.id, got.envelope.key) == (event.id, "parcel-7")
    assert Effect.objects.get().event_id == event.id


def test_a_v1_event_is_upcast_to_v3_on_consume_and_the_log_keeps_v1():
    event = publish(ParcelShippedV1(parcel_id=3, weight_grams=1500), allow_old_version=True)
    deliver(["typed"])
    [got] = typed_events.received
    assert got == ParcelShipped(parcel_id=3, weight_kg=Decimal("1.5"), carrier="unknown")
    assert (got.envelope.version, got.envelope.id) == (3, event.id)
    stored = EventRecord.objects.get()
    assert (stored.version, stored.data) == (1, {"parcel_id": 3, "weight_grams": 1500})


def test_a_handler_declaring_versions_gets_the_lowest_it_accepts():
    publish(ParcelShippedV1(parcel_id=3, weight_grams=1500), allow_old_version=True)
    deliver(["typed-v2"])
    [got] = typed_events.received
    assert (got.version, got.data) == (2, {"parcel_id": 3, "weight_kg": "1.5"})


def test_upcasting_stops_at_the_accepted_version_and_refuses_newer():
    v1 = Event(id=uuid7(), type="test.parcel_shipped", version=1, data={"weight_grams": 10})
    assert upcast(v1, [1, 3]).data == {"weight_grams": 10}
    assert upcast(v1).data == {"weight_kg": "0.01", "carrier": "unknown"}
    assert v1.data == {"weight_grams": 10}, "the delivered event is not changed"
    v3 = Event(id=uuid7(), type="test.parcel_shipped", version=3, data={})
    with pytest.raises(UnknownEventVersion, match=r"newer than the handler accepts \(1, 2\)"):
        upcast(v3, [1, 2])


def test_an_unknown_future_version_is_a_dead_letter_at_once_with_its_reason():
    row = logged_event(4, {"parcel_id": 1, "weight_kg": "1", "carrier": "x", "drone": "d-1"})
    deliver(["typed"])
    dead = DeadLetter.objects.get()
    assert (dead.event_id, dead.group, dead.attempts) == (row.event_id, "typed", 1)
    assert dead.error_class == "django_events.exceptions.UnknownEventVersion"
    assert "version 4 is newer than any version this consumer knows (up to 3)" in (
        dead.error_message
    )
    assert not typed_events.received
    assert not Delivery.objects.filter(group_name="typed").exists(), "not retried"


def test_data_that_does_not_fit_the_declaration_is_a_dead_letter_at_once():
    logged_event(3, {"parcel_id": 1, "weight_kg": "1"})
    deliver(["typed"])
    dead = DeadLetter.objects.get()
    assert dead.error_class == "django_events.exceptions.EventContractError"
    assert dead.error_message == "test.parcel_shipped v3.carrier: missing."
    assert dead.attempts == 1
    assert issubclass(EventContractError, PermanentFailure)


def test_a_handler_may_raise_permanent_failure_itself():
    @handler("test.parcel_refused", group="typed-permanent")
    def refuse(event: Event) -> None:
        raise PermanentFailure("this parcel can never be handled")

    try:
        publish("test.parcel_refused", {})
        deliver(["typed-permanent"])
        dead = DeadLetter.objects.get()
        assert (dead.attempts, dead.error_message) == (1, "this parcel can never be handled")
    finally:
        from django_events.registry import registry

        registry._handlers.pop(("typed-permanent", "test.parcel_refused"))


def test_an_ordinary_failure_is_still_retried():
    typed_events.failing.add(5)
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 0}):
        publish(parcel(parcel_id=5))
        deliver(["typed"])
        deliver(["typed"])
    assert DeadLetter.objects.get().attempts == 2


def test_a_v1_dead_letter_retried_is_upcast_to_v3():
    typed_events.failing.add(3)
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1}):
        event = publish(ParcelShippedV1(parcel_id=3, weight_grams=250), allow_old_version=True)
        deliver(["typed"])
    dead = DeadLetter.objects.get()
    assert dead.error_class == "RuntimeError"
    typed_events.failing.clear()
    assert len(retry([dead], None, actor="test").done) == 1
    deliver(["typed"])
    [got] = typed_events.received
    assert got == ParcelShipped(parcel_id=3, weight_kg=Decimal("0.25"), carrier="unknown")
    assert got.envelope.id == event.id


@pytest.mark.parametrize("path", ["database transport", "base transport"])
def test_a_logged_v1_event_redelivered_to_a_group_is_upcast(path: str):
    """A group that never had the event (new, or fed from history) gets it from the log."""
    event = publish(ParcelShippedV1(parcel_id=9, weight_grams=2000), allow_old_version=True)
    Relay().run_once()
    Delivery.objects.filter(group_name="typed").delete()
    transport = transports["default"]
    if path == "base transport":
        Transport.redeliver(transport, event.id, "typed")
    else:
        transport.redeliver(event.id, "typed")
    assert deliver(["typed"]) == 1
    [got] = typed_events.received
    assert got == ParcelShipped(parcel_id=9, weight_kg=Decimal("2"), carrier="unknown")


def test_registering_typed_handlers_is_checked():
    with pytest.raises(HandlerRegistrationError, match="versions= does not apply"):
        handler(ParcelShipped, group="typed", versions=[3])
    with pytest.raises(HandlerRegistrationError, match="versions must be positive ints"):
        handler("test.parcel_shipped", group="typed-v2", versions=[0])

    class Abstract(TypedEvent):
        parcel_id: int

    with pytest.raises(HandlerRegistrationError, match="declares no event type"):
        handler(Abstract, group="typed")
    with pytest.raises(EventDeclarationError, match="declares no event type"):
        Abstract(parcel_id=1)


# --- the JSON round trip ----------------------------------------------------------------------

utc_offsets = st.builds(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
)
parcels = st.builds(
    ParcelShipped,
    parcel_id=st.integers(),
    weight_kg=st.decimals(allow_nan=False, allow_infinity=False),
    carrier=st.text(),
    shipped_at=st.none() | st.datetimes(timezones=utc_offsets),
    lines=st.lists(st.builds(Line, sku=st.text(), quantity=st.integers())),
    labels=st.dictionaries(st.text(), st.text()),
)


@settings(max_examples=200, deadline=None)
@given(parcels)
def test_what_a_typed_event_publishes_is_what_its_handler_gets_back(shipped: ParcelShipped):
    data = json.loads(json.dumps(shipped.to_data()))
    assert ParcelShipped.from_data(data) == shipped


def test_a_captured_event_turns_back_into_its_instance():
    from django_events.testing import capture_events

    with capture_events() as captured:
        publish(parcel(), key="parcel-7")
    shipped = ParcelShipped.from_event(captured.assert_published("test.parcel_shipped"))
    assert shipped == parcel() and shipped.envelope.key == "parcel-7"
    with pytest.raises(EventContractError, match=r"ParcelShippedV1 is test\.parcel_shipped v1"):
        ParcelShippedV1.from_event(shipped.envelope)
