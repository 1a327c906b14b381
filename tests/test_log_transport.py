"""The log transport: groups read the event log through cursors (PostgreSQL and
SQLite; the SQLite-only logic is tested in tests/test_log_sqlite.py)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection, connections, transaction
from django.test import override_settings
from django.utils import timezone

from django_events import publish, retention
from django_events.edit_retry import edit_and_retry
from django_events.engine.relay import Relay
from django_events.engine.sql import INDEX_SCANS_ONLY, index_scans_only
from django_events.engine.worker import Worker
from django_events.models import (
    DeadLetter,
    Delivery,
    EventRecord,
    GroupCursor,
    InboxRecord,
    Lease,
    OutboxMessage,
    Subscription,
)
from django_events.testing.contract import (
    OTHER_TYPE,
    SUBSCRIPTIONS,
    TYPE,
    TransportContract,
    claim_until,
    log_events,
    make_event,
)
from django_events.transports import transports
from django_events.transports.base import Claimed, Outgoing, Transport, logged_events
from django_events.transports.database import DatabaseTransport
from django_events.transports.log import (
    GROUP_LOCK,
    LogTransport,
    heads,
    log_sql,
    not_passed,
    place_cursors_now,
)
from tests.testapp.models import Effect

from .conftest import closing_connections
from .log_support import declare

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="snapshot windows, backends: PostgreSQL's"
)


class TestLogContract(TransportContract):
    """The contract, with events reaching the groups through the log: publishing to
    every subscription is logging the events (the relay's part); publishing to a few
    (replay, redelivery) writes delivery rows, as ``DatabaseTransport`` does."""

    lease = 0.5
    retry_delay = 0.5

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        transport = LogTransport("contract", {})
        yield transport
        transport.close()

    @pytest.fixture
    def provisioned(self, transport: Transport) -> Transport:
        assert isinstance(transport, LogTransport)
        transport.setup(SUBSCRIPTIONS)
        declare(transport, SUBSCRIPTIONS)
        return transport

    def prepare(self, events: Sequence[Outgoing]) -> None:
        for event in events:
            try:
                json.loads(event.data)
            except ValueError:
                pytest.skip("the event log holds only JSON: such data never reaches this transport")
        log_events(events)

    def publish(
        self,
        transport: Transport,
        events: Sequence[Outgoing],
        subscriptions: Sequence[tuple[str, str, bool]] = SUBSCRIPTIONS,
    ) -> None:
        self.prepare(events)
        if list(subscriptions) != SUBSCRIPTIONS:
            # Only the groups named: the cursors pass over these events (every group's
            # cursor restarts now), and delivery rows carry them, as a replay's do.
            start_over()
            transport.publish(events, subscriptions)


def start_over() -> None:
    """Every group's cursor moves to now, past everything logged so far."""
    place_cursors_now(connection.alias, [])


def insert_log_row(db: psycopg.Connection, event: Outgoing) -> None:
    db.execute(
        "INSERT INTO django_events_event (id, position, type, version, key, data, metadata, "
        "occurred_at, source, correlation_id, causation_id) "
        "VALUES (%s, %s, %s, 1, NULL, %s::jsonb, '{}'::jsonb, now(), '', NULL, NULL)",
        [event.event_id, event.position, event.type, event.data],
    )


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_an_event_committed_late_with_a_lower_position_is_claimed_not_skipped(
    log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    """The commit-order gap: a window is a set of transactions between two snapshots,
    never a range of positions, so a transaction that commits after a later position was
    handed out is in a later window."""
    early, late = make_event(), make_event()
    assert early.position < late.position
    insert_log_row(other_connection, early)  # its transaction stays open
    log_events([late])
    [first] = claim_until(log_transport, ["g1"], 1, timeout=5)
    assert first.event_id == late.event_id
    assert log_transport.ack_many([first]) == [first]
    assert log_transport.claim(["g1"], 10, 30) == []
    other_connection.commit()
    [second] = claim_until(log_transport, ["g1"], 1, timeout=5)
    assert (second.event_id, second.attempt) == (early.event_id, 1)


@pytest.mark.django_db(transaction=True)
def test_a_successful_batch_writes_one_lease_row_and_no_delivery_row(
    log_transport: LogTransport,
) -> None:
    log_events([make_event() for _ in range(20)])
    claimed = claim_until(log_transport, ["g1"], 20, timeout=5, limit=20)
    assert len(claimed) == 20
    assert Delivery.objects.count() == 0
    assert Lease.objects.count() == 1
    assert log_transport.ack_many(claimed) == claimed
    assert Lease.objects.count() == 0
    assert Delivery.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_an_idle_workers_claim_reads_its_cursor_first_and_delivery_rows_wait_one_call(
    log_transport: LogTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a look at the delivery rows found none, the next claim reads the cursor
    first and skips the rows when the cursor gave events; the call after it looks at the
    rows first, so a retry waits one call, however much the log holds."""
    looks: list[int] = []
    look = DatabaseTransport._claim_waiting

    def counted(self: DatabaseTransport, *args: object, **kwargs: object) -> list[Claimed]:
        looks.append(1)
        return look(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DatabaseTransport, "_claim_waiting", counted)
    assert log_transport.claim(["g1"], 10, 30) == []  # the rows were looked at: none
    log_events([make_event() for _ in range(30)])
    looks.clear()
    first = log_transport.claim(["g1"], 10, 30)
    assert (len(first), len(looks)) == (10, 0)
    log_transport.retry_later(first[0], 0, "boom")  # a delivery row, due now
    assert log_transport.ack_many(first[1:]) == first[1:]
    second = log_transport.claim(["g1"], 10, 30)
    assert len(looks) == 1
    assert first[0].event_id in {c.event_id for c in second}, "the retry waited past one call"
    assert len(second) == 10


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_dead_claimers_batch_comes_back_one_event_at_a_time_its_attempt_given_back(
    log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    """A worker killed mid-batch: its connection is gone, so its lease is broken up at
    once (no waiting for it to run out), and each event comes back alone, the batch's
    attempt not counted (it may have died on a neighbour)."""
    events = [make_event() for _ in range(3)]
    log_events(events)
    other_connection.autocommit = True
    rows = other_connection.execute(
        "SELECT r_id FROM django_events_log_claim('g1', 10, 'dead', 30, NULL, FALSE, '{}', '{}')"
    ).fetchall()
    assert len(rows) == 3
    other_connection.close()  # the claimer dies
    back: list[Claimed] = []
    for _ in range(3):
        got = claim_until(log_transport, ["g1"], 1, timeout=5)
        assert len(got) == 1, "orphans come back one at a time"
        back += got
        assert log_transport.ack_many(got) == got
    assert sorted(c.event_id for c in back) == sorted(e.event_id for e in events)
    assert [c.attempt for c in back] == [1, 1, 1]
    assert Lease.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_housekeeping_rotates_old_cursor_rows_away_and_keeps_each_groups_newest(
    log_transport: LogTransport,
) -> None:
    for _ in range(3):
        log_events([make_event()])
        log_transport.ack_many(claim_until(log_transport, ["g1"], 1, timeout=5))
    newest = GroupCursor.objects.filter(group_name="g1").latest("id")
    assert GroupCursor.objects.filter(group_name="g1").count() > 1
    log_transport.housekeeping()
    assert list(GroupCursor.objects.filter(group_name="g1")) == [newest]
    assert GroupCursor.objects.filter(group_name="g2").count() == 1


@pytest.mark.django_db(transaction=True)
def test_publish_writes_the_log_row_itself_in_the_callers_transaction(
    on_the_log_transport: LogTransport,
) -> None:
    with transaction.atomic():
        kept = publish("test.happened", {"n": 1})
    with pytest.raises(RuntimeError), transaction.atomic():
        publish("test.happened", {"n": 2})
        raise RuntimeError("rolled back")
    assert OutboxMessage.objects.count() == 0
    assert list(EventRecord.objects.values_list("id", flat=True)) == [kept.id]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid IS NOT NULL FROM django_events_event")
        assert cursor.fetchall() == [(True,)]


@pytest.mark.django_db(transaction=True)
def test_a_worker_on_the_log_transport_handles_events_without_delivery_rows(
    on_the_log_transport: LogTransport,
) -> None:
    """The engine's own path: ``publish()``, the relay (which still moves what an older
    release wrote to the outbox, through the worker's switch between transports, which
    must pass ``reads_log`` on) and the worker's claims."""
    worker = Worker(["alpha"])
    ids = []
    for n in range(3):
        with transaction.atomic():
            ids.append(publish("test.happened", {"n": n}).id)
    older = OutboxMessage.objects.create(
        event_id=uuid.uuid4(), type="test.happened", data='{"n": 3}', occurred_at=timezone.now()
    )
    assert worker.relay is not None and worker.relay.run_once() == 1
    assert Delivery.objects.count() == 0
    while worker.step():
        pass
    assert Delivery.objects.count() == 0 and Lease.objects.count() == 0
    handled = InboxRecord.objects.filter(group_name="alpha").values_list("event_id", flat=True)
    assert sorted(handled) == sorted([*ids, older.event_id])


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_renews_the_rest_of_a_batch_while_one_of_its_events_is_handled_alone(
    on_the_log_transport: LogTransport, tmp_path: Path
) -> None:
    """One event per transaction (``BATCH_TRANSACTIONS = False``): the handler's
    transaction holds the batch's one lease row, and the heartbeat, on a connection of its
    own, must still renew the lease for the event waiting behind it, or it runs out while
    the handler runs and is handed on once it commits (F4; docs/internals.md, "The log
    transport")."""
    started, go = tmp_path / "started", tmp_path / "go"
    publish("test.happened", {"n": 1, "trace": str(started), "wait_for": str(go)})
    publish("test.happened", {"n": 2})
    first, second = claim_until(on_the_log_transport, ["alpha"], 2, timeout=5, lease=1)
    worker = Worker(["alpha"], relay=False)

    def handle_first() -> None:
        try:
            worker.handle(first)
        finally:
            connections.close_all()

    handling = threading.Thread(target=handle_first)
    handling.start()
    try:
        deadline = time.monotonic() + 10
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the first handler never started"
        on_the_log_transport.renew([second], 60)  # the heartbeat's renewal
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT claimed_until > statement_timestamp() + interval '30 seconds' "
                "FROM django_events_lease"
            )
            renewed = cursor.fetchall()
    finally:
        go.touch()
        handling.join(timeout=10)
    assert renewed == [(True,)], "the heartbeat could not renew the waiting event's lease"
    assert on_the_log_transport.ack_many([second]) == [second]
    assert sorted(Effect.objects.values_list("n", flat=True)) == [1]


@pytest.mark.django_db(transaction=True)
def test_a_first_group_finds_what_was_published_before_it_and_a_later_one_joins_the_front() -> None:
    transport = LogTransport("log", {})
    early = [make_event(), make_event()]
    log_events(early)  # before any group has a cursor: a fresh database
    declare(transport, [(TYPE, "g1", False)])
    got = claim_until(transport, ["g1"], 2, timeout=5)
    assert sorted(c.event_id for c in got) == sorted(e.event_id for e in early)
    assert transport.ack_many(got) == got
    later = make_event()
    log_events([later])
    declare(transport, [(TYPE, "g9", False)])  # a group added now starts at g1's place
    [joined] = claim_until(transport, ["g9"], 1, timeout=5)
    assert joined.event_id == later.event_id
    assert transport.claim(["g9"], 10, 30) == []


def handled_by_database_transport(kind: str, event: Outgoing) -> None:
    """What an installation on ``DatabaseTransport`` leaves beside its log: delivery rows
    its relay fanned out, or inbox records of what its workers handled."""
    if kind == "deliveries":
        DatabaseTransport("db", {}).publish([event], SUBSCRIPTIONS)
    else:
        InboxRecord.objects.create(group_name="g1", event_id=event.event_id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["deliveries", "inbox"])
def test_naming_it_the_default_where_another_transport_delivered_is_refused_until_cursors_exist(
    kind: str,
) -> None:
    """Setting ``BACKEND`` alone on a database ``DatabaseTransport`` served: no group has
    a cursor, so each first claim would start at the log's beginning and hand out again
    what was handled. ``consume_events`` refuses to start (E011, its runtime checks); a
    fresh database's log passes (its first worker must find those events), and so does
    one whose cursors the move's cutover placed (docs/internals.md, the switch's guard)."""
    GroupCursor.objects.all().delete()  # the run's setup starts some on the log transport
    transport = LogTransport("log", {})
    event = make_event()
    log_events([event])
    assert "django_events.E011" not in [e.id for e in transport.check_server()], "fresh"
    handled_by_database_transport(kind, event)
    [refused] = [e for e in transport.check_server() if e.id == "django_events.E011"]
    assert "move_transport" in str(refused.hint)
    backend = {"default": {"BACKEND": "django_events.transports.log.LogTransport"}}
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": backend}):
        with pytest.raises(SystemCheckError, match="E011"):
            call_command("consume_events", "--once", "--group", "alpha", skip_checks=False)
        place_cursors_now(connection.alias, ["alpha"])  # as the move's cutover does
        assert "django_events.E011" not in [e.id for e in transport.check_server()]
        call_command("consume_events", "--once", "--group", "alpha", skip_checks=False)


@pytest.mark.django_db(transaction=True)
def test_groups_declared_before_the_switch_start_together_at_the_logs_beginning() -> None:
    """``migrate`` on the database transport declared the groups (no cursor: its store
    starts none), events were published, nobody consumed (so E011 lets the switch pass),
    then ``BACKEND`` named the log transport. Whichever group claims first, each gets
    every event: their cursors start together (``LogTransport._start_declared``), where
    the first claim used to start only its own and the next group where it had got to."""
    GroupCursor.objects.all().delete()  # the run's setup starts some on the log transport
    declared = set(Subscription.objects.values_list("group", flat=True))
    assert {"alpha", "beta"} <= declared, "the flush's post_migrate declared them"
    ids = {publish("test.happened", {"n": n}).id for n in range(3)}
    backend = {"default": {"BACKEND": "django_events.transports.log.LogTransport"}}
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": backend}):
        transports.reset()
        try:
            Relay().run_once()
            first = transports["default"].claim(["beta"], 10, 30.0)
            second = LogTransport("default", {}).claim(["alpha"], 10, 30.0)  # another worker
        finally:
            transports.reset()
    assert {c.event_id for c in first} == ids
    assert {c.event_id for c in second} == ids, "the second group's cursor skipped them"


@pytest.mark.django_db(transaction=True)
def test_rows_the_database_transport_logs_are_outside_every_cursor() -> None:
    """``DatabaseTransport`` carries its events in delivery rows: the log rows its relay
    writes are in no cursor's reach (``txid`` NULL; on SQLite the rowid minus the
    position), so cursors started or resumed later (the log transport named again after
    a way out and back) do not hand them out again, and on PostgreSQL they take no entry
    in the txid index. The log transport's relay writes rows its cursors read
    (docs/internals.md, "Log rows outside the cursors")."""
    GroupCursor.objects.all().delete()  # the run's setup starts some on the log transport
    backend = {"default": {"BACKEND": "django_events.transports.database.DatabaseTransport"}}
    # publish() writes the outbox row under DatabaseTransport, whatever the run's default.
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": backend}):
        delivered = {publish("test.happened", {"n": n}).id for n in range(3)}
        Relay(DatabaseTransport("default", {})).run_once()
    rows = Delivery.objects.filter(group_name="alpha")
    assert set(rows.values_list("event_id", flat=True)) == delivered
    Delivery.objects.all().delete()  # handled
    log = LogTransport("default", {})
    assert log.claim(["alpha"], 10, 30.0) == [], "a cursor from the log's beginning"
    later = publish("test.happened", {"n": 3}).id
    Relay(log).run_once()
    assert [c.event_id for c in claim_until(log, ["alpha"], 1, timeout=5)] == [later]
    with connection.cursor() as cursor:
        reach = "txid IS NOT NULL" if connection.vendor == "postgresql" else "rowid <> -position"
        cursor.execute(f"SELECT id, {reach} FROM django_events_event")  # noqa: S608
        found = {uuid.UUID(str(event_id)): bool(reached) for event_id, reached in cursor}
    assert found == {**dict.fromkeys(delivered, False), later: True}


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_cursors_walks_use_the_partial_txid_index(log_transport: LogTransport) -> None:
    """Migration 0017 keeps only the rows cursors read in the txid index (``txid IS NOT
    NULL``): each walk past a cursor's ``hi`` must still be an index scan of it, which
    PostgreSQL allows only where it proves the walk's ``txid`` comparisons non-null."""
    log_events([make_event() for _ in range(3)])
    claim_until(log_transport, ["g1"], 1, timeout=5, limit=1)
    walks = log_sql(connection.alias)._walks(connection, "h")  # type: ignore[attr-defined]
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        cursor.execute(
            f"EXPLAIN SELECT * FROM {heads('django_events_cursor', '')} h "  # noqa: S608
            f"CROSS JOIN LATERAL {walks} w"
        )
        plan = "\n".join(line for (line,) in cursor.fetchall())
    assert plan.count("Index Scan using django_events_event_txid_set") == 2, plan


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_0017_makes_the_txid_index_partial_both_ways_and_runs_again() -> None:
    """docs/internals.md, "Upgrading": built beside the old index, which goes; a second
    run (as after an interruption) finds its work done; back, the full index returns."""
    listed = (
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'django_events_event' "
        "AND indexdef LIKE '%(txid)%'"
    )

    def txid_indexes() -> list[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(listed)
            return [(name, definition.rpartition(" USING ")[2]) for name, definition in cursor]

    call_command("migrate", "django_events", "0016_own_events", verbosity=0)
    try:
        assert txid_indexes() == [("django_events_event_txid", "btree (txid)")]
        call_command("migrate", "django_events", verbosity=0)
        partial = [("django_events_event_txid_set", "btree (txid) WHERE (txid IS NOT NULL)")]
        assert txid_indexes() == partial
        with connection.schema_editor(atomic=False) as editor:
            migration = importlib.import_module("django_events.migrations.0017_partial_txid_index")
            migration.forwards(None, editor)
        assert txid_indexes() == partial
        call_command("migrate", "django_events", "0016_own_events", verbosity=0)
        assert txid_indexes() == [("django_events_event_txid", "btree (txid)")]
    finally:
        call_command("migrate", verbosity=0)


def hold_group_lock(db: psycopg.Connection, group: str) -> None:
    """``db`` takes ``group``'s claim lock, as a claim in progress holds it, until its
    transaction ends."""
    db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [GROUP_LOCK, group])


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_waits_for_its_group_while_another_claim_holds_it(
    log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    """A claim holds its group's lock for about a millisecond. One that found it taken
    returned nothing, and its worker, taking the group for idle, waited a whole poll
    interval with the events there (docs/internals.md, "The log transport"): it waits for
    the lock instead, and the caller's lock_timeout is left as it was."""
    log_events([make_event() for _ in range(3)])
    hold_group_lock(other_connection, "g1")
    threading.Timer(0.05, other_connection.commit).start()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '7s'")
        claimed = log_transport.claim(["g1"], 10, 30)
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone() == ("7s",)
    assert len(claimed) == 3


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_gives_up_on_a_group_locked_longer_than_a_claim_takes(
    log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    """A lock held for long (a rotation, a claim inside a test's transaction) sends the
    claim on to its next group after a short wait, not forever; the caller's
    lock_timeout, which the wait replaced for a moment, is back."""
    log_events([make_event() for _ in range(3)])
    hold_group_lock(other_connection, "g1")
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '7s'")
            assert [c.group for c in log_transport.claim(["g1", "g2"], 10, 30)] == ["g2"] * 3
            cursor.execute("SHOW lock_timeout")
            assert cursor.fetchone() == ("7s",)
    finally:
        other_connection.commit()
    assert len(claim_until(log_transport, ["g1"], 3, timeout=5, limit=10)) == 3


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_0018_the_claims_lock_wait_both_ways() -> None:
    """Back to 0017 the claim tries the lock once again; forwards it waits."""

    def waits() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT prosrc FROM pg_proc WHERE proname = 'django_events_log_claim'")
            (source,) = cursor.fetchone()
        return "pg_advisory_xact_lock(" in source and "pg_try_advisory_xact_lock(" not in source

    assert waits()
    call_command("migrate", "django_events", "0017_partial_txid_index", verbosity=0)
    try:
        assert not waits()
    finally:
        call_command("migrate", verbosity=0)
    assert waits()


@pytest.mark.django_db(transaction=True)
def test_status_reads_the_log_for_the_groups_asked_only(log_transport: LogTransport) -> None:
    """A worker samples its own groups' lag every minute: another group's cursor, far
    back if nobody consumes it, must not be walked from for it."""
    log_events([make_event() for _ in range(3)])
    status = log_transport.status(["g1"])
    assert status["g1"].pending == 3
    assert "g2" not in status  # g2 is owed the same 3 events; nobody asked


@pytest.mark.django_db(transaction=True)
def test_a_subscriptions_backlog_counts_its_cursor_and_leases_and_is_what_dropping_drops(
    log_transport: LogTransport,
) -> None:
    """What a retired subscription still holds (``events_status``, the admin, W050) and what
    unsubscribing it says it dropped ("nothing goes silently"): here it is mostly past the
    group's cursor or in its leases, not in delivery rows."""
    log_events([make_event() for _ in range(3)] + [make_event(OTHER_TYPE)])
    [leased] = claim_until(log_transport, ["g1"], 1, timeout=5, limit=1)
    expected = {("g1", TYPE): 3, ("g2", TYPE): 3, ("g3", OTHER_TYPE): 1}
    backlog = log_transport.backlog_by_type()
    assert {pair: backlog.get(pair) for pair in [*expected, ("g1", OTHER_TYPE)]} == {
        **expected,
        ("g1", OTHER_TYPE): None,
    }
    log_transport.retry_later(leased, 60, "boom")  # from its lease to a delivery row
    assert log_transport.backlog_by_type()[("g1", TYPE)] == 3
    assert log_transport.drop_backlog("g1", TYPE) == 3  # the row, and 2 past the cursor
    assert not Delivery.objects.filter(group_name="g1").exists()


@postgresql_only
@pytest.mark.django_db  # one transaction around the test, as Django's TestCase
def test_deliver_in_the_publishing_transaction_hands_out_each_event_published_there(
    on_the_log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    """``deliver()`` works inside ``TestCase`` (docs/testing.md): the worker sees the test
    transaction's own writes. A window reads what committed between two snapshots: this
    transaction's own xid is no snapshot's running xid, and is visible in one once a later
    xid has completed somewhere in the cluster; had the window's ``hi`` counted it as
    passed, an event published afterwards in the same transaction would be in no window
    (docs/internals.md, "The log transport", claims inside the publishing transaction)."""
    from django_events.testing import deliver

    publish("test.happened", {"n": 1})
    assert deliver(["alpha"]) == 1, "no later xid has completed"
    publish("test.happened", {"n": 2})
    other_connection.execute("SELECT pg_current_xact_id()")  # a later xid completes
    other_connection.commit()
    claimed = on_the_log_transport.claim(["alpha"], 10, 30)
    assert [c.event and c.event.data["n"] for c in claimed] == [2], "each event once, in one way"
    on_the_log_transport.ack_many(claimed)
    publish("test.happened", {"n": 3})
    with transaction.atomic():
        publish("test.happened", {"n": 4})
        assert deliver(["alpha"]) == 2
        transaction.set_rollback(True)  # the savepoint's event, its effect and its mark go
    publish("test.happened", {"n": 5})
    assert on_the_log_transport.status(["alpha"])["alpha"].pending == 2
    assert deliver(["alpha"]) == 2, "3 again, as its handling rolled back with the savepoint; 5"
    assert sorted(Effect.objects.values_list("n", flat=True)) == [1, 3, 5]
    assert deliver(["alpha"]) == 0
    assert on_the_log_transport.status(["alpha"])["alpha"].pending == 0, "handed: passed"
    first = EventRecord.objects.get(data__n=1)
    on_the_log_transport.redeliver(first.id, "alpha")  # a retry: the cursor owes it no more
    assert Delivery.objects.filter(group_name="alpha", event_id=first.id).exists()


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_events_a_transaction_handed_itself_have_their_effect_once_if_it_commits(
    on_the_log_transport: LogTransport,
) -> None:
    """A transaction that claims its own events and then commits: they are in the next
    window as any committed transaction's, and the inbox keeps their effect once."""
    from django_events.testing import deliver

    with transaction.atomic():
        publish("test.happened", {"n": 1})
        assert deliver(["alpha"]) == 1
    publish("test.happened", {"n": 2})
    deliver(["alpha"])
    assert sorted(Effect.objects.values_list("n", flat=True)) == [1, 2]
    assert deliver(["alpha"]) == 0


def owed_by_definition(group: str) -> int:
    """What ``group`` is owed, by ``not_passed`` over the whole log: the oracle the
    status query's index walks must agree with."""
    types = 'SELECT s.event_type FROM django_events_subscription s WHERE s."group" = h.group_name'
    where = f"h.group_name = %s AND l.type IN ({types}) AND {not_passed('l', 'h')}"
    log, newest = "django_events_event", heads("django_events_cursor")
    query = f"SELECT count(*) FROM {log} l, {newest} h WHERE {where}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(query, [group])
        return int(cursor.fetchone()[0])


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_status_counts_the_open_windows_rest_the_late_committers_and_what_came_after(
    log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    """The status query finds what a group is owed in the claim's index walks, not by
    scanning the log (docs/internals.md, "The log transport", status): each walk must
    count what it owes, as the definition does."""
    log_events([make_event() for _ in range(5)] + [make_event(OTHER_TYPE) for _ in range(2)])
    early = make_event()
    insert_log_row(other_connection, early)  # running when the claim takes its snapshot
    got = claim_until(log_transport, ["g1"], 2, timeout=5, limit=2)
    assert len(got) == 2
    seen = []
    for step in ("window", "late committer", "after hi"):
        if step == "late committer":
            other_connection.commit()
        elif step == "after hi":
            log_events([make_event(), make_event()])
        status = log_transport.status(["g1"])["g1"]
        seen.append((status.pending, owed_by_definition("g1"), status.in_flight))
    assert seen == [(3, 3, 2), (4, 4, 2), (6, 6, 2)]
    assert log_transport.status(["g1"])["g1"].oldest_pending_age_s is not None


def log_scans() -> int:
    """Sequential scans of the log so far, this session's included (its pending counts are
    flushed first: PostgreSQL 15 sends them at most once a second otherwise)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT 1")  # the flush happens when the session is idle again
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'django_events_event'"
        )
        return int(cursor.fetchone()[0])


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_status_never_scans_the_whole_log_and_leaves_the_callers_settings(
    log_transport: LogTransport,
) -> None:
    """On a log of any size the planner, given a bound from a cursor row, estimates a
    third of the table and scans all of it: H1 measured 5-6 s per sample (docs/internals.md,
    "The log transport", status). Inside the caller's transaction its settings come back."""
    log_events([make_event() for _ in range(3)])
    before = log_scans()
    assert log_transport.status(["g1"])["g1"].pending == 3
    assert log_scans() == before
    settings = "SELECT " + ", ".join(f"current_setting('{name}')" for name in INDEX_SCANS_ONLY)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(settings)
        before = cursor.fetchone()
        with index_scans_only("default"):
            cursor.execute(settings)
            assert cursor.fetchone() == ("off", "off", "off")  # no JIT either
        log_transport.status(["g1"])
        cursor.execute(settings)
        assert cursor.fetchone() == before


@pytest.mark.django_db(transaction=True)
def test_a_replay_writes_delivery_rows_only_where_no_cursor_or_lease_hands_the_event_out(
    log_transport: LogTransport,
) -> None:
    """One path per event and group: a row beside the cursor or the lease would be a
    second delivery, and two dead letters for one event if it fails."""
    passed, leased, owed = events = [make_event() for _ in range(3)]
    log_events(events)
    [first] = claim_until(log_transport, ["g1"], 1, timeout=5, limit=1)
    assert first.event_id == passed.event_id and log_transport.ack_many([first]) == [first]
    [second] = claim_until(log_transport, ["g1"], 1, timeout=5, limit=1)
    assert second.event_id == leased.event_id  # in a lease now, not acknowledged
    log_transport.publish(events, [(TYPE, "g1", False)])  # a replay of all three to g1
    assert list(Delivery.objects.values_list("event_id", flat=True)) == [passed.event_id]
    assert log_transport.ack_many([second]) == [second]
    rest = claim_until(log_transport, ["g1"], 3, timeout=3)
    assert sorted(c.event_id for c in rest) == sorted([passed.event_id, owed.event_id])


@pytest.mark.django_db(transaction=True)
def test_a_replay_writes_no_second_row_for_an_event_waiting_for_its_retry(
    log_transport: LogTransport,
) -> None:
    """An event that failed here waits in a delivery row, passed by the cursor and in no
    lease: the delivery row's lookup (``republish``, as on ``DatabaseTransport``) finds it."""
    event = make_event()
    log_events([event])
    [claimed] = claim_until(log_transport, ["g1"], 1, timeout=5)
    log_transport.retry_later(claimed, 0.0, "boom")
    log_transport.republish([event], [(TYPE, "g1", False)])
    assert Delivery.objects.filter(group_name="g1").count() == 1
    [again] = claim_until(log_transport, ["g1"], 1, timeout=5)
    assert (again.event_id, again.attempt) == (event.event_id, 2)


@pytest.mark.django_db(transaction=True)
def test_a_replay_to_a_group_with_no_cursor_yet_reaches_it_once(
    log_transport: LogTransport,
) -> None:
    """A group declared before cursors existed, or whose cursor rows were deleted: its
    first claim would start its cursor where the most advanced group is, here before the
    last replayed event, and hand that event out beside the row the replay wrote for it.
    The replay starts the cursor first, in its own transaction."""
    events = [make_event() for _ in range(3)]
    log_events(events)
    read = claim_until(log_transport, ["g2"], 2, timeout=5, limit=2)
    assert log_transport.ack_many(read) == read  # g2, the most advanced, is past two
    GroupCursor.objects.filter(group_name="g1").delete()
    log_transport.republish(events, [(TYPE, "g1", False)])
    claimed = claim_until(log_transport, ["g1"], 4, timeout=2)
    assert sorted(c.event_id for c in claimed) == sorted(e.event_id for e in events)
    rows = Delivery.objects.filter(group_name="g1").values_list("event_id", flat=True)
    assert sorted(rows) == sorted(e.event_id for e in events[:2])  # the third: the cursor's


def claimed_meanwhile(group: str) -> list[Claimed]:
    """What a claim of ``group`` on another connection gets now, while this test's
    transaction is open."""
    got: list[Claimed] = []

    def claim() -> None:
        got.extend(LogTransport("other", {}).claim([group], 10, 30))

    other = threading.Thread(target=closing_connections(claim))
    other.start()
    other.join(10)
    return got


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_no_claim_starts_a_cursor_beside_the_one_a_replay_started(
    log_transport: LogTransport,
) -> None:
    """The replay holds the group's claim lock from its cursor's start to its commit: a
    claim meanwhile, which cannot see that cursor yet, would start one of its own, and
    whichever row has the higher id wins, even one behind what the other handed out."""
    events = [make_event() for _ in range(2)]
    log_events(events)
    GroupCursor.objects.filter(group_name="g1").delete()
    with transaction.atomic():
        log_transport.republish(events[:1], [(TYPE, "g1", False)])
        assert claimed_meanwhile("g1") == [], "a claim ran beside the replay's cursor start"
    assert GroupCursor.objects.filter(group_name="g1").count() == 1
    claimed = claim_until(log_transport, ["g1"], 3, timeout=2)
    assert sorted(c.event_id for c in claimed) == sorted(e.event_id for e in events)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_no_claim_starts_a_cursor_beside_the_one_a_declaration_started(
    log_transport: LogTransport,
) -> None:
    """Declaring a new group (migrate, ``setup_events``, a deploying service) starts its
    cursor under the group's claim lock, held to the declaration's commit, as a replay
    does (above)."""
    events = [make_event() for _ in range(2)]
    log_events(events)
    with transaction.atomic():
        declare(log_transport, [(TYPE, "g9", False)])
        assert claimed_meanwhile("g9") == [], "a claim ran beside the declaration's start"
    assert GroupCursor.objects.filter(group_name="g9").count() == 1
    claimed = claim_until(log_transport, ["g9"], 3, timeout=2)
    assert sorted(c.event_id for c in claimed) == sorted(e.event_id for e in events)


@pytest.mark.django_db(transaction=True)
def test_retention_keeps_what_a_group_has_not_read_or_holds_in_a_lease(
    log_transport: LogTransport,
) -> None:
    """An owed event has no delivery row here: the purge must ask the leases and cursors."""
    from django_events import retention

    events = [make_event() for _ in range(3)]
    log_events(events)
    EventRecord.objects.update(recorded_at=timezone.now() - dt.timedelta(days=2))
    assert retention.purge(retention.EVENTS, "default", 3600) == 0  # nobody has read them
    claimed = claim_until(log_transport, ["g1", "g2"], 6, timeout=5)
    assert retention.purge(retention.EVENTS, "default", 3600) == 0  # all in leases
    assert log_transport.ack_many(claimed) == claimed
    assert retention.purge(retention.EVENTS, "default", 3600) == 3


def old_inbox_records(events: Sequence[Outgoing], groups: Sequence[str]) -> None:
    """Each of ``groups`` handled each of ``events`` two days ago (a first copy)."""
    InboxRecord.objects.bulk_create(
        InboxRecord(group_name=group, event_id=event.event_id)
        for group in groups
        for event in events
    )
    InboxRecord.objects.update(handled_at=timezone.now() - dt.timedelta(days=2))


def inbox_left() -> list[tuple[str, uuid.UUID]]:
    return sorted(InboxRecord.objects.values_list("group_name", "event_id"))


@pytest.mark.django_db(transaction=True)
def test_retention_keeps_an_inbox_record_while_its_groups_cursor_has_not_passed_the_event(
    log_transport: LogTransport,
) -> None:
    """A second copy of a handled event (a replay's, a move's) may still be owed through
    the group's cursor, with no delivery row: its inbox record must stay until the cursor
    has passed the event, or the copy runs the handler again. Per group: another group's
    cursor holds back its own records only."""
    from django_events import retention

    events = [make_event() for _ in range(2)]
    log_events(events)
    old_inbox_records(events, ["g1", "g2"])
    assert retention.purge(retention.INBOX, "default", 3600) == 0  # no cursor has passed them
    claimed = claim_until(log_transport, ["g1"], 2, timeout=5)
    assert log_transport.ack_many(claimed) == claimed
    assert retention.purge(retention.INBOX, "default", 3600) == 2  # g1's
    assert inbox_left() == sorted(("g2", e.event_id) for e in events)


@pytest.mark.django_db(transaction=True)
def test_retention_keeps_an_inbox_record_while_one_of_its_groups_leases_holds_the_event(
    log_transport: LogTransport,
) -> None:
    """The claim moved the cursor past the event and put it in a lease: until the lease
    lets go of it, the group may be handed it again (a lease that runs out becomes a
    delivery row), so its inbox record stays."""
    from django_events import retention

    event = make_event()
    log_events([event])
    [claimed] = claim_until(log_transport, ["g1"], 1, timeout=5)
    old_inbox_records([event], ["g1"])
    assert Lease.objects.filter(group_name="g1").count() == 1
    assert retention.purge(retention.INBOX, "default", 3600) == 0  # in its lease
    assert log_transport.ack_many([claimed]) == [claimed]
    assert retention.purge(retention.INBOX, "default", 3600) == 1
    assert inbox_left() == []


@pytest.fixture
def editing() -> Iterator[LogTransport]:
    """The log transport as the default (``publish()`` logs, drawing real positions), every
    contract subscription declared, and edit and retry on."""
    backend = {"default": {"BACKEND": "django_events.transports.log.LogTransport"}}
    conf = {**settings.DJANGO_EVENTS, "TRANSPORTS": backend, "ADMIN_EDIT_RETRY": True}
    with override_settings(DJANGO_EVENTS=conf):
        transport = transports["default"]
        assert isinstance(transport, LogTransport)
        declare(transport, SUBSCRIPTIONS)
        yield transport


def edited_copy(transport: LogTransport) -> tuple[uuid.UUID, uuid.UUID]:
    """An event of ``TYPE`` dead-lettered by g1 and handled by g2, then edited and retried
    for g1: its id and the copy's."""
    original = publish(TYPE, {"n": 1})
    [failed] = claim_until(transport, ["g1"], 1, timeout=5)
    assert transport.dead_letter(failed)
    now = timezone.now()
    dead = DeadLetter.objects.create(
        event_id=original.id,
        group="g1",
        attempts=1,
        error_class="RuntimeError",
        first_failed_at=now,
        last_failed_at=now,
    )
    [handled] = claim_until(transport, ["g2"], 1, timeout=5)
    assert transport.ack_many([handled]) == [handled]
    root = User.objects.create_superuser("root", password="pw")  # noqa: S106
    copy = edit_and_retry(dead, json.dumps({"n": 2}), root).event_id
    return original.id, copy


@pytest.mark.django_db(transaction=True)
def test_an_edited_copy_reaches_the_dead_letters_group_only_and_once(
    editing: LogTransport,
) -> None:
    """Edit and retry logs the corrected copy for one group: its delivery row carries it
    there, and no group's cursor reads it, neither another group of its type's (which
    would handle an event meant for g1) nor g1's own (a second delivery beside the row)
    (docs/internals.md, "The log transport", log rows for one group)."""
    _, copy = edited_copy(editing)
    assert editing.status(["g2"])["g2"].pending == 0
    assert editing.backlog_by_type().get(("g2", TYPE), 0) == 0
    assert editing.drop_backlog("g2", TYPE) == 0  # what unsubscribing would say it dropped
    claimed = claim_until(editing, ["g1", "g2"], 2, timeout=1)
    assert [(c.group, c.event_id) for c in claimed] == [("g1", copy)]
    assert editing.ack_many(claimed) == claimed
    later = publish(TYPE, {"n": 3})  # the cursors read on past the copy
    claimed = claim_until(editing, ["g1", "g2"], 3, timeout=1)
    assert sorted(c.group for c in claimed) == ["g1", "g2"]
    assert {c.event_id for c in claimed} == {later.id}


@pytest.mark.django_db(transaction=True)
def test_an_edited_copy_is_kept_while_owed_and_replays_to_another_group(
    editing: LogTransport,
) -> None:
    """The copy stays in the log: retention keeps it while its delivery row owes it, and
    only that long (no cursor is behind it), and a replay to another group reaches that
    group (a delivery row: its cursor does not hand it out)."""
    original, copy = edited_copy(editing)
    EventRecord.objects.update(recorded_at=timezone.now() - dt.timedelta(days=2))
    assert retention.purge(retention.EVENTS, "default", 3600) == 1  # the original only
    [claimed] = claim_until(editing, ["g1"], 1, timeout=5)
    assert claimed.event_id == copy
    editing.republish(logged_events([copy], "default"), [(TYPE, "g2", False)])  # a replay
    assert Delivery.objects.filter(group_name="g2", event_id=copy).count() == 1
    [replayed] = claim_until(editing, ["g2"], 1, timeout=5)
    assert replayed.event_id == copy
    assert editing.ack_many([claimed, replayed]) == [claimed, replayed]
    assert retention.purge(retention.EVENTS, "default", 3600) == 1  # the copy, once done
    assert not EventRecord.objects.filter(id__in=[original, copy]).exists()


@pytest.mark.django_db(transaction=True)
def test_a_redirect_to_a_group_that_still_owes_the_event_is_its_one_delivery(
    log_transport: LogTransport,
) -> None:
    """A dead letter retried or redirected (``redeliver``) to a group whose lease holds the
    event, or whose cursor has not passed it, writes no delivery row: the group gets it
    there, once. A group that does not subscribe to the type gets a row, as its claims
    walk its own types only (docs/internals.md, "One path per event")."""
    first, second = make_event(), make_event()
    log_events([first, second])
    [leased] = claim_until(log_transport, ["g2"], 1, timeout=5, limit=1)
    assert leased.event_id == first.event_id
    for event in (first, second):
        log_transport.redeliver(event.event_id, "g2")
        log_transport.redeliver(event.event_id, "g3")  # g3 takes OTHER_TYPE only
    assert not Delivery.objects.filter(group_name="g2").exists()
    assert Delivery.objects.filter(group_name="g3").count() == 2
    assert log_transport.ack_many([leased]) == [leased]
    claimed = claim_until(log_transport, ["g2", "g3"], 4, timeout=1)
    assert sorted((c.group, str(c.event_id)) for c in claimed) == sorted(
        [("g2", str(second.event_id)), ("g3", str(first.event_id)), ("g3", str(second.event_id))]
    )
