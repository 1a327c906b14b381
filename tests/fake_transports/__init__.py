"""Transports for the system-check tests; none of them ever moves an event."""

from django_events.transports.base import Transport


class UnorderedTransport(Transport):
    """A transport that cannot promise ``ordered=True`` (like a plain SQS queue)."""

    supports_ordering = False


class NotATransport:
    """Importable, but not a ``Transport`` subclass."""
