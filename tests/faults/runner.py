"""Run a management command in a subprocess, optionally with one of the suite's controls.

``python -m tests.faults.runner consume_events --group alpha``. With
``DJANGO_EVENTS_FAULTS_CONTROL`` set, a deliberately broken variant of the engine runs
instead, so a test can prove that the checker sees the fault the real engine prevents:

``ack_first``
    every claimed event is acknowledged (deleted; on RabbitMQ, acked to the broker) at
    once, before its handler runs;
    ``DJANGO_EVENTS_FAULTS_ACK_GAP`` seconds pass between that ack and the handlers (a
    handler's working time), so that a kill lands in the window rather than by luck.
``no_inbox``
    no inbox row, and the ack happens after the handler's commit (as on an external
    transport), so a redelivery runs the handler again.
``no_heartbeat``
    the heartbeat thread never renews a lease.
``pause_after_commit``
    ``DJANGO_EVENTS_FAULTS_PAUSE`` seconds pass after each handler's commit (a worker
    busy between two events of a batch). On the log transport a handler's transaction
    locks its batch's one lease row, which keeps the whole batch while a handler runs,
    heartbeat or not: only between handlers does the lease alone keep the rest.
``late_attempts``
    the attempt is not counted at claim (as if counted only when a handler fails).
``no_precheck``
    payloads are parsed with no nesting limit (and whatever size limit the settings give).
``no_redis_recovery``
    the Redis transport never re-publishes what Redis lost.
``own_registry``
    the relay fans out to its own process's handlers only, not to the subscriptions other
    services declared in the shared database (the relay before subscriptions were data).
``no_decode_defence``
    the transports catch only the decode errors they expect (``UndecodableEvent``), as
    before #12: any other error while decoding one message raises out of ``claim``.
"""

from __future__ import annotations

import os
import sys
import time


def apply_controls(names: list[str]) -> None:
    from django_events import envelope
    from django_events.engine import inbox, worker
    from django_events.transports.database import DatabaseTransport

    for name in names:
        if name == "ack_first":
            claim = DatabaseTransport.claim
            gap = float(os.environ.get("DJANGO_EVENTS_FAULTS_ACK_GAP") or 0)

            def claim_and_ack(self, *args, _claim=claim, _gap=gap, **kwargs):  # type: ignore[no-untyped-def]
                claimed = _claim(self, *args, **kwargs)
                for item in claimed:
                    # Autocommit: the event is gone before it is handled (the class's own
                    # ack: the log transport takes a leased event out of its lease).
                    self.ack(item)
                if claimed and _gap:
                    time.sleep(_gap)
                return claimed

            DatabaseTransport.claim = claim_and_ack  # type: ignore[method-assign]
            DatabaseTransport.acks_in_transaction = False
            _ack_first_on_rabbitmq(gap)
        elif name == "no_inbox":
            inbox.record_many = lambda using, slots: set(slots)  # type: ignore[attr-defined]
            DatabaseTransport.acks_in_transaction = False
        elif name == "no_heartbeat":
            # Alive (a dead thread stops the worker) but never renewing.
            worker.Heartbeat.run = lambda self: self.stopped.wait()  # type: ignore[method-assign]
        elif name == "pause_after_commit":
            from django_events.engine import failpoints

            pause = float(os.environ.get("DJANGO_EVENTS_FAULTS_PAUSE") or 0)

            def paused(point: str, _hit=failpoints.hit, _pause=pause) -> None:  # type: ignore[no-untyped-def]
                if point == "worker.after_commit":
                    time.sleep(_pause)
                _hit(point)

            failpoints.hit = paused  # type: ignore[assignment]
        elif name == "late_attempts":
            claim = DatabaseTransport.claim

            def claim_uncounted(self, *args, _claim=claim, **kwargs):  # type: ignore[no-untyped-def]
                claimed = _claim(self, *args, **kwargs)
                for item in claimed:  # undo the count at claim: only a failure would count
                    self._execute(
                        "UPDATE django_events_delivery SET attempts = attempts - 1 WHERE id = %s",
                        [item.receipt[0]],
                    )
                return claimed

            DatabaseTransport.claim = claim_uncounted  # type: ignore[method-assign]
        elif name == "no_precheck":
            from django_events import validation

            for module in (envelope, validation):
                module.MAX_NESTING = 10**9  # type: ignore[attr-defined]
                module.too_deep = lambda text, limit=0: False  # type: ignore[attr-defined]
        elif name == "no_redis_recovery":
            from django_events.transports.redis.recovery import Recovery

            Recovery.recover_lost = lambda self: []  # type: ignore[method-assign]
        elif name == "own_registry":
            from django_events.engine import relay
            from django_events.registry import registry

            relay.fan_out = lambda transport: registry.subscriptions()  # type: ignore[assignment]
            # Nor does the take read the shared table (docs/internals.md, "The relay's frontier").
            relay.Relay._fan_out_in_take = lambda self, using: None  # type: ignore[method-assign]
        elif name == "no_decode_defence":
            from django_events.exceptions import UndecodableEvent
            from django_events.transports import base, database, memory
            from django_events.transports.redis import transport as redis
            from django_events.transports.sqs import transport as sqs

            def undefended(exc, where="", _original=base.decode_failure):  # type: ignore[no-untyped-def]
                if not isinstance(exc, UndecodableEvent):
                    raise exc
                return _original(exc, where)

            for module in (database, memory, redis, sqs):
                module.decode_failure = undefended  # type: ignore[attr-defined]
        elif name:
            raise SystemExit(f"unknown control {name!r}")


def _ack_first_on_rabbitmq(gap: float) -> None:
    """``ack_first`` on RabbitMQ too: each claimed batch acked to the broker at once."""
    try:
        from django_events.transports.rabbitmq import RabbitMQTransport
    except ImportError:  # pika not installed: no RabbitMQ row runs
        return
    claim = RabbitMQTransport.claim

    def claim_and_ack(self, *args, _claim=claim, _gap=gap, **kwargs):  # type: ignore[no-untyped-def]
        claimed = _claim(self, *args, **kwargs)
        self.ack_many(claimed)  # the broker forgets them before they are handled
        if claimed and _gap:
            time.sleep(_gap)
        return claimed

    RabbitMQTransport.claim = claim_and_ack  # type: ignore[method-assign]


def main() -> None:
    import django

    django.setup()
    controls = [c for c in os.environ.get("DJANGO_EVENTS_FAULTS_CONTROL", "").split(",") if c]
    apply_controls(controls)
    from django.core.management import execute_from_command_line

    execute_from_command_line(["django-admin", *sys.argv[1:]])


if __name__ == "__main__":
    main()
