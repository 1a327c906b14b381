"""Attempt history: which attempts are written, how many are kept, how long, and the
dead-letter page's timeline (django_events/attempts.py, docs/internals.md)."""

from __future__ import annotations

import datetime as dt
import io
import socket
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_events import publish, retention
from django_events.models import Attempt, DeadLetter
from django_events.testing import deliver
from django_events.triage import discard
from tests.deadletters import bulk

from .admin_support import staff_client

pytestmark = pytest.mark.django_db

DL = "/admin/django_events/deadletter/"
QUERIES = 8  # the dead-letter page, timeline included; the same at 5 and 50 attempts


def rows(**filters: object) -> list[tuple[int, str, str, str]]:
    return list(
        Attempt.objects.filter(**filters)
        .order_by("id")
        .values_list("number", "outcome", "error_class", "error_message")
    )


def dead_after(attempts: int, **settings: object) -> DeadLetter:
    """One ``test.happened`` that always fails in alpha, run until it is a dead letter."""
    with override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0, "MAX_ATTEMPTS": attempts, **settings}):
        publish("test.happened", {"n": 1, "fail": True})
        deliver(["alpha"])
    return DeadLetter.objects.get()


def test_each_failed_attempt_and_the_dead_letter_are_recorded_in_order():
    dead = dead_after(3)

    assert rows() == [
        (1, "failed", "RuntimeError", "asked to fail: 1"),
        (2, "failed", "RuntimeError", "asked to fail: 1"),
        (3, "dead-lettered", "RuntimeError", "asked to fail: 1"),
    ]
    first = Attempt.objects.order_by("id").first()
    assert first is not None
    assert (first.event_id, first.group) == (dead.event_id, "alpha")
    assert first.worker.startswith(f"{socket.gethostname()}:")
    assert first.duration is not None and first.duration >= 0


def test_a_first_success_writes_nothing_a_success_after_a_failure_is_recorded(tmp_path: Path):
    with override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0}):
        plain = publish("test.happened", {"n": 1})
        flaky = publish("test.happened", {"n": 2, "fail_once": str(tmp_path / "once")})
        deliver(["alpha"])  # both in one batch: the batched path records too

    assert rows(event_id=plain.id) == []
    assert rows(event_id=flaky.id) == [
        (1, "failed", "RuntimeError", "failing once: 2"),
        (2, "handled", "", ""),
    ]


@pytest.mark.parametrize(("keep", "kept"), [(2, [3, 4]), (0, [])])
def test_only_the_newest_attempts_of_a_delivery_are_kept(keep: int, kept: list[int]):
    dead_after(4, ATTEMPT_HISTORY=keep)

    assert [number for number, *_ in rows()] == kept


def test_messages_are_truncated():
    with override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0, "MAX_ATTEMPTS": 1}):
        publish("test.happened", {"n": "x" * 5000, "fail": True})
        deliver(["alpha"])

    (attempt,) = Attempt.objects.all()
    assert len(attempt.error_message) == 1000
    assert len(DeadLetter.objects.get().error_message) > 5000, "the dead letter keeps it whole"


@pytest.mark.django_db(transaction=True)
def test_an_error_no_database_takes_as_it_is_is_recorded_escaped():
    with override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0, "MAX_ATTEMPTS": 2}):
        publish("test.happened", {"n": 1, "unstorable_error": True})
        deliver(["alpha"])

    assert [(number, outcome) for number, outcome, *_ in rows()] == [
        (1, "failed"),
        (2, "dead-lettered"),
    ]
    assert "\\ud800" in rows()[0][3]


@pytest.mark.django_db(transaction=True)
def test_retention_removes_attempts_of_resolved_events_and_keeps_those_of_open_dead_letters():
    with override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0, "MAX_ATTEMPTS": 2}):
        publish("test.happened", {"n": 1, "fail": True})
        publish("test.happened", {"n": 2, "fail": True})
        deliver(["alpha"])
    resolved, still_open = DeadLetter.objects.order_by("id")
    discard(DeadLetter.objects.filter(pk=resolved.pk), None, "not needed", actor="test")
    Attempt.objects.update(at=timezone.now() - dt.timedelta(days=2))
    out = io.StringIO()

    with override_settings(DJANGO_EVENTS={"LOG_RETENTION": 86400}):
        call_command("purge_events", "--only", retention.ATTEMPTS, stdout=out)

    assert "attempts: removed 2 older than 1d" in out.getvalue()
    assert set(Attempt.objects.values_list("event_id", flat=True)) == {still_open.event_id}


# --------------------------------------------------------------------------- the timeline


def test_the_dead_letter_page_shows_the_timeline_messages_only_with_view_payload():
    dead = dead_after(3)

    shown = staff_client("view_deadletter", "view_payload").get(f"{DL}{dead.pk}/change/")
    assert [(a.number, a.outcome) for a in shown.context["attempts"]] == [
        (1, "failed"),
        (2, "failed"),
        (3, "dead-lettered"),
    ]
    assert shown.content.count(b"asked to fail: 1") >= 3

    User.objects.all().delete()
    masked = staff_client("view_deadletter").get(f"{DL}{dead.pk}/change/")
    assert masked.content.count(b'class="de-attempt ') == 3
    assert b"asked to fail" not in masked.content
    assert b"<code>RuntimeError</code>" in masked.content


@pytest.mark.parametrize("size", [5, 50])
def test_the_timeline_costs_the_same_queries_whatever_its_length(size: int):
    (dead,) = bulk(1)
    Attempt.objects.bulk_create(
        Attempt(event_id=dead.event_id, group=dead.group, number=n, outcome="failed")
        for n in range(1, size + 1)
    )
    client = staff_client("view_deadletter", "view_payload")
    client.get(f"{DL}{dead.pk}/change/")  # warm the permission caches

    with CaptureQueriesContext(connection) as captured:
        page = client.get(f"{DL}{dead.pk}/change/")

    assert page.content.count(b'class="de-attempt ') == size
    assert len(captured) == QUERIES, [q["sql"] for q in captured.captured_queries]
