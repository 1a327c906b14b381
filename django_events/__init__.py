"""django-events: announce what happened, and let anyone who cares respond.

``publish()`` writes an event into the caller's transaction; ``@handler`` registers a
function for a consumer group; ``manage.py consume_events`` delivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Event", "TypedEvent", "event_data", "handler", "publish", "publish_many", "upcaster"]

if TYPE_CHECKING:
    from .context import event_data
    from .envelope import Event
    from .outbox import publish, publish_many
    from .registry import handler
    from .typed import TypedEvent
    from .versions import upcaster

_LAZY = {
    "TypedEvent": "typed",
    "event_data": "context",
    "upcaster": "versions",
}


def __getattr__(name: str) -> Any:
    # Lazy, so ``import django_events`` works before Django's apps are ready.
    if name == "publish":
        from .outbox import publish

        return publish
    if name == "publish_many":
        from .outbox import publish_many

        return publish_many
    if name == "handler":
        from .registry import handler

        return handler
    if name == "Event":
        from .envelope import Event

        return Event
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'django_events' has no attribute {name!r}")
