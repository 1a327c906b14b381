"""S4: end to end, pre-published events drained by two workers, against the peer queues."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import psycopg

from bench import pg
from bench.runner import Context, Goal, Row, alternate, na_row, ratio_row

ID = "S4"
TITLE = "end to end: 2 consume_events processes, one group, inbox on"
BASELINE = "procrastinate, PgQueuer"
GOAL = Goal(">=", 5.0)
PROCRASTINATE_DB = "django_events_bench_procrastinate"
PGQUEUER_DB = "django_events_bench_pgqueuer"
WORKERS = 2


def settled(consumers: pg.Consumers, n: int) -> float:
    """A burst of ``n`` on top of the last one drained, the tables kept: each relay already
    knows its frontier, as in production after its first take. ``django_events`` empties
    the tables first, which gives every relay a fresh start; a relay that ran slower once
    settled went unseen that way (docs/internals.md, "The relay's frontier")."""
    before = consumers.handled()
    pg.prepublish(n)
    return consumers.drain(n, before=before)


def django_events(consumers: pg.Consumers, n: int) -> float:
    pg.reset_events()
    return settled(consumers, n)


def procrastinate(n: int) -> float:
    from bench.peers import procrastinate_app

    pg.recreate_database(PROCRASTINATE_DB)
    procrastinate_app.install(PROCRASTINATE_DB)
    procrastinate_app.defer(PROCRASTINATE_DB, n)

    def started(c: psycopg.Connection) -> bool:
        row = c.execute(
            "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status <> 'todo')"
        ).fetchone()
        return bool(row and row[0])

    def done(c: psycopg.Connection) -> bool:
        row = c.execute(
            "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
        ).fetchone()
        return not (row and row[0])

    rate = _peer(PROCRASTINATE_DB, "procrastinate_worker", {}, n, started, done)
    with pg.connect(PROCRASTINATE_DB) as conn:
        ok = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()
    assert ok and ok[0] == n, (ok, n)
    return rate


def pgqueuer(n: int) -> float:
    from bench.peers import pgqueuer_app

    pg.recreate_database(PGQUEUER_DB)
    pgqueuer_app.install(PGQUEUER_DB)
    pgqueuer_app.defer(PGQUEUER_DB, n)
    return pgqueuer_drain(PGQUEUER_DB, n)


def pgqueuer_drain(db: str, n: int) -> float:
    """Two PgQueuer workers empty ``db``'s queue of ``n`` jobs: the steady-state jobs/s."""

    def started(c: psycopg.Connection) -> bool:
        row = c.execute(
            "SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE status <> 'queued')"
        ).fetchone()
        return bool(row and row[0]) or done(c)

    def done(c: psycopg.Connection) -> bool:
        row = c.execute("SELECT EXISTS (SELECT 1 FROM pgqueuer)").fetchone()
        return not (row and row[0])

    return _peer(db, "pgqueuer_worker", {"batch_size": 100}, n, started, done)


def _peer(
    db: str,
    role: str,
    args: dict[str, object],
    n: int,
    started: Callable[[psycopg.Connection], bool],
    done: Callable[[psycopg.Connection], bool],
) -> float:
    procs = [pg.child(role, {"db": db, **args}) for _ in range(WORKERS)]
    try:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
        with pg.connect(db) as conn:
            t0, t1 = pg.wait_steady(conn, started, done, procs, timeout=600)
    finally:
        pg.stop(procs)
    return n / (t1 - t0)


def missing(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def run(ctx: Context) -> list[Row]:
    n = ctx.size(30_000, 3_000)
    # procrastinate handles a few hundred jobs/s here: a tenth of the events keeps it in budget.
    n_slow = max(200, n // 10)
    consumers = pg.Consumers(WORKERS)
    variants: dict[str, Callable[[], float]] = {
        "django-events": lambda: django_events(consumers, n)
    }
    reasons: dict[str, str] = {}
    for name, module, fn in (
        ("procrastinate", "procrastinate", procrastinate),
        ("PgQueuer", "pgqueuer", pgqueuer),
    ):
        reason = missing(module)
        if reason:
            reasons[name] = reason
            continue
        try:
            fn(200)  # warm up, and prove the peer runs here
        except Exception as exc:
            reasons[name] = f"{name} could not run here: {type(exc).__name__}: {exc}"[:300]
            continue
        size = n_slow if name == "procrastinate" else n
        variants[name] = lambda fn=fn, size=size: fn(size)
    # Last in each round: it follows the fresh repetition's drain, whose frontiers it keeps.
    variants["settled"] = lambda: settled(consumers, n)
    try:
        django_events(consumers, min(n, 1000))  # warm up
        got = alternate(ctx, variants, warmup=False)
    finally:
        consumers.__exit__()
        for db in (PROCRASTINATE_DB, PGQUEUER_DB):
            pg.drop_database(db)
        pg.reset_events()
    note = (
        f"{n:,} events per repetition for django-events (the issue says 100k; scaled to "
        f"the time budget); steady-state rate, {WORKERS} worker processes each"
    )
    rows = [
        ratio_row(
            "S4.settled",
            f"{TITLE}, relays that have run ÷ fresh ones",
            "django-events, the tables emptied before each burst",
            "throughput",
            "events/s",
            got["settled"],
            got["django-events"],
            Goal(">=", 0.9),
            higher_is_better=True,
            notes=f"{n:,} events published on top of the last burst drained, the tables "
            "kept (the frontiers known), against the same burst after emptying them",
        )
    ]
    for name, goal, extra in (
        (
            "procrastinate",
            Goal(">=", 5.0),
            f"{n_slow:,} jobs per repetition (it runs a few "
            "hundred jobs/s here), async no-op task, concurrency 1, otherwise defaults",
        ),
        ("PgQueuer", Goal(">=", 1.0), f"{n:,} jobs, psycopg driver, batch_size 100, drain mode"),
    ):
        rid = f"S4.{name.lower()}"
        if name in reasons:
            rows.append(na_row(rid, f"end to end vs {name}", name, goal, reasons[name]))
            continue
        rows.append(
            ratio_row(
                rid,
                f"{TITLE}, vs {name}",
                name,
                "throughput",
                "events/s",
                got["django-events"],
                got[name],
                goal,
                higher_is_better=True,
                notes=f"{note}; {name}: {extra}",
            )
        )
    return rows
