"""The log's ``txid`` index holds only the rows the log transport's cursors read
(docs/internals.md, "Log rows outside the cursors"): the rows a relay logs for delivery
rows or a broker carry ``txid`` NULL, and no longer cost an index entry each.

The partial index is built ``CONCURRENTLY`` beside the old one, which is then dropped
``CONCURRENTLY``: the migration is not atomic, and workers of the previous release may run
throughout (every query that reads the index compares ``txid`` with ``=`` or ``>=``, which
PostgreSQL proves non-null, so it uses the partial index as it used the full one).
Interrupted, it runs again from where it stopped. PostgreSQL only.
"""

from typing import Any

from django.db import migrations

LOG = "django_events_event"
OLD = "django_events_event_txid"
NEW = "django_events_event_txid_set"


def _valid(schema_editor: Any, index: str) -> bool | None:
    """Whether ``index`` is valid; None if it does not exist."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
            [index],
        )
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def _build(schema_editor: Any, index: str, where: str) -> None:
    """Build ``index`` unless a valid one exists; an interrupted build is dropped first."""
    valid = _valid(schema_editor, index)
    if valid:
        return
    if valid is False:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}", params=None)
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY {index} ON {LOG} (txid){where}", params=None)


def forwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    _build(schema_editor, NEW, " WHERE txid IS NOT NULL")
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {OLD}", params=None)


def backwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    _build(schema_editor, OLD, "")
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NEW}", params=None)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("django_events", "0016_own_events"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
