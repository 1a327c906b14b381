"""Liveness for process supervisors: a worker touches a file each loop; a probe reads it.

A worker that stops looping (stuck in a call, deadlocked, its loop dead) stops touching
the file, and the probe, run by Kubernetes or systemd as ``python -m django_events.health
PATH MAX_AGE``, fails once the file is older than ``MAX_AGE`` seconds. The probe imports
neither Django nor the project, so it costs milliseconds (docs/observability.md, "Health").
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

TOUCH_EVERY = 1.0  # seconds: a busy loop does not pay a system call per batch


class HealthFile:
    """Touched by the worker's loop; its modification time is the last sign of life."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._touched = 0.0

    def touch(self) -> None:
        now = time.monotonic()
        if now - self._touched >= TOUCH_EVERY:
            self.path.touch()
            self._touched = now

    def remove(self) -> None:
        """A worker that stopped cleanly is not alive: the probe fails at once."""
        self.path.unlink(missing_ok=True)


def problem(path: str | os.PathLike[str], max_age: float) -> str | None:
    """Why the worker behind ``path`` is not healthy, or None."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return f"{path} does not exist: the worker has not started looping, or has stopped."
    if age > max_age:
        return f"{path} was last touched {age:.0f}s ago (over {max_age:g}s): the worker is stuck."
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m django_events.health PATH MAX_AGE_SECONDS\n")
        return 2
    try:
        max_age = float(argv[1])
    except ValueError:
        sys.stderr.write(f"MAX_AGE_SECONDS must be a number, got {argv[1]!r}.\n")
        return 2
    found = problem(argv[0], max_age)
    if found:
        sys.stderr.write(f"unhealthy: {found}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
