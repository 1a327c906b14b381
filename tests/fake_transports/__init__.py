"""Transports for the system-check tests (none of them moves an event), and database
transports with one fault planted, for the worker's robustness tests."""

from django.db import transaction

from django_events.transports.base import Claimed, Transport
from django_events.transports.database import DatabaseTransport


class UnorderedTransport(Transport):
    """A transport that cannot promise ``ordered=True`` (like a plain SQS queue)."""

    supports_ordering = False


class NotATransport:
    """Importable, but not a ``Transport`` subclass."""


class RetryBookkeepingFails(DatabaseTransport):
    """The database transport, except that recording a retry raises (a bug, or a store
    refusing what it is given): the worker must keep the failure's real reason."""

    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        raise RuntimeError("the retry bookkeeping broke")


class DeleteAfterCommitFails(DatabaseTransport):
    """The database transport, except that a dead letter's clean-up after the commit
    raises, as the SNS + SQS transport's delete does when the broker is out of reach."""

    def dead_letter(self, claimed: Claimed) -> bool:
        def delete() -> None:
            raise ConnectionError("the broker is out of reach")

        transaction.on_commit(delete, using=self.database)
        return super().dead_letter(claimed)
