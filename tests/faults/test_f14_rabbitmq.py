"""F14, RabbitMQ: F1's kills, and a broker restarted under load, on the RabbitMQ transport.

Kills: F1 as on the other levels (4 publishers, 2 relays, 3 consumers, one SIGKILLed and
restarted every 0.5 to 2 s), under a fresh prefix on the shared broker; its control acks
to the broker before handling, and kills lose the events in hand.

Restart: 2 publishers write while a relay moves their events to a private node and a
consumer handles ``alpha``; ``beta`` builds a backlog. A third of the way in the node is
stopped and started again (same name and data, as a restart does), then a consumer of
``beta`` starts. Relay and consumers see
``TransportUnavailable`` meanwhile and carry on afterwards. Every committed event must be
handled once by each group: confirmed publishes are on disk in quorum queues, and what a
consumer held unacked comes again (the inbox skips what was already handled).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..rabbitmq_support import (
    PrivateNode,
    delete_everything,
    events_settings,
    needs_rabbitmq,
    unique_prefix,
)
from .checker import backlog_from, check_database, read_truth
from .conftest import (
    Procs,
    add_row,
    cursor_check,
    drained_since,
    rng_for,
    scalar,
    size,
    start_publishers,
    wait_exited,
    wait_until,
)
from .test_f1_kills import OVERRIDES, run_kills

pytestmark = [pytest.mark.django_db(transaction=True), needs_rabbitmq()]

GROUPS = ["alpha", "beta"]
DECLARED = ["alpha", "beta", "sequence", "chain", "limited"]  # every group tests.testapp has


def rabbit_backlog(transport: Any) -> Callable[[], tuple[int, int]]:
    """(outbox rows, messages not yet handled) for ``drained_since``. AMQP reports only a
    queue's ready messages, not those a consumer holds unacked, so the effects table must
    also have stood still since the last look: anything still in hand shows as one."""
    last = [-1]

    def backlog() -> tuple[int, int]:
        outbox, _ = cursor_check(backlog_from)
        ready = sum(s.pending for s in transport.status(GROUPS).values())
        effects = scalar("SELECT COUNT(*) FROM testapp_effect")
        moving = int(effects != last[0])
        last[0] = effects
        time.sleep(0.5)
        return outbox, ready + moving

    return backlog


@pytest.fixture
def rabbit_run() -> Iterator[dict]:
    """F1's settings on RabbitMQ under a fresh prefix, its backlog; the queues deleted after."""
    from django_events.transports.rabbitmq import RabbitMQTransport

    settings = events_settings(unique_prefix())
    transport = RabbitMQTransport("f14", settings["TRANSPORTS"]["default"]["OPTIONS"])
    yield {
        "overrides": {**OVERRIDES, "TRANSPORTS": settings["TRANSPORTS"]},
        "backlog": rabbit_backlog(transport),
    }
    transport.close()
    delete_everything(transport, DECLARED)


def test_f14_rabbitmq_random_kills_lose_and_duplicate_nothing(
    procs: Procs, tmp_path: Path, rabbit_run: dict
):
    report, kills, drained_in, secs = run_kills(
        procs,
        tmp_path,
        events=size(1500, 10_000),
        kills=size(8, 24),
        pause=size((0.5, 2.0), (1.0, 5.0)),
        name="f14-rabbitmq",
        **rabbit_run,
    )
    add_row(
        "F14 kills on RabbitMQ: 4 pub, 2 relays, 3 consumers",
        report,
        kills=kills,
        drain_s=drained_in,
        secs=secs,
    )
    assert drained_in is not None, f"not drained within 60 s of the last kill: {report}"
    assert report.clean, f"{report}\n{procs.logs()}"
    assert report.dead == 0, report


def kill_started_consumers(procs: Procs, rng: Any, *, kills: int, publishers: list[str]) -> int:
    """SIGKILL and restart a consumer that has started its worker (its log says so since
    its last start) 0.3 to 1 s after it did, ``kills`` times and until the publishers end:
    on a loaded machine a consumer takes seconds to start, and one killed before its
    first claim holds nothing to lose. Returns the number of kills."""
    done = 0
    deadline = time.monotonic() + size(240, 900)
    while done < kills or any(procs.procs[p].alive() for p in publishers):
        assert time.monotonic() < deadline, "publishers did not finish\n" + procs.logs()
        victim = procs.procs[rng.choice(["consumer0", "consumer1", "consumer2"])]
        wait_until(
            lambda v=victim: "started for groups" in v.log.read_text().rsplit("--- start", 1)[-1],
            timeout=60,
            what=f"{victim.name} started",
        )
        time.sleep(rng.uniform(0.3, 1.0))
        procs.kill(victim.name)
        procs.restart(victim.name)
        done += 1
    wait_exited(procs, publishers, timeout=60)
    return done


def test_f14_control_rabbitmq_ack_before_handling_loses_events(
    procs: Procs, tmp_path: Path, rabbit_run: dict
):
    """CONTROL: consumers that ack to the broker first lose what they hold when killed
    (F1's control on RabbitMQ: a steady 100 events a second, 0.25 s between ack and
    handlers, each kill landing on a consumer that has started)."""
    started = time.monotonic()
    env = procs.env(overrides=rabbit_run["overrides"])
    for i in range(2):
        procs.command(f"relay{i}", "relay_events", env=env)
    consumer_env = procs.env(
        overrides=rabbit_run["overrides"],
        DJANGO_EVENTS_FAULTS_CONTROL="ack_first",
        DJANGO_EVENTS_FAULTS_ACK_GAP="0.25",
    )
    for i in range(3):
        procs.command(f"consumer{i}", "consume_events", "--no-relay", env=consumer_env)
    outs = start_publishers(procs, 4, size(1500, 3000), tmp_path, env=env, rate=100)
    publishers = [f"pub{i}" for i in range(4)]
    kills = kill_started_consumers(
        procs, rng_for("f14-rabbitmq-control"), kills=size(4, 10), publishers=publishers
    )
    drained_in = drained_since(time.monotonic(), rabbit_run["backlog"])
    report = cursor_check(lambda c: check_database(c, read_truth(outs), GROUPS))
    add_row(
        "F14 CONTROL RabbitMQ consumers ack before handling",
        report,
        kills=kills,
        drain_s=drained_in,
        secs=time.monotonic() - started,
    )
    assert report.lost > 0, f"the checker must see lost events: {report}"


@pytest.fixture
def node() -> Iterator[PrivateNode]:
    # Not under pytest's tmp_path: the node runs as the rabbitmq user, who must reach it.
    directory = Path(tempfile.mkdtemp(prefix="de-f14-"))
    private = PrivateNode(directory)
    try:
        private.start()
        yield private
    finally:
        private.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_f14_rabbitmq_restarted_under_load_loses_nothing(
    procs: Procs, tmp_path: Path, node: PrivateNode
):
    from django_events.transports.rabbitmq import RabbitMQTransport

    events = size(1000, 6000)
    started = time.monotonic()
    settings = events_settings("f14", node.url, heartbeat=5)
    overrides = {**OVERRIDES, "TRANSPORTS": settings["TRANSPORTS"]}
    env = procs.env(overrides=overrides)
    procs.command("relay", "relay_events", env=env)
    procs.command("alpha", "consume_events", "--no-relay", "--group", "alpha", env=env)
    outs = start_publishers(procs, 2, events, tmp_path, env=env, rate=size(100, 200))
    wait_until(
        lambda: scalar("SELECT COUNT(*) FROM testapp_effect") >= events // 3,
        timeout=120,
        what="a third of the events handled by alpha",
    )
    node.stop()
    time.sleep(1)
    node.start()
    procs.command("beta", "consume_events", "--no-relay", "--group", "beta", env=env)
    wait_exited(procs, ["pub0", "pub1"], timeout=size(120, 600))
    transport = RabbitMQTransport("f14", settings["TRANSPORTS"]["default"]["OPTIONS"])
    backlog = rabbit_backlog(transport)
    finished = time.monotonic()
    drained_in = None
    try:
        wait_until(lambda: backlog() == (0, 0), timeout=90, what="drained")
        drained_in = time.monotonic() - finished
    except AssertionError:
        pass
    transport.close()
    report = cursor_check(lambda c: check_database(c, read_truth(outs), GROUPS))
    add_row(
        "F14 RabbitMQ node restarted under load",
        report,
        drain_s=drained_in,
        secs=time.monotonic() - started,
    )
    assert drained_in is not None, f"not drained: {report}\n{procs.logs()}"
    assert report.clean, f"{report}\n{procs.logs()}"
    assert report.dead == 0, report
