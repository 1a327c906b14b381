"""Which function handles which event type, for which consumer group.

A group is one consumer: it gets every event of the types it subscribes to, once, and
holds at most one handler per type. Two functions that both react to ``order.placed``
belong in two groups, so each keeps its own progress, retries and dead letters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .conf import GROUP_NAME
from .envelope import Event, validate_type, validate_version
from .exceptions import HandlerRegistrationError, InvalidEvent
from .typed import TypedEvent
from .versions import upcast

HandlerFunc = Callable[..., Any]
F = TypeVar("F", bound=HandlerFunc)


@dataclass(frozen=True)
class Handler:
    func: HandlerFunc
    group: str
    event_type: str
    ordered: bool = False
    max_attempts: int | None = None
    backoff_base: float | None = None
    backoff_max: float | None = None
    event_class: type[TypedEvent] | None = None
    versions: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"

    def call(self, event: Event) -> Any:
        """Run the function on ``event`` upcast to a version it accepts (the newest known
        unless it says otherwise); a typed handler gets an instance of its class."""
        event = upcast(event, self.versions)
        if self.event_class is not None:
            return self.func(self.event_class.from_event(event))
        return self.func(event)


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}

    def add(self, handler: Handler) -> None:
        slot = (handler.group, handler.event_type)
        existing = self._handlers.get(slot)
        if existing is not None and existing.name != handler.name:
            raise HandlerRegistrationError(
                f"Group {handler.group!r} already handles {handler.event_type!r} with "
                f"{existing.name}; give {handler.name} its own group."
            )
        self._handlers[slot] = handler

    def get(self, group: str, event_type: str) -> Handler | None:
        return self._handlers.get((group, event_type))

    def groups(self) -> list[str]:
        return sorted({group for group, _ in self._handlers})

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._handlers.values()))

    def subscriptions(self, groups: list[str] | None = None) -> list[tuple[str, str, bool]]:
        """``(event_type, group, ordered)`` for every handler, the relay's fan-out table."""
        return sorted(
            (h.event_type, h.group, h.ordered)
            for h in self._handlers.values()
            if groups is None or h.group in groups
        )

    def clear(self) -> None:
        self._handlers.clear()


registry = Registry()


def handler(
    *types: str | type[TypedEvent],
    group: str,
    max_attempts: int | None = None,
    ordered: bool = False,
    backoff_base: float | None = None,
    backoff_max: float | None = None,
    versions: Iterable[int] | None = None,
) -> Callable[[F], F]:
    """Register the decorated function to handle ``types`` for consumer ``group``.

    The function runs inside ``transaction.atomic()`` together with the group's inbox
    record, so its database writes happen once per event. Anything it does outside the
    database must use ``event.id`` as its idempotency key. With ``ordered=True``, events
    sharing a key are handled one at a time, in publish order.

    A type given as a ``TypedEvent`` class makes the function receive an instance of it
    (the envelope is ``instance.envelope``), upcast to that class's version. For a type
    given by name, ``versions`` lists the versions the function accepts; each event is
    upcast to the lowest accepted version at or above its own (default: the newest known).
    """
    if not types:
        raise HandlerRegistrationError("handler() needs at least one event type.")
    if not isinstance(group, str) or not GROUP_NAME.match(group):
        raise HandlerRegistrationError(
            f"Invalid group name {group!r}: letters, digits and _.:- (at most 100 characters)."
        )
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise HandlerRegistrationError(
            f"max_attempts must be a positive int, got {max_attempts!r}."
        )
    for value, name in ((backoff_base, "backoff_base"), (backoff_max, "backoff_max")):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
        ):
            raise HandlerRegistrationError(f"{name} must be a number >= 0, got {value!r}.")
    accepted = _versions(versions)
    targets: list[tuple[str, type[TypedEvent] | None, tuple[int, ...] | None]] = []
    for spec in types:
        if isinstance(spec, type) and issubclass(spec, TypedEvent):
            if "event_type" not in spec.__dict__:
                raise HandlerRegistrationError(f"{spec.__qualname__} declares no event type.")
            if accepted is not None:
                raise HandlerRegistrationError(
                    f"versions= does not apply to {spec.__qualname__}: a typed handler "
                    f"accepts its class's version ({spec.event_version})."
                )
            targets.append((spec.event_type, spec, (spec.event_version,)))
        else:
            targets.append((validate_type(spec), None, accepted))

    def register(func: F) -> F:
        for event_type, event_class, accepts in targets:
            registry.add(
                Handler(
                    func=func,
                    group=group,
                    event_type=event_type,
                    ordered=ordered,
                    max_attempts=max_attempts,
                    backoff_base=backoff_base,
                    backoff_max=backoff_max,
                    event_class=event_class,
                    versions=accepts,
                )
            )
        return func

    return register


def _versions(versions: Iterable[int] | None) -> tuple[int, ...] | None:
    if versions is None:
        return None
    if isinstance(versions, int):
        versions = (versions,)
    try:
        accepted = tuple(sorted({validate_version(v) for v in versions}))
    except (InvalidEvent, TypeError) as exc:
        raise HandlerRegistrationError(f"versions must be positive ints: {exc}") from None
    if not accepted:
        raise HandlerRegistrationError("versions must name at least one version.")
    return accepted
