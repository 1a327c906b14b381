"""F9, hostile input: what another writer, a bug or an attacker puts into the transport.

Three doors. (1) Rows written straight into the event log and the delivery table, as
the database transport stores them: huge strings, nesting 10,000 deep, data that is not
an object, unknown and invalid versions, bad keys, bad metadata, an unknown type, a
delivery whose event is missing. Each must become a dead letter naming its reason while
the healthy events around it are handled, and the worker must finish (``--once``) with
exit 0: no crash, no loop. (2) Malformed rows in the outbox (the relay's input). (3) The
envelope decoder external transports use, fuzzed with hypothesis: every input is either
an ``Event`` or an ``UndecodableEvent``, and size and depth are refused before parsing.
The control parses without the depth pre-check and without the transports' defensive
decode (#12): the worker crashes on the deep payload. With the pre-check off alone, the
defensive decode still makes it one dead letter.
"""

from __future__ import annotations

import json
import time
import uuid
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_events.envelope import MAX_NESTING, decode_json, from_cloudevent
from django_events.exceptions import UndecodableEvent
from django_events.models import DeadLetter

from ..testapp.models import Effect
from . import transport as leases
from .checker import check_database
from .conftest import Procs, add_row, cursor_check, drain_with, publish_truth, scalar, size
from .transport import LOGGED_TYPE, route

pytestmark = [pytest.mark.django_db(transaction=True)]

LIMIT = 256 * 1024  # MAX_PAYLOAD_BYTES default; the transport allows twice that when reading
DEEP = '{"a":' + "[" * 10_000 + "]" * 10_000 + "}"
HOSTILE = {
    # name: (column overrides, expected error class)
    "huge string": ({"data": json.dumps({"s": "x" * (3 * LIMIT)})}, "UndecodableEvent"),
    "nesting 10,000 deep": ({"data": DEEP}, "UndecodableEvent"),
    "metadata nesting 10,000 deep": ({"metadata": DEEP}, "UndecodableEvent"),
    "data is a list": ({"data": "[1, 2, 3]"}, "UndecodableEvent"),
    "data is a string": ({"data": '"text"'}, "UndecodableEvent"),
    "data is null": ({"data": "null"}, "UndecodableEvent"),
    "version 0": ({"version": 0}, "UndecodableEvent"),
    "empty key": ({"key": ""}, "UndecodableEvent"),
    "key of 10,000 chars": ({"key": "k" * 10_000}, "UndecodableEvent"),
    "metadata is a list": ({"metadata": "[1]"}, "UndecodableEvent"),
    "metadata value not a string": ({"metadata": '{"a": 1}'}, "UndecodableEvent"),
    "invalid type": ({"type": "Not A Type!"}, "UndecodableEvent"),
    "unknown type": ({"type": "test.never_heard_of"}, "NoHandler"),
    "missing event": ({"missing": True}, "UndecodableEvent"),
}


def _insert_hostile(position: int, overrides: dict) -> uuid.UUID:
    """One hostile event where the transport under test reads it (``route``)."""
    event_id = uuid.uuid4()
    row = {
        "type": LOGGED_TYPE,
        "key": None,
        "version": 1,
        "data": '{"n": -1}',
        "metadata": "{}",
        **overrides,
    }
    where = route(bool(row.get("missing")) or row["type"] != LOGGED_TYPE)

    def run(cursor) -> None:
        # The log's key column holds 200 characters; widen it so an over-long key can
        # reach the worker as it could from a transport that does not check (restored
        # by the test).
        cursor.execute("ALTER TABLE django_events_event ALTER COLUMN key TYPE text")
        if not row.get("missing"):
            cursor.execute(
                "INSERT INTO django_events_event (id, position, type, key, version, data, "  # noqa: S608
                "metadata, occurred_at, source, recorded_at, txid) VALUES (%s, %s, %s, %s, %s, "
                f"%s::jsonb, %s::jsonb, now(), 'hostile', now(), {where.txid})",
                [
                    event_id,
                    position,
                    row["type"],
                    row["key"],
                    row["version"],
                    row["data"],
                    row["metadata"],
                ],
            )
        if where.delivery:
            cursor.execute(
                "INSERT INTO django_events_delivery (event_id, group_name, position, key, "
                "ordered, attempts, available_at, parked, last_error, created_at) VALUES "
                "(%s, 'alpha', %s, NULL, FALSE, 0, now(), FALSE, '', now())",
                [event_id, position],
            )

    cursor_check(run)
    return event_id


def test_f9_hostile_rows_become_dead_letters_and_the_worker_carries_on(procs: Procs):
    started = time.monotonic()
    truth = publish_truth(size(40, 200), seed_name="f9:before", rollback=0)
    hostile = {
        name: _insert_hostile(10**9 + i, overrides)
        for i, (name, (overrides, _)) in enumerate(HOSTILE.items())
    }
    truth.update(publish_truth(size(40, 200), seed_name="f9:after", rollback=0))
    env = procs.env(overrides={"MAX_ATTEMPTS": 3, "BATCH_SIZE": 7})
    procs.command("worker", "consume_events", "--once", env=env)
    try:
        code = procs.wait("worker", timeout=120)
    finally:  # put the schema back for the tests that follow
        cursor_check(
            lambda c: (
                c.execute("DELETE FROM django_events_event WHERE length(key) > 200"),
                c.execute("ALTER TABLE django_events_event ALTER COLUMN key TYPE varchar(200)"),
            )
        )
    assert code == 0, procs.logs()
    letters = {d.event_id: d for d in DeadLetter.objects.filter(group="alpha")}
    wrong = []
    for name, event_id in hostile.items():
        want = HOSTILE[name][1]
        letter = letters.get(event_id)
        if letter is None or letter.error_class != want or not letter.error_message:
            wrong.append(f"{name}: {letter and (letter.error_class, letter.error_message)!r}")
    report = cursor_check(lambda c: check_database(c, truth, ["alpha", "beta"]))
    add_row(
        "F9 hostile rows in the transport",
        report,
        dead=len(letters),
        secs=time.monotonic() - started,
        note=f"{len(hostile) - len(wrong)}/{len(hostile)} hostile rows dead-lettered with reason",
    )
    assert not wrong, wrong
    assert DeadLetter.objects.filter(group="alpha").count() == len(hostile), "one letter each"
    assert report.clean and report.dead == 0, report
    assert not cursor_check(lambda c: leases.owes(c, "alpha") or leases.owes(c, "beta"))


def test_f9_control_no_depth_precheck_crashes_the_worker(procs: Procs):
    """Without the pre-check and without the transports' defensive decode (#12), which
    since turns the parser's ``RecursionError`` into a dead letter on its own."""
    _insert_hostile(10**9, {"data": DEEP})
    env = procs.env(
        overrides={"MAX_ATTEMPTS": 2, "LEASE": 1},
        DJANGO_EVENTS_FAULTS_CONTROL="no_precheck,no_decode_defence",
    )
    crashes = 0
    for _ in range(4):
        procs.command("worker", "consume_events", "--once", env=env)
        crashes += procs.wait("worker", timeout=120) != 0
        time.sleep(1.2)  # the lease of the crashed claim runs out
    dead = DeadLetter.objects.count()
    add_row(
        "F9 CONTROL parse without depth pre-check or decode defence",
        None,
        events=1,
        dead=dead,
        kills=crashes,
        note=f"worker crashed {crashes}/4 runs (RecursionError), never dead-lettered",
    )
    assert "RecursionError" in procs.logs()
    assert crashes == 4 and dead == 0


def test_f9_without_depth_precheck_the_defended_decode_still_makes_one_dead_letter(
    procs: Procs,
):
    """Defence in depth (#12): with the pre-check off, the parser's ``RecursionError`` is
    caught by the transport's per-message decode and becomes the event's dead letter."""
    bad = _insert_hostile(10**9, {"data": DEEP})
    env = procs.env(
        overrides={"MAX_ATTEMPTS": 2, "LEASE": 1}, DJANGO_EVENTS_FAULTS_CONTROL="no_precheck"
    )
    procs.command("worker", "consume_events", "--once", env=env)
    code = procs.wait("worker", timeout=120)
    letters = list(DeadLetter.objects.filter(group="alpha"))
    add_row(
        "F9 no depth pre-check, defended decode",
        None,
        events=1,
        dead=len(letters),
        note=f"worker exit {code}; "
        + (letters[0].error_message[:70] if letters else "no dead letter"),
    )
    assert code == 0, procs.logs()
    assert [(d.event_id, d.error_class) for d in letters] == [(bad, "UndecodableEvent")]
    assert "RecursionError" in letters[0].error_message


def _insert_outbox(data: str, metadata: str = "") -> uuid.UUID:
    event_id = uuid.uuid4()
    cursor_check(
        lambda c: c.execute(
            "INSERT INTO django_events_outbox (event_id, type, version, key, data, metadata, "
            "occurred_at, source, created_at) VALUES (%s, 'test.happened', 1, NULL, %s, %s, "
            "now(), 'hostile', now())",
            [event_id, data, metadata],
        )
    )
    return event_id


def test_f9_malformed_outbox_row_does_not_stall_the_relay(procs: Procs):
    before = publish_truth(20, seed_name="f9:outbox:before", rollback=0)
    bad = [_insert_outbox("not json"), _insert_outbox('{"a": 1}', metadata="{broken")]
    after = publish_truth(20, seed_name="f9:outbox:after", rollback=0)
    env = procs.env()
    procs.command("relay", "relay_events", env=env)
    expected = len(before) + len(after)
    deadline = time.monotonic() + 20
    # Until the outbox is empty too: on the log transport publish() writes the log itself,
    # so the healthy events are there before the relay has read the malformed rows.
    while time.monotonic() < deadline and (
        scalar("SELECT COUNT(*) FROM django_events_event") < expected
        or scalar("SELECT COUNT(*) FROM django_events_outbox") > 0
    ):
        time.sleep(0.5)
    relayed = scalar("SELECT COUNT(*) FROM django_events_event")
    stuck = scalar("SELECT COUNT(*) FROM django_events_outbox")
    errors = [line for line in procs.logs("relay").splitlines() if "Error:" in line]
    add_row(
        "F9 malformed outbox rows vs the relay",
        None,
        events=expected + len(bad),
        note=f"{relayed}/{expected} healthy relayed, {stuck} stuck; "
        + (errors[0][:90] if errors else "no error logged"),
    )
    assert relayed >= expected, (relayed, stuck, errors[:1])
    assert stuck == 0, "the malformed rows were neither relayed nor set aside"


# -- the envelope decoder, fuzzed ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "id",
    "type",
    "time",
    "data",
    "source",
    "dataversion",
    "partitionkey",
    "metadata",
    "correlationid",
    "causationid",
    "specversion",
]
VALID = {
    "id": str(uuid.uuid4()),
    "type": "test.happened",
    "time": "2026-01-01T00:00:00+00:00",
    "data": {"n": 1},
    "source": "fuzz",
}
envelopes = st.fixed_dictionaries(
    {}, optional={name: json_values | st.just(VALID.get(name)) for name in FIELDS}
)
bodies = (
    st.binary(max_size=200)
    | st.text(max_size=200)
    | json_values.map(json.dumps)
    | envelopes
    | envelopes.map(json.dumps)
    | envelopes.map(lambda e: json.dumps(e).encode())
    | st.builds(lambda d: {**VALID, **d}, envelopes)
    | st.integers(min_value=1, max_value=20_000).map(lambda n: "[" * n + "]" * n)
)


@settings(
    max_examples=size(500, 5000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=bodies)
def test_f9_fuzzed_envelopes_are_events_or_clear_errors(body):
    try:
        event = from_cloudevent(body, LIMIT)
    except UndecodableEvent as exc:
        assert str(exc)
    else:
        assert event.type and isinstance(event.data, dict)


def test_f9_size_and_depth_refused_before_parsing():
    with mock.patch("django_events.envelope.json.loads", side_effect=AssertionError("parsed")):
        with pytest.raises(UndecodableEvent, match="nests deeper"):
            decode_json(DEEP, 10**9)
        with pytest.raises(UndecodableEvent, match="over the"):
            decode_json('"' + "x" * (LIMIT + 1) + '"', LIMIT)
        with pytest.raises(UndecodableEvent, match="nests deeper"):
            from_cloudevent(
                json.dumps({**VALID, "data": {"a": DEEP}}).replace(json.dumps(DEEP), DEEP), 10**9
            )
    assert MAX_NESTING < 1000  # below Python's recursion limit, so json.loads never recurses out
    add_row(
        "F9 envelope fuzz + pre-parse limits",
        None,
        events=size(500, 5000),
        note="every input an Event or UndecodableEvent; limits checked before json.loads",
    )


# -- values the driver cannot convert (#12) --------------------------------------------------

UNCONVERTIBLE = {
    # name: (log time, delivery's first failure, delivery's attempts, expected error class)
    "log time infinity": ("'infinity'", "NULL", 0, "UndecodableEvent"),
    "log time after year 9999": ("'12000-01-01 00:00:00+00'", "NULL", 0, "UndecodableEvent"),
    "log time before year 1": ("'0044-03-15 00:00:00+00 BC'", "NULL", 0, "UndecodableEvent"),
    "first failure -infinity": ("now()", "'-infinity'", 0, None),
    "attempts at the column's top": ("now()", "NULL", 2**31 - 1, "LeaseExpired"),
}


def _insert_unconvertible(position: int, occurred_at: str, first: str, attempts: int) -> uuid.UUID:
    """One event hostile in its log row's time or its delivery row (``route``)."""
    event_id = uuid.uuid4()
    where = route(first != "NULL" or attempts != 0)

    def run(cursor) -> None:
        cursor.execute(
            "INSERT INTO django_events_event (id, position, type, key, version, data, "  # noqa: S608
            "metadata, occurred_at, source, recorded_at, txid) VALUES (%s, %s, 'test.happened', "
            f"NULL, 1, '{{\"n\": -1}}', '{{}}', {occurred_at}, 'hostile', now(), {where.txid})",
            [event_id, position],
        )
        if not where.delivery:
            return
        cursor.execute(
            "INSERT INTO django_events_delivery (event_id, group_name, position, key, ordered, "  # noqa: S608
            "attempts, available_at, parked, last_error, created_at, first_failed_at) VALUES "
            f"(%s, 'alpha', %s, NULL, FALSE, %s, now(), FALSE, '', now(), {first})",
            [event_id, position, attempts],
        )

    cursor_check(run)
    return event_id


def test_f9_values_the_driver_cannot_convert_are_one_dead_letter_each(procs: Procs):
    """A log time or a count another writer stored that psycopg cannot convert (or that
    overflows) used to fail the claim of the whole batch every lease, for ever: the worker
    exited on each run and its healthy batch-mates waited. Each is one outcome now."""
    started = time.monotonic()
    truth = publish_truth(size(20, 100), seed_name="f9:unconvertible:before", rollback=0)
    planted = {
        name: _insert_unconvertible(10**9 + i, *values[:3])
        for i, (name, values) in enumerate(UNCONVERTIBLE.items())
    }
    truth.update(publish_truth(size(20, 100), seed_name="f9:unconvertible:after", rollback=0))
    env = procs.env(overrides={"MAX_ATTEMPTS": 1, "BATCH_SIZE": 7})
    procs.command("worker", "consume_events", "--once", env=env)
    code = procs.wait("worker", timeout=120)
    assert code == 0, procs.logs()
    letters = {d.event_id: d for d in DeadLetter.objects.filter(group="alpha")}
    wrong = []
    for name, event_id in planted.items():
        want = UNCONVERTIBLE[name][3]
        letter = letters.get(event_id)
        got = letter and (letter.error_class, bool(letter.error_message))
        if want is None:  # handled: its effect is checked here, not by the checker
            got = got or Effect.objects.filter(group="alpha", event_id=event_id).delete()[0]
        if got != ((want, True) if want else 1):
            wrong.append(f"{name}: {letter and (letter.error_class, letter.error_message)!r}")
    report = cursor_check(lambda c: check_database(c, truth, ["alpha", "beta"]))
    add_row(
        "F9 values the driver cannot convert",
        report,
        dead=len(letters),
        secs=time.monotonic() - started,
        note=f"{len(planted) - len(wrong)}/{len(planted)} planted rows with one outcome each; "
        "worker exit 0",
    )
    assert not wrong, wrong
    assert report.clean and report.dead == 0, report
    assert not cursor_check(lambda c: leases.owes(c, "alpha") or leases.owes(c, "beta"))


# -- hostile outbox rows: every kind the relay cannot move, between healthy events ------------

HOSTILE_OUTBOX = {
    # name: (data, metadata, what the (relay) dead letter's reason says)
    "lone surrogate in data": ('{"n": -1, "s": "\\ud800"}', "", "lone surrogate"),
    "lone surrogate in a key": ('{"n": -1, "\\udc00": 1}', "", "(a key): lone surrogate"),
    "lone surrogate in metadata": ('{"n": -1}', '{"t": "\\ud800"}', "metadata['t']: lone"),
    "NaN": ('{"n": NaN}', "", "nan cannot be stored"),
    "Infinity": ('{"n": Infinity}', "", "inf cannot be stored"),
    "NUL": ('{"n": -1, "s": "\\u0000"}', "", "NUL character"),
    "invalid JSON": ("{not json", "", "not valid JSON"),
    "not an object": ("[1]", "", "not a JSON object"),
    "duplicate id": ('{"n": -1}', "", "in the event log already"),
}


def test_f9_hostile_outbox_rows_are_set_aside_and_the_relay_moves_on(procs: Procs):
    """Rows written around publish() that no stage can take: each one (relay) dead letter
    with its reason, every healthy event around them handled once, nothing left waiting."""
    started = time.monotonic()
    env = procs.env(overrides={"RELAY_BATCH_SIZE": 7})
    truth = publish_truth(size(20, 100), seed_name="f9:hostile-outbox:before", rollback=0)
    drain_with(procs, "worker", env=env, timeout=120)
    relayed = next(iter(truth))
    planted = {}
    for name, (data, metadata, _) in HOSTILE_OUTBOX.items():
        truth.update(publish_truth(3, seed_name=f"f9:hostile-outbox:{name}", rollback=0))
        planted[name] = _insert_outbox_row(data, metadata, relayed if "duplicate" in name else None)
    truth.update(publish_truth(size(20, 100), seed_name="f9:hostile-outbox:after", rollback=0))
    drain_with(procs, "worker", env=env, timeout=120)
    letters = {
        d.error_message.split(":", 1)[0]: d for d in DeadLetter.objects.filter(group="(relay)")
    }
    reasons = {
        name: getattr(letters.get(f"Outbox row {at} (test.happened)"), "error_message", None)
        for name, at in planted.items()
    }
    wrong = [(n, why) for n, why in reasons.items() if HOSTILE_OUTBOX[n][2] not in (why or "")]
    report = cursor_check(lambda c: check_database(c, truth, ["alpha", "beta"]))
    waiting = scalar("SELECT COUNT(*) FROM django_events_outbox")
    add_row(
        "F9 hostile outbox rows vs the relay",
        report,
        dead=len(letters),
        secs=time.monotonic() - started,
        note=f"{len(planted) - len(wrong)}/{len(planted)} rows set aside with reason, "
        f"{waiting} left in the outbox",
    )
    assert not wrong, wrong
    assert len(letters) == len(planted)
    assert report.clean and report.dead == 0 and waiting == 0, report


def _insert_outbox_row(data: str, metadata: str, event_id: uuid.UUID | None) -> int:
    def run(cursor) -> int:
        cursor.execute(
            "INSERT INTO django_events_outbox (event_id, type, version, key, data, metadata, "
            "occurred_at, source, created_at) VALUES (%s, 'test.happened', 1, NULL, %s, %s, "
            "now(), 'hostile', now()) RETURNING position",
            [event_id or uuid.uuid4(), data, metadata],
        )
        return int(cursor.fetchone()[0])

    return cursor_check(run)
