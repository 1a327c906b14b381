"""``python -m bench [--quick] [--only S1,S4] [--json PATH]``: run the benchmark scenarios."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from bench import lock, pg, runner


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
    # SIGTERM (a timeout, kill) ends the run through its finally blocks: children stopped,
    # queues and databases deleted, the lock released (docs/performance.md, "Reproduce").
    signal.signal(signal.SIGTERM, _exit)
    shared = not all(getattr(m, "PRIVATE_SERVER", False) for m in modules)
    held = lock.acquire(log) if shared else None  # W1, B1, H1 alone need neither
    try:
        started = time.perf_counter()
        if shared:
            pg.drop_databases(pg.DATABASES.orphans(), log)  # runs killed before finally
            setup_error = _setup()
            if setup_error:
                print(f"PostgreSQL set-up failed: {setup_error}", file=sys.stderr)
        rows, durations = runner.run_all(modules, ctx)
        elapsed = time.perf_counter() - started
    finally:
        pg.drop_databases(pg.DATABASES.mine(), log)
        if held is not None:
            held.close()
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
    return 0


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _setup() -> str | None:
    """A fresh, migrated benchmark database (the run owns it, and drops it at the end)."""
    import django

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
