"""Provisioning for the SNS + SQS transport: what ``setup_events`` creates, and the IAM
policies it prints with ``--iam``.

Everything is converged rather than created blindly: an existing queue gets the
attributes it should have, an existing subscription its filter policy, so the command is
safe to run on every deploy. What already matches is reported "(unchanged)" and not
written. Nothing is deleted here: a type a service no longer handles is retired in its
queue's tags and stays in the filter policy until ``setup_events --prune``
(``sqs.subscriptions``); queues are never deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from ...exceptions import EventsConfigurationError
from .subscriptions import GROUP_TAG
from .transport import RETENTION, _code, _types_by_group

if TYPE_CHECKING:
    from .transport import SnsSqsTransport

POLICY_VERSION = "2012-10-17"
NO_CREDENTIALS = (
    "No AWS credentials were found, so setup_events cannot reach SNS and SQS. boto3 looks "
    "for them in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
    "AWS_PROFILE), then in ~/.aws/credentials and ~/.aws/config (AWS_SHARED_CREDENTIALS_FILE "
    "and AWS_CONFIG_FILE move them), then in the instance or container role. Provide one "
    "of those and run it again."
)


def provision(
    transport: SnsSqsTransport, subscriptions: Sequence[tuple[str, str, bool]], *, dry_run: bool
) -> list[str]:
    """Create or update the topic, each group's queue and dead-letter queue, and the
    subscriptions; return one line per step. A dry run makes no AWS call at all.

    Missing credentials raise ``EventsConfigurationError`` saying where boto3 looks."""
    try:
        return _provision(transport, subscriptions, dry_run=dry_run)
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise EventsConfigurationError(f"{NO_CREDENTIALS} ({exc})") from None


def _provision(
    transport: SnsSqsTransport, subscriptions: Sequence[tuple[str, str, bool]], *, dry_run: bool
) -> list[str]:
    types = _types_by_group(subscriptions)
    fifo = " (FIFO)" if transport.fifo else ""
    lines = [f"topic {transport.topic_name}{fifo}"]
    if not dry_run:
        topic_arn = ensure_topic(transport)
        existing = _subscriptions(transport._client("sns"), topic_arn)
    for group, group_types in types.items():
        queue, dead = transport.queue_name(group), transport.queue_name(group, dead=True)
        steps = [
            f"queue {dead}: dead letters of group {group!r}, kept {RETENTION // 86400} days",
            f"queue {queue}: group {group!r}, visibility {_visibility(transport)}s, kept "
            f"{RETENTION // 86400} days, to {dead} after {transport._max_receives(group)} "
            "receives, writable by the topic",
            f"subscription {queue} to {transport.topic_name}: raw delivery, "
            f"type in {', '.join(group_types)} (with any other type declared in the "
            f"group), or groups includes {group!r}",
        ]
        if dry_run:
            lines += steps
            continue
        url, queue_arn, created = ensure_queues(transport, group, topic_arn)
        lines += [f"{steps[0]} ({created[0]})", f"{steps[1]} ({created[1]})"]
        existing.pop(queue_arn, None)
        # The group's types are those any service declared in its queue's tags (retired
        # ones too: they still receive until pruned), with these.
        outcome, listed = converge_subscription(transport, group, url, queue_arn, extra=group_types)
        lines.append(
            f"subscription {queue} to {transport.topic_name}: raw delivery, type in "
            f"{', '.join(sorted(listed))}, or groups includes {group!r} ({outcome})"
        )
    if not dry_run:
        from .subscriptions import SqsStore

        for declared in SqsStore(transport)._groups().values():  # other services' too
            existing.pop(declared.arn, None)
        for endpoint in sorted(existing):
            lines.append(
                f"left alone: the topic's subscription of {endpoint}, which no service "
                "declared with setup_events (a consumer without django-events, or stale)"
            )
    return lines


def filter_policy(group: str, types: Sequence[str]) -> dict[str, Any]:
    """Wire format 2's filter policy: a fresh publish (no ``groups`` attribute) of a type
    the group declared, or a redelivery that names the group (docs/wire-format.md)."""
    return {
        "$or": [
            {"type": sorted(types), "groups": [{"exists": False}]},
            {"groups": [group]},
        ]
    }


def policy_types(policy: Any) -> frozenset[str] | None:
    """The event types a filter policy lets through on a fresh publish: format 2's ``$or``
    or format 1's ``{"type": [...], "groups": [...]}``; None for any other shape."""
    branches = policy.get("$or", [policy]) if isinstance(policy, dict) else []
    for branch in branches if isinstance(branches, list) else []:
        types = branch.get("type") if isinstance(branch, dict) else None
        if isinstance(types, list):
            return frozenset(t for t in types if isinstance(t, str))
    return None


def ensure_topic(transport: SnsSqsTransport) -> str:
    """Create the topic (idempotent); its ARN."""
    attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "false"}
    topic_arn = transport._client("sns").create_topic(
        Name=transport.topic_name, Attributes=attributes if transport.fifo else {}
    )["TopicArn"]
    transport._topic_arn = str(topic_arn)
    return str(topic_arn)


def ensure_queues(
    transport: SnsSqsTransport, group: str, topic_arn: str
) -> tuple[str, str, tuple[str, str]]:
    """Create or converge ``group``'s dead-letter queue and queue (tagged with the group's
    name, for the subscription store); its URL, ARN and what happened to each queue."""
    queue, dead = transport.queue_name(group), transport.queue_name(group, dead=True)
    visibility = _visibility(transport)
    dead_url, dead_done = _ensure_queue(transport, dead, _base_attributes(transport, visibility))
    dead_arn = _queue_arn(transport, dead_url)
    queue_arn = transport._arn("sqs", queue, topic_arn.split(":")[4])
    attributes = _base_attributes(transport, visibility)
    attributes["RedrivePolicy"] = json.dumps(
        {"deadLetterTargetArn": dead_arn, "maxReceiveCount": str(transport._max_receives(group))}
    )
    attributes["Policy"] = json.dumps(_topic_may_send(queue_arn, topic_arn))
    url, done = _ensure_queue(transport, queue, attributes, tags={GROUP_TAG: group})
    return url, queue_arn, (dead_done, done)


def converge_subscription(
    transport: SnsSqsTransport,
    group: str,
    url: str,
    queue_arn: str,
    extra: Sequence[str] = (),
) -> tuple[str, frozenset[str]]:
    """Subscribe ``group``'s queue to the topic with the filter policy for the types its
    tags declare (and ``extra``), or bring an existing subscription's attributes up to
    date; unsubscribe it when no type is left. Returns what happened ("created",
    "updated", "unchanged" or "unsubscribed") and the types the policy lists.

    Read again after writing, until the tags hold still: two services declaring into one
    group at once each write their tags first, so the last policy written lists both."""
    from .subscriptions import declared_types

    sns = transport._client("sns")
    outcome = "unchanged"
    written: frozenset[str] | None = None
    while True:
        types = declared_types(transport, url) | frozenset(extra)
        if types == written:
            return outcome, types
        subscription = _subscriptions(sns, transport.topic_arn).get(queue_arn)
        if not types:
            if subscription is not None:
                sns.unsubscribe(SubscriptionArn=subscription)
                return "unsubscribed", types
            return outcome, types
        wanted = {
            "RawMessageDelivery": "true",
            "FilterPolicyScope": "MessageAttributes",
            "FilterPolicy": json.dumps(filter_policy(group, sorted(types))),
        }
        if subscription is None:
            sns.subscribe(
                TopicArn=transport.topic_arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes=wanted,
                ReturnSubscriptionArn=True,
            )
            outcome = "created"
        else:
            current = sns.get_subscription_attributes(SubscriptionArn=subscription)["Attributes"]
            changed = _differing(current, wanted)
            for name in changed:
                sns.set_subscription_attributes(
                    SubscriptionArn=subscription, AttributeName=name, AttributeValue=wanted[name]
                )
            if changed and outcome == "unchanged":
                outcome = "updated"
        written = types


def _visibility(transport: SnsSqsTransport) -> int:
    return transport.visibility_timeout or _lease(transport)


def _lease(transport: SnsSqsTransport) -> int:
    return max(1, round(transport.context.lease))


def _base_attributes(transport: SnsSqsTransport, visibility: int) -> dict[str, str]:
    attributes = {"VisibilityTimeout": str(visibility), "MessageRetentionPeriod": str(RETENTION)}
    if transport.fifo:
        attributes.update(FifoQueue="true", ContentBasedDeduplication="false")
    return attributes


def _ensure_queue(
    transport: SnsSqsTransport,
    name: str,
    attributes: dict[str, str],
    tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Create the queue, or bring an existing one's attributes (and ``tags``) up to date."""
    sqs = transport._client("sqs")
    try:
        url = str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except ClientError as exc:
        if _code(exc) not in {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}:
            raise
        url = str(
            sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags or {})["QueueUrl"]
        )
        transport._queue_urls[name] = url
        return url, "created"
    changeable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    changed = _differing(current, changeable)
    if tags:
        held = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        missing = {k: v for k, v in tags.items() if held.get(k) != v}
        if missing:
            sqs.tag_queue(QueueUrl=url, Tags=missing)
            changed.append("tags")
    if not changed:
        return url, "unchanged"
    if changed != ["tags"]:
        sqs.set_queue_attributes(
            QueueUrl=url, Attributes={k: changeable[k] for k in changed if k != "tags"}
        )
    return url, "updated"


def _differing(current: dict[str, str], wanted: dict[str, str]) -> list[str]:
    """The names in ``wanted`` whose value AWS does not hold yet. Policies are compared
    as JSON, scalars as text: AWS gives ``maxReceiveCount`` back as a number and may
    reformat a policy it stores."""
    return [name for name, value in wanted.items() if _normal(current.get(name)) != _normal(value)]


def _normal(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return None if value is None else str(value)


def subscribed_types(transport: SnsSqsTransport, group: str) -> frozenset[str] | None:
    """The event types in the filter policy of ``group``'s subscription to the topic, or
    None if the group's queue is not subscribed."""
    sns = transport._client("sns")
    queue_arn = _queue_arn(transport, transport._queue_url(group))
    subscription = _subscriptions(sns, transport.topic_arn).get(queue_arn)
    if subscription is None:
        return None
    attributes = sns.get_subscription_attributes(SubscriptionArn=subscription)["Attributes"]
    return policy_types(json.loads(attributes.get("FilterPolicy") or "{}"))


def _queue_arn(transport: SnsSqsTransport, url: str) -> str:
    found = transport._client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(found["Attributes"]["QueueArn"])


def _subscriptions(sns: Any, topic_arn: str) -> dict[str, str]:
    """The topic's SQS subscriptions: queue ARN to subscription ARN."""
    found: dict[str, str] = {}
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for item in page["Subscriptions"]:
            if item["Protocol"] == "sqs" and item["SubscriptionArn"].startswith("arn:"):
                found[item["Endpoint"]] = item["SubscriptionArn"]
    return found


def _topic_may_send(queue_arn: str, topic_arn: str) -> dict[str, Any]:
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "TopicMaySend",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }


def access_policies(
    transport: SnsSqsTransport, subscriptions: Sequence[tuple[str, str, bool]]
) -> dict[str, Any]:
    """Least-privilege IAM policies: one for what publishes to the topic (the relay, the
    admin's retry, replays), one per group's consumer, one for running ``setup_events``."""
    try:
        account = transport.account()
    except (BotoCoreError, ClientError):
        account = "*"  # no credentials here: the names still scope every statement
    groups = sorted(_types_by_group(subscriptions))
    topic = transport._arn("sns", transport.topic_name, account)

    def arn(group: str, dead: bool = False) -> str:
        return transport._arn("sqs", transport.queue_name(group, dead=dead), account)

    every_queue = [arn(g, dead) for g in groups for dead in (False, True)]

    def policy(*statements: dict[str, Any]) -> dict[str, Any]:
        return {"Version": POLICY_VERSION, "Statement": list(statements)}

    policies: dict[str, Any] = {
        "relay": policy(
            {"Sid": "Publish", "Effect": "Allow", "Action": ["sns:Publish"], "Resource": topic}
        )
    }
    for group in groups:
        policies[f"consumer {group}"] = policy(
            {
                "Sid": "Consume",
                "Effect": "Allow",
                "Action": [
                    "sqs:ChangeMessageVisibility",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                    "sqs:ReceiveMessage",
                ],
                "Resource": [arn(group), arn(group, True)],
            },
            {
                # a copy of a message of a type it does not handle, back to its own queue
                "Sid": "PassOver",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": [arn(group)],
            },
            {
                # which types the group's subscription still lists, to pass those over
                "Sid": "ReadSubscription",
                "Effect": "Allow",
                "Action": ["sns:ListSubscriptionsByTopic", "sns:GetSubscriptionAttributes"],
                "Resource": topic,
            },
        )
    policies["setup"] = policy(
        {
            "Sid": "Topic",
            "Effect": "Allow",
            "Action": [
                "sns:CreateTopic",
                "sns:GetSubscriptionAttributes",
                "sns:GetTopicAttributes",
                "sns:ListSubscriptionsByTopic",
                "sns:SetSubscriptionAttributes",
                "sns:Subscribe",
                "sns:Unsubscribe",  # setup_events --prune, a group's last type
            ],
            "Resource": topic,
        },
        {
            "Sid": "Queues",
            "Effect": "Allow",
            "Action": [
                "sqs:CreateQueue",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
                "sqs:SetQueueAttributes",
                "sqs:TagQueue",  # the subscription store (sqs.subscriptions)
                "sqs:UntagQueue",
            ],
            "Resource": every_queue or ["none"],
        },
        {
            # the subscription store: every service's queues on the topic, read (and
            # pruned) by setup_events, events_status and check W050
            "Sid": "Store",
            "Effect": "Allow",
            "Action": ["sqs:GetQueueUrl", "sqs:ListQueueTags", "sqs:UntagQueue"],
            "Resource": transport._arn("sqs", f"{transport.prefix}*", account),
        },
    )
    return policies
