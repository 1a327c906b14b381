"""The benchmark runner: alternation, statistics, goals, the table, JSON and the docs page.

A scenario module exposes ``ID``, ``TITLE``, ``BASELINE`` and ``run(ctx) -> list[Row]``.
It measures with :func:`alternate` (warm-up, then A B A B ... inside the same run) and
turns the repetitions into rows with :func:`ratio_row` or :func:`reference_row`. A row
that cannot be measured here is :func:`na_row` with the reason; never a made-up number.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.engine import BACKEND, BACKENDS

TIMES = "\u00d7"  # the multiplication sign
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
DOCS = ROOT / "docs" / "performance.md"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Goal:
    """``ratio >= 5`` or ``value <= 2 ms``: what the row must reach to be met."""

    op: str  # "<=" or ">="
    limit: float
    on: str = "ratio"  # "ratio" or "value" (an absolute limit on the candidate's median)
    unit: str = "x"

    def check(self, ratio: float | None, value: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None:
            return None
        return subject <= self.limit if self.op == "<=" else subject >= self.limit

    def __str__(self) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        if self.on == "ratio":
            return f"{sign} {self.limit:g}{TIMES}"
        return f"{sign} {self.limit:g} {self.unit}"


@dataclass
class Stats:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Row:
    id: str
    scenario: str
    baseline: str
    metric: str
    unit: str = ""
    candidate: Stats | None = None
    base: Stats | None = None
    ratio: Stats | None = None
    goal: Goal | None = None
    notes: str = ""
    na: str | None = None  # the reason, when the row could not be measured

    @property
    def met(self) -> bool | None:
        if self.na is not None or self.goal is None:
            return None
        return self.goal.check(
            self.ratio.median if self.ratio else None,
            self.candidate.median if self.candidate else None,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["goal"] = str(self.goal) if self.goal else None
        out["goal_spec"] = asdict(self.goal) if self.goal else None
        out["ratio"] = round(self.ratio.median, 4) if self.ratio else None
        out["ratio_stats"] = asdict(self.ratio) if self.ratio else None
        out["met"] = self.met
        return out


@dataclass
class Context:
    quick: bool
    log: Callable[[str], None]
    reps: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


# --------------------------------------------------------------------------- measuring


def alternate(
    ctx: Context,
    variants: dict[str, Callable[[], float]],
    *,
    reps: int | None = None,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Warm every variant up once, then run them in turn (A B A B ...) ``reps`` times."""
    if warmup:
        for fn in variants.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(reps or ctx.reps):
        for name, fn in variants.items():
            value = fn()
            out[name].append(value)
            ctx.log(f"    rep {rep + 1}: {name} = {value:,.4g}")
    return out


def ratio_row(
    id: str,
    scenario: str,
    baseline: str,
    metric: str,
    unit: str,
    candidate: Sequence[float],
    base: Sequence[float],
    goal: Goal | None,
    *,
    higher_is_better: bool,
    notes: str = "",
) -> Row:
    """One row from paired repetitions; the ratio is taken per pair, then its median."""
    ratios = [c / b if b else float("inf") for c, b in zip(candidate, base, strict=True)]
    del higher_is_better  # ratios are always candidate / baseline; the goal says which way
    return Row(
        id=id,
        scenario=scenario,
        baseline=baseline,
        metric=metric,
        unit=unit,
        candidate=Stats.of(candidate),
        base=Stats.of(base),
        ratio=Stats.of(ratios),
        goal=goal,
        notes=notes,
    )


def reference_row(
    id: str, scenario: str, metric: str, unit: str, values: Sequence[float], notes: str = ""
) -> Row:
    return Row(
        id=id,
        scenario=scenario,
        baseline="—",
        metric=metric,
        unit=unit,
        candidate=Stats.of(values),
        notes=notes or "reference",
    )


def na_row(id: str, scenario: str, baseline: str, goal: Goal | None, reason: str) -> Row:
    return Row(id=id, scenario=scenario, baseline=baseline, metric="", goal=goal, na=reason)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- running


def run_all(scenarios: Sequence[Any], ctx: Context) -> tuple[list[Row], dict[str, float]]:
    rows: list[Row] = []
    durations: dict[str, float] = {}
    for module in scenarios:
        ctx.log(f"== {module.ID}: {module.TITLE}")
        started = time.perf_counter()
        try:
            rows.extend(module.run(ctx))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            rows.append(
                na_row(
                    module.ID,
                    module.TITLE,
                    module.BASELINE,
                    getattr(module, "GOAL", None),
                    f"failed here: {type(exc).__name__}: {exc}"[:300],
                )
            )
        durations[module.ID] = time.perf_counter() - started
        ctx.log(f"   {module.ID} took {durations[module.ID]:.1f}s")
    return rows, durations


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "ms":
        text = f"{value:.3g}" if value < 10 else f"{value:,.1f}"
    elif abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _spread(stats: Stats | None, unit: str = "", x: bool = False) -> str:
    if stats is None:
        return "—"
    if x:
        return f"{stats.median:.2f}{TIMES} ({stats.min:.2f}-{stats.max:.2f})"
    lo, hi = _fmt(stats.min), _fmt(stats.max)
    return f"{_fmt(stats.median, unit)} ({lo}-{hi})"


def _achieved(row: Row) -> str:
    """What the goal is checked against: the ratio, or the candidate's own median."""
    if row.goal is not None and row.goal.on == "value" and row.candidate is not None:
        ratio = _spread(row.ratio, x=True)
        return f"{_fmt(row.candidate.median, row.unit)} (baseline ratio {ratio})"
    return _spread(row.ratio, x=True)


def _met(row: Row) -> str:
    if row.na is not None:
        return "n/a"
    return {True: "yes", False: "NO", None: "—"}[row.met]


def table_lines(rows: Sequence[Row], markdown: bool) -> list[str]:
    head = ["id", "scenario", "metric", "candidate", "baseline", "ratio", "goal", "met", "notes"]
    body = []
    for r in rows:
        if r.na is not None:
            body.append(
                [r.id, r.scenario, "—", "n/a", "n/a", "n/a", str(r.goal or "—"), "n/a", r.na]
            )
            continue
        body.append(
            [
                r.id,
                r.scenario,
                f"{r.metric} [{r.unit}]" if r.unit else r.metric,
                _spread(r.candidate, ""),
                f"{_spread(r.base, '')} {r.baseline}" if r.base else r.baseline,
                _spread(r.ratio, x=True),
                str(r.goal or "—"),
                _met(r),
                r.notes,
            ]
        )
    if markdown:
        esc = [[c.replace("|", "\\|") for c in line] for line in body]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in esc]
        return out
    # Plain text: a compact table on stdout (notes and baseline names go below it).
    short = [
        "id",
        "metric",
        "candidate (min-max)",
        "baseline (min-max)",
        "ratio (min-max)",
        "goal",
        "met",
    ]
    lines = []
    for r, line in zip(rows, body, strict=True):
        if r.na is not None:
            lines.append([r.id, "n/a", "", "", "", line[6], "n/a"])
        else:
            lines.append(
                [
                    r.id,
                    line[2],
                    _spread(r.candidate),
                    _spread(r.base),
                    _spread(r.ratio, x=True) if r.ratio else "—",
                    line[6],
                    line[7],
                ]
            )
    widths = [max(len(str(x)) for x in col) for col in zip(short, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*short), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*line) for line in lines]
    out.append("")
    for r in rows:
        text = r.na if r.na is not None else f"{r.scenario}; baseline: {r.baseline}. {r.notes}"
        out.append(f"{r.id}: {text}".rstrip())
    return out


def machine() -> dict[str, Any]:
    import django

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    pg = "unreachable"
    try:
        import psycopg

        from bench import pg as pgmod

        with psycopg.connect(pgmod.dsn("postgres"), autocommit=True) as conn:
            pg = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except Exception as exc:
        pg = f"unreachable ({exc})"
    import sqlite3

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "postgresql": pg,
        "sqlite": sqlite3.sqlite_version,
        "python": platform.python_version(),
        "django": django.get_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_json(path: Path, rows: Sequence[Row], mode: str, durations: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "mode": mode,
        "transport": BACKEND,
        "machine": machine(),
        "durations_s": {k: round(v, 1) for k, v in durations.items()},
        "total_s": round(sum(durations.values()), 1),
        "scenarios": [r.to_json() for r in rows],
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _row_from_json(d: dict[str, Any]) -> Row:
    def stats(x: Any) -> Stats | None:
        return Stats(**x) if x else None

    return Row(
        id=d["id"],
        scenario=d["scenario"],
        baseline=d["baseline"],
        metric=d["metric"],
        unit=d["unit"],
        candidate=stats(d["candidate"]),
        base=stats(d["base"]),
        ratio=stats(d["ratio_stats"]),
        goal=Goal(**d["goal_spec"]) if d.get("goal_spec") else None,
        notes=d["notes"],
        na=d["na"],
    )


METHOD = """\
Every number is produced by `make bench` (`python -m bench`) from `bench/`; the table
below is regenerated from `bench/results/latest.json` by the same run. Absolute times on
a shared machine mean little, so every claim is a **ratio** measured in one run against a
baseline doing the same work on the same machine: the raw driver, or a peer queue.

- **Alternation.** Each scenario warms every variant up once, then runs baseline and
  candidate in turn (A B A B …, or A B C A B C … with several baselines) inside the same
  run, so drift of the shared machine hits both alike.
- **Repetitions.** At least three repetitions per variant; the table shows the median,
  with min-max in brackets. A ratio is computed per repetition pair (candidate ÷
  baseline) and its median is reported; the goal is checked against that median.
- **Work.** Payloads of about 200 bytes of JSON, no-op handlers, PostgreSQL with
  `synchronous_commit=on` (the server default) unless a row says otherwise; separate OS
  processes for every concurrent role (publishers, consumers, the two-process raw
  drain); `time.perf_counter` everywhere (CLOCK_MONOTONIC, comparable across processes).
- **Throughput** of a queue (S4, S7, S8) is the *steady-state* rate: events ÷ time from
  the first observed progress (first outbox row relayed, first peer job started) to the
  queue being empty, so process start-up (Django's, or a peer's) is excluded for all
  alike. Each peer gets its own database, created and dropped by the scenario, and its
  schema from its own API; each peer runs two worker processes like django-events.
- **Sizes.** The issue's sizes (100k events, 1M log rows, 1M events for M1) do not all
  fit the 10-minute budget on two shared cores; where a row uses fewer, its notes say
  so. `make bench-quick` runs the same scenarios smaller (under a minute); its ratios are
  noisier and it does not update this page.
- A row that cannot be measured here says **n/a** with the reason; no number is ever
  made up. Nothing here is a timed assertion: the suite reports, it does not fail.
"""


KEEP = "<!-- hand-written: make bench keeps this section -->"


def kept_sections(page: str) -> list[str]:
    """The page's ``## `` sections marked with :data:`KEEP`, to carry over unchanged.

    A regenerated page would otherwise lose the hand-written notes (W1, B1, H1's
    method and their "before" numbers) each time ``make bench`` rewrites it.
    """
    out: list[str] = []
    for part in ("\n" + page).split("\n## ")[1:]:
        if KEEP in part:
            out += [*("## " + part.rstrip("\n")).split("\n"), ""]
    return out


def write_docs(json_path: Path, docs_path: Path) -> None:
    doc = json.loads(json_path.read_text())
    rows = [_row_from_json(d) for d in doc["scenarios"]]
    m = doc["machine"]
    unmet = [r for r in rows if r.met is False]
    lines = [
        "# Performance",
        "",
        "How fast django-events is next to the raw driver and the peer queues "
        "([procrastinate](https://procrastinate.readthedocs.io/), "
        "[PgQueuer](https://pgqueuer.readthedocs.io/)), measured as ratios in one run.",
        "",
        "## Method",
        "",
        METHOD,
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores (shared, noisy)",
        f"- PostgreSQL {m['postgresql']}; SQLite {m['sqlite']}",
        f"- Python {m['python']}, Django {m['django']}",
        f"- {m['platform']}",
        f"- Run: {m['date']}, mode `{doc['mode']}`, {doc['total_s']:.0f} s in all",
        f"- Level 0 engine: `{doc.get('transport', BACKENDS['database'])}` "
        "(`DJANGO_EVENTS_BENCH_TRANSPORT`, see [Reproduce](#reproduce))",
        "",
        "## Results",
        "",
        *table_lines(rows, markdown=True),
        "",
        "Candidate and baseline columns: median (min-max) of the repetitions in the metric's "
        "unit; ratio: candidate ÷ baseline per repetition pair, median (min-max).",
        "",
    ]
    lines += kept_sections(docs_path.read_text() if docs_path.exists() else "")
    if unmet:
        lines += ["## Goals not met in this run", ""]
        lines += [
            f"- **{r.id}** ({r.scenario}): {_achieved(r)} against {r.goal}. {r.notes}"
            for r in unmet
        ]
        lines.append("")
    lines += [
        "## Reproduce",
        "",
        "<!-- doc-test: skip the benchmarks take minutes and rewrite this page; "
        "CI does not run them -->",
        "```console",
        "make bench         # full set, about 20 minutes; rewrites this page",
        "make bench-quick   # reduced set, a few minutes; every ratio, not this page",
        ".venv/bin/python -m bench --only S1,S4   # a subset",
        "```",
        "",
        "Environment variables change what a run measures: "
        "`DJANGO_EVENTS_BENCH_TRANSPORT` picks the Level 0 engine every row runs on, `log` "
        "(the default: the log transport, which a new project names) or `database` (the "
        "first-generation database transport), "
        '`DJANGO_EVENTS_BENCH_ROTATE=on` with its rotation on (`OPTIONS["rotate"]`), '
        "`DJANGO_EVENTS_BENCH_CHARTS=off` without the workers' chart counts and lag samples "
        "(`CHART_RETENTION = 0`), and `DJANGO_EVENTS_BENCH_PG_CONF` adds lines, separated by "
        "`;`, to the private cluster's `postgresql.conf` (W1, B1, H1), e.g. "
        '`"log_min_duration_statement = 100; logging_collector = on; '
        "log_directory = '/tmp/h1log'\"`, or `auto_explain` with `shared_preload_libraries`: "
        "that is how the once-a-minute stall of the log transport's lag sample was found "
        "([Internals](internals.md#the-log-transport)).",
        "",
        "Peers come from the `bench` extra (`pip install -e '.[dev,bench]'`), never from "
        "the package itself. PostgreSQL is expected at 127.0.0.1:5432 (user postgres), as "
        "for the tests.",
        "",
        "One run at a time per PostgreSQL server: a run takes a session advisory lock "
        "on a connection of its own (`bench/lock.py`) and, while another run holds it, "
        "waits by polling from the client; the lock ends with the process holding it, "
        "killed or not. W1, B1 and H1 run on a private cluster: a run of only those "
        "takes no lock and creates no benchmark database. A run leaves nothing on the "
        "shared servers: the databases it creates (`django_events_bench` and the rows' "
        "own) are dropped when it ends, RQ1's queues and exchanges are deleted, also "
        "when a row fails or the run gets SIGTERM. Each is recorded with the run's pid "
        "before it is made (`bench/leftovers.py`, in the temporary directory), so what "
        "a run killed with SIGKILL left is removed by the next run.",
        "",
    ]
    docs_path.write_text("\n".join(lines))
