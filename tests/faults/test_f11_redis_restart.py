"""F11, Redis restarted empty under load: what it held comes back from the event log.

2 publishers write events in transactions of 1 to 5 (about 10% rolled back) while a
relay moves them to a private Redis (no persistence). One consumer handles ``alpha``
throughout; ``beta`` builds a backlog. A third of the way in, Redis is SIGKILLed and
started again, empty. A second consumer then handles ``beta``. Every committed event
must be handled exactly once by each group. The control disables the transport's
recovery: the backlog Redis held is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..redis_support import PrivateRedis, events_settings, needs_redis, unique_prefix
from .checker import backlog_from, check_database, read_truth
from .conftest import (
    Procs,
    add_row,
    cursor_check,
    scalar,
    size,
    start_publishers,
    wait_exited,
    wait_until,
)

pytestmark = [pytest.mark.django_db(transaction=True), needs_redis()]
GROUPS = ["alpha", "beta"]


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    redis_server = PrivateRedis().start()
    try:
        yield redis_server
    finally:
        redis_server.destroy()


def run_restart(
    procs: Procs, tmp_path: Path, server: PrivateRedis, *, events: int, control: str = ""
) -> tuple[object, float | None, float]:
    from django_events.transports.redis import RedisStreamsTransport

    started = time.monotonic()
    settings = events_settings(unique_prefix(), server.url)
    overrides = {"LEASE": 2, "TRANSPORTS": settings["TRANSPORTS"]}
    silenced = {"DJANGO_EVENTS_TEST_SILENCED": json.dumps(["django_events.E008"])}
    env = procs.env(overrides=overrides, **silenced)
    relay_env = procs.env(overrides=overrides, DJANGO_EVENTS_FAULTS_CONTROL=control, **silenced)
    procs.command("relay", "relay_events", env=relay_env)
    procs.command("alpha", "consume_events", "--no-relay", "--group", "alpha", env=env)
    outs = start_publishers(procs, 2, events, tmp_path, env=env)
    wait_until(
        lambda: scalar("SELECT COUNT(*) FROM django_events_event") >= events // 3,
        timeout=120,
        what="a third of the events relayed",
    )
    server.kill()
    time.sleep(0.5)
    server.start()
    procs.command("beta", "consume_events", "--no-relay", "--group", "beta", env=env)
    wait_exited(procs, ["pub0", "pub1"], timeout=size(120, 600))
    transport = RedisStreamsTransport("f11", settings["TRANSPORTS"]["default"]["OPTIONS"])

    def drained() -> bool:
        outbox, _ = cursor_check(backlog_from)
        states = transport.status(GROUPS).values()
        return outbox == 0 and not sum(s.pending + s.in_flight for s in states)

    finished = time.monotonic()
    drained_in = None
    try:
        wait_until(drained, timeout=60, what="drained")
        time.sleep(3)  # a late top-up would show here as a duplicate or a fresh backlog
        wait_until(drained, timeout=30, what="drained again")
        drained_in = time.monotonic() - finished
    except AssertionError:
        pass
    transport.close()
    report = cursor_check(lambda c: check_database(c, read_truth(outs), GROUPS))
    return report, drained_in, time.monotonic() - started


def test_f11_redis_restarted_empty_loses_nothing(procs: Procs, tmp_path: Path, server):
    report, drained_in, secs = run_restart(procs, tmp_path, server, events=size(2000, 10_000))
    add_row("F11 Redis restarted empty under load", report, drain_s=drained_in, secs=secs)
    assert drained_in is not None, f"not drained: {report}\n{procs.logs()}"
    assert report.clean, f"{report}\n{procs.logs()}"
    assert report.dead == 0, report


def test_f11_control_without_recovery_loses_events(procs: Procs, tmp_path: Path, server):
    report, drained_in, secs = run_restart(
        procs, tmp_path, server, events=size(1000, 3000), control="no_redis_recovery"
    )
    add_row("F11 CONTROL Redis restart, recovery off", report, drain_s=drained_in, secs=secs)
    assert report.lost > 0, f"the checker must see lost events: {report}"
