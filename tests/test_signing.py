"""Trust between services (docs/services.md): HMAC signatures on Redis and SNS + SQS.

Real parts: the shared Redis (forged entries XADDed straight into a group's stream) and
moto's SNS/SQS server (forged messages sent straight to a group's queue), between healthy
signed events; the worker and the plain-Python example consumers must dead-letter each
forgery once with its reason and handle the healthy events once.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_events import publish
from django_events.conf import parse
from django_events.engine.relay import Relay
from django_events.exceptions import EventsConfigurationError
from django_events.models import DeadLetter
from django_events.registry import registry
from django_events.transports import transports

from .redis_support import REDIS_URL, delete_prefix, events_settings, needs_redis, unique_prefix
from .sqs_server import aws_env, moto_endpoint
from .sqs_server import events_settings as sqs_settings
from .sqs_server import unique_prefix as sqs_prefix
from .test_hostile_messages import handled_once, healthy, run_worker
from .test_wire_format import ENTRY_FIELDS, EXAMPLES, MESSAGE_ATTRIBUTES, SPEC, run_example

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = pytest.mark.django_db(transaction=True)

OLD = "s3cret-old-" + "o" * 32
NEW = "s3cret-new-" + "n" * 32
ONE = {"SIGNING_KEYS": {"2026-06": OLD}}
BOTH = {"SIGNING_KEYS": {"2026-06": OLD, "2026-12": NEW}, "SIGNING_KEY_ID": "2026-12"}
ONLY_NEW = {"SIGNING_KEYS": {"2026-12": NEW}}


def unverified(contains: str, group: str = "alpha") -> DeadLetter:
    letters = list(DeadLetter.objects.filter(group=group))
    assert len(letters) == 1, [(d.error_class, d.error_message) for d in letters]
    assert letters[0].error_class == "UnverifiedMessage", letters[0].error_message
    assert contains in letters[0].error_message, letters[0].error_message
    return letters[0]


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"SIGNING_KEYS": ["k"]}, "['SIGNING_KEYS'] must be a dict"),
        ({"SIGNING_KEYS": {"a:b": OLD}}, "key id 'a:b'"),
        ({"SIGNING_KEYS": {"x" * 33: OLD}}, "1 to 32"),
        ({"SIGNING_KEYS": {"k": "short-secret"}}, "['SIGNING_KEYS']['k'] must be a str or bytes"),
        ({"SIGNING_KEYS": {"k": 12345}}, "got int"),
        ({"SIGNING_KEYS": {"a": OLD, "b": NEW}}, "['SIGNING_KEY_ID'] must name"),
        ({**ONE, "SIGNING_KEY_ID": "2026-12"}, "['SIGNING_KEY_ID'] is '2026-12'"),
        ({**ONE, "REQUIRE_SIGNATURES": "yes"}, "['REQUIRE_SIGNATURES'] must be True"),
        ({"REQUIRE_SIGNATURES": True}, "SIGNING_KEYS is empty"),
    ],
    ids=[
        "not-dict",
        "id-colon",
        "id-long",
        "secret-short",
        "secret-int",
        "two-no-id",
        "id-unknown",
        "require-str",
        "require-nothing",
    ],
)
def test_settings_errors_name_the_key_and_never_the_secret(raw: dict[str, Any], names: str):
    with pytest.raises(EventsConfigurationError) as caught:
        parse(raw)
    assert names in str(caught.value)
    assert "short-secret" not in str(caught.value) and OLD not in str(caught.value)


def test_settings_defaults_and_secrets_stay_out_of_repr():
    assert not parse({}).signing.enabled
    one = parse(ONE).signing
    assert (one.key_id, one.require) == ("2026-06", True)
    both = parse({**BOTH, "REQUIRE_SIGNATURES": False}).signing
    assert (both.key_id, both.require) == ("2026-12", False)
    assert OLD not in repr(parse(BOTH)) and NEW not in repr(parse(BOTH))


# -- Redis Streams -----------------------------------------------------------------------


@pytest.fixture
def on_redis() -> Iterator[Any]:
    prefix = unique_prefix()
    base = {**events_settings(prefix), "BACKOFF_BASE": 0}  # read before any override

    def configure(keys: dict[str, Any]) -> Any:
        transports.reset()
        override = override_settings(DJANGO_EVENTS={**base, **keys})
        override.enable()
        stack.append(override)
        transport = transports["default"]
        transport.setup(registry.subscriptions())
        return transport

    stack: list[Any] = []
    yield configure
    for override in reversed(stack):
        override.disable()
    transports.reset()
    delete_prefix(prefix)


def forge_entry(transport: Any, how: str) -> None:
    """XADD a forgery into group alpha's stream, made from a real signed entry."""
    client = transport.client
    _, raw = client.xrange(transport.stream("alpha"), count=1)[0]
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    fresh = str(uuid.uuid4())  # a new event id, so the inbox cannot hide the forgery
    fields["event"] = fields["event"].replace(fields["id"], fresh)
    fields["id"] = fresh
    signature = fields["signature"]
    key_id, mac = signature.removeprefix("v1=").split(":")
    if how == "unsigned":
        del fields["signature"]
    elif how == "bad-signature":
        fields["signature"] = f"v1={key_id}:{'A' * len(mac)}"
    elif how == "unknown-key":
        fields["signature"] = f"v1=stolen:{mac}"
    elif how == "tampered-body":  # the real signature of the real body, over another body
        fields["event"] = re.sub(r'"n":\d+', '"n":666', fields["event"])
        fields["signature"] = signature
    elif how == "garbled":
        fields["signature"] = "not a signature"
    client.xadd(transport.stream("alpha"), fields)


def replay_entry(transport: Any, field: str, value: str) -> None:
    """XADD a real signed entry again, body and signature untouched, one field altered."""
    _, raw = transport.client.xrange(transport.stream("alpha"), count=1)[0]
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    fields[field] = value
    transport.client.xadd(transport.stream("alpha"), fields)


@needs_redis()
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("unsigned", "not signed"),
        ("bad-signature", "does not match"),
        ("unknown-key", "key id 'stolen'"),
        ("tampered-body", "does not match"),
        ("garbled", "not of the form"),
    ],
)
def test_redis_forged_entry_is_one_dead_letter_between_healthy_ones(
    on_redis: Any, how: str, reason: str
):
    transport = on_redis(ONE)
    ids = healthy()
    Relay().run_once()
    forge_entry(transport, how)
    ids += healthy(2)
    Relay().run_once()
    run_worker(["alpha"])
    handled_once(ids)
    unverified(reason)


@needs_redis()
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("type", "test.limited", "type field 'test.limited'"),
        ("id", "00000000-0000-4000-8000-000000000001", "id field"),
    ],
)
def test_redis_replayed_body_with_altered_fields_is_refused(
    on_redis: Any, field: str, value: str, reason: str
):
    transport = on_redis(ONE)
    ids = healthy()
    Relay().run_once()
    replay_entry(transport, field, value)
    run_worker(["alpha"])
    handled_once(ids)
    unverified(reason)


@needs_redis()
def test_redis_key_rotation_old_and_new_accepted_a_removed_key_refused(on_redis: Any):
    on_redis(ONE)  # the publisher signs with 2026-06
    ids = healthy(2)
    Relay().run_once()
    transport = on_redis(BOTH)  # step 2 and 3: both accepted, 2026-12 signs
    ids += healthy(2)
    Relay().run_once()
    signatures = [
        raw[b"signature"].decode() for _, raw in transport.client.xrange(transport.stream("alpha"))
    ]
    assert [s.split(":")[0] for s in signatures] == ["v1=2026-06"] * 2 + ["v1=2026-12"] * 2
    run_worker(["alpha"])
    handled_once(ids)
    on_redis(ONE)  # a late publisher still on the old key ...
    late = healthy(1)
    Relay().run_once()
    on_redis(ONLY_NEW)  # ... is refused once 2026-06 is removed
    run_worker(["alpha"])
    handled_once(ids)
    letter = unverified("key id '2026-06', which is not in SIGNING_KEYS")
    assert letter.event_id == late[0]


@needs_redis()
def test_redis_worker_without_keys_ignores_signatures_and_optional_mode_takes_unsigned(
    on_redis: Any,
):
    transport = on_redis(ONE)
    ids = healthy(2)
    Relay().run_once()
    on_redis({})  # a consumer not yet given keys (keys roll out publisher first)
    run_worker(["alpha"])
    handled_once(ids)
    more = healthy(1)
    Relay().run_once()  # unsigned: this publisher has no keys
    assert b"signature" not in transport.client.xrange(transport.stream("alpha"))[-1][1]
    on_redis({**ONE, "REQUIRE_SIGNATURES": False})
    forge_entry(transport, "bad-signature")  # optional, yet a wrong signature is refused
    run_worker(["alpha"])
    handled_once(ids + more)
    unverified("does not match")


# -- SNS + SQS ---------------------------------------------------------------------------


@pytest.fixture
def on_sqs(moto_endpoint: str, aws_env: dict[str, str]) -> Iterator[Any]:
    prefix = sqs_prefix()
    stack: list[Any] = []

    def configure(keys: dict[str, Any]) -> Any:
        transports.reset()
        override = override_settings(DJANGO_EVENTS={**sqs_settings(moto_endpoint, prefix), **keys})
        override.enable()
        stack.append(override)
        transport = transports["default"]
        transport.setup(registry.subscriptions())
        return transport

    yield configure
    for override in reversed(stack):
        override.disable()
    transports.reset()


def send(transport: Any, body: str, signature: str | None, **attributes: str) -> None:
    tags = {name: {"DataType": "String", "StringValue": v} for name, v in attributes.items()}
    if signature is not None:
        tags["signature"] = {"DataType": "String", "StringValue": signature}
    transport._client("sqs").send_message(
        QueueUrl=transport._queue_url("alpha"), MessageBody=body, MessageAttributes=tags
    )


def envelope(**more: Any) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "elsewhere",
            "type": "test.happened",
            "time": "2026-12-05T07:14:48+00:00",
            "datacontenttype": "application/json",
            "dataversion": 1,
            "data": {"n": 666},
            **more,
        }
    )


def sign(body: str, keys: dict[str, Any]) -> str:
    return parse(keys).signing.sign(body)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("unsigned", "not signed"),
        ("other-secret", "does not match"),
        ("unknown-key", "key id 'stolen'"),
        ("tampered-body", "does not match"),
        ("type-attribute", "type attribute 'test.limited'"),
        ("key-attribute", "key attribute 'other'"),
    ],
)
def test_sqs_forged_message_is_one_dead_letter_between_healthy_ones(
    on_sqs: Any, how: str, reason: str
):
    transport = on_sqs(ONE)
    ids = healthy()
    Relay().run_once()
    body = envelope(partitionkey="order-1")
    good = sign(body, ONE)
    tags = {"type": "test.happened", "key": "order-1"}
    if how == "unsigned":
        send(transport, body, None, **tags)
    elif how == "other-secret":
        send(transport, body, sign(body, {"SIGNING_KEYS": {"2026-06": NEW}}), **tags)
    elif how == "unknown-key":
        send(transport, body, good.replace("2026-06", "stolen"), **tags)
    elif how == "tampered-body":
        send(transport, body.replace("666", "667"), good, **tags)
    elif how == "type-attribute":  # a signed body replayed under another type
        send(transport, body, good, **{**tags, "type": "test.limited"})
    elif how == "key-attribute":
        send(transport, body, good, **{**tags, "key": "other"})
    ids += healthy(2)
    Relay().run_once()
    run_worker(["alpha"], rounds=4)
    handled_once(ids)
    unverified(reason)


def test_sqs_key_rotation_old_and_new_accepted_a_removed_key_refused(on_sqs: Any):
    on_sqs(ONE)
    ids = healthy(2)
    Relay().run_once()
    transport = on_sqs(BOTH)
    ids += healthy(2)
    Relay().run_once()
    run_worker(["alpha"], rounds=4)
    handled_once(ids)
    body = envelope()
    send(transport, body, sign(body, ONE), type="test.happened")  # still on the old key
    on_sqs(ONLY_NEW)
    run_worker(["alpha"], rounds=4)
    handled_once(ids)
    unverified("key id '2026-06', which is not in SIGNING_KEYS")


# -- the plain-Python example consumers ----------------------------------------------------

KEY_ENV = {"SIGNING_KEY_2026_06": OLD}


@needs_redis()
def test_plain_redis_consumer_verifies_with_a_signing_key(on_redis: Any):
    transport = on_redis(ONE)
    ids = healthy(2)
    Relay().run_once()
    forge_entry(transport, "tampered-body")
    replay_entry(transport, "type", "test.limited")
    args = ["--url", REDIS_URL, "--prefix", transport.prefix, "--group", "alpha"]
    args += ["--block", "0.05", "--until-idle", "--signing-key", "2026-06"]
    outcomes = run_example("redis_consumer.py", *args, env=KEY_ENV)
    handled = sorted(o["id"] for o in outcomes if o["outcome"] == "handled")
    assert handled == sorted(map(str, ids))
    reasons = sorted(o["reason"] for o in outcomes if o["outcome"] == "dead-lettered")
    assert len(reasons) == 2, outcomes
    assert "does not match" in reasons[0] and "type 'test.limited'" in reasons[1], reasons


def test_plain_sqs_consumer_verifies_with_a_signing_key(on_sqs: Any, aws_env: dict[str, str]):
    transport = on_sqs(ONE)
    ids = healthy(2)
    Relay().run_once()
    body = envelope()
    send(transport, body, None, type="test.happened")
    send(transport, body.replace("666", "667"), sign(body, ONE), type="test.happened")
    args = ["--endpoint-url", str(transport.endpoint_url), "--region", str(transport.region)]
    args += ["--prefix", transport.prefix, "--group", "alpha", "--wait", "1", "--until-idle"]
    outcomes = run_example(
        "sqs_consumer.py", *args, "--signing-key", "2026-06", env={**aws_env, **KEY_ENV}
    )
    handled = sorted(o["id"] for o in outcomes if o["outcome"] == "handled")
    assert handled == sorted(map(str, ids))
    reasons = sorted(o["reason"] for o in outcomes if o["outcome"] == "dead-lettered")
    assert len(reasons) == 2 and "not signed" in reasons[0], reasons
    assert "does not match" in reasons[1], reasons


# -- the spec -------------------------------------------------------------------------------

SIGNATURE_SYNTAX = re.compile(r"^v1=[A-Za-z0-9_.-]{1,32}:[A-Za-z0-9_-]{43}$")


def spec_verify(body: bytes, signature: str) -> None:
    """The signature checked by the examples' own code (docs/wire-format.md, "Signatures"),
    not django-events': the spec, implemented twice, must agree."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import wire
    finally:
        sys.path.remove(str(EXAMPLES))
    assert SIGNATURE_SYNTAX.match(signature), signature
    wire.verify(body, signature, {"2026-06": OLD.encode()})


def test_the_spec_lists_the_signature_field_and_attribute():
    text = SPEC.read_text()
    entry = text.split("### A stream entry", 1)[1].split("\n\n", 2)[1]
    message = text.split("### A message", 1)[1].split("Raw delivery", 1)[0]
    assert "| `signature` |" in entry and "| `signature` | `String` |" in message
    assert "| 1.1 |" in text and "revision 1.1" in text


@needs_redis()
def test_signed_redis_entries_follow_the_spec(on_redis: Any):
    transport = on_redis(ONE)
    healthy(2)
    Relay().run_once()
    for _, raw in transport.client.xrange(transport.stream("alpha")):
        assert {k.decode() for k in raw} == ENTRY_FIELDS | {"signature"}
        spec_verify(raw[b"event"], raw[b"signature"].decode())


def test_signed_sqs_messages_follow_the_spec(on_sqs: Any):
    transport = on_sqs(ONE)
    publish("test.happened", {"n": 1}, key="order-1")
    Relay().run_once()
    messages = transport._client("sqs").receive_message(
        QueueUrl=transport._queue_url("alpha"), MessageAttributeNames=["All"]
    )["Messages"]
    assert len(messages) == 1
    tags = messages[0]["MessageAttributes"]
    # wire format 2: a relay publish names no groups
    assert set(tags) == {"type", "key", "signature"} <= MESSAGE_ATTRIBUTES | {"signature"}
    spec_verify(messages[0]["Body"].encode(), tags["signature"]["StringValue"])
