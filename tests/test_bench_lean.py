"""The prototype of bench/lean keeps the commit-order gap: what its numbers stand for.

Each log-cursor variant (docs/internals.md, "The second-generation engine: measured
design") claims from windows between two snapshots. An event whose transaction drew the
lower position but committed last must still be handed out, once, after the cursor has
passed a higher position; and two claims must never hand out the same event.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from bench.lean.variants import VARIANTS, ConsumerState, Variant
from tests.conftest import postgres_only

pytestmark = [postgres_only, pytest.mark.django_db(transaction=True)]

LOG_CURSORS = [name for name in VARIANTS if name != "A"]


def connect() -> psycopg.Connection:
    settings_dict = connection.settings_dict
    return psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        autocommit=True,
    )


@pytest.fixture(params=LOG_CURSORS)
def variant(request: pytest.FixtureRequest) -> Iterator[Variant]:
    built = VARIANTS[request.param]()
    with connect() as conn:
        drop(conn)  # what an interrupted run left
        built.setup(conn, ["g"])
    yield built
    with connect() as conn:
        drop(conn)


def drop(conn: psycopg.Connection) -> None:
    conn.execute("DROP FUNCTION IF EXISTS lean_claim")
    for table in ("lean_log", "lean_cursor", "lean_inflight", "lean_batch", "lean_head"):
        conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


def claimed(variant: Variant, conn: psycopg.Connection) -> list[int]:
    batch = variant.claim(conn, "g", ConsumerState())
    return [] if batch is None else batch.receipts


def test_a_late_committer_below_the_cursor_is_handed_out_once(variant: Variant) -> None:
    with connect() as consumer, connect() as early, connect() as late:
        early.execute("BEGIN")
        variant.publish(early)  # draws the lower position, commits last
        row = early.execute("SELECT max(position) FROM lean_log").fetchone()
        assert row is not None
        low = int(row[0])
        variant.publish(late)
        assert claimed(variant, consumer) == [low + 1], "only the committed event"
        assert claimed(variant, consumer) == []
        early.execute("COMMIT")
        assert claimed(variant, consumer) == [low], "the late committer, below the cursor"
        assert claimed(variant, consumer) == []


def test_consecutive_claims_never_hand_out_an_event_twice(variant: Variant) -> None:
    with connect() as consumer, connect() as publisher:
        seen: list[int] = []
        for round_ in range(3):
            for _ in range(70):  # more than one claim's batch of 50
                variant.publish(publisher)
            for _ in range(3):  # 50, 20, then nothing
                seen += claimed(variant, consumer)
            assert len(seen) == 70 * (round_ + 1)
        assert len(set(seen)) == len(seen)
