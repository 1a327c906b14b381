"""``publish()``: the event joins the caller's transaction as one outbox row.

The row is the guarantee: it commits or rolls back with the caller's own writes. On
PostgreSQL the same statement sends one NOTIFY per transaction (never one per row) so
an idle relay wakes at commit; if that wake-up is lost, the relay's poll finds the row.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.db import connections, transaction

from . import instrumentation, moving, signals
from .conf import get_settings
from .engine import sql
from .envelope import (
    Event,
    encode_data,
    encode_metadata,
    uuid7,
    validate_key,
    validate_metadata,
    validate_type,
    validate_version,
)
from .exceptions import EventsConfigurationError, InvalidEvent, PayloadTooLarge
from .transports.base import ENVELOPE_RESERVE
from .typed import TypedEvent, check_data
from .versions import publish_version

OUTBOX_CHANNEL = "django_events_outbox"


_DECODER = json.JSONDecoder()

_current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "django_events_current_event", default=None
)

_COLUMNS = (
    "event_id, type, version, key, data, metadata, occurred_at, source, "
    "correlation_id, causation_id, created_at"
)


@contextmanager
def handling(event: Event) -> Iterator[None]:
    """Mark ``event`` as the cause of whatever is published inside the block."""
    token = _current_event.set(event)
    try:
        yield
    finally:
        _current_event.reset(token)


def _notified_in_this_transaction(connection: Any) -> bool:
    """True after the first call in a transaction; the marker lives in its on_commit list."""
    if not connection.in_atomic_block:
        return False
    for entry in connection.run_on_commit:
        if entry[1] is _wake_local:
            return True
    connection.on_commit(_wake_local)
    return False


def _wake_local() -> None:
    from .engine.wakeup import local_wakeup

    local_wakeup.set()


PublishSpec = (
    tuple[str, Mapping[str, Any]]
    | tuple[str, Mapping[str, Any], str | None]
    | TypedEvent
    | tuple[TypedEvent, str | None]
)


def publish(
    type: str | TypedEvent,
    data: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
    version: int | None = None,
    using: str = "default",
    metadata: Mapping[str, str] | None = None,
    allow_old_version: bool = False,
) -> Event:
    """Record that ``type`` happened, inside the current transaction on ``using``.

    ``type`` is a type name with its ``data`` dict, or a typed event instance (which
    carries its own version). ``version`` defaults to the newest the type declares (1 if
    it declares none); an older one needs ``allow_old_version=True``.

    Returns the envelope written. Raises ``InvalidEvent`` (and writes nothing) for an
    invalid type, key, version or metadata, data JSON cannot hold, data that does not fit
    the type's declaration, data or metadata over its size limit, or anything some later
    stage could not store (a NUL, a lone surrogate, NaN, nesting over 64 levels: see
    ``django_events.validation``); the message names the path. Events published while a handler
    runs inherit its correlation id and take the handled event's id as causation id.
    """
    spec: PublishSpec
    if isinstance(type, TypedEvent):
        if data is not None or version is not None:
            raise InvalidEvent("A typed event carries its own data and version; pass neither.")
        spec = (type, key)
    else:
        spec = (type, data, key)  # type: ignore[assignment]  # None is refused below
    return publish_many(
        [spec],
        version=version,
        using=using,
        metadata=metadata,
        allow_old_version=allow_old_version,
    )[0]


def publish_many(
    events: Iterable[PublishSpec],
    *,
    version: int | None = None,
    using: str = "default",
    metadata: Mapping[str, str] | None = None,
    allow_old_version: bool = False,
) -> list[Event]:
    """Publish several events in one statement: ``[(type, data), (type, data, key), ...]``,
    typed instances, or ``(instance, key)`` pairs.

    All or nothing: every event is validated before anything is written, and all join the
    current transaction, in order. Much cheaper than a ``publish()`` per event in a loop.
    With OpenTelemetry on, the call is a producer span whose W3C trace context joins
    each event's metadata (docs/observability.md).
    """
    if not instrumentation.tracing_enabled():
        built = _publish_many(events, version, using, metadata, allow_old_version, None)
    else:
        with instrumentation.publishing() as span:
            built = _publish_many(events, version, using, metadata, allow_old_version, span)
            instrumentation.published_span(span, built)
    instrumentation.published(built)
    return built


def _publish_many(
    events: Iterable[PublishSpec],
    version: int | None,
    using: str,
    metadata: Mapping[str, str] | None,
    allow_old_version: bool,
    span: Any,
) -> list[Event]:
    conf = get_settings()
    if using not in conf.outbox_databases:
        raise EventsConfigurationError(
            f"publish(using={using!r}): {using!r} is not in DJANGO_EVENTS['OUTBOX_DATABASES'] "
            f"({', '.join(conf.outbox_databases)}), so no relay would read it."
        )
    if version is not None:
        version = validate_version(version)
    metadata = validate_metadata(metadata)
    metadata_text = encode_metadata(metadata, conf.max_metadata_bytes)
    trace = instrumentation.trace_context(span, metadata)
    if trace:  # not counted against MAX_METADATA_BYTES: the caller did not write it
        metadata = {**metadata, **trace}
        metadata_text = json.dumps(metadata, separators=(",", ":"))
    source = conf.source or conf.service
    cause = _current_event.get()
    room = _message_room(conf, len(metadata_text))
    max_bytes = conf.max_payload_bytes
    now = dt.datetime.now
    utc = dt.timezone.utc
    built: list[tuple[Event, str]] = []
    for spec in events:
        typed, event_type, data, key = _unpack(spec)
        event_type = validate_type(event_type)
        event_version = publish_version(
            event_type, typed.event_version if typed else version, allow_old_version
        )
        text = encode_data(typed.to_data() if typed else data, max_bytes)
        decoded = _DECODER.raw_decode(text)[0]  # what handlers receive; never the caller's
        if typed is None:
            check_data(event_type, event_version, decoded)
        if room is not None and (len(text) if text.isascii() else len(text.encode())) > room[0]:
            raise PayloadTooLarge(
                f"Event {event_type!r} does not fit in one message of the {room[1]} transport: "
                f"its data is {len(text.encode())} bytes encoded, and the transport's limit is "
                f"{room[2]} bytes including metadata and a {ENVELOPE_RESERVE}-byte envelope. "
                "Publish a reference (an id) instead of the whole object."
            )
        event_id = uuid7()
        event = Event(
            id=event_id,
            type=event_type,
            data=decoded,
            version=event_version,
            key=validate_key(key),
            occurred_at=now(utc),
            source=source,
            correlation_id=(cause.correlation_id or cause.id) if cause else event_id,
            causation_id=cause.id if cause else None,
            metadata=metadata,
        )
        built.append((event, text))
    if built:
        _insert(using, built, metadata_text, conf)
        if signals.event_published.receivers:
            for event, _ in built:
                signals.event_published.send(sender=publish, event=event, using=using)
    return [event for event, _ in built]


def _unpack(spec: Any) -> tuple[TypedEvent | None, str, Any, str | None]:
    if isinstance(spec, TypedEvent):
        return spec, spec.event_type, None, None
    if isinstance(spec, tuple) and spec and isinstance(spec[0], TypedEvent):
        if len(spec) != 2:
            raise InvalidEvent("Publish a typed event alone or as (instance, key).")
        return spec[0], spec[0].event_type, None, spec[1]
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise InvalidEvent(
            f"Cannot publish {spec!r}: expected (type, data), (type, data, key), a typed "
            "event or (typed event, key)."
        )
    return None, spec[0], spec[1], spec[2] if len(spec) == 3 else None


_room: tuple[Any, tuple[int, str, int] | None] = (None, None)


def _message_room(conf: Any, metadata_bytes: int) -> tuple[int, str, int] | None:
    """Bytes left for data in one message of the configured transport, if it has a limit.

    The transport is looked up once per settings object: it is built from them, and a
    change of settings makes a new one (``conf._reset``)."""
    global _room
    if _room[0] is not conf:
        from .transports import transports

        transport = transports["default"]
        limit = transport.max_message_bytes
        found = None if limit is None else (limit, type(transport).__name__, limit)
        _room = (conf, found)
    found = _room[1]
    if found is None:
        return None
    return found[0] - ENVELOPE_RESERVE - metadata_bytes, found[1], found[2]


_ROWS_PER_STATEMENT = 500


@functools.cache
def _insert_sql(table: str, dialect: sql.Dialect, rows: int) -> str:
    row = f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {dialect.now()})"
    return f"INSERT INTO {table} ({_COLUMNS}) VALUES {', '.join([row] * rows)}"


_LOG_COLUMNS = (
    "id, position, type, version, key, data, metadata, occurred_at, source, "
    "correlation_id, causation_id, recorded_at"
)
_straight: tuple[Any, dict[str, str | None]] = (None, {})


def _straight_to_log(conf: Any) -> dict[str, str | None]:
    """``{database: the channel that wakes its workers}`` for the databases whose events
    are written straight into the event log: those the configured transport reads its log
    in (the log transport, docs/internals.md "The log transport"). Looked up once per
    settings object, as ``_message_room`` is."""
    global _straight
    if _straight[0] is not conf:
        from .transports import transports

        transport = transports["default"]
        found = {
            alias: transport.wake_channel
            for alias in conf.outbox_databases
            if transport.reads_log and transport.joins_outbox_transaction(alias)
        }
        _straight = (conf, found)
    return _straight[1]


@functools.cache
def _log_insert_sql(table: str, sequence: str) -> str:
    """One log row (PostgreSQL). Positions come from the outbox's sequence, so rows an
    older release still writes to the outbox (and its relay moves) never take the same
    one. The sequence is named as a constant, resolved once per statement:
    pg_get_serial_sequence() in its place was looked up again for every row
    (docs/performance.md, "The log transport: what it costs")."""
    literal = sequence.replace("'", "''")
    return (
        f"INSERT INTO {table} ({_LOG_COLUMNS}) VALUES (%s, nextval('{literal}'::regclass), "
        "%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, statement_timestamp())"
    )


@functools.cache
def _log_document_insert_sql(table: str, sequence: str) -> str:
    """Several log rows from one JSON document (``_document``), as ``_log_insert_sql``
    writes one. Positions follow the document's order: PostgreSQL evaluates a volatile
    output column (nextval) after the ORDER BY's sort."""
    literal = sequence.replace("'", "''")
    rows = _from_document(f"nextval('{literal}'::regclass), ", "::jsonb")
    return f"INSERT INTO {table} ({_LOG_COLUMNS}) {rows}"


_position_sequences: dict[str, str] = {}


def _position_sequence(connection: Any) -> str:
    """The name of the outbox's position sequence in ``connection``'s database, looked up
    once per alias (a name does not change while the process runs)."""
    name = _position_sequences.get(connection.alias)
    if name is None:
        outbox = sql.table(connection, "OutboxMessage")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence(%s, 'position')", [outbox])
            name = _position_sequences[connection.alias] = cursor.fetchone()[0]
    return name


def _native_row(event: Event, data_text: str, metadata: str) -> list[Any]:
    """One event's values, in ``_COLUMNS``' order (the log's, ``position`` left out), as a
    driver that takes UUIDs and datetimes receives them."""
    return [
        event.id,
        event.type,
        event.version,
        event.key,
        data_text,
        metadata,
        event.occurred_at,
        event.source,
        event.correlation_id,
        event.causation_id,
    ]


def _text_row(
    connection: Any, dialect: sql.Dialect, event: Event, data_text: str, metadata: str
) -> list[Any]:
    """``_native_row`` for a driver that takes UUIDs and datetimes as text (SQLite)."""
    return [
        dialect.uuid_value(event.id),
        event.type,
        event.version,
        event.key,
        data_text,
        metadata,
        sql.datetime_value(connection, event.occurred_at),
        event.source,
        dialect.uuid_value(event.correlation_id),
        dialect.uuid_value(event.causation_id),
    ]


@functools.cache
def _document_insert_sql(table: str) -> str:
    """Several outbox rows from one JSON document (``_document``), PostgreSQL; positions
    in the document's order."""
    return f"INSERT INTO {table} ({_COLUMNS}) {_from_document('', '')}"


def _from_document(position: str, json_type: str) -> str:
    """SQL (PostgreSQL): the rows of a ``_document`` (the first parameter: the metadata
    every row shares; the second: the document), in its order and in the columns of
    ``_COLUMNS``, with ``position`` (an expression and a comma, or empty) after the id,
    and data and metadata cast to ``json_type`` (empty: text)."""
    return (
        f"SELECT (r->>0)::uuid, {position}r->>1, (r->>2)::int, r->>3, (r->>4){json_type}, "
        f"%s{json_type}, (r->>5)::timestamptz, r->>6, (r->>7)::uuid, (r->>8)::uuid, "
        "statement_timestamp() FROM json_array_elements(%s::json) WITH ORDINALITY AS a(r, n) "
        "ORDER BY n"
    )


def _document(events: list[tuple[Event, str]]) -> str:
    """The events' values as one JSON array of rows (``_native_row``'s order, metadata
    left out), for a statement that inserts them all from it: one parameter, encoded by
    the C encoder, where the driver's own array dumper escaped each text in Python."""
    return json.dumps(
        [
            [
                str(event.id),
                event.type,
                event.version,
                event.key,
                text,
                event.occurred_at.isoformat(),
                event.source,
                None if event.correlation_id is None else str(event.correlation_id),
                None if event.causation_id is None else str(event.causation_id),
            ]
            for event, text in events
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _insert(using: str, events: list[tuple[Event, str]], metadata: str, conf: Any) -> None:
    connection = connections[using]
    dialect = sql.dialect(using)
    notify = conf.publish_notify
    straight = _straight_to_log(conf)
    if using in straight and not moving.leaving_log(using):
        _insert_into_log(connection, events, metadata, notify and straight[using])
        return
    table = sql.table(connection, "OutboxMessage")
    if isinstance(dialect, sql.PostgreSQL):
        channel = OUTBOX_CHANNEL if notify else None
        one_row, document = _insert_sql(table, dialect, 1), _document_insert_sql(table)
        _write_rows(connection, one_row, document, events, metadata, channel)
        return
    # SQLite: VALUES lists, values as text; Python's sqlite3 binds them in C and caches
    # statements by their text.
    for start in range(0, len(events), _ROWS_PER_STATEMENT):
        chunk = events[start : start + _ROWS_PER_STATEMENT]
        params: list[Any] = []
        for event, data_text in chunk:
            params += _text_row(connection, dialect, event, data_text, metadata)
        with connection.cursor() as cursor:
            cursor.execute(_insert_sql(table, dialect, len(chunk)), params)


def _write_rows(
    connection: Any,
    one_row: str,
    document: str,
    events: list[tuple[Event, str]],
    metadata: str,
    channel: str | None,
) -> None:
    """Insert ``events`` on PostgreSQL, the outbox's rows or the log's (docs/internals.md,
    "Publishing many events"). ``one_row`` takes one event's ``_native_row`` and is
    prepared once per connection; several events run it through ``executemany``, which
    psycopg pipelines in one round trip, each row bound on the server. Where statements
    are not prepared (Django logging queries, ``PREPARED_STATEMENTS`` off, a pooler's
    ``prepare_threshold``), Django's client-side cursor would quote every row in Python:
    several events go as one JSON ``document`` instead. The transaction's first publish
    wakes the relays or workers listening on ``channel`` at commit."""
    wake = None if channel is None or _notified_in_this_transaction(connection) else channel
    with sql.cursor(connection, prepared=True) as cursor:
        if len(events) > 1 and sql.binds_on_server(cursor):
            # All or nothing in autocommit too, as the one statement was.
            with transaction.atomic(using=connection.alias, savepoint=False):
                cursor.executemany(one_row, [_native_row(*event, metadata) for event in events])
                if wake:
                    cursor.execute("SELECT pg_notify(%s, '')", [wake])
            return
        if len(events) > 1:
            insert, params = document, [metadata, _document(events)]
        else:
            insert, params = one_row, _native_row(*events[0], metadata)
        if wake:
            insert = f"WITH i AS ({insert} RETURNING 1) SELECT pg_notify(%s, '') FROM i LIMIT 1"
            params.append(wake)
        cursor.execute(insert, params)


def _insert_into_log(
    connection: Any, events: list[tuple[Event, str]], metadata: str, channel: str | bool | None
) -> None:
    """The log transport's publish: the log row itself, in the caller's transaction, so
    nothing is written twice and no relay moves it; the workers are woken at commit.
    Several events go as the outbox's do (``_write_rows``)."""
    table = sql.table(connection, "EventRecord")
    dialect = sql.dialect(connection.alias)
    if not isinstance(dialect, sql.PostgreSQL):
        _insert_into_log_one_writer(connection, table, dialect, events, metadata)
        return
    sequence = _position_sequence(connection)
    _write_rows(
        connection,
        _log_insert_sql(table, sequence),
        _log_document_insert_sql(table, sequence),
        events,
        metadata or "{}",
        channel if isinstance(channel, str) else None,
    )


def _insert_into_log_one_writer(
    connection: Any,
    table: str,
    dialect: sql.Dialect,
    events: list[tuple[Event, str]],
    metadata: str,
) -> None:
    """On SQLite: positions drawn first, under the write lock the drawing takes, so they
    commit in order (docs/internals.md, "The log transport on SQLite"), and once per
    transaction where it can (``log.take_positions``). Drawn and inserted in one
    transaction, the caller's if one is open: in autocommit the lock would end with the
    draw, and a later writer could commit higher positions before these rows."""
    from .transports import log

    with transaction.atomic(using=connection.alias, savepoint=False):
        position = log.take_positions(connection, len(events))
        for start in range(0, len(events), _ROWS_PER_STATEMENT):
            chunk = events[start : start + _ROWS_PER_STATEMENT]
            params: list[Any] = []
            for event, data_text in chunk:
                row = _text_row(connection, dialect, event, data_text, metadata or "{}")
                params += [row[0], position, *row[1:]]
                position += 1
            with connection.cursor() as cursor:
                cursor.execute(_one_writer_log_insert_sql(table, dialect, len(chunk)), params)


@functools.cache
def _one_writer_log_insert_sql(table: str, dialect: sql.Dialect, rows: int) -> str:
    row = f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {dialect.now()})"
    return f"INSERT INTO {table} ({_LOG_COLUMNS}) VALUES {', '.join([row] * rows)}"
