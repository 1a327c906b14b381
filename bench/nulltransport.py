"""A transport that drops what it is given: S3 measures the relay, not a queue."""

from __future__ import annotations

from collections.abc import Sequence

from django_events.transports.base import Outgoing, Transport


class NullTransport(Transport):
    """Accepts every batch and does nothing; the relay takes its leased path for it."""

    def joins_outbox_transaction(self, using: str) -> bool:
        return False

    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        return None
