"""The outbox NOTIFY, sent after the publisher's commit by a thread of its own.

PostgreSQL takes a database-wide lock for a NOTIFY at commit and holds it until that
commit is on disk, so a NOTIFY inside the publisher's transaction makes concurrent
publishers flush one after the other; sent from the publisher's own connection after the
commit, it costs the publisher a round trip. Here the publisher only sets a flag (on
commit); one thread per process and database sends the NOTIFY on a connection of its own,
in autocommit transactions that do not wait for the disk, one for however many commits
came in meanwhile (docs/performance.md, "Publishing").

Every commit is followed by a NOTIFY sent after it. The connection closes after
``IDLE_CLOSE`` seconds without a commit to announce (so an idle process holds none), and
after any error; a lost NOTIFY is only a late wake-up, as the relay's poll finds the rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from django.db import connections

logger = logging.getLogger("django_events.notifier")

IDLE_CLOSE = 1.0
"""Seconds without a commit to announce after which the thread closes its connection."""


class Notifier:
    """Announces commits on one database alias; ``announce()`` is all a publisher calls."""

    def __init__(self, using: str, channel: str) -> None:
        self.using = using
        self.sql = f"SELECT pg_notify('{channel}', '')"
        self.due = threading.Event()
        self.pid = os.getpid()
        self.params = connections[using].get_connection_params()
        self.thread = threading.Thread(
            target=self._run, name=f"django-events-notify-{using}", daemon=True
        )
        self.thread.start()

    def announce(self) -> None:
        self.due.set()

    def _run(self) -> None:
        raw: Any = None
        while True:
            if not self.due.wait(IDLE_CLOSE if raw is not None else None):
                raw = _close(raw)  # idle: hold no connection
                continue
            self.due.clear()  # commits from here on get the next NOTIFY
            try:
                if raw is None:
                    raw = connections[self.using].get_new_connection(self.params)
                    raw.autocommit = True
                    with raw.cursor() as cursor:
                        cursor.execute("SET synchronous_commit = off")
                with raw.cursor() as cursor:
                    cursor.execute(self.sql)
            except Exception:
                logger.warning("The outbox NOTIFY failed; the relay's poll finds the events")
                raw = _close(raw)


def _close(raw: Any) -> Any:
    """Close ``raw`` if open; None, the connection the thread holds after."""
    if raw is not None:
        with contextlib.suppress(Exception):  # already broken: nothing more to release
            raw.close()
    return None


_notifiers: dict[str, Notifier] = {}
_lock = threading.Lock()


def notifier(using: str, channel: str) -> Notifier:
    """This process's notifier for ``using``; a forked child starts its own."""
    found = _notifiers.get(using)
    if found is not None and found.pid == os.getpid():
        return found
    with _lock:
        found = _notifiers.get(using)
        if found is None or found.pid != os.getpid():  # the parent's thread did not fork
            found = _notifiers[using] = Notifier(using, channel)
        return found
