"""Which database transport the fault suite runs on, and what "claimed", "leased" and
"owed" mean there.

``DatabaseTransport`` (the default) keeps one delivery row per event and group: a
claimed event is that row with a lease on it, and the relay moves events from the
outbox into the log. ``LogTransport`` (``DJANGO_EVENTS_TEST_BACKEND``, tests/settings_base.py)
has ``publish()`` write the log row itself and each group read the log through its
cursor: a claimed batch is one row of ``django_events_lease`` listing its positions, and
an event gets a delivery row only when it fails, waits behind its key, is released, or
outlives its lease (docs/internals.md, "The log transport"). The tests ask these
functions, through any DB-API cursor, rather than reading either table themselves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

LOG_TRANSPORT = os.environ.get("DJANGO_EVENTS_TEST_BACKEND", "").endswith(".LogTransport")
"""The suite runs on the log transport."""

NAME = "log" if LOG_TRANSPORT else "db"
"""For the table's row names."""

# The events of a group under a lease, with the lease's end and token, on either path:
# delivery rows that are claimed, and the positions of the lease rows (log transport).
_CLAIMED = (
    "SELECT d.event_id, d.claimed_until, d.lease_token FROM django_events_delivery d "
    "WHERE d.group_name = %s AND d.lease_token IS NOT NULL AND d.claimed_until IS NOT NULL"
)
_LEASED = (
    "SELECT e.id, l.claimed_until, l.lease_token FROM django_events_lease l "
    "CROSS JOIN LATERAL unnest(l.positions) AS p(position) "
    "JOIN django_events_event e ON e.position = p.position WHERE l.group_name = %s"
)


def _claims(cursor: Any, group: str) -> list[tuple[uuid.UUID, str]]:
    """(event, token) of each of ``group``'s events a claim holds, its lease over or not."""
    if LOG_TRANSPORT:
        cursor.execute(f"{_CLAIMED} UNION ALL {_LEASED}", [group, group])
    else:
        cursor.execute(_CLAIMED, [group])
    return [(_uuid(e), str(t)) for e, _, t in cursor.fetchall()]


def claimed(cursor: Any, group: str) -> int:
    """How many of ``group``'s events a claim holds, whether its lease ran out or not."""
    return len(_claims(cursor, group))


def holder(cursor: Any, group: str, event_id: uuid.UUID) -> str | None:
    """The token of the claim that holds ``event_id`` for ``group`` now, if any."""
    tokens = [t for e, t in _claims(cursor, group) if e == event_id]
    assert len(tokens) <= 1, f"{event_id} held twice: {tokens}"
    return tokens[0] if tokens else None


def owes(cursor: Any, group: str) -> bool:
    """The transport still holds work for ``group``: a delivery row, or (log transport)
    an event in a lease or past the group's cursor."""
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM django_events_delivery WHERE group_name = %s)", [group]
    )
    if cursor.fetchone()[0]:
        return True
    if not LOG_TRANSPORT:
        return False
    cursor.execute(f"SELECT EXISTS ({_LEASED})", [group])
    if cursor.fetchone()[0]:
        return True
    cursor.execute(f"SELECT EXISTS ({past_cursor('c.group_name = %s')})", [group])
    return bool(cursor.fetchone()[0])


def set_lease(cursor: Any, receipt: Any, seconds: float) -> None:
    """Make the claim of ``receipt`` end ``seconds`` from now, by the database clock."""
    table, key = _lease_row(receipt)
    cursor.execute(
        f"UPDATE {table} SET claimed_until = statement_timestamp() "  # noqa: S608
        "+ make_interval(secs => %s) WHERE id = %s",
        [seconds, key],
    )


def lease_ended(cursor: Any, receipt: Any) -> bool:
    """The claim of ``receipt`` ran out by the database clock."""
    table, key = _lease_row(receipt)
    cursor.execute(
        f"SELECT claimed_until < statement_timestamp() FROM {table} WHERE id = %s",  # noqa: S608
        [key],
    )
    return bool(cursor.fetchone()[0])


def _lease_row(receipt: Any) -> tuple[str, int]:
    """The table and id of the row whose ``claimed_until`` is ``receipt``'s lease."""
    from django_events.transports.log import LeaseReceipt

    if isinstance(receipt, LeaseReceipt):
        return "django_events_lease", receipt.lease
    return "django_events_delivery", receipt[0]


class Route(NamedTuple):
    """Where a planted event goes: its log row's ``txid`` (SQL) and whether a delivery
    row for the group brings it."""

    txid: str
    delivery: bool


LOGGED_TYPE = "test.happened"
"""The type every group of the fault suite (alpha and beta) subscribes to."""


def route(in_delivery_row: bool) -> Route:
    """How to plant an event, as another writer could, so that the transport under test
    reads the hostile value where it lies. ``DatabaseTransport`` reads delivery rows
    only: every planted event gets one. The log transport reads every group's events
    through its cursor, so an event hostile in its log row is written there alone (its
    own transaction's ``txid``: owed to each group subscribed to its type), while one
    hostile in its delivery row (an attempt's count or time, a missing event, a type no
    group subscribes to) gets that row and a log row no window reads (``NULL``, as rows
    logged before migration 0014), which is how retries and diverted types reach it."""
    if LOG_TRANSPORT and not in_delivery_row:
        return Route("pg_current_xact_id()", delivery=False)
    return Route("NULL", delivery=True)


class Stall(NamedTuple):
    """The transport's serialization point, which a stuck process can hold, and how
    ``events_status`` sees what waits behind it."""

    name: str
    lock: str  # SQL a session runs, then sits in its transaction
    health: Callable[[float], dict[str, float | None]]  # HEALTH reporting it after n s
    problem: str  # words of the problem reported
    age: Callable[[dict[str, Any]], float]  # how old the waiting work is (``--json``)
    backlog: int  # the part of ``backlog_from`` that grows behind it


def _oldest_pending(report: dict[str, Any]) -> float:
    return max((g["oldest_pending_age_s"] or 0.0 for g in report["groups"].values()), default=0)


CLAIM_LOCK = 1684371062
"""The log transport's per-group claim lock (``django_events_log_claim``, migration 0014),
taken as ``(CLAIM_LOCK, hashtext(group))``."""

if LOG_TRANSPORT:
    STALL = Stall(
        name="group alpha's claim lock",
        lock=f"SELECT pg_advisory_xact_lock({CLAIM_LOCK}, hashtext('alpha'))",
        health=lambda after: {"MAX_PENDING_AGE": after, "MAX_OUTBOX_AGE": None},
        problem="group alpha",
        age=_oldest_pending,
        backlog=1,
    )
    UNCOMMITTED_EVENT = (
        "INSERT INTO django_events_event (id, position, type, version, data, metadata, "
        "occurred_at, source, recorded_at) VALUES (gen_random_uuid(), "
        "nextval(pg_get_serial_sequence('django_events_outbox', 'position')), "
        "'test.unrelated', 1, '{}', '{}', now(), 'long', now())"
    )
else:
    from django_events.engine.relay import RELAY_LOCK

    STALL = Stall(
        name="relay lock",
        lock=f"SELECT pg_advisory_xact_lock({RELAY_LOCK})",
        health=lambda after: {"MAX_OUTBOX_AGE": after, "MAX_PENDING_AGE": 300},
        problem="outbox",
        age=lambda report: report["outbox"]["oldest_age_s"] or 0.0,
        backlog=0,
    )
    UNCOMMITTED_EVENT = (
        "INSERT INTO django_events_outbox (event_id, type, version, data, metadata, "
        "occurred_at, source, created_at) VALUES (gen_random_uuid(), 'test.unrelated', 1, "
        "'{}', '', now(), 'long', now())"
    )
"""What a long transaction elsewhere has written: an event it has not committed yet."""


# What must not skip a late commit, and the naive scan (position > the highest seen) that
# does: the relay reading the outbox, or (log transport) each group's cursor reading the log.
NAIVE_SCAN = (
    "SELECT position, id FROM django_events_event WHERE position > %s ORDER BY position"
    if LOG_TRANSPORT
    else "SELECT position, event_id FROM django_events_outbox WHERE position > %s ORDER BY position"
)


def take_once(seen: set[uuid.UUID]) -> None:
    """One pass of the stage a late commit must not slip past, adding what it took to
    ``seen``: the relay moving the outbox into the log, or (log transport) a claim of
    group alpha's cursor, acknowledged."""
    from django.db import connection

    from django_events.engine.relay import Relay
    from django_events.transports import transports

    if LOG_TRANSPORT:
        transport = transports["default"]
        claimed = transport.claim(["alpha"], 100, 30)
        transport.ack_many(claimed)
        seen.update(c.event_id for c in claimed)
        return
    Relay().run_once()
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM django_events_event")
        seen.update(_uuid(e) for (e,) in cursor.fetchall())


def past_cursor(where: str = "") -> str:
    """SQL: the log events of a subscribed type each group's cursor ``h`` has not passed
    (log transport), optionally only for the cursor rows ``where`` allows (alias ``c``)."""
    from django_events.transports.log import heads, not_passed

    return (
        f"SELECT l.position FROM {heads('django_events_cursor', where)} h "  # noqa: S608
        "JOIN django_events_event l ON l.txid >= pg_snapshot_xmin(h.lo::pg_snapshot) AND "
        'l.type IN (SELECT s.event_type FROM django_events_subscription s WHERE s."group" '
        f"= h.group_name) AND {not_passed('l', 'h')}"
    )


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
