"""Level 2: SNS + SQS. One topic fans events out; each consumer group reads its own queue.

The relay publishes each event once with ``PublishBatch``, its type in a message attribute
and no ``groups`` attribute; each group's subscription, made by the ``setup_events`` of the
service that consumes it, has a filter policy that takes the types declared in the group,
or a message whose ``groups`` attribute names it, with raw message delivery, so the queue
holds the event's CloudEvents JSON as is. A publish for some groups only (an admin retry,
a replay) names them in ``groups`` and reaches those groups' queues only (wire format 2,
docs/wire-format.md). The subscriptions are the store the services share
(``sqs.subscriptions``): the publisher's code knows nothing of its consumers.

A claim is a receive under a visibility timeout (the worker's lease), and the attempt is
SQS's ``ApproximateReceiveCount``. Acks are deletes, sent in batches after the handler's
transaction commits. Each queue redrives to its own dead-letter queue after the group's
maximum attempts; workers mirror what lands there into ``DeadLetter`` rows. In FIFO mode the
event key is the ``MessageGroupId``, which gives per-key order across consumers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from django.core.checks import CheckMessage, Error
from django.db import connections, transaction

from ...envelope import from_cloudevent
from ...exceptions import EventsConfigurationError, PublishRefused, TransportUnavailable
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
    logged_events,
    translating,
    within_budget,
)

if TYPE_CHECKING:
    from .subscriptions import SqsStore

logger = logging.getLogger("django_events.transports.sqs")

MESSAGE_LIMIT = 256 * 1024
"""Bytes per SNS message and per batch call, attributes included (the SNS limit; SQS's is
larger but the topic's governs)."""
BATCH_LIMIT = 10
"""Entries per PublishBatch, SendMessageBatch, DeleteMessageBatch and receive."""
MAX_VISIBILITY = 12 * 60 * 60
"""SQS caps a visibility timeout (a lease or a retry delay) at twelve hours."""
RETENTION = 14 * 24 * 60 * 60
"""Messages are kept the longest SQS allows, so a group whose workers are down for days
loses nothing (the SQS default would drop them after four)."""
PASS_OVER_DELAY = 1
"""Seconds before a message a worker passed over (a type it does not handle) is visible
again, so old workers alone re-read it about once a second (standard queues only: FIFO
queues take no per-message delay)."""
POLICY_TTL = 30.0
"""Seconds a worker reuses a group's subscription filter policy it read to decide whether
a type it does not handle is still subscribed (``pass_over``)."""
MAX_FILTER_VALUES = 49
"""The event types one group handles: each is a tag of the group's queue (the subscription
store, ``sqs.subscriptions``), and a queue holds 50 tags, one of them the group's name."""

_ID_FIELD = re.compile(r'"id":\s*"([0-9a-fA-F-]{32,36})"')
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,40}$")
_GROUP_ID = re.compile(r"[!-~]{1,128}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_OPTIONS = {
    "database",
    "region",
    "endpoint_url",
    "prefix",
    "fifo",
    "visibility_timeout",
    "wait_time",
    "receive_batch",
    "publish_batch",
    "dead_letter_poll",
}
_UNREACHABLE = (BotoConnectionError, HTTPClientError)
_SEND_ERRORS = (*_UNREACHABLE, ClientError)
_BUSY = {"Throttling", "ThrottlingException", "RequestThrottled", "ServiceUnavailable"}
"""Error codes (besides any 5xx) that mean AWS is there but not answering now."""
_SYSTEM_ATTRIBUTES = [
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
]


def _unavailable(exc: Exception) -> str | None:
    """AWS out of reach (after botocore's own retries) is ``TransportUnavailable``, which
    the engine retries with a growing delay; any other error keeps its own class."""
    if isinstance(exc, _UNREACHABLE):
        return f"SNS/SQS is unreachable: {exc}"
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500 or _code(exc) in _BUSY:
            return f"SNS/SQS is unavailable: {exc}"
    return None


_translating = translating(_unavailable)


@dataclass(frozen=True)
class Receipt:
    """Where a received message lives, and the handle to delete or delay it."""

    queue_url: str
    handle: str
    message_group: str | None = None
    dead: bool = False
    ordered: bool = False
    message: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The message as received (body and attributes, `groups` included), to send a copy of
    it (``pass_over``)."""


class SnsSqsTransport(Transport):
    supports_delayed_retry = True
    persistent = True
    acks_in_transaction = False
    waits_for_work = True
    max_message_bytes = MESSAGE_LIMIT
    filters_types = True  # a message of a type the worker does not handle is sent again
    shares_subscriptions = True  # the topic's subscriptions (sqs/subscriptions.py)
    routes_itself = True  # SNS filter policies fan out: the relay publishes each event once

    accepted_options = frozenset(_OPTIONS)

    def __init__(
        self, alias: str, options: dict[str, Any], context: TransportContext | None = None
    ) -> None:
        where = f"DJANGO_EVENTS['TRANSPORTS'][{alias!r}]['OPTIONS']"
        super().__init__(alias, options, context)
        self.region: str | None = _text(options, "region", where)
        self.endpoint_url: str | None = _text(options, "endpoint_url", where)
        self.prefix = options.get("prefix", "django-events-")
        if not isinstance(self.prefix, str) or not _PREFIX.match(self.prefix):
            raise EventsConfigurationError(
                f"{where}['prefix'] must be at most 40 letters, digits, '-' or '_', "
                f"got {self.prefix!r}."
            )
        fifo = options.get("fifo", False)
        if not isinstance(fifo, bool):
            raise EventsConfigurationError(f"{where}['fifo'] must be True or False.")
        self.fifo = fifo
        self.supports_ordering = fifo
        self.idempotent_publish = fifo  # deduplication by event id; standard SNS has none
        self.visibility_timeout = _int(
            options, "visibility_timeout", None, 1, MAX_VISIBILITY, where
        )
        self.wait_time = _int(options, "wait_time", 1, 0, 20, where)
        self.receive_batch = _int(options, "receive_batch", BATCH_LIMIT, 1, BATCH_LIMIT, where)
        self.publish_batch = _int(options, "publish_batch", BATCH_LIMIT, 1, BATCH_LIMIT, where)
        poll = options.get("dead_letter_poll", 10.0)
        if isinstance(poll, bool) or not isinstance(poll, (int, float)) or not poll > 0:
            raise EventsConfigurationError(f"{where}['dead_letter_poll'] must be seconds > 0.")
        self.dead_letter_poll = float(poll)
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._queue_urls: dict[str, str] = {}
        self._topic_arn: str | None = None
        self._account: str | None = None
        self._acks: list[Receipt] = []
        self._leases: dict[str, float] = {}  # receipt handle: when its lease ends (monotonic)
        self._ready: list[Claimed] = []  # received by a long poll in ``wait``, not claimed
        self._held: list[Claimed] = []  # FIFO: later events of a key, served after the first
        self._busy: dict[tuple[str, str | None], str] = {}  # FIFO: key -> handle out
        self._turn = 0
        self._lease = self.context.lease  # the visibility timeout of a ``wait``'s receive
        self._dead_checked_at = 0.0
        self._policies: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._ordered_slots: set[tuple[str, str]] = set()  # (group, type) set up ordered here

    # -- names --------------------------------------------------------------------------

    @property
    def topic_name(self) -> str:
        return f"{self.prefix}topic{'.fifo' if self.fifo else ''}"

    def queue_name(self, group: str, *, dead: bool = False) -> str:
        """The group's queue (or dead-letter queue). Characters SQS refuses ('.', ':') become
        '-', and a hash of the group name then keeps two groups from sharing a queue."""
        safe = _UNSAFE.sub("-", group)
        if safe != group:
            safe += "-" + _digest(group)[:6]
        name = f"{self.prefix}{safe}{'-dlq' if dead else ''}{'.fifo' if self.fifo else ''}"
        if len(name) > 80:
            raise EventsConfigurationError(
                f"SQS queue name {name!r} for group {group!r} is over 80 characters; "
                "use a shorter prefix or group name."
            )
        return name

    # -- clients ------------------------------------------------------------------------

    def _client(self, service: str) -> Any:
        """A boto3 client, made on first use; credentials come from boto3's own chain."""
        client = self._clients.get(service)
        if client is None:
            with self._lock:
                client = self._clients.get(service)
                if client is None:
                    if self._session is None:
                        self._session = boto3.session.Session()
                    client = self._session.client(
                        service,
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        config=Config(
                            connect_timeout=5,
                            read_timeout=self.wait_time + 25,
                            retries={"mode": "standard", "max_attempts": 5},
                            max_pool_connections=20,
                        ),
                    )
                    self._clients[service] = client
        return client

    def _queue_url(self, group: str, *, dead: bool = False) -> str:
        name = self.queue_name(group, dead=dead)
        url = self._queue_urls.get(name)
        if url is None:
            url = self._client("sqs").get_queue_url(QueueName=name)["QueueUrl"]
            self._queue_urls[name] = url
        return url

    def _arn(self, service: str, name: str, account: str | None = None) -> str:
        sqs = self._client("sqs")
        region = sqs.meta.region_name
        partition = sqs.meta.partition
        return f"arn:{partition}:{service}:{region}:{account or self.account()}:{name}"

    def account(self) -> str:
        """The AWS account id of the configured credentials (one STS call, then cached)."""
        if self._account is None:
            self._account = str(self._client("sts").get_caller_identity()["Account"])
        return self._account

    @property
    def topic_arn(self) -> str:
        if self._topic_arn is None:
            self._topic_arn = self._arn("sns", self.topic_name)
        return self._topic_arn

    def subscription_store(self) -> SqsStore:
        from .subscriptions import SqsStore

        return SqsStore(self)

    # -- checks -------------------------------------------------------------------------

    def check(self) -> list[CheckMessage]:
        errors: list[CheckMessage] = []
        if self.database not in connections.settings:
            errors.append(
                Error(
                    f"SnsSqsTransport {self.alias!r} keeps dead letters in database "
                    f"{self.database!r}, which is not in DATABASES.",
                    id="django_events.E040",
                )
            )
        if not (self.region or boto3.session.Session().region_name):
            errors.append(
                Error(
                    f"SnsSqsTransport {self.alias!r} has no AWS region.",
                    hint="Set OPTIONS['region'] or the AWS_DEFAULT_REGION environment variable.",
                    id="django_events.E041",
                )
            )
        for group, types in _types_by_group(self.context.subscriptions()).items():
            try:
                self.queue_name(group, dead=True)
            except EventsConfigurationError as exc:
                errors.append(Error(str(exc), id="django_events.E042"))
            if len(types) > MAX_FILTER_VALUES:
                errors.append(
                    Error(
                        f"Group {group!r} handles {len(types)} event types; its SQS queue's "
                        f"tags hold at most {MAX_FILTER_VALUES} (the subscription store).",
                        hint="Split the group.",
                        id="django_events.E042",
                    )
                )
        return errors

    # -- relay side ---------------------------------------------------------------------

    @_translating
    def publish_to_all(self, events: Sequence[Outgoing]) -> None:
        """The relay: send each event once, with no ``groups`` attribute; every group whose
        subscription takes its type receives it, whichever service subscribed."""
        self._publish([(event, []) for event in events])

    @_translating
    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """Send each event through the topic to the groups ``subscriptions`` lists for its
        type, and only them: the ``groups`` attribute names them and each subscription's
        filter policy takes a message naming its group (so a replay for one group reaches
        one queue)."""
        wanted: dict[str, set[str]] = {}
        for event_type, group, _ in subscriptions:
            wanted.setdefault(event_type, set()).add(group)
        self._publish([(e, sorted(wanted[e.type])) for e in events if wanted.get(e.type)])

    @_translating
    def redeliver(self, event_id: uuid.UUID, group: str) -> None:
        """Send the logged event to ``group`` only; it starts at attempt 1. In FIFO mode it
        gets a fresh deduplication id, so it is never taken for the original."""
        found = logged_events([event_id], self.database)
        if not found:
            raise LookupError(f"Event {event_id} is not in the event log.")
        self._publish([(found[0], [group])], fresh=True)

    def _publish(
        self, events: Sequence[tuple[Outgoing, list[str]]], *, fresh: bool = False
    ) -> None:
        """Send in batches. An event SNS refuses for what it holds (too large, or SNS
        says the sender is at fault) does not stop the others: they are all sent, then
        ``PublishRefused`` names the refused ones, so the relay sets them aside instead of
        sending the batch again. Any other refusal is SNS's, and the relay retries."""
        sns = self._client("sns")
        refused: dict[int, str] = {}
        entries = []
        for event, groups in events:
            entry, size = self._entry(event, groups, fresh)
            if size > MESSAGE_LIMIT:
                refused[event.position] = (
                    f"{size} bytes as an SNS/SQS message, over the {MESSAGE_LIMIT}-byte "
                    "(256 KiB) limit"
                )
            else:
                entries.append((entry, size, event.position))
        busy: list[str] = []
        for chunk in self._chunks(entries):
            response = sns.publish_batch(
                TopicArn=self.topic_arn, PublishBatchRequestEntries=[entry for entry, _ in chunk]
            )
            position_of = {entry["Id"]: position for entry, position in chunk}
            for failed in response.get("Failed", []):
                why = f"{failed.get('Code')}: {failed.get('Message')}"
                if failed.get("SenderFault") and failed.get("Id") in position_of:
                    refused[position_of[failed["Id"]]] = f"SNS refused it ({why})"
                else:
                    busy.append(why)
        if busy:
            raise TransportUnavailable(
                f"SNS could not take {len(busy)} events now: {'; '.join(busy[:3])}"
            )
        if refused:
            raise PublishRefused(refused)

    def _chunks(
        self, entries: list[tuple[dict[str, Any], int, int]]
    ) -> Iterator[list[tuple[dict[str, Any], int]]]:
        """Batches of at most ``publish_batch`` entries and ``MESSAGE_LIMIT`` bytes, each
        entry with its outbox position."""
        chunk: list[tuple[dict[str, Any], int]] = []
        size = 0
        for entry, entry_size, position in entries:
            if chunk and (len(chunk) >= self.publish_batch or size + entry_size > MESSAGE_LIMIT):
                yield chunk
                chunk, size = [], 0
            chunk.append((entry, position))
            size += entry_size
        if chunk:
            yield chunk

    @property
    def _signing(self) -> Signing:
        return self.context.signing

    def _entry(self, event: Outgoing, names: list[str], fresh: bool) -> tuple[dict[str, Any], int]:
        """One PublishBatch entry: ``groups`` only when ``names`` targets some groups (a
        fresh publish has none: each subscription's filter policy takes it by type)."""
        event_id = _uuid_text(event.event_id)
        body = cloudevent_json(event, event_id, ascii_only=True)
        attributes = {"type": {"DataType": "String", "StringValue": event.type}}
        if names:
            attributes["groups"] = {"DataType": "String.Array", "StringValue": json.dumps(names)}
        if self._signing.enabled:
            attributes[SIGNATURE] = {"DataType": "String", "StringValue": self._signing.sign(body)}
        if event.key is not None:
            attributes["key"] = {"DataType": "String", "StringValue": event.key}
        entry: dict[str, Any] = {
            "Id": event_id.replace("-", ""),
            "Message": body,
            "MessageAttributes": attributes,
        }
        if self.fifo:
            # The same event to the same groups (or to all) is one message (a relay that
            # sends a batch twice); a redelivery, or a replay to other groups, is another.
            suffix = uuid.uuid4().hex if fresh else _digest(",".join(names))
            entry["MessageGroupId"] = message_group_id(event.key or event_id)
            entry["MessageDeduplicationId"] = f"{event_id}.{suffix}"
        size = len(body.encode()) + sum(
            len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
            for name, value in attributes.items()
        )
        return entry, size

    # -- worker side --------------------------------------------------------------------

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
        """Receive up to ``limit`` events from the groups' queues, without waiting: an idle
        worker long-polls in ``wait``, and what that received is claimed first here.
        Receiving stops once the bodies reach ``max_bytes``; what the last receive brought
        past it waits, leased, for the next claim.

        Dead-letter queues are looked at every ``dead_letter_poll`` seconds; what is found
        there comes back with its attempts spent, so the worker records it as a dead letter.
        In FIFO mode one event per key is out at a time: the rest of a receive waits here,
        still leased, until the one before it is done. Messages of a type ``types`` leaves
        out are given back (``pass_over``).
        """
        self._flush_acks()
        if not groups:
            return []
        self._lease = lease
        held = self._take_held(limit)
        if held:
            return held
        with self._lock:
            claimed, self._ready = self._ready[:limit], self._ready[limit:]
        if not claimed:
            if time.monotonic() >= self._dead_checked_at + self.dead_letter_poll:
                self._dead_checked_at = time.monotonic()
                dead = self._receive_all(groups, limit, lease, dead=True, wait=0)
                if dead:
                    return dead
            claimed = self._receive_all(
                self._in_turn(groups), limit, lease, dead=False, wait=0, max_bytes=max_bytes
            )
        if types is not None:
            claimed = self.pass_over(claimed, types)
        taken = within_budget((c.size for c in claimed), max_bytes)
        if taken < len(claimed):  # still leased: the next claim takes them first
            with self._lock:
                self._ready[:0] = claimed[taken:]
            claimed = claimed[:taken]
        if self.fifo and any(c.receipt.ordered for c in claimed):
            with self._lock:
                self._held.extend(c for c in claimed if c.receipt.ordered)
            free = [c for c in claimed if not c.receipt.ordered]
            claimed = free + self._take_held(limit - len(free))
        return claimed

    @_translating
    def wait(self, groups: Sequence[str], timeout: float) -> bool:
        """Long-poll one group's queue (each in turn) for up to ``wait_time`` seconds; keep
        what arrives, leased, for the next ``claim``. Sleeps ``timeout`` if ``wait_time``
        is 0."""
        self._flush_acks()
        if self._ready:
            return True
        if not groups or not self.wait_time:
            time.sleep(timeout)
            return False
        received = self._receive_all(
            self._in_turn(groups)[:1],
            self.context.batch_size,
            self._lease,
            dead=False,
            wait=self.wait_time,
            max_bytes=self.context.batch_bytes,
        )
        with self._lock:
            self._ready.extend(received)
        return bool(received)

    def _in_turn(self, groups: Sequence[str]) -> list[str]:
        """The groups, starting one further each call, so no group waits behind another."""
        self._turn = (self._turn + 1) % len(groups)
        return [*groups[self._turn :], *groups[: self._turn]]

    def pass_over(
        self, claimed: list[Claimed], types: Mapping[str, Collection[str]]
    ) -> list[Claimed]:
        """Keep the messages whose type ``types`` lists for their group; give the others
        back for a worker that handles them (a newer version, during a rolling deploy).

        Each is sent again to its own queue as a copy (same body and attributes, visible
        after ``PASS_OVER_DELAY``; in FIFO mode the same key, a fresh deduplication id),
        then the original is deleted. The copy starts with no receive counted, so however
        often old workers pass over it, no attempt is counted and it never reaches the
        redrive limit; making it visible again would count one (``ApproximateReceiveCount``).
        Only a type the group's SNS subscription still filters on is passed over: some
        release's ``setup_events`` declared it. A type it no longer lists (retired by the
        newest ``setup_events``, or never ours), a message without a type or that does
        not decode, or one from a dead-letter queue, is kept, for its dead letter.

        An original whose copy was not sent (AWS out of reach, or refusing it) is not
        deleted: it comes back when its lease ends, one receive further. The deletes go
        with the pending acks."""
        keep: list[Claimed] = []
        others: list[Claimed] = []
        for item in claimed:
            wanted = types.get(item.group, ())
            mine = not item.event_type or item.event_type in wanted
            copyable = item.receipt.message is not None and not item.receipt.dead
            if mine or not copyable or item.decode_error:
                keep.append(item)
            else:
                subscribed = self._subscribed_types(item.group)
                (others if item.event_type in (subscribed or ()) else keep).append(item)
        if not others:
            return keep
        sqs = self._client("sqs")
        sent: list[Receipt] = []
        for item in others:
            self._done(item)
        try:
            for url, chunk in _by_queue([item.receipt for item in others]):
                entries = [self._copy(str(i), receipt) for i, receipt in enumerate(chunk)]
                response = sqs.send_message_batch(QueueUrl=url, Entries=entries)
                ok = {entry["Id"] for entry in response.get("Successful", [])}
                sent += [receipt for i, receipt in enumerate(chunk) if str(i) in ok]
        except _SEND_ERRORS as exc:  # the rest come back at their lease's end
            logger.warning("Could not pass over SQS messages of types not handled here: %s", exc)
        with self._lock:
            self._acks.extend(sent)
        with contextlib.suppress(*_SEND_ERRORS):
            self._flush_acks()
        return keep

    def _subscribed_types(self, group: str) -> frozenset[str] | None:
        """The event types ``group``'s subscription filters on now, read at most every
        ``POLICY_TTL`` seconds; None if it cannot be read (then nothing is passed over)."""
        now = time.monotonic()
        hit = self._policies.get(group)
        if hit is not None and now - hit[0] < POLICY_TTL:
            return hit[1]
        from .setup import subscribed_types

        try:
            found = subscribed_types(self, group)
        except _SEND_ERRORS as exc:
            logger.warning(
                "Could not read the SNS filter policy of group %r (a consumer needs "
                "sns:ListSubscriptionsByTopic and sns:GetSubscriptionAttributes): %s",
                group,
                exc,
            )
            found = None
        self._policies[group] = (now, found)
        return found

    def _copy(self, entry_id: str, receipt: Receipt) -> dict[str, Any]:
        """A SendMessageBatch entry repeating ``receipt``'s message."""
        message = receipt.message or {}
        entry: dict[str, Any] = {
            "Id": entry_id,
            "MessageBody": message.get("Body", ""),
            "MessageAttributes": {
                name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
                for name, value in (message.get("MessageAttributes") or {}).items()
                if isinstance(value, dict) and "StringValue" in value and "DataType" in value
            },
        }
        if self.fifo:  # FIFO queues take no per-message delay
            entry["MessageGroupId"] = receipt.message_group or uuid.uuid4().hex
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        else:
            entry["DelaySeconds"] = PASS_OVER_DELAY
        return entry

    def _receive_all(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        *,
        dead: bool,
        wait: int,
        max_bytes: int | None = None,
    ) -> list[Claimed]:
        sqs = self._client("sqs")
        claimed: list[Claimed] = []
        size = 0
        for group in groups:
            if max_bytes is not None and size >= max_bytes:
                break
            try:
                url = self._queue_url(group, dead=dead)
            except ClientError as exc:
                if _code(exc) in {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}:
                    raise EventsConfigurationError(
                        f"SQS queue {self.queue_name(group, dead=dead)!r} for group {group!r} "
                        "does not exist; run `manage.py setup_events`."
                    ) from exc
                raise
            while len(claimed) < limit and (max_bytes is None or size < max_bytes):
                wanted = min(self.receive_batch, limit - len(claimed))
                messages = sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=wanted,
                    VisibilityTimeout=_seconds(lease, minimum=1),
                    WaitTimeSeconds=wait,
                    MessageSystemAttributeNames=_SYSTEM_ATTRIBUTES,
                    MessageAttributeNames=["type", "groups", "key", SIGNATURE],
                ).get("Messages", [])
                deadline = time.monotonic() + lease
                for message in messages:
                    claimed.append(self._claimed(group, url, message, dead))
                    claimed[-1].size = len(message.get("Body", ""))
                    size += claimed[-1].size
                    self._leases[message["ReceiptHandle"]] = deadline
                if len(messages) < wanted:
                    break
        return claimed

    def _claimed(self, group: str, url: str, message: dict[str, Any], dead: bool) -> Claimed:
        """One received message as a ``Claimed``: an event, or a ``decode_error`` naming
        what is wrong with its body or attributes; never an exception, which would stop
        the worker and send its healthy batch-mates round again with it."""
        attributes = message.get("Attributes") or {}
        received = _count(attributes.get("ApproximateReceiveCount"))
        tags = message.get("MessageAttributes") or {}
        type_tag = tags.get("type")
        type_name = _string(type_tag) or ""
        # Whether the group takes this key's events one at a time is the consumer's own
        # declaration (its handler's ``ordered``), not the publisher's: wire format 2.
        ordered = self.fifo and not dead and self._ordered(group, type_name)
        handle = message["ReceiptHandle"]
        receipt = Receipt(url, handle, attributes.get("MessageGroupId"), dead, ordered, message)
        message_id = str(message.get("MessageId", ""))
        claimed = Claimed(
            group=group,
            # A message the queue redrove has used every attempt: the worker records it.
            attempt=max(received, self._max_receives(group) + 1) if dead else received,
            receipt=receipt,
            event_id=_uuid_or_none(message_id) or fallback_id(f"sqs:{url}:{message_id}"),
            event_type=type_name,
        )
        first = attributes.get("ApproximateFirstReceiveTimestamp")
        if first and claimed.attempt > 1:  # the first receive was the first failed attempt
            with contextlib.suppress(ValueError, OverflowError, OSError):
                claimed.first_failed_at = dt.datetime.fromtimestamp(
                    int(first) / 1000, dt.timezone.utc
                )
        body = message.get("Body", "")
        try:
            context = self.context
            signed = context.signing.verify(_string(tags.get(SIGNATURE)), body)
            claimed.event = from_cloudevent(body, context.max_payload_bytes * 2)
            if signed:  # the attributes SNS filtered on are the signed envelope's
                same("type attribute", _string(tags.get("type")), claimed.event.type)
                same("key attribute", _string(tags.get("key")), claimed.event.key)
        except Exception as exc:  # whatever is wrong with it, it is this message's dead letter
            claimed.decode_error = decode_failure(exc, f"SQS message {message_id!r}")
            claimed.event_id = _id_in(body) or claimed.event_id
            if isinstance(exc, UnverifiedMessage):
                claimed.decode_class, claimed.event = "UnverifiedMessage", None
        else:
            claimed.event_id, claimed.event_type = claimed.event.id, claimed.event.type
        return claimed

    def _ordered(self, group: str, event_type: str) -> bool:
        """Whether the consumer declared ``event_type`` in ``group`` ordered: this
        process's handler, or what it provisioned with ``setup`` (a transport used
        without the handler registry, as the contract suite does)."""
        if (group, event_type) in self._ordered_slots:
            return True
        return bool(event_type) and self.context.ordered(group, event_type)

    def _max_receives(self, group: str) -> int:
        """The most attempts any of the group's handlers gets: the queue's maxReceiveCount."""
        return self.context.max_attempts(group)

    # -- leases and FIFO keys -----------------------------------------------------------

    def _holds(self, claimed: Claimed) -> bool:
        """Whether this claim's lease still runs, as far as this process knows: SQS does
        not tell whether a receipt handle is still the current one."""
        return self._leases.get(claimed.receipt.handle, 0.0) > time.monotonic()

    def _done(self, claimed: Claimed) -> None:
        """``claimed`` has its outcome: forget its lease; its key may hand out the next."""
        receipt = claimed.receipt
        with self._lock:
            self._leases.pop(receipt.handle, None)
            key = (receipt.queue_url, receipt.message_group)
            if self._busy.get(key) == receipt.handle:
                del self._busy[key]
            if len(self._leases) > 10_000:  # claims dropped without an outcome
                now = time.monotonic()
                self._leases = {h: d for h, d in self._leases.items() if d > now}

    def _take_held(self, limit: int) -> list[Claimed]:
        """The first held event of each key not already out (in receive order), up to
        ``limit``. A key whose event's lease ran out here is free again."""
        now = time.monotonic()
        with self._lock:
            if not self._held:
                return []
            taken: list[Claimed] = []
            rest: list[Claimed] = []
            for item in self._held:
                key = (item.receipt.queue_url, item.receipt.message_group)
                out = self._busy.get(key)
                if len(taken) >= limit or (out is not None and self._leases.get(out, 0) > now):
                    rest.append(item)
                else:
                    self._busy[key] = item.receipt.handle
                    taken.append(item)
            self._held = rest
            return taken

    def _followers(self, claimed: Claimed) -> list[Claimed]:
        """Held events of ``claimed``'s key, taken out of the hold."""
        key = (claimed.receipt.queue_url, claimed.receipt.message_group)
        with self._lock:
            followers = [
                c for c in self._held if (c.receipt.queue_url, c.receipt.message_group) == key
            ]
            self._held = [c for c in self._held if c not in followers]
        return followers

    # -- outcomes -----------------------------------------------------------------------

    @_translating
    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        with self._lock:
            held = [*self._held, *self._ready]
        items = [c for c in [*claimed, *held] if self._holds(c)]
        self._set_visibility([c.receipt for c in items], _seconds(lease, minimum=1))
        deadline = time.monotonic() + lease
        with self._lock:
            for item in items:
                if item.receipt.handle in self._leases:
                    self._leases[item.receipt.handle] = deadline

    @_translating
    def release(self, claimed: Sequence[Claimed]) -> None:
        """Make the events visible at once, with those held or received here and not yet
        claimed. SQS has counted their receive all the same: their next claim is one
        attempt further (docs/transport-sqs.md)."""
        with self._lock:
            held = [*self._held, *self._ready]
            self._held, self._ready = [], []
        self._flush_acks()
        items = [*claimed, *held]
        self._set_visibility([c.receipt for c in items if self._holds(c)], 0)
        for item in items:
            self._done(item)

    def ack(self, claimed: Claimed) -> bool:
        """Queue the delete; it is sent with up to nine others, or at the next claim.

        The handler's transaction has committed, so a delete lost with the process only
        means one more delivery, which the group's inbox skips. False (and no delete) once
        the lease has run out: another consumer may hold the message now.
        """
        holds = self._holds(claimed)
        self._done(claimed)
        if not holds:
            return False
        with self._lock:
            self._acks.append(claimed.receipt)
            full = len(self._acks) >= BATCH_LIMIT
        if full:  # on an error they stay queued: the next claim sends them, or says why
            with contextlib.suppress(*_SEND_ERRORS):
                self._flush_acks()
        return True

    @_translating
    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        receipts = [claimed.receipt]
        if claimed.receipt.ordered:  # the key's later events wait behind this one, in order
            for follower in self._followers(claimed):
                receipts.append(follower.receipt)
                self._done(follower)
        self._done(claimed)
        self._set_visibility(receipts, _seconds(delay, minimum=0))

    def dead_letter(self, claimed: Claimed) -> bool:
        """Delete the message once the ``DeadLetter`` row has committed (never before, so a
        crash in between leaves the message to be dead-lettered again rather than lost).
        False if the lease has run out.

        In FIFO mode this frees the key: the next event of it is delivered, the dead letter
        does not hold it back.
        """
        holds = self._holds(claimed)
        self._done(claimed)
        if holds:
            transaction.on_commit(lambda: self._delete_soon(claimed.receipt), using=self.database)
        return holds

    def _delete_soon(self, receipt: Receipt) -> None:
        """Delete a dead-lettered message after the commit, with the pending acks: AWS out
        of reach now must not escape into the worker (the commit is done), so the delete
        stays queued for the next claim, as an ack's would."""
        with self._lock:
            self._acks.append(receipt)
        with contextlib.suppress(*_SEND_ERRORS):
            self._flush_acks()

    def close(self) -> None:
        """Send pending deletes and give back held events; clients are kept for reuse.

        With AWS out of reach they are not lost: the events come back when their
        visibility timeout ends, and the group's inbox skips those already handled."""
        try:
            self.release([])
        except TransportUnavailable:
            logger.warning("SNS/SQS unreachable at close: unsent deletes are redelivered")

    def _flush_acks(self) -> None:
        with self._lock:
            receipts, self._acks = self._acks, []
        try:
            self._delete(receipts)
        except _SEND_ERRORS:
            with self._lock:  # kept for the next flush: an outage is no reason to redeliver
                self._acks[:0] = receipts
            raise

    def _delete(self, receipts: Sequence[Receipt]) -> None:
        if not receipts:
            return
        sqs = self._client("sqs")
        for url, chunk in _by_queue(receipts):
            response = sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": r.handle} for i, r in enumerate(chunk)],
            )
            for failed in response.get("Failed", []):
                # An expired handle: the message comes back once, and the inbox skips it.
                logger.warning("Could not delete an SQS message: %s", failed.get("Message"))

    def _set_visibility(self, receipts: Sequence[Receipt], seconds: int) -> None:
        if not receipts:
            return
        sqs = self._client("sqs")
        for url, chunk in _by_queue(receipts):
            response = sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": r.handle, "VisibilityTimeout": seconds}
                    for i, r in enumerate(chunk)
                ],
            )
            for failed in response.get("Failed", []):
                logger.info(
                    "Could not change an SQS message's visibility: %s", failed.get("Message")
                )

    # -- status -------------------------------------------------------------------------

    @_translating
    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        """Queue depths from SQS. ``in_flight`` includes events waiting for a retry (SQS
        hides them the same way); ``parked`` counts dead letters not yet mirrored."""
        found: dict[str, GroupStatus] = {}
        for group in groups:
            try:
                main = self._attributes(self._queue_url(group))
                dead = self._attributes(self._queue_url(group, dead=True))
            except (ClientError, EventsConfigurationError):
                found[group] = GroupStatus()  # not a queue (yet): setup_events makes it
                continue
            found[group] = GroupStatus(
                pending=main.get("ApproximateNumberOfMessages", 0)
                + main.get("ApproximateNumberOfMessagesDelayed", 0),
                in_flight=main.get("ApproximateNumberOfMessagesNotVisible", 0),
                parked=dead.get("ApproximateNumberOfMessages", 0),
            )
        return found

    def _attributes(self, url: str) -> dict[str, int]:
        attributes = self._client("sqs").get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return {name: int(value) for name, value in attributes.items()}

    # -- provisioning -------------------------------------------------------------------

    @_translating
    def setup(
        self, subscriptions: Sequence[tuple[str, str, bool]], *, dry_run: bool = False
    ) -> list[str]:
        from .setup import provision

        if not dry_run:
            self._ordered_slots |= {(g, t) for t, g, ordered in subscriptions if ordered}
        return provision(self, subscriptions, dry_run=dry_run)

    def access_policies(self, subscriptions: Sequence[tuple[str, str, bool]]) -> dict[str, Any]:
        from .setup import access_policies

        return access_policies(self, subscriptions)


# -- helpers ----------------------------------------------------------------------------


def _text(options: dict[str, Any], name: str, where: str) -> str | None:
    value = options.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise EventsConfigurationError(f"{where}[{name!r}] must be a non-empty string.")
    return value


def _int(
    options: dict[str, Any], name: str, default: int | None, low: int, high: int, where: str
) -> Any:
    value = options.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EventsConfigurationError(
            f"{where}[{name!r}] must be an integer from {low} to {high}, got {value!r}."
        )
    return value


def _seconds(value: float, *, minimum: int) -> int:
    """SQS counts whole seconds: round up (a lease never ends early), within its limits."""
    return max(minimum, min(MAX_VISIBILITY, math.ceil(value)))


def _uuid_text(value: Any) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def message_group_id(key: str) -> str:
    """The FIFO ``MessageGroupId`` of an event key: the key itself if SQS accepts it (1 to
    128 ASCII letters, digits and punctuation), else ``sha256:`` and the hex digest of its
    UTF-8 form. Every event key ``publish()`` accepts maps to one, always the same, so a
    key that works on the database works here; a digest shared with a real key would only
    make two keys wait for each other, never reorder one."""
    if _GROUP_ID.fullmatch(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _id_in(body: Any) -> uuid.UUID | None:
    """The event id of an undecodable body, if it has one, so its dead letter names it.
    Looked for as text: the body may not parse (the transport writes ``id`` early on).
    None if the body has none, or one that is not a UUID (it is not ours)."""
    found = _ID_FIELD.search(body[:500]) if isinstance(body, str) else None
    return _uuid_or_none(found[1]) if found else None


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _string(attribute: Any) -> str | None:
    """A ``String`` message attribute's value, or None when absent or of another shape."""
    if isinstance(attribute, dict) and isinstance(attribute.get("StringValue"), str):
        return str(attribute["StringValue"])
    return None


def _count(value: Any) -> int:
    """SQS's receive count; 1 if it is not a number (a broker that is not SQS)."""
    try:
        return max(1, int(value or 1))
    except (TypeError, ValueError):
        return 1


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _types_by_group(subscriptions: Sequence[tuple[str, str, bool]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event_type, group, _ in subscriptions:
        found.setdefault(group, []).append(event_type)
    return {group: sorted(set(types)) for group, types in sorted(found.items())}


def _by_queue(receipts: Sequence[Receipt]) -> Iterator[tuple[str, list[Receipt]]]:
    """Receipts grouped by queue, in batches of at most ten, duplicates dropped."""
    by_url: dict[str, dict[str, Receipt]] = {}
    for receipt in receipts:
        by_url.setdefault(receipt.queue_url, {})[receipt.handle] = receipt
    for url, found in by_url.items():
        items = list(found.values())
        for start in range(0, len(items), BATCH_LIMIT):
            yield url, items[start : start + BATCH_LIMIT]
