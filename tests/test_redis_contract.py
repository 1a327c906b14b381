"""The transport contract suite against the Redis Streams transport (local Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from django_events.testing.contract import OTHER_TYPE, TransportContract
from django_events.transports.base import Transport
from django_events.transports.redis import RedisStreamsTransport

from .redis_support import REDIS_URL, delete_prefix, needs_redis


@pytest.mark.database_transport  # the end-to-end test relays the outbox onto it
@needs_redis()
class TestRedisContract(TransportContract):
    lease = 1.0  # XAUTOCLAIM idle times are in milliseconds; one second keeps it quick
    retry_delay = 0.5

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        prefix = f"de-contract:{uuid.uuid4().hex[:12]}"
        transport = RedisStreamsTransport("contract", {"url": REDIS_URL, "prefix": prefix})
        yield transport
        transport.close()
        delete_prefix(prefix)

    def test_a_claim_for_some_types_leaves_the_others_unattempted(
        self, provisioned: Transport
    ) -> None:
        """Redis passes over only what some service declares: the newer version declared
        the type (``migrate``) before its events were published."""
        store = provisioned.subscription_store()
        assert store is not None
        store.declare("newer", {("g1", OTHER_TYPE): False}, replace=False)
        super().test_a_claim_for_some_types_leaves_the_others_unattempted(provisioned)
