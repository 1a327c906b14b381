"""The few SQL expressions that differ between PostgreSQL and SQLite.

Every due time and lease is computed by the database clock, never the worker's
(DESIGN.md, "clock skew"). Hot paths use raw SQL through Django's connection; table
names come from the models and are quoted by the backend, never from input.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .exceptions import EventsConfigurationError

SUPPORTED_VENDORS = ("postgresql", "sqlite")


def vendor(using: str) -> str:
    return vendor_of(connections[using])


def vendor_of(connection: BaseDatabaseWrapper) -> str:
    name: str = connection.vendor
    if name not in SUPPORTED_VENDORS:
        raise EventsConfigurationError(
            f"django-events supports PostgreSQL and SQLite; database {connection.alias!r} "
            f"is {name}."
        )
    return name


def now(vendor: str) -> str:
    """Database time, per statement on PostgreSQL so leases move inside long transactions."""
    if vendor == "postgresql":
        return "statement_timestamp()"
    return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"


def now_plus(vendor: str) -> str:
    """Database time plus the number of seconds given as the next parameter (see ``seconds``)."""
    if vendor == "postgresql":
        return "(statement_timestamp() + make_interval(secs => %s))"
    return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)"


RELAXED_COMMIT = "set_config('synchronous_commit', 'off', true)"
"""Evaluated inside a PostgreSQL statement: its transaction commits without waiting for the
disk. Used only for the engine's own bookkeeping (relaying, claiming), never for a handler's
or publisher's transaction. A server crash can lose the last such commits, and losing one
is harmless: the outbox rows or deliveries it moved come back and are moved again, and any
later synchronous commit (a handler's) flushes the write-ahead log past it first."""


def seconds(vendor: str, value: float) -> Any:
    return float(value) if vendor == "postgresql" else f"{float(value):+.3f} seconds"


def age_seconds(vendor: str, column: str) -> str:
    """Seconds between ``column`` and the database's now."""
    if vendor == "postgresql":
        return f"extract(epoch from (statement_timestamp() - {column}))"
    return f"((julianday('now') - julianday({column})) * 86400.0)"


@cache
def _table(model_label: str, quote: Any) -> str:
    from django.apps import apps

    model = apps.get_model("django_events", model_label)
    return str(quote(model._meta.db_table))


def table(connection: BaseDatabaseWrapper, model_label: str) -> str:
    """The quoted table name of a django-events model."""
    return _table(model_label, connection.ops.quote_name)


def in_list(count: int) -> str:
    return ", ".join(["%s"] * count)


def uuid_value(vendor: str, value: Any) -> Any:
    """A UUID as the ORM stores it: native on PostgreSQL, 32 hex digits on SQLite."""
    if value is None or vendor == "postgresql" or isinstance(value, str):
        return value  # a string is already in the stored form
    return value.hex


def datetime_value(connection: BaseDatabaseWrapper, value: Any) -> Any:
    return connection.ops.adapt_datetimefield_value(value)
