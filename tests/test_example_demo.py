"""The example project's demo, run the way its README says (``manage.py demo`` in a
subprocess), on each transport by settings alone: the database (its own SQLite file),
Redis Streams and SNS + SQS (moto's server). The demo is the same code every time; only
the environment that picks the transport changes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connection

from .redis_support import needs_redis
from .sqs_server import DUMMY_CREDENTIALS, moto_endpoint

__all__ = ["moto_endpoint"]  # a fixture, imported for pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

# The demo has its own SQLite file: once is enough, in the SQLite run of the suite.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        connection.vendor != "sqlite", reason="the demo runs on its own SQLite file"
    ),
]


def run_demo(tmp_path: Path, **env: str) -> str:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "EXAMPLE_", "AWS_"))
    }
    environ.update(EXAMPLE_DATABASE=str(tmp_path / "demo.sqlite3"), **env)
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
    assert "Every handler received OrderPlaced v2" in output, output


def test_demo_on_the_database(tmp_path: Path):
    output = run_demo(tmp_path)
    assert_the_shop_ran(output)
    assert "nothing to set up" in output.lower(), output


@needs_redis()
def test_demo_on_redis_streams(tmp_path: Path):
    output = run_demo(tmp_path, DJANGO_EVENTS_TRANSPORT="redis")
    assert_the_shop_ran(output)
    assert "RedisStreamsTransport (default) did:" in output, "setup_events made the streams"


def test_demo_on_sns_and_sqs(tmp_path: Path, moto_endpoint: str):
    prefix = f"demo{uuid.uuid4().hex[:8]}-"
    output = run_demo(
        tmp_path,
        EXAMPLE_SQS_ENDPOINT=moto_endpoint,
        EXAMPLE_SQS_PREFIX=prefix,
        **DUMMY_CREDENTIALS,
    )
    assert_the_shop_ran(output)
    assert f"{prefix}topic" in output, "setup_events created the topic"
