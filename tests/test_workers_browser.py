"""A stuck handler and a killed worker on the admin's Workers page, in a real browser
(Debian's Chromium through Playwright; fixtures from tests/test_admin_browser.py), with a
real ``consume_events`` subprocess."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from django_events import publish
from django_events import workers as registry
from tests.conftest import postgres_only, wait_until
from tests.test_admin_browser import account, browser, login  # noqa: F401 - a fixture

# Short enough for a test: a row every 0.3 s, dead after 1.2 s silent, stuck after 1 s.
WORKERS = {"HEARTBEAT": 0.3, "DEAD_AFTER": 4, "STUCK_AFTER": 1}


def state_of(pid: int) -> dict[str, Any] | None:
    return next((w for w in registry.listing() if w["pid"] == pid), None)


# On SQLite a blocked handler holds the database's only write lock (its transaction has
# written its inbox row), so the heartbeat cannot write either: see docs/admin.md.
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_stuck_handler_is_flagged_and_a_killed_worker_shows_dead(
    browser: Any,  # noqa: F811
    live_server: Any,
    workers: Any,
    tmp_path: Path,
):
    shots = Path(os.environ.get("DJANGO_EVENTS_SCREENSHOTS") or tmp_path)
    proc = workers.start(
        "--group", "alpha", DJANGO_EVENTS_TEST_OVERRIDES=json.dumps({"WORKERS": WORKERS})
    )
    idle = workers.start(
        "--group", "chain", DJANGO_EVENTS_TEST_OVERRIDES=json.dumps({"WORKERS": WORKERS})
    )
    with override_settings(DJANGO_EVENTS={**settings.DJANGO_EVENTS, "WORKERS": WORKERS}):
        publish("test.happened", {"n": 1, "wait_for": str(tmp_path / "never")})
        wait_until(
            lambda: (
                (state_of(proc.pid) or {}).get("stuck")
                and (state_of(idle.pid) or {}).get("state") == "live"
            ),
            timeout=60,
            what="the stuck flag",
        )
        account("oncall", "view_workerrecord")
        base = live_server.url
        page = login(browser, base, "oncall")
        page.goto(f"{base}/admin/django_events/workerrecord/")
        row = page.locator(f"tr[data-pid='{proc.pid}']")
        assert row.get_attribute("class") == "de-stuck"
        assert row.locator(".de-state").inner_text() == "STUCK"
        assert "test.happened" in row.inner_text() and "for alpha" in row.inner_text()
        idle_row = page.locator(f"tr[data-pid='{idle.pid}']")
        assert idle_row.get_attribute("class") == "de-live"
        assert idle_row.locator(".de-current").inner_text() == "idle"
        page.set_viewport_size({"width": 1400, "height": 320})
        page.screenshot(path=str(shots / "admin-workers.png"), full_page=True)

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(
            lambda: (state_of(proc.pid) or {}).get("state") == "dead", timeout=30, what="dead"
        )
        page.reload()
        row = page.locator(f"tr[data-pid='{proc.pid}']")
        assert row.get_attribute("class") == "de-dead"
        assert row.locator(".de-state").inner_text() == "DEAD"
        assert page.locator(f"tr[data-pid='{idle.pid}']").get_attribute("class") == "de-live"
        page.close()
