import os
import time

from django_events import handler


@handler("bench.noop", group="bench")
def noop(event):
    """Does nothing: the benchmark measures the machinery around it."""


_files = {}


def _note(path, line):
    """Append ``line`` to ``path``, opened once per process and line-buffered."""
    out = _files.get(path)
    if out is None:
        out = _files[path] = open(path, "a", buffering=1)  # noqa: SIM115
    out.write(line)


@handler("bench.latency", group="bench_latency")
def latency(event):
    """S5: note when the handler ran (perf_counter is comparable across processes)."""
    now = time.perf_counter()
    _note(os.environ["BENCH_LATENCY_FILE"], f"{event.data['n']} {now!r}\n")


@handler("bench.h1", group="bench")
def held(event):
    """H1: note when the event was published and when it ran (wall clock, per process)."""
    now = time.time()
    _note(f"{os.environ['BENCH_H1_FILE']}.{os.getpid()}", f"{event.data['t']!r} {now!r}\n")


if os.environ.get("BENCH_SAVEPOINTS_PER_COMMIT"):  # bench.savepoints: the cap under test
    from django_events.engine import worker

    worker.SAVEPOINTS_PER_COMMIT = int(os.environ["BENCH_SAVEPOINTS_PER_COMMIT"])


@handler("bench.write", group="bench_write")
def write(event):
    """bench.savepoints: one row written, so the handler's savepoint takes a subtransaction id."""
    from .models import NaiveOutbox

    NaiveOutbox.objects.create(type=event.type, payload={})
