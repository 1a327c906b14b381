"""Edit and retry, and redirect, in a real browser (Debian's Chromium through Playwright;
see tests/test_admin_browser.py, whose fixtures these tests share)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from django_events.models import DeadLetter, Delivery, EventRecord
from tests.deadletters import failing
from tests.test_admin_browser import account, browser, login  # noqa: F401 - a fixture
from tests.testapp.models import Effect

VIEW = ("view_deadletter", "view_eventrecord", "view_payload")


@pytest.mark.django_db(transaction=True)
def test_operator_fixes_a_payload_an_invalid_one_is_refused_a_valid_one_is_handled(
    browser: Any,  # noqa: F811
    live_server: Any,
    workers: Any,
    settings: Any,
    tmp_path: Path,
):
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "ADMIN_EDIT_RETRY": True}
    shots = Path(os.environ.get("DJANGO_EVENTS_SCREENSHOTS") or tmp_path)
    dead = failing({"n": 1, "email": "buyer@example.con"})[0]
    Delivery.objects.filter(group_name="beta").delete()  # only alpha owes it
    account("fixer", *VIEW, "edit_deadletter")
    base = live_server.url

    page = login(browser, base, "fixer")
    page.goto(f"{base}/admin/django_events/deadletter/{dead.pk}/change/")
    with page.expect_navigation():
        page.click("#de-edit")
    assert json.loads(page.input_value("#id_payload")) == {
        "n": 1,
        "fail": True,
        "email": "buyer@example.con",
    }
    page.fill("#id_payload", '{"n": 1, "fail": false, "email": "buyer@example.com"')
    with page.expect_navigation():
        page.click("#de-edit-submit")
    assert "not JSON" in page.locator("#de-edit-error").inner_text()
    dead.refresh_from_db()
    assert dead.state == "open" and EventRecord.objects.count() == 1

    page.fill("#id_payload", '{"n": 1, "fail": false, "email": "buyer@example.com"}')
    page.fill("#id_reason", "typo in the address")
    page.screenshot(path=str(shots / "admin-edit-retry.png"), full_page=True)
    with page.expect_navigation():
        page.click("#de-edit-submit")
    message = page.locator(".messagelist").inner_text()
    assert message.startswith(f"Retried dead letter {dead.pk} as new event")
    new = EventRecord.objects.exclude(id=dead.event_id).get()
    assert new.causation_id == dead.event_id and new.data["email"] == "buyer@example.com"

    done = workers.run("consume_events", "--once")
    assert done.returncode == 0, done.stderr
    assert list(Effect.objects.values_list("group", "event_id")) == [("alpha", new.id)]
    page.goto(f"{base}/admin/django_events/eventrecord/{new.id}/change/")
    assert page.locator("td:text-is('alpha') + td").inner_text() == "handled"
    page.close()


@pytest.mark.django_db(transaction=True)
def test_operator_redirects_a_dead_letter_to_another_group(
    browser: Any,  # noqa: F811
    live_server: Any,
    workers: Any,
    tmp_path: Path,
):
    shots = Path(os.environ.get("DJANGO_EVENTS_SCREENSHOTS") or tmp_path)
    dead = failing({"n": 2, "fail": False, "fail_group": "alpha"})[0]
    Delivery.objects.filter(group_name="beta").delete()  # as if beta subscribed later
    account("router", *VIEW, "redirect_deadletter")
    base = live_server.url

    page = login(browser, base, "router")
    page.goto(f"{base}/admin/django_events/deadletter/{dead.pk}/change/")
    with page.expect_navigation():
        page.click("#de-redirect")
    page.select_option("#id_group", "beta")
    page.fill("#id_reason", "alpha was renamed beta")
    page.screenshot(path=str(shots / "admin-redirect.png"), full_page=True)
    with page.expect_navigation():
        page.click("#de-redirect-submit")
    assert page.locator(".messagelist").inner_text().strip() == (
        "Redirected 1 dead letter to group beta."
    )
    done = workers.run("consume_events", "--once")
    assert done.returncode == 0, done.stderr
    assert list(Effect.objects.values_list("group", "event_id")) == [("beta", dead.event_id)]
    assert DeadLetter.objects.get(pk=dead.pk).state == "retried"
    page.close()
