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

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .conf import get_settings
from .stores import DatabaseStore, Declaration, FanOut, SubscriptionStore, Wanted

if TYPE_CHECKING:
    from .models import Subscription
    from .registry import Handler
    from .transports.base import Transport

logger = logging.getLogger("django_events.subscriptions")

_cache: dict[str, tuple[float, FanOut]] = {}
_cache_lock = threading.Lock()


def wanted_by(handlers: Iterable[Handler]) -> Wanted:
    """The (group, event type) pairs of ``handlers``; ordered if any handler asks for it."""
    wanted: Wanted = {}
    for handler in handlers:
        slot = (handler.group, handler.event_type)
        wanted[slot] = wanted.get(slot, False) or handler.ordered
    return wanted


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
    return with_own_handlers(stored)


def with_own_handlers(stored: FanOut) -> FanOut:
    """``stored`` (a store's rows) with this process's own handlers, one row per (event type,
    group); ordered if any declaration asks for it."""
    from .registry import registry

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


def retire_service(
    service: str, *, user: Any = None, actor: str | None = None, dry_run: bool = False
) -> tuple[list[Subscription], Unsubscribed]:
    """Retire every subscription of ``service``, a deployment that is gone for good and
    will never run ``migrate`` again, then unsubscribe those no other service declares.

    What its own deploy would do had it dropped every handler, done by an operator from
    any service sharing the store; refused for this deployment's own ``SERVICE`` (its code
    declares them: deploy without the handlers instead). Returns the rows it retired (or
    would) and what ``unsubscribe`` did (with ``dry_run``: the rows it would remove, as
    ``done``, and nothing changed). Logged as ``unsubscribe`` is, with who did it.
    """
    from django.core.exceptions import PermissionDenied

    from .exceptions import EventsConfigurationError
    from .transports import transports

    if service == get_settings().service:
        raise EventsConfigurationError(
            f"{service!r} is this deployment's own SERVICE: its code declares these "
            "subscriptions. Deploy it without the handlers instead, then prune."
        )
    if user is not None:
        if not user.is_active or not user.has_perm(UNSUBSCRIBE_PERMISSION):
            raise PermissionDenied(f"needs the {UNSUBSCRIBE_PERMISSION} permission")
    elif not actor:
        raise PermissionDenied("Retiring a service needs a user, or an actor for the log.")
    store = store_of(transports["default"])
    every = store.rows()
    mine = [row for row in every if row.service == service]
    if not mine:
        raise EventsConfigurationError(
            f"No subscriptions of service {service!r} in the store; services there: "
            f"{', '.join(sorted({row.service for row in every})) or 'none'}."
        )
    live = [row for row in mine if row.retired_at is None]
    if dry_run:
        now = dt.datetime.now(dt.timezone.utc)
        for row in live:
            row.retired_at = now
        gone = [row for row in orphaned(every) if row.service == service]
        return live, Unsubscribed(done=[(row, None) for row in gone])
    store.declare(service, {}, replace=True)
    forget()
    logger.warning(
        "Retired service %s: %d subscriptions, by %s",
        service,
        len(live),
        user.get_username() if user is not None else actor,
    )
    gone = [row for row in orphaned(store.rows()) if row.service == service]
    return live, unsubscribe(gone, user=user, actor=actor)


def _audit(row: Subscription, user: Any, actor: str | None) -> None:
    from django.apps import apps

    if user is None or not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib.admin.models import DELETION, LogEntry
    from django.contrib.contenttypes.models import ContentType

    message = f"Unsubscribed {row.service}: {row.group} from {row.event_type}"
    if row.pk is not None:
        LogEntry.objects.log_actions(
            user_id=user.pk, queryset=[row], action_flag=DELETION, change_message=message
        )
        return
    # A row of a store outside the database (Redis) has no primary key: the entry names
    # it by its key in the store.
    LogEntry.objects.create(
        user_id=user.pk,
        content_type=ContentType.objects.get_for_model(row, for_concrete_model=False),
        object_id=json.dumps([row.service, row.group, row.event_type], separators=(",", ":")),
        object_repr=str(row)[:200],
        action_flag=DELETION,
        change_message=message,
    )


def forget() -> None:
    """Drop cached subscription lists (tests; a changed setting)."""
    with _cache_lock:
        _cache.clear()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "DJANGO_EVENTS":
        forget()
