"""Consume one django-events group from its SQS queue, without Django (wire format 2).

    python sqs_consumer.py --prefix shop- --group emails --region eu-west-1
    python sqs_consumer.py --prefix shop- --group audit --subscribe order.placed ...

What it does, as docs/wire-format.md ("SNS + SQS: what a consumer does") says:

* with ``--subscribe TYPE`` (repeatable), first joins on its own, as a django-events
  service's ``setup_events`` does: creates the group's queue and dead-letter queue and
  subscribes the queue to the topic ``<prefix>topic`` with wire format 2's filter policy
  on those types (the publisher changes nothing);
* long-polls the group's queue ``<prefix><group>`` with ``ReceiveMessage``; the body is
  the CloudEvents JSON envelope as is (raw message delivery);
* decodes it and handles it: here, prints one JSON line;
* acknowledges with ``DeleteMessage`` once the work is done;
* on a failure hides the message for ``--retry-after`` seconds
  (``ChangeMessageVisibility``); the attempt is SQS's ``ApproximateReceiveCount``;
* with ``--signing-key``, verifies the ``signature`` message attribute first;
* on the last attempt (the queue's redrive ``maxReceiveCount``), or at once for an
  envelope it cannot decode (or, with ``--signing-key``, an unsigned or forged one),
  records a dead letter (a JSON line here) and deletes the message. A message whose
  consumer crashed on every attempt is moved by SQS to ``<prefix><group>-dlq``.

Needs only boto3 (``pip install boto3``); credentials come from boto3's usual chain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from typing import Any

import boto3
from wire import Undecodable, common_arguments, decode, emit, signing_keys, summary

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def queue_name(prefix: str, group: str, *, fifo: bool = False, dead: bool = False) -> str:
    """The group's queue name: characters SQS refuses become '-', and then six hex digits
    of the group name's SHA-256 keep two groups apart (wire format 1)."""
    safe = _UNSAFE.sub("-", group)
    if safe != group:
        safe += "-" + hashlib.sha256(group.encode()).hexdigest()[:6]
    return f"{prefix}{safe}{'-dlq' if dead else ''}{'.fifo' if fifo else ''}"


class Consumer:
    def __init__(self, sqs: Any, url: str, args: argparse.Namespace) -> None:
        self.sqs = sqs
        self.url = url
        self.wait = args.wait
        self.visibility = args.visibility
        self.retry_after = max(0, int(args.retry_after))
        self.fail_types = set(args.fail_type or ())
        self.keys = signing_keys(args.signing_key)
        redrive = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
        policy = json.loads(redrive.get("Attributes", {}).get("RedrivePolicy", "{}"))
        self.max_attempts = int(policy.get("maxReceiveCount", args.max_attempts))

    def step(self) -> int:
        messages = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait,
            VisibilityTimeout=self.visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        for message in messages:
            self.process(message)
        return len(messages)

    def in_queue(self) -> int:
        """Messages waiting or in flight (hidden for a retry, or held by a consumer)."""
        found = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in found.values())

    def process(self, message: dict[str, Any]) -> None:
        attempt = int(message["Attributes"]["ApproximateReceiveCount"])
        try:
            tags = message.get("MessageAttributes", {})
            envelope = decode(
                message["Body"],
                keys=self.keys,
                signature=tags.get("signature", {}).get("StringValue"),
                copies={
                    "type": tags.get("type", {}).get("StringValue"),
                    "partitionkey": tags.get("key", {}).get("StringValue"),
                },
            )
        except Undecodable as exc:
            type_attribute = message.get("MessageAttributes", {}).get("type", {})
            emit("dead-lettered", type=type_attribute.get("StringValue"), reason=str(exc))
            self.delete(message)
            return
        try:
            self.handle(envelope, attempt)
        except Exception as exc:  # a handler's failure: retry later, or give up
            if attempt >= self.max_attempts:
                emit("dead-lettered", id=envelope["id"], attempt=attempt, reason=repr(exc))
                self.delete(message)
            else:
                emit("retry", id=envelope["id"], attempt=attempt, reason=repr(exc))
                self.sqs.change_message_visibility(
                    QueueUrl=self.url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=self.retry_after,
                )
            return
        self.delete(message)

    def handle(self, envelope: dict[str, Any], attempt: int) -> None:
        """Your code goes here. This one prints the event, or fails for ``--fail-type``."""
        if envelope["type"] in self.fail_types:
            raise RuntimeError(f"asked to fail for {envelope['type']}")
        emit("handled", **summary(envelope, attempt))

    def delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])


def subscribe(sqs: Any, sns: Any, name: str, args: argparse.Namespace) -> None:
    """Create the group's queues and subscribe the queue to the topic (idempotent)."""
    fifo = {"FifoQueue": "true"} if args.fifo else {}
    dead = sqs.create_queue(
        QueueName=queue_name(args.prefix, args.group, fifo=args.fifo, dead=True), Attributes=fifo
    )["QueueUrl"]
    dead_arn = queue_arn(sqs, dead)
    topic = sns.create_topic(
        Name=f"{args.prefix}topic{'.fifo' if args.fifo else ''}",
        Attributes={"FifoTopic": "true"} if args.fifo else {},
    )["TopicArn"]
    url = sqs.create_queue(QueueName=name, Attributes=fifo)["QueueUrl"]
    arn = queue_arn(sqs, url)
    may_send = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
            }
        ],
    }
    redrive = {"deadLetterTargetArn": dead_arn, "maxReceiveCount": str(args.max_attempts)}
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={"Policy": json.dumps(may_send), "RedrivePolicy": json.dumps(redrive)},
    )
    policy = {
        "$or": [
            {"type": sorted(set(args.subscribe)), "groups": [{"exists": False}]},
            {"groups": [args.group]},
        ]
    }
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps(policy)},
    )


def queue_arn(sqs: Any, url: str) -> str:
    found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(found["Attributes"]["QueueArn"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="django-events-", help="the transport's prefix")
    parser.add_argument("--fifo", action="store_true", help="the transport runs in FIFO mode")
    parser.add_argument("--region")
    parser.add_argument("--endpoint-url", help="a local server (moto, LocalStack)")
    parser.add_argument("--wait", type=int, default=20, help="long poll, 0-20 seconds")
    parser.add_argument("--visibility", type=int, default=30, help="lease, seconds")
    parser.add_argument("--retry-after", type=int, default=30, help="seconds")
    parser.add_argument("--max-attempts", type=int, default=5, help="without a redrive policy")
    parser.add_argument(
        "--subscribe",
        action="append",
        metavar="TYPE",
        help="create the group's queue and subscribe it to the topic for this event type "
        "(repeat for several), then consume",
    )
    common_arguments(parser, idle="the queue holds nothing, not even in flight")
    args = parser.parse_args(argv)
    sqs = boto3.client("sqs", region_name=args.region, endpoint_url=args.endpoint_url)
    name = queue_name(args.prefix, args.group, fifo=args.fifo)
    if args.subscribe:
        sns = boto3.client("sns", region_name=args.region, endpoint_url=args.endpoint_url)
        subscribe(sqs, sns, name, args)
    consumer = Consumer(sqs, sqs.get_queue_url(QueueName=name)["QueueUrl"], args)
    while True:
        if not consumer.step() and args.until_idle and not consumer.in_queue():
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
