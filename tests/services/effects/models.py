"""What a service's handler did, in the main test suite's ``testapp_effect`` table (not
managed here: the test database was created by the suite's own settings), or, with
``SERVICES_OWN_DATABASE`` set, in the project's own database (Levels 1 and 2)."""

import os

from django.db import models


class Effect(models.Model):
    group = models.CharField(max_length=100)
    event_id = models.UUIDField()
    key = models.CharField(max_length=200, null=True)  # noqa: DJ001 - the table's shape
    n = models.IntegerField(null=True)
    pid = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # A project with its own database (Levels 1 and 2) creates it: migrate --run-syncdb.
        managed = bool(os.environ.get("SERVICES_OWN_DATABASE"))
        db_table = "testapp_effect"

    def __str__(self) -> str:
        return f"{self.group}: {self.n}"


def record(service: str, group: str, event) -> None:
    """One effect row labelled ``service:group:type``, in the handler's transaction."""
    Effect.objects.create(
        group=f"{service}:{group}:{event.type}",
        event_id=event.id,
        key=event.key,
        n=event.data.get("n"),
        pid=os.getpid(),
    )
