"""Roles run in their own OS process: ``python -m bench.child ROLE JSON_ARGS``.

A role that must start together with others prints ``ready`` and waits for a line on
stdin. Every role ends by printing one JSON line ``{"result": ...}``. Times are
``time.perf_counter()`` values (CLOCK_MONOTONIC on Linux, comparable across processes).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

ROLES: dict[str, Callable[[dict[str, Any]], Any]] = {}


def role(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    ROLES[fn.__name__] = fn
    return fn


def barrier() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def django_setup(settings: str = "bench.settings") -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    import django

    django.setup()


# --------------------------------------------------------------------------- raw driver


@role
def raw_drain(args: dict[str, Any]) -> Any:
    """L_q: DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING."""
    from bench import pg

    with pg.connect(args["db"]) as conn:
        conn.execute("SELECT 1")
        barrier()
        t0 = time.perf_counter()
        moved = 0
        while True:
            rows = conn.execute(
                "DELETE FROM bench_q WHERE id IN (SELECT id FROM bench_q ORDER BY id "
                "LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id, payload"
            ).fetchall()
            if not rows:
                break
            moved += len(rows)
        return {"t0": t0, "t1": time.perf_counter(), "moved": moved}


@role
def raw_listener(args: dict[str, Any]) -> Any:
    """S5 baseline: LISTEN, and on each notification fetch (delete) the new rows."""
    from bench import pg

    seen: list[tuple[int, float]] = []
    with pg.connect(args["db"]) as conn, pg.connect(args["db"]) as listener:
        listener.execute("LISTEN bench_raw")
        print("ready", flush=True)
        while len(seen) < args["count"]:
            for _ in listener.notifies(timeout=5, stop_after=1):
                pass
            rows = conn.execute("DELETE FROM bench_lat RETURNING n").fetchall()
            now = time.perf_counter()
            seen.extend((n, now) for (n,) in rows)
    return seen


@role
def snapshot_holder(args: dict[str, Any]) -> Any:
    """S8: hold a REPEATABLE READ snapshot until told to stop (or ``seconds`` pass)."""
    from bench import pg

    with pg.connect(args["db"], autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT count(*) FROM django_events_event")
        print("ready", flush=True)
        import select

        select.select([sys.stdin], [], [], args["seconds"])
        conn.rollback()
    return None


# --------------------------------------------------------------------------- django-events


@role
def publisher(args: dict[str, Any]) -> Any:
    """S6: for each command line ``{"count": N, "wakeups": bool}`` on stdin, publish N
    events, one per transaction, and print ``{"t0", "t1", "count"}``; an empty line ends.
    """
    django_setup()
    from django.db import connection, transaction

    from bench import pg
    from django_events import outbox, publish

    notify_once = outbox._notified_in_this_transaction

    def suppressed(connection: Any) -> bool:
        return True  # the engine has no switch for the outbox NOTIFY: pretend it was sent

    connection.ensure_connection()
    payload = dict(pg.PAYLOAD)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        cmd = json.loads(line)
        outbox._notified_in_this_transaction = notify_once if cmd["wakeups"] else suppressed  # type: ignore[assignment]
        t0 = time.perf_counter()
        for i in range(cmd["count"]):
            payload["order_id"] = i
            with transaction.atomic():
                publish("bench.noop", payload)
        t1 = time.perf_counter()
        print(json.dumps({"t0": t0, "t1": t1, "count": cmd["count"]}), flush=True)
    return None


@role
def paced_publisher(args: dict[str, Any]) -> Any:
    """H1: offer ``rate`` events/s for ``seconds``: each tick, one transaction publishes
    (``publish_many()``) the events due by then, stamped with the wall clock in ``t``.
    A publisher slowed by the database falls behind and catches up in bigger batches.
    """
    django_setup()
    from django.db import connection, transaction

    from bench import pg
    from django_events import publish_many

    rate, seconds, tick = args["rate"], args["seconds"], args.get("tick", 0.02)
    total = round(rate * seconds)
    connection.ensure_connection()
    barrier()
    ticks: list[tuple[float, int]] = []
    start = time.time()
    sent = 0
    while sent < total:
        now = time.time()
        due = min(total, int((now - start) * rate) + 1)
        if due <= sent:
            time.sleep(min(tick, (sent + 1) / rate - (now - start)))
            continue
        with transaction.atomic():
            publish_many(
                [("bench.h1", {**pg.PAYLOAD, "order_id": i, "t": now}) for i in range(sent, due)]
            )
        ticks.append((now, due - sent))
        sent = due
    return {"start": start, "end": time.time(), "ticks": ticks}


@role
def relay_null(args: dict[str, Any]) -> Any:
    """S3: drain the outbox through the relay's leased path into a null transport."""
    django_setup()
    from django.test import override_settings

    null = {"TRANSPORTS": {"default": {"BACKEND": "bench.nulltransport.NullTransport"}}}
    with override_settings(DJANGO_EVENTS={**_bench_events_settings(), **null}):
        from django.db import connection

        from django_events.engine.relay import Relay

        connection.ensure_connection()
        relay = Relay()
        assert not relay.transport.joins_outbox_transaction("default")
        t0 = time.perf_counter()
        moved = relay.run_once()
        return {"seconds": time.perf_counter() - t0, "moved": moved}


def _bench_events_settings() -> dict[str, Any]:
    from django.conf import settings

    return dict(settings.DJANGO_EVENTS)


@role
def sqlite_e2e(args: dict[str, Any]) -> Any:
    """S10: publish ``n`` events (100 per transaction) then consume them, on SQLite."""
    path, n, mode = args["path"], args["n"], args["mode"]
    if mode == "raw":
        return {"seconds": _sqlite_raw(path, n)}
    os.environ["BENCH_SQLITE_PATH"] = path
    django_setup("bench.settings_sqlite")
    from django.db import connection, transaction

    from bench import pg
    from django_events import publish
    from django_events.engine.worker import Worker

    assert connection.vendor == "sqlite", connection.vendor
    payload = dict(pg.PAYLOAD)
    if mode == "floor":
        return {"seconds": _sqlite_floor(n, payload)}
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        with transaction.atomic():
            for i in range(start, min(n, start + 100)):
                payload["order_id"] = i
                publish("bench.noop", payload)
    published = time.perf_counter()
    handled = Worker(["bench"]).run(once=True)
    assert handled == n, (handled, n)
    return {"seconds": time.perf_counter() - t0, "publish_seconds": published - t0}


def _sqlite_floor(n: int, payload: dict[str, Any]) -> float:
    """S10's floor: the rows ``publish()`` writes (same columns and values: the outbox's,
    or the log's on the log transport, its position counted here), one raw INSERT each
    through Django's cursor, 100 per transaction; no validation, no position drawn,
    nothing relayed or consumed. Below this no publish through Django's cursor can go."""
    import datetime as dt
    import uuid

    from django.db import connection, transaction

    from bench import pg
    from django_events.conf import get_settings
    from django_events.engine import sql
    from django_events.outbox import _insert_sql, _one_writer_log_insert_sql

    dialect = sql.dialect("default")
    if pg.LOG_TRANSPORT:
        from django.db.models import Max

        from django_events.models import EventRecord

        insert = _one_writer_log_insert_sql(sql.table(connection, "EventRecord"), dialect, 1)
        position = EventRecord.objects.aggregate(top=Max("position"))["top"] or 0
    else:
        insert = _insert_sql(sql.table(connection, "OutboxMessage"), dialect, 1)
    source = get_settings().source or get_settings().service
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        with transaction.atomic():
            for i in range(start, min(n, start + 100)):
                payload["order_id"] = i
                event_id = uuid.uuid4().hex
                row = [
                    event_id,
                    "bench.noop",
                    1,
                    None,
                    json.dumps(payload),
                    "",
                    sql.datetime_value(connection, dt.datetime.now(dt.timezone.utc)),
                    source,
                    event_id,
                    None,
                ]
                if pg.LOG_TRANSPORT:
                    position += 1
                    row[1:1] = [position]
                    row[6] = "{}"  # metadata, as publish() writes it into the log
                with connection.cursor() as cursor:
                    cursor.execute(insert, row)
    return time.perf_counter() - t0


def _sqlite_raw(path: str, n: int) -> float:
    """The same inserts and deletes as django-events on SQLite, by the raw sqlite3 driver."""
    import datetime as dt
    import sqlite3
    import uuid

    from bench import pg

    db = sqlite3.connect(path, isolation_level=None, timeout=20)
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS outbox (position INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT, type TEXT, data TEXT, occurred_at TEXT, created_at TEXT);
        CREATE TABLE IF NOT EXISTS log (id TEXT PRIMARY KEY, position INTEGER UNIQUE,
            type TEXT, data TEXT, occurred_at TEXT, recorded_at TEXT);
        CREATE TABLE IF NOT EXISTS delivery (id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT, group_name TEXT, position INTEGER, attempts INTEGER,
            available_at TEXT, claimed_until TEXT);
        CREATE INDEX IF NOT EXISTS delivery_claim ON delivery (group_name, position);
        CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY AUTOINCREMENT,
            group_name TEXT, event_id TEXT, handled_at TEXT, UNIQUE (group_name, event_id));
        """
    )
    payload = dict(pg.PAYLOAD)
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        db.execute("BEGIN IMMEDIATE")
        for i in range(start, min(n, start + 100)):
            payload["order_id"] = i
            db.execute(
                "INSERT INTO outbox (event_id, type, data, occurred_at, created_at) "
                "VALUES (?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                [
                    uuid.uuid4().hex,
                    "bench.noop",
                    json.dumps(payload),
                    dt.datetime.now(dt.timezone.utc).isoformat(),
                ],
            )
        db.execute("COMMIT")
    while True:  # relay: move a batch from the outbox to the log and the deliveries
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(
            "DELETE FROM outbox WHERE position IN (SELECT position FROM outbox "
            "ORDER BY position LIMIT 1000) RETURNING position, event_id, type, data, occurred_at"
        ).fetchall()
        db.executemany(
            "INSERT INTO log VALUES (?, ?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
            [(r[1], r[0], r[2], r[3], r[4]) for r in rows],
        )
        db.executemany(
            "INSERT INTO delivery (event_id, group_name, position, attempts, available_at) "
            "VALUES (?, 'bench', ?, 0, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
            [(r[1], r[0]) for r in rows],
        )
        db.execute("COMMIT")
        if len(rows) < 1000:
            break
    while True:  # consume: claim a batch, then handle it in one transaction (inbox + ack)
        db.execute("BEGIN IMMEDIATE")
        claimed = db.execute(
            "UPDATE delivery SET attempts = attempts + 1, claimed_until = "
            "strftime('%Y-%m-%d %H:%M:%f', 'now', '+30 seconds') WHERE id IN (SELECT id FROM "
            "delivery WHERE group_name = 'bench' ORDER BY position LIMIT 100) "
            "RETURNING id, event_id"
        ).fetchall()
        for delivery_id, event_id in claimed:
            db.execute("SELECT data FROM log WHERE id = ?", [event_id]).fetchone()
            db.execute("DELETE FROM delivery WHERE id = ?", [delivery_id])
            db.execute(
                "INSERT INTO inbox (group_name, event_id, handled_at) "
                "VALUES ('bench', ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                [event_id],
            )
        db.execute("COMMIT")
        if not claimed:
            break
    elapsed = time.perf_counter() - t0
    db.close()
    return elapsed


# --------------------------------------------------------------------------- peers


@role
def procrastinate_worker(args: dict[str, Any]) -> Any:
    from bench.peers import procrastinate_app

    procrastinate_app.work(args["db"])
    return None


@role
def pgqueuer_worker(args: dict[str, Any]) -> Any:
    from bench.peers import pgqueuer_app

    pgqueuer_app.work(args["db"], args.get("batch_size", 10))
    return None


def main() -> None:
    name, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    result = ROLES[name](json.loads(raw))
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
