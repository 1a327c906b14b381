"""A typed event with three versions, two upcasters and handlers, for tests/test_typed.py."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django_events import Event, TypedEvent, handler, upcaster

from .models import Effect

received: list[Any] = []
"""What the handlers below were given, in order (cleared by the tests)."""
failing: set[int] = set()
"""Parcel ids the typed handler refuses, to make dead letters on demand."""


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


class ParcelShippedV1(TypedEvent, type="test.parcel_shipped", version=1):
    """A parcel left the warehouse (first release: weight in grams)."""

    parcel_id: int
    weight_grams: int


class ParcelShippedV2(TypedEvent, type="test.parcel_shipped", version=2):
    parcel_id: int
    weight_kg: Decimal


class ParcelShipped(ParcelShippedV2, version=3):
    """A parcel left the warehouse, with its carrier and what it holds."""

    carrier: str
    shipped_at: dt.datetime | None = None
    lines: list[Line] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


@upcaster("test.parcel_shipped", from_version=1)
def grams_to_kilograms(data: dict[str, Any]) -> dict[str, Any]:
    data["weight_kg"] = str(Decimal(data.pop("weight_grams")) / 1000)
    return data


@upcaster(ParcelShipped, from_version=2)
def unknown_carrier(data: dict[str, Any]) -> dict[str, Any]:
    data["carrier"] = "unknown"
    return data


@handler(ParcelShipped, group="typed")
def on_parcel_shipped(parcel: ParcelShipped) -> None:
    if parcel.parcel_id in failing:
        raise RuntimeError(f"parcel {parcel.parcel_id} refused")
    received.append(parcel)
    assert parcel.envelope is not None
    Effect.objects.create(
        group="typed", event_id=parcel.envelope.id, n=parcel.parcel_id, pid=os.getpid()
    )


@handler("test.parcel_shipped", group="typed-v2", versions=[2])
def on_parcel_shipped_v2(event: Event) -> None:
    received.append(event)
