"""S8: consuming while another connection holds a REPEATABLE READ snapshot."""

from __future__ import annotations

from typing import Any

from bench import pg
from bench.runner import Context, Goal, Row, alternate, ratio_row

ID = "S8"
TITLE = "consume while a REPEATABLE READ snapshot is held"
BASELINE = "the same without it"
GOAL = Goal(">=", 0.85)
WORK_TABLES = ("django_events_outbox", "django_events_delivery")


def run(ctx: Context) -> list[Row]:
    n = ctx.size(20_000, 3_000)
    sizes: dict[str, list[float]] = {"without": [], "with": []}

    def measure(hold: bool) -> float:
        pg.reset_events()
        holder: list[Any] = []
        if hold:
            # Open before the events exist, so none of their dead versions can be removed.
            # Held until the drain ends; the bound only frees a holder whose bench died, and
            # is far above any drain (a loaded machine once drained past a 60 s bound).
            h = pg.child("snapshot_holder", {"db": pg.BENCH_DB, "seconds": 600})
            assert h.stdout is not None and h.stdout.readline().strip() == "ready"
            holder.append(h)
        try:
            before = consumers.handled()
            pg.prepublish(n)
            rate = consumers.drain(n, before=before)
            with pg.connect() as conn:
                sizes["with" if hold else "without"].append(pg.table_bytes(conn, *WORK_TABLES))
        finally:
            for h in holder:
                h.stdin.write("done\n")
                h.stdin.flush()
                pg.child_result(h)
        return rate

    consumers = pg.Consumers(2)
    try:
        got = alternate(ctx, {"without": lambda: measure(False), "with": lambda: measure(True)})
    finally:
        consumers.__exit__()
    # alternate() warmed each variant up once: drop those sizes.
    size_with, size_without = sizes["with"][1:], sizes["without"][1:]
    pg.reset_events()
    note = (
        f"{n:,} events per repetition; the snapshot is opened before they are published "
        "and held until the drain ends"
    )
    return [
        ratio_row(
            "S8.rate",
            TITLE,
            BASELINE,
            "throughput",
            "events/s",
            got["with"],
            got["without"],
            GOAL,
            higher_is_better=True,
            notes=note,
        ),
        ratio_row(
            "S8.size",
            f"{TITLE}: outbox + delivery size after",
            BASELINE,
            "size after the drain",
            "bytes",
            size_with,
            size_without,
            Goal("<=", 3.0),
            higher_is_better=False,
            notes="pg_total_relation_size of the two work tables right after the drain, "
            "snapshot still held; no manual VACUUM",
        ),
    ]
