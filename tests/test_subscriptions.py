"""Subscriptions as data: declared per service, read by every relay, retired visibly and
removed only by an operator (docs/services.md)."""

from __future__ import annotations

import contextlib
import json
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.test import Client

from django_events import publish, subscriptions
from django_events.checks import check_subscriptions
from django_events.conf import get_settings
from django_events.engine.relay import Relay
from django_events.models import DeadLetter, Delivery, Subscription
from django_events.registry import Handler
from django_events.testing import deliver
from django_events.transports import transports

from .transport_support import owed

pytestmark = pytest.mark.django_db

ARCHIVE = "orders-archive"


def handlers(*slots: tuple[str, str] | tuple[str, str, bool]) -> list[Handler]:
    def func(event: Any) -> None: ...

    return [Handler(func, group=s[0], event_type=s[1], ordered=bool(s[2:] and s[2])) for s in slots]


def shared() -> Any:
    """The store the services share, as a deploy's ``migrate`` declares into it: the
    default transport's (the log transport's starts each new group's cursor there)."""
    return subscriptions.store_of(transports["default"])


def rows(service: str) -> dict[tuple[str, str], bool]:
    """``(group, type): retired`` of ``service``'s stored subscriptions."""
    return {
        (row.group, row.event_type): row.retired_at is not None
        for row in Subscription.objects.filter(service=service)
    }


def test_a_deploy_replaces_its_services_set_and_retires_what_it_dropped():
    subscriptions.declare("shop", handlers(("emails", "a.b"), ("emails", "c.d")), store=shared())
    done = subscriptions.declare("shop", handlers(("emails", "a.b")), store=shared())
    assert done.retired == [("emails", "c.d")]
    assert rows("shop") == {("emails", "a.b"): False, ("emails", "c.d"): True}, "kept, retired"
    assert ("c.d", "emails", False) in subscriptions.current("default"), "still receives"

    # An old worker starting adds and refreshes, and never retires nor reopens.
    subscriptions.declare("shop", handlers(("emails", "c.d")), store=shared(), replace=False)
    assert rows("shop") == {("emails", "a.b"): False, ("emails", "c.d"): True}

    both = handlers(("emails", "a.b"), ("emails", "c.d"))
    again = subscriptions.declare("shop", both, store=shared())
    assert again.reopened == [("emails", "c.d")]
    assert rows("shop") == {("emails", "a.b"): False, ("emails", "c.d"): False}


def test_relays_fan_out_to_every_services_subscriptions_once_ordered_if_any_asks():
    subscriptions.declare("shop", handlers(("emails", "x.y")), store=shared())
    theirs = handlers(("picking", "x.y"), ("emails", "x.y", True))
    subscriptions.declare("warehouse", theirs, store=shared())
    fan_out = [row for row in subscriptions.current("default") if row[0] == "x.y"]
    assert fan_out == [("x.y", "emails", True), ("x.y", "picking", False)]
    warnings = check_subscriptions(databases=["default"])
    assert [w.id for w in warnings] == ["django_events.W051"]
    assert "shop, warehouse" in warnings[0].msg and "ordered" in warnings[0].msg


@pytest.mark.database_transport  # its delivery rows show the fan-out
def test_the_relay_fans_out_to_the_stored_subscriptions_it_read_with_its_take():
    """On PostgreSQL the take reads the table in its own statement (docs/internals.md, "The
    relay's frontier"); a separate read on SQLite. Either way: every stored row, ordered as
    declared, and this process's handlers."""
    theirs = handlers(("picking", "x.y"), ("emails", "x.y", True))
    subscriptions.declare("warehouse", theirs, store=shared())
    event = publish("x.y", {"n": 1}, key="k")
    assert Relay().run_once() == 1
    fanned = Delivery.objects.filter(event_id=event.id).values_list("group_name", "ordered")
    assert sorted(fanned) == [("emails", True), ("picking", False)]
    publish("test.happened", {"n": 1})  # this process's handlers: alpha and beta
    assert Relay().run_once() == 1
    assert (owed("alpha"), owed("beta")) == (1, 1)


def orphan() -> None:
    """A service that declared ``orders-archive`` on test.happened, then dropped it."""
    subscriptions.declare("archive", handlers((ARCHIVE, "test.happened")), store=shared())
    subscriptions.declare("archive", [], store=shared())
    publish("test.happened", {"n": 1})
    publish("test.happened", {"n": 2})
    Relay().run_once()


def test_an_orphan_keeps_receiving_visibly_until_pruned():
    orphan()
    assert owed(ARCHIVE) == 2, "still fanned out to"

    report = json.loads(_status("--json"))
    [row] = [r for r in report["subscriptions"] if r["group"] == ARCHIVE]
    assert (row["service"], row["orphaned"], row["backlog"]) == ("archive", True, 2)
    assert "archive" in report["groups"][ARCHIVE]["services"]
    assert "ORPHANED" in _status() and "2 pending" in _status()
    [warning] = check_subscriptions(databases=["default"])
    assert warning.id == "django_events.W050" and ARCHIVE in warning.msg
    assert check_subscriptions() == [], "needs its database, as migrate passes it"

    out = StringIO()
    call_command("setup_events", "--prune", "--dry-run", stdout=out)
    assert f"Would unsubscribe archive: {ARCHIVE} from test.happened" in out.getvalue()
    assert Subscription.objects.filter(group=ARCHIVE).exists(), "a dry run changes nothing"

    out = StringIO()
    call_command("setup_events", "--prune", stdout=out)
    assert "dropping 2 pending deliveries" in out.getvalue()
    assert not Subscription.objects.filter(group=ARCHIVE).exists()
    assert owed(ARCHIVE) == 0 and not Delivery.objects.filter(group_name=ARCHIVE).exists()
    assert owed("alpha") == 2, "other groups untouched"
    assert check_subscriptions(databases=["default"]) == []


def test_prune_leaves_what_a_service_still_declares():
    subscriptions.declare("shop", handlers(("emails", "a.b")), store=shared())
    out = StringIO()
    call_command("setup_events", "--prune", stdout=out)
    assert "No orphaned subscriptions." in out.getvalue()
    outcome = subscriptions.unsubscribe(Subscription.objects.filter(service="shop"), actor="test")
    assert (outcome.done, len(outcome.skipped)) == ([], 1)
    assert Subscription.objects.filter(service="shop").exists()


def _status(*args: str) -> str:
    out = StringIO()
    with contextlib.suppress(SystemExit):  # exit status 2 when unhealthy
        call_command("events_status", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("allowed", [False, True])
def test_admin_unsubscribes_an_orphan_only_with_the_permission_and_logs_it(allowed: bool):
    orphan()
    user = User.objects.create_user("op", password="pw", is_staff=True)  # noqa: S106
    codenames = ["view_subscription", *(["unsubscribe"] if allowed else [])]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    url = "/admin/django_events/subscription/"
    page = client.get(url)
    assert b"ORPHANED" in page.content
    row = Subscription.objects.get(group=ARCHIVE)
    assert client.get(f"{url}{row.pk}/change/").status_code == 200, "shown, read-only"
    response = client.post(
        url, {"action": "unsubscribe_selected", "_selected_action": [row.pk]}, follow=True
    )
    assert response.status_code == 200
    assert Subscription.objects.filter(pk=row.pk).exists() is not allowed
    assert (owed(ARCHIVE) > 0) is not allowed
    logged = LogEntry.objects.filter(object_id=str(row.pk), action_flag=DELETION)
    assert logged.exists() is allowed
    if not allowed:  # the operation itself checks too, whoever calls it
        with pytest.raises(PermissionDenied):
            subscriptions.unsubscribe([row], user=user)
        assert Subscription.objects.filter(pk=row.pk).exists()


def test_dead_letters_and_events_carry_the_service(settings: Any):
    settings.DJANGO_EVENTS = {"SERVICE": "shop", "MAX_ATTEMPTS": 1}
    event = publish("test.happened", {"n": 1, "fail": True})
    assert event.source == "shop"
    deliver(["alpha"])
    assert DeadLetter.objects.get().service == "shop"


def test_service_names_are_checked(settings: Any):
    from django_events.conf import get_settings
    from django_events.exceptions import EventsConfigurationError

    settings.DJANGO_EVENTS = {"SERVICE": "no spaces"}
    with pytest.raises(EventsConfigurationError, match="SERVICE"):
        get_settings()


def test_a_service_gone_for_good_is_retired_and_pruned_by_an_operator(caplog: Any):
    """A service that will never run migrate again: its live subscriptions are retired and
    unsubscribed in one step, listed first by a dry run, logged with who did it."""
    subscriptions.declare("archive", handlers((ARCHIVE, "test.happened")), store=shared())
    subscriptions.declare("shop", handlers(("emails", "test.happened")), store=shared())
    publish("test.happened", {"n": 1})
    Relay().run_once()
    out = StringIO()
    call_command("setup_events", "--retire-service", "archive", "--dry-run", stdout=out)
    assert f"Would retire archive: {ARCHIVE} on test.happened" in out.getvalue()
    assert f"Would unsubscribe archive: {ARCHIVE} from test.happened (1 pending)" in out.getvalue()
    assert rows("archive") == {(ARCHIVE, "test.happened"): False}, "a dry run changes nothing"

    with pytest.raises(CommandError, match="No subscriptions of service 'nobody'"):
        call_command("setup_events", "--retire-service", "nobody")
    with pytest.raises(CommandError, match="this deployment's own SERVICE"):
        call_command("setup_events", "--retire-service", get_settings().service)

    out = StringIO()
    with caplog.at_level("WARNING", logger="django_events.subscriptions"):
        call_command("setup_events", "--retire-service", "archive", stdout=out)
    assert "Unsubscribed 1 subscription, dropping 1 pending deliveries" in out.getvalue()
    assert rows("archive") == {}
    assert owed(ARCHIVE) == 0 and not Delivery.objects.filter(group_name=ARCHIVE).exists()
    assert owed("emails") == 1, "others keep theirs"
    assert "setup_events --retire-service archive" in caplog.text
