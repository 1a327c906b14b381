"""factory-boy factories for tests of handlers, admin customisations and triage tooling.

- ``EventFactory``: an ``Event`` envelope as a handler receives it.
- ``EventRecordFactory``: a row of the event log, as the relay writes it.
- ``DeadLetterFactory``: a dead letter and its logged event, as the worker leaves them.

Each follows the typed events: pass ``typed=OrderPlaced(...)`` and the type, version and
data come from the instance; a plain ``data`` dict for a declared type and version is
checked against that declaration, as ``publish()`` checks it. Data goes through the same
JSON encoding as a published event, so a ``Decimal`` comes out as the string a handler
would get. Needs factory-boy, the ``testing`` extra.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..conf import get_settings
from ..envelope import Event, encode_data, uuid7, validate_key, validate_type
from ..models import DeadLetter, EventRecord, OutboxMessage
from ..triage import fingerprint
from ..typed import TypedEvent, check_data
from ..versions import publish_version

try:
    import factory
    from factory.django import DjangoModelFactory
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "django_events.testing.factories needs factory-boy, which is not installed: "
        "pip install 'django-events-outbox[testing]'"
    ) from exc

__all__ = ["DeadLetterFactory", "EventFactory", "EventRecordFactory"]

DEFAULT_TYPE = "example.happened"


def _type(o: Any) -> str:
    typed: TypedEvent | None = o.typed
    return typed.event_type if typed is not None else DEFAULT_TYPE


def _version(o: Any) -> int:
    """The typed instance's version, else the newest declared for the type (else 1)."""
    typed: TypedEvent | None = o.typed
    if typed is not None:
        return typed.event_version
    return publish_version(o.type, None)


def _data(o: Any) -> dict[str, Any]:
    typed: TypedEvent | None = o.typed
    return typed.to_data() if typed is not None else {}


def _as_delivered(event_type: str, version: int, data: Any) -> dict[str, Any]:
    """``data`` checked as ``publish()`` checks it, then encoded and decoded as on the
    wire: what a handler of this type and version receives."""
    validate_type(event_type)
    publish_version(event_type, version, allow_old=True)  # older: to test an upcaster
    decoded: dict[str, Any] = json.loads(encode_data(data, get_settings().max_payload_bytes))
    check_data(event_type, version, decoded)
    return decoded


def next_position(using: str = "default") -> int:
    """A log position no later ``publish()`` will take: drawn from the outbox's own
    sequence (a row inserted and deleted in one transaction that no relay sees)."""
    with transaction.atomic(using=using):
        row = OutboxMessage.objects.using(using).create(
            event_id=uuid7(), type="factory.reserved", data="{}", occurred_at=timezone.now()
        )
        position = int(row.position)
        row.delete()
    return position


class _EnvelopeFactory(factory.Factory):
    """The fields an envelope and a log row share; ``typed=`` fills type, version, data."""

    class Meta:
        abstract = True

    class Params:
        typed: TypedEvent | None = None

    id = factory.LazyFunction(uuid7)
    type = factory.LazyAttribute(_type)
    version = factory.LazyAttribute(_version)
    data = factory.LazyAttribute(_data)
    key = None
    metadata = factory.Dict({})
    occurred_at = factory.LazyFunction(timezone.now)
    source = "tests"


def _checked(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs["data"] = _as_delivered(kwargs["type"], kwargs["version"], kwargs["data"])
    kwargs["key"] = validate_key(kwargs["key"])
    return kwargs


class EventFactory(_EnvelopeFactory):
    """An ``Event`` as delivered: ``EventFactory(type="order.placed", data={...})`` or
    ``EventFactory(typed=OrderPlaced(order_id=1, total=Decimal("9.50")))``."""

    class Meta:
        model = Event

    correlation_id = None
    causation_id = None

    @classmethod
    def _create(cls, model_class: builtins.type[Event], *args: Any, **kwargs: Any) -> Event:
        return model_class(*args, **_checked(kwargs))

    _build = _create


class EventRecordFactory(DjangoModelFactory, _EnvelopeFactory):
    """A row of the event log (what the admin lists and replay reads), at a position no
    later publish takes. Accepts ``typed=`` like ``EventFactory``."""

    class Meta:
        model = EventRecord

    position = factory.LazyFunction(next_position)

    @classmethod
    def _create(
        cls, model_class: builtins.type[EventRecord], *args: Any, **kwargs: Any
    ) -> EventRecord:
        return super()._create(model_class, *args, **_checked(kwargs))


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/django_events/worker.py", line 1, in handle\n'
    '  File "/srv/app/{module}.py", line 10, in {function}\n'
    "{error_class}: {error_message}\n"
)


def _traceback(o: Any) -> str:
    module, _, function = (o.handler or "app.events.handler").rpartition(".")
    return TRACEBACK.format(
        module=module.replace(".", "/"),
        function=function,
        error_class=o.error_class,
        error_message=o.error_message,
    )


class DeadLetterFactory(DjangoModelFactory):
    """A dead letter with its logged event, fingerprinted as the worker does, so the
    admin's failure groups and ``dead_letters`` triage see it like a real one.

    ``DeadLetterFactory(discarded=True)`` and ``retried=True`` give resolved ones;
    ``event__type=...`` or ``event__typed=...`` shape the event.
    """

    class Meta:
        model = DeadLetter

    class Params:
        discarded = factory.Trait(
            state=DeadLetter.State.DISCARDED,
            resolved_at=factory.LazyFunction(timezone.now),
            resolved_by="tests",
            reason="discarded in a test",
        )
        retried = factory.Trait(
            state=DeadLetter.State.RETRIED,
            resolved_at=factory.LazyFunction(timezone.now),
            resolved_by="tests",
        )

    event = factory.SubFactory(EventRecordFactory)
    group = "example"
    handler = "app.events.handle"
    attempts = 3
    error_class = "RuntimeError"
    error_message = factory.LazyAttribute(lambda o: f"could not handle {o.event.type}")
    traceback = factory.LazyAttribute(_traceback)
    fingerprint = factory.LazyAttribute(
        lambda o: fingerprint(o.error_class, o.handler, o.traceback)
    )
    first_failed_at = factory.LazyFunction(timezone.now)
    last_failed_at = factory.SelfAttribute("first_failed_at")
    state = DeadLetter.State.OPEN
