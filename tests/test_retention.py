"""Retention and ``purge_events``: old rows go, pending work never does."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import QuerySet
from django.test import override_settings
from django.utils import timezone

from django_events import publish, retention
from django_events.checks import check_events
from django_events.conf import parse
from django_events.engine.relay import Relay
from django_events.exceptions import EventsConfigurationError
from django_events.models import DeadLetter, Delivery, EventRecord, InboxRecord
from django_events.testing import deliver
from django_events.testing.factories import DeadLetterFactory
from django_events.triage import discard

from .conftest import postgres_only
from .transport_support import owed

pytestmark = pytest.mark.django_db(transaction=True)
DAY = 86400


def age(rows: QuerySet[Any], field: str, days: float) -> None:
    """Make ``rows`` look ``days`` old."""
    rows.update(**{field: timezone.now() - dt.timedelta(days=days)})


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_events", *args, stdout=out)
    return out.getvalue()


def logged() -> list[int]:
    return sorted(data["n"] for data in EventRecord.objects.values_list("data", flat=True))


# --- the event log -----------------------------------------------------------------------


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1, "LOG_RETENTION": DAY})
def test_purge_never_removes_an_event_some_group_still_has_to_handle():
    publish("test.happened", {"n": 1})
    deliver()  # 1: handled by every group
    publish("test.happened", {"n": 3, "fail_group": "alpha"})
    deliver(["alpha", "beta"])  # 3: an open dead letter for alpha
    publish("test.sequenced", {"n": 4, "fail": True}, key="k")
    deliver(["sequence"])  # 4: dead-lettered and parked, holding its key
    publish("test.happened", {"n": 5, "fail_group": "beta"})
    deliver(["alpha", "beta"])
    discard(DeadLetter.objects.filter(group="beta"), None, "obsolete", actor="test")  # 5: resolved
    publish("test.happened", {"n": 6})
    deliver()  # 6: handled, but recent
    publish("test.happened", {"n": 2})
    deliver(["alpha"])  # 2: beta's delivery is pending
    age(EventRecord.objects.exclude(data__n=6), "recorded_at", days=2)

    out = purge("--only", "events")

    assert "events: removed 2 older than 1d" in out
    assert logged() == [2, 3, 4, 6]
    assert owed("beta") == 1
    assert Delivery.objects.filter(group_name="sequence", parked=True).count() == 1


@override_settings(DJANGO_EVENTS={"LOG_RETENTION": DAY})
def test_purge_walks_the_log_in_batches():
    for n in range(7):
        publish("test.happened", {"n": n})
    deliver()
    age(EventRecord.objects.all(), "recorded_at", days=2)
    assert retention.walk("events", "default", DAY, batch=2, max_batches=2)[0] == 4
    assert "events: removed 3 " in purge("--only", "events", "--batch-size", "2")
    assert logged() == []


@override_settings(DJANGO_EVENTS={"LOG_RETENTION": DAY})
def test_a_bounded_purge_resumes_past_old_rows_it_must_keep():
    kept = DeadLetterFactory.create_batch(3)  # open ones hold their events, at the log's head
    DeadLetterFactory.create_batch(2, discarded=True)
    age(EventRecord.objects.all(), "recorded_at", days=2)
    resume: dict = {}

    def one_batch() -> int:
        removed = retention.purge_expired(["default"], max_batches=1, batch=2, resume=resume)
        return removed["events"]

    assert [one_batch(), one_batch(), one_batch()] == [0, 1, 1]
    assert resume == {("events", "default"): None, ("attempts", "default"): None}, (
        "the walks ended; the next starts over"
    )
    assert sorted(EventRecord.objects.values_list("id", flat=True)) == sorted(
        d.event_id for d in kept
    )


# --- inbox records and dead letters --------------------------------------------------------


@override_settings(DJANGO_EVENTS={"INBOX_RETENTION": 2 * DAY})
def test_inbox_records_go_by_age_unless_a_duplicate_is_still_pending():
    for n in range(3):
        publish("test.happened", {"n": n})
    deliver()
    publish("test.happened", {"n": 3})
    Relay().run_once()  # alpha still owes this one, a second copy of a handled event
    pending = EventRecord.objects.get(data__n=3)
    InboxRecord.objects.create(group_name="alpha", event_id=pending.id)
    age(InboxRecord.objects.filter(group_name="alpha"), "handled_at", days=3)

    out = purge("--only", "inbox")

    assert "inbox: removed 3 older than 2d" in out
    assert InboxRecord.objects.filter(group_name="alpha").get().event_id == pending.id
    assert InboxRecord.objects.filter(group_name="beta").count() == 3, "recent ones stay"


@override_settings(DJANGO_EVENTS={"DEAD_LETTER_RETENTION": 7 * DAY})
def test_resolved_dead_letters_go_by_the_age_of_their_resolution():
    old_discarded = DeadLetterFactory.create_batch(2, discarded=True)
    old_retried = DeadLetterFactory.create_batch(1, retried=True)
    recent = DeadLetterFactory.create_batch(1, discarded=True)
    still_open = DeadLetterFactory.create_batch(1)
    for rows, days in ((old_discarded, 10), (old_retried, 8), (recent, 1)):
        age(DeadLetter.objects.filter(pk__in=[d.pk for d in rows]), "resolved_at", days)
    age(DeadLetter.objects.filter(pk=still_open[0].pk), "last_failed_at", days=30)

    out = purge("--only", "dead-letters")

    assert "dead-letters: removed 3 older than 1w" in out
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {
        recent[0].pk,
        still_open[0].pk,
    }


# --- the command ---------------------------------------------------------------------


@override_settings(
    DJANGO_EVENTS={"LOG_RETENTION": DAY, "INBOX_RETENTION": DAY, "DEAD_LETTER_RETENTION": DAY}
)
def test_dry_run_prints_per_kind_counts_and_removes_nothing():
    for n in range(2):
        publish("test.happened", {"n": n})
    deliver()
    DeadLetterFactory(discarded=True)
    age(DeadLetter.objects.all(), "resolved_at", days=2)
    age(EventRecord.objects.all(), "recorded_at", days=2)
    age(InboxRecord.objects.all(), "handled_at", days=2)

    out = purge("--dry-run")

    assert out.splitlines() == [
        "dead-letters: would remove 1 older than 1d",
        "attempts: would remove 0 older than 1d",
        "inbox: would remove 4 older than 1d",
        "events: would remove 3 older than 1d",
        "Dry run: nothing was removed.",
    ]
    assert (EventRecord.objects.count(), InboxRecord.objects.count()) == (3, 4)
    assert DeadLetter.objects.count() == 1
    assert "events: removed 3 " in purge(), "a resolved dead letter does not hold its event"


def test_kinds_without_a_setting_are_kept_and_older_than_overrides_the_settings():
    publish("test.happened", {"n": 1})
    deliver()
    age(EventRecord.objects.all(), "recorded_at", days=40)
    age(InboxRecord.objects.all(), "handled_at", days=40)

    assert "events: kept forever (LOG_RETENTION is None)" in purge()
    assert EventRecord.objects.count() == 1

    out = purge("--older-than", "30d")
    assert "inbox: removed 2 older than 30d" in out
    assert "events: removed 1 older than 30d" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "a month"], "--older-than: 'a month' is not an age"),
        (["--older-than=-3d"], "is not an age"),
        (["--older-than", "60"], "would remove inbox records while"),
        (["--only", "outbox"], "invalid choice: 'outbox'"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], message: str):
    publish("test.happened", {"n": 1})
    deliver()
    age(InboxRecord.objects.all(), "handled_at", days=1)
    with pytest.raises(CommandError, match=message):
        purge(*args)
    assert InboxRecord.objects.count() == 2


def test_older_than_inside_the_redelivery_window_is_allowed_for_events_alone():
    publish("test.happened", {"n": 1})
    deliver()
    age(EventRecord.objects.all(), "recorded_at", days=1)
    assert "events: removed 1 older than 1m" in purge("--older-than", "60", "--only", "events")


def test_ages_are_written_in_their_largest_exact_unit():
    ages = [60, 90, 3600, 86400, 2592000, 604800, 1.5]
    assert [retention.format_age(a) for a in ages] == ["1m", "90s", "1h", "1d", "30d", "1w", "1.5s"]


def test_ages_read_units():
    assert [retention.parse_age(t) for t in ("90", "90s", "15m", "12h", "2d", "1w", "1.5h")] == [
        90,
        90,
        900,
        43200,
        172800,
        604800,
        5400,
    ]


# --- the relay applies retention ---------------------------------------------------------


@override_settings(DJANGO_EVENTS={"LOG_RETENTION": DAY, "INBOX_RETENTION": DAY})
def test_relay_applies_the_retention_settings_periodically():
    publish("test.happened", {"n": 1})
    deliver()
    age(EventRecord.objects.all(), "recorded_at", days=2)
    age(InboxRecord.objects.all(), "handled_at", days=2)
    relay = Relay()
    relay.run_once()
    assert EventRecord.objects.count() == 0
    assert InboxRecord.objects.count() == 0


@postgres_only
@override_settings(DJANGO_EVENTS={"LOG_RETENTION": DAY})
def test_one_purge_at_a_time_per_postgresql_database():
    publish("test.happened", {"n": 1})
    deliver()
    age(EventRecord.objects.all(), "recorded_at", days=2)
    other = connection.copy()  # another process purging: purge_events, or a relay
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [retention.PURGE_LOCK])
        skipped = retention.purge_expired(["default"], max_batches=1, resume={})
        assert skipped["events"] == 0 and EventRecord.objects.count() == 1
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [retention.PURGE_LOCK])
    finally:
        other.close()
    assert retention.purge_expired(["default"], max_batches=1, resume={})["events"] == 1


# --- settings and the system check -------------------------------------------------------


@pytest.mark.parametrize("key", ["INBOX_RETENTION", "DEAD_LETTER_RETENTION"])
def test_retention_settings_are_validated(key: str):
    assert getattr(parse({key: 3600}), key.lower()) == 3600
    assert getattr(parse({}), key.lower()) is None
    with pytest.raises(EventsConfigurationError, match=rf"\['{key}'\] must be a number"):
        parse({key: "30d"})


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"INBOX_RETENTION": 60}, "is 60s, but the global retry policy can redeliver"),
        # 5 attempts x 30 s leases + 1 + 2 + 4 + 8 s of backoff
        ({"INBOX_RETENTION": 165}, "up to 165s after its first delivery"),
        ({"INBOX_RETENTION": 166}, None),
        # 10 attempts x 30 s + 1 + 2 + ... + 256 s
        ({"INBOX_RETENTION": 811, "GROUPS": {"alpha": {"MAX_ATTEMPTS": 10}}}, "group 'alpha'"),
        ({"INBOX_RETENTION": 812, "GROUPS": {"alpha": {"MAX_ATTEMPTS": 10}}}, None),
        ({"INBOX_RETENTION": 1000, "LEASE": 600}, "up to 3015s"),
        ({"INBOX_RETENTION": 1, "LOG_RETENTION": 1, "DEAD_LETTER_RETENTION": 1}, "is 1s"),
        ({"LOG_RETENTION": 1, "DEAD_LETTER_RETENTION": 1}, None),
    ],
)
def test_inbox_retention_must_outlast_the_redelivery_window_e030(raw: dict, problem: str | None):
    with override_settings(DJANGO_EVENTS=raw):
        found = [m for m in check_events() if m.id == "django_events.E030"]
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0].msg, found
