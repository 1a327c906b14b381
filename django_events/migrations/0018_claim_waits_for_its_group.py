"""The log transport's claim waits for its group's lock instead of giving up at once
(docs/internals.md, "The log transport", the function's first step). A claim holds the
lock for about a millisecond; a competing worker that found it taken returned nothing,
took the group for idle and waited a whole poll interval (1 s by default) with the
group's events waiting. It now waits up to ``GROUP_WAIT`` for the lock, far longer than
a claim holds it and far shorter than a poll, and only a lock held longer than that (a
rotation, or a claim inside a test's transaction) still sends it to its next group.

Only the function changes, with its signature: safe with workers of either release.
"""

import importlib
from typing import Any

from django.db import migrations

PREVIOUS = importlib.import_module("django_events.migrations.0016_own_events")

GROUP_WAIT = "100ms"

TRY_LOCK = """\
    -- One claimer per group at a time; another tries its next group at once. The lock
    -- comes before any read, so every statement below sees the cursor it left.
    IF NOT pg_try_advisory_xact_lock(1684371062, hashtext(a_group)) THEN
        RETURN;
    END IF;
"""

WAIT_FOR_LOCK = f"""\
    -- One claimer per group at a time. A claim holds the lock for about a millisecond:
    -- another waits for it (up to {GROUP_WAIT}) rather than return nothing, which its
    -- worker would take for an idle group (docs/internals.md, "The log transport"). The
    -- wait is a subtransaction, so a timeout undoes its own lock_timeout; the caller's
    -- is restored after it. The lock comes before any read, so every statement below
    -- sees the cursor the last claimer left.
    DECLARE callers_wait text := current_setting('lock_timeout');
    BEGIN
        PERFORM set_config('lock_timeout', '{GROUP_WAIT}', true);
        PERFORM pg_advisory_xact_lock(1684371062, hashtext(a_group));
        PERFORM set_config('lock_timeout', callers_wait, true);
    EXCEPTION WHEN lock_not_available THEN
        RETURN;
    END;
"""

if PREVIOUS.CLAIM_FUNCTION.count(TRY_LOCK) != 1:  # 0016 is frozen: this never changes
    raise RuntimeError("0018: the claim function of 0016 is not the one it replaces")
CLAIM_FUNCTION = PREVIOUS.CLAIM_FUNCTION.replace(TRY_LOCK, WAIT_FOR_LOCK)


def forwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CLAIM_FUNCTION, params=None)


def backwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PREVIOUS.CLAIM_FUNCTION, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0017_partial_txid_index"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
