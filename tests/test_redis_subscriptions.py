"""Level 1's subscription store, in this process against the real Redis: declared into
``<prefix>:subscriptions``, read by the relay, retired visibly, and pruned with the
backlog it still held (docs/services.md)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from django_events import subscriptions
from django_events.checks import check_subscriptions
from django_events.models import Subscription
from django_events.transports import transports
from django_events.transports.base import Outgoing
from django_events.transports.redis import RedisStreamsTransport

from .redis_support import delete_prefix, events_settings, needs_redis, unique_prefix
from .test_subscriptions import handlers

pytestmark = [pytest.mark.django_db(transaction=True), needs_redis()]


@pytest.fixture
def redis_transport() -> Iterator[RedisStreamsTransport]:
    prefix = unique_prefix()
    transports.reset()
    with override_settings(DJANGO_EVENTS=events_settings(prefix)):
        transport = transports["default"]
        assert isinstance(transport, RedisStreamsTransport)
        yield transport
        transports.reset()
    delete_prefix(prefix)


def declare(transport: RedisStreamsTransport, service: str, *slots: Any, **kw: Any) -> Any:
    store = transport.subscription_store()
    return subscriptions.declare(service, handlers(*slots), store=store, **kw)


def test_declarations_live_in_redis_and_every_relay_fans_out_to_them(redis_transport):
    declare(redis_transport, "warehouse", ("picking", "order.placed"))
    done = declare(redis_transport, "shop", ("emails", "order.placed"), ("emails", "x.y"))
    assert done.added == [("emails", "order.placed"), ("emails", "x.y")]
    assert not Subscription.objects.filter(service__in=["shop", "warehouse"]).exists()
    fan_out = subscriptions.fan_out(redis_transport)
    assert ("order.placed", "picking", False) in fan_out, "another service's group"
    assert ("order.placed", "emails", False) in fan_out
    # A deploy that dropped x.y retires it; a worker of an older version never does.
    declare(redis_transport, "shop", ("emails", "order.placed"), ("emails", "x.y"), replace=False)
    assert declare(redis_transport, "shop", ("emails", "order.placed")).retired == [
        ("emails", "x.y")
    ]
    assert ("x.y", "emails", False) in subscriptions.fan_out(redis_transport), "still receives"
    retired = {
        (r.service, r.group, r.event_type): r.retired_at
        for r in subscriptions.all_rows(redis_transport)
    }
    assert retired[("shop", "emails", "x.y")] is not None
    assert retired[("shop", "emails", "order.placed")] is None


def test_an_orphan_on_redis_is_shown_and_pruned_with_its_backlog(redis_transport):
    declare(redis_transport, "shop", ("emails", "order.placed"), ("emails", "x.y"))
    declare(redis_transport, "shop", ("emails", "order.placed"))  # x.y retired: an orphan
    events = [
        Outgoing(position=n, event_id=uuid.uuid4(), type=t, key=None)
        for n, t in enumerate(["x.y", "order.placed", "x.y"], 1)
    ]
    redis_transport.publish(events, subscriptions.fan_out(redis_transport))

    out = StringIO()
    with contextlib.suppress(SystemExit):
        call_command("events_status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    [orphan] = [row for row in report["subscriptions"] if row["orphaned"]]
    assert (orphan["service"], orphan["event_type"]) == ("shop", "x.y")
    [warning] = check_subscriptions(databases=["default"])
    assert warning.id == "django_events.W050" and "x.y" in warning.msg

    out = StringIO()
    call_command("setup_events", "--prune", "--dry-run", stdout=out)
    assert "Would unsubscribe shop: emails from x.y" in out.getvalue()
    call_command("setup_events", "--prune", stdout=out)
    assert "dropping 2 pending deliveries" in out.getvalue()
    assert [(r.group, r.event_type) for r in subscriptions.all_rows(redis_transport)] == [
        ("emails", "order.placed")
    ]
    [left] = redis_transport.claim(["emails"], 10, 30)
    assert left.event_type == "order.placed", "the other type's entry stays"
    assert check_subscriptions(databases=["default"]) == []


def test_migrate_goes_on_when_redis_is_down():
    """A deploy's migrate must not fail because Redis is unreachable: it says so, and
    setup_events or the first worker declares."""
    transports.reset()
    dead = events_settings(unique_prefix(), url="redis://127.0.0.1:1/0")
    with override_settings(DJANGO_EVENTS=dead):
        out = StringIO()
        subscriptions.declare_on_migrate(using="default", stdout=out)
        assert "subscriptions not declared" in out.getvalue()
        assert "Redis is unavailable" in out.getvalue()
    transports.reset()


@pytest.mark.parametrize("allowed", [False, True])
def test_the_admin_lists_the_redis_store_and_unsubscribes_an_orphan_there(
    redis_transport, allowed: bool
):
    from django.contrib.admin.models import DELETION, LogEntry
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    declare(redis_transport, "warehouse", ("picking", "order.placed"))
    declare(redis_transport, "shop", ("emails", "order.placed"), ("emails", "x.y"))
    declare(redis_transport, "shop", ("emails", "order.placed"))  # x.y: an orphan
    user = User.objects.create_user("op", password="pw", is_staff=True)  # noqa: S106
    codenames = ["view_subscription", *(["unsubscribe"] if allowed else [])]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    url = "/admin/django_events/subscription/"
    page = client.get(url).content.decode()
    assert redis_transport.prefix in page, "names the store it reads"
    for shown in ("warehouse", "picking", "emails", "x.y", "ORPHANED: no service declares it"):
        assert shown in page, shown
    assert ("Unsubscribe selected orphans" in page) is allowed
    key = '["shop","emails","x.y"]'
    response = client.post(url, {"action": "unsubscribe_selected", "_selected_action": [key]})
    assert response.status_code == (302 if allowed else 403)
    left = {(r.service, r.event_type) for r in subscriptions.all_rows(redis_transport)}
    assert (("shop", "x.y") in left) is not allowed
    assert ("warehouse", "order.placed") in left and ("shop", "order.placed") in left
    logged = LogEntry.objects.filter(object_id=key, action_flag=DELETION, user=user)
    assert logged.exists() is allowed
    # A live subscription is never unsubscribed, whatever is posted.
    key = '["warehouse","picking","order.placed"]'
    client.post(url, {"action": "unsubscribe_selected", "_selected_action": [key]})
    assert ("warehouse", "order.placed") in {
        (r.service, r.event_type) for r in subscriptions.all_rows(redis_transport)
    }


def test_a_service_gone_for_good_is_retired_from_the_redis_store(redis_transport):
    declare(redis_transport, "warehouse", ("picking", "order.placed"))
    declare(redis_transport, "shop", ("emails", "order.placed"))
    events = [Outgoing(position=1, event_id=uuid.uuid4(), type="order.placed", key=None)]
    redis_transport.publish(events, subscriptions.fan_out(redis_transport))
    out = StringIO()
    call_command("setup_events", "--retire-service", "warehouse", "--dry-run", stdout=out)
    assert "Would unsubscribe warehouse: picking from order.placed" in out.getvalue()
    assert len(subscriptions.all_rows(redis_transport)) == 2, "a dry run changes nothing"
    call_command("setup_events", "--retire-service", "warehouse", stdout=out)
    assert "Unsubscribed 1 subscription, dropping 1 pending deliveries" in out.getvalue()
    assert [r.service for r in subscriptions.all_rows(redis_transport)] == ["shop"]
    assert redis_transport.claim(["picking"], 10, 30) == [], "its backlog went"
    assert len(redis_transport.claim(["emails"], 10, 30)) == 1, "the shop's stays"
