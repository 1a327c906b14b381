"""``manage.py purge_events``: apply the retention settings now (docs/replay.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import retention
from ...conf import get_settings
from ...transports import transports
from .. import configure_logging


class Command(BaseCommand):
    help = (
        "Remove events, inbox records and resolved dead letters older than their retention "
        "setting (or --older-than), in batches. Never removes anything a group still has "
        "to handle."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help="Use this age for every kind purged instead of its setting: seconds, or a "
            "number with s, m, h, d or w (30d).",
        )
        parser.add_argument(
            "--only",
            action="append",
            choices=retention.KINDS,
            help="Purge only this kind (repeatable). Default: all.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would go; remove nothing."
        )
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="Rows per delete statement (1000)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["verbosity"])
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        kinds = [k for k in retention.KINDS if k in (options["only"] or retention.KINDS)]
        ages = retention.configured()
        if options["older_than"] is not None:
            try:
                age = retention.parse_age(options["older_than"])
            except ValueError as exc:
                raise CommandError(f"--older-than: {exc}") from exc
            ages = dict.fromkeys(kinds, age)
            window, source = retention.redelivery_window()
            if retention.INBOX in kinds and age <= window:
                raise CommandError(
                    f"--older-than {options['older_than']} would remove inbox records while "
                    f"{source} can still redeliver their events (up to {window:g}s); use "
                    f"more than {window:g}s, or --only {retention.EVENTS} / "
                    f"--only {retention.DEAD_LETTERS}."
                )
        conf = get_settings()
        databases = list(dict.fromkeys([*conf.outbox_databases, transports["default"].database]))
        verb = "would remove" if options["dry_run"] else "removed"
        for kind in kinds:
            seconds = ages.get(kind)
            if seconds is None:
                self.stdout.write(f"{kind}: kept forever ({retention.SETTINGS[kind]} is None)")
                continue
            count = 0
            for using in databases:
                with retention.exclusive(using):
                    count += retention.purge(
                        kind,
                        using,
                        seconds,
                        batch=options["batch_size"],
                        dry_run=options["dry_run"],
                    )
            self.stdout.write(f"{kind}: {verb} {count} older than {retention.format_age(seconds)}")
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing was removed.")
