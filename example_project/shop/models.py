from django.db import models
from django.utils import timezone


class Order(models.Model):
    class Kind(models.TextChoices):
        RETAIL = "retail", "Retail"
        WHOLESALE = "wholesale", "Wholesale"

    customer_email = models.EmailField()
    total = models.DecimalField(max_digits=10, decimal_places=2)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.RETAIL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"Order #{self.pk} ({self.kind}, {self.total}) for {self.customer_email}"


class ConfirmationEmail(models.Model):
    """An order confirmation "sent" by the `emails` consumer group."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="confirmation_emails")
    # The event's id is the idempotency key: one email per event, however often
    # the event is delivered.
    event_id = models.UUIDField(unique=True)
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("sent_at", "pk")

    def __str__(self) -> str:
        return f"Confirmation for order #{self.order_id}"


class SalesFigure(models.Model):
    """A line in the sales statistics, written by the `analytics` consumer group."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="sales_figures")
    event_id = models.UUIDField(unique=True)
    total = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ("pk",)

    def __str__(self) -> str:
        return f"Sale of {self.total} (order #{self.order_id})"


class CrmContact(models.Model):
    """A contact pushed to the CRM by the `crm` consumer group."""

    email = models.EmailField()
    event_id = models.UUIDField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("created_at", "pk")
        verbose_name = "CRM contact"

    def __str__(self) -> str:
        return self.email
