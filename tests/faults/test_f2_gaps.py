"""F2, sequence gaps: a transaction that takes its position first but commits last.

Writers sleep 0 to 200 ms between their insert and their commit, so positions commit out
of order all the time, while a relay and a consumer run throughout. Every committed event
must reach the event log and be handled once by each group, none rolled back may. The
control is the naive relay peers wrote (read ``position > last_id``, remember the
highest): the same checker counts what it skips.

On the log transport ``publish()`` writes the log itself and each group's cursor reads it
in commit order: the overlapping transactions are taken by a claim of that cursor, and
the naive control scans the log (``take_once`` and ``NAIVE_SCAN`` in
tests/faults/transport.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from django.db import connection, transaction

from django_events import publish

from .checker import check_database, classify, logged_from, read_truth
from .conftest import (
    Procs,
    add_row,
    cursor_check,
    drained_since,
    size,
    start_publishers,
    wait_exited,
)
from .transport import NAIVE_SCAN, take_once

pytestmark = [pytest.mark.django_db(transaction=True)]

WRITERS = 8
EVENTS = size(2000, 20_000)


def _relay_report(truth: dict) -> object:
    logged = cursor_check(logged_from)
    return classify(truth, Counter({(e, "log"): 1 for e in logged}), ["log"], logged=logged)


def test_f2_writers_commit_out_of_order_and_none_is_skipped(procs: Procs, tmp_path: Path):
    started = time.monotonic()
    env = procs.env()
    procs.command("relay", "relay_events", env=env)
    procs.command("consumer", "consume_events", "--no-relay", env=env)
    outs = start_publishers(procs, WRITERS, EVENTS, tmp_path, env=env, sleep_max=0.2, name="writer")
    wait_exited(procs, [f"writer{i}" for i in range(WRITERS)], timeout=size(240, 600))
    finished = time.monotonic()
    drained = drained_since(finished)
    truth = read_truth(outs)
    report = _relay_report(truth)
    add_row(
        "F2 gaps: 8 slow writers, relay + consumer",
        report,
        drain_s=drained,
        secs=time.monotonic() - started,
    )
    assert report.events == EVENTS
    assert report.clean, report
    # The consumers agree with the log: alpha and beta each handled every committed event.
    assert drained is not None, "not drained within 60 s\n" + procs.logs("consumer")
    groups = cursor_check(lambda c: check_database(c, truth, ["alpha", "beta"]))
    assert groups.clean and groups.dead == 0, groups


def _naive_relay(dbname: str, stop: threading.Event, seen: set) -> None:
    """CONTROL: a relay that tracks progress by id, which docs/guarantees.md ("2. At
    least once") says skips late commits. Never used outside this test."""
    last_id = 0
    with psycopg.connect(
        host="127.0.0.1",
        dbname=dbname,
        user=connection.settings_dict["USER"],
        port=connection.settings_dict["PORT"],
        autocommit=True,
    ) as conn:
        while True:
            final = stop.is_set()
            rows = conn.execute(NAIVE_SCAN, [last_id]).fetchall()
            for position, event_id in rows:
                seen.add(event_id)
                last_id = max(last_id, position)
            if final:
                return
            time.sleep(0.005)


def test_f2_control_naive_id_relay_skips_events(procs: Procs, tmp_path: Path):
    started = time.monotonic()
    env = procs.env()
    seen: set = set()
    stop = threading.Event()
    naive = threading.Thread(
        target=_naive_relay, args=(connection.settings_dict["NAME"], stop, seen), daemon=True
    )
    naive.start()
    total = size(1000, 5000)
    try:
        outs = start_publishers(
            procs, WRITERS, total, tmp_path, env=env, sleep_max=0.2, name="writer"
        )
        wait_exited(procs, [f"writer{i}" for i in range(WRITERS)], timeout=size(240, 600))
    finally:
        stop.set()
        naive.join(timeout=30)
    truth = read_truth(outs)
    report = classify(truth, Counter({(e, "log"): 1 for e in seen}), ["log"])
    add_row("F2 CONTROL naive id>last_id relay", report, secs=time.monotonic() - started)
    assert report.lost > 0, f"the checker must see the naive relay skip events: {report}"


def _two_transactions(relay_once) -> dict:
    """T1 inserts first (lower position) and commits last; the relay (or the claim of a
    group's cursor) runs in between."""
    inserted, release = threading.Event(), threading.Event()
    first: list = []

    def t1() -> None:
        try:
            with transaction.atomic():
                first.append(publish("test.happened", {"n": 1}).id)
                inserted.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=t1)
    thread.start()
    assert inserted.wait(30)
    with transaction.atomic():
        second = publish("test.happened", {"n": 2}).id
    relay_once()  # sees T2's row; T1's lower position is not committed yet
    release.set()
    thread.join(30)
    relay_once()
    truth = {first[0]: "committed", second: "committed"}
    return truth


def test_f2_two_overlapping_transactions(transactional_db):
    seen: set = set()
    truth = _two_transactions(lambda: take_once(seen))
    report = classify(truth, Counter({(e, "log"): 1 for e in seen}), ["log"])
    add_row("F2 two overlapping transactions", report)
    assert report.clean and report.ok == 2, report


def test_f2_control_two_overlapping_transactions_naive(transactional_db):
    seen: set = set()
    last = [0]

    def naive_once() -> None:  # CONTROL: progress tracked by a bare id
        with connection.cursor() as cursor:
            cursor.execute(NAIVE_SCAN, [last[0]])
            for position, event_id in cursor.fetchall():
                seen.add(event_id)
                last[0] = max(last[0], position)

    truth = _two_transactions(naive_once)
    report = classify(truth, Counter({(e, "log"): 1 for e in seen}), ["log"])
    add_row("F2 CONTROL two transactions, naive", report)
    assert report.lost == 1, report
