"""Attempt history: what happened on each attempt of an event in a group, bounded.

Only attempts that say something are written: every failure (retried or dead-lettered)
and a success that follows a failure or a lost claim (attempt 2 and later). A first
attempt that succeeds, the hot path, writes nothing, so handling costs what it did (the
worker's counters and metrics count successes). Each write keeps only the newest
``ATTEMPT_HISTORY`` rows of its (event, group); rows of events no open dead letter
holds go with ``LOG_RETENTION`` (:mod:`django_events.retention`). See docs/internals.md,
"Attempt history", for the choice and its measured cost.

Rows are keyed by event id and group, not by dead letter, so a dead letter a transport
made from its own delivery limit (SQS redrive, a RabbitMQ or Redis delivery count) still
shows every attempt a worker reported before it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.db import DatabaseError
from django.db.models import Subquery

from .conf import get_settings
from .models import Attempt
from .text import storable

if TYPE_CHECKING:
    from .transports.base import Claimed

logger = logging.getLogger("django_events.attempts")

MESSAGE_LIMIT = 1000
"""Characters of an error message kept per attempt (the dead letter keeps it whole)."""

HANDLED = str(Attempt.Outcome.HANDLED)
FAILED = str(Attempt.Outcome.FAILED)
DEAD_LETTERED = str(Attempt.Outcome.DEAD_LETTERED)


def record(
    using: str,
    claimed: Claimed,
    worker: str,
    outcome: str,
    *,
    duration: float | None = None,
    error_class: str = "",
    message: str = "",
    number: int | None = None,
) -> None:
    """Write one attempt of ``claimed`` and drop that delivery's attempts beyond the limit.

    Two short statements; inside the caller's transaction if it has one (the dead-letter
    path records its last attempt in the transaction that stores the dead letter).
    """
    keep = get_settings().attempt_history
    if not keep:
        return
    Attempt.objects.using(using).create(
        event_id=claimed.event_id,
        group=claimed.group,
        number=claimed.attempt if number is None else number,
        worker=worker[:200],
        duration=duration,
        outcome=outcome,
        error_class=storable(error_class)[:300],
        error_message=storable(message)[:MESSAGE_LIMIT],
    )
    mine = Attempt.objects.using(using).filter(event_id=claimed.event_id, group=claimed.group)
    oldest_kept = mine.order_by("-id").values("id")[keep - 1 : keep]
    mine.filter(id__lt=Subquery(oldest_kept)).delete()


def note(
    using: str,
    claimed: Claimed,
    worker: str,
    outcome: str,
    *,
    duration: float | None = None,
    error_class: str = "",
    message: str = "",
) -> None:
    """``record`` after the outcome has committed: a history that cannot be written is
    logged, never a reason to deliver the event again."""
    try:
        record(
            using,
            claimed,
            worker,
            outcome,
            duration=duration,
            error_class=error_class,
            message=message,
        )
    except DatabaseError:
        logger.warning(
            "Could not record attempt %d of %s for %s",
            claimed.attempt,
            claimed.event_id,
            claimed.group,
            exc_info=True,
        )


def timeline(using: str, event_id: object, group: str) -> Sequence[Attempt]:
    """The attempts known for ``event_id`` in ``group``, oldest first (one query)."""
    return list(Attempt.objects.using(using).filter(event_id=event_id, group=group).order_by("id"))
