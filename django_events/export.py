"""Dead letters as CSV or JSON, streamed: a filter's worth, whatever its size.

Rows are read in chunks (two queries per chunk: the dead letters and their events), so
memory stays flat at a million rows. Error messages, stack traces, payloads and metadata
are included only for users with ``view_payload`` (``shown``); the rest see ``None``
(an empty CSV cell). CSV cells that a spreadsheet would run as a formula (``=``, ``+``,
``-``, ``@``, tab, carriage return) are prefixed with ``'``: payloads come from outside.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from .models import DeadLetter
from .triage import event_of

CHUNK = 500
COLUMNS = (
    "id",
    "state",
    "group",
    "service",
    "handler",
    "event_id",
    "event_type",
    "event_version",
    "event_key",
    "occurred_at",
    "correlation_id",
    "error_class",
    "error_message",
    "traceback",
    "attempts",
    "fingerprint",
    "first_failed_at",
    "last_failed_at",
    "resolved_at",
    "resolved_by",
    "reason",
    "data",
    "metadata",
)
PRIVATE = frozenset({"error_message", "traceback", "data", "metadata"})
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def row(dead: DeadLetter, shown: bool) -> dict[str, Any]:
    """One dead letter as JSON values; private fields are None unless ``shown``."""
    event = event_of(dead)
    out = {
        "id": dead.pk,
        "state": dead.state,
        "group": dead.group,
        "service": dead.service,
        "handler": dead.handler,
        "event_id": str(dead.event_id),
        "event_type": event.type if event else None,
        "event_version": event.version if event else None,
        "event_key": event.key if event else None,
        "occurred_at": event.occurred_at if event else None,
        "correlation_id": str(event.correlation_id) if event and event.correlation_id else None,
        "error_class": dead.error_class,
        "error_message": dead.error_message,
        "traceback": dead.traceback,
        "attempts": dead.attempts,
        "fingerprint": dead.fingerprint,
        "first_failed_at": dead.first_failed_at,
        "last_failed_at": dead.last_failed_at,
        "resolved_at": dead.resolved_at,
        "resolved_by": dead.resolved_by,
        "reason": dead.reason,
        "data": event.data if event else None,
        "metadata": event.metadata if event else None,
    }
    if not shown:
        out.update(dict.fromkeys(PRIVATE))
    return out


def _rows(queryset: Iterable[DeadLetter], shown: bool) -> Iterator[dict[str, Any]]:
    iterate = getattr(queryset, "iterator", None)
    for dead in iterate(chunk_size=CHUNK) if iterate else queryset:
        yield row(dead, shown)


class _Echo:
    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, sort_keys=True)
    elif hasattr(value, "isoformat"):
        text = value.isoformat()
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def as_csv(queryset: Iterable[DeadLetter], shown: bool) -> Iterator[str]:
    """A header line, then one CSV line per dead letter."""
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for item in _rows(queryset, shown):
        yield writer.writerow([_cell(item[name]) for name in COLUMNS])


def as_json(queryset: Iterable[DeadLetter], shown: bool) -> Iterator[str]:
    """One JSON array of objects, a line per dead letter."""
    yield "["
    first = True
    for item in _rows(queryset, shown):
        text = json.dumps(item, cls=DjangoJSONEncoder, ensure_ascii=False, sort_keys=True)
        yield ("\n" if first else ",\n") + text
        first = False
    yield "\n]\n"
