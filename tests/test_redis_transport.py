"""The Redis Streams transport, in this process, against the real Redis (unique prefix)."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.core.management import call_command
from django.test import override_settings

from django_events import publish
from django_events.checks import check_events, check_runtime
from django_events.engine.relay import Relay
from django_events.engine.worker import Worker
from django_events.exceptions import EventsConfigurationError
from django_events.models import DeadLetter, EventRecord, StreamCheckpoint
from django_events.status import collect, problems
from django_events.testing import deliver
from django_events.transports import transports
from django_events.transports.base import Outgoing, cloudevent_json
from django_events.transports.redis import CONSUMER_GROUP, RedisStreamsTransport

from .conftest import closing_connections, wait_until
from .redis_support import (
    REDIS_URL,
    PrivateRedis,
    delete_prefix,
    events_settings,
    needs_redis,
    unique_prefix,
)
from .testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), needs_redis()]
SUBSCRIBED = [("test.happened", "alpha", False), ("test.happened", "beta", False)]


@pytest.fixture
def prefix() -> Iterator[str]:
    name = unique_prefix()
    yield name
    delete_prefix(name)


@pytest.fixture
def configure(prefix: str) -> Iterator[object]:
    """``configure(**options)``: the default transport is Redis under this test's prefix."""
    stack: list[override_settings] = []

    def apply(
        url: str = REDIS_URL, events: dict | None = None, **options: object
    ) -> RedisStreamsTransport:
        if stack:
            stack.pop().disable()
        transports.reset()
        settings = {**events_settings(prefix, url, **options), "BACKOFF_BASE": 60, **(events or {})}
        override = override_settings(DJANGO_EVENTS=settings)
        override.enable()
        stack.append(override)
        transport = transports["default"]
        assert isinstance(transport, RedisStreamsTransport)
        return transport

    yield apply
    transports.reset()
    for override in stack:
        override.disable()


@pytest.fixture
def transport(configure) -> RedisStreamsTransport:  # type: ignore[no-untyped-def]
    return configure()


def effects(group: str | None = None) -> list[tuple[str, int]]:
    rows = Effect.objects.order_by("n")
    if group:
        rows = rows.filter(group=group)
    return list(rows.values_list("group", "n"))


def client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def owed(transport: RedisStreamsTransport, group: str) -> int:
    """Events the group owes (the marker, scored +inf, is not one)."""
    return int(client().zcount(transport.owed(group), "-inf", "(inf"))


def outgoing(n: int, event_type: str = "test.happened") -> Outgoing:
    return Outgoing(
        position=n,
        event_id=uuid.uuid4(),
        type=event_type,
        key=None,
        data=f'{{"n": {n}}}',
        occurred_at=dt.datetime.now(dt.timezone.utc),
    )


# -- delivery ---------------------------------------------------------------------------


def test_each_committed_event_reaches_every_subscribed_group_once(transport):
    for n in range(5):
        publish("test.happened", {"n": n})
    assert deliver() == 10
    assert effects("alpha") == [("alpha", n) for n in range(5)]
    assert effects("beta") == [("beta", n) for n in range(5)]
    r = client()
    for group in ("alpha", "beta"):
        assert r.xpending(transport.stream(group), CONSUMER_GROUP)["pending"] == 0
        assert owed(transport, group) == 0, "finished events are no longer owed"


def test_publish_reaches_only_the_groups_listed(transport):
    event = outgoing(1)
    transport.publish([event], [("test.happened", "beta", False)])
    assert client().exists(transport.stream("alpha")) == 0
    claimed = transport.claim(["alpha", "beta"], 10, 30)
    assert [(c.group, c.event_id) for c in claimed] == [("beta", event.event_id)]


def test_an_event_still_owed_is_not_added_twice(transport):
    event = outgoing(1)
    transport.publish([event], SUBSCRIBED)
    transport.publish([event], SUBSCRIBED)
    assert client().xlen(transport.stream("alpha")) == 1


def test_nothing_is_acknowledged_when_the_handler_rolls_back(transport, tmp_path: Path):
    publish("test.happened", {"n": 1, "fail_group": "alpha"})
    deliver()
    r = client()
    assert effects() == [("beta", 1)]
    assert owed(transport, "alpha") == 1, "alpha still owes the failed event"
    assert r.zcard(transport.delayed("alpha")) == 1, "its retry waits in the delayed set"


def test_a_retry_waits_without_blocking_the_stream(configure):
    transport = configure(events={"BACKOFF_BASE": 1.0})
    publish("test.happened", {"n": 1, "fail_group": "alpha"})
    publish("test.happened", {"n": 2})
    deliver(["alpha"])
    assert effects("alpha") == [("alpha", 2)], "the later event is not held up"
    assert transport.claim(["alpha"], 10, 30) == [], "the retry is not due yet"
    time.sleep(1.1)
    claimed = transport.claim(["alpha"], 10, 30)
    assert [(c.event.data["n"], c.attempt) for c in claimed] == [(1, 2)]
    assert claimed[0].first_failed_at is not None


def test_attempts_run_out_into_a_dead_letter_that_admin_retry_redelivers(configure):
    transport = configure(events={"BACKOFF_BASE": 0})
    publish("test.limited", {"n": 7, "fail": True})
    deliver()
    deliver()
    dead = DeadLetter.objects.get()
    assert (dead.group, dead.attempts, dead.error_class) == ("limited", 2, "RuntimeError")
    assert owed(transport, "limited") == 0
    assert transport.claim(["limited"], 10, 30) == []
    transport.redeliver(dead.event_id, "limited")
    claimed = transport.claim(["limited"], 10, 30)
    assert [(c.event_id, c.attempt) for c in claimed] == [(dead.event_id, 1)]


def test_an_undecodable_entry_becomes_a_dead_letter(transport):
    transport.ensure_group("alpha")
    client().xadd(transport.stream("alpha"), {"id": str(uuid.uuid4()), "type": "test.happened"})
    deliver(["alpha"])
    dead = DeadLetter.objects.get()
    assert dead.error_class == "UndecodableEvent"
    assert "Stream entry" in dead.error_message


# -- leases -----------------------------------------------------------------------------


def test_a_dead_workers_entries_are_taken_over_after_the_idle_time(configure):
    transport = configure(claim_idle=1)
    transport.publish([outgoing(1)], SUBSCRIBED)
    first = transport.claim(["alpha"], 10, 30)
    assert [c.attempt for c in first] == [1]
    other = RedisStreamsTransport("other", dict(transport.options))
    assert other.claim(["alpha"], 10, 30) == [], "not idle long enough yet"
    time.sleep(1.1)
    other._orphans_checked_at = 0.0
    taken = other.claim(["alpha"], 10, 30)
    assert [(c.event_id, c.attempt) for c in taken] == [(first[0].event_id, 2)]
    assert not transport.dead_letter(first[0]), "the first worker lost its claim"
    other.close()


def test_renewing_keeps_a_live_workers_entries(configure):
    transport = configure(claim_idle=1)
    transport.publish([outgoing(1)], SUBSCRIBED)
    held = transport.claim(["alpha"], 10, 30)
    other = RedisStreamsTransport("other", dict(transport.options))
    for _ in range(4):
        time.sleep(0.4)
        transport.renew(held, 1)
    other._orphans_checked_at = 0.0
    assert other.claim(["alpha"], 10, 30) == []
    other.close()


def test_an_ack_leaves_the_consumers_other_entries_between_those_it_names(transport):
    """The ACK script reads what the consumer holds over the batch's id range, in pages
    of the batch's size: an entry held in between is neither acknowledged nor mistaken
    for a claim, and every claim named is found however many such entries lie between."""
    transport.publish([outgoing(n) for n in range(1, 6)], SUBSCRIBED)
    claimed = transport.claim(["alpha"], 10, 30)
    named, between = claimed[::4], claimed[1:4]  # the first and the last; three between
    assert transport.ack_many(named) == named
    pending = client().xpending_range(transport.stream("alpha"), CONSUMER_GROUP, "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [c.receipt.entry_id for c in between]
    assert transport.ack_many(between) == between


def test_an_ack_finds_its_claims_in_any_order(transport):
    """A batch may hold an entry taken over (older) after new ones: the range the script
    reads runs from the lowest id to the highest, whatever the claims' order."""
    transport.publish([outgoing(n) for n in range(1, 4)], SUBSCRIBED)
    claimed = transport.claim(["alpha"], 10, 30)
    backwards = claimed[::-1]
    assert transport.ack_many(backwards) == backwards
    assert owed(transport, "alpha") == 0


def test_an_ack_leaves_an_entry_another_consumer_took_without_a_new_delivery(transport):
    """``XCLAIM ... JUSTID`` (a plain redis-py consumer may use it) moves an entry to
    another consumer without counting a delivery: the delivery count alone would still
    match, so the ack must also find the entry under its own consumer."""
    transport.publish([outgoing(1), outgoing(2)], SUBSCRIBED)
    lost, kept = transport.claim(["alpha"], 10, 30)
    stream = transport.stream("alpha")
    client().xclaim(stream, CONSUMER_GROUP, "someone-else", 0, [lost.receipt.entry_id], justid=True)
    assert transport.ack_many([lost, kept]) == [kept]
    [pending] = client().xpending_range(stream, CONSUMER_GROUP, "-", "+", 10)
    assert (pending["consumer"], pending["times_delivered"]) == (b"someone-else", 1)
    assert owed(transport, "alpha") == 1, "the other consumer's event is still owed"


def test_an_ack_clears_the_owed_member_its_entry_names(transport):
    """An entry is read through its envelope, but what its group owes is recorded under
    the entry's ``id`` field (docs/wire-format.md): the ack removes that member, even when
    the envelope names another id."""
    transport.ensure_group("alpha")
    event = outgoing(1)
    body = json.loads(cloudevent_json(event, str(event.event_id)))
    field_id = str(uuid.uuid4())
    client().zadd(transport.owed("alpha"), {field_id: 1})
    client().xadd(
        transport.stream("alpha"),
        {"id": field_id, "type": event.type, "event": json.dumps(body), "attempts": "0"},
    )
    [claimed] = transport.claim(["alpha"], 10, 30)
    assert (claimed.event_id, claimed.event.id) == (event.event_id, event.event_id)
    assert transport.ack_many([claimed]) == [claimed]
    assert owed(transport, "alpha") == 0


def test_renewing_a_batch_renews_only_what_the_consumer_still_holds(transport):
    """RENEW reads what the consumer holds once for the batch: an entry another consumer
    moved to itself (``XCLAIM ... JUSTID``, no delivery counted) is neither taken back nor
    given a lease; the entries still held get theirs."""
    transport.publish([outgoing(n) for n in range(1, 4)], SUBSCRIBED)
    moved, *kept = transport.claim(["alpha"], 10, 30)
    stream = transport.stream("alpha")
    client().xclaim(
        stream, CONSUMER_GROUP, "someone-else", 0, [moved.receipt.entry_id], justid=True
    )
    transport.renew([moved, *kept], 60)
    leases = client().hgetall(transport.leases("alpha"))
    assert sorted(leases) == sorted(c.receipt.entry_id.encode() for c in kept)
    owners = {
        p["message_id"].decode(): p["consumer"].decode()
        for p in client().xpending_range(stream, CONSUMER_GROUP, "-", "+", 10)
    }
    assert owners[moved.receipt.entry_id] == "someone-else"
    assert {owners[c.receipt.entry_id] for c in kept} == {transport.consumer}


def test_released_entries_come_back_without_an_attempt(transport):
    transport.publish([outgoing(1)], SUBSCRIBED)
    held = transport.claim(["alpha"], 10, 30)
    transport.release(held)
    again = transport.claim(["alpha"], 10, 30)
    assert [(c.event_id, c.attempt) for c in again] == [(held[0].event_id, 1)]


# -- trimming and backpressure ----------------------------------------------------------


def test_trimming_keeps_every_entry_not_yet_acknowledged(transport):
    transport.publish([outgoing(n) for n in range(1, 301)], SUBSCRIBED)
    claimed = transport.claim(["alpha"], 250, 30)
    transport.ack_many(claimed[:200])
    transport.trim(["alpha"])
    r = client()
    length = r.xlen(transport.stream("alpha"))
    assert 100 <= length < 300, "acknowledged entries go, approximately"
    positions = {
        json.loads(fields[b"event"])["data"]["n"]
        for _, fields in r.xrange(transport.stream("alpha"), "-", "+")
    }
    assert set(range(201, 301)) <= positions, "claimed-but-unacked and unread entries stay"
    transport.trim(["beta"])
    assert r.xlen(transport.stream("beta")) == 300, "beta has read nothing: nothing goes"


def test_a_group_lagging_beyond_the_bound_slows_the_relay_and_shows_in_status(configure):
    transport = configure(max_len=5)
    started = time.monotonic()
    transport.publish([outgoing(n) for n in range(1, 11)], SUBSCRIBED)
    assert time.monotonic() - started >= 0.4, "the relay paused"
    assert set(transport.lagging) == {"alpha", "beta"}
    report = collect()
    assert report["groups"]["alpha"]["lagging"] is True
    assert report["groups"]["alpha"]["pending"] == 10
    assert any("alpha: lags beyond" in p for p in problems(report))


def test_status_counts_unread_in_flight_and_retrying(transport):
    transport.publish([outgoing(n) for n in range(1, 4)], SUBSCRIBED)
    held = transport.claim(["alpha"], 1, 30)
    transport.retry_later(held[0], 60, "boom")
    transport.claim(["alpha"], 1, 30)
    state = transport.status(["alpha"])["alpha"]
    assert (state.pending, state.in_flight, state.retrying) == (2, 1, 1)
    assert state.oldest_pending_age_s is not None


# -- data loss --------------------------------------------------------------------------


def test_redis_restarted_empty_is_refilled_from_the_event_log(configure):
    server = PrivateRedis().start()
    try:
        transport = configure(url=server.url)
        for n in range(3):
            publish("test.happened", {"n": n})
        deliver()
        transport.housekeeping()  # first checkpoint: position 3 is confirmed for both groups
        for n in range(3, 8):
            publish("test.happened", {"n": n})
        Worker(["alpha"], relay=True).step()  # relayed; alpha handles them, beta does not
        transport._checkpointed_at = transport._kept_at = 0.0
        transport.housekeeping()
        checkpoints = dict(
            StreamCheckpoint.objects.filter(group__in=["alpha", "beta"]).values_list(
                "group", "position"
            )
        )
        positions = dict(EventRecord.objects.values_list("data__n", "position"))
        assert checkpoints == {"alpha": positions[7], "beta": positions[2]}
        server.kill()
        server.start()  # same port, empty
        transports.reset()
        transport = transports["default"]
        recovered = transport.recovery.recover_lost()
        assert {"alpha", "beta"} <= set(recovered), "every known group is checked"
        deliver()
        assert effects("alpha") == [("alpha", n) for n in range(8)], "no duplicate effects"
        assert effects("beta") == [("beta", n) for n in range(8)], "nothing lost"
        assert transport.recovery.recover_lost() == [], "recovered once"
        assert transport.status(["beta"])["beta"].pending == 0
    finally:
        server.destroy()


def test_a_stream_deleted_under_a_blocked_read_does_not_stop_the_worker(configure):
    """Redis 7 ends an XREADGROUP blocked on a stream that is deleted meanwhile (a flush, an
    eviction) with ``UNBLOCKED``: found by hand, it killed every worker of a running demo.
    A private Redis, so that the one blocked read in it is this test's."""
    server = PrivateRedis().start()
    try:
        transport = configure(url=server.url)
        private = redis.Redis.from_url(server.url)
        stream = transport.stream("alpha")
        transport.ensure_group("alpha")
        outcome: list[object] = []

        def blocked() -> None:
            try:
                outcome.append(transport.wait(["alpha"], 5.0))
            except Exception as exc:
                outcome.append(exc)

        reader = threading.Thread(target=blocked)
        reader.start()
        wait_until(
            lambda: any(c.get("cmd") == "xreadgroup" for c in private.client_list()),
            timeout=5,
            what="the read is blocked",
        )
        private.delete(stream)
        reader.join(timeout=10)
        assert outcome == [False], outcome
        names = {g["name"].decode() for g in private.xinfo_groups(stream)}
        assert names == {CONSUMER_GROUP}, "the consumer group is back"
        private.close()
    finally:
        transports.reset()
        server.destroy()


def test_a_stream_cut_short_from_outside_is_refilled(transport):
    publish("test.happened", {"n": 1})
    deliver(["alpha"])
    transport.housekeeping()
    publish("test.happened", {"n": 2})
    Worker([], relay=True).step()
    client().xtrim(transport.stream("beta"), maxlen=0)
    assert transport.recovery.recover_lost() == ["beta"]
    deliver()
    assert effects("beta") == [("beta", 1), ("beta", 2)]


def test_an_evicted_owed_set_takes_its_marker_along_and_is_refilled(transport):
    publish("test.happened", {"n": 1})
    deliver(["alpha"])
    transport.housekeeping()
    publish("test.happened", {"n": 2})
    Worker([], relay=True).step()
    client().delete(transport.owed("beta"), transport.stream("beta"))  # as an eviction would
    transport.recovery.checkpoint()
    assert transport.recovery.recover_lost() == ["beta"]
    deliver()
    assert effects("beta") == [("beta", 1), ("beta", 2)]


def test_each_publisher_checks_and_restores_only_its_own_marker(transport):
    """Services sharing a Redis each keep a marker in a group's owed set (their own token,
    from their own database): another publisher's marker is neither a loss nor removed."""
    theirs = "marker:" + "0" * 32  # sorts before this publisher's marker
    publish("test.happened", {"n": 1})
    deliver()
    transport.housekeeping()  # this publisher's first checkpoints and markers
    owed = transport.owed("beta")
    client().zadd(owed, {theirs: "+inf"})
    assert transport.recovery.recover_lost() == [], "its own marker is there: no loss"
    client().delete(transport.stream("beta"), owed)  # a loss, after which the other
    client().zadd(owed, {theirs: "+inf"})  # publisher has already put its part back
    assert transport.recovery.recover_lost() == ["beta"]
    assert client().zscore(owed, theirs) is not None, "the other publisher's marker stays"
    assert transport.recovery.recover_lost() == [], "recovered once"
    deliver()
    publish("test.happened", {"n": 2})
    deliver()
    transport.recovery.checkpoint()
    top = EventRecord.objects.order_by("-position").values_list("position", flat=True)[0]
    assert StreamCheckpoint.objects.get(group="beta").position == top, "checkpoint advances"


def test_a_first_checkpoint_stays_below_what_another_services_group_already_owes(transport):
    """A group another service just declared gets events from this relay before this
    publisher's housekeeping first sees it: its first checkpoint must not count them done."""
    store = transport.subscription_store()
    store.declare("warehouse", {("gamma", "test.happened"): False}, replace=True)
    publish("test.happened", {"n": 1})
    Relay().relay_batch("default")  # relays to gamma too
    transport.recovery.recover_lost()  # first sees gamma: its first checkpoint
    [owed] = client().zrangebyscore(transport.owed("gamma"), "-inf", "(inf", withscores=True)
    assert StreamCheckpoint.objects.get(group="gamma").position == int(owed[1]) - 1


def test_a_checkpoint_never_passes_an_event_still_owed(transport):
    publish("test.happened", {"n": 1})
    deliver(["alpha"])
    transport.housekeeping()
    publish("test.happened", {"n": 2, "fail_group": "alpha"})
    deliver()
    transport._checkpointed_at = transport._kept_at = 0.0
    transport.housekeeping()
    owed_position = int(client().zrange(transport.owed("alpha"), 0, 0, withscores=True)[0][1])
    assert StreamCheckpoint.objects.get(group="alpha").position == owed_position - 1
    assert StreamCheckpoint.objects.get(group="beta").position == owed_position


# -- the worker waits in XREADGROUP -----------------------------------------------------


def test_an_idle_worker_blocks_on_redis_and_its_relay_runs_in_a_thread(configure):
    configure(block=5)
    worker = Worker(["alpha"], relay=True)
    thread = threading.Thread(target=closing_connections(worker.run))
    thread.start()
    try:
        time.sleep(0.5)
        assert worker._relay_thread is not None
        publish("test.happened", {"n": 1})
        started = time.monotonic()
        wait_until(lambda: effects("alpha"), timeout=10, what="handled")
        assert time.monotonic() - started < 2.0, "woken by the stream, not the 5 s block"
    finally:
        worker.stop()
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_a_worker_survives_redis_going_away(configure):
    server = PrivateRedis().start()
    configure(url=server.url)
    worker = Worker(["alpha"], relay=True)
    thread = threading.Thread(target=closing_connections(worker.run))
    thread.start()
    try:
        publish("test.happened", {"n": 1})
        wait_until(lambda: effects("alpha"), timeout=10, what="first handled")
        server.kill()
        time.sleep(1.0)
        server.start()
        publish("test.happened", {"n": 2})
        wait_until(lambda: len(effects("alpha")) == 2, timeout=20, what="handled after restart")
    finally:
        worker.stop()
        thread.join(timeout=15)
        server.destroy()
    assert not thread.is_alive()


# -- setup, checks, options -------------------------------------------------------------


def test_setup_events_creates_streams_and_groups_once(transport, capsys):
    call_command("setup_events", "--dry-run")
    assert client().exists(transport.stream("alpha")) == 0
    call_command("setup_events")
    out = capsys.readouterr().out
    assert f"stream {transport.stream('alpha')}" in out
    assert client().xinfo_groups(transport.stream("alpha"))[0]["name"] == CONSUMER_GROUP.encode()
    call_command("setup_events")
    assert "nothing to set up" in capsys.readouterr().out


def test_checks_refuse_ordered_handlers_and_warn_about_persistence(configure):
    server = PrivateRedis().start()
    try:
        configure(url=server.url)
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        found = {message.id: message for message in check_events()}
        assert "django_events.E008" in found, "tests.testapp has an ordered handler"
        assert "per-key order" in (found["django_events.E008"].hint or "")
        found = {message.id: message for message in check_runtime()}
        assert "django_events.W003" in found, "appendonly no"
        assert "django_events.W004" in found, "evicting policy"
    finally:
        server.destroy()


@override_settings(SILENCED_SYSTEM_CHECKS=["django_events.E008"])
def test_redis_persistence_warnings_come_with_deploy_checks_and_setup_only(configure):
    """W003 concerns production: not every manage.py command, but check --deploy and the
    commands that use the transport (docs/settings.md#system-checks)."""
    server = PrivateRedis().start()
    try:
        configure(url=server.url)
        assert not {m.id for m in check_events()} & {"django_events.W003", "django_events.W005"}
        plain, deploy, setup = io.StringIO(), io.StringIO(), io.StringIO()
        call_command("check", stdout=plain, stderr=plain)
        assert "W003" not in plain.getvalue()
        call_command("check", "--deploy", stdout=deploy, stderr=deploy)
        assert "django_events.W003" in deploy.getvalue()
        call_command("setup_events", skip_checks=False, stdout=setup, stderr=setup)
        assert "django_events.W003" in setup.getvalue()
    finally:
        server.destroy()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({}, "exactly one of 'url'"),
        ({"url": REDIS_URL, "cache": "default"}, "exactly one of 'url'"),
        ({"url": REDIS_URL, "prefix": "bad prefix"}, "'prefix'"),
        ({"url": REDIS_URL, "max_len": 0}, "'max_len'"),
        ({"url": REDIS_URL, "block": "5"}, "'block'"),
        ({"url": REDIS_URL, "maxlen": 5}, "unknown option 'maxlen'"),
    ],
)
def test_bad_options_name_the_problem(options, words):
    with pytest.raises(EventsConfigurationError, match=words):
        RedisStreamsTransport("default", options)


def test_a_django_redis_cache_alias_works(prefix: str):
    caches = {
        "events": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
    settings = events_settings(prefix)
    settings["TRANSPORTS"]["default"]["OPTIONS"] = {"cache": "events", "prefix": prefix}
    with override_settings(CACHES=caches, DJANGO_EVENTS=settings):
        transports.reset()
        publish("test.happened", {"n": 1})
        assert deliver() == 2
    transports.reset()


def test_housekeeping_forgets_leases_of_entries_no_longer_pending(transport):
    transport.publish([outgoing(1)], SUBSCRIBED)
    held = transport.claim(["alpha"], 10, 30)
    transport.renew(held, 60)
    assert client().hlen(transport.leases("alpha")) == 1
    transport.retry_later(held[0], 60, "boom")
    transport.trim(["alpha"])
    assert client().hlen(transport.leases("alpha")) == 0


def test_a_stopping_worker_gives_back_what_its_last_wait_received(transport):
    transport.publish([outgoing(1)], SUBSCRIBED)
    assert transport.wait(["alpha"], 0.5)
    transport.close()  # as Worker.run does when it stops
    again = RedisStreamsTransport("other", dict(transport.options)).claim(["alpha"], 10, 30)
    assert [c.attempt for c in again] == [1], "given back, without an attempt"


def test_scripts_redis_forgot_are_loaded_again_and_nothing_is_skipped(configure):
    """Scripts go on pipelines by hash alone (no SCRIPT EXISTS round trip before each):
    after a SCRIPT FLUSH (or a restart) each is run again, loaded, and none is skipped."""
    server = PrivateRedis().start()
    try:
        transport = configure(url=server.url)
        alpha = [("test.happened", "alpha", False)]
        private = redis.Redis.from_url(server.url)
        transport.publish([outgoing(1), outgoing(2)], alpha)
        private.script_flush()
        transport.publish([outgoing(3)], alpha)
        first, second, third = transport.claim(["alpha"], 10, 30)
        transport.retry_later(first, 0.0, "once more")
        private.script_flush()
        assert transport.ack_many([second, third]) == [second, third]
        private.script_flush()
        # Nothing new: the claim promotes the due retry (after its read, when the script
        # had to be loaded again), so the next claim has it at the latest.
        again = transport.claim(["alpha"], 10, 30) or transport.claim(["alpha"], 10, 30)
        assert [(c.event_id, c.attempt) for c in again] == [(first.event_id, 2)]
        assert int(private.zcount(transport.owed("alpha"), "-inf", "(inf")) == 1
    finally:
        server.destroy()
