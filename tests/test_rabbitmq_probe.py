"""The suite's broker probe (tests/rabbitmq_support.py): a broker that takes TCP connections
and never answers fails the RabbitMQ tests at once, instead of each one waiting out its
connection timeouts (a CI run once outlasted its budget that way); one that went silent
since the last test is found by the next; CI's restart command brings it back."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from . import rabbitmq_support
from .rabbitmq_support import RABBITMQ_URL, needs_rabbitmq


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The probe's state for this test alone: the session's stays as it was."""
    monkeypatch.setattr(rabbitmq_support, "_broken", None)
    monkeypatch.setattr(rabbitmq_support, "restarts", [])
    monkeypatch.setattr(rabbitmq_support, "ENSURE", "")
    yield


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A port that completes TCP (the kernel's backlog) and never says a word of AMQP."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"amqp://guest:guest@127.0.0.1:{sock.getsockname()[1]}/%2F"


class Relay:
    """The shared broker behind a port of its own, silent (accepting and never answering,
    as the wedged broker did) while the file ``silent`` exists."""

    def __init__(self, directory: Path) -> None:
        self.silent = directory / "silent"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.listener.getsockname()[1]}/%2F"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                if self.silent.exists():
                    self.held.append(client)
                    continue
                target = urlsplit(RABBITMQ_URL)
                upstream = socket.create_connection((target.hostname, target.port or 5672))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError), source, sink:
            while data := source.recv(65536):
                sink.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    """A ``Relay`` that the probe takes for the shared broker."""
    relay = Relay(tmp_path)
    monkeypatch.setattr(rabbitmq_support, "RABBITMQ_URL", relay.url)
    yield relay
    relay.close()


@needs_rabbitmq()
def test_a_silent_broker_fails_the_first_test_after_the_probe_and_the_next_at_once(
    fresh_probe: None, silent_broker: str
):
    with pytest.raises(pytest.fail.Exception, match="did not complete an AMQP handshake"):
        rabbitmq_support.require_broker(silent_broker, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not complete an AMQP handshake"):
        rabbitmq_support.require_broker(RABBITMQ_URL, timeout=1.0)
    assert time.monotonic() - started < 0.5, "the verdict was kept, not probed again"


@needs_rabbitmq()
def test_a_broker_that_went_silent_since_the_last_test_fails_the_next_with_the_reason(
    fresh_probe: None, relay: Relay
):
    rabbitmq_support.require_broker(relay.url, timeout=1.0)
    relay.silent.touch()
    with pytest.raises(pytest.fail.Exception, match="did not complete an AMQP handshake"):
        rabbitmq_support.require_broker(relay.url, timeout=1.0)
    assert rabbitmq_support.restarts == [], "nothing to restart with: ENSURE is not set"


@needs_rabbitmq()
def test_ci_restarts_a_silent_broker_and_the_run_goes_on_and_says_so(
    fresh_probe: None, relay: Relay, monkeypatch: pytest.MonkeyPatch
):
    """``ENSURE`` is what brings the broker back (here: the relay forwards again); the
    restart's output is kept for the run's summary, and a run asks for two at most."""
    forward_again = f"import os; os.remove({str(relay.silent)!r}); print('back')"
    bring_back = shlex.join([sys.executable, "-c", forward_again])
    monkeypatch.setattr(rabbitmq_support, "ENSURE", bring_back)
    for _ in range(rabbitmq_support.MAX_RESTARTS):
        relay.silent.touch()
        rabbitmq_support.require_broker(relay.url, timeout=1.0)
    assert len(rabbitmq_support.restarts) == rabbitmq_support.MAX_RESTARTS
    assert all("(exit 0):\nback" in output for output in rabbitmq_support.restarts)
    relay.silent.touch()
    with pytest.raises(pytest.fail.Exception, match="did not complete an AMQP handshake"):
        rabbitmq_support.require_broker(relay.url, timeout=1.0)
    assert relay.silent.exists(), "no third restart"


@needs_rabbitmq()
@pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="the orphans' names come from rabbitmqctl"
)
def test_a_killed_runs_queues_are_deleted_by_the_next_run_and_a_live_runs_are_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A run killed before its teardowns leaves its queues on the shared broker; the next
    run's first RabbitMQ test deletes them (by the ledger of prefixes), and leaves those of
    a run still going (this one, here) where they are."""
    ledger = rabbitmq_support.Ledger("test-rabbitmq", tmp_path)
    monkeypatch.setattr(rabbitmq_support, "PREFIXES", ledger)
    monkeypatch.setattr(rabbitmq_support, "_orphans_deleted", False)
    dead, live = (f"de-test.{uuid.uuid4().hex[:12]}" for _ in range(2))
    # pid_max is at most 2**22: no process has this pid, as none has a killed run's.
    ledger.path.write_text(f"{2**22 + 1} {dead}\n")
    rabbitmq_support.recorded(live)
    assert rabbitmq_support.pika is not None
    connection = rabbitmq_support.pika.BlockingConnection(
        rabbitmq_support.pika.URLParameters(RABBITMQ_URL)
    )
    try:
        channel = connection.channel()
        for prefix in (dead, live):
            channel.exchange_declare(prefix, "topic")
            channel.queue_declare(
                f"{prefix}.alpha", durable=True, arguments={"x-queue-type": "quorum"}
            )
    finally:
        connection.close()
    try:
        rabbitmq_support.require_broker()
        queues, exchanges = [f"{dead}.alpha", f"{live}.alpha"], [dead, live]
        assert rabbitmq_support.existing(queues, exchanges) == [f"{live}.alpha", live]
        assert ledger.orphans() == [] and ledger.mine() == [live]
    finally:
        rabbitmq_support._delete([f"{p}.alpha" for p in (dead, live)], [dead, live])
