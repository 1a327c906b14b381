"""``manage.py events_pause GROUP [--type TYPE] --reason TEXT``: stop a group's consumption.

Workers stop claiming the group (or only that event type of it) within one poll; events
keep accumulating until ``events_resume``. With ``--user`` the Django user's
``django_events.pause_group`` permission is checked and the pause is written to the admin
log; without it the shell's account acts and is recorded as ``shell:<os user>``.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.contrib.admin.models import ADDITION
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import pauses
from ...transports import transports


def add_target(parser: CommandParser) -> None:
    parser.add_argument("group", help="The consumer group.")
    parser.add_argument("--type", default="", help="Only this event type of the group.")
    parser.add_argument(
        "--user", help="Act as this Django user: its pause_group permission is checked and logged."
    )


def actor(username: str | None) -> tuple[Any, str]:
    """The Django user named (checked: active, may pause) and the name to record."""
    if not username:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = str(os.getuid())
        return None, f"shell:{name}"
    model = get_user_model()
    try:
        user = model._default_manager.get_by_natural_key(username)
    except model.DoesNotExist:
        raise CommandError(f"No user {username!r}.") from None
    if not user.is_active:
        raise CommandError(f"User {username!r} is inactive.")
    if not user.has_perm(pauses.PERMISSION):
        raise CommandError(f"{username}: needs the {pauses.PERMISSION} permission.")
    return user, user.get_username()


class Command(BaseCommand):
    help = "Pause a consumer group (or one event type of it): workers stop claiming it."

    def add_arguments(self, parser: CommandParser) -> None:
        add_target(parser)
        parser.add_argument("--reason", required=True, help="Why, for whoever resumes it.")

    def handle(self, *args: Any, **options: Any) -> None:
        user, name = actor(options["user"])
        using = transports["default"].database
        try:
            row = pauses.pause(
                options["group"],
                event_type=options["type"],
                reason=options["reason"],
                by=name,
                using=using,
            )
        except ValueError as exc:  # AlreadyPaused too: the existing pause stands
            raise CommandError(str(exc)) from exc
        if user is not None:
            pauses.audit(user, row, ADDITION, f"Paused: {row.reason}")
        self.stdout.write(
            f"Paused {row}: workers stop claiming it within one poll. "
            f"Resume with: manage.py events_resume {row.group}"
            + (f" --type {row.event_type}" if row.event_type else "")
        )
