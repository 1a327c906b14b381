"""Dead letters for the triage tests: real ones from the worker, or many made in bulk."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from django.db.models import Max
from django.test import override_settings
from django.utils import timezone

from django_events import publish
from django_events.models import DeadLetter, Delivery, EventRecord
from django_events.testing import deliver
from django_events.triage import fingerprint

TRACE = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/.venv/lib/python3.11/site-packages/django_events/worker.py", line 1, '
    "in handle\n"
    '  File "/srv/app/shop/events.py", line {line}, in {func}\n'
    "{error}: boom\n"
)


SECRET = "123-45-6789"  # noqa: S105 - a fake social security number, not a password
MESSAGE = f"no customer with ssn {SECRET}"
ERROR = "shop.errors.NoCustomer"

# Every lookup a URL could try on leaky()'s private fields, with a value that matches.
DEAD_LETTER_LOOKUPS = [
    ("error_message", MESSAGE),
    ("error_message__icontains", "ssn"),
    ("error_message__startswith", "no customer"),
    ("error_message__regex", "^no.*6789$"),
    ("traceback__icontains", SECRET),
    ("traceback__startswith", "Traceback"),
    ("traceback__regex", "123-45"),
    ("event__data__ssn", SECRET),
    ("event__data__ssn__startswith", "1"),
    ("event__metadata__ssn__icontains", "45"),
    ("event__deliveries__last_error__icontains", SECRET),
    ("reason__icontains", ""),  # not private, but not a declared filter either
]
EVENT_LOOKUPS = [
    ("data__ssn", SECRET),
    ("data__ssn__startswith", "1"),
    ("data__ssn__icontains", "45"),
    ("data__ssn__regex", "^123"),
    ("metadata__ssn", SECRET),
    ("metadata__ssn__startswith", "1"),
    ("dead_letters__error_message__icontains", "ssn"),
    ("dead_letters__traceback__icontains", SECRET),
    ("deliveries__last_error__icontains", SECRET),
]


def failing(data: dict[str, Any] | None = None, groups: tuple[str, ...] = ("alpha",)) -> list:
    """Publish one ``test.happened`` that fails in ``groups`` and run it to dead letters."""
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1}):
        publish("test.happened", {"n": 1, "fail": True, **(data or {})})
        deliver(list(groups))
    return list(DeadLetter.objects.order_by("id"))


def bulk(
    n: int,
    *,
    group: str = "alpha",
    error_class: str = "RuntimeError",
    handler: str = "tests.testapp.events.alpha",
    event_type: str = "test.happened",
    func: str = "behave",
    key: str | None = None,
    state: str = DeadLetter.State.OPEN,
    correlation_id: uuid.UUID | None = None,
) -> list[DeadLetter]:
    """``n`` dead letters (and their events) in two queries, like the worker would leave."""
    start = (EventRecord.objects.aggregate(m=Max("position"))["m"] or 0) + 1
    now = timezone.now()
    events = [
        EventRecord(
            id=uuid.uuid4(),
            position=position,
            type=event_type,
            key=key,
            data={"n": position, "secret": "4111-1111"},
            metadata={"tenant": "acme"},
            occurred_at=now,
            correlation_id=correlation_id,
        )
        for position in itertools.islice(itertools.count(start), n)
    ]
    EventRecord.objects.bulk_create(events)
    trace = TRACE.format(line=start, func=func, error=error_class)
    return DeadLetter.objects.bulk_create(
        DeadLetter(
            event_id=event.id,
            group=group,
            handler=handler,
            attempts=3,
            error_class=error_class,
            error_message=f"{error_class} for order {event.position}",
            traceback=trace,
            fingerprint=fingerprint(error_class, handler, trace),
            first_failed_at=now,
            last_failed_at=now,
            state=state,
        )
        for event in events
    )


def leaky() -> DeadLetter:
    """A dead letter whose payload, metadata, message, traceback and delivery's last error
    all carry SECRET, beside one that carries nothing (so that 1 row or 0 would tell)."""
    bulk(1, error_class="ValueError")
    dead = bulk(1, error_class=ERROR, handler="shop.events.sync")[0]
    EventRecord.objects.filter(id=dead.event_id).update(
        data={"ssn": SECRET}, metadata={"ssn": SECRET}
    )
    DeadLetter.objects.filter(pk=dead.pk).update(
        error_message=MESSAGE, traceback=f"Traceback (most recent call last):\nKeyError: {SECRET}"
    )
    Delivery.objects.create(
        event_id=dead.event_id, group_name=dead.group, position=1, attempts=3, last_error=MESSAGE
    )
    dead.refresh_from_db()
    return dead
