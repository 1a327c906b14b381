"""The operations console's admin actions: edit and retry, redirect, export; each behind
its permission, audited, and at a constant number of queries."""

from __future__ import annotations

import csv
import io
import json
import uuid
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from django_events import publish
from django_events.models import DeadLetter, Delivery, EventRecord
from django_events.testing import deliver
from tests.deadletters import bulk, failing
from tests.testapp import typed_events
from tests.testapp.models import Effect
from tests.testapp.typed_events import ParcelShipped

from .admin_support import staff_client

pytestmark = pytest.mark.django_db

DL = "/admin/django_events/deadletter/"
VIEW = ("view_deadletter", "view_eventrecord")
EDIT_ON = override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0, "ADMIN_EDIT_RETRY": True})


def edited(client: Client, dead: DeadLetter, data: object, reason: str = "fixed") -> object:
    text = data if isinstance(data, str) else json.dumps(data)
    return client.post(f"{DL}{dead.pk}/edit/", {"payload": text, "reason": reason})


# --------------------------------------------------------------------------- edit and retry


def test_edit_and_retry_is_off_unless_the_setting_enables_it():
    dead = failing({"n": 1})[0]
    root = User.objects.create_superuser("root", password="pw")  # noqa: S106
    client = Client()
    client.force_login(root)
    detail = client.get(f"{DL}{dead.pk}/change/")
    assert b'id="de-edit"' not in detail.content
    assert client.get(f"{DL}{dead.pk}/edit/").status_code == 404
    assert edited(client, dead, {"n": 1, "fail": False}).status_code == 404
    with EDIT_ON:
        assert b'id="de-edit"' in client.get(f"{DL}{dead.pk}/change/").content


EDIT_MATRIX = {
    "viewer": (VIEW, 403),
    "payload viewer": ((*VIEW, "view_payload"), 403),
    "retrier": ((*VIEW, "view_payload", "retry_deadletter"), 403),
    "editor without view_payload": ((*VIEW, "edit_deadletter"), 403),
    "editor": ((*VIEW, "view_payload", "edit_deadletter"), 302),
    "editor without view": (("view_payload", "edit_deadletter"), 403),
}


@pytest.mark.parametrize("role", list(EDIT_MATRIX))
def test_permission_matrix_for_edit_and_retry(role: str):
    perms, expected = EDIT_MATRIX[role]
    dead = failing({"n": 1})[0]
    client = staff_client(*perms)
    with EDIT_ON:
        if "view_deadletter" in perms:
            detail = client.get(f"{DL}{dead.pk}/change/")
            assert (b'id="de-edit"' in detail.content) == (expected == 302)
        assert client.get(f"{DL}{dead.pk}/edit/").status_code == (200 if expected == 302 else 403)
        response = edited(client, dead, {"n": 1, "fail": False})
    assert response.status_code == expected
    dead.refresh_from_db()
    assert dead.state == ("retried" if expected == 302 else "open")
    assert EventRecord.objects.count() == (2 if expected == 302 else 1)
    assert LogEntry.objects.count() == (1 if expected == 302 else 0)


def test_edit_and_retry_is_a_new_event_for_that_group_only_and_keeps_the_original():
    dead = next(
        d for d in failing({"n": 7, "city": "Bern"}, groups=("alpha", "beta")) if d.group == "alpha"
    )
    original = EventRecord.objects.get(id=dead.event_id)
    client = staff_client(*VIEW, "view_payload", "edit_deadletter")
    with EDIT_ON:
        response = edited(client, dead, {"n": 7, "fail": False, "city": "Berne"}, "typo")
    assert response.status_code == 302
    new = EventRecord.objects.exclude(id=original.id).get()
    assert new.id != original.id and new.causation_id == original.id
    assert new.correlation_id == (original.correlation_id or original.id)
    assert (new.type, new.version, new.key) == (original.type, original.version, original.key)
    assert new.data == {"n": 7, "fail": False, "city": "Berne"}
    assert new.position > original.position
    assert EventRecord.objects.get(id=original.id).data == original.data  # unchanged
    dead.refresh_from_db()
    assert dead.state == "retried" and str(new.id) in dead.reason and "typo" in dead.reason
    entry = LogEntry.objects.get()
    assert 'data.city: "Bern" → "Berne"' in entry.change_message
    assert "data.fail: true → false" in entry.change_message

    deliver(["alpha", "beta"])
    assert list(Effect.objects.values_list("group", "event_id")) == [("alpha", new.id)]


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ("{not json", b"not JSON"),
        ("[1, 2]", b"must be a JSON object"),
        ('{"n": 1, "fail": true}', b"unchanged"),
        ('{"bad": "\\u0000"}', b"cannot be stored"),
    ],
)
def test_an_invalid_payload_is_refused_and_nothing_is_written(payload: str, problem: bytes):
    dead = failing({"n": 1})[0]
    client = staff_client(*VIEW, "view_payload", "edit_deadletter")
    with EDIT_ON:
        response = edited(client, dead, payload)
    assert response.status_code == 400 and problem in response.content
    assert payload.encode()[:8] in response.content.replace(b"&quot;", b'"')  # kept for fixing
    dead.refresh_from_db()
    assert dead.state == "open" and EventRecord.objects.count() == 1
    assert LogEntry.objects.count() == 0


@pytest.fixture
def parcel_dead_letter():
    typed_events.failing.clear()
    typed_events.failing.add(5)
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1}):
        publish(ParcelShipped(parcel_id=5, weight_kg=Decimal("1.5"), carrier="dhl"))
        deliver(["typed"])
    yield DeadLetter.objects.get(group="typed")
    typed_events.failing.clear()


def test_edited_payload_is_checked_against_its_typed_declaration(parcel_dead_letter):
    dead = parcel_dead_letter
    client = staff_client(*VIEW, "view_payload", "edit_deadletter")
    good = {**EventRecord.objects.get(id=dead.event_id).data, "parcel_id": 6}
    with EDIT_ON:
        form = client.get(f"{DL}{dead.pk}/edit/")
        assert b"ParcelShipped" in form.content  # says what it checks against
        refused = edited(client, dead, {**good, "parcel_id": "six"})
        assert refused.status_code == 400 and b"parcel_id" in refused.content
        missing = edited(client, dead, {k: v for k, v in good.items() if k != "carrier"})
        assert missing.status_code == 400 and b"carrier" in missing.content
        assert edited(client, dead, good).status_code == 302
    deliver(["typed"])
    assert [p.parcel_id for p in typed_events.received] == [6]


def test_edit_diff_in_the_history_is_hidden_without_view_payload():
    dead = failing({"n": 1, "email": "alice@example.com"})[0]
    editor = staff_client(*VIEW, "view_payload", "edit_deadletter")
    with EDIT_ON:
        edited(editor, dead, {"n": 1, "fail": False, "email": "bob@example.com"})
    viewer = staff_client(*VIEW, "view_logentry", name="viewer")
    history = viewer.get(f"{DL}{dead.pk}/history/")
    assert history.status_code == 200 and b"Edited and retried" in history.content
    assert b"alice@example.com" not in history.content and b"hidden" in history.content
    assert b"alice@example.com" in editor.get(f"{DL}{dead.pk}/history/").content


# --------------------------------------------------------------------------- redirect

REDIRECT_MATRIX = {
    "viewer": (VIEW, 403),
    "retrier": ((*VIEW, "retry_deadletter"), 403),
    "redirecter": ((*VIEW, "redirect_deadletter"), 302),
    "redirecter without view": (("redirect_deadletter",), 403),
}


@pytest.mark.parametrize("role", list(REDIRECT_MATRIX))
def test_permission_matrix_for_redirect(role: str):
    perms, expected = REDIRECT_MATRIX[role]
    dead = failing({"n": 1, "fail": False, "fail_group": "alpha"}, groups=("alpha",))[0]
    client = staff_client(*perms)
    if "view_deadletter" in perms:
        detail = client.get(f"{DL}{dead.pk}/change/")
        assert (b'id="de-redirect"' in detail.content) == (expected == 302)
    response = client.post(
        f"{DL}{dead.pk}/redirect/", {"confirm": "yes", "group": "beta", "reason": "renamed"}
    )
    assert response.status_code == expected
    dead.refresh_from_db()
    assert dead.state == ("retried" if expected == 302 else "open")
    assert LogEntry.objects.count() == (1 if expected == 302 else 0)


def test_redirect_delivers_the_same_event_to_the_other_group_and_is_audited():
    dead = failing({"n": 3, "fail": False, "fail_group": "alpha"}, groups=("alpha",))[0]
    Delivery.objects.filter(group_name="beta").delete()  # as if beta subscribed later
    client = staff_client(*VIEW, "redirect_deadletter")
    form = client.get(f"{DL}{dead.pk}/redirect/")
    assert form.status_code == 200 and b'<option value="beta">' in form.content
    assert b'<option value="alpha">' not in form.content  # not its own group
    response = client.post(
        f"{DL}{dead.pk}/redirect/", {"confirm": "yes", "group": "beta", "reason": "renamed"}
    )
    assert response.status_code == 302
    deliver(["alpha", "beta"])
    assert list(Effect.objects.values_list("group", "event_id")) == [("beta", dead.event_id)]
    dead.refresh_from_db()
    assert dead.state == "retried" and dead.reason == "redirected to group beta: renamed"
    assert "Redirected" in LogEntry.objects.get().change_message


def test_redirect_to_a_group_that_does_not_subscribe_is_refused():
    dead = failing({"n": 1})[0]
    client = staff_client(*VIEW, "redirect_deadletter")
    response = client.post(f"{DL}{dead.pk}/redirect/", {"confirm": "yes", "group": "sequence"})
    assert (
        response.status_code == 400 and b"does not subscribe to test.happened" in response.content
    )
    dead.refresh_from_db()
    assert dead.state == "open" and LogEntry.objects.count() == 0


# --------------------------------------------------------------------------- export


def exported(client: Client, fmt: str, query: str = "") -> tuple[int, str]:
    response = client.get(f"{DL}export/{fmt}/{query}")
    body = b"".join(response.streaming_content) if response.status_code == 200 else b""
    return response.status_code, body.decode()


def test_export_follows_the_changelist_filters_in_csv_and_json():
    bulk(3, error_class="ValueError")
    bulk(2, error_class="KeyError", group="beta")
    bulk(1, error_class="KeyError", group="beta", state="discarded")
    client = staff_client(*VIEW)
    status, text = exported(client, "csv", "?group=beta&state__exact=open")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert status == 200 and [r["error_class"] for r in rows] == ["KeyError", "KeyError"]
    status, text = exported(client, "json")
    assert status == 200 and len(json.loads(text)) == 6
    assert client.get(f"{DL}export/xml/").status_code == 404
    assert client.get(f"{DL}export/csv/?data__secret=4111-1111").status_code == 400


def test_export_holds_payloads_and_messages_only_with_view_payload():
    bulk(1)
    _, plain = exported(staff_client(*VIEW), "json")
    (row,) = json.loads(plain)
    assert row["event_type"] == "test.happened" and row["error_class"] == "RuntimeError"
    assert row["data"] is None and row["error_message"] is None and row["traceback"] is None
    assert "4111-1111" not in plain and "for order" not in plain
    _, full = exported(staff_client(*VIEW, "view_payload", name="full"), "json")
    (row,) = json.loads(full)
    assert row["data"]["secret"] == "4111-1111"  # noqa: S105 - a fake card number
    assert "for order" in row["error_message"]


def test_export_needs_the_view_permission():
    bulk(1)
    assert staff_client("view_payload").get(f"{DL}export/csv/").status_code == 403


def test_export_defuses_spreadsheet_formulas():
    dead = bulk(1)[0]
    DeadLetter.objects.filter(pk=dead.pk).update(error_message='=HYPERLINK("http://x")')
    _, text = exported(staff_client(*VIEW, "view_payload"), "csv")
    (row,) = csv.DictReader(io.StringIO(text))
    assert row["error_message"] == '\'=HYPERLINK("http://x")'


def test_export_queries_do_not_grow_with_the_rows():
    client = staff_client(*VIEW, "view_payload")

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            status, _ = exported(client, "csv")
        assert status == 200
        return len(captured)

    bulk(5)
    exported(client, "csv")  # warm the permission caches
    small = count()
    bulk(45, group="beta")
    assert count() == small


@pytest.mark.parametrize("size", [5, 50])
def test_failure_groups_page_queries_do_not_grow_with_the_groups(size: int):
    client = staff_client(*VIEW, "view_payload")
    client.get("/admin/django_events/failuregroup/")
    for n in range(size):
        bulk(1, error_class=f"shop.errors.E{n}")
    with CaptureQueriesContext(connection) as captured:
        page = client.get("/admin/django_events/failuregroup/")
    assert len(page.context["groups"]) == size
    assert len(captured) == 7, [q["sql"] for q in captured.captured_queries]


def test_unknown_dead_letter_is_a_404_everywhere():
    client = staff_client(*VIEW, "view_payload", "edit_deadletter", "redirect_deadletter")
    missing = 10_000 + uuid.uuid4().int % 1000
    with EDIT_ON:
        assert client.get(f"{DL}{missing}/edit/").status_code == 404
    assert client.get(f"{DL}{missing}/redirect/").status_code == 404
