from django.db import models


class NaiveOutbox(models.Model):
    """S1's naive outbox: the event as a second ORM row with a JSON column."""

    type = models.CharField(max_length=200)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.type
