"""Level 1's subscription store: one Redis hash shared by every service under a ``prefix``.

Services at Level 1 share a Redis and a ``prefix`` but each has its own database, so the
subscriptions cannot live in a table: they live in ``<prefix>:subscriptions``, a hash with
one field per (service, group, event type), the JSON array ``[service, group, type]``, and
as value ``{"ordered", "declared_at", "last_seen_at", "retired_at"}`` (ISO times from the
Redis server's clock). Every relay reads the hash for each batch it moves (or through
``SUBSCRIPTIONS_CACHE``), so it fans out to what any service declared.

A declaration is one optimistic transaction (WATCH the hash, read the service's fields,
write the changes in MULTI/EXEC, again if another declaration got in between): the same
rules as the database store (``stores.plan``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis

from ...stores import Declaration, FanOut, Stored, Wanted, plan
from .transport import _translating

if TYPE_CHECKING:
    from ...models import Subscription
    from .transport import RedisStreamsTransport


class RedisStore:
    """The ``<prefix>:subscriptions`` hash of one Redis transport."""

    def __init__(self, transport: RedisStreamsTransport) -> None:
        self.transport = transport
        self.hash = f"{transport.prefix}:subscriptions"
        self.key = (
            f"redis:{transport.options.get('url') or transport.options.get('cache')}:{self.hash}"
        )

    @_translating
    def declare(self, service: str, wanted: Wanted, *, replace: bool) -> Declaration:
        return self._atomically(lambda pipe: self._declare(pipe, service, wanted, replace))

    def _declare(self, pipe: Any, service: str, wanted: Wanted, replace: bool) -> Declaration:
        rows = {
            (group, event_type): value
            for (owner, group, event_type), value in _read(pipe.hgetall(self.hash)).items()
            if owner == service
        }
        stored = {s: Stored(bool(v["ordered"]), bool(v.get("retired_at"))) for s, v in rows.items()}
        result = plan(service, wanted, stored, replace=replace)
        now = _now(pipe)
        changed: dict[str, str] = {}
        for slot, ordered in wanted.items():
            value = rows.get(slot) or {"declared_at": now, "retired_at": None}
            value.update(ordered=ordered, last_seen_at=now)
            if slot in result.reopened:
                value["retired_at"] = None
            changed[_field(service, slot)] = json.dumps(value)
        for slot in result.retired:
            changed[_field(service, slot)] = json.dumps({**rows[slot], "retired_at": now})
        pipe.multi()
        if changed:
            pipe.hset(self.hash, mapping=changed)
        pipe.execute()
        return result

    @_translating
    def declared(self) -> dict[tuple[str, str, str], bool]:
        """``{(service, group, event type): ordered}`` as stored now."""
        return {
            slot: bool(value["ordered"])
            for slot, value in _read(self.transport.client.hgetall(self.hash)).items()
        }

    @_translating
    def fan_out(self) -> FanOut:
        return [
            (event_type, group, bool(value["ordered"]))
            for (_, group, event_type), value in _read(
                self.transport.client.hgetall(self.hash)
            ).items()
        ]

    @_translating
    def rows(self) -> list[Subscription]:
        from ...models import Subscription

        found = [
            Subscription(
                service=service,
                group=group,
                event_type=event_type,
                ordered=bool(value["ordered"]),
                declared_at=_time(value.get("declared_at")),
                last_seen_at=_time(value.get("last_seen_at")),
                retired_at=_time(value.get("retired_at")) if value.get("retired_at") else None,
            )
            for (service, group, event_type), value in _read(
                self.transport.client.hgetall(self.hash)
            ).items()
        ]
        return sorted(found, key=lambda row: (row.service, row.group, row.event_type))

    @_translating
    def remove(
        self, row: Subscription, drop_backlog: Callable[[str, str], int | None]
    ) -> tuple[bool, int | None]:
        def attempt(pipe: Any) -> tuple[bool, bool]:
            stored = _read(pipe.hgetall(self.hash))
            mine = stored.get((row.service, row.group, row.event_type))
            pair = [v for (_, g, t), v in stored.items() if (g, t) == (row.group, row.event_type)]
            if mine is None or not mine.get("retired_at"):
                return False, False
            if any(not value.get("retired_at") for value in pair):
                return False, False  # another service still declares it
            pipe.multi()
            pipe.hdel(self.hash, _field(row.service, (row.group, row.event_type)))
            pipe.execute()
            return True, len(pair) == 1

        removed, last = self._atomically(attempt)
        return removed, drop_backlog(row.group, row.event_type) if last else None

    def _atomically(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work(pipe)`` with the hash watched, again whenever another writer changed
        it before ``work``'s EXEC."""
        while True:
            with self.transport.client.pipeline() as pipe:
                try:
                    pipe.watch(self.hash)
                    return work(pipe)
                except redis.WatchError:
                    continue


def _field(service: str, slot: tuple[str, str]) -> str:
    return json.dumps([service, *slot], separators=(",", ":"))


def _read(raw: Mapping[Any, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The hash as ``{(service, group, type): value}``; a field that is not ours is skipped."""
    found = {}
    for field, value in raw.items():
        try:
            service, group, event_type = json.loads(field)
            parsed = json.loads(value)
        except (ValueError, TypeError):
            continue
        if isinstance(parsed, dict) and "ordered" in parsed:
            found[(str(service), str(group), str(event_type))] = parsed
    return found


def _now(client: Any) -> str:
    seconds, micros = client.time()  # the server's clock: the same for every service
    return dt.datetime.fromtimestamp(seconds + micros / 1e6, dt.timezone.utc).isoformat()


def _time(value: Any) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return dt.datetime.fromtimestamp(0, dt.timezone.utc)
