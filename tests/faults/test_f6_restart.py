"""F6, PostgreSQL restarted under load (``pg_ctl stop -m immediate``, then start).

A private server (never the shared one) takes publishers, a relay and two consumers;
mid-load it is crashed and started again. The workers must reconnect by themselves
(the test never restarts them) and the checker must find nothing lost or duplicated.
Publishers whose COMMIT got no answer record ``unknown``; the event log decides. The
control runs consumers that ack before handling: the crash loses the events in hand.
"""

from __future__ import annotations

import time
from pathlib import Path

from .checker import backlog_from, check_database, read_truth
from .conftest import PrivateDB, Procs, add_row, rng_for, size, start_publishers, wait_exited

GROUPS = ["alpha", "beta"]
OVERRIDES = {"LEASE": 3}


def _restart_under_load(
    procs: Procs,
    db: PrivateDB,
    tmp_path: Path,
    *,
    events: int,
    restarts: int,
    control: str = "",
    rate: float = 0.0,
    control_env: dict[str, str] | None = None,
) -> tuple[object, float | None, list]:
    rng = rng_for(f"f6:{control}")
    env = db.env(procs, overrides=OVERRIDES)
    consumer_env = db.env(
        procs, overrides=OVERRIDES, DJANGO_EVENTS_FAULTS_CONTROL=control, **(control_env or {})
    )
    procs.command("relay", "relay_events", env=env)
    for i in range(2):
        procs.command(f"consumer{i}", "consume_events", "--no-relay", env=consumer_env)
    outs = start_publishers(procs, 2, events, tmp_path, env=env, rate=rate)
    for _ in range(restarts):
        time.sleep(rng.uniform(2, 4))
        db.server.stop("immediate")
        time.sleep(rng.uniform(0.5, 2))
        db.server.start()
    restarted_at = time.monotonic()
    wait_exited(procs, ["pub0", "pub1"], timeout=size(180, 600))
    drained = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if db.check(backlog_from) == (0, 0):
            drained = time.monotonic() - restarted_at
            break
        time.sleep(0.5)
    report = db.check(lambda c: check_database(c, read_truth(outs), GROUPS))
    alive = [name for name in ("relay", "consumer0", "consumer1") if procs.procs[name].alive()]
    return report, drained, alive


def test_f6_workers_reconnect_after_an_immediate_restart(
    procs: Procs, private_db: PrivateDB, tmp_path: Path
):
    started = time.monotonic()
    restarts = size(2, 4)
    report, drained, alive = _restart_under_load(
        procs, private_db, tmp_path, events=size(1500, 6000), restarts=restarts
    )
    add_row(
        "F6 PostgreSQL stop -m immediate + start",
        report,
        kills=restarts,
        drain_s=drained,
        secs=time.monotonic() - started,
        note="restarts in 'kills'",
    )
    assert len(alive) == 3, f"workers must survive and reconnect: alive {alive}\n{procs.logs()}"
    assert drained is not None, f"not drained: {report}\n{procs.logs()}"
    assert report.clean and report.dead == 0, f"{report}\n{procs.logs()}"


def test_f6_control_ack_first_loses_events_in_a_restart(
    procs: Procs, private_db: PrivateDB, tmp_path: Path
):
    """CONTROL: consumers that ack first lose the batch in hand when the server crashes.

    As in F1's control, events arrive at a steady 100 a second through both restarts and
    each batch waits 0.5 s between its ack and its handlers, so a crash finds consumers
    in that window rather than idle after a drained backlog (which once let it pass).
    """
    started = time.monotonic()
    report, drained, _alive = _restart_under_load(
        procs,
        private_db,
        tmp_path,
        events=size(1500, 3000),
        restarts=2,
        control="ack_first",
        rate=100,
        control_env={"DJANGO_EVENTS_FAULTS_ACK_GAP": "0.5"},
    )
    add_row(
        "F6 CONTROL ack first, PostgreSQL restarts",
        report,
        kills=2,
        drain_s=drained,
        secs=time.monotonic() - started,
    )
    assert report.lost > 0, report
