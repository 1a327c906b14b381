"""One benchmark run at a time on a PostgreSQL server (docs/performance.md, "Reproduce").

Two runs on one server would drain each other's queues and share its CPU. The lock is a
session advisory lock on a connection of its own: it ends with that connection, which
ends with the process (the kernel closes its socket, the idle backend sees it at once).
A run waiting for it polls ``pg_try_advisory_lock`` from the client rather than blocking
in ``pg_advisory_lock``: a backend blocked in a statement does not notice that its client
was killed, and would stay queued for the lock, then take it, after the run that held it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import psycopg

from bench import pg

KEY = int(os.environ.get("DJANGO_EVENTS_BENCH_LOCK_KEY", 0x62656E6368))  # "bench"; tests: their own
NAME = "django-events bench"  # application_name prefix: who holds it, in pg_stat_activity


def acquire(
    log: Callable[[str], None], key: int = KEY, poll: float = 1.0
) -> psycopg.Connection | None:
    """The connection holding the lock (close it to release), or None when the server
    cannot be reached (the run reports its rows as not measured)."""
    try:
        conn = psycopg.connect(
            pg.dsn("postgres"),
            autocommit=True,
            application_name=f"{NAME} pid {os.getpid()} on {socket.gethostname()}"[:63],
        )
    except Exception:
        return None
    told = False
    while not _try(conn, key):
        if not told:
            log(f"another benchmark run holds the server ({holder(conn, key)}); waiting...")
            told = True
        time.sleep(poll)
    return conn


def _try(conn: psycopg.Connection, key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
    return bool(row and row[0])


def holder(conn: psycopg.Connection, key: int = KEY) -> str:
    """The holder's application name and backend pid, for the message while waiting."""
    row = conn.execute(
        "SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a "
        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
        [key],
    ).fetchone()
    return f"{row[0] or 'unnamed'}, backend {row[1]}" if row else "gone since"
