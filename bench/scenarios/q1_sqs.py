"""Q1: the SNS/SQS transport against raw boto3 doing the same batched calls, on one moto
server started for the run in a process of its own (in this one, it would share the GIL
with the code measured).

Per repetition, ``n`` events go through the topic into one group's queue and are consumed
and deleted, ``ROUND`` at a time. The transport's path is ``publish()`` (what the relay
calls), then ``claim()`` and ``ack()`` per event (what the worker calls) until all are
back; the baseline builds the same messages and calls ``PublishBatch``, ``ReceiveMessage`` and
``DeleteMessageBatch`` directly, ten at a time. API calls are counted with botocore's
``before-call`` event on the transport's own clients. The database is not involved: its
share of the worker's cost is measured by S4.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

from bench import pg
from bench.runner import Context, Goal, Row, Stats, alternate, na_row, ratio_row

ID = "Q1"
TITLE = "SNS + SQS transport, publish then consume"
BASELINE = "raw boto3 PublishBatch / ReceiveMessage / DeleteMessageBatch"
GOAL: Goal | None = Goal(">=", 0.8)
PUBLISH_GOAL = Goal("<=", 0.11, on="value", unit="calls")
CONSUME_GOAL = Goal("<=", 0.25, on="value", unit="calls")
TRANSPORT = "django_events.transports.sqs"
EVENT_TYPE = "bench.sqs"
GROUP = "q1"
ROUND = 100
CLAIM = 50
"""Events per claim: the worker's default ``BATCH_SIZE``."""
"""Events published, then consumed, per round: moto slows down as a queue grows (a receive
scans every message it holds), AWS does not, so the queue is kept short."""


def run(ctx: Context) -> list[Row]:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
        return [na_row(ID, TITLE, BASELINE, GOAL, "not measured: boto3 and moto[server] needed")]
    from django_events.registry import Handler, registry

    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(name, value)
    registry.add(Handler(func=_noop, group=GROUP, event_type=EVENT_TYPE))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, server)
        return _measure(ctx, f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=15)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout:.0f}s")


def _noop(event: Any) -> None:
    """The bench group's handler; never called (the worker is not part of Q1)."""


def _measure(ctx: Context, endpoint: str) -> list[Row]:
    from django_events.registry import registry
    from django_events.transports.base import Outgoing
    from django_events.transports.sqs import SnsSqsTransport

    # The same size in both modes: moto's calls slow down with every message a queue has
    # ever held (2,000 events take minutes, not four times 500's seconds); AWS's do not.
    n = 500
    subscriptions = registry.subscriptions()
    now = dt.datetime.now(dt.timezone.utc)
    events = [
        Outgoing(
            position=i,
            event_id=uuid.uuid4(),
            type=EVENT_TYPE,
            key=f"order-{i}",
            data=pg.PAYLOAD_TEXT,
            occurred_at=now,
            source="bench",
        )
        for i in range(n)
    ]
    calls = {"publish": [], "consume": []}  # type: dict[str, list[float]]
    rounds = [events[i : i + ROUND] for i in range(0, n, ROUND)]

    def fresh() -> SnsSqsTransport:
        options = {"endpoint_url": endpoint, "region": "us-east-1", "wait_time": 0}
        transport = SnsSqsTransport("bench", {**options, "prefix": f"q{uuid.uuid4().hex[:8]}-"})
        transport.setup(subscriptions)
        return transport

    def transport_run() -> float:
        transport = fresh()
        counted = _counter(transport)
        started = time.perf_counter()
        for batch in rounds:
            counted["phase"] = "publish"
            transport.publish(batch, subscriptions)
            counted["phase"] = "consume"
            got = 0
            while got < len(batch):
                claimed = transport.claim([GROUP], CLAIM, 30)
                for item in claimed:
                    transport.ack(item)
                got += len(claimed)
        transport.close()
        seconds = time.perf_counter() - started
        calls["publish"].append(counted["publish"] / n)
        calls["consume"].append(counted["consume"] / n)
        return n / seconds

    def raw_run() -> float:
        transport = fresh()
        sns, sqs = transport._client("sns"), transport._client("sqs")
        topic, queue = transport.topic_arn, transport._queue_url(GROUP)
        groups = json.dumps([GROUP])  # the subscription's filter policy matches on it
        started = time.perf_counter()
        for batch in rounds:
            for start in range(0, len(batch), 10):
                entries = [
                    {
                        "Id": str(i),
                        "Message": _body(e),
                        "MessageAttributes": {
                            "type": {"DataType": "String", "StringValue": e.type},
                            "groups": {"DataType": "String.Array", "StringValue": groups},
                            "key": {"DataType": "String", "StringValue": str(e.key)},
                        },
                    }
                    for i, e in enumerate(batch[start : start + 10])
                ]
                sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
            # As the worker does: receive a batch of up to CLAIM (ten at a time), then
            # delete it ten at a time (moto's receive scans messages in flight, so the
            # order matters there; on AWS it does not).
            got = 0
            while got < len(batch):
                received: list[dict[str, Any]] = []
                while len(received) < CLAIM:
                    messages = sqs.receive_message(
                        QueueUrl=queue,
                        MaxNumberOfMessages=10,
                        VisibilityTimeout=30,
                        WaitTimeSeconds=0,
                        # What a consumer that retries needs: the receive count is the attempt.
                        MessageSystemAttributeNames=["ApproximateReceiveCount"],
                        MessageAttributeNames=["type"],
                    ).get("Messages", [])
                    received += messages
                    if len(messages) < 10:
                        break
                for m in received:
                    json.loads(m["Body"])  # a consumer reads what it receives
                for start in range(0, len(received), 10):
                    sqs.delete_message_batch(
                        QueueUrl=queue,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                            for i, m in enumerate(received[start : start + 10])
                        ],
                    )
                got += len(received)
        return n / (time.perf_counter() - started)

    got = alternate(ctx, {"raw": raw_run, "transport": transport_run})
    measured = calls["publish"][1:], calls["consume"][1:]  # without the warm-up
    note = (
        f"{n:,} events per repetition in rounds of {ROUND} (publish, then consume), one group, "
        "moto server in its own process"
    )
    return [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "throughput",
            "events/s",
            got["transport"],
            got["raw"],
            GOAL,
            higher_is_better=True,
            notes=note + "; publish() + claim()/ack() against the same calls made by hand",
        ),
        _calls_row("API calls per published event", measured[0], PUBLISH_GOAL, note),
        _calls_row("API calls per consumed event", measured[1], CONSUME_GOAL, note),
    ]


def _calls_row(metric: str, values: list[float], goal: Goal, note: str) -> Row:
    return Row(
        id=ID,
        scenario=TITLE,
        baseline="—",
        metric=metric,
        unit="calls",
        candidate=Stats.of(values),
        goal=goal,
        notes=note + "; counted with botocore's before-call event",
    )


def _counter(transport: Any) -> dict[str, Any]:
    """Calls the transport's clients make, by phase (``counted["phase"]`` names it)."""
    counted: dict[str, Any] = {"phase": "publish", "publish": 0, "consume": 0}

    def count(**kwargs: Any) -> None:
        counted[counted["phase"]] += 1

    for service in ("sns", "sqs"):
        transport._client(service).meta.events.register("before-call", count)
    return counted


def _body(event: Any) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(event.event_id),
            "type": event.type,
            "source": event.source,
            "time": event.occurred_at.isoformat(),
            "datacontenttype": "application/json",
            "dataversion": 1,
            "partitionkey": event.key,
            "data": json.loads(event.data),
        },
        separators=(",", ":"),
    )
