"""B1: dead tuples and size of every table django-events writes, as events and a held
snapshot's age grow, on a private cluster with autovacuum on (the server's defaults).

One database, never emptied, four stages of ``n`` events each (pre-published, drained by
two ``consume_events`` as S4 does): A and B without any other transaction, then C and D
while a second connection holds a REPEATABLE READ snapshot opened before C. After each
stage: ``pg_total_relation_size``, ``pg_stat_user_tables.n_dead_tup`` and pgstattuple's
exact dead-tuple count per table. "Flat" means B's numbers equal A's (no growth with the
number of events) and D's equal C's (none with the snapshot's age).
"""

from __future__ import annotations

import time
from typing import Any

from bench import pg, private
from bench.runner import Context, Goal, Row, Stats

ID = "B1"
PRIVATE_SERVER = True  # everything on a cluster of its own: no shared lock, no bench DB
TITLE = "dead tuples and size of the tables django-events writes"
BASELINE = "the same after half the events / half the snapshot's age"
GOAL = Goal("<=", 1.1)
DB = "b1_events"
# The hot tables models.py says "stay small"; the last two are the log transport's.
WORK_TABLES = ("outbox", "delivery", "lease", "cursor")
STATS_LAG = 2.0  # seconds: backends report their table statistics at most once a second


def run(ctx: Context) -> list[Row]:
    n = ctx.size(30_000, 3_000)
    stages: dict[str, dict[str, dict[str, int]]] = {}
    with private.cluster(autovacuum=True) as server:
        exact = private.migrated_database(server, DB)
        with pg.Consumers(2, DB) as consumers:

            def stage(name: str) -> None:
                before = consumers.handled()
                pg.prepublish(n, DB)
                consumers.drain(n, before=before)
                time.sleep(STATS_LAG)
                stages[name] = private.table_stats(DB, exact)
                ctx.log(f"    {name}: {describe(stages[name])}")

            stage("A")
            stage("B")
            holder = pg.child("snapshot_holder", {"db": DB, "seconds": 900})
            try:
                assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
                stage("C")
                stage("D")
            finally:
                assert holder.stdin is not None
                holder.stdin.write("done\n")
                holder.stdin.flush()
                pg.child_result(holder)
    dead = "dead_exact" if exact else "dead"
    note = (
        f"{n:,} events a stage (S4's size), pre-published and drained by 2 consume_events; "
        "private cluster, autovacuum on with the default naptime (1 min); dead tuples "
        + ("by pgstattuple" if exact else "by pg_stat_user_tables (pgstattuple missing)")
    )
    rows = []
    for rid, what, base, cand, age in (
        ("B1.events", "after 2n events ÷ after n", "A", "B", "no other transaction"),
        ("B1.snapshot", "snapshot held over 2n events ÷ over n", "C", "D", "snapshot held"),
    ):
        detail = f"after {base}: {describe(stages[base])}; after {cand}: {describe(stages[cand])}"
        rows.append(
            pair_row(
                f"{rid}.size",
                f"{TITLE}: work tables' size (outbox, delivery, lease, cursor), {what}",
                "size [bytes]",
                total(stages[cand], WORK_TABLES, "bytes"),
                total(stages[base], WORK_TABLES, "bytes"),
                f"{note}; {age}; per table (size, dead tuples): {detail}",
            )
        )
        rows.append(
            pair_row(
                f"{rid}.dead",
                f"{TITLE}: dead tuples in every written table, {what}",
                "dead tuples",
                total(stages[cand], tuple(stages[cand]), dead),
                total(stages[base], tuple(stages[base]), dead),
                f"{age}; reference for the redesign: where they are is in the .size row's notes",
            )
        )
    return rows


def pair_row(rid: str, scenario: str, metric: str, cand: int, base: int, notes: str) -> Row:
    """One measured pair; 0 ÷ 0 is flat (1.0), n ÷ 0 is infinite growth."""
    ratio = cand / base if base else (1.0 if cand == 0 else float("inf"))
    name, _, unit = metric.partition(" [")
    return Row(
        id=rid,
        scenario=scenario,
        baseline=BASELINE,
        metric=name,
        unit=unit.rstrip("]") or "tuples",
        candidate=Stats.of([cand]),
        base=Stats.of([base]),
        ratio=Stats.of([ratio]),
        goal=GOAL,
        notes=notes,
    )


def total(stats: dict[str, dict[str, int]], tables: tuple[str, ...], key: str) -> int:
    return sum(stats[t].get(key, 0) for t in tables if t in stats)


def describe(stats: dict[str, Any]) -> str:
    dead = "dead_exact" if any("dead_exact" in s for s in stats.values()) else "dead"
    return ", ".join(
        f"{name} {s['bytes'] / 1e6:.2f} MB/{s[dead]:,} dead"
        + (f"/{s['autovacuums']} autovacuums" if s["autovacuums"] else "")
        for name, s in stats.items()
    )
