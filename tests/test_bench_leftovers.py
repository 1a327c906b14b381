"""The benchmark leaves nothing on the shared servers (bench/leftovers.py, bench/lock.py).

RQ1 runs here at a tiny size against the shared RabbitMQ, on a group and event type of
the test settings (bench.benchapp's are not installed here); what it declared is looked
up by name with passive declares (listing queues needs the management plugin or
rabbitmqctl, which the broker may not offer).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import runner
from bench.leftovers import Ledger

from .rabbitmq_support import RABBITMQ_URL, needs_rabbitmq, pika
from .rabbitmq_support import existing as existing_names

ROOT = Path(__file__).resolve().parent.parent


class Tiny(runner.Context):
    """RQ1 at 40 events per variant, one repetition."""

    def size(self, full: int, quick: int) -> int:
        return min(quick, 40)


class Watched(Ledger):
    """The real ledger, remembering every prefix ever added to it."""

    def __init__(self, directory: Path) -> None:
        super().__init__("rabbitmq", directory)
        self.added: list[str] = []

    def add(self, name: str) -> None:
        self.added.append(name)
        super().add(name)


@pytest.fixture
def rq1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    from bench.scenarios import rq1_rabbitmq

    monkeypatch.setattr(rq1_rabbitmq, "URL", RABBITMQ_URL)
    monkeypatch.setattr(rq1_rabbitmq, "GROUP", "alpha")
    monkeypatch.setattr(rq1_rabbitmq, "TYPE", "test.happened")
    monkeypatch.setattr(rq1_rabbitmq, "PREFIXES", Watched(tmp_path))
    yield rq1_rabbitmq
    rq1_rabbitmq.delete_all(rq1_rabbitmq.PREFIXES.added, print)  # whatever the test did


def existing(rq1: Any, prefixes: list[str]) -> list[str]:
    """The queues RQ1 may declare under ``prefixes`` that the broker has."""
    return existing_names(queues=[queue for prefix in prefixes for queue in rq1.names(prefix)[0]])


@needs_rabbitmq()
def test_rq1_deletes_its_queues_after_a_run(rq1):
    logs: list[str] = []
    ctx = Tiny(quick=True, log=logs.append, reps=1)
    with rq1.cleaned(ctx):
        rows = rq1.throughput_rows(ctx)
    assert [row.id for row in rows] == ["RQ1.publish", "RQ1.consume"]
    assert len(rq1.PREFIXES.added) == 8  # four variants, warm-up and one repetition
    assert existing(rq1, rq1.PREFIXES.added) == []
    assert rq1.PREFIXES.mine() == [] and not [line for line in logs if "could not" in line]


@needs_rabbitmq()
def test_rq1_deletes_its_queues_when_a_publish_fails(rq1, monkeypatch):
    """A publish that fails after its queues were declared: the exchange does not route
    an event type over AMQP's 255-byte limit, pika refuses to send it."""
    monkeypatch.setattr(rq1, "TYPE", "bench." + "x" * 300)
    ctx = Tiny(quick=True, log=print, reps=1)
    with pytest.raises(pika.exceptions.ShortStringTooLong), rq1.cleaned(ctx):
        rq1.throughput_rows(ctx)
    (prefix,) = rq1.PREFIXES.added
    assert existing(rq1, [prefix]) == []
    assert rq1.PREFIXES.mine() == []


KILLED = """
import sys, time, django
django.setup()
from bench.scenarios import rq1_rabbitmq as rq1
rq1.URL = sys.argv[1]
transport, prefix = rq1._fresh()
print(prefix, flush=True)
time.sleep(120)
"""


@needs_rabbitmq()
def test_the_next_run_deletes_what_a_killed_run_declared(rq1, tmp_path):
    """SIGKILL: no ``finally`` runs. The prefix was recorded before its queues were
    declared, with the dead process's pid; the next run deletes them."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, RABBITMQ_URL],
        cwd=ROOT,
        env={**os.environ, "DJANGO_EVENTS_BENCH_LEDGERS": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        prefix = child.stdout.readline().strip()
        assert prefix.startswith("bench-rq1."), prefix
        assert existing(rq1, [prefix]), "the child declared its queues"
        assert rq1.PREFIXES.orphans() == []  # alive: not touched
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    rq1.PREFIXES.added.append(prefix)  # for the fixture, should the run below fail
    assert rq1.PREFIXES.orphans() == [prefix]
    with rq1.cleaned(Tiny(quick=True, log=print, reps=1)):
        pass
    assert existing(rq1, [prefix]) == []
    assert rq1.PREFIXES.orphans() == []


# --------------------------------------------------------------------------- the lock


def lock_child(key: int) -> subprocess.Popen[str]:
    """A process taking the bench lock under ``key`` (not the real one: a bench may be
    running), printing what it logs and "held" once it has it."""
    script = (
        "import sys, time\n"
        "from bench import lock\n"
        "log = lambda line: print(line, flush=True)\n"
        "held = lock.acquire(log, key=int(sys.argv[1]), poll=0.1)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(key)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def backends_of(pid: int) -> int:
    from bench import lock, pg

    with pg.connect("postgres") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
            [f"{lock.NAME} pid {pid} %"],
        ).fetchone()
    return int(row[0]) if row else 0


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while backends_of(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_killed_run_leaves_no_backend_holding_or_waiting_for_the_lock():
    """Killed while waiting: a backend blocked in ``pg_advisory_lock`` would not notice
    and stay queued, then take the lock. Killed while holding: the lock is free."""
    key = random.randrange(1 << 40, 1 << 41)
    holder, waiter = lock_child(key), None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiter = lock_child(key)
        assert waiter.stdout is not None
        assert "another benchmark run holds the server" in waiter.stdout.readline()
        assert f"pid {holder.pid} " in backends_holding(key)
        waiter.kill()
        waiter.wait()
        assert gone(waiter.pid), "the killed waiter's backend is still there"
        holder.kill()
        holder.wait()
        assert gone(holder.pid), "the killed holder's backend is still there"
        from bench import lock, pg

        with pg.connect("postgres") as conn:
            assert lock._try(conn, key), "the lock is free"
    finally:
        for child in (holder, waiter):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()


def backends_holding(key: int) -> str:
    from bench import lock, pg

    with pg.connect("postgres") as conn:
        return lock.holder(conn, key)


# --------------------------------------------------------------------------- databases


def database_exists(name: str) -> bool:
    from bench import pg

    with pg.connect("postgres") as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            is not None
        )


def test_a_bench_run_drops_the_databases_it_created(tmp_path):
    """``python -m bench`` creates its database (and rows create more); all are dropped
    when it ends. RQ1 on an unreachable broker: a row that ends at once."""
    name = f"test_de_bench_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DJANGO_EVENTS_BENCH_DB": name,
        "DJANGO_EVENTS_BENCH_LEDGERS": str(tmp_path),
        "DJANGO_EVENTS_BENCH_LOCK_KEY": str(random.randrange(1 << 40, 1 << 41)),
        "DJANGO_EVENTS_BENCH_RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--quick",
                "--only",
                "RQ1",
                "--json",
                str(tmp_path / "r.json"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "RQ1: not measured: RabbitMQ at" in done.stdout
        assert not database_exists(name), "the run's database is still there"
        assert Ledger("postgresql", tmp_path).path.read_text() == ""
    finally:
        from bench import pg

        pg.connect("postgres").execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


MAKES_A_DATABASE = """
import sys, time
from bench import pg
pg.recreate_database(sys.argv[1])
print("made", flush=True)
time.sleep(120)
"""


def test_the_next_run_drops_the_databases_a_killed_run_created(tmp_path, monkeypatch):
    from bench import pg

    name = f"test_de_bench_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(pg, "DATABASES", Ledger("postgresql", tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", MAKES_A_DATABASE, name],
        cwd=ROOT,
        env={**os.environ, "DJANGO_EVENTS_BENCH_LEDGERS": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "made"
        assert pg.DATABASES.orphans() == []  # its maker is alive
        child.kill()
        child.wait()
        assert pg.DATABASES.orphans() == [name]
        pg.drop_databases(pg.DATABASES.orphans(), print)  # what bench/__main__.py does first
        assert not database_exists(name)
        assert pg.DATABASES.orphans() == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        pg.connect("postgres").execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
