"""``DJANGO_EVENTS``: read lazily, validated with messages that name the key, per-group retry."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_events import handler
from django_events.conf import (
    DEFAULT_TRANSPORT,
    EventsSettings,
    Health,
    RetryPolicy,
    get_settings,
    parse,
)
from django_events.engine.retry import policy_for
from django_events.exceptions import (
    EventsConfigurationError,
    HandlerRegistrationError,
    InvalidEventType,
)
from django_events.registry import Handler, Registry, registry
from django_events.transports import transports


@pytest.fixture
def restored_registry() -> Any:
    """The global registry, put back exactly as it was after the test."""
    saved = list(registry)
    yield registry
    registry.clear()
    for entry in saved:
        registry.add(entry)


def events(**options: Any) -> dict[str, Any]:
    return {"TRANSPORTS": {"default": {"BACKEND": DEFAULT_TRANSPORT, "OPTIONS": options}}}


# --- reading --------------------------------------------------------------------------------


def test_settings_are_parsed_once_and_cached() -> None:
    assert get_settings() is get_settings()


def test_override_settings_takes_effect_and_is_undone() -> None:
    assert get_settings().retry.max_attempts == 5
    assert get_settings().retry.backoff_base == 0  # from tests/settings_base.py
    with override_settings(DJANGO_EVENTS={"MAX_ATTEMPTS": 7, "LEASE": 12}):
        conf = get_settings()
        assert conf.retry.max_attempts == 7
        assert conf.lease == 12.0
        assert conf.retry.backoff_base == 1.0  # the override replaces the whole dict
    assert get_settings().retry.max_attempts == 5
    assert get_settings().lease == 30.0


def test_invalid_setting_is_reported_at_first_read() -> None:
    with override_settings(DJANGO_EVENTS={"MAX_ATEMPTS": 3}):
        with pytest.raises(EventsConfigurationError, match="'MAX_ATEMPTS'"):
            get_settings()
        with pytest.raises(EventsConfigurationError, match="'MAX_ATEMPTS'"):
            get_settings()  # every read, not only the first
    assert get_settings().retry.max_attempts == 5  # and the valid settings come back


def test_applying_invalid_settings_does_not_raise_until_they_are_read() -> None:
    # Whether or not a transport was built before, applying the setting must not parse it.
    transports.reset()
    with (
        override_settings(DJANGO_EVENTS={"MAX_ATEMPTS": 3}),
        pytest.raises(EventsConfigurationError, match="'MAX_ATEMPTS'"),
    ):
        get_settings()


def test_override_settings_resets_the_transport_handler() -> None:
    before = transports["default"]
    assert before.notify is True
    assert transports["default"] is before
    with override_settings(DJANGO_EVENTS=events(notify=False)):
        during = transports["default"]
        assert during is not before
        assert during.notify is False
        assert during.wake_channel is None
    after = transports["default"]
    assert after is not during
    assert after.notify is True


def test_missing_setting_means_all_defaults() -> None:
    conf = parse(None)
    assert conf == EventsSettings()
    assert conf.transports == {"default": {"BACKEND": DEFAULT_TRANSPORT, "OPTIONS": {}}}
    assert conf.outbox_databases == ("default",)
    assert conf.retry == RetryPolicy(max_attempts=5, backoff_base=1.0, backoff_max=300.0)
    assert conf.health == Health()
    assert conf.groups == {}


def test_valid_settings_are_parsed_to_their_types() -> None:
    conf = parse(
        {
            "LEASE": 45,
            "POLL_INTERVAL": 0.5,
            "BATCH_SIZE": 10,
            "BATCH_BYTES": 1_000_000,
            "RELAY_BATCH_SIZE": 100,
            "MAX_PAYLOAD_BYTES": 4096,
            "SOURCE": "shop",
            "LOG_RETENTION": 86400,
            "OUTBOX_DATABASES": ["default"],
            "AUTODISCOVER_MODULES": ["events"],
            "HEALTH": {"MAX_PENDING_AGE": None, "MAX_DEAD": 0},
        }
    )
    assert conf.lease == 45.0
    assert isinstance(conf.lease, float)
    assert conf.poll_interval == 0.5
    assert (conf.batch_size, conf.relay_batch_size, conf.max_payload_bytes) == (10, 100, 4096)
    assert conf.batch_bytes == 1_000_000
    assert conf.source == "shop"
    assert conf.log_retention == 86400
    assert conf.outbox_databases == ("default",)
    assert conf.autodiscover_modules == ("events",)
    assert conf.health == Health(max_pending_age=None, max_outbox_age=60.0, max_dead=0)


# --- refusing bad settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"MAX_ATEMPTS": 3}, "'MAX_ATEMPTS'"),
        (
            {"GROUPS": {"alpha": {"RETRIES": 3}}},
            "DJANGO_EVENTS['GROUPS']['alpha']: unknown key 'RETRIES'",
        ),
        ({"HEALTH": {"MAX_LAG": 5}}, "DJANGO_EVENTS['HEALTH']: unknown key 'MAX_LAG'"),
        (
            {"TRANSPORTS": {"default": {"BACKEND": DEFAULT_TRANSPORT, "OPTONS": {}}}},
            "unknown key 'OPTONS'",
        ),
        ({"TRANSPORTS": {"events": {"BACKEND": DEFAULT_TRANSPORT}}}, "'default'"),
        ({"TRANSPORTS": {}}, "'default'"),
        ({"TRANSPORTS": {"default": {"BACKEND": 5}}}, "['default']['BACKEND']"),
        ({"TRANSPORTS": {"default": {"BACKEND": DEFAULT_TRANSPORT, "OPTIONS": []}}}, "['OPTIONS']"),
        ({"MAX_ATTEMPTS": 0}, "['MAX_ATTEMPTS'] must be an integer >= 1, got 0"),
        ({"MAX_ATTEMPTS": 2.5}, "['MAX_ATTEMPTS']"),
        ({"MAX_ATTEMPTS": True}, "['MAX_ATTEMPTS']"),
        ({"LEASE": "30"}, "['LEASE'] must be a number >= 1, got '30'"),
        ({"LEASE": 0.5}, "['LEASE']"),
        ({"BACKOFF_BASE": -1}, "['BACKOFF_BASE']"),
        ({"POLL_INTERVAL": 0}, "['POLL_INTERVAL']"),
        ({"BATCH_SIZE": 1.5}, "['BATCH_SIZE']"),
        ({"BATCH_BYTES": 0}, "['BATCH_BYTES'] must be an integer >= 1, got 0"),
        ({"BATCH_BYTES": "4MB"}, "['BATCH_BYTES']"),
        ({"RELAY_BATCH_SIZE": 0}, "['RELAY_BATCH_SIZE']"),
        ({"MAX_PAYLOAD_BYTES": 10}, "['MAX_PAYLOAD_BYTES']"),
        ({"LOG_RETENTION": "1d"}, "['LOG_RETENTION']"),
        ({"GROUPS": ["alpha"]}, "DJANGO_EVENTS['GROUPS'] must be a dict"),
        ({"GROUPS": {"alpha": {"MAX_ATTEMPTS": 0}}}, "['GROUPS']['alpha']['MAX_ATTEMPTS']"),
        ({"GROUPS": {"bad name!": {}}}, "'bad name!'"),
        ({"HEALTH": {"MAX_DEAD": 1.5}}, "['HEALTH']['MAX_DEAD']"),
        ({"HEALTH": "strict"}, "DJANGO_EVENTS['HEALTH'] must be a dict"),
        ({"OUTBOX_DATABASES": "default"}, "['OUTBOX_DATABASES']"),
        ({"OUTBOX_DATABASES": []}, "['OUTBOX_DATABASES']"),
        ({"OUTBOX_DATABASES": ["default", 2]}, "['OUTBOX_DATABASES']"),
        ({"AUTODISCOVER_MODULES": "events"}, "['AUTODISCOVER_MODULES']"),
        ({"SOURCE": 5}, "['SOURCE']"),
        ("MAX_ATTEMPTS=3", "DJANGO_EVENTS must be a dict"),
    ],
)
def test_invalid_setting_raises_naming_the_key(raw: Any, named: str) -> None:
    with override_settings(DJANGO_EVENTS=raw), pytest.raises(EventsConfigurationError) as caught:
        get_settings()
    assert named in str(caught.value)
    assert isinstance(caught.value, ImproperlyConfigured)


@pytest.mark.parametrize("value", [5, None, {"events": 1}])
def test_non_list_autodiscover_modules_raises_naming_the_key(value: Any) -> None:
    with pytest.raises(EventsConfigurationError, match="'AUTODISCOVER_MODULES'"):
        parse({"AUTODISCOVER_MODULES": value})


@pytest.mark.parametrize("value", [5, None])
def test_non_list_outbox_databases_raises_naming_the_key(value: Any) -> None:
    with pytest.raises(EventsConfigurationError, match="'OUTBOX_DATABASES'"):
        parse({"OUTBOX_DATABASES": value})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("key", ["LEASE", "POLL_INTERVAL", "BACKOFF_BASE", "BACKOFF_MAX"])
def test_non_finite_number_setting_raises_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(EventsConfigurationError, match=f"'{key}'"):
        parse({key: value})


def test_unknown_transport_option_raises_naming_it_when_the_transport_is_built() -> None:
    with override_settings(DJANGO_EVENTS=events(notfy=False)):
        get_settings()  # OPTIONS belong to the backend, which validates them
        with pytest.raises(EventsConfigurationError) as caught:
            transports["default"]
    message = str(caught.value)
    assert "'notfy'" in message
    assert "database, notify" in message
    assert isinstance(caught.value, ImproperlyConfigured)


def test_known_transport_options_are_accepted() -> None:
    with override_settings(DJANGO_EVENTS=events(database="default", notify=False)):
        transport = transports["default"]
    assert transport.database == "default"
    assert transport.notify is False


# --- retry policy ---------------------------------------------------------------------------


def test_group_retry_policy_inherits_unset_values_from_the_global_policy() -> None:
    conf = parse(
        {
            "MAX_ATTEMPTS": 9,
            "BACKOFF_BASE": 2,
            "BACKOFF_MAX": 60,
            "GROUPS": {
                "alpha": {"MAX_ATTEMPTS": 3},
                "beta": {"BACKOFF_MAX": 5},
                "emails": None,
            },
        }
    )
    assert conf.retry == RetryPolicy(max_attempts=9, backoff_base=2.0, backoff_max=60.0)
    assert conf.retry_for("alpha") == RetryPolicy(
        max_attempts=3, backoff_base=2.0, backoff_max=60.0
    )
    assert conf.retry_for("beta") == RetryPolicy(max_attempts=9, backoff_base=2.0, backoff_max=5.0)
    assert conf.retry_for("emails") == conf.retry
    assert conf.retry_for("not-configured") == conf.retry


def test_handler_overrides_sit_on_top_of_the_group_policy() -> None:
    def fn(event: Any) -> None:
        pass

    strict = Handler(func=fn, group="alpha", event_type="test.happened", max_attempts=2)
    patient = Handler(func=fn, group="alpha", event_type="test.happened", backoff_base=0)
    with override_settings(
        DJANGO_EVENTS={"BACKOFF_BASE": 4, "GROUPS": {"alpha": {"MAX_ATTEMPTS": 6}}}
    ):
        assert policy_for("alpha", None) == RetryPolicy(6, 4.0, 300.0)
        assert policy_for("alpha", strict) == RetryPolicy(2, 4.0, 300.0)
        assert policy_for("alpha", patient) == RetryPolicy(6, 0, 300.0)


# --- handler registration -------------------------------------------------------------------


def test_handler_without_event_types_is_refused() -> None:
    with pytest.raises(HandlerRegistrationError, match="at least one event type") as caught:
        handler(group="alpha")
    assert isinstance(caught.value, EventsConfigurationError)
    assert isinstance(caught.value, ImproperlyConfigured)


@pytest.mark.parametrize("group", ["", "has space", "x" * 101, "-leading", 5, None])
def test_handler_with_invalid_group_name_is_refused(group: Any) -> None:
    with pytest.raises(HandlerRegistrationError, match="Invalid group name") as caught:
        handler("test.happened", group=group)
    assert repr(group)[:20] in str(caught.value)


@pytest.mark.parametrize("max_attempts", [0, -1, "3", 1.5])
def test_handler_with_invalid_max_attempts_is_refused(max_attempts: Any) -> None:
    with pytest.raises(HandlerRegistrationError, match="max_attempts must be a positive int"):
        handler("test.happened", group="alpha", max_attempts=max_attempts)


@pytest.mark.parametrize(
    "option", [{"max_attempts": True}, {"backoff_base": True}, {"backoff_max": float("nan")}]
)
def test_handler_with_boolean_or_nan_option_is_refused(option: dict[str, Any]) -> None:
    with pytest.raises(HandlerRegistrationError, match=next(iter(option))):
        handler("test.happened", group="alpha", **option)


@pytest.mark.parametrize("option", ["backoff_base", "backoff_max"])
def test_handler_with_negative_backoff_is_refused(option: str) -> None:
    with pytest.raises(HandlerRegistrationError, match=option):
        handler("test.happened", group="alpha", **{option: -1})


def test_handler_with_invalid_event_type_is_refused_before_registering_any(
    restored_registry: Registry,
) -> None:
    before = list(restored_registry)
    with pytest.raises(InvalidEventType):

        @handler("settings.checked", "SettingsChecked", group="settings-test")
        def on_checked(event: Any) -> None:
            pass

    assert list(restored_registry) == before


def test_second_function_for_the_same_group_and_type_is_refused(
    restored_registry: Registry,
) -> None:
    @handler("settings.checked", group="settings-test")
    def first(event: Any) -> None:
        pass

    with pytest.raises(HandlerRegistrationError) as caught:

        @handler("settings.checked", group="settings-test")
        def second(event: Any) -> None:
            pass

    message = str(caught.value)
    assert "'settings-test'" in message
    assert "'settings.checked'" in message
    assert first.__qualname__ in message
    assert "<locals>.second" in message
    registered = restored_registry.get("settings-test", "settings.checked")
    assert registered is not None
    assert registered.func is first


def test_same_function_may_register_again(restored_registry: Registry) -> None:
    def on_checked(event: Any) -> None:
        pass

    handler("settings.checked", group="settings-test")(on_checked)
    handler("settings.checked", group="settings-test")(on_checked)  # e.g. a module re-import
    registered = restored_registry.get("settings-test", "settings.checked")
    assert registered is not None
    assert registered.func is on_checked


def test_two_groups_may_handle_the_same_type(restored_registry: Registry) -> None:
    @handler("settings.checked", group="settings-a")
    def a(event: Any) -> None:
        pass

    @handler("settings.checked", group="settings-b")
    def b(event: Any) -> None:
        pass

    subscriptions = restored_registry.subscriptions(["settings-a", "settings-b"])
    assert subscriptions == [
        ("settings.checked", "settings-a", False),
        ("settings.checked", "settings-b", False),
    ]


def test_private_registry_refuses_a_second_function_for_a_slot() -> None:
    private = Registry()

    def one(event: Any) -> None:
        pass

    def two(event: Any) -> None:
        pass

    private.add(Handler(func=one, group="g", event_type="a.b"))
    with pytest.raises(HandlerRegistrationError, match=r"give .*two its own group"):
        private.add(Handler(func=two, group="g", event_type="a.b"))
    private.add(Handler(func=two, group="g", event_type="a.c"))
    assert private.groups() == ["g"]
    assert [h.func for h in private] == [one, two]


def test_restored_registry_fixture_leaves_the_test_handlers_in_place() -> None:
    # Guards the fixture above: the test app's handlers are all still registered.
    assert {"alpha", "beta", "sequence", "chain"} <= set(registry.groups())
    assert "settings-test" not in registry.groups()
