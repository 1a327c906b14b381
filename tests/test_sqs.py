"""The SNS + SQS transport against moto's server: fan-out, retries, redrive, dead letters,
admin retry, FIFO order, a killed consumer, limits, provisioning and IAM."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from django_events import publish
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.exceptions import (
    EventsConfigurationError,
    PayloadTooLarge,
    TransportUnavailable,
)
from django_events.models import Attempt, DeadLetter, OutboxMessage
from django_events.registry import registry
from django_events.testing.contract import make_event
from django_events.transports import transports
from django_events.transports.base import Outgoing, logged_events
from django_events.transports.sqs import SnsSqsTransport
from django_events.triage import retry

from .conftest import ROOT, Workers, wait_until
from .sqs_server import aws_env, events_settings, moto_endpoint, unique_prefix, worker_env
from .testapp.models import Effect

__all__ = ["aws_env", "moto_endpoint"]  # fixtures, imported for pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sqs(settings: Any, moto_endpoint: str, aws_env: dict[str, str]) -> SnsSqsTransport:
    """The default transport on moto, provisioned for the test app's handlers."""
    settings.DJANGO_EVENTS = events_settings(moto_endpoint, unique_prefix())
    return provisioned()


@pytest.fixture
def sqs_fifo(settings: Any, moto_endpoint: str, aws_env: dict[str, str]) -> SnsSqsTransport:
    settings.DJANGO_EVENTS = events_settings(moto_endpoint, unique_prefix(), fifo=True)
    return provisioned()


def provisioned() -> SnsSqsTransport:
    transport = transports["default"]
    assert isinstance(transport, SnsSqsTransport)
    transport.setup(registry.subscriptions())
    return transport


def drain(transport: SnsSqsTransport, group: str, lease: float = 30) -> list[Any]:
    """Everything receivable now in ``group``'s queue (left leased, not deleted)."""
    found = []
    while batch := transport.claim([group], 10, lease):
        found += batch
    return found


def relay() -> int:
    return Relay().run_once()


def test_relay_fans_out_to_each_group_by_its_filter_policy(sqs: SnsSqsTransport):
    publish("test.happened", {"n": 1})
    publish("test.chained", {"n": 2})
    assert relay() == 2
    for group, expected in [("alpha", "test.happened"), ("beta", "test.happened")]:
        assert [c.event_type for c in drain(sqs, group)] == [expected]
    chained = drain(sqs, "chain")
    assert [(c.event_type, c.event.data) for c in chained] == [("test.chained", {"n": 2})]
    assert drain(sqs, "limited") == []


def test_a_publish_for_one_group_reaches_that_group_only(sqs: SnsSqsTransport):
    """What replay and admin retry rely on: the topic would reach alpha and beta."""
    event = publish("test.happened", {"n": 1})
    relay()
    assert len(drain(sqs, "alpha")) == 1
    assert len(drain(sqs, "beta")) == 1
    sqs.publish(logged_events([event.id], "default"), [("test.happened", "beta", False)])
    again = drain(sqs, "beta")
    assert [c.event_id for c in again] == [event.id]
    assert drain(sqs, "alpha") == []


def test_worker_handles_each_event_once_per_group_and_deletes_it(sqs: SnsSqsTransport):
    with transaction.atomic():
        for n in range(25):
            publish("test.happened", {"n": n})
    Worker(["alpha", "beta"]).run(once=True)
    for group in ("alpha", "beta"):
        handled = sorted(Effect.objects.filter(group=group).values_list("n", flat=True))
        assert handled == list(range(25)), group
    for group in ("alpha", "beta"):
        state = sqs.status([group])[group]
        assert (state.pending, state.in_flight) == (0, 0), "every message was deleted"


def test_an_old_worker_passes_over_a_type_only_a_newer_version_handles(sqs: SnsSqsTransport):
    """A rolling deploy: the newer version's ``setup_events`` added ``test.newer`` to
    alpha's subscription; a worker of the older one, which has no handler for it, gives
    each such message back as a copy: no attempt counted, no ``NoHandler`` dead letter."""
    sqs.setup([*registry.subscriptions(), ("test.newer", "alpha", False)])
    newer = make_event("test.newer")
    sqs.publish([newer], [("test.newer", "alpha", False)])
    old = Worker(["alpha"])
    for _ in range(4):  # the copy comes back after PASS_OVER_DELAY, and is passed over again
        old.step()
        time.sleep(0.6)
    assert not DeadLetter.objects.exists()
    (later,) = wait_until(lambda: sqs.claim(["alpha"], 10, 30), timeout=5, what="the copy")
    assert (later.event_id, later.event_type, later.attempt) == (newer.event_id, "test.newer", 1)
    assert sqs.ack(later)


def test_a_type_no_subscription_lists_any_more_is_a_no_handler_dead_letter(
    sqs: SnsSqsTransport,
):
    """Retired by the newest ``setup_events`` (or never ours): passing it over would send it
    round for ever, so the worker records it, as before ``filters_types``."""
    sqs.setup([*registry.subscriptions(), ("test.retired", "alpha", False)])
    retired = make_event("test.retired")
    sqs.publish([retired], [("test.retired", "alpha", False)])
    sqs.setup(registry.subscriptions())  # the release that dropped its handler
    Worker(["alpha"]).step()
    (dead,) = DeadLetter.objects.all()
    assert (dead.event_id, dead.group, dead.error_class) == (retired.event_id, "alpha", "NoHandler")


def test_a_failure_is_retried_after_its_backoff_with_the_receive_count_as_attempt(
    sqs: SnsSqsTransport, settings: Any, tmp_path: Path
):
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "BACKOFF_BASE": 2}
    sqs = transports["default"]
    flag = tmp_path / "fail"
    flag.write_text("")
    publish("test.happened", {"n": 1, "fail_if_exists": str(flag)})
    worker = Worker(["alpha"])
    worker.step()
    assert not Effect.objects.exists()
    assert drain(sqs, "alpha", lease=1) == [], "hidden for its backoff"
    flag.unlink()
    (again,) = wait_until(lambda: sqs.claim(["alpha"], 10, 30), timeout=5, what="the retry")
    assert again.attempt == 2
    worker.handle(again)
    assert list(Effect.objects.values_list("group", "n")) == [("alpha", 1)]


def test_last_failed_attempt_is_a_dead_letter_and_leaves_the_queue(
    sqs: SnsSqsTransport, settings: Any
):
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "MAX_ATTEMPTS": 2}
    sqs = provisioned()
    event = publish("test.happened", {"n": 1, "fail_group": "alpha"})
    worker = Worker(["alpha"])
    wait_until(lambda: (worker.step(), DeadLetter.objects.exists())[1], timeout=10)
    dead = DeadLetter.objects.get()
    assert (dead.event_id, dead.group, dead.attempts) == (event.id, "alpha", 2)
    assert dead.error_class == "RuntimeError"
    state = sqs.status(["alpha"])["alpha"]
    assert (state.pending, state.in_flight) == (0, 0), "deleted once the row committed"
    assert state.parked == 0, "nothing went to the DLQ"


def test_a_broker_error_deleting_a_dead_letter_after_commit_does_not_stop_the_worker(
    sqs: SnsSqsTransport, settings: Any, caplog: pytest.LogCaptureFixture
):
    from botocore.exceptions import EndpointConnectionError

    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "MAX_ATTEMPTS": 1}
    sqs = provisioned()
    event = publish("test.happened", {"n": 1, "fail_group": "alpha"})

    def unreachable(**_: Any) -> None:  # what botocore raises once SQS is out of reach
        raise EndpointConnectionError(endpoint_url="https://sqs.us-east-1.amazonaws.com")

    sqs._client("sqs").meta.events.register("before-call.sqs.DeleteMessageBatch", unreachable)
    worker = Worker(["alpha"])
    wait_until(lambda: (worker.step(), DeadLetter.objects.exists())[1], timeout=10)
    assert DeadLetter.objects.get().event_id == event.id
    sqs._client("sqs").meta.events.unregister("before-call.sqs.DeleteMessageBatch", unreachable)
    # The delete AWS refused waits with the acks and goes with the next claim.
    wait_until(
        lambda: (worker.step(), not sqs.status(["alpha"])["alpha"].in_flight)[1],
        timeout=10,
        what="the dead-lettered message deleted once SQS is back",
    )
    assert DeadLetter.objects.count() == 1


def test_redrive_after_max_receives_is_mirrored_into_dead_letter(
    sqs: SnsSqsTransport, settings: Any
):
    """A consumer that dies on every attempt never reports: SQS redrives the message after
    MAX_ATTEMPTS receives, and a worker turns what lands in the DLQ into a DeadLetter."""
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "MAX_ATTEMPTS": 2}
    sqs = provisioned()
    event = publish("test.happened", {"n": 1})
    relay()
    for attempt in (1, 2):  # received, never acked: as if the process died each time
        (claimed,) = wait_until(lambda: sqs.claim(["alpha"], 10, 1), timeout=5)
        assert claimed.attempt == attempt
    client, url = sqs._client("sqs"), sqs._queue_url("alpha")

    def redriven() -> int:
        client.receive_message(QueueUrl=url, VisibilityTimeout=1)  # the 3rd receive moves it
        return sqs.status(["alpha"])["alpha"].parked

    wait_until(redriven, timeout=10, what="the message redriven to the DLQ")
    Worker(["alpha"], relay=False).run(once=True)
    dead = DeadLetter.objects.get()
    assert (dead.event_id, dead.group, dead.error_class) == (event.id, "alpha", "LeaseExpired")
    assert dead.attempts == 2
    assert list(Attempt.objects.values_list("number", "outcome", "error_class")) == [
        (2, "dead-lettered", "LeaseExpired")
    ], "the redriven dead letter is in the attempt history"
    assert sqs.status(["alpha"])["alpha"].parked == 0, "mirrored, then removed from the DLQ"
    assert not Effect.objects.filter(group="alpha").exists()


def test_admin_retry_sends_the_event_back_to_that_group_only(
    sqs: SnsSqsTransport, settings: Any, tmp_path: Path, admin_user: Any
):
    settings.DJANGO_EVENTS = {**settings.DJANGO_EVENTS, "MAX_ATTEMPTS": 1}
    sqs = provisioned()
    flag = tmp_path / "fail"
    flag.write_text("")
    event = publish("test.happened", {"n": 1, "fail_if_exists": str(flag)})
    Worker(["alpha"]).run(once=True)
    dead = DeadLetter.objects.get()
    assert dead.group == "alpha"
    assert len(drain(sqs, "beta")) == 1  # beta's own delivery, from the relay; now leased
    flag.unlink()
    outcome = retry([dead], admin_user, "fixed")
    assert len(outcome.done) == 1
    assert drain(sqs, "beta") == [], "the retry went to alpha only"
    (alpha,) = drain(sqs, "alpha")
    assert (alpha.event_id, alpha.attempt) == (event.id, 1)
    Worker(["alpha"]).handle(alpha)
    assert list(Effect.objects.values_list("group", "n")) == [("alpha", 1)]


def test_fifo_keeps_per_key_order_with_two_consumers(
    sqs_fifo: SnsSqsTransport,
    workers: Workers,
    aws_env: dict[str, str],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
):
    keys = [f"k{i}" for i in range(12)]  # more keys than one claim takes: both get some
    env = worker_env(monkeypatch, settings.DJANGO_EVENTS, aws_env)
    workers.start("--group", "sequence", "--no-relay", "--batch-size", "5", **env)
    workers.start("--group", "sequence", "--no-relay", "--batch-size", "5", **env)
    # Both compete from the first event: otherwise the first to start may take every key.
    wait_until(lambda: workers.logs().count(" started for groups") == 2, timeout=60)
    with transaction.atomic():
        for n in range(60):
            publish("test.sequenced", {"n": n, "sleep": 0.01}, key=keys[n % len(keys)])
    relay()
    wait_until(lambda: Effect.objects.count() >= 60, timeout=60, what=workers.logs)
    workers.stop_all()
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, n in Effect.objects.order_by("id").values_list("key", "n"):
        by_key[key].append(n)
    for key, handled in by_key.items():
        assert handled == sorted(handled), f"key {key} out of order: {handled}"
    assert sorted(n for ns in by_key.values() for n in ns) == list(range(60))
    pids = set(Effect.objects.values_list("pid", flat=True))
    assert len(pids) == 2, "both consumers took keys"


def test_fifo_retry_holds_back_the_rest_of_its_key(sqs_fifo: SnsSqsTransport, tmp_path: Path):
    flag = tmp_path / "fail"
    flag.write_text("")
    with transaction.atomic():
        publish("test.sequenced", {"n": 1, "fail_if_exists": str(flag)}, key="k")
        publish("test.sequenced", {"n": 2}, key="k")
        publish("test.sequenced", {"n": 3}, key="other")
    worker = Worker(["sequence"])
    worker.step()
    assert list(Effect.objects.values_list("n", flat=True)) == [3], "k's second waits"
    flag.unlink()
    wait_until(lambda: worker.step() and Effect.objects.count() == 3, timeout=10)
    assert list(Effect.objects.filter(key="k").order_by("id").values_list("n", flat=True)) == [
        1,
        2,
    ]


@pytest.mark.slow
def test_fifo_ordering_is_the_consumers_declaration_not_the_publishers(
    sqs_fifo: SnsSqsTransport,
):
    """Wire format 2: a key's later events wait behind its head where the consuming
    group's own handler is ordered, whatever the publisher's code says (here: nothing)."""
    first, second = (make_event("test.sequenced", key="k") for _ in range(2))
    third, fourth = (make_event("test.happened", key="k") for _ in range(2))
    sqs_fifo.publish([first, second], [("test.sequenced", "sequence", False)])
    sqs_fifo.publish([third, fourth], [("test.happened", "alpha", True)])
    got = wait_until(lambda: sqs_fifo.claim(["sequence"], 10, 30), timeout=5, what="sequence")
    assert [c.event_id for c in got] == [first.event_id], "the second waits behind the first"
    got = wait_until(lambda: sqs_fifo.claim(["alpha"], 10, 30), timeout=5, what="alpha")
    assert [c.event_id for c in got] == [third.event_id, fourth.event_id], "alpha is not ordered"


def test_killed_consumer_event_comes_back_after_visibility_timeout(
    sqs: SnsSqsTransport,
    workers: Workers,
    aws_env: dict[str, str],
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    marker = tmp_path / "crashed"
    publish("test.happened", {"n": 1, "crash_once": str(marker)})
    relay()
    env = worker_env(monkeypatch, settings.DJANGO_EVENTS, aws_env, LEASE=5, MAX_ATTEMPTS=3)
    first = workers.run("consume_events", "--once", "--group", "alpha", **env)
    assert first.returncode == 9, first.stdout + first.stderr
    assert not Effect.objects.exists()
    second = workers.run("consume_events", "--once", "--group", "alpha", **env)
    assert second.returncode == 0 and not Effect.objects.exists(), "still hidden: leased"
    time.sleep(5.2)
    third = workers.run("consume_events", "--once", "--group", "alpha", **env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert list(Effect.objects.values_list("group", "n")) == [("alpha", 1)]
    assert not DeadLetter.objects.exists()


def test_heartbeat_renewal_keeps_a_long_handler_leased(sqs: SnsSqsTransport, settings: Any):
    publish("test.happened", {"n": 1})
    relay()
    (claimed,) = sqs.claim(["alpha"], 10, 2)
    sqs.renew([claimed], 6)
    time.sleep(3)  # past the first lease
    other = SnsSqsTransport("other", settings.DJANGO_EVENTS["TRANSPORTS"]["default"]["OPTIONS"])
    assert other.claim(["alpha"], 10, 1) == [], "renewed: still held"
    (again,) = wait_until(lambda: other.claim(["alpha"], 10, 1), timeout=10)
    assert (again.event_id, again.attempt) == (claimed.event_id, 2)
    assert sqs.ack(claimed) is False, "the lease ran out: another consumer has it"


def test_an_event_over_the_message_limit_is_refused_at_publish(sqs: SnsSqsTransport):
    big = {"blob": "x" * (256 * 1024 - 1000)}
    with pytest.raises(PayloadTooLarge, match="262144 bytes") as caught:
        publish("test.happened", big)
    assert "SnsSqsTransport" in str(caught.value)
    assert not OutboxMessage.objects.exists()
    publish("test.happened", {"blob": "x" * (256 * 1024 - 5000)})  # fits with its envelope
    relay()
    (claimed,) = drain(sqs, "alpha")
    assert len(claimed.event.data["blob"]) == 256 * 1024 - 5000


def test_undecodable_message_becomes_a_dead_letter_naming_the_problem(sqs: SnsSqsTransport):
    client = sqs._client("sqs")
    client.send_message(QueueUrl=sqs._queue_url("alpha"), MessageBody='{"id": "nope"')
    Worker(["alpha"], relay=False).run(once=True)
    dead = DeadLetter.objects.get()
    assert (dead.group, dead.error_class) == ("alpha", "UndecodableEvent")
    assert "not valid JSON" in dead.error_message


def test_setup_is_idempotent_and_the_dry_run_makes_no_call(
    sqs: SnsSqsTransport, settings: Any, aws_env: dict[str, str]
):
    again = sqs.setup(registry.subscriptions())
    steps = [line for line in again if line.startswith(("queue ", "subscription "))]
    assert steps, again
    assert all(line.endswith("(unchanged)") for line in steps), again
    assert not any("left alone" in line for line in again)
    options = {**settings.DJANGO_EVENTS["TRANSPORTS"]["default"]["OPTIONS"]}
    options["endpoint_url"] = "http://127.0.0.1:9"  # nothing listens: any call would fail
    offline = SnsSqsTransport("offline", options)
    plan = offline.setup(registry.subscriptions(), dry_run=True)
    queue = offline.queue_name("alpha")
    assert any(line.startswith(f"queue {queue}:") and "after 5 receives" in line for line in plan)
    assert any("type in test.happened" in line for line in plan)
    out = io.StringIO()
    call_command("setup_events", "--dry-run", stdout=out)
    assert "SnsSqsTransport (default) would:" in out.getvalue()


def test_setup_updates_only_what_drifted(sqs: SnsSqsTransport):
    client = sqs._client("sqs")
    client.set_queue_attributes(
        QueueUrl=sqs._queue_url("alpha"), Attributes={"VisibilityTimeout": "7"}
    )
    sns = sqs._client("sns")
    queue_arn = sqs._arn("sqs", sqs.queue_name("beta"))
    subscription = next(
        item["SubscriptionArn"]
        for item in sns.list_subscriptions_by_topic(TopicArn=sqs.topic_arn)["Subscriptions"]
        if item["Endpoint"] == queue_arn
    )
    sns.set_subscription_attributes(
        SubscriptionArn=subscription, AttributeName="RawMessageDelivery", AttributeValue="false"
    )
    lines = sqs.setup(registry.subscriptions())
    changed = [line for line in lines if line.endswith("(updated)")]
    assert len(changed) == 2, lines
    assert changed[0].startswith(f"queue {sqs.queue_name('alpha')}:")
    assert changed[1].startswith(f"subscription {sqs.queue_name('beta')} ")
    assert all(
        line.endswith("(unchanged)")
        for line in lines
        if line not in changed[:2] and line.startswith(("queue ", "subscription "))
    )
    attributes = client.get_queue_attributes(
        QueueUrl=sqs._queue_url("alpha"), AttributeNames=["VisibilityTimeout"]
    )["Attributes"]
    assert attributes["VisibilityTimeout"] != "7", "put back"
    raw = sns.get_subscription_attributes(SubscriptionArn=subscription)["Attributes"]
    assert raw["RawMessageDelivery"] == "true"


def test_setup_events_without_credentials_is_one_clear_error(
    settings: Any, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """No AWS_* variables, empty shared files, no instance role: a message, no traceback."""
    conf = events_settings(moto_endpoint, unique_prefix())
    env = Workers(tmp_path).env(**worker_env(monkeypatch, conf, {}))
    for name in [name for name in env if name.startswith("AWS_")]:
        del env[name]
    (tmp_path / "empty").write_text("")
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "empty"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "empty"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    result = subprocess.run(
        [sys.executable, "-m", "django", "setup_events"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "No AWS credentials were found" in result.stderr
    assert "AWS_ACCESS_KEY_ID" in result.stderr, "it says where boto3 looks"
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


def test_iam_policies_are_scoped_to_the_topic_and_each_groups_queues(sqs: SnsSqsTransport):
    out = io.StringIO()
    call_command("setup_events", "--iam", stdout=out)
    policies = json.loads(out.getvalue())
    assert {"relay", "consumer alpha", "consumer beta", "setup"} <= set(policies)
    alpha = policies["consumer alpha"]["Statement"][0]
    assert alpha["Resource"] == [
        f"arn:aws:sqs:us-east-1:123456789012:{sqs.queue_name('alpha')}",
        f"arn:aws:sqs:us-east-1:123456789012:{sqs.queue_name('alpha', dead=True)}",
    ]
    assert "sqs:SendMessage" not in alpha["Action"]
    pass_over, read = policies["consumer alpha"]["Statement"][1:]
    assert (pass_over["Action"], pass_over["Resource"]) == (
        ["sqs:SendMessage"],
        alpha["Resource"][:1],
    )
    assert read["Resource"].endswith(f":{sqs.topic_name}")
    publish_statement = policies["relay"]["Statement"][0]
    assert publish_statement["Action"] == ["sns:Publish"]
    assert publish_statement["Resource"].endswith(f":{sqs.topic_name}")


def test_status_reports_queue_depths(sqs: SnsSqsTransport):
    for n in range(3):
        publish("test.happened", {"n": n})
    relay()
    wait_until(lambda: sqs.status(["alpha"])["alpha"].pending == 3, timeout=5)
    sqs.claim(["alpha"], 2, 30)
    state = sqs.status(["alpha", "(relay)"])
    assert (state["alpha"].pending, state["alpha"].in_flight) == (1, 2)
    assert state["(relay)"].pending == 0  # not a queue: reported empty, no error


def test_options_are_validated_with_the_key_named():
    with pytest.raises(EventsConfigurationError, match=r"'wait_time'.*0 to 20"):
        SnsSqsTransport("x", {"wait_time": 30})
    with pytest.raises(EventsConfigurationError, match="unknown option 'queue'"):
        SnsSqsTransport("x", {"queue": "q"})
    with pytest.raises(EventsConfigurationError, match="'prefix'"):
        SnsSqsTransport("x", {"prefix": "has space"})


def test_group_names_map_to_distinct_valid_queue_names():
    transport = SnsSqsTransport("x", {"prefix": "p-", "fifo": True})
    assert transport.queue_name("alpha") == "p-alpha.fifo"
    assert transport.queue_name("alpha", dead=True) == "p-alpha-dlq.fifo"
    dotted, dashed = transport.queue_name("a.b"), transport.queue_name("a-b")
    assert dotted != dashed and dotted.startswith("p-a-b-")
    with pytest.raises(EventsConfigurationError, match="over 80 characters"):
        transport.queue_name("g" * 80)


def test_ordered_handlers_need_fifo(settings: Any, moto_endpoint: str, aws_env: dict[str, str]):
    from django_events.checks import check_events

    settings.DJANGO_EVENTS = events_settings(moto_endpoint, unique_prefix())
    assert "django_events.E008" in {e.id for e in check_events()}
    settings.DJANGO_EVENTS = events_settings(moto_endpoint, unique_prefix(), fifo=True)
    assert "django_events.E008" not in {e.id for e in check_events()}


AWS_PREFIX = os.environ.get("DJANGO_EVENTS_AWS_PREFIX", "")


@pytest.mark.skipif(
    not AWS_PREFIX,
    reason="runs against a real AWS account: set DJANGO_EVENTS_AWS_PREFIX (e.g. 'de-ci-'), "
    "AWS credentials and a region to run it",
)
def test_round_trip_on_real_aws(settings: Any):
    prefix = f"{AWS_PREFIX}{uuid.uuid4().hex[:6]}-"
    settings.DJANGO_EVENTS = {
        "BACKOFF_BASE": 0,
        "TRANSPORTS": {
            "default": {
                "BACKEND": SnsSqsTransport.__module__ + ".SnsSqsTransport",
                "OPTIONS": {"prefix": prefix, "wait_time": 2},
            }
        },
    }
    transport = transports["default"]
    assert isinstance(transport, SnsSqsTransport)
    try:
        transport.setup(registry.subscriptions())
        time.sleep(5)  # subscriptions and queue policies take a moment to apply on AWS
        with transaction.atomic():
            for n in range(3):
                publish("test.happened", {"n": n})
        worker = Worker(["alpha", "beta"])
        wait_until(
            lambda: (worker.step(), Effect.objects.count() >= 6)[1], timeout=60, interval=0.5
        )
        assert sorted(Effect.objects.values_list("group", "n")) == [
            (g, n) for g in ("alpha", "beta") for n in range(3)
        ]
    finally:
        transport.close()
        _delete_everything_named(transport, prefix)


def _delete_everything_named(transport: SnsSqsTransport, prefix: str) -> None:
    """Remove what the AWS test created: only names under its own random prefix."""
    sqs, sns = transport._client("sqs"), transport._client("sns")
    for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    arn = transport.topic_arn
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=arn):
        for item in page["Subscriptions"]:
            sns.unsubscribe(SubscriptionArn=item["SubscriptionArn"])
    sns.delete_topic(TopicArn=arn)


# -- idle workers and outages --------------------------------------------------------------


def _sqs_calls(transport: SnsSqsTransport) -> list[tuple[str, dict[str, Any]]]:
    """Every SQS call ``transport`` makes from now on, with its parameters (botocore's
    own event hooks: the calls still go to the server)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, dict(params)))

    transport._client("sqs").meta.events.register("provide-client-params.sqs", record)
    return calls


def test_an_idle_worker_long_polls_in_wait_and_claims_what_it_received(
    sqs: SnsSqsTransport, settings: Any
):
    options = settings.DJANGO_EVENTS["TRANSPORTS"]["default"]["OPTIONS"]
    waiting = SnsSqsTransport("waiting", {**options, "wait_time": 2})
    assert waiting.waits_for_work
    calls = _sqs_calls(waiting)
    event = publish("test.happened", {"n": 1})
    relay()
    assert waiting.wait(["alpha"], 0.1) is True
    receives = [params for name, params in calls if name == "ReceiveMessage"]
    assert [params["WaitTimeSeconds"] for params in receives] == [2]
    calls.clear()
    (claimed,) = waiting.claim(["alpha"], 10, 30)
    assert claimed.event_id == event.id
    assert [name for name, _ in calls] == [], "claimed what the long poll received"
    assert waiting.claim(["alpha"], 10, 30) == []
    assert waiting.wait(["alpha"], 0.1) is False, "nothing more arrived"


def test_close_gives_back_what_a_wait_received(sqs: SnsSqsTransport, settings: Any):
    options = settings.DJANGO_EVENTS["TRANSPORTS"]["default"]["OPTIONS"]
    waiting = SnsSqsTransport("waiting", {**options, "wait_time": 1})
    event = publish("test.happened", {"n": 1})
    relay()
    assert waiting.wait(["alpha"], 0.1) is True
    assert sqs.claim(["alpha"], 10, 30) == [], "leased to the waiting worker"
    waiting.close()
    (again,) = sqs.claim(["alpha"], 10, 30)
    assert (again.event_id, again.attempt) == (event.id, 2), "visible at once, one receive more"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_aws_out_of_reach_is_transport_unavailable(aws_env: dict[str, str]):
    transport = SnsSqsTransport(
        "away", {"endpoint_url": f"http://127.0.0.1:{_closed_port()}", "region": "us-east-1"}
    )
    with pytest.raises(TransportUnavailable, match="SNS/SQS is unreachable"):
        transport.claim(["alpha"], 10, 30)
    with pytest.raises(TransportUnavailable, match="Could not connect"):
        transport.wait(["alpha"], 0.1)
    event = Outgoing(1, uuid.uuid4(), "test.happened", None, data='{"n": 1}')
    with pytest.raises(TransportUnavailable):
        transport.publish([event], [("test.happened", "alpha", False)])
    transport.close()  # gives up quietly: nothing to give back that would not come back


@pytest.mark.slow
def test_a_worker_rides_out_an_outage_and_loses_nothing(
    settings: Any,
    aws_env: dict[str, str],
    workers: Workers,
    monkeypatch: pytest.MonkeyPatch,
):
    """Its own moto server, stopped and started again on the same port while a worker runs
    (moto keeps its state in this process: the queues survive, as AWS's would)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        settings.DJANGO_EVENTS = events_settings(f"http://{host}:{port}", unique_prefix())
        provisioned()
        env = worker_env(monkeypatch, settings.DJANGO_EVENTS, aws_env, LEASE=5)
        workers.start("--group", "alpha", **env)
        publish("test.happened", {"n": 1})
        wait_until(lambda: Effect.objects.filter(n=1).exists(), timeout=30)
        server.stop()
        publish("test.happened", {"n": 2})  # the relay cannot send it: it stays in the outbox
        wait_until(lambda: "Transport error" in workers.logs(), timeout=30)
        assert OutboxMessage.objects.exists()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        wait_until(lambda: Effect.objects.filter(n=2).exists(), timeout=30)
    finally:
        workers.stop_all()
        server.stop()
    assert sorted(Effect.objects.values_list("n", flat=True)) == [1, 2], workers.logs()
    assert not DeadLetter.objects.exists()


@pytest.mark.database_transport  # counts outbox rows
def test_the_message_limit_follows_a_change_of_settings(sqs: SnsSqsTransport):
    big = {"blob": "x" * (256 * 1024 - 1000)}
    with override_settings(DJANGO_EVENTS={}):  # the database transport: no message limit
        publish("test.happened", big)
    with pytest.raises(PayloadTooLarge, match="SnsSqsTransport"):
        publish("test.happened", big)
    assert OutboxMessage.objects.count() == 1
