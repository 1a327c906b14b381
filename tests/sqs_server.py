"""moto's AWS server for the SNS + SQS tests: one per session, a fresh name prefix per test.

The server runs in this process on a free port; worker subprocesses reach it over HTTP.
Credentials are dummies set in the environment, read through boto3's normal chain.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

BACKEND = "django_events.transports.sqs.SnsSqsTransport"
REGION = "us-east-1"
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Dummy credentials for this test only; real ones in the environment are set aside."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return dict(DUMMY_CREDENTIALS)


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}-"


def events_settings(endpoint: str, prefix: str, **options: Any) -> dict[str, Any]:
    """``DJANGO_EVENTS`` for one test: the SNS/SQS transport on moto, quick timings."""
    return {
        "BACKOFF_BASE": 0,
        "POLL_INTERVAL": 0.1,
        "TRANSPORTS": {
            "default": {
                "BACKEND": BACKEND,
                "OPTIONS": {
                    "endpoint_url": endpoint,
                    "region": REGION,
                    "prefix": prefix,
                    "wait_time": 0,
                    "dead_letter_poll": 0.2,
                    **options,
                },
            }
        },
    }


def worker_env(
    monkeypatch: pytest.MonkeyPatch, conf: dict[str, Any], aws: dict[str, str], **more: Any
) -> dict[str, str]:
    """Environment for ``consume_events`` subprocesses using the same transport.

    They load ``tests.settings_sqs`` on top of this run's settings (set for this test only).
    """
    base = os.environ.get("DJANGO_SETTINGS_MODULE") or str(settings.SETTINGS_MODULE)
    monkeypatch.setenv("DJANGO_EVENTS_SQS_BASE_SETTINGS", base)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.settings_sqs")
    return {**aws, "DJANGO_EVENTS_TEST_OVERRIDES": json.dumps({**conf, **more})}
