"""The watchdog bounds the engine's database calls, never handler code."""

from __future__ import annotations

import time

import pytest
from django.db import OperationalError, connection, connections

from django_events.engine.watchdog import Watchdog

from .conftest import postgres_only

pytestmark = [pytest.mark.django_db(transaction=True), postgres_only]


@pytest.fixture
def watchdog():
    dog = Watchdog(timeout=1.0)
    dog.start()
    yield dog
    dog.stop()
    connections.close_all()


def test_an_engine_call_that_does_not_answer_is_cut(watchdog: Watchdog):
    started = time.monotonic()
    with (
        connection.execute_wrapper(watchdog.wrapper),
        pytest.raises(OperationalError),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT pg_sleep(4) AS watchdog_test")
    assert time.monotonic() - started < 3.5
    connections.close_all()
    with connection.cursor() as cursor:  # the server-side backend sleeps on: end it
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE %s AND pid <> pg_backend_pid()",
            ["%AS watchdog_test"],
        )


def test_a_cut_call_is_cancelled_on_the_server_too(watchdog: Watchdog):
    """The statement must not run on after the client gave up, holding its locks."""
    with (
        connection.execute_wrapper(watchdog.wrapper),
        pytest.raises(OperationalError),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT pg_sleep(30) AS watchdog_cancel_test")
    connections.close_all()

    def still_running() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                ["%AS watchdog_cancel_test"],
            )
            return int(cursor.fetchone()[0])

    deadline = time.monotonic() + 5
    while still_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    running = still_running()
    if running:  # leave the shared server clean whatever the outcome
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                ["%AS watchdog_cancel_test"],
            )
    assert running == 0, "the server still runs the statement the watchdog cut"


def test_handler_code_is_never_timed(watchdog: Watchdog):
    with connection.execute_wrapper(watchdog.wrapper), connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # arms the clock, as an engine statement would
        with watchdog.paused():
            time.sleep(2)  # a slow handler, longer than the timeout
        cursor.execute("SELECT 2")
        assert cursor.fetchone() == (2,)
