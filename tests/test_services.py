"""Two services sharing one database, each its own Django project (settings, apps,
handlers), run as subprocesses: ``shop`` (group ``emails``) and ``warehouse`` (group
``picking``) both consume the shop's ``order.placed``. Whichever relay moves the outbox,
each group gets every event once; and a rolling deploy of ``shop`` (old and new version
side by side) loses nothing and dead-letters nothing.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from django.db.models import Count

from django_events.models import DeadLetter, Delivery, OutboxMessage, Subscription

from .conftest import Workers, vendor, wait_until
from .testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SHOP = "tests.services.shop_settings"
WAREHOUSE = "tests.services.warehouse_settings"
ORDERS = 100


def project(settings_module: str, *, version: int = 1, **overrides: object) -> dict[str, str]:
    """The environment of one project's process, pointed at the test database."""
    return {
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DJANGO_EVENTS_TEST_DB_ENGINE": "sqlite3" if vendor() == "sqlite" else "postgresql",
        "DJANGO_EVENTS_TEST_OVERRIDES": json.dumps(overrides),
        "SHOP_VERSION": str(version),
    }


def deploy(workers: Workers, env: dict[str, str]) -> None:
    """What a deploy runs before starting the new code: ``migrate`` (which declares)."""
    result = workers.run("migrate", "--no-input", **env)
    assert result.returncode == 0, result.stdout + result.stderr


def place_orders(workers: Workers, count: int, *args: str, **env: str) -> None:
    result = workers.run("place_orders", str(count), *args, **env)
    assert result.returncode == 0, result.stdout + result.stderr


def start(workers: Workers, env: dict[str, str], started: int) -> None:
    """Start a worker of ``env``'s project and wait until it runs (``started`` in all)."""
    workers.start(**env)
    wait_until(
        lambda: workers.logs().count(" started for groups") >= started,
        timeout=60,
        what=f"worker {started} started:\n{workers.logs()}",
    )


def handled(label: str) -> Counter[int]:
    """How often each order number was handled for ``service:group:type``."""
    return Counter(Effect.objects.filter(group=label).values_list("n", flat=True))


def wait_handled(label: str, count: int) -> None:
    wait_until(lambda: sum(handled(label).values()) >= count, timeout=120, what=label)


def waiting(group: str, event_type: str) -> int:
    return Delivery.objects.filter(group_name=group, event_type=event_type).count()


def assert_once(label: str, numbers: range) -> None:
    counts = handled(label)
    assert sorted(counts) == list(numbers), f"{label}: missing or extra events"
    assert set(counts.values()) == {1}, f"{label}: handled twice: {counts.most_common(3)}"


def both_groups_get_every_order_once(workers: Workers) -> None:
    labels = ("shop:emails:order.placed", "warehouse:picking:order.placed")
    for label in labels:
        wait_handled(label, ORDERS)
    workers.stop_all()
    for label in labels:
        assert_once(label, range(ORDERS))
    assert not DeadLetter.objects.exists()
    assert not OutboxMessage.objects.exists() and not Delivery.objects.exists()


@pytest.mark.parametrize("first", ["warehouse", "shop"])
def test_each_group_gets_every_event_once_whichever_service_relays(workers: Workers, first: str):
    shop, warehouse = project(SHOP), project(WAREHOUSE)
    deploy(workers, shop)
    deploy(workers, warehouse)
    assert set(Subscription.objects.values_list("service", "group", "event_type")) >= {
        ("shop", "emails", "order.placed"),
        ("warehouse", "picking", "order.placed"),
    }
    emails, picking = "shop:emails:order.placed", "warehouse:picking:order.placed"
    runs_first, own, other_group = (
        (warehouse, picking, "emails") if first == "warehouse" else (shop, emails, "picking")
    )
    start(workers, runs_first, 1)
    place_orders(workers, ORDERS, **shop)
    # Only one service's worker runs: its relay fanned out to the other service's group too.
    wait_handled(own, ORDERS)
    wait_until(lambda: waiting(other_group, "order.placed") == ORDERS, timeout=60)
    start(workers, warehouse if first == "shop" else shop, 2)
    both_groups_get_every_order_once(workers)


def test_both_relays_racing_each_group_gets_every_event_once(workers: Workers):
    shop, warehouse = project(SHOP), project(WAREHOUSE)
    # No migrate here: a worker starting declares its own service's subscriptions.
    start(workers, shop, 1)
    start(workers, warehouse, 2)
    start(workers, shop, 3)
    place_orders(workers, ORDERS, "--per-transaction", "3", **shop)
    both_groups_get_every_order_once(workers)


def test_rolling_deploy_adding_a_group_and_a_type_loses_and_dead_letters_nothing(
    workers: Workers,
):
    # A cache on every relay: the new version's migrate waits it out before returning.
    old = project(SHOP, version=1, SUBSCRIPTIONS_CACHE=1)
    new = project(SHOP, version=2, SUBSCRIPTIONS_CACHE=1)
    deploy(workers, old)
    start(workers, old, 1)
    deploy(workers, new)  # the new release migrates while the old worker keeps running
    placed, cancelled = 60, 40
    place_orders(workers, placed, **new)
    place_orders(workers, cancelled, "--type", "order.cancelled", "--start", "1000", **new)

    # Only the old worker runs: it handles what it knows and leaves the rest untouched.
    wait_handled("shop:emails:order.placed", placed)
    wait_until(
        lambda: (
            not OutboxMessage.objects.exists()
            and waiting("loyalty", "order.placed") == placed
            and waiting("emails", "order.cancelled") == cancelled
        ),
        timeout=60,
        what="the old relay fanned out to the new group and the new type",
    )
    assert not DeadLetter.objects.exists(), list(DeadLetter.objects.values("group", "error_class"))
    attempts = Delivery.objects.values("attempts").annotate(n=Count("id"))
    assert {row["attempts"] for row in attempts} == {0}, "the old worker burned no attempt"

    start(workers, new, 2)  # old and new side by side
    wait_handled("shop:loyalty:order.placed", placed)
    wait_handled("shop:emails:order.cancelled", cancelled)
    workers.stop_all()
    assert_once("shop:emails:order.placed", range(placed))
    assert_once("shop:loyalty:order.placed", range(placed))
    assert_once("shop:emails:order.cancelled", range(1000, 1000 + cancelled))
    assert not DeadLetter.objects.exists()
    assert not Delivery.objects.exists()
