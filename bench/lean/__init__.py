"""A prototype benchmark of the second-generation database transport (issue 14, item 1).

Standalone: plain SQL through psycopg on a private PostgreSQL cluster with autovacuum on
(``bench/private.py``), no engine code. Each variant is the same workload (events
published one per transaction, several groups, competing consumers claiming batches of
50, an empty handler, the inbox row and the acknowledgement in one transaction) written
with a different table design:

- ``A``: today's tables and statements (outbox, relay into the log and the deliveries,
  claim by update, acknowledgement by delete);
- ``B``: the log as the only write at publish, one cursor row per group over snapshot
  windows of the log (the inserting transaction's ``xid8``), a row per event only while
  it is in flight;
- ``B2``: ``B`` with one lease row per claimed batch instead of one per event;
- ``C``: ``B`` with the in-flight rows in three partitions emptied in turn by
  ``TRUNCATE`` instead of ``DELETE``.

Run ``python -m bench.lean`` (``--quick`` for a short run); the results and the design
they chose are in docs/internals.md, "The second-generation engine: measured design".
"""
