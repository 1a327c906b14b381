"""Liveness: ``consume_events --health-file`` and the probe that reads it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from django_events import publish

from .conftest import Workers, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
MAX_AGE = 3


def probe(path: Path, max_age: float = MAX_AGE) -> subprocess.CompletedProcess[str]:
    """The probe as Kubernetes runs it: no Django, no settings."""
    return subprocess.run(
        [sys.executable, "-m", "django_events.health", str(path), str(max_age)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_a_looping_worker_is_healthy_a_stuck_one_is_not_and_a_stopped_one_is_gone(
    workers: Workers, tmp_path: Path
):
    health = tmp_path / "alive"
    assert probe(health).returncode == 1, "not started: not alive"
    proc = workers.start("--group", "alpha", "--health-file", str(health))
    wait_until(health.exists, timeout=60, what="the worker touched its health file")
    assert probe(health).returncode == 0
    publish("test.happened", {"n": 1, "sleep": MAX_AGE + 4})  # a handler that hangs
    wait_until(
        lambda: probe(health).returncode == 1, timeout=60, what="the stuck worker is unhealthy"
    )
    assert "stuck" in probe(health).stderr
    wait_until(lambda: probe(health).returncode == 0, timeout=60, what="healthy once it loops")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not health.exists(), "a stopped worker is not alive"


def test_the_probe_names_a_bad_argument(tmp_path: Path):
    found = probe(tmp_path / "alive", "soon")  # type: ignore[arg-type]
    assert found.returncode == 2
    assert "MAX_AGE_SECONDS" in found.stderr
