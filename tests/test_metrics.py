"""Metrics: the Prometheus endpoint and command agree with ``events_status --json``, and
the OpenTelemetry instruments count what the worker did."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from django_events import publish
from django_events.engine.relay import Relay
from django_events.testing import deliver
from django_events.transports import transports

from .transport_support import unrelayed

parser = pytest.importorskip("prometheus_client.parser")
pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "a-scrapers-secret-token"  # noqa: S105 - test-only


def some_state() -> None:
    """Pending, retrying and dead events in several groups, and an unrelayed outbox row."""
    with transaction.atomic():
        publish("test.happened", {"n": 1, "fail_group": "beta"})
        publish("test.happened", {"n": 2})
        publish("test.limited", {"n": 3, "fail": True})
    deliver(["beta", "limited"])  # beta and limited fail until they dead-letter
    publish("test.chained", {"n": 4})
    Relay().run_once()  # alpha and chain keep theirs pending
    unrelayed(data={"n": 5})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in parser.text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def status_json() -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.suppress(SystemExit):  # exit 2 when unhealthy; printed either way
        call_command("events_status", "--json", stdout=out)
    return json.loads(out.getvalue())


GAUGES = {  # the documented mapping, written out: not read from the code under test
    "django_events_group_pending": "pending",
    "django_events_group_in_flight": "in_flight",
    "django_events_group_retrying": "retrying",
    "django_events_group_parked": "parked",
    "django_events_group_dead_letters": "dead",
    "django_events_group_oldest_pending_age_seconds": "oldest_pending_age_s",
    "django_events_group_lagging": "lagging",
}


def assert_matches(found: dict, report: dict[str, Any]) -> None:
    assert report["groups"], "the state has groups"
    for group, values in report["groups"].items():
        for name, field in GAUGES.items():
            expected = float(values[field] or 0)
            got = found[(name, (("group", group),))]
            if field == "oldest_pending_age_s":
                assert got == pytest.approx(expected, abs=5), (group, field)
            else:
                assert got == expected, (group, field)
    assert found[("django_events_outbox_unrelayed", ())] == report["outbox"]["unrelayed"] == 1
    assert found[("django_events_healthy", ())] == float(report["healthy"])
    info = ("django_events_info", (("service", report["service"]), ("transport", "default")))
    assert found[info] == 1


def test_the_endpoint_parses_and_agrees_with_events_status_json(client):
    some_state()
    staff = User.objects.create_user("ops", is_staff=True)
    client.force_login(staff)
    response = client.get("/metrics/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(response.content.decode())
    report = status_json()
    assert report["groups"]["beta"]["dead"] == 1
    assert report["groups"]["alpha"]["pending"] == 2
    assert_matches(found, report)


def test_events_status_prometheus_agrees_with_its_json():
    some_state()
    out = io.StringIO()
    call_command("events_status", "--format", "prometheus", stdout=out)  # exits 0: no raise
    assert_matches(samples(out.getvalue()), status_json())


def test_anonymous_and_non_staff_requests_are_refused(client):
    response = client.get("/metrics/")
    assert response.status_code == 401
    assert "Bearer" in response["WWW-Authenticate"]
    client.force_login(User.objects.create_user("someone"))
    assert client.get("/metrics/").status_code == 403


def test_a_bearer_token_is_let_in_and_a_wrong_one_refused(client, settings):
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "METRICS_TOKEN": TOKEN}
    assert client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 403
    assert client.get("/metrics/").status_code == 401


def test_without_a_token_setting_a_bearer_header_is_not_enough(client):
    assert client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 401


def test_a_short_metrics_token_is_refused_by_name(settings):
    from django_events.conf import get_settings
    from django_events.exceptions import EventsConfigurationError

    with (
        override_settings(DJANGO_EVENTS={"METRICS_TOKEN": "short"}),
        pytest.raises(EventsConfigurationError, match="METRICS_TOKEN"),
    ):
        get_settings()


def collected(meter_reader: Any) -> dict[tuple[str, tuple], Any]:
    """Every data point the reader collects now, by (instrument, sorted attributes)."""
    points: dict[tuple[str, tuple], Any] = {}
    data = meter_reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points[(metric.name, tuple(sorted(point.attributes.items())))] = point
    return points


def test_the_worker_counts_what_it_did(meter_reader):
    publish("test.happened", {"n": 1, "fail_group": "beta"})
    deliver(["alpha", "beta"])
    points = collected(meter_reader)
    alpha = (("group", "alpha"), ("type", "test.happened"))
    beta = (("group", "beta"), ("type", "test.happened"))
    assert points[("django_events.published", (("type", "test.happened"),))].value == 1
    relayed = points.get(("django_events.relayed", (("database", "default"),)))
    # The log transport's publish() writes the log row itself: the relay moves nothing.
    assert (relayed.value if relayed else 0) == (0 if transports["default"].reads_log else 1)
    assert points[("django_events.handled", alpha)].value == 1
    assert ("django_events.handled", beta) not in points
    assert points[("django_events.failed", beta)].value == 5
    assert points[("django_events.retried", beta)].value == 4
    assert points[("django_events.dead_lettered", beta)].value == 1
    duration = points[("django_events.handler.duration", alpha)]
    assert duration.count == 1
    # seconds, with sub-second resolution: not the SDK's default, millisecond-sized buckets
    assert len([bound for bound in duration.explicit_bounds if 0 < bound < 1]) >= 5
    latency = points[("django_events.delivery.latency", alpha)]
    assert latency.count == 1
    assert 0 <= latency.sum < 60


def test_counters_are_totals_since_start_at_every_collection(meter_reader):
    """The counters are summed in the process and read at collection (docs/observability.md,
    "OpenTelemetry counters and histograms"): each collection sees the running total."""
    alpha = ("django_events.handled", (("group", "alpha"), ("type", "test.happened")))
    published = ("django_events.published", (("type", "test.happened"),))
    publish("test.happened", {"n": 1})
    deliver(["alpha"])
    first = collected(meter_reader)
    assert (first[alpha].value, first[published].value) == (1, 1)
    publish("test.happened", {"n": 2})
    publish("test.happened", {"n": 3})
    deliver(["alpha"])
    second = collected(meter_reader)
    assert (second[alpha].value, second[published].value) == (3, 3)


def test_a_meter_provider_set_after_the_first_publish_is_used(request):
    """metrics_enabled() keeps its answer while the API's provider stays the same
    (instrumentation._metrics_seen): an SDK installed later must still be counted into."""
    pytest.importorskip("opentelemetry.sdk")
    publish("test.happened", {"n": 1})  # no SDK yet: counted nowhere
    meter_reader = request.getfixturevalue("meter_reader")
    publish("test.happened", {"n": 2})
    points = collected(meter_reader)
    assert points[("django_events.published", (("type", "test.happened"),))].value == 1
