"""The attempt timeline of a dead letter in a real browser (Debian's Chromium through
Playwright; see tests/test_admin_browser.py, whose fixtures these tests share)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from django_events import publish
from django_events.models import DeadLetter
from django_events.testing import deliver
from tests.test_admin_browser import account, browser, login  # noqa: F401 - a fixture


@pytest.mark.django_db(transaction=True)
def test_a_dead_letter_shows_each_attempt_in_order_with_its_error(
    browser: Any,  # noqa: F811
    live_server: Any,
    tmp_path: Path,
):
    shots = Path(os.environ.get("DJANGO_EVENTS_SCREENSHOTS") or tmp_path)
    with override_settings(DJANGO_EVENTS={"BACKOFF_BASE": 0, "MAX_ATTEMPTS": 3}):
        publish("test.happened", {"n": 42, "fail_group": "alpha"})
        deliver(["alpha"])  # fails twice, then the third attempt dead-letters it
    dead = DeadLetter.objects.get()
    account("oncall", "view_deadletter", "view_payload")
    base = live_server.url

    page = login(browser, base, "oncall")
    page.goto(f"{base}/admin/django_events/deadletter/{dead.pk}/change/")
    attempts = page.locator("#de-attempts tr.de-attempt")
    assert attempts.count() == 3
    cells = [attempts.nth(i).locator("td").all_inner_texts() for i in range(3)]
    assert [(c[0], c[4]) for c in cells] == [
        ("1", "failed"),
        ("2", "failed"),
        ("3", "dead-lettered"),
    ]
    assert all(c[5] == "RuntimeError: alpha asked to fail: 42" for c in cells)
    assert all(c[2].count(":") == 2 and c[3].endswith(" ms") for c in cells)  # worker, took
    page.locator("#de-attempts").screenshot(path=str(shots / "admin-attempts.png"))
    page.close()
