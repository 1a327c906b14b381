from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...engine.worker import Worker
from .. import configure_logging, stop_on_signals


class Command(BaseCommand):
    help = "Move committed events from the outbox to the transport and the event log."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Relay what is there, then exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["verbosity"])
        # A worker with no groups only relays, with the same wake-ups and error handling.
        worker = Worker([], relay=True)
        with nullcontext() if options["once"] else stop_on_signals(worker.stop):
            worker.run(once=options["once"])
