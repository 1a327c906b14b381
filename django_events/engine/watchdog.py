"""A bound on the engine's own database calls.

No driver timeout covers a half-open connection: the peer's TCP stack keeps acknowledging,
so keepalives and ``tcp_user_timeout`` never fire and a query waits forever. The watchdog
times each engine call (from its statement until the next statement, a handler, or a
wait) and, past ``CALL_TIMEOUT``, asks the server to cancel the statement and shuts the
socket down: the call fails, and the worker reconnects as after any database error.
Handler code is never timed.

The cancel matters as much as the cut: a server that is reachable but slow (a relay's
take walking dead index entries behind a long-held snapshot) would otherwise keep running
the statement, and the locks it holds (the relay's advisory lock among them), long after
the client gave up, and every retry would queue behind it (docs/performance.md, H1).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("django_events.watchdog")
CANCEL_TIMEOUT = 5.0  # seconds the cancel request may take before the cut goes ahead alone


class Watchdog(threading.Thread):
    def __init__(self, timeout: float) -> None:
        super().__init__(name="django-events-watchdog", daemon=True)
        self.timeout = timeout
        self._since: float | None = None
        self._raw: Any = None
        self._stopped = threading.Event()

    def wrapper(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        """A ``connection.execute_wrapper``: every engine statement restarts the clock."""
        self._raw = context["connection"].connection
        self._since = time.monotonic()
        return execute(sql, params, many, context)

    def disarm(self) -> None:
        self._since = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Handler code runs untimed; the next engine statement re-arms."""
        self._since = None
        try:
            yield
        finally:
            self._since = None

    def run(self) -> None:
        while not self._stopped.wait(min(0.5, self.timeout / 4)):
            since, raw = self._since, self._raw
            if since is not None and raw is not None and time.monotonic() - since > self.timeout:
                self._since = None
                self._cut(raw)

    def _cut(self, raw: Any) -> None:
        logger.error(
            "A database call has not answered in %.0fs (CALL_TIMEOUT): cancelling it and "
            "cutting the connection",
            self.timeout,
        )
        cancel = getattr(raw, "cancel_safe", None)  # psycopg 3.2+; a new connection's request
        if cancel is not None:
            try:
                cancel(timeout=min(self.timeout, CANCEL_TIMEOUT))
            except Exception:  # the server out of reach: the cut below still ends the call
                logger.warning("Could not cancel the call on the server", exc_info=True)
        try:
            with socket.socket(fileno=os.dup(raw.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # closed already: the cancelled call failed and Django closed it
            if not getattr(raw, "closed", False):
                logger.warning("Could not cut the connection", exc_info=True)

    def stop(self) -> None:
        self._stopped.set()
