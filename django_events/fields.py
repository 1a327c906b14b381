"""Field codecs: how each supported Python type becomes JSON, comes back, and is described.

A typed event's annotations are compiled once, when its class is declared, into one codec
per field. ``dump`` checks a Python value and turns it into JSON-ready data (publish time),
``load`` checks JSON data and rebuilds the Python value (consume time), and ``schema`` is
the JSON Schema for it. An annotation outside the supported set fails at declaration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import types
import typing
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Union

from django.utils.dateparse import parse_date, parse_datetime

SUPPORTED = (
    "str, int, float, bool, Decimal, datetime (aware), date, UUID, list[T], dict[str, T], "
    "T | None, and dataclasses of these"
)


class Mismatch(Exception):
    """A value does not fit its declared type; ``path`` names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


class Codec:
    def dump(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def load(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


class Scalar(Codec):
    """A value with one JSON form: a number, a bool, or a string in a fixed format."""

    def __init__(
        self,
        name: str,
        json_schema: dict[str, Any],
        accepts: Callable[[Any], bool],
        to_json: Callable[[Any], Any],
        from_json: Callable[[Any], Any],
    ) -> None:
        self.name = name
        self.json_schema = json_schema
        self.accepts = accepts
        self.to_json = to_json
        self.from_json = from_json

    def dump(self, value: Any, path: str) -> Any:
        if not self.accepts(value):
            raise Mismatch(path, f"expected {self.name}, got {_kind(value)} {value!r}")
        return self.to_json(value)

    def load(self, value: Any, path: str) -> Any:
        try:
            loaded = self.from_json(value)
        except (TypeError, ValueError, ArithmeticError):
            loaded = None
        if loaded is None:
            raise Mismatch(path, f"expected {self.name}, got {_kind(value)} {value!r}")
        return loaded

    def schema(self) -> dict[str, Any]:
        return dict(self.json_schema)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_decimal(value: Any) -> bool:
    return (isinstance(value, Decimal) and value.is_finite()) or _is_int(value)


def _is_aware(value: Any) -> bool:
    return isinstance(value, dt.datetime) and value.utcoffset() is not None


def _only(check: Callable[[Any], bool], convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: convert(value) if check(value) else None


def _load_decimal(value: Any) -> Decimal | None:
    if not isinstance(value, str) and not _is_int(value):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _load_datetime(value: Any) -> dt.datetime | None:
    parsed = parse_datetime(value) if isinstance(value, str) else None
    return parsed if parsed is not None and parsed.utcoffset() is not None else None


def _load_date(value: Any) -> dt.date | None:
    return parse_date(value) if isinstance(value, str) and len(value) == 10 else None


def _same(value: Any) -> Any:
    return value


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


SCALARS: dict[Any, Scalar] = {
    str: Scalar("str", {"type": "string"}, _is_str, _same, _only(_is_str, _same)),
    int: Scalar("int", {"type": "integer"}, _is_int, _same, _only(_is_int, _same)),
    float: Scalar("float", {"type": "number"}, _is_number, _same, _only(_is_number, float)),
    bool: Scalar("bool", {"type": "boolean"}, _is_bool, _same, _only(_is_bool, _same)),
    Decimal: Scalar(
        "Decimal",
        {"type": "string", "format": "decimal"},
        _is_decimal,
        lambda v: str(v if isinstance(v, Decimal) else Decimal(v)),
        _load_decimal,
    ),
    dt.datetime: Scalar(
        "an aware datetime",
        {"type": "string", "format": "date-time"},
        _is_aware,
        lambda v: v.isoformat(),
        _load_datetime,
    ),
    dt.date: Scalar(
        "date",
        {"type": "string", "format": "date"},
        lambda v: isinstance(v, dt.date) and not isinstance(v, dt.datetime),
        lambda v: v.isoformat(),
        _load_date,
    ),
    uuid.UUID: Scalar(
        "UUID",
        {"type": "string", "format": "uuid"},
        lambda v: isinstance(v, uuid.UUID),
        str,
        _only(lambda v: isinstance(v, str), uuid.UUID),
    ),
}


class Nullable(Codec):
    def __init__(self, inner: Codec) -> None:
        self.inner = inner

    def dump(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.dump(value, path)

    def load(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.load(value, path)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [self.inner.schema(), {"type": "null"}]}


class ListOf(Codec):
    def __init__(self, inner: Codec) -> None:
        self.inner = inner

    def dump(self, value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise Mismatch(path, f"expected a list, got {_kind(value)}")
        return [self.inner.dump(item, f"{path}[{i}]") for i, item in enumerate(value)]

    def load(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise Mismatch(path, f"expected a list, got {_kind(value)}")
        return [self.inner.load(item, f"{path}[{i}]") for i, item in enumerate(value)]

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.inner.schema()}


class DictOf(Codec):
    def __init__(self, inner: Codec) -> None:
        self.inner = inner

    def _items(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise Mismatch(path, f"expected a dict, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise Mismatch(path, f"dict keys must be str, got {_kind(key)} {key!r}")
        return value.items()

    def dump(self, value: Any, path: str) -> Any:
        return {k: self.inner.dump(v, f"{path}[{k!r}]") for k, v in self._items(value, path)}

    def load(self, value: Any, path: str) -> Any:
        return {k: self.inner.load(v, f"{path}[{k!r}]") for k, v in self._items(value, path)}

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.inner.schema()}


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    codec: Codec
    required: bool
    default: Any = dataclasses.MISSING
    default_factory: Any = dataclasses.MISSING

    def default_value(self) -> Any:
        if self.default_factory is not dataclasses.MISSING:
            return self.default_factory()
        return self.default


class Record(Codec):
    """An object with named, typed fields: a typed event's data or a nested dataclass."""

    def __init__(self, cls: type, fields: tuple[Field, ...]) -> None:
        self.cls = cls
        self.fields = fields
        self.names = frozenset(f.name for f in fields)

    def dump(self, value: Any, path: str) -> Any:
        if not isinstance(value, self.cls):
            raise Mismatch(path, f"expected {self.cls.__name__}, got {_kind(value)}")
        return {
            f.name: f.codec.dump(getattr(value, f.name), f"{path}.{f.name}") for f in self.fields
        }

    def load_values(self, value: Any, path: str) -> dict[str, Any]:
        """The field values from JSON data; unknown keys are ignored, absent optional
        fields take their defaults (so adding an optional field keeps old data loadable)."""
        if not isinstance(value, dict):
            raise Mismatch(path, f"expected an object, got {_kind(value)}")
        values = {}
        for f in self.fields:
            where = f"{path}.{f.name}"
            if f.name in value:
                values[f.name] = f.codec.load(value[f.name], where)
            elif f.required:
                raise Mismatch(where, "missing")
            else:
                values[f.name] = f.default_value()
        return values

    def load(self, value: Any, path: str) -> Any:
        return self.cls(**self.load_values(value, path))

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {f.name: f.codec.schema() for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
        }
        return schema


def record_fields(cls: type, skip: frozenset[str] = frozenset()) -> tuple[Field, ...]:
    """Compile the fields of dataclass ``cls``; ``TypeError`` names an unsupported one."""
    hints = typing.get_type_hints(cls)
    compiled = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        try:
            codec = codec_for(hints[f.name])
        except TypeError as exc:
            raise TypeError(f"{cls.__qualname__}.{f.name}: {exc}") from None
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        compiled.append(Field(f.name, codec, required, f.default, f.default_factory))
    return tuple(compiled)


_records: dict[type, Record] = {}


def codec_for(hint: Any) -> Codec:
    """The codec for one annotation."""
    if hint in SCALARS:
        return SCALARS[hint]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            return Nullable(codec_for(others[0]))
        raise TypeError(f"unions other than `T | None` are not supported: {hint}")
    if origin is list and len(args) == 1:
        return ListOf(codec_for(args[0]))
    if origin is dict and len(args) == 2 and args[0] is str:
        return DictOf(codec_for(args[1]))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if hint not in _records:
            _records[hint] = Record(hint, record_fields(hint))
        return _records[hint]
    raise TypeError(f"unsupported field type {hint!r}; supported: {SUPPORTED}")
