"""F5, poison: one event's handler always raises, another's kills its own process.

Both must become dead letters after exactly ``MAX_ATTEMPTS`` (RuntimeError, and
LeaseExpired for the one that crashes), in both groups, while the healthy events around
them are each handled once and keep at least 90% of the throughput they have without
poison. Consumers that die are restarted by the test, as a supervisor would. The control
counts attempts late (not at claim): the crashing event then never becomes a dead letter.
"""

from __future__ import annotations

import time

import pytest
from django.db import transaction

from django_events import publish
from django_events.models import DeadLetter

from .checker import COMMITTED, backlog_from, check_database
from .conftest import FULL, Procs, add_row, cursor_check, publish_truth, scalar, size

pytestmark = [pytest.mark.django_db(transaction=True)]

GROUPS = ["alpha", "beta"]
MAX_ATTEMPTS = 3
HEALTHY = size(1000, 60_000)
OVERRIDES = {"LEASE": 2, "MAX_ATTEMPTS": MAX_ATTEMPTS, "BACKOFF_BASE": 0.2}


def _publish(kinds: tuple[str, ...], total: int) -> tuple[dict, dict]:
    healthy = {}
    poisoned = {}
    chunk = total // 4
    for part in range(4):
        healthy.update(publish_truth(chunk, seed_name=f"f5:{kinds}:{part}", rollback=0))
        if part == 0:
            with transaction.atomic():
                if "fail" in kinds:
                    poisoned[publish("test.happened", {"n": -1, "fail": True}).id] = "fail"
                if "crash" in kinds:
                    poisoned[publish("test.happened", {"n": -2, "crash": True}).id] = "crash"
    return healthy, poisoned


def _reset() -> None:
    cursor_check(
        lambda c: c.execute(
            "TRUNCATE testapp_effect, django_events_event, django_events_inbox, "
            "django_events_deadletter, django_events_delivery, django_events_outbox"
        )
    )


def _run(
    procs: Procs,
    kinds: tuple[str, ...],
    *,
    batch_size: int = 50,
    control: str = "",
    max_crashes: int = 40,
    total: int = HEALTHY,
) -> dict:
    healthy, poisoned = _publish(kinds, total)
    overrides = {**OVERRIDES, "BATCH_SIZE": batch_size}
    env = procs.env(overrides=overrides, DJANGO_EVENTS_FAULTS_CONTROL=control)
    started = time.monotonic()
    names = ["consumer0", "consumer1"]
    for name in names:
        procs.command(name, "consume_events", env=env)
    crashes = 0
    healthy_done_at = None
    deadline = started + size(60, 180)
    want_dead = 2 * len(poisoned)
    while time.monotonic() < deadline and crashes <= max_crashes:
        for name in names:
            if not procs.procs[name].alive():
                crashes += 1
                procs.restart(name)
        if healthy_done_at is None:
            handled = scalar("SELECT COUNT(*) FROM testapp_effect WHERE n >= 0")
            if handled >= len(healthy) * len(GROUPS):
                healthy_done_at = time.monotonic()
        dead = DeadLetter.objects.count()
        if dead >= want_dead and cursor_check(backlog_from) == (0, 0):
            if healthy_done_at is None:  # drained between the two checks of this round
                healthy_done_at = time.monotonic()
            break
        time.sleep(0.1)
    procs.stop_all()
    truth = {**healthy, **{e: COMMITTED for e in poisoned}}
    report = cursor_check(lambda c: check_database(c, truth, GROUPS))
    letters = {(d.event_id, d.group): (d.error_class, d.attempts) for d in DeadLetter.objects.all()}
    return {
        "report": report,
        "healthy": healthy,
        "poisoned": poisoned,
        "letters": letters,
        "crashes": crashes,
        "healthy_secs": None if healthy_done_at is None else healthy_done_at - started,
        "secs": time.monotonic() - started,
    }


def _check_poison(result: dict) -> list[str]:
    wrong = []
    for event_id, kind in result["poisoned"].items():
        want = ("RuntimeError", MAX_ATTEMPTS) if kind == "fail" else ("LeaseExpired", MAX_ATTEMPTS)
        for group in GROUPS:
            got = result["letters"].get((event_id, group))
            if got != want:
                wrong.append(f"{kind}/{group}: {got} != {want}")
    healthy_dead = [k for k in result["letters"] if k[0] in result["healthy"]]
    if healthy_dead:
        wrong.append(
            f"{len(healthy_dead)} healthy events dead-lettered, e.g. "
            f"{result['letters'][healthy_dead[0]]}"
        )
    return wrong


def _poison_vs_baseline(
    procs: Procs, kinds: tuple[str, ...], batch_size: int, name: str, total: int = HEALTHY
) -> None:
    baseline = _run(procs, (), batch_size=batch_size, total=total)
    assert baseline["report"].clean and baseline["healthy_secs"], baseline["report"]
    _reset()
    result = _run(procs, kinds, batch_size=batch_size, total=total)
    ratio = baseline["healthy_secs"] / result["healthy_secs"] if result["healthy_secs"] else 0.0
    wrong = _check_poison(result)
    add_row(
        name,
        result["report"],
        kills=result["crashes"],
        secs=result["secs"],
        note=f"throughput {ratio:.0%} of baseline ({baseline['healthy_secs']:.1f}s); "
        + ("; ".join(wrong) or f"dead letters exact ({MAX_ATTEMPTS} attempts)"),
    )
    assert not wrong, wrong
    assert result["report"].lost == result["report"].duplicated == 0, result["report"]
    # A throughput ratio is a timing. A quick run lasts seconds: too short to amortize the
    # restarts a process-killing handler forces, and too noisy on a shared 2-core machine to
    # fail CI on. Quick runs print the ratio; the full run, about a minute, asserts 90%.
    if FULL:
        assert ratio >= 0.9, f"healthy throughput {ratio:.0%} of the baseline"


def test_f5_raising_poison_is_dead_lettered_and_healthy_events_flow(procs: Procs):
    _poison_vs_baseline(procs, ("fail",), 50, "F5 poison: handler raises (batch 50)")


def test_f5_crashing_poison_with_batch_size_1(procs: Procs):
    # One event per claim is slower: a third of the events still last about a minute.
    _poison_vs_baseline(
        procs,
        ("fail", "crash"),
        1,
        "F5 poison: raises + kills process (batch 1)",
        total=size(1000, 20_000),
    )


def test_f5_crashing_poison_in_a_batch(procs: Procs):
    _poison_vs_baseline(
        procs, ("fail", "crash"), 50, "F5 poison: raises + kills process (batch 50)"
    )


def test_f5_control_late_attempt_count_loops_forever(procs: Procs):
    result = _run(
        procs, ("crash",), batch_size=1, control="late_attempts", max_crashes=4 * MAX_ATTEMPTS
    )
    wrong = _check_poison(result)
    add_row(
        "F5 CONTROL attempts counted late",
        result["report"],
        kills=result["crashes"],
        secs=result["secs"],
        note="; ".join(wrong),
    )
    assert result["crashes"] > 2 * MAX_ATTEMPTS and wrong, (result["crashes"], wrong)
