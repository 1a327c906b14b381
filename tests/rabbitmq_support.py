"""The shared RabbitMQ for tests: a unique prefix per test, and everything it made deleted.

The broker is the machine's (``DJANGO_EVENTS_TEST_RABBITMQ_URL``, by default guest on
127.0.0.1:5672); CI starts it (.ci/run). Tests skip only when pika is not installed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from typing import Any

import pytest

RABBITMQ_URL = os.environ.get(
    "DJANGO_EVENTS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
)

try:
    import pika
except ImportError:  # pragma: no cover - the dev extras install it
    pika = None


def needs_pika() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        pika is None, reason="pika is not installed: pip install 'django-events-outbox[rabbitmq]'"
    )


def unique_prefix() -> str:
    return f"de-test.{uuid.uuid4().hex[:12]}"


def delete_everything(transport: Any, groups: Iterable[str]) -> None:
    """Delete the queues and exchanges ``transport`` made for ``groups`` and its delays."""
    assert pika is not None
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        names = [transport.queue(g, dead=dead) for g in groups for dead in (False, True)]
        delays = [transport.delay_queue(ms) for ms in transport._delays]
        for name in [*names, *delays]:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.queue_delete(name)
        for name in [transport.exchange, *delays]:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.exchange_delete(name)
    finally:
        connection.close()


BACKEND = "django_events.transports.rabbitmq.RabbitMQTransport"


def events_settings(prefix: str, url: str = RABBITMQ_URL, **options: Any) -> dict[str, Any]:
    """A DJANGO_EVENTS value with the RabbitMQ transport under ``prefix``, test defaults kept."""
    from django.conf import settings

    return {
        **settings.DJANGO_EVENTS,
        "TRANSPORTS": {
            "default": {"BACKEND": BACKEND, "OPTIONS": {"url": url, "prefix": prefix, **options}}
        },
    }


def publish_raw(queue: str, body: bytes, **properties: Any) -> None:
    """Put a message on ``queue`` as any AMQP client could, bypassing the transport."""
    assert pika is not None
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(**properties))
    finally:
        connection.close()
