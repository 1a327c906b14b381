"""The wire form of an event on RabbitMQ: a CloudEvents JSON body, AMQP properties, and
the headers a retry's copy carries (docs/transport-rabbitmq.md, "Layout")."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

import pika

from ...signing import SIGNATURE, Signing
from ..base import Claimed, Outgoing, cloudevent_json

DELAY_STEPS = (1, 1.5, 2, 3, 4, 5, 7)
"""Retry delays are rounded up to one of these times a power of ten milliseconds: one
TTL queue per step in use, none more than 1.5 times the delay asked for."""
MAX_DELAY_MS = 24 * 60 * 60 * 1000
"""Longest retry delay: a day (a longer one waits a day)."""
ATTEMPTS = "attempts"
"""Header: attempts made before this message was published again (a retry)."""
FIRST_FAILED = "first_failed_at"


def key_of(claimed: Claimed) -> tuple[str, str] | None:
    """The (group, key) an ordered event holds, from its ``key`` header; None if it has none."""
    headers = claimed.receipt.properties.headers
    key = headers.get("key") if isinstance(headers, dict) else None
    if isinstance(key, bytes):
        key = key.decode(errors="backslashreplace")
    return (claimed.group, key) if isinstance(key, str) else None


def delay_step(delay: float) -> int:
    """The TTL, in milliseconds, of the delay queue for ``delay`` seconds (0: none)."""
    ms = math.ceil(delay * 1000)
    if ms <= 0:
        return 0
    ms = min(ms, MAX_DELAY_MS)
    power = 10 ** max(0, len(str(ms)) - 1)
    for step in (*DELAY_STEPS, 10):
        if step * power >= ms:
            return min(int(step * power), MAX_DELAY_MS)
    return MAX_DELAY_MS  # pragma: no cover - the steps reach 10 times the power


def to_message(event: Outgoing, signing: Signing) -> tuple[bytes, Any]:
    """The CloudEvents JSON body and the AMQP properties of ``event``."""
    event_id = str(uuid.UUID(str(event.event_id)))  # SQLite gives 32 hex digits
    body = cloudevent_json(event, event_id)
    headers: dict[str, Any] = {}
    if event.key is not None:
        headers["key"] = event.key
    if signing.enabled:
        headers[SIGNATURE] = signing.sign(body)
    properties = pika.BasicProperties(
        content_type="application/cloudevents+json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=event_id,
        type=event.type,
        headers=headers or None,
    )
    return body.encode(), properties


def copy_properties(properties: Any, headers: dict[str, Any]) -> Any:
    return pika.BasicProperties(
        content_type=properties.content_type,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=properties.message_id,
        type=properties.type,
        headers=headers,
    )


def count_header(value: Any) -> int:
    """A count from a header; 0 if absent or not a sane number (not ours)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(0, value), 1_000_000)


def uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def datetime_header(value: Any) -> dt.datetime | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return None
    try:
        found = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=dt.timezone.utc)


def now_iso() -> str:
    """When a message first failed, by this worker's clock: shown in the admin only, never
    a due time (the broker's TTL times the retry)."""
    return dt.datetime.now(dt.timezone.utc).isoformat()
