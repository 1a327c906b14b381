"""The log transport on SQLite: a cursor is a position, since one writer at a time makes
insertion order commit order (docs/internals.md, "The log transport on SQLite"). The
contract suite runs on it too (tests/test_log_transport.py)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_events import publish, retention
from django_events.engine.relay import Relay
from django_events.models import Delivery, EventRecord, GroupCursor, Lease, OutboxMessage
from django_events.testing.contract import (
    KEYED_TYPE,
    claim_until,
    log_events,
    make_event,
)
from django_events.transports import log
from django_events.transports.base import Claimed
from django_events.transports.log import LeaseReceipt, LogTransport, log_sql, place_cursors_now

from .conftest import closing_connections

pytestmark = [
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's cursors"),
    pytest.mark.django_db(transaction=True),
]


def head(group: str) -> int:
    return GroupCursor.objects.filter(group_name=group).latest("id").pos


def ids(claimed: list[Claimed]) -> list[uuid.UUID]:
    return [c.event_id for c in claimed]


def test_a_claim_moves_the_cursor_to_the_last_position_handed_out_and_the_next_starts_after_it(
    log_transport: LogTransport,
) -> None:
    events = [make_event() for _ in range(5)]
    log_events(events)
    first = log_transport.claim(["g1"], 2, 30)
    assert ids(first) == [e.event_id for e in events[:2]]
    assert head("g1") == events[1].position
    rest = log_transport.claim(["g1"], 10, 30)
    assert ids(rest) == [e.event_id for e in events[2:]]
    assert head("g1") == events[4].position
    assert log_transport.claim(["g1"], 10, 30) == []
    assert head("g2") < events[0].position  # another group's cursor has not moved


def test_a_batch_is_one_lease_row_of_its_positions_and_each_ack_trims_it(
    log_transport: LogTransport,
) -> None:
    events = [make_event() for _ in range(3)]
    log_events(events)
    claimed = log_transport.claim(["g1"], 3, 30)
    assert all(isinstance(c.receipt, LeaseReceipt) for c in claimed)
    [lease] = Lease.objects.all()
    assert lease.positions == [e.position for e in events]
    assert Delivery.objects.count() == 0
    assert log_transport.ack_many(claimed[:1]) == claimed[:1]
    assert Lease.objects.get().positions == [e.position for e in events[1:]]
    assert log_transport.ack_many(claimed[:1]) == [], "acknowledged once only"
    assert log_transport.ack_many(claimed[1:]) == claimed[1:]
    assert Lease.objects.count() == 0 and Delivery.objects.count() == 0


def test_an_expired_batch_comes_back_one_event_at_a_time_its_attempt_given_back(
    log_transport: LogTransport,
) -> None:
    events = [make_event() for _ in range(2)]
    log_events(events)
    assert len(log_transport.claim(["g1"], 2, 0.2)) == 2
    time.sleep(0.4)
    back: list[Claimed] = []
    for _ in range(2):
        got = claim_until(log_transport, ["g1"], 1, timeout=5)
        assert len(got) == 1, "orphans come back one at a time"
        assert log_transport.ack_many(got) == got
        back += got
    assert sorted(ids(back)) == sorted(e.event_id for e in events)
    assert [c.attempt for c in back] == [1, 1]
    assert Lease.objects.count() == 0 and Delivery.objects.count() == 0


def test_an_event_claimed_alone_that_expires_counts_the_attempt(
    log_transport: LogTransport,
) -> None:
    log_events([make_event()])
    [first] = log_transport.claim(["g1"], 1, 0.2)
    time.sleep(0.4)
    [again] = claim_until(log_transport, ["g1"], 1, timeout=5)
    assert (again.event_id, again.attempt) == (first.event_id, 2)
    assert log_transport.ack(first) is False, "its lease was broken up"


def test_a_renewed_lease_is_not_broken_up(log_transport: LogTransport) -> None:
    log_events([make_event()])
    [claimed] = log_transport.claim(["g1"], 1, 0.3)
    log_transport.renew([claimed], 30)
    time.sleep(0.5)
    other = LogTransport("other", {})
    assert other.claim(["g1"], 10, 30) == []
    assert log_transport.ack(claimed) is True


def test_retry_later_makes_a_delivery_row_due_later_with_the_attempt_counted(
    log_transport: LogTransport,
) -> None:
    log_events([make_event()])
    [claimed] = log_transport.claim(["g1"], 1, 30)
    log_transport.retry_later(claimed, 0.5, "boom")
    assert Lease.objects.count() == 0
    [row] = Delivery.objects.all()
    assert (row.attempts, row.last_error, row.lease_token) == (1, "boom", None)
    assert row.first_failed_at is not None
    assert log_transport.claim(["g1"], 10, 30) == [], "not due yet"
    [again] = claim_until(log_transport, ["g1"], 1, timeout=5)
    assert (again.event_id, again.attempt) == (claimed.event_id, 2)
    assert log_transport.ack(again) is True
    assert Delivery.objects.count() == 0


def test_release_gives_the_event_back_at_once_its_attempt_not_counted(
    log_transport: LogTransport,
) -> None:
    log_events([make_event(), make_event()])
    claimed = log_transport.claim(["g1"], 2, 30)
    log_transport.release(claimed[1:])
    assert Lease.objects.get().positions == [claimed[0].receipt.position]
    [again] = log_transport.claim(["g1"], 10, 30)
    assert (again.event_id, again.attempt) == (claimed[1].event_id, 1)


def test_a_dead_letter_leaves_its_lease_and_writes_no_delivery_row(
    log_transport: LogTransport,
) -> None:
    log_events([make_event(), make_event()])
    claimed = log_transport.claim(["g1"], 2, 30)
    assert log_transport.dead_letter(claimed[0]) is True
    assert log_transport.dead_letter(claimed[0]) is False
    assert Lease.objects.get().positions == [claimed[1].receipt.position]
    assert Delivery.objects.count() == 0


def test_ordered_types_and_types_the_worker_does_not_handle_become_delivery_rows(
    log_transport: LogTransport,
) -> None:
    keyed, unkeyed = make_event(KEYED_TYPE, key="k"), make_event(KEYED_TYPE)
    plain = make_event()
    log_events([keyed, unkeyed, plain])
    got = log_transport.claim(["seq"], 10, 30)
    assert sorted(ids(got)) == sorted([keyed.event_id, unkeyed.event_id])
    assert not any(isinstance(c.receipt, LeaseReceipt) for c in got)
    ordered = dict(Delivery.objects.filter(group_name="seq").values_list("event_id", "ordered"))
    assert ordered == {keyed.event_id: True, unkeyed.event_id: False}
    # A worker of g1 that handles another type only: the event waits for one that does.
    assert log_transport.claim(["g1"], 10, 30, types={"g1": {"contract.other"}}) == []
    [row] = Delivery.objects.filter(group_name="g1")
    assert (row.event_id, row.lease_token) == (plain.event_id, None)
    assert Lease.objects.count() == 0


def test_status_counts_the_events_past_the_cursor_and_those_in_leases(
    log_transport: LogTransport,
) -> None:
    log_events([make_event() for _ in range(3)])
    log_transport.claim(["g1"], 2, 30)
    status = log_transport.status(["g1"])["g1"]
    assert (status.pending, status.in_flight) == (1, 2)
    assert status.oldest_pending_age_s is not None and status.oldest_pending_age_s >= 0


def test_a_cursor_placed_now_passes_everything_logged_and_reads_what_comes_next(
    log_transport: LogTransport,
) -> None:
    log_events([make_event() for _ in range(3)])
    place_cursors_now(connection.alias, ["g1"])
    assert log_transport.claim(["g1"], 10, 30) == []
    later = make_event()
    log_events([later])
    assert ids(log_transport.claim(["g1"], 10, 30)) == [later.event_id]


def test_a_claim_waits_for_a_publisher_holding_the_write_lock_and_then_takes_its_event(
    on_the_log_transport: LogTransport,
) -> None:
    """A publisher's positions are drawn under the write lock it holds to its commit: a
    claim in the meantime waits for the lock, then finds the event, never passes it."""
    written, go = threading.Event(), threading.Event()
    published: list[uuid.UUID] = []
    claimed: list[Claimed] = []

    def publisher() -> None:
        with transaction.atomic():
            published.append(publish("test.happened", {"n": 1}).id)
            written.set()
            assert go.wait(30)

    def claimer() -> None:
        claimed.extend(on_the_log_transport.claim(["alpha"], 10, 30))

    writing = threading.Thread(target=closing_connections(publisher))
    writing.start()
    assert written.wait(30)
    claiming = threading.Thread(target=closing_connections(claimer))
    claiming.start()
    claiming.join(0.5)
    assert claiming.is_alive(), "the claim waits for the publisher's lock"
    go.set()
    writing.join(30)
    claiming.join(30)
    assert ids(claimed) == published


def test_an_outbox_row_relayed_after_later_events_were_logged_is_not_passed(
    on_the_log_transport: LogTransport,
) -> None:
    """An outbox row written before the log transport became the default (or by an older
    release) is moved by the relay after ``publish()`` logged later events above its
    position, which the cursor has passed: it takes a new position."""
    older = OutboxMessage.objects.create(
        event_id=uuid.uuid4(), type="test.happened", data='{"n": 0}', occurred_at=timezone.now()
    )
    newer = publish("test.happened", {"n": 1})
    [first] = on_the_log_transport.claim(["alpha"], 10, 30)
    assert first.event_id == newer.id and on_the_log_transport.ack(first)
    assert Relay(on_the_log_transport).run_once() == 1
    [late] = on_the_log_transport.claim(["alpha"], 10, 30)
    assert late.event_id == older.event_id
    assert EventRecord.objects.get(id=older.event_id).position > older.position


def test_a_row_kept_from_the_cursors_stays_out_of_their_reach_after_vacuum(
    on_the_log_transport: LogTransport,
) -> None:
    """The mark (the rowid set to minus the position) is no column: ``VACUUM``, which may
    renumber the rowids of a table with no index, must keep it on the log, which has
    several, or every group's walk would hand the row out again."""
    before = publish("test.happened", {"n": 1})
    kept = publish("test.happened", {"n": 2})
    with transaction.atomic():
        log.keep_from_cursors(connection.alias, [kept.id])
    with connection.cursor() as cursor:
        cursor.execute("VACUUM")
    assert ids(on_the_log_transport.claim(["alpha"], 10, 30)) == [before.id]
    assert EventRecord.objects.filter(id=kept.id).exists()  # in the log, for the admin


def test_an_event_logged_when_only_rows_kept_from_the_cursors_are_left_is_read(
    on_the_log_transport: LogTransport,
) -> None:
    """SQLite gives a new row the highest rowid plus one: with only a kept row left (the
    rest purged), that is at or below zero, and must not read as kept."""
    kept = publish("test.happened", {"n": 1})
    with transaction.atomic():
        log.keep_from_cursors(connection.alias, [kept.id])
    after = [publish("test.happened", {"n": n}) for n in range(2, 4)]
    assert ids(on_the_log_transport.claim(["alpha"], 10, 30)) == [e.id for e in after]


def test_positions_never_go_back_when_retention_deletes_the_newest_events(
    on_the_log_transport: LogTransport,
) -> None:
    for n in range(2):
        publish("test.happened", {"n": n})
    # Every group of the type reads them (beta too, when the run's default declared it).
    while got := on_the_log_transport.claim(["alpha", "beta"], 10, 30):
        assert on_the_log_transport.ack_many(got) == got
    EventRecord.objects.update(recorded_at=timezone.now() - dt.timedelta(days=2))
    assert retention.purge(retention.EVENTS, "default", 3600) == 2
    after = publish("test.happened", {"n": 2})
    assert ids(on_the_log_transport.claim(["alpha"], 10, 30)) == [after.id]


@pytest.mark.parametrize(("options", "refused"), [({"rotate": True}, True), ({}, False)])
def test_rotation_is_refused_on_sqlite_by_the_check(options: dict[str, Any], refused: bool) -> None:
    errors = [e.id for e in LogTransport("log", options).check()]
    assert ("django_events.E010" in errors) is refused
    assert "django_events.E004" not in errors


def test_the_claims_log_read_walks_the_position_index(log_transport: LogTransport) -> None:
    """From the cursor in position order, stopping at the limit: never the type index and
    a sort of every event of the group's types."""
    log_events([make_event() for _ in range(3)])
    with CaptureQueriesContext(connection) as queries:
        assert len(log_transport.claim(["g1"], 10, 30)) == 3
    [read] = [q["sql"] for q in queries if "ORDER BY position LIMIT" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {read}")
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "position>?" in plan and "TEMP B-TREE" not in plan, plan


def test_two_claimers_of_one_group_never_take_the_same_event(
    log_transport: LogTransport,
) -> None:
    """Each claim reads its group's cursor and appends the next one in one transaction
    that holds the write lock from its first statement: no two claims read the same
    cursor."""
    events = [make_event() for _ in range(400)]
    log_events(events)
    taken: list[int] = []

    def claimer() -> None:
        while True:
            rows = log_sql(connection.alias).claim(
                connection.alias, "g1", 3, uuid.uuid4().hex, 30, None, False, [], []
            )
            if not rows:
                return
            taken.extend(row[1] for row in rows)

    threads = [threading.Thread(target=closing_connections(claimer)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(taken) == len(set(taken)), f"{len(taken) - len(set(taken))} taken twice"
    assert sorted(taken) == [e.position for e in events]


def test_a_publish_outside_a_transaction_holds_the_lock_from_its_draw_to_its_insert(
    on_the_log_transport: LogTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In autocommit the draw would commit alone: another publisher could then draw and
    commit a higher position, a claim pass it, and this row commit below the cursor."""
    drawn, go = threading.Event(), threading.Event()
    real = log.draw_positions

    def draw_then_wait(using: str, count: int) -> int:
        first = real(using, count)
        if threading.current_thread().name == "slow":
            drawn.set()
            assert go.wait(30)
        return first

    monkeypatch.setattr(log, "draw_positions", draw_then_wait)
    slow = threading.Thread(
        target=closing_connections(lambda: publish("test.happened", {"n": 1})), name="slow"
    )
    fast = threading.Thread(target=closing_connections(lambda: publish("test.happened", {"n": 2})))
    slow.start()
    assert drawn.wait(30)
    fast.start()
    fast.join(0.5)
    assert fast.is_alive(), "the second publisher waits for the first one's commit"
    go.set()
    slow.join(30)
    fast.join(30)
    got = on_the_log_transport.claim(["alpha"], 10, 30)
    assert [c.event.data["n"] for c in got if c.event] == [1, 2]


def _draws(queries: CaptureQueriesContext) -> int:
    return sum(q["sql"].startswith("UPDATE sqlite_sequence") for q in queries.captured_queries)


def _position(event_id: uuid.UUID) -> int:
    return EventRecord.objects.get(id=event_id).position


def _counter() -> int:
    """The position counter (``log.draw_positions``): never below a logged position."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = 'django_events_outbox'")
        [(counter,)] = cursor.fetchall()
    return int(counter)


def _published_elsewhere() -> int:
    """The position of an event another connection publishes and commits now."""
    got: list[uuid.UUID] = []
    other = threading.Thread(
        target=closing_connections(lambda: got.append(publish("test.happened", {"n": -1}).id))
    )
    other.start()
    other.join(30)
    return _position(got[0])


def test_a_transaction_publishing_one_at_a_time_draws_positions_a_few_times(
    on_the_log_transport: LogTransport,
) -> None:
    """Each later draw takes as many ahead as were drawn before: 100 publishes, 7 draws
    (1, 2, 4, ... 64 positions), where each publish drew its own."""
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        events = [publish("test.happened", {"n": n}) for n in range(100)]
    assert _draws(queries) == 7
    positions = [_position(e.id) for e in events]
    assert positions == sorted(set(positions))
    got = on_the_log_transport.claim(["alpha"], 100, 30)
    assert ids(got) == [e.id for e in events]


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_positions_drawn_ahead_are_not_used_after_the_transaction_ends(
    on_the_log_transport: LogTransport, ending: str
) -> None:
    """After a commit the lock is gone: another writer may commit higher positions first.
    After a rollback the draw is undone: another writer may draw the same positions."""
    try:
        with transaction.atomic():
            for n in range(2):  # the second draws two positions and leaves one
                publish("test.happened", {"n": n})
            if ending == "rollback":
                raise RuntimeError
    except RuntimeError:
        pass
    elsewhere = _published_elsewhere()
    with transaction.atomic():
        later = publish("test.happened", {"n": 3})
    assert _position(later.id) > elsewhere
    assert _counter() >= _position(later.id)


def test_positions_drawn_in_a_savepoint_rolled_back_are_drawn_again(
    on_the_log_transport: LogTransport,
) -> None:
    """The rollback to the savepoint undoes the counter's rise: positions taken from the
    undone draw would sit above the counter, where an outbox row could take them."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                publish("test.happened", {"n": 1})
                publish("test.happened", {"n": 2})  # draws one ahead
                raise RuntimeError
        except RuntimeError:
            pass
        kept = publish("test.happened", {"n": 3})
    assert _counter() >= _position(kept.id)


def test_a_transaction_the_application_commits_itself_draws_at_every_publish(
    on_the_log_transport: LogTransport,
) -> None:
    """With autocommit off, ``commit()`` replaces nothing Django keeps: no drawn position
    outlives a publish, or the next transaction would reuse it unlocked."""
    transaction.set_autocommit(False)
    try:
        for n in range(2):
            publish("test.happened", {"n": n})
        transaction.commit()
        elsewhere = _published_elsewhere()
        later = publish("test.happened", {"n": 2})
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert _position(later.id) > elsewhere
