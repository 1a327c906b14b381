"""``django_events.testing.factories``: envelopes, log rows and dead letters for users' tests."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest

from django_events import publish
from django_events.engine.relay import Relay
from django_events.exceptions import InvalidEvent
from django_events.models import DeadLetter, EventRecord
from django_events.registry import registry
from django_events.testing.factories import DeadLetterFactory, EventFactory, EventRecordFactory
from tests.deadletters import failing
from tests.testapp import typed_events
from tests.testapp.typed_events import ParcelShipped, ParcelShippedV1

from .conftest import ROOT

pytestmark = pytest.mark.django_db


def test_event_factory_takes_type_version_and_data_from_a_typed_event():
    event = EventFactory(typed=ParcelShipped(parcel_id=7, weight_kg=Decimal("1.50"), carrier="DHL"))
    assert (event.type, event.version) == ("test.parcel_shipped", 3)
    assert event.data["weight_kg"] == "1.50", "as a handler receives it"
    assert ParcelShipped.from_event(event).weight_kg == Decimal("1.50")


def test_event_factory_defaults_to_the_newest_version_and_checks_data_against_it():
    event = EventFactory(
        type="test.parcel_shipped", data={"parcel_id": 1, "weight_kg": "2", "carrier": "UPS"}
    )
    assert event.version == 3
    with pytest.raises(InvalidEvent, match="carrier"):
        EventFactory(type="test.parcel_shipped", data={"parcel_id": 1, "weight_kg": "2"})
    with pytest.raises(InvalidEvent, match="newer than any declared"):
        EventFactory(type="test.parcel_shipped", version=9, data={})


def test_an_old_version_from_the_factory_is_upcast_on_the_way_to_a_handler():
    typed_events.received.clear()
    old = EventFactory(typed=ParcelShippedV1(parcel_id=3, weight_grams=1250))
    assert old.version == 1
    registry.get("typed", "test.parcel_shipped").call(old)
    (got,) = typed_events.received
    assert isinstance(got, ParcelShipped)
    assert (got.weight_kg, got.carrier) == (Decimal("1.25"), "unknown")


def test_plain_data_goes_through_json_as_a_published_event_does():
    event = EventFactory(type="test.happened", data={"total": Decimal("9.50"), "n": 1}, key="k")
    assert event.data == {"total": "9.50", "n": 1}
    assert event.key == "k"
    with pytest.raises(InvalidEvent):
        EventFactory(type="Not A Type")


def test_log_rows_from_the_factory_never_take_a_position_a_later_publish_needs():
    made = EventRecordFactory.create_batch(2, type="test.happened", data={"n": 0})
    publish("test.happened", {"n": 1})
    Relay().run_once()
    logged = EventRecord.objects.get(data__n=1)
    assert logged.position > max(row.position for row in made)
    assert not DeadLetter.objects.exists(), "nothing was set aside by the relay"


def test_dead_letters_from_the_factory_group_with_real_ones_by_fingerprint():
    real = failing()[0]
    made = DeadLetterFactory(
        group=real.group,
        handler=real.handler,
        error_class=real.error_class,
        traceback=real.traceback,
        event__type="test.happened",
    )
    assert made.fingerprint == real.fingerprint, "one failure group in the admin"
    assert DeadLetter.objects.filter(fingerprint=real.fingerprint).count() == 2
    assert made.event.type == "test.happened"


def test_resolved_dead_letters_come_from_traits():
    discarded = DeadLetterFactory(discarded=True)
    retried = DeadLetterFactory(retried=True)
    assert (discarded.state, retried.state) == ("discarded", "retried")
    assert discarded.resolved_at is not None and discarded.reason


def test_without_factory_boy_the_import_error_names_the_extra():
    code = (
        "import sys; sys.modules['factory'] = None\n"
        "import django; django.setup()\n"
        "import django_events.testing.factories\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings_sqlite", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'django-events-outbox[testing]'" in result.stderr, result.stderr


def test_log_rows_and_dead_letters_take_typed_events_too():
    shipped = ParcelShipped(parcel_id=9, weight_kg=Decimal("0.25"), carrier="DPD")
    row = EventRecordFactory(typed=shipped, key="parcel-9")
    stored = EventRecord.objects.get(pk=row.pk)
    assert (stored.type, stored.version, stored.key) == ("test.parcel_shipped", 3, "parcel-9")
    assert stored.data["weight_kg"] == "0.25"
    dead = DeadLetterFactory(group="typed", event__typed=shipped)
    assert dead.event.version == 3 and dead.event_id != row.id
