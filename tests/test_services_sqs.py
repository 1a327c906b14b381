"""Level 2: two services sharing an SNS topic (moto's server), each with its own database (a
SQLite file: outbox, inbox, dead letters, event log), each its own Django project run as
subprocesses (tests/services/). Each service's ``setup_events`` subscribes its own groups'
queues to the topic; each relay publishes its events once, without naming groups, so the
shop's events reach the warehouse's group that the shop's code never heard of. A replay to
one group reaches that group only; a rolling deploy of the shop loses and dead-letters
nothing.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from django_events.transports.sqs import SnsSqsTransport

from .conftest import ROOT, Workers, wait_until
from .sqs_server import BACKEND, DUMMY_CREDENTIALS, REGION, aws_env, moto_endpoint, unique_prefix

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = pytest.mark.slow

SHOP = "tests.services.shop_settings"
WAREHOUSE = "tests.services.warehouse_settings"
ORDERS = 100


class Service:
    """One project: its settings, its own SQLite file, the shared topic under ``prefix``."""

    def __init__(
        self,
        workers: Workers,
        settings: str,
        database: Path,
        options: dict[str, Any],
        version: int = 1,
        **more: Any,
    ) -> None:
        self.workers, self.database = workers, database
        overrides = {
            "TRANSPORTS": {"default": {"BACKEND": BACKEND, "OPTIONS": options}},
            "LEASE": 30,  # the visibility timeout: a loaded machine never outlasts it
            **more,
        }
        self.env = {
            **DUMMY_CREDENTIALS,
            "DJANGO_SETTINGS_MODULE": settings,
            "DJANGO_EVENTS_TEST_DB_ENGINE": "sqlite3",
            "DJANGO_EVENTS_TEST_DB_NAME": str(database),
            "DJANGO_EVENTS_TEST_OVERRIDES": json.dumps(overrides),
            "SERVICES_OWN_DATABASE": "1",
            "SHOP_VERSION": str(version),
        }

    def run(self, *args: str) -> str:
        result = self.workers.run(*args, **self.env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def deploy(self) -> str:
        """What a Level 2 deploy runs before starting the new code: ``migrate``, then
        ``setup_events`` (which declares: queues, tags, subscriptions)."""
        self.run("migrate", "--run-syncdb", "--no-input")
        return self.run("setup_events")

    def publishing(self, *args: str) -> subprocess.Popen[bytes]:
        """``place_orders`` started in the background, to publish while another does."""
        return subprocess.Popen(
            [sys.executable, "-m", "django", "place_orders", *args],
            cwd=ROOT,
            env=self.workers.env(**self.env),
        )

    def start(self, started: int) -> None:
        self.workers.start(**self.env)
        wait_until(
            lambda: self.workers.logs().count(" started for groups") >= started,
            timeout=60,
            what=f"worker {started} started:\n{self.workers.logs()}",
        )

    def query(self, sql: str, *params: str) -> list[tuple]:
        with sqlite3.connect(self.database, timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def handled(self, label: str) -> Counter[int]:
        rows = self.query('SELECT n FROM testapp_effect WHERE "group" = ?', label)
        return Counter(n for (n,) in rows)

    def wait_handled(self, label: str, count: int) -> None:
        wait_until(lambda: sum(self.handled(label).values()) >= count, timeout=120, what=label)

    def dead_letters(self) -> list[tuple]:
        return self.query(
            'SELECT "group", error_class, error_message FROM django_events_deadletter'
        )


def assert_once(service: Service, label: str, numbers: range) -> None:
    counts = service.handled(label)
    assert sorted(counts) == list(numbers), f"{label}: missing or extra events"
    assert set(counts.values()) == {1}, f"{label}: handled twice: {counts.most_common(3)}"


@pytest.fixture
def topic(moto_endpoint: str, aws_env: dict[str, str]) -> dict[str, Any]:
    """The transport options both services share: one topic on moto, a fresh prefix."""
    return {
        "endpoint_url": moto_endpoint,
        "region": REGION,
        "prefix": unique_prefix(),
        "wait_time": 1,
        "dead_letter_poll": 1.0,
    }


def on_topic(options: dict[str, Any]) -> SnsSqsTransport:
    """This process's view of the shared topic, to look at queues and subscriptions."""
    return SnsSqsTransport("look", dict(options))


def waiting(transport: SnsSqsTransport, group: str) -> int:
    """Messages in ``group``'s queue: visible, delayed or in flight."""
    state = transport.status([group])[group]
    return state.pending + state.in_flight


def test_each_service_subscribes_its_own_groups_and_every_group_gets_each_event_once(
    workers: Workers, tmp_path: Path, topic: dict[str, Any]
):
    shop = Service(workers, SHOP, tmp_path / "shop.sqlite3", topic)
    warehouse = Service(workers, WAREHOUSE, tmp_path / "warehouse.sqlite3", topic)
    shop.deploy()
    out = warehouse.deploy()  # subscribes picking and stock; the shop's code never hears of it
    assert "warehouse: picking on order.placed: subscribed" in out, out
    look = on_topic(topic)
    rows = {(r.service, r.group, r.event_type) for r in look.subscription_store().rows()}
    assert rows == {
        ("shop", "emails", "order.placed"),
        ("shop", "ledger", "stock.reserved"),
        ("warehouse", "picking", "order.placed"),
        ("warehouse", "stock", "stock.reserved"),
    }
    shop.start(1)
    warehouse.start(2)
    # Both publish at once; each relay moves its own outbox, once per event, no groups named.
    publishing = [
        shop.publishing(str(ORDERS)),
        warehouse.publishing(str(ORDERS), "--type", "stock.reserved"),
    ]
    for proc in publishing:
        assert proc.wait(timeout=120) == 0
    shop.wait_handled("shop:emails:order.placed", ORDERS)
    shop.wait_handled("shop:ledger:stock.reserved", ORDERS)
    warehouse.wait_handled("warehouse:picking:order.placed", ORDERS)
    warehouse.wait_handled("warehouse:stock:stock.reserved", ORDERS)

    # A targeted redelivery (replay to one group) reaches that group only.
    workers.stop_all()
    shop.run("replay_events", "--group", "emails", "--reprocess", "--yes")
    shop.start(3)
    wait_until(
        lambda: set(shop.handled("shop:emails:order.placed").values()) == {2},
        timeout=120,
        what="emails replayed",
    )
    assert waiting(look, "picking") == 0, "the replay to emails reached picking"
    workers.stop_all()
    assert_once(warehouse, "warehouse:picking:order.placed", range(ORDERS))
    assert_once(warehouse, "warehouse:stock:stock.reserved", range(ORDERS))
    assert_once(shop, "shop:ledger:stock.reserved", range(ORDERS))
    assert not shop.dead_letters() and not warehouse.dead_letters()


def test_rolling_deploy_on_sns_sqs_loses_and_dead_letters_nothing(
    workers: Workers, tmp_path: Path, topic: dict[str, Any]
):
    database = tmp_path / "shop.sqlite3"
    # Two receives and a message is redriven to the dead-letter queue: a pass-over that
    # counted one would dead-letter the cancelled orders while the old worker runs alone.
    old = Service(workers, SHOP, database, topic, version=1, MAX_ATTEMPTS=2)
    new = Service(workers, SHOP, database, topic, version=2, MAX_ATTEMPTS=2)
    old.deploy()
    old.start(1)
    out = new.deploy()  # the new release's setup_events, while the old worker runs
    assert "shop: loyalty on order.placed: subscribed" in out, out
    assert "shop: emails on order.cancelled: subscribed" in out, out
    placed, cancelled = 60, 40
    new.run("place_orders", str(placed))
    new.run("place_orders", str(cancelled), "--type", "order.cancelled", "--start", "1000")

    # Only the old worker runs (its relay moves the outbox): it handles what it knows and
    # passes over the cancelled orders without counting an attempt; loyalty waits.
    old.wait_handled("shop:emails:order.placed", placed)
    look = on_topic(topic)
    wait_until(
        lambda: waiting(look, "loyalty") == placed and waiting(look, "emails") == cancelled,
        timeout=60,
        what="the new group and type wait for the new version",
    )
    time.sleep(5)  # the old worker passes the cancelled orders over, again and again
    assert look.status(["emails"])["emails"].parked == 0, "none was redriven"
    assert not old.dead_letters()

    new.start(2)  # old and new side by side
    new.wait_handled("shop:loyalty:order.placed", placed)
    new.wait_handled("shop:emails:order.cancelled", cancelled)
    workers.stop_all()
    assert_once(new, "shop:emails:order.placed", range(placed))
    assert_once(new, "shop:loyalty:order.placed", range(placed))
    assert_once(new, "shop:emails:order.cancelled", range(1000, 1000 + cancelled))
    assert not new.dead_letters()


def test_the_filter_policy_takes_fresh_events_by_type_and_redeliveries_by_group(
    moto_endpoint: str, aws_env: dict[str, str]
):
    """Wire format 2's filter policy, with plain boto3: of five publishes the queue of
    ``emails`` on ``order.placed`` gets the fresh ``order.placed`` and the two that name
    ``emails``, not a fresh ``order.cancelled`` nor an ``order.placed`` naming ``picking``."""
    from django_events.transports.sqs.setup import filter_policy

    sns = boto3.client("sns", endpoint_url=moto_endpoint, region_name=REGION)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name=REGION)
    name = unique_prefix()
    topic_arn = sns.create_topic(Name=f"{name}topic")["TopicArn"]
    url = sqs.create_queue(QueueName=f"{name}emails")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={
            "RawMessageDelivery": "true",
            "FilterPolicy": json.dumps(filter_policy("emails", ["order.placed"])),
        },
    )

    def publish(body: str, event_type: str, groups: list[str] | None) -> None:
        attributes = {"type": {"DataType": "String", "StringValue": event_type}}
        if groups is not None:
            attributes["groups"] = {"DataType": "String.Array", "StringValue": json.dumps(groups)}
        sns.publish(TopicArn=topic_arn, Message=body, MessageAttributes=attributes)

    publish("fresh placed", "order.placed", None)
    publish("fresh cancelled", "order.cancelled", None)
    publish("placed for picking", "order.placed", ["picking"])
    publish("placed for emails", "order.placed", ["emails"])
    publish("cancelled for emails", "order.cancelled", ["emails"])
    got = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        got += [m["Body"] for m in batch]
    assert sorted(got) == ["cancelled for emails", "fresh placed", "placed for emails"]
