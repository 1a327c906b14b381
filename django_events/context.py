"""Self-contained event data from model instances, so consumers need not call back.

.. code-block:: python

    publish("order.placed", event_data(
        order, "id", "total", "placed_at",
        customer=("id", "email"),
        lines=fields("sku", "quantity", product=("name",)),
    ))

Plain names are attributes of the instance (fields, ``*_id`` columns, properties). A
keyword names a relation and what to take from it: a foreign key or one-to-one gives an
object (or ``None``), a reverse foreign key or many-to-many a list of objects, in the
manager's order; use ``prefetch_related`` to fetch those in one query.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Union

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.fields.files import FieldFile

from .exceptions import InvalidEvent, PayloadNotSerializable

_PLAIN = (str, int, float, bool, Decimal, dt.datetime, dt.date, uuid.UUID, list, dict)
_encoder = DjangoJSONEncoder()


@dataclass(frozen=True)
class Fields:
    """What to take from an object: attribute names, and relations with their own spec."""

    names: tuple[str, ...]
    related: dict[str, Fields] = field(default_factory=dict)


Spec = Union[Fields, Sequence[str]]  # noqa: UP007 - a runtime alias on Python 3.10


def fields(*names: str, **related: Spec) -> Fields:
    """A nested spec: ``fields("sku", product=("name",))``."""
    return Fields(names, {name: _spec(spec) for name, spec in related.items()})


def _spec(spec: Spec) -> Fields:
    if isinstance(spec, Fields):
        return spec
    if isinstance(spec, str) or not all(isinstance(n, str) for n in spec):
        raise TypeError(f"Expected field names or fields(...), got {spec!r}.")
    return Fields(tuple(spec))


def event_data(instance: models.Model, *names: str, **related: Spec) -> dict[str, Any]:
    """The chosen fields of ``instance`` and its related objects, as event data.

    Values encode exactly as ``DjangoJSONEncoder`` would encode them at publish;
    ``Decimal``, ``datetime``, ``date`` and ``UUID`` stay Python objects, so the result
    also fills a typed event. A file becomes its name; ``time``, ``timedelta`` and lazy
    translations become the encoder's strings. An unknown name raises ``InvalidEvent``.
    """
    return _take(instance, fields(*names, **related), type(instance).__name__)


def _take(instance: Any, spec: Fields, path: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in spec.names:
        data[name] = _value(_attribute(instance, name, path), f"{path}.{name}")
    for name, sub in spec.related.items():
        target = _attribute(instance, name, path)
        where = f"{path}.{name}"
        if target is None:
            data[name] = None
        elif isinstance(target, models.Manager):
            data[name] = [_take(obj, sub, f"{where}[{i}]") for i, obj in enumerate(target.all())]
        elif isinstance(target, models.Model):
            data[name] = _take(target, sub, where)
        else:
            raise InvalidEvent(f"{where} is a {type(target).__name__}, not a related object.")
    return data


def _attribute(instance: Any, name: str, path: str) -> Any:
    if name.startswith("_"):
        raise InvalidEvent(f"{path}.{name}: private attributes are not event data.")
    try:
        return getattr(instance, name)
    except models.ObjectDoesNotExist:  # a missing reverse one-to-one (also an AttributeError)
        return None
    except AttributeError:
        raise InvalidEvent(f"{path} has no field {name!r}.") from None


def _value(value: Any, path: str) -> Any:
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, FieldFile):
        return value.name or None
    if isinstance(value, models.Model):
        raise InvalidEvent(f"{path} is a related object; name it as a keyword with its fields.")
    if isinstance(value, models.Manager):
        raise InvalidEvent(f"{path} is a relation; name it as a keyword with its fields.")
    try:
        return _encoder.default(value)
    except (TypeError, ValueError):
        raise PayloadNotSerializable(
            f"{path} is a {type(value).__name__}, which JSON cannot represent."
        ) from None
