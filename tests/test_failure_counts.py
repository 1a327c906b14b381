"""Failure-group counters: kept exact by triggers whoever writes dead letters, and read
instead of grouping the dead-letter table."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Count
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from django_events import failure_counts, triage
from django_events.models import DeadLetter, FailureCount
from django_events.status import collect
from tests.deadletters import bulk, failing

pytestmark = pytest.mark.django_db


def counted() -> dict[tuple[str, str], int]:
    return {
        (row.group, row.fingerprint): row.open_count
        for row in FailureCount.objects.all()
        if row.open_count
    }


def exact() -> dict[tuple[str, str], int]:
    rows = (
        DeadLetter.objects.filter(state="open")
        .values_list("group", "fingerprint")
        .annotate(n=Count("id"))
    )
    return {(group, fp): n for group, fp, n in rows}


def test_counters_follow_every_kind_of_write():
    values = bulk(4, error_class="ValueError")
    keys = bulk(3, error_class="KeyError", group="beta")
    bulk(2, error_class="ValueError", state="discarded")
    assert counted() == exact() and sum(counted().values()) == 7

    root = User.objects.create_superuser("root", password="pw")  # noqa: S106
    triage.retry(values[:1], root)
    triage.discard(keys[:2], root, "test orders")
    assert counted() == exact() and sum(counted().values()) == 4

    DeadLetter.objects.filter(pk=values[1].pk).update(state="discarded")  # a bulk update
    DeadLetter.objects.filter(pk=values[0].pk).update(state="open")  # reopened
    DeadLetter.objects.filter(pk=values[2].pk).update(fingerprint="moved0000000000")
    DeadLetter.objects.filter(pk=keys[2].pk).update(group="gamma")
    DeadLetter.objects.filter(pk=values[3].pk).delete()
    DeadLetter.objects.filter(state="discarded").delete()  # resolved ones: no change
    assert counted() == exact()
    assert counted()[("alpha", "moved0000000000")] == 1
    assert ("beta", keys[0].fingerprint) not in counted()

    DeadLetter.objects.all().delete()
    assert FailureCount.objects.count() == 0  # emptied counters go


def test_worker_dead_letters_are_counted_with_their_details():
    dead = failing({"n": 1}, groups=("alpha", "beta"))
    groups = list(failure_counts.failure_groups())
    assert counted() == exact() and len(dead) == 2
    assert sum(g["count"] for g in groups) == 2
    one = next(g for g in groups if g["fingerprint"] == dead[0].fingerprint)
    assert one["error_class"] == dead[0].error_class
    assert one["example_id"] in {d.pk for d in dead}
    assert collect()["groups"]["alpha"]["dead"] == 1


def test_first_seen_restarts_once_a_group_is_emptied():
    old = bulk(1)[0]
    DeadLetter.objects.filter(pk=old.pk).update(state="retried")
    new = bulk(1)[0]
    group = failure_counts.failure_groups().get()
    assert group["count"] == 1 and group["first_seen"] == new.first_failed_at


def test_recount_repairs_drifted_counters():
    bulk(5)
    FailureCount.objects.update(open_count=99)
    FailureCount.objects.create(
        group="ghost", fingerprint="f" * 16, open_count=3, first_seen=now(), last_seen=now()
    )
    assert failure_counts.recount() == 5
    assert counted() == exact()
    FailureCount.objects.update(open_count=42)
    out = io.StringIO()
    call_command("dead_letters", "recount", stdout=out)
    assert out.getvalue() == "Recounted: 5 open dead letters.\n" and counted() == exact()


def test_dead_letter_pages_never_group_the_dead_letter_table():
    bulk(30, error_class="ValueError")
    bulk(20, error_class="KeyError", func="load")
    root = User.objects.create_superuser("root", password="pw")  # noqa: S106
    client = Client()
    client.force_login(root)
    for url in (
        "/admin/django_events/failuregroup/",
        "/admin/django_events/deadletter/",
        "/admin/django_events/queuestatus/",
    ):
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        grouped = [
            q["sql"]
            for q in captured.captured_queries
            if "GROUP BY" in q["sql"] and "django_events_deadletter" in q["sql"]
        ]
        assert grouped == [], url
    page = client.get("/admin/django_events/failuregroup/")
    assert [g["count"] for g in page.context["groups"]] == [30, 20]


@pytest.mark.django_db(transaction=True)
def test_a_triage_batch_locks_its_counters_up_front_on_postgresql():
    """Two batches over the same failure groups must not take the counters in different
    orders (a deadlock PostgreSQL would break by aborting one)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    import psycopg

    one = bulk(1, error_class="ValueError")[0]
    two = bulk(1, error_class="KeyError")[0]
    settings = connection.settings_dict
    other = psycopg.connect(
        dbname=settings["NAME"],
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        autocommit=True,
    )
    try:
        with transaction.atomic():
            failure_counts.lock(
                [(one.group, one.fingerprint), (two.group, two.fingerprint)], "default"
            )
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute(
                    "SELECT 1 FROM django_events_failure_count WHERE fingerprint = %s "
                    "FOR UPDATE NOWAIT",
                    [two.fingerprint],
                )
    finally:
        other.close()
