from decimal import Decimal

from django.db import transaction

from django_events import event_data, publish
from shop.contracts import Customer, OrderPlaced
from shop.models import Order

CENT = Decimal("0.01")


def place_order(email: str, total: Decimal | str | int, kind: str = Order.Kind.RETAIL) -> Order:
    """Create an order and publish `order.placed` (v2) in the same transaction.

    The event is written (into the event log, on the log transport) inside the
    `atomic()` block: either the order and its event are both committed, or neither
    is. Consumers run later, in `consume_events`, never inside this request.
    """
    amount = Decimal(str(total)).quantize(CENT)
    with transaction.atomic():
        order = Order.objects.create(customer_email=email, total=amount, kind=kind)
        placed = OrderPlaced(
            order_id=order.pk,
            customer=Customer(email=order.customer_email),
            currency="EUR",
            # What consumers need, taken from the order, so they need not read it back.
            **event_data(order, "total", "kind"),
        )
        publish(placed, key=f"order-{order.pk}")
    return order
