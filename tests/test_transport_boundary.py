"""The transport boundary (docs/internals.md): transports see only what the engine hands
them, a ``TransportContext``, and import no settings, registry or other engine module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.test import override_settings

from django_events.testing.contract import log_events, make_event
from django_events.transports import transports
from django_events.transports.base import TransportContext
from django_events.transports.memory import InMemoryTransport

PACKAGE = Path(__file__).resolve().parent.parent / "django_events"
TRANSPORTS = PACKAGE / "transports"
ALLOWED = {
    # what a third-party transport needs
    "django_events.transports",
    "django_events.envelope",
    "django_events.exceptions",
    "django_events.models",
    # leaf helpers that read no settings and no registry
    "django_events.stores",
    "django_events.signing",
    "django_events.text",
    # the engine's per-database SQL: a leaf module, no settings, no registry
    "django_events.engine.sql",
}
"""What a module under django_events/transports/ may import from django_events."""
HANDLER = TRANSPORTS / "__init__.py"
"""The engine's side: it reads ``TRANSPORTS`` and hands each transport its context."""
ENGINE = (
    "conf",
    "registry",
    "engine.retry",
    "subscriptions",
    "boundary",
    "engine.relay",
    "engine.worker",
    "checks",
)


def _package(path: Path) -> str:
    """The dotted package of a module under django_events/ (``django_events.transports``
    for a file elsewhere, as the lint's own test writes one)."""
    if PACKAGE not in path.parents:
        return "django_events.transports"
    return ".".join(path.parent.relative_to(PACKAGE.parent).parts)


def _is_package(module: str) -> bool:
    """Whether ``module`` is a package of django_events (its names are modules, then)."""
    return PACKAGE.parent.joinpath(*module.split(".")).is_dir()


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every django_events module ``path`` imports, deferred and type-only ones too."""
    package = _package(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if node.module is None or _is_package(module):  # from ..engine import sql
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, name) for line, name in found if name.split(".")[0] == "django_events"]


def _allowed(name: str) -> bool:
    return any(name == ok or name.startswith(ok + ".") for ok in ALLOWED)


def test_transport_modules_import_nothing_of_the_engine() -> None:
    """The lint: a deferred ``from ..registry import registry`` inside a method counts too."""
    modules = sorted(p for p in TRANSPORTS.rglob("*.py") if p != HANDLER)
    assert len(modules) >= 11
    offending = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in modules
        for line, name in _imports(path)
        if not _allowed(name)
    ]
    assert offending == [], "transports read only their TransportContext (docs/internals.md)"


def test_the_lint_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    module = tmp_path / "fake.py"
    module.write_text(
        "from ..engine import sql\nfrom .base import Transport\n"
        "def f():\n    from ..conf import get_settings\n    import django_events.registry\n"
    )
    names = [name for _, name in _imports(module)]
    assert names == [
        "django_events.engine.sql",
        "django_events.transports.base",
        "django_events.conf",
        "django_events.registry",
    ]
    assert [n for n in names if not _allowed(n)] == ["django_events.conf", "django_events.registry"]


FRESH = """
import importlib, json, pkgutil, sys
from django.conf import settings
settings.configure(INSTALLED_APPS=["django_events"], DATABASES={})
import django_events.transports as package
loaded = {}
for info in pkgutil.walk_packages(package.__path__, "django_events.transports."):
    importlib.import_module(info.name)
    name = info.name.removeprefix("django_events.transports.")
    loaded[name] = sorted(m for m in sys.modules if m.startswith("django_events."))
print(json.dumps(loaded))
"""


def _fresh(code: str) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_importing_any_transport_loads_no_engine_module() -> None:
    """In a fresh interpreter with Django configured but no app loaded: each transport
    module imports (no app registry needed) and settings, registry and the rest of the
    engine stay unloaded."""
    loaded = _fresh(FRESH)
    assert {
        "base",
        "database",
        "memory",
        "redis",
        "sqs",
        "rabbitmq",
        "rabbitmq.link",
        "redis.recovery",
        "sqs.setup",
    } <= set(loaded)
    engine = {f"django_events.{name}" for name in (*ENGINE, "models")}
    assert {name: sorted(engine & set(mods)) for name, mods in loaded.items()} == {
        name: [] for name in loaded
    }


def test_settings_and_registry_import_no_transport() -> None:
    """The cycle conf -> transports -> registry -> conf is gone, also when a changed
    setting resets what depends on it."""
    loaded = _fresh(
        "import json, sys\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['django_events'], DATABASES={})\n"
        "import django_events.conf, django_events.registry\n"
        "from django.test.utils import override_settings\n"
        "with override_settings(DJANGO_EVENTS={'BATCH_SIZE': 3}):\n"  # conf's reset runs
        "    assert django_events.conf.get_settings().batch_size == 3\n"
        "print(json.dumps({'x': sorted(m for m in sys.modules if m.startswith('django_events'))}))"
    )["x"]
    assert "django_events.conf" in loaded
    assert [m for m in loaded if m.startswith("django_events.transports")] == []


def test_the_handler_hands_each_transport_the_current_settings() -> None:
    policy = {
        "TRANSPORTS": {
            "default": {
                "BACKEND": "django_events.transports.memory.InMemoryTransport",
                "OPTIONS": {},
            }
        }
    }
    with override_settings(DJANGO_EVENTS={**policy, "BATCH_SIZE": 7, "LEASE": 12}):
        context = transports["default"].context
        assert (context.batch_size, context.lease) == (7, 12)
    with override_settings(DJANGO_EVENTS={**policy, "BATCH_SIZE": 9}):
        assert transports["default"].context.batch_size == 9


def test_a_transport_reads_its_limits_from_the_context_not_the_settings() -> None:
    """The settings allow 256 KiB; this transport was handed 10 bytes, so the event it
    stored is refused at claim, by the context's limit."""
    name = f"boundary-{uuid.uuid4().hex}"
    tight = InMemoryTransport("tight", {"name": name}, TransportContext(max_payload_bytes=10))
    tight.publish([make_event(data={"text": "x" * 100})], [("contract.happened", "g1", False)])
    try:
        [claimed] = tight.claim(["g1"], 10, 30)
        assert claimed.event is None
        assert "bytes" in (claimed.decode_error or "")
    finally:
        tight.clear()


@pytest.mark.django_db
@pytest.mark.parametrize("ordered", [True, False])
def test_redeliver_takes_ordering_from_the_handed_subscriptions(ordered: bool) -> None:
    """No handler is registered for ``g``: only the context says whether it is ordered."""
    event = make_event("boundary.keyed", key="k1")
    log_events([event])
    context = TransportContext(subscriptions=lambda: [("boundary.keyed", "g", ordered)])
    transport = InMemoryTransport("r", {"name": f"boundary-{uuid.uuid4().hex}"}, context)
    try:
        transport.redeliver(event.event_id, "g")
        transport.redeliver(event.event_id, "other")
        assert [(e.event.event_id, e.ordered) for e in transport._queue.groups["g"].values()] == [
            (event.event_id, ordered)
        ]
        assert [e.ordered for e in transport._queue.groups["other"].values()] == [False]
    finally:
        transport.clear()
