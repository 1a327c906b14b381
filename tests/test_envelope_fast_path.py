"""The consume path's fast decode gives exactly what the general path gives.

``from_cloudevent`` reads an envelope as every transport writes it through
``_plain_event`` (no keyword binding, ``parse_uuid``, ``parse_time``) and anything else
through ``_general_event`` (``build_event``, every check named). These tests hold the two
to the same result, field by field and type by type, on the edge cases of ids, times,
keys and optional attributes; and ``parse_uuid`` to ``uuid.UUID`` itself.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from typing import Any

import pytest

from django_events.envelope import (
    Event,
    _general_event,
    _plain_event,
    from_cloudevent,
    parse_uuid,
    validate_type,
)
from django_events.exceptions import UndecodableEvent

LIMIT = 100_000
ID = "01890a5d-ac96-774b-bcce-b302099a8057"


def _exactly(event: Event) -> tuple[Any, ...]:
    """Every field with its type and, for times, its offset: ``==`` alone would call an
    aware time equal to the same instant at another offset, and an int equal to a bool."""
    fields = (
        event.id,
        event.type,
        event.data,
        event.version,
        event.key,
        event.occurred_at,
        event.source,
        event.correlation_id,
        event.causation_id,
        event.metadata,
    )
    return (
        tuple(type(value) for value in fields),
        repr(event),
        event.occurred_at.utcoffset(),
        event.id.is_safe,
    )


def _envelope(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": ID,
        "type": "order.placed",
        "source": "shop",
        "time": "2024-01-02T03:04:05.123456+00:00",
        "datacontenttype": "application/json",
        "dataversion": 1,
        "data": {"n": 1, "lines": [{"sku": "A"}]},
    }
    body.update(change)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()

# Envelopes the fast path takes: each must give what the general path gives.
PLAIN = {
    "as written": {},
    "time with Z": {"time": "2024-01-02T03:04:05Z"},
    "time with z": {"time": "2024-01-02T03:04:05.5z"},
    "time with an offset": {"time": "2024-01-02T03:04:05+05:30"},
    "time with a negative offset": {"time": "2024-01-02T03:04:05.000001-08:00"},
    "time with milliseconds": {"time": "2024-01-02T03:04:05.123+00:00"},
    "naive time (UTC)": {"time": "2024-01-02T03:04:05"},
    "date only": {"time": "2024-01-02"},
    "time with a space": {"time": "2024-01-02 03:04:05+00:00"},
    "uppercase id": {"id": ID.upper()},
    "id without hyphens": {"id": ID.replace("-", "")},
    "id with hyphens elsewhere": {"id": ID.replace("-", "")[:4] + "-" + ID.replace("-", "")[4:]},
    "id with underscores": {"id": "0_" + ID[2:]},
    "braced id": {"id": "{" + ID + "}"},
    "urn id": {"id": "urn:uuid:" + ID},
    "key": {"partitionkey": "order-7"},
    "unicode key": {"partitionkey": "commande-\u00e9\u4e2d"},
    "correlation and causation": {
        "correlationid": "11111111-1111-4111-8111-111111111111",
        "causationid": "22222222-2222-4222-8222-222222222222".upper(),
    },
    "null correlation": {"correlationid": None, "causationid": None},
    "version 3": {"dataversion": 3},
    "no version": {"dataversion": _DROP},
    "no source": {"source": _DROP},
    "empty source": {"source": ""},
    "empty data": {"data": {}},
    "empty metadata": {"metadata": {}},
    "empty metadata text": {"metadata": ""},
    "unknown attribute": {"extra": [1]},
}

# Envelopes the fast path leaves to the general path (which decodes or refuses them).
GENERAL = {
    "a wireformat marker": {"wireformat": 2},
    "another specversion": {"specversion": "2.0"},
    "metadata": {"metadata": {"tenant": "t-1"}},
    "metadata as text": {"metadata": '{"tenant": "t-1"}'},
    "trace context": {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    "non-string trace": {"tracestate": 5},
    "data as JSON text": {"data": '{"n": 1}'},
    "data a list": {"data": [1, 2]},
    "id too short": {"id": ID[:-1]},
    "id with a fifth hyphen": {"id": ID[:4] + "-" + ID[5:]},
    "id not hex": {"id": ID[:-1] + "g"},
    "id a number": {"id": 5},
    "no id": {"id": None},
    "type invalid": {"type": "OrderPlaced"},
    "type a list": {"type": ["order.placed"]},
    "version 0": {"dataversion": 0},
    "version true": {"dataversion": True},
    "version text": {"dataversion": "1"},
    "version float": {"dataversion": 1.0},
    "time not ISO": {"time": "yesterday"},
    "time a number": {"time": 1700000000},
    "time with Z and an offset": {"time": "2024-01-02T03:04:05+00:00Z"},
    "key empty": {"partitionkey": ""},
    "key with a control character": {"partitionkey": "a\x01b"},
    "key too long": {"partitionkey": "k" * 201},
    "key a number": {"partitionkey": 7},
    "source null": {"source": None},
    "source a number": {"source": 7},
    "correlation not a UUID": {"correlationid": "nope"},
    "causation a number": {"causationid": 12},
}


@pytest.fixture(autouse=True)
def _type_known() -> None:
    validate_type("order.placed")  # the fast path takes types validated once before


def _general(body: dict[str, Any]) -> Event | str:
    try:
        return _general_event(copy.deepcopy(body), LIMIT)
    except UndecodableEvent as exc:
        return f"UndecodableEvent: {exc}"


def _decoded(raw: Any) -> Event | str:
    try:
        return from_cloudevent(raw, LIMIT)
    except UndecodableEvent as exc:
        return f"UndecodableEvent: {exc}"


@pytest.mark.parametrize("change", PLAIN.values(), ids=PLAIN.keys())
def test_the_fast_path_gives_what_the_general_path_gives(change: dict[str, Any]) -> None:
    body = _envelope(**change)
    fast = _plain_event(copy.deepcopy(body))
    assert fast is not None, "this envelope should take the fast path"
    general = _general(body)
    assert isinstance(general, Event)
    assert fast == general
    assert _exactly(fast) == _exactly(general)
    for raw in (body, json.dumps(body), json.dumps(body).encode()):  # dict, text, bytes
        decoded = _decoded(raw)
        assert isinstance(decoded, Event)
        assert _exactly(decoded) == _exactly(general)


@pytest.mark.parametrize("change", GENERAL.values(), ids=GENERAL.keys())
def test_what_the_fast_path_leaves_decodes_or_fails_as_before(change: dict[str, Any]) -> None:
    body = _envelope(**change)
    assert _plain_event(copy.deepcopy(body)) is None
    general = _general(body)
    decoded = _decoded(body)
    if isinstance(general, Event):
        assert isinstance(decoded, Event)
        assert _exactly(decoded) == _exactly(general)
    else:
        assert decoded == general


def test_a_type_not_validated_before_takes_the_general_path() -> None:
    body = _envelope(type="order.never_seen_before_here")
    assert _plain_event(copy.deepcopy(body)) is None
    decoded = _decoded(body)
    assert isinstance(decoded, Event)
    assert _plain_event(body) is not None  # validated now, so the next one is fast


def test_the_naive_time_is_utc_and_offsets_are_kept() -> None:
    naive = _plain_event(_envelope(time="2024-01-02T03:04:05"))
    offset = _plain_event(_envelope(time="2024-01-02T03:04:05.25+05:30"))
    zulu = _plain_event(_envelope(time="2024-01-02T03:04:05Z"))
    assert naive is not None and offset is not None and zulu is not None
    assert naive.occurred_at == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert offset.occurred_at.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert offset.occurred_at.microsecond == 250_000
    assert zulu.occurred_at.tzinfo == dt.timezone.utc


UUID_TEXTS = [
    ID,
    ID.upper(),
    "01890A5D-ac96-774B-bcce-b302099a8057",
    ID.replace("-", ""),
    "-" + ID.replace("-", "") + "-",
    "{" + ID + "}",
    "urn:uuid:" + ID,
    "URN:UUID:" + ID,
    "uuid:" + ID,
    " " + ID.replace("-", "")[1:],  # int() reads the space
    "+" + ID.replace("-", "")[1:],  # and a sign
    "0_" + ID.replace("-", "")[2:],  # and an underscore
    "\u0661" * 32,  # and other scripts' digits
    ID[:-1],
    ID + "0",
    ID[:4] + "-" + ID[5:],
    ID[:-1] + "g",
    "",
    "-" * 36,
    "f" * 32,
    "0" * 32,
    "00000000-0000-0000-0000-00000000000\u00e9",
]


@pytest.mark.parametrize("text", UUID_TEXTS)
def test_parse_uuid_is_uuid_UUID(text: str) -> None:
    try:
        expected: uuid.UUID | str = uuid.UUID(text)
    except ValueError as exc:
        expected = f"ValueError: {exc}"
    try:
        got: uuid.UUID | str = parse_uuid(text)
    except ValueError as exc:
        got = f"ValueError: {exc}"
    assert got == expected
    if isinstance(got, uuid.UUID):
        assert isinstance(expected, uuid.UUID)
        assert type(got) is uuid.UUID
        assert got.is_safe == expected.is_safe
        assert str(got) == str(expected)
