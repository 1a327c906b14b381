"""PostgreSQL helpers shared by the scenarios: databases, pre-publishing, consumers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from bench import engine
from bench.leftovers import Ledger
from bench.runner import ROOT

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = os.environ.get("PGPORT", "5432")
USER = os.environ.get("PGUSER", "postgres")
BENCH_DB = os.environ.get("DJANGO_EVENTS_BENCH_DB", "django_events_bench")
LOG_TRANSPORT = engine.LOG
"""The engine runs on the log transport (bench/engine.py: the default)."""
SHARED_PORT = PORT  # the machine's server; on_port() points elsewhere for a while
DATABASES = Ledger("postgresql")  # what this and earlier runs created on the shared server

# About 200 bytes of JSON, the payload of every scenario.
PAYLOAD: dict[str, Any] = {
    "order_id": 0,
    "email": "someone@example.com",
    "total": "19.90",
    "currency": "EUR",
    "lines": [{"sku": "SKU-123", "qty": 2}, {"sku": "SKU-456", "qty": 1}],
    "channel": "web",
    "note": "x" * 25,
}
PAYLOAD_TEXT = json.dumps(PAYLOAD)
assert 180 <= len(PAYLOAD_TEXT) <= 220, len(PAYLOAD_TEXT)


def dsn(dbname: str = BENCH_DB) -> str:
    return f"host={HOST} port={PORT} user={USER} dbname={dbname}"


@contextmanager
def on_port(port: int) -> Iterator[None]:
    """Point every helper here, and every child started meanwhile, at another server.

    W1, B1 and H1 run on a private cluster (bench/private.py): the children read
    ``PGPORT`` through the test settings, the helpers read ``PORT``.
    """
    global PORT
    saved, saved_env = PORT, os.environ.get("PGPORT")
    PORT = os.environ["PGPORT"] = str(port)
    try:
        yield
    finally:
        PORT = saved
        if saved_env is None:
            os.environ.pop("PGPORT", None)
        else:
            os.environ["PGPORT"] = saved_env


def connect(dbname: str = BENCH_DB, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(dsn(dbname), autocommit=autocommit)


def recreate_database(name: str, template: str | None = None) -> None:
    """Create ``name`` afresh. On the shared server it is recorded first, and the run
    drops it when it ends (``bench/__main__.py``), or the next run if this one is killed;
    a private cluster goes with everything on it."""
    if PORT == SHARED_PORT:
        DATABASES.add(name)
    with connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        extra = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{extra}')


def drop_database(name: str) -> None:
    with connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if PORT == SHARED_PORT:
        DATABASES.remove(name)


def drop_databases(names: Sequence[str], log: Callable[[str], None]) -> None:
    """Drop each of ``names`` (on the shared server: called outside ``on_port``); one that
    fails is logged, not raised (a ``finally`` calls this: the run's error is the one to see)."""
    for name in names:
        try:
            drop_database(name)
        except Exception as exc:
            log(f"could not drop database {name!r}: {exc}")


def publishing_through(backend: str, options: dict[str, Any]) -> Any:
    """Settings for this process's ``publish()`` that name the broker a row's workers run
    (``enable()``, then ``disable()``): on the log transport, the benchmark's default,
    ``publish()`` would write the event log, which no broker's relay reads."""
    from django.conf import settings
    from django.test import override_settings

    transports = {"default": {"BACKEND": backend, "OPTIONS": options}}
    return override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": transports})


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH", "")]))
    out.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    out.update(extra)
    return out


# --------------------------------------------------------------------------- django-events

EVENT_TABLES = (
    "django_events_outbox, django_events_event, django_events_delivery, "
    "django_events_inbox, django_events_deadletter, django_events_lease"
)


def reset_events(dbname: str = BENCH_DB) -> None:
    """Empty the django-events tables, even with idle consumers connected.

    TRUNCATE locks every table at once; a consumer's statement that holds one of them
    and wants another would deadlock with it, so give up quickly and try again.
    """
    with connect(dbname) as conn:
        conn.execute("SET lock_timeout = '200ms'")
        for attempt in range(100):
            try:
                conn.execute(f"TRUNCATE {EVENT_TABLES} RESTART IDENTITY")
                return
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                time.sleep(0.05 * (attempt % 5))
        raise RuntimeError("could not empty the event tables")


def uuid7_sql(millisecond: str, counter: str) -> str:
    """SQL: a version-7 UUID (RFC 9562) for the Unix ``millisecond`` and a ``counter``
    (its low 12 bits), random after them: ids ordered by time as ``publish()`` makes them
    (``envelope.uuid7``), so rows reach the ends of the id indexes, not random pages."""
    return (
        f"(lpad(to_hex({millisecond}), 12, '0') || '7' || lpad(to_hex(mod({counter}, 4096)), 3, "
        "'0') || '8' || substr(md5(random()::text), 1, 15))::uuid"
    )


NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"


def prepublish(n: int, dbname: str = BENCH_DB, type: str = "bench.noop") -> None:
    """Insert ``n`` outbox rows shaped exactly like ``publish()``'s, in one statement:
    the same columns, and ids ordered by time (``uuid7_sql``).

    Faster than calling ``publish()`` n times; the scenarios that use it measure
    what happens to committed events, not publishing.
    """
    ids = f"SELECT {uuid7_sql(NOW_MS, 'g')} AS u FROM generate_series(1, %s) g"  # noqa: S608
    with connect(dbname) as conn:
        if LOG_TRANSPORT:  # publish() writes the log row itself there
            conn.execute(
                "INSERT INTO django_events_event (id, position, type, version, key, data, "  # noqa: S608 - fixed SQL
                "metadata, occurred_at, source, correlation_id, causation_id, recorded_at) "
                "SELECT u, nextval(pg_get_serial_sequence('django_events_outbox', 'position')), "
                "%s, 1, NULL, %s::jsonb, '{}'::jsonb, now(), 'bench', u, NULL, now() "
                f"FROM ({ids}) s",
                [type, PAYLOAD_TEXT, n],
            )
            return
        conn.execute(
            "INSERT INTO django_events_outbox (event_id, type, version, key, data, metadata, "  # noqa: S608 - fixed SQL
            "occurred_at, source, correlation_id, causation_id, created_at) "
            "SELECT u, %s, 1, NULL, %s, '', now(), 'bench', u, NULL, now() "
            f"FROM ({ids}) s",
            [type, PAYLOAD_TEXT, n],
        )
        conn.execute("ANALYZE django_events_outbox")


def wait_steady(
    conn: psycopg.Connection,
    started: Callable[[psycopg.Connection], bool],
    done: Callable[[psycopg.Connection], bool],
    procs: Sequence[subprocess.Popen[Any]],
    timeout: float,
    poll: float = 0.02,
) -> tuple[float, float]:
    """(first observed progress, done) perf_counter times, polling the database."""
    deadline = time.perf_counter() + timeout
    t_start: float | None = None
    while True:
        now = time.perf_counter()
        if t_start is None and started(conn):
            t_start = now
        if t_start is not None and done(conn):
            return t_start, time.perf_counter()
        if now > deadline:
            raise TimeoutError(f"not done after {timeout:.0f}s")
        for p in procs:
            if p.poll() not in (None, 0):
                raise RuntimeError(f"worker exited with {p.returncode}")
        time.sleep(poll)


def stop(procs: Sequence[subprocess.Popen[Any]], timeout: float = 15) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Consumers:
    """``processes`` consume_events kept running across repetitions (start-up paid once).

    ``drain(n)`` returns the steady-state events/s at which they empty an outbox holding
    ``n`` pre-published events: from the first relayed batch to the last handled event.
    """

    def __init__(
        self,
        processes: int = 2,
        dbname: str = BENCH_DB,
        group: str = "bench",
        environ: dict[str, str] | None = None,
    ) -> None:
        self.dbname = dbname
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "django",
                    "consume_events",
                    "--group",
                    group,
                    "--verbosity",
                    "0",
                ],
                env=env(DJANGO_EVENTS_BENCH_DB=dbname, **(environ or {})),
                cwd=ROOT,
            )
            for _ in range(processes)
        ]

    def __enter__(self) -> Consumers:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.procs)

    def handled(self) -> int:
        """A mark of the inbox (its highest row id) to read before publishing what
        ``drain`` waits for: the rows above it are the events handled since."""
        with connect(self.dbname) as conn:
            return _inbox_mark(conn)

    def drain(self, n: int, timeout: float = 300, *, before: int | None = None) -> float:
        """Wait until ``n`` more events are handled; return events/s. ``before``: the
        inbox's mark (``handled``) read before they were published. Read here instead, it
        misses what the running consumers handled between the publish and this call: one
        S4 repetition reported 29,900 of 30,000 handled, a batch short, on a loaded
        machine. The rows above the mark are counted on the inbox's primary key: a
        ``count(*)`` of the whole inbox, polled every 20 ms, scanned S7's million rows on
        both cores and slowed the consumers it measured."""
        with connect(self.dbname) as conn:
            if before is None:
                before = _inbox_mark(conn)
            first = conn.execute("SELECT min(position) FROM django_events_outbox").fetchone()
            first_position = first[0] if first else None

            def started(c: psycopg.Connection) -> bool:
                if LOG_TRANSPORT:  # publish() wrote the log: nothing waits in the outbox
                    return _handled_since(c, before) > 0
                row = c.execute("SELECT min(position) FROM django_events_outbox").fetchone()
                return row is None or row[0] != first_position

            def done(c: psycopg.Connection) -> bool:
                row = c.execute(
                    "SELECT EXISTS (SELECT 1 FROM django_events_outbox) "
                    "OR EXISTS (SELECT 1 FROM django_events_delivery)"
                ).fetchone()
                if row and row[0]:
                    return False
                # The log transport keeps no row for an event not yet claimed: count.
                return not LOG_TRANSPORT or _handled_since(c, before) >= n

            t0, t1 = wait_steady(conn, started, done, self.procs, timeout)
            handled = _handled_since(conn, before)
            if handled != n:
                raise RuntimeError(f"{handled} events handled, {n} expected")
        return n / (t1 - t0)


def _inbox_mark(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT max(id) FROM django_events_inbox").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _handled_since(conn: psycopg.Connection, mark: int) -> int:
    row = conn.execute("SELECT count(*) FROM django_events_inbox WHERE id > %s", [mark]).fetchone()
    return int(row[0]) if row else 0


def consume_events(n: int, *, processes: int = 2, dbname: str = BENCH_DB) -> float:
    """One-shot: start ``processes`` consumers, drain ``n`` events, stop them."""
    with Consumers(processes, dbname) as consumers:
        return consumers.drain(n)


def table_bytes(conn: psycopg.Connection, *tables: str) -> int:
    total = 0
    for t in tables:
        row = conn.execute("SELECT pg_total_relation_size(%s)", [t]).fetchone()
        total += int(row[0]) if row else 0
    return total


def child(role: str, args: dict[str, Any], **popen: Any) -> subprocess.Popen[str]:
    """Start ``python -m bench.child ROLE ARGS`` (one JSON line in, results on stdout)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.child", role, json.dumps(args)],
        env=env(**popen.pop("env", {})),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        **popen,
    )


def child_result(proc: subprocess.Popen[str], timeout: float = 300) -> Any:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed with exit code {proc.returncode}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])["result"]


def run_child(role: str, args: dict[str, Any], timeout: float = 300, **popen: Any) -> Any:
    return child_result(child(role, args, **popen), timeout)
