"""Level 3: RabbitMQ (AMQP 0-9-1, with pika). Bindings decide fan-out; the log stays the truth.

Layout, under the ``prefix`` option (``django_events`` by default), in the URL's vhost:

``<prefix>``               topic exchange; the relay publishes each event once, routing key
                           = its type, and every queue bound to that type receives it,
                           whichever service bound it (docs/transport-rabbitmq.md)
``<prefix>.<group>``       the group's durable quorum queue, bound once per event type it
                           handles; its delivery limit dead-letters to the next queue
``<prefix>.<group>.dead``  dead letters the broker set aside; workers mirror them into
                           ``DeadLetter`` rows, as on every level
``<prefix>.delay.<ms>``    retries waiting ``ms`` milliseconds (a quorum queue with that
                           message TTL, reached through a fanout exchange of the same
                           name); each message then dead-letters back to its group's
                           queue through the default exchange. No plugin is needed.

A targeted publish (an admin retry, ``replay_events --group``) goes straight to the named
groups' queues through the default exchange, so it reaches those groups only. Publishes
wait for the broker's confirms, so the relay removes an event from the outbox only once
RabbitMQ has it. Workers consume with manual acks and a prefetch of ``BATCH_SIZE``; the
attempt is what earlier retries carried in the ``attempts`` header plus the quorum queue's
``x-delivery-count``. An ordered group's queue has a single active consumer, which hands
out one event per key at a time (docs/transport-rabbitmq.md, "Per-key order").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pika.exceptions
from django.core.checks import CheckMessage, Error
from django.db import connections, transaction

from ...envelope import Event, from_cloudevent
from ...exceptions import EventsConfigurationError
from ...signing import SIGNATURE, UnverifiedMessage, same
from ..base import (
    Claimed,
    GroupStatus,
    Outgoing,
    Transport,
    TransportContext,
    decode_failure,
    fallback_id,
)
from .link import UNAVAILABLE, Link, Receipt, translating_errors
from .messages import (
    ATTEMPTS,
    FIRST_FAILED,
    copy_properties,
    count_header,
    datetime_header,
    delay_step,
    key_of,
    now_iso,
    to_message,
    uuid_or_none,
)
from .subscriptions import BindingStore

logger = logging.getLogger("django_events.transports.rabbitmq")

PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
NAME_LIMIT = 255
"""Bytes in an AMQP queue or exchange name."""
_OPTIONS = {"url", "prefix", "heartbeat", "dead_letter_poll", "database"}


class RabbitMQTransport(Transport):
    supports_ordering = True  # one active consumer per ordered group, one event per key out
    supports_delayed_retry = True
    persistent = True  # durable quorum queues, persistent messages, confirmed publishes
    acks_in_transaction = False
    idempotent_publish = False  # a batch the relay sends again arrives twice; the inbox skips it
    waits_for_work = True
    filters_types = False
    routes_itself = True
    accepted_options = frozenset(_OPTIONS)

    def __init__(
        self, alias: str, options: dict[str, Any], context: TransportContext | None = None
    ) -> None:
        where = f"DJANGO_EVENTS['TRANSPORTS'][{alias!r}]['OPTIONS']"
        super().__init__(alias, options, context)
        url = options.get("url", "amqp://guest:guest@localhost:5672/%2F")
        if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
            raise EventsConfigurationError(
                f"{where}['url'] must be an amqp:// or amqps:// URL (the vhost is its path)."
            )
        self.url = url
        prefix = options.get("prefix", "django_events")
        if not isinstance(prefix, str) or not PREFIX.match(prefix):
            raise EventsConfigurationError(
                f"{where}['prefix'] must be letters, digits and _.:- (at most 100), got {prefix!r}."
            )
        self.prefix = prefix
        self.heartbeat = _number(options, "heartbeat", 30, where, integer=True)
        self.dead_letter_poll = float(_number(options, "dead_letter_poll", 10.0, where))
        self._pub = Link(self)
        self._sub = Link(self)
        self._buffer: list[Claimed] = []
        self._leases: dict[tuple[int, int], tuple[float, str]] = {}  # (generation, tag): end, group
        self._consuming: dict[str, str] = {}  # group: consumer tag, on this generation
        self._consuming_generation = -1
        self._declared: set[tuple[str, str]] = set()
        self._ordered: set[str] = set()  # groups declared ordered through this instance
        self._heads: dict[tuple[str, str], uuid.UUID] = {}  # ordered (group, key): event out
        self._due: list[tuple[float, Claimed]] = []  # ordered retries, held until due
        self._delays: set[int] = set()
        self._dead_checked_at = 0.0
        self._prefetch = 0

    # -- names ----------------------------------------------------------------------------

    @property
    def exchange(self) -> str:
        return self.prefix

    def queue(self, group: str, *, dead: bool = False) -> str:
        name = f"{self.prefix}.{group}{'.dead' if dead else ''}"
        if len(name.encode()) > NAME_LIMIT:
            raise EventsConfigurationError(
                f"RabbitMQ queue name {name!r} for group {group!r} is over {NAME_LIMIT} bytes; "
                "use a shorter prefix or group name."
            )
        return name

    def delay_queue(self, ms: int) -> str:
        return f"{self.prefix}.delay.{ms}"

    def subscription_store(self) -> BindingStore:
        """The ``Subscription`` table of this transport's database, where ``migrate`` binds
        as it declares: a deployment's queues receive every event published after its
        ``migrate`` returns, whichever service's relay publishes it."""
        return BindingStore(self)

    # -- checks and setup -----------------------------------------------------------------

    def check(self) -> list[CheckMessage]:
        errors: list[CheckMessage] = []
        if self.database not in connections.settings:
            errors.append(
                Error(
                    f"RabbitMQTransport {self.alias!r} keeps dead letters in database "
                    f"{self.database!r}, which is not in DATABASES.",
                    id="django_events.E040",
                )
            )
        for group in self._handled_groups():
            try:
                self.queue(group, dead=True)
            except EventsConfigurationError as exc:
                errors.append(Error(str(exc), id="django_events.E042"))
        return errors

    @translating_errors
    def setup(
        self, subscriptions: Sequence[tuple[str, str, bool]], *, dry_run: bool = False
    ) -> list[str]:
        """Declare the exchange, each group's queue and dead-letter queue, and one binding
        per (group, event type). Declares are idempotent; nothing is deleted or unbound
        (a binding no handler uses any more is for a person to remove). A dry run makes
        no broker call."""
        lines = [f"exchange {self.exchange} (topic, durable)"]
        for group, types in _types_by_group(subscriptions).items():
            queue, dead = self.queue(group), self.queue(group, dead=True)
            lines.append(f"queue {dead}: dead letters of group {group!r} (quorum)")
            lines.append(
                f"queue {queue}: group {group!r} (quorum), to {dead} after "
                f"{self.context.max_attempts(group)} deliveries"
            )
            lines += [f"binding {queue} <- {self.exchange} on {t}" for t in types]
        if not dry_run:
            self._declare(subscriptions)
        return lines

    @translating_errors
    def _bind(self, subscriptions: Sequence[tuple[str, str, bool]]) -> None:
        self._declare(subscriptions)

    def _declare(self, subscriptions: Sequence[tuple[str, str, bool]]) -> None:
        """Declare what ``subscriptions`` need, once per process and (group, type)."""
        self._ordered |= {group for _, group, ordered in subscriptions if ordered}
        wanted = {(group, t) for t, group, _ in subscriptions} - self._declared
        if not wanted:
            return

        def declare(channel: Any) -> None:
            channel.exchange_declare(self.exchange, "topic", durable=True)
            for group in sorted({group for group, _ in wanted}):
                self._declare_group(channel, group)
            for group, event_type in sorted(wanted):
                channel.queue_bind(self.queue(group), self.exchange, routing_key=event_type)

        self._pub.call(declare)
        self._declared |= wanted

    def _ordered_groups(self) -> set[str]:
        """The groups this deployment's handlers want in per-key order."""
        return {group for _, group, ordered in self.context.subscriptions() if ordered}

    def _handled_groups(self) -> list[str]:
        """The groups this deployment's handlers consume."""
        return sorted({group for _, group, _ in self.context.subscriptions()})

    def is_ordered(self, group: str) -> bool:
        return group in self._ordered or group in self._ordered_groups()

    def _declare_group(self, channel: Any, group: str) -> None:
        """An ordered group's queue has a single active consumer: the broker hands it to
        one worker at a time, in queue order, and that worker keeps one event per key out."""
        queue, dead = self.queue(group), self.queue(group, dead=True)
        ordered = {"x-single-active-consumer": True} if self.is_ordered(group) else {}
        try:
            channel.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_declare(
                queue,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": self.context.max_attempts(group),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                    **ordered,
                },
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            raise EventsConfigurationError(
                f"RabbitMQ queue {queue!r} exists with other arguments ({exc.reply_text}); "
                "delete it, or set the delivery limit with a policy."
            ) from exc

    def _ensure_groups(self, groups: Sequence[str]) -> None:
        missing = [g for g in groups if (g, "") not in self._declared]
        if missing:

            def declare(channel: Any) -> None:
                for group in missing:
                    self._declare_group(channel, group)

            self._pub.call(declare)
            self._declared |= {(g, "") for g in missing}

    @translating_errors
    def drop_backlog(self, group: str, event_type: str) -> None:
        """Unbind the group's queue from ``event_type`` (its last subscription was pruned).
        What the queue already holds of that type stays (a queue is not searchable): it
        is handled, or dead-lettered as ``NoHandler``. Returns None: nothing counted."""
        self._pub.call(
            lambda channel: channel.queue_unbind(
                self.queue(group), self.exchange, routing_key=event_type
            )
        )
        self._declared.discard((group, event_type))

    # -- relay side -----------------------------------------------------------------------

    @translating_errors
    def publish_to_all(self, events: Sequence[Outgoing]) -> None:
        """The relay's publish: once per event to the exchange, routed by type, to every
        bound queue, another service's too (this process's own subscriptions are bound
        first, so it always delivers to itself). Returns once the broker confirmed every
        message."""
        self._declare(self.context.subscriptions())
        signing = self.context.signing
        # Every event goes, in outbox order: a type only another service binds too.
        self._send([(self.exchange, e.type, *to_message(e, signing)) for e in events])

    @translating_errors
    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """A targeted publish (replay, an admin retry): to the named groups' queues only.
        Returns once the broker confirmed every message."""
        signing = self.context.signing
        by_type: dict[str, list[str]] = {}
        for event_type, group, _ in subscriptions:
            by_type.setdefault(event_type, []).append(group)
        self._ensure_groups(sorted({g for groups in by_type.values() for g in groups}))
        self._send(
            [
                ("", self.queue(group), *to_message(e, signing))
                for e in events
                for group in by_type.get(e.type, ())
            ]
        )

    def _send(self, messages: Sequence[tuple[str, str, bytes, Any]]) -> None:
        with self._pub.lock:
            try:
                self._pub.publish_confirmed(messages)
            except UNAVAILABLE:
                self._pub.reset()
                raise

    # -- worker side ----------------------------------------------------------------------

    def _consume(self, channel: Any, groups: Sequence[str]) -> None:
        """Start consuming ``groups`` on the worker's channel (a new channel starts over)."""
        if self._consuming_generation != self._sub.generation:
            self._consuming = {}
            self._consuming_generation = self._sub.generation
            self._prefetch = 0
        prefetch = self.context.batch_size
        if prefetch != self._prefetch:
            channel.basic_qos(prefetch_count=prefetch)
            self._prefetch = prefetch
        for group in groups:
            if group in self._consuming:
                continue
            on_message = functools.partial(
                self._on_message, group, self.queue(group), self._sub.generation
            )
            self._consuming[group] = channel.basic_consume(self.queue(group), on_message)

    def _on_message(
        self,
        group: str,
        queue: str,
        generation: int,
        _channel: Any,
        method: Any,
        properties: Any,
        body: bytes,
    ) -> None:
        """A delivery: decoded into the buffer, where the next claim takes it."""
        receipt = Receipt(generation, method.delivery_tag, queue, properties, body)
        if generation == self._sub.generation:
            self._sub.unsettled.add(method.delivery_tag)
        self._buffer.append(self._claimed(group, receipt))

    def _pull(self, groups: Sequence[str], wait: float) -> None:
        """Service the worker's connection for up to ``wait`` seconds, consuming ``groups``.
        What was delivered on a connection since lost is dropped: the broker has given it
        back, and it comes again on the new one."""

        def pull(channel: Any) -> None:
            self._ensure_groups(groups)
            self._consume(channel, groups)
            self._sub.connection.process_data_events(time_limit=wait)

        try:
            self._sub.call(pull)
        finally:
            generation = self._sub.generation
            if any(c.receipt.generation != generation for c in self._buffer):
                self._heads.clear()  # the broker took everything back, in order
            self._buffer = [c for c in self._buffer if c.receipt.generation == generation]
            self._due = [(at, c) for at, c in self._due if c.receipt.generation == generation]

    @translating_errors
    def claim(
        self, groups: Sequence[str], limit: int, lease: float, *, max_bytes: int | None = None
    ) -> list[Claimed]:
        """Take up to ``limit`` delivered messages of ``groups`` under a ``lease`` kept here
        (the broker holds an unacked message until its channel closes): one whose lease ran
        out is given back to the broker, which counts a delivery. Dead-letter queues are
        looked at every ``dead_letter_poll`` seconds."""
        if not groups:
            return []
        with self._sub.lock:
            self._expire()
            self._requeue_due()
            wanted = set(groups)
            self._pull(groups, 0)  # also finds out whether the connection still stands
            if time.monotonic() >= self._dead_checked_at + self.dead_letter_poll:
                self._dead_checked_at = time.monotonic()
                dead = self._dead(groups, limit)
                if dead:
                    return self._lease(dead, lease)
            mine = self._takeable([c for c in self._buffer if c.group in wanted], limit, max_bytes)
            if len(mine) == len(self._buffer):  # took all there was: no second pass
                self._buffer = []
            else:
                ids = {id(c) for c in mine}
                self._buffer = [c for c in self._buffer if id(c) not in ids]
            return self._lease(mine, lease)

    def _takeable(
        self, buffered: list[Claimed], limit: int, max_bytes: int | None
    ) -> list[Claimed]:
        """Up to ``limit`` of ``buffered`` (and ``max_bytes``, at least one), in delivery
        order, skipping an ordered event whose key has an earlier event out (claimed, or
        retrying): that key's head is marked here, and only that event takes the key
        again (its redelivery)."""
        taken: list[Claimed] = []
        size = 0
        ordered = self._ordered | self._ordered_groups()  # once a claim, not once an event
        for item in buffered:
            if len(taken) >= limit:
                break
            if max_bytes is not None and taken and size + item.size > max_bytes:
                break
            key = key_of(item) if item.group in ordered else None
            if key is not None:
                head = self._heads.get(key)
                if head is not None and head != item.event_id:
                    continue
                if any(key_of(other) == key for other in taken):
                    continue
                self._heads[key] = item.event_id
            taken.append(item)
            size += item.size
        return taken

    def _free(self, claimed: Sequence[Claimed]) -> None:
        """``claimed`` is done with (acked or dead-lettered): its key takes the next event."""
        if not self._heads:  # no ordered key out: nothing to free
            return
        for item in claimed:
            key = key_of(item)
            if key is not None and self._heads.get(key) == item.event_id:
                del self._heads[key]

    def _requeue_due(self) -> None:
        """Ordered retries whose delay is over go back to the broker, which delivers them
        again (one delivery counted: the next attempt) ahead of the queue; their key stays
        theirs meanwhile."""
        now = time.monotonic()
        due = [c for at, c in self._due if at <= now]
        if not due:
            return
        self._due = [(at, c) for at, c in self._due if at > now]
        current = [c.receipt.tag for c in due if c.receipt.generation == self._sub.generation]
        if current:
            self._sub.call(lambda ch: self._sub.answer(ch, current, requeue=True))

    def _lease(self, claimed: list[Claimed], lease: float) -> list[Claimed]:
        deadline = time.monotonic() + lease
        for item in claimed:
            self._leases[(item.receipt.generation, item.receipt.tag)] = (deadline, item.group)
        return claimed

    def _expire(self) -> None:
        """Give back to the broker what was claimed here and not finished within its lease."""
        now = time.monotonic()
        over = [key for key, (end, _) in self._leases.items() if end <= now]
        if not over:
            return
        for key in over:
            del self._leases[key]
        current = [tag for generation, tag in over if generation == self._sub.generation]
        if current:
            self._sub.call(lambda ch: self._sub.answer(ch, current, requeue=True))

    def _dead(self, groups: Sequence[str], limit: int) -> list[Claimed]:
        """What the broker dead-lettered (delivery limit reached): claimed with its attempts
        spent, so the worker records the ``DeadLetter`` row and then acks it here."""

        def get(channel: Any) -> list[Claimed]:
            found: list[Claimed] = []
            for group in groups:
                queue = self.queue(group, dead=True)
                while len(found) < limit:
                    method, properties, body = channel.basic_get(queue)
                    if method is None:
                        break
                    self._sub.unsettled.add(method.delivery_tag)
                    receipt = Receipt(
                        self._sub.generation, method.delivery_tag, queue, properties, body, True
                    )
                    found.append(self._claimed(group, receipt))
            return found

        return self._sub.call(get)

    @translating_errors
    def wait(self, groups: Sequence[str], timeout: float) -> bool:
        """Service the worker's connection for up to ``timeout`` seconds, in short slices
        (the heartbeat thread takes the lock between them), until a message arrives."""
        deadline = time.monotonic() + timeout
        while True:
            with self._sub.lock:
                now = time.monotonic()
                if any(c.group in groups for c in self._buffer) or any(
                    at <= now for at, _ in self._due
                ):
                    return True
                self._pull(groups, max(0.0, min(0.2, deadline - time.monotonic())))
                if any(c.group in groups for c in self._buffer):
                    return True
            if time.monotonic() >= deadline:
                return False

    def _claimed(self, group: str, receipt: Receipt) -> Claimed:
        """One delivery as a ``Claimed``: an event, or a ``decode_error`` naming what is
        wrong with it; never an exception, which would stop the worker."""
        properties = receipt.properties
        headers = properties.headers if isinstance(properties.headers, dict) else {}
        attempt = 1  # a first delivery of a first attempt carries no count
        if headers:
            attempt += count_header(headers.get(ATTEMPTS))
            attempt += count_header(headers.get("x-delivery-count"))
        if receipt.dead:
            attempt = max(attempt, self.context.max_attempts(group) + 1)
        event: Event | None = None
        try:
            signature = headers.get(SIGNATURE)
            signed = self.context.signing.verify(
                signature if isinstance(signature, (str, bytes)) else None, receipt.body
            )
            event = from_cloudevent(receipt.body, self.context.max_payload_bytes * 2)
            if signed:  # the properties the worker reads beside the envelope are the signed ones
                same("message_id property", properties.message_id, str(event.id))
                same("type property", properties.type, event.type)
        except Exception as exc:  # whatever is wrong with it, it is this message's dead letter
            where = f"RabbitMQ message {properties.message_id!r} on {receipt.queue}"
            claimed = Claimed(
                group=group,
                attempt=attempt,
                receipt=receipt,
                event_id=uuid_or_none(properties.message_id)
                or fallback_id(f"rabbitmq:{receipt.queue}:{properties.message_id}"),
                event_type=str(properties.type or "")[:200],
                event=event,  # decoded, then a signed property did not match it
                decode_error=decode_failure(exc, where),
                first_failed_at=datetime_header(headers.get(FIRST_FAILED)),
                size=len(receipt.body),
            )
            if isinstance(exc, UnverifiedMessage):
                claimed.decode_class, claimed.event = "UnverifiedMessage", None
            return claimed
        return Claimed(  # a decoded event's id and type are its own: the properties not read
            group,
            attempt,
            receipt,
            event.id,
            event.type,
            event,
            first_failed_at=datetime_header(headers.get(FIRST_FAILED)) if headers else None,
            size=len(receipt.body),
        )

    # -- outcomes -------------------------------------------------------------------------

    def _holds(self, claimed: Claimed) -> bool:
        """Whether this claim still holds: its lease runs and its channel is the current one."""
        key = (claimed.receipt.generation, claimed.receipt.tag)
        lease = self._leases.get(key)
        return (
            claimed.receipt.generation == self._sub.generation
            and lease is not None
            and lease[0] > time.monotonic()
        )

    def _end_lease(self, claimed: Claimed) -> bool:
        """Forget ``claimed``'s lease, and say whether the broker still holds the delivery
        for us: its channel is the current one and ``_expire`` has not given it back. A
        lease that ran out but was not given back yet has not been lost (nobody else can
        have the message), so it is settled: leaving it unsettled would hold a prefetch
        slot until the connection closes."""
        receipt = claimed.receipt
        lease = self._leases.pop((receipt.generation, receipt.tag), None)
        return lease is not None and receipt.generation == self._sub.generation

    def _settle(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        """Ack what is still ours; return those acked. A connection lost meanwhile gave the
        messages back to the broker: they come again, and the inbox skips them."""
        with self._sub.lock:
            held = [c for c in claimed if self._end_lease(c)]
            self._free(held)
            if not held:
                return []
            try:
                self._sub.call(lambda ch: self._sub.answer(ch, [c.receipt.tag for c in held]))
            except UNAVAILABLE:
                return []
            return held

    def ack(self, claimed: Claimed) -> bool:
        return bool(self._settle([claimed]))

    def ack_many(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        return self._settle(claimed)

    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        """Extend the leases kept here and service the connection (its heartbeats)."""
        with self._sub.lock:
            deadline = time.monotonic() + lease
            for item in claimed:
                if self._holds(item):
                    self._leases[(item.receipt.generation, item.receipt.tag)] = (
                        deadline,
                        item.group,
                    )
            if self._sub.connection is not None and self._sub.connection.is_open:
                with contextlib.suppress(*UNAVAILABLE):
                    self._sub.connection.process_data_events(time_limit=0)

    def release(self, claimed: Sequence[Claimed]) -> None:
        """Put the events back in front of this worker's local buffer, attempt unchanged:
        the broker still holds them for this channel, so no delivery is counted."""
        with self._sub.lock:
            back = [c for c in claimed if self._holds(c)]
            for item in back:
                self._leases.pop((item.receipt.generation, item.receipt.tag), None)
            self._buffer[:0] = back

    @translating_errors
    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        """Publish the message again, its attempts and first failure in headers, to the
        TTL queue of the smallest delay step at least ``delay`` (or straight back to its
        group's queue), then ack the original once the broker confirmed the copy."""
        with self._sub.lock:
            if not self._holds(claimed):
                return
            if self.is_ordered(claimed.group) and key_of(claimed) is not None:
                # Kept in place: a copy would go behind the key's later events.
                self._leases.pop((claimed.receipt.generation, claimed.receipt.tag), None)
                self._due.append((time.monotonic() + max(0.0, delay), claimed))
                return
            receipt = claimed.receipt
            headers = dict(receipt.properties.headers or {})
            headers.pop("x-delivery-count", None)
            headers.pop("x-death", None)
            headers[ATTEMPTS] = claimed.attempt
            headers.setdefault(FIRST_FAILED, now_iso())
            properties = copy_properties(receipt.properties, headers)
            ms = delay_step(delay)
            target = self.queue(claimed.group)
            if ms:
                self._ensure_delay(ms)
                copy = (self.delay_queue(ms), target, receipt.body, properties)
            else:
                copy = ("", target, receipt.body, properties)
            with self._pub.lock:
                try:
                    self._pub.publish_confirmed([copy])
                except UNAVAILABLE:
                    self._pub.reset()
                    raise
            self._settle([claimed])

    def _ensure_delay(self, ms: int) -> None:
        if ms in self._delays:
            return
        name = self.delay_queue(ms)

        def declare(channel: Any) -> None:
            channel.exchange_declare(name, "fanout", durable=True)
            channel.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": ms,
                    "x-dead-letter-exchange": "",  # the routing key is the group's queue
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            channel.queue_bind(name, name)

        self._pub.call(declare)
        self._delays.add(ms)

    def dead_letter(self, claimed: Claimed) -> bool:
        """Ack the message once the ``DeadLetter`` row has committed (never before: a crash
        in between leaves it to be dead-lettered again rather than lost). False if the
        claim was lost."""
        if not self._holds(claimed):
            return False
        transaction.on_commit(lambda: self._settle([claimed]), using=self.database)
        return True

    # -- status ---------------------------------------------------------------------------

    @translating_errors
    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        """Ready messages from a passive declare of each queue, plus what this process holds:
        delivered to it and not yet claimed (pending) or claimed (in flight). What other
        workers hold unacked is not counted: AMQP does not report it (the management API
        does). ``parked`` is the dead-letter queue's depth, not yet mirrored."""
        found: dict[str, GroupStatus] = {}
        with self._sub.lock:
            buffered = [c.group for c in self._buffer]
            now = time.monotonic()
            leased = [group for end, group in self._leases.values() if end > now]
        for group in groups:
            ready = self._depth(self.queue(group))
            dead = self._depth(self.queue(group, dead=True))
            found[group] = GroupStatus(
                pending=(ready or 0) + buffered.count(group),
                in_flight=leased.count(group),
                parked=dead or 0,
            )
        return found

    def _depth(self, queue: str) -> int | None:
        """Ready messages in ``queue``; None if it does not exist. A passive declare of a
        missing queue closes the channel, so it runs on a channel of its own."""

        def depth(_channel: Any) -> int | None:
            channel = self._pub.connection.channel()
            try:
                return int(channel.queue_declare(queue, passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:
                return None
            finally:
                if channel.is_open:
                    channel.close()

        return self._pub.call(depth)

    @translating_errors
    def flush(self) -> int:
        """Purge the queues of this process's groups; for demos and tests, never in
        production. Returns how many messages went."""
        groups = self._handled_groups()
        self._ensure_groups(groups)

        def purge(channel: Any) -> int:
            names = [self.queue(g) for g in groups] + [self.queue(g, dead=True) for g in groups]
            return sum(int(channel.queue_purge(name).method.message_count) for name in names)

        with self._sub.lock:
            self._buffer, self._leases = [], {}
            self._sub.reset()
        return self._pub.call(purge)

    def close(self) -> None:
        """Close both connections: what this worker held unacked goes back to the broker
        (one delivery counted for each); the transport may be used again afterwards."""
        with self._sub.lock:
            self._buffer = []
            self._leases = {}
            self._sub.reset()
        with self._pub.lock:
            self._pub.reset()


# -- helpers --------------------------------------------------------------------------------


def _number(
    options: dict[str, Any], name: str, default: Any, where: str, *, integer: bool = False
) -> Any:
    value = options.get(name, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        wanted = "a positive integer" if integer else "a positive number of seconds"
        raise EventsConfigurationError(f"{where}[{name!r}] must be {wanted}, got {value!r}.")
    return value


def _types_by_group(subscriptions: Sequence[tuple[str, str, bool]]) -> dict[str, list[str]]:
    found: dict[str, set[str]] = {}
    for event_type, group, _ in subscriptions:
        found.setdefault(group, set()).add(event_type)
    return {group: sorted(types) for group, types in sorted(found.items())}
