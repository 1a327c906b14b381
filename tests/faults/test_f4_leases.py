"""F4, leases at the boundary, in database time, and a slow handler that outlives its lease.

The boundary test moves a lease to a few hundred milliseconds from expiry by the
database clock (``statement_timestamp()``) and claims just before and just after it:
before, nothing; after, the event, with its second attempt counted; the first claim's
late handling is refused and the event's effect exists once. The heartbeat test runs a
real worker with a 1 s lease on a batch whose first handler sleeps for four leases: no
other claimant ever gets either event while the worker lives. The control disables the
heartbeat: the waiting event is handed to a second claimant.
"""

from __future__ import annotations

import os
import time

import pytest

from django_events import publish
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.models import InboxRecord
from django_events.transports import transports
from tests.testapp.models import Effect

from . import transport as leases
from .checker import check_database
from .conftest import Procs, add_row, cursor_check, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_f4_claim_just_before_and_just_after_expiry():
    event = publish("test.happened", {"n": 1})
    Relay().run_once()
    transport = transports["default"]
    worker = Worker(["alpha"], relay=False)
    # Claimed alone: when its lease runs out the death counts as an attempt (a batch's
    # death would not be held against each of its events).
    [first] = transport.claim(["alpha"], 1, 30)
    cursor_check(lambda c: leases.set_lease(c, first.receipt, 0.4))
    assert transport.claim(["alpha"], 1, 30) == [], "claimed before its lease expired"
    wait_until(
        lambda: cursor_check(lambda c: leases.lease_ended(c, first.receipt)),
        timeout=10,
        interval=0.01,
    )
    [second] = transport.claim(["alpha"], 1, 30)
    assert (second.event_id, second.attempt) == (event.id, 2)
    # The first claimant's heartbeat must not take the lease back.
    transport.renew([first], 30)
    token = second.receipt[-1]  # (delivery, token) or (lease, position, token)
    assert cursor_check(lambda c: leases.holder(c, "alpha", event.id)) == token
    worker.handle(first)  # too late: refused, no effect
    assert not Effect.objects.exists()
    worker.handle(second)
    state = (
        list(Effect.objects.values_list("group", "n")),
        InboxRecord.objects.filter(group_name="alpha").count(),
        cursor_check(lambda c: leases.owes(c, "alpha")),
    )
    assert state == ([("alpha", 1)], 1, False), state
    # Just after expiry in the other direction: a lease 1 ms in the past is free at once.
    publish("test.happened", {"n": 2})
    Relay().run_once()
    [third] = transport.claim(["alpha"], 1, 30)
    cursor_check(lambda c: leases.set_lease(c, third.receipt, -0.001))
    [fourth] = transport.claim(["alpha"], 1, 30)
    assert fourth.attempt == 2
    report = cursor_check(lambda c: check_database(c, {event.id: "committed"}, ["alpha"]))
    add_row(
        f"F4 claim at lease boundary (db clock, {leases.NAME})", report, note="expected state exact"
    )
    assert report.clean


def _slow_batch(procs: Procs, batch: bool, control: str) -> tuple[int, list, dict]:
    publish("test.happened", {"n": 1, "sleep": 4})
    publish("test.happened", {"n": 2})
    Relay().run_once()
    env = procs.env(
        overrides={"LEASE": 1, "BATCH_SIZE": 2, "BATCH_TRANSACTIONS": batch},
        DJANGO_EVENTS_FAULTS_CONTROL=control,
        DJANGO_EVENTS_FAULTS_PAUSE="3",
    )
    proc = procs.command("worker", "consume_events", "--no-relay", "--group", "alpha", env=env)
    wait_until(
        lambda: cursor_check(lambda c: leases.claimed(c, "alpha")) == 2,
        timeout=30,
        interval=0.02,
        what="the worker claimed both",
    )
    transport = transports["default"]
    second = Worker(["alpha"], relay=False)
    stolen = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and cursor_check(lambda c: leases.owes(c, "alpha")):
        got = transport.claim(["alpha"], 10, 30)  # a second worker, trying all the time
        for item in got:
            stolen.append(item.event_id)
            second.handle(item)
        time.sleep(0.1)
    wait_until(lambda: Effect.objects.filter(group="alpha").count() >= 2, timeout=30)
    pids = dict(Effect.objects.values_list("n", "pid"))
    assert proc.popen.poll() is None, procs.logs()
    return proc.popen.pid, stolen, pids


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
def test_f4_live_heartbeating_worker_keeps_its_events(procs: Procs, batch: bool):
    pid, stolen, pids = _slow_batch(procs, batch, "")
    add_row(
        f"F4 slow handler, 4x lease, heartbeat ({'batched' if batch else 'single'})",
        None,
        events=2,
        note=f"handed to a second worker: {len(stolen)}",
    )
    assert stolen == [], "a live worker's event was handed to a second claimant"
    assert pids == {1: pid, 2: pid}
    assert Effect.objects.count() == 2


def test_f4_live_worker_keeps_its_events_when_it_pauses_between_them(procs: Procs):
    """The heartbeating worker of the test above, one event per transaction, pausing 3 s
    (three leases) after the first event's commit. On the log transport the heartbeat
    must renew the batch's lease while the first handler's transaction holds it: that
    transaction holds the lease (``hold``) rather than acking its event first, which
    would lock the lease row against the renewal until the commit, when the lease has
    long run out (docs/internals.md, "The log transport")."""
    pid, stolen, pids = _slow_batch(procs, False, "pause_after_commit")
    add_row(
        "F4 slow handler, then a pause, heartbeat (single)",
        None,
        events=2,
        note=f"handed to a second worker: {len(stolen)}",
    )
    assert stolen == [], "a live worker's event was handed to a second claimant"
    assert pids == {1: pid, 2: pid}


def test_f4_control_without_heartbeat_the_waiting_event_is_taken(procs: Procs):
    """On the log transport the first handler's transaction locks the batch's one lease
    row, which keeps the waiting event too, heartbeat or not: there the control also
    pauses the worker after that commit, when the lease alone keeps the rest."""
    control = "no_heartbeat,pause_after_commit" if leases.LOG_TRANSPORT else "no_heartbeat"
    _pid, stolen, pids = _slow_batch(procs, False, control)
    add_row(
        f"F4 CONTROL {control.replace(',', ' + ')}",
        None,
        events=2,
        note=f"handed to a second worker: {len(stolen)}",
    )
    assert len(stolen) == 1 and pids[2] == os.getpid(), (stolen, pids)
    assert Effect.objects.count() == 2, "still once each: the first worker's late ack failed"
