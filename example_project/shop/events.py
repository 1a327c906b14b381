"""Consumers of `order.placed`, one per consumer group.

django-events imports this module automatically (autodiscovery of `events.py`
in installed apps). Each group gets its own copy of every event and retries,
or dead-letters, independently of the other groups.

Each handler declares the typed event `OrderPlaced` (version 2), so it receives an
`OrderPlaced` instance: a version 1 event still in the queue arrives upcast. The
envelope is `order.envelope`; its `id` is the idempotency key.
"""

import logging

from django_events import handler
from shop.contracts import OrderPlaced
from shop.models import ConfirmationEmail, CrmContact, Order, SalesFigure

logger = logging.getLogger(__name__)


@handler(OrderPlaced, group="emails")
def send_confirmation_email(placed: OrderPlaced) -> None:
    event = placed.envelope
    order = Order.objects.get(pk=placed.order_id)
    # A real email provider would get `str(event.id)` as its idempotency key, so
    # a redelivered event never sends a second email. Here the unique `event_id`
    # column plays that role.
    _, created = ConfirmationEmail.objects.get_or_create(
        event_id=event.id, defaults={"order": order}
    )
    if created:
        logger.info("Sent order confirmation to %s (event %s)", placed.customer.email, event.id)


@handler(OrderPlaced, group="analytics")
def record_sale(placed: OrderPlaced) -> None:
    # `total` is a Decimal again: the typed event converts it back from JSON.
    SalesFigure.objects.get_or_create(
        event_id=placed.envelope.id,
        defaults={"order_id": placed.order_id, "total": placed.total},
    )


@handler(OrderPlaced, group="crm")
def sync_crm_contact(placed: OrderPlaced) -> None:
    if placed.kind == Order.Kind.WHOLESALE:
        # Deliberately fails on every attempt: after MAX_ATTEMPTS (3, see
        # settings.DJANGO_EVENTS) the delivery lands in the dead letters.
        raise ValueError("CRM rejects wholesale orders without a VAT number")
    CrmContact.objects.get_or_create(
        event_id=placed.envelope.id, defaults={"email": placed.customer.email}
    )
