"""The worker: claims events for its groups and runs their handlers, one at a time.

Each event is handled inside ``transaction.atomic()`` together with its inbox row (and,
on the database transport, its ack), so its effects commit once. Attempts were already
counted by the claim; a failure is retried with backoff or becomes a dead letter, and the
group moves on. A heartbeat thread renews the leases of everything the worker holds.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
import traceback as tb
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, cast

from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.db.models.functions import Now
from django.dispatch import Signal

from .. import attempts as history
from .. import instrumentation, logfields, moving, pauses, rollup, sentry, signals, workers
from ..conf import get_settings
from ..envelope import Event
from ..exceptions import BackgroundThreadDied, PermanentFailure, TransportUnavailable
from ..models import DeadLetter
from ..outbox import OUTBOX_CHANNEL, handling
from ..registry import Handler, registry
from ..savepoint import LazySavepoint
from ..subscriptions import handled_types
from ..text import describe, storable
from ..transports.base import Claimed, FiltersTypes, Transport
from ..triage import fingerprint
from . import failpoints, inbox
from .relay import Relay
from .retry import backoff, policy_for
from .wakeup import Waiter
from .watchdog import Watchdog

logger = logging.getLogger("django_events.worker")
RECONNECT_MAX_DELAY = 2.0  # seconds between reconnection attempts once the database is back
NO_HANDLERS = (
    "No event handlers are registered in this process, so this worker delivers events to "
    "nobody. Handlers are imported from the modules named in AUTODISCOVER_MODULES "
    "(events.py and handlers.py by default) of each installed app: check that module's "
    "name and that its app is in INSTALLED_APPS."
)

OUTAGES = (InterfaceError, OperationalError, TransportUnavailable)
"""Errors that say a server is out of reach: the loop reconnects and retries, and the
events in hand come back when their leases end. Anything else raised while recording an
outcome is logged with the event's real reason and the worker moves on."""
SAVEPOINTS_PER_COMMIT = 64
"""Most handler savepoints one batch transaction takes before it commits and the rest of
the batch goes on in the next: a PostgreSQL transaction with more than 64
subtransactions that wrote overflows its backend's subtransaction cache, which slows
every snapshot taken in the database until it ends (docs/concepts.md)."""


Ready = tuple[Claimed, Handler, Event]
"""An event whose handler can run: it decoded, its group handles its type, and an
attempt is left."""


class _ClaimLost(Exception):
    """The lease expired and another worker took the event; leave it to them."""


class Heartbeat(threading.Thread):
    """Renews the leases of claimed events while this worker is alive, and writes its
    registry row (``presence``, at most once per ``WORKERS["HEARTBEAT"]``)."""

    def __init__(
        self, transport: Transport, lease: float, presence: workers.Presence | None = None
    ) -> None:
        super().__init__(name="django-events-heartbeat", daemon=True)
        self.transport = transport
        self.lease = lease
        self.presence = presence
        self.held: dict[object, Claimed] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def hold(self, claimed: Sequence[Claimed]) -> None:
        with self.lock:
            self.held.update((id(c), c) for c in claimed)

    def release(self, claimed: Sequence[Claimed]) -> None:
        with self.lock:
            for item in claimed:
                self.held.pop(id(item), None)

    def run(self) -> None:
        try:
            every = min(self.lease / 3, self.presence.interval if self.presence else self.lease)
            while not self.stopped.wait(every):
                with self.lock:
                    held = list(self.held.values())
                if held:
                    try:
                        self.transport.renew(held, self.lease)
                    except Exception:
                        logger.warning("Could not renew %d leases", len(held), exc_info=True)
                        connections.close_all()
                if self.presence:
                    self.presence.beat()
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.stopped.set()


class RelayThread(threading.Thread):
    """The relay of a worker whose transport waits for work itself (``waits_for_work``):
    that worker blocks on the transport, so the outbox gets a thread of its own, woken
    by LISTEN (or the local wake-up) and the poll as usual."""

    def __init__(self, relay: Relay, database: str, poll_interval: float) -> None:
        super().__init__(name="django-events-relay", daemon=True)
        self.relay = relay
        self.database = database
        self.poll_interval = poll_interval
        self.stopped = threading.Event()

    def run(self) -> None:
        waiter = Waiter(self.database, [OUTBOX_CHANNEL])
        failures = 0
        try:
            while not self.stopped.is_set():
                try:
                    moved = self.relay.run_once()
                    failures = 0
                except Exception:
                    failures += 1
                    delay = min(RECONNECT_MAX_DELAY, self.poll_interval * 2**failures)
                    logger.exception("Relay failed; retrying in %.1fs", delay)
                    connections.close_all()
                    waiter.close()
                    self.stopped.wait(delay)
                    continue
                if not moved:
                    waiter.wait(self.poll_interval)
        finally:
            waiter.close()
            connections.close_all()

    def stop(self) -> None:
        self.stopped.set()


class Worker:
    def __init__(
        self,
        groups: Sequence[str] | None = None,
        *,
        transport: Transport | None = None,
        relay: bool = True,
        batch_size: int | None = None,
        lease: float | None = None,
        poll_interval: float | None = None,
    ) -> None:
        conf = get_settings()
        self.transport = transport or moving.switch()  # follows a live move (moving.py)
        self.groups = list(groups) if groups is not None else registry.groups()
        # Claim only what this code handles: a newer version's groups and types wait for it.
        self.types = handled_types(registry, self.groups) if self.transport.filters_types else None
        self.relay = Relay(self.transport) if relay else None
        self.batch_size = batch_size or conf.batch_size
        self.batch_bytes = conf.batch_bytes
        self.lease = lease or conf.lease
        self.poll_interval = poll_interval or conf.poll_interval
        self.database = self.transport.database
        self.batch_transactions = conf.batch_transactions
        self._watchdog = Watchdog(conf.call_timeout)
        self._pauses = pauses.PauseSet(self.database, self.poll_interval)
        self.rollup = rollup.Rollup(self.transport, self.groups)  # the admin's charts
        self._warned_type_pause = False
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.presence = workers.Presence(
            self.name, self.groups, self.transport.alias, self.database
        )
        self.running = True
        self.handled = 0
        self.retried = 0
        self.dead_lettered = 0
        self.skipped = 0
        self.wait_for_retries = 0.0
        self._retries_due: list[float] = []  # monotonic times of the retries scheduled here
        self._heartbeat: Heartbeat | None = None
        self._relay_thread: RelayThread | None = None
        self.on_loop: Callable[[], None] | None = None
        """Called at the top of every loop (``consume_events --health-file`` touches it)."""

    # -- loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the event in hand, then return from ``run``."""
        self.running = False

    def run(self, *, once: bool = False, wait_for_retries: float = 0.0) -> int:
        """Relay and handle until stopped (or, with ``once``, until nothing is available).

        With ``once``, a retry this worker scheduled that falls due within
        ``wait_for_retries`` seconds is waited for and handled before returning, so a
        cron run does not leave behind a retry due a moment later.
        """
        self.wait_for_retries = wait_for_retries
        channels = [self.transport.wake_channel or ""]
        if self.relay:
            channels.append(OUTBOX_CHANNEL)
        waiter = Waiter(self.database, channels, ignore=self._own_backend)
        if not once:  # a cron run (--once) is not a worker to watch
            self.presence.register()
        self._heartbeat = Heartbeat(self.transport, self.lease, self.presence)
        self._heartbeat.start()
        self._watchdog.start()
        if self.relay and self.groups and self.transport.waits_for_work and not once:
            self._relay_thread = RelayThread(self.relay, self.database, self.poll_interval)
            self._relay_thread.start()
        logger.info(
            "Worker %s started for groups %s",
            self.name,
            ", ".join(self.groups) or "-",
            extra=logfields.for_service(worker=self.name),
        )
        if not self.groups:
            logger.warning(NO_HANDLERS)
        try:
            with connections[self.database].execute_wrapper(self._watchdog.wrapper):
                self._loop(waiter, once)
        finally:
            self._watchdog.stop()
            self._heartbeat.stop()
            self.presence.stop()
            self.rollup.wait(rollup.STOP_WAIT)  # the lag sample's thread: briefly, not forever
            if self._relay_thread:
                self._relay_thread.stop()
                self._relay_thread.join(timeout=self.poll_interval + 30)
                self._relay_thread = None
            if self.transport.waits_for_work:
                self.transport.close()  # gives back what a last wait received
            waiter.close()
            self.transport.close()  # a transport that defers acks sends them now
            self.rollup.flush(sample=False)
        logger.info(
            "Worker %s stopped: %s",
            self.name,
            self.summary(),
            extra=logfields.for_service(worker=self.name),
        )
        return self.handled

    def summary(self) -> str:
        """What this worker did, counted per outcome (a retried event counts once per retry)."""
        return (
            f"{self.handled} handled, {self.retried} retried, "
            f"{self.dead_lettered} dead-lettered, {self.skipped} skipped as already handled"
        )

    def _loop(self, waiter: Waiter, once: bool) -> None:
        failures = 0
        while self.running:
            self._check_threads()
            if self.on_loop is not None:
                self.on_loop()
            self.rollup.maybe_flush()
            try:
                worked = self.step()
                failures = 0
            except (DatabaseError, InterfaceError, TransportUnavailable) as exc:
                if once:  # cron and tests want an exit code, not a retry loop
                    raise
                failures += 1
                delay = min(RECONNECT_MAX_DELAY, self.poll_interval * 2**failures)
                what = "Transport" if isinstance(exc, TransportUnavailable) else "Database"
                logger.exception("%s error; retrying in %.1fs", what, delay)
                connections.close_all()
                waiter.close()
                time.sleep(delay)
                continue
            if worked:
                continue
            retry_in = self._until_retry()
            if once:
                if retry_in is None or retry_in > self.wait_for_retries:
                    return
                time.sleep(retry_in)
                continue
            wait = self.poll_interval if retry_in is None else min(self.poll_interval, retry_in)
            # The connection is kept across waits (CONN_MAX_AGE does not apply to a worker):
            # reconnecting on every wake-up would cost more than the work itself. A
            # connection that broke meanwhile raises above and is replaced.
            self._watchdog.disarm()
            if not (self.transport.waits_for_work and self.groups):
                waiter.wait(wait)
                continue
            try:
                self.transport.wait(self._pauses.get().claimable(self.groups), wait)
            except TransportUnavailable:
                logger.warning("Transport unavailable while waiting", exc_info=True)
                time.sleep(self.poll_interval)

    def _until_retry(self) -> float | None:
        """Seconds until the earliest retry this worker scheduled falls due (0 once it has),
        or None if none is pending: the wait for work ends then, so "retrying in 0.2s"
        happens 0.2 s later rather than a poll later."""
        if not self._retries_due:
            return None
        wait = self._retries_due[0] - time.monotonic()
        if wait > 0:
            return wait
        heapq.heappop(self._retries_due)
        return 0.0

    def _check_threads(self) -> None:
        """A worker whose heartbeat, relay or watchdog thread died would run on without
        renewing leases, relaying or bounding calls: it stops, loudly, instead. The
        charts' lag sample thread is not among them: it ends after each sample and logs
        its failures (rollup.py)."""
        for thread in (self._heartbeat, self._relay_thread, self._watchdog):
            if thread is not None and thread.ident is not None and not thread.is_alive():
                logger.critical(
                    "Worker %s: its %s thread died (its traceback is above); stopping",
                    self.name,
                    thread.name,
                )
                raise BackgroundThreadDied(f"The worker's {thread.name} thread died.")

    def _own_backend(self) -> int | None:
        """PostgreSQL backend of this worker's connection: its relay's NOTIFY needs no wake-up."""
        raw = connections[self.database].connection
        info = getattr(raw, "info", None)
        return getattr(info, "backend_pid", None)

    def step(self) -> bool:
        """Relay what is committed, then claim and handle one batch; True if anything moved.

        A transport whose groups read the log (``reads_log``) gets new events from
        ``publish()`` itself; its relay moves only rows an older release left in the
        outbox, so the claim comes first and a wake-up reaches the handler without the
        relay's round trips before it."""
        relay = None if self._relay_thread else self.relay
        if relay is not None and self.transport.reads_log:
            handled = self.process_batch()
            return bool(relay.run_once()) or bool(handled)
        moved = relay.run_once() if relay is not None else 0
        return bool(self.process_batch()) or bool(moved)

    def process_batch(self) -> int:
        """Claim up to ``batch_size`` events (and ``BATCH_BYTES`` of them) and handle them;
        return how many were claimed."""
        claimed = self._claim()
        if not claimed:
            return 0
        if self._heartbeat:
            self._heartbeat.hold(claimed)
        failpoints.hit("worker.after_claim")
        try:
            rest = self._handle_together(claimed) if self.batch_transactions else claimed
            for index, item in enumerate(rest):
                if index == 1:
                    failpoints.hit("worker.mid_batch")
                if not self.running:
                    self.transport.release(rest[index:])
                    break
                self.handle(item)
        finally:
            if self._heartbeat:
                self._heartbeat.release(claimed)
        return len(claimed)

    def _claim(self) -> list[Claimed]:
        # Paused groups and types are left unclaimed; the pause set is read at most once
        # per poll interval, so a pause or a resume takes effect within one poll.
        paused = self._pauses.get()
        groups = paused.claimable(self.groups) if paused else self.groups
        if not groups:
            return []
        if self.types is None:
            if paused.types and not self._warned_type_pause:
                self._warned_type_pause = True
                logger.warning(
                    "Transport %r cannot leave one event type unclaimed: pauses of a single "
                    "type are ignored here, only whole groups pause",
                    self.transport.alias,
                )
            return self.transport.claim(
                groups, self.batch_size, self.lease, max_bytes=self.batch_bytes
            )
        types = paused.filter_types(self.types) if paused else self.types
        claim = cast(FiltersTypes, self.transport).claim
        return claim(groups, self.batch_size, self.lease, types=types, max_bytes=self.batch_bytes)

    def _handle_together(self, claimed: list[Claimed]) -> list[Claimed]:
        """Handle each group's share of the batch in one transaction, sharing one commit
        (``_commit``). Returns the events left to handle one at a time: those to
        dead-letter without running a handler, and a group's only event, which
        ``handle`` commits as a batch of one."""
        by_group: dict[str, list[Ready]] = {}
        alone: list[Claimed] = []
        for item in claimed:
            handler = registry.get(item.group, item.event_type)
            if (
                item.event is None
                or handler is None
                or item.attempt > policy_for(item.group, handler).max_attempts
            ):
                alone.append(item)
            else:
                by_group.setdefault(item.group, []).append((item, handler, item.event))
        for ready in by_group.values():
            if len(ready) == 1:
                alone.append(ready[0][0])
                continue
            while ready:
                ready = self._commit(ready)
        return alone

    def _commit(self, ready: list[Ready]) -> list[Ready]:
        """Run the handlers of ``ready`` in one transaction and record each outcome: the
        one commit path of the worker, for a batch and for a single event (a batch of
        one). Returns the events left for the next transaction.

        Acks, inbox rows and every handler's writes commit together, so effects stay once
        per group, and no handler runs twice for one attempt (docs/guarantees.md, "6. Once
        per attempt"). In a batch each handler runs in a savepoint (taken at its first SQL
        statement): one that raises has its writes rolled back, its inbox row and ack
        left out, and its failure recorded after the commit, while its neighbours'
        effects commit as they are; a transaction that has taken
        ``SAVEPOINTS_PER_COMMIT`` savepoints commits, and the rest goes on in the next.
        A batch of one needs no savepoint, its transaction is one: its ack (on a
        transport that acks in the transaction) is what keeps it from other workers,
        or its ``hold`` where acking would lock what the rest of its claimed batch shares
        (``ack_locks_batch``: the heartbeat must go on renewing it), and anything that
        fails in that transaction, the handler, the inbox row or the commit, rolls all of
        it back and is the event's failed attempt (docs/internals.md, "One commit path in
        the worker").
        """
        started = time.perf_counter()
        alone = len(ready) == 1
        in_transaction = self.transport.acks_in_transaction  # read once: a move may flip it
        acks_first = alone and not self.transport.ack_locks_batch  # else held, acked last
        done: list[Ready] = []
        failed: list[tuple[Claimed, Handler, Exception]] = []
        later: list[Ready] = []
        lost: list[Ready] = []
        skipped: list[Ready] = []
        acked: list[Claimed] = []
        ours: list[tuple[str, uuid.UUID]] = []  # inbox rows added here for events not handled
        connection = connections[self.database]
        savepoints = 0
        try:
            with transaction.atomic(using=self.database):
                owned = [item for item, _, _ in ready]
                if in_transaction:  # kept from every other worker until this commit
                    owned = (
                        self.transport.ack_many(owned) if acks_first else self.transport.hold(owned)
                    )
                owned_ids = {id(item) for item in owned}
                # Slots by the decoded event's id: a transport's event_id may be its text.
                slots = [(item.group, event.id) for item, _, event in ready]
                fresh = inbox.record_many(
                    self.database,
                    [slots[i] for i, (item, _, _) in enumerate(ready) if id(item) in owned_ids],
                )
                for index, (item, handler, event) in enumerate(ready):
                    if savepoints >= SAVEPOINTS_PER_COMMIT:
                        later = ready[index:]
                        break
                    if index == 1:
                        failpoints.hit("worker.mid_batch")
                    slot = slots[index]
                    if id(item) not in owned_ids:
                        lost.append(ready[index])  # its lease ended and another worker took it
                        continue
                    if slot not in fresh:
                        skipped.append(ready[index])  # handled before, or twice in this batch
                        continue
                    fresh.discard(slot)
                    savepoint = None if alone else LazySavepoint(connection)
                    try:
                        with (
                            connection.execute_wrapper(savepoint) if savepoint else nullcontext(),
                            handling(event),
                            instrumentation.consuming(item, event),
                            sentry.reporting(item),
                            self.presence.handling(item),
                            self._watchdog.paused(),
                        ):
                            handler.call(event)
                    except Exception as exc:
                        if savepoint is None:
                            raise  # alone: the whole transaction rolls back
                        savepoint.rollback()
                        failed.append((item, handler, exc))
                        ours.append(slot)
                    else:
                        done.append((item, handler, event))
                    if savepoint is not None:
                        savepoints += savepoint.taken
                unhandled = [item for item, _, _ in (*failed, *later)]
                ours += [slot for slot in slots[len(ready) - len(later) :] if slot in fresh]
                if ours:
                    inbox.forget(self.database, ours)
                unhandled_ids = {id(item) for item in unhandled}
                acked = [item for item in owned if id(item) not in unhandled_ids]
                if in_transaction and not acks_first:
                    self.transport.ack_many(acked)
                failpoints.hit("worker.after_handler")
        except Exception as exc:
            if not alone:
                raise
            item, handler, _ = ready[0]
            max_attempts = policy_for(item.group, handler).max_attempts
            self._failed(item, handler, max_attempts, exc, duration=time.perf_counter() - started)
            return []
        failpoints.hit("worker.after_commit")
        if not in_transaction and acked:
            self.transport.ack_many(acked)
        duration = (time.perf_counter() - started) / len(ready)
        self.skipped += len(skipped)
        for items, level, message in (
            (lost, logging.WARNING, "Lost the claim on %s for %s; another worker has it"),
            (skipped, logging.INFO, "Skipped %s for %s: already handled"),
        ):
            for item, _, event in items:
                logger.log(level, message, event.id, item.group, extra=logfields.for_claimed(item))
        for item, handler, event in done:
            self._handled(item, handler, event, duration)
        for item, handler, error in failed:
            max_attempts = policy_for(item.group, handler).max_attempts
            self._failed(item, handler, max_attempts, error, duration=duration)
        return later

    # -- one event ----------------------------------------------------------------------

    def handle(self, claimed: Claimed) -> None:
        """Handle one event. An outage goes up to the loop, which reconnects; any other
        error on the way is logged with the event, which comes back when its lease ends."""
        try:
            self._handle(claimed)
        except OUTAGES:
            raise
        except Exception:
            logger.exception(
                "Unexpected error while handling %s %s for group %s; it is delivered again",
                claimed.event_type,
                claimed.event_id,
                claimed.group,
                extra=logfields.for_claimed(claimed),
            )

    def _handle(self, claimed: Claimed) -> None:
        """Dead-letter an event no handler can run; commit any other as a batch of one."""
        handler = registry.get(claimed.group, claimed.event_type)
        policy = policy_for(claimed.group, handler)
        if claimed.decode_error is not None or claimed.event is None:
            self._dead_letter(
                claimed, handler, claimed.decode_class, claimed.decode_error or "", ""
            )
            return
        if handler is None:
            self._dead_letter(
                claimed,
                None,
                "NoHandler",
                f"Group {claimed.group!r} has no handler for {claimed.event_type!r} here.",
                "",
            )
            return
        if claimed.attempt > policy.max_attempts:
            self._dead_letter(
                claimed,
                handler,
                "LeaseExpired",
                "The worker running the last attempt stopped before finishing it "
                "(killed, out of memory, or lost its connection).",
                "",
                attempts=policy.max_attempts,  # this claim is not an attempt: none is left
            )
            return
        self._commit([(claimed, handler, claimed.event)])

    def _handled(self, claimed: Claimed, handler: Handler, event: Event, duration: float) -> None:
        self.handled += 1
        instrumentation.handled(claimed, event, duration)
        self.rollup.count(claimed.group, rollup.HANDLED)
        if claimed.attempt > 1:  # a first success is not history (docs/internals.md)
            history.note(self.database, claimed, self.name, history.HANDLED, duration=duration)
        logger.debug(
            "Handled %s %s for %s (attempt %d, %s)",
            claimed.event_type,
            event.id,
            claimed.group,
            claimed.attempt,
            _took(duration),
            extra=logfields.for_claimed(claimed),
        )
        _send(
            signals.event_handled,
            event=event,
            group=claimed.group,
            handler=handler,
            attempt=claimed.attempt,
            duration=duration,
        )

    def _failed(
        self,
        claimed: Claimed,
        handler: Handler,
        max_attempts: int,
        exc: Exception,
        *,
        duration: float | None = None,
    ) -> None:
        instrumentation.failed(claimed)
        self.rollup.count(claimed.group, rollup.FAILED)
        message, trace = describe(exc), storable("".join(tb.format_exception(exc)))
        error = f"{type(exc).__name__}: {message}"
        if claimed.attempt >= max_attempts or isinstance(exc, PermanentFailure):
            self._dead_letter(claimed, handler, _qualified(exc), message, trace, duration=duration)
            return
        delay = backoff(policy_for(claimed.group, handler), claimed.attempt)
        logger.warning(
            "%s failed on %s %s for %s (attempt %d of %d, %s), retrying in %s: %s",
            handler.name,
            claimed.event_type,
            claimed.event_id,
            claimed.group,
            claimed.attempt,
            max_attempts,
            _took(duration),
            _seconds(delay),
            error,
            extra=logfields.for_claimed(claimed),
        )
        try:
            self.transport.retry_later(claimed, delay, error)
        except OUTAGES:
            raise
        except Exception as unrecorded:
            # Kept as a dead letter rather than lost to a LeaseExpired one later.
            logger.exception(
                "Could not record the retry of %s",
                claimed.event_id,
                extra=logfields.for_claimed(claimed),
            )
            note = f"\n\nThe retry could not be recorded: {_qualified(unrecorded)}: "
            self._dead_letter(
                claimed, handler, _qualified(exc), message, trace + note + describe(unrecorded)
            )
        else:
            self.retried += 1
            instrumentation.retried(claimed)
            history.note(
                self.database,
                claimed,
                self.name,
                history.FAILED,
                duration=duration,
                error_class=_qualified(exc),
                message=message,
            )
            heapq.heappush(self._retries_due, time.monotonic() + delay)

    def _dead_letter(
        self,
        claimed: Claimed,
        handler: Handler | None,
        error_class: str,
        message: str,
        trace: str,
        *,
        attempts: int | None = None,
        duration: float | None = None,
    ) -> None:
        attempts = claimed.attempt if attempts is None else attempts
        error_class, message, trace = storable(error_class), storable(message), storable(trace)
        try:
            dead = self._store_dead_letter(
                claimed, handler, error_class, message, trace, attempts, duration
            )
        except _ClaimLost:
            logger.warning(
                "Lost the claim on %s for %s before dead-lettering it; another worker has it",
                claimed.event_id,
                claimed.group,
                extra=logfields.for_claimed(claimed),
            )
            return
        except OUTAGES:
            raise
        except Exception:
            logger.exception(
                "Could not finish dead-lettering %s %s for group %s (%s: %s); "
                "it may be delivered again",
                claimed.event_type,
                claimed.event_id,
                claimed.group,
                error_class,
                message,
                extra=logfields.for_claimed(claimed),
            )
            return
        self.dead_lettered += 1
        instrumentation.dead_lettered(claimed)
        self.rollup.count(claimed.group, rollup.DEAD)
        logger.error(
            "Dead letter: %s %s for group %s after %d attempts%s: %s: %s",
            claimed.event_type,
            claimed.event_id,
            claimed.group,
            attempts,
            "" if duration is None else f" (the last {_took(duration)})",
            error_class,
            message,
            extra=logfields.for_claimed(claimed),
        )
        _send(signals.event_dead_lettered, dead_letter=dead)

    def _store_dead_letter(
        self,
        claimed: Claimed,
        handler: Handler | None,
        error_class: str,
        message: str,
        trace: str,
        attempts: int,
        duration: float | None = None,
    ) -> DeadLetter:
        with transaction.atomic(using=self.database):
            dead = DeadLetter.objects.using(self.database).create(
                event_id=claimed.event_id,
                group=claimed.group,
                handler=handler.name if handler else "",
                attempts=attempts,
                error_class=error_class[:300],
                error_message=message,
                traceback=trace,
                fingerprint=fingerprint(error_class, handler.name if handler else "", trace),
                first_failed_at=claimed.first_failed_at or Now(),
                last_failed_at=Now(),
            )
            history.record(
                self.database,
                claimed,
                self.name,
                history.DEAD_LETTERED,
                duration=duration,
                error_class=error_class,
                message=message,
                number=attempts,
            )
            if not self.transport.dead_letter(claimed):
                raise _ClaimLost
        dead.refresh_from_db(fields=["first_failed_at", "last_failed_at"])
        return dead


def _send(signal: Signal, **kwargs: Any) -> None:
    """Send a signal whose receivers must not stop the worker: their errors are logged."""
    for receiver, result in signal.send_robust(sender=Worker, **kwargs):
        if isinstance(result, Exception):
            logger.error("Signal receiver %r failed", receiver, exc_info=result)


def _took(duration: float | None) -> str:
    """A handler's run time for the log: milliseconds, as most handlers take less than 1 s."""
    return "-" if duration is None else f"{duration * 1000:.1f} ms"


def _seconds(delay: float) -> str:
    """A delay as the log says it: to the hundredth below 10 s ("0.15s"), whole above."""
    return f"{delay:.2f}s" if delay < 10 else f"{delay:.0f}s"


def _qualified(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
