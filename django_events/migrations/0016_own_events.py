"""The log transport's claim hands a transaction its own events (docs/internals.md, "The
log transport", claims inside the publishing transaction): ``deliver()`` inside a
``TestCase`` claims in the transaction that published. A cursor's window is what committed
between two snapshots, and a transaction's own xid is no snapshot's running xid: it was in
no window until a later xid completed somewhere, and then in the window taken next, so
that its events published afterwards were in none. Now the claim counts its own xid as
running in every snapshot it stores, and hands out its own events by position, past the
last one it handed to the group (a transaction-local setting); after a commit they are in
the next window as any other transaction's, and the inbox keeps their effects once.

Only the function changes: safe with workers running.
"""

import importlib
from typing import Any

from django.db import migrations

CLAIM_FUNCTION = r"""
CREATE OR REPLACE FUNCTION django_events_log_claim(
    a_group text, a_n integer, a_token text, a_lease double precision, a_handled text[],
    a_alone boolean, a_own text[], a_own_ordered text[])
RETURNS TABLE (r_lease bigint, r_position bigint, r_id uuid, r_type text, r_version integer,
    r_key text, r_data jsonb, r_metadata jsonb, r_occurred_at text, r_source text,
    r_correlation_id uuid, r_causation_id uuid)
LANGUAGE plpgsql
-- Index scans whatever the estimates: the log's position index for the open window, its
-- txid index for the next; never the whole log.
SET enable_seqscan = off SET enable_bitmapscan = off
AS $fn$
DECLARE
    c_lo pg_snapshot; c_hi pg_snapshot; c_pos bigint; c_last bigint;
    n_lo pg_snapshot; n_hi pg_snapshot; n_pos bigint; n_last bigint;
    snap pg_snapshot;
    c_slot smallint;
    wanted text[]; in_order text[];
    picked bigint[]; kinds text[]; more bigint[]; more_kinds text[];
    taken bigint[];
    lease_id bigint;
    own xid8; own_mark text; mine bigint[]; mine_kinds text[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    -- This transaction's own xid, if it wrote anything yet: only a claim inside the
    -- publishing transaction (deliver() in a TestCase) has one here (docs/internals.md,
    -- "The log transport", claims inside the publishing transaction).
    own := pg_current_xact_id_if_assigned();
    -- One claimer per group at a time; another tries its next group at once. The lock
    -- comes before any read, so every statement below sees the cursor it left.
    IF NOT pg_try_advisory_xact_lock(1684371062, hashtext(a_group)) THEN
        RETURN;
    END IF;
    SELECT c.lo::pg_snapshot, c.hi::pg_snapshot, c.pos, c.last, c.slot
      INTO c_lo, c_hi, c_pos, c_last, c_slot
      FROM django_events_cursor c WHERE c.group_name = a_group ORDER BY c.id DESC LIMIT 1;
    IF NOT FOUND THEN
        -- A group never declared here starts where the most advanced group is, or at the
        -- log's beginning if there is none (docs/internals.md, "The log transport"), in
        -- the slot of the cursor it copies.
        SELECT h.lo::pg_snapshot, h.hi::pg_snapshot, h.pos, h.last, h.slot
          INTO c_lo, c_hi, c_pos, c_last, c_slot
          FROM (SELECT DISTINCT ON (c.group_name) c.lo, c.hi, c.pos, c.last, c.slot
                  FROM django_events_cursor c ORDER BY c.group_name, c.id DESC) h
         ORDER BY pg_snapshot_xmax(h.hi::pg_snapshot) DESC, h.pos DESC LIMIT 1;
        IF NOT FOUND THEN
            c_lo := '1:1:'; c_hi := '1:1:'; c_pos := 0; c_last := 0; c_slot := 0;
        END IF;
        INSERT INTO django_events_cursor (slot, group_name, lo, hi, pos, last, created_at)
        VALUES (c_slot, a_group, c_lo::text, c_hi::text, c_pos, c_last, statement_timestamp());
    END IF;
    -- What the group subscribes to: every service's declarations, and the claiming
    -- deployment's own handlers, declared by its code even before they are stored.
    SELECT COALESCE(array_agg(s.event_type), '{}'),
           COALESCE(array_agg(s.event_type) FILTER (WHERE s.ordered), '{}')
      INTO wanted, in_order
      FROM (SELECT u.event_type, bool_or(u.ordered) AS ordered FROM (
                SELECT event_type::text, ordered FROM django_events_subscription
                 WHERE "group" = a_group
                UNION ALL SELECT t, t = ANY(a_own_ordered) FROM unnest(a_own) AS t
            ) u GROUP BY u.event_type) s;
    -- The open window: what committed after lo and by hi, in position order from pos.
    SELECT COALESCE(array_agg(w.position ORDER BY w.position), '{}'),
           COALESCE(array_agg(w.type ORDER BY w.position), '{}')
      INTO picked, kinds
      FROM (SELECT l.position, l.type::text AS type FROM django_events_event l
             WHERE l.position > c_pos AND l.position <= c_last AND l.type = ANY(wanted)
               AND pg_visible_in_snapshot(l.txid, c_hi)
               AND NOT pg_visible_in_snapshot(l.txid, c_lo)
             ORDER BY l.position LIMIT a_n) w;
    n_lo := c_lo; n_hi := c_hi; n_last := c_last;
    IF cardinality(picked) = a_n THEN
        n_pos := picked[a_n];
    ELSE
        -- The open window is done: the next one is what committed after hi and by now,
        -- found through the txid index (the xids begun since hi, and those running at hi).
        n_pos := c_last;
        snap := pg_current_snapshot();
        IF own IS NOT NULL AND pg_visible_in_snapshot(own, snap) THEN
            -- Our own xid is running for every other transaction: so it is in the
            -- window's hi too, and our events come through the pass below instead.
            snap := (pg_snapshot_xmin(snap)::text || ':' || pg_snapshot_xmax(snap)::text
                     || ':' || array_to_string(ARRAY(SELECT x FROM (
                         SELECT pg_snapshot_xip(snap) AS x UNION SELECT own) u ORDER BY x),
                         ','))::pg_snapshot;
        END IF;
        WITH w AS MATERIALIZED (
            SELECT l.position, l.type::text AS type FROM django_events_event l
             WHERE l.txid >= pg_snapshot_xmax(c_hi) AND l.txid < pg_snapshot_xmax(snap)
               AND pg_visible_in_snapshot(l.txid, snap)
            UNION ALL
            SELECT l.position, l.type::text FROM django_events_event l
             WHERE l.txid = ANY(ARRAY(SELECT pg_snapshot_xip(c_hi)))
               AND pg_visible_in_snapshot(l.txid, snap)
        ), p AS (
            SELECT w.position, w.type FROM w WHERE w.type = ANY(wanted)
             ORDER BY w.position LIMIT a_n - cardinality(picked)
        )
        SELECT (SELECT max(w.position) FROM w),
               COALESCE((SELECT array_agg(p.position ORDER BY p.position) FROM p), '{}'),
               COALESCE((SELECT array_agg(p.type ORDER BY p.position) FROM p), '{}')
          INTO n_last, more, more_kinds;
        IF n_last IS NULL THEN  -- nothing committed since hi: the window stays
            n_last := c_last;
        ELSE
            n_lo := c_hi; n_hi := snap;
            n_pos := CASE WHEN cardinality(more) = a_n - cardinality(picked)
                          THEN more[cardinality(more)] ELSE n_last END;
            picked := picked || more; kinds := kinds || more_kinds;
        END IF;
    END IF;
    IF own IS NOT NULL AND cardinality(picked) < a_n THEN
        -- This transaction's own events, in no window while it runs: by position past
        -- the last one it handed to the group, which it remembers until it ends.
        own_mark := 'django_events.own_' || md5(a_group);
        SELECT COALESCE(array_agg(o.position ORDER BY o.position), '{}'),
               COALESCE(array_agg(o.type ORDER BY o.position), '{}')
          INTO mine, mine_kinds
          FROM (SELECT l.position, l.type::text AS type FROM django_events_event l
                 WHERE l.txid = own AND l.type = ANY(wanted) AND l.position >
                       COALESCE(NULLIF(current_setting(own_mark, true), '')::bigint, 0)
                 ORDER BY l.position LIMIT a_n - cardinality(picked)) o;
        IF cardinality(mine) > 0 THEN
            PERFORM set_config(own_mark, mine[cardinality(mine)]::text, true);
            picked := picked || mine; kinds := kinds || mine_kinds;
        END IF;
    END IF;
    IF cardinality(picked) = 0 AND n_pos = c_pos AND n_hi::text = c_hi::text THEN
        RETURN;  -- nothing new: nothing written
    END IF;
    -- The new cursor, and the lease, go where the group's cursor is: a rotation moves
    -- both together (docs/internals.md, "The log transport").
    INSERT INTO django_events_cursor (slot, group_name, lo, hi, pos, last, created_at)
    VALUES (c_slot, a_group, n_lo::text, n_hi::text, n_pos, n_last, statement_timestamp());
    -- Ordered types, and types the claiming worker does not handle, become delivery rows:
    -- key order is kept there, and another worker takes what this one cannot.
    INSERT INTO django_events_delivery (event_id, group_name, event_type, position, key,
        ordered, attempts, available_at, claimed_alone, parked, last_error, created_at)
    SELECT l.id, a_group, l.type, l.position, l.key,
           l.type = ANY(in_order) AND l.key IS NOT NULL, 0, statement_timestamp(), FALSE,
           FALSE, '', statement_timestamp()
      FROM unnest(picked, kinds) AS p(position, type)
      JOIN django_events_event l ON l.position = p.position
     WHERE p.type = ANY(in_order) OR (a_handled IS NOT NULL AND NOT p.type = ANY(a_handled));
    taken := ARRAY(
        SELECT p.position FROM unnest(picked, kinds) AS p(position, type)
         WHERE NOT (p.type = ANY(in_order) OR (a_handled IS NOT NULL AND NOT p.type = ANY(a_handled)))
         ORDER BY p.position);
    IF cardinality(taken) > 0 THEN
        INSERT INTO django_events_lease (slot, group_name, positions, claimed_alone,
            claimed_until, claimer, lease_token)
        VALUES (c_slot, a_group, taken, a_alone,
                statement_timestamp() + make_interval(secs => a_lease), pg_backend_pid(), a_token)
        RETURNING id INTO lease_id;
    END IF;
    -- The leased events in full; the diverted ones by position only.
    RETURN QUERY
        SELECT lease_id, l.position, l.id, l.type::text, l.version, l.key::text, l.data,
               l.metadata, to_json(l.occurred_at) #>> ARRAY[]::text[], l.source::text,
               l.correlation_id, l.causation_id
          FROM django_events_event l WHERE l.position = ANY(taken)
        UNION ALL
        SELECT NULL::bigint, p.position, NULL::uuid, p.type, NULL::integer, NULL::text,
               NULL::jsonb, NULL::jsonb, NULL::text, NULL::text, NULL::uuid, NULL::uuid
          FROM unnest(picked, kinds) AS p(position, type) WHERE NOT p.position = ANY(taken)
        ORDER BY 2;
END
$fn$;
"""


def forwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CLAIM_FUNCTION, params=None)


def backwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        previous = importlib.import_module("django_events.migrations.0015_log_rotation")
        schema_editor.execute(previous.CLAIM_FUNCTION, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_events", "0015_log_rotation"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
