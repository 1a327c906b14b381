"""Hooks for metrics and logging. Receivers must be cheap: they run on hot paths.

- ``event_published(event, using)``: sent inside the publishing transaction, so the event
  may still roll back; count it with ``transaction.on_commit`` if that matters.
- ``event_handled(event, group, handler, attempt, duration)``: after the handler's commit.
- ``event_dead_lettered(dead_letter)``: after the dead letter is stored.
"""

from django.dispatch import Signal

event_published = Signal()
event_handled = Signal()
event_dead_lettered = Signal()
