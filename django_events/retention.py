"""Retention: old events, inbox records, attempts and resolved dead letters go away, in
batches.

Payloads may hold personal data; retention is how it leaves the database. Nothing a
group still has to handle is ever removed: an event with a delivery row (pending, in
flight, retrying or parked), an open dead letter, or (the log transport) a lease or a
group's cursor not yet past it stays in the log, and an inbox record
stays while its group still owes that event (a duplicate it must skip): a delivery row,
or (the log transport) one of the group's leases or its cursor not yet past it.

The log and the inbox are walked oldest first along their primary key, which follows
their timestamps closely, and a walk stops at the first batch that reaches rows still
within retention, so a pass over a large table that has nothing to remove is cheap.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.checks import CheckMessage, Error
from django.db import DatabaseError, connections

from .conf import EventsSettings, RetryPolicy, get_settings
from .engine import sql

if TYPE_CHECKING:
    from .transports.log import LogSQL

logger = logging.getLogger("django_events.retention")

EVENTS = "events"
INBOX = "inbox"
DEAD_LETTERS = "dead-letters"
ATTEMPTS = "attempts"
KINDS = (DEAD_LETTERS, ATTEMPTS, INBOX, EVENTS)
"""Every kind, in the order a purge removes them."""
SETTINGS = {
    EVENTS: "LOG_RETENTION",
    INBOX: "INBOX_RETENTION",
    DEAD_LETTERS: "DEAD_LETTER_RETENTION",
    ATTEMPTS: "LOG_RETENTION",  # an event's attempts are part of its history
}
PURGE_LOCK = 0x6465_7670_7267
"""PostgreSQL advisory lock: one purge at a time per database, and none while a replay
batch (which holds it shared) reads events and commits their deliveries."""

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds in ``text``: ``3600``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not an age: use seconds or a number with s, m, h, d or w "
            "(such as 3600, 12h or 30d)."
        )
    return float(match[1]) * _UNITS[match[2]]


def format_age(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it exactly: ``30d``, ``12h``, ``90s``."""
    for unit in ("w", "d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def configured(conf: EventsSettings | None = None) -> dict[str, float | None]:
    """The retention setting of each kind, in seconds; None keeps that kind forever."""
    conf = conf or get_settings()
    return {
        EVENTS: conf.log_retention,
        INBOX: conf.inbox_retention,
        DEAD_LETTERS: conf.dead_letter_retention,
        ATTEMPTS: conf.log_retention,
    }


# -- how long an inbox record is needed ----------------------------------------------------


def _window(policy: RetryPolicy, lease: float) -> float:
    """Every attempt may run out its lease, and each retry waits its longest backoff."""
    backoff = sum(
        min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1))
        for attempt in range(1, policy.max_attempts)
    )
    return policy.max_attempts * lease + backoff


def redelivery_window(conf: EventsSettings | None = None) -> tuple[float, str]:
    """The longest time, in seconds, over which an event can reach a group again, and
    whose retry policy sets it. An inbox record removed sooner could let a redelivered
    event run its handler twice."""
    from .engine.retry import policy_for
    from .registry import registry

    conf = conf or get_settings()
    candidates = [(_window(conf.retry, conf.lease), "the global retry policy")]
    candidates += [
        (_window(policy, conf.lease), f"group {name!r}") for name, policy in conf.groups.items()
    ]
    candidates += [
        (_window(policy_for(h.group, h), conf.lease), f"handler {h.name} (group {h.group!r})")
        for h in registry
    ]
    return max(candidates, key=lambda candidate: candidate[0])


def check_retention(conf: EventsSettings) -> list[CheckMessage]:
    """E030: INBOX_RETENTION must outlast the longest redelivery window."""
    if conf.inbox_retention is None:
        return []
    window, source = redelivery_window(conf)
    if conf.inbox_retention > window:
        return []
    return [
        Error(
            f"DJANGO_EVENTS['INBOX_RETENTION'] is {conf.inbox_retention:g}s, but {source} can "
            f"redeliver an event up to {window:g}s after its first delivery "
            "(MAX_ATTEMPTS x LEASE + the backoff schedule); a redelivery after its inbox "
            "record is gone would run the handler again.",
            hint=f"Keep inbox records longer than {window:g}s (days are typical).",
            id="django_events.E030",
        )
    ]


# -- purging ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """How to walk one kind: its table, its ordered key, the age column and the guard."""

    model: str
    key: str
    age_column: str
    where: str  # rows of this kind that may go, beyond their age ("" for all)
    walk_in_order: bool  # the key follows the age column: stop at the first young batch


def _log_sql(connection: Any) -> LogSQL:
    """The log transport's SQL for what it owes without a delivery row (docs/internals.md,
    "The log transport", Retention): ``unread`` for a log row, owed to any group, in a
    lease or past no cursor; ``read_by_its_group`` for an inbox row, owed to its own
    group. Where no cursor or lease exists, nothing is held back."""
    from .transports.log import log_sql

    return log_sql(connection.alias)


def _tables(connection: Any) -> dict[str, _Table]:
    delivery = sql.table(connection, "Delivery")
    dead = sql.table(connection, "DeadLetter")
    group = connection.ops.quote_name("group")
    log = _log_sql(connection)
    return {
        EVENTS: _Table(
            "EventRecord",
            "position",
            "recorded_at",
            f"NOT EXISTS (SELECT 1 FROM {delivery} d WHERE d.event_id = t.id) "
            f"AND NOT EXISTS (SELECT 1 FROM {dead} x WHERE x.event_id = t.id "
            f"AND x.state = 'open'){log.unread(connection)}",
            walk_in_order=True,
        ),
        INBOX: _Table(
            "InboxRecord",
            "id",
            "handled_at",
            f"NOT EXISTS (SELECT 1 FROM {delivery} d WHERE d.event_id = t.event_id "
            f"AND d.group_name = t.group_name){log.read_by_its_group(connection)}",
            walk_in_order=True,
        ),
        DEAD_LETTERS: _Table(
            "DeadLetter",
            "id",
            "resolved_at",
            "t.state IN ('retried', 'discarded') AND t.resolved_at IS NOT NULL",
            walk_in_order=False,
        ),
        ATTEMPTS: _Table(
            "Attempt",
            "id",
            "at",
            f"NOT EXISTS (SELECT 1 FROM {delivery} d WHERE d.event_id = t.event_id "
            f"AND d.group_name = t.{group}) "
            f"AND NOT EXISTS (SELECT 1 FROM {dead} x WHERE x.event_id = t.event_id "
            f"AND x.{group} = t.{group} AND x.state = 'open')",
            walk_in_order=True,
        ),
    }


def purge(
    kind: str,
    using: str,
    older_than: float,
    *,
    batch: int = 1000,
    dry_run: bool = False,
) -> int:
    """Remove (or with ``dry_run`` count) every row of ``kind`` older than ``older_than``
    seconds that nothing still needs; one short statement per batch. Returns the count."""
    return walk(kind, using, older_than, batch=batch, dry_run=dry_run)[0]


def walk(
    kind: str,
    using: str,
    older_than: float,
    *,
    batch: int = 1000,
    max_batches: int | None = None,
    after: Any = None,
    dry_run: bool = False,
) -> tuple[int, Any]:
    """``purge`` for at most ``max_batches`` batches, starting after the key ``after``.

    Returns the count and the key to resume after, or None once the walk reached rows
    still within retention (or the end): a bounded caller resumes there next time rather
    than walking again over old rows that are kept, such as those of open dead letters.
    """
    connection = connections[using]
    dialect = sql.dialect(using)
    spec = _tables(connection)[kind]
    table = sql.table(connection, spec.model)
    old = f"{dialect.age_seconds('t.' + spec.age_column)} > %s"
    done = 0
    for _ in itertools.count() if max_batches is None else range(max_batches):
        with connection.cursor() as cursor:
            if spec.walk_in_order:
                cursor.execute(
                    f"SELECT t.{spec.key}, {old} FROM {table} t "
                    f"{'' if after is None else f'WHERE t.{spec.key} > %s '}"
                    f"ORDER BY t.{spec.key} LIMIT %s",
                    [older_than, *([] if after is None else [after]), batch],
                )
                rows = cursor.fetchall()
                expired = [key for key, is_old in rows if is_old]
            else:
                cursor.execute(
                    f"SELECT t.{spec.key} FROM {table} t WHERE {spec.where} AND {old} "
                    f"{'' if after is None else f'AND t.{spec.key} > %s '}"
                    f"ORDER BY t.{spec.key} LIMIT %s",
                    [older_than, *([] if after is None else [after]), batch],
                )
                rows = cursor.fetchall()
                expired = [row[0] for row in rows]
            if expired:
                done += _remove(cursor, dialect, table, spec, expired, dry_run)
        young = spec.walk_in_order and len(expired) < len(rows)
        if young or len(rows) < batch:
            return done, None
        after = rows[-1][0]
    return done, after


def _remove(
    cursor: Any,
    dialect: sql.Dialect,
    table: str,
    spec: _Table,
    keys: Sequence[Any],
    dry_run: bool,
) -> int:
    """Delete the rows at ``keys`` that still may go (checked again, in this statement)."""
    chosen, params = dialect.in_values(f"t.{spec.key}", keys)
    where = f"{chosen} AND {spec.where}" if spec.where else chosen
    if dry_run:
        cursor.execute(f"SELECT COUNT(*) FROM {table} t WHERE {where}", params)
        return int(cursor.fetchone()[0])
    cursor.execute(
        f"DELETE FROM {table} WHERE {spec.key} IN (SELECT t.{spec.key} FROM {table} t "
        f"WHERE {where})",
        params,
    )
    return int(cursor.rowcount)


def purge_expired(
    databases: Iterable[str],
    *,
    max_batches: int,
    resume: dict[tuple[str, str], Any],
    batch: int = 1000,
) -> dict[str, int]:
    """Apply the retention settings to ``databases``, at most ``max_batches`` batches per
    kind. The relay calls this about once a minute; ``resume`` (kept by the caller) holds
    where each walk stopped, so a large backlog is worked off a bounded amount at a time."""
    settings = configured()
    removed = dict.fromkeys(KINDS, 0)
    for using in dict.fromkeys(databases):
        if not _try_lock(using):
            continue  # another relay or purge_events is purging this database
        try:
            for kind in KINDS:
                seconds = settings[kind]
                if seconds is None:
                    continue
                count, resume[kind, using] = walk(
                    kind,
                    using,
                    seconds,
                    batch=batch,
                    max_batches=max_batches,
                    after=resume.get((kind, using)),
                )
                removed[kind] += count
        finally:
            if not sql.dialect(using).one_writer:  # the lock _try_lock took
                with contextlib.suppress(DatabaseError):  # a lost connection lost the lock too
                    _unlock(using)
    for kind, count in removed.items():
        if count:
            logger.info("Removed %d %s past %s", count, kind, SETTINGS[kind])
    return removed


@contextlib.contextmanager
def exclusive(using: str) -> Iterator[None]:
    """Purge ``using`` alone: on PostgreSQL, wait for a relay's purge pass to finish, and
    keep relays from starting one meanwhile (concurrent deletes could deadlock)."""
    if sql.dialect(using).one_writer:
        yield
        return
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [PURGE_LOCK])
    try:
        yield
    finally:
        with contextlib.suppress(DatabaseError):  # a lost connection lost the lock too
            _unlock(using)


def _try_lock(using: str) -> bool:
    if sql.dialect(using).one_writer:
        return True
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [PURGE_LOCK])
        return bool(cursor.fetchone()[0])


def _unlock(using: str) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [PURGE_LOCK])
