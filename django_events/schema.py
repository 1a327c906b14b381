"""Event contracts as documents: JSON Schema per type and version, AsyncAPI, snapshots.

``events_schema`` writes one JSON Schema file per declared (type, version) into a
directory that is committed with the code, plus an AsyncAPI 3.0 document. Comparing the
declarations against that snapshot finds changes that would break consumers of an
already published version; the fix is a new version with an upcaster, never an edit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .typed import TypedEvent, declarations

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_FILE = "asyncapi.json"
_SCHEMA_FILE = re.compile(r"^(?P<type>[a-z][a-z0-9_.-]*)\.v(?P<version>[1-9][0-9]*)\.schema\.json$")
_ANNOTATIONS = ("title", "description", "default", "$schema", "$id")

Schemas = dict[tuple[str, int], dict[str, Any]]
Found = tuple[str, str, bool]  # path, message, breaking


def event_schema(cls: type[TypedEvent]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one typed event's data."""
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{cls.event_type} v{cls.event_version}",
    }
    doc = (cls.__doc__ or "").strip()
    if doc:
        schema["description"] = doc
    schema.update(cls._record.schema())
    return schema


def current_schemas(classes: Iterable[type[TypedEvent]] | None = None) -> Schemas:
    """Schemas of the given classes (default: every declared one), by (type, version)."""
    found = declarations() if classes is None else list(classes)
    return {(cls.event_type, cls.event_version): event_schema(cls) for cls in found}


def file_name(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}.schema.json"


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path, schemas: Schemas, asyncapi_document: dict[str, Any]) -> list[str]:
    """Write the snapshot: one file per schema, the AsyncAPI document, and no stale schema
    files. Returns the names of the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {file_name(t, v): _dumps(s) for (t, v), s in schemas.items()}
    wanted[ASYNCAPI_FILE] = _dumps(asyncapi_document)
    changed = []
    for path in directory.iterdir():
        if _SCHEMA_FILE.match(path.name) and path.name not in wanted:
            path.unlink()
            changed.append(path.name)
    for name, text in sorted(wanted.items()):
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return sorted(changed)


def load(directory: Path) -> Schemas:
    """The schemas committed in ``directory`` (empty if it does not exist)."""
    if not directory.is_dir():
        return {}
    found: Schemas = {}
    for path in sorted(directory.iterdir()):
        match = _SCHEMA_FILE.match(path.name)
        if match:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict):
                raise ValueError(f"{path} does not hold a JSON object.")
            found[(match["type"], int(match["version"]))] = document
    return found


# --- comparing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between the snapshot and the declarations."""

    event_type: str
    version: int
    path: str
    message: str
    breaking: bool

    def __str__(self) -> str:
        where = f" field {self.path!r}" if self.path else ""
        return f"{self.event_type} v{self.version}{where}: {self.message}"


def compare(snapshot: Schemas, current: Schemas) -> list[Change]:
    """Every change from ``snapshot`` to ``current``; ``breaking`` marks those that would
    break a consumer of a version already in the snapshot (field removed, type changed,
    optional made required, new required field, version or type no longer declared)."""
    changes: list[Change] = []
    for slot in sorted(set(snapshot) | set(current)):
        event_type, version = slot
        if slot not in current:
            changes.append(Change(event_type, version, "", "no longer declared", True))
        elif slot not in snapshot:
            changes.append(Change(event_type, version, "", "new version", False))
        else:
            for path, message, breaking in _diff(snapshot[slot], current[slot], ""):
                changes.append(Change(event_type, version, path, message, breaking))
    return changes


def _strip(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip(v) for k, v in schema.items() if k not in _ANNOTATIONS}
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


def _nullable_inner(schema: dict[str, Any]) -> dict[str, Any] | None:
    options = schema.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        inner = options[0] if options[1] == {"type": "null"} else options[1]
        return inner if isinstance(inner, dict) else None
    return None


def _diff(old: Any, new: Any, path: str) -> list[Found]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new else [(path, "type changed", True)]
    if "properties" in old and "properties" in new:
        return _diff_object(old, new, path)
    if old.get("type") == "array" and new.get("type") == "array":
        return _diff(old.get("items"), new.get("items"), f"{path}[]")
    old_inner, new_inner = _nullable_inner(old), _nullable_inner(new)
    if old_inner is not None and new_inner is not None:
        return _diff(old_inner, new_inner, path)
    if isinstance(old.get("additionalProperties"), dict) and isinstance(
        new.get("additionalProperties"), dict
    ):
        return _diff(old["additionalProperties"], new["additionalProperties"], f"{path}{{}}")
    if _strip(old) != _strip(new):
        return [(path, f"type changed from {_describe(old)} to {_describe(new)}", True)]
    return []


def _diff_object(
    old: dict[str, Any], new: dict[str, Any], path: str
) -> list[tuple[str, str, bool]]:
    found: list[Found] = []
    old_props, new_props = old["properties"], new["properties"]
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    for name in sorted(set(old_props) | set(new_props)):
        where = f"{path}.{name}" if path else name
        if name not in new_props:
            found.append((where, "removed", True))
        elif name not in old_props:
            if name in new_required:
                found.append((where, "new required field", True))
            else:
                found.append((where, "new optional field", False))
        else:
            if name in new_required and name not in old_required:
                found.append((where, "optional made required", True))
            elif name in old_required and name not in new_required:
                found.append((where, "required made optional", False))
            found.extend(_diff(old_props[name], new_props[name], where))
    return found


def _describe(schema: dict[str, Any]) -> str:
    text = json.dumps(_strip(schema), sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def breaking_changes(
    directory: Path, classes: Iterable[type[TypedEvent]] | None = None
) -> list[Change]:
    """Breaking changes of the declarations against the snapshot in ``directory``."""
    return [c for c in compare(load(directory), current_schemas(classes)) if c.breaking]


# --- AsyncAPI -------------------------------------------------------------------------------


def asyncapi(
    schemas: Schemas,
    handled: Iterable[tuple[str, str]] = (),
    *,
    title: str = "Events",
    version: str | None = None,
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document: one channel per event type (its address is the type
    name), one message per version, a ``send`` operation per declared type and a
    ``receive`` operation per (type, group) handled here. ``handled`` pairs are
    ``(event_type, group)``; a handled type without a declaration gets a free-form payload."""
    handled = sorted(set(handled))
    types = sorted({t for t, _ in schemas} | {t for t, _ in handled})
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type in types:
        channel_messages = {}
        versions = sorted(v for t, v in schemas if t == event_type)
        for v in versions or [0]:  # 0: handled here, but not declared
            key = f"{event_type}.v{v}" if v else event_type
            payload = (
                {k: s for k, s in schemas[(event_type, v)].items() if k != "$schema"}
                if v
                else {"type": "object"}
            )
            messages[key] = {
                "name": event_type,
                "title": f"{event_type} v{v}" if v else event_type,
                "contentType": "application/json",
                "payload": payload,
            }
            if v:
                messages[key]["x-dataversion"] = v
            channel_messages[key] = {"$ref": f"#/components/messages/{key}"}
        channels[event_type] = {"address": event_type, "messages": channel_messages}
        refs = [{"$ref": f"#/channels/{event_type}/messages/{m}"} for m in channel_messages]
        if versions:
            operations[f"send.{event_type}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{event_type}"},
                "messages": refs,
            }
        for handled_type, group in handled:
            if handled_type == event_type:
                operations[f"receive.{event_type}.{group}"] = {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{event_type}"},
                    "messages": refs,
                    "summary": f"Consumer group {group}",
                }
    if version is None:
        digest = hashlib.sha256(_dumps({"c": channels, "m": messages}).encode()).hexdigest()
        version = f"0.0.0+{digest[:12]}"
    return {
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
