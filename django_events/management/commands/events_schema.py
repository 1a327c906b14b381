from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import schema
from ...conf import get_settings
from ...registry import registry


class Command(BaseCommand):
    help = (
        "Write a JSON Schema per typed event type and version, and an AsyncAPI 3.0 document, "
        "into SCHEMA_DIR; with --check, compare the declarations against that snapshot and "
        "exit 1 on a breaking change without a version bump."
    )
    # It reports the snapshot comparison itself; system check W021 would only repeat it.
    requires_system_checks: list[str] = []  # noqa: RUF012 - Django reads it as is

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="Write nothing; exit 1 if a declared version changed in a breaking way.",
        )
        parser.add_argument("--output", help="Directory to use instead of SCHEMA_DIR.")
        parser.add_argument("--title", help="AsyncAPI info.title (default: SOURCE).")
        parser.add_argument(
            "--api-version", help="AsyncAPI info.version (default: a digest of the schemas)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        conf = get_settings()
        where = options["output"] or conf.schema_dir
        if not where:
            raise CommandError("Set DJANGO_EVENTS['SCHEMA_DIR'] or pass --output DIR.")
        directory = Path(where)
        current = schema.current_schemas()
        try:
            changes = schema.compare(schema.load(directory), current)
        except ValueError as exc:
            raise CommandError(f"Cannot read the snapshot in {directory}: {exc}") from exc
        breaking = [c for c in changes if c.breaking]
        if options["check"]:
            self._check(directory, current, changes, breaking)
            return
        for change in breaking:
            self.stdout.write(self.style.WARNING(f"Accepting a breaking change: {change}"))
        title = options["title"] or conf.source or _project()
        document = schema.asyncapi(
            current,
            [(h.event_type, h.group) for h in registry],
            title=title,
            version=options["api_version"],
        )
        written = schema.write(directory, current, document)
        if written:
            self.stdout.write(f"Updated {len(written)} file(s) in {directory}:")
            for name in written:
                self.stdout.write(f"  {name}")
        else:
            self.stdout.write(f"{directory} is up to date.")

    def _check(
        self,
        directory: Path,
        current: schema.Schemas,
        changes: list[schema.Change],
        breaking: list[schema.Change],
    ) -> None:
        if current and not directory.is_dir():
            self.stderr.write(f"No schema snapshot in {directory}: run manage.py events_schema.")
            sys.exit(1)
        for change in changes:
            if change.breaking:
                self.stderr.write(self.style.ERROR(f"Breaking: {change}"))
            else:
                self.stdout.write(f"Compatible: {change}")
        if breaking:
            self.stderr.write(
                "Declare the change as a new version with an upcaster instead. If no event of "
                "that version was ever published, run manage.py events_schema to accept it."
            )
            sys.exit(1)
        if changes:
            self.stdout.write("No breaking change; run manage.py events_schema to refresh.")
        else:
            self.stdout.write(f"{directory} matches the declarations.")


def _project() -> str:
    module = getattr(settings, "SETTINGS_MODULE", None) or "django"
    return module.split(".")[0]
