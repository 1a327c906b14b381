"""Attempt history on the Redis transport: the worker's failure path is shared, so every
attempt shows on the dead letter whichever transport carried the event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings

from django_events import publish
from django_events.models import Attempt, DeadLetter
from django_events.testing import deliver
from django_events.transports import transports

from .redis_support import delete_prefix, events_settings, needs_redis, unique_prefix

pytestmark = [pytest.mark.django_db(transaction=True), needs_redis()]


@pytest.fixture
def on_redis() -> Iterator[None]:
    prefix = unique_prefix()
    with override_settings(
        DJANGO_EVENTS={**events_settings(prefix), "BACKOFF_BASE": 0, "MAX_ATTEMPTS": 3}
    ):
        transports.reset()
        yield
        transports.reset()
    delete_prefix(prefix)


def test_every_attempt_on_redis_is_recorded_up_to_the_dead_letter(on_redis: None):
    publish("test.happened", {"n": 4, "fail_group": "alpha"})
    for _ in range(10):  # each pass relays, claims what is due and handles it
        deliver(["alpha"])
        if DeadLetter.objects.exists():
            break

    dead = DeadLetter.objects.get()
    assert list(
        Attempt.objects.filter(event_id=dead.event_id, group="alpha")
        .order_by("id")
        .values_list("number", "outcome", "error_message")
    ) == [
        (1, "failed", "alpha asked to fail: 4"),
        (2, "failed", "alpha asked to fail: 4"),
        (3, "dead-lettered", "alpha asked to fail: 4"),
    ]
