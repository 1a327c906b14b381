"""Subscriptions as data: each service declares the groups it consumes, every relay reads them.

A consumer group used to exist only in the code of the process whose relay moved the
outbox, so a relay of another service (or of the previous version during a rolling
deploy) fanned out without it and the group silently missed events. Here every
deployment writes its own service's subscriptions into the store its transport shares
(``SubscriptionStore``: the ``Subscription`` table at Level 0, the ``<prefix>:subscriptions``
hash in Redis at Level 1), and every relay sharing that store fans out to all of them,
whichever service declared them (docs/services.md).

When a subscription counts: the relay reads the store after taking each batch's rows (in
the same transaction, for the database). An event is therefore fanned out to every
subscription declared before the relay read it, so to every one declared before the event
was published. With ``SUBSCRIPTIONS_CACHE`` above 0 a relay may use a list that old, so
``declare`` waits that long after storing a new subscription before it returns: once
``migrate`` (or ``setup_events``) is done, every relay sees it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from django.core.signals import setting_changed
from django.db import transaction
from django.db.models.functions import Now
from django.dispatch import receiver

from .conf import get_settings

if TYPE_CHECKING:
    from .models import Subscription
    from .registry import Handler
    from .transports.base import Transport

logger = logging.getLogger("django_events.subscriptions")

FanOut = list[tuple[str, str, bool]]
"""``(event_type, group, ordered)`` rows, the shape ``Transport.publish`` takes."""

_cache: dict[str, tuple[float, FanOut]] = {}
_cache_lock = threading.Lock()


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


def wanted_by(handlers: Iterable[Handler]) -> Wanted:
    """The (group, event type) pairs of ``handlers``; ordered if any handler asks for it."""
    wanted: Wanted = {}
    for handler in handlers:
        slot = (handler.group, handler.event_type)
        wanted[slot] = wanted.get(slot, False) or handler.ordered
    return wanted


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
        from .models import Subscription

        return list(
            Subscription.objects.using(self.using).values_list("event_type", "group", "ordered")
        )

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


def store_of(transport: Transport) -> SubscriptionStore:
    """Where ``transport``'s deployments declare: its own store, or, for a transport without
    one (a third-party transport), the table of its database, where the rows are shown and
    pruned but the relay does not fan out to them (``shares_subscriptions`` is False)."""
    return transport.subscription_store() or DatabaseStore(transport.database)


def declare(
    service: str,
    handlers: Iterable[Handler],
    *,
    store: SubscriptionStore | None = None,
    using: str | None = None,
    replace: bool = True,
) -> Declaration:
    """Store ``service``'s subscriptions: one per (group, event type) of ``handlers``.

    With ``replace`` (a deploy: ``migrate``, ``setup_events``) this is the service's whole
    set: rows it no longer declares are marked retired, never deleted, and rows declared
    again are reopened. Without it (a worker starting, maybe of an older version during a
    rolling deploy) rows are only added and their ``last_seen_at`` refreshed, so an old
    worker never retires what the new version declared. ``store``, or the table of
    database ``using``.
    """
    store = store or DatabaseStore(using or "default")
    result = store.declare(service, wanted_by(handlers), replace=replace)
    for line in result.lines():
        logger.info("Subscriptions: %s", line)
    wait = get_settings().subscriptions_cache
    if result.fan_out_changed and wait > 0:
        time.sleep(wait)  # every relay's cached list is now younger than this declaration
    return result


def declare_current(*, replace: bool = True) -> Declaration:
    """Declare this deployment's handlers as its ``SERVICE``'s subscriptions, in the store
    of the default transport (the one the services share)."""
    from .registry import registry
    from .transports import transports

    store = store_of(transports["default"])
    return declare(get_settings().service, registry, store=store, replace=replace)


def declare_on_migrate(*, using: str = "default", verbosity: int = 1, **kwargs: Any) -> None:
    """``post_migrate`` of django_events: a deploy's ``migrate`` declares the new code's
    subscriptions before its workers start, so old relays already fan out to them."""
    from django.db import connections

    from .exceptions import EventsConfigurationError, TransportUnavailable
    from .models import Subscription
    from .transports import transports

    try:
        transport = transports["default"]
    except EventsConfigurationError:
        return  # check E001/E002 reports it
    if using != transport.database:
        return
    store = store_of(transport)
    if getattr(store, "setup_only", False):
        return  # SNS + SQS: setup_events declares, with the rights to create subscriptions
    tables = connections[using].introspection.table_names
    if isinstance(store, DatabaseStore) and Subscription._meta.db_table not in tables():
        return  # migrated back below the table
    stdout = kwargs.get("stdout")
    try:
        result = declare_current()
    except TransportUnavailable as exc:
        # migrate must not fail because a broker is down; setup_events and every worker
        # starting declare again.
        logger.warning("Subscriptions not declared: %s", exc)
        if stdout is not None:
            stdout.write(f"  django-events: subscriptions not declared ({exc}); run setup_events\n")
        return
    if verbosity >= 1 and stdout is not None:
        for line in result.lines():
            stdout.write(f"  django-events: {line}\n")


def current(store: SubscriptionStore | str) -> FanOut:
    """Every subscription declared in ``store``, by any service, together with this
    process's own handlers (declared by its code even before they are stored), one row
    per (event type, group); ordered if any declaration asks for it.

    Read from the store (or the table of the database named) at each call, or at most
    ``SUBSCRIPTIONS_CACHE`` seconds old.
    """
    from .registry import registry

    if isinstance(store, str):
        store = DatabaseStore(store)
    ttl = get_settings().subscriptions_cache
    started = time.monotonic()
    hit = _cache.get(store.key)
    if ttl > 0 and hit is not None and started - hit[0] < ttl:
        stored = hit[1]
    else:
        stored = store.fan_out()
        if ttl > 0:
            with _cache_lock:
                _cache[store.key] = (started, stored)  # its age counts from before the read
    merged: dict[tuple[str, str], bool] = {}
    for event_type, group, ordered in [*stored, *registry.subscriptions()]:
        merged[(event_type, group)] = merged.get((event_type, group), False) or ordered
    return sorted((event_type, group, ordered) for (event_type, group), ordered in merged.items())


def fan_out(transport: Transport) -> FanOut:
    """The subscriptions the relay publishes to: those declared in the store the services
    share (the database table; Redis' hash), for a transport that has one; its own
    handlers' otherwise."""
    if transport.shares_subscriptions:
        return current(store_of(transport))
    from .registry import registry

    return registry.subscriptions()


def handled_types(handlers: Iterable[Handler], groups: Sequence[str]) -> dict[str, frozenset[str]]:
    """``{group: event types}`` that ``handlers`` handle, for a worker's claim filter."""
    found: dict[str, set[str]] = {group: set() for group in groups}
    for handler in handlers:
        if handler.group in found:
            found[handler.group].add(handler.event_type)
    return {group: frozenset(types) for group, types in found.items()}


def all_rows(transport: Transport) -> list[Subscription]:
    """Every subscription declared in ``transport``'s store (``store_of``)."""
    return store_of(transport).rows()


def orphaned(rows: Sequence[Subscription]) -> list[Subscription]:
    """Retired rows whose (group, event type) no service declares any more: they still
    receive events that nobody will handle, until an operator unsubscribes them."""
    live = {(row.group, row.event_type) for row in rows if row.retired_at is None}
    return [row for row in rows if row.retired_at and (row.group, row.event_type) not in live]


def shared_groups(rows: Sequence[Subscription]) -> dict[str, list[Subscription]]:
    """Groups that more than one service declares: group names are global in the store
    (one inbox, one backlog), so two services in one group compete for its events."""
    by_group: dict[str, list[Subscription]] = {}
    for row in rows:
        if row.retired_at is None:
            by_group.setdefault(row.group, []).append(row)
    return {
        group: found
        for group, found in sorted(by_group.items())
        if len({row.service for row in found}) > 1
    }


UNSUBSCRIBE_PERMISSION = "django_events.unsubscribe"


@dataclass
class Unsubscribed:
    """What ``unsubscribe`` did: rows removed (with the backlog each dropped; None when
    the transport cannot tell) and rows left alone because a service still declares them."""

    done: list[tuple[Subscription, int | None]] = field(default_factory=list)
    skipped: list[Subscription] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = f"Unsubscribed {len(self.done)} subscription{'s' if len(self.done) != 1 else ''}"
        dropped = sum(count or 0 for _, count in self.done)
        if dropped:
            text += f", dropping {dropped} pending deliveries (the events stay in the log)"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} still declared by a service"
        return text + "."


def unsubscribe(
    rows: Iterable[Subscription], *, user: Any = None, actor: str | None = None
) -> Unsubscribed:
    """Remove orphaned subscriptions (retired, and declared by no other service) and drop
    what their group was still owed of that type; anything else is skipped.

    ``user`` (checked for ``django_events.unsubscribe``, written to the admin's log) or,
    from a shell, ``actor`` (written to the log only). Each removal is logged with the
    backlog it dropped: nothing goes silently.
    """
    from django.core.exceptions import PermissionDenied

    from .transports import transports

    if user is not None:
        if not user.is_active or not user.has_perm(UNSUBSCRIBE_PERMISSION):
            raise PermissionDenied(f"needs the {UNSUBSCRIBE_PERMISSION} permission")
    elif not actor:
        raise PermissionDenied("Unsubscribing needs a user, or an actor for the log.")
    transport = transports["default"]
    store = store_of(transport)
    outcome = Unsubscribed()
    for row in sorted(rows, key=lambda r: (r.service, r.group, r.event_type)):
        removed, dropped = store.remove(row, transport.drop_backlog)
        if not removed:
            outcome.skipped.append(row)
            continue
        _audit(row, user, actor)
        outcome.done.append((row, dropped))
        forget()
        logger.warning(
            "Unsubscribed %s: group %s from %s by %s; %s pending deliveries dropped",
            row.service,
            row.group,
            row.event_type,
            user.get_username() if user is not None else actor,
            "unknown" if dropped is None else dropped,
        )
    return outcome


def _audit(row: Subscription, user: Any, actor: str | None) -> None:
    from django.apps import apps

    if user is None or row.pk is None or not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib.admin.models import DELETION, LogEntry

    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=[row],
        action_flag=DELETION,
        change_message=f"Unsubscribed {row.service}: {row.group} from {row.event_type}",
    )


def forget() -> None:
    """Drop cached subscription lists (tests; a changed setting)."""
    with _cache_lock:
        _cache.clear()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "DJANGO_EVENTS":
        forget()
