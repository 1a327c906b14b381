"""Tables behind the database queue.

The outbox and the deliveries are hot work tables: rows are deleted as soon as they are
done, so they hold only what is in flight. Their dead row versions wait for vacuum,
which a long-held snapshot anywhere in the database holds back, so their files grow
while one is open (measured in docs/performance.md, "Write and bloat budget"). The
event log is append-only and kept apart from them.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.db.models.functions import Now

from .conf import current_service


class OutboxMessage(models.Model):
    """An event committed by ``publish()`` that the relay has not moved on yet."""

    position = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField()
    type = models.CharField(max_length=200)
    version = models.PositiveIntegerField(default=1)
    key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - None means "no key"
    data = models.TextField()
    metadata = models.TextField(default="", blank=True)
    occurred_at = models.DateTimeField()
    source = models.CharField(max_length=200, default="", blank=True)
    correlation_id = models.UUIDField(null=True, blank=True)
    causation_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "django_events_outbox"

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class EventRecord(models.Model):
    """The event log: every relayed event, kept for audit and replay."""

    id = models.UUIDField(primary_key=True)
    position = models.BigIntegerField(unique=True)
    type = models.CharField(max_length=200)
    version = models.PositiveIntegerField(default=1)
    key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - None means "no key"
    data = models.JSONField()
    metadata = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField()
    source = models.CharField(max_length=200, default="", blank=True)
    correlation_id = models.UUIDField(null=True, blank=True, db_index=True)
    causation_id = models.UUIDField(null=True, blank=True)
    recorded_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "django_events_event"
        verbose_name = "event"
        # One index per looked-up column, not ``db_index``'s pair: every lookup of ``type``
        # and ``key`` is an equality (the admin's filters, replay, moving), so the
        # ``varchar_pattern_ops`` copy PostgreSQL gets for ``LIKE`` served nothing, and
        # only keyed events enter the key index (docs/performance.md, "Where the writes
        # and the dead tuples come from").
        indexes = [
            models.Index(fields=["type"], name="django_events_event_type"),
            models.Index(
                fields=["key"],
                name="django_events_event_key",
                condition=models.Q(key__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class Delivery(models.Model):
    """One event owed to one consumer group by the database transport."""

    id = models.BigAutoField(primary_key=True)
    event = models.ForeignKey(
        EventRecord, on_delete=models.DO_NOTHING, db_constraint=False, related_name="deliveries"
    )
    group_name = models.CharField(max_length=100)
    event_type = models.CharField(
        max_length=200,
        default="",
        db_default="",
        blank=True,
        help_text="The event's type, so a worker claims only the types it handles; empty on "
        "rows written without it (by hand, or by a relay of an older release): any worker "
        "of the group claims those.",
    )
    position = models.BigIntegerField()
    key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - None means "no key"
    ordered = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    available_at = models.DateTimeField(db_default=Now())
    claimed_until = models.DateTimeField(null=True, blank=True)
    claimed_alone = models.BooleanField(default=False, db_default=False)
    claimer = models.IntegerField(null=True, blank=True)  # PostgreSQL backend that claimed it
    lease_token = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    parked = models.BooleanField(default=False)
    last_error = models.TextField(default="", blank=True)
    first_failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "django_events_delivery"
        verbose_name_plural = "deliveries"
        # No index may name a column the claim sets (attempts, claimed_alone,
        # claimed_until, claimer, lease_token), in its fields or its condition: then the
        # claim's UPDATE is a HOT update, written to the heap page alone, with no new index
        # entries. Orphans are found through the claim index (docs/internals.md, "The
        # delivery table and HOT claims").
        indexes = [
            models.Index(
                fields=["group_name", "event_type", "position"], name="django_events_dlv_claim_type"
            ),
            models.Index(
                fields=["group_name", "key", "position"],
                name="django_events_dlv_key_order",
                condition=models.Q(ordered=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.group_name}: {self.event_id}"


class InboxRecord(models.Model):
    """Proof that a group handled an event; written in the handler's own transaction."""

    id = models.BigAutoField(primary_key=True)
    group_name = models.CharField(max_length=100)
    event_id = models.UUIDField()
    handled_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "django_events_inbox"
        constraints = [
            models.UniqueConstraint(
                fields=["group_name", "event_id"], name="django_events_inbox_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.group_name}: {self.event_id}"


class DeadLetter(models.Model):
    """An event a group gave up on after its last attempt; kept until someone decides."""

    class State(models.TextChoices):
        OPEN = "open", "open"
        RETRIED = "retried", "retried"
        DISCARDED = "discarded", "discarded"

    id = models.BigAutoField(primary_key=True)
    event = models.ForeignKey(
        EventRecord, on_delete=models.DO_NOTHING, db_constraint=False, related_name="dead_letters"
    )
    group = models.CharField(max_length=100)
    handler = models.CharField(max_length=300, blank=True, default="")
    service = models.CharField(
        max_length=100,
        blank=True,
        default=current_service,
        help_text="The SERVICE whose worker gave up on the event (whose handler failed).",
    )
    attempts = models.PositiveIntegerField()
    error_class = models.CharField(max_length=300)
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    fingerprint = models.CharField(
        max_length=16,
        blank=True,
        default="",
        help_text="Error class, handler and innermost project frame, hashed: one cause.",
    )

    class Meta:
        db_table = "django_events_deadletter"
        # The admin's filters and default order: state first, as triage looks at open ones.
        indexes = [
            models.Index(fields=["state", "group"], name="django_events_dl_state"),
            # Covering (on PostgreSQL): the failure groups are read from the index alone.
            models.Index(
                fields=["state", "fingerprint"],
                include=["id", "error_class", "handler", "first_failed_at", "last_failed_at"],
                name="django_events_dl_fingerprint",
            ),
            models.Index(fields=["state", "-last_failed_at"], name="django_events_dl_state_last"),
            models.Index(fields=["-last_failed_at"], name="django_events_dl_last"),
            models.Index(fields=["error_class"], name="django_events_dl_error"),
        ]
        permissions = [
            ("retry_deadletter", "Can retry a dead letter (re-runs its handler)"),
            ("discard_deadletter", "Can discard a dead letter"),
            ("view_payload", "Can view event payloads and tracebacks"),
            ("edit_deadletter", "Can edit a dead letter's payload and retry it as a new event"),
            ("redirect_deadletter", "Can redirect a dead letter to another group"),
        ]

    def __str__(self) -> str:
        return f"{self.group}: {self.error_class} on {self.event_id}"

    @classmethod
    def check(cls, **kwargs: Any) -> list[Any]:
        """Django's checks, less models.W040 ("non-key columns will be ignored").

        The fingerprint index's INCLUDE columns make the failure groups an index-only
        scan on PostgreSQL; where the backend has no covering indexes (SQLite) the index
        still works on its key columns, as intended. Django 6 runs this check on every
        command and repeats it once per index, so it would bury real warnings.
        """
        return [e for e in super().check(**kwargs) if getattr(e, "id", None) != "models.W040"]


class FailureCount(models.Model):
    """Open dead letters of one (group, fingerprint), kept by database triggers.

    Read instead of grouping the dead-letter table on every admin page; see
    :mod:`django_events.failure_counts` for what each column promises.
    """

    id = models.BigAutoField(primary_key=True)
    group = models.CharField(max_length=100)
    fingerprint = models.CharField(max_length=16)
    open_count = models.BigIntegerField(default=0)
    error_class = models.CharField(max_length=300, blank=True, default="")
    handler = models.CharField(max_length=300, blank=True, default="")
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    latest_id = models.BigIntegerField(default=0)

    class Meta:
        db_table = "django_events_failure_count"
        default_permissions = ()
        constraints = [
            models.UniqueConstraint(
                fields=["group", "fingerprint"], name="django_events_failure_count_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.group} {self.fingerprint}: {self.open_count}"


class StreamCheckpoint(models.Model):
    """How far a consumer group of an external transport (Redis Streams) is confirmed.

    Every logged event at or below ``position`` that the group subscribes to has been
    handled or dead-lettered. Kept in the database, outside the broker, so what a broker
    loses can be re-published from the event log. ``token`` is also stored in the broker:
    if the broker no longer has it, its data for the group is gone.
    """

    id = models.BigAutoField(primary_key=True)
    namespace = models.CharField(max_length=200)  # the transport's key prefix
    group = models.CharField(max_length=100)
    position = models.BigIntegerField(default=0)
    token = models.CharField(max_length=32)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "django_events_stream_checkpoint"
        constraints = [
            models.UniqueConstraint(
                fields=["namespace", "group"], name="django_events_checkpoint_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.namespace} {self.group}: {self.position}"


class Subscription(models.Model):
    """A group's subscription to an event type, declared by the service that consumes it.

    Every relay that shares this database fans out to every row, whichever service wrote
    it, so a consumer needs no change in the publisher's code. A deployment declares its
    own service's rows (``migrate``, ``setup_events``, worker start); a row its service no
    longer declares gets ``retired_at`` and keeps receiving events, visibly, until an
    operator unsubscribes it (see docs/services.md).
    """

    id = models.BigAutoField(primary_key=True)
    service = models.CharField(max_length=100)
    group = models.CharField(max_length=100)
    event_type = models.CharField(max_length=200)
    ordered = models.BooleanField(default=False)
    declared_at = models.DateTimeField(db_default=Now())
    last_seen_at = models.DateTimeField(db_default=Now())
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "django_events_subscription"
        constraints = [
            models.UniqueConstraint(
                fields=["service", "group", "event_type"], name="django_events_subscription_once"
            )
        ]
        permissions = [
            ("unsubscribe", "Can unsubscribe a retired subscription (drops its backlog)"),
        ]

    def __str__(self) -> str:
        return f"{self.service}: {self.group} on {self.event_type}"


class Pause(models.Model):
    """A consumer group, or one event type of it, that workers do not claim for now.

    Events keep arriving (the relay still fans out); workers read this small table once
    per poll (:mod:`django_events.pauses`) and leave what it names unclaimed until the
    row is deleted (resumed). ``event_type`` empty pauses the whole group.
    """

    id = models.BigAutoField(primary_key=True)
    group = models.CharField(max_length=100)
    event_type = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Empty: the whole group is paused; otherwise only this event type of it.",
    )
    paused_by = models.CharField(max_length=150, blank=True, default="")
    paused_at = models.DateTimeField(db_default=Now())
    reason = models.TextField()

    class Meta:
        db_table = "django_events_pause"
        default_permissions = ("view",)
        permissions = [("pause_group", "Can pause and resume a consumer group's consumption")]
        constraints = [
            models.UniqueConstraint(fields=["group", "event_type"], name="django_events_pause_once")
        ]

    def __str__(self) -> str:
        return f"{self.group} ({self.event_type})" if self.event_type else self.group


class WorkerRecord(models.Model):
    """A ``consume_events`` process: who it is, and what it was doing when last seen.

    Inserted when the worker starts, updated by its heartbeat thread at most once per
    ``WORKERS["HEARTBEAT"]`` (never per event), marked stopped on a clean exit. A killed
    worker's row stops moving and reads as dead after ``DEAD_AFTER`` heartbeats
    (:mod:`django_events.workers`, docs/admin.md "Workers").
    """

    id = models.BigAutoField(primary_key=True)
    name = models.CharField(max_length=200, unique=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    service = models.CharField(max_length=100)
    version = models.CharField(max_length=50)
    groups = models.JSONField(default=list)
    transport = models.CharField(max_length=100)
    started_at = models.DateTimeField(db_default=Now())
    last_seen_at = models.DateTimeField(db_default=Now(), db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    event_id = models.UUIDField(null=True, blank=True)
    event_type = models.CharField(max_length=200, blank=True, default="")
    event_group = models.CharField(max_length=100, blank=True, default="")
    event_since = models.DateTimeField(
        null=True, blank=True, help_text="When the handler of the current event started."
    )

    class Meta:
        db_table = "django_events_worker"
        verbose_name = "worker"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return self.name


class Attempt(models.Model):
    """One attempt of an event in a group that the admin's timeline shows.

    Failures and the successes that follow them; a first attempt that succeeds is not
    written (:mod:`django_events.attempts`). Keyed by event id and group rather than by
    dead letter, so the history is there before, during and after a dead letter.
    """

    class Outcome(models.TextChoices):
        HANDLED = "handled", "handled"
        FAILED = "failed", "failed"
        DEAD_LETTERED = "dead-lettered", "dead-lettered"

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField()
    group = models.CharField(max_length=100)
    number = models.PositiveIntegerField(help_text="The attempt's number, counted at its claim.")
    at = models.DateTimeField(db_default=Now(), help_text="When the attempt ended.")
    worker = models.CharField(max_length=200, blank=True, default="")
    duration = models.FloatField(null=True, blank=True, help_text="Seconds, if it was timed.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error_class = models.CharField(max_length=300, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    class Meta:
        db_table = "django_events_attempt"
        default_permissions = ()
        indexes = [
            models.Index(fields=["event_id", "group", "id"], name="django_events_attempt_of"),
        ]

    def __str__(self) -> str:
        return f"{self.group}: {self.event_id} attempt {self.number} {self.outcome}"

    @property
    def took(self) -> str:
        """The handler's run time as the worker's log says it (milliseconds)."""
        return "-" if self.duration is None else f"{self.duration * 1000:.1f} ms"


class MinuteStat(models.Model):
    """What one consumer group did in one minute, and its lag then: the charts' data.

    Workers count in memory and add their counts here at most once a minute each, with
    one upsert that adds to what other workers wrote for the same minute
    (:mod:`django_events.rollup`); the lag columns hold the last sample taken in the
    minute. ``minute`` counts minutes since the Unix epoch (UTC) on the workers' clocks,
    an integer so that the charts bucket by plain division on every database. Rows older
    than ``CHART_RETENTION`` are deleted by the workers' flush.
    """

    id = models.BigAutoField(primary_key=True)
    minute = models.BigIntegerField(help_text="Minutes since 1970-01-01 00:00 UTC.")
    group = models.CharField(max_length=100)
    handled = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(
        default=0, help_text="Attempts whose handler raised (retried or dead-lettered)."
    )
    dead = models.PositiveBigIntegerField(default=0)
    pending = models.BigIntegerField(null=True, blank=True)
    oldest_pending_age_s = models.FloatField(null=True, blank=True)

    class Meta:
        db_table = "django_events_minute_stat"
        default_permissions = ("view",)
        verbose_name = "chart"
        verbose_name_plural = "charts"
        constraints = [
            models.UniqueConstraint(fields=["minute", "group"], name="django_events_minute_once")
        ]

    def __str__(self) -> str:
        return f"{self.group} @ {self.minute}"


class Move(models.Model):
    """A move between two transports (``manage.py move_transport``), seen by every process.

    While ``finished_at`` is empty, workers drain ``from_alias`` too, holding on either
    side an ordered key's event while an earlier one is unhandled, and relays send to
    ``to_alias`` once ``cutover_position`` is set (docs/moving.md). After the latest move
    finished, processes go on that way until the settings drop ``to_alias`` (having made
    it the default). ``cutover_position``: the last logged position when the command,
    every process having had time to read the move, let relays send to ``to_alias``.
    """

    id = models.BigAutoField(primary_key=True)
    from_alias = models.CharField(max_length=100)
    to_alias = models.CharField(max_length=100)
    started_at = models.DateTimeField(db_default=Now())
    cutover_position = models.BigIntegerField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "django_events_move"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"{self.from_alias} -> {self.to_alias}"


class FailureGroup(DeadLetter):
    """Open dead letters grouped by fingerprint: an admin page, no table of its own."""

    class Meta:
        proxy = True
        default_permissions = ()
        verbose_name = "failure group"


class QueueStatus(DeadLetter):
    """The numbers of ``events_status`` as an admin page; no table of its own."""

    class Meta:
        proxy = True
        default_permissions = ()
        verbose_name = "queue status"
        verbose_name_plural = "queue status"


class ReplayProgress(models.Model):
    """How far a replay got, so re-running the same replay continues where it stopped.

    One row per group and set of filters (``filters_key`` is their hash). The replay covers
    the log up to ``upto_position``, its last position when it started; later events reach
    the group live.
    """

    id = models.BigAutoField(primary_key=True)
    group_name = models.CharField(max_length=100)
    filters_key = models.CharField(max_length=64)
    filters = models.JSONField(default=dict)
    upto_position = models.BigIntegerField()
    last_position = models.BigIntegerField(null=True, blank=True)
    replayed = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "django_events_replay"
        verbose_name_plural = "replay progress"
        constraints = [
            models.UniqueConstraint(
                fields=["group_name", "filters_key"], name="django_events_replay_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.group_name}: {self.replayed} replayed"


class PositionsField(models.Field):
    """Log positions, as one value: ``bigint[]`` on PostgreSQL (which the log transport's
    claim function writes and trims), JSON text elsewhere."""

    description = "A list of log positions"

    def db_type(self, connection: Any) -> str:
        return "bigint[]" if connection.vendor == "postgresql" else "text"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> list[int] | None:
        if value is None or isinstance(value, list):
            return value
        return [int(p) for p in json.loads(value)]

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if value is None or connection.vendor == "postgresql":
            return value
        return json.dumps([int(p) for p in value])


class GroupCursor(models.Model):
    """How far a consumer group has read the event log (the log transport).

    Appended, never updated: each claim that moves the group on inserts its new cursor,
    and the newest row is the group's place, read backwards along ``(group_name, id)``, so
    no claim walks the versions a held snapshot keeps (docs/internals.md, "The
    second-generation engine: measured design"). On PostgreSQL ``lo`` and ``hi`` are two
    snapshots (``pg_snapshot`` as text): the group is handing out the events committed
    after ``lo`` and by ``hi``, in position order, up to ``pos`` so far; ``last`` is the
    window's highest position. On SQLite, one writer, insertion order is commit order:
    ``pos`` alone says where the group is.
    """

    id = models.BigAutoField(primary_key=True)
    group_name = models.CharField(max_length=100)
    lo = models.TextField(default="", blank=True)
    hi = models.TextField(default="", blank=True)
    pos = models.BigIntegerField(default=0)
    last = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(db_default=Now())
    # Which of the two partitions holds the row on PostgreSQL (docs/internals.md, "The log
    # transport", rotation); 0 elsewhere.
    slot = models.SmallIntegerField(db_default=0)

    class Meta:
        db_table = "django_events_cursor"
        indexes = [models.Index(fields=["group_name", "id"], name="django_events_cursor_head")]

    def __str__(self) -> str:
        return f"{self.group_name}: {self.pos}"


class Lease(models.Model):
    """A batch of events a worker claimed from the log (the log transport): one row per
    batch, not per event. Acknowledging removes positions from it and deletes it when
    none is left; an expired lease, or one whose claimer's connection is gone, becomes
    one ``Delivery`` row per event, claimed as an orphan (docs/internals.md)."""

    id = models.BigAutoField(primary_key=True)
    group_name = models.CharField(max_length=100)
    positions = PositionsField()
    claimed_alone = models.BooleanField(default=False)
    claimed_until = models.DateTimeField()
    claimer = models.IntegerField(null=True, blank=True)  # PostgreSQL backend that claimed it
    lease_token = models.CharField(max_length=32)
    slot = models.SmallIntegerField(db_default=0)  # as ``GroupCursor.slot``

    class Meta:
        db_table = "django_events_lease"

    def __str__(self) -> str:
        return f"{self.group_name}: {len(self.positions or [])} events"
