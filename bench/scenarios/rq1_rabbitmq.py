"""RQ1: the RabbitMQ transport against raw pika doing the same AMQP work.

Publish: ``transport.publish_to_all`` (the relay's call) of N events, 1,000 per call,
through the topic exchange to one bound quorum queue, returning once the broker confirmed
them all; against raw pika publishing the same messages (body and properties built by the
same function) to the same exchange, 1,000 at a time, waiting for their confirms.
Consume: ``claim`` plus ``ack_many`` (decoding included), prefetch 100, against a raw
``basic_consume`` with prefetch 100 acking every 100 deliveries in one multiple ack.
Latency: one ``consume_events`` on RabbitMQ (relay thread woken by NOTIFY), from the
publisher's commit to the handler; the baseline is a raw confirmed publish to a consumer
waiting on the queue. Every run uses its own prefix and deletes what it declared, also
when it fails; a prefix is recorded (bench/leftovers.py) before anything is declared
under it, so what a killed run left is deleted by the next one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bench import pg
from bench.leftovers import Ledger
from bench.runner import Context, Goal, Row, alternate, na_row, percentile, ratio_row

ID = "RQ1"
TITLE = "RabbitMQ transport"
BASELINE = "raw pika, confirms on"
GOAL: Goal | None = Goal(">=", 0.6)
URL = os.environ.get("DJANGO_EVENTS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
GROUP = "bench"
TYPE = "bench.noop"
BATCH = 1000
PREFETCH = 100
RATE = 100.0
PREFIXES = Ledger("rabbitmq")  # every prefix declared under and not yet deleted


def _events(n: int, event_type: str | None = None) -> list[Any]:
    from django_events.transports.base import Outgoing

    now = dt.datetime.now(dt.timezone.utc)
    return [
        Outgoing(
            position=i + 1,
            event_id=uuid.uuid4(),
            type=event_type or TYPE,
            key=None,
            data=pg.PAYLOAD_TEXT,
            occurred_at=now,
            source="bench",
        )
        for i in range(n)
    ]


def _transport(prefix: str) -> Any:
    from django_events.transports.rabbitmq import RabbitMQTransport

    return RabbitMQTransport("bench", {"url": URL, "prefix": prefix})


def _fresh() -> tuple[Any, str]:
    """A transport under a new prefix, its exchange, queues and bindings declared."""
    prefix = f"bench-rq1.{uuid.uuid4().hex[:8]}"
    PREFIXES.add(prefix)  # first: a failed or killed setup may have declared some of it
    transport = _transport(prefix)
    transport.setup(transport.context.subscriptions())
    return transport, prefix


def names(prefix: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) RQ1 may declare under ``prefix``: each group's queue and
    dead-letter queue (``claim`` declares its group's), the raw latency consumer's queue,
    the topic exchange."""
    transport = _transport(prefix)
    groups = sorted({GROUP} | {group for _, group, _ in transport.context.subscriptions()})
    queues = [transport.queue(group, dead=dead) for group in groups for dead in (False, True)]
    return [*queues, f"{prefix}.raw-latency"], [transport.exchange]


def delete(prefix: str) -> None:
    """Delete what RQ1 declared under ``prefix``, then forget it. A broker that cannot be
    reached raises, and the prefix stays recorded for the next run."""
    import pika

    queues, exchanges = names(prefix)
    connection = _connection()
    try:
        for queue in queues:  # deleting a missing queue is no error for RabbitMQ
            connection.channel().queue_delete(queue)
        for exchange in exchanges:
            connection.channel().exchange_delete(exchange)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise RuntimeError(f"RabbitMQ refused to delete under {prefix!r}: {exc}") from exc
    finally:
        connection.close()
    PREFIXES.remove(prefix)


def delete_all(prefixes: list[str], log: Any) -> None:
    """Delete under every prefix in ``prefixes``; one that fails is logged, not raised
    (a ``finally`` calls this: the row's own error is the one to see)."""
    for prefix in prefixes:
        try:
            delete(prefix)
        except Exception as exc:
            log(f"   RQ1: could not delete what it declared under {prefix!r}: {exc}")


def _connection() -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(URL))


def publish_events(events: list[Any]) -> tuple[float, str]:
    transport, prefix = _fresh()
    started = time.perf_counter()
    for i in range(0, len(events), BATCH):
        transport.publish_to_all(events[i : i + BATCH])
    elapsed = time.perf_counter() - started
    transport.close()
    return len(events) / elapsed, prefix


def publish_raw(events: list[Any]) -> tuple[float, str]:
    """Pika's own way to wait for a batch's confirms: its asynchronous channel (under the
    blocking connection) counts them; its blocking channel would wait for each in turn."""
    from django_events.transports.rabbitmq.messages import to_message

    transport, prefix = _fresh()
    signing = transport.context.signing
    transport.close()
    connection = _connection()
    channel = connection.channel()
    confirmed = [0]

    def on_confirm(frame: Any) -> None:
        confirmed[0] = max(confirmed[0], frame.method.delivery_tag)
        if confirmed[0] >= published:  # end the poll now, as the transport does
            connection.add_callback_threadsafe(lambda: None)

    ready: list[Any] = []
    channel._impl.confirm_delivery(ack_nack_callback=on_confirm, callback=ready.append)
    while not ready:
        connection.process_data_events(time_limit=0.05)
    published = 0
    started = time.perf_counter()
    for i in range(0, len(events), BATCH):
        for event in events[i : i + BATCH]:
            body, properties = to_message(event, signing)  # building it is part of the work
            channel._impl.basic_publish(prefix, event.type, body, properties)
            published += 1
        while confirmed[0] < published:
            connection.process_data_events(time_limit=0.05)
    elapsed = time.perf_counter() - started
    connection.close()
    return len(events) / elapsed, prefix


def consume_events(prefix: str, n: int) -> float:
    transport = _transport(prefix)
    done = 0
    started = time.perf_counter()
    while done < n:
        claimed = transport.claim([GROUP], PREFETCH, 30)
        if not claimed:
            if not transport.wait([GROUP], 5.0):
                raise RuntimeError(f"only {done} of {n} events claimed")
            continue
        transport.ack_many(claimed)
        done += len(claimed)
    elapsed = time.perf_counter() - started
    transport.close()
    return n / elapsed


def consume_raw(prefix: str, n: int) -> float:
    connection = _connection()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    queue = f"{prefix}.{GROUP}"
    done = [0]
    unacked = [0]

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        done[0] += 1
        unacked[0] += 1
        if unacked[0] >= PREFETCH or done[0] >= n:
            ch.basic_ack(method.delivery_tag, multiple=True)
            unacked[0] = 0

    channel.basic_consume(queue, on_message)
    started = time.perf_counter()
    deadline = time.monotonic() + 120
    while done[0] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done[0]} of {n} messages read")
        connection.process_data_events(time_limit=0.05)
    elapsed = time.perf_counter() - started
    connection.close()
    return n / elapsed


_VARIANTS = ("publish:events", "publish:raw", "consume:events", "consume:raw")


def throughput_rows(ctx: Context) -> list[Row]:
    n = ctx.size(20_000, 5_000)
    events = _events(n)

    def run(name: str) -> float:
        kind, side = name.split(":")
        filler = publish_events if side == "events" else publish_raw
        rate, prefix = filler(events)
        if kind == "publish":
            return rate
        # consume the queue the matching publisher filled: each side reads what it wrote
        return (consume_events if side == "events" else consume_raw)(prefix, n)

    try:
        got = alternate(
            ctx, {name: (lambda name=name: run(name)) for name in _VARIANTS}, warmup=True
        )
    finally:  # the queues hold what was published: free the broker before the next part
        delete_all(PREFIXES.mine(), ctx.log)
    note = f"{n:,} events of about 200 bytes, one quorum queue, in this process"
    return [
        ratio_row(
            "RQ1.publish",
            f"{TITLE}: publish_to_all (relay side), {BATCH:,} per call, confirmed",
            f"raw pika basic_publish, {BATCH:,} then wait for their confirms",
            "throughput",
            "events/s",
            got["publish:events"],
            got["publish:raw"],
            GOAL,
            higher_is_better=True,
            notes=note + "; both through the topic exchange, persistent messages",
        ),
        ratio_row(
            "RQ1.consume",
            f"{TITLE}: claim + ack_many, prefetch {PREFETCH}",
            f"raw basic_consume, prefetch {PREFETCH}, one multiple ack per {PREFETCH}",
            "throughput",
            "events/s",
            got["consume:events"],
            got["consume:raw"],
            GOAL,
            higher_is_better=True,
            notes=note + "; claim decodes and validates every event, acks one by one in a write",
        ),
    ]


# --------------------------------------------------------------------------- latency


def _paced(count: int, send: Any, *, stamp_before: bool = False) -> dict[int, float]:
    """Send ``count`` events at ``RATE``; each counts as sent when ``send`` returns (a
    commit), or, with ``stamp_before``, when it is called (a raw publish reaches a waiting
    consumer before its confirm is back, so its return would come after the handling)."""
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


def raw_round(channel: Any, queue: str, count: int, path: str, offset: int) -> list[float]:
    def send(i: int) -> None:
        channel.basic_publish("", queue, f"{offset + i}".encode())  # confirmed: blocks

    committed = _paced(count, send, stamp_before=True)
    handled = _read_handled(path, count, offset)
    return [(handled[offset + i] - committed[i]) * 1e3 for i in range(count)]


RAW_CONSUMER = """
import sys, time, pika
url, queue, path = sys.argv[1:4]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
channel.basic_qos(prefetch_count=100)
out = open(path, "a", buffering=1)
def on_message(ch, method, properties, body):
    out.write(f"{int(body)} {time.perf_counter()!r}\\n")
    ch.basic_ack(method.delivery_tag)
channel.basic_consume(queue, on_message)
print("ready", flush=True)
channel.start_consuming()
"""


def latency_rows(ctx: Context) -> list[Row]:
    from django.db import connection as db

    pg.reset_events()
    db.ensure_connection()
    transport, prefix = _fresh()
    transport.close()
    raw_queue = f"{prefix}.raw-latency"
    count = int(RATE * ctx.size(4, 0.8))
    files = {}
    for name in ("events", "raw"):
        fd, files[name] = tempfile.mkstemp(prefix=f"bench-rq1-{name}-", suffix=".txt")
        os.close(fd)
    worker = subprocess.Popen(
        [sys.executable, "-m", "django", "consume_events", "--group", "bench_latency", "-v0"],
        env=pg.env(
            BENCH_LATENCY_FILE=files["events"],
            DJANGO_EVENTS_BENCH_RABBITMQ_URL=URL,
            DJANGO_EVENTS_BENCH_RABBITMQ_PREFIX=prefix,
        ),
        cwd=pg.ROOT,
    )
    raw = subprocess.Popen(
        [sys.executable, "-c", RAW_CONSUMER, URL, raw_queue, files["raw"]],
        stdout=subprocess.PIPE,
        text=True,
    )
    p50: dict[str, list[float]] = {"raw": [], "events": []}
    p99: dict[str, list[float]] = {"raw": [], "events": []}
    publisher = _connection()
    publishing = pg.publishing_through(
        "django_events.transports.rabbitmq.RabbitMQTransport", {"url": URL, "prefix": prefix}
    )
    publishing.enable()
    try:
        assert raw.stdout is not None and raw.stdout.readline().strip() == "ready"
        channel = publisher.channel()
        channel.confirm_delivery()
        events_round(20, files["events"], 10_000_000)  # waits for the worker; warms up
        raw_round(channel, raw_queue, 20, files["raw"], 10_000_000)
        time.sleep(0.5)
        for rep in range(ctx.reps):
            for name in ("raw", "events"):
                offset = rep * count
                lat = (
                    raw_round(channel, raw_queue, count, files["raw"], offset)
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
        with contextlib.suppress(Exception):
            publisher.channel().queue_delete(raw_queue)
            publisher.close()
        for path in files.values():
            os.unlink(path)
        delete_all(PREFIXES.mine(), ctx.log)
        pg.reset_events()
    note = (
        f"{count} events per repetition, one transaction each; one consume_events on "
        "RabbitMQ (relay thread woken by NOTIFY, confirmed publish); handler time minus "
        "commit return. The raw side skips the database: a confirmed publish to a "
        "consumer waiting on the queue"
    )
    return [
        ratio_row(
            f"RQ1.{name}",
            f"{TITLE}: commit-to-handler latency at 100 events/s",
            "raw confirmed publish to a waiting consumer",
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


def _unreachable() -> str | None:
    try:
        import pika  # noqa: F401
    except ImportError:
        return "pika is not installed: pip install 'django-events-outbox[rabbitmq]'"
    try:
        _connection().close()
    except Exception as exc:
        return f"RabbitMQ at {URL} is unreachable: {type(exc).__name__}"
    return None


def run(ctx: Context) -> list[Row]:
    reason = _unreachable()
    if reason:
        return [na_row(ID, TITLE, BASELINE, GOAL, f"not measured: {reason}")]
    with cleaned(ctx):
        return throughput_rows(ctx) + latency_rows(ctx)


@contextlib.contextmanager
def cleaned(ctx: Context) -> Iterator[None]:
    """Delete what runs killed before their ``finally`` left on the broker, then, however
    the block ends, everything this process declared."""
    delete_all(PREFIXES.orphans(), ctx.log)
    try:
        yield
    finally:
        delete_all(PREFIXES.mine(), ctx.log)
