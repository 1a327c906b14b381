"""Redis for the tests: the shared server with a unique key prefix, or a private server.

The shared server (127.0.0.1:6379, or ``DJANGO_EVENTS_TEST_REDIS_URL``) is never flushed:
each test works under its own prefix and deletes only its own keys. Tests that restart
Redis start a private ``redis-server`` on a free port, without persistence, and kill it
in teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REDIS_URL = os.environ.get("DJANGO_EVENTS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKEND = "django_events.transports.redis.RedisStreamsTransport"


def redis_unreachable(url: str = REDIS_URL) -> str | None:
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'django-events-outbox[redis]')"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis at {url} is unreachable ({exc})"
    return None


def needs_redis() -> Any:
    """Skip when Redis is unreachable here; in CI (``CI`` set) fail instead."""
    reason = redis_unreachable()
    if reason and os.environ.get("CI"):
        raise pytest.UsageError(f"{reason}; CI is set, so this fails instead of skipping.")
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def unique_prefix() -> str:
    return f"de-test:{uuid.uuid4().hex[:12]}"


def events_settings(prefix: str, url: str = REDIS_URL, **options: Any) -> dict[str, Any]:
    """A DJANGO_EVENTS value with the Redis transport under ``prefix``, test defaults kept."""
    from django.conf import settings

    return {
        **settings.DJANGO_EVENTS,
        "TRANSPORTS": {
            "default": {
                "BACKEND": BACKEND,
                "OPTIONS": {"url": url, "prefix": prefix, **options},
            }
        },
    }


def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of this test alone: no snapshots, no append-only file."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="django-events-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        assert self.binary is not None
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - kept by the process
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while redis_unreachable(self.url):
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: everything in memory is gone, as in a crash without persistence."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
