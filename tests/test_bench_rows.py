"""The arithmetic behind the benchmark rows W1, B1 and H1, and the docs page they feed.

The rows themselves need minutes and a private server (``make bench``); what can be
wrong without either is checked here: how WAL records are charged to tables, how a
backlog and its drain time are read from the events' own times, how a pair of
measurements becomes a ratio, and that a regenerated page keeps its hand-written part.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import private, runner, scenarios
from bench.scenarios import b1_bloat, h1_held_snapshot

# Real pg_waldump lines (PostgreSQL 15): a catalog prune, a sequence, a heap insert, two
# index records (the first names two blocks), a commit; database 5, table 16385, index
# 16391, sequence 16384.
WALDUMP = """\
rmgr: Heap2       len (rec/tot):     56/    56, tx:          0, lsn: 0/015391F8, prev 0/01538AF0, desc: PRUNE latestRemovedXid 0 nredirected 0 ndead 1, blkref #0: rel 1663/5/1249 blk 17
rmgr: Sequence    len (rec/tot):     99/    99, tx:        725, lsn: 0/01539230, prev 0/015391F8, desc: LOG rel 1663/5/16384, blkref #0: rel 1663/5/16384 blk 0
rmgr: Heap        len (rec/tot):     61/  8253, tx:        725, lsn: 0/01539298, prev 0/01539230, desc: INSERT off 1 flags 0x00, blkref #0: rel 1663/5/16385 blk 0 FPW
rmgr: Btree       len (rec/tot):     90/    90, tx:        725, lsn: 0/015392D8, prev 0/01539298, desc: NEWROOT lev 0, blkref #0: rel 1663/5/16391 blk 1, blkref #2: rel 1663/5/16391 blk 0
rmgr: Btree       len (rec/tot):     64/    64, tx:        725, lsn: 0/01539338, prev 0/015392D8, desc: INSERT_LEAF off 1, blkref #0: rel 1663/5/16391 blk 1
rmgr: Heap        len (rec/tot):     61/    61, tx:        726, lsn: 0/01539378, prev 0/01539338, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/6/16385 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/01539378, prev 0/01539338, desc: COMMIT 2026-12-05 08:06:32.709703 UTC
"""  # noqa: E501


def test_wal_records_are_charged_to_their_table_with_full_page_images():
    names = {16385: "django_events_outbox", 16391: "django_events_outbox (indexes)"}
    names[16384] = "django_events_outbox_position_seq"
    got = private.charge_records(WALDUMP.splitlines(), 5, names)
    assert got == {
        "(system catalogs and other)": 56,
        "outbox_position_seq": 99,
        "outbox": 8253,  # the total length: the full-page image is WAL too
        "outbox (indexes)": 154,
        "(other database)": 61,
        "(commit and other)": 34,
    }
    assert private.breakdown(got, 1, top=2) == "outbox 8,253, outbox (indexes) 154, other 250"


def test_backlog_and_drain_time_come_from_publish_and_handle_times():
    published = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    handled = [0.05, 0.05, 1.05, 3.0, 3.0, 4.0]
    assert h1_held_snapshot.backlog(published, handled, 1.0, 1.0) == [2.0]
    assert h1_held_snapshot.backlog(published, handled, 2.0, 2.0) == [3.0]
    # From t=2 the backlog is 3 (1.0's second event, both of 2.0's); it falls to 1 at
    # t=3 and to 0 at t=4.
    assert math.isclose(h1_held_snapshot.drain_seconds(published, handled, 2.0, 1), 1.0)
    assert math.isclose(h1_held_snapshot.drain_seconds(published, handled, 2.0, 0), 2.0)
    assert h1_held_snapshot.drain_seconds(published, handled[:-1], 2.0, 0) == float("inf")


def test_b1_pair_is_flat_at_zero_over_zero_and_infinite_from_nothing():
    assert b1_bloat.pair_row("x", "s", "dead tuples", 0, 0, "").ratio.median == 1.0
    assert b1_bloat.pair_row("x", "s", "dead tuples", 5, 0, "").ratio.median == float("inf")
    row = b1_bloat.pair_row("x", "s", "size [bytes]", 300, 200, "")
    assert (row.unit, row.ratio.median, row.met) == ("bytes", 1.5, False)


def test_regenerated_docs_keep_the_hand_written_section(tmp_path):
    results = tmp_path / "latest.json"
    row = runner.reference_row("W1", "wal", "WAL per event", "bytes", [3000.0])
    machine = ("cpu", "cores", "postgresql", "sqlite", "python", "django", "platform", "date")
    doc = {
        "mode": "full",
        "machine": dict.fromkeys(machine, "?"),
        "total_s": 1.0,
        "scenarios": [row.to_json()],
    }
    results.write_text(json.dumps(doc))
    page = tmp_path / "performance.md"
    kept = f"## Write and bloat budget\n\n{runner.KEEP}\n\nBefore: 3,129 bytes per event.\n"
    page.write_text(f"# Performance\n\n## Results\n\nold\n\n{kept}\n## Reproduce\n\nold\n")
    runner.write_docs(results, page)
    text = page.read_text()
    assert kept in text
    assert "| W1 | wal |" in text and "\nold\n" not in text
    runner.write_docs(results, page)  # and again: kept once, not twice
    assert page.read_text().count(runner.KEEP) == 1
    # The commands that rewrite the page are not run by the doc-snippet test.
    reproduce = page.read_text().split("## Reproduce", 1)[1]
    assert reproduce.lstrip().startswith("<!-- doc-test: skip ")
    assert "`DJANGO_EVENTS_BENCH_TRANSPORT` picks the Level 0 engine" in reproduce
    assert "Level 0 engine: `django_events.transports." in text


def test_o1_states_are_what_their_rows_say():
    """O1 compares OpenTelemetry absent, installed without an SDK, and on: each state
    must be the one the hooks see, or the rows compare a state with itself."""
    pytest.importorskip("opentelemetry.sdk")
    from bench import otel
    from bench.scenarios import o1_otel
    from django_events import instrumentation

    assert o1_otel in scenarios.load()
    seen = {}
    try:
        for mode in otel.MODES:
            otel.set_mode(mode)
            seen[mode] = (
                instrumentation.otel is not None,
                instrumentation.tracing_enabled(),
                instrumentation.metrics_enabled(),
            )
    finally:
        otel.set_mode("off")
    assert seen == {
        "absent": (False, False, False),
        "off": (True, False, False),
        "on": (True, True, True),
    }
    assert not instrumentation.tracing_enabled()
