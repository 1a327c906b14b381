"""F15, moving live under load: the database to RabbitMQ and back, the database into the
log transport and the log transport to RabbitMQ, Redis to SNS + SQS.

The scenario of tests/test_moving.py (events in flight, ordered keys among them, more
published during the move, workers killed with SIGKILL mid-move and replaced). Where both
sides keep per-key order the ordered group's worker is killed too. Every event handled
once per group, each key in publish order (docs/moving.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.db import connection

from django_events.registry import registry
from django_events.transports import transports

from ..conftest import Workers
from ..rabbitmq_support import needs_rabbitmq
from ..redis_support import needs_redis
from ..sqs_server import aws_env, moto_endpoint
from ..test_moving import move_under_load, moving_between
from .conftest import add_row

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.django_db(transaction=True), needs_rabbitmq(), needs_redis()]


@pytest.fixture
def database_to_rabbitmq() -> Iterator[dict[str, str]]:
    with moving_between("database", "rabbitmq") as env:
        yield env


def test_f15_database_to_rabbitmq_with_both_workers_killed(
    workers: Workers, database_to_rabbitmq: dict[str, str]
):
    started = time.monotonic()
    move_under_load(workers, database_to_rabbitmq, kill_ordered=True)
    add_row("F15 move database -> RabbitMQ, 2 kills", secs=time.monotonic() - started)


@pytest.fixture
def rabbitmq_to_database() -> Iterator[dict[str, str]]:
    with moving_between("rabbitmq", "database") as env:
        yield env


def test_f15_rabbitmq_back_to_the_database_with_both_workers_killed(
    workers: Workers, rabbitmq_to_database: dict[str, str]
):
    started = time.monotonic()
    move_under_load(workers, rabbitmq_to_database, kill_ordered=True)
    add_row("F15 move RabbitMQ -> database, 2 kills", secs=time.monotonic() - started)


@pytest.fixture
def database_to_log() -> Iterator[dict[str, str]]:
    with moving_between("database", "log") as env:
        yield env


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the log transport needs PostgreSQL")
def test_f15_database_into_the_log_transport_with_both_workers_killed(
    workers: Workers, database_to_log: dict[str, str]
):
    """The two share their tables: the cursors start at the cutover (docs/moving.md,
    "Into the log transport")."""
    started = time.monotonic()
    move_under_load(workers, database_to_log, kill_ordered=True)
    add_row("F15 move database -> log transport, 2 kills", secs=time.monotonic() - started)


@pytest.fixture
def log_to_rabbitmq() -> Iterator[dict[str, str]]:
    with moving_between("log", "rabbitmq") as env:
        # Every group's cursor, as `migrate` starts them: the test database was flushed
        # under the database transport's settings.
        transports["default"].setup(registry.subscriptions())
        yield env


def test_f15_log_transport_to_rabbitmq_with_both_workers_killed(
    workers: Workers, log_to_rabbitmq: dict[str, str]
):
    """Publishers write the log until the cutover, the outbox from it; the cursors drain
    while RabbitMQ takes the new events (docs/moving.md, "Out of the log transport")."""
    started = time.monotonic()
    move_under_load(workers, log_to_rabbitmq, kill_ordered=True)
    add_row("F15 move log transport -> RabbitMQ, 2 kills", secs=time.monotonic() - started)


@pytest.fixture
def redis_to_sqs(moto_endpoint: str, aws_env: dict[str, str]) -> Iterator[dict[str, str]]:
    with moving_between("redis", "sqs", moto_endpoint) as env:
        yield {**env, **aws_env}


def test_f15_redis_to_sns_sqs_with_a_worker_killed(workers: Workers, redis_to_sqs: dict[str, str]):
    """Redis keeps no per-key order through a kill, so only the unordered worker is killed."""
    started = time.monotonic()
    move_under_load(workers, redis_to_sqs, kill_ordered=False)
    add_row("F15 move Redis -> SNS + SQS (FIFO), 1 kill", secs=time.monotonic() - started)
