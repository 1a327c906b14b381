from django.conf import settings

from django_events import handler

from ..effects.models import record


@handler("stock.reserved", group="ledger")
def book_stock(event):
    """The warehouse's events reach the shop too (tests/faults/test_f13_services.py)."""
    record("shop", "ledger", event)


if settings.SHOP_VERSION >= 2:

    @handler("order.placed", "order.cancelled", group="emails")
    def send_email(event):
        record("shop", "emails", event)

    @handler("order.placed", group="loyalty")
    def add_points(event):
        record("shop", "loyalty", event)

else:

    @handler("order.placed", group="emails")
    def send_email(event):
        record("shop", "emails", event)
