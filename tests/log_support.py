"""Fixtures and helpers of the log transport's test files (PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

import pytest
from django.conf import settings
from django.test import override_settings

if TYPE_CHECKING:
    from django_events.transports.log import LogTransport


def declare(transport: LogTransport, subscriptions: Sequence[tuple[str, str, bool]]) -> None:
    """Declare ``subscriptions`` in the shared store, as a deploying service does."""
    wanted = {(group, event_type): ordered for event_type, group, ordered in subscriptions}
    transport.subscription_store().declare("contract", wanted, replace=False)


@pytest.fixture
def log_transport() -> Iterator[LogTransport]:
    """A log transport of its own, every contract subscription declared."""
    from django_events.testing.contract import SUBSCRIPTIONS
    from django_events.transports.log import LogTransport

    transport = LogTransport("log", {})
    declare(transport, SUBSCRIPTIONS)
    yield transport
    transport.close()


@pytest.fixture
def on_the_log_transport() -> Iterator[LogTransport]:
    """The log transport as the default: ``publish()`` writes the log row itself."""
    from django_events.transports import transports
    from django_events.transports.log import LogTransport

    backend = {"default": {"BACKEND": "django_events.transports.log.LogTransport"}}
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": backend}):
        transport = cast(LogTransport, transports["default"])
        declare(transport, [("test.happened", "alpha", False)])
        yield transport
