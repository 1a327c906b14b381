"""``manage.py replay_events``: deliver logged events again to one group (docs/replay.md)."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import get_settings
from ...replay import Replay, ReplayError, ReplayPlan, ReplaySpec, parse_moment
from .. import configure_logging

logger = logging.getLogger("django_events.replay")
LOG_EVERY = 5.0  # seconds between progress log lines when not on a terminal


class Progress:
    """Count, rate and ETA: redrawn in place on a terminal, a log line now and then if not."""

    def __init__(self, command: BaseCommand, group: str, total: int, tty: bool) -> None:
        self.command = command
        self.group = group
        self.total = total
        self.tty = tty
        self.started = time.monotonic()
        self.shown_at = self.started
        self.drawn = False

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if not self.tty and now - self.shown_at < LOG_EVERY and done < self.total:
            return
        self.shown_at = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = max(self.total - done, 0)
        eta = _duration(left / rate) if rate else "-"
        if self.tty:
            share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
            self.command.stdout.write(
                f"\r{done}/{self.total} events{share}  {rate:.0f}/s  ETA {eta}  ", ending=""
            )
            self.command.stdout.flush()
            self.drawn = True
        else:
            logger.info(
                "Replayed %d of %d events to %s (%.0f/s, ETA %s)",
                done,
                self.total,
                self.group,
                rate,
                eta,
            )

    def end(self) -> None:
        """Leave the redrawn line behind, so what follows starts on a line of its own."""
        if self.drawn:
            self.command.stdout.write("")


class Command(BaseCommand):
    help = (
        "Deliver events from the event log again to one consumer group, in publish order, "
        "through the configured transport. Re-running continues an interrupted replay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--group", required=True, help="The consumer group to replay to.")
        parser.add_argument(
            "--type",
            action="append",
            default=[],
            help="Only this event type (repeatable). Default: every type the group handles.",
        )
        parser.add_argument("--key", help="Only events with this key.")
        parser.add_argument(
            "--since", help="Only events that occurred at or after this ISO date/datetime."
        )
        parser.add_argument(
            "--until", help="Only events that occurred before this ISO date/datetime."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be replayed; write nothing."
        )
        parser.add_argument(
            "--reprocess",
            action="store_true",
            help="Run the handlers again for events the group already handled (removes "
            "its inbox records for them first). Asks for confirmation unless --yes.",
        )
        parser.add_argument("--yes", action="store_true", help="Confirm --reprocess.")
        parser.add_argument(
            "--restart",
            action="store_true",
            help="Forget the progress of an interrupted replay with these filters; start over.",
        )
        parser.add_argument(
            "--limit", type=int, help="Stop after this many events (run again to continue)."
        )
        parser.add_argument(
            "--batch-size", type=int, help="Events per batch; default RELAY_BATCH_SIZE."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["verbosity"])
        for name in ("limit", "batch_size"):
            if options[name] is not None and options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1.")
        try:
            spec = ReplaySpec(
                group=options["group"],
                types=tuple(options["type"]),
                key=options["key"],
                since=parse_moment(options["since"], "--since") if options["since"] else None,
                until=parse_moment(options["until"], "--until") if options["until"] else None,
                reprocess=options["reprocess"],
            )
            replay = Replay(spec, batch_size=options["batch_size"])
        except ReplayError as exc:
            raise CommandError(str(exc)) from exc
        plan = replay.plan(fresh=options["restart"])
        self._describe(replay.spec, plan, options["dry_run"])
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing was written.")
            return
        if spec.reprocess and plan.already_handled and not options["yes"]:
            self._confirm(spec.group, plan.already_handled)
        if options["restart"]:
            replay.restart()
        progress = Progress(self, spec.group, plan.to_replay, self.stdout.isatty())
        try:
            sent = replay.run(limit=options["limit"], on_batch=progress)
        except KeyboardInterrupt:
            progress.end()
            raise CommandError(
                "Interrupted; what was sent is recorded. Run the same command again to continue.",
                returncode=130,
            ) from None
        progress.end()
        more = " (limit reached; run again to continue)" if options["limit"] == sent else ""
        self.stdout.write(f"Replayed {sent} events to {spec.group}{more}.")

    def _describe(self, spec: ReplaySpec, plan: ReplayPlan, dry_run: bool) -> None:
        window = ", ".join(
            f"{name} {value.isoformat()}"
            for name, value in (("since", spec.since), ("until", spec.until))
            if value
        )
        self.stdout.write(
            f"Replay to group {spec.group!r}: {', '.join(plan.types)}"
            + (f"; key {spec.key!r}" if spec.key is not None else "")
            + (f"; {window}" if window else "")
        )
        if plan.resume_after is not None:
            self.stdout.write(
                f"  continuing after log position {plan.resume_after} "
                f"({plan.replayed_before} replayed so far; --restart to start over)"
            )
        handled_note = (
            "removed and run again (--reprocess)"
            if spec.reprocess
            else "skipped; --reprocess runs them again"
        )
        self.stdout.write(f"  events in range:    {plan.in_range}")
        self.stdout.write(f"  already handled:    {plan.already_handled} ({handled_note})")
        self.stdout.write(
            f"  open dead letters:  {plan.open_dead_letters} (skipped; retry them with "
            "dead_letters retry)"
        )
        self.stdout.write(f"  {'would replay' if dry_run else 'to replay'}:       {plan.to_replay}")
        retention = get_settings().inbox_retention
        oldest = plan.oldest_recorded_at
        if (
            retention is not None
            and not spec.reprocess
            and oldest is not None
            and oldest < dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=retention)
        ):
            self.stderr.write(
                f"Note: INBOX_RETENTION is {retention:g}s and this range holds older events; "
                "if the group handled those, their inbox records are gone and they will be "
                "handled again."
            )

    def _confirm(self, group: str, handled: int) -> None:
        if not sys.stdin.isatty():
            raise CommandError(
                f"--reprocess runs {group}'s handlers again, side effects included, for "
                f"{handled} events it already handled: pass --yes to confirm."
            )
        answer = input(
            f"Run {group}'s handlers again, side effects included, for {handled} events it "
            "already handled? Type 'yes' to continue: "
        )
        if answer.strip().lower() != "yes":
            raise CommandError("Reprocessing cancelled; nothing was written.")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
