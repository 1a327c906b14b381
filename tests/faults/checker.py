"""The invariant, checked the same way in every row of the suite.

Every event is classified per subscribed group:

``ok``          committed and its effect exists exactly once (or, for a rolled-back event,
                never seen anywhere);
``lost``        committed, but no effect and no dead letter;
``duplicated``  committed, and its effect exists more than once;
``unexpected``  rolled back, yet delivered (an effect, or a row in the event log);
``dead``        committed and kept as a dead letter (only where a test expects it).

Ground truth comes from the publishers, written outside the transactions they describe:
one line per event, ``<uuid> committed|rolled_back|unknown``. ``unknown`` is a commit
whose answer never arrived (the connection broke during COMMIT); the event log decides
whether it committed.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .transport import LOG_TRANSPORT, past_cursor

COMMITTED, ROLLED_BACK, UNKNOWN = "committed", "rolled_back", "unknown"


@dataclass
class Report:
    events: int = 0
    committed: int = 0
    rolled_back: int = 0
    ok: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    dead: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def counts(self) -> dict[str, int]:
        return {
            "events": self.events,
            "committed": self.committed,
            "ok": self.ok,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            "dead": self.dead,
        }

    def __str__(self) -> str:
        text = " ".join(f"{k}={v}" for k, v in self.counts().items())
        for kind, ids in self.examples.items():
            text += f"\n  {kind}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
        return text

    def __iadd__(self, other: Report) -> Report:
        """Fold in the report of other events (another publisher's, checked on its groups)."""
        for name in ("rolled_back", *self.counts()):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind, ids in other.examples.items():
            self.examples.setdefault(kind, []).extend(ids)
        return self

    def _note(self, kind: str, what: str) -> None:
        self.examples.setdefault(kind, []).append(what)


def read_truth(paths: Iterable[Path]) -> dict[uuid.UUID, str]:
    truth: dict[uuid.UUID, str] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                event_id, outcome = line.split()
                truth[uuid.UUID(event_id)] = outcome
    return truth


def classify(
    truth: Mapping[uuid.UUID, str],
    effects: Counter[tuple[uuid.UUID, str]],
    groups: Sequence[str],
    *,
    logged: set[uuid.UUID] | None = None,
    dead: set[tuple[uuid.UUID, str]] | None = None,
) -> Report:
    """Classify every (event, group); ``effects`` counts effect rows per (event, group)."""
    dead = dead or set()
    report = Report(events=len(truth))
    for event_id, outcome in truth.items():
        if outcome == UNKNOWN:
            if logged is None:
                raise ValueError("unknown outcomes need the event log to decide")
            outcome = COMMITTED if event_id in logged else ROLLED_BACK
        if outcome == COMMITTED:
            report.committed += 1
        else:
            report.rolled_back += 1
        for group in groups:
            n = effects.get((event_id, group), 0)
            if outcome == ROLLED_BACK:
                if n or (logged is not None and event_id in logged):
                    report.unexpected += 1
                    report._note("unexpected", f"{event_id}/{group}")
                else:
                    report.ok += 1
            elif n == 1:
                report.ok += 1
            elif n > 1:
                report.duplicated += 1
                report._note("duplicated", f"{event_id}/{group} x{n}")
            elif (event_id, group) in dead:
                report.dead += 1
            else:
                report.lost += 1
                report._note("lost", f"{event_id}/{group}")
    strays = {event_id for event_id, _ in effects} - set(truth)
    for event_id in strays:  # an effect for an event nobody published
        report.unexpected += 1
        report._note("unexpected", f"{event_id} (unknown event)")
    return report


# -- reading the database, through any DB-API cursor (Django's, or psycopg on a private server)


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def effects_from(
    cursor: Any, groups: Sequence[str] | None = None
) -> Counter[tuple[uuid.UUID, str]]:
    cursor.execute('SELECT event_id, "group", COUNT(*) FROM testapp_effect GROUP BY 1, 2')
    return Counter(
        {
            (_uuid(event_id), group): int(n)
            for event_id, group, n in cursor.fetchall()
            if groups is None or group in groups
        }
    )


def logged_from(cursor: Any) -> set[uuid.UUID]:
    cursor.execute("SELECT id FROM django_events_event")
    return {_uuid(row[0]) for row in cursor.fetchall()}


def dead_from(cursor: Any) -> set[tuple[uuid.UUID, str]]:
    cursor.execute('SELECT event_id, "group" FROM django_events_deadletter')
    return {(_uuid(e), g) for e, g in cursor.fetchall()}


def backlog_from(cursor: Any) -> tuple[int, int]:
    """(unrelayed outbox rows, events owed: delivery rows not parked, and on the log
    transport the events in leases and past each group's cursor, or every logged event
    while no group has a cursor yet): zero means drained."""
    cursor.execute("SELECT COUNT(*) FROM django_events_outbox")
    outbox = int(cursor.fetchone()[0])
    cursor.execute("SELECT COUNT(*) FROM django_events_delivery WHERE NOT parked")
    owed = int(cursor.fetchone()[0])
    if LOG_TRANSPORT:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM django_events_cursor)")
        if cursor.fetchone()[0]:
            cursor.execute(
                "SELECT COALESCE(sum(cardinality(positions)), 0) + (SELECT count(*) FROM "
                f"({past_cursor()}) p) FROM django_events_lease"
            )
        else:  # no worker has started: everything logged is owed
            cursor.execute("SELECT COUNT(*) FROM django_events_event WHERE txid IS NOT NULL")
        owed += int(cursor.fetchone()[0])
    return outbox, owed


def check_database(cursor: Any, truth: Mapping[uuid.UUID, str], groups: Sequence[str]) -> Report:
    return classify(
        truth,
        effects_from(cursor, groups),
        groups,
        logged=logged_from(cursor),
        dead=dead_from(cursor),
    )
