from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...prometheus import render, report


class Command(BaseCommand):
    help = "Show backlog, in-flight and dead letters per group; exit 2 past a HEALTH threshold."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--format",
            choices=["table", "json", "prometheus"],
            default="table",
            help="table (default), json, or prometheus: the text format for node-exporter's "
            "textfile collector, which exits 0 whatever the health (django_events_healthy says).",
        )
        parser.add_argument("--json", action="store_true", help="Same as --format json.")

    def handle(self, *args: Any, **options: Any) -> None:
        found = report()
        output = "json" if options["json"] else options["format"]
        if output == "prometheus":
            self.stdout.write(render(found), ending="")
            return
        if output == "json":
            self.stdout.write(json.dumps(found, indent=2, sort_keys=True))
        else:
            self._table(found)
        if found["problems"]:
            sys.exit(2)

    def _subscriptions(self, report: dict[str, Any]) -> None:
        """Subscriptions by service; orphans stand out, with what they still hold."""
        out = self.stdout
        rows = report["subscriptions"]
        if not rows:
            return
        out.write(f"subscriptions (this is service {report['service']}):")
        for row in rows:
            line = f"  {row['service']:<16}{row['group']:<24}{row['event_type']}"
            if row["ordered"]:
                line += " (ordered)"
            if row["orphaned"]:
                held = "?" if row["backlog"] is None else row["backlog"]
                out.write(
                    self.style.WARNING(
                        f"{line}  ORPHANED since {row['retired_at']}: no service declares it, "
                        f"{held} pending; unsubscribe with setup_events --prune"
                    )
                )
            elif row["retired_at"]:
                out.write(f"{line}  retired by its service, still declared by another")
            else:
                out.write(line)

    def _pauses(self, report: dict[str, Any]) -> None:
        """What is paused, by whom, since when and why: workers leave it unclaimed."""
        for name, group in report["groups"].items():
            for row in group.get("paused", ()):
                what = f"type {row['event_type']} of group {name}" if row["event_type"] else name
                self.stdout.write(
                    self.style.WARNING(
                        f"PAUSED {what} by {row['paused_by'] or '?'} since {row['paused_at']}: "
                        f"{row['reason']}"
                    )
                )

    def _workers(self, report: dict[str, Any]) -> None:
        """Live and recently gone workers; a stuck handler and a dead worker stand out."""
        rows = report.get("workers", ())
        if not rows:
            return
        self.stdout.write("workers:")
        for w in rows:
            now = w["current"]
            doing = (
                f"{now['event_type']} {now['event_id']} for {now['group']} since "
                f"{now['since']} ({now['running_s']:.0f}s)"
                if now
                else ("idle" if w["state"] == "live" else "-")
            )
            line = (
                f"  {w['state'].upper():<8}{w['host']}:{w['pid']}  {w['service']} {w['version']}  "
                f"groups {', '.join(w['groups']) or '-'}  started {w['started_at']}  "
                f"seen {w['last_seen_s']:.0f}s ago  {doing}"
            )
            if w["stuck"]:
                self.stdout.write(self.style.ERROR(line))
            elif w["state"] == "dead":
                self.stdout.write(self.style.WARNING(line))
            else:
                self.stdout.write(line)

    def _table(self, report: dict[str, Any]) -> None:
        out = self.stdout
        out.write(
            f"{'group':<24}{'pending':>9}{'in flight':>11}{'dead':>7}{'oldest (s)':>12}  services"
        )
        for name, g in report["groups"].items():
            age = "-" if g["oldest_pending_age_s"] is None else f"{g['oldest_pending_age_s']:.1f}"
            out.write(
                f"{name:<24}{g['pending']:>9}{g['in_flight']:>11}{g['dead']:>7}{age:>12}  "
                f"{', '.join(g['services']) or '-'}"
            )
        self._pauses(report)
        self._workers(report)
        self._subscriptions(report)
        box = report["outbox"]
        age = "-" if box["oldest_age_s"] is None else f"{box['oldest_age_s']:.1f}s"
        out.write(f"outbox: {box['unrelayed']} unrelayed, oldest {age}")
        for problem in report["problems"]:
            out.write(self.style.ERROR(f"UNHEALTHY: {problem}"))
