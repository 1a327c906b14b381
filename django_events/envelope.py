"""The event envelope: what every handler receives and every transport carries.

Names follow CloudEvents where one exists (``id``, ``type``, ``source``, ``time`` for
``occurred_at``, ``partitionkey`` for ``key``); ``to_cloudevent`` gives the wire form.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from .exceptions import (
    InvalidEvent,
    InvalidEventType,
    PayloadNotSerializable,
    PayloadTooLarge,
    UndecodableEvent,
    UnstorableValue,
)
from .validation import MAX_KEY_LENGTH as MAX_KEY_LENGTH
from .validation import MAX_NESTING, check_encoded, check_storable, find_unstorable, validate_key

EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_-]*)+$")
MAX_TYPE_LENGTH = 200

_valid_types: set[str] = set()


def validate_type(event_type: Any) -> str:
    """Return ``event_type`` if it is a dotted lower-case name such as ``order.placed``."""
    if type(event_type) is str and event_type in _valid_types:
        return event_type
    if (
        not isinstance(event_type, str)
        or len(event_type) > MAX_TYPE_LENGTH
        or not EVENT_TYPE.match(event_type)
    ):
        raise InvalidEventType(
            f"Invalid event type {event_type!r}: use dotted lower-case names such as "
            f"'order.placed' (at most {MAX_TYPE_LENGTH} characters)."
        )
    if len(_valid_types) < 10_000:
        _valid_types.add(event_type)
    return event_type


@dataclass(frozen=True, slots=True)
class Event:
    """A fact that happened, as published and as delivered."""

    id: uuid.UUID
    type: str
    data: dict[str, Any]
    version: int = 1
    key: str | None = None
    occurred_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    source: str = ""
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_cloudevent(self) -> dict[str, Any]:
        """The CloudEvents 1.0 structured form, with our extensions in lower case."""
        metadata, trace = _without_trace(self.metadata)
        body = cloudevent_attributes(
            str(self.id),
            self.type,
            self.source,
            self.occurred_at.isoformat(),
            self.version,
            key=self.key,
            correlation_id=None if self.correlation_id is None else str(self.correlation_id),
            causation_id=None if self.causation_id is None else str(self.causation_id),
        )
        body["data"] = self.data
        if metadata:
            body["metadata"] = metadata
        body.update(trace)
        return body


def cloudevent_attributes(
    event_id: str,
    event_type: str,
    source: str,
    time: str,
    version: int,
    *,
    key: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> dict[str, Any]:
    """An event's CloudEvents attributes, in wire order: the one place that names them, for
    ``Event.to_cloudevent`` and every transport's writer (docs/wire-format.md)."""
    head: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "type": event_type,
        "source": source,
        "time": time,
        "datacontenttype": "application/json",
        "dataversion": version,
    }
    if key is not None:
        head["partitionkey"] = key
    if correlation_id is not None:
        head["correlationid"] = correlation_id
    if causation_id is not None:
        head["causationid"] = causation_id
    return head


# --- trace context ---------------------------------------------------------------------------

TRACE_KEYS = ("traceparent", "tracestate")
"""The W3C trace context: stored in an event's metadata under these keys, carried on the
wire as the CloudEvents distributed-tracing extension attributes of the same names."""


def _without_trace(metadata: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    rest = {k: v for k, v in metadata.items() if k not in TRACE_KEYS}
    return rest, {k: metadata[k] for k in TRACE_KEYS if k in metadata}


def split_trace(metadata: str) -> tuple[str, dict[str, str]]:
    """Stored metadata text without the trace context, and the trace context as the
    envelope's extension attributes. Metadata without one (the usual case unless
    OpenTelemetry is on) comes back as it is, unparsed."""
    if '"trace' not in metadata:
        return metadata, {}
    try:
        fields = json.loads(metadata)
    except ValueError:
        return metadata, {}  # refused by the relay's screen before anything is sent
    if not isinstance(fields, dict):
        return metadata, {}
    trace = {k: fields.pop(k) for k in TRACE_KEYS if isinstance(fields.get(k), str)}
    if not trace:
        return metadata, {}
    return (json.dumps(fields, separators=(",", ":")) if fields else ""), trace


# --- ids ------------------------------------------------------------------------------------

_uuid7_lock = threading.Lock()
_uuid7_last = [0, 0]  # last millisecond, last 12-bit counter


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7), monotonic within this process."""
    ms = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")  # one system call: 16 bits, then 64
    with _uuid7_lock:
        last_ms, counter = _uuid7_last
        if ms <= last_ms:
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:
                ms, counter = ms + 1, 0
        else:
            counter = (random >> 64) & 0x3FF
        _uuid7_last[:] = [ms, counter]
    rand_b = random & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


# --- encoding -------------------------------------------------------------------------------


def _find_unserializable(value: Any, path: str, parents: tuple[int, ...] = ()) -> str | None:
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in parents:
            return f"{path} contains itself"
        parents = (*parents, id(value))
        if len(parents) > MAX_NESTING:
            return f"{path} nests deeper than {MAX_NESTING} levels"
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path} has a non-string key {k!r}"
            found = _find_unserializable(v, f"{path}[{k!r}]", parents)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find_unserializable(v, f"{path}[{i}]", parents)
            if found:
                return found
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value!r}, which JSON cannot represent"
    try:
        json.dumps(value, cls=DjangoJSONEncoder)
    except (TypeError, ValueError):
        return f"{path} is a {type(value).__name__}, which JSON cannot represent"
    return None


_ENCODER = DjangoJSONEncoder(separators=(",", ":"), allow_nan=False)
"""One compact encoder for every publish: it keeps no state between calls."""


def encode_data(data: Any, max_bytes: int) -> str:
    """Encode ``data`` as compact JSON, naming the field that cannot be encoded."""
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"Event data must be a JSON object (a dict), got {type(data).__name__}.")
    if not isinstance(data, dict):
        data = dict(data)
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        where = _find_unserializable(data, "data") if not isinstance(exc, RecursionError) else None
        raise PayloadNotSerializable(
            f"Event data cannot be encoded as JSON: {where or exc}. "
            "Pass plain values (str, int, float, bool, None, Decimal, datetime, date, UUID, "
            "lists and dicts)."
        ) from exc
    size = len(text) if text.isascii() else len(text.encode())
    if size > max_bytes:
        raise PayloadTooLarge(
            f"Event data is {size} bytes encoded, over the MAX_PAYLOAD_BYTES limit of "
            f"{max_bytes}. Publish a reference (an id) instead of the whole object."
        )
    check_encoded(text, "data")
    return text


def encode_metadata(metadata: Mapping[str, str], max_bytes: int) -> str:
    """The metadata as stored (``""`` when empty), within ``MAX_METADATA_BYTES``: it travels
    in every message beside the data, so a transport's message limit must hold both."""
    if not metadata:
        return ""
    text = json.dumps(metadata, separators=(",", ":"))
    if len(text) > max_bytes:  # ASCII: json.dumps escapes the rest
        raise PayloadTooLarge(
            f"Event metadata is {len(text)} bytes encoded, over the MAX_METADATA_BYTES limit "
            f"of {max_bytes}."
        )
    return text


def validate_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidEvent("Event metadata must be a dict of str to str.")
    problem = find_unstorable(dict(metadata), "metadata")
    if problem:
        raise UnstorableValue(problem)
    return dict(metadata)


def validate_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidEvent(f"Event version must be a positive int, got {version!r}.")
    return version


# --- decoding -------------------------------------------------------------------------------


def decode_json(raw: str | bytes | dict[str, Any], max_bytes: int, what: str = "data") -> Any:
    """Parse JSON from outside, checking size and nesting before parsing."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        size = len(raw) if raw.isascii() else len(raw.encode())
    elif isinstance(raw, bytes):
        size = len(raw)
    else:
        raise UndecodableEvent(f"Event {what} is a {type(raw).__name__}, not JSON text.")
    if size > max_bytes:
        raise UndecodableEvent(f"Event {what} is {size} bytes, over the {max_bytes} limit.")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError as exc:
            raise UndecodableEvent(f"Event {what} is not UTF-8: {exc}.") from exc
    try:  # the rule publish() applies (docs/guarantees.md, "What publish refuses")
        check_storable(raw, what)
    except UnstorableValue as exc:
        raise UndecodableEvent(f"Event {exc}") from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UndecodableEvent(f"Event {what} is not valid JSON: {exc}.") from exc


def parse_uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, about twice as fast for the forms without braces or a ``urn:``
    prefix: the same digits go through the same ``int(..., 16)`` (so the same strings are
    accepted and give the same UUID); anything else, or anything that fails, is left to
    ``uuid.UUID`` itself, which raises ``ValueError`` as ever."""
    digits = text.replace("-", "")
    if len(digits) == 32:
        try:
            return uuid.UUID(int=int(digits, 16))
        except ValueError:
            pass  # "{...}", "urn:uuid:...", not hex: uuid.UUID says what is wrong
    return uuid.UUID(text)


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time from the wire, always aware (a naive one is UTC); ``ValueError``
    if it is not one. Python 3.10's ``fromisoformat`` does not read a "Z" suffix
    (CloudEvents, AWS), so it is spelled out as the offset it means."""
    zulu = text.endswith(("Z", "z"))
    found = dt.datetime.fromisoformat(text[:-1] + "+00:00" if zulu else text)
    return found if found.tzinfo is not None else found.replace(tzinfo=dt.timezone.utc)


def _uuid_or_none(value: Any, name: str) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return parse_uuid(value if type(value) is str else str(value))
    except ValueError as exc:
        raise UndecodableEvent(f"Event field {name!r} is not a UUID: {value!r}.") from exc


def build_event(
    *,
    id: Any,
    type: Any,
    version: Any,
    key: Any,
    data: Any,
    metadata: Any,
    occurred_at: Any,
    source: Any,
    correlation_id: Any,
    causation_id: Any,
    max_bytes: int,
) -> Event:
    """Rebuild an ``Event`` from stored or received fields, validating every one."""
    try:
        event_type = validate_type(type)
        version = validate_version(version)
        key = validate_key(key)
    except InvalidEvent as exc:
        raise UndecodableEvent(str(exc)) from exc
    payload = decode_json(data, max_bytes)
    if not isinstance(payload, dict):
        raise UndecodableEvent(
            f"Event data must be a JSON object, got {payload.__class__.__name__}."
        )
    # "{}" is what publish() stores for no metadata: most events; nothing to decode.
    meta = decode_json(metadata, max_bytes, "metadata") if metadata and metadata != "{}" else {}
    if meta != {} or not isinstance(meta, dict):  # nothing to check in the usual {}
        try:
            meta = validate_metadata(meta)
        except InvalidEvent as exc:
            raise UndecodableEvent(str(exc)) from exc
    if isinstance(occurred_at, str):
        try:
            occurred_at = parse_time(occurred_at)
        except ValueError as exc:
            raise UndecodableEvent(f"Event time is not ISO 8601: {occurred_at!r}.") from exc
    if not isinstance(occurred_at, dt.datetime):
        raise UndecodableEvent(f"Event time is missing or invalid: {occurred_at!r}.")
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=dt.timezone.utc)
    event_id = _uuid_or_none(id, "id")
    if event_id is None:
        raise UndecodableEvent("Event id is missing.")
    return Event(
        id=event_id,
        type=event_type,
        version=version,
        key=key,
        data=payload,
        occurred_at=occurred_at,
        source=str(source or ""),
        # A first event is its own correlation: the same text, parsed once.
        correlation_id=event_id
        if correlation_id is not None and correlation_id == id
        else _uuid_or_none(correlation_id, "correlation_id"),
        causation_id=_uuid_or_none(causation_id, "causation_id"),
        metadata=meta,
    )


WIRE_FORMAT = 2
"""The newest wire format this release reads; an envelope marked with a later one is
refused, never guessed at (docs/wire-format.md, "What a reader requires")."""

_REQUIRED = ("id", "type", "time", "data")


def from_cloudevent(body: Any, max_bytes: int) -> Event:
    """Rebuild an event from its CloudEvents JSON form (as sent by external transports).

    The text is checked and parsed once (``decode_json``: size, nesting, storable text,
    then one ``json.loads``); an envelope as every transport writes it then takes
    ``_plain_event``, which checks the same rules without the general path's calls; any
    other envelope, and every broken one, takes the general path, which names what is
    wrong (docs/wire-format.md, "What a reader requires, and what it ignores")."""
    if isinstance(body, (str, bytes)):
        body = decode_json(body, max_bytes, "envelope")
    if type(body) is dict:
        event = _plain_event(body)
        if event is not None:
            return event
    return _general_event(body, max_bytes)


def _plain_event(body: dict[str, Any]) -> Event | None:
    """The event of an envelope that holds nothing unusual, or None to leave it to the
    general path: a type already validated once, a positive int version, no metadata and
    no trace context, a JSON object for data, a source, id and time as strings, the ids
    parsed by ``parse_uuid`` and the time by ``parse_time``, exactly as the general path
    would (tests/test_envelope.py checks they agree). It never raises: whatever is odd is
    the general path's to name."""
    get = body.get
    event_type = get("type")
    version = get("dataversion", 1)
    data = get("data")
    event_id = get("id")
    when = get("time")
    source = get("source", "")
    key = get("partitionkey")
    correlation = get("correlationid")
    causation = get("causationid")
    if (
        type(event_type) is not str
        or event_type not in _valid_types
        or type(version) is not int
        or version < 1
        or type(data) is not dict
        or type(event_id) is not str
        or type(when) is not str
        or type(source) is not str
        or get("specversion", "1.0") != "1.0"
        or "wireformat" in body
        or get("metadata")
        or "traceparent" in body
        or "tracestate" in body
        or (key is not None and type(key) is not str)
        or (correlation is not None and type(correlation) is not str)
        or (causation is not None and type(causation) is not str)
    ):
        return None
    try:
        if key is not None:
            validate_key(key)
        return Event(  # positional: keyword binding of ten fields costs more than the rest
            parse_uuid(event_id),
            event_type,
            data,
            version,
            key,
            parse_time(when),
            source,
            None if correlation is None else parse_uuid(correlation),
            None if causation is None else parse_uuid(causation),
            {},
        )
    except ValueError:  # InvalidEvent is one too
        return None


def _general_event(body: Any, max_bytes: int) -> Event:
    """``from_cloudevent`` for any parsed envelope: every field checked by ``build_event``,
    the first problem named."""
    if not isinstance(body, dict):
        raise UndecodableEvent("Event envelope must be a JSON object.")
    missing = [name for name in _REQUIRED if name not in body]
    if missing:
        raise UndecodableEvent(f"Event envelope is missing {', '.join(missing)}.")
    if body.get("specversion", "1.0") != "1.0":
        raise UndecodableEvent(
            f"Event envelope has specversion {repr(body['specversion'])[:80]}; this "
            'reader handles CloudEvents "1.0".'
        )
    wire_format = body.get("wireformat", 1)
    if type(wire_format) is not int or not 1 <= wire_format <= WIRE_FORMAT:
        raise UndecodableEvent(
            f"Event envelope has wireformat {repr(wire_format)[:80]}; this reader "
            f"handles wire formats 1 to {WIRE_FORMAT} (docs/wire-format.md)."
        )
    metadata = body.get("metadata")
    trace = {k: body[k] for k in TRACE_KEYS if isinstance(body.get(k), str)}
    if trace:  # back into the metadata, where publish() put it
        metadata = decode_json(metadata, max_bytes, "metadata") if metadata else {}
        if isinstance(metadata, dict):
            metadata = {**metadata, **trace}
    return build_event(
        id=body["id"],
        type=body["type"],
        version=body.get("dataversion", 1),
        key=body.get("partitionkey"),
        data=body["data"],
        metadata=metadata,
        occurred_at=body["time"],
        source=body.get("source", ""),
        correlation_id=body.get("correlationid"),
        causation_id=body.get("causationid"),
        max_bytes=max_bytes,
    )
