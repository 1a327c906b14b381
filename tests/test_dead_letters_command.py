"""``manage.py dead_letters``: the admin's triage with the same filters and permissions."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command

from django_events.models import DeadLetter
from django_events.testing import deliver
from django_events.testing.factories import DeadLetterFactory
from tests.deadletters import bulk, failing
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("dead_letters", *args, stdout=out)
    return out.getvalue()


def user(*perms: str, name: str = "ops") -> User:
    account = User.objects.create_user(name)
    account.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_events", codename__in=perms)
    )
    return account


def test_list_is_readable_and_json():
    bulk(2, error_class="shop.errors.CrmDown", group="crm", handler="shop.events.sync")
    text = run("list")
    assert "CrmDown" in text and "crm" in text and "test.happened" in text and "ago" in text
    data = json.loads(run("list", "--json"))
    assert data["count"] == 2
    row = data["dead_letters"][0]
    assert row["error_class"] == "shop.errors.CrmDown" and row["state"] == "open"
    assert len(row["fingerprint"]) == 16


def test_list_filters_by_group_type_error_id_fingerprint_and_state():
    a = bulk(2, error_class="shop.errors.CrmDown")
    bulk(3, group="beta", handler="tests.testapp.events.beta", event_type="test.other")
    bulk(1, state="retried")

    def count(*args: str) -> int:
        return json.loads(run("list", "--json", *args))["count"]

    assert count() == 5
    assert count("--state", "all") == 6
    assert count("--group", "beta") == 3
    assert count("--type", "test.other") == 3
    assert count("--error", "CrmDown") == 2 == count("--error", "shop.errors.CrmDown")
    assert count("--id", str(a[0].event_id)) == 1
    assert count("--id", str(a[1].pk)) == 1
    assert count("--fingerprint", a[0].fingerprint) == 2


def test_retry_as_a_user_with_the_permission_redelivers_and_is_logged(tmp_path: Path):
    flag = tmp_path / "broken"
    flag.write_text("")
    dead = failing({"fail": False, "fail_if_exists": str(flag)}, groups=("alpha", "beta"))
    flag.unlink()
    user("retry_deadletter")
    out = json.loads(
        run("retry", "--group", "alpha", "--user", "ops", "--reason", "fixed", "--json")
    )
    alpha = next(d for d in dead if d.group == "alpha")
    assert [row["id"] for row in out["done"]] == [alpha.pk]
    deliver(["alpha", "beta"])
    assert list(Effect.objects.values_list("group", flat=True)) == ["alpha"]
    entry = LogEntry.objects.get()
    assert entry.user.username == "ops" and "fixed" in entry.change_message


@pytest.mark.parametrize(
    ("action", "perm", "allowed"),
    [
        ("retry", "retry_deadletter", True),
        ("retry", "discard_deadletter", False),
        ("discard", "discard_deadletter", True),
        ("discard", "retry_deadletter", False),
    ],
)
def test_user_permissions_are_checked_as_in_the_admin(action: str, perm: str, allowed: bool):
    DeadLetterFactory(group="alpha", event__type="test.happened")
    user(perm)
    args = [action, "--all", "--user", "ops", "--reason", "why"]
    if allowed:
        run(*args)
    else:
        with pytest.raises(CommandError, match="permission"):
            run(*args)
    state = DeadLetter.objects.get().state
    assert state == ({"retry": "retried", "discard": "discarded"}[action] if allowed else "open")


def test_without_a_user_it_needs_yes_and_records_the_os_user():
    DeadLetterFactory(group="alpha", event__type="test.happened")
    with pytest.raises(CommandError, match="--yes"):
        run("discard", "--all", "--reason", "dupe")
    assert "Discarded 1 dead letter." in run("discard", "--all", "--reason", "dupe", "--yes")
    row = DeadLetter.objects.get()
    assert row.resolved_by.startswith("shell:") and row.reason == "dupe"
    assert not LogEntry.objects.exists()


def test_discard_needs_a_reason_and_every_action_a_filter():
    DeadLetterFactory(group="alpha", event__type="test.happened")
    with pytest.raises(CommandError, match="--reason"):
        run("discard", "--all", "--yes")
    with pytest.raises(CommandError, match="filter"):
        run("retry", "--yes")
    with pytest.raises(CommandError, match="No user"):
        run("retry", "--all", "--user", "ghost")
    assert DeadLetter.objects.get().state == "open"


def test_list_as_a_user_needs_the_view_permission():
    DeadLetterFactory(group="alpha", event__type="test.happened")
    user()
    with pytest.raises(CommandError, match="may not view"):
        run("list", "--user", "ops")
    user("view_deadletter", name="viewer")
    assert json.loads(run("list", "--user", "viewer", "--json"))["count"] == 1
