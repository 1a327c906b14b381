"""The numbers behind ``events_status`` and the admin status page."""

from __future__ import annotations

from typing import Any

from django.db import connections

from . import failure_counts, pauses, subscriptions, workers
from .conf import get_settings
from .engine import sql
from .models import Subscription
from .registry import registry
from .transports import transports


def collect() -> dict[str, Any]:
    """Per-group backlog, in-flight and dead counts, the outbox backlog, and the workers."""
    conf = get_settings()
    transport = transports["default"]
    dead = failure_counts.open_by_group(transport.database)
    declared = subscriptions.all_rows(transport)
    services: dict[str, set[str]] = {}
    for row in declared:
        services.setdefault(row.group, set()).add(row.service)
    paused: dict[str, list[dict[str, Any]]] = {}
    for pause in pauses.current(transport.database):
        paused.setdefault(pause.group, []).append(pauses.describe(pause))
    groups_known = sorted({*registry.groups(), *conf.groups, *dead, *services, *paused})
    groups: dict[str, Any] = {}
    for name, state in transport.status(groups_known).items():
        groups[name] = {
            "services": sorted(services.get(name, ())),
            "pending": state.pending,
            "in_flight": state.in_flight,
            "dead": dead.get(name, 0),
            "oldest_pending_age_s": state.oldest_pending_age_s,
            "retrying": state.retrying,
            "parked": state.parked,
            "lagging": state.lagging,
            # The group's pauses: one with event_type None pauses all of it.
            "paused": paused.get(name, []),
        }
    unrelayed, oldest = 0, None
    for using in conf.outbox_databases:
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT COUNT(*), MAX({sql.dialect(using).age_seconds('created_at')}) "
                f"FROM {sql.table(connection, 'OutboxMessage')}",
                [],
            )
            count, age = cursor.fetchone()
        unrelayed += int(count)
        if age is not None:
            oldest = max(oldest or 0.0, round(float(age), 3))
    return {
        "service": conf.service,
        "subscriptions": subscription_report(declared, transport.backlog_by_type()),
        "groups": groups,
        "outbox": {"unrelayed": unrelayed, "oldest_age_s": oldest},
        "transport": transport.alias,
        "workers": workers.listing(transport.database),
    }


def subscription_report(
    rows: list[Subscription], backlog: dict[tuple[str, str], int] | None
) -> list[dict[str, Any]]:
    """Every declared subscription, by service; an orphaned one (retired, declared by no
    service) with what it still holds: ``backlog`` is None when the transport cannot
    count per type."""

    def slot(row: Subscription) -> tuple[str, str, str]:
        return (row.service, row.group, row.event_type)  # rows of a broker's store have no pk

    orphans = {slot(row) for row in subscriptions.orphaned(rows)}
    return [
        {
            "service": row.service,
            "group": row.group,
            "event_type": row.event_type,
            "ordered": row.ordered,
            "declared_at": row.declared_at.isoformat(),
            "last_seen_at": row.last_seen_at.isoformat(),
            "retired_at": row.retired_at.isoformat() if row.retired_at else None,
            "orphaned": slot(row) in orphans,
            "backlog": None if backlog is None else backlog.get((row.group, row.event_type), 0),
        }
        for row in rows
    ]


def problems(report: dict[str, Any]) -> list[str]:
    """What exceeds the HEALTH thresholds, in words; empty when healthy."""
    health = get_settings().health
    found = []
    for name, group in report["groups"].items():
        age = group["oldest_pending_age_s"]
        if health.max_pending_age is not None and age is not None and age > health.max_pending_age:
            found.append(
                f"group {name}: oldest pending event is {age:.0f}s old "
                f"(MAX_PENDING_AGE {health.max_pending_age:g}s)"
            )
        if group.get("lagging"):
            found.append(
                f"group {name}: lags beyond the transport's bound; the relay is slowing down"
            )
        if health.max_dead is not None and group["dead"] > health.max_dead:
            found.append(f"group {name}: {group['dead']} dead letters (MAX_DEAD {health.max_dead})")
    outbox_age = report["outbox"]["oldest_age_s"]
    if (
        health.max_outbox_age is not None
        and outbox_age is not None
        and outbox_age > health.max_outbox_age
    ):
        found.append(
            f"outbox: oldest unrelayed event is {outbox_age:.0f}s old "
            f"(MAX_OUTBOX_AGE {health.max_outbox_age:g}s): is a relay running?"
        )
    return found
