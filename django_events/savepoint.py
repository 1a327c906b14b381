"""A savepoint taken only when a handler first touches the database.

A worker runs a batch's handlers in one transaction, each in a savepoint, so that one that
raises is rolled back alone (docs/concepts.md, "Batches share one commit"). A savepoint
costs a round trip, and most of a busy worker's time would go to them: this one is taken
just before the handler's first SQL statement, so a handler that never uses the
database costs nothing, and one that does pays one statement (no ``RELEASE``: the
batch's commit releases them all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LazySavepoint:
    """Install with ``connection.execute_wrapper(savepoint)`` around one handler call."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.sid: str | None = None
        self._taking = False
        self._callbacks = len(connection.run_on_commit)

    @property
    def taken(self) -> bool:
        return self.sid is not None

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if self.sid is None and not self._taking:
            self._taking = True  # the SAVEPOINT statement passes through here too
            try:
                self.sid = self.connection.savepoint()
            finally:
                self._taking = False
        return execute(sql, params, many, context)

    def rollback(self) -> None:
        """Undo the handler: its writes, if it made any, and the ``on_commit`` callbacks
        it registered. The transaction is usable again, even after a database error."""
        del self.connection.run_on_commit[self._callbacks :]
        if self.sid is not None:
            self.connection.savepoint_rollback(self.sid)
        self.connection.needs_rollback = False
