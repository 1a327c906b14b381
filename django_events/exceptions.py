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


class UndecodableEvent(EventsError, ValueError):
    """A stored or received event could not be decoded."""


class TransportUnavailable(EventsError, ConnectionError):
    """The transport's server cannot be reached; the worker retries with a growing delay."""


class HandlerRegistrationError(EventsConfigurationError):
    """A handler was registered in a way that cannot work."""
