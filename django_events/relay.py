"""The relay: moves committed outbox rows to the transport and into the event log.

It never tracks progress by id (DESIGN.md, "sequence gaps"): it takes whichever
committed rows exist, oldest first, and deletes them as it moves them. When the
transport lives in the same database the move is one short transaction; otherwise rows
are leased in database time, sent with no transaction open, then deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, connections, transaction
from django.db.models.functions import Now

from . import failpoints, retention, sql
from .conf import get_settings
from .subscriptions import fan_out
from .transports import transports
from .transports.base import Outgoing, Transport

logger = logging.getLogger("django_events.relay")

RELAY_LOCK = 0x6465_7665_6E74  # one relay moves at a time per database: keeps publish order
_PRUNE_EVERY = 60.0
_PRUNE_BATCHES = 10  # per kind and pass: retention never holds the relay up for long
UNSUBSCRIBED_WARN_EVERY = 600.0  # seconds between warnings about one unsubscribed type
_OUTBOX_FIELDS = (
    "position, event_id, type, key, version, data, metadata, occurred_at, source, "
    "correlation_id, causation_id"
)
_LOG_COLUMNS = (
    "id, position, type, key, version, data, metadata, occurred_at, source, "
    "correlation_id, causation_id, recorded_at"
)


class Relay:
    def __init__(
        self,
        transport: Transport | None = None,
        databases: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> None:
        conf = get_settings()
        self.transport = transport or transports["default"]
        self.databases = tuple(databases or conf.outbox_databases)
        self.batch_size = batch_size or conf.relay_batch_size
        self._pruned_at = 0.0
        self._purge_resume: dict[tuple[str, str], Any] = {}
        self._unsubscribed_warned: dict[str, float] = {}

    def run_once(self) -> int:
        """Move everything committed so far; return how many events moved."""
        moved = 0
        for using in self.databases:
            while True:
                count = self.relay_batch(using)
                moved += count
                if count < self.batch_size:
                    break
        self._maybe_prune()
        self.transport.housekeeping()
        return moved

    def relay_batch(self, using: str) -> int:
        """Move one batch; a row that cannot be moved is set aside, never left to block."""
        try:
            return self._relay_batch(using)
        except (DataError, IntegrityError):
            quarantined = quarantine_malformed(using, self.batch_size)
            if not quarantined:
                raise
            return quarantined

    def _subscriptions(self, rows: Sequence[Outgoing]) -> list[tuple[str, str, bool]]:
        """Read after the rows were taken (in the same transaction, for the database
        transport): every subscription declared before these events committed is in it."""
        return fan_out(self.transport) if rows else []

    def _relay_batch(self, using: str) -> int:
        if self.transport.joins_outbox_transaction(using):
            with transaction.atomic(using=using):
                rows = self._take(using)
                subscriptions = self._subscriptions(rows)
                self.transport.publish(rows, subscriptions)
                if rows:
                    failpoints.hit("relay.after_take")
            self._warn_unsubscribed(rows, subscriptions)
            return len(rows)
        if sql.vendor(using) == "postgresql":
            return self._send_under_lock(using)
        rows = self._lease(using)
        if rows:
            subscriptions = self._subscriptions(rows)
            self.transport.publish(rows, subscriptions)
            failpoints.hit("relay.after_publish")
            with transaction.atomic(using=using):
                self._complete(using, rows)
            self._warn_unsubscribed(rows, subscriptions)
        return len(rows)

    def _warn_unsubscribed(
        self, rows: Sequence[Outgoing], subscriptions: list[tuple[str, str, bool]]
    ) -> None:
        """Warn when an event reaches no group (a typo in a type, or a handler not
        imported): it is kept in the event log, but no handler will see it. Once per
        type every ``UNSUBSCRIBED_WARN_EVERY`` seconds, so a busy type does not flood."""
        if not rows:
            return
        subscribed = {event_type for event_type, _, _ in subscriptions}
        now = time.monotonic()
        for event_type in sorted({row.type for row in rows} - subscribed):
            warned = self._unsubscribed_warned.get(event_type)
            if warned is not None and now - warned < UNSUBSCRIBED_WARN_EVERY:
                continue
            self._unsubscribed_warned[event_type] = now
            logger.warning(
                "Relayed %s events, to which no group subscribes: they are in the event log, "
                "but no handler sees them (next warning for this type in %.0f minutes at "
                "the earliest)",
                event_type,
                UNSUBSCRIBED_WARN_EVERY / 60,
            )

    def _send_under_lock(self, using: str) -> int:
        """One relay at a time sends, holding a session lock instead of leasing rows: no
        row is written before the send, and a relay that dies releases the lock with its
        connection."""
        connection = connections[using]
        outbox = sql.table(connection, "OutboxMessage")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [RELAY_LOCK])
            if not cursor.fetchone()[0]:
                return 0  # another relay is sending; it drains what is here
            try:
                cursor.execute(
                    f"SELECT {_OUTBOX_FIELDS} FROM {outbox} ORDER BY position LIMIT %s",
                    [self.batch_size],
                )
                rows = [Outgoing(*row) for row in cursor.fetchall()]
                if rows:
                    subscriptions = self._subscriptions(rows)
                    self.transport.publish(rows, subscriptions)
                    failpoints.hit("relay.after_publish")
                    with transaction.atomic(using=using):
                        self._complete(using, rows)
                    self._warn_unsubscribed(rows, subscriptions)
            finally:
                with contextlib.suppress(DatabaseError):  # a lost connection lost the lock too
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [RELAY_LOCK])
        return len(rows)

    # -- same-database move -------------------------------------------------------------

    def _take(self, using: str) -> list[Outgoing]:
        connection = connections[using]
        vendor = sql.vendor(using)
        outbox = sql.table(connection, "OutboxMessage")
        log = sql.table(connection, "EventRecord")
        with connection.cursor() as cursor:
            if vendor == "postgresql":
                cursor.execute(
                    f"SELECT pg_advisory_xact_lock(%s), {sql.RELAXED_COMMIT}", [RELAY_LOCK]
                )
                cursor.execute(
                    f"WITH moved AS (DELETE FROM {outbox} WHERE position IN (SELECT position "
                    f"FROM {outbox} ORDER BY position LIMIT %s FOR UPDATE SKIP LOCKED) "
                    f"RETURNING {_OUTBOX_FIELDS}), "
                    f"logged AS (INSERT INTO {log} ({_LOG_COLUMNS}) SELECT event_id, position, "
                    "type, key, version, data::jsonb, COALESCE(NULLIF(metadata, ''), '{}')::jsonb, "
                    "occurred_at, source, correlation_id, causation_id, statement_timestamp() "
                    "FROM moved) SELECT position, event_id, type, key FROM moved ORDER BY position",
                    [self.batch_size],
                )
                return [Outgoing(*row) for row in cursor.fetchall()]
            cursor.execute(
                f"DELETE FROM {outbox} WHERE position IN (SELECT position FROM {outbox} "
                f"ORDER BY position LIMIT %s) RETURNING {_OUTBOX_FIELDS}",
                [self.batch_size],
            )
            rows = sorted(cursor.fetchall())
            if rows:
                cursor.executemany(
                    f"INSERT INTO {log} ({_LOG_COLUMNS}) VALUES "
                    f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {sql.now(vendor)})",
                    [(r[1], r[0], r[2], r[3], r[4], r[5], r[6] or "{}", *r[7:]) for r in rows],
                )
        return [Outgoing(*row[:4]) for row in rows]

    # -- leased move to an external transport -------------------------------------------

    def _lease(self, using: str) -> list[Outgoing]:
        connection = connections[using]
        vendor = sql.vendor(using)
        outbox = sql.table(connection, "OutboxMessage")
        lock = " FOR UPDATE SKIP LOCKED" if vendor == "postgresql" else ""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {outbox} SET claimed_until = {sql.now_plus(vendor)} WHERE position IN "
                f"(SELECT position FROM {outbox} WHERE claimed_until IS NULL OR claimed_until < "
                f"{sql.now(vendor)} ORDER BY position LIMIT %s{lock}) RETURNING {_OUTBOX_FIELDS}",
                [sql.seconds(vendor, get_settings().lease), self.batch_size],
            )
            rows = sorted(cursor.fetchall())
        return [Outgoing(*row) for row in rows]

    def _complete(self, using: str, rows: Sequence[Outgoing]) -> None:
        connection = connections[using]
        vendor = sql.vendor(using)
        outbox = sql.table(connection, "OutboxMessage")
        log = sql.table(connection, "EventRecord")
        positions = [row.position for row in rows]
        data = "data::jsonb" if vendor == "postgresql" else "data"
        metadata = "COALESCE(NULLIF(metadata, ''), '{}')"
        if vendor == "postgresql":
            metadata += "::jsonb"
        with connection.cursor() as cursor:
            if vendor == "postgresql":
                cursor.execute(
                    f"WITH moved AS (DELETE FROM {outbox} WHERE position = ANY(%s) "
                    f"RETURNING {_OUTBOX_FIELDS}) INSERT INTO {log} ({_LOG_COLUMNS}) "
                    f"SELECT event_id, position, type, key, version, {data}, {metadata}, "
                    "occurred_at, source, correlation_id, causation_id, statement_timestamp() "
                    f"FROM moved ON CONFLICT DO NOTHING",
                    [positions],
                )
                return
            cursor.execute(
                f"INSERT INTO {log} ({_LOG_COLUMNS}) SELECT event_id, position, type, key, "
                f"version, {data}, {metadata}, occurred_at, source, correlation_id, causation_id, "
                f"{sql.now(vendor)} FROM {outbox} "
                f"WHERE position IN ({sql.in_list(len(positions))}) "
                "ON CONFLICT DO NOTHING",
                positions,
            )
            cursor.execute(
                f"DELETE FROM {outbox} WHERE position IN ({sql.in_list(len(positions))})",
                positions,
            )

    # -- retention ----------------------------------------------------------------------

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        if any(seconds is not None for seconds in retention.configured().values()):
            retention.purge_expired(
                [*self.databases, self.transport.database],
                max_batches=_PRUNE_BATCHES,
                resume=self._purge_resume,
            )


QUARANTINE_GROUP = "(relay)"
"""The dead letters of outbox rows the relay could not move (not a real consumer group)."""


def quarantine_malformed(using: str, batch: int) -> int:
    """Turn outbox rows whose data or metadata is not a JSON object into dead letters.

    ``publish()`` never writes such rows; something writing to the table directly can.
    They would fail the relay's batch every time and hold back every later event, so each
    is kept, raw, as a dead letter of the ``(relay)`` group and removed from the outbox.
    """
    from .models import DeadLetter
    from .triage import fingerprint

    connection = connections[using]
    outbox = sql.table(connection, "OutboxMessage")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_OUTBOX_FIELDS} FROM {outbox} ORDER BY position LIMIT %s", [batch])
        rows = [Outgoing(*row) for row in cursor.fetchall()]
    bad = [(row, problem) for row in rows if (problem := _malformed(row))]
    for row, problem in bad:
        with transaction.atomic(using=using):
            DeadLetter.objects.using(using).create(
                event_id=row.event_id,
                group=QUARANTINE_GROUP,
                handler="django_events.relay",
                attempts=1,
                error_class="UndecodableEvent",
                error_message=f"Outbox row {row.position} ({row.type}): {problem}",
                traceback=f"data: {row.data[:65536]}\nmetadata: {row.metadata[:65536]}",
                fingerprint=fingerprint("UndecodableEvent", "django_events.relay", ""),
                first_failed_at=Now(),
                last_failed_at=Now(),
            )
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {outbox} WHERE position = %s", [row.position])
        logger.error("Outbox row %s set aside as a dead letter: %s", row.position, problem)
    return len(bad)


def _malformed(row: Outgoing) -> str | None:
    for name, text, blank_ok in (("data", row.data, False), ("metadata", row.metadata, True)):
        if blank_ok and not text:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"{name} is not valid JSON ({exc})"
        if not isinstance(value, dict):
            return f"{name} is not a JSON object"
    return None
