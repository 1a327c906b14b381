"""Helpers for testing code that publishes and handles events.

- ``capture_events()``: what a block published, counting only what was not rolled back.
- ``deliver()``: relay and run handlers now, in this process, until nothing is left.
- ``django_events.testing.pytest_plugin``: the ``captured_events`` and ``deliver_events``
  fixtures (loaded automatically by pytest).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from ..envelope import Event
from ..signals import event_published


@dataclass
class CapturedEvents:
    """Events published inside ``capture_events()``, in publish order."""

    _seen: list[tuple[Event, object]] = field(default_factory=list)
    _committed: set[object] = field(default_factory=set)
    _closed: bool = False

    @property
    def events(self) -> list[Event]:
        return [event for event, marker in self._seen if marker in self._committed]

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.events]

    def of_type(self, event_type: str) -> list[Event]:
        return [event for event in self.events if event.type == event_type]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def assert_published(self, event_type: str, **data: Any) -> Event:
        """The one event of ``event_type`` whose data contains ``data``; fails clearly otherwise."""
        matches = [
            e for e in self.of_type(event_type) if all(e.data.get(k) == v for k, v in data.items())
        ]
        if len(matches) != 1:
            raise AssertionError(
                f"Expected one {event_type!r} event with {data}, found {len(matches)}; "
                f"published: {self.types}"
            )
        return matches[0]


@contextmanager
def capture_events(using: str = DEFAULT_DB_ALIAS) -> Iterator[CapturedEvents]:
    """Record events published in the block that commit (or would, in a TestCase).

    An event counts once its transaction commits. Inside a test wrapped in a transaction
    that never commits (``TestCase``), events still pending at the end of the block count
    too, unless a savepoint around them rolled back.
    """
    captured = CapturedEvents()
    connection = connections[using]

    def on_publish(sender: Any, event: Event, using: str, **kwargs: Any) -> None:
        if using != connection.alias:
            return
        marker = object()
        captured._seen.append((event, marker))

        def committed(marker: object = marker) -> None:
            captured._committed.add(marker)

        connection.on_commit(committed) if connection.in_atomic_block else committed()
        if connection.in_atomic_block:
            pending[marker] = committed

    pending: dict[object, Any] = {}
    event_published.connect(on_publish, weak=False)
    try:
        yield captured
    finally:
        event_published.disconnect(on_publish)
        alive = {entry[1] for entry in connection.run_on_commit}
        for marker, callback in pending.items():
            if callback in alive:
                captured._committed.add(marker)


def deliver(groups: Sequence[str] | None = None, *, relay: bool = True) -> int:
    """Relay and handle everything available now, in this process; return how many handled.

    Works inside ``TestCase`` too: the worker sees the test transaction's own writes, and
    each handler runs in a savepoint. Retries due later are left for a later call.
    """
    from ..worker import Worker

    worker = Worker(groups, relay=relay)
    while worker.step():
        pass
    return worker.handled
