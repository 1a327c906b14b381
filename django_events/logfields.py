"""The structured fields of a log line about one event, passed as ``extra``.

JSON formatters and Sentry's logging integration read them from the record, so a line
says which event, group and attempt without parsing its message (docs/observability.md,
"Logs"). The names are the record's attributes: ``record.event_id`` and so on.
"""

from __future__ import annotations

import json
import logging
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the event's fields when the
    line has them, and the traceback. For log shippers that want JSON without another
    dependency; any JSON formatter that copies ``extra`` works as well."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*FIELDS, "worker"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
