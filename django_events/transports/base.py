"""The transport interface: the only thing the engine knows about a queue.

A transport receives relayed events (``publish``), hands a worker the events owed to its
groups under a lease (``claim``), and is told how each ended: ``ack``, ``retry_later`` or
``dead_letter``. The engine owns everything else: decoding, the inbox, handlers, retry
policy and ``DeadLetter`` rows. Capability flags say what a transport promises; the
contract tests read them.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from django.core.checks import CheckMessage

from ..envelope import Event, cloudevent_attributes, split_trace
from ..exceptions import EventsConfigurationError, TransportUnavailable, UndecodableEvent
from ..signing import Signing
from ..text import storable

if TYPE_CHECKING:
    from ..models import EventRecord
    from ..stores import SubscriptionStore

F = TypeVar("F", bound=Callable[..., Any])


def translating(unavailable: Callable[[Exception], str | None]) -> Callable[[F], F]:
    """A method decorator for a broker transport: an error that ``unavailable`` describes
    (it returns a message, or None for any other error) is raised again as
    ``TransportUnavailable``, which the engine retries with a growing delay."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                message = unavailable(exc)
                if message is None:
                    raise
                raise TransportUnavailable(message) from exc

        return cast(F, wrapper)

    return decorate


def within_budget(sizes: Iterable[int], max_bytes: int | None) -> int:
    """How many of the first items whose sizes are ``sizes`` a claim of ``max_bytes``
    takes: all while they fit, and always at least one."""
    taken = total = 0
    for size in sizes:
        total += size
        if max_bytes is not None and taken and total > max_bytes:
            break
        taken += 1
    return taken


def text_size(*values: Any) -> int:
    """Characters (or bytes) of the stored texts among ``values``; a cheap stand-in for
    the memory their decoding will take."""
    return sum(len(v) for v in values if isinstance(v, (str, bytes)))


ENVELOPE_RESERVE = 4096
"""Bytes of ``max_message_bytes`` kept for what a transport wraps around data and metadata
(type, key, ids, time, source, attributes): the longest allowed type and key fit."""


STORABLE_CHARS = 2000
"""Longest decode error kept: enough to name the problem, never a whole hostile body."""
FALLBACK_NAMESPACE = uuid.UUID("7c1e8a52-5f0e-4d67-9a57-5d6c8f3b2e10")
"""Namespace of the ids given to messages that carry no event id of their own."""


def fallback_id(where: str) -> uuid.UUID:
    """An event id for a message with no readable one, so its dead letter has one: derived
    from where the message lives, so each redelivery of it names the same id."""
    return uuid.uuid5(FALLBACK_NAMESPACE, where)


def decode_failure(exc: BaseException, where: str = "") -> str:
    """The reason a message could not be decoded, storable: ``UndecodableEvent`` says it
    already; any other error is named by its class (a bug this message found)."""
    reason = str(exc) if isinstance(exc, UndecodableEvent) else f"{type(exc).__name__}: {exc}"
    return storable(f"{where}: {reason}" if where else reason, STORABLE_CHARS)


def wire_time(value: Any) -> str:
    """An event's time as every transport writes it: ISO 8601 with its UTC offset, whatever
    the database handed back (SQLite gives naive UTC datetimes, or text; docs/wire-format.md)."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # not a time: the consumer's decoder names it
    if not isinstance(value, dt.datetime):
        return "" if value is None else str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat()


def wire_uuid(value: Any) -> str:
    """An id as every transport writes it: the hyphenated form (SQLite stores 32 hex digits)."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        return str(value)  # not a UUID: the consumer's decoder names it


def cloudevent_json(event: Outgoing, event_id: str, *, ascii_only: bool = False) -> str:
    """The CloudEvents JSON envelope every transport sends (docs/wire-format.md): the
    attributes encoded here, the stored data and metadata spliced in as they are (JSON
    text already, never decoded and encoded again), the trace context lifted out of the
    metadata into its extension attributes. ``ascii_only`` escapes what a broker's body
    charset may refuse in the attributes (SQS)."""
    head = cloudevent_attributes(
        event_id,
        event.type,
        event.source,
        wire_time(event.occurred_at),
        event.version,
        key=event.key,
        correlation_id=None if event.correlation_id is None else wire_uuid(event.correlation_id),
        causation_id=None if event.causation_id is None else wire_uuid(event.causation_id),
    )
    metadata, trace = split_trace(event.metadata)
    head.update(trace)
    text = json.dumps(head, ensure_ascii=ascii_only, separators=(",", ":"))[:-1]
    if metadata:
        text += ',"metadata":' + metadata
    return text + ',"data":' + (event.data or "{}") + "}"


@dataclass(frozen=True)
class Outgoing:
    """An event on its way from the outbox to a transport, fields as stored."""

    position: int
    event_id: uuid.UUID
    type: str
    key: str | None
    version: int = 1
    data: str = "{}"
    metadata: str = ""
    occurred_at: dt.datetime | None = None
    source: str = ""
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None


@dataclass
class Claimed:
    """One event claimed for one group, under a lease, with the attempt already counted."""

    group: str
    attempt: int
    receipt: Any
    event_id: uuid.UUID
    event_type: str
    event: Event | None = None
    decode_error: str | None = None
    decode_class: str = "UndecodableEvent"
    """The dead letter's error class for a ``decode_error`` (``UnverifiedMessage``...)."""
    first_failed_at: dt.datetime | None = None
    size: int = 0
    """Bytes received for it, where a transport counts them against a claim's budget."""


Subscriptions = list[tuple[str, str, bool]]
"""``(event_type, group, ordered)`` rows: what ``publish`` and ``setup`` take."""


def _no_subscriptions() -> Subscriptions:
    return []


def _default_attempts(group: str) -> int:
    return 5


def _restore_nothing(store: SubscriptionStore) -> int:
    return 0


@dataclass(frozen=True)
class TransportContext:
    """What the engine hands a transport: the only settings and handlers it sees.

    A transport reads no settings and no handler registry of its own (docs/internals.md,
    "The transport boundary"); the engine builds this once per transport from the
    ``DJANGO_EVENTS`` setting (a changed setting builds new transports) and passes it at
    construction. Values are plain, so the hot paths read an attribute, as they read the
    parsed settings before; the two callables are asked only where the transport asked
    the registry before (start-up checks, recovery, ``redeliver``, a dead queue's limit).
    The defaults are those of an empty ``DJANGO_EVENTS``, for a transport built outside a
    Django project.
    """

    subscriptions: Callable[[], Subscriptions] = _no_subscriptions
    """This deployment's own handlers as subscriptions, read at each call: handlers may be
    registered after the transport was built. Not the shared store's union, which the
    relay passes to ``publish``."""

    max_attempts: Callable[[str], int] = _default_attempts
    """The most attempts any handler of a group gets (``MAX_ATTEMPTS``, per group and per
    handler): a broker that dead-letters by itself (SQS's redrive) is set to it."""

    restore_subscriptions: Callable[[SubscriptionStore], int] = _restore_nothing
    """Declare this deployment's own subscriptions again in a shared store that lost some
    of them (Redis restarted empty), adding only, never retiring; returns how many were
    missing. Asked by recovery only (docs/services.md, "When Redis loses data")."""

    signing: Signing = field(default_factory=Signing)
    """Signs what a broker carries and checks what it receives (``SIGNING_KEYS``)."""

    lease: float = 30.0
    """``LEASE``: seconds a claim holds; a broker's visibility timeout defaults to it."""

    poll_interval: float = 1.0
    """``POLL_INTERVAL``: how long an idle worker waits between claims."""

    batch_size: int = 50
    """``BATCH_SIZE``: events a worker claims at once."""

    batch_bytes: int = 4 * 1024 * 1024
    """``BATCH_BYTES``: the data and metadata a worker's claim takes at most."""

    relay_batch_size: int = 500
    """``RELAY_BATCH_SIZE``: events read from the log per publish when re-sending."""

    max_payload_bytes: int = 256 * 1024
    """``MAX_PAYLOAD_BYTES``: a received body larger than twice this is refused undecoded."""

    outbox_databases: tuple[str, ...] = ("default",)
    """``OUTBOX_DATABASES``: where events are published, for a transport's own check."""

    backoff_base: float = 1.0
    """``BACKOFF_BASE`` of the global retry policy."""

    backoff_max: float = 300.0
    """``BACKOFF_MAX`` of the global retry policy."""

    def ordered(self, group: str, event_type: str) -> bool:
        """Whether this deployment's handlers take ``group``'s ``event_type`` in key order."""
        return (event_type, group, True) in self.subscriptions()


_context_factory: Callable[[], TransportContext] = TransportContext


def use_context(factory: Callable[[], TransportContext]) -> None:
    """Set what a transport built without a context gets: the app installs the engine's
    (``django_events.boundary.transport_context``) when it is ready."""
    global _context_factory
    _context_factory = factory


def default_context() -> TransportContext:
    """The context of a transport built without one (a test, a script, the handler)."""
    return _context_factory()


@dataclass(frozen=True)
class GroupStatus:
    pending: int = 0
    in_flight: int = 0
    oldest_pending_age_s: float | None = None
    retrying: int = 0
    parked: int = 0
    lagging: bool = False


class FiltersTypes(Protocol):
    """The claim of a transport with ``filters_types``: ``types`` restricts each group to
    the event types listed for it (a group left out gets none); None claims every type."""

    def claim(
        self,
        groups: Sequence[str],
        limit: int,
        lease: float,
        *,
        types: Mapping[str, Collection[str]] | None = None,
        max_bytes: int | None = None,
    ) -> list[Claimed]: ...


class Transport:
    """Base class; subclasses implement the dialect of one queue."""

    supports_ordering: bool = False
    """Honours ``ordered=True``: one event per key in flight, in publish order."""

    supports_delayed_retry: bool = False
    """``retry_later`` delays redelivery without blocking the rest of the group."""

    persistent: bool = False
    """Events survive a restart of the transport's server."""

    acks_in_transaction: bool = False
    """``ack`` runs inside the handler's transaction, so handling and acking commit together."""

    ack_locks_batch: bool = False
    """With ``acks_in_transaction``: acking one event locks, until the transaction ends, a
    record the rest of its claimed batch shares, which the heartbeat then cannot renew. The
    worker holds a batch of one (``hold``) and acks it at the end, as a batch, rather than
    acking it first (docs/internals.md, "One commit path in the worker")."""

    idempotent_publish: bool = False
    """Publishing an event already owed to a group adds no second delivery. Without it, the
    batch a relay sends again after a crash may deliver twice, and the inbox absorbs that."""

    wake_channel: str | None = None
    """PostgreSQL channel notified when new work is claimable, if any."""

    waits_for_work: bool = False
    """An idle worker blocks in ``wait`` (a blocking read, a long poll) instead of sleeping;
    its relay then runs in a thread of its own, woken by the outbox as before."""

    ordering_note: str = ""
    """Why ``ordered=True`` is refused: the hint of system check E008, without ordering."""

    max_message_bytes: int | None = None
    """Largest message the transport carries, envelope included; ``publish()`` refuses an
    event whose data and metadata leave less than ``ENVELOPE_RESERVE`` bytes of it."""

    filters_types: bool = False
    """``claim(types=...)`` takes only the event types asked for in each group, leaving the
    rest for a worker that handles them (a newer version, during a rolling deploy). Without
    it a worker may be handed a type it has no handler for (a ``NoHandler`` dead letter)."""

    shares_subscriptions: bool = False
    """The relay fans out to every subscription declared in this transport's
    ``subscription_store()``, by any service sharing it; otherwise to the relay's own
    handlers only."""

    routes_itself: bool = False
    """The broker fans each event out to every group subscribed to its type (SNS filter
    policies): the relay sends each event once with ``publish_to_all`` and reads no
    subscriptions; ``publish`` still targets the groups it names (replay, retry)."""

    reads_log: bool = False
    """Consumers read the event log itself (the log transport): the relay moves events into
    the log and calls ``logged`` instead of ``publish``; ``publish`` still targets the
    groups it names (replay, redelivery)."""

    accepted_options: frozenset[str] | None = None
    """The ``OPTIONS`` keys this transport understands; any other is refused by name."""

    def __init__(
        self, alias: str, options: dict[str, Any], context: TransportContext | None = None
    ) -> None:
        if self.accepted_options is not None:
            unknown = sorted(set(options) - self.accepted_options)
            if unknown:
                raise EventsConfigurationError(
                    f"DJANGO_EVENTS['TRANSPORTS'][{alias!r}]['OPTIONS']: unknown option "
                    f"{unknown[0]!r}; {type(self).__name__} takes "
                    f"{', '.join(sorted(self.accepted_options))}."
                )
        self.alias = alias
        self.options = options
        self.context = context or default_context()
        """Settings and handlers, as the engine hands them (``TransportContext``)."""

    @property
    def database(self) -> str:
        """The database alias in which handlers, the inbox and dead letters commit."""
        return str(self.options.get("database", "default"))

    def subscription_store(self) -> SubscriptionStore | None:
        """Where services sharing this transport declare their subscriptions and every
        relay reads them (``shares_subscriptions``); None for a transport without one."""
        return None

    def check(self) -> list[CheckMessage]:
        return []

    def check_server(self) -> list[CheckMessage]:
        """What only the running server can tell (persistence, reachability).

        Asked by ``check --deploy`` and by the commands that use the transport
        (``consume_events``, ``setup_events``), not by every ``manage.py`` command: it
        needs the server, and what it finds concerns production, not each ``shell``.
        """
        return []

    def setup(
        self, subscriptions: Sequence[tuple[str, str, bool]], *, dry_run: bool = False
    ) -> list[str]:
        """Create what the transport needs for ``subscriptions``, idempotently.

        Returns one human-readable line per step taken (or, with ``dry_run``, planned).
        A transport with nothing to provision returns an empty list.
        """
        return []

    def access_policies(self, subscriptions: Sequence[tuple[str, str, bool]]) -> dict[str, Any]:
        """Least-privilege access policies by role (``setup_events --iam``), for transports
        whose server has an access model; empty otherwise."""
        return {}

    def joins_outbox_transaction(self, using: str) -> bool:
        """Whether ``publish`` can run inside the relay's transaction on ``using``."""
        return False

    def publish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """Make ``events`` claimable by every group in ``subscriptions``, and no other.

        Delivered once per group however often published while owed, if
        ``idempotent_publish``; at least once otherwise."""
        raise NotImplementedError

    def republish(
        self, events: Sequence[Outgoing], subscriptions: Sequence[tuple[str, str, bool]]
    ) -> None:
        """``publish`` for a replay: ``events`` again, to the groups in ``subscriptions``
        only. A group that still owes an event (its delivery not done yet: waiting, in
        flight, due for a retry) gets no second delivery of it, which it would run twice,
        and dead-letter twice if it fails; one that owes it no more gets it again. By
        default ``publish``, which keeps that promise with ``idempotent_publish``
        (docs/internals.md, "One path per event")."""
        self.publish(events, subscriptions)

    def logged(self, events: Sequence[Outgoing]) -> None:
        """The relay moved ``events`` into the event log (``reads_log`` only), in the
        transaction that is about to commit."""

    def publish_to_all(self, events: Sequence[Outgoing]) -> None:
        """Make ``events`` claimable by every group the broker has subscribed to their type
        (``routes_itself`` only)."""
        raise NotImplementedError

    def claim(
        self, groups: Sequence[str], limit: int, lease: float, *, max_bytes: int | None = None
    ) -> list[Claimed]:
        """Claim up to ``limit`` events owed to ``groups`` under a ``lease``, counting an
        attempt for each. With ``max_bytes``, stop once their data and metadata, as stored
        or received, add up to it (at least one event is claimed); what was fetched past it
        is given back or kept for the next claim, its attempt not counted twice."""
        raise NotImplementedError

    def wait(self, groups: Sequence[str], timeout: float) -> bool:
        """Block up to ``timeout`` seconds until work for ``groups`` may be claimable.

        Only called when ``waits_for_work`` is set. True if something arrived; whatever
        the wait already received is returned by the next ``claim``, or given back by
        ``close`` (which a worker that waits calls when it stops)."""
        raise NotImplementedError

    def renew(self, claimed: Sequence[Claimed], lease: float) -> None:
        """Extend the lease of events a live worker still holds."""
        raise NotImplementedError

    def release(self, claimed: Sequence[Claimed]) -> None:
        """Give back events claimed but never attempted (the worker is stopping)."""
        raise NotImplementedError

    def ack(self, claimed: Claimed) -> bool:
        """Done with ``claimed``; False if the claim was lost (lease expired, another took it)."""
        raise NotImplementedError

    def hold(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        """Inside the worker's transaction (``acks_in_transaction`` only): keep ``claimed``
        from every other worker until that transaction ends, and return those whose claim
        still holds. The worker then runs their handlers and acks those that succeeded."""
        return list(claimed)

    def ack_many(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        """Ack several at once; return those whose claim still held."""
        return [item for item in claimed if self.ack(item)]

    def retry_later(self, claimed: Claimed, delay: float, error: str) -> None:
        raise NotImplementedError

    def dead_letter(self, claimed: Claimed) -> bool:
        """Stop delivering ``claimed``; an ordered event keeps its key parked until redelivered.

        False if the claim was lost (another worker holds the event now)."""
        raise NotImplementedError

    def redeliver(self, event_id: uuid.UUID, group: str) -> None:
        """Deliver a dead-lettered event to ``group`` again, attempts reset.

        By default the event is read back from the event log and published anew to that
        one group, which suits a broker; a transport that keeps its own rows overrides it.
        """
        found = logged_events([event_id], self.database)
        if not found:
            raise LookupError(f"Event {event_id} is not in the event log.")
        event_type = found[0].type
        self.publish(found, [(event_type, group, self.context.ordered(group, event_type))])

    def discard(self, event_id: uuid.UUID, group: str) -> None:
        """Give up on a dead-lettered event for ``group`` for good, releasing its key if
        it was parked. Nothing to do for a transport that keeps nothing after a dead letter."""

    def status(self, groups: Sequence[str]) -> dict[str, GroupStatus]:
        raise NotImplementedError

    def backlog_by_type(self) -> dict[tuple[str, str], int] | None:
        """Events owed per ``(group, event type)``, or None if the transport cannot tell
        (a broker counts per group). Shows what a retired subscription still holds."""
        return None

    def drop_backlog(self, group: str, event_type: str) -> int | None:
        """Stop owing ``group`` the events of ``event_type`` it was owed (the subscription
        was unsubscribed); return how many were dropped, or None if the transport keeps
        nothing per type. The events stay in the event log, for ``replay_events``."""
        return None

    def housekeeping(self) -> None:
        """Called by the relay after each pass, outside any transaction; keep it cheap."""

    def close(self) -> None:
        """Release connections; the transport may be used again afterwards."""


def logged_events(event_ids: Sequence[uuid.UUID], using: str) -> list[Outgoing]:
    """The logged events with these ids, as the relay sends them, in publish order."""
    from ..models import EventRecord

    return as_outgoing(
        EventRecord.objects.using(using).filter(id__in=event_ids).order_by("position")
    )


def as_outgoing(records: Iterable[EventRecord]) -> list[Outgoing]:
    """Logged events (a queryset read once) as the relay sends them."""
    return [
        Outgoing(
            position=r.position,
            event_id=r.id,
            type=r.type,
            key=r.key,
            version=r.version,
            data=json.dumps(r.data, separators=(",", ":")),
            metadata=json.dumps(r.metadata, separators=(",", ":")) if r.metadata else "",
            occurred_at=r.occurred_at,
            source=r.source,
            correlation_id=r.correlation_id,
            causation_id=r.causation_id,
        )
        for r in records
    ]
