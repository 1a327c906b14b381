"""Quick Level 0 measurements on PostgreSQL (the benchmark issue makes these rigorous).

    python -m bench.level0   # from the repo root, after `make test` set up .venv

Prints (1) publish overhead: ``atomic(): create(); publish()`` against the same without
publish, alternated A/B in one run, median of 5 rounds; (2) end to end: N pre-published
events relayed and handled by two ``consume_events`` processes (no-op handler, inbox on).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django  # noqa: E402
import psycopg  # noqa: E402


def ensure_database() -> None:
    from django.conf import settings

    name = settings.DATABASES["default"]["NAME"]
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')


def publish_overhead(rounds: int = 5, per_round: int = 1000) -> dict[str, float]:
    from django.db import transaction

    from django_events import publish
    from tests.testapp.models import Order

    payload = {"order_id": 0, "email": "someone@example.com", "total": Decimal("19.90"),
               "lines": [{"sku": "SKU-123", "qty": 2}, {"sku": "SKU-456", "qty": 1}],
               "currency": "EUR", "channel": "web"}

    def plain() -> None:
        with transaction.atomic():
            Order.objects.create(total=Decimal("19.90"))

    def with_publish() -> None:
        with transaction.atomic():
            order = Order.objects.create(total=Decimal("19.90"))
            publish("bench.noop", {**payload, "order_id": order.pk}, key=f"order-{order.pk}")

    def timed(fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    timed(plain, 200), timed(with_publish, 200)  # warm up
    ratios50, ratios99 = [], []
    for _ in range(rounds):
        a = timed(plain, per_round)
        b = timed(with_publish, per_round)
        a2 = timed(plain, per_round)
        b2 = timed(with_publish, per_round)
        base, cand = sorted(a + a2), sorted(b + b2)
        p = lambda xs, q: xs[int(q * (len(xs) - 1))]  # noqa: E731
        ratios50.append(p(cand, 0.5) / p(base, 0.5))
        ratios99.append(p(cand, 0.99) / p(base, 0.99))
    return {"p50_ratio": statistics.median(ratios50), "p99_ratio": statistics.median(ratios99),
            "p50_min": min(ratios50), "p50_max": max(ratios50)}


def end_to_end(total: int = 20000) -> float:
    from django.db import connection, transaction

    from django_events import publish

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE django_events_outbox, django_events_event, django_events_delivery, django_events_inbox")
    for start in range(0, total, 500):
        with transaction.atomic():
            for n in range(start, start + 500):
                publish("bench.noop", {"n": n, "pad": "x" * 150})
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "django", "consume_events", "--group", "bench", "--verbosity", "0"], env=env)
             for _ in range(2)]
    try:
        while True:
            with connection.cursor() as cursor:
                cursor.execute("SELECT (SELECT count(*) FROM django_events_inbox)")
                (done,) = cursor.fetchone()
            if done >= total:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    return total / elapsed


def main() -> None:
    ensure_database()
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    overhead = publish_overhead()
    print(f"publish overhead vs plain save: p50 {overhead['p50_ratio']:.2f}x "
          f"(min {overhead['p50_min']:.2f}, max {overhead['p50_max']:.2f}), p99 {overhead['p99_ratio']:.2f}x")
    rates = [end_to_end() for _ in range(3)]
    print(f"end to end, 2 consume_events processes, 20k events: median {statistics.median(rates):,.0f} events/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f})")


if __name__ == "__main__":
    main()
