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


_held_out = None


@handler("bench.h1", group="bench")
def held(event):
    """H1: note when the event was published and when it ran (wall clock, per process)."""
    global _held_out
    now = time.time()
    if _held_out is None:
        path = f"{os.environ['BENCH_H1_FILE']}.{os.getpid()}"
        _held_out = open(path, "a", buffering=1)  # noqa: SIM115
    _held_out.write(f"{event.data['t']!r} {now!r}\n")
