"""The shop's events: facts, with the context their consumers need, versioned.

`order.placed` is at version 2. Version 1 (the first release) carried the customer's
email at the top level and no currency; events of that version may still be in the
queue, or in the log for a replay, so its declaration stays and an upcaster brings
them up to date on the way to every handler. `manage.py events_schema` writes both
versions' JSON Schemas into `events/`, where `--check` compares against them.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django_events import TypedEvent, upcaster


@dataclass(frozen=True)
class Customer:
    email: str


class OrderPlacedV1(TypedEvent, type="order.placed", version=1):
    """An order was placed (first release)."""

    order_id: int
    email: str
    total: Decimal
    kind: str


class OrderPlaced(TypedEvent, type="order.placed", version=2):
    """An order was placed: who ordered, what it costs and what kind of order it is."""

    order_id: int
    customer: Customer
    total: Decimal
    currency: str
    kind: str


@upcaster(OrderPlaced, from_version=1)
def customer_and_currency(data: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: the email moves into `customer`; every v1 order was in euros."""
    data["customer"] = {"email": data.pop("email")}
    data["currency"] = "EUR"
    return data
