"""The structured fields of a log line about one event, passed as ``extra``.

JSON formatters and Sentry's logging integration read them from the record, so a line
says which event, group and attempt without parsing its message (docs/observability.md,
"Logs"). The names are the record's attributes: ``record.event_id`` and so on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .conf import current_service

if TYPE_CHECKING:
    from .transports.base import Claimed

FIELDS = ("event_id", "event_type", "group", "attempt", "service")


def for_claimed(claimed: Claimed) -> dict[str, Any]:
    return {
        "event_id": str(claimed.event_id),
        "event_type": claimed.event_type,
        "group": claimed.group,
        "attempt": claimed.attempt,
        "service": current_service(),
    }


def for_service(**fields: Any) -> dict[str, Any]:
    """Fields of a line about no single event (a worker, a relay batch)."""
    return {**fields, "service": current_service()}
