"""Waking idle workers early. Only ever a shortcut: the poll finds anything a wake-up misses.

On PostgreSQL with psycopg 3 a dedicated connection LISTENs; elsewhere, and whenever that
connection fails, the waiter sleeps for the poll interval (or until a publish in this
very process sets ``local_wakeup``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections

from . import sql

logger = logging.getLogger("django_events.wakeup")

local_wakeup = threading.Event()
_RETRY_LISTEN_AFTER = 30.0


class Waiter:
    def __init__(
        self,
        using: str,
        channels: Sequence[str],
        ignore: Callable[[], int | None] | None = None,
    ) -> None:
        """``ignore`` names the backend whose notifications wake nobody (the waiter's own)."""
        self.using = using
        self.ignore = ignore
        self.channels = [c for c in channels if c]
        self._listener: Any = None
        self._failed_at: float | None = None
        self.can_listen = bool(self.channels) and self._psycopg3()

    def _psycopg3(self) -> bool:
        if not sql.dialect(self.using).notifies:
            return False
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return False
        return True

    def _connect(self) -> Any:
        if self._listener is not None:
            return self._listener
        if self._failed_at is not None and time.monotonic() - self._failed_at < _RETRY_LISTEN_AFTER:
            return None
        wrapper = connections[self.using]
        try:
            raw = wrapper.get_new_connection(wrapper.get_connection_params())
            raw.autocommit = True
            for channel in self.channels:
                raw.execute(f"LISTEN {wrapper.ops.quote_name(channel)}")
        except Exception:
            logger.warning("LISTEN failed; polling until it works again", exc_info=True)
            self._failed_at = time.monotonic()
            return None
        self._listener, self._failed_at = raw, None
        return raw

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if woken by a notification."""
        listener = self._connect() if self.can_listen else None
        if listener is None:
            woken = local_wakeup.wait(timeout)
            local_wakeup.clear()
            return woken
        own = self.ignore() if self.ignore else None
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                notes = list(listener.notifies(timeout=left, stop_after=1))
                if not notes:
                    return False
                notes += listener.notifies(timeout=0)  # one wake-up serves a whole burst
                if any(note.pid != own for note in notes):
                    return True
            return False
        except Exception:
            logger.warning("LISTEN connection lost; polling until it is back", exc_info=True)
            self.close()
            self._failed_at = time.monotonic()
            return False

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                self._listener.close()
            self._listener = None
