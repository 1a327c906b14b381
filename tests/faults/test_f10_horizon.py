"""F10, a long transaction elsewhere while events flow.

A relay that waits for a commit-order horizon (``pg_snapshot_xmin``) stalls behind any
long transaction. django-events' relay has no such horizon (it takes committed rows with
``SKIP LOCKED``), so the first test holds a long transaction that has an xid and an
uncommitted event, at a steady publish rate, and shows the backlog never grows. The
engine's one serialization point is the relay's advisory lock: the second test holds it
from another session (a relay stuck inside its transaction) for the same time:
``events_status`` must report the stall within 60 s, and once the lock is released the
backlog must drain within 2 minutes. Control: with the outbox threshold disabled,
``events_status`` calls the same stall healthy.

On the log transport (``STALL`` in tests/faults/transport.py) the long transaction has
written a log row instead, the serialization point is a group's claim lock (a claimer
stuck inside its claim), and ``events_status`` reports that group's oldest pending event
(``MAX_PENDING_AGE``) rather than the outbox's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from .checker import backlog_from, check_database, read_truth
from .conftest import Procs, add_row, cursor_check, size, start_publishers, wait_exited
from .transport import STALL, UNCOMMITTED_EVENT

pytestmark = [pytest.mark.django_db(transaction=True)]

GROUPS = ["alpha", "beta"]
# Quick: room for several `events_status` runs past MAX_OUTBOX_AGE on a loaded machine.
HOLD = size(25, 120)
RATE = size(100, 200)
HEALTH = STALL.health(size(8, 30))


def _connect() -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(host=s["HOST"], port=s["PORT"], user=s["USER"], dbname=s["NAME"])


def _status(procs: Procs, health: dict) -> tuple[int, dict]:
    result = procs.command(
        "status", "events_status", "--json", env=procs.env(overrides={"HEALTH": health})
    )
    code = procs.wait("status", timeout=60)
    text = result.log.read_text()
    body = text[text.rfind("--- start") :]
    report = json.loads(body[body.index("{") : body.rindex("}") + 1])
    return code, report


def _run(procs: Procs, tmp_path: Path, hold_sql: list[str]) -> dict:
    env = procs.env(overrides={"LEASE": 5})
    procs.command("relay", "relay_events", env=env)
    for i in range(2):
        procs.command(f"consumer{i}", "consume_events", "--no-relay", env=env)
    time.sleep(2)
    holder = _connect()  # not autocommit: the transaction stays open until we end it
    for statement in hold_sql:
        holder.execute(statement)
    started = time.monotonic()
    outs = start_publishers(procs, 2, RATE * HOLD, tmp_path, env=env, rollback=0.1, rate=RATE)
    reported_at = None
    control_code = None
    control_problems: list[str] = []
    max_age = 0.0
    while time.monotonic() - started < HOLD:
        code, report = _status(procs, HEALTH)
        max_age = max(max_age, STALL.age(report))
        if code == 2 and reported_at is None:
            reported_at = time.monotonic() - started
            problems = report["problems"]
            control_code, control = _status(
                procs, {"MAX_OUTBOX_AGE": None, "MAX_PENDING_AGE": None}
            )
            control_problems = control["problems"]
        time.sleep(2)
    wait_exited(procs, ["pub0", "pub1"], timeout=120)
    backlog = cursor_check(backlog_from)
    holder.rollback()
    holder.close()
    released = time.monotonic()
    drained = None
    while time.monotonic() - released < 120:
        if cursor_check(backlog_from) == (0, 0):
            drained = time.monotonic() - released
            break
        time.sleep(1)
    check = cursor_check(lambda c: check_database(c, read_truth(outs), GROUPS))
    return {
        "report": check,
        "reported_at": reported_at,
        "problems": problems if reported_at is not None else [],
        "control_code": control_code,
        "control_problems": control_problems,
        "max_age": max_age,
        "backlog": backlog,
        "drained": drained,
    }


def test_f10_long_transaction_does_not_hold_the_relay_back(procs: Procs, tmp_path: Path):
    t0 = time.monotonic()
    result = _run(
        procs,
        tmp_path,
        ["SELECT pg_current_xact_id()", UNCOMMITTED_EVENT],
    )
    add_row(
        f"F10 long transaction {HOLD}s at {RATE}/s",
        result["report"],
        drain_s=result["drained"],
        secs=time.monotonic() - t0,
        note=f"no horizon: oldest waiting max {result['max_age']:.1f}s, status healthy",
    )
    assert result["reported_at"] is None, result["problems"]
    assert result["max_age"] < 15, result
    assert result["drained"] is not None and result["report"].clean, result


def test_f10_stuck_relay_lock_is_reported_and_the_backlog_drains(procs: Procs, tmp_path: Path):
    t0 = time.monotonic()
    result = _run(procs, tmp_path, [STALL.lock])
    add_row(
        f"F10 {STALL.name} held {HOLD}s at {RATE}/s",
        result["report"],
        drain_s=result["drained"],
        secs=time.monotonic() - t0,
        note=f"reported after {result['reported_at'] or 0:.0f}s; backlog {result['backlog']}",
    )
    add_row(
        "F10 CONTROL status without its threshold",
        None,
        note=f"same stall, events_status exit {result['control_code']} (healthy)",
    )
    assert result["reported_at"] is not None and result["reported_at"] <= min(60, HOLD), result
    assert any(STALL.problem in p for p in result["problems"]), result["problems"]
    assert result["backlog"][STALL.backlog] > 0, "the stall was real: work waited behind it"
    assert result["control_code"] == 0, result["control_problems"]
    assert result["drained"] is not None and result["drained"] <= 120, result
    assert result["report"].clean, result["report"]
