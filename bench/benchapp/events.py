import os
import time

from django_events import handler


@handler("bench.noop", group="bench")
def noop(event):
    """Does nothing: the benchmark measures the machinery around it."""


_latency_out = None


@handler("bench.latency", group="bench_latency")
def latency(event):
    """S5: note when the handler ran (perf_counter is comparable across processes)."""
    global _latency_out
    now = time.perf_counter()
    if _latency_out is None:
        _latency_out = open(os.environ["BENCH_LATENCY_FILE"], "a", buffering=1)  # noqa: SIM115
    _latency_out.write(f"{event.data['n']} {now!r}\n")


if os.environ.get("BENCH_SAVEPOINTS_PER_COMMIT"):  # bench.savepoints: the cap under test
    from django_events import worker

    worker.SAVEPOINTS_PER_COMMIT = int(os.environ["BENCH_SAVEPOINTS_PER_COMMIT"])


@handler("bench.write", group="bench_write")
def write(event):
    """bench.savepoints: one row written, so the handler's savepoint takes a subtransaction id."""
    from .models import NaiveOutbox

    NaiveOutbox.objects.create(type=event.type, payload={})
