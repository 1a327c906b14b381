"""Dead-letter triage: fingerprints, retry, discard and redirect, whatever the transport.

The admin and the ``dead_letters`` command both act through this module, so a retry or
a discard is the same operation, with the same audit trail, from either side. Only open
dead letters are acted on; the rest are reported as skipped. A retry re-runs the
handler and its side effects, so callers check ``django_events.retry_deadletter``
before calling (see :func:`check_permission`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import failure_counts
from .engine.relay import QUARANTINE_GROUP
from .models import DeadLetter, EventRecord
from .transports import transports

logger = logging.getLogger("django_events.triage")

RETRY = "retry"
DISCARD = "discard"
REDIRECT = "redirect"
PERMISSIONS = {
    RETRY: "django_events.retry_deadletter",
    DISCARD: "django_events.discard_deadletter",
    REDIRECT: "django_events.redirect_deadletter",
}
_VERBS = {RETRY: "Retried", DISCARD: "Discarded", REDIRECT: "Redirected"}
VIEW_PAYLOAD = "django_events.view_payload"

_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+, in (?P<func>.+)$')
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get("stdlib"), paths.get("platstdlib"), _PACKAGE_DIR}
    return tuple(os.path.normcase(os.path.abspath(d)) + os.sep for d in dirs if d)


def _is_library(path: str) -> bool:
    if path.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return True
    normal = os.path.normcase(os.path.abspath(path))
    if f"{os.sep}site-packages{os.sep}" in normal or f"{os.sep}dist-packages{os.sep}" in normal:
        return True
    return normal.startswith(_library_dirs())


def _relative(path: str) -> str:
    """The path as imported (relative to its ``sys.path`` root): stable across checkouts."""
    normal = os.path.abspath(path)
    roots = sorted((os.path.abspath(p) for p in sys.path if p), key=len, reverse=True)
    for root in roots:
        if normal.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(normal, root).replace(os.sep, "/")
    return "/".join(normal.split(os.sep)[-2:])  # not importable from here: dir/file.py


def innermost_project_frame(traceback: str) -> str:
    """``module/path.py:function`` of the last frame outside the stdlib, site-packages and
    django_events; ``""`` when there is none (no traceback, or only library frames)."""
    found = ""
    for line in traceback.splitlines():
        match = _FRAME.match(line)
        if match and not _is_library(match["path"]):
            found = f"{_relative(match['path'])}:{match['func'].strip()}"
    return found


def fingerprint(error_class: str, handler: str, traceback: str) -> str:
    """A short, stable hash of what went wrong where: failures with equal fingerprints
    almost certainly share one cause and one fix.

    Line numbers and messages are left out, so a redeploy that shifts lines, or an error
    message carrying an id, does not split a group.
    """
    frame = innermost_project_frame(traceback)
    digest = hashlib.sha256(f"{error_class}\n{handler}\n{frame}".encode()).hexdigest()
    return digest[:16]


def event_of(dead: DeadLetter) -> EventRecord | None:
    """The dead letter's event, or None once it has left the event log (retention)."""
    try:
        return dead.event
    except EventRecord.DoesNotExist:
        return None


@dataclass
class Outcome:
    """What a retry or discard did: the dead letters acted on and those left alone."""

    action: str
    done: list[DeadLetter] = field(default_factory=list)
    skipped: list[DeadLetter] = field(default_factory=list)
    target: str | None = None

    @property
    def message(self) -> str:
        text = f"{_VERBS[self.action]} {len(self.done)} dead letter"
        text += "s" if len(self.done) != 1 else ""
        if self.target:
            text += f" to group {self.target}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} that were no longer open"
        return text + "."


def may_view_payload(user: Any) -> bool:
    """Whether ``user`` may read payloads, metadata, tracebacks and error text.

    Error messages and a delivery's last error count as payload: they often echo a
    payload value (``KeyError: 'alice@example.com'``). Without the permission, triage
    shows the error class only.
    """
    return user is not None and user.is_active and user.has_perm(VIEW_PAYLOAD)


def check_permission(user: Any, action: str) -> None:
    """Raise ``PermissionDenied`` unless ``user`` may ``action`` (``retry``, ``discard`` or
    ``redirect``)."""
    if user is None or not user.is_active or not user.has_perm(PERMISSIONS[action]):
        raise PermissionDenied(f"needs the {PERMISSIONS[action]} permission")


def retry(
    dead_letters: Iterable[DeadLetter] | QuerySet[DeadLetter],
    user: Any,
    reason: str = "",
    *,
    actor: str | None = None,
) -> Outcome:
    """Deliver each open dead letter's event again to its one group, attempts reset.

    The event keeps its id, so the group's inbox still turns a second success into a
    no-op. With a transport that keeps its queue in the dead letters' database, the
    redelivery and the state change commit together; otherwise (a broker) each event is
    redelivered first and marked retried right after, so a crash in between leaves it
    open, to be retried again, rather than lost.
    """
    return _resolve(RETRY, dead_letters, user, reason, actor)


def discard(
    dead_letters: Iterable[DeadLetter] | QuerySet[DeadLetter],
    user: Any,
    reason: str,
    *,
    actor: str | None = None,
) -> Outcome:
    """Mark open dead letters resolved without running anything; ``reason`` is kept."""
    if not reason.strip():
        raise ValueError("A discard needs a reason.")
    return _resolve(DISCARD, dead_letters, user, reason, actor)


def redirect_targets(event_type: str) -> list[str]:
    """The groups, declared by any service, that subscribe to ``event_type``."""
    from .subscriptions import fan_out

    return sorted(
        {group for type_, group, _ in fan_out(transports["default"]) if type_ == event_type}
    )


def redirect(
    dead_letters: Iterable[DeadLetter] | QuerySet[DeadLetter],
    user: Any,
    group: str,
    reason: str = "",
    *,
    actor: str | None = None,
) -> Outcome:
    """Deliver each open dead letter's event to ``group`` instead of its own (a group
    renamed or split), with the same event id; its own group gives it up.

    ``group`` must subscribe to each event's type (``LookupError`` otherwise, and on a
    transport that commits with the dead letters, none is redirected). The dead letter is
    marked retried, its reason naming the group; if that group's handler fails too, the
    new dead letter is that group's.
    """
    return _resolve(REDIRECT, dead_letters, user, reason, actor, target=group)


def _resolve(
    action: str,
    dead_letters: Iterable[DeadLetter] | QuerySet[DeadLetter],
    user: Any,
    reason: str,
    actor: str | None,
    target: str | None = None,
) -> Outcome:
    """``user`` is a Django user (checked, and written to the admin log) or None, when a
    shell acts as ``actor`` (the command line without ``--user``)."""
    if user is not None:
        check_permission(user, action)
    elif not actor:
        raise PermissionDenied("A triage action needs a user, or an actor for the log.")
    transport = transports["default"]
    using = transport.database
    ids = [dl.pk for dl in dead_letters]
    outcome = Outcome(action, target=target)
    together = transport.joins_outbox_transaction(using)
    if together:
        with transaction.atomic(using=using):
            rows = _lock(ids, using)
            failure_counts.lock([(d.group, d.fingerprint) for d in rows], using)
            for dead in rows:
                _one(action, dead, transport, user, reason, actor, outcome)
    else:
        for pk in ids:
            for dead in _lock([pk], using):  # re-read: someone else may have resolved it
                _one(action, dead, transport, user, reason, actor, outcome)
    return outcome


def _lock(ids: list[int], using: str) -> list[DeadLetter]:
    queryset = DeadLetter.objects.using(using).filter(pk__in=ids).order_by("pk")
    if transaction.get_connection(using).in_atomic_block:
        queryset = queryset.select_for_update()
    return list(queryset)


def _one(
    action: str,
    dead: DeadLetter,
    transport: Any,
    user: Any,
    reason: str,
    actor: str | None,
    outcome: Outcome,
) -> None:
    if dead.state != str(DeadLetter.State.OPEN):
        outcome.skipped.append(dead)
        return
    if action == REDIRECT:
        _redirect(dead, transport, str(outcome.target))
        reason = f"redirected to group {outcome.target}" + (f": {reason}" if reason else "")
    elif action == RETRY:
        if dead.group == QUARANTINE_GROUP:
            raise LookupError(
                f"Dead letter {dead.pk} is an outbox row the relay set aside; it has no event "
                "to redeliver. Publish the event again once its content is fixed, then discard "
                "this dead letter."
            )
        transport.redeliver(dead.event_id, dead.group)
    else:
        transport.discard(dead.event_id, dead.group)
    with transaction.atomic(using=dead._state.db or "default"):
        dead.state = (
            str(DeadLetter.State.DISCARDED) if action == DISCARD else str(DeadLetter.State.RETRIED)
        )
        dead.resolved_at = timezone.now()
        dead.resolved_by = (user.get_username() if user is not None else str(actor))[:150]
        dead.reason = reason
        dead.save(update_fields=["state", "resolved_at", "resolved_by", "reason"])
        _audit(action, dead, user, reason, actor)
    outcome.done.append(dead)


def _redirect(dead: DeadLetter, transport: Any, group: str) -> None:
    event = event_of(dead)
    if event is None or dead.group == QUARANTINE_GROUP:
        raise LookupError(f"Dead letter {dead.pk} has no event in the log to redirect.")
    if group == dead.group:
        raise LookupError(f"Dead letter {dead.pk} is already group {group}'s; use Retry.")
    if group not in redirect_targets(event.type):
        raise LookupError(f"Group {group!r} does not subscribe to {event.type}.")
    transport.discard(dead.event_id, dead.group)  # releases its key if it was parked
    transport.redeliver(dead.event_id, group)


def _audit(action: str, dead: DeadLetter, user: Any, reason: str, actor: str | None) -> None:
    why = f": {reason}" if reason else ""
    text = f"{_VERBS[action]} (group {dead.group}){why}"
    # Imported here: the worker imports this module, and needs no admin installed.
    if user is not None and apps.is_installed("django.contrib.admin"):
        from django.contrib.admin.models import CHANGE, LogEntry

        LogEntry.objects.log_actions(
            user_id=user.pk, queryset=[dead], action_flag=CHANGE, change_message=text
        )
    logger.warning(
        "Dead letter %s %s by %s: event %s, group %s%s",
        dead.pk,
        _VERBS[action].lower(),
        dead.resolved_by,
        dead.event_id,
        dead.group,
        why,
    )
