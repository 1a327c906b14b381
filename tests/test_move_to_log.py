"""Moving live from the database transport into the log transport, which share their
tables (docs/moving.md, "Into the log transport"). The live move, with its straddling
relay batch and a late committer, is PostgreSQL's: on SQLite a transaction left open holds
the one write lock, and nothing straddles.

Events are counted where they are claimed, not where they are handled: the inbox would
absorb a second delivery, and the move must not make one."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings

from django_events import moving, publish
from django_events.engine import failpoints
from django_events.engine.relay import Relay
from django_events.models import Delivery, EventRecord, GroupCursor, Move
from django_events.transports import transports

from .conftest import closing_connections, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BACKENDS = {
    "default": {"BACKEND": "django_events.transports.database.DatabaseTransport"},
    "log": {"BACKEND": "django_events.transports.log.LogTransport"},
}
MEMORY = {"BACKEND": "django_events.transports.memory.InMemoryTransport"}
GROUPS = {"alpha": "test.happened", "beta": "test.happened", "sequence": "test.sequenced"}
RETRY = 0.2


@pytest.fixture
def database_and_log() -> Iterator[None]:
    """The database transport as the default, the log transport under ``log``."""
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": BACKENDS}):
        transports.reset()
        try:
            yield
        finally:
            transports.reset()


def burst(count: int, tag: str) -> None:
    """``count`` events of each type, each in its own transaction, a few keys for the
    ordered group."""
    for n in range(count):
        publish("test.happened", {"n": n, "tag": tag})
        publish("test.sequenced", {"n": n, "tag": tag}, key=f"k{n % 3}")


def relay(ttl: float = 0) -> Relay:
    """A relay following the moves, reading the route again after ``ttl`` seconds."""
    return Relay(moving.Switch(transports["default"], ttl=ttl))


def claim_once(switch: moving.Switch, claims: Counter[tuple[str, uuid.UUID]]) -> int:
    """One claim through ``switch``, counted in ``claims`` and acknowledged."""
    got = switch.claim(sorted(GROUPS), 25, 30.0)
    claims.update((item.group, item.event_id) for item in got)
    switch.ack_many(got)
    return len(got)


Step = Callable[[moving.Switch, Counter[tuple[str, uuid.UUID]]], int]


def drain(
    switch: moving.Switch, claims: Counter[tuple[str, uuid.UUID]], step: Step = claim_once
) -> None:
    """Claim through ``switch`` (one ``step``: by default ``claim_once``), counting in
    ``claims`` and acknowledging, until nothing is handed out twice in a row, the retries'
    delay apart."""
    idle = 0
    while idle < 2:
        if step(switch, claims):
            idle = 0
        else:
            idle += 1
            time.sleep(RETRY * 2)


def owed_per_group(handled: set[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
    """Every (group, event) of the log the groups subscribe to, less those ``handled``."""
    logged = EventRecord.objects.values_list("id", "type")
    return {
        (group, event_id)
        for event_id, event_type in logged
        for group, wanted in GROUPS.items()
        if wanted == event_type
    } - handled


class Straddle:
    """A relay batch that has taken its rows (in the log, delivery rows written) and waits
    before committing, in its own thread, while the cutover is recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken = threading.Event()
        self.go = threading.Event()
        real = failpoints.hit

        def hit(name: str) -> None:
            if name == "relay.after_take" and threading.current_thread().name == "straddle":
                self.taken.set()
                assert self.go.wait(30)
            real(name)

        monkeypatch.setattr(failpoints, "hit", hit)
        batch = relay()

        def run() -> None:
            batch.transport.route()
            batch.relay_batch("default")

        self.thread = threading.Thread(target=closing_connections(run), name="straddle")


def waiting_for_a_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` has ended, or another session waits for an advisory lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND wait_event = 'advisory' AND datname = current_database()"
        )
        return not thread.is_alive() or cursor.fetchone()[0] > 0


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="transactions left open: PostgreSQL's"
)
def test_every_event_is_claimed_once_per_group_across_a_live_move(
    database_and_log: None, monkeypatch: pytest.MonkeyPatch
):
    """Before the move: events relayed into delivery rows, some handled, some retrying,
    the rest waiting. During it, publishers commit all along; one commits its event after
    the cutover with a position below it; a relay batch is in flight when the cutover is
    recorded; a relay that read the route before the cutover logs on after it. After it,
    events reach the groups through their cursors alone. Every event is claimed exactly
    once per group from the move on."""
    burst(12, "before")
    relay().run_once()
    database = transports["default"]
    handled: set[tuple[str, uuid.UUID]] = set()
    for group in GROUPS:
        got = database.claim([group], 4, 30.0)
        database.ack_many(got[:2])
        for item in got[2:]:
            database.retry_later(item, RETRY, "boom")
        handled |= {(group, item.event_id) for item in got[:2]}

    moving.prepare(transports["log"])  # as the command does: the cursors start at the beginning
    move = moving.start("default", "log")
    mover = relay(ttl=3600)  # reads the move at its first batch, and the cutover never
    worker = moving.Switch(transports["default"], ttl=0)
    claims: Counter[tuple[str, uuid.UUID]] = Counter()
    assert claim_once(worker, claims), "workers go on claiming before the cutover"

    stop = threading.Event()

    def publishing() -> None:
        while not stop.is_set():
            burst(1, "during")

    publisher = threading.Thread(target=closing_connections(publishing))
    late_ready, late_go = threading.Event(), threading.Event()

    def late_publisher() -> None:
        with transaction.atomic():
            publish("test.happened", {"tag": "late"})
            late_ready.set()
            assert late_go.wait(30)

    late = threading.Thread(target=closing_connections(late_publisher))
    straddle = Straddle(monkeypatch)
    cutover = threading.Thread(target=closing_connections(lambda: moving.record_cutover(move)))
    publisher.start()
    late.start()
    assert late_ready.wait(30)
    burst(2, "during")  # committed above the late one's position
    mover.run_once()  # before the cutover: delivery rows
    straddle.thread.start()
    assert straddle.taken.wait(30)
    cutover.start()
    wait_until(lambda: waiting_for_a_lock(cutover), what="the cutover waits for the relay")
    straddle.go.set()
    straddle.thread.join(30)
    cutover.join(30)
    late_go.set()
    late.join(30)
    for _ in range(5):
        mover.run_once()  # its route still says: before the cutover
        claim_once(worker, claims)
    stop.set()
    publisher.join(30)
    mover.run_once()
    moving.finish(move)
    cutover_position = Move.objects.get().cutover_position
    [(position, rows)] = [
        (event.position, Delivery.objects.filter(event_id=event.id).count())
        for event in EventRecord.objects.filter(data__tag="late")
    ]
    assert position < cutover_position and rows == 0, "logged after the cutover, below it"

    burst(5, "after")
    relay().run_once()
    after = EventRecord.objects.filter(data__tag="after").values_list("id", flat=True)
    assert not Delivery.objects.filter(event_id__in=list(after)).exists(), "read by cursors"

    owed = owed_per_group(handled)
    drain(worker, claims)
    twice = {pair: n for pair, n in claims.items() if n > 1}
    assert not twice, f"{len(twice)} handed out again"
    assert set(claims) == owed, f"{len(owed - set(claims))} never handed out"


def test_the_command_moves_into_the_log_transport_and_places_every_cursor(
    database_and_log: None,
):
    """The command records the move, then the cutover with every group's cursor placed at
    it, and finishes at once: the rows the database transport wrote are the log
    transport's to claim. A relay started afresh then writes no delivery row."""
    burst(3, "before")
    relay().run_once()
    out = StringIO()
    call_command("move_transport", "default", "log", "--grace", "0", stdout=out)
    assert "claimed by log first" in out.getvalue(), out.getvalue()
    move = Move.objects.get()
    assert move.cutover_position is not None and move.finished_at is not None
    placed = set(GroupCursor.objects.filter(pos=move.cutover_position).values_list("group_name"))
    assert {(group,) for group in GROUPS} <= placed
    burst(2, "after")
    relay().run_once()
    after = EventRecord.objects.filter(data__tag="after").values_list("id", flat=True)
    assert not Delivery.objects.filter(event_id__in=list(after)).exists()
    claims: Counter[tuple[str, uuid.UUID]] = Counter()
    drain(moving.Switch(transports["default"], ttl=0), claims)
    assert set(claims) == owed_per_group(set()) and max(claims.values()) == 1


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("log", "default", "it moves to a broker only"),
        ("memory", "log", "supported from DatabaseTransport in the same database only"),
    ],
)
def test_moves_out_of_the_log_transport_into_its_log_or_into_it_from_a_broker_are_refused(
    old: str, new: str, why: str
):
    backends: dict[str, Any] = {**BACKENDS, "memory": MEMORY}
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "TRANSPORTS": backends}):
        transports.reset()
        try:
            with pytest.raises(ValueError, match=why):
                moving.check_start(old, new)
        finally:
            transports.reset()
