"""``python -m bench.dashboard``: docs/grafana-dashboard.json on a real run, drawn to a PNG.

Grafana is not installable here, so this does the rest for real: two ``consume_events``
workers and a publisher (the test app's handlers, some failing into retries and dead
letters) export their OpenTelemetry instruments with opentelemetry-exporter-prometheus;
``runserver`` serves the Prometheus endpoint (``metrics_view``); a real Prometheus
(Debian's ``prometheus`` binary, run as this script's child on a free port) scrapes them
all; then every panel's own PromQL is evaluated through Prometheus' HTTP API and the
panels are drawn in the dashboard's grid with matplotlib. A query Prometheus rejects
stops the script: that is a bug in the dashboard.

Needs, besides the dev and bench extras: ``apt-get install prometheus`` and
``pip install opentelemetry-sdk opentelemetry-exporter-prometheus matplotlib``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench import pg

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
OUT = ROOT / "docs" / "_static" / "grafana-dashboard.png"
TOKEN = "dashboard-run-metrics-token"  # noqa: S105 - a throwaway run's scrape token
DB = "django_events_dashboard"
SCRAPE = 5  # seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environ(otel_port: int | None = None) -> dict[str, str]:
    extra = {
        "DJANGO_SETTINGS_MODULE": "bench.settings_dashboard",
        "DJANGO_EVENTS_BENCH_DB": DB,
        "DASHBOARD_METRICS_TOKEN": TOKEN,
    }
    if otel_port:
        extra["DASHBOARD_OTEL_PORT"] = str(otel_port)
    return pg.env(**extra)


def prometheus_config(web: int, otel_ports: list[int]) -> str:
    return json.dumps(  # YAML is a superset of JSON
        {
            "global": {"scrape_interval": f"{SCRAPE}s", "evaluation_interval": f"{SCRAPE}s"},
            "scrape_configs": [
                {
                    "job_name": "django_events",
                    "metrics_path": "/metrics/",
                    "authorization": {"type": "Bearer", "credentials": TOKEN},
                    "static_configs": [{"targets": [f"127.0.0.1:{web}"]}],
                },
                {
                    "job_name": "workers",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in otel_ports]}],
                },
            ],
        }
    )


def load(seconds: float) -> None:
    """Publish for ``seconds`` in this process: a varying rate, a burst, some failures."""
    import django

    django.setup()
    from django_events import publish

    started = time.monotonic()
    n = 0
    while (now := time.monotonic() - started) < seconds:
        rate = 30 + 25 * math.sin(now / 25)  # events/s
        if abs(now - seconds / 2) < 1:  # a burst half way: the lag panels show it drain
            rate = 1500
        for _ in range(max(1, int(rate / 5))):
            n += 1
            data: dict[str, Any] = {"n": n}
            if random.random() < 0.03:  # beta fails it every attempt: retries, a dead letter
                data["fail_group"] = "beta"
            publish("test.happened", data)
            if random.random() < 0.01:
                publish("test.limited", {"n": n, "fail": True})
        time.sleep(0.2)


def query(base: str, expr: str, start: float, end: float, step: int) -> list[dict[str, Any]]:
    args = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query_range?{args}", timeout=30) as r:  # noqa: S310
            body = json.load(r)
    except urllib.error.HTTPError as error:
        body = json.load(error)
    if body.get("status") != "success":
        raise SystemExit(f"Prometheus rejected {expr!r}: {body.get('error')}")
    return list(body["data"]["result"])


def label(template: str, metric: dict[str, str]) -> str:
    for key, value in metric.items():
        template = template.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return template or ",".join(f"{k}={v}" for k, v in metric.items()) or "value"


def render(panels: list[dict[str, Any]], results: list[list[Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from datetime import datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.62, 0.42  # inches per grid column and row
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 0.6), facecolor="#111217")
    fig.suptitle(title, color="#d8d9da", x=0.01, ha="left", fontsize=12)
    top = 1 - 0.6 / (rows * unit_h + 0.6)
    colors = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]
    for panel, targets in zip(panels, results, strict=True):
        g = panel["gridPos"]
        left, right = 0.03, 0.006  # room for the y tick labels
        bottom, head = 0.025, 0.025  # room for the x tick labels and the title
        rect = (
            g["x"] / 24 + left,
            top * (1 - (g["y"] + g["h"]) / rows) + bottom,
            g["w"] / 24 - left - right,
            top * g["h"] / rows - bottom - head,
        )
        ax = fig.add_axes(rect, facecolor="#181b1f")
        ax.set_title(panel.get("title", ""), color="#d8d9da", fontsize=9, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#9fa7b3", labelsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        series = [(target, s) for target, found in targets for s in found]
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            last = float(series[0][1]["values"][-1][1]) if series else float("nan")
            text = "no data" if math.isnan(last) else f"{last:g}"
            ok = last == 1
            ax.set_facecolor("#1a7311" if ok else "#8f1d22")
            ax.text(
                0.5,
                0.45,
                "OK" if ok else text,
                color="white",
                fontsize=26,
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            continue
        for i, (target, s) in enumerate(series):
            xs = [datetime.fromtimestamp(float(t)) for t, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            name = label(target.get("legendFormat", ""), s["metric"])
            ax.plot(xs, ys, color=colors[i % len(colors)], linewidth=1.3, label=name)
        if not series:
            ax.text(0.5, 0.5, "no data", color="#9fa7b3", ha="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(mdates.MinuteLocator())
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.grid(color="#2c3235", linewidth=0.5)
        if unit:
            ax.set_ylabel(unit, color="#9fa7b3", fontsize=7)
        if series:
            ax.legend(
                fontsize=6.5,
                loc="upper left",
                facecolor="#181b1f",
                edgecolor="#2c3235",
                labelcolor="#d8d9da",
                ncol=min(len(series), 4),
            )
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=72, facecolor=fig.get_facecolor())
    from PIL import Image

    Image.open(OUT).convert("RGB").quantize(colors=64).save(OUT, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240, help="traffic to scrape")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    args = parser.parse_args()
    if os.environ.get("DASHBOARD_ROLE") == "load":
        load(args.seconds)
        return 0
    pg.recreate_database(DB)
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v0"], env=environ(), cwd=ROOT, check=True
    )
    web, prom = free_port(), free_port()
    otel_ports = [free_port() for _ in range(3)]
    work = Path(tempfile.mkdtemp(prefix="de-dashboard-"))
    (work / "prometheus.yml").write_text(prometheus_config(web, otel_ports))
    procs: list[subprocess.Popen[Any]] = []
    try:
        quiet = {"cwd": ROOT, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs.append(
            subprocess.Popen(
                [
                    args.prometheus,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom}",
                ],
                **quiet,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{web}", "--noreload"],
                env=environ(),
                **quiet,
            )
        )
        for port in otel_ports[:2]:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "django", "consume_events", "--verbosity", "0"],
                    env=environ(port),
                    **quiet,
                )
            )
        start = time.time()
        print(f"publishing for {args.seconds:.0f}s; Prometheus on 127.0.0.1:{prom}")
        subprocess.run(
            [sys.executable, "-m", "bench.dashboard", "--seconds", str(args.seconds)],
            env={**environ(otel_ports[2]), "DASHBOARD_ROLE": "load"},
            cwd=ROOT,
            check=True,
        )
        time.sleep(4 * SCRAPE)  # the workers drain, Prometheus scrapes the last of it
        end = time.time()
        base = f"http://127.0.0.1:{prom}"
        dashboard = json.loads(DASHBOARD.read_text())
        panels = dashboard["panels"]
        results = []
        for panel in panels:
            found = []
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$group", ".*").replace("${group}", ".*")
                series = query(base, expr, start, end, SCRAPE)
                print(f"{len(series):3} series  {panel['title']}: {expr}")
                found.append((target, series))
            results.append(found)
        title = f"{dashboard.get('title', 'django-events')} (a {args.seconds / 60:.0f}-minute run)"
        render(panels, results, title)
        print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size // 1024} KB)")
    finally:
        pg.stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
