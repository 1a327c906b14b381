"""Helpers for testing code that publishes and handles events.

- ``capture_events()``: what a block published, counting only what was not rolled back.
- ``deliver()``: relay and run handlers now, in this process, until nothing is left.
- ``django_events.testing.pytest_plugin``: the ``captured_events`` and ``deliver_events``
  fixtures (loaded automatically by pytest).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from ..envelope import Event
from ..signals import event_published


class CapturedEvents:
    """Events published inside ``capture_events()``, in publish order.

    An event counts once its transaction committed, or while it is still pending in an
    enclosing transaction that has not rolled it back (as in a ``TestCase``).
    """

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._seen: list[tuple[Event, Any]] = []
        self._committed: set[int] = set()

    def _record(self, event: Event) -> None:
        index = len(self._seen)

        def committed() -> None:
            self._committed.add(index)

        self._seen.append((event, committed))
        if self._connection.in_atomic_block:
            self._connection.on_commit(committed)
        else:
            committed()

    @property
    def events(self) -> list[Event]:
        pending = {entry[1] for entry in self._connection.run_on_commit}
        return [
            event
            for index, (event, callback) in enumerate(self._seen)
            if index in self._committed or callback in pending
        ]

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
    """Record the events published in the block on ``using`` that commit (or may still)."""
    connection = connections[using]
    captured = CapturedEvents(connection)

    def on_publish(sender: Any, event: Event, using: str, **kwargs: Any) -> None:
        if using == connection.alias:
            captured._record(event)

    event_published.connect(on_publish, weak=False)
    try:
        yield captured
    finally:
        event_published.disconnect(on_publish)


def deliver(groups: Sequence[str] | None = None, *, relay: bool = True) -> int:
    """Relay and handle everything available now, in this process; return how many handled.

    Works inside ``TestCase`` too: the worker sees the test transaction's own writes, and
    each handler runs in a savepoint. Retries due later are left for a later call.
    """
    from ..engine.worker import Worker

    worker = Worker(groups, relay=relay)
    while worker.step():
        pass
    return worker.handled
