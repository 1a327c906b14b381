from django.db import models


class Effect(models.Model):
    """What a test handler did; no unique constraint, so a duplicated effect shows up."""

    group = models.CharField(max_length=100)
    event_id = models.UUIDField()
    key = models.CharField(max_length=200, null=True)
    n = models.IntegerField(null=True)
    pid = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class Order(models.Model):
    total = models.DecimalField(max_digits=10, decimal_places=2)
