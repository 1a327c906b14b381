"""The worker's and the relay's connections to RabbitMQ: one pika connection each, used
under a lock, with publisher confirms counted rather than waited for one by one."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

from ...exceptions import TransportUnavailable
from ..base import translating

if TYPE_CHECKING:
    from .transport import RabbitMQTransport

HANDSHAKE_TIMEOUT = 15.0
"""Seconds a connection may take, TCP and the AMQP handshake together (pika's default)."""
CONFIRM_TIMEOUT = 30.0
"""Seconds a publish waits for the broker's confirms before it counts as unavailable."""
CONFIRM_POLL = 0.05
"""Longest wait for confirms (or for confirm mode to be on) in one poll of the connection;
the last confirm awaited ends it at once (``Link._on_confirm``), so this bounds only how
often a silent broker is checked against ``CONFIRM_TIMEOUT``."""
# StreamLostError (a dropped socket) is an AMQPConnectionError, so it is in here too.
UNAVAILABLE = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed, OSError)

R = TypeVar("R")


def _unavailable(exc: Exception) -> str | None:
    """The broker out of reach (or a connection it closed) is ``TransportUnavailable``; one
    that took the TCP connection and never answered is named as such, since its port looks
    open to every other check."""
    # pika's blocking connection raises an AMQPConnectionError holding the timeout.
    if any(isinstance(part, AMQPConnectorStackTimeout) for part in (exc, *exc.args)):
        return (
            f"RabbitMQ is unavailable: it took the TCP connection and did not complete the "
            f"AMQP handshake within {HANDSHAKE_TIMEOUT:g} s ({exc}). A node that has spent its "
            "file handles (about three per quorum queue) does this, as does a stopped one: "
            'docs/transport-rabbitmq.md, "Sizing the broker: file handles".'
        )
    if isinstance(exc, UNAVAILABLE):
        return f"RabbitMQ is unavailable: {type(exc).__name__}: {exc}"
    return None


translating_errors = translating(_unavailable)


class Receipt(NamedTuple):
    """Where a delivered message lives: its channel's generation and delivery tag (a
    named tuple: one is built per delivery, and a tuple is the cheapest to build)."""

    generation: int
    tag: int
    queue: str
    properties: Any
    body: bytes
    dead: bool = False


class Link:
    """One pika connection used under a lock: pika is not thread-safe, and every thread of
    a worker (the loop, the heartbeat, the relay) may call the transport. Each use services
    the connection (its AMQP heartbeats); the worker's heartbeat thread renews leases at
    least every third of ``LEASE``, so heartbeats flow while a handler runs."""

    def __init__(self, transport: RabbitMQTransport) -> None:
        self.transport = transport
        self.lock = threading.RLock()
        self.connection: Any = None
        self.channel: Any = None
        self.generation = 0
        self._confirmed = 0
        self._published = 0
        self._nacked: list[int] = []
        self._pending_single: set[int] = set()
        self.unsettled: set[int] = set()  # delivery tags of this channel not acked or nacked

    def open(self) -> Any:
        if self.connection is None or not self.connection.is_open:
            self.reset()
            params = pika.URLParameters(self.transport.url)
            params.heartbeat = self.transport.heartbeat
            params.blocked_connection_timeout = CONFIRM_TIMEOUT
            params.connection_attempts = 1
            params.socket_timeout = 5
            params.stack_timeout = HANDSHAKE_TIMEOUT
            self.connection = pika.BlockingConnection(params)
            self.generation += 1
        if self.channel is None or not self.channel.is_open:
            self.channel = self.connection.channel()
            self.generation += 1
            self.unsettled = set()
            self._confirmed = self._published = 0
            self._nacked = []
            self._select_confirms()
        return self.channel

    def _select_confirms(self) -> None:
        """Publisher confirms, counted here rather than one round trip per message: pika's
        blocking channel waits for each confirm in turn, so its asynchronous channel is used
        for this one call (its ``_impl``, part of pika since 1.0). Its reply ends the wait
        at once: sitting out the poll's slice cost every new channel 50 ms, most of a
        worker's connect."""
        done = threading.Event()

        def selected(_frame: Any) -> None:
            done.set()
            self.connection.add_callback_threadsafe(_nothing)  # end the wait now, as below

        self.channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected)
        while not done.is_set():
            self.connection.process_data_events(time_limit=CONFIRM_POLL)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked.append(method.delivery_tag)
        if method.multiple:
            self._confirmed = max(self._confirmed, method.delivery_tag)
        elif method.delivery_tag == self._confirmed + 1:
            self._confirmed = method.delivery_tag
        else:  # out of order single confirms: count them when the gap closes
            self._pending_single.add(method.delivery_tag)
        while self._confirmed + 1 in self._pending_single:
            self._pending_single.discard(self._confirmed + 1)
            self._confirmed += 1
        if self._confirmed >= self._published:
            # Confirms reach this callback without queueing anything that ends
            # process_data_events' wait early, so publish_confirmed would sit out its whole
            # slice after the last one arrived (50 ms a batch); a queued no-op ends it now.
            self.connection.add_callback_threadsafe(_nothing)

    def publish_confirmed(self, messages: Sequence[tuple[str, str, bytes, Any]]) -> None:
        """Publish ``(exchange, routing key, body, properties)`` and wait until the broker
        has confirmed them all; ``TransportUnavailable`` if it refuses any or stays silent."""
        if not messages:
            return
        channel = self.open()
        for exchange, routing_key, body, properties in messages:
            channel._impl.basic_publish(exchange, routing_key, body, properties)
            self._published += 1
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while self._confirmed < self._published:
            if time.monotonic() > deadline:
                self.reset()
                raise TransportUnavailable(
                    f"RabbitMQ confirmed {self._confirmed} of {self._published} messages "
                    f"within {CONFIRM_TIMEOUT:.0f}s"
                )
            self.connection.process_data_events(time_limit=CONFIRM_POLL)
        if self._nacked:
            nacked, self._nacked = self._nacked, []
            raise TransportUnavailable(f"RabbitMQ refused {len(nacked)} messages (nack)")

    def call(self, work: Callable[[Any], R]) -> R:
        """Run ``work(channel)`` under the lock; a broken connection is dropped, so the
        next call opens a new one."""
        with self.lock:
            try:
                return work(self.open())
            except UNAVAILABLE:
                self.reset()
                raise

    def answer(self, channel: Any, tags: Sequence[int], *, requeue: bool | None = None) -> None:
        """Ack ``tags`` (or, with ``requeue``, nack them), polling once: pika's blocking
        channel flushes and polls after each, which made acks three quarters of a
        worker's time. When no other delivery below the highest tag is unsettled, one
        ``multiple`` ack covers them all: each frame is a socket write of its own."""
        self.unsettled.difference_update(tags)
        top = max(tags, default=0)
        if requeue is None and tags and not any(tag < top for tag in self.unsettled):
            channel._impl.basic_ack(delivery_tag=top, multiple=True)
        else:
            for tag in tags:
                if requeue is None:
                    channel._impl.basic_ack(delivery_tag=tag)
                else:
                    channel._impl.basic_nack(delivery_tag=tag, requeue=requeue)
        self.connection.process_data_events(time_limit=0)

    def reset(self) -> None:
        """Forget the connection (closing it if still open): what it held unacked goes back
        to the broker, and claims made through it are lost."""
        connection, self.connection, self.channel = self.connection, None, None
        self.generation += 1
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()


def _nothing() -> None:
    """Queued to end a wait of ``process_data_events`` (see ``Link._on_confirm``)."""
