"""Several real worker processes against one database: sharing, crashing, ordering, stopping."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from django.db import transaction

from django_events import publish
from django_events.models import DeadLetter, Delivery

from .conftest import Workers, postgres_only, vendor, wait_until
from .testapp.models import Effect
from .transport_support import claimed_attempts

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def overrides(**values: object) -> dict[str, str]:
    base = {"BACKOFF_BASE": 0, "POLL_INTERVAL": 0.1}
    return {"DJANGO_EVENTS_TEST_OVERRIDES": json.dumps({**base, **values})}


def test_two_consumers_share_a_group_and_handle_each_event_once(workers: Workers):
    total = 300
    for start in range(0, total, 50):
        with transaction.atomic():
            for n in range(start, start + 50):
                publish("test.happened", {"n": n, "sleep": 0.002})
    env = overrides(BATCH_SIZE=5)
    workers.start("--group", "alpha", **env)
    workers.start("--group", "alpha", **env)
    wait_until(lambda: Effect.objects.filter(group="alpha").count() >= total, timeout=120)
    workers.stop_all()
    handled = Counter(Effect.objects.filter(group="alpha").values_list("n", flat=True))
    assert sorted(handled) == list(range(total))
    assert set(handled.values()) == {1}, "no event handled twice"
    if vendor() == "postgresql":  # SQLite's single writer may let one worker win every race
        by_pid = Counter(Effect.objects.filter(group="alpha").values_list("pid", flat=True))
        assert len(by_pid) == 2, f"both workers took a share: {by_pid}"
    assert not Delivery.objects.filter(group_name="alpha").exists()


def test_killed_worker_event_comes_back_after_its_lease(workers: Workers, tmp_path: Path):
    marker = tmp_path / "crashed"
    publish("test.happened", {"n": 1, "crash_once": str(marker)})
    env = overrides(LEASE=1.5, MAX_ATTEMPTS=2)
    first = workers.run("consume_events", "--once", "--group", "alpha", **env)
    assert first.returncode == 9, first.stdout + first.stderr  # died inside the handler
    assert marker.exists()
    assert claimed_attempts("alpha") == [1], "the attempt was counted when claimed"
    wait_until(
        lambda: (
            workers.run("consume_events", "--once", "--group", "alpha", **env).returncode == 0
            and Effect.objects.filter(group="alpha").exists()
        ),
        timeout=30,
    )
    assert list(Effect.objects.values_list("group", "n")) == [("alpha", 1)]
    assert not DeadLetter.objects.exists()


def test_event_that_kills_every_worker_is_a_dead_letter_after_max_attempts(workers: Workers):
    publish("test.happened", {"n": 1, "crash": True})
    env = overrides(LEASE=1, MAX_ATTEMPTS=2)
    crashes = 0
    for _ in range(60):
        result = workers.run("consume_events", "--once", "--group", "alpha", **env)
        crashes += result.returncode == 9
        if DeadLetter.objects.exists():
            break
        time.sleep(0.3)
    dead = DeadLetter.objects.get()
    # The first crash came in a batch claim, which proves nothing about this event, so it
    # was given back; the two crashes while claimed alone are the counted attempts.
    assert crashes == 3
    assert (dead.error_class, dead.attempts) == ("LeaseExpired", 2)


def test_per_key_order_holds_with_two_workers(workers: Workers):
    keys = ["a", "b", "c", "d", "e", "f", "g", "h"]
    per_key = 15
    env = overrides(BATCH_SIZE=4)
    workers.start("--group", "sequence", **env)
    workers.start("--group", "sequence", **env)
    # Both wait before anything is published: a worker still starting up (a second or two
    # of Django on a busy machine) would otherwise find the work already done.
    wait_until(lambda: workers.logs().count(" started for groups") == 2, timeout=60)
    with transaction.atomic():  # each key's events side by side: a batch could take several
        for key in keys:
            for n in range(per_key):
                publish("test.sequenced", {"n": n, "sleep": 0.002 * (n % 4)}, key=key)
    wait_until(
        lambda: Effect.objects.filter(group="sequence").count() >= per_key * len(keys), timeout=120
    )
    workers.stop_all()
    seen: dict[str, list[int]] = defaultdict(list)
    for key, n in Effect.objects.order_by("id").values_list("key", "n"):
        seen[key].append(n)
    assert dict(seen) == {key: list(range(per_key)) for key in keys}
    if vendor() == "postgresql":  # SQLite's single writer may let one worker win every race
        pids = set(Effect.objects.values_list("pid", flat=True))
        assert len(pids) == 2, "both workers handled some keys"


def test_sigterm_finishes_the_current_event_and_exits_zero(workers: Workers, tmp_path: Path):
    started = tmp_path / "handler-started"
    publish("test.happened", {"n": 1, "sleep": 2, "trace": str(started)})
    proc = workers.start("--group", "alpha", **overrides())
    # The handler writes the trace file as it starts. Waiting for the claim instead would
    # race: a SIGTERM landing between the claim and the handler makes the worker give the
    # event back unhandled (which is right, and not what this test is about).
    wait_until(lambda: started.exists() and started.read_text() == "alpha:1\n", timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert list(Effect.objects.values_list("n", flat=True)) == [1], "the event in hand finished"
    assert not Delivery.objects.filter(group_name="alpha").exists()


@postgres_only
def test_idle_worker_is_woken_by_notify_long_before_its_poll(workers: Workers):
    proc = workers.start("--group", "alpha", **overrides(POLL_INTERVAL=60))
    wait_until(lambda: "started" in workers.logs(), timeout=30)
    time.sleep(1)  # the worker is now idle, waiting on LISTEN
    with transaction.atomic():
        publish("test.happened", {"n": 1})
    wait_until(lambda: Effect.objects.filter(group="alpha").exists(), timeout=15)
    assert proc.poll() is None


@postgres_only
def test_killed_workers_events_come_back_before_the_lease_ends(workers: Workers, tmp_path: Path):
    marker = tmp_path / "crashed"
    for n in range(5):
        publish("test.happened", {"n": n, "crash_once": str(marker) if n == 2 else ""})
    env = overrides(LEASE=600, MAX_ATTEMPTS=2)
    first = workers.run("consume_events", "--once", "--group", "alpha", **env)
    assert first.returncode == 9, first.stdout + first.stderr
    started = time.monotonic()
    # Its connection is gone, so PostgreSQL knows it is dead: no 10-minute wait.
    wait_until(
        lambda: (
            workers.run("consume_events", "--once", "--group", "alpha", **env).returncode == 0
            and Effect.objects.filter(group="alpha").count() == 5
        ),
        timeout=60,
    )
    assert time.monotonic() - started < 60
    assert sorted(Effect.objects.values_list("n", flat=True)) == [0, 1, 2, 3, 4]
    assert not DeadLetter.objects.exists(), "batch-mates of the crash were not charged"


@postgres_only
def test_consume_once_exits_with_an_error_when_the_database_is_unreachable(workers: Workers):
    result = workers.run("consume_events", "--once", PGPORT="1", timeout=60)
    assert result.returncode != 0
    assert "OperationalError" in result.stderr or "connection" in result.stderr.lower()
