"""The relay's frontier and its bounded take, and the claim's floor, on PostgreSQL
(docs/internals.md, "The relay's frontier", "The claim's floor").

The take starts above the positions it has passed instead of at the lowest one, so a row
that commits late, below that frontier, must still be found (a gap, looked up by position
until its writer has ended); and a take the server cannot finish in time must end on the
server, leaving no backend behind on the relay's lock or the tables. Both relays take from
the frontier: the same-database move, and a broker's (here Redis), which reads, sends, then
deletes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_events import publish
from django_events.engine.relay import GAP_GRACE, RELAY_LOCK, Relay
from django_events.models import EventRecord, OutboxMessage
from django_events.testing import deliver
from django_events.testing.contract import log_events
from django_events.transports import database, transports
from django_events.transports.base import Outgoing
from django_events.transports.database import FLOOR_EVERY, DatabaseTransport

from .conftest import closing_connections, postgres_only
from .redis_support import (
    PrivateRedis,
    delete_prefix,
    events_settings,
    needs_redis,
    unique_prefix,
)
from .testapp.models import Effect

# The relay moves the outbox, which the log transport's publish() skips; the claim's floor
# is the delivery rows'.
pytestmark = [
    postgres_only,
    pytest.mark.django_db(transaction=True),
    pytest.mark.database_transport,
]


@pytest.fixture
def raw() -> Iterator[psycopg.Connection]:
    """A second session on the test database, its transaction left open until asked."""
    s = connection.settings_dict
    with psycopg.connect(host=s["HOST"], port=s["PORT"], user=s["USER"], dbname=s["NAME"]) as conn:
        yield conn
        conn.rollback()


@pytest.fixture(params=["database", pytest.param("redis", marks=needs_redis())])
def via(request: pytest.FixtureRequest) -> Iterator[str]:
    """The relay's path: the same-database move, or a broker's (Redis, read then sent)."""
    if request.param == "database":
        yield request.param
        return
    prefix = unique_prefix()
    transports.reset()
    try:
        with override_settings(DJANGO_EVENTS=events_settings(prefix)):
            yield request.param
    finally:
        transports.reset()
        delete_prefix(prefix)


def _settled(relay: Relay) -> int:
    """Run the relay until its frontier is known (a new relay takes from the lowest
    position until a snapshot horizon proves nothing below can still commit)."""
    deadline = time.monotonic() + 30
    n = 0
    while (frontier := relay._frontiers.get("default")) is None or frontier.top is None:
        assert time.monotonic() < deadline, "the frontier never settled"
        publish("frontier.settle", {"n": n})
        n += 1
        relay.run_once()
        time.sleep(0.2)
    return frontier.top


def test_a_row_committed_late_below_the_frontier_is_relayed(raw: psycopg.Connection, via: str):
    relay = Relay()
    _settled(relay)
    frontier = relay._frontiers["default"]
    # A writer takes its position first and commits last (docs/guarantees.md).
    late = raw.execute(
        "INSERT INTO django_events_outbox (event_id, type, version, data, metadata, "
        "occurred_at, source, created_at) VALUES (gen_random_uuid(), 'test.happened', 1, "
        "'{\"n\": 7}', '', now(), 'late', now()) RETURNING position"
    ).fetchone()[0]
    publish("frontier.after", {"n": 1})
    relay.run_once()
    assert frontier.top is not None and frontier.top > late
    assert late in frontier.gaps
    # Its writer is still open: past the grace the horizon is read, and the gap is kept
    # however many takes pass.
    time.sleep(GAP_GRACE + 0.2)
    for _ in range(3):
        relay.run_once()
    assert late in frontier.gaps
    raw.commit()
    relay.run_once()
    assert EventRecord.objects.filter(position=late, type="test.happened").exists()
    assert not OutboxMessage.objects.exists()
    assert late not in frontier.gaps
    deliver(["alpha"], relay=False)  # it reached the transport: the handler ran
    assert list(Effect.objects.values_list("group", "n")) == [("alpha", 7)]


def test_positions_another_relay_moved_come_back_once_per_take_not_once_per_row(monkeypatch):
    """A relay whose frontier another relay has passed learns the positions that one
    moved from its next take: in the take's first row only. In every row, a batch of
    1,000 behind a few thousand moved positions came back as megabytes, sorted on disk
    (docs/internals.md, "The relay's frontier")."""
    from django_events.engine import relay as relay_module

    behind, ahead = Relay(batch_size=5), Relay()
    _settled(behind)
    _settled(ahead)
    moved_by_other = [publish("test.happened", {"n": n}) for n in range(30)]
    ahead.run_once()
    for n in range(10):
        publish("test.happened", {"n": 100 + n})
    returned: list[list[Any]] = []
    split = relay_module._with_snapshot

    def spy(rows: Any) -> Any:
        returned.append([row[-2] for row in rows])  # each row's passed positions
        return split(rows)

    monkeypatch.setattr(relay_module, "_with_snapshot", spy)
    behind.relay_batch("default")
    (passed_per_row,) = returned
    assert len(passed_per_row) == 5
    other = set(
        EventRecord.objects.filter(id__in=[e.id for e in moved_by_other]).values_list(
            "position", flat=True
        )
    )
    assert other <= set(passed_per_row[0])
    assert passed_per_row[1:] == [None] * 4
    assert not other & set(behind._frontiers["default"].gaps)  # not gaps: in the log


@needs_redis()
def test_a_send_that_fails_leaves_the_frontier_where_it_was():
    """A broker's relay moves the frontier only once the rows it read have left the
    outbox: rows whose send failed are read again (a private Redis, stopped and started)."""
    import redis

    server = PrivateRedis().start()
    prefix = unique_prefix()
    transports.reset()
    try:
        with override_settings(DJANGO_EVENTS=events_settings(prefix, server.url)):
            relay = Relay()
            top = _settled(relay)
            server.kill()
            publish("test.happened", {"n": 5})
            with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
                relay.run_once()
            assert relay._frontiers["default"].top == top
            server.start()  # same port, empty
            relay.run_once()
            assert EventRecord.objects.filter(type="test.happened").count() == 1
            stream = transports["default"].stream("alpha")
            assert redis.Redis.from_url(server.url).xlen(stream) == 1
    finally:
        transports.reset()
        server.destroy()


def _walked(node: dict[str, Any]) -> int:
    """Heap tuples an explained plan fetched from index entries (dead ones included)."""
    return node.get("Heap Fetches", 0) + sum(_walked(child) for child in node.get("Plans", []))


def _reads(relay: Relay) -> list[tuple[int, int]]:
    """Run the relay once; return, for each of its reads of the outbox, the buffers it
    touched and the heap tuples it fetched, from ``EXPLAIN (ANALYZE, BUFFERS)`` of the
    read itself run just before it: a plain ``SELECT``, so explaining it changes nothing."""
    found: list[tuple[int, int]] = []

    def explain(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if " taken AS (SELECT " in sql:
            raw_cursor = context["cursor"].cursor
            raw_cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
            plan = raw_cursor.fetchone()[0][0]["Plan"]
            found.append((plan["Shared Hit Blocks"] + plan["Shared Read Blocks"], _walked(plan)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(explain):
        relay.run_once()
    assert found, "no read of the outbox was explained"
    return found


@pytest.mark.parametrize("via", [pytest.param("redis", marks=needs_redis())], indirect=True)
def test_a_held_snapshot_does_not_make_a_brokers_take_walk_what_it_took(
    raw: psycopg.Connection, via: str
):
    """Behind a snapshot held open, every outbox row taken keeps its index entry: a take
    from the lowest position fetches each of them from the heap; one from the frontier
    does not."""
    relay = Relay()
    _settled(relay)
    raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    raw.execute("SELECT count(*) FROM django_events_outbox")  # the snapshot, held from here on
    dead = 3000
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_events_outbox (event_id, type, version, data, metadata, "
            "occurred_at, source, created_at) SELECT gen_random_uuid(), 'frontier.dead', 1, "
            "'{}', '', now(), 'bulk', now() FROM generate_series(1, %s)",
            [dead],
        )
    relay.run_once()  # taken: their index entries stay while the snapshot is held
    assert not OutboxMessage.objects.exists()
    with connection.cursor() as cursor:  # the statistics autovacuum keeps (off here)
        cursor.execute("ANALYZE django_events_outbox, django_events_event")
    publish("frontier.after", {"n": 1})
    [(frontier_buffers, frontier_fetched)] = _reads(relay)
    relay._frontiers["default"].rescanned_at = -float("inf")  # the next take is a full one
    publish("frontier.after", {"n": 2})
    [(full_buffers, full_fetched)] = _reads(relay)
    assert full_fetched >= dead, f"the full take fetched {full_fetched} tuples: none dead?"
    assert frontier_fetched < 10, f"the frontier take fetched {frontier_fetched} tuples"
    assert frontier_buffers * 5 < full_buffers, (frontier_buffers, full_buffers)


def _waiting(holder_pid: int) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, wait_event_type, wait_event, state, left(query, 60) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid NOT IN (pg_backend_pid(), %s) AND state <> 'idle'",
            [holder_pid],
        )
        return cursor.fetchall()


@pytest.mark.parametrize(
    "hold",
    [
        # another relay stuck inside its transaction: the wait for the relay lock
        f"SELECT pg_advisory_lock({RELAY_LOCK})",
        # the take's own statement blocked, here on the event log it writes
        "LOCK TABLE django_events_event IN ACCESS EXCLUSIVE MODE",
    ],
    ids=["relay-lock", "take"],
)
def test_a_take_that_times_out_ends_on_the_server(raw: psycopg.Connection, hold: str, via: str):
    publish("frontier.bounded", {"n": 1})
    relay = Relay()
    relay.statement_timeout = 0.5
    holder_pid = raw.execute("SELECT pg_backend_pid()").fetchone()[0]
    raw.execute(hold)
    moved: list[int] = []
    thread = threading.Thread(
        target=closing_connections(lambda: moved.append(relay.relay_batch("default"))),
        daemon=True,
    )
    thread.start()
    try:
        thread.join(timeout=10)
        left = _waiting(holder_pid)
        assert not thread.is_alive(), f"the relay still waits; on the server: {left}"
        assert moved == [0]
        assert left == [], "a cancelled take left a statement on the server"
    finally:
        raw.rollback()
        raw.execute("SELECT pg_advisory_unlock_all()")
        thread.join(timeout=30)
    assert relay.relay_batch("default") == 1  # the lock gone, the same relay moves on


def _bounds(cursor: Any) -> tuple[str, str]:
    cursor.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
    return cursor.fetchone()


def test_a_relay_inside_the_callers_transaction_puts_its_bounds_back(via: str):
    """The bound is a local setting, which lasts until the outermost transaction ends, not
    the relay's savepoint: run inside the caller's transaction, the relay puts back the
    caller's settings, so the caller's later statements are not cancelled after the
    relay's bound (docs/internals.md, "The relay's frontier")."""
    publish("frontier.nested", {"n": 1})
    relay = Relay()
    relay.statement_timeout = 0.2
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = '7s'")  # the caller's own, kept
        before = _bounds(cursor)
        assert relay.run_once() == 1
        assert _bounds(cursor) == before
        cursor.execute("SELECT pg_sleep(0.4)")  # longer than the relay's bound
    assert _bounds(connection.cursor()) == ("0", "0")  # and nothing left for the session


def test_a_take_cancelled_inside_the_callers_transaction_leaves_no_bound(raw: psycopg.Connection):
    """A bounded section the server cancels is rolled back to its savepoint, which undoes
    its settings too: the caller's transaction goes on with its own."""
    publish("frontier.nested", {"n": 1})
    relay = Relay()
    relay.statement_timeout = 0.2
    raw.execute(f"SELECT pg_advisory_lock({RELAY_LOCK})")  # another relay holds the lock
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            before = _bounds(cursor)
            assert relay.relay_batch("default") == 0  # the wait for the lock was cancelled
            assert _bounds(cursor) == before
            cursor.execute("SELECT pg_sleep(0.4)")
    finally:
        raw.execute("SELECT pg_advisory_unlock_all()")
    assert relay.relay_batch("default") == 1


def test_a_row_moved_alone_inside_the_callers_transaction_puts_the_bounds_back():
    """The same on the path that moves a refused batch one row at a time."""
    healthy = [publish("frontier.nested", {"n": n}).id for n in range(2)]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_events_outbox ALTER COLUMN source TYPE text")
        cursor.execute(
            "UPDATE django_events_outbox SET source = repeat('s', 300) WHERE event_id = %s",
            [healthy[1]],
        )
    relay = Relay()
    relay.statement_timeout = 0.2
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            before = _bounds(cursor)
            assert relay.relay_batch("default") == 2  # one moved, one set aside
            assert _bounds(cursor) == before
            cursor.execute("SELECT pg_sleep(0.4)")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM django_events_outbox WHERE length(source) > 200")
            cursor.execute("ALTER TABLE django_events_outbox ALTER COLUMN source TYPE varchar(200)")
    assert EventRecord.objects.filter(id=healthy[0]).exists()


def test_a_delivery_released_below_the_claim_floor_is_claimed_after_a_floor_read():
    """The claim starts at a floor per (group, type), read at most every ``FLOOR_EVERY``
    seconds: a delivery another worker gives back below it is claimed at the next read."""
    now = timezone.now()
    events = [
        Outgoing(
            position=900_000 + i, event_id=uuid.uuid4(), type="floor.t", key=None, occurred_at=now
        )
        for i in range(3)
    ]
    log_events(events)
    mine, other = DatabaseTransport("floor-a", {}), DatabaseTransport("floor-b", {})
    try:
        mine.publish(events, [("floor.t", "floor", False)])
        types = {"floor": ["floor.t"]}
        held = other.claim(["floor"], 1, 30.0, types=types)  # the first, by another worker
        assert [c.event_id for c in held] == [events[0].event_id]
        time.sleep(FLOOR_EVERY + 0.1)
        second = mine.claim(["floor"], 1, 30.0, types=types)  # reads its floor past it
        assert [c.event_id for c in second] == [events[1].event_id]
        other.retry_later(held[0], 0.0, "given back")  # now claimable, below that floor
        third = mine.claim(["floor"], 1, 30.0, types=types)
        assert [c.event_id for c in third] == [events[2].event_id]  # the floor still holds
        time.sleep(FLOOR_EVERY + 0.1)
        again = mine.claim(["floor"], 1, 30.0, types=types)
        assert [c.event_id for c in again] == [events[0].event_id]
    finally:
        mine.close()
        other.close()


def _floor_events(base: int, n: int) -> list[Outgoing]:
    now = timezone.now()
    events = [
        Outgoing(
            position=base + i, event_id=uuid.uuid4(), type="floor.t", key=None, occurred_at=now
        )
        for i in range(n)
    ]
    log_events(events)
    return events


def _rare_full_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """As behind a long-held snapshot: the full floor read costs so much, relative to
    ``SCAN_SHARE``, that the next one is far away."""
    monkeypatch.setattr(database, "SCAN_SHARE", 1e-12)


def test_between_full_reads_the_floor_is_read_from_where_it_was(monkeypatch):
    """Most floor reads start at the last floor; what another worker gives back below it
    waits for the next full read, which ``SCAN_SHARE`` spaces by its cost."""
    events = _floor_events(910_000, 4)
    types = {"floor": ["floor.t"]}
    mine, other = DatabaseTransport("floor-a", {}), DatabaseTransport("floor-b", {})
    try:
        mine.publish(events, [("floor.t", "floor", False)])
        held = other.claim(["floor"], 1, 30.0, types=types)
        assert [c.event_id for c in held] == [events[0].event_id]
        assert [c.event_id for c in mine.claim(["floor"], 1, 30.0, types=types)] == [
            events[1].event_id
        ]  # its first read is a full one, past the claimed first
        _rare_full_reads(monkeypatch)
        other.retry_later(held[0], 0.0, "given back")  # claimable, below mine's floor
        time.sleep(FLOOR_EVERY + 0.1)
        third = mine.claim(["floor"], 1, 30.0, types=types)  # read from the last floor
        assert [c.event_id for c in third] == [events[2].event_id]
        monkeypatch.undo()  # the full read comes due again
        time.sleep(FLOOR_EVERY + 0.1)
        again = mine.claim(["floor"], 1, 30.0, types=types)
        assert [c.event_id for c in again] == [events[0].event_id]
    finally:
        mine.close()
        other.close()


def test_what_a_worker_gives_back_below_its_floor_is_claimed_at_once(monkeypatch):
    """A worker that puts a delivery back reads its floors fully at its next claim,
    however rare its full reads have become."""
    events = _floor_events(920_000, 3)
    types = {"floor": ["floor.t"]}
    mine = DatabaseTransport("floor-a", {})
    try:
        mine.publish(events, [("floor.t", "floor", False)])
        (first,) = mine.claim(["floor"], 1, 30.0, types=types)
        time.sleep(FLOOR_EVERY + 0.1)
        (second,) = mine.claim(["floor"], 1, 30.0, types=types)  # the floor moves past it
        assert (first.event_id, second.event_id) == (events[0].event_id, events[1].event_id)
        _rare_full_reads(monkeypatch)
        mine.retry_later(first, 0.0, "failed")
        again = mine.claim(["floor"], 1, 30.0, types=types)
        assert [c.event_id for c in again] == [events[0].event_id]
    finally:
        mine.close()


def test_a_floor_read_with_nothing_waiting_keeps_the_floor():
    """With every delivery handled, the floor stays where it was: back at the lowest
    position, each claim would walk every entry the held snapshot keeps."""
    events = _floor_events(930_000, 3)
    types = {"floor": ["floor.t"]}
    mine = DatabaseTransport("floor-a", {})
    try:
        mine.publish(events, [("floor.t", "floor", False)])
        claimed = mine.claim(["floor"], 3, 30.0, types=types)
        assert len(claimed) == 3 and len(mine.ack_many(claimed)) == 3
        time.sleep(FLOOR_EVERY + 0.1)
        assert mine.claim(["floor"], 3, 30.0, types=types) == []
        assert mine._floors[("floor", "floor.t")] >= events[0].position
    finally:
        mine.close()
