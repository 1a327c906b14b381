"""The read-only admin: pages render, nothing is editable, payloads need a permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings

from django_events import publish
from django_events.models import DeadLetter, EventRecord
from django_events.testing import deliver

pytestmark = pytest.mark.django_db


@pytest.fixture
def dead_letter() -> DeadLetter:
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1}):
        publish("test.happened", {"n": 1, "fail": True, "secret": "4111-1111"})
        deliver(["alpha"])
    return DeadLetter.objects.get()


def staff(*perms: str) -> Client:
    user = User.objects.create_user("op", password="pw", is_staff=True)  # noqa: S106
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_events", codename__in=perms)
    )
    client = Client()
    client.force_login(user)
    return client


def test_dead_letter_pages_render_without_payload_for_plain_viewers(dead_letter: DeadLetter):
    client = staff("view_deadletter", "view_eventrecord")
    listing = client.get("/admin/django_events/deadletter/")
    assert listing.status_code == 200 and b"RuntimeError" in listing.content
    detail = client.get(f"/admin/django_events/deadletter/{dead_letter.pk}/change/")
    assert detail.status_code == 200
    assert b"Traceback" not in detail.content and b"hidden: needs" in detail.content
    event = client.get(f"/admin/django_events/eventrecord/{dead_letter.event_id}/change/")
    assert b"4111-1111" not in event.content


def test_payload_and_traceback_are_shown_with_view_payload(dead_letter: DeadLetter):
    client = staff("view_deadletter", "view_eventrecord", "view_payload")
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
