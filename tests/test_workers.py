"""The worker registry (django_events/workers.py): registration, heartbeats, dead and stuck
workers, pruning, ``events_status`` and the admin's Workers page (permissions, queries)."""

from __future__ import annotations

import io
import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import django_events
from django_events import workers
from django_events.conf import get_settings
from django_events.engine.worker import Worker
from django_events.exceptions import EventsConfigurationError
from django_events.models import WorkerRecord
from django_events.transports.base import Claimed

from .admin_support import staff_client
from .conftest import closing_connections, wait_until

PAGE = "/admin/django_events/workerrecord/"


def presence(name: str = "host-a:101:abc", groups: tuple[str, ...] = ("alpha",)) -> Any:
    return workers.Presence(name, list(groups), "default", "default")


def claimed(group: str = "alpha") -> Claimed:
    return Claimed(
        group=group, attempt=1, receipt=None, event_id=uuid.uuid4(), event_type="test.happened"
    )


def beat_now(p: workers.Presence) -> None:
    p._due = 0.0  # the interval has passed
    p.beat()


def by_name(name: str) -> dict:
    return next(w for w in workers.listing() if w["name"] == name)


def age(name: str, **fields: timedelta) -> None:
    """Move a row's times ``fields`` into the past, as a worker gone silent would leave them."""
    now = timezone.now()
    WorkerRecord.objects.filter(name=name).update(**{k: now - v for k, v in fields.items()})


@pytest.mark.django_db
class TestRegistry:
    def test_a_worker_registers_who_it_is(self):
        presence(groups=("alpha", "beta")).register()
        row = WorkerRecord.objects.get()
        assert (row.name, row.groups, row.transport, row.stopped_at) == (
            "host-a:101:abc",
            ["alpha", "beta"],
            "default",
            None,
        )
        assert row.service == get_settings().service and row.version == django_events.__version__
        assert row.pid > 0 and row.host
        assert by_name(row.name)["state"] == workers.LIVE

    def test_the_event_in_hand_costs_no_query_and_the_heartbeat_writes_it(self):
        p = presence()
        p.register()
        item = claimed("beta")
        with CaptureQueriesContext(connection) as captured, p.handling(item):
            assert len(captured) == 0
            beat_now(p)
            assert len(captured) == 1
        now = by_name(p.name)["current"]
        assert (now["event_id"], now["event_type"], now["group"]) == (
            str(item.event_id),
            "test.happened",
            "beta",
        )
        assert 0 <= now["running_s"] < 60
        beat_now(p)
        assert by_name(p.name)["current"] is None

    def test_the_row_is_written_at_most_once_per_heartbeat_interval(self):
        p = presence()
        p.register()
        with CaptureQueriesContext(connection) as captured:
            p.beat()  # registered just now: not due yet
            beat_now(p)
            p.beat()  # just written
        assert len(captured) == 1

    def test_a_clean_exit_marks_the_row_stopped(self):
        p = presence()
        p.register()
        with p.handling(claimed()):
            beat_now(p)
        p.stop()
        row = by_name(p.name)
        assert row["state"] == workers.STOPPED and row["stopped_at"] and row["current"] is None
        beat_now(p)  # a heartbeat racing the exit does not bring it back
        assert by_name(p.name)["state"] == workers.STOPPED

    def test_a_silent_worker_is_dead_after_dead_after_heartbeats(self):
        p = presence()
        p.register()
        limit = get_settings().workers.heartbeat * get_settings().workers.dead_after
        age(p.name, last_seen_at=timedelta(seconds=limit - 2))
        assert by_name(p.name)["state"] == workers.LIVE
        age(p.name, last_seen_at=timedelta(seconds=limit + 2))
        assert by_name(p.name)["state"] == workers.DEAD

    def test_a_handler_running_past_stuck_after_is_flagged(self):
        p = presence()
        p.register()
        with p.handling(claimed()):
            beat_now(p)
        stuck_after = get_settings().workers.stuck_after
        age(p.name, event_since=timedelta(seconds=stuck_after - 5))
        assert not by_name(p.name)["stuck"]
        age(p.name, event_since=timedelta(seconds=stuck_after + 5))
        row = by_name(p.name)
        assert row["stuck"] and row["state"] == workers.STUCK
        assert workers.listing()[0]["name"] == p.name  # stuck ones come first

    def test_a_dead_workers_event_is_not_stuck(self):
        p = presence()
        p.register()
        with p.handling(claimed()):
            beat_now(p)
        age(p.name, event_since=timedelta(hours=2), last_seen_at=timedelta(hours=1))
        row = by_name(p.name)
        assert (row["state"], row["stuck"]) == (workers.DEAD, False)
        assert 3500 < row["current"]["running_s"] < 3700  # as long as it was seen running

    def test_rows_not_seen_for_the_retention_are_pruned_when_a_worker_starts(self):
        retention = get_settings().workers.retention
        for name, silent in (("old", retention + 60), ("recent", retention - 60)):
            presence(name).register()
            age(name, last_seen_at=timedelta(seconds=silent))
        presence("new").register()
        assert set(WorkerRecord.objects.values_list("name", flat=True)) == {"recent", "new"}

    def test_a_heartbeat_after_its_row_was_pruned_registers_again(self):
        p = presence()
        p.register()
        WorkerRecord.objects.all().delete()
        beat_now(p)
        assert WorkerRecord.objects.filter(name=p.name).exists()


def test_workers_settings_are_checked():
    with override_settings(DJANGO_EVENTS={"WORKERS": {"HEARTBEAT": 2, "STUCK_AFTER": 60}}):
        conf = get_settings().workers
        assert (conf.heartbeat, conf.dead_after, conf.stuck_after) == (2.0, 3, 60.0)
    for wrong, key in (({"HEARTBEATS": 2}, "HEARTBEATS"), ({"DEAD_AFTER": 1}, "DEAD_AFTER")):
        with (
            override_settings(DJANGO_EVENTS={"WORKERS": wrong}),
            pytest.raises(EventsConfigurationError, match=key),
        ):
            get_settings()


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_registers_and_a_stopped_one_says_so():
    worker = Worker(["alpha"])
    thread = threading.Thread(target=closing_connections(worker.run))
    thread.start()
    try:
        wait_until(lambda: WorkerRecord.objects.filter(name=worker.name).exists(), what="register")
        assert by_name(worker.name)["state"] == workers.LIVE
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert by_name(worker.name)["state"] == workers.STOPPED


@pytest.mark.django_db
def test_a_once_run_is_not_registered():
    Worker(["alpha"]).run(once=True)
    assert not WorkerRecord.objects.exists()


# --------------------------------------------------------------------------- events_status


@pytest.mark.django_db
def test_events_status_shows_workers_and_flags_the_stuck_one():
    idle, busy = presence("host-a:1:idle"), presence("host-b:2:busy")
    idle.register()
    busy.register()
    with busy.handling(claimed()):
        beat_now(busy)
    age(busy.name, event_since=timedelta(seconds=get_settings().workers.stuck_after + 5))
    out = io.StringIO()
    call_command("events_status", "--json", stdout=out)
    found = {w["name"]: w for w in json.loads(out.getvalue())["workers"]}
    assert (found[idle.name]["stuck"], found[busy.name]["stuck"]) == (False, True)
    assert found[busy.name]["current"]["event_type"] == "test.happened"
    out = io.StringIO()
    call_command("events_status", stdout=out)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("  STUCK") and "test.happened" in line for line in lines), lines
    assert any(line.startswith("  LIVE") and "idle" in line for line in lines), lines


# --------------------------------------------------------------------------- admin


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("perms", "staff", "status"),
    [
        ((), True, 403),
        (("view_deadletter", "view_pause"), True, 403),
        (("view_workerrecord",), False, 302),  # not staff: the admin's login page
        (("view_workerrecord",), True, 200),
    ],
)
def test_permission_matrix(client, perms, staff, status):
    presence().register()
    staff_client(*perms, client=client, is_staff=staff)
    response = client.get(PAGE)
    assert response.status_code == status
    if status == 200:
        assert b'data-worker="host-a:101:abc"' in response.content
    index = client.get("/admin/")
    assert (b"Workers" in index.content) == (status == 200)


@pytest.mark.django_db
def test_the_page_flags_a_stuck_handler_and_a_dead_worker(client):
    stuck, dead = presence("h:1:stuck"), presence("h:2:dead")
    for p in (stuck, dead):
        p.register()
        with p.handling(claimed()):
            beat_now(p)
    age(stuck.name, event_since=timedelta(seconds=get_settings().workers.stuck_after + 5))
    age(dead.name, last_seen_at=timedelta(hours=1))
    staff_client("view_workerrecord", client=client)
    html = client.get(PAGE).content.decode()
    assert '<tr class="de-stuck" data-worker="h:1:stuck"' in html
    assert '<tr class="de-dead" data-worker="h:2:dead"' in html


@pytest.mark.django_db
def test_the_page_costs_the_same_queries_at_5_and_50_workers(client):
    staff_client("view_workerrecord", client=client)
    client.get(PAGE)  # warm the permission caches

    def queries(size: int) -> int:
        WorkerRecord.objects.all().delete()
        for n in range(size):
            p = presence(f"h:{n}:x")
            p.register()
            with p.handling(claimed()):
                beat_now(p)
        with CaptureQueriesContext(connection) as captured:
            page = client.get(PAGE)
        assert len(page.context["workers"]) == size
        return len(captured)

    assert queries(5) == queries(50)
