"""The shared RabbitMQ for tests: a unique prefix per test, and everything it made deleted.

The broker is the machine's (``DJANGO_EVENTS_TEST_RABBITMQ_URL``, by default guest on
127.0.0.1:5672); CI starts it, or restarts it when it does not answer (.ci/run, .ci/rabbitmq). Tests
skip only when pika is not installed, and fail at once when the broker does not answer.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from bench.leftovers import Ledger

RABBITMQ_URL = os.environ.get(
    "DJANGO_EVENTS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
)

try:
    import pika
except ImportError:  # pragma: no cover - the dev extras install it
    pika = None


def needs_rabbitmq() -> pytest.MarkDecorator:
    """Mark a test that talks to the shared broker: conftest skips it without pika and
    fails it at once, naming the cause, while the broker does not answer (``require_broker``)."""
    return pytest.mark.rabbitmq


PROBE_TIMEOUT = 10.0
"""Seconds a probe waits for the broker's AMQP handshake (TCP alone is not enough: a broker
out of sockets still completes TCP in the kernel's backlog and never answers)."""

ENSURE = os.environ.get("DJANGO_EVENTS_TEST_RABBITMQ_ENSURE", "")
"""A command that starts the shared broker again when it stopped answering (CI sets it to
``.ci/rabbitmq ensure``); empty: a silent broker fails the tests, as on a laptop."""

MAX_RESTARTS = 2
"""Restarts one run may ask for: a broker that keeps going silent is a finding, not noise."""

_broken: str | None = None
"""Why the broker is taken to be broken for the rest of the run; None while it answers."""

restarts: list[str] = []
"""What each restart this run asked for printed: conftest's summary shows them."""

PREFIXES = Ledger("test-rabbitmq")
"""Every prefix a test declares under, until its teardown deleted what it made: a run killed
before its teardowns leaves its queues, which the next run deletes (``_delete_orphans``)."""

_orphans_deleted = False


def require_broker(url: str = RABBITMQ_URL, timeout: float = PROBE_TIMEOUT) -> None:
    """Skip without pika; fail at once while the broker does not answer.

    Each RabbitMQ test probes first (an AMQP handshake, about 2 ms), so a broker that went
    silent since the last one fails this test with the reason, not with its own timeout;
    and every later test fails at once instead of waiting out its connection timeouts (a
    run of a few hundred such tests once outlasted CI's budget). Where ``ENSURE`` is set, a
    silent broker is restarted first, at most ``MAX_RESTARTS`` times a run
    (docs/testing.md, "RabbitMQ")."""
    global _broken
    if pika is None:
        pytest.skip("pika is not installed: pip install 'django-events-outbox[rabbitmq]'")
    if _broken is None:
        failure = _probe(url, timeout)
        if failure and ENSURE and url == RABBITMQ_URL and len(restarts) < MAX_RESTARTS:
            restarts.append(_ensure())
            failure = _probe(url, timeout)
        _broken = failure
    if _broken is not None:
        pytest.fail(_broken, pytrace=False)
    if not _orphans_deleted and url == RABBITMQ_URL:
        _delete_orphans()


def _probe(url: str, timeout: float) -> str | None:
    """None when the broker at ``url`` completes a handshake within ``timeout``, else why."""
    assert pika is not None
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    try:
        pika.BlockingConnection(params).close()
    except Exception as exc:
        return (
            f"RabbitMQ at {params.host}:{params.port} did not complete an AMQP handshake "
            f"within {timeout:g} s ({type(exc).__name__}: {exc}); every RabbitMQ test "
            "fails from here on. A node whose file handles are spent (about three per "
            "quorum queue: rabbitmqctl eval 'file_handle_cache:info().') answers TCP and "
            "nothing else; .ci/rabbitmq ensure deletes what earlier runs left, or restarts it."
        )
    return None


def _ensure() -> str:
    """Run ``ENSURE``; what it printed, for the run's summary."""
    try:
        done = subprocess.run(
            shlex.split(ENSURE), capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{ENSURE}: {exc}"
    return f"{ENSURE} (exit {done.returncode}):\n{done.stdout}{done.stderr}"


def unique_prefix() -> str:
    return recorded(f"de-test.{uuid.uuid4().hex[:12]}")


def recorded(prefix: str) -> str:
    """``prefix``, written down before anything is declared under it (``PREFIXES``)."""
    PREFIXES.add(prefix)
    return prefix


def _delete_orphans() -> None:
    """Delete the queues and exchanges under the prefixes of runs that are gone (killed
    before their teardowns), once a run. Their names come from ``rabbitmqctl`` (AMQP
    cannot list them); where it is missing or fails, they stay recorded for a later run."""
    global _orphans_deleted
    _orphans_deleted = True
    orphans = PREFIXES.orphans()
    if not orphans:
        return
    try:
        queues, exchanges = (_listed(kind) for kind in ("list_queues", "list_exchanges"))
    except (OSError, subprocess.SubprocessError):
        return
    ours = tuple(f"{prefix}." for prefix in orphans)
    _delete(
        [name for name in queues if name.startswith(ours)],
        [name for name in exchanges if name in orphans or name.startswith(ours)],
    )
    for prefix in orphans:
        PREFIXES.remove(prefix)


def _listed(kind: str) -> list[str]:
    done = subprocess.run(
        ["rabbitmqctl", kind, "-q", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _delete(queues: Iterable[str], exchanges: Iterable[str]) -> None:
    """Delete ``queues`` and ``exchanges``, each on a channel of its own (a missing one
    closes its channel)."""
    assert pika is not None
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        for name in queues:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_delete(name)
        for name in exchanges:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().exchange_delete(name)
    finally:
        connection.close()


def existing(queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> list[str]:
    """The names among ``queues`` and ``exchanges`` the shared broker has, found by passive
    declares (a missing one closes its channel with 404; any other reply is a failure)."""
    assert pika is not None
    found = []
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        wanted = [
            *(("queue_declare", q) for q in queues),
            *(("exchange_declare", e) for e in exchanges),
        ]
        for declare, name in wanted:
            try:
                getattr(connection.channel(), declare)(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 404, exc
            else:
                found.append(name)
    finally:
        connection.close()
    return found


def delete_everything(transport: Any, groups: Iterable[str]) -> None:
    """Delete the queues and exchanges ``transport`` made for ``groups``, for every group
    it declared (``setup`` declares the whole registry's, typed handlers' groups among
    them), and its delays; then forget its prefix (``PREFIXES``)."""
    every = sorted({*groups, *(group for group, _ in transport._declared)})
    names = [transport.queue(g, dead=dead) for g in every for dead in (False, True)]
    delays = [transport.delay_queue(ms) for ms in transport._delays]
    _delete([*names, *delays], [transport.exchange, *delays])
    PREFIXES.remove(transport.prefix)


BACKEND = "django_events.transports.rabbitmq.RabbitMQTransport"


def events_settings(prefix: str, url: str = RABBITMQ_URL, **options: Any) -> dict[str, Any]:
    """A DJANGO_EVENTS value with the RabbitMQ transport under ``prefix``, test defaults kept."""
    from django.conf import settings

    return {
        **settings.DJANGO_EVENTS,
        "TRANSPORTS": {
            "default": {"BACKEND": BACKEND, "OPTIONS": {"url": url, "prefix": prefix, **options}}
        },
    }


def publish_raw(queue: str, body: bytes, **properties: Any) -> None:
    """Put a message on ``queue`` as any AMQP client could, bypassing the transport."""
    assert pika is not None
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(**properties))
    finally:
        connection.close()


class PrivateNode:
    """A RabbitMQ node of this test's own, on free ports with its data in ``directory``,
    for tests that stop the broker: the shared one is never touched. ``stop`` and ``start``
    keep the node's name and data, as a restart does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.name = f"detest{uuid.uuid4().hex[:10]}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        (directory / "enabled_plugins").write_text("[].\n")
        for sub in ("mnesia", "log"):
            (directory / sub).mkdir(exist_ok=True)
        # The Debian wrapper runs the node as the rabbitmq user: it must write here.
        for path in [directory, *directory.iterdir()]:
            path.chmod(0o777)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout: float = 120.0) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.directory / "feature_flags"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "none"),
            "RABBITMQ_PID_FILE": str(self.directory / "node.pid"),
        }
        with (self.directory / "out.txt").open("ab") as out:
            self.process = subprocess.Popen(
                ["rabbitmq-server"],
                cwd=self.directory,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.answering():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "out.txt").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the private RabbitMQ node did not start:\n{log}")
            time.sleep(0.5)

    def answering(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """Stop the node: SIGTERM to the Erlang VM (its pid file: the Debian wrapper runs
        it as another user, in a session of its own), SIGKILL after 60 s. Done when the VM
        itself is gone, not only the wrapper and the port: ``su`` exits while the VM is
        still closing its connections, and a test's claim then found one still open."""
        if self.process is None:
            return
        pid_file = self.directory / "node.pid"
        pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                if pid is not None:
                    os.kill(pid, sig)
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                continue
            deadline = time.monotonic() + 60
            while (self.answering() or _running(pid)) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.answering() and not _running(pid):
                break
        pid_file.unlink(missing_ok=True)
        self.process = None


def _running(pid: int | None) -> bool:
    """Whether ``pid`` is a live process (a zombie has closed its sockets already)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
