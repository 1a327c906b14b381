"""Once per attempt: a handler runs exactly once per attempt, whatever its batch-mates do.

Every test goes through the real ``Worker`` (``deliver()``), with batch transactions on,
and counts invocations in a trace file that survives rollbacks, as an email sent or a
payment API called would.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_events import publish
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.models import DeadLetter, Delivery, InboxRecord
from django_events.testing import deliver

from .testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

TWO_ATTEMPTS = {"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 0}


def assert_invoked(trace: Path, times: dict[int, int], size: int = 6) -> None:
    """Event ``n`` of the batch was handled ``times[n]`` times by alpha, the others once."""
    counted = Counter(trace.read_text().split())
    got = {n: counted[f"alpha:{n}"] for n in range(size)}
    assert got == {n: times.get(n, 1) for n in range(size)}


def publish_batch(trace: Path, misbehaving: dict[int, dict[str, bool]], size: int = 6) -> None:
    for n in range(size):
        publish("test.happened", {"n": n, "trace": str(trace), **misbehaving.get(n, {})})


def alpha_effects() -> list[int | None]:
    return sorted(Effect.objects.filter(group="alpha").values_list("n", flat=True))


@override_settings(DJANGO_EVENTS=TWO_ATTEMPTS)
def test_a_handler_that_always_raises_runs_exactly_max_attempts_times(tmp_path: Path):
    trace = tmp_path / "calls"
    publish_batch(trace, {2: {"fail": True}})
    deliver(["alpha"])
    assert_invoked(trace, {2: 2})
    assert alpha_effects() == [0, 1, 3, 4, 5]
    dead = DeadLetter.objects.get()
    assert (dead.attempts, dead.error_class) == (2, "RuntimeError")
    assert not Delivery.objects.filter(group_name="alpha").exists()


@override_settings(DJANGO_EVENTS=TWO_ATTEMPTS)
def test_two_failing_events_in_one_batch_run_max_attempts_times_each(tmp_path: Path):
    trace = tmp_path / "calls"
    publish_batch(trace, {1: {"fail": True}, 4: {"fail": True}})
    deliver(["alpha"])
    assert_invoked(trace, {1: 2, 4: 2})
    assert alpha_effects() == [0, 2, 3, 5]
    assert sorted(DeadLetter.objects.values_list("attempts", flat=True)) == [2, 2]


@override_settings(DJANGO_EVENTS=TWO_ATTEMPTS)
def test_a_failed_handlers_partial_writes_inbox_row_and_ack_roll_back(tmp_path: Path):
    trace = tmp_path / "calls"
    publish_batch(trace, {3: {"fail_after_write": True}})
    deliver(["alpha"])
    assert_invoked(trace, {3: 2})
    assert alpha_effects() == [0, 1, 2, 4, 5], "the failing handler's own write is gone"
    dead = DeadLetter.objects.get()
    assert "failed after writing: 3" in dead.error_message
    assert not InboxRecord.objects.filter(event_id=dead.event_id).exists()
    # Each healthy neighbour committed its effect and inbox row once, in one batch.
    assert InboxRecord.objects.filter(group_name="alpha").count() == 5


@override_settings(DJANGO_EVENTS=TWO_ATTEMPTS)
def test_a_database_error_in_one_handler_leaves_the_rest_of_the_batch_to_commit(tmp_path: Path):
    trace = tmp_path / "calls"
    publish_batch(trace, {2: {"db_error": True}})
    deliver(["alpha"])
    assert_invoked(trace, {2: 2})
    assert alpha_effects() == [0, 1, 3, 4, 5]
    dead = DeadLetter.objects.get()
    assert dead.attempts == 2
    assert dead.error_class.startswith("django.db.utils.")
    assert "no_such_table" in dead.error_message


@override_settings(DJANGO_EVENTS=TWO_ATTEMPTS)
def test_a_failed_handlers_on_commit_callbacks_never_run(tmp_path: Path):
    trace, committed = tmp_path / "calls", tmp_path / "committed"
    publish_batch(trace, {n: {"on_commit": str(committed)} for n in range(6)} | {3: {}})
    publish("test.happened", {"n": 3, "on_commit": str(committed), "fail_after_write": True})
    deliver(["alpha"])
    assert sorted(committed.read_text().split()) == [f"alpha:{n}" for n in (0, 1, 2, 4, 5)]


@pytest.mark.database_transport  # its statements
@override_settings(DJANGO_EVENTS={"BATCH_SIZE": 100})
def test_a_batch_commits_after_64_savepoints_and_goes_on_in_the_next_transaction():
    for n in range(70):
        publish("test.happened", {"n": n})
    Relay().run_once()
    with CaptureQueriesContext(connection) as queries:
        assert Worker(["alpha"], relay=False).process_batch() == 70
    statements = [q["sql"] for q in queries.captured_queries]
    assert sum(s.startswith("SAVEPOINT") for s in statements) == 70
    assert sum("INSERT INTO" in s and "inbox" in s for s in statements) == 2
    assert alpha_effects() == list(range(70))
    assert not Delivery.objects.filter(group_name="alpha").exists()


@pytest.mark.database_transport  # its statements; the log transport adds its hold
def test_an_event_alone_takes_the_batch_path_without_a_savepoint_or_a_row_lock():
    """A single event is committed by the batch's path as a batch of one
    (docs/internals.md, "One commit path in the worker"): its transaction is its
    savepoint and, on the database transport, its acknowledgement is its lock, so it
    costs no statement more than the single-event path it replaced."""
    publish("test.happened", {"n": 1})
    Relay().run_once()
    with CaptureQueriesContext(connection) as queries:
        assert Worker(["alpha"], relay=False).process_batch() == 1
    statements = [q["sql"] for q in queries.captured_queries]
    acks = [i for i, s in enumerate(statements) if s.startswith("DELETE") and "delivery" in s]
    inbox = [i for i, s in enumerate(statements) if s.startswith("INSERT") and "inbox" in s]
    assert len(acks) == 1 and len(inbox) == 1 and acks[0] < inbox[0], statements
    committing = statements[acks[0] :]
    assert not [s for s in committing if s.startswith("SAVEPOINT")], committing
    assert not [s for s in committing if "delivery" in s and not s.startswith("DELETE")]
    assert alpha_effects() == [1]
    assert not Delivery.objects.filter(group_name="alpha").exists()
