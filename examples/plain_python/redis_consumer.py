"""Consume one django-events group from Redis Streams, without Django (wire format 1).

    python redis_consumer.py --url redis://127.0.0.1:6379/0 --prefix myshop --group emails \
        --service billing --subscribe order.placed

What it does, as docs/wire-format.md ("Redis Streams: what a consumer does") says:

* with ``--subscribe TYPE`` (repeatable), first declares the group's subscriptions in
  ``<prefix>:subscriptions`` under ``--service`` (wire format 1.1): from then on every
  relay sharing the prefix appends those events to the group's stream;

* reads the group's stream ``<prefix>:stream:<group>`` through the consumer group
  ``django-events`` with ``XREADGROUP``, under a consumer name of its own;
* decodes the ``event`` field (a CloudEvents JSON envelope) and handles it: here, prints
  one JSON line;
* acknowledges in one MULTI/EXEC: ``XACK`` the entry and ``ZREM`` its event id from
  ``<prefix>:owed:<group>`` (without the ZREM, django-events' relay takes the event for
  lost and publishes it again);
* on a failure leaves the entry pending: ``XAUTOCLAIM`` takes it back after
  ``--retry-after`` seconds (also what a crashed consumer left), and the attempt is the
  entry's ``attempts`` field plus its delivery count;
* with ``--signing-key``, verifies the entry's ``signature`` field first;
* after ``--max-attempts`` failed attempts, or at once for an envelope it cannot decode
  (or, with ``--signing-key``, an unsigned or forged one),
  records a dead letter (a JSON line here; a table or a file in real life) and
  acknowledges, so one bad event never holds the group up.

Needs only redis-py (``pip install redis``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any

import redis
from wire import Undecodable, common_arguments, decode, emit, signing_keys, summary

CONSUMER_GROUP = "django-events"
"""The Redis consumer group in every group's stream (wire format 1)."""


def stream_key(prefix: str, group: str) -> str:
    return f"{prefix}:stream:{group}"


def owed_key(prefix: str, group: str) -> str:
    return f"{prefix}:owed:{group}"


class Consumer:
    def __init__(self, client: redis.Redis, args: argparse.Namespace) -> None:
        self.client = client
        self.stream = stream_key(args.prefix, args.group)
        self.owed = owed_key(args.prefix, args.group)
        self.name = args.consumer or f"plain:{socket.gethostname()}:{os.getpid()}"
        self.max_attempts = args.max_attempts
        self.retry_after_ms = max(1, int(args.retry_after * 1000))
        self.block_ms = max(1, int(args.block * 1000))
        self.batch = args.batch
        self.fail_types = set(args.fail_type or ())
        self.cursor = "0-0"
        self.keys = signing_keys(args.signing_key)

    def ensure_group(self) -> None:
        """Create the stream and consumer group if no relay has yet (harmless if it has)."""
        try:
            self.client.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self) -> int:
        """Handle what is due: entries left pending long enough, then new ones."""
        cursor, entries, *_ = self.client.xautoclaim(
            self.stream,
            CONSUMER_GROUP,
            self.name,
            min_idle_time=self.retry_after_ms,
            start_id=self.cursor,
            count=self.batch,
        )
        self.cursor = _text(cursor)
        taken = [(entry_id, fields, None) for entry_id, fields in entries if fields]
        block = None if taken else self.block_ms
        reply = self.client.xreadgroup(
            CONSUMER_GROUP, self.name, {self.stream: ">"}, count=self.batch, block=block
        )
        for _stream, fresh in reply or ():
            taken += [(entry_id, fields, 1) for entry_id, fields in fresh]
        for entry_id, fields, deliveries in taken:
            self.process(_text(entry_id), fields, deliveries)
        return len(taken)

    def pending(self) -> int:
        """Entries of this stream still unacknowledged (ours waiting for a retry, or any)."""
        return int(self.client.xpending(self.stream, CONSUMER_GROUP)["pending"])

    def deliveries(self, entry_id: str) -> int:
        found = self.client.xpending_range(
            self.stream, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(found[0]["times_delivered"]) if found else 1

    def process(self, entry_id: str, raw: dict[bytes, bytes], deliveries: int | None) -> None:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        event_id = fields.get("id", "")
        attempt = int(fields.get("attempts", "0") or 0) + (deliveries or self.deliveries(entry_id))
        try:
            envelope = decode(
                raw.get(b"event", b""),
                keys=self.keys,
                signature=fields.get("signature"),
                copies={"id": event_id, "type": fields.get("type")},
            )
        except Undecodable as exc:
            emit("dead-lettered", id=event_id, type=fields.get("type"), reason=str(exc))
            self.ack(entry_id, event_id)
            return
        try:
            self.handle(envelope, attempt)
        except Exception as exc:  # a handler's failure: retry later, or give up
            if attempt >= self.max_attempts:
                emit("dead-lettered", id=event_id, attempt=attempt, reason=repr(exc))
                self.ack(entry_id, event_id)
            else:
                emit("retry", id=event_id, attempt=attempt, reason=repr(exc))
            return
        self.ack(entry_id, event_id)

    def handle(self, envelope: dict[str, Any], attempt: int) -> None:
        """Your code goes here. This one prints the event, or fails for ``--fail-type``."""
        if envelope["type"] in self.fail_types:
            raise RuntimeError(f"asked to fail for {envelope['type']}")
        emit("handled", **summary(envelope, attempt))

    def ack(self, entry_id: str, event_id: str) -> None:
        """Done for this group: XACK and drop the event from what the group owes, at once."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, CONSUMER_GROUP, entry_id)
        pipe.zrem(self.owed, event_id)
        pipe.execute()


def subscribe(client: redis.Redis, args: argparse.Namespace) -> None:
    """Declare ``args.group`` on each ``--subscribe`` type, as django-events' ``declare``
    does at Level 1: one hash field per (service, group, type), times from Redis."""
    if not args.subscribe:
        return
    seconds, micros = client.time()
    now = datetime.fromtimestamp(seconds + micros / 1e6, timezone.utc).isoformat()
    client.hset(
        subscriptions_key(args.prefix),
        mapping={
            json.dumps([args.service, args.group, event_type], separators=(",", ":")): json.dumps(
                {"ordered": False, "declared_at": now, "last_seen_at": now, "retired_at": None}
            )
            for event_type in args.subscribe
        },
    )


def subscriptions_key(prefix: str) -> str:
    return f"{prefix}:subscriptions"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="django_events", help="the transport's prefix")
    parser.add_argument("--consumer", help="this process's consumer name (default: host:pid)")
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--retry-after", type=float, default=30.0, help="seconds")
    parser.add_argument("--block", type=float, default=1.0, help="seconds an idle read waits")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--service", default="plain", help="the service that subscribes")
    parser.add_argument("--subscribe", action="append", help="declare the group on this type")
    common_arguments(parser, idle="nothing is new and nothing is pending")
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(args.url)
    subscribe(client, args)
    consumer = Consumer(client, args)
    consumer.ensure_group()
    while True:
        handled = consumer.step()
        if args.until_idle and not handled and not consumer.pending():
            return 0
        if not handled and consumer.pending():
            time.sleep(min(args.block, args.retry_after))  # waiting for a retry to be due


if __name__ == "__main__":
    raise SystemExit(main())
