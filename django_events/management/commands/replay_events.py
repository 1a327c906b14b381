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
            "--list",
            action="store_true",
            help="With --dry-run: also print each event that would be sent (id, type, key, "
            "occurred_at), up to --limit.",
        )
        parser.add_argument(
            "--include-discarded",
            action="store_true",
            help="Also send events whose dead letter for the group was discarded "
            "(skipped by default).",
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
        if options["list"] and not options["dry_run"]:
            raise CommandError("--list goes with --dry-run: it shows what a replay would send.")
        try:
            spec = ReplaySpec(
                group=options["group"],
                types=tuple(options["type"]),
                key=options["key"],
                since=parse_moment(options["since"], "--since") if options["since"] else None,
                until=parse_moment(options["until"], "--until") if options["until"] else None,
                reprocess=options["reprocess"],
                include_discarded=options["include_discarded"],
            )
            replay = Replay(spec, batch_size=options["batch_size"])
        except ReplayError as exc:
            raise CommandError(str(exc)) from exc
        plan = replay.plan(fresh=options["restart"])
        self._describe(replay.spec, plan, options["dry_run"])
        if options["dry_run"]:
            if options["list"]:
                self._list(replay, fresh=options["restart"], limit=options["limit"])
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
        self.stdout.write(f"Replayed {_events(sent)} to {spec.group}{more}.")

    def _list(self, replay: Replay, *, fresh: bool, limit: int | None) -> None:
        events = replay.preview(fresh=fresh).values_list("id", "type", "key", "occurred_at")
        if limit is not None:
            events = events[:limit]
        rows = [
            (str(event_id), event_type, "-" if key is None else key, occurred_at.isoformat())
            for event_id, event_type, key, occurred_at in events.iterator()
        ]
        header = ("id", "type", "key", "occurred_at")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            cells = [value.ljust(width) for value, width in zip(row, widths, strict=False)]
            self.stdout.write("  " + "  ".join([*cells, row[3]]))

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
        discarded_note = (
            "sent (--include-discarded)"
            if plan.include_discarded
            else "skipped; --include-discarded sends them"
        )
        rows = [
            ("events in range", plan.in_range, ""),
            ("already handled", plan.already_handled, handled_note),
            (
                "open dead letters",
                plan.open_dead_letters,
                "skipped; retry them with dead_letters retry",
            ),
            ("discarded", plan.discarded, discarded_note),
            ("would replay" if dry_run else "to replay", plan.to_replay, ""),
        ]
        label = max(len(name) for name, _, _ in rows) + 1
        number = max(len(str(count)) for _, count, _ in rows)
        for name, count, note in rows:
            line = f"  {name + ':':<{label}}  {count:>{number}}"
            self.stdout.write(f"{line} ({note})" if note else line)
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


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
