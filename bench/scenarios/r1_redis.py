"""R1: the Redis Streams transport against raw redis-py doing the same Redis work.

Publish: ``transport.publish`` (the relay's call) of N events to one group, against
pipelined ``XADD`` of the same fields, 1,000 per round trip. Consume: ``claim`` plus
``ack_many`` (what a worker asks of the transport, decoding included) against
``XREADGROUP COUNT 100`` plus ``XACK``. Latency: one ``consume_events`` on Redis (relay
thread woken by NOTIFY, worker blocked in XREADGROUP) at 100 events/s, from the
publisher's commit to the handler; the baseline is a raw ``XADD`` to a consumer blocked
in ``XREADGROUP``. Every run uses its own key prefix and deletes it afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from bench import pg
from bench.runner import Context, Goal, Row, alternate, na_row, percentile, ratio_row

ID = "R1"
TITLE = "Redis Streams transport"
BASELINE = "raw redis-py XADD / XREADGROUP / XACK"
GOAL: Goal | None = Goal(">=", 0.6)
URL = os.environ.get("DJANGO_EVENTS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
GROUP = "bench"
SUBSCRIPTIONS = [("bench.noop", GROUP, False)]
RATE = 100.0


def _client() -> Any:
    import redis

    return redis.Redis.from_url(URL)


def _delete(prefix: str) -> None:
    client = _client()
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def _events(n: int) -> list[Any]:
    from django_events.transports.base import Outgoing

    now = dt.datetime.now(dt.timezone.utc)
    return [
        Outgoing(
            position=i + 1,
            event_id=uuid.uuid4(),
            type="bench.noop",
            key=None,
            data=pg.PAYLOAD_TEXT,
            occurred_at=now,
            source="bench",
        )
        for i in range(n)
    ]


def _transport(prefix: str) -> Any:
    from django_events.transports.redis import RedisStreamsTransport

    return RedisStreamsTransport("bench", {"url": URL, "prefix": prefix})


def publish_events(events: list[Any], batch: int) -> tuple[float, str]:
    prefix = f"bench-r1:{uuid.uuid4().hex[:8]}"
    transport = _transport(prefix)
    transport.ensure_group(GROUP)
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        transport.publish(events[i : i + batch], SUBSCRIPTIONS)
    elapsed = time.perf_counter() - started
    transport.close()
    return len(events) / elapsed, prefix


def publish_raw(events: list[Any], batch: int) -> tuple[float, str]:
    from django_events.transports.redis.transport import CONSUMER_GROUP, _fields

    prefix = f"bench-r1:{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:stream:{GROUP}"
    client = _client()
    client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        pipe = client.pipeline(transaction=False)
        for event in events[i : i + batch]:
            flat = _fields(event)  # building the fields is part of the work
            pipe.xadd(stream, dict(zip(flat[::2], flat[1::2], strict=True)))
        pipe.execute()
    elapsed = time.perf_counter() - started
    return len(events) / elapsed, prefix


def consume_events(prefix: str, n: int) -> float:
    transport = _transport(prefix)
    done = 0
    started = time.perf_counter()
    while done < n:
        claimed = transport.claim([GROUP], 100, 30)
        if not claimed:
            raise RuntimeError(f"only {done} of {n} events claimed")
        transport.ack_many(claimed)
        done += len(claimed)
    elapsed = time.perf_counter() - started
    transport.close()
    return n / elapsed


def consume_raw(prefix: str, n: int) -> float:
    from django_events.transports.redis import CONSUMER_GROUP

    stream = f"{prefix}:stream:{GROUP}"
    client = _client()
    done = 0
    started = time.perf_counter()
    while done < n:
        response = client.xreadgroup(CONSUMER_GROUP, "raw", {stream: ">"}, count=100)
        if not response:
            raise RuntimeError(f"only {done} of {n} entries read")
        ids = [entry_id for entry_id, _ in response[0][1]]
        client.xack(stream, CONSUMER_GROUP, *ids)
        done += len(ids)
    return n / (time.perf_counter() - started)


def throughput_rows(ctx: Context) -> list[Row]:
    n = ctx.size(50_000, 10_000)
    events = _events(n)
    prefixes: list[str] = []
    got: dict[str, list[float]] = {}

    def run(name: str) -> float:
        kind, side = name.split(":")
        if kind == "publish":
            fn = publish_events if side == "events" else publish_raw
            rate, prefix = fn(events, 1000)
            prefixes.append(prefix)
            return rate
        # consume a stream filled by the matching publisher, so each side reads its own format
        filler = publish_events if side == "events" else publish_raw
        _, prefix = filler(events, 1000)
        prefixes.append(prefix)
        return (consume_events if side == "events" else consume_raw)(prefix, n)

    try:
        got = alternate(
            ctx, {name: (lambda name=name: run(name)) for name in _VARIANTS}, warmup=True
        )
    finally:
        for prefix in prefixes:
            _delete(prefix)
    note = f"{n:,} events of about 200 bytes, one group, in this process"
    return [
        ratio_row(
            "R1.publish",
            f"{TITLE}: publish (relay side), 1,000 per call",
            "raw pipelined XADD, 1,000 per round trip",
            "throughput",
            "events/s",
            got["publish:events"],
            got["publish:raw"],
            GOAL,
            higher_is_better=True,
            notes=note + "; publish also records each event as owed (recovery) in the same script",
        ),
        ratio_row(
            "R1.consume",
            f"{TITLE}: claim + ack_many, 100 per claim",
            "raw XREADGROUP COUNT 100 + XACK",
            "throughput",
            "events/s",
            got["consume:events"],
            got["consume:raw"],
            GOAL,
            higher_is_better=True,
            notes=note + "; claim decodes and validates every event, ack also clears it as owed",
        ),
    ]


_VARIANTS = ("publish:events", "publish:raw", "consume:events", "consume:raw")


# --------------------------------------------------------------------------- latency


def _paced(count: int, send: Any, *, stamp_before: bool = False) -> dict[int, float]:
    """Send ``count`` events at ``RATE``; when each counts as sent: after ``send`` returns
    (a commit), or, with ``stamp_before``, when it is called (a raw XADD reaches a blocked
    reader before its own reply is back, so its return would come after the handling)."""
    committed: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        before = time.perf_counter()
        send(i)
        committed[i] = before if stamp_before else time.perf_counter()
    return committed


def _read_handled(path: str, count: int, offset: int) -> dict[int, float]:
    deadline = time.perf_counter() + 30
    while True:
        with open(path) as f:
            lines = f.read().splitlines()
        handled = {int(n): float(t) for n, t in (line.split() for line in lines)}
        arrived = sum(1 for n in handled if offset <= n < offset + count)
        if arrived >= count or time.perf_counter() > deadline:
            return handled
        time.sleep(0.05)


def events_round(count: int, path: str, offset: int) -> list[float]:
    from django.db import transaction

    from django_events import publish

    def send(i: int) -> None:
        with transaction.atomic():
            publish("bench.latency", {**pg.PAYLOAD, "n": offset + i})

    committed = _paced(count, send)
    handled = _read_handled(path, count, offset)
    missing = [offset + i for i in range(count) if offset + i not in handled]
    if missing:
        raise RuntimeError(f"events {missing[:10]} not handled within 30 s")
    return [(handled[offset + i] - committed[i]) * 1e3 for i in range(count)]


def raw_round(prefix: str, count: int, path: str, offset: int) -> list[float]:
    stream = f"{prefix}:raw-latency"
    client = _client()

    def send(i: int) -> None:
        client.xadd(stream, {"n": str(offset + i), "data": pg.PAYLOAD_TEXT})

    committed = _paced(count, send, stamp_before=True)
    handled = _read_handled(path, count, offset)
    return [(handled[offset + i] - committed[i]) * 1e3 for i in range(count)]


RAW_CONSUMER = """
import sys, time, redis
url, stream, path = sys.argv[1:4]
client = redis.Redis.from_url(url)
client.xgroup_create(stream, "raw", id="$", mkstream=True)
print("ready", flush=True)
with open(path, "a", buffering=1) as out:
    while True:
        for _, entries in client.xreadgroup("raw", "c", {stream: ">"}, count=100, block=1000):
            for entry_id, fields in entries:
                out.write(f"{int(fields[b'n'])} {time.perf_counter()!r}\\n")
                client.xack(stream, "raw", entry_id)
"""


def latency_rows(ctx: Context) -> list[Row]:
    from django.db import connection

    pg.reset_events()
    connection.ensure_connection()
    prefix = f"bench-r1:{uuid.uuid4().hex[:8]}"
    count = int(RATE * ctx.size(4, 0.8))
    files = {}
    for name in ("events", "raw"):
        fd, files[name] = tempfile.mkstemp(prefix=f"bench-r1-{name}-", suffix=".txt")
        os.close(fd)
    worker = subprocess.Popen(
        [sys.executable, "-m", "django", "consume_events", "--group", "bench_latency", "-v0"],
        env=pg.env(
            BENCH_LATENCY_FILE=files["events"],
            DJANGO_EVENTS_BENCH_REDIS_URL=URL,
            DJANGO_EVENTS_BENCH_REDIS_PREFIX=prefix,
            DJANGO_EVENTS_TEST_SILENCED='["django_events.E008"]',
        ),
        cwd=pg.ROOT,
    )
    raw = subprocess.Popen(
        [sys.executable, "-c", RAW_CONSUMER, URL, f"{prefix}:raw-latency", files["raw"]],
        stdout=subprocess.PIPE,
        text=True,
    )
    p50: dict[str, list[float]] = {"raw": [], "events": []}
    p99: dict[str, list[float]] = {"raw": [], "events": []}
    publishing = pg.publishing_through(
        "django_events.transports.redis.RedisStreamsTransport", {"url": URL, "prefix": prefix}
    )
    publishing.enable()
    try:
        assert raw.stdout is not None and raw.stdout.readline().strip() == "ready"
        events_round(20, files["events"], 10_000_000)  # waits for the worker; warms up
        raw_round(prefix, 20, files["raw"], 10_000_000)
        time.sleep(0.5)
        for rep in range(ctx.reps):
            for name in ("raw", "events"):
                offset = rep * count
                lat = (
                    raw_round(prefix, count, files["raw"], offset)
                    if name == "raw"
                    else events_round(count, files["events"], offset)
                )
                p50[name].append(percentile(lat, 0.5))
                p99[name].append(percentile(lat, 0.99))
                ctx.log(
                    f"    rep {rep + 1}: {name} p50 {p50[name][-1]:.3f} ms "
                    f"p99 {p99[name][-1]:.3f} ms"
                )
                time.sleep(0.2)
    finally:
        publishing.disable()
        pg.stop([worker, raw])
        for path in files.values():
            os.unlink(path)
        _delete(prefix)
        pg.reset_events()
    note = (
        f"{count} events per repetition, one transaction each; one consume_events on Redis "
        "(relay thread woken by NOTIFY, worker blocked in XREADGROUP); handler time minus "
        "commit return. The raw side skips the database: XADD to a blocked XREADGROUP"
    )
    return [
        ratio_row(
            f"R1.{name}",
            f"{TITLE}: commit-to-handler latency at 100 events/s",
            "raw XADD to a blocked XREADGROUP",
            f"{name} latency",
            "ms",
            values["events"],
            values["raw"],
            None,
            higher_is_better=False,
            notes=note,
        )
        for name, values in (("p50", p50), ("p99", p99))
    ]


def run(ctx: Context) -> list[Row]:
    from tests.redis_support import redis_unreachable

    reason = redis_unreachable(URL)
    if reason:
        return [na_row(ID, TITLE, BASELINE, GOAL, f"not measured: {reason}")]
    return throughput_rows(ctx) + latency_rows(ctx)
