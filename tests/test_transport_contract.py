"""The transport contract suite, run against the in-memory and the database transports."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence

import pytest

from django_events.testing.contract import TransportContract, log_events
from django_events.transports.base import Outgoing, Transport
from django_events.transports.database import DatabaseTransport
from django_events.transports.memory import InMemoryTransport


@pytest.mark.database_transport  # the end-to-end test relays the outbox onto it
class TestInMemoryContract(TransportContract):
    lease = 0.3
    retry_delay = 0.3

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        transport = InMemoryTransport("contract", {"name": f"contract-{uuid.uuid4().hex}"})
        yield transport
        transport.close()
        transport.clear()


@pytest.mark.database_transport  # the end-to-end test relays the outbox onto it
class TestDatabaseContract(TransportContract):
    lease = 0.5
    retry_delay = 0.5

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        transport = DatabaseTransport("contract", {})
        yield transport
        transport.close()

    def prepare(self, events: Sequence[Outgoing]) -> None:
        """The database transport reads events from the log, so they must be logged first."""
        for event in events:
            try:
                json.loads(event.data)
            except ValueError:
                pytest.skip("the event log holds only JSON: such data never reaches this transport")
        log_events(events)
