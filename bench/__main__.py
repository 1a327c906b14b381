"""``python -m bench [--quick] [--only S1,S4] [--json PATH]``: run the benchmark scenarios."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench import runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes, under a minute")
    parser.add_argument("--only", help="comma-separated scenario ids, e.g. S1,S4")
    parser.add_argument("--json", type=Path, help=f"results file (default {runner.RESULTS})")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the docs page")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every repetition")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    sys.path.insert(0, str(runner.ROOT))
    from bench import scenarios

    modules = scenarios.load()
    if args.only:
        wanted = {s.strip().upper() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {m.ID for m in modules}
        if unknown:
            parser.error(
                f"unknown scenario(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(m.ID for m in modules)}"
            )
        modules = [m for m in modules if m.ID in wanted]

    def log(line: str) -> None:
        if args.verbose or not line.startswith("    "):
            print(line, file=sys.stderr, flush=True)

    ctx = runner.Context(quick=args.quick, log=log)
    lock = _one_run_at_a_time()
    started = time.perf_counter()
    setup_error = _setup()
    if setup_error:
        print(f"PostgreSQL set-up failed: {setup_error}", file=sys.stderr)
    rows, durations = runner.run_all(modules, ctx)
    elapsed = time.perf_counter() - started
    print()
    print("\n".join(runner.table_lines(rows, markdown=False)))
    print(f"\n{len(rows)} rows in {elapsed:.0f}s ({'quick' if args.quick else 'full'} run)")

    mode = "quick" if args.quick else "full"
    out = args.json or (
        runner.RESULTS.with_name("latest-quick.json") if args.quick else runner.RESULTS
    )
    runner.write_json(out, rows, mode + (f" --only {args.only}" if args.only else ""), durations)
    print(f"results: {out}")
    if not args.quick and not args.only and not args.no_docs and args.json is None:
        runner.write_docs(out, runner.DOCS)
        print(f"docs: {runner.DOCS}")
    if lock is not None:
        lock.close()
    return 0


def _one_run_at_a_time():  # type: ignore[no-untyped-def]
    """Two runs on one server would drain each other's queues: wait for the other one."""
    from bench import pg

    try:
        conn = pg.connect("postgres")
    except Exception:
        return None
    key = 0x62656E6368  # "bench"
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
    if not (row and row[0]):
        print("another benchmark run holds the server; waiting for it...", file=sys.stderr)
        conn.execute("SELECT pg_advisory_lock(%s)", [key])
    return conn


def _setup() -> str | None:
    """A fresh, migrated benchmark database (the run owns it)."""
    import django

    from bench import pg

    try:
        pg.recreate_database(pg.BENCH_DB)
    except Exception as exc:
        return str(exc)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return None


if __name__ == "__main__":
    sys.exit(main())
