"""Run the prototype: ``python -m bench.lean [--quick] [--rounds R] [--only A,B]``.

Per variant, in a fresh database of one private cluster (autovacuum on, the defaults):

1. ``publish``: N events, one transaction each (one publisher, ``synchronous_commit``
   off: WAL is counted in bytes, not waited for), then 2 consumers drain them (A: and its
   relay). WAL bytes per event for each step; sizes and dead tuples after the drain.
2. ``4 consumers``: N more, drained by 4 consumers.
3. ``held``: an idle REPEATABLE READ transaction holds a snapshot while one publisher
   offers ``rate`` events/s for ``held`` seconds and 2 consumers keep up; claim time
   (p50, p99) per 10 s of the snapshot's age, then sizes and dead tuples with it still
   held, then the time to drain once it ends.

Throughput counts deliveries (events times groups) acknowledged per second, from the first
claim to the last acknowledgement. Results go to bench/results/lean-<time>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import pg, private
from bench.lean.variants import VARIANTS, ConsumerState, Variant
from bench.runner import ROOT

TEMPLATE = "lean_template"
BUCKET = 10.0  # seconds of the snapshot's age per claim-time bucket


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.value += n


class Workers:
    """Consumer threads (and the variant's background task) on one database."""

    def __init__(self, variant: Variant, db: str, groups: list[str], consumers: int) -> None:
        self.variant, self.db, self.groups = variant, db, groups
        self.stop = threading.Event()
        self.acked = Counter()
        self.claims: list[tuple[float, float]] = []  # (start, seconds) of every claim
        self.first: float | None = None
        self.threads = [
            threading.Thread(target=self.consume, args=(n,), daemon=True) for n in range(consumers)
        ]
        self.threads.append(threading.Thread(target=self.backgrounds, daemon=True))

    def __enter__(self) -> Workers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def consume(self, n: int) -> None:
        state = ConsumerState()
        turn = n
        with pg.connect(self.db) as conn:
            while not self.stop.is_set():
                if time.monotonic() - state.probed_at >= 0.5:
                    for group in self.groups:
                        self.variant.probe(conn, group)
                    state.probed_at = time.monotonic()
                got = 0
                turn += 1
                for i in range(len(self.groups)):
                    group = self.groups[(turn + i) % len(self.groups)]
                    start = time.perf_counter()
                    batch = self.variant.claim(conn, group, state)
                    self.claims.append((start, time.perf_counter() - start))
                    if batch is None:
                        continue
                    if self.first is None:
                        self.first = start
                    acked = self.variant.ack(conn, batch)
                    got += acked
                    self.acked.add(acked)
                if not got:
                    time.sleep(0.005)

    def backgrounds(self) -> None:
        with pg.connect(self.db) as conn:
            while not self.stop.is_set():
                if not self.variant.background(conn, self.groups):
                    time.sleep(0.01)

    def wait(self, total: int, timeout: float = 900) -> float:
        """Until ``total`` deliveries were acknowledged; the perf_counter time then."""
        deadline = time.perf_counter() + timeout
        while self.acked.value < total:
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"{self.variant.name}: {self.acked.value}/{total} after {timeout}s"
                )
            time.sleep(0.01)
        return time.perf_counter()


def publish(variant: Variant, db: str, n: int, rate: float | None = None, until: Any = None) -> int:
    """``n`` events one per transaction, or ``rate`` a second until ``until`` is set."""
    done = 0
    with pg.connect(db) as conn:
        conn.execute("SET synchronous_commit = off")
        start = time.perf_counter()
        while (until is None and done < n) or (until is not None and not until.is_set()):
            if rate is not None:
                ahead = start + done / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            variant.publish(conn)
            done += 1
    return done


def table_stats(db: str) -> dict[str, dict[str, int]]:
    """Size (heap, indexes, toast), live and dead tuples of every table written."""
    out: dict[str, dict[str, int]] = {}
    with pg.connect(db) as conn:
        rows = conn.execute(
            "SELECT relid, relname, n_dead_tup, pg_total_relation_size(relid) "
            "FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 "
            "ORDER BY relname"
        ).fetchall()
        for relid, name, dead, size in rows:
            exact = conn.execute(
                "SELECT tuple_count, dead_tuple_count FROM pgstattuple(%s::regclass)", [relid]
            ).fetchone()
            assert exact is not None
            out[name] = {"bytes": int(size), "live": int(exact[0]), "dead": int(exact[1])}
            out[name]["stat_dead"] = int(dead)
    return out


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_variant(server: Any, variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    db = f"lean_{variant.name.lower()}"
    groups = [f"g{n}" for n in range(args.groups)]
    n, total = args.events, args.events * args.groups
    with server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{TEMPLATE}"')
    with pg.connect(db) as conn:
        variant.setup(conn, groups)
    out: dict[str, Any] = {"variant": variant.name, "load": os.getloadavg()[0]}

    # 1. publish, then 2 consumers drain
    with pg.connect(db) as conn:
        conn.execute("CHECKPOINT")
        marks = [private.wal_lsn(conn)]
        publish(variant, db, n)
        marks.append(private.wal_lsn(conn))
        with Workers(variant, db, groups, 2) as workers:
            end = workers.wait(total)
        assert workers.first is not None
        marks.append(private.wal_lsn(conn))
        out["wal_publish"] = private.wal_bytes(conn, marks[0], marks[1]) / n
        out["wal_consume"] = private.wal_bytes(conn, marks[1], marks[2]) / n
    out["rate_2"] = total / (end - workers.first)
    time.sleep(2)
    out["after_drain"] = table_stats(db)

    # 2. 4 consumers
    publish(variant, db, n)
    with Workers(variant, db, groups, 4) as workers:
        end = workers.wait(total)
    assert workers.first is not None
    out["rate_4"] = total / (end - workers.first)

    # 3. a held snapshot under a steady rate
    holder = psycopg.connect(pg.dsn(db), autocommit=False)
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT count(*) FROM django_events_inbox").fetchone()
    stop = threading.Event()
    offered: list[int] = []
    publisher = threading.Thread(
        target=lambda: offered.append(publish(variant, db, 0, args.rate, stop)), daemon=True
    )
    with Workers(variant, db, groups, 2) as workers:
        began = time.perf_counter()
        publisher.start()
        samples: list[tuple[float, int]] = []
        while time.perf_counter() - began < args.held:
            time.sleep(1.0)
            samples.append((time.perf_counter() - began, workers.acked.value))
        stop.set()
        publisher.join()
        ended = time.perf_counter()
        out["held_stats"] = table_stats(db)
        holder.rollback()
        holder.close()
        released = time.perf_counter()
        workers.wait(offered[0] * args.groups)
        out["drain_after_release"] = time.perf_counter() - released
        claims = [(s - began, d) for s, d in workers.claims if began <= s <= ended]
    out["offered_rate"] = offered[0] / (ended - began)
    out["held_rate"] = [
        (b[1] - a[1]) / (b[0] - a[0]) / args.groups for a, b in itertools.pairwise(samples)
    ]
    buckets = []
    for k in range(int(args.held // BUCKET)):
        times = [d * 1000 for s, d in claims if k * BUCKET <= s < (k + 1) * BUCKET]
        buckets.append({"p50": quantile(times, 0.5), "p99": quantile(times, 0.99), "n": len(times)})
    out["claim_ms"] = buckets
    if hasattr(variant, "truncations"):
        out["truncations"] = variant.truncations
    return out


def written(stats: dict[str, dict[str, int]], tables: tuple[str, ...]) -> tuple[float, int]:
    """MB and dead tuples of the variant's own work tables (the inbox is everyone's)."""
    mine = [s for name, s in stats.items() if name in tables]
    return sum(s["bytes"] for s in mine) / 1e6, sum(s["dead"] for s in mine)


HEADER = (
    "variant | WAL B/event publish, consume, total | deliveries/s 2c, 4c | "
    "work MB/dead after drain | after held | claim ms p50/p99 first->last 10s | "
    "min held rate/offered | drain s | load"
)


def summary(results: list[dict[str, Any]], variants: dict[str, Variant]) -> str:
    """One line per variant: medians over the rounds."""
    lines = [HEADER]
    for name, variant in variants.items():
        mine = [r for r in results if r["variant"] == name]
        if mine:
            lines.append(f"{name} | {line(mine, variant.tables)}")
    return "\n".join(lines)


def line(results: list[dict[str, Any]], tables: tuple[str, ...]) -> str:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r) for r in results)

    return (
        f"{med(lambda r: r['wal_publish']):,.0f}, {med(lambda r: r['wal_consume']):,.0f}, "
        f"{med(lambda r: r['wal_publish'] + r['wal_consume']):,.0f} | "
        f"{med(lambda r: r['rate_2']):,.0f}, {med(lambda r: r['rate_4']):,.0f} | "
        f"{med(lambda r: written(r['after_drain'], tables)[0]):.2f}/"
        f"{med(lambda r: written(r['after_drain'], tables)[1]):,.0f} | "
        f"{med(lambda r: written(r['held_stats'], tables)[0]):.2f}/"
        f"{med(lambda r: written(r['held_stats'], tables)[1]):,.0f} | "
        f"{med(lambda r: r['claim_ms'][0]['p50']):.2f}/{med(lambda r: r['claim_ms'][0]['p99']):.2f}"
        f" -> {med(lambda r: r['claim_ms'][-1]['p50']):.2f}/"
        f"{med(lambda r: r['claim_ms'][-1]['p99']):.2f} | "
        f"{med(lambda r: min(r['held_rate']) / r['offered_rate']):.2f} | "
        f"{med(lambda r: r['drain_after_release']):.1f} | {med(lambda r: r['load']):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lean")
    parser.add_argument("--quick", action="store_true", help="5,000 events, 20 s held")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds")
    parser.add_argument("--only", default=",".join(VARIANTS), help="e.g. A,B")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--rate", type=float, default=None, help="events/s while held")
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="medians of past runs")
    args = parser.parse_args()
    if args.summarize:
        past = [r for path in args.summarize for r in json.loads(Path(path).read_text())["results"]]
        print(summary(past, {name: VARIANTS[name]() for name in VARIANTS}))
        return
    args.events = 5_000 if args.quick else 20_000
    args.held = 20.0 if args.quick else 60.0
    args.rate = args.rate or (300.0 if args.quick else 500.0)
    names = args.only.split(",")
    results: list[dict[str, Any]] = []
    variants: dict[str, Variant] = {}
    with private.cluster(autovacuum=True) as server:
        private.migrated_database(server, TEMPLATE)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                variant = VARIANTS[name]()
                variants.setdefault(name, variant)
                result = run_variant(server, variant, args)
                result["round"] = round_
                results.append(result)
                print(json.dumps(result, default=str)[:600], flush=True)
    folder = ROOT / "bench" / "results"
    path = folder / f"lean-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(summary(results, variants))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
