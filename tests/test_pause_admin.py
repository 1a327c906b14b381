"""Pause and resume from the admin and from ``manage.py events_pause/events_resume``:
permissions, the admin log, and what ``events_status`` and the status page show."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command

from django_events import pauses
from django_events.models import Pause

from .admin_support import staff_client

pytestmark = pytest.mark.django_db

PAUSES = "/admin/django_events/pause/"
STATUS = "/admin/django_events/queuestatus/"


def resume_post(client, row: Pause):
    return client.post(
        PAUSES, {"action": "resume_selected", ACTION_CHECKBOX_NAME: [row.pk]}, follow=False
    )


# --------------------------------------------------------------------------- admin


@pytest.mark.parametrize(
    ("perms", "can_view", "can_pause"),
    [
        ((), False, False),
        (("view_deadletter",), False, False),
        (("view_pause",), True, False),
        (("pause_group",), True, True),
        (("view_pause", "retry_deadletter", "discard_deadletter"), True, False),
    ],
)
def test_permission_matrix(client, perms, can_view, can_pause):
    staff_client(*perms, client=client)
    assert client.get(PAUSES).status_code == (200 if can_view else 403)
    added = client.post(f"{PAUSES}add/", {"group": "alpha", "event_type": "", "reason": "x"})
    assert added.status_code == (302 if can_pause else 403)
    assert Pause.objects.filter(group="alpha").exists() == can_pause
    row = Pause.objects.first() or pauses.pause("alpha", reason="by the shell", by="shell:x")
    if can_view:
        resume_post(client, row)
        assert Pause.objects.filter(pk=row.pk).exists() != can_pause
    else:
        assert resume_post(client, row).status_code == 403
        assert Pause.objects.filter(pk=row.pk).exists()
    additions = LogEntry.objects.filter(action_flag=ADDITION).count()
    deletions = LogEntry.objects.filter(action_flag=DELETION).count()
    assert (additions, deletions) == ((1, 1) if can_pause else (0, 0))


def test_a_pause_from_the_admin_records_who_and_why_in_the_row_and_the_log(client):
    staff_client("pause_group", "view_deadletter", name="alice", client=client)
    response = client.post(
        f"{PAUSES}add/", {"group": "beta", "event_type": "test.happened", "reason": "CRM down"}
    )
    assert response.status_code == 302
    row = Pause.objects.get()
    assert (row.group, row.event_type, row.paused_by, row.reason) == (
        "beta",
        "test.happened",
        "alice",
        "CRM down",
    )
    entry = LogEntry.objects.get()
    assert entry.object_id == str(row.pk) and entry.change_message == "Paused: CRM down"

    page = client.get(STATUS).content.decode()
    assert "PAUSED</strong> (test.happened) by alice since" in page and "CRM down" in page
    listed = client.get(f"{PAUSES}?group=beta")
    assert listed.status_code == 200, listed.content.decode()[:500]
    assert 'class="action-select"' in listed.content.decode()

    resume_post(client, row)
    assert not Pause.objects.exists()
    resumed = LogEntry.objects.get(action_flag=DELETION)
    assert resumed.object_id == str(row.pk)
    assert resumed.change_message == "Resumed (paused by alice: CRM down)"


def test_the_admin_refuses_an_unknown_group_a_duplicate_and_an_empty_reason(client):
    staff_client("pause_group", client=client)
    typo = client.post(f"{PAUSES}add/", {"group": "alpah", "reason": "x"})
    assert typo.status_code == 200 and "No consumer group" in typo.content.decode()
    assert client.post(f"{PAUSES}add/", {"group": "alpha", "reason": ""}).status_code == 200
    pauses.pause("alpha", reason="first", by="ops")
    again = client.post(f"{PAUSES}add/", {"group": "alpha", "reason": "second"})
    assert again.status_code == 200 and "already exists" in again.content.decode()
    assert Pause.objects.get().reason == "first" and not LogEntry.objects.exists()


# --------------------------------------------------------------------------- commands


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_commands_pause_and_resume_and_status_shows_the_pause():
    said = run("events_pause", "alpha", "--reason", "CRM outage")
    assert said.startswith("Paused alpha: workers stop claiming it within one poll.")
    row = Pause.objects.get()
    assert row.paused_by.startswith("shell:") and row.reason == "CRM outage"
    assert not LogEntry.objects.exists()  # no Django user acted

    table = run("events_status")
    assert f"PAUSED alpha by {row.paused_by} since {row.paused_at.isoformat()}: CRM outage" in (
        table
    )
    report = json.loads(run("events_status", "--json"))
    assert report["groups"]["alpha"]["paused"] == [
        {
            "event_type": None,
            "paused_by": row.paused_by,
            "paused_at": row.paused_at.isoformat(),
            "reason": "CRM outage",
        }
    ]
    assert report["groups"]["beta"]["paused"] == []

    assert run("events_resume", "alpha").startswith("Resumed alpha, paused since")
    assert not Pause.objects.exists()
    assert json.loads(run("events_status", "--json"))["groups"]["alpha"]["paused"] == []


def test_commands_as_a_django_user_check_the_permission_and_log():
    User.objects.create_user("nobody")
    ops = User.objects.create_user("ops")
    ops.user_permissions.set(Permission.objects.filter(codename="pause_group"))
    with pytest.raises(CommandError, match=r"nobody: needs the django_events\.pause_group"):
        run("events_pause", "alpha", "--reason", "x", "--user", "nobody")
    assert not Pause.objects.exists()
    run(
        "events_pause", "beta", "--type", "test.happened", "--reason", "bad deploy", "--user", "ops"
    )
    assert Pause.objects.get().paused_by == "ops"
    assert "PAUSED type test.happened of group beta by ops" in run("events_status")
    run("events_resume", "beta", "--type", "test.happened", "--user", "ops")
    flags = list(LogEntry.objects.order_by("pk").values_list("action_flag", "user__username"))
    assert flags == [(ADDITION, "ops"), (DELETION, "ops")]


def test_commands_say_what_is_wrong():
    with pytest.raises(CommandError, match="No consumer group 'alpah' is known here"):
        run("events_pause", "alpah", "--reason", "x")
    with pytest.raises(CommandError, match="Group 'alpha' is not paused"):
        run("events_resume", "alpha")
    run("events_pause", "alpha", "--reason", "first")
    with pytest.raises(CommandError, match="Group 'alpha' is already paused"):
        run("events_pause", "alpha", "--reason", "second")
    assert Pause.objects.get().reason == "first"
