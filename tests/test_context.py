"""event_data(): self-contained event data from a model instance and its relations."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_events import event_data, publish
from django_events.context import fields
from django_events.exceptions import InvalidEvent
from tests.testapp.models import Order
from tests.testapp.typed_events import ParcelShipped

pytestmark = pytest.mark.django_db


@pytest.fixture
def user() -> User:
    joined = dt.datetime(2026, 11, 26, 9, 0, 0, 250000, tzinfo=dt.timezone.utc)
    user = User.objects.create(username="ada", email="ada@example.com", date_joined=joined)
    staff = Group.objects.create(name="staff")
    staff.permissions.add(*Permission.objects.filter(codename__in=["add_user", "view_user"]))
    user.groups.add(staff, Group.objects.create(name="billing"))
    return user


def test_chosen_fields_and_related_objects_become_event_data(user: User):
    data = event_data(
        user,
        "id",
        "username",
        "date_joined",
        "is_staff",
        groups=fields("name", permissions=fields("codename", content_type=("app_label",))),
    )
    assert data["username"] == "ada" and data["is_staff"] is False
    assert data["date_joined"] == user.date_joined, "kept a datetime for typed events"
    staff = next(g for g in data["groups"] if g["name"] == "staff")
    assert sorted(p["codename"] for p in staff["permissions"]) == ["add_user", "view_user"]
    assert staff["permissions"][0]["content_type"] == {"app_label": "auth"}
    event = publish("user.registered", data)
    assert event.data["date_joined"] == "2026-11-26T09:00:00.250Z", "DjangoJSONEncoder form"
    assert event.data["groups"] == json.loads(json.dumps(data["groups"], cls=DjangoJSONEncoder))


def test_a_forward_relation_is_an_object_or_none_and_a_reverse_one_a_list():
    permission = Permission.objects.get(codename="add_user")
    assert event_data(permission, "codename", content_type=("model",)) == {
        "codename": "add_user",
        "content_type": {"model": "user"},
    }
    users = ContentType.objects.get_for_model(User)
    data = event_data(users, "model", permission_set=("codename",))
    assert {"codename": "add_user"} in data["permission_set"]


def test_prefetched_relations_cost_no_extra_queries(user: User):
    fetched = User.objects.prefetch_related("groups").get(pk=user.pk)
    with CaptureQueriesContext(connection) as queries:
        event_data(fetched, "username", groups=("name",))
    assert len(queries) == 0


def test_decimal_and_model_values_fill_a_typed_event():
    order = Order.objects.create(total=Decimal("9.50"))
    values = event_data(order, "total")
    parcel = ParcelShipped(parcel_id=order.pk, weight_kg=values["total"], carrier="dhl")
    assert parcel.weight_kg == Decimal("9.50")


def test_mistakes_are_named(user: User):
    with pytest.raises(InvalidEvent, match="User has no field 'nickname'"):
        event_data(user, "nickname")
    with pytest.raises(InvalidEvent, match=r"User\.groups is a relation"):
        event_data(user, "groups")
    with pytest.raises(InvalidEvent, match=r"User\.username is a str, not a related object"):
        event_data(user, username=("x",))
    with pytest.raises(InvalidEvent, match="private attributes"):
        event_data(user, "_state")
    with pytest.raises(TypeError, match="Expected field names"):
        event_data(user, groups="name")  # type: ignore[arg-type]
