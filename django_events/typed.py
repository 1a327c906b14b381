"""Typed events: a class declares an event type, its version and its fields.

.. code-block:: python

    class OrderPlaced(TypedEvent, type="order.placed", version=2):
        order_id: int
        total: Decimal
        coupon: str | None = None

Subclasses become frozen dataclasses with keyword-only construction that checks every
field, so a wrong or missing value fails where the event is built, before anything is
written. Handlers declared with the class receive an instance rebuilt from the (upcast)
payload, with the envelope as ``instance.envelope``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import versions
from .envelope import Event, validate_type, validate_version
from .exceptions import EventContractError, EventDeclarationError, InvalidEvent
from .fields import Mismatch, Record, record_fields

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**kwargs: Any) -> Any:
        return lambda cls: cls


T = TypeVar("T", bound="TypedEvent")
RESERVED = frozenset({"event_type", "event_version", "envelope"})

_declared: dict[tuple[str, int], type[TypedEvent]] = {}


@dataclass_transform(kw_only_default=True, frozen_default=True)
class TypedEvent:
    """Base class of typed events; declare ``type`` and ``version`` (default 1) as class
    keywords. A subclass of a typed event given only ``version`` is that type's new
    version, inheriting its fields; a subclass given neither is an abstract base. Instances are
    immutable; ``envelope`` is the delivered ``Event`` (``None`` until delivered), whose
    ``id`` is the idempotency key for side effects outside the database.
    """

    event_type: ClassVar[str]
    event_version: ClassVar[int]
    envelope: Event | None
    _record: ClassVar[Record]

    def __init_subclass__(
        cls, *, type: str | None = None, version: int | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        doc = cls.__dict__.get("__doc__")
        dataclasses.dataclass(init=False, frozen=True, eq=True, repr=True)(cls)
        cls.__doc__ = doc
        clashes = RESERVED & {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if clashes:
            raise EventDeclarationError(
                f"{cls.__qualname__}: {', '.join(sorted(clashes))} is reserved; "
                "name the field differently."
            )
        try:
            cls._record = Record(cls, record_fields(cls))
        except (TypeError, NameError) as exc:
            raise EventDeclarationError(f"{cls.__qualname__}: {exc}") from None
        if type is None and version is not None:
            type = getattr(cls, "event_type", None)  # a new version of its parent's type
        if type is None:
            return  # an abstract base that shares fields
        try:
            cls.event_type = validate_type(type)
            cls.event_version = validate_version(1 if version is None else version)
        except InvalidEvent as exc:
            raise EventDeclarationError(f"{cls.__qualname__}: {exc}") from None
        _declare(cls)

    def __init__(self, **values: Any) -> None:
        record = self._concrete_record()
        unknown = sorted(set(values) - record.names)
        if unknown:
            raise InvalidEvent(
                f"{type(self).__name__} has no field {unknown[0]!r}; its fields are "
                f"{', '.join(f.name for f in record.fields) or 'none'}."
            )
        for f in record.fields:
            if f.name in values:
                value = values[f.name]
            elif f.required:
                raise InvalidEvent(f"{type(self).__name__}.{f.name} is required.")
            else:
                value = f.default_value()
            try:
                f.codec.dump(value, f"{type(self).__name__}.{f.name}")
            except Mismatch as exc:
                raise InvalidEvent(f"{exc.path}: {exc.problem}.") from None
            object.__setattr__(self, f.name, value)
        object.__setattr__(self, "envelope", None)

    @classmethod
    def _concrete_record(cls) -> Record:
        if "event_type" not in cls.__dict__:
            raise EventDeclarationError(
                f"{cls.__qualname__} declares no event type; "
                f"use class {cls.__name__}(TypedEvent, type='thing.happened')."
            )
        return cls._record

    def to_data(self) -> dict[str, Any]:
        """The event's data as JSON values (Decimal, datetime, date and UUID as strings)."""
        try:
            data: dict[str, Any] = self._concrete_record().dump(self, type(self).__name__)
        except Mismatch as exc:  # a list or dict field changed after construction
            raise InvalidEvent(f"{exc.path}: {exc.problem}.") from None
        return data

    @classmethod
    def from_data(cls: type[T], data: dict[str, Any], envelope: Event | None = None) -> T:
        """Rebuild an instance from JSON data of this version; unknown keys are ignored.

        Raises ``EventContractError`` (a ``PermanentFailure``) naming the field that does
        not fit, so the event becomes a dead letter instead of being retried.
        """
        try:
            values = cls._concrete_record().load_values(
                data, f"{cls.event_type} v{cls.event_version}"
            )
        except Mismatch as exc:
            raise EventContractError(f"{exc.path}: {exc.problem}.") from None
        instance = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(instance, name, value)
        object.__setattr__(instance, "envelope", envelope)
        return instance

    @classmethod
    def from_event(cls: type[T], event: Event) -> T:
        """The typed instance for a delivered ``event`` already at this class's version."""
        if event.type != cls.event_type or event.version != cls.event_version:
            raise EventContractError(
                f"{cls.__qualname__} is {cls.event_type} v{cls.event_version}; "
                f"got {event.type} v{event.version}."
            )
        return cls.from_data(event.data, event)


def _declare(cls: type[TypedEvent]) -> None:
    slot = (cls.event_type, cls.event_version)
    existing = _declared.get(slot)
    if existing is not None and _name(existing) != _name(cls):
        raise EventDeclarationError(
            f"{cls.event_type} v{cls.event_version} is already declared by {_name(existing)}; "
            f"{_name(cls)} needs another version."
        )
    _declared[slot] = cls
    versions.known(cls.event_type, cls.event_version)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def declaration(event_type: str, version: int) -> type[TypedEvent] | None:
    """The class declaring ``event_type`` at ``version``, if any."""
    return _declared.get((event_type, version))


def declarations() -> list[type[TypedEvent]]:
    """Every declared typed event class, by type and version."""
    return [_declared[slot] for slot in sorted(_declared)]


def check_data(event_type: str, version: int, data: dict[str, Any]) -> None:
    """Validate JSON ``data`` published as a plain dict against its declaration, if any."""
    cls = _declared.get((event_type, version))
    if cls is None:
        return
    try:
        cls._record.load_values(data, f"{event_type} v{version}")
    except Mismatch as exc:
        raise InvalidEvent(f"{exc.path}: {exc.problem}.") from None
