"""The engine: what moves events and runs handlers, whatever the transport.

The worker (``worker``) claims, runs handlers and settles; the relay (``relay``) moves the
outbox to the transport; the inbox (``inbox``) makes effects happen once; ``retry`` holds
the backoff; ``wakeup`` and ``watchdog`` wake idle workers and end stuck ones; ``failpoints``
lets the fault suite crash the engine at named places; ``sql`` holds what differs between
databases. docs/internals.md describes how they fit together.
"""
