"""Nothing stalls the relay: outbox rows written around ``publish()`` that no stage can
take are set aside as ``(relay)`` dead letters, and the events around them move on.

Each hostile row sits between healthy events, on every relay path: the same-database
move (PostgreSQL's one statement, SQLite's), the locked send (PostgreSQL with Redis or
SNS + SQS) and the leased send (SQLite with them). The relay runs a bounded number of
passes; every healthy event then reaches every group once, in order, each hostile row
is one dead letter naming its reason, and a broker receives the healthy events only.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_events import publish
from django_events.engine.relay import QUARANTINE_GROUP, Relay, set_aside
from django_events.engine.worker import Worker
from django_events.models import DeadLetter, EventRecord, OutboxMessage
from django_events.transports import transports
from django_events.transports.base import Outgoing, Transport, wire_time
from django_events.transports.database import DatabaseTransport
from django_events.transports.memory import InMemoryTransport
from django_events.transports.sqs import message_group_id
from django_events.triage import retry

from .redis_support import delete_prefix, needs_redis
from .redis_support import events_settings as redis_settings
from .redis_support import unique_prefix as redis_prefix
from .sqs_server import aws_env, moto_endpoint
from .sqs_server import events_settings as sqs_settings
from .sqs_server import unique_prefix as sqs_prefix
from .testapp.models import Effect

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    # name: (outbox columns, what the dead letter's reason says)
    "lone surrogate in data": (
        {"data": '{"n": -1, "items": [{"name": "\\ud800"}]}'},
        "data['items'][0]['name']: lone surrogate '\\ud800'",
    ),
    "lone surrogate in a dict key": (
        {"data": '{"n": -1, "\\udc00x": 1}'},
        "data['\\udc00x'] (a key): lone surrogate",
    ),
    "lone surrogate in metadata": (
        {"metadata": '{"trace": "\\ud800"}'},
        "metadata['trace']: lone surrogate",
    ),
    "NaN": ({"data": '{"n": NaN}'}, "data['n']: nan cannot be stored"),
    "Infinity": ({"data": '{"n": Infinity}'}, "data['n']: inf cannot be stored"),
    "-Infinity": ({"data": '{"n": -Infinity}'}, "data['n']: -inf cannot be stored"),
    "NUL": ({"data": '{"n": -1, "s": "a\\u0000b"}'}, "data['s']: NUL character"),
    "invalid JSON": ({"data": "{not json"}, "data is not valid JSON"),
    "data not an object": ({"data": "[1, 2]"}, "data is not a JSON object"),
    "metadata not an object": ({"metadata": "[1]"}, "metadata is not a JSON object"),
    "duplicate of a relayed event": ({"duplicate": True}, "is in the event log already"),
}


def plant(columns: dict[str, Any], duplicate_of: uuid.UUID) -> OutboxMessage:
    """An outbox row as something other than ``publish()`` might write it."""
    fields = {"data": '{"n": -1}', "metadata": "", **columns}
    event_id = duplicate_of if fields.pop("duplicate", False) else uuid.uuid4()
    return OutboxMessage.objects.create(
        event_id=event_id,
        type="test.happened",
        version=1,
        occurred_at=timezone.now(),
        source="hostile",
        **fields,
    )


RELAY_ERRORS: list[Exception] = []


def run_relay(passes: int = 3) -> None:
    """A bounded relay run, as ``relay_events`` runs: a pass that raises is noted and the
    next pass tries again. A relay that stalls leaves rows behind (and sends them again,
    with a broker); the errors are asserted after what they caused."""
    relay = Relay()
    for _ in range(passes):
        try:
            relay.run_once()
        except Exception as exc:  # noted, asserted after what it caused
            RELAY_ERRORS.append(exc)


@pytest.fixture(autouse=True)
def no_relay_errors() -> Iterator[None]:
    RELAY_ERRORS.clear()
    yield
    assert not RELAY_ERRORS, RELAY_ERRORS[:1]


def scenario() -> tuple[list[uuid.UUID], dict[str, OutboxMessage]]:
    """Healthy events relayed first; then each hostile row between two healthy events."""
    healthy = [publish("test.happened", {"n": n}).id for n in range(2)]
    run_relay(1)
    planted = {}
    for n, (name, (columns, _)) in enumerate(HOSTILE.items(), start=2):
        healthy.append(publish("test.happened", {"n": n}).id)
        planted[name] = plant(columns, duplicate_of=healthy[0])
    healthy.append(publish("test.happened", {"n": 99}).id)
    return healthy, planted


def assert_set_aside(planted: dict[str, OutboxMessage]) -> None:
    letters = {d.error_message.split(":", 1)[0]: d for d in DeadLetter.objects.all()}
    assert len(letters) == DeadLetter.objects.count() == len(HOSTILE)
    wrong = []
    for name, row in planted.items():
        letter = letters.get(f"Outbox row {row.position} (test.happened)")
        reason = HOSTILE[name][1]
        if letter is None or letter.group != QUARANTINE_GROUP or reason not in letter.error_message:
            wrong.append((name, letter and letter.error_message))
    assert not wrong, wrong
    assert not OutboxMessage.objects.exists(), "nothing waits in the outbox"


def assert_logged_in_order(healthy: list[uuid.UUID]) -> None:
    logged = list(EventRecord.objects.order_by("position").values_list("id", flat=True))
    assert logged == healthy, "the log holds the healthy events, in publish order"


def assert_handled_once(healthy: list[uuid.UUID]) -> None:
    for group in ("alpha", "beta"):
        handled = sorted(
            str(e) for e in Effect.objects.filter(group=group).values_list("event_id", flat=True)
        )
        assert handled == sorted(str(e) for e in healthy), group


# -- the database transport ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [500, 3])
def test_hostile_outbox_rows_become_relay_dead_letters_on_the_database(
    batch: int, settings: Any
) -> None:
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "RELAY_BATCH_SIZE": batch}
    healthy, planted = scenario()
    run_relay()
    assert_set_aside(planted)
    assert_logged_in_order(healthy)
    Worker(["alpha", "beta"], relay=False).run(once=True)
    assert_handled_once(healthy)
    assert not DeadLetter.objects.exclude(group=QUARANTINE_GROUP).exists()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_row_alone_among_healthy_ones_is_set_aside(name: str) -> None:
    """Alone, so nothing else fails its batch: each kind is caught by itself (by the
    database on PostgreSQL, as the rows are moved on SQLite)."""
    healthy = [publish("test.happened", {"n": 0}).id]
    run_relay(1)
    columns, reason = HOSTILE[name]
    healthy.append(publish("test.happened", {"n": 1}).id)
    row = plant(columns, duplicate_of=healthy[0])
    healthy.append(publish("test.happened", {"n": 2}).id)
    run_relay()
    dead = DeadLetter.objects.get()
    assert dead.group == QUARANTINE_GROUP and reason in dead.error_message
    assert dead.error_message.startswith(f"Outbox row {row.position} (test.happened): ")
    assert_logged_in_order(healthy)


def test_a_row_two_relays_set_aside_is_one_dead_letter() -> None:
    row = plant({"data": "[1]"}, duplicate_of=uuid.uuid4())
    outgoing = Outgoing(row.position, row.event_id, row.type, None, data=row.data)
    set_aside("default", [(outgoing, "UndecodableEvent", "data is not a JSON object")])
    set_aside("default", [(outgoing, "UndecodableEvent", "data is not a JSON object")])
    assert DeadLetter.objects.count() == 1 and not OutboxMessage.objects.exists()


@pytest.mark.database_transport  # publish() to the outbox, then the relay
def test_a_row_only_the_database_refuses_is_found_one_row_at_a_time(settings: Any) -> None:
    """What the shared validation cannot see (here, a source wider than its column in
    the log, on PostgreSQL) still becomes one dead letter, with the database's reason."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite does not enforce column widths")
    healthy = [publish("test.happened", {"n": n}).id for n in range(3)]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_events_outbox ALTER COLUMN source TYPE text")
        cursor.execute(
            "UPDATE django_events_outbox SET source = repeat('s', 300) WHERE event_id = %s",
            [healthy[1]],
        )
    try:
        run_relay()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM django_events_outbox WHERE length(source) > 200")
            cursor.execute("ALTER TABLE django_events_outbox ALTER COLUMN source TYPE varchar(200)")
    dead = DeadLetter.objects.get()
    assert (dead.group, dead.error_class, dead.event_id) == (
        QUARANTINE_GROUP,
        "DataError",
        healthy[1],
    )
    assert "the database refused it" in dead.error_message
    assert_logged_in_order([healthy[0], healthy[2]])


@pytest.mark.database_transport  # publish() to the outbox, then the relay
def test_a_healthy_batch_costs_the_same_statements_as_before() -> None:
    """The checks run only when a batch fails, or in memory on rows already read."""
    for n in range(5):
        publish("test.happened", {"n": n}, metadata={"trace": str(n)})
    with CaptureQueriesContext(connection) as queries:
        assert Relay().relay_batch("default") == 5
    # As before the checks (6 and 5, measured there), plus the one read of the stored
    # subscriptions each batch makes (docs/services.md), plus the read of the moves a new
    # relay makes first (then at most once per poll interval; docs/moving.md); on SQLite
    # the ids taken are looked up in the log by a statement of their own, not in RETURNING
    # (docs/internals.md, "The relay on SQLite"), while on PostgreSQL the wake-up rides in
    # the delivery insert and the take reads the subscriptions (docs/internals.md, "The
    # relay's frontier").
    expected = 6 + 1 + 1 - 2 * (connection.vendor == "postgresql")
    assert len(queries.captured_queries) == expected, [q["sql"][:60] for q in queries]


def test_a_relay_dead_letter_cannot_be_retried_only_discarded(admin_user: Any) -> None:
    """A duplicate's id names a logged event: a retry would deliver that one instead."""
    relayed = publish("test.happened", {"n": 1})
    run_relay()
    plant({"duplicate": True}, duplicate_of=relayed.id)
    run_relay()
    dead = DeadLetter.objects.get(group=QUARANTINE_GROUP)
    with pytest.raises(LookupError, match="the relay set aside; it has no event to redeliver"):
        retry([dead], admin_user, "try")
    dead.refresh_from_db()
    assert dead.state == DeadLetter.State.OPEN


# -- event ids ----------------------------------------------------------------------------------


@pytest.fixture(params=["move", "send"])
def handed(request: pytest.FixtureRequest) -> Iterator[tuple[Transport, list[Outgoing]]]:
    """A transport that notes each event the relay hands it, then takes the events as it
    would: ``move``, the database transport (the same-database move); ``send``, the
    in-memory transport (the leased send on SQLite, the locked one on PostgreSQL)."""
    noted: list[Outgoing] = []
    base = DatabaseTransport if request.param == "move" else InMemoryTransport

    class Noting(base):  # type: ignore[valid-type,misc]
        def publish(self, events: Sequence[Outgoing], subscriptions: Any) -> None:
            noted.extend(events)
            super().publish(events, subscriptions)

    name = f"memory-{uuid.uuid4().hex}"
    yield Noting("default", {} if request.param == "move" else {"name": name}), noted
    InMemoryTransport("cleanup", {"name": name}).clear()


@pytest.mark.database_transport  # publish() to the outbox, then the relay
def test_a_transport_is_handed_each_event_id_as_a_uuid(
    handed: tuple[Transport, list[Outgoing]],
) -> None:
    """SQLite's driver reads the outbox's ids as text: the relay parses each where it reads
    the rows, so every transport gets the ``uuid.UUID`` that ``Outgoing`` declares."""
    transport, noted = handed
    published = [publish("test.happened", {"n": n}).id for n in range(3)]
    Relay(transport=transport).run_once()
    ids = [event.event_id for event in noted]
    assert [type(event_id) for event_id in ids] == [uuid.UUID] * 3
    assert ids == published
    assert_logged_in_order(published)
    if noted[0].occurred_at is not None:  # a broker's send carries the whole event
        times = {r.id: r.occurred_at for r in EventRecord.objects.all()}
        assert all(isinstance(event.occurred_at, dt.datetime) for event in noted)
        assert [wire_time(event.occurred_at) for event in noted] == [
            times[event_id].isoformat() for event_id in ids
        ]


@pytest.mark.database_transport  # publish() to the outbox, then the relay
def test_an_outbox_row_whose_id_is_not_a_uuid_is_set_aside(
    handed: tuple[Transport, list[Outgoing]],
) -> None:
    """A row whose id does not parse is not handed over: it becomes one dead letter that
    names the id, and the events around it move on."""
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL's uuid column refuses such an id")
    transport, noted = handed
    healthy = [publish("test.happened", {"n": 0}).id]
    row = plant({}, duplicate_of=healthy[0])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_events_outbox SET event_id = 'not-a-uuid' WHERE position = %s",
            [row.position],
        )
    healthy.append(publish("test.happened", {"n": 1}).id)
    Relay(transport=transport).run_once()
    dead = DeadLetter.objects.get()
    assert (dead.group, dead.event_id) == (QUARANTINE_GROUP, uuid.UUID(int=0))
    assert dead.error_message == (
        f"Outbox row {row.position} (test.happened): event id 'not-a-uuid' is not a UUID"
    )
    assert [event.event_id for event in noted] == healthy
    assert_logged_in_order(healthy)


NOT_UTF8 = ("event_id", "type", "key", "data", "metadata", "source")
"""Outbox columns raw SQL can fill, on SQLite, with bytes Python's driver refuses to read."""

sqlite_text = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="PostgreSQL checks that text is UTF-8 as it is written"
)


def plant_not_utf8() -> tuple[list[uuid.UUID], dict[str, OutboxMessage]]:
    """One outbox row per column of ``NOT_UTF8`` holding a byte that is not UTF-8 there,
    each between two healthy events."""
    healthy = [publish("test.happened", {"n": 0}).id]
    planted = {}
    for n, column in enumerate(NOT_UTF8, start=1):
        planted[column] = plant({}, duplicate_of=healthy[0])
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE django_events_outbox SET {column} = CAST(x'ff' AS TEXT) "  # noqa: S608
                "WHERE position = %s",
                [planted[column].position],
            )
        healthy.append(publish("test.happened", {"n": n}).id)
    return healthy, planted


def assert_not_utf8_set_aside(planted: dict[str, OutboxMessage]) -> None:
    letters = list(DeadLetter.objects.filter(group=QUARANTINE_GROUP))
    assert len(letters) == len(planted), [d.error_message for d in letters]
    for column, row in planted.items():
        [letter] = [
            d for d in letters if d.error_message.startswith(f"Outbox row {row.position} (")
        ]
        assert letter.error_message.endswith(f": {column} is not UTF-8"), letter.error_message
    assert not OutboxMessage.objects.exists(), "nothing waits in the outbox"


@sqlite_text
@pytest.mark.database_transport  # publish() to the outbox, then the relay
def test_outbox_text_that_is_not_utf8_is_set_aside_not_a_stalled_relay(
    handed: tuple[Transport, list[Outgoing]],
) -> None:
    """Python's driver refuses to read such text: the read of every batch holding the row
    failed, at every pass. Read as bytes, the row is set aside with its reason."""
    transport, noted = handed
    healthy, planted = plant_not_utf8()
    Relay(transport=transport).run_once()
    assert_not_utf8_set_aside(planted)
    assert [event.event_id for event in noted] == healthy
    assert_logged_in_order(healthy)


@sqlite_text
def test_outbox_text_that_is_not_utf8_is_set_aside_on_the_log_transport(
    on_the_log_transport: Transport,
) -> None:
    """The relay still moves what is in the outbox into the log for the log transport,
    with new positions (docs/internals.md, "The log transport on SQLite")."""
    healthy, planted = plant_not_utf8()
    run_relay()
    assert_not_utf8_set_aside(planted)
    assert_logged_in_order(healthy)
    Worker(["alpha"], relay=False).run(once=True)
    handled = Effect.objects.filter(group="alpha").values_list("event_id", flat=True)
    assert sorted(str(e) for e in handled) == sorted(str(e) for e in healthy)


@pytest.mark.database_transport  # publish() to the outbox, then the relay
@pytest.mark.parametrize("when", ["infinity", "99999-01-01 00:00:00+00"])
def test_a_time_the_driver_cannot_read_does_not_stall_the_relay(
    handed: tuple[Transport, list[Outgoing]], when: str
) -> None:
    """psycopg refuses a time after year 9999 (or ``infinity``): on PostgreSQL a broker's
    read that fetched one raised at every pass and moved nothing. The read takes the time
    as text, as SQLite hands it: the row is moved, and the consumer's decoder names the
    time (or, where the database refuses it, the row is set aside); either way the events
    around it move on."""
    transport, noted = handed
    healthy = [publish("test.happened", {"n": 0}).id]
    row = plant({}, duplicate_of=healthy[0])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_events_outbox SET occurred_at = %s WHERE position = %s",
            [when, row.position],
        )
    healthy.append(publish("test.happened", {"n": 1}).id)
    Relay(transport=transport).run_once()
    assert not OutboxMessage.objects.exists()
    assert [e.event_id for e in noted if e.event_id != row.event_id] == healthy
    logged = list(EventRecord.objects.order_by("position").values_list("id", flat=True))
    assert [event_id for event_id in logged if event_id != row.event_id] == healthy
    set_aside = DeadLetter.objects.filter(group=QUARANTINE_GROUP).count()
    assert (row.event_id in logged, set_aside) in [(True, 0), (False, 1)]
    if isinstance(transport, InMemoryTransport) and row.event_id in logged:
        claimed = {c.event_id: c for c in transport.claim(["alpha"], 10, 30)}
        assert claimed.keys() == {*healthy, row.event_id}
        assert [c.event_id for c in claimed.values() if c.decode_error] == [row.event_id]


# -- Redis Streams ------------------------------------------------------------------------------


@pytest.fixture
def redis_transport(settings: Any) -> Iterator[Any]:
    prefix = redis_prefix()
    settings.DJANGO_EVENTS = {**redis_settings(prefix), "RELAY_BATCH_SIZE": 4}
    transport = transports["default"]
    yield transport
    transports.reset()
    delete_prefix(prefix)


@needs_redis()
def test_hostile_outbox_rows_are_set_aside_before_reaching_redis(redis_transport: Any) -> None:
    healthy, planted = scenario()
    run_relay()
    assert_set_aside(planted)
    assert_logged_in_order(healthy)
    client = redis_transport.client
    for group in ("alpha", "beta"):
        assert client.xlen(redis_transport.stream(group)) == len(healthy), group
    Worker(["alpha", "beta"], relay=False).run(once=True)
    assert_handled_once(healthy)


# -- SNS + SQS ----------------------------------------------------------------------------------


@pytest.fixture
def sqs_transport(settings: Any, moto_endpoint: str, aws_env: dict[str, str]) -> Iterator[Any]:
    from django_events.registry import registry

    settings.DJANGO_EVENTS = {**sqs_settings(moto_endpoint, sqs_prefix()), "RELAY_BATCH_SIZE": 4}
    transport = transports["default"]
    transport.setup(registry.subscriptions())
    yield transport
    transports.reset()


def received(transport: Any, group: str) -> list[Any]:
    """Every message in the group's queue now (left leased)."""
    found = []
    while batch := transport.claim([group], 10, 60):
        found += batch
    return found


def test_hostile_outbox_rows_are_never_sent_to_sns(sqs_transport: Any) -> None:
    healthy, planted = scenario()
    run_relay()
    for group in ("alpha", "beta"):
        ids = [claimed.event_id for claimed in received(sqs_transport, group)]
        assert sorted(map(str, ids)) == sorted(map(str, healthy)), (group, len(ids), len(healthy))
    assert_set_aside(planted)
    assert_logged_in_order(healthy)


def test_an_event_sqs_refuses_is_set_aside_and_its_batch_is_sent_once(
    sqs_transport: Any,
) -> None:
    """Too large for one SNS message, though within what a consumer reads: the transport
    refuses it, the events beside it are sent once, and the relay does not loop."""
    healthy = [publish("test.happened", {"n": n}).id for n in range(3)]
    big = plant({"data": json.dumps({"n": -1, "blob": "x" * 300_000})}, uuid.uuid4())
    healthy += [publish("test.happened", {"n": n}).id for n in range(3, 9)]
    run_relay()
    ids = [claimed.event_id for claimed in received(sqs_transport, "alpha")]
    assert sorted(map(str, ids)) == sorted(map(str, healthy)), (len(ids), len(healthy))
    dead = DeadLetter.objects.get()
    assert (dead.group, dead.error_class) == (QUARANTINE_GROUP, "PublishRefused")
    assert f"Outbox row {big.position}" in dead.error_message
    assert "over the 262144-byte (256 KiB) limit" in dead.error_message
    assert not OutboxMessage.objects.exists()
    assert_logged_in_order(healthy)


def test_a_key_sqs_cannot_take_as_a_message_group_id_is_mapped_not_refused(
    settings: Any, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    from django_events.registry import registry

    settings.DJANGO_EVENTS = sqs_settings(moto_endpoint, sqs_prefix(), fifo=True)
    transport = transports["default"]
    transport.setup(registry.subscriptions())
    try:
        events = [publish("test.sequenced", {"n": n}, key="Zürich 1") for n in range(3)]
        run_relay()
        sqs = transport._client("sqs")
        messages = sqs.receive_message(
            QueueUrl=transport._queue_url("sequence"),
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["MessageGroupId"],
        )["Messages"]
        groups = {m["Attributes"]["MessageGroupId"] for m in messages}
        assert len(messages) == 3 and len(groups) == 1
        assert groups.pop().startswith("sha256:")
        assert [json.loads(m["Body"])["id"] for m in messages] == [str(e.id) for e in events]
    finally:
        transports.reset()


# -- keys every transport carries -----------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["order-1", "a" * 128, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "tenant/7:order#9"]
)
def test_a_key_sqs_accepts_is_its_own_message_group_id(key: str) -> None:
    assert message_group_id(key) == key


@pytest.mark.parametrize("key", ["Zürich 1", "with space", "a" * 129, "a" * 200, "\U0001f600"])
def test_any_other_key_maps_to_one_valid_message_group_id(key: str) -> None:
    group = message_group_id(key)
    assert group == message_group_id(key)
    assert re.fullmatch(r"[!-~]{1,128}", group)
    assert group.startswith("sha256:") and group != message_group_id(key + "x")
