"""Event versions and upcasters: old payloads are brought up to date on the way to a handler.

Each event type may know several versions: those declared as typed events, and those
implied by upcasters. An upcaster registered for ``(type, from_version)`` turns data of
that version into data of the next one; a chain of them takes any old payload to the
version a handler accepts. Upcasting happens in one place, ``Handler.call``, so live
delivery, dead-letter retry and replay all get it. Nothing stored is rewritten.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .envelope import Event, validate_type, validate_version
from .exceptions import (
    EventContractError,
    HandlerRegistrationError,
    InvalidEvent,
    UnknownEventVersion,
)

if TYPE_CHECKING:
    from .typed import TypedEvent

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
U = TypeVar("U", bound=Upcaster)

_upcasters: dict[tuple[str, int], Upcaster] = {}
_known: dict[str, set[int]] = {}
_current: dict[str, int] = {}


def known(event_type: str, version: int) -> None:
    """Record that ``event_type`` has a ``version`` (typed declarations call this)."""
    _known.setdefault(event_type, set()).add(version)
    _current[event_type] = max(_known[event_type])


def current_version(event_type: str) -> int | None:
    """The newest version of ``event_type`` this process knows, or None if it knows none."""
    return _current.get(event_type)


def known_versions(event_type: str) -> set[int]:
    return set(_known.get(event_type, ()))


def versioned_types() -> list[str]:
    return sorted(_known)


def upcasters() -> dict[tuple[str, int], Upcaster]:
    return dict(_upcasters)


def upcaster(event_type: str | type[TypedEvent], *, from_version: int) -> Callable[[U], U]:
    """Register the decorated function to turn ``event_type`` data of ``from_version``
    into data of ``from_version + 1``.

    The function takes the old ``data`` (a copy it may change, as JSON values) and returns
    the new, as JSON values too. It runs on every delivery of an old event, so keep it
    pure and quick: no database reads, no I/O. ``event_type`` is a name or a typed class.
    """
    name = validate_type(getattr(event_type, "event_type", event_type))
    validate_version(from_version)

    def register(func: U) -> U:
        existing = _upcasters.get((name, from_version))
        if existing is not None and _qualname(existing) != _qualname(func):
            raise HandlerRegistrationError(
                f"{name!r} already has an upcaster from version {from_version}: "
                f"{_qualname(existing)}."
            )
        _upcasters[(name, from_version)] = func
        known(name, from_version)
        known(name, from_version + 1)
        return func

    return register


def _qualname(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def target_version(event: Event, accepts: Iterable[int] | None) -> int:
    """The version ``event`` is upcast to for a handler that ``accepts`` those versions
    (None: the newest known). Raises ``UnknownEventVersion`` if it cannot get there."""
    current = _current.get(event.type)
    if current is not None and event.version > current:
        raise UnknownEventVersion(
            f"{event.type} version {event.version} is newer than any version this "
            f"consumer knows (up to {current}). Deploy a consumer that knows it, then retry "
            "the dead letter."
        )
    if accepts is None:
        return event.version if current is None else current
    reachable = sorted(v for v in accepts if v >= event.version)
    if not reachable:
        raise UnknownEventVersion(
            f"{event.type} version {event.version} is newer than the handler accepts "
            f"({', '.join(map(str, sorted(accepts)))}). Update the handler, then retry "
            "the dead letter."
        )
    return reachable[0]


def upcast(event: Event, accepts: Iterable[int] | None = None) -> Event:
    """``event`` with its data brought up to the version the handler accepts."""
    target = target_version(event, accepts)
    if target == event.version:
        return event
    data = copy.deepcopy(event.data)
    for version in range(event.version, target):
        step = _upcasters.get((event.type, version))
        if step is None:
            raise UnknownEventVersion(
                f"{event.type} has no upcaster from version {version} to {version + 1}, "
                f"so version {event.version} cannot reach version {target}. Register one "
                "with @upcaster, then retry the dead letter."
            )
        data = step(data)
        if not isinstance(data, dict):
            raise EventContractError(
                f"The upcaster {_qualname(step)} returned {type(data).__name__}, not a dict."
            )
    return dataclasses.replace(event, version=target, data=data)


def publish_version(event_type: str, version: int | None, allow_old: bool = False) -> int:
    """The version to publish ``event_type`` at: ``version``, or the newest known (else 1).

    Publishing an older version than the newest known is refused unless ``allow_old``
    (consumers would have to upcast what the publisher could have sent new), and so is
    one newer than any known (no consumer here could read it).
    """
    current = _current.get(event_type)
    if version is None:
        return current or 1
    version = validate_version(version)
    if current is None or version == current:
        return version
    if version > current:
        raise InvalidEvent(
            f"{event_type} version {version} is newer than any declared (up to {current})."
        )
    if not allow_old:
        raise InvalidEvent(
            f"{event_type} is at version {current}; publishing version {version} needs "
            "allow_old_version=True."
        )
    return version
