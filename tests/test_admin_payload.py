"""``view_payload`` has no side door: URL lookups, search, ordering, error text, the shell.

A staff user without the permission must learn nothing about payloads, metadata,
tracebacks, error messages or a delivery's last error: not by reading them, and not by
asking yes/no questions of the changelist (``?data__ssn=…`` answering with one row or
none). The browser walk over the same doors is in test_admin_browser.py.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib import admin as django_admin
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from django_events.admin import declared_filter_parameters
from django_events.models import DeadLetter, EventRecord
from tests.admin_support import staff_client
from tests.deadletters import DEAD_LETTER_LOOKUPS, ERROR, EVENT_LOOKUPS, MESSAGE, SECRET, leaky
from tests.test_admin import DL, EVENTS, VIEW

pytestmark = pytest.mark.django_db

PAYLOAD_FIELDS = ("error_message", "traceback", "data", "metadata", "last_error")
SIDE_DOORS = [(DL, *door) for door in DEAD_LETTER_LOOKUPS] + [
    (EVENTS, *door) for door in EVENT_LOOKUPS
]


def assert_private(content: bytes) -> None:
    assert SECRET.encode() not in content
    assert b"no customer" not in content


@pytest.fixture(params=["viewer", "payload holder", "superuser"])
def client(request: pytest.FixtureRequest) -> Client:
    """Lookups are limited for everyone: payload holders and superusers too."""
    if request.param == "viewer":
        return staff_client(*VIEW, name="viewer")
    if request.param == "payload holder":
        return staff_client(*VIEW, "view_payload", name="holder")
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))  # noqa: S106
    return client


@pytest.mark.parametrize(("url", "lookup", "value"), SIDE_DOORS)
def test_changelists_refuse_lookups_beyond_their_filters(client, url, lookup, value):
    leaky()
    response = client.get(url, {lookup: value})
    assert response.status_code == 400, lookup
    assert_private(response.content)


def test_the_declared_filters_are_the_whole_query_language():
    site = django_admin.site._registry
    assert declared_filter_parameters(site[DeadLetter], None) == {
        "state__exact",
        "state__isnull",
        "fingerprint",
        "group",
        "type",
        "error_class",
        "last_failed_at__gte",
        "last_failed_at__lt",
    }
    assert declared_filter_parameters(site[EventRecord], None) == {
        "type",
        "key",
        "occurred_at__gte",
        "occurred_at__lt",
    }
    dead = leaky()
    client = staff_client(*VIEW)
    for params in (
        {"state__exact": "open", "group": "alpha", "type": "test.happened"},
        {"fingerprint": dead.fingerprint, "error_class": ERROR},
        {
            "last_failed_at__gte": "2000-01-01 00:00:00+00:00",
            "last_failed_at__lt": "2999-01-01 00:00:00+00:00",
        },
    ):
        assert client.get(DL, params).status_code == 200, params
    for params in (
        {"type": "test.happened", "key": "k"},
        {"occurred_at__gte": "2000-01-01 00:00:00+00:00"},
    ):
        assert client.get(EVENTS, params).status_code == 200, params


def test_search_reads_error_messages_only_for_payload_holders():
    leaky()
    viewer, holder = staff_client(*VIEW), staff_client(*VIEW, "view_payload", name="holder")
    for term in (SECRET, "ssn", "no customer"):
        assert viewer.get(DL, {"q": term}).context["cl"].result_count == 0, term
        assert holder.get(DL, {"q": term}).context["cl"].result_count == 1, term
        assert viewer.get(EVENTS, {"q": term}).context["cl"].result_count == 0, term
    listing = viewer.get(DL)
    assert b"An event id or an event key." in listing.content
    assert b"words of the error message" not in listing.content


def test_no_ordering_reaches_a_private_field():
    leaky()
    viewer = staff_client(*VIEW)
    for url, model in ((DL, DeadLetter), (EVENTS, EventRecord)):
        columns = len(django_admin.site._registry[model].list_display)
        for index in range(columns + 2):
            for order in (str(index), f"-{index}"):
                response = viewer.get(url, {"o": order})
                assert response.status_code == 200
                fields = " ".join(map(str, response.context["cl"].result_list.query.order_by))
                assert not any(name in fields for name in PAYLOAD_FIELDS), (url, order, fields)
                assert_private(response.content)


def test_error_text_is_payload_on_every_page_the_viewer_sees():
    dead = leaky()
    viewer = staff_client(*VIEW, "retry_deadletter", "discard_deadletter")
    pages = [
        DL,
        f"{DL}{dead.pk}/change/",
        f"{DL}{dead.pk}/retry/",  # the confirmation page lists what it would retry
        "/admin/django_events/failuregroup/",
        f"/admin/django_events/failuregroup/{dead.fingerprint}/discard/",
        EVENTS,
        f"{EVENTS}{dead.event_id}/change/",
    ]
    for url in pages:
        response = viewer.get(url)
        assert response.status_code == 200, url
        assert_private(response.content)
        if url.startswith(DL) or "failuregroup" in url:
            assert b"NoCustomer" in response.content, url  # the error class stays
    holder = staff_client(*VIEW, "view_payload", name="holder")
    detail = holder.get(f"{DL}{dead.pk}/change/").content
    assert MESSAGE.encode() in detail and b"KeyError: 123-45-6789" in detail
    assert holder.get(DL).content.count(b"no customer with ssn") == 1
    assert b"no customer with ssn" in holder.get("/admin/django_events/failuregroup/").content


def dead_letters(*args: str) -> str:
    out = StringIO()
    call_command("dead_letters", *args, stdout=out)
    return out.getvalue()


def test_dead_letters_command_hides_error_text_from_a_user_without_view_payload():
    dead = leaky()
    staff_client(*VIEW, "retry_deadletter", name="viewer")
    staff_client(*VIEW, "view_payload", name="holder")
    text = dead_letters("list", "--user", "viewer")
    assert "NoCustomer" in text and "hidden: needs view_payload" in text
    assert SECRET not in text and "no customer" not in text
    rows = json.loads(dead_letters("list", "--json", "--user", "viewer"))["dead_letters"]
    assert {row["error_message"] for row in rows} == {None}
    done = dead_letters("retry", "--id", str(dead.pk), "--json", "--user", "viewer")
    assert SECRET not in done and json.loads(done)["done"][0]["error_message"] is None
    # Those who may read it (a payload holder, or the shell's own account) still do.
    assert MESSAGE in dead_letters("list", "--state", "all", "--user", "holder")
    assert MESSAGE in dead_letters("list", "--state", "all", "--json")
