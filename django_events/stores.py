"""Where subscriptions are kept: the store every service sharing a transport declares in.

The part of subscriptions that a transport implements (docs/internals.md, "The transport
boundary"): the ``SubscriptionStore`` interface, the rules one declaration follows in
every store (``plan``) and the database's own store, the ``Subscription`` table. It reads
no settings and no handler registry, so a transport may import it; declaring, fanning out
and retiring, which do, are the engine's (``subscriptions``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from django.db import connections, transaction
from django.db.models.functions import Now

if TYPE_CHECKING:
    from .models import Subscription

FanOut = list[tuple[str, str, bool]]
"""``(event_type, group, ordered)`` rows, the shape ``Transport.publish`` takes."""


@dataclass
class Declaration:
    """What one ``declare`` changed, as ``(group, event_type)`` pairs."""

    service: str
    added: list[tuple[str, str]] = field(default_factory=list)
    reordered: list[tuple[str, str]] = field(default_factory=list)
    reopened: list[tuple[str, str]] = field(default_factory=list)
    retired: list[tuple[str, str]] = field(default_factory=list)
    kept: int = 0

    @property
    def fan_out_changed(self) -> bool:
        """Whether relays must re-read to fan out correctly (retired rows still receive)."""
        return bool(self.added or self.reordered)

    def lines(self) -> list[str]:
        """One line per change, for ``migrate`` and ``setup_events`` output."""
        found = []
        for verb, pairs in (
            ("subscribed", self.added),
            ("ordering changed", self.reordered),
            ("declared again", self.reopened),
            ("retired (it still receives events until unsubscribed)", self.retired),
        ):
            found += [f"{self.service}: {group} on {type_}: {verb}" for group, type_ in pairs]
        return found


Wanted = dict[tuple[str, str], bool]
"""``{(group, event type): ordered}`` a service declares."""


@dataclass(frozen=True)
class Stored:
    """What a store holds about one of a service's subscriptions, for ``plan``."""

    ordered: bool
    retired: bool


def plan(
    service: str, wanted: Wanted, stored: Mapping[tuple[str, str], Stored], *, replace: bool
) -> Declaration:
    """What declaring ``wanted`` over ``stored`` (the service's rows) changes: the same
    rules for every store, which then applies it (``kept`` are refreshed)."""
    result = Declaration(service)
    result.added = sorted(slot for slot in wanted if slot not in stored)
    result.kept = len(wanted) - len(result.added)
    result.reordered = sorted(
        slot
        for slot, ordered in wanted.items()
        if slot in stored and stored[slot].ordered != ordered
    )
    if replace:
        result.reopened = sorted(slot for slot in wanted if slot in stored and stored[slot].retired)
        result.retired = sorted(
            s for s, row in stored.items() if s not in wanted and not row.retired
        )
    return result


class SubscriptionStore(Protocol):
    """Where the services sharing a transport keep their subscriptions: a transport that
    has one returns it from ``Transport.subscription_store()`` (the database transport:
    the ``Subscription`` table; Redis: a hash under its ``prefix``)."""

    key: str
    """Names the store, for the fan-out cache (two transports may share one)."""

    def declare(self, service: str, wanted: Wanted, *, replace: bool) -> Declaration:
        """Store ``service``'s subscriptions atomically (see ``declare``)."""
        ...

    def fan_out(self) -> FanOut:
        """Every stored subscription, by any service, retired ones too."""
        ...

    def rows(self) -> list[Subscription]:
        """Every stored subscription as a ``Subscription`` (unsaved outside the database)."""
        ...

    def remove(
        self, row: Subscription, drop_backlog: Callable[[str, str], int | None]
    ) -> tuple[bool, int | None]:
        """Remove ``row`` if it is orphaned; call ``drop_backlog(group, type)`` when it was
        the last of its pair. Returns (removed, what was dropped)."""
        ...


class DatabaseStore:
    """The ``Subscription`` table of one database (Level 0)."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.key = f"database:{using}"

    def declare(self, service: str, wanted: Wanted, *, replace: bool) -> Declaration:
        from .models import Subscription

        table = Subscription.objects.using(self.using)
        with transaction.atomic(using=self.using):
            rows = {
                (row.group, row.event_type): row
                for row in table.select_for_update().filter(service=service)
            }
            stored = {s: Stored(row.ordered, row.retired_at is not None) for s, row in rows.items()}
            result = plan(service, wanted, stored, replace=replace)
            table.bulk_create(
                [
                    Subscription(service=service, group=g, event_type=t, ordered=wanted[(g, t)])
                    for g, t in result.added
                ],
                ignore_conflicts=True,  # a worker starting at the same moment declared it too
            )
            table.filter(pk__in=[rows[s].pk for s in wanted if s in rows]).update(
                last_seen_at=Now()
            )
            for slot in result.reordered:
                table.filter(pk=rows[slot].pk).update(ordered=wanted[slot])
            table.filter(pk__in=[rows[s].pk for s in result.reopened]).update(retired_at=None)
            table.filter(pk__in=[rows[s].pk for s in result.retired]).update(retired_at=Now())
        return result

    def fan_out(self) -> FanOut:
        # Read by every relay batch: raw SQL, prepared, not the ORM's query building.
        from .engine import sql

        connection = connections[self.using]
        query = f'SELECT event_type, "group", ordered FROM {sql.table(connection, "Subscription")}'
        with sql.cursor(connection, prepared=True) as cursor:
            cursor.execute(query)
            return [(event_type, group, bool(ordered)) for event_type, group, ordered in cursor]

    def rows(self) -> list[Subscription]:
        from .models import Subscription

        return list(
            Subscription.objects.using(self.using).order_by("service", "group", "event_type")
        )

    def remove(
        self, row: Subscription, drop_backlog: Callable[[str, str], int | None]
    ) -> tuple[bool, int | None]:
        from .models import Subscription

        table = Subscription.objects.using(self.using)
        with transaction.atomic(using=self.using):
            found = table.select_for_update().filter(pk=row.pk).first()
            if found is None:
                return False, None  # someone else unsubscribed it
            others = table.filter(group=found.group, event_type=found.event_type)
            if found.retired_at is None or others.filter(retired_at__isnull=True).exists():
                return False, None
            found.delete()
            if others.exists():  # another retired row keeps it until it goes too
                return True, None
            return True, drop_backlog(found.group, found.event_type)
