"""The relay on SQLite: a take's cost does not grow with the event log.

SQLite cannot use an index for a subquery in ``RETURNING``: asking there whether each
taken row's id is in the log scanned the whole log per row, so every take slowed as the
log grew (docs/internals.md, "The relay on SQLite"). The plans of the statements a take
runs are read, not timed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from django_events import publish
from django_events.engine.relay import Relay
from django_events.models import EventRecord

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's planner"),
]


def _plans(take: Callable[[], Any]) -> list[str]:
    """The query plan of every statement ``take`` runs, with the parameters it ran with."""
    ran: list[tuple[str, Any]] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not many and sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            ran.append((re.sub(r"(?<!%)%s", "?", sql).replace("%%", "%"), params or ()))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        take()
    return [
        str(row[-1])
        for sql, params in ran
        for row in connection.connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)
    ]


@pytest.mark.database_transport  # the relay's take from the outbox
@pytest.mark.parametrize("path", ["move", "lease"])
def test_a_take_looks_its_rows_up_in_the_log_by_index_never_by_a_scan(path: str) -> None:
    """``move``: the same-database move; ``lease``: the leased send to a broker."""
    for n in range(3):
        publish("test.happened", {"n": n})
    relay = Relay()
    if path == "move":
        plans = _plans(lambda: relay.relay_batch("default"))
    else:
        plans = _plans(lambda: relay._lease("default"))
    log = EventRecord._meta.db_table
    assert not [plan for plan in plans if plan.startswith("SCAN") and log in plan], plans
    assert [plan for plan in plans if plan.startswith("SEARCH") and log in plan], plans
