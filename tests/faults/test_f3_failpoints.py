"""F3, fail points: the process dies (``os._exit``) at each named point, then restarts.

Relay side: ``relay.after_take`` (rows moved inside the relay's transaction, before its
commit). ``relay.after_publish`` exists only for external transports: on the database
transport the relay "publishes" inside its own transaction and never reaches it (the
test below shows that), so ``relay.after_take`` covers that window. Consumer side:
``worker.after_claim``, ``worker.after_handler``, ``worker.after_commit`` and
``worker.mid_batch``, with batched transactions on and off. After the restart every
committed event is handled once per group and none is lost. Controls: acking before
handling loses events at ``worker.after_claim``; running without the inbox (ack after
commit) duplicates effects at ``worker.after_commit``.

On the log transport ``publish()`` writes the log row itself, so the relay rows do not
apply; a worker killed at ``worker.after_claim`` holds a lease row there (a dead
claimer's lease, broken up into delivery rows), and the claim function's transaction
gets rows of its own: it fails right after its lease insert, its backend terminated or
its statement raising, and nothing of it may remain (the cursor stays where it was).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from django_events.engine.failpoints import EXIT_CODE

from .checker import check_database
from .conftest import Procs, add_row, cursor_check, drain_with, publish_truth, size
from .transport import LOG_TRANSPORT

pytestmark = [pytest.mark.django_db(transaction=True)]

GROUPS = ["alpha", "beta"]
EVENTS = size(40, 200)
OVERRIDES = {"LEASE": 1, "BATCH_SIZE": 10}
WORKER_POINTS = [
    "worker.after_claim",
    "worker.after_handler",
    "worker.after_commit",
    "worker.mid_batch",
]


def _die_then_recover(procs: Procs, point: str, batch: bool, control: str = "") -> object:
    truth = publish_truth(EVENTS, seed_name=f"f3:{point}")
    overrides = {**OVERRIDES, "BATCH_TRANSACTIONS": batch}
    env = procs.env(overrides=overrides)
    dying = procs.env(
        overrides=overrides,
        DJANGO_EVENTS_FAILPOINT=f"{point}:2",
        DJANGO_EVENTS_FAULTS_CONTROL=control,
    )
    if point.startswith("worker."):
        procs.command("relay", "relay_events", "--once", env=env)
        assert procs.wait("relay", 60) == 0, procs.logs("relay")
        procs.command("dying", "consume_events", "--once", "--no-relay", env=dying)
    else:
        procs.command(
            "dying",
            "relay_events",
            "--once",
            env=procs.env(
                overrides={**overrides, "RELAY_BATCH_SIZE": 7}, DJANGO_EVENTS_FAILPOINT=f"{point}:2"
            ),
        )
    code = procs.wait("dying", 60)
    assert code == EXIT_CODE, f"expected the fail point to kill it\n{procs.logs('dying')}"
    recover_env = procs.env(overrides=overrides, DJANGO_EVENTS_FAULTS_CONTROL=control)
    drain_with(procs, "restarted", env=recover_env, timeout=60)
    return cursor_check(lambda c: check_database(c, truth, GROUPS))


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
@pytest.mark.parametrize("point", WORKER_POINTS)
def test_f3_consumer_dies_at_fail_point(procs: Procs, point: str, batch: bool):
    started = time.monotonic()
    report = _die_then_recover(procs, point, batch)
    add_row(
        f"F3 consumer {point} ({'batched' if batch else 'single'})",
        report,
        kills=1,
        secs=time.monotonic() - started,
    )
    assert report.clean and report.dead == 0, f"{report}\n{procs.logs()}"


@pytest.mark.skipif(LOG_TRANSPORT, reason="publish() writes the log itself: no relay step")
def test_f3_relay_dies_after_take(procs: Procs):
    started = time.monotonic()
    report = _die_then_recover(procs, "relay.after_take", True)
    add_row("F3 relay relay.after_take", report, kills=1, secs=time.monotonic() - started)
    assert report.clean and report.dead == 0, f"{report}\n{procs.logs()}"


@pytest.mark.skipif(LOG_TRANSPORT, reason="publish() writes the log itself: no relay step")
def test_f3_relay_after_publish_is_not_reached_on_the_database_transport(procs: Procs):
    truth = publish_truth(EVENTS, seed_name="f3:after_publish")
    env = procs.env(overrides=OVERRIDES, DJANGO_EVENTS_FAILPOINT="relay.after_publish")
    procs.command("relay", "relay_events", "--once", env=env)
    assert procs.wait("relay", 60) == 0, procs.logs("relay")
    drain_with(procs, "consumer", "--no-relay", env=procs.env(overrides=OVERRIDES), timeout=60)
    report = cursor_check(lambda c: check_database(c, truth, GROUPS))
    add_row(
        "F3 relay relay.after_publish (n/a: db transport)",
        report,
        kills=0,
        note="not reached: publish is inside the relay's transaction",
    )
    assert report.clean, report


# The log transport's equivalent of the relay's window: a claim is one call of its claim
# function, whose transaction appends the group's cursor, writes the diverted delivery
# rows and the lease row, then returns the leased events. A trigger fails that
# transaction right after the lease row's insert, on the second claim: the backend is
# terminated (a server process killed, a cut connection) or the statement raises.
LEASE_FAULT = {
    "terminated": "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);",
    "error": "RAISE EXCEPTION 'fault: the claim fails after its lease insert';",
}


def _fail_second_lease_insert(fault: str) -> None:
    cursor_check(
        lambda c: c.execute(
            "CREATE SEQUENCE fault_lease_inserts; "
            "CREATE FUNCTION fault_lease_insert() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF nextval('fault_lease_inserts') = 2 THEN {LEASE_FAULT[fault]} END IF; "
            "RETURN NEW; END $$; "
            "CREATE TRIGGER fault_lease_insert AFTER INSERT ON django_events_lease "
            "FOR EACH ROW EXECUTE FUNCTION fault_lease_insert()"
        )
    )


def _lease_fault_gone() -> int:
    """Drop the trigger; returns how many lease inserts it saw."""

    def run(cursor: Any) -> int:
        cursor.execute("SELECT last_value FROM fault_lease_inserts")
        seen = int(cursor.fetchone()[0])
        cursor.execute(
            "DROP TRIGGER fault_lease_insert ON django_events_lease; "
            "DROP FUNCTION fault_lease_insert(); DROP SEQUENCE fault_lease_inserts"
        )
        return seen

    return cursor_check(run)


@pytest.mark.skipif(not LOG_TRANSPORT, reason="the log transport's claim function")
@pytest.mark.parametrize("fault", list(LEASE_FAULT))
def test_f3_log_claim_fails_after_its_lease_insert(procs: Procs, fault: str):
    started = time.monotonic()
    truth = publish_truth(EVENTS, seed_name=f"f3:lease:{fault}")
    env = procs.env(overrides={**OVERRIDES, "BATCH_TRANSACTIONS": True})
    _fail_second_lease_insert(fault)
    try:
        procs.command("dying", "consume_events", "--once", env=env)
        code = procs.wait("dying", 60)
    finally:
        inserts = _lease_fault_gone()
    assert inserts >= 2, f"the fault never fired ({inserts} lease inserts)\n{procs.logs()}"
    drain_with(procs, "restarted", env=env, timeout=60)
    report = cursor_check(lambda c: check_database(c, truth, GROUPS))
    add_row(
        f"F3 log claim {fault} after its lease insert",
        report,
        kills=1 if fault == "terminated" else 0,
        secs=time.monotonic() - started,
        note=f"first worker exit {code}",
    )
    assert report.clean and report.dead == 0, f"{report}\n{procs.logs()}"


def test_f3_control_ack_before_handling_loses_events(procs: Procs):
    report = _die_then_recover(procs, "worker.after_claim", False, control="ack_first")
    add_row("F3 CONTROL ack first, worker.after_claim", report, kills=1)
    assert report.lost > 0, report


def test_f3_control_no_inbox_duplicates_effects(procs: Procs):
    report = _die_then_recover(procs, "worker.after_commit", False, control="no_inbox")
    add_row("F3 CONTROL no inbox, worker.after_commit", report, kills=1)
    assert report.duplicated > 0, report
