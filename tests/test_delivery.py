"""The delivery contract, in one process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import IntegrityError, connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_events import publish
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.models import DeadLetter, Delivery, EventRecord, InboxRecord, OutboxMessage
from django_events.testing import deliver
from django_events.transports import transports
from django_events.transports.base import logged_events

from .conftest import postgres_only
from .testapp.models import Effect
from .transport_support import expire_claims, lease_end, owed

pytestmark = pytest.mark.django_db(transaction=True)


def effects(group: str | None = None) -> list[tuple[str, int | None]]:
    rows = Effect.objects.order_by("id")
    if group:
        rows = rows.filter(group=group)
    return list(rows.values_list("group", "n"))


def test_rolled_back_event_is_never_delivered():
    with pytest.raises(RuntimeError), transaction.atomic():
        publish("test.happened", {"n": 1})
        raise RuntimeError("the order failed")
    publish("test.happened", {"n": 2})
    deliver()
    assert sorted(effects()) == [("alpha", 2), ("beta", 2)]
    assert EventRecord.objects.count() == 1


def test_rolled_back_savepoint_event_is_never_delivered():
    with transaction.atomic():
        publish("test.happened", {"n": 1})
        with pytest.raises(RuntimeError), transaction.atomic():
            publish("test.happened", {"n": 2})
            raise RuntimeError
    deliver()
    assert sorted(effects()) == [("alpha", 1), ("beta", 1)]


def test_every_subscribed_group_gets_each_committed_event_once():
    for n in range(5):
        with transaction.atomic():
            publish("test.happened", {"n": n})
    assert deliver() == 10
    assert sorted(effects("alpha")) == [("alpha", n) for n in range(5)]
    assert sorted(effects("beta")) == [("beta", n) for n in range(5)]
    assert Delivery.objects.count() == 0, "handled work rows are deleted"
    assert InboxRecord.objects.count() == 10


@pytest.mark.database_transport
def test_relay_moves_outbox_rows_into_the_log_in_publish_order():
    ids = [publish("test.happened", {"n": n}).id for n in range(3)]
    publish("test.unsubscribed", {"n": 9})
    assert OutboxMessage.objects.count() == 4
    assert Relay().run_once() == 4
    assert OutboxMessage.objects.count() == 0
    logged = list(EventRecord.objects.order_by("position").values_list("id", flat=True))
    assert logged[:3] == ids
    # Nobody subscribes to test.unsubscribed: logged, never owed to a group.
    assert not Delivery.objects.filter(event__type="test.unsubscribed").exists()
    assert Delivery.objects.count() == 6


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 3, "BACKOFF_BASE": 0})
def test_poison_event_is_a_dead_letter_after_exactly_max_attempts_while_others_flow():
    publish("test.happened", {"n": 0})
    poison = publish("test.happened", {"n": 1, "fail": True})
    publish("test.happened", {"n": 2})
    deliver(["alpha"])
    assert sorted(effects("alpha")) == [("alpha", 0), ("alpha", 2)]
    dead = DeadLetter.objects.get()
    assert (dead.event_id, dead.group, dead.attempts) == (poison.id, "alpha", 3)
    assert dead.error_class == "RuntimeError"
    assert "asked to fail: 1" in dead.error_message
    assert "Traceback" in dead.traceback and "behave" in dead.traceback
    assert dead.handler == "tests.testapp.events.alpha"
    assert dead.first_failed_at <= dead.last_failed_at
    assert not Delivery.objects.filter(group_name="alpha").exists()


def test_handler_max_attempts_overrides_the_global_setting():
    publish("test.limited", {"fail": True})
    deliver()
    assert DeadLetter.objects.get().attempts == 2


@override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 60})
def test_failed_event_waits_for_its_backoff_before_the_next_attempt():
    publish("test.happened", {"n": 1, "fail": True})
    deliver(["alpha"])
    row = Delivery.objects.get(group_name="alpha")
    assert row.attempts == 1 and row.claimed_until is None
    assert "asked to fail" in row.last_error and row.first_failed_at is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # same database clock as the engine
    assert row.available_at > row.first_failed_at
    assert deliver(["alpha"]) == 0
    assert Delivery.objects.get(group_name="alpha").attempts == 1, "not due yet, not claimed"


def test_duplicate_delivery_has_its_effect_once():
    event = publish("test.happened", {"n": 7})
    deliver(["alpha"])
    logged = EventRecord.objects.get(id=event.id)
    Delivery.objects.create(event=logged, group_name="alpha", position=logged.position)
    deliver(["alpha"])
    assert effects("alpha") == [("alpha", 7)]
    assert Delivery.objects.filter(group_name="alpha").count() == 0
    assert InboxRecord.objects.filter(group_name="alpha", event_id=event.id).count() == 1


def test_event_type_without_handler_in_group_is_a_dead_letter():
    event = publish("test.sequenced", {"n": 1}, key="k")
    Relay().run_once()
    logged = EventRecord.objects.get(id=event.id)
    Delivery.objects.create(event=logged, group_name="alpha", position=logged.position)
    deliver(["alpha"])
    dead = DeadLetter.objects.get(group="alpha")
    assert dead.error_class == "NoHandler"
    assert "no handler for 'test.sequenced'" in dead.error_message


def test_undecodable_payload_is_a_dead_letter_not_a_crash_loop():
    bad = publish("test.happened", {"n": 1})
    publish("test.happened", {"n": 2})
    Relay().run_once()
    EventRecord.objects.filter(id=bad.id).update(data=[1, 2, 3])  # valid JSON, not an object
    deliver(["alpha"])
    dead = DeadLetter.objects.get(group="alpha")
    assert dead.error_class == "UndecodableEvent"
    assert "JSON object" in dead.error_message
    assert effects("alpha") == [("alpha", 2)]


def test_attempt_is_counted_at_claim_and_an_expired_lease_frees_the_event():
    event = publish("test.happened", {"n": 1})
    Relay().run_once()
    transport = transports["default"]
    first = transport.claim(["alpha"], 1, lease=30)
    assert [c.event_id for c in first] == [event.id] and first[0].attempt == 1
    assert transport.claim(["alpha"], 10, lease=30) == [], "leased events are not claimable"
    # The worker holding it dies without a word; its lease runs out (database time).
    expire_claims("alpha")
    second = transport.claim(["alpha"], 10, lease=30)
    assert second[0].attempt == 2
    Worker(["alpha"], relay=False).handle(second[0])
    assert effects("alpha") == [("alpha", 1)]
    assert transport.ack(first[0]) is False, "the dead worker's claim is void"


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2})
def test_event_whose_worker_died_on_its_last_attempt_is_a_dead_letter():
    publish("test.happened", {"n": 1})
    Relay().run_once()
    transport = transports["default"]
    for _ in range(2):
        assert transport.claim(["alpha"], 1, lease=30)
        expire_claims("alpha")
    (past_last,) = transport.claim(["alpha"], 1, lease=30)
    Worker(["alpha"], relay=False).handle(past_last)
    dead = DeadLetter.objects.get()
    assert (dead.error_class, dead.attempts) == ("LeaseExpired", 2)
    assert effects("alpha") == []
    # The claim is left as it was: callers (and F8's model) still see the attempt claimed.
    assert past_last.attempt == 3


def test_lost_claim_is_not_handled_by_the_worker_that_lost_it():
    publish("test.happened", {"n": 1})
    Relay().run_once()
    transport = transports["default"]
    stale = transport.claim(["alpha"], 10, lease=30)[0]
    expire_claims("alpha")
    fresh = transport.claim(["alpha"], 10, lease=30)[0]
    worker = Worker(["alpha"], relay=False)
    worker.handle(stale)
    assert effects("alpha") == []
    worker.handle(fresh)
    assert effects("alpha") == [("alpha", 1)]


def test_heartbeat_renewal_extends_the_lease():
    publish("test.happened", {"n": 1})
    Relay().run_once()
    transport = transports["default"]
    claimed = transport.claim(["alpha"], 10, lease=5)
    before = lease_end("alpha")
    transport.renew(claimed, lease=300)
    after = lease_end("alpha")
    assert (after - before).total_seconds() > 250


def test_released_events_were_not_attempted():
    publish("test.happened", {"n": 1})
    Relay().run_once()
    transport = transports["default"]
    transport.release(transport.claim(["alpha"], 10, lease=30))
    row = Delivery.objects.get(group_name="alpha")
    assert (row.attempts, row.claimed_until) == (0, None)


def test_ordered_events_of_one_key_are_handled_one_at_a_time_in_publish_order():
    for n in range(4):
        publish("test.sequenced", {"n": n}, key="a")
        publish("test.sequenced", {"n": 10 + n}, key="b")
    Relay().run_once()
    transport = transports["default"]
    claimed = transport.claim(["sequence"], 100, lease=30)
    assert sorted(c.event.data["n"] for c in claimed) == [0, 10], "only each key's head"
    transport.release(claimed)
    deliver(["sequence"])
    assert [n for _, n in effects("sequence") if n < 10] == [0, 1, 2, 3]
    assert [n for _, n in effects("sequence") if n >= 10] == [10, 11, 12, 13]


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1})
def test_dead_letter_parks_only_its_own_key_until_redelivered(tmp_path: Path):
    switch = tmp_path / "broken"
    switch.write_text("on")
    stuck = publish("test.sequenced", {"n": 1, "fail_if_exists": str(switch)}, key="a")
    publish("test.sequenced", {"n": 2}, key="a")
    publish("test.sequenced", {"n": 3}, key="b")
    deliver(["sequence"])
    assert effects("sequence") == [("sequence", 3)], "key a is parked behind its dead letter"
    assert DeadLetter.objects.get().event_id == stuck.id
    switch.unlink()
    transports["default"].redeliver(stuck.id, "sequence")
    deliver(["sequence"])
    assert effects("sequence") == [("sequence", 3), ("sequence", 1), ("sequence", 2)]


def test_redelivering_a_dead_letter_reaches_only_its_group(tmp_path: Path):
    switch = tmp_path / "broken"
    switch.write_text("on")
    event = publish("test.happened", {"n": 1, "fail_if_exists": str(switch)})
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1}):
        deliver()
    assert DeadLetter.objects.count() == 2
    switch.unlink()
    transports["default"].redeliver(event.id, "beta")
    deliver()
    assert effects() == [("beta", 1)]


@pytest.mark.database_transport
@postgres_only
def test_commit_order_gap_is_never_skipped():
    """Transaction A takes the lower position but commits after B; A is still relayed."""
    a_inserted, a_may_commit = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                publish("test.happened", {"n": 1})
                a_inserted.set()
                a_may_commit.wait(10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert a_inserted.wait(10)
    with transaction.atomic():
        publish("test.happened", {"n": 2})
    relay = Relay()
    assert relay.run_once() == 1, "only B is committed"
    a_may_commit.set()
    thread.join(10)
    assert not errors
    assert relay.run_once() == 1, "A, committed last with the lower position, is not skipped"
    positions = dict(EventRecord.objects.values_list("data__n", "position"))
    assert positions[1] < positions[2]
    deliver(["alpha"])
    assert sorted(effects("alpha")) == [("alpha", 1), ("alpha", 2)]


def listening(other: Any, channel: str) -> Any:
    """``other_connection``, listening on ``channel`` (autocommit: notifies arrive)."""
    other.autocommit = True
    other.execute(f"LISTEN {channel}")
    return other


@pytest.mark.database_transport  # the outbox's channel
@postgres_only
def test_one_notify_per_publishing_transaction(other_connection: Any):
    listener = listening(other_connection, "django_events_outbox")
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        for n in range(5):
            publish("test.happened", {"n": n})
    assert sum("pg_notify" in q["sql"] for q in queries.captured_queries) == 1
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            publish("test.happened", {"n": 5})
            raise RuntimeError
        publish("test.happened", {"n": 6})  # the rolled-back NOTIFY must be sent again
    publish("test.happened", {"n": 7})  # autocommit: its own transaction
    assert len(list(listener.notifies(timeout=1.0))) == 3


@pytest.mark.database_transport  # the delivery rows' channel
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_relay_batch_wakes_the_workers_once_and_only_when_it_wrote_delivery_rows(
    other_connection: Any,
):
    listener = listening(other_connection, "django_events_delivery")
    for n in range(3):
        publish("test.happened", {"n": n})
    assert Relay().run_once() == 3
    assert len(list(listener.notifies(timeout=1.0))) == 1
    publish("test.nobody", {"n": 4})  # no group subscribes: no delivery row
    assert Relay().run_once() == 1
    # A replay of events every group still owes writes no row: no wake-up either.
    owed = logged_events(list(EventRecord.objects.values_list("id", flat=True)), "default")
    transports["default"].republish(owed, [("test.happened", "alpha", False)])
    assert list(listener.notifies(timeout=1.0)) == []


def test_a_batch_shares_one_transaction_and_a_failure_is_recorded_without_a_replay():
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2, "BATCH_SIZE": 10, "BACKOFF_BASE": 0}):
        for n in range(5):
            publish("test.happened", {"n": n, "fail": n == 2})
        Relay().run_once()
        worker = Worker(["alpha"], relay=False)
        worker.process_batch()
        # The failing handler's savepoint rolled back; its neighbours committed together.
        assert sorted(effects("alpha")) == [("alpha", n) for n in (0, 1, 3, 4)]
        row = Delivery.objects.get(group_name="alpha")
        assert row.attempts == 1 and "asked to fail: 2" in row.last_error
        assert not InboxRecord.objects.filter(event_id=row.event_id).exists()
        worker.process_batch()
        assert DeadLetter.objects.get().attempts == 2
        assert sorted(effects("alpha")) == [("alpha", n) for n in (0, 1, 3, 4)]


@override_settings(DJANGO_EVENTS={"BATCH_TRANSACTIONS": False})
def test_one_transaction_per_event_when_batches_are_off():
    for n in range(3):
        publish("test.happened", {"n": n})
    with CaptureQueriesContext(connection) as queries:
        deliver(["alpha"])
    commits = [
        q for q in queries.captured_queries if "INSERT INTO" in q["sql"] and "inbox" in q["sql"]
    ]
    assert len(commits) == 3
    assert sorted(effects("alpha")) == [("alpha", n) for n in range(3)]


def test_duplicate_deliveries_in_one_batch_have_their_effect_once():
    event = publish("test.happened", {"n": 7})
    Relay().run_once()
    logged = EventRecord.objects.get(id=event.id)
    Delivery.objects.create(event=logged, group_name="alpha", position=logged.position)
    publish("test.happened", {"n": 8})
    Relay().run_once()
    deliver(["alpha"])
    assert sorted(effects("alpha")) == [("alpha", 7), ("alpha", 8)]
    assert not Delivery.objects.filter(group_name="alpha").exists()


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 3, "BACKOFF_BASE": 60})
def test_a_failing_group_does_not_replay_another_groups_handlers(tmp_path: Path):
    trace = tmp_path / "calls"
    for n in range(3):
        publish(
            "test.happened", {"n": n, "trace": str(trace), "fail_group": "beta" if n == 1 else ""}
        )
    Relay().run_once()
    Worker(["alpha", "beta"], relay=False, batch_size=10).process_batch()
    calls = trace.read_text().split()
    assert sorted(c for c in calls if c.startswith("alpha")) == ["alpha:0", "alpha:1", "alpha:2"]
    # beta's failure at n=1 re-ran nothing: each handler ran once in this attempt.
    assert sorted(c for c in calls if c.startswith("beta")) == ["beta:0", "beta:1", "beta:2"]
    assert sorted(effects("alpha")) == [("alpha", n) for n in range(3)]
    assert sorted(effects("beta")) == [("beta", 0), ("beta", 2)]


@postgres_only
@override_settings(DJANGO_EVENTS={"PUBLISH_NOTIFY": False})
def test_publish_sends_no_notify_when_turned_off():
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        publish("test.happened", {"n": 1})
    assert not any("pg_notify" in q["sql"] for q in queries.captured_queries)
    deliver(["alpha"])
    assert effects("alpha") == [("alpha", 1)], "the relay's poll still finds it"


@pytest.mark.database_transport
@postgres_only
def test_a_burst_of_deliveries_refreshes_the_planner_statistics(monkeypatch):
    from django_events.transports import database

    monkeypatch.setattr(database, "ANALYZE_AFTER", 20)
    with transaction.atomic():
        for n in range(15):
            publish("test.happened", {"n": n})
    with CaptureQueriesContext(connection) as queries:
        Relay().run_once()
    assert any(q["sql"].startswith("ANALYZE") for q in queries.captured_queries)
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'django_events_delivery'")
        assert cursor.fetchone()[0] == 30


def test_a_dead_workers_batch_comes_back_one_by_one_and_only_a_lone_claim_counts():
    for n in range(3):
        publish("test.happened", {"n": n})
    Relay().run_once()
    transport = transports["default"]
    batch = transport.claim(["alpha"], 10, lease=30)
    assert [c.attempt for c in batch] == [1, 1, 1]
    # The worker dies somewhere in the batch: nobody knows which event killed it.
    expire_claims("alpha")
    again = transport.claim(["alpha"], 10, lease=30)
    assert len(again) == 1, "an orphan comes back alone"
    assert again[0].attempt == 1, "the batch attempt is given back"
    expire_claims("alpha")  # again[0] is the group's one claim
    alone_again = transport.claim(["alpha"], 10, lease=30)
    assert alone_again[0].event_id == again[0].event_id
    assert alone_again[0].attempt == 2, "dying while claimed alone counts"


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1})
def test_discarding_a_parked_dead_letter_releases_its_key():
    from django.contrib.auth.models import User

    from django_events import triage

    stuck = publish("test.sequenced", {"n": 1, "fail": True}, key="a")
    publish("test.sequenced", {"n": 2}, key="a")
    deliver(["sequence"])
    assert effects("sequence") == []
    admin = User.objects.create_superuser("root", password="pw")  # noqa: S106
    triage.discard(DeadLetter.objects.filter(event_id=stuck.id), admin, "bad data, refunded")
    deliver(["sequence"])
    assert effects("sequence") == [("sequence", 2)]


def test_publish_many_writes_all_in_one_statement_in_order():
    from django_events import publish_many

    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        events = publish_many(
            [("test.happened", {"n": n}) for n in range(3)] + [("test.sequenced", {"n": 3}, "k")]
        )
    # The outbox, or the log itself where the default transport reads it (the log transport).
    model = EventRecord if transports["default"].reads_log else OutboxMessage
    into = f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)}"
    assert len([q for q in queries.captured_queries if into in q["sql"]]) == 1
    assert [e.key for e in events] == [None, None, None, "k"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    deliver()
    assert sorted(effects("alpha")) == [("alpha", n) for n in range(3)]
    assert effects("sequence") == [("sequence", 3)]


@pytest.mark.parametrize("prepared", [True, False], ids=["executemany", "document"])
def test_publish_many_stores_each_event_as_returned_in_the_order_given(prepared: bool) -> None:
    """On PostgreSQL many events go through one prepared row statement, pipelined by
    ``executemany``, or as one JSON document where statements are not prepared (SQLite:
    VALUES lists either way): every value arrives as publish_many() returned it, awkward
    text included, positions in order."""
    conf = {**settings.DJANGO_EVENTS, "PREPARED_STATEMENTS": prepared}
    ran: list[bool] = []  # whether each insert into the table went through executemany

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "INSERT INTO" in sql:
            ran.append(many)
        return execute(sql, params, many, context)

    with override_settings(DJANGO_EVENTS=conf), connection.execute_wrapper(watch):
        stores_each_event_as_returned_in_the_order_given()
    # The publish() of the cause, then three publish_many() calls of several events.
    pipelined = prepared and connection.vendor == "postgresql"
    assert ran == [False, *[pipelined] * 3], ran


def stores_each_event_as_returned_in_the_order_given() -> None:
    from django_events import publish_many
    from django_events.outbox import handling

    awkward = {"q": 'say "hi"\\', "u": "Grüße, 東京 🎉", "esc": "\\u0000 is text", "n": None}
    specs: list[Any] = [
        ("test.noted", {**awkward, "i": i}, None if i % 3 else f"key-{i}") for i in range(40)
    ]
    cause = publish("test.happened", {"n": 0})
    with transaction.atomic(), handling(cause):
        events = publish_many(specs, metadata={"tenant": "t-1"})
        events += publish_many(specs[:2])  # a second statement in the transaction
    events += publish_many(specs[:3], version=1)
    model = EventRecord if transports["default"].reads_log else OutboxMessage
    id_field = "id" if model is EventRecord else "event_id"
    rows = list(model.objects.exclude(**{id_field: cause.id}).order_by("position"))
    assert [getattr(row, id_field) for row in rows] == [e.id for e in events]
    for row, event in zip(rows, events, strict=True):
        data = row.data if model is EventRecord else json.loads(row.data)
        metadata = row.metadata if model is EventRecord else json.loads(row.metadata or "{}")
        assert (row.type, row.version, row.key, data, metadata) == (
            event.type,
            event.version,
            event.key,
            event.data,
            event.metadata,
        )
        assert (row.occurred_at, row.source) == (event.occurred_at, event.source)
        assert (row.correlation_id, row.causation_id) == (
            event.correlation_id,
            event.causation_id,
        )
    assert events[0].causation_id == cause.id and events[0].metadata == {"tenant": "t-1"}
    assert events[-1].correlation_id == events[-1].id and events[-1].causation_id is None


def test_publish_many_writes_nothing_if_one_event_is_invalid():
    from django_events import publish_many
    from django_events.exceptions import InvalidEventType

    with pytest.raises(InvalidEventType):
        publish_many([("test.happened", {"n": 1}), ("Not A Type", {"n": 2})])
    assert not OutboxMessage.objects.exists() and not EventRecord.objects.exists()


@postgres_only
@pytest.mark.parametrize("prepared", [True, False], ids=["executemany", "document"])
def test_publish_many_outside_a_transaction_writes_all_or_nothing(prepared: bool) -> None:
    """In autocommit, a row the database refuses (here a check constraint) after others
    went in leaves none of them: the rows are inserted in one transaction of their own."""
    from django_events import publish_many

    table = (EventRecord if transports["default"].reads_log else OutboxMessage)._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT no_poison CHECK (data::text NOT LIKE '%%poison%%')"
        )
    conf = {**settings.DJANGO_EVENTS, "PREPARED_STATEMENTS": prepared}
    try:
        with override_settings(DJANGO_EVENTS=conf), pytest.raises(IntegrityError):
            publish_many(
                [("test.happened", {"n": n}) for n in range(3)] + [("test.happened", {"poison": 1})]
            )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT no_poison")
    assert not OutboxMessage.objects.exists() and not EventRecord.objects.exists()


@pytest.mark.database_transport
def test_a_malformed_outbox_row_becomes_a_dead_letter_and_blocks_nothing():
    publish("test.happened", {"n": 1})
    bad = publish("test.happened", {"n": 2})
    OutboxMessage.objects.filter(event_id=bad.id).update(data="{not json")
    publish("test.happened", {"n": 3})
    deliver(["alpha"])
    assert sorted(effects("alpha")) == [("alpha", 1), ("alpha", 3)]
    dead = DeadLetter.objects.get()
    assert (dead.group, dead.error_class, dead.event_id) == ("(relay)", "UndecodableEvent", bad.id)
    assert "not valid JSON" in dead.error_message and "{not json" in dead.traceback
    assert not OutboxMessage.objects.exists()


@override_settings(DJANGO_EVENTS={"BATCH_BYTES": 25_000})
def test_a_worker_claims_batches_within_its_byte_budget():
    for n in range(4):
        publish("test.happened", {"n": n, "pad": "x" * 10_000})
    Relay().run_once()
    worker = Worker(["alpha"], relay=False, batch_size=10)
    assert [worker.process_batch() for _ in range(3)] == [2, 2, 0]
    assert sorted(effects("alpha")) == [("alpha", n) for n in range(4)]
    assert (owed("alpha"), owed("beta")) == (0, 4)


def _delivery_updates() -> tuple[int, int]:
    """This transaction's updates of the deliveries so far: all, and HOT ones."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_stat_get_xact_tuples_updated(c.oid), "
            "pg_stat_get_xact_tuples_hot_updated(c.oid) FROM pg_class c "
            "WHERE c.oid = 'django_events_delivery'::regclass"
        )
        updated, hot = cursor.fetchone()
    return int(updated), int(hot)


@pytest.mark.database_transport
@postgres_only
def test_claims_and_heartbeats_are_hot_updates_and_an_expired_lease_still_comes_back():
    # docs/internals.md, "The delivery table and HOT claims": no index of the deliveries
    # names a column the claim sets, so its update adds no index entries.
    for n in range(5):
        publish("test.happened", {"n": n})
    Relay().run_once()
    transport = transports["default"]
    before = _delivery_updates()
    claimed = transport.claim(["alpha"], 10, lease=30)
    transport.renew(claimed, lease=60)
    after = _delivery_updates()
    assert len(claimed) == 5
    assert (after[0] - before[0], after[1] - before[1]) == (10, 10), "every update was HOT"
    # Without the "held" index, the orphan claim still finds an expired lease.
    expire_claims("alpha")
    (orphan,) = transport.claim(["alpha"], 10, lease=30)
    assert orphan.event_id == claimed[0].event_id


@pytest.mark.database_transport
def test_a_costly_look_for_orphans_waits_its_share_of_a_busy_worker(monkeypatch):
    # docs/internals.md, "The claim's floor": the look reads the whole delivery table,
    # so behind a held snapshot a worker with work to do spaces it by its cost.
    from django_events.transports import database

    for n in range(3):
        publish("test.happened", {"n": n})
    Relay().run_once()
    transport = database.DatabaseTransport("orphans", {})
    try:
        claimed = transport.claim(["alpha"], 2, lease=30)  # looks for orphans first
        assert len(claimed) == 2
        ids = [c.receipt[0] for c in claimed]
        Delivery.objects.filter(id__in=ids).update(claimed_until="2000-01-01T00:00:00Z")
        monkeypatch.setattr(database, "SCAN_SHARE", 1e-12)  # as if the look were costly
        time.sleep(database.ORPHAN_CHECK_INTERVAL + 0.1)
        (fresh,) = transport.claim(["alpha"], 10, lease=30)  # the work waiting, no look
        assert fresh.event_id not in {c.event_id for c in claimed}
        monkeypatch.setattr(database, "SCAN_SHARE", 1e12)  # as if it cost nothing
        (orphan,) = transport.claim(["alpha"], 10, lease=30)
        assert orphan.event_id == claimed[0].event_id
    finally:
        transport.close()
