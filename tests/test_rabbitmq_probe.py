"""The suite's broker probe (tests/rabbitmq_support.py): a broker that takes TCP connections
and never answers fails the RabbitMQ tests at once, instead of each one waiting out its
connection timeouts (a CI run once outlasted its budget that way)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from . import rabbitmq_support
from .rabbitmq_support import RABBITMQ_URL, needs_rabbitmq


@pytest.fixture
def fresh_verdict(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The probe's verdict for this test alone: the session's stays as it was."""
    monkeypatch.setattr(rabbitmq_support, "_verdict", None)
    yield


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A port that completes TCP (the kernel's backlog) and never says a word of AMQP."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"amqp://guest:guest@127.0.0.1:{sock.getsockname()[1]}/%2F"


@needs_rabbitmq()
def test_a_silent_broker_fails_the_first_test_after_the_probe_and_the_next_at_once(
    fresh_verdict: None, silent_broker: str
):
    with pytest.raises(pytest.fail.Exception, match="did not complete an AMQP handshake"):
        rabbitmq_support.require_broker(silent_broker, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not complete an AMQP handshake"):
        rabbitmq_support.require_broker(RABBITMQ_URL, timeout=1.0)
    assert time.monotonic() - started < 0.5, "the verdict was kept, not probed again"


@needs_rabbitmq()
def test_an_answering_broker_is_probed_again_only_after_a_failed_test(fresh_verdict: None):
    rabbitmq_support.require_broker()
    assert rabbitmq_support._verdict == "ok"
    rabbitmq_support.doubt_broker()
    assert rabbitmq_support._verdict is None, "a failure asks for a new probe"
    rabbitmq_support.require_broker()
    assert rabbitmq_support._verdict == "ok"
