"""Subscriptions at Level 3: the ``Subscription`` table, each declaration bound first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...stores import DatabaseStore, Declaration, Wanted

if TYPE_CHECKING:
    from .transport import RabbitMQTransport


class BindingStore(DatabaseStore):
    """The ``Subscription`` table (shown, pruned, warned about as at Level 0), and each
    declaration bound on the broker first: the binding is what routes events, so a
    subscription exists once its queue is bound to its type."""

    def __init__(self, transport: RabbitMQTransport) -> None:
        super().__init__(transport.database)
        self.transport = transport

    def declare(self, service: str, wanted: Wanted, *, replace: bool) -> Declaration:
        self.transport._bind([(t, group, ordered) for (group, t), ordered in wanted.items()])
        return super().declare(service, wanted, replace=replace)
