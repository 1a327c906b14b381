from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...exceptions import EventsConfigurationError, TransportUnavailable
from ...registry import registry
from ...transports import transports
from .. import run_runtime_checks


class Command(BaseCommand):
    help = (
        "Create the streams, queues or topics the configured transport needs for the "
        "registered handlers. Idempotent; a no-op for the database transport."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--transport", default="default", help="Transport alias (default: default)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the plan without changing anything."
        )
        parser.add_argument(
            "--iam",
            action="store_true",
            help="Print least-privilege access policies (JSON, by role) instead of setting up.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            transport = transports[options["transport"]]
        except EventsConfigurationError as exc:
            raise CommandError(str(exc)) from exc
        run_runtime_checks(self, options)
        if options["iam"]:
            policies = transport.access_policies(registry.subscriptions())
            if not policies:
                raise CommandError(f"{type(transport).__name__} has no access policies to print.")
            self.stdout.write(json.dumps(policies, indent=2))
            return
        try:
            steps = transport.setup(registry.subscriptions(), dry_run=options["dry_run"])
        except (EventsConfigurationError, TransportUnavailable) as exc:
            raise CommandError(str(exc)) from None
        name = type(transport).__name__
        if not steps:
            self.stdout.write(f"{name} ({options['transport']}): nothing to set up.")
            return
        verb = "would" if options["dry_run"] else "did"
        self.stdout.write(f"{name} ({options['transport']}) {verb}:")
        for step in steps:
            self.stdout.write(f"  {step}")
