"""The log transport's cursor and lease tables rotate: a slot is copied out of and
``TRUNCATE``d (docs/internals.md, "The log transport")."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.utils import timezone

from django_events.models import Lease
from django_events.testing.contract import SUBSCRIPTIONS, claim_until, log_events, make_event
from django_events.transports.base import Claimed
from django_events.transports.log import GROUP_LOCK, ROTATION_LOCK, LogTransport, heads, rotate

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the log transport needs PostgreSQL"
    ),
    pytest.mark.django_db(transaction=True),
]


def rows(query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def state() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every group's cursor and every lease, without their slots."""
    newest = heads("django_events_cursor")
    cursors = rows(f"SELECT h.id, h.group_name, h.lo, h.hi, h.pos, h.last FROM {newest} h")  # noqa: S608
    cursors.sort()
    leases = rows(
        "SELECT id, group_name, positions, claimed_alone, claimed_until, claimer, lease_token "
        "FROM django_events_lease ORDER BY id"
    )
    return cursors, leases


def slot_rows(slot: int) -> int:
    cursors, leases = f"django_events_cursor_{slot}", f"django_events_lease_{slot}"
    [(count,)] = rows(f"SELECT (SELECT count(*) FROM {cursors}) + (SELECT count(*) FROM {leases})")  # noqa: S608
    return int(count)


def slot_pages(slot: int) -> int:
    [(size,)] = rows(
        f"SELECT pg_relation_size('django_events_cursor_{slot}') "
        f"+ pg_relation_size('django_events_lease_{slot}')"
    )
    return int(size)


def busy(transport: LogTransport, rounds: int) -> list[Claimed]:
    """Claims and acknowledgements on both groups, as workers make; one claim left
    unacknowledged per group."""
    kept: list[Claimed] = []
    for _ in range(rounds):
        log_events([make_event() for _ in range(2)])
        for group in ("g1", "g2"):
            transport.ack_many(claim_until(transport, [group], 1, timeout=5))
    log_events([make_event()])
    for group in ("g1", "g2"):
        kept += claim_until(transport, [group], 1, timeout=5)
    return kept


def test_a_rotation_empties_the_slot_in_use_and_keeps_every_cursor_and_lease(
    log_transport: LogTransport,
) -> None:
    kept = busy(log_transport, 20)
    assert len(kept) == 2
    [(used,)] = rows("SELECT DISTINCT slot FROM django_events_cursor")
    assert slot_rows(used) > 40
    before = state()

    assert rotate("default")

    assert slot_rows(used) == 0
    assert slot_pages(used) == 0
    assert state() == before
    assert slot_rows(1 - used) == len(before[0]) + len(before[1])
    # Claims now write into the other slot, and the next rotation empties that one.
    busy(log_transport, 3)
    assert slot_rows(used) == 0
    assert rotate("default")
    assert slot_rows(1 - used) == 0
    assert slot_rows(used) > 0


def test_a_slot_of_one_page_is_left_alone(log_transport: LogTransport) -> None:
    """An idle database's cursors: nothing worth freeing, no new files every period."""
    kept = busy(log_transport, 3)
    assert log_transport.ack_many(kept) == kept
    assert rotate("default")
    files = "SELECT pg_relation_filenode('django_events_cursor_0'), "
    files += "pg_relation_filenode('django_events_cursor_1')"
    before = rows(files)
    assert rotate("default")
    assert rows(files) == before


def test_no_event_is_lost_or_handled_twice_across_rotations(
    log_transport: LogTransport,
) -> None:
    """Leases claimed before a rotation are acknowledged, renewed and broken up after it;
    every cursor goes on where it was."""
    published: list[str] = []
    handled: list[str] = []

    def publish(n: int) -> None:
        events = [make_event() for _ in range(n)]
        log_events(events)
        published.extend(str(e.event_id) for e in events)

    def ack(claimed: list[Claimed]) -> None:
        assert log_transport.ack_many(claimed) == claimed
        handled.extend(str(c.event_id) for c in claimed)

    for _ in range(3):
        publish(6)
        across = claim_until(log_transport, ["g1"], 3, timeout=5, limit=3)  # one lease
        assert rotate("default")
        ack(claim_until(log_transport, ["g1"], 3, timeout=5, limit=3))
        # Renewed after the rotation: the copied lease row is the one updated.
        lease = across[0].receipt.lease
        until = Lease.objects.get(id=lease).claimed_until
        log_transport.renew(across, 60.0)
        assert Lease.objects.get(id=lease).claimed_until > until
        ack(across[:1])
        assert rotate("default")
        ack(across[1:])

    publish(2)
    expiring = claim_until(log_transport, ["g1"], 2, timeout=5)
    assert rotate("default")
    Lease.objects.filter(id=expiring[0].receipt.lease).update(
        claimed_until=timezone.now() - dt.timedelta(seconds=1)
    )
    log_transport._break_up_dead_leases()
    assert Lease.objects.count() == 0
    assert log_transport.ack_many(expiring) == []  # its lease is gone
    back = claim_until(log_transport, ["g1"], 2, timeout=5)
    ack(back)
    assert rotate("default")
    publish(3)
    ack(claim_until(log_transport, ["g1"], 3, timeout=5))

    assert sorted(handled) == sorted(published)
    assert Lease.objects.count() == 0


def test_a_held_snapshot_does_not_stop_a_rotation_from_freeing_space(
    log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    other_connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    other_connection.execute("SELECT count(*) FROM django_events_event").fetchone()
    busy(log_transport, 20)
    [(used,)] = rows("SELECT DISTINCT slot FROM django_events_cursor")
    assert slot_pages(used) > 0

    assert rotate("default")

    assert slot_pages(used) == 0
    other_connection.rollback()


def test_a_rotation_that_cannot_get_a_lock_in_time_gives_up_without_error(
    log_transport: LogTransport, other_connection: psycopg.Connection
) -> None:
    busy(log_transport, 2)
    before = state()
    with other_connection.transaction():  # a claim of g1 in flight
        other_connection.execute("SELECT pg_advisory_xact_lock(%s, hashtext('g1'))", [GROUP_LOCK])
        assert not rotate("default")
    with other_connection.transaction():  # an acknowledgement in flight
        other_connection.execute("SELECT * FROM django_events_lease FOR UPDATE").fetchall()
        assert not rotate("default")
    with other_connection.transaction():  # another rotation
        other_connection.execute("SELECT pg_advisory_xact_lock(%s)", [ROTATION_LOCK])
        assert not rotate("default")
    assert state() == before
    assert rotate("default")
    assert state() == before


def test_an_acknowledgement_waiting_for_a_rotation_finds_the_copied_lease(
    log_transport: LogTransport,
) -> None:
    """A statement blocked on the rotated partition's lock takes its snapshot once the
    lock is granted, after the rotation committed: it sees the copies (PostgreSQL locks
    a statement's tables before taking its snapshot in READ COMMITTED)."""
    log_events([make_event()])
    claimed = claim_until(log_transport, ["g1"], 1, timeout=5)
    result: dict[str, Any] = {}
    started = threading.Event()

    def acknowledge() -> None:
        other = LogTransport("log", {})
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                result["pid"] = cursor.fetchone()[0]
            started.set()
            result["acked"] = other.ack_many(claimed)
        finally:
            other.close()
            connections["default"].close()

    with transaction.atomic():
        assert rotate("default")  # done, not committed: the old slot stays locked
        worker = threading.Thread(target=acknowledge)
        worker.start()
        started.wait()
        while worker.is_alive() and not rows(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            [result["pid"]],
        ):
            pass  # until the acknowledgement waits for the rotation's lock
    worker.join()

    assert result["acked"] == claimed
    assert Lease.objects.count() == 0


def test_0015_partitions_the_tables_both_ways_keeping_rows_and_ids() -> None:
    """docs/internals.md, "Upgrading": the rows move, ids go on from the old sequence."""
    listed = "SELECT id, group_name, pos FROM django_events_cursor ORDER BY id"
    kinds = "SELECT relkind FROM pg_class WHERE relname IN ('django_events_cursor', "
    kinds += "'django_events_lease') ORDER BY relname"
    lease = (
        "INSERT INTO django_events_lease (group_name, positions, claimed_alone, claimed_until, "
        "lease_token) VALUES ('g1', '{1}', FALSE, now(), 't') RETURNING id"
    )
    call_command("migrate", "django_events", "0014_log_cursor", verbosity=0)
    try:
        rows(
            "INSERT INTO django_events_cursor (group_name, lo, hi, pos, last, created_at) "
            "SELECT 'g' || i, '1:1:', '1:1:', i, i, now() FROM generate_series(1, 3) AS i"
        )
        rows("DELETE FROM django_events_cursor WHERE pos = 3")
        [(first,)] = rows(lease)
        before = rows(listed)
        assert rows(kinds) == [("r",), ("r",)]

        call_command("migrate", "django_events", verbosity=0)
        assert rows(kinds) == [("p",), ("p",)]
        assert rows(listed) == before
        assert rows("SELECT DISTINCT slot FROM django_events_cursor") == [(0,)]
        assert slot_rows(1) == 0
        [(second,)] = rows(lease)
        assert second == first + 1
        [(top,)] = rows("SELECT max(id) FROM django_events_cursor")
        assert rows("SELECT nextval('django_events_cursor_id_seq')") == [(top + 2,)], (
            "the deleted row's id is not given again"
        )

        call_command("migrate", "django_events", "0014_log_cursor", verbosity=0)
        assert rows(kinds) == [("r",), ("r",)]
        assert rows(listed) == before
        [(third,)] = rows(lease)
        assert third == second + 1
    finally:
        call_command("migrate", verbosity=0)


@pytest.mark.parametrize("rotates", [False, True])
def test_housekeeping_rotates_only_when_the_option_says_so(rotates: bool) -> None:
    """``OPTIONS["rotate"]`` (off by default): housekeeping empties the slot by rotation,
    or, without it, deletes the cursor rows older than each group's newest."""
    transport = LogTransport("log", {"rotate": True} if rotates else {})
    transport.subscription_store().declare(
        "rotation", {(group, t): ordered for t, group, ordered in SUBSCRIPTIONS}, replace=False
    )
    try:
        busy(transport, 20)
        [(used,)] = rows("SELECT DISTINCT slot FROM django_events_cursor")
        files = f"SELECT pg_relation_filenode('django_events_cursor_{used}')"
        before = rows(files)
        transport.housekeeping()
        # A rotation gives the emptied slot new files; a DELETE keeps them.
        assert (rows(files) != before) is rotates
        if rotates:
            assert slot_rows(used) == 0
        else:  # each group's newest cursor row, and nothing older
            [(count, groups)] = rows(
                "SELECT count(*), count(DISTINCT group_name) FROM django_events_cursor"
            )
            assert count == groups
    finally:
        transport.close()


def test_the_rotate_option_is_off_by_default() -> None:
    assert LogTransport("log", {}).rotates is False
