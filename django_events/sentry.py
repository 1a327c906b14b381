"""A handler's exception, reported to Sentry with the event it was handling as tags.

Sentry is optional and not an extra: when ``sentry_sdk`` is importable and initialised
(``sentry_sdk.init`` with a DSN), each handler run gets a scope of its own tagged with the
event's id, type, group, attempt and service, so whatever the handler reports itself
carries them too, and an exception it raises is captured there, every attempt, before the
worker retries or dead-letters the event. Without ``sentry_sdk``, or before ``init``, the
hook is one check and a shared no-op context (docs/observability.md, "Sentry").
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

from . import logfields

if TYPE_CHECKING:
    from .transports.base import Claimed

try:  # the one import guard: everything below checks ``sentry_sdk``
    import sentry_sdk
    from sentry_sdk.utils import event_from_exception
except ImportError:  # pragma: no cover - exercised by the install without sentry_sdk
    sentry_sdk = None  # type: ignore[assignment]
    _PASS_OPTIONS = False
else:
    # sentry-sdk 2 takes the client's options as an argument; 3 reads them itself and
    # refuses the argument (a TypeError that replaced the handler's exception).
    _PASS_OPTIONS = "client_options" in inspect.signature(event_from_exception).parameters

PREFIX = "django_events."  # Sentry has an ``event_id`` of its own: the tags say whose
MECHANISM = {"type": "django_events", "handled": False}
_NOTHING = nullcontext()


def enabled() -> bool:
    """True when ``sentry_sdk`` is installed and its client can send: initialised with a
    DSN (``is_active()`` alone is true after an ``init()`` without one, which sends nothing)."""
    return sentry_sdk is not None and sentry_sdk.get_client().transport is not None


def tags(claimed: Claimed) -> dict[str, str]:
    """The event's log fields as Sentry tags: ``django_events.event_id`` and so on."""
    return {PREFIX + name: str(value) for name, value in logfields.for_claimed(claimed).items()}


def reporting(claimed: Claimed) -> AbstractContextManager[None]:
    """Around one handler run: a tagged scope, and its exception captured on the way out
    (it goes on to the worker)."""
    return _reporting(claimed) if enabled() else _NOTHING


@contextmanager
def _reporting(claimed: Claimed) -> Iterator[None]:
    with sentry_sdk.new_scope() as scope:
        scope.set_tags(tags(claimed))
        try:
            yield
        except Exception as exc:
            options = {"client_options": sentry_sdk.get_client().options} if _PASS_OPTIONS else {}
            event, hint = event_from_exception(exc, mechanism=MECHANISM, **options)
            scope.capture_event(event, hint=hint)
            raise
