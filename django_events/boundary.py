"""What the engine hands its transports: settings and handlers, read here, not there.

A transport sees only its ``TransportContext`` (docs/internals.md, "The transport
boundary"), so it imports no settings and no registry: a third-party transport needs the
transport base, the envelope, the exceptions and the models, and the engine's modules
never form an import cycle through a transport.
"""

from __future__ import annotations

from .conf import get_settings
from .engine.retry import max_attempts
from .registry import registry
from .stores import SubscriptionStore
from .transports.base import Subscriptions, TransportContext


def own_subscriptions() -> Subscriptions:
    """This deployment's handlers as ``(event_type, group, ordered)`` rows."""
    return registry.subscriptions()


def restore_own_subscriptions(store: SubscriptionStore) -> int:
    """Declare this deployment's handlers again in ``store`` where they are missing (a
    worker starting does the same): added, never retiring; the count that was missing."""
    from .subscriptions import declare, forget, wanted_by

    service = get_settings().service
    stored = {(row.service, row.group, row.event_type) for row in store.rows()}
    missing = [slot for slot in wanted_by(registry) if (service, *slot) not in stored]
    if missing:
        declare(service, registry, store=store, replace=False)
        forget()  # the relay's cached list predates the loss
    return len(missing)


def transport_context() -> TransportContext:
    """The context for a transport built now, from the current ``DJANGO_EVENTS``."""
    settings = get_settings()
    return TransportContext(
        subscriptions=own_subscriptions,
        max_attempts=max_attempts,
        restore_subscriptions=restore_own_subscriptions,
        signing=settings.signing,
        lease=settings.lease,
        poll_interval=settings.poll_interval,
        batch_size=settings.batch_size,
        batch_bytes=settings.batch_bytes,
        relay_batch_size=settings.relay_batch_size,
        max_payload_bytes=settings.max_payload_bytes,
        outbox_databases=settings.outbox_databases,
        backoff_base=settings.retry.backoff_base,
        backoff_max=settings.retry.backoff_max,
    )
