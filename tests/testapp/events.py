"""Handlers for the tests; ``event.data`` tells them how to misbehave."""

import os
import time
from pathlib import Path

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


def record(group, event):
    behave(event, group)
    Effect.objects.create(
        group=group, event_id=event.id, key=event.key, n=event.data.get("n"), pid=os.getpid()
    )


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
