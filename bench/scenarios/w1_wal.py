"""W1: WAL bytes per event end to end, against PgQueuer per job, on a private cluster.

Each repetition, for each system in turn: CHECKPOINT (so both pay the same full-page
images), then publish ``n`` events one transaction each (``publish()``; PgQueuer's
``enqueue()`` of one job), then two worker processes drain them (S4's machinery: two
``consume_events`` with the inbox and the log on; two PgQueuer workers), then a plain
``VACUUM`` of the database cleans up what the run left dead. ``pg_current_wal_lsn()``
is read between the steps; the whole server is ours, with autovacuum off so that its
work lands in the step that caused it (the VACUUM) rather than in whichever run it
happened to overlap.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import pg, private
from bench.runner import Context, Goal, Row, alternate, na_row, ratio_row
from bench.scenarios.s4_end_to_end import WORKERS, missing, pgqueuer_drain

ID = "W1"
PRIVATE_SERVER = True  # everything on a cluster of its own: no shared lock, no bench DB
TITLE = "WAL bytes per event end to end: publish, relay, 2 consume_events, inbox and log on"
BASELINE = "PgQueuer per job: enqueue, dequeue, complete"
GOAL = Goal("<=", 1.0)
EVENTS_DB = "w1_events"
PGQUEUER_DB = "w1_pgqueuer"
STEPS = ("publish", "consume", "vacuum")


def publish_one_per_transaction(n: int, dbname: str) -> None:
    """``n`` times ``atomic(): publish()`` in a publisher process (S6's role), wake-ups on."""
    proc = pg.child("publisher", {}, env={"DJANGO_EVENTS_BENCH_DB": dbname})
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write(json.dumps({"count": n, "wakeups": True}) + "\n\n")
    proc.stdin.flush()
    pg.child_result(proc, timeout=600)


class Measure:
    """WAL of one system's repetition, step by step, and where the last one went."""

    def __init__(self, server: Any, dbname: str, updated: str = "") -> None:
        self.server, self.dbname, self.updated = server, dbname, updated
        self.steps: dict[str, list[float]] = {step: [] for step in STEPS}
        self.tables: dict[str, int] = {}
        self.hot = (0, 0)  # updates of ``updated`` in the last repetition: all, HOT

    def run(self, n: int, publish: Any, drain: Any) -> float:
        with pg.connect(self.dbname) as conn:
            conn.execute("CHECKPOINT")
            before = self.updates(conn)
            marks = [private.wal_lsn(conn)]
            publish(n)
            marks.append(private.wal_lsn(conn))
            drain(n)
            marks.append(private.wal_lsn(conn))
            after = self.updates(conn, settle=True)
            self.hot = (after[0] - before[0], after[1] - before[1])
            conn.execute("VACUUM")
            marks.append(private.wal_lsn(conn))
            for step, start, end in zip(STEPS, marks, marks[1:], strict=False):
                self.steps[step].append(private.wal_bytes(conn, start, end) / n)
            total = private.wal_bytes(conn, marks[0], marks[-1]) / n
        self.tables = private.wal_by_relation(self.server, self.dbname, marks[0], marks[-1])
        return total

    def updates(self, conn: Any, settle: bool = False) -> tuple[int, int]:
        """``pg_stat_user_tables``' updates and HOT updates of the table: the workers'
        counts reach it when they exit, so after a drain wait until they stop changing."""
        if not self.updated:
            return (0, 0)
        last: tuple[int, int] | None = None
        for _ in range(20 if settle else 1):
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
                [self.updated],
            ).fetchone()
            now = (int(row[0]), int(row[1])) if row else (0, 0)
            if now == last:
                break
            last = now
            if settle:
                time.sleep(0.5)
        return last or (0, 0)


def run(ctx: Context) -> list[Row]:
    reason = missing("pgqueuer")
    if reason:
        return [na_row(ID, TITLE, BASELINE, GOAL, reason)]
    from bench.peers import pgqueuer_app

    n = ctx.size(5_000, 1_000)
    with private.cluster(autovacuum=False) as server:
        private.migrated_database(server, EVENTS_DB)
        ours = Measure(server, EVENTS_DB, updated="django_events_delivery")
        theirs = Measure(server, PGQUEUER_DB)

        def django_events() -> float:
            pg.reset_events(EVENTS_DB)

            def drain(n: int) -> None:
                with pg.Consumers(WORKERS, EVENTS_DB) as consumers:
                    consumers.drain(n)

            return ours.run(n, lambda n: publish_one_per_transaction(n, EVENTS_DB), drain)

        def pgqueuer() -> float:
            pg.recreate_database(PGQUEUER_DB)  # as S4 does: a fresh queue each time
            pgqueuer_app.install(PGQUEUER_DB)
            return theirs.run(
                n,
                lambda n: pgqueuer_app.defer(PGQUEUER_DB, n, chunk=1),
                lambda n: pgqueuer_drain(PGQUEUER_DB, n),
            )

        got = alternate(ctx, {"django-events": django_events, "PgQueuer": pgqueuer}, warmup=False)
    where = (
        f"per event of the last repetition, bytes, by table (pg_waldump): django-events: "
        f"{private.breakdown(ours.tables, n)}; PgQueuer: {private.breakdown(theirs.tables, n)}; "
        f"django_events_delivery updates (claims, heartbeats, retries) in that repetition: "
        f"{ours.hot[0]:,}, of which HOT {ours.hot[1]:,}"
    )
    note = (
        f"{n:,} events per repetition, one per transaction; private cluster, CHECKPOINT "
        f"before each system's run, autovacuum off and one VACUUM after the drain (its WAL "
        f"counted); {WORKERS} worker processes each"
    )
    rows = [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "WAL per event",
            "bytes",
            got["django-events"],
            got["PgQueuer"],
            GOAL,
            higher_is_better=False,
            notes=f"{note}; {where}",
        )
    ]
    for step, what in (
        ("publish", "publish() one per transaction / enqueue() one job"),
        ("consume", "relay + claim + handle with inbox and log / dequeue + complete"),
        ("vacuum", "the VACUUM after the drain"),
    ):
        rows.append(
            ratio_row(
                f"W1.{step}",
                f"WAL per event, {step} step: {what}",
                "PgQueuer, the same step",
                "WAL per event",
                "bytes",
                ours.steps[step][-ctx.reps :],
                theirs.steps[step][-ctx.reps :],
                None,
                higher_is_better=False,
                notes="reference",
            )
        )
    return rows
