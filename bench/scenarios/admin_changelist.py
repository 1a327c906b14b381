"""A1: the triage admin with 100k dead letters and 1M events against a small database.

Each page is fetched with Django's test client, in this process, as a superuser: the
dead-letter list (plain, filtered, one failure group, searched by event id and by
message), the failure groups, the event log (plain, by type, by key, by event id), and
the console's pages (a dead letter with its attempt history, pauses, workers, edit and
retry, redirect, an export, the charts over 24 hours). The databases are built from
the migrated bench schema with ``INSERT … SELECT generate_series``, so they hold the same
shape of data in different amounts. A second pair puts a million *open* dead letters
against a thousand: the pages that count open dead letters read the trigger-kept
failure counters (django_events/failure_counts.py), so they must not grow with them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench import pg
from bench.runner import Context, Goal, Row, alternate, ratio_row

ID = "A1"
TITLE = "admin pages with 100k dead letters and 1M events"
BASELINE = "5k dead letters and 10k events"
GOAL = Goal("<=", 3.0)
SMALL_DB = pg.BENCH_DB + "_admin_small"
BIG_DB = pg.BENCH_DB + "_admin_big"
FEW_OPEN_DB = pg.BENCH_DB + "_admin_few_open"
MANY_OPEN_DB = pg.BENCH_DB + "_admin_many_open"
REQUESTS = 5  # per measurement; the median is kept
WORKERS = 20  # registered workers in every database

EVENT_ID = "00000000-0000-4000-8000-000000000007"  # event number 7, a dead letter's

PAGES: dict[str, str] = {
    "dead letters": "/admin/django_events/deadletter/",
    "dead letters, open in group g1": "/admin/django_events/deadletter/?state__exact=open&group=g1",
    "one failure group": "/admin/django_events/deadletter/?fingerprint=fp03&state__exact=open",
    "dead letter by event id": f"/admin/django_events/deadletter/?q={EVENT_ID}",
    "dead letters by message": "/admin/django_events/deadletter/?q=timeout",
    "failure groups": "/admin/django_events/failuregroup/",
    "event log": "/admin/django_events/eventrecord/",
    "event log by type": "/admin/django_events/eventrecord/?type=bench.noop",
    "event log by key": "/admin/django_events/eventrecord/?key=order-4242",
    "event by id": f"/admin/django_events/eventrecord/?q={EVENT_ID}",
    "a dead letter": "/admin/django_events/deadletter/7/change/",
    "pauses": "/admin/django_events/pause/",
    "workers": "/admin/django_events/workerrecord/",
    "edit and retry form": "/admin/django_events/deadletter/7/edit/",
    "redirect form": "/admin/django_events/deadletter/7/redirect/",
    "export of a dead letter by event id": (
        f"/admin/django_events/deadletter/export/csv/?q={EVENT_ID}"
    ),
    "charts, last 24 hours": "/admin/django_events/minutestat/?window=24h",
}
OPEN_PAGES: dict[str, str] = {  # against FEW_OPEN_DB and MANY_OPEN_DB
    "failure groups": "/admin/django_events/failuregroup/",
    "dead letters": "/admin/django_events/deadletter/",
    "dead letters, one failure group": (
        "/admin/django_events/deadletter/?fingerprint=fp03&state__exact=open"
    ),
    "queue status": "/admin/django_events/queuestatus/",
}


def build(
    dbname: str, events: int, dead: int, *, all_open: bool = False, fingerprints: int = 40
) -> float:
    """A copy of the bench schema with ``events`` logged events and ``dead`` dead letters
    (80% open, or all of them) in ``fingerprints`` failure groups."""
    from django.db import connections

    connections.close_all()  # CREATE DATABASE … TEMPLATE needs the template unused
    started = time.perf_counter()
    pg.recreate_database(dbname, template=pg.BENCH_DB)
    with pg.connect(dbname) as conn:
        # History nobody owes: txid NULL puts the rows outside every log-transport cursor
        # (as a relay logs them), as no delivery row does on the database transport. With
        # the column's default the copies' cursors would owe all of them, and the queue
        # status page would count that backlog.
        conn.execute(
            "INSERT INTO django_events_event (id, position, type, key, version, data, metadata, "
            "occurred_at, source, correlation_id, causation_id, recorded_at, txid) "
            "SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, g, "
            "(ARRAY['bench.noop', 'order.placed', 'order.paid', 'user.signed_up'])[1 + g %% 4], "
            "'order-' || (g %% 50000), 1, %s::jsonb, '{}'::jsonb, "
            "now() - (g || ' seconds')::interval, 'bench', gen_random_uuid(), NULL, now(), "
            "NULL FROM generate_series(1, %s) g",
            [pg.PAYLOAD_TEXT, events],
        )
        conn.execute(
            'INSERT INTO django_events_deadletter (event_id, "group", service, handler, attempts, '
            "error_class, error_message, traceback, first_failed_at, last_failed_at, state, "
            "resolved_at, resolved_by, reason, fingerprint) "
            "SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, "
            "'g' || (g %% 4), 'shop', 'shop.events.handler_' || (g %% 4), 5, "
            "'shop.errors.E' || (g %% 10), "
            "(ARRAY['timeout talking to the CRM', 'card declined', 'no such order'])[1 + g %% 3] "
            "|| ' for order ' || g, 'Traceback (most recent call last): …', "
            "now() - (g || ' minutes')::interval, now() - (g || ' seconds')::interval, "
            "CASE WHEN %s THEN 'open' ELSE (ARRAY['open', 'open', 'open', 'open', 'open', "
            "'open', 'open', 'open', 'retried', 'discarded'])[1 + g %% 10] END, "
            "NULL, '', '', 'fp' || lpad((g %% %s)::text, 2, '0') "
            "FROM generate_series(1, %s) g",
            [all_open, fingerprints, dead],
        )
        # Five attempts behind every dead letter: the dead-letter page's timeline.
        conn.execute(
            'INSERT INTO django_events_attempt (event_id, "group", number, at, worker, '
            "duration, outcome, error_class, error_message) "
            "SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, "
            "'g' || (g %% 4), n, now() - ((g * 5 - n) || ' seconds')::interval, "
            "'bench-host:' || (1000 + g %% 7) || ':abc123', 0.012, "
            "CASE WHEN n = 5 THEN 'dead-lettered' ELSE 'failed' END, "
            "'shop.errors.E' || (g %% 10), 'timeout talking to the CRM for order ' || g "
            "FROM generate_series(1, %s) g CROSS JOIN generate_series(1, 5) n",
            [dead],
        )
        # A fleet of workers, the same in every database: the page reads only this table.
        conn.execute(
            "INSERT INTO django_events_worker (name, host, pid, service, version, groups, "
            "transport, started_at, last_seen_at, stopped_at, event_id, event_type, "
            "event_group, event_since) "
            "SELECT 'bench-host-' || w || ':' || (1000 + w) || ':abc', 'bench-host-' || w, "
            "1000 + w, 'shop', '0.1', '[\"g1\", \"g2\"]'::jsonb, 'default', "
            "now() - interval '1 hour', now(), NULL, NULL, '', '', NULL "
            "FROM generate_series(1, %s) w",
            [WORKERS],
        )
        # The charts' table full for the four groups: 48 hours (CHART_RETENTION's default)
        # of minutes, the same in every database; the page must not read the log.
        conn.execute(
            'INSERT INTO django_events_minute_stat (minute, "group", handled, failed, dead, '
            "pending, oldest_pending_age_s) "
            "SELECT floor(extract(epoch from now()) / 60)::bigint - m, 'g' || g, 100 + m %% 7, "
            "m %% 3, m %% 2, m %% 11, (m %% 13) * 1.5 "
            "FROM generate_series(0, 2879) m, generate_series(0, 3) g",
            [],
        )
        for table in ("event", "deadletter", "attempt", "worker", "minute_stat"):
            conn.execute(f"VACUUM ANALYZE django_events_{table}")
    return time.perf_counter() - started


class Admin:
    """A logged-in test client whose requests go to one database or the other."""

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client()
        self.current: str | None = None

    def use(self, dbname: str) -> None:
        from django.contrib.auth.models import User
        from django.db import connections

        if self.current == dbname:
            return
        connections["default"].close()
        connections["default"].settings_dict["NAME"] = dbname
        user, _ = User.objects.get_or_create(
            username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
        )
        self.client.force_login(user)
        self.current = dbname

    def timer(self, dbname: str, url: str) -> Callable[[], float]:
        def measure() -> float:
            self.use(dbname)
            times = []
            for _ in range(REQUESTS):
                started = time.perf_counter()
                response = self.client.get(url)
                if response.streaming:  # an export: the time includes writing it out
                    b"".join(response.streaming_content)  # type: ignore[attr-defined]
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status_code}")
            return statistics.median(times)

        return measure


def run(ctx: Context) -> list[Row]:
    from django.conf import settings
    from django.db import connections
    from django.test import override_settings

    events, dead = ctx.size(1_000_000, 100_000), ctx.size(100_000, 10_000)
    small_events, small_dead = 10_000, 5_000
    many_open, few_open = ctx.size(1_000_000, 100_000), 1_000
    ctx.log(f"    built the small database in {build(SMALL_DB, small_events, small_dead):.1f}s")
    ctx.log(f"    built the large database in {build(BIG_DB, events, dead):.1f}s")
    # Four failure groups, so that one group's page is full (100 rows) in both databases.
    took = build(FEW_OPEN_DB, few_open, few_open, all_open=True, fingerprints=4)
    ctx.log(f"    built the {few_open:,}-open database in {took:.1f}s")
    took = build(MANY_OPEN_DB, many_open, many_open, all_open=True, fingerprints=4)
    ctx.log(f"    built the {many_open:,}-open database in {took:.1f}s")
    original = settings.DATABASES["default"]["NAME"]
    hosts = override_settings(
        ALLOWED_HOSTS=["testserver"],
        DJANGO_EVENTS={**settings.DJANGO_EVENTS, "ADMIN_EDIT_RETRY": True},
    )
    hosts.enable()
    admin = Admin()
    rows = []
    pairs = [
        (
            PAGES,
            SMALL_DB,
            BIG_DB,
            TITLE,
            BASELINE,
            f"{events:,} events and {dead:,} dead letters (80% open) against "
            f"{small_events:,} and {small_dead:,}",
        ),
        (
            OPEN_PAGES,
            FEW_OPEN_DB,
            MANY_OPEN_DB,
            f"admin pages with {many_open:,} open dead letters",
            f"{few_open:,} open dead letters",
            f"{many_open:,} events and as many open dead letters against {few_open:,}, "
            "in 4 failure groups",
        ),
    ]
    try:
        number = 0
        for pages, small, large, title, baseline, sizes in pairs:
            for name, url in pages.items():
                number += 1
                got = alternate(
                    ctx, {"small": admin.timer(small, url), "large": admin.timer(large, url)}
                )
                rows.append(
                    ratio_row(
                        f"A1.{number}",
                        f"{title}: {name}",
                        baseline,
                        "response time",
                        "ms",
                        got["large"],
                        got["small"],
                        GOAL,
                        higher_is_better=False,
                        notes=f"GET {url}; median of {REQUESTS} requests per repetition; {sizes}",
                    )
                )
    finally:
        hosts.disable()
        connections["default"].close()
        connections["default"].settings_dict["NAME"] = original
        connections.close_all()
        for dbname in (SMALL_DB, BIG_DB, FEW_OPEN_DB, MANY_OPEN_DB):
            pg.drop_database(dbname)
    return rows
