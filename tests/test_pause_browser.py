"""Pause and resume in a real browser (Debian's Chromium through Playwright; see
tests/test_admin_browser.py, whose fixtures these tests share), with a real worker."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from django_events import publish
from django_events.models import Pause
from tests.conftest import wait_until
from tests.test_admin_browser import account, browser, login  # noqa: F401 - a fixture
from tests.testapp.models import Effect

POLL = 1.0
SLACK = 4.0


def handled() -> set[int]:
    return set(Effect.objects.filter(group="alpha").values_list("n", flat=True))


@pytest.mark.django_db(transaction=True)
def test_operator_pauses_a_group_consumption_stops_resumes_and_it_goes_on(
    browser: Any,  # noqa: F811
    live_server: Any,
    workers: Any,
    tmp_path: Path,
):
    shots = Path(os.environ.get("DJANGO_EVENTS_SCREENSHOTS") or tmp_path)
    workers.start(
        "--group", "alpha", DJANGO_EVENTS_TEST_OVERRIDES=json.dumps({"POLL_INTERVAL": POLL})
    )
    publish("test.happened", {"n": 1})
    wait_until(lambda: handled() == {1}, timeout=60, what="the worker runs")
    account("oncall", "view_deadletter", "pause_group")
    base = live_server.url

    page = login(browser, base, "oncall")
    page.goto(f"{base}/admin/django_events/queuestatus/")
    with page.expect_navigation():
        page.click("td[data-group=alpha] a.de-pause")
    assert page.input_value("#id_group") == "alpha"
    page.fill("#id_reason", "CRM outage: hold orders")
    with page.expect_navigation():
        page.click("input[name=_save]")
    assert Pause.objects.get().paused_by == "oncall"

    time.sleep(POLL + 0.3)  # one poll
    publish("test.happened", {"n": 2})
    time.sleep(3 * POLL)
    assert handled() == {1}, "the paused group was still consumed"
    page.goto(f"{base}/admin/django_events/queuestatus/")
    cell = page.locator("td[data-group=alpha]").inner_text()
    assert "PAUSED by oncall since" in cell and "CRM outage: hold orders" in cell
    assert page.locator("td[data-group=beta]").inner_text().startswith("Pause")
    page.screenshot(path=str(shots / "admin-paused.png"), full_page=True)

    with page.expect_navigation():
        page.click("td[data-group=alpha] a.de-resume")
    page.check("input.action-select")
    page.select_option("select[name=action]", "resume_selected")
    with page.expect_navigation():
        page.click("button[name=index]")
    assert page.locator(".messagelist").inner_text().startswith("Resumed alpha")
    resumed = time.monotonic()
    wait_until(lambda: handled() == {1, 2}, timeout=POLL + SLACK, what="consumption resumes")
    print(f"resume to handled: {time.monotonic() - resumed:.2f}s")
    page.close()
