"""System checks: each misconfiguration is caught at start-up with a stable id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.checks import ERROR, WARNING, CheckMessage
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings

from django_events.checks import check_events
from django_events.conf import DEFAULT_TRANSPORT
from django_events.registry import registry
from tests.testapp import events as test_handlers


def groups_of_test_app() -> dict[str, dict[str, Any]]:
    """``GROUPS`` configuring every group the test app's handlers use."""
    return {h.group: {} for h in registry if h.func.__module__ == test_handlers.__name__}


@pytest.fixture
def checked() -> Any:
    """Runs the django-events checks under ``DJANGO_EVENTS=raw``; returns the messages.
    A ``raw`` dict without ``TRANSPORTS`` names the default one, as a project should
    (W007), unless ``named=False``."""

    def run(raw: Any, *, named: bool = True) -> list[CheckMessage]:
        if named and isinstance(raw, dict) and "TRANSPORTS" not in raw:
            raw = {**backend(DEFAULT_TRANSPORT), **raw}
        with override_settings(DJANGO_EVENTS=raw):
            return check_events()

    return run


@pytest.fixture
def unrelated_handlers_only() -> Iterator[None]:
    """Hide handlers other test modules may have registered: only the test app's count."""
    saved = list(registry)
    registry.clear()
    for entry in saved:
        if entry.func.__module__ == test_handlers.__name__:
            registry.add(entry)
    yield
    registry.clear()
    for entry in saved:
        registry.add(entry)


def backend(path: str, **options: Any) -> dict[str, Any]:
    return {"TRANSPORTS": {"default": {"BACKEND": path, "OPTIONS": options}}}


def ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id or "" for m in messages]


# --- the configuration the tests run with -----------------------------------------------


def test_test_configuration_passes_every_check(checked: Any) -> None:
    assert check_events() == []
    assert checked({}) == []


# --- W007 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}, {"GROUPS": {}}])
def test_no_transport_named_is_w007_naming_both_choices(checked: Any, raw: Any) -> None:
    [message] = checked(raw, named=False)
    assert message.id == "django_events.W007"
    assert message.level == WARNING
    assert DEFAULT_TRANSPORT in message.msg
    assert "django_events.transports.log.LogTransport" in message.hint
    assert "django_events.transports.database.DatabaseTransport" in message.hint
    assert "move_transport" in message.hint


@pytest.mark.parametrize("path", ["django_events.transports.log.LogTransport", DEFAULT_TRANSPORT])
def test_a_named_transport_silences_w007(checked: Any, path: str) -> None:
    assert "django_events.W007" not in ids(checked(backend(path)))


# Django 6's `check` reads the database's features (JSONField support on SQLite).
@pytest.mark.django_db
def test_check_command_passes_with_a_valid_configuration() -> None:
    # Django 5.2 runs the database's checks only when asked (as `migrate` does), 6.x always.
    for args in ((), ("--database", "default")):
        out, err = StringIO(), StringIO()
        call_command("check", *args, stdout=out, stderr=err)
        assert "no issues" in out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_check_command_runs_the_events_checks() -> None:
    with (
        override_settings(DJANGO_EVENTS={"MAX_ATEMPTS": 3}),
        pytest.raises(SystemCheckError) as caught,
    ):
        call_command("check", stdout=StringIO(), stderr=StringIO())
    assert "django_events.E001" in str(caught.value)
    assert "'MAX_ATEMPTS'" in str(caught.value)


# --- E001 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"MAX_ATEMPTS": 3}, "'MAX_ATEMPTS'"),
        ({"LEASE": "30"}, "'LEASE'"),
        ({"GROUPS": {"alpha": {"RETRIES": 1}}}, "'RETRIES'"),
        ({"TRANSPORTS": {}}, "'default'"),
    ],
)
def test_invalid_settings_are_e001_naming_the_key(checked: Any, raw: Any, named: str) -> None:
    messages = checked(raw)
    assert ids(messages) == ["django_events.E001"]
    assert messages[0].level == ERROR
    assert named in messages[0].msg


# --- E002 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "tests.no_such_module.SomeTransport",
        "tests.fake_transports.NoSuchTransport",
        "NoDots",
    ],
)
def test_backend_that_cannot_be_imported_is_e002(checked: Any, path: str) -> None:
    messages = checked(backend(path))
    assert ids(messages) == ["django_events.E002"]
    assert f"cannot import {path!r}" in messages[0].msg
    assert "['default']['BACKEND']" in messages[0].msg


@pytest.mark.parametrize(
    "path", ["tests.fake_transports.NotATransport", "django_events.transports.base.Outgoing"]
)
def test_backend_that_is_not_a_transport_is_e002(checked: Any, path: str) -> None:
    messages = checked(backend(path))
    assert ids(messages) == ["django_events.E002"]
    assert "is not a django_events Transport subclass" in messages[0].msg
    assert repr(path) in messages[0].msg


def test_unknown_transport_option_is_e002_naming_it(checked: Any) -> None:
    messages = checked(backend(DEFAULT_TRANSPORT, notfy=False))
    assert ids(messages) == ["django_events.E002"]
    assert "'notfy'" in messages[0].msg


# --- E003 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "dependency", "extra"),
    [
        ("tests.fake_transports.needs_boto3", "boto3", "aws"),
        ("tests.fake_transports.needs_redis", "redis", "redis"),
    ],
)
def test_transport_missing_an_optional_dependency_is_e003_naming_the_extra(
    checked: Any, module: str, dependency: str, extra: str
) -> None:
    messages = checked(backend(f"{module}.Transport"))
    assert ids(messages) == ["django_events.E003"]
    assert f"{dependency!r}" in messages[0].msg
    assert messages[0].hint == f"pip install 'django-events-outbox[{extra}]'"


def test_import_error_of_an_unrelated_module_is_e002_not_e003(checked: Any) -> None:
    messages = checked(backend("tests.no_such_module.SqsTransport"))
    assert ids(messages) == ["django_events.E002"]


# --- E004 -----------------------------------------------------------------------------------


def test_database_transport_on_an_unknown_database_is_e004(checked: Any) -> None:
    messages = checked(backend(DEFAULT_TRANSPORT, database="queue"))
    assert "django_events.E004" in ids(messages)
    assert "'queue'" in messages[ids(messages).index("django_events.E004")].msg


# --- E006 and W002 --------------------------------------------------------------------------


def test_handler_for_a_group_missing_from_groups_is_e006(
    checked: Any, unrelated_handlers_only: None
) -> None:
    groups = groups_of_test_app()
    del groups["chain"]
    messages = checked({"GROUPS": groups})
    assert ids(messages) == ["django_events.E006"]
    error = messages[0]
    assert error.level == ERROR
    assert error.obj == "tests.testapp.events.chain", "the dotted name, not a repr"
    assert "0x" not in str(error)
    assert "group 'chain'" in error.msg
    assert "'test.chained'" in error.msg
    assert ", ".join(sorted(groups)) in (error.hint or "")


def test_without_groups_setting_any_handler_group_is_fine(
    checked: Any, unrelated_handlers_only: None
) -> None:
    assert checked({"MAX_ATTEMPTS": 3}) == []


def test_configured_group_without_a_handler_is_w002(
    checked: Any, unrelated_handlers_only: None
) -> None:
    messages = checked({"GROUPS": {**groups_of_test_app(), "ghost": {"MAX_ATTEMPTS": 2}}})
    assert ids(messages) == ["django_events.W002"]
    assert messages[0].level == WARNING
    assert "'ghost'" in messages[0].msg
    assert not messages[0].is_serious()


def test_every_configured_group_with_a_handler_passes(
    checked: Any, unrelated_handlers_only: None
) -> None:
    assert checked({"GROUPS": groups_of_test_app()}) == []


# --- E007 -----------------------------------------------------------------------------------


def test_outbox_database_not_in_databases_is_e007(checked: Any) -> None:
    messages = checked({"OUTBOX_DATABASES": ["default", "reports"]})
    assert "django_events.E007" in ids(messages)
    assert "'reports'" in messages[ids(messages).index("django_events.E007")].msg


# --- E009 -----------------------------------------------------------------------------------


def test_outbox_database_the_database_transport_cannot_read_is_e009(checked: Any) -> None:
    messages = checked({"OUTBOX_DATABASES": ["default", "reports"]})
    assert sorted(ids(messages)) == ["django_events.E007", "django_events.E009"]
    error = messages[ids(messages).index("django_events.E009")]
    assert "'reports'" in error.msg
    assert "'default'" in error.msg


# --- E008 -----------------------------------------------------------------------------------


def test_ordered_handler_on_a_transport_without_ordering_is_e008(
    checked: Any, unrelated_handlers_only: None
) -> None:
    messages = checked(backend("tests.fake_transports.UnorderedTransport"))
    assert ids(messages) == ["django_events.E008"]
    assert messages[0].obj == "tests.testapp.events.sequence"
    assert "UnorderedTransport" in messages[0].msg
    assert "ordered=True" in messages[0].msg


def test_ordered_handler_on_the_database_transport_passes(
    checked: Any, unrelated_handlers_only: None
) -> None:
    assert registry.get("sequence", "test.sequenced").ordered  # the premise
    assert checked(backend(DEFAULT_TRANSPORT)) == []


# --- migrations -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_models_and_migrations_agree() -> None:
    out = StringIO()
    try:
        call_command(
            "makemigrations", "django_events", check=True, dry_run=True, stdout=out, stderr=out
        )
    except SystemExit as exc:  # --check exits 1 when a migration is missing
        pytest.fail(f"django_events needs a new migration:\n{out.getvalue()} (exit {exc.code})")
    assert "No changes detected in app 'django_events'" in out.getvalue()


def _indexes(table: str) -> set[str]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    return {
        name
        for name, info in found.items()
        if info["index"] and not info["primary_key"] and not name.startswith("sqlite_autoindex")
    }


def _index_columns(table: str) -> list[list[str]]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    return sorted(info["columns"] for info in found.values() if info["index"])


NOW = "2026-01-01T00:00:00+00:00"


@pytest.mark.django_db(transaction=True)
def test_0013_swaps_the_indexes_both_ways_on_a_filled_database() -> None:
    # docs/internals.md, "Upgrading": on PostgreSQL CONCURRENTLY, elsewhere index by index.
    log, delivery = "django_events_event", "django_events_delivery"
    call_command("migrate", "django_events", "0012_moves", verbosity=0)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO django_events_event (id, position, type, version, key, data, "
                "metadata, occurred_at, source, recorded_at) VALUES "
                "(%s, 1, 'test.happened', 1, NULL, '{}', '{}', %s, '', %s), "
                "(%s, 2, 'test.happened', 1, 'k', '{}', '{}', %s, '', %s)",
                [uuid.uuid4().hex, NOW, NOW, uuid.uuid4().hex, NOW, NOW],
            )
        old = _indexes(log)
        assert "django_events_dlv_held" in _indexes(delivery)
        assert sum(1 for name in old if name.startswith(f"{log}_type_")) >= 1
        call_command("migrate", "django_events", verbosity=0)
        new = _indexes(log)
        assert {"django_events_event_type", "django_events_event_key"} <= new
        assert not {name for name in new if name.startswith((f"{log}_type_", f"{log}_key_"))}
        assert ["type"] in _index_columns(log) and ["key"] in _index_columns(log)
        assert "django_events_dlv_held" not in _indexes(delivery)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [delivery]
                )
                assert cursor.fetchone()[0] == ["fillfactor=50"]
        call_command("migrate", "django_events", "0012_moves", verbosity=0)
        assert _indexes(log) == old, "backwards restores the indexes of 0012"
        assert "django_events_dlv_held" in _indexes(delivery)
    finally:
        call_command("migrate", verbosity=0)
