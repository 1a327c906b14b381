"""What a test reads or changes of a claim, on either database transport.

``DatabaseTransport`` keeps a claimed event's lease on its delivery row; the log
transport keeps a claimed batch's lease on one ``Lease`` row and gives an event a
delivery row only when it fails, waits behind its key, is released or outlives its
lease (docs/internals.md, "The log transport"). These helpers touch both, so a test of
leases and orphans holds on whichever is the run's default (``make test-log``).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from django.db import models
from django.utils import timezone

from django_events.envelope import uuid7
from django_events.models import Delivery, EventRecord, Lease, OutboxMessage
from django_events.transports import transports

LONG_AGO = "2000-01-01T00:00:00Z"


def expire_claims(group: str) -> None:
    """End the lease of every event ``group`` has claimed, as if its worker had died."""
    Delivery.objects.filter(group_name=group, claimed_until__isnull=False).update(
        claimed_until=LONG_AGO
    )
    Lease.objects.filter(group_name=group).update(claimed_until=LONG_AGO)


def lease_end(group: str) -> dt.datetime:
    """When the lease of ``group``'s one claim ends."""
    (end,) = [
        *Delivery.objects.filter(group_name=group, claimed_until__isnull=False).values_list(
            "claimed_until", flat=True
        ),
        *Lease.objects.filter(group_name=group).values_list("claimed_until", flat=True),
    ]
    return end


def claimed_attempts(group: str) -> list[int]:
    """The attempt each of ``group``'s claimed events is at, as the claim recorded it: a
    delivery row's count, or 1 for an event in a lease (a leased event is at its first
    attempt; any other is claimed from a delivery row)."""
    rows = Delivery.objects.filter(group_name=group, claimed_until__isnull=False)
    leased = Lease.objects.filter(group_name=group).values_list("positions", flat=True)
    return sorted([*rows.values_list("attempts", flat=True), *(1 for p in leased for _ in p)])


def owed(group: str) -> int:
    """How many events the default transport still owes ``group``, claimed or not."""
    status = transports["default"].status([group])[group]
    return status.pending + status.in_flight


def published_rows() -> models.QuerySet[Any]:
    """The rows ``publish()`` writes: the outbox's, or the log's where the default
    transport reads the log (the log transport's ``publish()`` writes the log row itself:
    docs/internals.md, "The log transport", publishing)."""
    if transports["default"].reads_log:
        return EventRecord.objects.all()
    return OutboxMessage.objects.all()


def published_data() -> list[Any]:
    """The data of every row ``publish()`` wrote (``published_rows``), decoded."""
    found = published_rows().order_by("position").values_list("data", flat=True)
    return [json.loads(data) if isinstance(data, str) else data for data in found]


def published_row(event_id: uuid.UUID) -> dict[str, Any]:
    """The row ``publish()`` wrote for ``event_id`` (``published_rows``), its data decoded."""
    fields = ["type", "key", "version", "data", "correlation_id", "causation_id", "occurred_at"]
    if transports["default"].reads_log:
        return EventRecord.objects.filter(id=event_id).values(*fields).get()
    row = OutboxMessage.objects.filter(event_id=event_id).values(*fields).get()
    return {**row, "data": json.loads(row["data"])}


def unrelayed(event_type: str = "test.happened", data: dict[str, Any] | None = None) -> None:
    """An outbox row no relay has moved yet, as ``DatabaseTransport``'s ``publish()``
    writes it (and, on the log transport, a release from before the switch): what the
    outbox's report, health and metric count, on either transport."""
    OutboxMessage.objects.create(
        event_id=uuid7(), type=event_type, data=json.dumps(data or {}), occurred_at=timezone.now()
    )
