"""F13, services: two Django projects sharing one database, both publishing, their workers
SIGKILLed at random.

``shop`` and ``warehouse`` (tests/services/, each its own settings and handler registry)
declare their subscriptions with ``migrate``, as a deploy does, then each runs 2 workers
(``consume_events``, relay included) and 2 publishers, 3,000 events in all at 150 a second
(12,000 at 200 full): the shop writes ``order.placed`` (groups ``emails`` in shop,
``picking`` in warehouse), the warehouse ``stock.reserved`` (``ledger`` in shop, ``stock``
in warehouse). Every 0.5 to 2 s (1 to 4 s full) one worker of either service is SIGKILLed
and restarted, at least 12 times (30 full). Every committed event must be handled once by
each group of each service, whichever service's relay moved it.

The control runs relays that fan out from their own registry only, as before
subscriptions were stored: an event relayed by the other service's worker never reaches a
group, so the checker must see lost events.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .checker import Report, check_database, read_truth
from .conftest import (
    Procs,
    add_row,
    cursor_check,
    drained_since,
    kill_at_random,
    rng_for,
    size,
    start_publishers,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

SETTINGS = {
    "shop": "tests.services.shop_settings",
    "warehouse": "tests.services.warehouse_settings",
}
PUBLISHES = {"shop": "order.placed", "warehouse": "stock.reserved"}
GROUPS = {
    # what each service publishes -> the ``service:group:type`` effect labels it must reach
    "shop": ["shop:emails:order.placed", "warehouse:picking:order.placed"],
    "warehouse": ["shop:ledger:stock.reserved", "warehouse:stock:stock.reserved"],
}
WORKERS = [f"{service}-w{i}" for service in SETTINGS for i in range(2)]


def service_env(procs: Procs, service: str, control: str = "") -> dict[str, str]:
    return procs.env(
        overrides={"LEASE": 2},
        DJANGO_SETTINGS_MODULE=SETTINGS[service],
        DJANGO_EVENTS_TEST_DB_ENGINE="postgresql",
        DJANGO_EVENTS_FAULTS_CONTROL=control,
    )


def run_services(
    procs: Procs,
    tmp_path: Path,
    *,
    events: int,
    kills: int,
    name: str,
    rate: float,
    control: str = "",
) -> tuple[Report, int, float | None, float]:
    """Kills land while both services publish: ``rate`` events a second in all, spread
    over the run, so the publishers are still writing when most kills come."""
    rng = rng_for(name)
    started = time.monotonic()
    envs = {service: service_env(procs, service, control) for service in SETTINGS}
    for service, env in envs.items():  # the deploy rule: declare before any publish
        procs.command(f"{service}-migrate", "migrate", "--no-input", "-v0", env=env)
        assert procs.wait(f"{service}-migrate", timeout=120) == 0, procs.logs()
    for worker in WORKERS:
        procs.command(worker, "consume_events", env=envs[worker.split("-")[0]])
    truths = {
        service: start_publishers(
            procs,
            2,
            events // 2,
            tmp_path,
            env=env,
            name=f"{service}-pub",
            event_type=PUBLISHES[service],
            rate=rate / 2,
        )
        for service, env in envs.items()
    }
    publishers = [f"{service}-pub{i}" for service in SETTINGS for i in range(2)]
    done, last_kill = kill_at_random(
        procs,
        rng,
        targets=WORKERS,
        publishers=publishers,
        kills=kills,
        pause=size((0.5, 2.0), (1.0, 4.0)),
        timeout=size(120, 600),
    )
    drained_in = drained_since(last_kill)
    report = Report()
    for service, outs in truths.items():  # each service's events, on the groups they reach
        report += cursor_check(
            lambda c, o=outs, s=service: check_database(c, read_truth(o), GROUPS[s])
        )
    return report, done, drained_in, time.monotonic() - started


def test_f13_two_services_killed_at_random_lose_and_duplicate_nothing(procs: Procs, tmp_path: Path):
    report, kills, drained_in, secs = run_services(
        procs,
        tmp_path,
        events=size(3000, 12_000),
        kills=size(12, 30),
        rate=size(150, 200),
        name="f13",
    )
    add_row(
        "F13 services: 2 projects, 4 pub, 4 workers",
        report,
        kills=kills,
        drain_s=drained_in,
        secs=secs,
    )
    assert drained_in is not None, f"not drained within 60 s of the last kill: {report}"
    assert report.clean, f"{report}\n{procs.logs()}"
    assert report.dead == 0, report


def test_f13_control_relays_fan_out_from_their_own_registry_lose_events(
    procs: Procs, tmp_path: Path
):
    """CONTROL: each relay fans out to its own service's groups only (as before #13):
    what the other service's worker relays never reaches this service's groups."""
    report, kills, drained_in, secs = run_services(
        procs,
        tmp_path,
        events=size(400, 1000),
        rate=200,
        kills=size(3, 6),
        name="f13-control",
        control="own_registry",
    )
    add_row(
        "F13 CONTROL relays fan out from own registry",
        report,
        kills=kills,
        drain_s=drained_in,
        secs=secs,
    )
    assert report.lost > 0, f"the checker must see lost events: {report}"
