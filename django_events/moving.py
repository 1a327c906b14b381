"""Moving between transports while workers run (docs/moving.md).

The state of a move is a ``Move`` row, so every process sees it. Workers and relays talk
to a ``Switch``: with no move recorded it is the default transport, as before; while a
move is in progress it claims from both transports, the old first, and sends new events
to the new one from the cutover (recorded once every process has had time to read the
move), holding back on either side an event of an ordered group whose key still has an
earlier event unhandled (wherever that event is: relays reach the cutover each within
its own poll, so the old side may get a key's later event), so per-key order holds
across the move. Once the move is finished, the switch keeps doing so until the settings make
the new transport the default and drop the old alias.

From the database transport into the log transport, which share their tables, there is
one side at a time instead: the cutover places every group's cursor under the relay's
lock, and each relay batch reads it under that lock (docs/moving.md, "Into the log
transport"). Out of the log transport, to a broker, publishers write the outbox from the
cutover (``leaving_log``) and the broker's relay logs outside the cursors (docs/moving.md,
"Out of the log transport").
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from django.db import DatabaseError, connections, transaction
from django.db.models import Exists, Max, OuterRef
from django.db.models.functions import Now

from .conf import get_settings
from .exceptions import EventsConfigurationError
from .transports import transports
from .transports.base import Claimed, FiltersTypes, GroupStatus, Outgoing, Transport

logger = logging.getLogger("django_events.moving")


@dataclass(frozen=True)
class Route:
    """Where a process claims: ``to`` always, ``old`` too during a move; and where its
    relay sends: ``to``, or ``old`` until the move's cutover (``sending``)."""

    to: Transport
    old: Transport | None = None
    sending: Transport | None = None
    move: int | None = None
    """The ``Move`` row's id, where one is recorded."""

    @property
    def send(self) -> Transport:
        return self.sending or self.to

    @property
    def shares_tables(self) -> bool:
        """A move from the database transport into the log transport: one set of tables,
        so one side at a time, switched at the cutover (docs/moving.md, "Into the log
        transport")."""
        return self.old is not None and into_log(self.old, self.to)


def into_log(old: Transport, new: Transport) -> bool:
    """Whether ``old`` is the database transport and ``new`` the log transport over the
    same tables: the move between them is the cursors' start, not a drain."""
    from .transports.database import DatabaseTransport

    return (
        new.reads_log
        and not old.reads_log
        and isinstance(old, DatabaseTransport)
        and old.database == new.database
    )


def moves_database() -> str:
    """The database holding ``Move`` rows: the default transport's."""
    return transports["default"].database


def latest_move(using: str | None = None) -> Any:
    from .models import Move

    return Move.objects.using(using or moves_database()).order_by("-id").first()


def in_progress(using: str | None = None) -> Any:
    from .models import Move

    return (
        Move.objects.using(using or moves_database())
        .filter(finished_at__isnull=True)
        .order_by("-id")
        .first()
    )


def route_now(default: Transport) -> Route:
    """The route the recorded moves give: ``default`` when none was ever made."""
    move = latest_move(default.database)
    if move is None:
        return Route(default)
    configured = get_settings().transports
    if move.finished_at is None:
        missing = [a for a in (move.from_alias, move.to_alias) if a not in configured]
        if missing:
            # Loud: a process that cannot follow the move would send to the wrong side.
            raise EventsConfigurationError(
                f"A move from {move.from_alias!r} to {move.to_alias!r} is in progress, and "
                f"DJANGO_EVENTS['TRANSPORTS'] has no {missing[0]!r}: deploy settings that "
                "name both (docs/moving.md)."
            )
        moved_from = transports[move.from_alias]
        # Relays keep sending to the old side until the cutover, which the command records
        # once every process has had time to read the move: by the time any event goes
        # to the new side, every worker holds keys on both sides (docs/moving.md).
        sending = moved_from if move.cutover_position is None else None
        return Route(transports[move.to_alias], moved_from, sending, move.pk)
    if move.to_alias not in configured:
        return Route(default)  # the settings have made it the default since
    # Until the deploy that drops it, the old side is still looked at: a worker's prefetch
    # that no count showed, or a relay that had not switched, leaves nothing behind there.
    old = transports[move.from_alias] if move.from_alias in configured else None
    return Route(transports[move.to_alias], old, move=move.pk)


_leaving_log: dict[str, tuple[float, bool]] = {}
"""``{database: (when read, whether publishers there write the outbox)}``: the moves' state
as ``publish()`` reads it, once per poll interval (``leaving_log``)."""


def leaving_log(using: str) -> bool:
    """Whether a move out of the log transport in ``using`` has reached its cutover, so
    ``publish()`` writes the outbox (for the relays, which send to the broker) instead of
    the log (for the cursors). Read once per poll interval and process: until a publisher
    reads it, its events go into the log, where the old side's cursors hand them out, one
    path still (docs/moving.md, "Out of the log transport")."""
    now = time.monotonic()
    cached = _leaving_log.get(using)
    if cached is not None and now - cached[0] < get_settings().poll_interval:
        return cached[1]
    move = latest_move(using)
    leaving = (
        move is not None
        and move.cutover_position is not None
        and all(alias in transports.settings for alias in (move.from_alias, move.to_alias))
        and transports[move.from_alias].reads_log
        and not transports[move.to_alias].reads_log
    )
    _leaving_log[using] = (now, leaving)
    return leaving


def cut_over(route: Route) -> bool:
    """Whether the move of ``route`` has its cutover recorded, read again from the
    database unless the route already says so (a cutover is never taken back)."""
    from .models import Move

    if route.sending is None:
        return True
    moves = Move.objects.using(route.to.database)
    return moves.filter(pk=route.move, cutover_position__isnull=False).exists()


def held(
    database: str,
    claimed: Sequence[Claimed],
    ordered: Mapping[str, set[str]],
    old: Collection[int] = (),
) -> set[int]:
    """``id()`` of the events in ``claimed`` to hold back: of an ordered group's type, with
    a key that has an earlier event (by position) this group has not handled, whether in
    the event log with no inbox row (an open dead letter has none: its key stays parked;
    a discarded one frees it) or still in the outbox; or not in the log yet themselves
    but still in the outbox (a relay sends before it logs, so their place is not known).
    One in neither the log nor the outbox is not held: another service published it to a
    shared broker, and it has no place among this log's positions.

    ``old``: ``id()`` of those claimed from the side moved from. They are held by the same
    rule, because a relay that had not read the move yet may have sent them there after
    an earlier event of their key went to the new side (relays switch within a poll, each
    on its own); but an open dead letter does not hold them, as that side's own rule
    would not (RabbitMQ frees a dead letter's key; the database transport parks it
    itself). Three queries per group in the batch, two more when one is not in the log."""
    from .models import DeadLetter, EventRecord, InboxRecord, OutboxMessage

    by_group: dict[str, list[tuple[Claimed, str]]] = {}
    for item in claimed:
        event = item.event
        if (
            event is not None
            and event.key is not None
            and item.event_type in ordered.get(item.group, ())
        ):
            by_group.setdefault(item.group, []).append((item, event.key))
    hold: set[int] = set()
    for group, items in by_group.items():
        logged = _positions(database, [item.event_id for item, _ in items])
        unlogged = [item for item, _ in items if item.event_id not in logged]
        foreign = {id(item) for item in _not_from_this_outbox(database, unlogged, logged)}
        hold.update(id(item) for item in unlogged if id(item) not in foreign)
        if not logged:
            continue
        keys = {key for _, key in items}
        before = {"key__in": keys, "type__in": ordered[group], "position__lt": max(logged.values())}
        unhandled = (
            EventRecord.objects.using(database)
            .filter(**before)
            .exclude(
                Exists(
                    InboxRecord.objects.using(database).filter(
                        group_name=group, event_id=OuterRef("id")
                    )
                )
            )
            .exclude(
                Exists(
                    DeadLetter.objects.using(database).filter(
                        group=group, event_id=OuterRef("id"), state=DeadLetter.State.DISCARDED
                    )
                )
            )
            .annotate(
                parked=Exists(
                    DeadLetter.objects.using(database).filter(
                        group=group, event_id=OuterRef("id"), state=DeadLetter.State.OPEN
                    )
                )
            )
            .values_list("key", "position", "parked")
        )
        unrelayed = OutboxMessage.objects.using(database).filter(**before)
        first: dict[str, int] = {}  # for the new side: dead letters park their key
        first_old: dict[str, int] = {}  # for the old side: they do not
        for key, position, parked in [
            *unhandled,
            *((key, position, False) for key, position in unrelayed.values_list("key", "position")),
        ]:
            first[key] = min(position, first.get(key, position))
            if not parked:
                first_old[key] = min(position, first_old.get(key, position))
        for item, key in items:
            start = (first_old if id(item) in old else first).get(key)
            position = logged.get(item.event_id)
            if start is not None and position is not None and start < position:
                hold.add(id(item))
    return hold


def _positions(database: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    from .models import EventRecord

    found = EventRecord.objects.using(database).filter(id__in=ids).values_list("id", "position")
    return dict(found)


def _not_from_this_outbox(
    database: str, claimed: Sequence[Claimed], logged: dict[uuid.UUID, int]
) -> list[Claimed]:
    """Of ``claimed`` (not in the log when ``logged`` was read), those in neither the
    outbox nor the log: another service's events. Read in that order, the outbox then the
    log again (a relay moves a row from one to the other in one transaction), so an event
    its relay logged meanwhile is found in the log, and its position added to ``logged``."""
    from .models import OutboxMessage

    if not claimed:
        return []
    ids = [item.event_id for item in claimed]
    waiting = set(
        OutboxMessage.objects.using(database)
        .filter(event_id__in=ids)
        .values_list("event_id", flat=True)
    )
    rest = [item for item in claimed if item.event_id not in waiting]
    if not rest:
        return []
    logged.update(_positions(database, [item.event_id for item in rest]))
    return [item for item in rest if item.event_id not in logged]


def _ordered_types() -> dict[str, set[str]]:
    from .registry import registry

    ordered: dict[str, set[str]] = {}
    for event_type, group, is_ordered in registry.subscriptions():
        if is_ordered:
            ordered.setdefault(group, set()).add(event_type)
    return ordered


def _claim(
    transport: Transport,
    groups: Sequence[str],
    limit: int,
    lease: float,
    types: Mapping[str, Collection[str]] | None,
    max_bytes: int | None,
) -> list[Claimed]:
    if types is not None and transport.filters_types:
        claim = cast(FiltersTypes, transport).claim
        return claim(groups, limit, lease, types=types, max_bytes=max_bytes)
    return transport.claim(groups, limit, lease, max_bytes=max_bytes)


class Switch(Transport):
    """The transport of a worker and a relay: the route of the recorded moves, read again
    at most once per poll interval (a small query, like the pauses).

    With no move ever recorded every call goes to the default transport as it did before.
    During a move the flags are those that are safe for both sides: acks after the
    commit (the inbox absorbs a redelivery), no blocking wait (a worker polls, woken by
    the database's channel where there is one).
    """

    def __init__(self, default: Transport, ttl: float | None = None, *, hold: bool = True) -> None:
        super().__init__(default.alias, {}, default.context)
        self.default = default
        self.hold_keys = hold
        """False only in the tests' control, which shows order breaking without the hold."""
        self.ttl = get_settings().poll_interval if ttl is None else ttl
        self._route = Route(default)
        self._read_at = -float("inf")
        self._via: dict[int, tuple[Claimed, Transport]] = {}
        self._held: list[tuple[Claimed, Transport]] = []
        """Claimed from either side, kept here (leases renewed, on the side each came
        from) until their key is free: given back, a broker may put them behind the key's
        later events (Redis appends)."""
        self._lock = threading.Lock()

    def route(self) -> Route:
        """The route, read again if older than the TTL: called when claiming and between
        relay passes, so the flags a worker reads while handling one batch stay put. A
        database that cannot be read keeps the route as it was."""
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            try:
                self._route = route_now(self.default)
            except DatabaseError:
                # Kept as it was (the default before the first read, which is tried again
                # at each use until it succeeds); the claim that follows meets the outage.
                logger.debug("Could not read the moves; keeping the route", exc_info=True)
            else:
                self._read_at = now
        return self._route

    def _current(self) -> Route:
        return self._route if self._read_at >= 0 else self.route()

    @property
    def moving(self) -> bool:
        return self._current().old is not None

    # -- flags: the new side's, or those safe for both during a move --------------------

    @property
    def acks_in_transaction(self) -> bool:  # type: ignore[override]
        return not self.moving and self._current().to.acks_in_transaction

    @property
    def ack_locks_batch(self) -> bool:  # type: ignore[override]
        return self._current().to.ack_locks_batch

    @property
    def waits_for_work(self) -> bool:  # type: ignore[override]
        return not self.moving and self._current().to.waits_for_work

    @property
    def wake_channel(self) -> str | None:  # type: ignore[override]
        route = self._current()
        return route.to.wake_channel or (route.old.wake_channel if route.old else None)

    @property
    def filters_types(self) -> bool:  # type: ignore[override]
        return self._current().to.filters_types

    @property
    def supports_ordering(self) -> bool:  # type: ignore[override]
        return self._current().to.supports_ordering

    @property
    def shares_subscriptions(self) -> bool:  # type: ignore[override]
        return self._current().send.shares_subscriptions

    @property
    def routes_itself(self) -> bool:  # type: ignore[override]
        return self._current().send.routes_itself

    @property
    def reads_log(self) -> bool:  # type: ignore[override]
        # Into the log transport the relay always calls ``logged``, which picks the side.
        route = self._current()
        return route.shares_tables or route.send.reads_log

    @property
    def idempotent_publish(self) -> bool:  # type: ignore[override]
        return self._current().send.idempotent_publish

    @property
    def max_message_bytes(self) -> int | None:  # type: ignore[override]
        return self._current().send.max_message_bytes

    @property
    def database(self) -> str:
        return self._current().to.database

    def subscription_store(self) -> Any:
        return self._current().send.subscription_store()

    # -- the relay's side: new events go to the new transport, from the cutover ---------

    def joins_outbox_transaction(self, using: str) -> bool:
        return self._current().send.joins_outbox_transaction(using)

    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        self._current().send.publish(events, subscriptions)

    def republish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        self._current().send.republish(events, subscriptions)

    def publish_to_all(self, events: Sequence[Outgoing]) -> None:
        self._current().send.publish_to_all(events)

    def logged(self, events: Sequence[Outgoing]) -> None:
        """Into the log transport, the side is read in the relay's own transaction, under
        its lock, which the cutover takes too: a batch logged before the cutover committed
        gets delivery rows and is in the cursors' starting snapshot; one logged after it
        is not, and gets none (docs/moving.md, "Into the log transport")."""
        route = self._current()
        old = route.old
        if not route.shares_tables:
            route.send.logged(events)
        elif events and old is not None and not cut_over(route):
            from .subscriptions import fan_out

            old.publish(events, fan_out(old))
        else:
            route.to.logged(events)

    def housekeeping(self) -> None:
        route = self.route()  # a relay without a worker reads the route here, between passes
        route.to.housekeeping()
        if route.old is not None:
            route.old.housekeeping()

    # -- the worker's side --------------------------------------------------------------

    def claim(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        *,
        types: Mapping[str, Collection[str]] | None = None,
        max_bytes: int | None = None,
    ) -> list[Claimed]:
        route = self.route()
        if route.old is None and not self._held:
            return self._tag(route.to, _claim(route.to, groups, limit, lease, types, max_bytes))
        if route.shares_tables and not self._held:
            # One table of delivery rows, where both keep key order: claimed where relays
            # send, the old side until the cutover (which places the cursors), then the
            # new, which claims those rows first.
            side = route.send
            return self._tag(side, _claim(side, groups, limit, lease, types, max_bytes))
        with self._lock:
            waiting = list(self._held)
        # Each side's waiting events count against what is claimed from it: the old side's
        # (held behind an earlier event a relay sent to the new side) never keep the new
        # side from being claimed, where that earlier event is.
        waiting_old = [pair for pair in waiting if pair[1] is route.old]
        waiting_new = [pair for pair in waiting if pair[1] is not route.old]
        fresh_old: list[tuple[Claimed, Transport]] = []
        if route.old is not None and len(waiting_old) < limit:
            left = limit - len(waiting_old)
            claimed = _claim(route.old, groups, left, lease, types, max_bytes)
            fresh_old = [(item, route.old) for item in claimed]
        room = limit - len(fresh_old)
        fresh: list[tuple[Claimed, Transport]] = []
        if room > 0 and len(waiting_new) < limit:
            claimed = _claim(route.to, groups, room, lease, types, max_bytes)
            fresh = [(item, route.to) for item in claimed]
        candidates = [*waiting_old, *fresh_old, *waiting_new, *fresh]
        old = {id(item) for item, _ in [*waiting_old, *fresh_old]}
        hold = (
            held(route.to.database, [item for item, _ in candidates], _ordered_types(), old)
            if self.hold_keys
            else set()
        )
        wanted = set(groups)
        free = [
            (item, transport)
            for item, transport in candidates
            if id(item) not in hold and item.group in wanted
        ][:limit]
        taken = {id(item) for item, _ in free}
        kept = [(item, transport) for item, transport in candidates if id(item) not in taken]
        with self._lock:
            self._held = kept
        for transport, items in _by_transport(kept):
            transport.renew(items, lease)
        return [self._tag(transport, [item])[0] for item, transport in free]

    def wait(self, groups: Sequence[str], timeout: float) -> bool:
        return self._current().to.wait(groups, timeout)

    def _tag(self, transport: Transport, claimed: list[Claimed]) -> list[Claimed]:
        for item in claimed:
            self._via[id(item)] = (item, transport)
        return claimed

    def _of(self, claimed: Claimed) -> Transport:
        found = self._via.get(id(claimed))
        return found[1] if found is not None else self._current().to

    def _done(self, claimed: Sequence[Claimed]) -> None:
        for item in claimed:
            self._via.pop(id(item), None)

    def _split(self, claimed: Sequence[Claimed]) -> dict[int, tuple[Transport, list[Claimed]]]:
        parts: dict[int, tuple[Transport, list[Claimed]]] = {}
        for item in claimed:
            transport = self._of(item)
            parts.setdefault(id(transport), (transport, []))[1].append(item)
        return parts

    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        for transport, items in list(self._split(claimed).values()):
            transport.renew(items, lease)
        with self._lock:
            waiting = list(self._held)
        for transport, items in _by_transport(waiting):  # what waits for its key too
            transport.renew(items, lease)

    def release(self, claimed: Sequence[Claimed]) -> None:
        for transport, items in self._split(claimed).values():
            transport.release(items)
        self._done(claimed)

    def hold(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        return [
            item
            for transport, items in self._split(claimed).values()
            for item in transport.hold(items)
        ]

    def ack(self, claimed: Claimed) -> bool:
        try:
            return self._of(claimed).ack(claimed)
        finally:
            self._done([claimed])

    def ack_many(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        try:
            return [
                item
                for transport, items in self._split(claimed).values()
                for item in transport.ack_many(items)
            ]
        finally:
            self._done(claimed)

    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        try:
            self._of(claimed).retry_later(claimed, delay, error)
        finally:
            self._done([claimed])

    def dead_letter(self, claimed: Claimed) -> bool:
        try:
            return self._of(claimed).dead_letter(claimed)
        finally:
            self._done([claimed])

    def redeliver(self, event_id: uuid.UUID, group: str) -> None:
        self._current().to.redeliver(event_id, group)

    def discard(self, event_id: uuid.UUID, group: str) -> None:
        route = self._current()
        for transport in (route.to, route.old):
            if transport is not None:
                transport.discard(event_id, group)

    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        route = self._current()
        # Into the log transport, the cursors are placed at the cutover: before it, the
        # old side's counts.
        return (route.send if route.shares_tables else route.to).status(groups)

    def close(self) -> None:
        route = self._route  # closing reads nothing
        with self._lock:
            waiting, self._held = self._held, []
        for transport, items in _by_transport(waiting):
            transport.release(items)
        route.to.close()
        if route.old is not None:
            route.old.close()


def _by_transport(
    items: Sequence[tuple[Claimed, Transport]],
) -> list[tuple[Transport, list[Claimed]]]:
    parts: dict[int, tuple[Transport, list[Claimed]]] = {}
    for item, transport in items:
        parts.setdefault(id(transport), (transport, []))[1].append(item)
    return list(parts.values())


def switch() -> Switch:
    """The transport a worker or a relay uses when none is given."""
    return Switch(transports["default"])


# -- the command's side ------------------------------------------------------------------


def prepare(new: Transport) -> list[str]:
    """What ``setup_events --transport TO`` does for this deployment: its subscriptions in
    the new transport's store (adding only), and the streams or queues they need."""
    from .registry import registry
    from .subscriptions import declare, store_of

    store = store_of(new)
    if new.shares_subscriptions and not getattr(store, "setup_only", False):
        declare(get_settings().service, registry, store=store, replace=False)
    return new.setup(registry.subscriptions())


def owed(transport: Transport, groups: Sequence[str]) -> int:
    """Events ``transport`` still owes ``groups``: waiting or in flight (a dead letter's
    parked row is not owed; the events behind it are)."""
    return sum(s.pending + s.in_flight for s in transport.status(groups).values())


def check_start(from_alias: str, to_alias: str) -> Any:
    """The move in progress between the same transports, or None; ValueError if another
    move is in progress."""
    from .transports import transports

    configured = [alias for alias in (from_alias, to_alias) if alias in transports.settings]
    if len(configured) == 2 and transports[from_alias].reads_log and not _to_a_broker(to_alias):
        raise ValueError(
            f"Transport {from_alias!r} is the log transport: it moves to a broker "
            f"only. {to_alias!r} writes its events into the same log, where the cursors "
            'would hand them out again (docs/moving.md, "Out of the log transport").'
        )
    to_log = len(configured) == 2 and transports[to_alias].reads_log
    if to_log and not into_log(transports[from_alias], transports[to_alias]):
        raise ValueError(
            f"Transport {to_alias!r} is the log transport: a move to it is "
            "supported from DatabaseTransport in the same database only, whose tables it "
            'shares (docs/moving.md, "Into the log transport").'
        )
    current = in_progress()
    if current is not None and (current.from_alias, current.to_alias) != (from_alias, to_alias):
        raise ValueError(
            f"A move from {current.from_alias!r} to {current.to_alias!r} is in progress; "
            "finish it first."
        )
    return current


def _to_a_broker(alias: str) -> bool:
    """Whether ``alias`` sends through a broker: its relay logs what it sent outside every
    cursor (``Relay._complete``), so a move out of the log transport may reach it."""
    from .transports.database import DatabaseTransport

    return not isinstance(transports[alias], DatabaseTransport)


def start(from_alias: str, to_alias: str) -> Any:
    """Record a move (or return the one in progress between the same transports)."""
    from .models import Move

    current = check_start(from_alias, to_alias)
    if current is not None:
        return current
    _leaving_log.clear()
    return Move.objects.using(moves_database()).create(from_alias=from_alias, to_alias=to_alias)


def record_cutover(move: Any) -> int:
    """Note the last logged position now that every process has read the move. Into the
    log transport, the groups' cursors start here, in the same transaction, under the
    relay's lock: no relay batch straddles the snapshot they start at, and each batch
    reads the cutover in its own transaction (``Switch.logged``; docs/moving.md, "Into
    the log transport")."""
    from .engine import sql
    from .engine.relay import RELAY_LOCK
    from .models import EventRecord
    from .registry import registry
    from .transports.log import place_cursors_now

    using = moves_database()
    with transaction.atomic(using=using):
        if into_log(transports[move.from_alias], transports[move.to_alias]):
            # On SQLite the write that places the cursors takes the one write lock, which
            # every relay batch holds from its take to its commit: the same exclusion.
            if not sql.dialect(using).one_writer:
                with connections[using].cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RELAY_LOCK])
            place_cursors_now(using, registry.groups())
        position = EventRecord.objects.using(using).aggregate(top=Max("position"))["top"] or 0
        type(move).objects.using(using).filter(pk=move.pk).update(cutover_position=position)
    move.cutover_position = position
    _leaving_log.clear()
    return int(position)


def finish(move: Any) -> None:
    type(move).objects.using(moves_database()).filter(pk=move.pk).update(finished_at=Now())
    logger.info("Move from %s to %s finished", move.from_alias, move.to_alias)
