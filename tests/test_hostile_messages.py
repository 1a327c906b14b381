"""One bad message is one dead letter, on every transport, on the real servers.

Each test plants a message the transport did not write (or garbles a structure it keeps
beside its queue), with healthy events around it, and runs a real ``Worker``: the
worker must not raise, the bad message must become one dead letter naming what was
wrong, and every healthy event must be handled once. Each of these raised out of
``claim`` (or looped for ever) before the transports decoded defensively.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings

from django_events import publish
from django_events.engine.worker import Worker
from django_events.models import DeadLetter, Delivery, EventRecord, GroupCursor, Lease
from django_events.registry import registry
from django_events.text import storable
from django_events.transports import transports
from django_events.transports.base import STORABLE_CHARS, fallback_id
from django_events.transports.log import LogTransport, draw_positions

from .redis_support import delete_prefix, events_settings, needs_redis, unique_prefix
from .sqs_server import aws_env, moto_endpoint
from .sqs_server import events_settings as sqs_settings
from .sqs_server import unique_prefix as sqs_prefix
from .testapp.models import Effect

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = pytest.mark.django_db(transaction=True)


def healthy(count: int = 3) -> list[uuid.UUID]:
    return [publish("test.happened", {"n": n}).id for n in range(count)]


def handled_once(ids: list[uuid.UUID], group: str = "alpha") -> None:
    got = list(Effect.objects.filter(group=group).values_list("event_id", flat=True))
    assert sorted(got) == sorted(ids), "every healthy event handled exactly once"


def one_dead_letter(contains: str, group: str = "alpha") -> DeadLetter:
    letters = list(DeadLetter.objects.filter(group=group))
    assert len(letters) == 1, [(d.error_class, d.error_message) for d in letters]
    letter = letters[0]
    assert letter.error_class == "UndecodableEvent"
    assert contains in letter.error_message, letter.error_message
    return letter


def test_storable_text_has_no_nul_and_no_lone_surrogate():
    text = storable("a\x00b\ud800c" + "x" * 5000, STORABLE_CHARS)
    text.encode()  # no lone surrogate left
    assert "\x00" not in text and "\\x00" in text and "\\ud800" in text
    assert len(text) <= 2100


# -- Redis --------------------------------------------------------------------------------


@pytest.fixture
def redis_transport() -> Iterator[Any]:
    prefix = unique_prefix()
    transports.reset()
    with override_settings(DJANGO_EVENTS={**events_settings(prefix), "BACKOFF_BASE": 0}):
        transport = transports["default"]
        transport.setup(registry.subscriptions())
        yield transport
        transports.reset()
    delete_prefix(prefix)


def run_worker(groups: list[str], rounds: int = 3) -> None:
    for _ in range(rounds):
        Worker(groups).run(once=True)


@needs_redis()
def test_redis_entry_with_bytes_that_are_not_utf8_is_one_dead_letter(redis_transport):
    ids = healthy()
    Worker([], relay=True).step()
    redis_transport.client.xadd(
        redis_transport.stream("alpha"), {b"id": b"\xff\xfe", b"type": b"\x80", b"event": b"\xff"}
    )
    ids += healthy(2)
    run_worker(["alpha"])
    handled_once(ids)
    one_dead_letter("not UTF-8")


@needs_redis()
@pytest.mark.parametrize(
    "member",
    ["not json", "[]", '["id"]', '{"a": 1}', "[[1], 2]", "[" * 5000 + "]" * 5000, "\xff"],
    ids=["text", "empty", "odd", "object", "nested", "deep", "latin1"],
)
def test_redis_delayed_member_it_did_not_write_is_one_dead_letter(redis_transport, member):
    ids = healthy()
    Worker([], relay=True).step()
    raw = member.encode("latin-1") if member == "\xff" else member
    redis_transport.client.zadd(redis_transport.delayed("alpha"), {raw: 0})
    run_worker(["alpha"])
    handled_once(ids)
    one_dead_letter("delayed")
    assert redis_transport.client.zcard(redis_transport.delayed("alpha")) == 0


@needs_redis()
def test_redis_garbled_lease_and_wrong_typed_side_keys_do_not_stop_the_group(redis_transport):
    client = redis_transport.client
    ids = healthy()
    Worker([], relay=True).step()
    client.set(redis_transport.delayed("alpha"), "a string, not a sorted set")
    client.hset(redis_transport.leases("alpha"), "0-1", "not a number")
    run_worker(["alpha"])
    handled_once(ids)
    aside = list(client.scan_iter(match=f"{redis_transport.prefix}:*:garbled*"))
    assert aside, "the wrong-typed key was set aside, not deleted"
    # a lease for an entry that is pending and idle, garbled: the take-over survives it
    client.delete(redis_transport.leases("alpha"))
    more = healthy(2)
    Worker([], relay=True).step()
    taken = redis_transport.claim(["alpha"], 10, 30)
    for item in taken:
        client.hset(redis_transport.leases("alpha"), item.receipt.entry_id, "garbage")
    client.hset(redis_transport.leases("alpha"), "not an entry id", "garbage")
    time.sleep(0.05)  # idle for longer than the 1 ms lease below, however fast the machine
    retaken = redis_transport._orphans(["alpha"], 10, 0.001)  # garbled leases count as none
    assert {c.event_id for c in retaken} == set(more)
    redis_transport.release(retaken)
    redis_transport.trim(["alpha"])  # a lease field that is no entry id is forgotten
    assert client.hlen(redis_transport.leases("alpha")) == 0
    client.delete(redis_transport.owed("alpha"))
    client.set(redis_transport.owed("alpha"), "garbled")
    for _ in range(2):  # the garbled owed set goes aside; then its loss is recovered
        redis_transport.recovery.recover_lost()
    redis_transport.recovery.checkpoint()
    run_worker(["alpha"])
    handled_once(ids + more)


# -- SNS + SQS ----------------------------------------------------------------------------


@pytest.fixture
def sqs(moto_endpoint: str, aws_env: dict[str, str]) -> Iterator[Any]:
    transports.reset()
    with override_settings(DJANGO_EVENTS=sqs_settings(moto_endpoint, sqs_prefix())):
        transport = transports["default"]
        transport.setup(registry.subscriptions())
        yield transport
        transports.reset()


def send(transport: Any, body: str, **attributes: Any) -> None:
    sqs = transport._client("sqs")
    sqs.send_message(
        QueueUrl=transport._queue_url("alpha"), MessageBody=body, MessageAttributes=attributes
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"id": "------------------------------------", "type": 1}', "missing time"),
        ('{"id": "zz", "type": "test.happened"}', "missing"),
        ("not json at all", "not valid JSON"),
        ("[" * 5000 + "]" * 5000, "nests deeper"),
        (json.dumps({"id": str(uuid.uuid4()), "type": 7, "time": [], "data": "x"}), "type"),
        ('{"id": "00000000-0000-0000-0000-00000000000g", "data": {}}', "missing"),
    ],
    ids=["id-of-dashes", "id-not-uuid", "text", "deep", "wrong-types", "id-not-hex"],
)
def test_sqs_body_not_ours_is_one_dead_letter_and_its_batch_mates_are_handled(
    sqs, body: str, reason: str
):
    ids = healthy()
    Worker([], relay=True).step()
    send(sqs, body)
    run_worker(["alpha"], rounds=4)
    handled_once(ids)
    one_dead_letter(reason)


@pytest.mark.parametrize(
    "attributes",
    [
        {"ordered": {"DataType": "String.Array", "StringValue": "[" * 3000 + "]" * 3000}},
        {"ordered": {"DataType": "String.Array", "StringValue": '{"alpha": 1}'}},
        {"type": {"DataType": "Binary", "BinaryValue": b"\xff\x00"}},
        {"type": {"DataType": "Number", "StringValue": "12"}},
    ],
    ids=["ordered-deep", "ordered-object", "type-binary", "type-number"],
)
def test_sqs_hostile_attributes_do_not_crash_the_worker(sqs, attributes: dict[str, Any]):
    ids = healthy()
    Worker([], relay=True).step()
    send(sqs, "{}", **attributes)
    run_worker(["alpha"], rounds=4)
    handled_once(ids)
    one_dead_letter("missing")


def test_sqs_unreachable_while_deleting_a_dead_letter_does_not_stop_the_worker(
    sqs, monkeypatch: pytest.MonkeyPatch
):
    """The dead letter has committed when its message is deleted: AWS out of reach then
    (here the real botocore error, raised once) must not escape into the worker; the
    delete waits with the acks for the next claim, and no second dead letter comes."""
    from botocore.exceptions import EndpointConnectionError

    real = type(sqs)._delete
    failures: list[int] = []

    def unreachable_once(self: Any, receipts: Any) -> None:
        if receipts and not failures:
            failures.append(len(receipts))
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        real(self, receipts)

    monkeypatch.setattr(type(sqs), "_delete", unreachable_once)
    send(sqs, "not ours")
    Worker(["alpha"], relay=False).run(once=True)
    assert failures == [1]
    one_dead_letter("not valid JSON")
    Worker(["alpha"], relay=False).run(once=True)  # the queued delete goes out
    state = sqs.status(["alpha"])["alpha"]
    assert (state.pending, state.in_flight) == (0, 0)
    one_dead_letter("not valid JSON")


# -- the database transport ---------------------------------------------------------------
#
# A log row and its delivery row, planted as DatabaseTransport keeps them: pinned to it. The
# log transport's cursors would read the planted log row too (for every group of its type);
# the fault suite plants each hostile value where that transport reads it
# (tests/faults/transport.py, ``route``; F9 in ``make faults-quick-log``).


def plant_log_row(event_id: uuid.UUID, occurred_at: str, data: str = '{"n": -1}') -> None:
    """A log row and its delivery for alpha, written by raw SQL as another writer would."""
    vendor = connection.vendor
    value: Any = event_id if vendor == "postgresql" else event_id.hex
    cast = "::jsonb" if vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        if vendor == "sqlite":  # a writer that bypasses the JSON check, as raw SQL can
            cursor.execute("PRAGMA ignore_check_constraints = 1")
        insert = (  # raw SQL on purpose: what another writer could store
            "INSERT INTO django_events_event (id, position, type, key, version, data, metadata, "  # noqa: S608
            "occurred_at, source, recorded_at) VALUES (%s, 999999, 'test.happened', NULL, 1, "
            f"%s{cast}, '{{}}'{cast}, {occurred_at}, 'raw', CURRENT_TIMESTAMP)"
        )
        cursor.execute(insert, [value, data])
        cursor.execute(
            "INSERT INTO django_events_delivery (event_id, group_name, position, key, ordered, "
            "attempts, available_at, parked, last_error, created_at) VALUES (%s, 'alpha', "
            "999999, NULL, FALSE, 0, CURRENT_TIMESTAMP, FALSE, '', CURRENT_TIMESTAMP)",
            [value],
        )
        if vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = 0")


def garbled_time() -> str:
    """A timestamp the driver cannot convert: after year 9999 on PostgreSQL (psycopg
    refuses it), an impossible date on SQLite (Django's converter raises)."""
    if connection.vendor == "postgresql":
        return "'12000-01-01 00:00:00+00'::timestamptz"
    return "'2026-13-45 99:99:99'"


@pytest.mark.database_transport
def test_a_log_timestamp_the_driver_cannot_convert_is_one_dead_letter():
    ids = healthy()
    bad = uuid.uuid4()
    plant_log_row(bad, garbled_time())
    run_worker(["alpha"])
    handled_once(ids)
    letter = one_dead_letter("time")
    assert letter.event_id == bad
    assert not DeadLetter.objects.exclude(group="alpha").filter(event_id=bad).exists()


@pytest.mark.database_transport
def test_a_log_row_whose_data_is_not_json_is_one_dead_letter():
    if connection.vendor == "postgresql":
        pytest.skip("jsonb refuses text that is not JSON")
    ids = healthy()
    plant_log_row(uuid.uuid4(), "CURRENT_TIMESTAMP", data="{not json")
    run_worker(["alpha"])
    handled_once(ids)
    one_dead_letter("not valid JSON")


@pytest.mark.database_transport
def test_a_delivery_whose_event_id_is_garbled_is_one_dead_letter():
    if connection.vendor == "postgresql":
        pytest.skip("the uuid column refuses it")
    ids = healthy()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_events_delivery (event_id, group_name, position, key, ordered, "
            "attempts, available_at, parked, last_error, created_at) VALUES ('not-a-uuid', "
            "'alpha', 999999, NULL, FALSE, 0, CURRENT_TIMESTAMP, FALSE, '', CURRENT_TIMESTAMP)"
        )
    run_worker(["alpha"])
    handled_once(ids)
    one_dead_letter("not-a-uuid")


@pytest.mark.database_transport
def test_a_delivery_counted_to_the_top_of_its_column_is_one_dead_letter():
    ids = healthy()
    bad = uuid.uuid4()
    plant_log_row(bad, "CURRENT_TIMESTAMP")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_events_delivery SET attempts = 2147483647 WHERE position = 999999"
        )
    run_worker(["alpha"])
    handled_once(ids)
    letters = list(DeadLetter.objects.filter(group="alpha"))
    assert [(d.event_id, d.error_class) for d in letters] == [(bad, "LeaseExpired")]


# -- the log transport on SQLite ------------------------------------------------------------

DEEP = "[" * 10_000 + "]" * 10_000
OVERSIZED = "'{\"s\": \"' || replace(hex(zeroblob(400000)), '0', 'x') || '\"}'"
"""SQL: data of 800,000 bytes, over twice ``MAX_PAYLOAD_BYTES`` (what a claim reads)."""
HOSTILE_LOG_ROWS: dict[str, tuple[dict[str, str], str | None]] = {
    # name: (columns as SQL, what the dead letter's reason says; None: owed to no group)
    "invalid JSON": ({"data": "'{not json'"}, "data is not valid JSON"),
    "data a list": ({"data": "'[1, 2, 3]'"}, "data must be a JSON object, got list"),
    "data null": ({"data": "'null'"}, "data must be a JSON object, got NoneType"),
    "data a number": ({"data": "42"}, "data must be a JSON object, got int"),
    "data nested 10,000 deep": ({"data": f"'{{\"a\": {DEEP}}}'"}, "nests deeper"),
    "data oversized": ({"data": OVERSIZED}, "bytes, over the"),
    "data not UTF-8": ({"data": "CAST(x'7b226e223aff7d' AS TEXT)"}, "its data is not UTF-8"),
    "data a blob, not UTF-8": ({"data": "x'7b226e223aff7d'"}, "data is not UTF-8"),
    "metadata a list": ({"metadata": "'[1]'"}, "metadata must be a dict"),
    "metadata not UTF-8": ({"metadata": "CAST(x'ff' AS TEXT)"}, "its metadata is not UTF-8"),
    "source not UTF-8": ({"source": "CAST(x'c328' AS TEXT)"}, "its source is not UTF-8"),
    "key not UTF-8": ({"key": "CAST(x'ff' AS TEXT)"}, "its key is not UTF-8"),
    "key empty": ({"key": "''"}, "key must be a non-empty str"),
    "version text": ({"version": "'one'"}, "version must be a positive int"),
    "version 0": ({"version": "0"}, "version must be a positive int"),
    "time not a time": ({"occurred_at": "'2026-13-45 99:99:99'"}, "time is not ISO 8601"),
    "time empty": ({"occurred_at": "''"}, "time is not ISO 8601"),
    "time not UTF-8": ({"occurred_at": "CAST(x'ff' AS TEXT)"}, "its time is not UTF-8"),
    "id not a UUID": ({"id": "'not-a-uuid'"}, "names event 'not-a-uuid', which is not a UUID"),
    "id not UTF-8": ({"id": "CAST(x'fffe' AS TEXT)"}, "which is not a UUID"),
    "id a number": ({"id": "7"}, "names event '7', which is not a UUID"),
    "correlation id not a UUID": ({"correlation_id": "'nope'"}, "'correlation_id' is not"),
    "type not UTF-8": ({"type": "CAST(x'ff' AS TEXT)"}, None),
    "type of no group": ({"type": "'test.never_heard_of'"}, None),
}


def plant_sqlite_log_row(columns: dict[str, str]) -> uuid.UUID:
    """A log row as raw SQL can store it on SQLite (each column an SQL expression: any
    type, text that is not UTF-8, JSON its check would refuse), its position drawn from the
    log's counter as every writer's is. Returns the id its dead letter names: its own, or,
    when it has none readable, the one derived from its position."""
    event_id = uuid.uuid4()
    values = {
        "id": f"'{event_id.hex}'",
        "type": "'test.happened'",
        "key": "NULL",
        "version": "1",
        "data": "'{\"n\": -1}'",
        "metadata": "'{}'",
        "occurred_at": "CURRENT_TIMESTAMP",
        "source": "'hostile'",
        "correlation_id": "NULL",
        **columns,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        position = draw_positions("default", 1)
        cursor.execute("PRAGMA ignore_check_constraints = 1")  # as raw SQL can
        try:
            cursor.execute(
                f"INSERT INTO django_events_event ({', '.join(values)}, position, recorded_at) "  # noqa: S608
                f"VALUES ({', '.join(values.values())}, %s, CURRENT_TIMESTAMP)",
                [position],
            )
        finally:
            cursor.execute("PRAGMA ignore_check_constraints = 0")
    return fallback_id(f"log:{position}") if "id" in columns else event_id


def plant_sqlite_delivery(event_id: str) -> uuid.UUID:
    """A delivery row for alpha naming ``event_id`` (SQL), with no log row behind it;
    returns the id its dead letter names if ``event_id`` is not a readable UUID."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_events_delivery (event_id, group_name, event_type, position, "  # noqa: S608
            f"key, ordered, attempts, available_at, parked, last_error, created_at) VALUES "
            f"({event_id}, 'alpha', 'test.happened', 1, NULL, FALSE, 0, CURRENT_TIMESTAMP, "
            "FALSE, '', CURRENT_TIMESTAMP)"
        )
        delivery_id = cursor.lastrowid
    return fallback_id(f"delivery:{delivery_id}")


@pytest.mark.skipif(
    connection.vendor != "sqlite",
    reason="PostgreSQL's log rows: tests/faults F9 and F12 (make faults-quick-log)",
)
def test_hostile_log_rows_on_sqlite_are_one_dead_letter_each_and_the_cursor_passes_them(
    on_the_log_transport: LogTransport,
) -> None:
    """The log transport on SQLite reads each group's events from the log itself: a row
    raw SQL wrote there (bytes that are not UTF-8 included, which Python's driver refuses
    to read) must become one dead letter with its reason, never a claim that fails and
    rolls back for ever, and the healthy events around it must be handled."""
    ids = healthy(2)
    expected: dict[uuid.UUID, tuple[str, str]] = {}
    unowed = []
    for name, (columns, reason) in HOSTILE_LOG_ROWS.items():
        planted = plant_sqlite_log_row(columns)
        if reason is None:
            unowed.append(planted)
        else:
            expected[planted] = (name, reason)
        ids += healthy(1)
    missing = uuid.uuid4()
    plant_sqlite_delivery(f"'{missing.hex}'")
    expected[missing] = ("missing event", "is missing from the event log")
    garbled = plant_sqlite_delivery("CAST(x'ffff' AS TEXT)")
    expected[garbled] = ("delivery's event id not UTF-8", "which is not a UUID")
    ids += healthy(1)
    run_worker(["alpha"])  # an exception here is a worker that exits
    handled_once(ids)
    letters = list(DeadLetter.objects.filter(group="alpha"))
    wrong = []
    for event_id, (name, reason) in expected.items():
        found = [(d.error_class, d.error_message) for d in letters if d.event_id == event_id]
        if len(found) != 1 or found[0][0] != "UndecodableEvent" or reason not in found[0][1]:
            wrong.append((name, found))
    assert not wrong, wrong
    assert len(letters) == len(expected), "one dead letter each, nothing else"
    assert not DeadLetter.objects.filter(event_id__in=unowed).exists()
    top = max(EventRecord.objects.values_list("position", flat=True))
    assert GroupCursor.objects.filter(group_name="alpha").latest("id").pos == top
    assert not Lease.objects.exists() and not Delivery.objects.exists()
