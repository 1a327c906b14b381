"""Open dead letters counted per (group, fingerprint) by database triggers.

The failure groups, the dead-letter filters and the queue status read these counts
instead of grouping the dead-letter table on every page view, so they cost the same at
a million open dead letters as at a thousand (docs/admin.md, "Large tables").

Triggers, not application code, keep the counts: every writer is covered (the worker,
the relay's quarantine, triage, retention, ``bulk_create``, a user's own ``update()``)
without any of them knowing. On PostgreSQL the triggers run once per statement over its
transition tables and touch the counters in (group, fingerprint) order, so a statement
that writes many dead letters costs one aggregate, and two statements lock counters in
the same order. On SQLite (one writer at a time) they run per row.

What a counter holds: ``open_count`` is exact. ``first_seen`` is the earliest first
failure among the dead letters added since the counter was last at zero, ``last_seen``
the latest failure ever added, ``latest_id`` the newest dead letter added (it may have
been resolved since): an example, not a promise. :func:`recount` rebuilds them all from
the dead-letter table (``dead_letters recount``) should they ever drift, e.g. after rows
were written with triggers disabled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connections, transaction
from django.db.models import Max, Min, QuerySet, Sum

from .engine import sql

COUNTS = "django_events_failure_count"
DEAD = "django_events_deadletter"
_COLUMNS = (
    '"group", fingerprint, open_count, error_class, handler, first_seen, last_seen, latest_id'
)

# One upsert for every change, applied to ``src`` (rows of group, fingerprint, n = +1 for
# a dead letter that became open, -1 for one that stopped being open, and its details).
_PG_APPLY = f"""
INSERT INTO {COUNTS} AS c ({_COLUMNS})
SELECT "group", fingerprint, SUM(n), COALESCE(MAX(error_class), ''), COALESCE(MAX(handler), ''),
       COALESCE(MIN(first_failed_at), now()), COALESCE(MAX(last_failed_at), now()),
       COALESCE(MAX(id), 0)
FROM ({{src}}) AS d
GROUP BY "group", fingerprint HAVING SUM(n) <> 0
ORDER BY "group", fingerprint
ON CONFLICT ("group", fingerprint) DO UPDATE SET
  open_count = c.open_count + EXCLUDED.open_count,
  error_class = CASE WHEN EXCLUDED.open_count > 0 THEN EXCLUDED.error_class ELSE c.error_class END,
  handler = CASE WHEN EXCLUDED.open_count > 0 THEN EXCLUDED.handler ELSE c.handler END,
  first_seen = CASE WHEN EXCLUDED.open_count <= 0 THEN c.first_seen
                    WHEN c.open_count <= 0 THEN EXCLUDED.first_seen
                    ELSE LEAST(c.first_seen, EXCLUDED.first_seen) END,
  last_seen = CASE WHEN EXCLUDED.open_count > 0 THEN GREATEST(c.last_seen, EXCLUDED.last_seen)
                   ELSE c.last_seen END,
  latest_id = CASE WHEN EXCLUDED.open_count > 0 THEN GREATEST(c.latest_id, EXCLUDED.latest_id)
                   ELSE c.latest_id END;
DELETE FROM {COUNTS} WHERE open_count <= 0;
"""
_ADDED = '"group", fingerprint, 1 AS n, error_class, handler, first_failed_at, last_failed_at, id'
_REMOVED = (
    '"group", fingerprint, -1 AS n, NULL::varchar AS error_class, NULL::varchar AS handler, '
    "NULL::timestamptz AS first_failed_at, NULL::timestamptz AS last_failed_at, "
    "NULL::bigint AS id"
)
_NEW = f"SELECT {_ADDED} FROM new_rows WHERE state = 'open'"
_OLD = f"SELECT {_REMOVED} FROM old_rows WHERE state = 'open'"

PG_INSTALL = f"""
CREATE OR REPLACE FUNCTION django_events_failure_count() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_PG_APPLY.format(src=_NEW)}
  ELSIF TG_OP = 'DELETE' THEN
    {_PG_APPLY.format(src=_OLD)}
  ELSE
    {_PG_APPLY.format(src=_NEW + " UNION ALL " + _OLD)}
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER django_events_fc_insert AFTER INSERT ON {DEAD}
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION django_events_failure_count();
CREATE TRIGGER django_events_fc_update AFTER UPDATE ON {DEAD}
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION django_events_failure_count();
CREATE TRIGGER django_events_fc_delete AFTER DELETE ON {DEAD}
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION django_events_failure_count();
"""
PG_UNINSTALL = f"""
DROP TRIGGER IF EXISTS django_events_fc_insert ON {DEAD};
DROP TRIGGER IF EXISTS django_events_fc_update ON {DEAD};
DROP TRIGGER IF EXISTS django_events_fc_delete ON {DEAD};
DROP FUNCTION IF EXISTS django_events_failure_count();
"""


def _sqlite_add(row: str) -> str:
    return f"""
  INSERT INTO {COUNTS} ({_COLUMNS})
  SELECT {row}."group", {row}.fingerprint, 1, {row}.error_class, {row}.handler,
         {row}.first_failed_at, {row}.last_failed_at, {row}.id
  WHERE {row}.state = 'open'
  ON CONFLICT ("group", fingerprint) DO UPDATE SET
    open_count = open_count + 1,
    error_class = excluded.error_class,
    handler = excluded.handler,
    first_seen = CASE WHEN open_count <= 0 THEN excluded.first_seen
                      ELSE min(first_seen, excluded.first_seen) END,
    last_seen = max(last_seen, excluded.last_seen),
    latest_id = max(latest_id, excluded.latest_id);"""


def _sqlite_remove(row: str) -> str:
    return f"""
  UPDATE {COUNTS} SET open_count = open_count - 1
  WHERE {row}.state = 'open' AND "group" = {row}."group" AND fingerprint = {row}.fingerprint;
  DELETE FROM {COUNTS} WHERE open_count <= 0;"""


SQLITE_INSTALL = [
    f"""CREATE TRIGGER IF NOT EXISTS django_events_fc_insert AFTER INSERT ON {DEAD}
FOR EACH ROW WHEN NEW.state = 'open' BEGIN {_sqlite_add("NEW")} END""",
    f"""CREATE TRIGGER IF NOT EXISTS django_events_fc_delete AFTER DELETE ON {DEAD}
FOR EACH ROW WHEN OLD.state = 'open' BEGIN {_sqlite_remove("OLD")} END""",
    f"""CREATE TRIGGER IF NOT EXISTS django_events_fc_update
AFTER UPDATE OF state, fingerprint, "group" ON {DEAD}
FOR EACH ROW WHEN OLD.state IS NOT NEW.state OR OLD.fingerprint IS NOT NEW.fingerprint
  OR OLD."group" IS NOT NEW."group"
BEGIN {_sqlite_remove("OLD")} {_sqlite_add("NEW")} END""",
]
SQLITE_UNINSTALL = [
    f"DROP TRIGGER IF EXISTS django_events_fc_{name}" for name in ("insert", "update", "delete")
]

_RECOUNT = f"""
INSERT INTO {COUNTS} ({_COLUMNS})
SELECT "group", fingerprint, COUNT(*), MAX(error_class), MAX(handler), MIN(first_failed_at),
       MAX(last_failed_at), MAX(id)
FROM {DEAD} WHERE state = 'open' GROUP BY "group", fingerprint
"""


def _statements(connection: Any, install: bool) -> list[str]:
    # The triggers are this module's own SQL, one body per database: which to run is a
    # choice of strategy, not a spelling the dialect holds. A migration refuses no
    # database (sql.dialect() does, with a clear message, wherever events are handled).
    dialect = sql.DIALECTS.get(connection.vendor)
    if isinstance(dialect, sql.PostgreSQL):
        return [PG_INSTALL if install else PG_UNINSTALL]
    if isinstance(dialect, sql.SQLite):
        return SQLITE_INSTALL if install else SQLITE_UNINSTALL
    return []


def install(schema_editor: Any) -> None:
    """Create the triggers and count what is already open (a migration's forward step)."""
    for statement in _statements(schema_editor.connection, install=True):
        schema_editor.execute(statement, params=None)
    schema_editor.execute(f"DELETE FROM {COUNTS}", params=None)
    schema_editor.execute(_RECOUNT, params=None)


def uninstall(schema_editor: Any) -> None:
    for statement in _statements(schema_editor.connection, install=False):
        schema_editor.execute(statement, params=None)


def recount(using: str = "default") -> int:
    """Rebuild every counter from the dead-letter table; returns the open total.

    Takes the counters' table lock on PostgreSQL so that no dead letter is counted twice
    or missed while it runs; writers of dead letters wait for it (one aggregate).
    """
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if not sql.dialect(using).one_writer:
            cursor.execute(f"LOCK TABLE {DEAD} IN SHARE MODE")
        cursor.execute(f"DELETE FROM {COUNTS}")
        cursor.execute(_RECOUNT)
        cursor.execute(f"SELECT COALESCE(SUM(open_count), 0) FROM {COUNTS}")
        return int(cursor.fetchone()[0])


def lock(slots: Iterable[tuple[str, str]], using: str) -> None:
    """Lock the counters of ``slots`` (group, fingerprint) in one order, inside the
    caller's transaction, before it resolves dead letters of several failure groups.

    Otherwise the triggers would lock them in the order the rows are written, and two
    such transactions could each hold a counter the other waits for (PostgreSQL would
    then abort one). SQLite has one writer at a time: nothing to do.
    """
    connection = connections[using]
    wanted = sorted(set(slots))
    if sql.dialect(using).one_writer or len(wanted) < 2:
        return
    pairs = ", ".join(["(%s, %s)"] * len(wanted))
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT 1 FROM {COUNTS} WHERE ("group", fingerprint) IN ({pairs}) '
            'ORDER BY "group", fingerprint FOR UPDATE',
            [value for slot in wanted for value in slot],
        )


def failure_groups(using: str = "default") -> QuerySet[Any]:
    """Open failure groups, largest first: one small query over the counters."""
    from .models import FailureCount

    return (
        FailureCount.objects.using(using)
        .values("fingerprint")
        .annotate(
            count=Sum("open_count"),
            error_class=Max("error_class"),
            handler=Max("handler"),
            first_seen=Min("first_seen"),
            last_seen=Max("last_seen"),
            example_id=Max("latest_id"),
        )
        .order_by("-count", "fingerprint")
    )


def open_by_group(using: str = "default") -> dict[str, int]:
    """Open dead letters per consumer group."""
    from .models import FailureCount

    rows = (
        FailureCount.objects.using(using)
        .values("group")
        .annotate(n=Sum("open_count"))
        .values_list("group", "n")
    )
    return {group: int(n) for group, n in rows}
