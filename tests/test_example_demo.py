"""The example project's demo, run the way its README says (``manage.py demo`` in a
subprocess), on each transport by settings alone: the log transport (its own SQLite file,
or its own PostgreSQL database), the first-generation database transport, Redis Streams,
RabbitMQ and SNS + SQS (moto's server). The demo is the same code every time; only the
environment that picks the transport changes.

On every transport the demo has two services: the shop and the warehouse, a second
Django project run in its own processes, whose group ``picking`` gets every order: on
SNS + SQS because the warehouse's own ``setup_events`` subscribed its queue to the topic,
on RabbitMQ because it binds its own queue to the exchange."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from .rabbitmq_support import RABBITMQ_URL, delete_everything, needs_rabbitmq
from .rabbitmq_support import unique_prefix as unique_rabbitmq_prefix
from .redis_support import needs_redis
from .sqs_server import DUMMY_CREDENTIALS, moto_endpoint

__all__ = ["moto_endpoint"]  # a fixture, imported for pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

pytestmark = [pytest.mark.slow]
# The demo has its own SQLite file: once is enough, in the SQLite run of the suite; its
# PostgreSQL run (its own database on the suite's server) is in the PostgreSQL run.
on_sqlite = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="the demo runs on its own SQLite file"
)
on_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the PostgreSQL run of the demo"
)


def run_demo(tmp_path: Path, **env: str) -> str:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "EXAMPLE_", "AWS_"))
    }
    environ["EXAMPLE_DATABASE"] = str(tmp_path / "demo.sqlite3")
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "manage.py", "demo"],
        cwd=EXAMPLE,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def assert_the_shop_ran(output: str) -> None:
    """Four orders and one legacy order: each group's outcome, as the demo reports it."""
    assert "5 confirmation email(s) sent" in output, output
    assert "1 dead letter(s)" in output, output
    assert "Every shop handler received OrderPlaced v2" in output, output


def assert_both_services_ran(output: str) -> None:
    """The warehouse declared ``picking`` before the shop published, so every order,
    the version-1 one too, reached it; events_status shows both services' subscriptions."""
    assert "warehouse: picking on order.placed: subscribed" in output, output
    assert "picking (warehouse): 5 pick list(s)" in output, output
    assert "from order.placed v1" in output, output
    subscriptions = output.split("subscriptions (this is service shop):", 1)[1]
    assert "shop            emails" in subscriptions, output
    assert "warehouse       picking" in subscriptions, output


@on_sqlite
def test_demo_on_the_database(tmp_path: Path):
    output = run_demo(tmp_path)
    assert_the_shop_ran(output)
    assert_both_services_ran(output)
    assert "nothing to set up" in output.lower(), output


@on_sqlite
def test_demo_on_the_first_generation_database_transport(tmp_path: Path):
    output = run_demo(tmp_path, DJANGO_EVENTS_TRANSPORT="database")
    assert "DatabaseTransport (default): nothing to set up" in output, output
    assert_the_shop_ran(output)
    assert_both_services_ran(output)


@pytest.fixture
def demo_postgres() -> Iterator[str]:
    """A database of its own for the demo on the suite's PostgreSQL server; dropped after."""
    import psycopg

    db = settings.DATABASES["default"]
    name = f"{connection.settings_dict['NAME']}_demo"
    server = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "dbname": "postgres"}
    with psycopg.connect(**server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"
    finally:
        with psycopg.connect(**server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@on_postgres
def test_demo_on_the_database_on_postgresql(tmp_path: Path, demo_postgres: str):
    output = run_demo(tmp_path, EXAMPLE_DATABASE=demo_postgres)
    assert_the_shop_ran(output)
    assert_both_services_ran(output)


@on_sqlite
@needs_redis()
def test_demo_on_redis_streams(tmp_path: Path):
    output = run_demo(tmp_path, DJANGO_EVENTS_TRANSPORT="redis")
    assert_the_shop_ran(output)
    assert_both_services_ran(output)
    assert "RedisStreamsTransport (default) did:" in output, "setup_events made the streams"


@on_sqlite
@needs_rabbitmq()
def test_demo_on_rabbitmq(tmp_path: Path):
    """Both services: the warehouse's migrate binds its own queue to the shop's exchange."""
    from django_events.transports.rabbitmq import RabbitMQTransport

    prefix = unique_rabbitmq_prefix()
    try:
        output = run_demo(
            tmp_path, DJANGO_EVENTS_TRANSPORT="rabbitmq", EXAMPLE_RABBITMQ_PREFIX=prefix
        )
    finally:
        names = RabbitMQTransport("demo", {"url": RABBITMQ_URL, "prefix": prefix})
        delete_everything(names, ["analytics", "crm", "emails", "picking"])
    assert_the_shop_ran(output)
    assert_both_services_ran(output)
    assert "RabbitMQTransport (default) did:" in output, "setup_events declared the queues"
    assert f"binding {prefix}.emails <- {prefix} on order.placed" in output


@on_sqlite
def test_demo_on_sns_and_sqs(tmp_path: Path, moto_endpoint: str):
    prefix = f"demo{uuid.uuid4().hex[:8]}-"
    output = run_demo(
        tmp_path,
        EXAMPLE_SQS_ENDPOINT=moto_endpoint,
        EXAMPLE_SQS_PREFIX=prefix,
        **DUMMY_CREDENTIALS,
    )
    assert_the_shop_ran(output)
    assert_both_services_ran(output)
    assert f"{prefix}topic" in output, "setup_events created the topic"
    assert f"subscription {prefix}picking to {prefix}topic" in output, "the warehouse's own"
