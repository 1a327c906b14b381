"""F15, moving live: the database to RabbitMQ under load, both workers killed mid-move.

The scenario of tests/test_moving.py (events in flight, ordered keys among them, more
published during the move), on a pair where both sides keep per-key order, so the
ordered group's worker is killed too: every event handled once per group, each key in
publish order (docs/moving.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ..conftest import Workers
from ..rabbitmq_support import needs_pika
from ..redis_support import needs_redis
from ..test_moving import move_under_load, moving_between
from .conftest import add_row

pytestmark = [pytest.mark.django_db(transaction=True), needs_pika(), needs_redis()]


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
