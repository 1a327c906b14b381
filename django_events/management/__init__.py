"""Shared bits of the management commands."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from django.core.management.base import BaseCommand

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def configure_logging(verbosity: int, stream: TextIO | None = None) -> None:
    """Map ``--verbosity`` to the django_events log level; add a handler only if none exists."""
    logger = logging.getLogger("django_events")
    logger.setLevel(LEVELS.get(verbosity, logging.DEBUG))
    if not logger.hasHandlers():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def run_runtime_checks(command: BaseCommand, options: dict[str, Any]) -> None:
    """Run the deployment checks of django_events (W003-W006) for a command that uses the
    transport or the handlers; like Django's own checks, skipped with ``--skip-checks``."""
    from ..checks import RUNTIME_TAG

    if not options.get("skip_checks"):
        command.check(tags=[RUNTIME_TAG], include_deployment_checks=True)


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """First SIGTERM/SIGINT/SIGQUIT: finish the current event and stop. Second: exit at once.
    The handlers that were there before come back on leaving, so a command run from a
    program (``call_command``, a test) does not leave its handlers behind in it."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def first(signum: int, frame: Any) -> None:
        logging.getLogger("django_events").warning(
            "Received %s: finishing the current event, then stopping (again to exit now)",
            signal.Signals(signum).name,
        )
        stop()
        for sig in SIGNALS:
            signal.signal(sig, second)

    def second(signum: int, frame: Any) -> None:
        sys.exit(1)

    for sig in SIGNALS:
        signal.signal(sig, first)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
