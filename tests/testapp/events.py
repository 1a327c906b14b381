"""Handlers for the tests; ``event.data`` tells them how to misbehave."""

import os
import time
from pathlib import Path

from django.db import connection, transaction

from django_events import handler, publish

from .models import Effect


def behave(event, group=""):
    data = event.data
    if data.get("trace"):  # an external side effect: survives rollbacks
        with open(data["trace"], "a") as trace:
            trace.write(f"{group}:{data.get('n')}\n")
    if data.get("fail_group") == group:
        raise RuntimeError(f"{group} asked to fail: {data.get('n')}")
    if data.get("sleep"):
        time.sleep(data["sleep"])
    hold = data.get("wait_for")  # a file: the handler blocks until it exists (a stuck handler)
    deadline = time.monotonic() + 120
    while hold and not Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    marker = data.get("crash_once")
    if marker and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(9)
    if data.get("crash"):
        os._exit(9)
    if data.get("fail_if_exists") and Path(data["fail_if_exists"]).exists():
        raise RuntimeError(f"{data['fail_if_exists']} exists")
    once = data.get("fail_once")  # a file: the first attempt creates it and fails
    if once and not Path(once).exists():
        Path(once).write_text(group)
        raise RuntimeError(f"failing once: {data.get('n')}")
    if data.get("fail"):
        raise RuntimeError(f"asked to fail: {data.get('n')}")
    if data.get("unstorable_error"):  # no store takes a lone surrogate; PostgreSQL no NUL
        raise ValueError("cannot store \ud800 or \x00 as they are")


def _append(path, line):
    with open(path, "a") as out:
        out.write(line)


def record(group, event):
    if event.data.get("on_commit"):  # an effect that must happen only if this run commits
        line = f"{group}:{event.data.get('n')}\n"
        transaction.on_commit(lambda: _append(event.data["on_commit"], line))
    behave(event, group)
    Effect.objects.create(
        group=group, event_id=event.id, key=event.key, n=event.data.get("n"), pid=os.getpid()
    )
    if event.data.get("fail_after_write"):  # a partial write that must roll back
        raise RuntimeError(f"failed after writing: {event.data.get('n')}")
    if event.data.get("db_error"):  # on PostgreSQL this aborts the whole transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")


@handler("test.happened", group="alpha")
def alpha(event):
    record("alpha", event)


@handler("test.happened", group="beta")
def beta(event):
    record("beta", event)


@handler("test.sequenced", group="sequence", ordered=True)
def sequence(event):
    record("sequence", event)


@handler("test.chained", group="chain")
def chain(event):
    record("chain", event)
    publish("test.followed", {"after": str(event.id)})


@handler("test.limited", group="limited", max_attempts=2)
def limited(event):
    record("limited", event)
