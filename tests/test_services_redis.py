"""Level 1: two services sharing a Redis and a ``prefix``, each with its own database (a
SQLite file of its own: outbox, inbox, dead letters, event log), each its own Django
project run as subprocesses (tests/services/). The subscriptions travel through Redis
(``<prefix>:subscriptions``), so the shop's relay fans out to the warehouse's group that
the shop's code never heard of; a rolling deploy of the shop loses and dead-letters
nothing; a replay to one group reaches that group only.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from .conftest import Workers, wait_until
from .redis_support import (
    BACKEND,
    REDIS_URL,
    PrivateRedis,
    delete_prefix,
    needs_redis,
    unique_prefix,
)

pytestmark = [needs_redis(), pytest.mark.slow]

SHOP = "tests.services.shop_settings"
WAREHOUSE = "tests.services.warehouse_settings"
ORDERS = 100


@pytest.fixture
def prefix() -> object:
    name = unique_prefix()
    yield name
    delete_prefix(name)


class Service:
    """One project: its settings, its own SQLite file, the shared Redis under ``prefix``."""

    def __init__(
        self,
        workers: Workers,
        settings: str,
        database: Path,
        prefix: str,
        version: int = 1,
        url: str = REDIS_URL,
    ) -> None:
        self.workers, self.database = workers, database
        overrides = {
            "TRANSPORTS": {
                "default": {"BACKEND": BACKEND, "OPTIONS": {"url": url, "prefix": prefix}}
            },
            "LEASE": 5,
        }
        self.env = {
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

    def deploy(self) -> None:
        """What a deploy runs before starting the new code: migrate (which declares)."""
        self.run("migrate", "--run-syncdb", "--no-input")

    def start(self, started: int) -> subprocess.Popen[bytes]:
        proc = self.workers.start(**self.env)
        wait_until(
            lambda: self.workers.logs().count(" started for groups") >= started,
            timeout=60,
            what=f"worker {started} started:\n{self.workers.logs()}",
        )
        return proc

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


def redis_client(url: str = REDIS_URL):
    import redis

    return redis.Redis.from_url(url)


def owed(client, prefix: str, group: str) -> int:
    """Events ``group`` owes (its owed set without the recovery marker, scored +inf)."""
    return client.zcount(f"{prefix}:owed:{group}", "-inf", "(inf")


def test_the_shop_relay_fans_out_to_a_group_only_the_warehouse_declared(
    workers: Workers, tmp_path: Path, prefix: str
):
    shop = Service(workers, SHOP, tmp_path / "shop.sqlite3", prefix)
    warehouse = Service(workers, WAREHOUSE, tmp_path / "warehouse.sqlite3", prefix)
    shop.deploy()
    warehouse.deploy()  # declares picking in Redis; the shop's database never hears of it
    stored = redis_client().hkeys(f"{prefix}:subscriptions")
    assert b'["warehouse","picking","order.placed"]' in stored, stored
    shop.start(1)
    shop.run("place_orders", str(ORDERS))
    # Only the shop's worker runs: its relay fanned out to the warehouse's group too.
    shop.wait_handled("shop:emails:order.placed", ORDERS)
    client = redis_client()
    wait_until(lambda: owed(client, prefix, "picking") == ORDERS, timeout=60, what="picking")
    warehouse.start(2)
    warehouse.wait_handled("warehouse:picking:order.placed", ORDERS)

    # A targeted redelivery (replay to one group) reaches that group only.
    shop.run("replay_events", "--group", "emails", "--reprocess", "--yes")
    wait_until(
        lambda: set(shop.handled("shop:emails:order.placed").values()) == {2},
        timeout=120,
        what="emails replayed",
    )
    workers.stop_all()
    assert_once(warehouse, "warehouse:picking:order.placed", range(ORDERS))
    assert not shop.dead_letters() and not warehouse.dead_letters()


def test_rolling_deploy_on_redis_loses_and_dead_letters_nothing(
    workers: Workers, tmp_path: Path, prefix: str
):
    database = tmp_path / "shop.sqlite3"
    old = Service(workers, SHOP, database, prefix, version=1)
    new = Service(workers, SHOP, database, prefix, version=2)
    old.deploy()
    old.start(1)
    new.deploy()  # the new release migrates (and declares) while the old worker runs
    placed, cancelled = 60, 40
    new.run("place_orders", str(placed))
    new.run("place_orders", str(cancelled), "--type", "order.cancelled", "--start", "1000")

    # Only the old worker runs: it relays to the new group and type, handles what it
    # knows and passes over the rest without counting an attempt.
    old.wait_handled("shop:emails:order.placed", placed)
    client = redis_client()
    wait_until(
        lambda: (
            owed(client, prefix, "loyalty") == placed
            and owed(client, prefix, "emails") == cancelled
        ),
        timeout=60,
        what="the old relay fanned out to the new group and the new type",
    )
    attempts = [
        fields[b"attempts"].decode()
        for _, fields in client.xrange(f"{prefix}:stream:emails")
        if fields[b"type"] == b"order.cancelled"
    ] + [
        dict(zip(flat[::2], flat[1::2], strict=True))["attempts"]
        for flat in map(json.loads, client.zrange(f"{prefix}:delayed:emails", 0, -1))
    ]
    assert len(attempts) >= cancelled, "the cancelled orders wait for the new version"
    assert set(attempts) == {"0"}, "the old worker burned no attempt"
    assert not old.dead_letters()

    new.start(2)  # old and new side by side
    new.wait_handled("shop:loyalty:order.placed", placed)
    new.wait_handled("shop:emails:order.cancelled", cancelled)
    workers.stop_all()
    assert_once(new, "shop:emails:order.placed", range(placed))
    assert_once(new, "shop:loyalty:order.placed", range(placed))
    assert_once(new, "shop:emails:order.cancelled", range(1000, 1000 + cancelled))
    assert not new.dead_letters()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_redis_losing_everything_loses_no_service_its_events(workers: Workers, tmp_path: Path):
    """A private Redis, restarted empty twice: once while the warehouse's worker is down
    (with 30 orders for picking in Redis, and 30 more published before the warehouse comes
    back), once while both run. The shop re-publishes its orders from its own log to the
    warehouse's group too, and the warehouse puts its subscription back itself."""
    server = PrivateRedis().start()
    try:
        prefix = unique_prefix()
        shop = Service(workers, SHOP, tmp_path / "shop.sqlite3", prefix, url=server.url)
        warehouse = Service(
            workers, WAREHOUSE, tmp_path / "warehouse.sqlite3", prefix, url=server.url
        )
        shop.deploy()
        warehouse.deploy()
        shop.start(1)
        warehouse_worker = warehouse.start(2)
        shop.run("place_orders", "40")
        warehouse.wait_handled("warehouse:picking:order.placed", 40)

        stop(warehouse_worker)
        shop.run("place_orders", "30", "--start", "40")
        client = redis_client(server.url)
        wait_until(lambda: owed(client, prefix, "picking") == 30, timeout=60, what="picking")
        server.kill()
        server.start()  # empty: streams, owed sets, the subscriptions hash all gone
        shop.run("place_orders", "30", "--start", "70")  # picking is declared nowhere now
        shop.wait_handled("shop:emails:order.placed", 100)
        warehouse.start(3)  # declares picking again: the shop re-publishes from its log
        warehouse.wait_handled("warehouse:picking:order.placed", 100)

        server.kill()
        server.start()  # both running: each puts its own subscriptions back
        shop.run("place_orders", "50", "--start", "100")
        shop.wait_handled("shop:emails:order.placed", 150)
        warehouse.wait_handled("warehouse:picking:order.placed", 150)
        workers.stop_all()
        assert_once(shop, "shop:emails:order.placed", range(150))
        assert_once(warehouse, "warehouse:picking:order.placed", range(150))
        assert not shop.dead_letters() and not warehouse.dead_letters()
    finally:
        workers.stop_all()
        server.destroy()
