"""The transport contract suite against the SNS + SQS transport on moto, standard and FIFO.

Three promises SQS cannot keep are marked as expected failures, each with its reason (they
are documented in docs/transport-sqs.md); ``strict`` makes them fail loudly if they ever
pass, so the marks cannot outlive the limitation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_events.testing.contract import (
    KEYED_TYPE,
    OTHER_TYPE,
    SUBSCRIPTIONS,
    TransportContract,
    make_event,
)
from django_events.transports.base import Transport
from django_events.transports.sqs import SnsSqsTransport

from .sqs_server import REGION, aws_env, moto_endpoint, unique_prefix

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

RECEIVE_COUNTED = pytest.mark.xfail(
    strict=True,
    reason="SQS counts every receive: a released message comes back one attempt further",
)
NO_PARKING = pytest.mark.xfail(
    strict=True,
    reason="on SQS FIFO a dead letter leaves the queue and frees its key; it does not park it",
)


class _SqsContract(TransportContract):
    lease = 1.0  # SQS visibility timeouts are whole seconds
    retry_delay = 1.0
    fifo = False

    @pytest.fixture
    def transport(self, moto_endpoint: str, aws_env: dict[str, str]) -> Iterator[Transport]:
        transport = SnsSqsTransport(
            "contract",
            {
                "endpoint_url": moto_endpoint,
                "region": REGION,
                "prefix": unique_prefix(),
                "fifo": self.fifo,
                "wait_time": 1,  # the long poll of wait(); claims never wait
                "dead_letter_poll": 60,
            },
        )
        yield transport
        transport.close()

    def test_a_claim_for_some_types_leaves_the_others_unattempted(
        self, provisioned: Transport
    ) -> None:
        """SNS filters each queue on its types: the newer version's ``setup_events`` has
        added the type to the group's subscription before its events are published."""
        provisioned.setup([*SUBSCRIPTIONS, (OTHER_TYPE, "g1", False)])
        super().test_a_claim_for_some_types_leaves_the_others_unattempted(provisioned)

    @RECEIVE_COUNTED
    def test_a_released_event_is_claimable_at_once_without_counting_an_attempt(
        self, provisioned: Transport
    ) -> None:
        super().test_a_released_event_is_claimable_at_once_without_counting_an_attempt(provisioned)


@pytest.mark.database_transport  # the end-to-end test relays the outbox onto it
class TestSqsContract(_SqsContract):
    @pytest.mark.xfail(
        strict=False,
        reason="standard SQS queues deliver at least once (AWS documents the occasional "
        "duplicate; the inbox absorbs it), and moto's server, under load, hands one message "
        "to two concurrent receives: seen in two full runs on a machine at load 10, never "
        "alone; the FIFO case below is the same race",
    )
    def test_competing_claims_never_share_an_event(self, provisioned: Transport) -> None:
        super().test_competing_claims_never_share_an_event(provisioned)


@pytest.mark.database_transport  # the end-to-end test relays the outbox onto it
class TestSqsFifoContract(_SqsContract):
    fifo = True

    @pytest.mark.xfail(
        strict=False,
        reason="moto's FIFO queues sometimes hand one message to two concurrent receives "
        "(reproduced with raw boto3, 4 threads, about 1 run in 10); SQS does not",
    )
    def test_competing_claims_never_share_an_event(self, provisioned: Transport) -> None:
        super().test_competing_claims_never_share_an_event(provisioned)

    @NO_PARKING
    def test_a_dead_lettered_key_stays_parked_while_other_keys_flow_until_redelivered(
        self, provisioned: Transport
    ) -> None:
        super().test_a_dead_lettered_key_stays_parked_while_other_keys_flow_until_redelivered(
            provisioned
        )

    @NO_PARKING
    def test_discarding_a_parked_event_releases_its_key(self, provisioned: Transport) -> None:
        super().test_discarding_a_parked_event_releases_its_key(provisioned)

    @RECEIVE_COUNTED
    def test_a_released_or_retried_ordered_event_keeps_its_place(
        self, provisioned: Transport
    ) -> None:
        super().test_a_released_or_retried_ordered_event_keeps_its_place(provisioned)

    def test_a_released_or_retried_ordered_event_keeps_its_place_counting_receives(
        self, provisioned: Transport
    ) -> None:
        """The suite's test above, with SQS's attempt numbers: every receive counts."""
        first, second = make_event(KEYED_TYPE, key="k"), make_event(KEYED_TYPE, key="k")
        self.publish(provisioned, [first, second])
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        provisioned.release([claimed])
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        assert (claimed.event_id, claimed.attempt) == (first.event_id, 2)
        provisioned.retry_later(claimed, 0, "RuntimeError: boom")
        [claimed] = self.claim(provisioned, ["seq"], limit=10)
        assert (claimed.event_id, claimed.attempt) == (first.event_id, 3)
        self.nothing(provisioned, ["seq"])
        assert provisioned.ack(claimed)
        [last] = self.claim(provisioned, ["seq"], limit=10)
        assert last.event_id == second.event_id
