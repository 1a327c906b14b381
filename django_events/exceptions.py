"""Errors raised by django-events.

Each family can be caught as the django-events error or as the built-in it refines, like
``InvalidEventType(EventsError, ValueError)``. The docstring is the default message.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class EventsError(Exception):
    """django-events error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class EventsConfigurationError(EventsError, ImproperlyConfigured):
    """DJANGO_EVENTS is misconfigured."""


class InvalidEvent(EventsError, ValueError):
    """The event cannot be published as given; nothing was written."""


class InvalidEventType(InvalidEvent):
    """Event types are dotted lower-case names such as ``order.placed``."""


class PayloadNotSerializable(InvalidEvent, TypeError):
    """The event data holds a value JSON cannot represent."""


class PayloadTooLarge(InvalidEvent):
    """The encoded event is larger than MAX_PAYLOAD_BYTES."""


class UnstorableValue(InvalidEvent):
    """A value holds text or a number that some stage cannot store or carry (a NUL, a lone
    surrogate, NaN or Infinity, nesting too deep); the message names its path."""


class UndecodableEvent(EventsError, ValueError):
    """A stored or received event could not be decoded."""


class PublishRefused(EventsError):
    """The transport refused some events of a publish because of what they hold, and sent
    the others. ``refused`` maps the outbox position of each refused event to the reason;
    the relay sets those aside as dead letters and never sends the batch again."""

    def __init__(self, refused: dict[int, str]) -> None:
        self.refused = refused
        reasons = "; ".join(f"position {at}: {why}" for at, why in list(refused.items())[:3])
        super().__init__(f"The transport refused {len(refused)} event(s): {reasons}")


class TransportUnavailable(EventsError, ConnectionError):
    """The transport's server cannot be reached; the worker retries with a growing delay."""


class BackgroundThreadDied(EventsError, RuntimeError):
    """A background thread of the worker (heartbeat, relay or watchdog) died; the worker
    stopped rather than run on without it."""


class HandlerRegistrationError(EventsConfigurationError):
    """A handler was registered in a way that cannot work."""


class EventDeclarationError(EventsConfigurationError, TypeError):
    """A typed event class is declared in a way that cannot work."""


class PermanentFailure(EventsError):
    """Retrying cannot help: the event becomes a dead letter at once, without retries.

    Raise it (or a subclass) from a handler for an event it can never handle; the dead
    letter can still be retried by hand once the cause is fixed.
    """


class UnknownEventVersion(PermanentFailure, ValueError):
    """The event's version is newer than any version this consumer knows."""


class EventContractError(PermanentFailure, ValueError):
    """The event's data does not match its declared type."""
