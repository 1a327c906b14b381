"""What a benchmark run makes on the shared servers, written down before it is made.

A row deletes what it made in a ``finally``; a run killed before it gets there (SIGKILL,
a lost terminal) cannot. Each name is recorded here with the pid of the run that made it,
so the next run deletes what a dead run left behind (docs/performance.md, "Reproduce").
A live run's names are never touched: two processes may use the same server at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

DIRECTORY = Path(os.environ.get("DJANGO_EVENTS_BENCH_LEDGERS", tempfile.gettempdir()))


class Ledger:
    """``pid name`` lines in one file per kind of thing (queues, databases)."""

    def __init__(self, kind: str, directory: Path | None = None) -> None:
        self.path = (directory or DIRECTORY) / f"django-events-bench-{kind}.txt"

    def add(self, name: str) -> None:
        with self._locked() as lines:
            if (os.getpid(), name) not in lines:
                lines.append((os.getpid(), name))

    def remove(self, name: str) -> None:
        """Forget ``name`` (deleted), whoever recorded it."""
        with self._locked() as lines:
            lines[:] = [(pid, n) for pid, n in lines if n != name]

    def mine(self) -> list[str]:
        return [name for pid, name in self._read() if pid == os.getpid()]

    def orphans(self) -> list[str]:
        """Names recorded by processes that are gone, and by no live one (a database
        name is the same in every run)."""
        lines = self._read()
        live = {name for pid, name in lines if _alive(pid)}
        return sorted({name for pid, name in lines if name not in live})

    def _read(self) -> list[tuple[int, str]]:
        with self._locked() as lines:
            return list(lines)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[tuple[int, str]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            lines = [_parse(line) for line in f.read().splitlines() if line.strip()]
            before = list(lines)
            yield lines
            if lines != before:
                f.seek(0)
                f.truncate()
                f.writelines(f"{pid} {name}\n" for pid, name in lines)


def _parse(line: str) -> tuple[int, str]:
    pid, _, name = line.partition(" ")
    return int(pid), name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
