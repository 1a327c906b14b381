"""The SQL that differs between PostgreSQL and SQLite: one class per database.

Every due time and lease is computed by the database clock, never the worker's
(docs/internals.md, "One class per database"). Hot paths use raw SQL through Django's
connection; table names come from the models and are quoted by the backend, never from
input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Any, ClassVar

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from ..exceptions import EventsConfigurationError

SUPPORTED_VENDORS = ("postgresql", "sqlite")


def vendor(using: str) -> str:
    return vendor_of(connections[using])


def vendor_of(connection: BaseDatabaseWrapper) -> str:
    name: str = connection.vendor
    if name not in SUPPORTED_VENDORS:
        raise EventsConfigurationError(
            f"django-events supports PostgreSQL and SQLite; database {connection.alias!r} "
            f"is {name}."
        )
    return name


class Dialect:
    """The SQL that differs between the databases the engine supports, as Django's
    ``connection.ops`` holds what differs between backends: one instance per vendor,
    chosen once per alias by ``dialect(using)`` (docs/internals.md, "One class per
    database"), so engine code asks it instead of branching on the vendor."""

    vendor: ClassVar[str]
    skip_locked: ClassVar[str] = ""
    """Appended to a claim's row selection: other workers' claims pass over locked rows."""
    for_update: ClassVar[str] = ""
    """Appended to a selection that must lock its rows until the transaction ends."""
    backend_pid: ClassVar[str] = "NULL"
    """The claiming connection's id, by which a dead claimer is noticed at once."""
    notifies: ClassVar[bool] = False
    """Whether a statement can wake listeners (``pg_notify``)."""
    one_writer: ClassVar[bool] = False
    """The database lets one transaction write at a time, so writers need no lock against
    each other (retention's purge lock, the dead-letter counters' locks): a strategy,
    not a spelling."""

    def now(self) -> str:
        """Database time; every due time and lease is the database's, never the worker's."""
        raise NotImplementedError

    def now_plus(self) -> str:
        """Database time plus the seconds given as the next parameter (see ``seconds``)."""
        raise NotImplementedError

    def seconds(self, value: float) -> Any:
        """``value`` seconds as the parameter ``now_plus`` takes."""
        raise NotImplementedError

    def age_seconds(self, column: str) -> str:
        """Seconds between ``column`` and the database's now."""
        raise NotImplementedError

    def as_text(self, column: str) -> str:
        """A timestamp ``column`` as ISO 8601 text, which no driver converts: a value it
        could not convert (written by raw SQL) then fails its own row, not the fetch."""
        raise NotImplementedError

    def uuid_value(self, value: Any) -> Any:
        """A UUID parameter as the ORM stores it."""
        return value

    def in_values(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the condition and its parameters."""
        return f"{column} IN ({in_list(len(values))})", list(values)

    def in_query(self, column: str, query: str) -> str:
        """``column`` is one of the rows ``query`` selects."""
        return f"{column} IN ({query})"

    def in_pairs(self, columns: str, pairs: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
        """The two ``columns`` (``"(a, b)"``) are one of ``pairs``."""
        values = ", ".join(["(%s, %s)"] * len(pairs))
        return f"{columns} IN (VALUES {values})", [v for pair in pairs for v in pair]

    def bounded_transaction(self, seconds: float) -> tuple[str, list[Any]]:
        """Expressions that make the server itself cancel, after ``seconds``, each later
        statement of the current transaction and any wait for a lock (the one evaluating
        them included): a client that gives up must not leave a statement running, holding
        its locks (docs/internals.md, "The relay's frontier"). Nothing on SQLite, whose
        statements run in the client's process. Run it inside ``bounded_atomic``, which
        puts the settings back when the transaction is the caller's."""
        return "NULL", []

    def bounds(self) -> str:
        """The settings ``bounded_transaction`` changes, as they are now: ``""`` if none."""
        return ""

    def set_bounds(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """Expressions that set, for the transaction, the settings ``bounds`` read."""
        return "NULL", []

    def snapshot_bounds(self) -> str:
        """Two columns: the statement's snapshot ``xmin`` (every older transaction has
        ended) and ``xmax`` (every transaction from it on had not started)."""
        raise NotImplementedError

    def timed_out(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the server cancelling what ``bounded_transaction`` bounds."""
        return False


class PostgreSQL(Dialect):
    vendor = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    backend_pid = "pg_backend_pid()"
    notifies = True

    def now(self) -> str:
        return "statement_timestamp()"  # per statement, so leases move in long transactions

    def now_plus(self) -> str:
        return "(statement_timestamp() + make_interval(secs => %s))"

    def seconds(self, value: float) -> Any:
        return float(value)

    def age_seconds(self, column: str) -> str:
        return f"extract(epoch from (statement_timestamp() - {column}))"

    def as_text(self, column: str) -> str:
        # Through JSON, whose times are ISO 8601 whatever the session's DateStyle.
        return f"to_json({column}) #>> ARRAY[]::text[]"

    def in_values(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s)", [list(values)]

    def in_query(self, column: str, query: str) -> str:
        # ARRAY(...) runs the query once; each row is then found by its index.
        return f"{column} = ANY(ARRAY({query}))"

    def bounded_transaction(self, seconds: float) -> tuple[str, list[Any]]:
        # lock_timeout applies from here on, to this statement's own lock wait too;
        # statement_timeout from the next statement. Both end with the transaction, the
        # outermost one: a savepoint's release keeps them (see ``bounded_atomic``).
        value = f"{max(1, round(seconds * 1000))}ms"
        return self.set_bounds([value, value])

    def bounds(self) -> str:
        return "current_setting('lock_timeout'), current_setting('statement_timeout')"

    def set_bounds(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return (
            "set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
            list(values),
        )

    def snapshot_bounds(self) -> str:
        return (
            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
            "pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        )

    def timed_out(self, exc: BaseException) -> bool:
        # query_canceled (statement_timeout, or a cancel request) and lock_not_available.
        return getattr(exc.__cause__, "sqlstate", None) in ("57014", "55P03")

    def in_pairs(self, columns: str, pairs: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
        return (
            f"{columns} IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            [[a for a, _ in pairs], [b for _, b in pairs]],
        )


class SQLite(Dialect):
    vendor = "sqlite"
    one_writer = True

    def now(self) -> str:
        return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"

    def now_plus(self) -> str:
        return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)"

    def seconds(self, value: float) -> Any:
        return f"{float(value):+.3f} seconds"

    def age_seconds(self, column: str) -> str:
        return f"((julianday('now') - julianday({column})) * 86400.0)"

    def as_text(self, column: str) -> str:
        return f"CAST({column} AS TEXT)"

    def uuid_value(self, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value  # a string is already in the stored form
        return value.hex  # 32 hex digits, as the ORM stores a UUIDField


DIALECTS: dict[str, Dialect] = {"postgresql": PostgreSQL(), "sqlite": SQLite()}


def dialect(using: str) -> Dialect:
    """The dialect of database ``using``; ``EventsConfigurationError`` if unsupported."""
    return DIALECTS[vendor(using)]


@contextlib.contextmanager
def bounded_atomic(using: str) -> Iterator[None]:
    """``transaction.atomic(using)`` around a section that ``bounded_transaction`` bounds.

    A local setting lasts until the outermost transaction ends, not a savepoint: inside
    the caller's transaction (an ``atomic`` block around the relay, a test's), the bound
    would cancel the caller's later statements. There the settings are read before the
    section and set back when it ends; a section that fails is rolled back to its
    savepoint, which undoes them anyway. A transaction of the section's own ends them
    with it, at no extra statement (docs/internals.md, "The relay's frontier")."""
    connection = connections[using]
    bounds = dialect(using).bounds()
    previous = None
    if bounds and (connection.in_atomic_block or not connection.get_autocommit()):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {bounds}")
            previous = cursor.fetchone()
    with transaction.atomic(using=using):
        yield
        if previous is not None:
            restore, params = dialect(using).set_bounds(previous)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {restore}", params)


INDEX_SCANS_ONLY = {"enable_seqscan": "off", "enable_bitmapscan": "off", "jit": "off"}
"""The settings of ``index_scans_only``. No JIT: a sequential scan left with no index to
replace it is costed at 10^10 when disabled, far above JIT's thresholds, and compiling
such a plan took 0.75 s in H1 (docs/internals.md, "The log transport", status)."""


@contextlib.contextmanager
def index_scans_only(using: str) -> Iterator[None]:
    """PostgreSQL: the statements inside plan index scans only, as the log transport's
    claim function does, in a transaction of their own or the caller's (then its
    settings are set back at the end): a bound taken from another row (a cursor's) is
    estimated at a third of the table, and a sequential scan of the whole log is chosen
    (docs/internals.md, "The log transport", status)."""
    connection = connections[using]
    names = list(INDEX_SCANS_ONLY)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(
            "SELECT " + ", ".join("current_setting(%s), set_config(%s, %s, true)" for _ in names),
            [value for name in names for value in (name, name, INDEX_SCANS_ONLY[name])],
        )
        previous = cursor.fetchone()[::2]
        yield
        cursor.execute(
            "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in names),
            [value for pair in zip(names, previous, strict=True) for value in pair],
        )


class NotUTF8(bytes):
    """A stored text value whose bytes are not UTF-8: SQLite keeps whatever raw SQL wrote
    into a text column, and Python's driver then fails the fetch of every row read with
    it. Read as this instead (``lenient_text``), it fails its own event alone."""


def not_utf8(fields: Iterable[tuple[str, Any]]) -> str | None:
    """``"a, b are not UTF-8"`` for the ``(name, value)`` pairs read as ``NotUTF8``, or
    None: the reason an event's dead letter gives."""
    names = [name for name, value in fields if isinstance(value, NotUTF8)]
    if not names:
        return None
    return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not UTF-8"


def _text_or_bytes(value: bytes) -> str | NotUTF8:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return NotUTF8(value)


@contextlib.contextmanager
def lenient_text(using: str) -> Iterator[None]:
    """SQLite: text read inside comes back as ``str``, or as ``NotUTF8`` where its bytes
    are not UTF-8, rather than failing the fetch of the whole batch (and, a claim rolled
    back, every claim after it): a hostile row is one dead letter, never a stalled group
    (docs/internals.md, "The log transport on SQLite", hostile rows). PostgreSQL's text
    is UTF-8 by its encoding's checks: nothing to do there."""
    connection = connections[using]
    if connection.vendor != "sqlite":
        yield
        return
    connection.ensure_connection()
    raw = connection.connection
    previous = raw.text_factory
    raw.text_factory = _text_or_bytes
    try:
        yield
    finally:
        raw.text_factory = previous


RELAXED_COMMIT = "set_config('synchronous_commit', 'off', true)"
"""Evaluated inside a PostgreSQL statement: its transaction commits without waiting for the
disk. Used only for the engine's own bookkeeping (relaying, claiming), never for a handler's
or publisher's transaction. A server crash can lose the last such commits, and losing one
is harmless: the outbox rows or deliveries it moved come back and are moved again, and any
later synchronous commit (a handler's) flushes the write-ahead log past it first."""


@cache
def _table(model_label: str, quote: Any) -> str:
    from django.apps import apps

    model = apps.get_model("django_events", model_label)
    return str(quote(model._meta.db_table))


def table(connection: BaseDatabaseWrapper, model_label: str) -> str:
    """The quoted table name of a django-events model."""
    return _table(model_label, connection.ops.quote_name)


def in_list(count: int) -> str:
    return ", ".join(["%s"] * count)


def datetime_value(connection: BaseDatabaseWrapper, value: Any) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


NEVER_BY_COUNT = 2**31 - 1
"""psycopg's ``prepare_threshold`` on a connection Django left at None: no statement is
prepared for having run often, only those the engine asks for (``cursor``)."""


def cursor(connection: BaseDatabaseWrapper, *, prepared: bool = False) -> Any:
    """``connection.cursor()``, or for a statement the engine runs on every event with the
    same text (``prepared``), a cursor whose statements PostgreSQL parses and plans once
    per connection: planning cost four times what running them did (docs/internals.md,
    "Prepared statements"). Off with ``PREPARED_STATEMENTS``, on another database, or with
    psycopg 2, and while Django logs queries; Django's wrapper stays around it, so
    ``execute_wrappers`` see these statements as any other."""
    if not prepared or connection.queries_logged or not _prepares(connection):
        # Logged queries (DEBUG, assertNumQueries) keep Django's cursor: its log shows a
        # statement's values only for statements bound on the client.
        return connection.cursor()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw = connection.connection
    if raw.prepare_threshold is None:
        if "prepare_threshold" in connection.settings_dict.get("OPTIONS", {}):
            return connection.cursor()  # set to None on purpose: a pooler in front
        # Django's default, None, turns off psycopg's prepared statements altogether;
        # a threshold never reached prepares only what asks for it (these statements).
        raw.prepare_threshold = NEVER_BY_COUNT
    return connection.make_cursor(_preparing_cursor()(raw))


def binds_on_server(cursor: Any) -> bool:
    """Whether ``cursor`` (from ``cursor()``) binds its parameters on the server, where
    ``executemany`` sends every row in one pipelined round trip; Django's client-side
    cursor quotes each row into the statement's text in Python instead."""
    preparing = _preparing_cursor()
    return preparing is not None and isinstance(cursor.cursor, preparing)


def _prepares(connection: BaseDatabaseWrapper) -> bool:
    from ..conf import get_settings

    return (
        connection.vendor == "postgresql"
        and get_settings().prepared_statements
        and _preparing_cursor() is not None
    )


@cache
def _preparing_cursor() -> Any:
    """Django's server-binding cursor for psycopg 3, preparing every statement it runs;
    None with psycopg 2."""
    from django.db.backends.postgresql import base

    binding = getattr(base, "ServerBindingCursor", None)
    if binding is None:
        return None

    class PreparingCursor(binding):  # type: ignore[misc, valid-type]
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs.setdefault("prepare", True)
            return super().execute(query, params, **kwargs)

    return PreparingCursor
