"""Facts, not commands: check W020 on event type names, and W022 on upcaster gaps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_events import versions
from django_events.checks import check_contracts, check_events
from django_events.conf import get_settings
from django_events.naming import command_verb
from django_events.registry import Handler, registry


@pytest.mark.parametrize(
    ("event_type", "verb"),
    [
        ("email.send", "send"),
        ("user.create", "create"),
        ("invoice.send_reminder", "send"),
        ("billing.invoice.process", "process"),
        ("cache.purge-all", "purge"),
        ("order.place", "place"),
    ],
)
def test_a_command_is_spotted_by_its_leading_imperative_verb(event_type: str, verb: str):
    assert command_verb(event_type) == verb


@pytest.mark.parametrize(
    "event_type",
    [
        "email.sent",
        "user.created",
        "order.placed",
        "invoice.paid",
        "invoice.reminder_sent",
        "email.send_failed",
        "payment.refund_issued",
        "user.email-changed",
        "order.status_changed",
        "report.built",
        "stock.low",
    ],
)
def test_a_fact_is_left_alone(event_type: str):
    assert command_verb(event_type) is None


@pytest.fixture
def handlers_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Register throwaway handlers for the given types; forgotten after the test."""
    added: list[tuple[str, str]] = []

    def add(*types: str) -> None:
        for event_type in types:
            registry.add(Handler(func=add, group="naming", event_type=event_type))
            added.append(("naming", event_type))

    yield add
    for slot in added:
        registry._handlers.pop(slot, None)


def test_w020_warns_for_a_handled_type_named_like_a_command(handlers_of: Any):
    handlers_of("email.send", "email.sent")
    warnings = [w for w in check_events() if w.id == "django_events.W020"]
    assert len(warnings) == 1
    assert "'email.send' reads as a command ('send' is an imperative verb)" in warnings[0].msg
    assert "ALLOW_COMMAND_NAMES" in (warnings[0].hint or "")


def test_w020_is_silenced_per_type_by_allow_command_names(handlers_of: Any):
    handlers_of("email.send", "user.create")
    with override_settings(DJANGO_EVENTS={"ALLOW_COMMAND_NAMES": ["email.send"]}):
        messages = check_contracts(get_settings())
    assert [m.msg.split("'")[1] for m in messages if m.id == "django_events.W020"] == [
        "user.create"
    ]


def test_w022_warns_when_a_version_has_no_upcaster_to_the_next(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(versions, "_known", {"test.gapped": {1, 2, 3}})
    monkeypatch.setattr(versions, "_current", {"test.gapped": 3})
    monkeypatch.setattr(versions, "_upcasters", {("test.gapped", 2): dict})
    [warning] = [m for m in check_contracts(get_settings()) if m.id == "django_events.W022"]
    assert "no upcaster from version 1" in warning.msg
    assert "from_version=1" in (warning.hint or "")
