"""The Grafana dashboard in docs/ queries only metrics the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from django_events import publish
from django_events.prometheus import render, report
from django_events.testing import deliver

pytestmark = pytest.mark.django_db(transaction=True)
DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def prometheus_names(name: str, kind: str, unit: str) -> set[str]:
    """OpenTelemetry's Prometheus naming: dots to underscores, the unit as a suffix (units
    in braces dropped), ``_total`` on counters, buckets, sum and count on histograms."""
    base = name.replace(".", "_") + {"s": "_seconds"}.get(unit, "")
    if kind == "Sum":
        return {f"{base}_total"}
    return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}


def test_every_metric_the_dashboard_queries_is_exported(meter_reader):
    publish("test.happened", {"n": 1, "fail_group": "beta"})
    deliver(["alpha", "beta"])
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in render(report()).splitlines()
        if not line.startswith("#")
    }
    for resource in meter_reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = type(metric.data).__name__
                exported |= prometheus_names(metric.name, kind, metric.unit)
    queried = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"django_events_[a-z_]+", target["expr"]))
    assert queried, "the dashboard queries something"
    assert queried <= exported, sorted(queried - exported)
    assert "django_events_handled_total" in queried
    assert "django_events_group_oldest_pending_age_seconds" in queried
