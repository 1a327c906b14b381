"""S10: SQLite, the embedded default: publish and consume, against raw sqlite3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from bench import pg
from bench.runner import Context, Goal, Row, alternate, ratio_row

ID = "S10"
TITLE = "SQLite end to end (publish 100 per transaction, then consume)"
BASELINE = "raw sqlite3, the same inserts and deletes"
GOAL = Goal(">=", 0.5)


def run(ctx: Context) -> list[Row]:
    n = ctx.size(10_000, 1_000)
    tmp = tempfile.mkdtemp(prefix="bench-sqlite-")
    template = os.path.join(tmp, "template.sqlite3")
    try:
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--verbosity", "0"],
            env=pg.env(DJANGO_SETTINGS_MODULE="bench.settings_sqlite", BENCH_SQLITE_PATH=template),
            cwd=pg.ROOT,
            check=True,
        )

        def fresh(name: str, copy: bool) -> str:
            path = os.path.join(tmp, name)
            for suffix in ("", "-journal", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            if copy:
                shutil.copy(template, path)
            return path

        def raw() -> float:
            got = pg.run_child(
                "sqlite_e2e", {"path": fresh("raw.sqlite3", False), "n": n, "mode": "raw"}
            )
            return n / got["seconds"]

        publishing: list[float] = []

        def events() -> float:
            got = pg.run_child(
                "sqlite_e2e", {"path": fresh("events.sqlite3", True), "n": n, "mode": "events"}
            )
            publishing.append(n / got["publish_seconds"])
            return n / got["seconds"]

        def floor() -> float:
            got = pg.run_child(
                "sqlite_e2e", {"path": fresh("floor.sqlite3", True), "n": n, "mode": "floor"}
            )
            return n / got["seconds"]

        got = alternate(ctx, {"raw": raw, "events": events, "floor": floor})
        del publishing[0]  # the warm-up's
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        ratio_row(
            ID,
            TITLE,
            BASELINE,
            "throughput",
            "events/s",
            got["events"],
            got["raw"],
            GOAL,
            higher_is_better=True,
            notes=f"{n:,} events per repetition on a temporary file (rollback journal, "
            "Django's defaults; transaction_mode IMMEDIATE); the worker runs in-process "
            "(Worker.run(once=True)); the raw baseline claims and handles 100 events per "
            "transaction, the least work the same rows allow",
        ),
        ratio_row(
            "S10.floor",
            "the floor: publishing alone, the rows publish() writes (the outbox's, or the "
            "log's on the log transport) by raw INSERTs through Django's cursor",
            BASELINE + ", end to end",
            "throughput",
            "events/s",
            got["floor"],
            got["raw"],
            None,
            higher_is_better=True,
            notes="reference: the most S10 could reach if publish() added nothing to its "
            "INSERT and relaying and consuming cost nothing (docs/performance.md, S10)",
        ),
        ratio_row(
            "S10.publish",
            "publish() alone (S10's first phase) against the floor",
            "the floor",
            "throughput",
            "events/s",
            publishing,
            got["floor"],
            None,
            higher_is_better=True,
            notes="reference: what publish() costs above its INSERT through Django's cursor",
        ),
    ]
