from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...status import collect, problems


class Command(BaseCommand):
    help = "Show backlog, in-flight and dead letters per group; exit 2 past a HEALTH threshold."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = collect()
        found = problems(report)
        report["healthy"] = not found
        report["problems"] = found
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
        else:
            self._table(report)
        if found:
            sys.exit(2)

    def _table(self, report: dict[str, Any]) -> None:
        out = self.stdout
        out.write(f"{'group':<24}{'pending':>9}{'in flight':>11}{'dead':>7}{'oldest (s)':>12}")
        for name, g in report["groups"].items():
            age = "-" if g["oldest_pending_age_s"] is None else f"{g['oldest_pending_age_s']:.1f}"
            out.write(f"{name:<24}{g['pending']:>9}{g['in_flight']:>11}{g['dead']:>7}{age:>12}")
        box = report["outbox"]
        age = "-" if box["oldest_age_s"] is None else f"{box['oldest_age_s']:.1f}s"
        out.write(f"outbox: {box['unrelayed']} unrelayed, oldest {age}")
        for problem in report["problems"]:
            out.write(self.style.ERROR(f"UNHEALTHY: {problem}"))
