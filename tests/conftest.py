"""Shared fixtures: the service checks, and worker subprocesses on the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from . import rabbitmq_support
from .log_support import log_transport, on_the_log_transport  # noqa: F401 - fixtures
from .otel_support import meter_reader, spans  # noqa: F401 - fixtures for every test file

ROOT = Path(__file__).resolve().parent.parent

DATABASE_TRANSPORT = "django_events.transports.database.DatabaseTransport"

TEST_BACKEND = os.environ.get("DJANGO_EVENTS_TEST_BACKEND", "")
"""The default transport of this run, if not ``DatabaseTransport`` (tests/settings_base.py)."""

ON_THE_LOG_TRANSPORT = TEST_BACKEND.endswith(".LogTransport")
"""The run has the log transport as its default (``make test-log``)."""


def pytest_configure(config: Any) -> None:
    """The run's default transport, and Django's deprecation warnings as errors."""
    if TEST_BACKEND:
        _default_transport(TEST_BACKEND)
    _deprecations_as_errors(config)


def _default_transport(backend: str) -> None:
    """Make ``backend`` the default transport of every settings a test builds, including
    the ``override_settings(DJANGO_EVENTS={...})`` that replace the whole setting (and so
    drop settings_base's ``TRANSPORTS``): the library's own default is swapped, as making
    it the default will (docs/testing.md, "The suite on the log transport")."""
    from django_events import conf

    conf.DEFAULT_TRANSPORT = backend


def _deprecations_as_errors(config: Any) -> None:
    """``DJANGO_EVENTS_TEST_DEPRECATIONS=error``: every Django deprecation warning fails.

    The class names change with each Django release (RemovedInDjango70Warning,
    RemovedInDjango2028Warning, ...), so they are read from the installed Django rather
    than spelled out; the newest leg of the matrix (``make test-newest``) sets it.
    """
    if os.environ.get("DJANGO_EVENTS_TEST_DEPRECATIONS") != "error":
        return
    from django.utils import deprecation

    for name in sorted(dir(deprecation)):
        found = getattr(deprecation, name)
        if name.startswith("Removed") and isinstance(found, type):
            config.addinivalue_line("filterwarnings", f"error::{found.__module__}.{name}")


def _postgres_unreachable() -> str | None:
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return None
    try:
        import psycopg

        psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", connect_timeout=3
        ).close()
    except Exception as exc:
        return f"PostgreSQL at {db['HOST']}:{db['PORT']} is unreachable ({exc})"
    return None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _postgres_unreachable()
    if reason is None:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"{reason}; CI is set, so this fails instead of skipping.")
    for item in items:
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: Any) -> None:
    if item.get_closest_marker("rabbitmq"):
        rabbitmq_support.require_broker()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """A shared RabbitMQ restarted mid-run is said loudly: it went silent, and why is work."""
    if not rabbitmq_support.restarts:
        return
    terminalreporter.section("the shared RabbitMQ stopped answering and was restarted", red=True)
    for output in rabbitmq_support.restarts:
        for line in output.splitlines():
            terminalreporter.write_line(line)


def vendor() -> str:
    from django.db import connection

    return connection.vendor


postgres_only = pytest.mark.skipif(
    "postgresql" not in settings.DATABASES["default"]["ENGINE"], reason="needs PostgreSQL"
)


def wait_until(
    condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until truthy; fail with a clear message after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what or condition}")
        time.sleep(interval)


def closing_connections(target: Callable[[], Any]) -> Callable[[], None]:
    """``target``, closing its thread's database connections when it returns.

    Django opens one connection per thread and closes it only when asked: a thread that
    ran the ORM (a worker's loop, say) and ended without closing keeps a session open on
    the test database, which then cannot be dropped at the end of the run.
    """

    def run() -> None:
        from django.db import connections

        try:
            target()
        finally:
            connections.close_all()

    return run


class Workers:
    """Worker subprocesses running ``manage.py consume_events`` against the test database."""

    def __init__(self, tmp_path: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp_path = tmp_path

    def env(self, **extra: str) -> dict[str, str]:
        from django.db import connection

        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE=os.environ.get(
                "DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE
            ),
            DJANGO_EVENTS_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)  # may name another project's settings (tests/services)
        return env

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", "consume_events", *args],
            cwd=ROOT,
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _no_connection_left_open(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Fail the run, naming them, if sessions other than the runner's own are still on the
    PostgreSQL test database at the end: they would keep it from being dropped (a
    warning that is easy to miss, and a database left behind)."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    query = (
        "SELECT pid, application_name, state, left(query, 80) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    def others() -> list[Any]:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchall()

    with django_db_blocker.unblock():
        left: list[Any] = []
        deadline = time.monotonic() + 5  # a backend may take a moment to exit
        while (left := others()) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not left, (
        f"{len(left)} connection(s) to the test database left open (a thread that ran the "
        f"ORM and never closed; see closing_connections): {left}"
    )


@pytest.fixture(autouse=True)
def _pinned_to_the_database_transport(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """``@pytest.mark.database_transport``: the test is about ``DatabaseTransport``'s own
    rows (the outbox the relay moves, one delivery row per event and group), so it runs
    on that transport whatever ``DJANGO_EVENTS_TEST_BACKEND`` makes the default, in this
    process and in the worker subprocesses it starts."""
    if not TEST_BACKEND or request.node.get_closest_marker("database_transport") is None:
        yield
        return
    from django_events import conf

    monkeypatch.setattr(conf, "DEFAULT_TRANSPORT", DATABASE_TRANSPORT)
    monkeypatch.delenv("DJANGO_EVENTS_TEST_BACKEND")
    database = {"default": {"BACKEND": DATABASE_TRANSPORT}}
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": database}):
        yield


@pytest.fixture(autouse=True)
def _fresh_transport() -> Iterator[None]:
    """Each test gets transports built from its own settings."""
    from django_events.transports import transports

    transports.reset()
    yield
    transports.reset()


@pytest.fixture
def other_connection() -> Iterator[Any]:
    """A second PostgreSQL session on the test database, as another process would hold."""
    import psycopg
    from django.db import connection

    params = connection.settings_dict
    with psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"],
        host=params["HOST"],
        port=params["PORT"] or 5432,
    ) as other:
        yield other
