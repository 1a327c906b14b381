"""Per-minute counts written by the workers, and the admin's charts drawn from them."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from django_events import publish
from django_events.charts import series
from django_events.conf import parse
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.exceptions import EventsConfigurationError
from django_events.models import MinuteStat
from django_events.rollup import DEAD, FAILED, HANDLED, Rollup, minute_of
from django_events.transports import transports

from .admin_support import staff_client

pytestmark = pytest.mark.django_db(transaction=True)

NOW = 1_800_000_000.0  # a fixed wall clock: 2027-01-15 08:00 UTC
CHARTS = "/admin/django_events/minutestat/"


def rollup(groups: tuple[str, ...] = ("alpha",), now: float = NOW) -> Rollup:
    return Rollup(transports["default"], groups, clock=lambda: now)


def flushed(counting: Rollup) -> None:
    """A flush and the lag sample it starts, on a thread of its own on PostgreSQL."""
    counting.flush()
    assert counting.wait(10), "the lag sample did not end"


def stored(group: str = "alpha") -> dict[int, tuple[int, int, int, int | None]]:
    return {
        row.minute: (row.handled, row.failed, row.dead, row.pending)
        for row in MinuteStat.objects.filter(group=group)
    }


def test_two_workers_flushing_the_same_minute_add_their_counts():
    first, second = rollup(), rollup()
    for _ in range(3):
        first.count("alpha", HANDLED)
    first.count("alpha", FAILED)
    second.count("alpha", HANDLED)
    second.count("alpha", DEAD)
    second.count("beta", HANDLED)  # a group this rollup does not sample still counts
    flushed(first)
    flushed(second)
    first.count("alpha", HANDLED)  # the same minute, flushed again
    first.flush(sample=False)
    minute = minute_of(NOW)
    assert stored() == {minute: (5, 1, 1, 0)}
    assert stored("beta") == {minute: (1, 0, 0, None)}
    assert first.counts == {} and second.counts == {}


def test_a_worker_flushes_at_most_once_a_minute(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("django_events.rollup.time.monotonic", lambda: clock[0])
    counting = rollup()
    counting.count("alpha", HANDLED)
    clock[0] += 59
    counting.maybe_flush()
    assert not MinuteStat.objects.exists()
    clock[0] += 1
    counting.maybe_flush()
    counting.count("alpha", HANDLED)
    counting.maybe_flush()
    assert counting.wait(10)
    assert stored()[minute_of(NOW)][:3] == (1, 0, 0)
    assert counting.counts == {(minute_of(NOW), "alpha"): [1, 0, 0]}


def test_counts_land_in_the_minute_they_happened():
    now = [NOW]
    counting = Rollup(transports["default"], ["alpha"], clock=lambda: now[0])
    counting.count("alpha", HANDLED)
    now[0] += 60
    counting.count("alpha", HANDLED)
    counting.count("alpha", HANDLED)
    counting.flush(sample=False)
    assert stored() == {minute_of(NOW): (1, 0, 0, None), minute_of(NOW) + 1: (2, 0, 0, None)}


def test_lag_sample_is_taken_by_the_first_worker_of_the_minute_only(monkeypatch):
    for n in range(3):
        publish("test.happened", {"n": n})
    Relay(transports["default"]).run_once()
    first = rollup(("alpha", "beta"))
    flushed(first)
    row = MinuteStat.objects.get(group="alpha")
    assert (row.pending, row.handled) == (3, 0)
    assert row.oldest_pending_age_s is not None and row.oldest_pending_age_s >= 0
    assert MinuteStat.objects.get(group="beta").pending == 3
    second = rollup(("alpha", "beta"))
    asked: list[Sequence[str]] = []
    monkeypatch.setattr(second.transport, "status", lambda groups: asked.append(groups))
    flushed(second)
    assert asked == [], "a second worker sampled the lag of a minute that had its sample"
    monkeypatch.undo()
    later = rollup(("alpha",), now=NOW + 60)
    flushed(later)
    assert stored()[minute_of(NOW) + 1][3] == 3


def test_flush_deletes_minutes_older_than_chart_retention():
    now = minute_of(NOW)
    MinuteStat.objects.bulk_create(
        [MinuteStat(minute=now - age, group="alpha", handled=1) for age in (0, 119, 121, 5000)]
    )
    with override_settings(DJANGO_EVENTS={"CHART_RETENTION": 7200}):
        flushed(rollup())
    assert sorted(stored()) == [now - 119, now]
    with override_settings(DJANGO_EVENTS={"CHART_RETENTION": None}):
        MinuteStat.objects.create(minute=now - 10_000, group="alpha", handled=1)
        flushed(rollup())
    assert now - 10_000 in stored()


def test_chart_retention_defaults_to_48_hours_and_names_itself_when_wrong():
    assert parse({}).chart_retention == 48 * 3600
    assert parse({"CHART_RETENTION": None}).chart_retention is None
    with pytest.raises(EventsConfigurationError, match=r"\['CHART_RETENTION'\]"):
        parse({"CHART_RETENTION": "48h"})


def test_chart_retention_zero_turns_the_counts_off():
    with override_settings(DJANGO_EVENTS={"CHART_RETENTION": 0}):
        counting = rollup()
        counting.count("alpha", HANDLED)
        counting.flush()
    assert not MinuteStat.objects.exists() and counting.counts == {}


def test_a_failed_write_keeps_the_counts_for_the_next_flush():
    counting = rollup()
    counting.count("alpha", HANDLED)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_events_minute_stat RENAME TO minute_stat_away")
    try:
        flushed(counting)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE minute_stat_away RENAME TO django_events_minute_stat")
    counting.count("alpha", HANDLED)
    assert counting.counts == {(minute_of(NOW), "alpha"): [2, 0, 0]}
    flushed(counting)
    assert stored()[minute_of(NOW)][:3] == (2, 0, 0)


def test_counts_are_written_when_the_lag_cannot_be_sampled():
    counting = rollup()
    counting.count("alpha", HANDLED)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_events_delivery RENAME TO delivery_away")
    try:
        flushed(counting)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE delivery_away RENAME TO django_events_delivery")
    assert stored() == {minute_of(NOW): (1, 0, 0, None)}


def test_worker_counts_handled_failed_and_dead_and_writes_them_when_it_stops():
    publish("test.happened", {"n": 1})
    publish("test.happened", {"n": 2, "fail_group": "alpha"})
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 0}):
        worker = Worker(["alpha"])
        worker.run(once=True, wait_for_retries=1)
    totals = [0, 0, 0]
    for handled, failed, dead, _ in stored().values():
        totals = [totals[0] + handled, totals[1] + failed, totals[2] + dead]
    assert totals == [1, 2, 1]


# --------------------------------------------------------------------------- the page


@pytest.mark.parametrize(
    ("perms", "status"),
    [((), 403), (("view_deadletter",), 403), (("view_minutestat",), 200)],
)
def test_charts_need_their_view_permission(perms: tuple[str, ...], status: int):
    assert staff_client(*perms).get(CHARTS).status_code == status


def test_charts_are_linked_from_the_app_index_and_the_status_page():
    client = staff_client("view_minutestat", "view_deadletter")
    assert CHARTS.encode() in client.get("/admin/django_events/").content
    status = client.get("/admin/django_events/queuestatus/").content
    assert f'<a id="de-charts" href="{CHARTS}">'.encode() in status


def fill(groups: int, minutes: int) -> None:
    now = minute_of(NOW)
    MinuteStat.objects.bulk_create(
        MinuteStat(
            minute=now - m,
            group=f"g{g:02}",
            handled=m + 1,
            failed=g % 3,
            dead=g % 2,
            pending=m,
            oldest_pending_age_s=m * 1.5,
        )
        for g in range(groups)
        for m in range(minutes)
    )


@pytest.mark.parametrize("window", ["1h", "24h"])
def test_chart_page_costs_the_same_queries_at_5_and_50_groups(window: str, monkeypatch):
    monkeypatch.setattr("django_events.charts.time.time", lambda: NOW)
    client = staff_client("view_minutestat")
    counts = []
    for groups in (5, 50):
        MinuteStat.objects.all().delete()
        fill(groups, 90)
        with CaptureQueriesContext(connection) as queries:
            page = client.get(CHARTS, {"window": window})
        assert page.status_code == 200
        assert page.content.count(b'class="de-chart"') == 3 * groups
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
    assert counts[0] <= 5, [q["sql"] for q in queries]


def test_chart_page_draws_the_stored_counts(monkeypatch):
    monkeypatch.setattr("django_events.charts.time.time", lambda: NOW)
    now = minute_of(NOW)
    MinuteStat.objects.bulk_create(
        [
            MinuteStat(minute=now - 2, group="alpha", handled=7, failed=2, dead=1, pending=4),
            MinuteStat(minute=now, group="alpha", handled=3, pending=1, oldest_pending_age_s=9),
            MinuteStat(minute=now - 61, group="alpha", handled=1000),  # outside the hour
            MinuteStat(minute=now, group="z<b>x</b>", handled=1),
        ]
    )
    page = staff_client("view_minutestat").get(CHARTS).content.decode()
    assert re.findall(r'class="de-bar de-handled"[^>]*data-value="(\d+)"', page) == ["7", "3", "1"]
    assert re.findall(r'class="de-bar de-dead"[^>]*data-value="(\d+)"', page) == ["1"]
    assert "10 handled" in page and "1000" not in page
    assert "<b>x</b>" not in page and "z&lt;b&gt;x&lt;/b&gt;" in page
    day = login_again().get(CHARTS, {"window": "24h"}).content.decode()
    assert re.findall(r'class="de-bar de-handled"[^>]*data-value="(\d+)"', day)[:3] == [
        "1000",  # 15-minute buckets: now - 61 is the fifth bucket back, now - 2 the first
        "7",
        "3",
    ]


def test_chart_page_shows_one_group_when_asked(monkeypatch):
    monkeypatch.setattr("django_events.charts.time.time", lambda: NOW)
    fill(5, 10)
    page = staff_client("view_minutestat").get(CHARTS, {"window": "6h", "group": "g03"})
    assert page.content.count(b'class="de-chart"') == 3
    assert b'<tr data-group="g03">' in page.content
    assert b'href="?window=24h&amp;group=g03"' in page.content


def test_a_lag_sample_with_nothing_pending_is_drawn_at_age_zero():
    now = minute_of(NOW)
    MinuteStat.objects.bulk_create(
        [
            MinuteStat(minute=now - 1, group="alpha", pending=2, oldest_pending_age_s=4.5),
            MinuteStat(minute=now, group="alpha", pending=0, oldest_pending_age_s=None),
            MinuteStat(minute=now - 2, group="alpha", handled=1),  # no sample that minute
        ]
    )
    (alpha,) = series("1h", now=NOW)
    assert alpha.pending[-3:] == [None, 2, 0]
    assert alpha.oldest[-3:] == [None, 4.5, 0.0]
    assert alpha.handled[-3:] == [1, 0, 0]


def login_again() -> Client:
    client = Client()
    client.force_login(User.objects.get(username="op"))
    return client
