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
        names = [transport.queue(g) for g in groups] + [transport.queue(g, dead=True) for g in groups]
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
