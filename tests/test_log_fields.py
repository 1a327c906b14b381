"""Log lines about an event carry its id, type, group, attempt and service as fields."""

from __future__ import annotations

import json
import logging

import pytest

from django_events import publish
from django_events.conf import get_settings
from django_events.logfields import JsonFormatter
from django_events.testing import deliver

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_retry_and_a_dead_letter_say_which_event_group_and_attempt(caplog):
    event = publish("test.happened", {"n": 1, "fail_group": "beta"})
    with caplog.at_level(logging.WARNING, logger="django_events"):
        deliver(["beta"])
    about = [r for r in caplog.records if r.name == "django_events.worker"]
    assert [r.attempt for r in about] == [1, 2, 3, 4, 5]
    for record in about:
        assert record.event_id == str(event.id)
        assert record.event_type == "test.happened"
        assert record.group == "beta"
        assert record.service == get_settings().service
    line = json.loads(JsonFormatter().format(about[-1]))
    assert line["level"] == "ERROR"
    assert line["message"].startswith("Dead letter: test.happened")
    assert (line["event_id"], line["group"], line["attempt"]) == (str(event.id), "beta", 5)
