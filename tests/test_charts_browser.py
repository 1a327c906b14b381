"""The charts page in a real browser (Debian's Chromium through Playwright; fixtures from
tests/test_admin_browser.py), drawn from the counts a real worker wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from django_events import publish
from django_events.models import DeadLetter, MinuteStat
from tests.conftest import wait_until
from tests.test_admin_browser import account, browser, login  # noqa: F401 - a fixture
from tests.testapp.models import Effect


@pytest.mark.django_db(transaction=True)
def test_chart_page_draws_what_a_real_worker_handled_failed_and_dead_lettered(
    browser: Any,  # noqa: F811
    live_server: Any,
    workers: Any,
    tmp_path: Path,
):
    shots = Path(os.environ.get("DJANGO_EVENTS_SCREENSHOTS") or tmp_path)
    for n in range(8):
        publish("test.happened", {"n": n, **({"fail_group": "alpha"} if n % 4 == 0 else {})})
    worker = workers.start(
        "--group",
        "alpha",
        DJANGO_EVENTS_TEST_OVERRIDES=json.dumps({"MAX_ATTEMPTS": 2, "BACKOFF_BASE": 0.1}),
    )
    wait_until(
        lambda: (
            Effect.objects.filter(group="alpha").count() == 6
            and DeadLetter.objects.filter(group="alpha").count() == 2
        ),
        timeout=60,
        what="the worker handles six events and dead-letters two",
    )
    workers.stop_all()  # a worker that stops writes what it counted
    assert worker.returncode == 0, workers.logs()
    stat = wait_until(lambda: MinuteStat.objects.filter(group="alpha").first(), what="counts")
    assert stat is not None
    account("viewer", "view_minutestat")
    base = live_server.url

    page = login(browser, base, "viewer")
    page.goto(f"{base}/admin/")
    with page.expect_navigation():
        page.click("a[href='/admin/django_events/minutestat/']")
    row = page.locator("tr[data-group=alpha]")
    assert row.locator("svg.de-chart").count() == 3
    values = {
        kind: sum(
            int(v)
            for v in row.locator(f"rect.de-{kind}").evaluate_all(
                "rects => rects.map(r => r.dataset.value)"
            )
        )
        for kind in ("handled", "failed", "dead")
    }
    assert values == {"handled": 6, "failed": 4, "dead": 2}
    box = row.locator("rect.de-handled").first.bounding_box()
    assert box is not None and box["height"] > 0, "the handled bar is not drawn"
    assert "6 handled" in row.inner_text()
    with page.expect_navigation():
        page.click("a[href='?window=24h']")
    assert page.locator("tr[data-group=alpha] rect.de-handled").count() >= 1
    page.screenshot(path=str(shots / "admin-charts-test.png"), full_page=True)
    page.close()
