"""An in-memory transport: one process, nothing persisted, for tests and demos.

Events live in a process-wide queue named by the ``name`` option (the alias by default),
shared by every thread's instance of the transport, as ``LocMemCache`` shares its data.
It keeps the whole contract of a transport (leases, attempts counted at claim, delayed
retry, per-key order, parked keys) so code tested against it behaves the same on a real
one. What it cannot do is survive its process: a restart loses every event still owed,
and another process (a worker started with ``consume_events``) never sees them.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..envelope import build_event
from .base import (
    Claimed,
    GroupStatus,
    Outgoing,
    Transport,
    TransportContext,
    decode_failure,
    text_size,
)

_OPTIONS = {"database", "name"}


@dataclass
class _Entry:
    """One event owed to one group; the group's queue keeps entries in publish order."""

    event: Outgoing
    ordered: bool
    published_at: float
    attempts: int = 0
    available_at: float = 0.0
    claimed_until: float | None = None
    token: str | None = None
    parked: bool = False
    first_failed_at: dt.datetime | None = None
    last_error: str = ""

    def held(self, now: float) -> bool:
        return self.claimed_until is not None and self.claimed_until >= now

    def reopen(self, now: float) -> None:
        self.attempts = 0
        self.available_at = now
        self.claimed_until = self.token = self.first_failed_at = None
        self.parked = False
        self.last_error = ""


@dataclass
class _Queue:
    lock: threading.Lock = field(default_factory=threading.Lock)
    groups: dict[str, dict[uuid.UUID, _Entry]] = field(default_factory=dict)


_queues: dict[str, _Queue] = {}
_queues_lock = threading.Lock()


class InMemoryTransport(Transport):
    """Process-local and thread-safe; not persistent; delayed retry and per-key order."""

    supports_ordering = True
    supports_delayed_retry = True
    persistent = False
    acks_in_transaction = False
    idempotent_publish = True
    filters_types = True

    accepted_options = frozenset(_OPTIONS)

    def __init__(
        self, alias: str, options: dict[str, Any], context: TransportContext | None = None
    ) -> None:
        super().__init__(alias, options, context)
        self.name = str(options.get("name", alias))
        with _queues_lock:
            self._queue = _queues.setdefault(self.name, _Queue())
        self._turn = 0

    def clear(self) -> None:
        """Forget every event this transport's queue holds (between tests, say)."""
        with self._queue.lock:
            self._queue.groups.clear()

    # -- relay side ---------------------------------------------------------------------

    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """Queue each event for its subscribed groups; an event already owed is not queued
        twice, and one parked by a dead letter is reopened (which is how ``redeliver``
        reaches it)."""
        by_type: dict[str, list[tuple[str, bool]]] = {}
        for event_type, group, ordered in subscriptions:
            by_type.setdefault(event_type, []).append((group, ordered))
        now = time.monotonic()
        with self._queue.lock:
            for event in events:
                for group, ordered in by_type.get(event.type, ()):
                    queue = self._queue.groups.setdefault(group, {})
                    entry = queue.get(event.event_id)
                    if entry is None:
                        queue[event.event_id] = _Entry(
                            event, ordered and event.key is not None, now, available_at=now
                        )
                    elif entry.parked:
                        entry.reopen(now)

    # -- worker side --------------------------------------------------------------------

    def claim(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        *,
        types: Mapping[str, Collection[str]] | None = None,
        max_bytes: int | None = None,
    ) -> list[Claimed]:
        """Claim up to ``limit`` due events (and ``max_bytes``), counting an attempt for
        each; groups take turns at coming first, and an ordered key yields only its
        oldest event. With ``types``, other types are left untouched for a worker that
        handles them."""
        if not groups or limit < 1:
            return []
        self._turn = (self._turn + 1) % len(groups)
        token = uuid.uuid4().hex
        taken: list[tuple[str, _Entry]] = []
        size = 0
        with self._queue.lock:
            now = time.monotonic()
            for group in [*groups[self._turn :], *groups[: self._turn]]:
                blocked: set[str | None] = set()
                wanted = None if types is None else types.get(group, ())
                for entry in self._queue.groups.get(group, {}).values():
                    if len(taken) >= limit:
                        break
                    if entry.ordered:
                        if entry.event.key in blocked:
                            continue
                        blocked.add(entry.event.key)  # a head left for others still blocks
                    if wanted is not None and entry.event.type not in wanted:
                        continue
                    if entry.parked or entry.available_at > now or entry.held(now):
                        continue
                    size += text_size(entry.event.data, entry.event.metadata)
                    if max_bytes is not None and taken and size > max_bytes:
                        break
                    entry.attempts += 1
                    entry.claimed_until = now + lease
                    entry.token = token
                    taken.append((group, entry))
            claimed = [
                Claimed(
                    group=group,
                    attempt=entry.attempts,
                    receipt=(group, entry.event.event_id, token),
                    event_id=entry.event.event_id,
                    event_type=entry.event.type,
                    first_failed_at=entry.first_failed_at,
                )
                for group, entry in taken
            ]
        max_bytes = self.context.max_payload_bytes * 2
        for item, (_, entry) in zip(claimed, taken, strict=True):
            _decode(item, entry.event, max_bytes)
        return claimed

    def _held(self, claimed: Claimed) -> _Entry | None:
        """The entry ``claimed`` still holds, if its claim was not lost; call under the lock."""
        group, event_id, token = claimed.receipt
        entry = self._queue.groups.get(group, {}).get(event_id)
        return entry if entry is not None and entry.token == token else None

    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        with self._queue.lock:
            until = time.monotonic() + lease
            for item in claimed:
                if entry := self._held(item):
                    entry.claimed_until = until

    def release(self, claimed: Sequence[Claimed]) -> None:
        """Give events back unattempted: the attempt their claim counted is undone."""
        with self._queue.lock:
            for item in claimed:
                if entry := self._held(item):
                    entry.attempts -= 1
                    entry.claimed_until = entry.token = None

    def ack(self, claimed: Claimed) -> bool:
        with self._queue.lock:
            if self._held(claimed) is None:
                return False
            del self._queue.groups[claimed.group][claimed.event_id]
            return True

    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        with self._queue.lock:
            if entry := self._held(claimed):
                entry.available_at = time.monotonic() + delay
                entry.claimed_until = entry.token = None
                entry.last_error = error[:2000]
                entry.first_failed_at = entry.first_failed_at or dt.datetime.now(dt.timezone.utc)

    def dead_letter(self, claimed: Claimed) -> bool:
        """Drop the event, or, if ordered, park it as its key's head until redelivered."""
        with self._queue.lock:
            entry = self._held(claimed)
            if entry is None:
                return False
            if entry.ordered:
                entry.parked = True
                entry.claimed_until = entry.token = None
            else:
                del self._queue.groups[claimed.group][claimed.event_id]
            return True

    def discard(self, event_id: uuid.UUID, group: str) -> None:
        with self._queue.lock:
            queue = self._queue.groups.get(group, {})
            entry = queue.get(event_id)
            if entry is not None and entry.parked:
                del queue[event_id]

    def backlog_by_type(self) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        with self._queue.lock:
            for group, queue in self._queue.groups.items():
                for entry in queue.values():
                    slot = (group, entry.event.type)
                    found[slot] = found.get(slot, 0) + 1
        return found

    def drop_backlog(self, group: str, event_type: str) -> int:
        with self._queue.lock:
            queue = self._queue.groups.get(group, {})
            gone = [key for key, entry in queue.items() if entry.event.type == event_type]
            for key in gone:
                del queue[key]
        return len(gone)

    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        found: dict[str, GroupStatus] = {}
        with self._queue.lock:
            now = time.monotonic()
            for group, queue in self._queue.groups.items():
                if not queue:
                    continue
                waiting = [e for e in queue.values() if not e.parked and not e.held(now)]
                found[group] = GroupStatus(
                    pending=len(waiting),
                    in_flight=sum(e.held(now) for e in queue.values()),
                    oldest_pending_age_s=round(now - min(e.published_at for e in waiting), 3)
                    if waiting
                    else None,
                    retrying=sum(e.attempts > 0 for e in waiting),
                    parked=sum(e.parked for e in queue.values()),
                )
        return {group: found.get(group, GroupStatus()) for group in sorted({*groups, *found})}


def _decode(claimed: Claimed, event: Outgoing, max_bytes: int) -> None:
    try:
        claimed.event = build_event(
            id=event.event_id,
            type=event.type,
            version=event.version,
            key=event.key,
            data=event.data,
            metadata=event.metadata,
            occurred_at=event.occurred_at,
            source=event.source,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            max_bytes=max_bytes,
        )
    except Exception as exc:  # whatever is wrong with it, it is this event's dead letter
        claimed.decode_error = decode_failure(exc)
