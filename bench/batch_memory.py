"""Peak RSS of a worker handling expensive payloads, with and without ``BATCH_BYTES``.

``python -m bench.batch_memory [--events 100] [--runs 1]``: publishes ``--events`` events
whose data is about 1 MB of small JSON objects (the costliest legal shape to decode),
relays them, then runs ``consume_events --once --no-relay`` with ``BATCH_SIZE`` 100,
once with the budget off
(``BATCH_BYTES`` 1 TB) and once with the default, and prints each run's peak RSS (the
process's ``ru_maxrss``). Uses the benchmark database (``DJANGO_EVENTS_BENCH_DB``), which
it creates and migrates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEFAULT_BUDGET = 4 * 1024 * 1024
OFF = 10**12


def payload() -> str:
    """About 1 MB of JSON made of many small objects."""
    items = [{"i": i, "s": "ab", "t": [1, 2]} for i in range(27_000)]
    return json.dumps({"items": items})


def publish(n: int, data: str) -> None:
    from bench import pg

    pg.reset_events()
    with pg.connect() as conn:
        conn.execute(
            "INSERT INTO django_events_outbox (event_id, type, version, key, data, metadata, "
            "occurred_at, source, correlation_id, causation_id, created_at) "
            "SELECT u, 'bench.noop', 1, NULL, %s, '', now(), 'bench', u, NULL, now() "
            "FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, %s)) s",
            [data, n],
        )


def peak_rss_mib(batch_bytes: int) -> float:
    from bench import pg

    env = pg.env(
        DJANGO_SETTINGS_MODULE="bench.settings_batch_memory", BENCH_BATCH_BYTES=str(batch_bytes)
    )
    django = [sys.executable, "-m", "django"]
    subprocess.run([*django, "relay_events", "--once"], env=env, cwd=pg.ROOT, check=True)
    proc = subprocess.Popen(
        [*django, "consume_events", "--group", "bench", "--once", "--no-relay"],
        env=env,
        cwd=pg.ROOT,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"consume_events exited with status {status}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings_batch_memory")
    from bench.__main__ import _setup

    problem = _setup()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    data = payload()
    print(f"{args.events} events of {len(data) / 1e6:.2f} MB each, BATCH_SIZE 100")
    for run in range(args.runs):
        for label, budget in (("BATCH_BYTES off", OFF), ("BATCH_BYTES 4 MiB", DEFAULT_BUDGET)):
            publish(args.events, data)
            print(f"run {run + 1}: {label}: peak RSS {peak_rss_mib(budget):.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
