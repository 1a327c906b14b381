"""The admin: triage with permissions and an audit trail, nothing else editable, payloads
need a permission, and changelists at a constant number of queries."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.contrib import admin as django_admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from django_events import publish
from django_events.models import DeadLetter, EventRecord
from django_events.status import collect
from django_events.testing import deliver
from tests.deadletters import bulk, failing
from tests.testapp.models import Effect

from .admin_support import staff_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def dead_letter() -> DeadLetter:
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1}):
        publish("test.happened", {"n": 1, "fail": True, "secret": "4111-1111"})
        deliver(["alpha"])
    return DeadLetter.objects.get()


def test_dead_letter_pages_render_without_payload_for_plain_viewers(dead_letter: DeadLetter):
    client = staff_client("view_deadletter", "view_eventrecord")
    listing = client.get("/admin/django_events/deadletter/")
    assert listing.status_code == 200 and b"RuntimeError" in listing.content
    detail = client.get(f"/admin/django_events/deadletter/{dead_letter.pk}/change/")
    assert detail.status_code == 200
    assert b"Traceback" not in detail.content and b"hidden: needs" in detail.content
    event = client.get(f"/admin/django_events/eventrecord/{dead_letter.event_id}/change/")
    assert b"4111-1111" not in event.content


def test_payload_and_traceback_are_shown_with_view_payload(dead_letter: DeadLetter):
    client = staff_client("view_deadletter", "view_eventrecord", "view_payload")
    detail = client.get(f"/admin/django_events/deadletter/{dead_letter.pk}/change/")
    assert b"Traceback" in detail.content
    event = client.get(f"/admin/django_events/eventrecord/{dead_letter.event_id}/change/")
    assert b"4111-1111" in event.content


def test_nobody_adds_or_edits_events_by_hand(dead_letter: DeadLetter):
    admin = User.objects.create_superuser("root", password="pw")  # noqa: S106
    client = Client()
    client.force_login(admin)
    assert client.get("/admin/django_events/deadletter/add/").status_code == 403
    response = client.post(
        f"/admin/django_events/eventrecord/{dead_letter.event_id}/change/", {"type": "x.y"}
    )
    assert response.status_code == 403
    assert EventRecord.objects.get(id=dead_letter.event_id).type == "test.happened"


# --------------------------------------------------------------------------- triage admin

DL = "/admin/django_events/deadletter/"
GROUPS = "/admin/django_events/failuregroup/"
EVENTS = "/admin/django_events/eventrecord/"
VIEW = ("view_deadletter", "view_eventrecord")


@contextmanager
def page_size(model: type, size: int):
    model_admin = django_admin.site._registry[model]
    before = model_admin.list_per_page
    model_admin.list_per_page = size
    try:
        yield
    finally:
        model_admin.list_per_page = before


def queries(client: Client, url: str) -> tuple[int, bytes]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response
    return len(captured), response.content


@pytest.mark.parametrize(
    ("url", "model", "expected"),
    [
        (DL, DeadLetter, 8),
        (DL + "?state__exact=open&group=alpha&type=test.happened", DeadLetter, 8),
        (DL + "?q=order", DeadLetter, 8),
        (DL + "?q=k1", DeadLetter, 8),
        (EVENTS, EventRecord, 9),
        (
            EVENTS + "?type=test.happened&occurred_at__gte=2000-01-01%2000:00:00%2B00:00",
            EventRecord,
            9,
        ),
    ],
)
def test_changelists_issue_a_constant_number_of_queries(url: str, model: type, expected: int):
    bulk(30, error_class="ValueError")
    bulk(30, group="beta", handler="tests.testapp.events.beta", key="k1")
    client = staff_client(*VIEW, "view_payload")  # error-message search needs it
    client.get(url)  # warm the content-type and permission caches of this process
    with page_size(model, 5):
        small, content = queries(client, url)
    with page_size(model, 50):
        large, _ = queries(client, url)
    assert b"<tbody>" in content
    assert small == large == expected


def test_changelist_lists_what_failed_with_its_columns_and_filters():
    bulk(3, error_class="shop.errors.CrmDown", group="crm", handler="shop.events.sync")
    client = staff_client(*VIEW, "view_payload")  # the message column needs it
    content = client.get(DL).content.decode()
    for text in (
        "test.happened",
        "crm",
        "shop.events.sync",
        "shop.errors.CrmDown",
        "CrmDown for order",
        "First failed at",
        "Age",
        "By failure group",
        "By group",
        "By event type",
        "By error class",
        "By state",
        "By last failed at",
    ):
        assert text in content, text


def test_search_by_event_id_key_and_message():
    one = bulk(1, key="order-7")[0]
    bulk(2, error_class="KeyError")
    client = staff_client(*VIEW, "view_payload")  # words of the message need it
    assert client.get(DL, {"q": str(one.event_id)}).context["cl"].result_count == 1
    assert client.get(DL, {"q": "order-7"}).context["cl"].result_count == 1
    assert client.get(DL, {"q": "KeyError for"}).context["cl"].result_count == 2
    assert client.get(DL, {"q": "nothing like it"}).context["cl"].result_count == 0


def test_filters_narrow_by_group_type_error_state_and_fingerprint():
    a = bulk(2, error_class="ValueError")
    bulk(3, group="beta", handler="tests.testapp.events.beta", state="retried")
    bulk(1, event_type="test.other", error_class="KeyError")
    client = staff_client(*VIEW)

    def count(**params: str) -> int:
        return client.get(DL, params).context["cl"].result_count

    assert count() == 6
    assert count(group="beta") == 3
    assert count(type="test.other") == 1
    assert count(error_class="ValueError") == 2
    assert count(state__exact="retried") == 3
    assert count(fingerprint=a[0].fingerprint) == 2


def test_detail_shows_envelope_links_and_attempts(dead_letter: DeadLetter):
    client = staff_client(*VIEW, "view_payload")
    content = client.get(f"{DL}{dead_letter.pk}/change/").content.decode()
    event = dead_letter.event
    assert f"{EVENTS}{event.id}/change/" in content
    assert f"{EVENTS}?q={event.correlation_id}" in content
    assert "Traceback (most recent call last)" in content and "&quot;secret&quot;" in content
    assert "asked to fail: 1" in content  # the delivery row's last error, or the message
    assert "Attempts" in content and "Resolution" in content


def test_dead_letter_whose_event_left_the_log_is_still_listed_and_shown():
    dead = bulk(1)[0]
    EventRecord.objects.filter(id=dead.event_id).delete()
    client = staff_client(*VIEW, "view_payload")
    assert client.get(DL).context["cl"].result_count == 1
    detail = client.get(f"{DL}{dead.pk}/change/")
    assert detail.status_code == 200 and b"not in the event log" in detail.content


# The permission matrix: who sees which button, and what a direct POST does.
MATRIX = {
    "viewer": (VIEW, {"retry": 403, "discard": 403}),
    "retrier": ((*VIEW, "retry_deadletter"), {"retry": 302, "discard": 403}),
    "discarder": ((*VIEW, "discard_deadletter"), {"retry": 403, "discard": 302}),
    "both": ((*VIEW, "retry_deadletter", "discard_deadletter"), {"retry": 302, "discard": 302}),
    "retry without view": (("retry_deadletter",), {"retry": 403, "discard": 403}),
}


@pytest.mark.parametrize("role", list(MATRIX))
@pytest.mark.parametrize("action", ["retry", "discard"])
def test_permission_matrix_for_one_dead_letter(role: str, action: str):
    perms, expected = MATRIX[role]
    dead = bulk(1)[0]
    client = staff_client(*perms)
    detail = client.get(f"{DL}{dead.pk}/change/")
    if "view_deadletter" in perms:
        shown = f'id="de-{action}"'.encode() in detail.content
        assert shown == (expected[action] == 302)
    response = client.post(f"{DL}{dead.pk}/{action}/", {"confirm": "yes", "reason": "why"})
    assert response.status_code == expected[action]
    dead.refresh_from_db()
    want = {"retry": "retried", "discard": "discarded"}[action]
    assert dead.state == (want if expected[action] == 302 else "open")
    assert LogEntry.objects.count() == (1 if expected[action] == 302 else 0)


@pytest.mark.parametrize("role", list(MATRIX))
@pytest.mark.parametrize("action", ["retry", "discard"])
def test_permission_matrix_for_a_failure_group_and_the_changelist_action(role: str, action: str):
    perms, expected = MATRIX[role]
    rows = bulk(2)
    client = staff_client(*perms)
    page = client.get(GROUPS)
    if "view_deadletter" in perms:
        assert page.status_code == 200
        assert (f"/{action}/".encode() in page.content) == (expected[action] == 302)
    response = client.post(
        f"{GROUPS}{rows[0].fingerprint}/{action}/", {"confirm": "yes", "reason": "why"}
    )
    assert response.status_code == expected[action]
    listing = client.post(
        DL,
        {
            "action": f"{action}_selected",
            "_selected_action": [r.pk for r in rows],
            "confirm": "yes",
            "reason": "why",
        },
    )
    assert listing.status_code in (200, 302, 403)
    states = set(DeadLetter.objects.values_list("state", flat=True))
    assert (
        states == ({"retried"} if action == "retry" else {"discarded"})
        if expected[action] == 302
        else states == {"open"}
    )


def test_posts_need_a_csrf_token():
    dead = bulk(1)[0]
    user = User.objects.create_superuser("root", password="pw")  # noqa: S106
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(f"{DL}{dead.pk}/retry/", {"confirm": "yes"})
    assert response.status_code == 403 and b"CSRF" in response.content
    dead.refresh_from_db()
    assert dead.state == "open"


def test_retry_from_the_detail_page_runs_the_handler_again_and_is_logged(tmp_path: Path):
    flag = tmp_path / "broken"
    flag.write_text("")
    dead = failing({"fail": False, "fail_if_exists": str(flag)}, groups=("alpha", "beta"))
    alpha = next(d for d in dead if d.group == "alpha")
    flag.unlink()
    client = staff_client(*VIEW, "retry_deadletter")
    response = client.post(f"{DL}{alpha.pk}/retry/", {"confirm": "yes", "reason": "fixed"})
    assert response.status_code == 302
    deliver(["alpha", "beta"])
    assert list(Effect.objects.values_list("group", flat=True)) == ["alpha"]
    entry = LogEntry.objects.get()
    assert entry.user.username == "op" and "fixed" in entry.change_message
    history = client.get(f"{DL}{alpha.pk}/history/")
    assert b"fixed" in history.content


def test_get_shows_a_confirmation_and_changes_nothing():
    rows = bulk(3)
    client = staff_client(*VIEW, "retry_deadletter", "discard_deadletter")
    page = client.get(f"{GROUPS}{rows[0].fingerprint}/retry/")
    assert page.status_code == 200 and b"re-runs the handler" in page.content
    assert b"Yes, retry 3" in page.content
    action = client.post(DL, {"action": "retry_selected", "_selected_action": [rows[0].pk]})
    assert action.status_code == 200 and b"Yes, retry 1" in action.content
    assert set(DeadLetter.objects.values_list("state", flat=True)) == {"open"}


def test_discard_needs_a_reason_that_is_kept():
    dead = bulk(1)[0]
    client = staff_client(*VIEW, "discard_deadletter")
    response = client.post(f"{DL}{dead.pk}/discard/", {"confirm": "yes", "reason": " "})
    assert response.status_code == 200 and b"needs a reason" in response.content
    dead.refresh_from_db()
    assert dead.state == "open"
    client.post(f"{DL}{dead.pk}/discard/", {"confirm": "yes", "reason": "test order"})
    dead.refresh_from_db()
    assert (dead.state, dead.reason, dead.resolved_by) == ("discarded", "test order", "op")


def test_resolved_rows_stay_visible_under_the_state_filter():
    bulk(1, state="retried")
    bulk(1, state="discarded")
    bulk(1)
    client = staff_client(*VIEW)
    assert client.get(DL).context["cl"].result_count == 3
    for state in ("open", "retried", "discarded"):
        assert client.get(DL, {"state__exact": state}).context["cl"].result_count == 1


def test_failure_groups_page_groups_open_dead_letters_by_cause():
    bulk(4, error_class="ValueError")
    bulk(2, error_class="KeyError", func="load")
    bulk(5, error_class="ValueError", state="discarded")
    client = staff_client(*VIEW, "view_payload")  # the example's message needs it
    response = client.get(GROUPS)
    groups = response.context["groups"]
    assert [(g["error_class"], g["count"]) for g in groups] == [("ValueError", 4), ("KeyError", 2)]
    assert all(g["example"] is not None for g in groups)
    assert b"ValueError for order" in response.content


def test_failure_group_bulk_retry_acts_on_that_group_only():
    target = bulk(3, error_class="ValueError")
    other = bulk(2, error_class="KeyError")
    client = staff_client(*VIEW, "retry_deadletter")
    client.post(f"{GROUPS}{target[0].fingerprint}/retry/", {"confirm": "yes"})
    assert set(
        DeadLetter.objects.filter(fingerprint=target[0].fingerprint).values_list("state", flat=True)
    ) == {"retried"}
    assert set(
        DeadLetter.objects.filter(fingerprint=other[0].fingerprint).values_list("state", flat=True)
    ) == {"open"}


def test_status_page_shows_the_numbers_of_events_status():
    failing({"n": 1})
    publish("test.happened", {"n": 2})
    client = staff_client(*VIEW)
    response = client.get("/admin/django_events/queuestatus/")
    report = collect()
    shown = response.context["report"]["groups"]
    age = "oldest_pending_age_s"  # moves between the two reads
    assert {
        name: {k: v for k, v in g.items() if k not in (age, "dead_url")}
        for name, g in shown.items()
    } == {name: {k: v for k, v in g.items() if k != age} for name, g in report["groups"].items()}
    assert shown["beta"][age] is not None
    assert report["groups"]["alpha"]["dead"] == 1
    assert f"{report['outbox']['unrelayed']} unrelayed event".encode() in response.content
    assert staff_client(name="nobody").get("/admin/django_events/queuestatus/").status_code == 403


def test_event_log_shows_each_groups_delivery_state(tmp_path: Path):
    dead = failing({"fail": False, "fail_group": "beta"}, groups=("alpha", "beta"))
    event_id = dead[0].event_id
    client = staff_client(*VIEW)
    listing = client.get(EVENTS)
    assert b"alpha: handled" in listing.content and b"beta: dead" in listing.content
    detail = client.get(f"{EVENTS}{event_id}/change/")
    assert b"<td>alpha</td><td>handled</td>" in detail.content
    assert b"<td>beta</td><td>dead</td>" in detail.content


def test_event_log_filters_and_search():
    correlation = uuid.uuid4()
    first = bulk(2, key="order-1", correlation_id=correlation)[0]
    bulk(3, event_type="test.other")
    client = staff_client(*VIEW)

    def count(**params: str) -> int:
        return client.get(EVENTS, params).context["cl"].result_count

    assert count() == 5
    assert count(type="test.other") == 3
    assert count(key="order-1") == 2
    assert count(q=str(first.event_id)) == 1
    assert count(q=str(correlation)) == 2
    assert count(q="not-a-uuid") == 0
    assert count(occurred_at__gte="2000-01-01 00:00:00+00:00") == 5


def test_nobody_adds_changes_or_deletes_through_the_admin():
    dead = bulk(1)[0]
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))  # noqa: S106
    assert client.post(f"{DL}{dead.pk}/change/", {"state": "retried"}).status_code == 403
    assert client.post(f"{DL}{dead.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"{EVENTS}add/").status_code == 403
    listing = client.get(DL)
    assert (
        "delete_selected" not in listing.context["action_form"].fields["action"].choices.__str__()
    )
    assert DeadLetter.objects.get().state == "open"
