"""Consumers of `order.placed`, one per consumer group.

django-events imports this module automatically (autodiscovery of `events.py`
in installed apps). Each group gets its own copy of every event and retries,
or dead-letters, independently of the other groups.
"""

import logging
from decimal import Decimal

from django_events import handler
from shop.models import ConfirmationEmail, CrmContact, Order, SalesFigure

logger = logging.getLogger(__name__)


@handler("order.placed", group="emails")
def send_confirmation_email(event) -> None:
    order = Order.objects.get(pk=event.data["order_id"])
    # A real email provider would get `str(event.id)` as its idempotency key, so
    # a redelivered event never sends a second email. Here the unique `event_id`
    # column plays that role.
    _, created = ConfirmationEmail.objects.get_or_create(
        event_id=event.id, defaults={"order": order}
    )
    if created:
        logger.info("Sent order confirmation to %s (event %s)", event.data["email"], event.id)


@handler("order.placed", group="analytics")
def record_sale(event) -> None:
    SalesFigure.objects.get_or_create(
        event_id=event.id,
        defaults={
            "order_id": event.data["order_id"],
            # Decimals travel as strings in the event payload ("19.90").
            "total": Decimal(event.data["total"]),
        },
    )


@handler("order.placed", group="crm")
def sync_crm_contact(event) -> None:
    if event.data["kind"] == Order.Kind.WHOLESALE:
        # Deliberately fails on every attempt: after MAX_ATTEMPTS (3, see
        # settings.DJANGO_EVENTS) the delivery lands in the dead letters.
        raise ValueError("CRM rejects wholesale orders without a VAT number")
    CrmContact.objects.get_or_create(event_id=event.id, defaults={"email": event.data["email"]})
