"""Fixtures of the fault-injection suite: sizes, seeds, processes and the final table.

``DJANGO_EVENTS_FAULTS=quick`` (the default, for CI) or ``full`` sizes every test;
``DJANGO_EVENTS_FAULTS_SEED`` replays a run. Every test adds one row (or more) to the
table printed at the end of the session.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from ..conftest import wait_until
from .checker import Report

ROOT = Path(__file__).resolve().parents[2]
MODE = os.environ.get("DJANGO_EVENTS_FAULTS", "quick")
if MODE not in ("quick", "full"):
    raise pytest.UsageError(f"DJANGO_EVENTS_FAULTS must be quick or full, not {MODE!r}")
FULL = MODE == "full"
SEED = int(os.environ.get("DJANGO_EVENTS_FAULTS_SEED") or random.SystemRandom().randrange(10**6))


def size(quick: Any, full: Any) -> Any:
    """The quick or the full value, as the run asks."""
    return full if FULL else quick


def rng_for(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


ROWS: list[dict[str, Any]] = []


def add_row(name: str, report: Report | None = None, **extra: Any) -> None:
    """One line of the final table; controls are marked as such by their name."""
    row: dict[str, Any] = {"row": name}
    if report is not None:
        row.update(report.counts())
    row.update(extra)
    ROWS.append(row)


_COLUMNS = [
    ("row", 50),
    ("events", 7),
    ("lost", 5),
    ("duplicated", 10),
    ("unexpected", 10),
    ("dead", 5),
    ("kills", 5),
    ("drain_s", 8),
    ("secs", 6),
    ("note", 0),
]


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    lines = ["  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip()]
    for row in rows:
        lines.append(
            "  ".join(cell(row.get(name)).ljust(width) for name, width in _COLUMNS).rstrip()
        )
    return lines


def pytest_report_header(config: Any) -> str:
    return (
        f"django-events faults: mode={MODE} seed={SEED} (replay: DJANGO_EVENTS_FAULTS_SEED={SEED})"
    )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    write = terminalreporter.write_line
    terminalreporter.section(f"fault-injection table (mode={MODE}, seed={SEED})")
    for line in format_table(ROWS):
        write(line)
    write(f"replay with: DJANGO_EVENTS_FAULTS={MODE} DJANGO_EVENTS_FAULTS_SEED={SEED}")
    out = os.environ.get("DJANGO_EVENTS_FAULTS_TABLE")
    if out:
        Path(out).write_text(json.dumps({"mode": MODE, "seed": SEED, "rows": ROWS}, indent=1))


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if "postgresql" in settings.DATABASES["default"]["ENGINE"]:
        return
    for item in items:
        if "tests/faults" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason="the fault suite runs on PostgreSQL"))


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int | None] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Procs:
    """Subprocesses of one test; every one is killed when the test ends, pass or fail."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: dict[str, Proc] = {}

    def env(self, *, overrides: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
        from django.db import connection

        env = dict(os.environ)
        env.pop("DJANGO_EVENTS_FAILPOINT", None)
        env.pop("DJANGO_EVENTS_FAULTS_CONTROL", None)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.faults.settings_faults",
            DJANGO_EVENTS_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
            PYTHONPATH=str(ROOT),
            DJANGO_EVENTS_TEST_OVERRIDES=json.dumps(
                {"BACKOFF_BASE": 0, "POLL_INTERVAL": 0.2, **(overrides or {})}
            ),
        )
        env.update(extra)
        return env

    def start(self, name: str, *argv: str, env: dict[str, str]) -> Proc:
        proc = self.procs.get(name)
        if proc is None:
            proc = Proc(name, list(argv), env, self.tmp_path / f"{name}.log")
            self.procs[name] = proc
        proc.argv, proc.env = list(argv), env
        assert not proc.alive(), f"{name} is running"
        with open(proc.log, "ab") as log:
            log.write(f"--- start {proc.starts} at {time.time():.3f}\n".encode())
            log.flush()
            proc.popen = subprocess.Popen(
                [sys.executable, *proc.argv],
                cwd=ROOT,
                env=proc.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.starts += 1
        return proc

    def command(self, name: str, *args: str, env: dict[str, str]) -> Proc:
        """A management command, through the runner (which applies any control)."""
        return self.start(name, "-m", "tests.faults.runner", *args, env=env)

    def restart(self, name: str) -> Proc:
        proc = self.procs[name]
        return self.start(name, *proc.argv, env=proc.env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.popen is not None and proc.popen.poll() is None:
            proc.popen.send_signal(sig)
            proc.exits.append(proc.popen.wait(timeout=30))

    def wait(self, name: str, timeout: float) -> int:
        proc = self.procs[name]
        assert proc.popen is not None
        code = proc.popen.wait(timeout=timeout)
        proc.exits.append(code)
        return code

    def logs(self, *names: str) -> str:
        chosen = [self.procs[n] for n in names] if names else list(self.procs.values())
        return "\n".join(
            f"==== {p.name}\n{p.log.read_text(errors='replace')[-4000:]}"
            for p in chosen
            if p.log.exists()
        )

    def stop_all(self, timeout: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.alive():
                assert proc.popen is not None
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=30)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    pool = Procs(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
        _wait_for_other_sessions_to_end()


def _wait_for_other_sessions_to_end(timeout: float = 15.0) -> None:
    """Killed workers' server sessions end a moment later; the test database waits for them."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    try:
        connection.ensure_connection()
    except RuntimeError:  # a test without database access (private servers only)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            if not cursor.fetchone()[0]:
                return
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def _fresh_transport() -> Iterator[None]:
    from django_events.transports import transports

    transports.reset()
    yield
    transports.reset()


def cursor_check(func: Callable[[Any], Any]) -> Any:
    """Run ``func(cursor)`` on the test database, outside any test transaction."""
    from django.db import connection

    with connection.cursor() as cursor:
        return func(cursor)


def start_publishers(
    procs: Procs,
    count: int,
    total: int,
    tmp_path: Path,
    *,
    env: dict[str, str],
    name: str = "pub",
    sleep_max: float = 0.0,
    rollback: float = 0.1,
    rate: float = 0.0,
    event_type: str = "test.happened",
) -> list[Path]:
    """``count`` publisher processes sharing ``total`` events; returns their truth files."""
    outs = []
    for i in range(count):
        out = tmp_path / f"{name}-{i}.truth"
        share = total // count + (1 if i < total % count else 0)
        procs.start(
            f"{name}{i}",
            "-m",
            "tests.faults.publisher",
            f"--count={share}",
            f"--out={out}",
            f"--seed={SEED + i}",
            f"--sleep-max={sleep_max}",
            f"--rollback={rollback}",
            f"--rate={rate / count if rate else 0}",
            f"--type={event_type}",
            env=env,
        )
        outs.append(out)
    return outs


def wait_exited(procs: Procs, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        code = procs.wait(name, timeout=max(1.0, deadline - time.monotonic()))
        assert code == 0, f"{name} exited {code}\n{procs.logs(name)}"


def kill_at_random(
    procs: Procs,
    rng: random.Random,
    *,
    targets: list[str],
    publishers: list[str],
    kills: int,
    pause: tuple[float, float],
    timeout: float,
) -> tuple[int, float]:
    """SIGKILL and restart one of ``targets`` every ``pause`` seconds, at least ``kills``
    times and until every publisher finished; returns (kills, time of the last one)."""
    done = 0
    last_kill = time.monotonic()
    deadline = time.monotonic() + timeout
    while done < kills or any(procs.procs[p].alive() for p in publishers):
        assert time.monotonic() < deadline, "publishers did not finish\n" + procs.logs()
        time.sleep(rng.uniform(*pause))
        victim = rng.choice(targets)
        procs.kill(victim)
        procs.restart(victim)
        done += 1
        last_kill = time.monotonic()
    wait_exited(procs, publishers, timeout=60)
    return done, last_kill


def drained_since(
    last_kill: float, backlog: Callable[[], tuple[int, int]] | None = None
) -> float | None:
    """Seconds from ``last_kill`` until nothing is left (``backlog``: the database's by
    default), or None when that takes more than 60 s."""
    from .checker import backlog_from

    def drained() -> bool:
        outbox, deliveries = cursor_check(backlog_from) if backlog is None else backlog()
        return outbox == 0 and deliveries == 0

    try:
        wait_until(drained, timeout=60 - (time.monotonic() - last_kill), what="drained")
    except AssertionError:
        return None
    return time.monotonic() - last_kill


def publish_truth(count: int, *, seed_name: str, rollback: float = 0.1, **data: Any) -> dict:
    """Publish ``count`` events in this process, transactions of 1 to 5; return the truth."""
    from django.db import transaction

    from django_events import publish

    from .checker import COMMITTED, ROLLED_BACK

    rng = rng_for(seed_name)
    truth: dict = {}
    n = 0
    while n < count:
        ids = []
        roll_back = rng.random() < rollback
        try:
            with transaction.atomic():
                for _ in range(min(rng.randint(1, 5), count - n)):
                    ids.append(publish("test.happened", {"n": n + len(ids), **data}).id)
                if roll_back:
                    raise _RolledBack
        except _RolledBack:
            pass
        for event_id in ids:
            truth[event_id] = ROLLED_BACK if roll_back else COMMITTED
        n += len(ids)
    return truth


class _RolledBack(Exception):
    pass


def drain_with(procs: Procs, name: str, *args: str, env: dict[str, str], timeout: float) -> None:
    """Run ``consume_events --once`` again and again until nothing is left."""
    from .checker import backlog_from

    deadline = time.monotonic() + timeout
    while True:
        procs.command(name, "consume_events", "--once", *args, env=env)
        code = procs.wait(name, timeout=max(5.0, deadline - time.monotonic()))
        assert code == 0, procs.logs(name)
        if cursor_check(backlog_from) == (0, 0):
            return
        assert time.monotonic() < deadline, "not drained\n" + procs.logs()
        time.sleep(0.3)


def scalar(query: str, params: list[Any] | None = None) -> Any:
    """The first column of the first row of ``query`` on the test database."""

    def run(cursor: Any) -> Any:
        cursor.execute(query, params or [])
        return cursor.fetchone()[0]

    return cursor_check(run)


@dataclass
class PrivateDB:
    server: Any
    name: str

    def env(self, procs: Procs, **kwargs: Any) -> dict[str, str]:
        """Subprocess settings pointing at this server (or at ``port``, e.g. a proxy)."""
        port = kwargs.pop("port", self.server.port)
        options = kwargs.pop("db_options", {"connect_timeout": 5})
        env = procs.env(**kwargs)
        env.update(
            DJANGO_EVENTS_TEST_DB_NAME=self.name,
            PGHOST="127.0.0.1",
            PGPORT=str(port),
            DJANGO_EVENTS_FAULTS_DB_OPTIONS=json.dumps(options),
        )
        return env

    def check(self, func: Callable[[Any], Any]) -> Any:
        with self.server.connect(self.name) as conn, conn.cursor() as cursor:
            return func(cursor)


@pytest.fixture
def private_db(procs: Procs) -> Iterator[PrivateDB]:
    """A private PostgreSQL server with a migrated database; removed afterwards."""
    from .pgserver import PrivatePostgres

    server = PrivatePostgres().init()
    try:
        server.start()
        server.wait_ready()
        server.create_database("faults")
        db = PrivateDB(server, "faults")
        procs.command("migrate", "migrate", "-v0", env=db.env(procs))
        assert procs.wait("migrate", timeout=180) == 0, procs.logs("migrate")
        yield db
    finally:
        procs.stop_all()
        server.destroy()
