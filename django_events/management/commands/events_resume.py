"""``manage.py events_resume GROUP [--type TYPE]``: undo ``events_pause``; workers claim
the group (or type) again within one poll. ``--user`` as for ``events_pause``."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import DELETION
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import pauses
from ...transports import transports
from .events_pause import actor, add_target


class Command(BaseCommand):
    help = "Resume a paused consumer group (or event type): workers claim it again."

    def add_arguments(self, parser: CommandParser) -> None:
        add_target(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        user, _ = actor(options["user"])
        try:
            row = pauses.resume(
                options["group"], event_type=options["type"], using=transports["default"].database
            )
        except pauses.NotPaused as exc:
            raise CommandError(str(exc)) from exc
        if user is not None:
            pauses.audit(user, row, DELETION, f"Resumed (paused by {row.paused_by}: {row.reason})")
        self.stdout.write(f"Resumed {row}, paused since {row.paused_at.isoformat()}.")
