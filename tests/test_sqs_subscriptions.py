"""Level 2's subscription store, in this process against moto's server: the topic's SNS
subscriptions and their queues' tags. Declared by ``setup_events`` (never by ``migrate`` or
a worker starting), each group's filter policy follows what is declared in it, a retired
subscription keeps receiving and is shown as orphaned, and ``setup_events --prune`` takes
it out of the filter policy (docs/services.md)."""

from __future__ import annotations

import contextlib
import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from django_events import subscriptions
from django_events.checks import check_subscriptions
from django_events.models import Subscription
from django_events.transports import transports
from django_events.transports.sqs import SnsSqsTransport
from django_events.transports.sqs.setup import _queue_arn, _subscriptions, policy_types

from .sqs_server import aws_env, events_settings, moto_endpoint, unique_prefix
from .test_subscriptions import handlers

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sqs(settings: Any, moto_endpoint: str, aws_env: dict[str, str]) -> SnsSqsTransport:
    settings.DJANGO_EVENTS = events_settings(moto_endpoint, unique_prefix())
    transport = transports["default"]
    assert isinstance(transport, SnsSqsTransport)
    return transport


def declare(transport: SnsSqsTransport, service: str, *slots: Any, **kw: Any) -> Any:
    store = transport.subscription_store()
    return subscriptions.declare(service, handlers(*slots), store=store, **kw)


def policy(transport: SnsSqsTransport, group: str) -> frozenset[str] | None:
    """The event types ``group``'s SNS subscription takes; None if it has none."""
    sns = transport._client("sns")
    arn = _queue_arn(transport, transport._queue_url(group))
    found = _subscriptions(sns, transport.topic_arn).get(arn)
    if found is None:
        return None
    attributes = sns.get_subscription_attributes(SubscriptionArn=found)["Attributes"]
    return policy_types(json.loads(attributes["FilterPolicy"]))


def test_each_service_declares_its_groups_on_the_topic_and_redeploys_update_the_policy(sqs):
    declare(sqs, "warehouse", ("picking", "order.placed"))
    done = declare(sqs, "shop", ("emails", "order.placed"))
    assert done.added == [("emails", "order.placed")]
    assert not Subscription.objects.filter(service__in=["shop", "warehouse"]).exists()
    assert policy(sqs, "picking") == {"order.placed"}
    assert policy(sqs, "emails") == {"order.placed"}
    # The next release handles a new type in emails: its setup_events widens the policy.
    declare(sqs, "shop", ("emails", "order.placed"), ("emails", "order.cancelled"))
    assert policy(sqs, "emails") == {"order.placed", "order.cancelled"}
    # A worker starting (maybe an old version) changes nothing at Level 2.
    assert declare(sqs, "shop", ("emails", "order.placed"), replace=False).retired == []
    rows = {(r.service, r.group, r.event_type): r for r in subscriptions.all_rows(sqs)}
    assert sorted(rows) == [
        ("shop", "emails", "order.cancelled"),
        ("shop", "emails", "order.placed"),
        ("warehouse", "picking", "order.placed"),
    ]
    assert all(row.retired_at is None for row in rows.values())


def test_an_orphan_on_sns_is_shown_kept_receiving_and_pruned(sqs):
    declare(sqs, "shop", ("emails", "order.placed"), ("emails", "x.y"), ("gone", "x.y"))
    done = declare(sqs, "shop", ("emails", "order.placed"))  # x.y retired in both groups
    assert done.retired == [("emails", "x.y"), ("gone", "x.y")]
    assert policy(sqs, "emails") == {"order.placed", "x.y"}, "a retired type still receives"

    out = StringIO()
    with contextlib.suppress(SystemExit):
        call_command("events_status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    orphans = sorted(
        (r["group"], r["event_type"]) for r in report["subscriptions"] if r["orphaned"]
    )
    assert orphans == [("emails", "x.y"), ("gone", "x.y")]
    warnings = check_subscriptions(databases=["default"])
    assert [w.id for w in warnings] == ["django_events.W050"] * 2
    assert all("x.y" in w.msg for w in warnings)

    out = StringIO()
    call_command("setup_events", "--prune", "--dry-run", stdout=out)
    assert "Would unsubscribe shop: emails from x.y" in out.getvalue()
    assert policy(sqs, "emails") == {"order.placed", "x.y"}, "a dry run changes nothing"
    call_command("setup_events", "--prune", stdout=out)
    assert "Unsubscribed 2 subscriptions" in out.getvalue()
    assert policy(sqs, "emails") == {"order.placed"}
    assert policy(sqs, "gone") is None, "the group's last type took its subscription along"
    assert [(r.group, r.event_type) for r in subscriptions.all_rows(sqs)] == [
        ("emails", "order.placed")
    ]
    assert check_subscriptions(databases=["default"]) == []


def test_a_type_another_service_still_declares_is_not_pruned(sqs):
    declare(sqs, "shop", ("shared", "x.y"))
    declare(sqs, "other", ("shared", "x.y"))
    declare(sqs, "shop", ("shared", "order.placed"))  # shop retires x.y; other still has it
    assert subscriptions.orphaned(subscriptions.all_rows(sqs)) == []
    [retired] = [r for r in subscriptions.all_rows(sqs) if r.retired_at is not None]
    assert (retired.service, retired.event_type) == ("shop", "x.y")
    assert sqs.subscription_store().remove(retired, sqs.drop_backlog) == (False, None)
    assert policy(sqs, "shared") == {"order.placed", "x.y"}
    assert len(subscriptions.all_rows(sqs)) == 3


def test_migrate_declares_nothing_at_level_2(sqs):
    """Creating queues and subscriptions needs rights a migrate's role has no need of:
    at Level 2, ``setup_events`` declares."""
    out = StringIO()
    subscriptions.declare_on_migrate(using="default", stdout=out, verbosity=1)
    assert out.getvalue() == ""
    assert subscriptions.all_rows(sqs) == []
