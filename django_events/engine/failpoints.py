"""Named places where the fault-injection tests make a process die on purpose.

Set ``DJANGO_EVENTS_FAILPOINT=<name>`` (optionally ``<name>:<n>`` to die on the n-th
hit) in a worker's environment and it calls ``os._exit(77)`` there: no cleanup, no
rollback message, exactly like a kill. Unset, a hit costs one comparison.
"""

from __future__ import annotations

import os

EXIT_CODE = 77
NAMES = (
    "relay.after_take",  # rows moved in the relay's transaction, before it commits
    "relay.after_publish",  # sent to an external transport, before the outbox rows are deleted
    "worker.after_claim",  # events claimed (attempt counted), before any handler runs
    "worker.after_handler",  # handler done inside its transaction, before the commit
    "worker.after_commit",  # handler's transaction committed, before the transport ack
    "worker.mid_batch",  # after the first event of a claimed batch, before the rest
    "replay.after_batch",  # a replay batch sent and its progress saved, before the next
)

_name, _, _count = os.environ.get("DJANGO_EVENTS_FAILPOINT", "").partition(":")
_remaining = int(_count or 1)


def hit(name: str) -> None:
    global _remaining
    if name == _name:
        _remaining -= 1
        if _remaining <= 0:
            os._exit(EXIT_CODE)
