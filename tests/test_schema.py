"""JSON Schema per typed event version, AsyncAPI, and the snapshot check (command and W021)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import types
import uuid
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command
from django.test import override_settings

from django_events import TypedEvent, typed, versions
from django_events.checks import check_contracts
from django_events.conf import get_settings
from django_events.schema import asyncapi, compare, current_schemas, event_schema
from tests.testapp.typed_events import ParcelShipped

CHANGED = "test.contract_changed"


@pytest.fixture
def contracts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Declarations made in the test are forgotten after it."""
    monkeypatch.setattr(typed, "_declared", dict(typed._declared))
    monkeypatch.setattr(versions, "_known", {k: set(v) for k, v in versions._known.items()})
    monkeypatch.setattr(versions, "_current", dict(versions._current))
    monkeypatch.setattr(versions, "_upcasters", dict(versions._upcasters))
    yield


def declare(fields: dict[str, Any], version: int = 1, doc: str = "") -> type[TypedEvent]:
    """(Re)declare ``test.contract_changed`` at ``version`` with ``fields``: name -> type,
    or name -> (type, default) for an optional field."""
    typed._declared.pop((CHANGED, version), None)

    def body(namespace: dict[str, Any]) -> None:
        namespace["__module__"] = __name__
        namespace["__doc__"] = doc or None
        namespace["__annotations__"] = {}
        for name, spec in fields.items():
            kind, *default = spec if isinstance(spec, tuple) else (spec,)
            namespace["__annotations__"][name] = kind
            if default:
                namespace[name] = default[0]

    return types.new_class(
        "ContractChanged", (TypedEvent,), {"type": CHANGED, "version": version}, body
    )


def snapshot(tmp_path: Path) -> Path:
    call_command("events_schema", output=str(tmp_path), stdout=StringIO())
    return tmp_path


def check(tmp_path: Path) -> tuple[int, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("events_schema", "--check", output=str(tmp_path), stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


@dataclasses.dataclass(frozen=True)
class Address:
    city: str


@dataclasses.dataclass(frozen=True)
class AddressV2:
    city: int


# --- JSON Schema ----------------------------------------------------------------------------


def test_schema_of_a_typed_event_describes_every_supported_type():
    schema = event_schema(ParcelShipped)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "test.parcel_shipped v3"
    assert schema["description"].startswith("A parcel left the warehouse")
    assert schema["required"] == ["parcel_id", "weight_kg", "carrier"]
    assert schema["properties"] == {
        "parcel_id": {"type": "integer"},
        "weight_kg": {"type": "string", "format": "decimal"},
        "carrier": {"type": "string"},
        "shipped_at": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["sku", "quantity"],
            },
        },
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }


def test_published_data_validates_against_its_schema_and_bad_data_does_not(contracts: None):
    kinds = declare(
        {
            "when": dt.datetime,
            "day": dt.date,
            "ref": uuid.UUID,
            "ratio": float,
            "ok": bool,
            "total": Decimal,
        }
    )
    validator = jsonschema.Draft202012Validator(
        event_schema(kinds), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.check_schema(event_schema(kinds))
    now = dt.datetime.now(dt.timezone.utc)
    data = kinds(
        when=now, day=now.date(), ref=uuid.uuid4(), ratio=0.5, ok=True, total=Decimal("1.5")
    ).to_data()
    validator.validate(data)
    assert kinds.from_data(data).to_data() == data
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**data, "ratio": "half"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({k: v for k, v in data.items() if k != "ok"})


# --- the snapshot ---------------------------------------------------------------------------


def test_events_schema_writes_one_file_per_version_and_an_asyncapi_document(tmp_path: Path):
    snapshot(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "asyncapi.json" in names
    for version in (1, 2, 3):
        assert f"test.parcel_shipped.v{version}.schema.json" in names
    written = json.loads((tmp_path / "test.parcel_shipped.v3.schema.json").read_text())
    assert written == event_schema(ParcelShipped)
    out = StringIO()
    call_command("events_schema", output=str(tmp_path), stdout=out)
    assert "is up to date" in out.getvalue(), "writing is deterministic"


def test_writing_removes_schema_files_no_longer_declared_and_nothing_else(
    tmp_path: Path, contracts: None
):
    declare({"a": int}, version=1)
    snapshot(tmp_path)
    (tmp_path / "README.md").write_text("ours")
    assert (tmp_path / f"{CHANGED}.v1.schema.json").exists()
    typed._declared.pop((CHANGED, 1))
    snapshot(tmp_path)
    assert not (tmp_path / f"{CHANGED}.v1.schema.json").exists()
    assert (tmp_path / "README.md").read_text() == "ours"


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"a": int, "b": str}, {"a": int}, "field 'b': removed"),
        ({"a": int}, {"a": str}, "field 'a': type changed from"),
        ({"a": int}, {"a": int | None}, "field 'a': type changed from"),
        ({"a": int, "b": (str, "x")}, {"a": int, "b": str}, "field 'b': optional made required"),
        ({"a": int}, {"a": int, "c": int}, "field 'c': new required field"),
        ({"a": list[Address]}, {"a": list[AddressV2]}, "field 'a[].city': type changed"),
        ({"a": dict[str, int]}, {"a": dict[str, str]}, "field 'a{}': type changed"),
    ],
    ids=["removed", "type", "nullable", "made-required", "new-required", "nested", "dict"],
)
def test_check_fails_on_each_breaking_change_without_a_version_bump(
    tmp_path: Path, contracts: None, before: Any, after: Any, expected: str
):
    declare(before)
    snapshot(tmp_path)
    declare(after)
    code, output = check(tmp_path)
    assert code == 1, output
    assert f"Breaking: {CHANGED} v1 {expected}" in output
    with override_settings(DJANGO_EVENTS={"SCHEMA_DIR": str(tmp_path)}):
        warnings = check_contracts(get_settings())
    assert [w.id for w in warnings] == ["django_events.W021"]
    assert expected in warnings[0].msg


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"a": int}, {"a": int, "note": (str | None, None)}),
        ({"a": int}, {"a": (int, 0)}),
        ({"a": list[Address]}, {"a": list[Address], "b": (bool, False)}),
    ],
    ids=["new-optional", "made-optional", "same"],
)
def test_check_passes_additive_changes(tmp_path: Path, contracts: None, before: Any, after: Any):
    declare(before, doc="First words.")
    snapshot(tmp_path)
    declare(after, doc="Better words.")
    code, output = check(tmp_path)
    assert code == 0, output
    assert "Breaking" not in output
    with override_settings(DJANGO_EVENTS={"SCHEMA_DIR": str(tmp_path)}):
        assert check_contracts(get_settings()) == []


def test_a_breaking_change_as_a_new_version_passes(tmp_path: Path, contracts: None):
    declare({"a": int, "b": str})
    snapshot(tmp_path)
    declare({"a": str}, version=2)

    @versions.upcaster(CHANGED, from_version=1)
    def stringify(data: dict[str, Any]) -> dict[str, Any]:
        return {"a": str(data["a"])}

    code, output = check(tmp_path)
    assert code == 0, output
    assert f"Compatible: {CHANGED} v2: new version" in output


def test_a_removed_version_is_breaking(tmp_path: Path, contracts: None):
    declare({"a": int})
    snapshot(tmp_path)
    typed._declared.pop((CHANGED, 1))
    code, output = check(tmp_path)
    assert (code, f"Breaking: {CHANGED} v1: no longer declared" in output) == (1, True)


def test_check_without_a_snapshot_fails_and_the_system_check_says_so(tmp_path: Path):
    code, output = check(tmp_path / "missing")
    assert code == 1 and "No schema snapshot" in output
    with override_settings(DJANGO_EVENTS={"SCHEMA_DIR": str(tmp_path / "missing")}):
        [warning] = check_contracts(get_settings())
    assert warning.id == "django_events.W021" and "No schema snapshot" in warning.msg


def test_events_schema_needs_a_directory():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="SCHEMA_DIR"):
        call_command("events_schema", stdout=StringIO())


def test_compare_reports_nothing_for_identical_schemas():
    schemas = current_schemas()
    assert compare(schemas, schemas) == []


# --- AsyncAPI -------------------------------------------------------------------------------


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_asyncapi_document_has_a_channel_per_type_and_resolvable_references():
    document = asyncapi(
        current_schemas([ParcelShipped]),
        [("test.parcel_shipped", "typed"), ("test.happened", "alpha")],
        title="Tests",
        version="1.2.3",
    )
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "Tests", "version": "1.2.3"}
    channel = document["channels"]["test.parcel_shipped"]
    assert channel["address"] == "test.parcel_shipped"
    message = document["components"]["messages"]["test.parcel_shipped.v3"]
    assert message["payload"]["properties"]["carrier"] == {"type": "string"}
    assert "$schema" not in message["payload"]
    ops = document["operations"]
    assert ops["send.test.parcel_shipped"]["action"] == "send"
    assert ops["receive.test.parcel_shipped.typed"]["action"] == "receive"
    assert ops["receive.test.happened.alpha"]["action"] == "receive"
    assert "send.test.happened" not in ops, "undeclared: we only know someone handles it"
    refs = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert len(refs) >= 6
    for ref in refs:
        assert isinstance(_resolve(document, ref), dict), ref
    assert json.loads(json.dumps(document)) == document
