"""``manage.py dead_letters list|retry|discard|recount``: the admin's triage, for scripts.

Scripted use acts as a named Django user (``--user``), whose permissions are checked as
in the admin, and whose action is written to the admin log. Without ``--user`` the
shell's own account acts: it already has the database in reach, so no Django permission
is checked, but ``--yes`` is required and ``resolved_by`` records ``shell:<os user>``.
A ``--user`` without ``django_events.view_payload`` sees error classes, not messages, as
in the admin.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q, QuerySet
from django.utils import timezone

from ... import failure_counts, triage
from ...models import DeadLetter

STATES = [*DeadLetter.State.values, "all"]
HIDDEN = "(hidden: needs view_payload)"


def _add_filters(parser: CommandParser) -> None:
    parser.add_argument("--group", action="append", help="Consumer group (repeatable).")
    parser.add_argument("--type", action="append", help="Event type (repeatable).")
    parser.add_argument(
        "--error",
        action="append",
        help="Error class, full (shop.errors.CrmDown) or its last part (CrmDown).",
    )
    parser.add_argument("--id", action="append", help="Event id or dead-letter id (repeatable).")
    parser.add_argument("--fingerprint", action="append", help="Failure group (repeatable).")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    parser.add_argument(
        "--user", help="Act as this Django user: its permissions are checked and logged."
    )


class Command(BaseCommand):
    help = "List, retry or discard dead letters (retry re-runs handlers and their side effects)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="action", required=True, metavar="{list,retry,discard,recount}"
        )
        sub.add_parser(
            "recount",
            help="Rebuild the failure-group counters from the dead letters (if they drifted).",
        )
        listing = sub.add_parser("list", help="Show dead letters (open ones by default).")
        _add_filters(listing)
        listing.add_argument("--state", choices=STATES, default="open")
        listing.add_argument("--limit", type=int, default=100, help="At most this many (100).")
        for name, text in (
            ("retry", "Deliver open dead letters again to their group, attempts reset."),
            ("discard", "Mark open dead letters resolved without running anything."),
        ):
            action = sub.add_parser(name, help=text)
            _add_filters(action)
            action.add_argument(
                "--reason", default="", help="Why; kept with each row (required to discard)."
            )
            action.add_argument(
                "--yes", action="store_true", help="Needed without --user: act as the OS user."
            )
            action.add_argument(
                "--all", action="store_true", help="Act on every open dead letter (no filter)."
            )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "recount":
            total = failure_counts.recount(DeadLetter.objects.db)
            self.stdout.write(f"Recounted: {total} open dead letters.")
            return
        user = self._user(options.get("user"))
        # The shell's own account can read the table anyway; a named user is held to the
        # admin's rule: error text is payload.
        shown = user is None or triage.may_view_payload(user)
        action = options["action"]
        queryset = self._filtered(options)
        if action == "list":
            if user is not None and not user.has_perm("django_events.view_deadletter"):
                raise CommandError(f"{user.get_username()} may not view dead letters.")
            if options["state"] != "all":
                queryset = queryset.filter(state=options["state"])
            rows = list(queryset[: options["limit"]])
            self._list(rows, queryset.count(), options["json"], shown)
            return
        if not self._has_filter(options) and not options["all"]:
            raise CommandError(f"Say which dead letters to {action} (a filter), or pass --all.")
        reason = options["reason"].strip()
        if action == triage.DISCARD and not reason:
            raise CommandError("discard needs --reason; it is kept with each dead letter.")
        actor = None
        if user is None:
            if not options["yes"]:
                raise CommandError(
                    f"Pass --user USERNAME to {action} as a Django user (checked and logged "
                    "in the admin), or --yes to act as the OS user."
                )
            actor = f"shell:{_os_user()}"
        run = triage.retry if action == triage.RETRY else triage.discard
        try:
            outcome = run(queryset.filter(state=DeadLetter.State.OPEN), user, reason, actor=actor)
        except PermissionDenied as exc:
            raise CommandError(f"{user.get_username() if user else actor}: {exc}") from exc
        except LookupError as exc:
            raise CommandError(f"Nothing was retried: {exc}") from exc
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "action": action,
                        "done": [_row(d, shown) for d in outcome.done],
                        "skipped": [d.pk for d in outcome.skipped],
                    },
                    indent=2,
                    sort_keys=True,
                )
            )
        else:
            self.stdout.write(outcome.message)
            for dead in outcome.done:
                self.stdout.write(f"  {dead.pk}  {dead.group}  {dead.event_id}")

    # -- helpers ------------------------------------------------------------------------

    def _user(self, username: str | None) -> Any:
        if not username:
            return None
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist:
            raise CommandError(f"No user {username!r}.") from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive.")
        return user

    def _has_filter(self, options: dict[str, Any]) -> bool:
        return any(options.get(n) for n in ("group", "type", "error", "id", "fingerprint"))

    def _filtered(self, options: dict[str, Any]) -> QuerySet[DeadLetter]:
        queryset = DeadLetter.objects.prefetch_related("event").order_by("-last_failed_at", "-id")
        if options.get("group"):
            queryset = queryset.filter(group__in=options["group"])
        if options.get("type"):
            queryset = queryset.filter(event__type__in=options["type"])
        if options.get("fingerprint"):
            queryset = queryset.filter(fingerprint__in=options["fingerprint"])
        if options.get("error"):
            match = Q()
            for name in options["error"]:
                match |= Q(error_class=name) | Q(error_class__endswith=f".{name}")
            queryset = queryset.filter(match)
        if options.get("id"):
            event_ids, pks = [], []
            for value in options["id"]:
                try:
                    event_ids.append(uuid.UUID(value))
                except ValueError:
                    if not value.isdigit():
                        raise CommandError(f"--id {value!r}: not a UUID or a number.") from None
                    pks.append(int(value))
            queryset = queryset.filter(Q(event_id__in=event_ids) | Q(pk__in=pks))
        return queryset

    def _list(self, rows: list[DeadLetter], total: int, as_json: bool, shown: bool) -> None:
        if as_json:
            out = {"count": total, "dead_letters": [_row(d, shown) for d in rows]}
            self.stdout.write(json.dumps(out, indent=2, sort_keys=True))
            return
        if not rows:
            self.stdout.write("No dead letters match.")
            return
        now = timezone.now()
        self.stdout.write(
            f"{'id':>6}  {'state':<9}  {'group':<12}  {'event type':<20}  {'error':<24}  "
            f"{'tries':>5}  {'last failure':<12}  fingerprint       message"
        )
        for dead in rows:
            age = _age((now - dead.last_failed_at).total_seconds())
            error = dead.error_class.rsplit(".", 1)[-1]
            event = triage.event_of(dead)
            event_type = event.type if event else "?"
            message = dead.error_message[:60] if shown else HIDDEN
            self.stdout.write(
                f"{dead.pk:>6}  {dead.state:<9}  {dead.group[:12]:<12}  {event_type[:20]:<20}  "
                f"{error[:24]:<24}  {dead.attempts:>5}  {age + ' ago':<12}  "
                f"{dead.fingerprint or '-':<16}  {message}"
            )
        if total > len(rows):
            self.stdout.write(f"({len(rows)} of {total} shown; narrow with filters or --limit)")


def _row(dead: DeadLetter, shown: bool) -> dict[str, Any]:
    """One dead letter as JSON; ``error_message`` is None unless ``shown``."""
    event = triage.event_of(dead)
    return {
        "id": dead.pk,
        "event_id": str(dead.event_id),
        "event_type": event.type if event else None,
        "group": dead.group,
        "handler": dead.handler,
        "state": dead.state,
        "error_class": dead.error_class,
        "error_message": dead.error_message if shown else None,
        "attempts": dead.attempts,
        "fingerprint": dead.fingerprint,
        "first_failed_at": dead.first_failed_at.isoformat(),
        "last_failed_at": dead.last_failed_at.isoformat(),
        "resolved_at": dead.resolved_at.isoformat() if dead.resolved_at else None,
        "resolved_by": dead.resolved_by,
        "reason": dead.reason,
    }


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry, as in some containers
        return f"uid {os.getuid()}"
