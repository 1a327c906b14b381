from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from ...engine.worker import Worker
from ...exceptions import BackgroundThreadDied, TransportUnavailable
from ...health import HealthFile
from ...registry import registry
from ...subscriptions import declare_current
from .. import configure_logging, run_runtime_checks, stop_on_signals

ONCE_WAITS_FOR_RETRIES = 5.0
"""Seconds ``--once`` waits for a retry it scheduled before exiting (docs/commands.md)."""


class Command(BaseCommand):
    help = "Deliver events to their handlers (and relay the outbox, unless --no-relay)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--group",
            action="append",
            dest="groups",
            metavar="G",
            help="Consumer group to handle (repeatable). Default: every group with a handler.",
        )
        parser.add_argument(
            "--once",
            action="store_true",
            help="Handle everything available now, then exit 0 (for cron and tests). A retry "
            f"this run scheduled that falls due within {ONCE_WAITS_FOR_RETRIES:g}s is "
            "waited for first.",
        )
        parser.add_argument("--no-relay", action="store_true", help="Do not relay the outbox.")
        parser.add_argument("--batch-size", type=int, help="Events claimed per round trip.")
        parser.add_argument(
            "--health-file",
            metavar="PATH",
            help="Touch PATH on every loop (at most once a second) and remove it on exit, "
            "for a liveness probe: python -m django_events.health PATH MAX_AGE.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["verbosity"])
        run_runtime_checks(self, options)
        known = registry.groups()
        groups = options["groups"] or known
        unknown = sorted(set(groups) - set(known))
        if unknown:
            raise CommandError(
                f"No handler is registered for group {unknown[0]!r}; "
                f"known groups: {', '.join(known) or 'none'}."
            )
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        # Stored without retiring anything: this may be an old version during a rolling
        # deploy, and only a deploy (migrate, setup_events) replaces the service's set.
        try:
            declare_current(replace=False)
        except (DatabaseError, TransportUnavailable) as exc:
            # The store is away (a database restarting, Redis down): the worker's loop waits
            # for it as for any outage, and the deploy's migrate declared them already.
            self.stderr.write(f"Subscriptions not declared now ({exc}); migrate declared them.")
        worker = Worker(groups, relay=not options["no_relay"], batch_size=options["batch_size"])
        health = HealthFile(options["health_file"]) if options["health_file"] else None
        if health:
            worker.on_loop = health.touch
        # --once is also run from programs (call_command), maybe off the main thread, where
        # signal handlers cannot be set; a one-off pass has nothing to stop gracefully.
        signals = nullcontext() if options["once"] else stop_on_signals(worker.stop)
        try:
            with signals:
                worker.run(once=options["once"], wait_for_retries=ONCE_WAITS_FOR_RETRIES)
        except BackgroundThreadDied as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if health:
                health.remove()
