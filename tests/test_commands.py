"""Management commands: consume_events, relay_events, events_status."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_events import publish
from django_events.engine.relay import Relay
from django_events.models import Delivery, OutboxMessage
from django_events.testing import deliver
from django_events.transports import transports

from .conftest import Workers
from .testapp.models import Effect
from .transport_support import owed, unrelayed

pytestmark = pytest.mark.django_db(transaction=True)


def status(*args: str) -> tuple[int, dict]:
    out = io.StringIO()
    try:
        call_command("events_status", "--json", *args, stdout=out)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, json.loads(out.getvalue())


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1, "HEALTH": {"MAX_OUTBOX_AGE": None}})
def test_events_status_json_reports_pending_in_flight_dead_and_outbox():
    publish("test.happened", {"n": 1, "fail": True})
    for n in range(2, 5):
        publish("test.happened", {"n": n})
    deliver(["alpha"])  # one dead letter for alpha; beta still owes 4
    transports["default"].claim(["beta"], 1, lease=60)  # one in flight for beta
    unrelayed(data={"n": 5})
    code, report = status()
    assert code == 0
    alpha, beta = report["groups"]["alpha"], report["groups"]["beta"]
    assert (alpha["pending"], alpha["in_flight"], alpha["dead"]) == (0, 0, 1)
    assert alpha["oldest_pending_age_s"] is None
    assert (beta["pending"], beta["in_flight"], beta["dead"]) == (3, 1, 0)
    assert 0 <= beta["oldest_pending_age_s"] < 60
    assert report["outbox"]["unrelayed"] == 1
    assert 0 <= report["outbox"]["oldest_age_s"] < 60
    assert report["healthy"] is True and report["problems"] == []
    assert {"sequence", "chain", "limited"} <= set(report["groups"])


@override_settings(DJANGO_EVENTS={"HEALTH": {"MAX_OUTBOX_AGE": 0}})
def test_events_status_exits_2_past_a_health_threshold():
    unrelayed(data={"n": 1})
    code, report = status()
    assert code == 2
    assert report["healthy"] is False
    assert "outbox" in report["problems"][0]


@override_settings(DJANGO_EVENTS={"HEALTH": {"MAX_DEAD": 0}, "MAX_ATTEMPTS": 1})
def test_events_status_flags_dead_letters_over_the_limit():
    publish("test.happened", {"n": 1, "fail": True})
    deliver(["alpha"])
    code, report = status()
    assert code == 2
    assert report["problems"] == ["group alpha: 1 dead letters (MAX_DEAD 0)"]


def test_events_status_table_is_readable():
    publish("test.happened", {"n": 1})
    Relay().run_once()
    out = io.StringIO()
    call_command("events_status", stdout=out)
    text = out.getvalue()
    assert "alpha" in text and "outbox: 0 unrelayed" in text


@pytest.mark.database_transport  # the log transport's publish() writes no outbox row
def test_relay_events_once_moves_the_outbox():
    publish("test.happened", {"n": 1})
    call_command("relay_events", "--once", verbosity=0)
    assert OutboxMessage.objects.count() == 0
    assert Delivery.objects.count() == 2
    assert not Effect.objects.exists(), "relaying runs no handler"


def test_consume_events_once_handles_everything_available_then_returns():
    for n in range(3):
        publish("test.happened", {"n": n})
    call_command("consume_events", "--once", "--group", "alpha", verbosity=0)
    assert sorted(Effect.objects.values_list("n", flat=True)) == [0, 1, 2]
    assert owed("beta") == 3


@pytest.mark.database_transport  # the log transport's publish() writes no outbox row
def test_consume_events_no_relay_leaves_the_outbox():
    publish("test.happened", {"n": 1})
    call_command("consume_events", "--once", "--no-relay", verbosity=0)
    assert OutboxMessage.objects.count() == 1


def test_consume_events_rejects_an_unknown_group():
    with pytest.raises(CommandError, match="'nope'"):
        call_command("consume_events", "--once", "--group", "nope")


def test_consume_events_exits_zero_from_the_command_line(workers: Workers):
    publish("test.happened", {"n": 1})
    result = workers.run("consume_events", "--once", "--verbosity", "2")
    assert result.returncode == 0, result.stderr
    assert "started for groups" in result.stderr
    assert Effect.objects.count() == 2


@pytest.mark.database_transport
def test_setup_events_is_a_no_op_for_the_database_transport():
    out = io.StringIO()
    call_command("setup_events", stdout=out)
    assert "DatabaseTransport (default): nothing to set up." in out.getvalue()


def test_setup_events_names_an_unknown_transport_alias():
    with pytest.raises(CommandError, match="nope"):
        call_command("setup_events", "--transport", "nope")


def test_stop_on_signals_stops_on_the_first_signal_and_restores_the_handlers_it_found():
    """A command run from a program leaves that program's own handlers in place."""
    import os
    import signal

    from django_events.management import SIGNALS, stop_on_signals

    def ours(signum, frame):  # the program's own handler
        raise AssertionError("not while the command runs")

    before = {sig: signal.signal(sig, ours) for sig in SIGNALS}
    stopped: list[bool] = []
    try:
        with stop_on_signals(lambda: stopped.append(True)):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stopped == [True]
        assert all(signal.getsignal(sig) is ours for sig in SIGNALS)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
