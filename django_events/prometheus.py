"""The state of the queue in Prometheus' text format: a view and ``events_status``.

Everything here is read from the shared store at scrape time, so one scrape tells the
whole deployment's backlog, whichever process serves it. It reads what
``events_status --json`` reads: the work tables (deliveries, outbox), which stay small
because handled rows are deleted, and open dead letters by index; never the event log or
the inbox, which grow with history (docs/observability.md, "Metrics"). Counters and
histograms of what one process did are OpenTelemetry instruments (``instrumentation``).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from .conf import get_settings
from .status import collect, problems

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

GROUP_GAUGES = (
    ("pending", "django_events_group_pending", "Events waiting for the group (not in flight)."),
    ("in_flight", "django_events_group_in_flight", "Events claimed by a worker right now."),
    ("retrying", "django_events_group_retrying", "Pending events that failed before."),
    ("parked", "django_events_group_parked", "Events parked behind a dead letter of their key."),
    ("dead", "django_events_group_dead_letters", "Open dead letters of the group."),
    (
        "oldest_pending_age_s",
        "django_events_group_oldest_pending_age_seconds",
        "Age of the oldest pending event; 0 when none is pending.",
    ),
    ("lagging", "django_events_group_lagging", "1 when the group lags beyond the bound."),
)
"""(``events_status --json`` field, metric name, help): one gauge per group each."""


def report() -> dict[str, Any]:
    """``events_status``' report, with its health verdict."""
    found = collect()
    issues = problems(found)
    found["healthy"] = not issues
    found["problems"] = issues
    return found


def render(found: dict[str, Any]) -> str:
    """The report as Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    _gauge(
        lines,
        "django_events_info",
        "This service and its transport.",
        [({"service": found["service"], "transport": found["transport"]}, 1)],
    )
    for field, name, text in GROUP_GAUGES:
        _gauge(
            lines,
            name,
            text,
            (({"group": group}, values[field]) for group, values in found["groups"].items()),
        )
    box = found["outbox"]
    _gauge(
        lines,
        "django_events_outbox_unrelayed",
        "Committed events not relayed yet.",
        [({}, box["unrelayed"])],
    )
    _gauge(
        lines,
        "django_events_outbox_oldest_age_seconds",
        "Age of the oldest unrelayed event; 0 when the outbox is empty.",
        [({}, box["oldest_age_s"])],
    )
    _gauge(
        lines,
        "django_events_healthy",
        "1 when no HEALTH threshold is exceeded (events_status exits 0).",
        [({}, found["healthy"])],
    )
    return "\n".join(lines) + "\n"


def _gauge(
    lines: list[str], name: str, text: str, samples: Iterable[tuple[dict[str, str], Any]]
) -> None:
    lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        inner = ",".join(f'{key}="{_escape(label)}"' for key, label in labels.items())
        lines.append(f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Any) -> str:
    if value is None:
        return "0"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Mount in urls.py for Prometheus to scrape. Staff users may read it; a scraper sends
    ``Authorization: Bearer <METRICS_TOKEN>``. Anyone else gets 401 or 403."""
    token = get_settings().metrics_token
    sent = request.headers.get("Authorization", "")
    if token and sent.startswith("Bearer "):
        if not hmac.compare_digest(sent[len("Bearer ") :].encode(), token.encode()):
            return HttpResponse("Wrong bearer token.\n", status=403, content_type="text/plain")
    elif not getattr(request, "user", None) or not request.user.is_authenticated:
        response = HttpResponse(
            "Log in as staff, or send the METRICS_TOKEN as a bearer token.\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="django_events"'
        return response
    elif not (request.user.is_active and request.user.is_staff):
        return HttpResponse("Staff only.\n", status=403, content_type="text/plain")
    return HttpResponse(render(report()), content_type=CONTENT_TYPE)
