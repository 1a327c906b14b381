from __future__ import annotations

import getpass
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import subscriptions
from ...exceptions import EventsConfigurationError, TransportUnavailable
from ...registry import registry
from ...subscriptions import declare_current
from ...transports import transports
from ...transports.base import Transport
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
            "--prune",
            action="store_true",
            help="Unsubscribe orphaned subscriptions (retired, declared by no service), "
            "dropping what their groups are still owed; with --dry-run, list them only.",
        )
        parser.add_argument("--service", help="With --prune: only subscriptions of this service.")
        parser.add_argument(
            "--retire-service",
            metavar="NAME",
            help="A service gone for good (it will never run migrate again): retire all its "
            "subscriptions and unsubscribe those no other service declares, dropping their "
            "backlog; with --dry-run, list them only.",
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
        if options["retire_service"]:
            self._retire(transport, options["retire_service"], dry_run=options["dry_run"])
            return
        if options["prune"]:
            self._prune(transport, options["service"], dry_run=options["dry_run"])
            return
        run_runtime_checks(self, options)
        if options["iam"]:
            policies = transport.access_policies(registry.subscriptions())
            if not policies:
                raise CommandError(f"{type(transport).__name__} has no access policies to print.")
            self.stdout.write(json.dumps(policies, indent=2))
            return
        try:
            if not options["dry_run"]:
                for line in declare_current().lines():
                    self.stdout.write(f"Subscriptions: {line}")
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

    def _prune(self, transport: Transport, service: str | None, *, dry_run: bool) -> None:
        rows = [
            row
            for row in subscriptions.orphaned(subscriptions.all_rows(transport))
            if service is None or row.service == service
        ]
        if not rows:
            self.stdout.write("No orphaned subscriptions.")
            return
        backlog = transport.backlog_by_type()
        verb = "Would unsubscribe" if dry_run else "Unsubscribing"
        for row in rows:
            held = "?" if backlog is None else backlog.get((row.group, row.event_type), 0)
            self.stdout.write(
                f"{verb} {row.service}: {row.group} from {row.event_type} "
                f"(retired {row.retired_at:%Y-%m-%d %H:%M}, {held} pending)"
            )
        if dry_run:
            return
        self.stdout.write(subscriptions.unsubscribe(rows, actor=_actor("--prune")).message)

    def _retire(self, transport: Transport, service: str, *, dry_run: bool) -> None:
        try:
            retired, outcome = subscriptions.retire_service(
                service, actor=_actor(f"--retire-service {service}"), dry_run=dry_run
            )
        except EventsConfigurationError as exc:
            raise CommandError(str(exc)) from None
        backlog = transport.backlog_by_type() or {}
        verb = "Would retire" if dry_run else "Retired"
        for row in retired:
            self.stdout.write(
                f"{verb} {row.service}: {row.group} on {row.event_type} "
                f"(last seen {row.last_seen_at:%Y-%m-%d %H:%M})"
            )
        if dry_run:
            for row, _ in outcome.done:
                held = backlog.get((row.group, row.event_type), 0)
                self.stdout.write(
                    f"Would unsubscribe {row.service}: {row.group} from {row.event_type} "
                    f"({held} pending)"
                )
            return
        self.stdout.write(outcome.message)


def _actor(option: str) -> str:
    """Who ran the command, for the log."""
    try:
        who = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container)
        who = "unknown user"
    return f"manage.py setup_events {option} ({who})"
