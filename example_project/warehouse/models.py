from django.db import models
from django.utils import timezone


class PickList(models.Model):
    """What the `picking` group asks the warehouse staff to pack, one per order.

    The warehouse knows the shop's orders only from their `order.placed` events: it has no
    `Order` table and does not import the shop's code.
    """

    # The event's id makes the handler idempotent: one pick list per event, however often
    # the event is delivered.
    event_id = models.UUIDField(unique=True)
    order_id = models.IntegerField()
    kind = models.CharField(max_length=16)
    event_version = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("order_id", "pk")

    def __str__(self) -> str:
        return f"Pick list for order #{self.order_id} ({self.kind})"
