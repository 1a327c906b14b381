"""Level 1: Redis Streams. One stream per consumer group; the event log stays the truth.

Layout, under the ``prefix`` option (``django_events`` by default):

``<prefix>:stream:<group>``   the group's stream, read through one Redis consumer group
                              (``django-events``) by every worker of that group
``<prefix>:delayed:<group>``  retries waiting for their due time (sorted set, server time)
``<prefix>:owed:<group>``     event id -> log position of every event the group has not
                              finished, the basis of the recovery checkpoint; and one
                              marker, also kept in the database: a missing or different
                              marker means Redis lost the group's data

Publishing to a group's own stream makes restricted publishes (replay, admin retry),
per-group trimming and lag plain; the cost is one entry per event and group. Attempts
are the entry's delivery count; acks follow the handler's commit; an entry idle longer
than the lease is taken over (``XPENDING IDLE`` + ``XCLAIM``, in one script). Per-key
order is not offered: ordered handlers are refused by system check E008.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import redis
from django.core.checks import CheckMessage, Error, Warning

from ...envelope import Event, from_cloudevent, parse_uuid
from ...exceptions import EventsConfigurationError, TransportUnavailable, UndecodableEvent
from ...signing import SIGNATURE, Signing, UnverifiedMessage, same
from ..base import (
    Claimed,
    GroupStatus,
    Outgoing,
    Transport,
    TransportContext,
    cloudevent_json,
    decode_failure,
    fallback_id,
    text_size,
    translating,
    wire_uuid,
    within_budget,
)
from . import lua

if TYPE_CHECKING:
    from .subscriptions import RedisStore

logger = logging.getLogger("django_events.transports.redis")

CONSUMER_GROUP = "django-events"
"""The Redis consumer group in every stream (the stream's name carries the events group);
one name everywhere lets a worker block on all its groups' streams in one XREADGROUP."""
ORPHAN_CHECK_INTERVAL = 0.5
"""Seconds between looks for entries abandoned by a dead worker, when busy."""
PROMOTE_INTERVAL = 0.1
"""Seconds between moves of due retries back into the streams, at most."""
HOUSEKEEPING_INTERVAL = 1.0
"""Seconds between trims and data-loss checks, however often the relay passes."""
CHECKPOINT_INTERVAL = 5.0
"""Seconds between writes of the recovery checkpoint to the database."""
BACKPRESSURE_PAUSE = 0.5
"""Seconds the relay waits after publishing to a group whose stream is over ``max_len``."""
PASS_OVER_DELAY = 0.5
"""Seconds an entry of a type this worker does not handle waits before it is offered again
(to any worker of its group): a worker of the version that handles it gets it within about
that long, and an old worker alone re-reads it at most twice a second."""
PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_OPTIONS = {"url", "cache", "prefix", "max_len", "block", "claim_idle", "database"}
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def _unavailable(exc: Exception) -> str | None:
    """Redis being unreachable is ``TransportUnavailable``, which the engine retries."""
    return f"Redis is unavailable: {exc}" if isinstance(exc, _UNAVAILABLE) else None


_translating = translating(_unavailable)


class Receipt(NamedTuple):
    """Where a claimed entry lives, and its fields, to put it back or retry it later (a
    named tuple: one is built per entry claimed, and a tuple is the cheapest to build)."""

    stream: str
    entry_id: str
    raw: dict[bytes, bytes]
    deliveries: int

    @property
    def claim(self) -> str:
        """This claim's token for the scripts: the entry id and its delivery count."""
        return f"{self.entry_id}/{self.deliveries}"

    @property
    def owed_as(self) -> bytes | None:
        """The entry's ``id`` field as written: the member of the owed set that acking it
        removes (docs/wire-format.md, "What a consumer does"); None if it has none."""
        return self.raw.get(b"id")

    def fields(self) -> dict[str, str]:
        """The entry's fields as text; bytes that are not UTF-8 (not ours) are escaped."""
        return {_text(key): _text(value) for key, value in self.raw.items()}


class RedisStreamsTransport(Transport):
    supports_ordering = False
    supports_delayed_retry = True
    persistent = True  # with appendonly; and whatever Redis loses is re-published from the log
    acks_in_transaction = False
    idempotent_publish = True  # while the group owes the event (the owed set, ZADD NX)
    waits_for_work = True
    filters_types = True  # an entry of a type the worker does not handle is passed over
    shares_subscriptions = True  # the <prefix>:subscriptions hash (redis/subscriptions.py)
    ordering_note = (
        "Redis Streams hand a group's entries to competing consumers with no per-key "
        "lock, so per-key order cannot be kept. Drop ordered=True, or handle this group "
        "with the database transport."
    )

    accepted_options = frozenset(_OPTIONS)

    def __init__(
        self, alias: str, options: dict[str, Any], context: TransportContext | None = None
    ) -> None:
        where = f"DJANGO_EVENTS['TRANSPORTS'][{alias!r}]['OPTIONS']"
        super().__init__(alias, options, context)
        if ("url" in options) == ("cache" in options):
            raise EventsConfigurationError(
                f"{where}: give exactly one of 'url' (redis://...) or 'cache' (a django-redis "
                "CACHES alias)."
            )
        for name in ("url", "cache"):
            if name in options and not isinstance(options[name], str):
                raise EventsConfigurationError(f"{where}[{name!r}] must be a string.")
        prefix = options.get("prefix", "django_events")
        if not isinstance(prefix, str) or not PREFIX.match(prefix):
            raise EventsConfigurationError(
                f"{where}['prefix'] must be letters, digits and _.:- (at most 100), got {prefix!r}."
            )
        self.prefix = prefix
        self.max_len = _positive(options, "max_len", 100_000, where, integer=True)
        self.block = _positive(options, "block", None, where)
        self.claim_idle = _positive(options, "claim_idle", None, where)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client: redis.Redis | None = None
        self._client_lock = threading.Lock()
        self._scripts: dict[str, Any] = {}
        self._ready: list[Claimed] = []
        self._created: set[str] = set()
        self._cursors: dict[str, str] = {}
        self._orphans_checked_at = 0.0
        self._promoted_at = 0.0
        self._kept_at = 0.0
        self._checkpointed_at = 0.0
        self._warned_lag_at = 0.0
        self._store: RedisStore | None = None
        self.lagging: dict[str, int] = {}
        """Groups whose stream held more than ``max_len`` entries at the last publish."""
        from .recovery import Recovery

        self.recovery = Recovery(self)

    # -- names and client ---------------------------------------------------------------

    def stream(self, group: str) -> str:
        return f"{self.prefix}:stream:{group}"

    def delayed(self, group: str) -> str:
        return f"{self.prefix}:delayed:{group}"

    def leases(self, group: str) -> str:
        return f"{self.prefix}:leases:{group}"

    def owed(self, group: str) -> str:
        return f"{self.prefix}:owed:{group}"

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> redis.Redis:
        if "cache" in self.options:
            try:
                from django_redis import get_redis_connection
            except ImportError as exc:
                raise EventsConfigurationError(
                    "The 'cache' option needs django-redis: "
                    "pip install 'django-events-outbox[redis]'."
                ) from exc
            return cast(redis.Redis, get_redis_connection(self.options["cache"]))
        block = self.block or self.context.poll_interval
        return redis.Redis.from_url(
            self.options["url"],
            socket_timeout=block + 10.0,
            socket_connect_timeout=5.0,
            health_check_interval=30,
        )

    def _script(self, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(getattr(lua, name))
        return script

    def _queue(self, pipe: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a script on ``pipe`` by its hash alone. A script passed to a pipeline the
        usual way costs a ``SCRIPT EXISTS`` round trip before every execute; here a
        ``NOSCRIPT`` reply (Redis restarted or flushed its scripts) is run again by
        ``_rerun``, which loads it: a script that was not found did nothing."""
        pipe.evalsha(self._script(name).sha, len(keys), *keys, *args)

    def _rerun(
        self, results: list[Any], calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """``results`` of the scripts queued by ``_queue`` (in ``calls`` order), each one
        Redis did not have run again, which loads it."""
        return [
            self._script(name)(keys=keys, args=args)
            if isinstance(result, redis.exceptions.NoScriptError)
            else result
            for result, (name, keys, args) in zip(results, calls, strict=True)
        ]

    @_translating
    def flush(self) -> int:
        """Delete every key under this transport's prefix; for demos and tests, never in
        production (what is in flight would wait for recovery). Returns how many."""
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start : start + 1000])
        self._created.clear()
        return len(keys)

    def close(self) -> None:
        """Give back what a last ``wait`` received but nobody claimed, then disconnect."""
        if self._ready:
            with contextlib.suppress(TransportUnavailable):  # they return after claim_idle
                self.release(self._ready)
            self._ready = []
        if self._client is not None and "url" in self.options:
            self._client.close()
        self._client = None
        self._scripts.clear()

    def subscription_store(self) -> RedisStore:
        """Level 1: the ``<prefix>:subscriptions`` hash, shared by every service under the
        same Redis and ``prefix``, whatever database each has."""
        if self._store is None:
            from .subscriptions import RedisStore

            self._store = RedisStore(self)
        return self._store

    # -- checks and setup ---------------------------------------------------------------

    def check(self) -> list[CheckMessage]:
        errors: list[CheckMessage] = []
        others = [a for a in self.context.outbox_databases if a != self.database]
        if others:
            errors.append(
                Error(
                    f"DJANGO_EVENTS['OUTBOX_DATABASES'] includes {others[0]!r}, but the Redis "
                    f"transport recovers lost data from the event log in {self.database!r} only.",
                    hint=f"Publish to {self.database!r} only, or set the transport's "
                    "'database' option to the database you publish to.",
                    id="django_events.E009",
                )
            )
        return errors

    def check_server(self) -> list[CheckMessage]:
        errors: list[CheckMessage] = []
        try:
            config = {
                **self.client.config_get("appendonly"),
                **self.client.config_get("maxmemory-policy"),
            }
        except redis.ResponseError:  # CONFIG is disabled (managed Redis): nothing to read
            return errors
        except (*_UNAVAILABLE, EventsConfigurationError) as exc:
            return [
                Warning(
                    f"Redis for transport {self.alias!r} cannot be reached to check its "
                    f"persistence settings: {exc}",
                    id="django_events.W005",
                ),
            ]
        if config.get("appendonly") == "no":
            errors.append(
                Warning(
                    f"Redis for transport {self.alias!r} runs with appendonly no: a restart "
                    "loses what is in flight. django-events re-publishes it from the event log, "
                    "so nothing is lost, but handlers see those events again.",
                    hint="Set appendonly yes (appendfsync everysec) on that Redis.",
                    id="django_events.W003",
                )
            )
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            errors.append(
                Warning(
                    f"Redis for transport {self.alias!r} has maxmemory-policy {policy}: it may "
                    "evict streams under memory pressure.",
                    hint="Use maxmemory-policy noeviction on the Redis that holds the streams.",
                    id="django_events.W004",
                )
            )
        return errors

    @_translating
    def setup(
        self, subscriptions: Sequence[tuple[str, str, bool]], *, dry_run: bool = False
    ) -> list[str]:
        steps = []
        for group in sorted({group for _, group, _ in subscriptions}):
            key = self.stream(group)
            try:
                names = {info["name"] for info in self.client.xinfo_groups(key)}
            except redis.ResponseError:  # no such stream yet
                names = set()
            if CONSUMER_GROUP.encode() in names:
                continue
            if not dry_run:
                self.ensure_group(group)
            steps.append(f"stream {key}: consumer group {CONSUMER_GROUP!r} for group {group!r}")
        return steps

    def ensure_group(self, group: str, *, again: bool = False) -> None:
        """Create the group's stream and consumer group, reading from the stream's start."""
        if group in self._created and not again:
            return
        try:
            self.client.xgroup_create(self.stream(group), CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._created.add(group)

    # -- relay side ---------------------------------------------------------------------

    @_translating
    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """Add each event to the stream of every group subscribed to its type: one script
        call per group, all in one round trip. An event the group still owes is not added
        twice."""
        self.publish_to_groups(events, subscriptions)

    def publish_to_groups(
        self,
        events: Sequence[Outgoing],
        subscriptions: Sequence[tuple[str, str, bool]],
        *,
        force: bool = False,
    ) -> int:
        by_type: dict[str, list[str]] = {}
        for event_type, group, _ in subscriptions:
            by_type.setdefault(event_type, []).append(group)
        args: dict[str, list[str]] = {}
        signing = self.context.signing
        for event in events:
            groups = by_type.get(event.type)
            if not groups:
                continue
            fields = _fields(event, signing)
            for group in groups:
                args.setdefault(group, ["1" if force else "0"]).extend(
                    (fields[1], str(event.position), str(len(fields)), *fields)
                )
        if not args:
            return 0
        for group in args:
            self.ensure_group(group)
        calls = [("PUBLISH", [self.stream(g), self.owed(g)], argv) for g, argv in args.items()]
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            self._queue(pipe, *call)
        results = self._rerun(pipe.execute(raise_on_error=False), calls)
        for result in results:
            if isinstance(result, Exception):
                raise result
        added = 0
        for group, (count, length) in zip(args, results, strict=True):
            added += int(count)
            if length > self.max_len:
                self.lagging[group] = int(length)
            else:
                self.lagging.pop(group, None)
        if self.lagging:
            self._slow_down()
        return added

    def _slow_down(self) -> None:
        if time.monotonic() - self._warned_lag_at > 30:
            self._warned_lag_at = time.monotonic()
            logger.warning(
                "Groups %s hold more than %d entries in their streams; relaying slowly "
                "until they catch up",
                ", ".join(sorted(self.lagging)),
                self.max_len,
            )
        time.sleep(BACKPRESSURE_PAUSE)

    @_translating
    def housekeeping(self) -> None:
        """Every second at most: check for lost data (and re-publish it), trim the streams;
        every few seconds, write the recovery checkpoint to the database."""
        now = time.monotonic()
        if now - self._kept_at < HOUSEKEEPING_INTERVAL:
            return
        self._kept_at = now
        self.recovery.recover_lost()  # reads the shared subscriptions: every service's groups
        self.trim(self.recovery.groups())
        if now - self._checkpointed_at >= CHECKPOINT_INTERVAL:
            self._checkpointed_at = now
            self.recovery.checkpoint()

    def trim(self, groups: Iterable[str]) -> None:
        script = self._script("TRIM")
        pipe = self.client.pipeline(transaction=False)
        groups = list(groups)
        for group in groups:
            script(
                keys=[self.stream(group), self.leases(group)], args=[CONSUMER_GROUP], client=pipe
            )
        pipe.execute()

    # -- worker side --------------------------------------------------------------------

    @_translating
    def wait(self, groups: Sequence[str], timeout: float) -> bool:
        """Block in XREADGROUP until an entry arrives for ``groups``; keep what it read for
        the next ``claim``."""
        if self._ready:
            return True
        if not groups:
            time.sleep(timeout)
            return False
        block = self.block if self.block is not None else timeout
        self._ready = self._read(groups, self.context.batch_size, block=block)
        return bool(self._ready)

    @_translating
    def claim(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        *,
        types: Mapping[str, Collection[str]] | None = None,
        max_bytes: int | None = None,
    ) -> list[Claimed]:
        """New entries first (due retries are moved back into the streams just before),
        then, twice a second or when there is nothing new, entries a dead worker left
        behind. Every claim counts as an attempt: the entry's delivery count. Entries
        past ``max_bytes`` are released, their attempt given back; so are entries of a
        type ``types`` leaves out (``pass_over``)."""
        if not groups:
            return []
        claimed, self._ready = self._ready[:limit], self._ready[limit:]
        now = time.monotonic()
        if len(claimed) < limit:
            # Due retries move back into the streams at most every PROMOTE_INTERVAL while
            # busy, and whenever there is nothing new.
            promote = now >= self._promoted_at
            fresh = self._read(groups, limit - len(claimed), promote=promote)
            if not fresh and not promote:
                promote = True
                fresh = self._read(groups, limit - len(claimed), promote=True)
            if promote:
                self._promoted_at = now + PROMOTE_INTERVAL
            claimed += fresh
        if len(claimed) < limit and (not claimed or now >= self._orphans_checked_at):
            self._orphans_checked_at = now + ORPHAN_CHECK_INTERVAL
            claimed += self._orphans(groups, limit - len(claimed), lease)
        if types is not None:
            claimed = self.pass_over(claimed, types)
        taken = within_budget((c.size for c in claimed), max_bytes)
        if taken < len(claimed):
            self.release(claimed[taken:])
        return claimed[:taken]

    def pass_over(
        self, claimed: list[Claimed], types: Mapping[str, Collection[str]]
    ) -> list[Claimed]:
        """Keep the entries whose type ``types`` lists for their group; give the others
        back for a worker that handles them (a newer version, during a rolling deploy):
        each goes to the group's delayed set for ``PASS_OVER_DELAY`` with its attempt given
        back, so however often old workers pass over it, no attempt is counted and it is
        never dead-lettered for want of a handler here, as long as some service declares its
        (group, type); one no service declares is kept, for its ``NoHandler`` dead letter,
        rather than sent round for ever. An entry with no type, or one that
        could not be decoded or verified, is kept for its dead letter: no version of any
        handler can take it, and a type read from an entry that failed is not to be trusted."""
        keep: list[Claimed] = []
        others: list[Claimed] = []
        for item in claimed:
            wanted = types.get(item.group, ())
            ours = not item.event_type or item.decode_error is not None
            (keep if ours or item.event_type in wanted else others).append(item)
        if others:  # only what some service declares waits for it; the rest is NoHandler
            declared = {(group, type_) for type_, group, _ in self.subscription_store().fan_out()}
            keep += [item for item in others if (item.group, item.event_type) not in declared]
            others = [item for item in others if (item.group, item.event_type) in declared]
        if others:
            script = self._script("RETRY_LATER")
            pipe = self.client.pipeline(transaction=False)
            for item in others:
                fields = item.receipt.fields()
                fields["attempts"] = str(max(0, item.attempt - 1))
                script(**self._delay(item, PASS_OVER_DELAY, fields), client=pipe)
            pipe.execute(raise_on_error=False)
        return keep

    def _read(
        self,
        groups: Sequence[str],
        limit: int,
        *,
        block: float | None = None,
        promote: bool = False,
    ) -> list[Claimed]:
        streams: dict[Any, Any] = {self.stream(group): ">" for group in groups}
        per_stream = max(1, limit // len(groups))
        try:
            for group in groups:
                self.ensure_group(group)
            if promote:
                pipe = self.client.pipeline(transaction=False)
                calls = [("PROMOTE", [self.delayed(g), self.stream(g)], [limit]) for g in groups]
                for call in calls:
                    self._queue(pipe, *call)
                pipe.xreadgroup(CONSUMER_GROUP, self.consumer, streams, count=per_stream)
                *promoted, response = pipe.execute(raise_on_error=False)
                promoted = self._rerun(promoted, calls)
                for result in (*promoted, response):
                    if isinstance(result, Exception):
                        raise result
                self._note_strange(groups, promoted)
            else:
                ms = None if block is None else max(1, int(block * 1000))
                response = self.client.xreadgroup(
                    CONSUMER_GROUP, self.consumer, streams, count=per_stream, block=ms
                )
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                self.repair(groups)
                return []
            # UNBLOCKED: a stream this read was blocked on was deleted meanwhile (a flush,
            # an eviction); Redis 7 ends the read with this error. Like NOGROUP, what the
            # group lost comes back through recovery; the worker goes on.
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            logger.warning("Consumer groups missing in Redis (%s); creating them again", exc)
            for group in groups:
                self.ensure_group(group, again=True)
            return []
        group_of = {self.stream(group): group for group in groups}
        claimed = []
        if isinstance(response, dict):  # RESP3 replies map streams to entries
            response = list(response.items())
        for stream, entries in response or ():
            group = group_of[stream.decode()]
            for entry_id, fields in entries:
                claimed.append(self._claimed(group, entry_id.decode(), fields, deliveries=1))
        return claimed

    def _orphans(self, groups: Sequence[str], limit: int, lease: float) -> list[Claimed]:
        """Entries idle longer than the claim idle time (a dead worker's), unless a live
        worker renewed them for longer; each is the next attempt (its delivery count)."""
        idle_ms = int((self.claim_idle or lease) * 1000)
        script = self._script("TAKE_OVER")
        pipe = self.client.pipeline(transaction=False)
        for group in groups:
            script(
                keys=[self.stream(group), self.leases(group)],
                args=[CONSUMER_GROUP, self.consumer, idle_ms, limit, self._cursors.get(group, "-")],
                client=pipe,
            )
        claimed = []
        for group, result in zip(groups, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception):
                if "NOGROUP" in str(result):
                    self.ensure_group(group, again=True)
                    continue
                if "WRONGTYPE" in str(result):
                    self.repair([group])
                    continue
                raise result
            cursor, taken = result
            self._cursors[group] = _text(cursor)
            for entry_id, flat, deliveries in taken:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                claimed.append(self._claimed(group, _text(entry_id), fields, deliveries=deliveries))
        if claimed:
            logger.info("Took over %d entries left by a worker that stopped", len(claimed))
        return claimed

    def _claimed(
        self, group: str, entry_id: str, raw: dict[bytes, bytes], *, deliveries: int
    ) -> Claimed:
        """One entry as a ``Claimed``: an event, or a ``decode_error`` naming what is wrong
        with it (fields that are not UTF-8, a body that does not decode, a delayed-set
        member that was not ours), never an exception that would stop the group. An entry
        that decodes is read once, through its envelope (its id and type are the
        envelope's, as on SQS and RabbitMQ); the other fields stay bytes until a retry or
        a dead letter needs them."""
        receipt = Receipt(self.stream(group), entry_id, raw, deliveries)
        attempts = raw.get(b"attempts")
        attempt = deliveries + (0 if attempts == b"0" else _count(attempts))
        event = None
        try:
            if b"problem" in raw:
                raise UndecodableEvent(f"{_text(raw[b'problem'])}: {_text(raw.get(b'member'))!r}")
            context = self.context
            body = raw.get(b"event", b"")
            signed = context.signing.verify(raw.get(_SIGNATURE), body)
            event = from_cloudevent(body, context.max_payload_bytes * 2)
            if signed:  # the fields the worker reads beside the envelope are the signed ones
                same("id field", _text_or_none(raw.get(b"id")), str(event.id))
                same("type field", _text_or_none(raw.get(b"type")), event.type)
        except Exception as exc:  # whatever is wrong with it, it is this entry's dead letter
            return self._undecodable(group, receipt, attempt, event, exc)
        failed = raw.get(b"first_failed_at")
        return Claimed(
            group,
            attempt,
            receipt,
            event.id,
            event.type,
            event,
            first_failed_at=None if failed is None else _datetime(_text(failed)),
            size=sum(map(len, raw.values())),  # what claim's budget counts
        )

    def _undecodable(
        self, group: str, receipt: Receipt, attempt: int, event: Event | None, exc: Exception
    ) -> Claimed:
        """The ``Claimed`` of an entry that did not decode (or verify): named by its ``id``
        and ``type`` fields where they are readable, for its dead letter."""
        raw = receipt.raw
        fields = {name: _text(raw[key]) for name, key in _READ_FIELDS if key in raw}
        claimed = Claimed(
            group=group,
            attempt=attempt,
            receipt=receipt,
            event_id=_uuid(fields.get("id")) or fallback_id(f"redis:{_where(receipt)}"),
            event_type=fields.get("type", ""),
            event=event,  # decoded, then a signed field did not match it
            decode_error=decode_failure(exc, _where(receipt)),
            first_failed_at=_datetime(fields.get("first_failed_at")),
            size=text_size(*raw.values()),
        )
        if isinstance(exc, UnverifiedMessage):
            claimed.decode_class, claimed.event = "UnverifiedMessage", None
        return claimed

    def repair(self, groups: Iterable[str]) -> None:
        """Set aside keys of the groups that hold the wrong type (written by something
        else), so the group goes on; what they held comes back through recovery."""
        script = self._script("REPAIR")
        for group in groups:
            kinds = {
                self.stream(group): "stream",
                self.delayed(group): "zset",
                self.leases(group): "hash",
                self.owed(group): "zset",
            }
            if script(keys=list(kinds), args=list(kinds.values())):
                self._created.discard(group)
                logger.warning(
                    "Group %s: a Redis key of the wrong type was renamed to <key>:garbled:<time>",
                    group,
                )

    def _note_strange(self, groups: Sequence[str], promoted: Sequence[Any]) -> None:
        for group, result in zip(groups, promoted, strict=True):
            if isinstance(result, list) and len(result) > 1 and int(result[1]):
                logger.warning(
                    "Group %s: %s delayed-retry members were not django-events'; moved to "
                    "the stream to be dead-lettered",
                    group,
                    result[1],
                )

    @_translating
    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        by_stream: dict[str, tuple[str, list[str]]] = {}
        for item in claimed:
            by_stream.setdefault(item.receipt.stream, (item.group, []))[1].append(
                item.receipt.claim
            )
        script = self._script("RENEW")
        pipe = self.client.pipeline(transaction=False)
        for stream, (group, ids) in by_stream.items():
            script(
                keys=[stream, self.leases(group)],
                args=[CONSUMER_GROUP, self.consumer, int(lease * 1000), *ids],
                client=pipe,
            )
        pipe.execute(raise_on_error=False)

    @_translating
    def release(self, claimed: Sequence[Claimed]) -> None:
        """Put entries back at the end of their stream, with the attempt given back."""
        script = self._script("RELEASE")
        pipe = self.client.pipeline(transaction=False)
        for item in claimed:
            fields = item.receipt.fields()
            fields["attempts"] = str(max(0, item.attempt - 1))
            flat = [part for pair in fields.items() for part in pair]
            script(
                keys=[item.receipt.stream],
                args=[CONSUMER_GROUP, self.consumer, item.receipt.claim, *flat],
                client=pipe,
            )
        pipe.execute(raise_on_error=False)
        self._ready = [item for item in self._ready if item not in claimed]

    @_translating
    def ack(self, claimed: Claimed) -> bool:
        return bool(self.ack_many([claimed]))

    @_translating
    def ack_many(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        """XACK after the handler's commit, and drop the events from what the group owes:
        one script call per group, in one round trip. An entry another claim took over
        meanwhile is left to that claim (its handler finds the inbox row and skips it)."""
        if not claimed:
            return []
        by_group: dict[str, list[Claimed]] = {}
        for item in claimed:
            by_group.setdefault(item.group, []).append(item)
        calls = []
        for group, items in by_group.items():
            args: list[Any] = [CONSUMER_GROUP, self.consumer]
            for item in items:
                args += (item.receipt.claim, item.receipt.owed_as or str(item.event_id))
            keys = [self.stream(group), self.owed(group), self.leases(group)]
            calls.append(("ACK", keys, args))
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            self._queue(pipe, *call)
        results = self._rerun(pipe.execute(raise_on_error=False), calls)
        acked: list[Claimed] = []
        for items, lost in zip(by_group.values(), results, strict=True):
            if lost == []:
                acked += items
            elif isinstance(lost, list):  # positions of the claims no longer held
                gone = set(lost)
                acked += (item for n, item in enumerate(items, 1) if n not in gone)
        return acked

    @_translating
    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        fields = claimed.receipt.fields()
        fields["attempts"] = str(claimed.attempt)
        if "first_failed_at" not in fields:
            seconds, micros = self.client.time()  # the server's clock, not this worker's
            failed = dt.datetime.fromtimestamp(seconds + micros / 1e6, dt.timezone.utc)
            fields["first_failed_at"] = failed.isoformat()
        self._script("RETRY_LATER")(**self._delay(claimed, delay, fields))

    def _delay(self, claimed: Claimed, delay: float, fields: dict[str, str]) -> dict[str, Any]:
        """The RETRY_LATER call that moves ``claimed`` to its group's delayed set for
        ``delay`` seconds, written back with ``fields``."""
        member = json.dumps(
            [part for pair in fields.items() for part in pair],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return {
            "keys": [claimed.receipt.stream, self.delayed(claimed.group)],
            "args": [
                CONSUMER_GROUP,
                self.consumer,
                claimed.receipt.claim,
                int(delay * 1000),
                member,
            ],
        }

    @_translating
    def dead_letter(self, claimed: Claimed) -> bool:
        return bool(
            self._script("DEAD_LETTER")(
                keys=[claimed.receipt.stream, self.owed(claimed.group)],
                args=[
                    CONSUMER_GROUP,
                    self.consumer,
                    claimed.receipt.claim,
                    str(claimed.event_id),
                ],
            )
        )

    @_translating
    def drop_backlog(self, group: str, event_type: str) -> int:
        """Remove ``group``'s entries of ``event_type`` (its subscription was unsubscribed)
        from its stream and delayed set, and from what it owes: one pass over the stream,
        at prune time only. An entry a worker holds right now is dropped too (its ack then
        finds nothing). The events stay in the event log."""
        stream, owed, wanted = self.stream(group), self.owed(group), event_type.encode()
        dropped, start = 0, "-"
        while entries := cast(list[Any], self.client.xrange(stream, start, "+", count=1000)):
            start = "(" + _text(entries[-1][0])
            found = [
                (entry_id, f.get(b"id", b"")) for entry_id, f in entries if f.get(b"type") == wanted
            ]
            if found:
                pipe = self.client.pipeline(transaction=False)
                pipe.xack(stream, CONSUMER_GROUP, *(entry_id for entry_id, _ in found))
                pipe.xdel(stream, *(entry_id for entry_id, _ in found))
                pipe.zrem(owed, *(event_id for _, event_id in found))
                pipe.execute()
                dropped += len(found)
        for member, _ in self.client.zscan_iter(self.delayed(group)):
            try:
                flat = json.loads(member)
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
            except (ValueError, TypeError):
                continue  # not ours: PROMOTE moves it to the stream for its dead letter
            if fields.get("type") == event_type and self.client.zrem(self.delayed(group), member):
                self.client.zrem(owed, str(fields.get("id", "")))
                dropped += 1
        return dropped

    # -- status -------------------------------------------------------------------------

    @_translating
    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        found: dict[str, GroupStatus] = {}
        seconds, micros = self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        for group in sorted(set(groups)):
            stream = self.stream(group)
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_groups(stream)
            pipe.zcard(self.delayed(group))
            pipe.xlen(stream)
            info, delayed, length = pipe.execute(raise_on_error=False)
            name = CONSUMER_GROUP.encode()
            ours = [g for g in (info if isinstance(info, list) else []) if g["name"] == name]
            if not ours:
                found[group] = GroupStatus(pending=int(delayed), retrying=int(delayed))
                continue
            pending = int(ours[0]["pending"])
            lag = ours[0].get("lag")
            unread = int(lag) if lag is not None else max(0, int(length) - pending)
            oldest = None
            if unread:
                last = _text(ours[0]["last-delivered-id"])
                first = self.client.xrange(stream, f"({last}", "+", count=1)
                if first:
                    born = int(_text(first[0][0]).split("-")[0])
                    oldest = round(max(0, now_ms - born) / 1000, 3)
            found[group] = GroupStatus(
                pending=unread + int(delayed),
                in_flight=pending,
                oldest_pending_age_s=oldest,
                retrying=int(delayed),
                lagging=int(length) > self.max_len,
            )
        return found


def _positive(
    options: dict[str, Any], name: str, default: Any, where: str, *, integer: bool = False
) -> Any:
    value = options.get(name, default)
    if value is None:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        wanted = "a positive integer" if integer else "a positive number of seconds"
        raise EventsConfigurationError(f"{where}[{name!r}] must be {wanted}, got {value!r}.")
    return value if integer else float(value)


UNSIGNED = Signing()
_SIGNATURE = SIGNATURE.encode()
_READ_FIELDS = tuple((name, name.encode()) for name in ("id", "type", "first_failed_at"))


def _fields(event: Outgoing, signing: Signing = UNSIGNED) -> list[str]:
    """The stream entry, flat (name, value, ...; the event id second): the event in its
    CloudEvents JSON form, with its id and type beside it for when that form is broken,
    and its signature when signing keys are set."""
    event_id = wire_uuid(event.event_id)  # the same on every database (docs/wire-format.md)
    body = cloudevent_json(event, event_id)
    fields = ["id", event_id, "type", event.type, "event", body, "attempts", "0"]
    if signing.enabled:
        fields += (SIGNATURE, signing.sign(body))
    return fields


def _where(receipt: Receipt) -> str:
    """An entry, as a decode error and a fallback id name it."""
    return f"Stream entry {receipt.entry_id} of {receipt.stream}"


def _text(value: Any) -> str:
    """Text from Redis; bytes that are not UTF-8 (not written here) are escaped."""
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _text_or_none(value: bytes | None) -> str | None:
    return None if value is None else _text(value)


def _count(value: bytes | None) -> int:
    """An entry's ``attempts`` field: 0 if absent or not a sane number (not ours)."""
    try:
        return min(max(0, int(_text(value))), 1_000_000) if value is not None else 0
    except ValueError:
        return 0


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return parse_uuid(value or "")
    except ValueError:
        return None  # the decode error says what was wrong


def _datetime(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        found = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=dt.timezone.utc)
