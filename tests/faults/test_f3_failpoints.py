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
"""

from __future__ import annotations

import time

import pytest

from django_events.engine.failpoints import EXIT_CODE

from .checker import check_database
from .conftest import Procs, add_row, cursor_check, drain_with, publish_truth, size

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


def test_f3_relay_dies_after_take(procs: Procs):
    started = time.monotonic()
    report = _die_then_recover(procs, "relay.after_take", True)
    add_row("F3 relay relay.after_take", report, kills=1, secs=time.monotonic() - started)
    assert report.clean and report.dead == 0, f"{report}\n{procs.logs()}"


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


def test_f3_control_ack_before_handling_loses_events(procs: Procs):
    report = _die_then_recover(procs, "worker.after_claim", False, control="ack_first")
    add_row("F3 CONTROL ack first, worker.after_claim", report, kills=1)
    assert report.lost > 0, report


def test_f3_control_no_inbox_duplicates_effects(procs: Procs):
    report = _die_then_recover(procs, "worker.after_commit", False, control="no_inbox")
    add_row("F3 CONTROL no inbox, worker.after_commit", report, kills=1)
    assert report.duplicated > 0, report
