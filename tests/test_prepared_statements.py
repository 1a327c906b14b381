"""The engine's hot statements are prepared once per connection on PostgreSQL
(docs/internals.md, "Prepared statements"), and not when told otherwise."""

from __future__ import annotations

import copy

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import override_settings

from django_events import publish
from django_events.testing import deliver
from django_events.transports import transports
from tests.testapp.models import Effect

from .conftest import postgres_only

pytestmark = [postgres_only, pytest.mark.django_db(transaction=True)]


def prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def handle_one() -> None:
    """On a connection of its own (no statement of an earlier test prepared on it)."""
    connections.close_all()
    publish("test.happened", {"n": 1})
    assert deliver(["alpha"]) == 1
    assert Effect.objects.filter(group="alpha").count() == 1


def test_the_publish_the_claim_and_the_inbox_insert_are_prepared() -> None:
    handle_one()
    statements = prepared()
    written = "django_events_event" if transports["default"].reads_log else "django_events_outbox"
    assert any(f'INSERT INTO "{written}"' in text for text in statements), statements
    claim = (
        "django_events_log_claim"
        if transports["default"].reads_log
        else 'UPDATE "django_events_delivery" SET attempts'
    )
    assert any(claim in text for text in statements), statements
    assert any('INSERT INTO "django_events_inbox"' in text for text in statements), statements


@override_settings(
    DJANGO_EVENTS={**settings.DJANGO_EVENTS, "PREPARED_STATEMENTS": False},
)
def test_nothing_is_prepared_when_turned_off() -> None:
    handle_one()
    assert prepared() == []


def test_a_threshold_set_to_none_on_purpose_is_respected() -> None:
    """``OPTIONS: {"prepare_threshold": None}`` is how a pooler's users turn psycopg's
    prepared statements off: the engine prepares nothing on that database either."""
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
    saved = connection.settings_dict
    connection.settings_dict = databases["default"]
    try:
        handle_one()
        assert prepared() == []
    finally:
        connections.close_all()
        connection.settings_dict = saved
