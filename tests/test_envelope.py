"""``publish()``: what it refuses, how it encodes, and the envelope it returns."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import Decimal
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings

from django_events import Event, publish
from django_events import envelope as envelope_module
from django_events.envelope import MAX_NESTING, decode_json, from_cloudevent, uuid7
from django_events.exceptions import (
    EventsConfigurationError,
    InvalidEvent,
    InvalidEventType,
    PayloadNotSerializable,
    PayloadTooLarge,
    UndecodableEvent,
)
from django_events.models import DeadLetter, EventRecord
from django_events.outbox import handling
from django_events.signals import event_handled
from django_events.testing import deliver
from tests.testapp.models import Effect, Order
from tests.transport_support import published_row, published_rows

LIMIT = 1024


@pytest.fixture
def outbox_unchanged(db: Any) -> Any:
    """Asserts, after the test, that ``publish()`` wrote nothing (``published_rows``)."""
    before = published_rows().count()
    yield
    assert published_rows().count() == before


@pytest.fixture
def handled_events() -> Any:
    """The events handlers received, as ``(group, event)``, from ``event_handled``."""
    received: list[tuple[str, Event]] = []

    def receiver(sender: Any, event: Event, group: str, **kwargs: Any) -> None:
        received.append((group, event))

    event_handled.connect(receiver, weak=False)
    yield received
    event_handled.disconnect(receiver)


def nested_lists(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# --- event types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    [
        "OrderPlaced",
        "order",
        "order..placed",
        "order.placed.",
        ".order.placed",
        "order.Placed",
        "order placed.now",
        "a." + "b" * 199,  # 201 characters, otherwise well formed
        123,
        None,
        b"order.placed",
    ],
)
def test_invalid_event_type_is_refused_and_nothing_is_written(
    event_type: Any, outbox_unchanged: None
) -> None:
    with pytest.raises(InvalidEventType) as caught:
        publish(event_type, {"n": 1})
    assert isinstance(caught.value, ValueError)
    assert repr(event_type)[:50] in str(caught.value)
    assert "order.placed" in str(caught.value)  # the message shows the expected form


def test_event_type_of_exactly_200_characters_is_accepted(db: None) -> None:
    event_type = "a." + "b" * 198
    assert len(event_type) == 200
    event = publish(event_type, {})
    assert published_row(event.id)["type"] == event_type


@pytest.mark.parametrize("event_type", ["order.placed", "billing.invoice_paid", "a1.b-2.c_3"])
def test_dotted_lower_case_event_types_are_accepted(event_type: str, db: None) -> None:
    assert publish(event_type, {}).type == event_type


@pytest.mark.parametrize("event_type", [["order.placed"], {"type": "order.placed"}])
def test_unhashable_event_type_raises_invalid_event_type(
    event_type: Any, outbox_unchanged: None
) -> None:
    with pytest.raises(InvalidEventType):
        publish(event_type, {})


# --- data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [["n", 1], "n=1", None, 42, [("n", 1)]])
def test_data_that_is_not_a_dict_is_refused(data: Any, outbox_unchanged: None) -> None:
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        publish("test.happened", data)


def test_unserializable_value_is_refused_with_its_path(outbox_unchanged: None) -> None:
    with pytest.raises(PayloadNotSerializable) as caught:
        publish("order.placed", {"id": 1, "items": [{"sku": "A"}, {"price": object()}]})
    message = str(caught.value)
    assert "data['items'][1]['price']" in message
    assert "object" in message
    # Catchable as either built-in it refines.
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, ValueError)


def test_unserializable_value_in_first_item_names_index_zero(outbox_unchanged: None) -> None:
    with pytest.raises(PayloadNotSerializable, match=r"data\['items'\]\[0\]\['price'\]"):
        publish("order.placed", {"items": [{"price": object()}]})


def test_set_value_is_refused_naming_the_field_and_its_type(outbox_unchanged: None) -> None:
    with pytest.raises(PayloadNotSerializable, match=r"data\['tags'\] is a set"):
        publish("order.placed", {"tags": {"a", "b"}})


def test_non_string_key_is_refused_naming_the_key(outbox_unchanged: None) -> None:
    with pytest.raises(PayloadNotSerializable, match=r"non-string key \(1, 2\)"):
        publish("order.placed", {"grid": {(1, 2): "x"}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused(value: float, outbox_unchanged: None) -> None:
    with pytest.raises(PayloadNotSerializable, match="cannot be encoded as JSON"):
        publish("order.placed", {"price": value})


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (b"raw", r"data\['v'\] is a bytes"),
        (dt.time(3, 4, tzinfo=dt.timezone.utc), r"data\['v'\] is a time"),
        (Order(total=Decimal("1.00")), r"data\['v'\] is a Order"),
    ],
)
def test_values_json_cannot_hold_are_refused_naming_the_field(
    value: Any, named: str, outbox_unchanged: None
) -> None:
    with pytest.raises(PayloadNotSerializable, match=named):
        publish("order.placed", {"v": value})


def test_circular_data_is_refused_as_not_serializable(outbox_unchanged: None) -> None:
    data: dict[str, Any] = {"n": 1}
    data["self"] = data
    with pytest.raises(PayloadNotSerializable):
        publish("test.happened", data)


def test_mapping_that_is_not_a_dict_is_accepted_as_data(db: None, handled_events: Any) -> None:
    event = publish("test.happened", MappingProxyType({"n": 1}))
    assert event.data == {"n": 1}
    deliver()
    assert [e.data for _, e in handled_events] == [{"n": 1}, {"n": 1}]


def test_data_nested_deeper_than_consumers_accept_is_refused(outbox_unchanged: None) -> None:
    # The dict is one level, so these lists make MAX_NESTING + 1 levels in all.
    with pytest.raises(InvalidEvent, match=f"nests deeper than {MAX_NESTING} levels"):
        publish("test.happened", {"n": 1, "tree": nested_lists(MAX_NESTING)})


def test_data_nested_exactly_as_deep_as_consumers_accept_is_delivered(db: None) -> None:
    event = publish("test.happened", {"n": 1, "tree": nested_lists(MAX_NESTING - 1)})
    assert deliver() == 2
    assert not DeadLetter.objects.exists()
    assert Effect.objects.filter(event_id=event.id).count() == 2


def test_brackets_in_strings_do_not_count_towards_the_nesting_limit(db: None) -> None:
    event = publish("test.happened", {"n": 1, "text": "[{" * 200})
    assert deliver() == 2
    assert Effect.objects.filter(event_id=event.id).count() == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"data": {"n": 1, "note": "a\x00b"}},
        {"data": {"n": 1, "nested": [{"a\x00": 1}]}},
        {"data": {"n": 1}, "key": "order\x001"},
        {"data": {"n": 1}, "metadata": {"trace": "t\x00"}},
    ],
)
def test_nul_character_is_refused_because_postgresql_cannot_store_it(
    fields: dict[str, Any], outbox_unchanged: None
) -> None:
    data = fields.pop("data")
    with pytest.raises(InvalidEvent):
        publish("test.happened", data, **fields)


def test_escaped_backslash_before_u0000_is_not_mistaken_for_nul(db: None) -> None:
    text = "C:\\u0000dir \\\\u0000"  # backslashes followed by the letters u0000
    event = publish("test.happened", {"n": 1, "path": text})
    assert event.data["path"] == text
    assert deliver() == 2
    assert EventRecord.objects.get(id=event.id).data["path"] == text


def test_refused_nul_event_does_not_block_later_events(db: None) -> None:
    with pytest.raises(InvalidEvent):
        publish("test.happened", {"n": 1, "note": "a\x00b"})
    later = publish("test.happened", {"n": 2})
    deliver()
    assert set(Effect.objects.filter(event_id=later.id).values_list("group", flat=True)) == {
        "alpha",
        "beta",
    }


# --- size -----------------------------------------------------------------------------------


@override_settings(DJANGO_EVENTS={"MAX_PAYLOAD_BYTES": LIMIT})
def test_payload_over_the_limit_is_refused_and_nothing_is_written(
    outbox_unchanged: None,
) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        publish("test.happened", {"blob": "x" * 2000})
    assert "MAX_PAYLOAD_BYTES" in str(caught.value)
    assert str(LIMIT) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@override_settings(DJANGO_EVENTS={"MAX_PAYLOAD_BYTES": LIMIT})
def test_payload_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(db: None) -> None:
    overhead = len(json.dumps({"b": ""}, separators=(",", ":")))
    event = publish("test.happened", {"b": "x" * (LIMIT - overhead)})
    stored = published_row(event.id)["data"]
    assert len(json.dumps(stored, separators=(",", ":")).encode()) == LIMIT
    with pytest.raises(PayloadTooLarge):
        publish("test.happened", {"b": "x" * (LIMIT - overhead + 1)})


@override_settings(DJANGO_EVENTS={"MAX_PAYLOAD_BYTES": LIMIT})
def test_payload_size_is_measured_on_the_encoded_form(outbox_unchanged: None) -> None:
    text = "\u00e9" * 600  # 600 characters, but 3,600 bytes once JSON-escaped
    with pytest.raises(PayloadTooLarge, match="is 3611 bytes encoded"):
        publish("test.happened", {"text": text})


@override_settings(DJANGO_EVENTS={"MAX_PAYLOAD_BYTES": LIMIT})
def test_refused_payload_leaves_the_callers_transaction_usable(db: None) -> None:
    before = published_rows().count()
    with transaction.atomic():
        order = Order.objects.create(total=Decimal("9.99"))
        with pytest.raises(PayloadTooLarge):
            publish("order.placed", {"order": order.pk, "blob": "x" * 2000})
        order.total = Decimal("10.00")
        order.save()
        publish("order.placed", {"order": order.pk})
    assert Order.objects.get(pk=order.pk).total == Decimal("10.00")
    assert published_rows().count() == before + 1
    assert published_rows().filter(type="order.placed").count() == 1


# --- encoding -------------------------------------------------------------------------------


def test_rich_values_encode_as_documented_strings(db: None, handled_events: Any) -> None:
    moment = dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)
    plus_two = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    order_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    expected = {
        "n": 1,
        "price": "12.50",
        "at": "2024-01-02T03:04:05.123Z",
        "local": "2024-01-02T03:04:05+02:00",
        "day": "2024-01-02",
        "order": "12345678-1234-5678-1234-567812345678",
        "clock": "03:04:05.678",
        "wait": "P0DT01H00M00S",
        "pair": [1, "two"],
        "by_id": {"1": "a"},
        "nested": [{"amount": "0.10"}],
    }
    event = publish(
        "test.happened",
        {
            "n": 1,
            "price": Decimal("12.50"),
            "at": moment,
            "local": plus_two,
            "day": dt.date(2024, 1, 2),
            "order": order_id,
            "clock": dt.time(3, 4, 5, 678901),
            "wait": dt.timedelta(hours=1),
            "pair": (1, "two"),
            "by_id": {1: "a"},
            "nested": [{"amount": Decimal("0.10")}],
        },
    )
    assert event.data == expected  # the returned envelope holds what handlers will get
    assert deliver() == 2
    received = {group: e for group, e in handled_events}
    assert set(received) == {"alpha", "beta"}
    assert received["alpha"].data == expected
    assert received["beta"].data == expected
    assert EventRecord.objects.get(id=event.id).data == expected


def test_unicode_text_round_trips_to_the_handler(db: None, handled_events: Any) -> None:
    data = {"n": 1, "name": "Zo\u00eb \u2603 \U0001f600", "quote": 'say "hi"\n'}
    publish("test.happened", data)
    deliver()
    assert [e.data for _, e in handled_events] == [data, data]


# --- version, key, metadata -----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_version_must_be_a_positive_int(version: Any, outbox_unchanged: None) -> None:
    with pytest.raises(InvalidEvent, match="version must be a positive int"):
        publish("test.happened", {}, version=version)


def test_version_none_means_the_newest_known_and_1_for_an_undeclared_type(db: None) -> None:
    assert publish("test.happened", {}, version=None).version == 1


def test_version_is_stored_and_delivered(db: None, handled_events: Any) -> None:
    event = publish("test.happened", {"n": 1}, version=3)
    assert event.version == 3
    deliver()
    assert {e.version for _, e in handled_events} == {3}


@pytest.mark.parametrize("key", ["", "k" * 201, 5, b"order-1", ["order-1"]])
def test_key_must_be_a_non_empty_str_of_at_most_200(key: Any, outbox_unchanged: None) -> None:
    with pytest.raises(InvalidEvent, match="key must be a non-empty str"):
        publish("test.happened", {}, key=key)


def test_key_of_200_characters_is_stored_and_delivered(db: None, handled_events: Any) -> None:
    event = publish("test.happened", {"n": 1}, key="k" * 200)
    assert published_row(event.id)["key"] == "k" * 200
    deliver()
    assert {e.key for _, e in handled_events} == {"k" * 200}


@pytest.mark.parametrize("metadata", [{"attempt": 1}, {1: "a"}, ["a"], "trace=1", {"trace": None}])
def test_metadata_must_map_str_to_str(metadata: Any, outbox_unchanged: None) -> None:
    with pytest.raises(InvalidEvent, match="metadata must be a dict of str to str"):
        publish("test.happened", {}, metadata=metadata)


def test_metadata_is_stored_and_delivered(db: None, handled_events: Any) -> None:
    event = publish("test.happened", {"n": 1}, metadata={"trace": "abc", "user": "7"})
    assert event.metadata == {"trace": "abc", "user": "7"}
    deliver()
    assert [e.metadata for _, e in handled_events] == [{"trace": "abc", "user": "7"}] * 2


# --- ids ------------------------------------------------------------------------------------


def test_uuid7_ids_are_unique_time_ordered_and_version_7() -> None:
    start_ms = dt.datetime.now(dt.timezone.utc).timestamp() * 1000
    ids = [uuid7() for _ in range(10_000)]
    end_ms = dt.datetime.now(dt.timezone.utc).timestamp() * 1000
    assert len(set(ids)) == 10_000
    assert sorted(ids) == ids
    assert sorted(str(i) for i in ids) == [str(i) for i in ids]  # the text sorts the same way
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert all((i.int >> 80) >= int(start_ms) - 1 for i in ids)
    assert ids[-1].int >> 80 <= int(end_ms) + 50  # may run ahead a few ms, never far


# --- the envelope ---------------------------------------------------------------------------


def test_returned_event_describes_what_was_written(db: None) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    event = publish("order.placed", {"order": 1}, key="order-1")
    after = dt.datetime.now(dt.timezone.utc)

    assert isinstance(event, Event)
    assert isinstance(event.id, uuid.UUID)
    assert event.id.version == 7
    assert event.type == "order.placed"
    assert event.data == {"order": 1}
    assert event.version == 1
    assert event.key == "order-1"
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.utcoffset() == dt.timedelta(0)
    assert before <= event.occurred_at <= after
    assert event.source == settings.SETTINGS_MODULE.split(".")[0]
    assert event.correlation_id == event.id  # a root event starts its own correlation
    assert event.causation_id is None
    assert event.metadata == {}

    row = published_row(event.id)
    assert (row["type"], row["key"], row["version"], row["data"]) == (
        "order.placed",
        "order-1",
        1,
        {"order": 1},
    )
    assert row["correlation_id"] == event.id
    assert row["causation_id"] is None
    assert row["occurred_at"] == event.occurred_at


@override_settings(DJANGO_EVENTS={"SOURCE": "shop"})
def test_source_setting_is_stamped_on_events(db: None) -> None:
    assert publish("order.placed", {}).source == "shop"


def test_event_published_by_a_handler_is_caused_by_the_handled_event(db: None) -> None:
    chained = publish("test.chained", {"n": 1})
    assert deliver() == 1

    cause = EventRecord.objects.get(id=chained.id)
    assert cause.correlation_id == chained.id
    assert cause.causation_id is None
    followed = EventRecord.objects.get(type="test.followed")
    assert followed.data == {"after": str(chained.id)}
    assert followed.correlation_id == chained.correlation_id
    assert followed.causation_id == chained.id

    # Once the handler has returned, publishing is back at the root.
    later = publish("test.happened", {"n": 2})
    assert later.causation_id is None
    assert later.correlation_id == later.id


def test_correlation_id_is_inherited_through_every_hop(db: None) -> None:
    root = Event(id=uuid7(), type="test.root", data={}, correlation_id=uuid7())
    with handling(root):
        chained = publish("test.chained", {"n": 1})
    assert chained.correlation_id == root.correlation_id
    assert chained.causation_id == root.id

    deliver()
    followed = EventRecord.objects.get(type="test.followed")
    assert followed.correlation_id == root.correlation_id  # not the handled event's own id
    assert followed.causation_id == chained.id


def test_publish_to_a_database_not_in_outbox_databases_is_refused(outbox_unchanged: None) -> None:
    with pytest.raises(EventsConfigurationError) as caught:
        publish("test.happened", {}, using="other")
    assert "'other'" in str(caught.value)
    assert "OUTBOX_DATABASES" in str(caught.value)
    assert isinstance(caught.value, ImproperlyConfigured)


# --- CloudEvents ----------------------------------------------------------------------------


def test_cloudevent_form_names_fields_as_cloudevents_does(db: None) -> None:
    event = publish("order.placed", {"total": Decimal("5.00")}, key="o-1", version=2)
    body = event.to_cloudevent()
    assert body == {
        "specversion": "1.0",
        "id": str(event.id),
        "type": "order.placed",
        "source": event.source,
        "time": event.occurred_at.isoformat(),
        "datacontenttype": "application/json",
        "dataversion": 2,
        "data": {"total": "5.00"},
        "partitionkey": "o-1",
        "correlationid": str(event.id),
    }
    json.dumps(body)  # the wire form is plain JSON


def test_cloudevent_round_trips_as_dict_text_and_bytes(db: None) -> None:
    root = Event(id=uuid7(), type="test.root", data={}, correlation_id=uuid7())
    with handling(root):
        event = publish(
            "order.placed",
            {"total": Decimal("5.00"), "lines": [{"sku": "A", "qty": 2}]},
            key="o-1",
            version=2,
            metadata={"trace": "t-1"},
        )
    body = event.to_cloudevent()
    assert body["causationid"] == str(root.id)
    assert body["metadata"] == {"trace": "t-1"}
    text = json.dumps(body)
    assert from_cloudevent(body, 10_000) == event
    assert from_cloudevent(text, 10_000) == event
    assert from_cloudevent(text.encode(), 10_000) == event


def test_cloudevent_without_optional_fields_gets_defaults() -> None:
    event = from_cloudevent(
        {
            "id": "01890a5d-ac96-774b-bcce-b302099a8057",
            "type": "order.placed",
            "time": "2024-01-02T03:04:05Z",
            "data": {"n": 1},
        },
        10_000,
    )
    assert event.version == 1
    assert event.key is None
    assert event.source == ""
    assert event.correlation_id is None
    assert event.causation_id is None
    assert event.metadata == {}
    assert event.occurred_at == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({}, "id, type, time, data"),
        ({"id": "x", "type": "order.placed"}, "time, data"),
        ({"id": "x", "type": "order.placed", "time": "2024-01-01T00:00:00Z"}, "data"),
    ],
)
def test_cloudevent_missing_fields_are_named(body: dict[str, Any], missing: str) -> None:
    with pytest.raises(UndecodableEvent, match=re.escape(f"is missing {missing}.") + "$"):
        from_cloudevent(body, 10_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "OrderPlaced"}, "Invalid event type"),
        ({"id": "not-a-uuid"}, "'id' is not a UUID"),
        ({"time": "yesterday"}, "not ISO 8601"),
        ({"data": [1, 2]}, "Event data is a list"),
        ({"dataversion": 0}, "version must be a positive int"),
        ({"metadata": {"a": 1}}, "metadata must be a dict of str to str"),
    ],
)
def test_cloudevent_with_invalid_field_is_undecodable(change: dict[str, Any], message: str) -> None:
    body = {
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "type": "order.placed",
        "time": "2024-01-02T03:04:05+00:00",
        "data": {"n": 1},
        **change,
    }
    with pytest.raises(UndecodableEvent, match=message):
        from_cloudevent(body, 10_000)


def test_cloudevent_that_is_not_an_object_is_undecodable() -> None:
    with pytest.raises(UndecodableEvent, match="must be a JSON object"):
        from_cloudevent("[1, 2]", 10_000)


# --- decoding untrusted input ---------------------------------------------------------------


@pytest.fixture
def json_never_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes any parse in ``envelope`` fail the test: the refusal must come first."""

    def parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decode_json parsed input it should have refused unread")

    monkeypatch.setattr(envelope_module, "json", SimpleNamespace(loads=parse))


def test_deeply_nested_input_is_refused_before_parsing(json_never_parses: None) -> None:
    text = "[" * 10_000 + "]" * 10_000
    with pytest.raises(UndecodableEvent, match=f"nests deeper than {MAX_NESTING} levels"):
        decode_json(text, 1_000_000)
    objects = '{"a":' * 10_000 + "1" + "}" * 10_000
    with pytest.raises(UndecodableEvent, match="nests deeper"):
        decode_json(objects.encode(), 1_000_000)


def test_nesting_up_to_the_limit_is_accepted_and_one_more_is_not() -> None:
    at_limit = "[" * MAX_NESTING + "]" * MAX_NESTING
    decoded = decode_json(at_limit, 10_000)
    depth = 0
    while isinstance(decoded, list):
        decoded, depth = (decoded[0] if decoded else None), depth + 1
    assert depth == MAX_NESTING
    with pytest.raises(UndecodableEvent, match="nests deeper"):
        decode_json("[" + at_limit + "]", 10_000)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"s": "[" * 500 + '\\"{' * 100, "t": "]]]"})
    assert decode_json(text, 10_000)["s"].startswith("[[[")


def test_oversize_input_is_refused_before_parsing(json_never_parses: None) -> None:
    text = '{"blob": "' + "x" * 2000 + '"}'
    with pytest.raises(UndecodableEvent, match="over the 1000 limit"):
        decode_json(text, 1000)
    with pytest.raises(UndecodableEvent, match="over the 1000 limit"):
        decode_json(text.encode(), 1000)


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_size_limit_counts_utf8_bytes_not_characters(
    as_bytes: bool, json_never_parses: None
) -> None:
    text = '"' + "\u00e9" * 400 + '"'  # 402 characters, 802 bytes
    raw: str | bytes = text.encode() if as_bytes else text
    with pytest.raises(UndecodableEvent, match="is 802 bytes, over the 500 limit"):
        decode_json(raw, 500)


def test_input_at_the_size_limit_is_accepted() -> None:
    text = '"' + "\u00e9" * 249 + '"'  # 500 bytes
    assert decode_json(text.encode(), 500) == "\u00e9" * 249
    assert decode_json(text, 500) == "\u00e9" * 249


def test_invalid_utf8_is_refused_clearly() -> None:
    with pytest.raises(UndecodableEvent, match="is not UTF-8"):
        decode_json(b'{"name": "\xff\xfe"}', 10_000)


@pytest.mark.parametrize("text", ['{"a": ', "{'a': 1}", "", "[1, 2,]", "NaN?"])
def test_malformed_json_is_refused_clearly(text: str) -> None:
    with pytest.raises(UndecodableEvent, match="is not valid JSON"):
        decode_json(text, 10_000)


def test_input_that_is_not_text_is_refused() -> None:
    with pytest.raises(UndecodableEvent, match="is a int, not JSON text"):
        decode_json(5, 10_000)  # type: ignore[arg-type]


def test_error_names_what_was_being_decoded() -> None:
    with pytest.raises(UndecodableEvent, match=r"^Event metadata is not valid JSON"):
        decode_json("{", 10_000, "metadata")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"specversion": "2.0"}, "specversion '2.0'; this reader handles CloudEvents \"1.0\""),
        ({"specversion": 1.0}, "specversion 1.0;"),
        ({"wireformat": 3}, "wireformat 3; this reader handles wire formats 1 to 2"),
        ({"wireformat": "2"}, "wireformat '2';"),
        ({"wireformat": True}, "wireformat True;"),
    ],
)
def test_cloudevent_of_another_spec_or_a_later_wire_format_is_refused(
    change: dict[str, Any], message: str
) -> None:
    """docs/wire-format.md: a reader dead-letters what it cannot read instead of guessing,
    on the fast path's envelopes too (this body would take it)."""
    body = {
        "specversion": "1.0",
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "type": "order.placed",
        "time": "2024-01-02T03:04:05+00:00",
        "source": "shop",
        "data": {"n": 1},
    }
    assert from_cloudevent(body, 10_000).data == {"n": 1}
    assert from_cloudevent({**body, "wireformat": 2}, 10_000).data == {"n": 1}
    with pytest.raises(UndecodableEvent, match=re.escape(message)):
        from_cloudevent({**body, **change}, 10_000)
