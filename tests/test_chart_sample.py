"""The charts' lag sample runs off the worker's loop: a slow count delays the chart, never
a claim (docs/internals.md, "Chart counts")."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from django.db import connection, connections

from django_events import publish, rollup
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.models import MinuteStat
from django_events.rollup import Rollup, minute_of
from django_events.transports import transports
from django_events.transports.base import GroupStatus, Transport
from tests.testapp.models import Effect

from .conftest import closing_connections, postgres_only, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

NOW = 1_800_000_000.0  # a fixed wall clock: 2027-01-15 08:00 UTC
GATE = 7_140_817  # the advisory lock a held lag sample waits on


def gated(kind: type[Transport]) -> type[Transport]:
    """``kind`` whose status query first waits for an advisory lock the test holds on
    its own connection: a real statement, as slow as the test wants."""

    class Gated(kind):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.asked: list[list[str]] = []
            self.backends: list[int] = []
            self.waiting = threading.Event()
            self.failing = False

        def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
            self.asked.append(list(groups))
            with connections[self.database].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.backends.append(cursor.fetchone()[0])
                self.waiting.set()
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [GATE])
                if self.failing:
                    cursor.execute("SELECT * FROM no_such_table")
            return super().status(groups)

    return Gated


def failing(kind: type[Transport]) -> type[Transport]:
    """``kind`` whose status query fails in the database, as a broken count would."""

    class Failing(kind):  # type: ignore[valid-type, misc]
        def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
            with connections[self.database].cursor() as cursor:
                cursor.execute("SELECT * FROM no_such_table")
            raise AssertionError("unreachable")

    return Failing


def like_default(wrap: Any) -> Any:
    """A transport like the configured default one, its status changed by ``wrap``."""
    default = transports["default"]
    return wrap(type(default))(default.alias, default.options, default.context)


@pytest.fixture
def gate() -> Iterator[Any]:
    """Holds the advisory lock the gated status waits on; ``gate.open()`` lets it on."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [GATE])

    class Gate:
        held = True

        def open(self) -> None:
            if self.held:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [GATE])
                self.held = False

    held = Gate()
    try:
        yield held
    finally:
        held.open()


def sampled(group: str = "alpha") -> list[int | None]:
    return list(
        MinuteStat.objects.filter(group=group, pending__isnull=False).values_list(
            "pending", flat=True
        )
    )


def backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(cursor.fetchone()[0])


class Running:
    """A worker's ``run()`` on a thread of its own, stopped and joined at the end (the
    gate opened first, should the worker itself wait at it)."""

    def __init__(self, worker: Worker, gate: Any = None) -> None:
        self.worker = worker
        self.gate = gate
        self.thread = threading.Thread(target=closing_connections(worker.run))

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.open()
        self.worker.stop()
        self.thread.join(60)


@postgres_only
def test_the_worker_handles_events_while_its_lag_sample_waits(monkeypatch, gate):
    monkeypatch.setattr(rollup, "FLUSH_EVERY", 0.2)  # the first loop flushes
    transport = like_default(gated)
    worker = Worker(["alpha"], transport=transport)
    with Running(worker, gate):
        assert transport.waiting.wait(30), "no lag sample was started"
        for n in range(5):
            publish("test.happened", {"n": n})
        wait_until(
            lambda: Effect.objects.filter(group="alpha").count() == 5,
            timeout=20,
            what="the worker handled the events published while its lag sample waited",
        )
        assert sampled() == [], "the sample is held at the gate"
        assert len(transport.asked) == 1, "a sample in flight was started again"
        gate.open()
        wait_until(sampled, timeout=20, what="the sample written once the count ends")
        first = transport.backends[0]
        wait_until(
            lambda: not backend_alive(first), timeout=10, what="the sample's connection closed"
        )
    assert worker.handled == 5


@postgres_only
def test_a_stopping_worker_does_not_wait_for_a_held_lag_sample(monkeypatch, gate):
    monkeypatch.setattr(rollup, "FLUSH_EVERY", 0.2)
    monkeypatch.setattr(rollup, "STOP_WAIT", 0.5)
    transport = like_default(gated)
    worker = Worker(["alpha"], transport=transport)
    running = Running(worker, gate)
    with running:
        assert transport.waiting.wait(30), "no lag sample was started"
        publish("test.happened", {"n": 1})
        wait_until(lambda: worker.handled == 1, timeout=20, what="the event handled")
        worker.stop()
        running.thread.join(20)
        assert not running.thread.is_alive(), "the worker's stop waited for the lag sample"
        sampler = worker.rollup.sampler
        assert sampler is not None and sampler.is_alive()
    gate.open()
    sampler.join(20)
    assert not sampler.is_alive()
    wait_until(sampled, timeout=5, what="the sample written after the worker stopped")
    wait_until(
        lambda: not backend_alive(transport.backends[0]),
        timeout=10,
        what="the sample's connection closed",
    )


@postgres_only
def test_a_lag_sample_still_running_a_minute_later_is_not_doubled(gate, caplog):
    clock = [NOW]
    transport = like_default(gated)
    counting = Rollup(transport, ["alpha"], clock=lambda: clock[0])
    counting.flush()
    assert transport.waiting.wait(30)
    clock[0] += 60
    counting.flush()
    assert "last lag sample still runs; none taken for this minute" in caplog.text
    assert len(transport.asked) == 1
    gate.open()
    assert counting.wait(20)
    assert list(MinuteStat.objects.filter(pending__isnull=False).values_list("minute")) == [
        (minute_of(NOW),)
    ]
    clock[0] += 60
    counting.flush()
    assert counting.wait(20)
    assert len(transport.asked) == 2


@postgres_only
def test_a_lag_sample_is_bounded_by_call_timeout(settings, gate, caplog):
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "CALL_TIMEOUT": 1}
    transport = like_default(gated)
    counting = Rollup(transport, ["alpha"], clock=lambda: NOW)
    counting.count("alpha", rollup.HANDLED)
    counting.flush()
    assert counting.wait(20), "the held sample outlived its statement timeout"
    assert "canceling statement due to" in caplog.text  # its lock wait: lock_timeout
    assert list(MinuteStat.objects.values_list("handled", "pending")) == [(1, None)]


def test_a_failing_lag_sample_is_logged_and_the_worker_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(rollup, "FLUSH_EVERY", 0.2)
    worker = Worker(["alpha"], transport=like_default(failing))
    with Running(worker):
        wait_until(
            lambda: "Could not sample the lag for the charts" in caplog.text,
            timeout=30,
            what="the failed sample logged",
        )
        assert "no_such_table" in caplog.text
        publish("test.happened", {"n": 1})
        wait_until(lambda: worker.handled == 1, timeout=20, what="an event handled after")
        assert worker.running
    assert "thread died" not in caplog.text
    assert sampled() == []


def test_on_sqlite_the_lag_sample_is_taken_on_the_loop():
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL samples on a thread (the tests above)")
    publish("test.happened", {"n": 1})
    Relay(transports["default"]).run_once()
    counting = Rollup(transports["default"], ["alpha"], clock=lambda: NOW)
    counting.flush()
    assert counting.sampler is None
    assert sampled() == [1], "the sample was written before the flush returned"
