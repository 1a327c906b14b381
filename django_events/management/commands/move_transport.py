"""``manage.py move_transport FROM TO``: move to another transport while workers run.

Records the move (every worker drains FROM too within a poll), waits until every process
has seen it, records the cutover (every relay sends to TO within a poll) and waits again,
then reports what FROM still owes until it owes nothing, and records the move as
finished (docs/moving.md). From the database transport into the log transport, which share
their tables, the cutover also places the groups' cursors and the move finishes with it.
Interrupted, it can be run again with the same aliases: it takes up the move in progress.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import moving
from ...conf import get_settings
from ...exceptions import EventsConfigurationError, TransportUnavailable
from ...registry import registry
from ...subscriptions import fan_out
from ...transports import transports
from ...transports.base import Transport

BAR = 30


class Command(BaseCommand):
    help = (
        "Move from one configured transport to another while workers keep running: new "
        "events go to TO, workers drain FROM, per-key order is kept across the move."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("from_alias", metavar="FROM", help="Alias in TRANSPORTS moved from.")
        parser.add_argument("to_alias", metavar="TO", help="Alias in TRANSPORTS moved to.")
        parser.add_argument(
            "--interval", type=float, default=1.0, help="Seconds between progress reports."
        )
        parser.add_argument(
            "--grace",
            type=float,
            help="Seconds every process takes to see the move (default: twice POLL_INTERVAL, "
            "plus SUBSCRIPTIONS_CACHE, plus one).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        old, new = self._transports(options["from_alias"], options["to_alias"])
        try:
            moving.check_start(options["from_alias"], options["to_alias"])
            self._prepare(new, options["to_alias"])
            move = moving.start(options["from_alias"], options["to_alias"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Moving from {move.from_alias} to {move.to_alias} (move {move.pk}): new events "
            f"go to {move.to_alias}; workers drain {move.from_alias}."
        )
        shared = moving.into_log(old, new)
        if move.cutover_position is None:
            conf = get_settings()
            grace = options["grace"]
            if grace is None:
                grace = 2 * conf.poll_interval + conf.subscriptions_cache + 1
            time.sleep(grace)  # every worker claims from both sides and holds keys by now
            position = moving.record_cutover(move)
            self.stdout.write(
                f"Every process has seen the move: new events go to {move.to_alias} after "
                f"position {position}."
            )
            if not shared:
                time.sleep(grace)  # every relay sends to the new side by now
        if shared:
            # Every relay batch reads the cutover under the lock it was recorded under, and
            # what the old side owes is delivery rows, which the log transport claims first.
            self.stdout.write(
                f"{move.to_alias}'s cursors start at the cutover; the delivery rows written "
                f"before it ({moving.owed(old, self._groups(old))} owed) are claimed by "
                f"{move.to_alias} first."
            )
        else:
            self._drain(old, options["interval"])
        moving.finish(move)
        done = f"{move.from_alias} owes nothing"
        if shared:
            done = f"{move.to_alias} claims what {move.from_alias} owed"
        self.stdout.write(
            f"Done: {done}. Make {move.to_alias!r} the default "
            f"transport in your settings at your next deploy, then drop {move.from_alias!r}."
        )

    def _transports(self, from_alias: str, to_alias: str) -> tuple[Transport, Transport]:
        if from_alias == to_alias:
            raise CommandError("FROM and TO are the same transport.")
        try:
            old, new = transports[from_alias], transports[to_alias]
        except EventsConfigurationError as exc:
            raise CommandError(str(exc)) from None
        if old.database != new.database:
            raise CommandError(
                f"{from_alias!r} keeps its inbox in database {old.database!r} and {to_alias!r} "
                f"in {new.database!r}: a move needs one database for both."
            )
        if moving.moves_database() != new.database:
            raise CommandError(
                "The default transport's database holds the moves; both transports must use it."
            )
        return old, new

    def _prepare(self, new: Transport, alias: str) -> None:
        try:
            for step in moving.prepare(new):
                self.stdout.write(f"{alias}: {step}")
        except TransportUnavailable as exc:
            raise CommandError(str(exc)) from None

    def _groups(self, old: Transport) -> list[str]:
        return sorted({group for _, group, _ in fan_out(old)} | set(registry.groups()))

    def _drain(self, old: Transport, interval: float) -> None:
        """Report what ``old`` owes until it owes nothing twice in a row, ``interval``
        apart (a relay pass that began before the switch has ended by then)."""
        groups = self._groups(old)
        most = 0
        zeros = 0
        last = None
        while zeros < 2:
            try:
                left = moving.owed(old, groups)
            except TransportUnavailable as exc:
                self.stderr.write(f"{old.alias} is unavailable ({exc}); trying again")
                time.sleep(interval)
                continue
            most = max(most, left)
            zeros = zeros + 1 if left == 0 else 0
            if left != last:
                self._report(left, most)
                last = left
            if zeros < 2:
                time.sleep(interval)
        if self.stdout.isatty():
            self.stdout.write("")

    def _report(self, left: int, most: int) -> None:
        drained = most - left
        if self.stdout.isatty():
            filled = BAR if most == 0 else BAR * drained // most
            bar = "#" * filled + "-" * (BAR - filled)
            self.stdout.write(f"\r[{bar}] {drained}/{most} drained, {left} owed", ending="")
            self.stdout.flush()
        else:
            self.stdout.write(f"{left} owed by the old transport ({drained} of {most} drained)")
