"""What ``publish()`` refuses so that every later stage accepts what it accepts.

Each refusal names the path of the offending value and writes nothing. The text checks
that the relay and the transports' decoders share (``check_storable``) are tested here
too, on JSON text as it comes from elsewhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from django_events import publish, publish_many
from django_events.conf import parse
from django_events.exceptions import (
    EventsConfigurationError,
    InvalidEvent,
    PayloadNotSerializable,
    PayloadTooLarge,
    UnstorableValue,
)
from django_events.models import EventRecord
from django_events.testing import deliver
from django_events.text import storable
from django_events.validation import MAX_NESTING, check_storable, check_text, validate_key
from tests.testapp.models import Effect
from tests.transport_support import published_rows


@pytest.fixture
def nothing_written(db: Any) -> Any:
    before = published_rows().count()
    yield
    assert published_rows().count() == before


# -- publish() refuses, naming the path -------------------------------------------------------


def _deep(levels: int) -> Any:
    """Lists nested ``levels`` deep."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


REFUSED: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    # (case, publish keyword arguments, exception, the path and problem the message names)
    (
        "lone surrogate in a nested value",
        {"data": {"items": [{}, {}, {}, {"name": "ab\ud800"}]}},
        UnstorableValue,
        r"data['items'][3]['name']: lone surrogate '\ud800' cannot be stored",
    ),
    (
        "lone low surrogate",
        {"data": {"note": "\udc00"}},
        UnstorableValue,
        r"data['note']: lone surrogate '\udc00'",
    ),
    (
        "lone surrogate in a dict key",
        {"data": {"a": {"k\ud83d": 1}}},
        UnstorableValue,
        r"data['a']['k\ud83d'] (a key): lone surrogate '\ud83d'",
    ),
    (
        "lone surrogate in a metadata value",
        {"data": {}, "metadata": {"trace": "\ud800"}},
        UnstorableValue,
        r"metadata['trace']: lone surrogate '\ud800'",
    ),
    (
        "lone surrogate in a metadata key",
        {"data": {}, "metadata": {"\udfff": "x"}},
        UnstorableValue,
        r"metadata['\udfff'] (a key): lone surrogate '\udfff'",
    ),
    (
        "lone surrogate in the key",
        {"data": {}, "key": "order-\ud800"},
        UnstorableValue,
        r"key: lone surrogate '\ud800'",
    ),
    (
        "NUL in a value",
        {"data": {"list": ["a\x00b"]}},
        UnstorableValue,
        "data['list'][0]: NUL character cannot be stored",
    ),
    (
        "NUL in a dict key",
        {"data": {"a\x00": 1}},
        UnstorableValue,
        r"data['a\x00'] (a key): NUL character",
    ),
    (
        "NUL in metadata",
        {"data": {}, "metadata": {"trace": "t\x00"}},
        UnstorableValue,
        "metadata['trace']: NUL character",
    ),
    ("NUL in the key", {"data": {}, "key": "a\x00"}, UnstorableValue, "key: NUL character"),
    (
        "control character in the key",
        {"data": {}, "key": "line\n2"},
        UnstorableValue,
        r"key: control character '\x0a' cannot be carried by SNS + SQS",
    ),
    (
        "non-character in the key",
        {"data": {}, "key": "a\uffff"},
        UnstorableValue,
        r"key: non-character '\uffff'",
    ),
    (
        "NaN",
        {"data": {"price": {"net": float("nan")}}},
        PayloadNotSerializable,
        "data['price']['net'] is nan, which JSON cannot represent",
    ),
    (
        "Infinity",
        {"data": {"v": [1, float("inf")]}},
        PayloadNotSerializable,
        "data['v'][1] is inf",
    ),
    (
        "-Infinity",
        {"data": {"v": float("-inf")}},
        PayloadNotSerializable,
        "data['v'] is -inf",
    ),
    (
        "nesting too deep",
        {"data": {"tree": _deep(MAX_NESTING)}},  # the dict is a level: one too many
        UnstorableValue,
        "data['tree']" + "[0]" * (MAX_NESTING - 1) + f": nests deeper than {MAX_NESTING} levels",
    ),
    (
        "a value JSON cannot hold",
        {"data": {"when": {1, 2}}},
        PayloadNotSerializable,
        "data['when'] is a set",
    ),
]


@pytest.mark.parametrize(
    ("publish_kwargs", "error", "message"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_publish_refuses_what_some_stage_cannot_store_naming_the_path(
    publish_kwargs: dict[str, Any], error: type[Exception], message: str, nothing_written: None
) -> None:
    kwargs = dict(publish_kwargs)
    data = kwargs.pop("data")
    with pytest.raises(error, match=re.escape(message)) as caught:
        publish("test.happened", data, **kwargs)
    assert isinstance(caught.value, InvalidEvent) and isinstance(caught.value, ValueError)
    assert storable(str(caught.value)) == str(caught.value), "the message itself stores"


def test_publish_many_writes_nothing_when_one_event_is_unstorable(nothing_written: None) -> None:
    with pytest.raises(UnstorableValue, match=re.escape("data['s']: lone surrogate")):
        publish_many([("test.happened", {"n": 1}), ("test.happened", {"s": "\ud800"})])


def test_what_only_looks_suspicious_is_published_and_delivered(db: None) -> None:
    """Surrogate pairs, escaped backslashes, the words NaN and Infinity in strings, and
    Unicode keys pass the same checks on their way to the handler."""
    data = {
        "n": 1,
        "emoji": "\U0001f600 and the pair written as escapes: \ud83d\ude00",
        "text": "NaN, Infinity and -Infinity are words here",
        "path": "C:\\ud800\\u0000",
        "ключ": "värde",
    }
    event = publish("test.happened", data, key="Zürich 1", metadata={"note": "NaN \U0001f600"})
    deliver()
    assert Effect.objects.filter(event_id=event.id).count() == 2
    logged = EventRecord.objects.get(id=event.id)
    assert logged.data["path"] == "C:\\ud800\\u0000"
    assert logged.data["emoji"] == "\U0001f600 and the pair written as escapes: \U0001f600"
    assert logged.key == "Zürich 1"


def test_metadata_over_max_metadata_bytes_is_refused(settings: Any, nothing_written: None) -> None:
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "MAX_METADATA_BYTES": 100}
    at_limit = {"t": "x" * (100 - len('{"t":""}'))}
    with pytest.raises(PayloadTooLarge, match="MAX_METADATA_BYTES limit of 100"):
        publish("test.happened", {}, metadata={"t": "x" * 100})
    assert len(json.dumps(at_limit, separators=(",", ":"))) == 100
    with pytest.raises(PayloadTooLarge):
        publish("test.happened", {}, metadata={**at_limit, "u": ""})


def test_metadata_exactly_at_max_metadata_bytes_is_published(settings: Any, db: None) -> None:
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "MAX_METADATA_BYTES": 100}
    at_limit = {"t": "x" * (100 - len('{"t":""}'))}
    assert publish("test.happened", {}, metadata=at_limit).metadata == at_limit


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"MAX_METADATA_BYTES": "8k"}, r"\['MAX_METADATA_BYTES'\] must be an integer >= 2"),
        ({"MAX_METADATA_BYTES": 1}, r"\['MAX_METADATA_BYTES'\] must be an integer >= 2"),
        (
            {"MAX_PAYLOAD_BYTES": 1000, "MAX_METADATA_BYTES": 1001},
            r"\['MAX_METADATA_BYTES'\] \(1001\) must not exceed MAX_PAYLOAD_BYTES \(1000\)",
        ),
        ({"SOURCE": "shop\x00"}, r"\['SOURCE'\] must be a string of at most 200"),
        ({"SOURCE": "s" * 201}, r"\['SOURCE'\] must be a string of at most 200"),
    ],
)
def test_limits_are_validated_like_every_setting(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(EventsConfigurationError, match=message):
        parse(raw)


def test_metadata_limit_defaults_to_8_kib_or_the_payload_limit_if_lower() -> None:
    assert parse({}).max_metadata_bytes == 8192
    assert parse({"MAX_PAYLOAD_BYTES": 1024}).max_metadata_bytes == 1024


# -- the shared text checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": "\\ud800"}', r"data['a']: lone surrogate '\ud800'"),
        ('{"a": "\\uDC00x"}', r"data['a']: lone surrogate '\udc00'"),
        ('{"a": ["\\ud800\\u0041"]}', r"data['a'][0]: lone surrogate '\ud800'"),
        ('{"\\ud800": 1}', r"data['\ud800'] (a key): lone surrogate"),
        ('{"a": "x\\u0000"}', "data['a']: NUL character"),
        ('{"a": NaN}', "data['a']: nan cannot be stored (JSON has no NaN or Infinity)"),
        ('{"a": [Infinity]}', "data['a'][0]: inf cannot be stored"),
        ('{"a": -Infinity}', "data['a']: -inf cannot be stored"),
        ('{"a": "\ufffe"}', r"data['a']: non-character '\ufffe'"),
        ("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), "data: nests deeper than 64 levels"),
    ],
)
def test_check_storable_refuses_json_text_naming_the_path(text: str, message: str) -> None:
    with pytest.raises(UnstorableValue, match=re.escape(message)):
        check_storable(text, "data")


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "\\ud83d\\ude00"}',  # a surrogate pair: one character
        '{"a": "\\\\ud800 \\\\u0000"}',  # escaped backslashes, then letters
        '{"a": "NaN Infinity"}',
        '{"a": "\U0001f600 \ufffd"}',
        "{not json, NaN",  # not JSON at all: the parser after it says so
        "[" * MAX_NESTING + "]" * MAX_NESTING,
    ],
)
def test_check_storable_lets_storable_text_through(text: str) -> None:
    check_storable(text, "data")


def test_check_text_and_validate_key_name_the_field() -> None:
    with pytest.raises(UnstorableValue, match=re.escape(r"source: lone surrogate '\ud800'")):
        check_text("shop\ud800", "source")
    check_text("shop \U0001f600\n", "source")
    assert validate_key("k" * 200) == "k" * 200
    with pytest.raises(InvalidEvent, match="at most 200 characters"):
        validate_key("k" * 201)


def test_storable_text_escapes_what_a_database_cannot_keep() -> None:
    assert storable("a\x00b\ud800c") == "a\\x00b\\ud800c"
    assert storable("plain \U0001f600") == "plain \U0001f600"
