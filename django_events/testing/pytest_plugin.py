"""pytest fixtures for projects that use django-events (registered as a pytest11 plugin).

Fixtures import Django lazily, so this plugin is harmless in projects without Django.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def captured_events(db: Any) -> Iterator[Any]:
    """Events published during the test that were not rolled back."""
    from . import capture_events

    with capture_events() as captured:
        yield captured


@pytest.fixture
def deliver_events(db: Any) -> Callable[..., int]:
    """Relay and run handlers now: ``deliver_events()`` or ``deliver_events(["emails"])``."""
    from . import deliver

    return deliver
