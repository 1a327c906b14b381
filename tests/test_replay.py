"""``replay_events``: logged events delivered again to one group, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import io
import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_events import publish
from django_events.engine.failpoints import EXIT_CODE
from django_events.engine.relay import Relay
from django_events.models import DeadLetter, Delivery, EventRecord, InboxRecord, ReplayProgress
from django_events.registry import Handler, registry
from django_events.replay import Replay, ReplaySpec
from django_events.retention import purge_expired
from django_events.testing import deliver
from django_events.transports import transports

from .conftest import Workers, postgres_only
from .testapp.events import record
from .testapp.models import Effect
from .transport_support import owed

pytestmark = pytest.mark.django_db(transaction=True)
NEW = "rebuilt"


def rebuild(event):
    record(NEW, event)


@pytest.fixture
def new_group() -> Iterator[Callable[..., None]]:
    """Registers handlers for a group that did not exist when the events were published."""
    saved = list(registry)

    def add(*types: str, ordered: bool = False) -> None:
        for event_type in types:
            registry.add(Handler(func=rebuild, group=NEW, event_type=event_type, ordered=ordered))

    yield add
    registry.clear()
    for entry in saved:
        registry.add(entry)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def replay(*args: str) -> str:
    out = io.StringIO()
    call_command("replay_events", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def effects(group: str) -> list[tuple[str, str | None, int | None]]:
    rows = Effect.objects.filter(group=group).order_by("id")
    return [(str(e), k, n) for e, k, n in rows.values_list("event_id", "key", "n")]


def queued(group: str) -> list[int]:
    """The ``n`` of each event the group has a delivery for, in log order."""
    ids = Delivery.objects.filter(group_name=group).order_by("position", "id")
    data = dict(EventRecord.objects.values_list("id", "data"))
    return [data[event_id]["n"] for event_id in ids.values_list("event_id", flat=True)]


# --- building a group from history ------------------------------------------------------


def test_replay_into_a_new_group_rebuilds_the_state_of_live_consumption(new_group):
    for n in range(9):
        publish("test.happened", {"n": n}, key=f"customer-{n % 3}")
    publish("test.sequenced", {"n": 99}, key="customer-0")
    deliver(["alpha"])  # live consumption; relays every event into the log
    new_group("test.happened", ordered=True)

    out = replay("--group", NEW, "--batch-size", "4")
    deliver([NEW])

    assert "Replayed 9 events to rebuilt." in out
    assert [row[1:] for row in effects(NEW)] == [row[1:] for row in effects("alpha")]
    assert [row[0] for row in effects(NEW)] == [row[0] for row in effects("alpha")]
    assert owed("beta") == 9, "beta got nothing more"
    assert ReplayProgress.objects.get(group_name=NEW).finished_at is not None


@pytest.mark.database_transport  # a new group's cursor (log transport) would owe it all
@override_settings(TIME_ZONE="UTC")
def test_filters_choose_types_key_and_time_range(new_group):
    for n in range(6):
        publish("test.happened", {"n": n}, key="a" if n % 2 else "b")
    publish("test.other", {"n": 6}, key="a")
    Relay().run_once()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for event in EventRecord.objects.all():
        EventRecord.objects.filter(pk=event.pk).update(
            occurred_at=start + dt.timedelta(days=event.data["n"])
        )
    new_group("test.happened", "test.other")

    def only(*args: str) -> list[int]:
        replay("--group", NEW, *args)
        found = queued(NEW)
        Delivery.objects.filter(group_name=NEW).delete()
        return found

    assert only("--type", "test.other") == [6]
    assert only("--key", "a") == [1, 3, 5, 6]
    assert only("--since", "2026-01-03", "--until", "2026-01-05T00:00:00+00:00") == [2, 3]
    assert only("--type", "test.happened", "--key", "b", "--since", "2026-01-02") == [2, 4]
    # A "Z" suffix (what CloudEvents and AWS write) reads on every supported Python.
    assert only("--since", "2026-01-03T00:00:00Z", "--until", "2026-01-05T00:00Z") == [2, 3]
    assert only() == [0, 1, 2, 3, 4, 5, 6]


def test_naive_dates_are_read_in_the_current_time_zone(new_group):
    publish("test.happened", {"n": 1})
    Relay().run_once()
    EventRecord.objects.update(occurred_at=dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc))
    new_group("test.happened")
    with override_settings(TIME_ZONE="Asia/Tokyo"):  # 2026-03-01T12:00Z is 21:00 there
        assert "would replay:       0" in replay(
            "--group", NEW, "--since", "2026-03-01T21:30", "--dry-run"
        )
        assert "would replay:       1" in replay(
            "--group", NEW, "--since", "2026-03-01T20:30", "--dry-run"
        )


def test_dry_run_counts_and_writes_nothing(new_group):
    for n in range(5):
        publish("test.happened", {"n": n})
    deliver(["alpha"])
    new_group("test.happened")
    before = (Delivery.objects.count(), InboxRecord.objects.count())

    out = replay("--group", NEW, "--dry-run")

    assert "events in range:    5" in out
    assert "would replay:       5" in out
    assert "Dry run: nothing was written." in out
    assert (Delivery.objects.count(), InboxRecord.objects.count()) == before
    assert not ReplayProgress.objects.exists()


# --- the inbox, reprocessing, and work the group still owes ----------------------------


def test_events_the_group_handled_are_skipped_unless_reprocessed(monkeypatch):
    for n in range(3):
        publish("test.happened", {"n": n})
    deliver(["alpha"])

    out = replay("--group", "alpha")
    assert "already handled:    3 (skipped" in out
    assert "Replayed 0 events" in out
    assert not Delivery.objects.filter(group_name="alpha").exists()

    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: no one to ask
    with pytest.raises(CommandError, match="pass --yes to confirm"):
        replay("--group", "alpha", "--reprocess")
    assert InboxRecord.objects.filter(group_name="alpha").count() == 3
    assert not Delivery.objects.filter(group_name="alpha").exists()

    replay("--group", "alpha", "--reprocess", "--yes")
    assert InboxRecord.objects.filter(group_name="alpha").count() == 0
    assert queued("alpha") == [0, 1, 2]
    deliver(["alpha"])
    assert [n for _, _, n in effects("alpha")] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(("answer", "runs"), [("no", False), ("yes", True)])
def test_reprocess_asks_on_a_terminal(monkeypatch, answer: str, runs: bool):
    publish("test.happened", {"n": 1})
    deliver(["alpha"])
    monkeypatch.setattr(sys, "stdin", Terminal())
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)

    if runs:
        replay("--group", "alpha", "--reprocess")
    else:
        with pytest.raises(CommandError, match="cancelled"):
            replay("--group", "alpha", "--reprocess")

    assert "side effects included, for 1 events" in asked[0]
    assert Delivery.objects.filter(group_name="alpha").exists() is runs
    assert InboxRecord.objects.filter(group_name="alpha").exists() is not runs


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1})
def test_an_event_the_group_still_owes_gets_no_second_delivery_a_done_one_does():
    """One path per event (docs/internals.md): a pending or a leased event is delivered
    once more, where it waits; a second delivery would fail too and leave a second dead
    letter. A done one is delivered again."""
    done = publish("test.happened", {"n": 1}).id
    deliver(["alpha"])
    leased = publish("test.happened", {"n": 2, "fail_group": "alpha"}).id
    pending = publish("test.happened", {"n": 3, "fail_group": "alpha"}).id
    Relay().run_once()
    transport = transports["default"]
    [claimed] = transport.claim(["alpha"], 1, 30)
    assert claimed.event_id == leased

    replay("--group", "alpha", "--reprocess", "--yes")  # the done one too: its inbox goes

    if not transport.reads_log:  # the log transport's cursor and lease hold two of them
        rows = Delivery.objects.filter(group_name="alpha").values_list("event_id", flat=True)
        assert Counter(rows) == {done: 1, leased: 1, pending: 1}
    transport.release([claimed])
    deliver(["alpha"])
    letters = DeadLetter.objects.filter(group="alpha").values_list("event_id", flat=True)
    assert Counter(letters) == {leased: 1, pending: 1}
    assert [n for _, _, n in effects("alpha")] == [1, 1]


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1})
def test_events_with_an_open_dead_letter_are_left_to_triage():
    publish("test.happened", {"n": 1, "fail_group": "alpha"})
    publish("test.happened", {"n": 2})
    deliver(["alpha"])
    InboxRecord.objects.all().delete()  # as if both were never handled

    out = replay("--group", "alpha")

    assert "open dead letters:  1 (skipped" in out
    assert queued("alpha") == [2]


# --- interrupting and continuing -------------------------------------------------------


@pytest.mark.database_transport  # n=10 reaches the new group live by the relay's fan-out
def test_limit_stops_and_the_next_run_continues_without_repeating(new_group):
    for n in range(10):
        publish("test.happened", {"n": n})
    Relay().run_once()
    new_group("test.happened")

    out = replay("--group", NEW, "--batch-size", "3", "--limit", "4")
    assert "Replayed 4 events to rebuilt (limit reached" in out
    assert queued(NEW) == [0, 1, 2, 3]
    publish("test.happened", {"n": 10})  # arrives after the replay started
    Relay().run_once()

    out = replay("--group", NEW, "--batch-size", "3")
    assert "continuing after log position" in out and "(4 replayed so far" in out
    assert sorted(queued(NEW)) == list(range(11)), "each once; n=10 came live, not replayed"
    assert ReplayProgress.objects.get().replayed == 10


@pytest.mark.database_transport  # "as if alpha had just been added": its delivery rows go
def test_killed_replay_continues_where_it_stopped(workers: Workers):
    for n in range(7):
        publish("test.happened", {"n": n})
    Relay().run_once()
    Delivery.objects.filter(group_name="alpha").delete()  # as if alpha had just been added

    killed = workers.run(
        "replay_events", "--group", "alpha", "--batch-size", "2",
        DJANGO_EVENTS_FAILPOINT="replay.after_batch:2",
    )  # fmt: skip
    assert killed.returncode == EXIT_CODE, killed.stderr
    assert queued("alpha") == [0, 1, 2, 3]

    again = workers.run("replay_events", "--group", "alpha", "--batch-size", "2")
    assert again.returncode == 0, again.stderr
    assert queued("alpha") == list(range(7))


@pytest.mark.database_transport  # a new group's cursor (log transport) would owe it all
def test_ctrl_c_keeps_what_was_sent_and_says_how_to_continue(new_group, monkeypatch):
    for n in range(5):
        publish("test.happened", {"n": n})
    Relay().run_once()
    new_group("test.happened")
    batches = iter([None, KeyboardInterrupt])

    def interrupt(name: str) -> None:
        if name == "replay.after_batch" and (stop := next(batches)):
            raise stop

    monkeypatch.setattr("django_events.engine.failpoints.hit", interrupt)
    with pytest.raises(CommandError, match="Run the same command again") as raised:
        replay("--group", NEW, "--batch-size", "2")
    assert raised.value.returncode == 130
    assert queued(NEW) == [0, 1, 2, 3]
    assert ReplayProgress.objects.get().replayed == 4


@pytest.mark.database_transport  # a new group's cursor (log transport) would owe it all
def test_restart_forgets_the_progress(new_group):
    for n in range(3):
        publish("test.happened", {"n": n})
    Relay().run_once()
    new_group("test.happened")
    replay("--group", NEW, "--limit", "2")
    Delivery.objects.filter(group_name=NEW).delete()

    replay("--group", NEW, "--restart")

    assert queued(NEW) == [0, 1, 2]


@pytest.mark.parametrize("reprocess", [False, True])
def test_each_batch_costs_the_same_few_queries_whatever_its_size(new_group, reprocess: bool):
    def queries_to_replay(events: int) -> int:
        for n in range(events):
            publish("test.happened", {"n": n})
        Relay().run_once()
        spec = ReplaySpec(group=NEW, reprocess=reprocess)
        with CaptureQueriesContext(connection) as captured:
            assert Replay(spec, batch_size=100).run() == events
        Delivery.objects.filter(group_name=NEW).delete()
        ReplayProgress.objects.all().delete()
        EventRecord.objects.all().delete()
        return len(captured)

    new_group("test.happened")
    queries_to_replay(1)  # the log transport starts the group's cursor at its first replay
    assert queries_to_replay(3) == queries_to_replay(60)


@postgres_only
@override_settings(DJANGO_EVENTS={"LOG_RETENTION": 3600})
def test_no_purge_runs_while_a_replay_batch_reads_and_publishes(new_group):
    publish("test.happened", {"n": 1})
    deliver()
    EventRecord.objects.update(recorded_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    new_group("test.happened")

    def purge_elsewhere() -> int:
        removed: list[int] = []

        def run() -> None:
            try:
                removed.append(purge_expired(["default"], max_batches=1, resume={})["events"])
            finally:
                connections.close_all()

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)
        return removed[0]

    with Replay(ReplaySpec(group=NEW))._batch_transaction():
        assert purge_elsewhere() == 0, "the relay's purge skips its pass"
    assert purge_elsewhere() == 1


# --- progress display ------------------------------------------------------------------


def test_progress_is_redrawn_on_a_terminal(new_group):
    for n in range(3):
        publish("test.happened", {"n": n})
    Relay().run_once()
    new_group("test.happened")
    out = Terminal()
    call_command("replay_events", "--group", NEW, "--batch-size", "1", stdout=out)
    text = out.getvalue()
    assert "\r1/3 events (33%)" in text and "\r3/3 events (100%)" in text
    assert "/s  ETA " in text
    assert "  \nReplayed 3 events to rebuilt." in text, "the summary gets a line of its own"


def test_progress_is_logged_when_not_on_a_terminal(new_group, caplog):
    publish("test.happened", {"n": 1})
    Relay().run_once()
    new_group("test.happened")
    with caplog.at_level(logging.INFO, logger="django_events.replay"):
        out = replay("--group", NEW)
    assert "\r" not in out
    assert "Replayed 1 of 1 events to rebuilt" in caplog.text


@override_settings(DJANGO_EVENTS={"INBOX_RETENTION": 86400})
def test_replaying_past_the_inbox_retention_says_handled_events_run_again():
    publish("test.happened", {"n": 1})
    Relay().run_once()
    EventRecord.objects.update(recorded_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    err = io.StringIO()
    call_command("replay_events", "--group", "alpha", "--dry-run", stdout=io.StringIO(), stderr=err)
    assert "INBOX_RETENTION is 86400s and this range holds older events" in err.getvalue()


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "nope"], "No handler is registered for group 'nope'; known groups: alpha"),
        (["--group", "alpha", "--type", "test.sequenced"], "no handler for 'test.sequenced'"),
        (["--group", "alpha", "--since", "yesterday"], "--since 'yesterday' is not an ISO date"),
        (["--group", "alpha", "--until", "2026-02-30"], "--until '2026-02-30' is not an ISO"),
        (["--group", "alpha", "--since", "2026-02-01", "--until", "2026-01-01"], "after --since"),
        (["--group", "alpha", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(args: list[str], message: str):
    publish("test.happened", {"n": 1})
    Relay().run_once()
    before = Delivery.objects.count()
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        replay(*args)
    assert Delivery.objects.count() == before
    assert not ReplayProgress.objects.exists()


# --- what the command prints ------------------------------------------------------------


def test_summary_is_aligned_and_counts_are_pluralised(new_group):
    for n in range(12):
        publish("test.happened", {"n": n})
    deliver(["alpha"])
    new_group("test.happened")
    out = replay("--group", NEW, "--limit", "1")
    assert "Replayed 1 event to rebuilt (limit reached" in out
    rows = [line for line in out.splitlines() if line.startswith("  ") and ":" in line]
    assert [line.split(":")[0].strip() for line in rows] == [
        "events in range",
        "already handled",
        "open dead letters",
        "discarded",
        "to replay",
    ]
    ends = {len(line.split(" (")[0]) for line in rows}
    assert len(ends) == 1, f"the counts end in one column:\n{out}"
    assert "Replayed 11 events to rebuilt." in replay("--group", NEW)


@override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 1})
def test_events_whose_dead_letter_was_discarded_are_skipped_unless_included():
    publish("test.happened", {"n": 1})
    dropped = publish("test.happened", {"n": 2, "fail_group": "alpha"})
    deliver(["alpha"])
    DeadLetter.objects.filter(event_id=dropped.id).update(state=DeadLetter.State.DISCARDED)

    out = replay("--group", "alpha")
    assert "discarded:          1 (skipped; --include-discarded sends them)" in out
    assert "Replayed 0 events to alpha." in out
    assert not Delivery.objects.filter(group_name="alpha").exists(), "the decision stands"

    out = replay("--group", "alpha", "--include-discarded")
    assert "discarded:          1 (sent (--include-discarded))" in out
    assert list(Delivery.objects.filter(group_name="alpha").values_list("event_id", flat=True)) == [
        dropped.id
    ]


def test_dry_run_list_prints_the_events_it_would_send(new_group):
    events = [publish("test.happened", {"n": n}, key=f"k{n}" if n else None) for n in range(3)]
    deliver(["alpha"])
    new_group("test.happened")
    out = replay("--group", NEW, "--dry-run", "--list", "--limit", "2")
    listed = [line.split() for line in out.splitlines() if line.startswith("  ")]
    table = listed[listed.index(["id", "type", "key", "occurred_at"]) + 1 :]
    stored = EventRecord.objects.in_bulk([e.id for e in events])
    assert table == [
        [str(e.id), e.type, e.key or "-", stored[e.id].occurred_at.isoformat()] for e in events[:2]
    ]
    assert not Delivery.objects.filter(group_name=NEW).exists()
    with pytest.raises(CommandError, match="--list goes with --dry-run"):
        replay("--group", NEW, "--list")
