from django_events import handler

from ..effects.models import record


@handler("order.placed", group="picking")
def pick(event):
    record("warehouse", "picking", event)


@handler("stock.reserved", group="stock")
def count_stock(event):
    record("warehouse", "stock", event)
