"""The triage flow in a real browser: Debian's Chromium, driven by Playwright for Python.

No browser is downloaded: Playwright launches ``/usr/bin/chromium`` (``apt-get install
chromium``; ``.ci/run`` installs it). Without it the test is skipped, unless ``CI`` is
set, where it fails. ``DJANGO_EVENTS_SCREENSHOTS=docs/_static`` refreshes the
screenshots of docs/admin.md; otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections

from django_events.models import DeadLetter
from tests.deadletters import DEAD_LETTER_LOOKUPS, EVENT_LOOKUPS, SECRET, bulk, failing, leaky
from tests.testapp.models import Effect

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI is set, so this fails instead of skipping.")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls made by the
    # test between page actions are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
            # Under Playwright's running loop the test's ORM calls get connections of their
            # own (Django keeps them per context, not per thread), which nobody else closes:
            # left open, they keep the test database from being dropped at the end.
            connections.close_all()


def account(name: str, *perms: str) -> User:
    user = User.objects.create_user(name, password="pw", is_staff=True)  # noqa: S106
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_events", codename__in=perms)
    )
    return user


def login(browser: Any, base: str, name: str) -> Any:
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", name)
    page.fill("#id_password", "pw")
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert page.url == f"{base}/admin/"
    return page


@pytest.mark.django_db(transaction=True)
def test_operator_retries_a_dead_letter_and_a_viewer_cannot(
    browser: Any, live_server: Any, workers: Any, tmp_path: Path
):
    shots = Path(os.environ.get("DJANGO_EVENTS_SCREENSHOTS") or tmp_path)
    flag = tmp_path / "crm-down"
    flag.write_text("")
    dead = failing({"fail": False, "fail_if_exists": str(flag), "email": "buyer@example.com"})[0]
    # Other failures around it, so the list and the groups look like a real day.
    bulk(3, group="beta", handler="tests.testapp.events.beta", error_class="KeyError", func="load")
    bulk(2, group="beta", handler="tests.testapp.events.beta", state="discarded")
    account("operator", "view_deadletter", "view_eventrecord", "view_payload", "retry_deadletter")
    account("viewer", "view_deadletter", "view_eventrecord")
    base = live_server.url

    page = login(browser, base, "operator")
    page.goto(f"{base}/admin/django_events/deadletter/")
    page.screenshot(path=str(shots / "admin-dead-letters.png"), full_page=True)

    page.goto(f"{base}/admin/django_events/failuregroup/")
    page.screenshot(path=str(shots / "admin-failure-groups.png"), full_page=True)
    with page.expect_navigation():
        page.click(f"tr[data-fingerprint='{dead.fingerprint}'] a.de-group-link")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1  # filtered to this failure group
    with page.expect_navigation():
        rows.first.locator("th a").click()

    assert page.locator("text=Traceback (most recent call last)").count() == 1
    assert "buyer@example.com" in page.content()
    page.screenshot(path=str(shots / "admin-dead-letter.png"), full_page=True)

    flag.unlink()  # the cause is fixed
    page.fill("#id_retry_reason", "CRM is back")
    with page.expect_navigation():
        page.click("#de-retry")
    assert page.locator(".messagelist").inner_text().strip() == "Retried 1 dead letter."
    dead.refresh_from_db()
    assert (dead.state, dead.resolved_by, dead.reason) == ("retried", "operator", "CRM is back")

    done = workers.run("consume_events", "--once")  # as the operator would, in a shell
    assert done.returncode == 0, done.stderr
    assert Effect.objects.filter(group="alpha", event_id=dead.event_id).exists()
    page.goto(f"{base}/admin/django_events/eventrecord/{dead.event_id}/change/")
    assert page.locator("td:text-is('alpha') + td").inner_text() == "handled"
    page.close()

    viewer = login(browser, base, "viewer")
    other = DeadLetter.objects.filter(state="open").first()
    assert other is not None
    viewer.goto(f"{base}/admin/django_events/deadletter/{other.pk}/change/")
    assert viewer.locator("#de-retry").count() == 0
    assert "hidden: needs" in viewer.content()
    token = viewer.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    response = viewer.request.post(
        f"{base}/admin/django_events/deadletter/{other.pk}/retry/",
        form={"csrfmiddlewaretoken": token, "confirm": "yes"},
    )
    assert response.status == 403
    other.refresh_from_db()
    assert other.state == "open"


@pytest.mark.django_db(transaction=True)
def test_a_viewer_without_view_payload_finds_no_side_door(browser: Any, live_server: Any):
    dead = leaky()
    account("viewer", "view_deadletter", "view_eventrecord", "retry_deadletter")
    base = live_server.url
    dead_letters, events = (
        f"{base}/admin/django_events/deadletter/",
        f"{base}/admin/django_events/eventrecord/",
    )
    page = login(browser, base, "viewer")
    seen: list[str] = []

    def visit(url: str, query: dict[str, str] | None = None) -> int:
        response = page.goto(f"{url}?{urlencode(query)}" if query else url)
        seen.append(page.content())
        return int(response.status)

    # URL lookups: a yes/no question about a private field is refused, not answered.
    for lookup, value in DEAD_LETTER_LOOKUPS:
        assert visit(dead_letters, {lookup: value}) == 400, lookup
    for lookup, value in EVENT_LOOKUPS:
        assert visit(events, {lookup: value}) == 400, lookup

    # The search box: words of the message (or the payload) find nothing.
    for term in (SECRET, "ssn"):
        visit(dead_letters)
        page.fill("#searchbar", term)
        with page.expect_navigation():
            page.press("#searchbar", "Enter")
        # (The page echoes the term in the search box, so it is not added to ``seen``.)
        assert page.locator("#result_list tbody tr").count() == 0, term
        assert "no customer" not in page.content()

    # Ordering: every sortable column, both ways.
    for listing in (dead_letters, events):
        visit(listing)
        sorts = page.eval_on_selector_all(
            "#result_list thead th.sortable div.text a", "links => links.map(a => a.href)"
        )
        assert sorts, listing
        for href in sorts:
            assert visit(href) == 200, href
            assert visit(href.replace("o=", "o=-")) == 200, href

    # The pages themselves: the error class, never its message.
    visit(dead_letters)
    assert "NoCustomer" in page.locator("#result_list").inner_text()
    for url in (
        f"{dead_letters}{dead.pk}/change/",
        f"{dead_letters}{dead.pk}/retry/",
        f"{base}/admin/django_events/failuregroup/",
        events,
        f"{events}{dead.event_id}/change/",
    ):
        assert visit(url) == 200, url
    page.close()
    leaks = [n for n, html in enumerate(seen) if SECRET in html or "no customer" in html]
    assert not leaks, f"{len(leaks)} of {len(seen)} pages showed payload or error text"
