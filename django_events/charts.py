"""The admin's charts: per-group series read in one query, drawn as inline SVG.

No JavaScript and nothing fetched from elsewhere, so the admin works offline. The page
reads :class:`~django_events.models.MinuteStat` once, summed into buckets by the
database (one bucket per minute over an hour, more minutes per bucket over longer
windows), so its cost depends on neither the number of groups nor the window's length
beyond that one query (docs/admin.md, "Charts").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from django.db.models import F, Max, Sum
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .models import MinuteStat
from .rollup import minute_of

WINDOWS = {"1h": (60, 1), "6h": (360, 5), "24h": (1440, 15)}
"""Window name: (minutes shown, minutes per bucket); about 60 to 100 bars each."""
DEFAULT_WINDOW = "1h"
WIDTH, HEIGHT, PAD = 360, 120, 30
COLORS = {"handled": "#417690", "failed": "#e0a000", "dead": "#ba2121", "pending": "#5b80b2"}


@dataclass
class GroupSeries:
    """One group's buckets, oldest first; None where no lag sample was taken."""

    group: str
    handled: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    pending: list[int | None] = field(default_factory=list)
    oldest: list[float | None] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {"handled": sum(self.handled), "failed": sum(self.failed), "dead": sum(self.dead)}


def series(
    window: str,
    *,
    group: str | None = None,
    using: str = "default",
    now: float | None = None,
) -> list[GroupSeries]:
    """Every group with data in ``window`` (or only ``group``), by name: one query."""
    minutes, step = WINDOWS[window]
    last = minute_of(time.time() if now is None else now) // step
    first = last - minutes // step + 1
    rows = (
        MinuteStat.objects.using(using)
        .filter(minute__gte=first * step, **({} if group is None else {"group": group}))
        .annotate(bucket=F("minute") / step)
        .values("group", "bucket")
        .annotate(
            handled=Sum("handled"),
            failed=Sum("failed"),
            dead=Sum("dead"),
            pending=Max("pending"),
            oldest=Max("oldest_pending_age_s"),
        )
        .order_by("group", "bucket")
    )
    found: dict[str, GroupSeries] = {}
    width = last - first + 1
    for row in rows:
        index = int(row["bucket"]) - first
        if not 0 <= index < width:
            continue  # a worker's clock ahead of this one
        one = found.get(row["group"])
        if one is None:
            one = found[row["group"]] = GroupSeries(
                row["group"], [0] * width, [0] * width, [0] * width, [None] * width, [None] * width
            )
        one.handled[index] = int(row["handled"])
        one.failed[index] = int(row["failed"])
        one.dead[index] = int(row["dead"])
        one.pending[index] = row["pending"]
        # Nothing pending has no oldest age: drawn as 0, like the Prometheus gauge.
        sampled = row["pending"] is not None
        one.oldest[index] = row["oldest"] if row["oldest"] is not None or not sampled else 0.0
    return [found[name] for name in sorted(found)]


def axis_labels(window: str, now: float | None = None) -> tuple[str, str]:
    """The first and last bucket's start, as HH:MM UTC."""
    minutes, step = WINDOWS[window]
    last = minute_of(time.time() if now is None else now) // step * step
    first = last - minutes + step

    def hhmm(minute: int) -> str:
        return datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%H:%M")

    return hhmm(first), hhmm(last)


def bars(named: dict[str, list[int]], title: str, labels: tuple[str, str]) -> SafeString:
    """Side-by-side bars per bucket for each named series, on one scale."""
    count = max(len(values) for values in named.values())
    top = max((v for values in named.values() for v in values), default=0) or 1
    slot = (WIDTH - PAD) / max(count, 1)
    width = max(slot / len(named) - 0.5, 0.5)
    shapes = []
    for offset, (name, values) in enumerate(named.items()):
        for index, value in enumerate(values):
            if not value:
                continue
            tall = value / top * (HEIGHT - PAD)
            x = PAD + index * slot + offset * (slot / len(named))
            y = HEIGHT - PAD / 2 - tall
            shapes.append(
                f'<rect class="de-bar de-{name}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
                f'height="{tall:.1f}" fill="{COLORS[name]}" data-value="{value}">'
                f"<title>{escape(name)}: {value}</title></rect>"
            )
    return _frame(title, top, labels, "".join(shapes))


def line(
    values: Sequence[float | None], name: str, title: str, labels: tuple[str, str]
) -> SafeString:
    """A line through the buckets that have a sample (gaps where none was taken)."""
    top = max((v for v in values if v is not None), default=0) or 1
    slot = (WIDTH - PAD) / max(len(values), 1)
    runs: list[list[str]] = [[]]
    for index, value in enumerate(values):
        if value is None:
            runs.append([])
            continue
        x = PAD + (index + 0.5) * slot
        y = HEIGHT - PAD / 2 - float(value) / top * (HEIGHT - PAD)
        runs[-1].append(f"{x:.1f},{y:.1f}")
    shapes = "".join(
        f'<polyline class="de-line de-{name}" fill="none" stroke="{COLORS["pending"]}" '
        f'stroke-width="1.5" points="{" ".join(points)}"/>'
        if len(points) > 1
        else f'<circle class="de-line de-{name}" cx="{points[0].split(",")[0]}" '
        f'cy="{points[0].split(",")[1]}" r="2" fill="{COLORS["pending"]}"/>'
        for points in runs
        if points
    )
    return _frame(title, top, labels, shapes)


def _frame(title: str, top: float, labels: tuple[str, str], shapes: str) -> SafeString:
    peak = f"{top:g}" if isinstance(top, int) or top >= 10 else f"{top:.2f}"
    base = HEIGHT - PAD / 2
    return mark_safe(  # noqa: S308 - every text in it is escaped or a number
        f'<svg xmlns="http://www.w3.org/2000/svg" class="de-chart" role="img" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
        f"<title>{escape(title)}</title>"
        f'<line x1="{PAD}" y1="{base}" x2="{WIDTH}" y2="{base}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{PAD / 2}" x2="{PAD}" y2="{base}" stroke="#999"/>'
        f'<text x="{PAD - 3}" y="{PAD / 2 + 8}" font-size="9" text-anchor="end">{peak}</text>'
        f'<text x="{PAD - 3}" y="{base}" font-size="9" text-anchor="end">0</text>'
        f'<text x="{PAD}" y="{HEIGHT - 2}" font-size="9">{escape(labels[0])}</text>'
        f'<text x="{WIDTH}" y="{HEIGHT - 2}" font-size="9" text-anchor="end">'
        f"{escape(labels[1])} UTC</text>{shapes}</svg>"
    )
