"""Wire format 1 (docs/wire-format.md) against what django-events really sends.

Events are published and relayed through the real Redis transport (the shared Redis,
under a unique prefix) and the SNS + SQS transport (moto's server); the raw messages are
checked against the spec's JSON Schema, and the plain consumers of examples/plain_python
run as subprocesses that cannot import Django, read a group's events and acknowledge them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
from django.db import transaction

from django_events import publish
from django_events.engine.relay import Relay
from django_events.outbox import handling
from django_events.registry import registry
from django_events.transports import transports
from django_events.transports.redis import CONSUMER_GROUP, RedisStreamsTransport
from django_events.transports.sqs import SnsSqsTransport

from . import redis_support
from .redis_support import REDIS_URL, delete_prefix, needs_redis
from .sqs_server import aws_env, events_settings, moto_endpoint, unique_prefix
from .testapp import typed_events

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "wire-format.md"
SCHEMA = json.loads((ROOT / "docs" / "wire-format-1.schema.json").read_text())
EXAMPLES = ROOT / "examples" / "plain_python"
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
ENTRY_FIELDS = {"id", "type", "event", "attempts"}  # docs/wire-format.md, "A stream entry"
MESSAGE_ATTRIBUTES = {"type", "groups", "key"}  # "A message" (unsigned)

# Runs an example as its own interpreter (-I: no PYTHONPATH, no user site, no cwd) that
# cannot import Django or django-events, and says so on exit if anything did.
BOOT = """
import importlib.abc, os, runpy, sys
FORBIDDEN = {"django", "django_events", "tests"}
class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in FORBIDDEN:
            raise ImportError(f"a plain consumer imported {name}")
sys.meta_path.insert(0, Forbid())
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
try:
    runpy.run_path(script, run_name="__main__")
finally:
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in FORBIDDEN)
    if loaded:
        print("imported", loaded, file=sys.stderr)
        os._exit(3)
"""


def run_example(script: str, *args: str, env: dict[str, str] | None = None) -> list[dict]:
    """Run ``examples/plain_python/<script>``; its outcomes, one dict per JSON line."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", BOOT, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        cwd="/",
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


def publish_samples() -> dict[str, Any]:
    """Events of every shape the spec describes, for groups ``alpha`` and ``typed``."""
    with transaction.atomic():
        root = publish("test.happened", {"n": 1, "text": "naïve ☃", "nested": {"a": [1, 2.5]}})
        keyed = publish("test.happened", {"n": 2}, key="order-42", metadata={"tenant": "eu"})
        with handling(root):
            caused = publish("test.happened", {"n": 3})
        old = publish(
            typed_events.ParcelShippedV1(parcel_id=7, weight_grams=1200), allow_old_version=True
        )
        new = publish(
            typed_events.ParcelShipped(parcel_id=8, weight_kg=Decimal("1.5"), carrier="dhl")
        )
    return {"alpha": [root, keyed, caused], "typed": [old, new]}


def spec_errors(envelope: dict[str, Any]) -> dict[str, str]:
    """Attribute -> what breaks the schema; attributes the spec does not list, too."""
    errors = {"/".join(map(str, e.path)): e.message for e in VALIDATOR.iter_errors(envelope)}
    for name in set(envelope) - set(SCHEMA["properties"]):
        errors[name] = "an attribute the spec does not list"
    return errors


def assert_valid(envelope: dict[str, Any], *, tolerate: frozenset[str] = frozenset()) -> None:
    errors = {name: e for name, e in spec_errors(envelope).items() if name not in tolerate}
    assert errors == {}, json.dumps(envelope)


def assert_matches(envelope: dict[str, Any], event: Any) -> None:
    """The fields the spec promises carry the published event."""
    assert envelope["id"] == str(event.id)
    assert envelope["type"] == event.type
    assert envelope["dataversion"] == event.version
    assert envelope.get("partitionkey") == event.key
    assert envelope["data"] == event.data
    assert envelope.get("metadata", {}) == event.metadata
    assert uuid.UUID(envelope["correlationid"]) == event.correlation_id
    causation = envelope.get("causationid")
    assert (causation and uuid.UUID(causation)) == event.causation_id
    occurred = dt.datetime.fromisoformat(envelope["time"])
    assert occurred.replace(tzinfo=occurred.tzinfo or dt.timezone.utc) == event.occurred_at
    assert envelope["source"] == event.source


def assert_consumed(outcomes: list[dict], events: list[Any]) -> None:
    handled = [o for o in outcomes if o["outcome"] == "handled"]
    assert sorted(o["id"] for o in handled) == sorted(str(e.id) for e in events)
    by_id = {o["id"]: o for o in handled}
    for event in events:
        got = by_id[str(event.id)]
        assert (got["type"], got["version"], got["key"], got["data"], got["attempt"]) == (
            event.type,
            event.version,
            event.key,
            event.data,
            1,
        )


# -- the spec itself ---------------------------------------------------------------------


def spec_table() -> dict[str, dict[str, str]]:
    """The envelope table of docs/wire-format.md: attribute -> its columns."""
    text = SPEC.read_text().split("## The envelope", 1)[1].split("\n\n", 3)[2]
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = cells[0].strip("`")
        rows[name] = {"kind": cells[1], "json": cells[2], "present": cells[3]}
    return rows


def test_the_spec_table_and_the_schema_agree():
    table = spec_table()
    properties = SCHEMA["properties"]
    assert set(table) == set(properties)
    always = {name for name, row in table.items() if row["present"] == "always"}
    assert always == set(SCHEMA["required"])
    for name, row in table.items():
        wanted = properties[name].get("type") or SCHEMA["$defs"]["uuid"]["type"]
        assert row["json"] == wanted, name
        assert (row["kind"] == "extension") == (name not in CLOUDEVENTS_ATTRIBUTES), name


CLOUDEVENTS_ATTRIBUTES = {
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
}


def test_the_spec_example_is_valid():
    example = SPEC.read_text().split("An example, as it arrives:", 1)[1]
    body = re.search(r"```json\n(.*?)```", example, re.S)
    assert body is not None
    assert_valid(json.loads(body[1]))


@pytest.mark.parametrize(
    "group", ["alpha", "billing.eu", "billing-eu", "a:b", "x" * 30], ids=lambda g: g[:12]
)
def test_the_examples_name_queues_and_streams_as_the_transports_do(group: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import redis_consumer
        import sqs_consumer
    finally:
        sys.path.remove(str(EXAMPLES))
    sqs = SnsSqsTransport("t", {"prefix": "shop-", "region": "us-east-1"})
    fifo = SnsSqsTransport("t", {"prefix": "shop-", "region": "us-east-1", "fifo": True})
    for transport, is_fifo in ((sqs, False), (fifo, True)):
        for dead in (False, True):
            assert sqs_consumer.queue_name("shop-", group, fifo=is_fifo, dead=dead) == (
                transport.queue_name(group, dead=dead)
            )
    rs = RedisStreamsTransport("t", {"url": REDIS_URL, "prefix": "shop"})
    assert redis_consumer.stream_key("shop", group) == rs.stream(group)
    assert redis_consumer.owed_key("shop", group) == rs.owed(group)
    assert redis_consumer.subscriptions_key("shop") == rs.subscription_store().hash
    assert redis_consumer.CONSUMER_GROUP == CONSUMER_GROUP


# -- Redis Streams -----------------------------------------------------------------------


@pytest.fixture
def on_redis(settings: Any) -> Iterator[RedisStreamsTransport]:
    prefix = redis_support.unique_prefix()
    settings.DJANGO_EVENTS = redis_support.events_settings(prefix)
    transport = transports["default"]
    assert isinstance(transport, RedisStreamsTransport)
    yield transport
    transport.close()
    delete_prefix(prefix)


def owed_events(transport: RedisStreamsTransport, group: str) -> list[str]:
    members = redis.Redis.from_url(REDIS_URL).zrange(transport.owed(group), 0, -1)
    return [m.decode() for m in members if not m.startswith(b"marker:")]


@needs_redis()
def test_redis_entries_follow_the_spec(on_redis: RedisStreamsTransport):
    published = publish_samples()
    Relay().run_once()
    client = redis.Redis.from_url(REDIS_URL)
    for group, events in published.items():
        entries = client.xrange(on_redis.stream(group))
        assert len(entries) == len(events)
        for (_, raw), event in zip(entries, events, strict=True):
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            assert set(fields) == ENTRY_FIELDS
            assert (fields["id"], fields["type"], fields["attempts"]) == (
                str(event.id),
                event.type,
                "0",
            )
            envelope = json.loads(fields["event"])
            assert_valid(envelope)
            assert_matches(envelope, event)
        names = {g["name"].decode() for g in client.xinfo_groups(on_redis.stream(group))}
        assert names == {CONSUMER_GROUP}


@needs_redis()
def test_redis_times_and_ids_follow_the_spec_on_every_database(on_redis: RedisStreamsTransport):
    published = publish_samples()
    Relay().run_once()
    client = redis.Redis.from_url(REDIS_URL)
    for group in published:
        for _, raw in client.xrange(on_redis.stream(group)):
            envelope = json.loads(raw[b"event"])
            deviations = sorted(
                {"time", "correlationid", "causationid"} & set(spec_errors(envelope))
            )
            assert deviations == [], json.dumps(envelope)


@needs_redis()
def test_a_plain_redis_consumer_reads_a_group_and_acknowledges(on_redis: RedisStreamsTransport):
    published = publish_samples()
    Relay().run_once()
    args = ["--url", REDIS_URL, "--prefix", on_redis.prefix, "--block", "0.05", "--until-idle"]
    for group, events in published.items():
        outcomes = run_example("redis_consumer.py", *args, "--group", group)
        assert_consumed(outcomes, events)
        client = redis.Redis.from_url(REDIS_URL)
        assert client.xpending(on_redis.stream(group), CONSUMER_GROUP)["pending"] == 0
        assert owed_events(on_redis, group) == [], "acknowledged events are no longer owed"
    # So the relay finds nothing lost and publishes nothing again.
    on_redis.trim(published)
    assert on_redis.recovery.recover_lost() == []
    assert run_example("redis_consumer.py", *args, "--group", "alpha") == []


@needs_redis()
def test_a_plain_redis_consumer_subscribes_by_itself(on_redis: RedisStreamsTransport):
    """Wire format 1.1: a consumer in another service, without Django, declares its group
    in ``<prefix>:subscriptions``; the relay (whose code knows nothing of it) feeds it."""
    args = ["--url", REDIS_URL, "--prefix", on_redis.prefix, "--block", "0.05", "--until-idle"]
    subscribed = [*args, "--group", "invoices", "--service", "billing"]
    assert run_example("redis_consumer.py", *subscribed, "--subscribe", "test.happened") == []
    published = publish_samples()
    Relay().run_once()
    assert_consumed(run_example("redis_consumer.py", *subscribed), published["alpha"])
    assert owed_events(on_redis, "invoices") == []


@needs_redis()
def test_a_plain_redis_consumer_retries_then_dead_letters(on_redis: RedisStreamsTransport):
    event = publish("test.limited", {"n": 1})
    Relay().run_once()
    outcomes = run_example(
        "redis_consumer.py",
        *("--url", REDIS_URL, "--prefix", on_redis.prefix, "--group", "limited"),
        *("--fail-type", "test.limited", "--max-attempts", "2", "--retry-after", "0.1"),
        *("--block", "0.05", "--until-idle"),
    )
    assert [(o["outcome"], o["id"], o["attempt"]) for o in outcomes] == [
        ("retry", str(event.id), 1),
        ("dead-lettered", str(event.id), 2),
    ]
    client = redis.Redis.from_url(REDIS_URL)
    assert client.xpending(on_redis.stream("limited"), CONSUMER_GROUP)["pending"] == 0
    assert owed_events(on_redis, "limited") == []


# -- SNS + SQS ---------------------------------------------------------------------------


@pytest.fixture
def on_sqs(settings: Any, moto_endpoint: str, aws_env: dict[str, str]) -> SnsSqsTransport:
    settings.DJANGO_EVENTS = events_settings(moto_endpoint, unique_prefix())
    transport = transports["default"]
    assert isinstance(transport, SnsSqsTransport)
    transport.setup(registry.subscriptions())
    return transport


def sqs_args(transport: SnsSqsTransport, group: str) -> list[str]:
    return [
        *("--endpoint-url", str(transport.endpoint_url), "--region", str(transport.region)),
        *("--prefix", transport.prefix, "--group", group, "--wait", "1", "--until-idle"),
    ]


def in_queue(transport: SnsSqsTransport, group: str) -> int:
    state = transport.status([group])[group]
    return state.pending + state.in_flight


def test_sqs_messages_follow_the_spec(on_sqs: SnsSqsTransport):
    published = publish_samples()
    Relay().run_once()
    sqs = on_sqs._client("sqs")
    for group, events in published.items():
        url = sqs.get_queue_url(QueueName=on_sqs.queue_name(group))["QueueUrl"]
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )["Messages"]
        by_id = {json.loads(m["Body"])["id"]: m for m in messages}
        assert sorted(by_id) == sorted(str(e.id) for e in events)
        for event in events:
            message = by_id[str(event.id)]
            envelope = json.loads(message["Body"])
            assert_valid(envelope)
            assert_matches(envelope, event)
            attributes = message["MessageAttributes"]
            assert set(attributes) <= MESSAGE_ATTRIBUTES
            assert attributes["type"] == {"DataType": "String", "StringValue": event.type}
            # Format 2: the relay names no groups; each subscription takes the event by type.
            assert "groups" not in attributes
            key = attributes.get("key")
            assert (key and key["StringValue"]) == event.key


def test_a_plain_sqs_consumer_reads_a_group_and_deletes(
    on_sqs: SnsSqsTransport, aws_env: dict[str, str]
):
    published = publish_samples()
    Relay().run_once()
    for group, events in published.items():
        assert in_queue(on_sqs, group) == len(events)
        outcomes = run_example("sqs_consumer.py", *sqs_args(on_sqs, group), env=aws_env)
        assert_consumed(outcomes, events)
        assert in_queue(on_sqs, group) == 0, "every message was deleted"


def test_a_plain_sqs_consumer_subscribes_on_its_own_and_the_publisher_changes_nothing(
    on_sqs: SnsSqsTransport, aws_env: dict[str, str]
):
    """Wire format 2: a consumer without Django joins by subscribing its own queue; the
    relay, whose code never heard of group ``audit``, reaches it with its one publish."""
    args = [*sqs_args(on_sqs, "audit"), "--max-attempts", "3"]
    assert run_example("sqs_consumer.py", *args, "--subscribe", "test.happened", env=aws_env) == []
    event = publish("test.happened", {"n": 1})
    publish("test.chained", {"n": 2})  # a type audit did not subscribe to
    Relay().run_once()
    outcomes = run_example("sqs_consumer.py", *args, env=aws_env)
    assert [(o["outcome"], o["id"]) for o in outcomes] == [("handled", str(event.id))]
    assert in_queue(on_sqs, "alpha") == 1, "the publisher's own groups got it too"
    on_sqs.redeliver(event.id, "alpha")  # a targeted redelivery does not reach audit
    assert run_example("sqs_consumer.py", *args, env=aws_env) == []


def test_a_plain_sqs_consumer_retries_then_dead_letters(
    on_sqs: SnsSqsTransport, aws_env: dict[str, str]
):
    event = publish("test.limited", {"n": 1})  # group limited: max_attempts=2
    Relay().run_once()
    outcomes = run_example(
        "sqs_consumer.py",
        *sqs_args(on_sqs, "limited"),
        *("--fail-type", "test.limited", "--retry-after", "1"),
        env=aws_env,
    )
    assert [(o["outcome"], o["id"], o["attempt"]) for o in outcomes] == [
        ("retry", str(event.id), 1),
        ("dead-lettered", str(event.id), 2),
    ]
    assert in_queue(on_sqs, "limited") == 0
    dead = on_sqs.status(["limited"])["limited"]
    assert dead.parked == 0, "dead-lettered by the consumer, not redriven"


def test_an_undecodable_message_is_a_dead_letter_not_a_retry(
    on_sqs: SnsSqsTransport, aws_env: dict[str, str]
):
    sqs = on_sqs._client("sqs")
    url = sqs.get_queue_url(QueueName=on_sqs.queue_name("alpha"))["QueueUrl"]
    bodies = ['{"specversion": "1.0", "id": "x"', '{"specversion": "2.0"}', "[NaN]"]
    later = {"specversion": "1.0", "id": str(uuid.uuid4()), "type": "test.happened", "data": {}}
    bodies.append(json.dumps({**later, "time": "2026-12-05T07:14:48+00:00", "wireformat": 2}))
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    outcomes = run_example("sqs_consumer.py", *sqs_args(on_sqs, "alpha"), env=aws_env)
    assert [o["outcome"] for o in outcomes] == ["dead-lettered"] * len(bodies)
    assert in_queue(on_sqs, "alpha") == 0


def test_one_writer_gives_every_transport_the_same_envelope():
    """Redis, SNS + SQS and RabbitMQ send the envelope ``cloudevent_json`` writes, and it
    reads back as the event it was (a key shaped like a UUID stays the key it was)."""
    from django_events.envelope import from_cloudevent
    from django_events.signing import Signing
    from django_events.transports.base import Outgoing, cloudevent_json
    from django_events.transports.rabbitmq.messages import to_message
    from django_events.transports.redis.transport import _fields
    from django_events.transports.sqs import SnsSqsTransport as Sqs

    event_id = uuid.uuid4()
    outgoing = Outgoing(
        position=1,
        event_id=event_id,
        type="order.placed",
        key="0123456789abcdef0123456789abcdef",
        version=2,
        data='{"total":"9.50","name":"Zoë"}',
        metadata='{"tenant":"t1","traceparent":"00-' + "1" * 32 + "-" + "2" * 16 + '-01"}',
        occurred_at=dt.datetime(2026, 1, 2, 3, 4, 5),  # naive, as SQLite hands it back
        source="shop",
        causation_id=uuid.UUID(int=7),
    )
    written = cloudevent_json(outgoing, str(event_id))
    fields = _fields(outgoing)
    assert fields[fields.index("event") + 1] == written
    assert to_message(outgoing, Signing())[0] == written.encode()
    entry, _ = Sqs("wire", {})._entry(outgoing, [], fresh=True)
    assert json.loads(entry["Message"]) == json.loads(written)  # ASCII-escaped, same JSON
    event = from_cloudevent(written, 10_000)
    assert (event.id, event.type, event.version, event.key) == (
        event_id,
        "order.placed",
        2,
        "0123456789abcdef0123456789abcdef",
    )
    assert event.occurred_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert event.data == {"total": "9.50", "name": "Zoë"}
    assert event.metadata["tenant"] == "t1" and event.metadata["traceparent"].startswith("00-")
    assert json.loads(written)["traceparent"].startswith("00-"), "trace context on the wire"
    assert event.causation_id == uuid.UUID(int=7)
