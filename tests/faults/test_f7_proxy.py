"""F7, cut connections and latency, through a TCP fault proxy (``proxy.py``).

A relay and two consumers reach PostgreSQL only through the proxy, configured with the
timeouts a production deployment would give them (``connect_timeout``, TCP keepalives,
``tcp_user_timeout``, a ``statement_timeout``). Events are published straight to the
database all along. For 5, 15 and 60 s the proxy drops every connection, stalls them
(half-open), or delays every packet; then it passes again. Recovery (a marker event
published when the fault ends is handled by both groups) must take at most twice the
configured timeout, and the checker must find nothing lost or duplicated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.db import transaction

from django_events import publish

from .checker import COMMITTED, backlog_from, check_database
from .conftest import FULL, Procs, add_row, cursor_check, scalar, wait_until
from .proxy import FaultProxy

pytestmark = [pytest.mark.django_db(transaction=True)]

GROUPS = ["alpha", "beta"]
TIMEOUT = 5  # seconds: CALL_TIMEOUT, connect_timeout, keepalives, tcp_user_timeout
DB_OPTIONS = {
    "connect_timeout": TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": TIMEOUT * 1000,
    "options": f"-c statement_timeout={TIMEOUT * 1000}",
}
DURATIONS = [5, 15, 60] if FULL else [5]
DELAY_MS = 300


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    from django.db import connection

    fault = FaultProxy(int(connection.settings_dict["PORT"] or 5432)).start()
    try:
        yield fault
    finally:
        fault.close()


class Publisher:
    def __init__(self, **data: object) -> None:
        self.truth: dict = {}
        self.n = 0
        self.data = data

    def some(self, count: int = 3) -> None:
        with transaction.atomic():
            for _ in range(count):
                event = publish("test.happened", {"n": self.n, **self.data})
                self.truth[event.id] = COMMITTED
                self.n += 1

    def for_seconds(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.some()
            time.sleep(0.1)


def _handled(event_id) -> bool:
    return scalar("SELECT COUNT(*) FROM testapp_effect WHERE event_id = %s", [event_id]) >= 2


def _scenario(
    procs: Procs, proxy: FaultProxy, mode: str, seconds: int, db_options: dict, control: str = ""
):
    env = procs.env(
        overrides={"LEASE": 3, "CALL_TIMEOUT": TIMEOUT},
        DJANGO_EVENTS_FAULTS_CONTROL=control,
        PGPORT=str(proxy.port),
        DJANGO_EVENTS_FAULTS_DB_OPTIONS=__import__("json").dumps(db_options),
    )
    procs.command("relay", "relay_events", env=env)
    for i in range(2):
        procs.command(f"consumer{i}", "consume_events", "--no-relay", env=env)
    pub = Publisher(sleep=0.05) if control else Publisher()  # controls: keep consumers busy
    pub.some()
    first = next(iter(pub.truth))
    wait_until(lambda: _handled(first), timeout=60, what="flowing before the fault")
    pub.for_seconds(2)
    proxy.set_mode(mode, delay_ms=DELAY_MS)
    pub.for_seconds(seconds)
    proxy.set_mode("pass")
    ended = time.monotonic()
    with transaction.atomic():
        marker = publish("test.happened", {"n": -1}).id
    pub.truth[marker] = COMMITTED
    recovery = None
    deadline = ended + (max(60, 6 * TIMEOUT) if FULL else 4 * TIMEOUT)
    while time.monotonic() < deadline:
        if _handled(marker):
            recovery = time.monotonic() - ended
            break
        pub.some(1)
        time.sleep(0.2)
    drained = None
    if recovery is not None:
        try:
            wait_until(lambda: cursor_check(backlog_from) == (0, 0), timeout=60)
            drained = time.monotonic() - ended
        except AssertionError:
            pass
    report = cursor_check(lambda c: check_database(c, pub.truth, GROUPS))
    alive = all(procs.procs[n].alive() for n in ("relay", "consumer0", "consumer1"))
    return report, recovery, drained, alive


def _row(name: str, report, recovery, drained, started) -> None:
    add_row(
        name,
        report,
        drain_s=drained,
        secs=time.monotonic() - started,
        note="recovery "
        + (f"{recovery:.1f}s" if recovery is not None else "NEVER")
        + f" (limit {2 * TIMEOUT}s)",
    )


CASES = [pytest.param(mode, s) for mode in ("drop", "delay") for s in DURATIONS]


@pytest.mark.parametrize(("mode", "seconds"), CASES)
def test_f7_connection_faults(procs: Procs, proxy: FaultProxy, mode: str, seconds: int):
    started = time.monotonic()
    report, recovery, drained, alive = _scenario(procs, proxy, mode, seconds, DB_OPTIONS)
    _row(
        f"F7 {mode} {seconds}s" + (f" ({DELAY_MS}ms)" if mode == "delay" else ""),
        report,
        recovery,
        drained,
        started,
    )
    assert alive, procs.logs()
    assert recovery is not None and recovery <= 2 * TIMEOUT, (recovery, procs.logs())
    assert report.clean, report


@pytest.mark.parametrize("seconds", DURATIONS)
def test_f7_stall_half_open(procs: Procs, proxy: FaultProxy, seconds: int):
    started = time.monotonic()
    report, recovery, drained, alive = _scenario(procs, proxy, "stall", seconds, DB_OPTIONS)
    _row(f"F7 stall (half-open) {seconds}s", report, recovery, drained, started)
    assert alive, procs.logs()
    assert recovery is not None and recovery <= 2 * TIMEOUT, (recovery, procs.logs())
    assert report.clean, report


def test_f7_control_ack_first_loses_events_when_connections_drop(procs: Procs, proxy: FaultProxy):
    started = time.monotonic()
    report, recovery, drained, _alive = _scenario(
        procs, proxy, "drop", 5, DB_OPTIONS, control="ack_first"
    )
    _row("F7 CONTROL ack first, drop 5s", report, recovery, drained, started)
    assert report.lost > 0, report
