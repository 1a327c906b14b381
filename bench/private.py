"""A private PostgreSQL cluster for W1, B1 and H1, and what they read from it.

WAL is counted for the whole server and the vacuum horizon is the whole server's, so
these rows cannot share the machine's PostgreSQL with anyone (other runs, other tests):
each starts a cluster of its own (``tests/faults/pgserver.py``, the one the fault suite
uses) with the server's default settings, autovacuum on, unless a row says otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench import pg
from bench.runner import ROOT

# Production-like: PostgreSQL's own defaults (autovacuum on, naptime 1 min,
# max_wal_size 1 GB, checkpoint_timeout 5 min), shared_buffers back at its default.
DEFAULTS = "shared_buffers = 128MB\n"


@contextmanager
def cluster(*, autovacuum: bool = True, preload: str = "") -> Iterator[Any]:
    """Start a private server, point ``bench.pg`` (and the children) at it, remove it after.
    ``preload``: ``shared_preload_libraries`` (bench/held_profile.py loads pg_stat_statements)."""
    from tests.faults.pgserver import PrivatePostgres

    server = PrivatePostgres().init()
    with open(server.data / "postgresql.conf", "a") as conf:
        conf.write(DEFAULTS + f"autovacuum = {'on' if autovacuum else 'off'}\n")
        # Diagnostics, e.g. "log_min_duration_statement = 100; log_directory = '/tmp/x'"
        # (docs/performance.md, "Reproduce").
        for line in os.environ.get("DJANGO_EVENTS_BENCH_PG_CONF", "").split(";"):
            conf.write(line.strip() + "\n")
        if preload:
            conf.write(f"shared_preload_libraries = '{preload}'\n")
        if "pg_stat_statements" in preload:  # statements inside functions too (the claim's)
            conf.write("pg_stat_statements.track = all\n")
    try:
        server.start()
        server.wait_ready()
        with pg.on_port(server.port):
            yield server
    finally:
        server.destroy()


def migrated_database(server: Any, name: str) -> bool:
    """Create and migrate ``name``; True if pgstattuple could be installed there."""
    server.create_database(name)
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v0"],
        env=pg.env(DJANGO_EVENTS_BENCH_DB=name),
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    with server.connect(name) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        except Exception:
            return False
    return True


def wal_lsn(conn: Any) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(row[0])


def wal_bytes(conn: Any, start: str, end: str) -> int:
    row = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [end, start]).fetchone()
    return int(row[0])


# ----------------------------------------------------------------------------- tables


def table_stats(dbname: str, pgstattuple: bool) -> dict[str, dict[str, int]]:
    """Size, live and dead tuples of every django-events table that has been written.

    ``dead`` is pg_stat_user_tables.n_dead_tup (the statistics, up to a second late);
    ``dead_exact`` is pgstattuple's count from reading every page, when installed. A
    partitioned table's partitions are summed under its name (the log transport's
    rotated tables).
    """
    out: dict[str, dict[str, int]] = {}
    with pg.connect(dbname) as conn:
        rows = conn.execute(
            "SELECT relid, COALESCE((SELECT r.relname FROM pg_class r WHERE r.oid = "
            "pg_partition_root(relid)), relname), n_live_tup, n_dead_tup, "
            "pg_total_relation_size(relid), pg_relation_size(relid), autovacuum_count "
            "FROM pg_stat_user_tables WHERE relname LIKE 'django\\_events\\_%%' "
            "AND n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY relname"
        ).fetchall()
        for relid, name, live, dead, total, heap, autovacuums in rows:
            stats = {
                "live": int(live),
                "dead": int(dead),
                "bytes": int(total),
                "heap_bytes": int(heap),
                "autovacuums": int(autovacuums),
            }
            if pgstattuple:
                exact = conn.execute(
                    "SELECT tuple_count, dead_tuple_count FROM pgstattuple(%s::regclass)",
                    [relid],
                ).fetchone()
                assert exact is not None
                stats["live"], stats["dead_exact"] = int(exact[0]), int(exact[1])
            summed = out.setdefault(short(name), dict.fromkeys(stats, 0))
            for key, value in stats.items():
                summed[key] += value
    return out


def short(table: str) -> str:
    return table.removeprefix("django_events_")


# ----------------------------------------------------------------------------- WAL


_RECORD = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+).*?desc: (.*)$")
_BLOCK = re.compile(r"blkref #0: rel (\d+)/(\d+)/(\d+)")


def wal_by_relation(server: Any, dbname: str, start: str, end: str) -> dict[str, int]:
    """WAL bytes between two LSNs per table of ``dbname`` (its indexes counted apart).

    Read with ``pg_waldump`` from the private server's pg_wal: each record is charged to
    the relation of its first block; records without one (commits, running-xacts) go to
    "(commit and other)". Relations are matched by their current file node, so call it
    before anything rewrites them (TRUNCATE, VACUUM FULL).
    """
    with server.connect(dbname) as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        db_oid = int(row.fetchone()[0])
        names = {
            int(node): name
            for node, name in conn.execute(
                "SELECT pg_relation_filenode(c.oid), CASE WHEN c.relkind = 'i' "
                "THEN t.relname || ' (indexes)' WHEN c.relkind = 't' THEN 'toast' "
                "ELSE c.relname END FROM pg_class c "
                "LEFT JOIN pg_index i ON i.indexrelid = c.oid "
                "LEFT JOIN pg_class t ON t.oid = i.indrelid "
                "WHERE pg_relation_filenode(c.oid) IS NOT NULL"
            ).fetchall()
        }
    wal = str(server.data / "pg_wal")
    cmd = [str(server.bindir / "pg_waldump"), "-p", wal, "-s", start, "-e", end]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = charge_records(done.stdout.splitlines(), db_oid, names)
    if not out:
        raise RuntimeError(f"pg_waldump read nothing: {done.stderr.strip()[:300]}")
    return out


def charge_records(lines: list[str], db_oid: int, names: dict[int, str]) -> dict[str, int]:
    """Sum pg_waldump's record lengths (with their full-page images) per relation name."""
    out: dict[str, int] = {}
    for line in lines:
        record = _RECORD.search(line)
        if not record:
            continue
        size = int(record.group(1))
        block = _BLOCK.search(line)
        if block is None:
            name = "(commit and other)"
        elif int(block.group(2)) != db_oid:
            name = "(shared catalogs)" if int(block.group(2)) == 0 else "(other database)"
        else:
            name = names.get(int(block.group(3)), "(system catalogs and other)")
            if name.startswith("pg_"):
                name = "(system catalogs and other)"
        out[short(name)] = out.get(short(name), 0) + size
    return out


def breakdown(parts: dict[str, int], per: int, top: int = 8) -> str:
    """``outbox 480 B, event 1,010 B, ...`` per event, largest first."""
    ranked = sorted(parts.items(), key=lambda kv: -kv[1])
    text = [f"{name} {size / per:,.0f}" for name, size in ranked[:top]]
    rest = sum(size for _, size in ranked[top:])
    if rest:
        text.append(f"other {rest / per:,.0f}")
    return ", ".join(text)
