"""Fewer index writes per event (docs/performance.md, "Where the writes and the dead tuples
come from"; the upgrade procedure is docs/internals.md, "Upgrading").

- The log: ``db_index`` on ``type`` and ``key`` made two indexes each on PostgreSQL (the
  plain one and a ``varchar_pattern_ops`` copy for ``LIKE``, which no query uses); they
  become one index each, the key's only for keyed events.
- The deliveries: the partial "held" index named ``claimed_until`` and ``lease_token``,
  which the claim sets, so no claim could be a HOT update. It goes; the deliveries table
  keeps room on its pages for the claimed version (``fillfactor``, PostgreSQL).

Safe with workers of the previous release running: no query needs these indexes to be
correct. On PostgreSQL the indexes are built and dropped ``CONCURRENTLY`` (so the
migration is not atomic), which takes no lock that stops writers or readers; elsewhere
(SQLite) the schema editor does it the ordinary way.
"""

from typing import Any

from django.db import migrations, models
from django.db.migrations.state import ProjectState

LOG = "django_events_event"
DELIVERY = "django_events_delivery"
FILLFACTOR = 50

NEW_INDEXES = {
    "django_events_event_type": f"CREATE INDEX CONCURRENTLY django_events_event_type ON {LOG} (type)",
    "django_events_event_key": (
        f"CREATE INDEX CONCURRENTLY django_events_event_key ON {LOG} (key) WHERE key IS NOT NULL"
    ),
}
HELD = "django_events_dlv_held"
HELD_SQL = (
    f"CREATE INDEX CONCURRENTLY {HELD} ON {DELIVERY} (claimed_until) WHERE lease_token IS NOT NULL"
)

OPERATIONS = [
    migrations.AlterField(
        model_name="eventrecord",
        name="type",
        field=models.CharField(max_length=200),
    ),
    migrations.AlterField(
        model_name="eventrecord",
        name="key",
        field=models.CharField(blank=True, max_length=200, null=True),
    ),
    migrations.AddIndex(
        model_name="eventrecord",
        index=models.Index(fields=["type"], name="django_events_event_type"),
    ),
    migrations.AddIndex(
        model_name="eventrecord",
        index=models.Index(
            condition=models.Q(("key__isnull", False)),
            fields=["key"],
            name="django_events_event_key",
        ),
    ),
    migrations.RemoveIndex(
        model_name="delivery",
        name=HELD,
    ),
]


def _execute(schema_editor: Any, statement: str) -> None:
    schema_editor.execute(statement, params=None)


def _indexes(schema_editor: Any, table: str) -> dict[str, dict[str, Any]]:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        found: dict[str, dict[str, Any]] = connection.introspection.get_constraints(cursor, table)
        return found


def _create(schema_editor: Any, name: str, statement: str) -> None:
    """``CREATE INDEX CONCURRENTLY``, again if an earlier attempt left it invalid."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
            [name],
        )
        row = cursor.fetchone()
    if row is not None and row[0]:
        return
    if row is not None:  # an interrupted CONCURRENTLY build leaves an invalid index behind
        _execute(schema_editor, f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    _execute(schema_editor, statement)


def _column_indexes(schema_editor: Any, table: str, column: str, keep: set[str]) -> list[str]:
    """Django's ``db_index`` indexes on ``column`` (and their ``_like`` twins): their names
    are hashed, so they are found by what they index, not by name."""
    return sorted(
        name
        for name, info in _indexes(schema_editor, table).items()
        if info["index"]
        and not info["unique"]
        and not info["primary_key"]
        and info["columns"] == [column]
        and name.startswith(f"{table}_{column}_")  # Django's names: table_column_hash[_like]
        and name not in keep
    )


class PostgreSQLConcurrently(migrations.SeparateDatabaseAndState):
    """The operations as they are, except on PostgreSQL: indexes built and dropped
    ``CONCURRENTLY`` (writers keep writing), and the deliveries' fillfactor."""

    def __init__(self, operations: list[Any]) -> None:
        super().__init__(database_operations=operations, state_operations=operations)

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return self.__class__.__name__, [self.state_operations], {}

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            self._forwards_by_schema_editor(app_label, schema_editor, from_state, to_state)
            return
        # New indexes first, so the log is never without them while old ones go.
        for name, statement in NEW_INDEXES.items():
            _create(schema_editor, name, statement)
        for column in ("type", "key"):
            for name in _column_indexes(schema_editor, LOG, column, set(NEW_INDEXES)):
                _execute(schema_editor, f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        _execute(schema_editor, f"DROP INDEX CONCURRENTLY IF EXISTS {HELD}")
        # Room on each page for the claimed version of its rows: the claim's update stays
        # on the page (HOT). New pages only; existing ones fill as rows come and go.
        _execute(schema_editor, f"ALTER TABLE {DELIVERY} SET (fillfactor = {FILLFACTOR})")

    def _forwards_by_schema_editor(
        self, app_label: str, schema_editor: Any, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        """Index by index, as the PostgreSQL path does: ``AlterField`` would remake the
        whole log table on SQLite, to drop two indexes."""
        log = to_state.apps.get_model(app_label, "eventrecord")
        for index in log._meta.indexes:
            schema_editor.add_index(log, index)
        for column in ("type", "key"):
            for name in _column_indexes(schema_editor, LOG, column, set(NEW_INDEXES)):
                schema_editor.execute(schema_editor._delete_index_sql(log, name))
        delivery = from_state.apps.get_model(app_label, "delivery")
        held = next(index for index in delivery._meta.indexes if index.name == HELD)
        schema_editor.remove_index(delivery, held)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
            return
        _execute(schema_editor, f"ALTER TABLE {DELIVERY} RESET (fillfactor)")
        _create(schema_editor, HELD, HELD_SQL)
        # The indexes ``db_index`` makes, under the names Django gives them.
        model = to_state.apps.get_model(app_label, "eventrecord")
        for column in ("type", "key"):
            field = model._meta.get_field(column)
            for statement in schema_editor._field_indexes_sql(model, field):
                _create(
                    schema_editor,
                    str(statement.parts["name"]).strip('"'),
                    str(statement).replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1),
                )
        for name in NEW_INDEXES:
            _execute(schema_editor, f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    # CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("django_events", "0012_moves"),
    ]

    operations = [PostgreSQLConcurrently(OPERATIONS)]
