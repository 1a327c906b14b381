"""The inbox: one row per (group, event) handled, written in the handler's transaction.

Inserting it first means a second delivery of the same event waits on the first one's
unique entry and then finds it there (docs/guarantees.md, "3. Effects once").
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import connections

from . import sql


def record_many(using: str, slots: list[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
    """Insert many inbox rows at once; return the (group, event id) pairs that were new.

    Rows go in sorted order so two workers inserting overlapping sets lock them in the
    same order and cannot deadlock each other.
    """
    if not slots:
        return set()
    connection = connections[using]
    dialect = sql.dialect(using)
    ordered = sorted(set(slots), key=lambda slot: (slot[1], slot[0]))
    # Each slot by the form the database reads back (PostgreSQL: the UUID; SQLite: its hex).
    stored = {
        (group, dialect.uuid_value(event_id)): (group, event_id) for group, event_id in ordered
    }
    params: list[Any]
    if isinstance(dialect, sql.PostgreSQL):
        # Two arrays, one text whatever the batch's size: a statement planned once.
        rows_sql = (
            f"SELECT g, e, {dialect.now()} FROM unnest(%s::text[], %s::uuid[]) "
            "WITH ORDINALITY AS u(g, e, n) ORDER BY n"
        )
        params = [[group for group, _ in ordered], [event_id for _, event_id in ordered]]
    else:
        rows_sql = "VALUES " + ", ".join([f"(%s, %s, {dialect.now()})"] * len(ordered))
        params = [p for slot in stored for p in slot]
    with sql.cursor(connection, prepared=True) as cursor:
        cursor.execute(
            f"INSERT INTO {sql.table(connection, 'InboxRecord')} "
            f"(group_name, event_id, handled_at) {rows_sql} "
            "ON CONFLICT (group_name, event_id) DO NOTHING RETURNING group_name, event_id",
            params,
        )
        rows = cursor.fetchall()
    # The slots given, not the values read back: no UUID parsed again per event.
    return {stored[(group, event_id)] for group, event_id in rows}


def forget(using: str, slots: list[tuple[str, uuid.UUID]]) -> None:
    """Delete inbox rows this transaction inserted for events whose handler then failed,
    so the failure leaves no trace that would make the next attempt skip the handler."""
    connection = connections[using]
    dialect = sql.dialect(using)
    pairs = " OR ".join(["(group_name = %s AND event_id = %s)"] * len(slots))
    params = [p for group, event_id in slots for p in (group, dialect.uuid_value(event_id))]
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {sql.table(connection, 'InboxRecord')} WHERE {pairs}", params)
