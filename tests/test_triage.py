"""Triage operations: fingerprints, and retry/discard with permissions and an audit trail."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import ClassVar

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied
from django.test import override_settings

from django_events import triage
from django_events.models import DeadLetter
from django_events.testing import deliver
from django_events.testing.factories import DeadLetterFactory
from django_events.transports.base import Transport
from tests.deadletters import TRACE, bulk, failing
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db


def operator(*perms: str, name: str = "op") -> User:
    user = User.objects.create_user(name, password="pw", is_staff=True)  # noqa: S106
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_events", codename__in=perms)
    )
    return User.objects.get(pk=user.pk)  # a fresh object: no stale permission cache


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_ignores_line_numbers_and_messages():
    one = TRACE.format(line=10, func="sync", error="ValueError").replace("boom", "order 1")
    two = TRACE.format(line=99, func="sync", error="ValueError").replace("boom", "order 2")
    assert triage.fingerprint("ValueError", "shop.events.h", one) == triage.fingerprint(
        "ValueError", "shop.events.h", two
    )
    assert len(triage.fingerprint("ValueError", "shop.events.h", one)) == 16


def test_fingerprint_separates_error_class_handler_and_frame():
    trace = TRACE.format(line=1, func="sync", error="E")
    base = triage.fingerprint("ValueError", "shop.events.h", trace)
    assert base != triage.fingerprint("KeyError", "shop.events.h", trace)
    assert base != triage.fingerprint("ValueError", "shop.events.other", trace)
    other_frame = TRACE.format(line=1, func="load", error="E")
    assert base != triage.fingerprint("ValueError", "shop.events.h", other_frame)


def test_innermost_project_frame_skips_libraries_stdlib_and_django_events():
    import json as stdlib_module

    import django_events

    ours = Path(django_events.__file__).parent / "worker.py"
    trace = (
        "Traceback (most recent call last):\n"
        f'  File "{ours}", line 1, in handle\n'
        '  File "/app/shop/events.py", line 5, in sync_crm\n'
        '  File "/app/.venv/lib/python3.11/site-packages/requests/api.py", line 9, in post\n'
        f'  File "{stdlib_module.__file__}", line 3, in loads\n'
        '  File "<frozen importlib._bootstrap>", line 1, in _load\n'
        "ValueError: x\n"
    )
    assert triage.innermost_project_frame(trace).endswith("shop/events.py:sync_crm")
    assert triage.innermost_project_frame("") == ""


def test_worker_fingerprints_the_dead_letters_it_creates(tmp_path: Path):
    first = failing({"n": 1}, groups=("alpha", "beta"))
    assert {d.group for d in first} == {"alpha", "beta"}
    again = failing({"n": 2}, groups=("alpha",))[-1]
    alpha = next(d for d in first if d.group == "alpha")
    beta = next(d for d in first if d.group == "beta")
    assert alpha.fingerprint and alpha.fingerprint == again.fingerprint
    assert alpha.fingerprint != beta.fingerprint  # another handler
    assert triage.innermost_project_frame(alpha.traceback).endswith(
        "tests/testapp/events.py:behave"
    )


# --------------------------------------------------------------------------- retry


def test_retry_redelivers_to_that_group_only_and_audits(tmp_path: Path):
    flag = tmp_path / "broken"
    flag.write_text("")
    dead = failing({"fail": False, "fail_if_exists": str(flag)}, groups=("alpha", "beta"))
    alpha = next(d for d in dead if d.group == "alpha")
    flag.unlink()  # the cause is fixed
    user = operator("retry_deadletter")

    outcome = triage.retry([alpha], user, reason="CRM is back")
    assert [d.pk for d in outcome.done] == [alpha.pk]
    deliver(["alpha", "beta"])

    assert list(Effect.objects.values_list("group", "event_id")) == [("alpha", alpha.event_id)]
    alpha.refresh_from_db()
    assert alpha.state == "retried" and alpha.resolved_by == "op" and alpha.reason == "CRM is back"
    assert alpha.resolved_at is not None
    assert DeadLetter.objects.get(group="beta").state == "open"
    entry = LogEntry.objects.get()
    assert entry.user_id == user.pk and entry.object_id == str(alpha.pk)
    assert "CRM is back" in entry.change_message


def test_retry_needs_the_retry_permission():
    dead = DeadLetterFactory.create_batch(1, group="alpha")
    with pytest.raises(PermissionDenied):
        triage.retry(dead, operator("discard_deadletter", "view_deadletter"))
    assert DeadLetter.objects.get().state == "open" and not LogEntry.objects.exists()


def test_discard_needs_its_permission_and_a_reason():
    dead = DeadLetterFactory.create_batch(1, group="alpha")
    with pytest.raises(PermissionDenied):
        triage.discard(dead, operator("retry_deadletter"), "duplicate")
    with pytest.raises(ValueError):
        triage.discard(dead, operator("discard_deadletter", name="d"), "  ")
    outcome = triage.discard(dead, User.objects.get(username="d"), "duplicate order")
    assert outcome.message == "Discarded 1 dead letter."
    row = DeadLetter.objects.get()
    assert (row.state, row.reason, row.resolved_by) == ("discarded", "duplicate order", "d")


def test_only_open_dead_letters_are_acted_on():
    done = [DeadLetterFactory(group="alpha", event__type="test.happened", discarded=True)]
    open_ = DeadLetterFactory.create_batch(2, group="alpha", event__type="test.happened")
    outcome = triage.retry([*done, *open_], operator("retry_deadletter"))
    assert len(outcome.done) == 2 and [d.pk for d in outcome.skipped] == [done[0].pk]
    assert "skipped 1" in outcome.message


def test_a_failed_redelivery_leaves_every_row_open_on_the_database_transport():
    dead = bulk(2)
    DeadLetter.objects.filter(pk=dead[1].pk).update(event_id=uuid.uuid4())  # not in the log
    with pytest.raises(LookupError):
        triage.retry(dead, operator("retry_deadletter"))
    assert set(DeadLetter.objects.values_list("state", flat=True)) == {"open"}
    assert not LogEntry.objects.exists()


def test_shell_actor_is_recorded_without_a_user():
    triage.discard([DeadLetterFactory()], None, "cleanup", actor="shell:ops")
    assert DeadLetter.objects.get().resolved_by == "shell:ops"
    with pytest.raises(PermissionDenied):
        triage.discard([DeadLetterFactory()], None, "cleanup")


class RecordingTransport(Transport):
    """A broker-like transport: keeps nothing in the database, records redeliveries."""

    calls: ClassVar[list[tuple[uuid.UUID, str]]] = []

    def redeliver(self, event_id: uuid.UUID, group: str) -> None:
        self.calls.append((event_id, group))


def test_retry_works_whatever_the_transport():
    RecordingTransport.calls = []
    dead = DeadLetterFactory.create_batch(2, group="beta", event__type="test.happened")
    backend = f"{__name__}.RecordingTransport"
    with override_settings(DJANGO_EVENTS={"TRANSPORTS": {"default": {"BACKEND": backend}}}):
        triage.retry(dead, operator("retry_deadletter"), reason="broker test")
    assert RecordingTransport.calls == [(d.event_id, "beta") for d in dead]
    assert set(DeadLetter.objects.values_list("state", flat=True)) == {"retried"}
    assert LogEntry.objects.count() == 2
