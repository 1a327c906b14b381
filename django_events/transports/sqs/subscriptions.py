"""Level 2's subscription store: the topic's SNS subscriptions, described by queue tags.

Services at Level 2 share an SNS topic and nothing else, so their subscriptions live in
AWS: each group's queue is subscribed to the topic with a filter policy listing the event
types declared in the group (docs/wire-format.md), and the queue's tags say who declared
them: ``django-events-group`` names the group, and one tag per (service, event type), its
key ``django-events/`` and 24 hex digits of their SHA-256, its value
``<service> <type> <ordered 0|1> <declared> <last seen> <retired or 0>`` (Unix seconds).
The filter policy lists every type with a tag, retired ones too: a retired subscription
keeps receiving until ``setup_events --prune`` removes its tag and the policy drops it.

Only ``setup_events`` declares here: it holds the rights to create queues and change
subscriptions, which neither ``migrate`` nor a worker's role needs (docs/services.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

from ...exceptions import EventsConfigurationError
from ...stores import Declaration, FanOut, Stored, Wanted, plan

if TYPE_CHECKING:
    from ...models import Subscription
    from .transport import SnsSqsTransport

GROUP_TAG = "django-events-group"
ROW_TAG = "django-events/"
MAX_ROWS = 49
"""(service, event type) pairs one group can hold: SQS allows 50 tags on a queue, one of
which names the group."""
_VALUE_LIMIT = 256
_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


@dataclass
class Row:
    """One (service, event type) of a group, as its tag holds it."""

    service: str
    event_type: str
    ordered: bool
    declared: int
    seen: int
    retired: int = 0

    @property
    def tag(self) -> str:
        return row_tag(self.service, self.event_type)

    def value(self) -> str:
        text = (
            f"{self.service} {self.event_type} {int(self.ordered)} "
            f"{self.declared} {self.seen} {self.retired}"
        )
        if len(text) > _VALUE_LIMIT:
            raise EventsConfigurationError(
                f"Service {self.service!r} and event type {self.event_type!r} are too long "
                f"together for an SQS queue tag ({_VALUE_LIMIT} characters); shorten one."
            )
        return text


@dataclass
class Group:
    """A group's queue on the topic and the rows its tags hold."""

    name: str
    url: str
    arn: str
    rows: dict[tuple[str, str], Row] = field(default_factory=dict)


def row_tag(service: str, event_type: str) -> str:
    digest = hashlib.sha256(f"{service}\0{event_type}".encode()).hexdigest()[:24]
    return ROW_TAG + digest


def parse(tags: dict[str, str]) -> dict[tuple[str, str], Row]:
    """The rows among a queue's tags; a tag that is not ours, or garbled, is skipped."""
    found: dict[tuple[str, str], Row] = {}
    for key, value in tags.items():
        if not key.startswith(ROW_TAG):
            continue
        parts = value.split(" ")
        if len(parts) != 6 or not all(p.isdigit() for p in parts[2:]):
            continue
        row = Row(parts[0], parts[1], parts[2] == "1", *(int(p) for p in parts[3:]))
        if row.tag == key:
            found[(row.service, row.event_type)] = row
    return found


def declared_types(transport: SnsSqsTransport, url: str) -> frozenset[str]:
    """Every event type some service's tag declares on the queue at ``url``."""
    tags = transport._client("sqs").list_queue_tags(QueueUrl=url).get("Tags", {})
    return frozenset(event_type for _, event_type in parse(tags))


class SqsStore:
    """The topic's subscriptions and their queues' tags (Level 2)."""

    setup_only = True
    """Declared by ``setup_events`` only, never by ``migrate`` (``declare_on_migrate``)."""

    def __init__(self, transport: SnsSqsTransport) -> None:
        self.transport = transport
        self.key = f"sqs:{transport.endpoint_url}:{transport.region}:{transport.topic_name}"

    def declare(self, service: str, wanted: Wanted, *, replace: bool) -> Declaration:
        """With ``replace`` (``setup_events``): write ``service``'s rows into its groups'
        tags (creating the queues), then bring each changed group's filter policy up to
        date. Without it (a worker starting) nothing: a worker's role may not tag queues
        or change subscriptions, and ``setup_events`` ran before it."""
        if not replace:
            return Declaration(service)
        return self._translated(lambda: self._declare(service, wanted))

    def _declare(self, service: str, wanted: Wanted) -> Declaration:
        from .setup import converge_subscription, ensure_queues, ensure_topic

        topic_arn = ensure_topic(self.transport)
        groups = self._groups()
        mine = {
            (group.name, event_type): row
            for group in groups.values()
            for (owner, event_type), row in group.rows.items()
            if owner == service
        }
        stored = {slot: Stored(row.ordered, bool(row.retired)) for slot, row in mine.items()}
        result = plan(service, wanted, stored, replace=True)
        now = int(time.time())
        changes: dict[str, list[Row]] = {}
        for (group, event_type), ordered in wanted.items():
            row = mine.get((group, event_type)) or Row(service, event_type, ordered, now, now)
            row.ordered, row.seen, row.retired = ordered, now, 0
            changes.setdefault(group, []).append(row)
        for group, event_type in result.retired:
            row = mine[(group, event_type)]
            row.retired = now
            changes.setdefault(group, []).append(row)
        sqs = self.transport._client("sqs")
        for name, rows in sorted(changes.items()):
            if name in groups:
                url, arn = groups[name].url, groups[name].arn
            else:
                url, arn, _ = ensure_queues(self.transport, name, topic_arn)
            held = {**(groups[name].rows if name in groups else {})}
            held.update({(row.service, row.event_type): row for row in rows})
            if len(held) > MAX_ROWS:
                raise EventsConfigurationError(
                    f"Group {name!r} would hold {len(held)} (service, event type) "
                    f"subscriptions; an SQS queue's tags hold at most {MAX_ROWS}. Split the "
                    "group, or prune retired ones (setup_events --prune)."
                )
            sqs.tag_queue(
                QueueUrl=url, Tags={GROUP_TAG: name, **{row.tag: row.value() for row in rows}}
            )
            new_types = any(slot[0] == name for slot in [*result.added, *result.reopened])
            if new_types or name not in groups:  # (a new queue, or one never subscribed)
                converge_subscription(self.transport, name, url, arn)
        return result

    def fan_out(self) -> FanOut:
        """Every row's (event type, group, ordered); SNS does the fan-out itself, so the
        relay never asks (``routes_itself``)."""
        return [
            (row.event_type, group.name, row.ordered)
            for group in self._translated(self._groups).values()
            for row in group.rows.values()
        ]

    def rows(self) -> list[Subscription]:
        from ...models import Subscription

        def when(seconds: int) -> dt.datetime:
            return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)

        found = [
            Subscription(
                service=row.service,
                group=group.name,
                event_type=row.event_type,
                ordered=row.ordered,
                declared_at=when(row.declared),
                last_seen_at=when(row.seen),
                retired_at=when(row.retired) if row.retired else None,
            )
            for group in self._translated(self._groups).values()
            for row in group.rows.values()
        ]
        return sorted(found, key=lambda row: (row.service, row.group, row.event_type))

    def remove(
        self, row: Subscription, drop_backlog: Callable[[str, str], int | None]
    ) -> tuple[bool, int | None]:
        """Remove ``row``'s tag if it is orphaned; when it was the last of its type in the
        group, the filter policy drops the type (and the subscription goes with the
        group's last type). The queue, and what it holds, stay."""
        return self._translated(lambda: self._remove(row, drop_backlog))

    def _remove(
        self, row: Subscription, drop_backlog: Callable[[str, str], int | None]
    ) -> tuple[bool, int | None]:
        from .setup import converge_subscription

        group = self._groups().get(row.group)
        mine = group.rows.get((row.service, row.event_type)) if group else None
        if group is None or mine is None or not mine.retired:
            return False, None
        pair = [r for (_, t), r in group.rows.items() if t == row.event_type]
        if any(not other.retired for other in pair):
            return False, None  # another service still declares it
        self.transport._client("sqs").untag_queue(QueueUrl=group.url, TagKeys=[mine.tag])
        if len(pair) > 1:
            return True, None
        converge_subscription(self.transport, group.name, group.url, group.arn)
        return True, drop_backlog(row.group, row.event_type)

    def _groups(self) -> dict[str, Group]:
        """The groups whose queue is subscribed to the topic and tagged by django-events:
        one listing of the topic, then one tag read per queue."""
        from .setup import _subscriptions

        transport = self.transport
        sqs = transport._client("sqs")
        try:
            endpoints = _subscriptions(transport._client("sns"), transport.topic_arn)
        except ClientError as exc:
            if "NotFound" in str(exc):
                return {}  # no topic yet: setup_events creates it
            raise
        found: dict[str, Group] = {}
        for arn in sorted(endpoints):
            parts = arn.split(":")
            if len(parts) != 6:
                continue
            try:
                url = sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])
                tags = sqs.list_queue_tags(QueueUrl=url["QueueUrl"]).get("Tags", {})
            except ClientError as exc:
                if any(code in str(exc) for code in _MISSING):
                    continue  # a subscription whose queue was deleted by hand
                raise
            name = tags.get(GROUP_TAG)
            if name:
                found[name] = Group(name, str(url["QueueUrl"]), arn, parse(tags))
        return found

    def _translated(self, work: Callable[[], Any]) -> Any:
        """AWS out of reach is ``TransportUnavailable``; no credentials, a clear
        configuration error (as ``setup_events`` gives)."""
        from .setup import NO_CREDENTIALS
        from .transport import _translating

        try:
            return _translating(work)()
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise EventsConfigurationError(f"{NO_CREDENTIALS} ({exc})") from None
