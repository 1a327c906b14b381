"""The inbox: one row per (group, event) handled, written in the handler's transaction.

Inserting it first means a second delivery of the same event waits on the first one's
unique entry and then finds it there (DESIGN.md, "inbox races").
"""

from __future__ import annotations

import uuid

from django.db import connections

from . import sql


def record(using: str, group: str, event_id: uuid.UUID) -> bool:
    """Insert the inbox row; False if the group already handled this event."""
    connection = connections[using]
    vendor = sql.vendor(using)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {sql.table(connection, 'InboxRecord')} "
            "(group_name, event_id, handled_at) "
            f"VALUES (%s, %s, {sql.now(vendor)}) ON CONFLICT (group_name, event_id) DO NOTHING",
            [group, sql.uuid_value(vendor, event_id)],
        )
        return bool(cursor.rowcount)
