"""Shared :class:`~policyengine.budgets.store.BudgetStore` on PostgreSQL.

Many processes on many hosts share one ledger: each :meth:`~PostgresStore.apply` is one
call of a server-side function (``budget_apply``), so an operation is one round trip and
one transaction, however many budgets it touches. The two commonest operations on one
bucket take shorter paths that write exactly what ``budget_apply`` would, or nothing
(then ``budget_apply`` runs): a reserve is one prepared statement (``_RESERVE``), and
so is a commit or release (``_FINISH``).

Concurrency: the function locks, in one global order, first the idempotency key (by
upserting its row), then the reservation it finalizes or extends (``FOR UPDATE``), then
every bucket row it reads or changes (sorted by budget, subject, window; created when
missing). Guards are read under those row locks, so no two transactions ever interleave
check and debit on a bucket, and the fixed order rules out deadlocks (giving back
expired one-row holds, which locks reservations after a bucket, skips those another
transaction holds locked). ``READ COMMITTED``
suffices: a row read after its lock is granted is its latest committed version.

Layout: one row per bucket (``spent``, ``reserved``, and ``sweep_at``, a lower bound of
the expiry of the holds counted in ``reserved``); reservations with their number of
holds, their tenant and their listing key (a partial index on both serves
``list_reservations``). A reservation holding one bucket keeps its hold in its own row
(bucket, amount, and ``held`` while it counts; a partial index by bucket and expiry on
the held ones), so a reserve inserts one row and a commit updates it; one holding
several has one row per hold in ``budget_holds``, indexed by bucket and expiry. Rolling
spend as events; idempotency records. What housekeeping deletes (reservations finished
or abandoned, events, idempotency records, old buckets) it finds by an index on its
expiry (layout 4; opening a layout 3 schema adds them). Reservation ids begin with
their creation time (the ledger's ``_new_id``), so the primary key takes each new one at
its right edge rather than in a random leaf of an index holding every reservation kept
for ``retention``. A transaction that locks a bucket whose ``sweep_at`` has passed
first gives back the holds that expired on it; a read subtracts them instead. So
expiry is exact with no sweeper process, and a reservation with fewer holds than it was
created with was expired by a host whose clock is ahead (it is then treated as expired,
never held twice or given back twice).

Time: see :mod:`policyengine.budgets.clock`. The ledger's clock defaults to
:attr:`PostgresStore.clock`, the host clock corrected to the server's; and every call
is refused with ``clock_skew`` when the ``now`` it carries is further than
``max_clock_skew`` seconds from the server's ``clock_timestamp()``.

Durability (``durability=``), as for the SQLite store:

* ``"process"`` (default): ``synchronous_commit = off``. A crash of this process, or of
  a PostgreSQL backend, loses nothing that was acknowledged ... except that the server
  acknowledges before its WAL reaches the disk: a crash of the PostgreSQL server or its
  host can lose the last ``3 x wal_writer_delay`` (600 ms by default) of operations.
  Never a partial operation: each is one transaction.
* ``"spend"``: transactions that record spend or move an expiry (``commit``,
  ``record``, ``extend``) wait for the WAL flush (``synchronous_commit = on`` for that
  transaction); reservations and releases do not.
* ``"full"``: every transaction waits for the WAL flush.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Literal

from policyengine._pgtables import missing_columns
from policyengine.budgets._options import check_store_options
from policyengine.budgets.clock import ServerClock
from policyengine.budgets.errors import BudgetStoreError
from policyengine.budgets.ratelimit import RateKey, RateOutcome
from policyengine.budgets.spec import MAX_ROLLING_SECONDS
from policyengine.budgets.store import (
    ACTIVE,
    OK,
    Bucket,
    IdempotencyRecord,
    Outcome,
    RecentReservations,
    ReservationRecord,
    Transaction,
    Usage,
    compact_bytes,
    compact_json,
    json_loads,
    listing_key,
    record_from_json,
)

if TYPE_CHECKING:
    from psycopg import Connection

__all__ = ["LAYOUT_VERSION", "PostgresStore"]

Durability = Literal["process", "spend", "full"]

#: Version of the tables and functions below, kept in ``<schema>.budget_layout``.
LAYOUT_VERSION = 4
#: The layout before, which opening migrates (it lacks only _EXPIRY_INDEXES).
_MIGRATES_FROM = 3
_SWEEP_EVERY = 512
_APPLY_STMT = b"policyengine_budget_apply"
_RESERVE_STMT = b"policyengine_budget_reserve"
_FINISH_STMT = b"policyengine_budget_finish"
_DECLINE = "PEB01"  # SQLSTATE of the one-statement commit declining (rolled back)
_USAGE_STMT = b"policyengine_budget_usage"
_RATE_STMT = b"policyengine_budget_rate_admit"
_HOUSEKEEP_STMT = b"policyengine_budget_housekeep"
_BUCKET_LIFETIME = 32 * 86400
# libpq's codes (its ABI; psycopg's pq enums have these values), compared as plain ints
# on every call: PGRES_COMMAND_OK, PGRES_TUPLES_OK, PQTRANS_IDLE, CONNECTION_OK.
_COMMAND_OK = 1
_TUPLES_OK = 2
_IDLE = 0
_CONNECTION_OK = 0

_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.budget_buckets (
    budget text NOT NULL, subject text NOT NULL, win bigint NOT NULL,
    spent bigint NOT NULL DEFAULT 0, reserved bigint NOT NULL DEFAULT 0, sweep_at float8,
    PRIMARY KEY (budget, subject, win));
CREATE INDEX IF NOT EXISTS budget_buckets_by_window ON {s}.budget_buckets (win);
CREATE TABLE IF NOT EXISTS {s}.budget_holds (
    rid text NOT NULL, budget text NOT NULL,
    subject text NOT NULL, win bigint NOT NULL, amount bigint NOT NULL,
    expires_at float8 NOT NULL, PRIMARY KEY (rid, budget, subject, win));
CREATE INDEX IF NOT EXISTS budget_holds_by_bucket
    ON {s}.budget_holds (budget, subject, win, expires_at);
CREATE TABLE IF NOT EXISTS {s}.budget_events (
    budget text NOT NULL, subject text NOT NULL,
    at float8 NOT NULL, amount bigint NOT NULL);
CREATE INDEX IF NOT EXISTS budget_events_by_bucket ON {s}.budget_events (budget, subject, at);
CREATE TABLE IF NOT EXISTS {s}.budget_reservations (
    id text PRIMARY KEY, status text NOT NULL, expires_at float8 NOT NULL,
    nholds integer NOT NULL, finished_at float8, data text NOT NULL,
    tenant text NOT NULL DEFAULT '', listed text COLLATE "C",
    hold_budget text, hold_subject text, hold_win bigint, hold_amount bigint,
    held boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS budget_reservations_held ON {s}.budget_reservations
    (hold_budget, hold_subject, hold_win, expires_at) WHERE held;
CREATE INDEX IF NOT EXISTS budget_reservations_listed
    ON {s}.budget_reservations (tenant, listed) WHERE listed IS NOT NULL;
CREATE INDEX IF NOT EXISTS budget_reservations_finished
    ON {s}.budget_reservations (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.budget_idempotency (
    key text PRIMARY KEY, fingerprint text NOT NULL, expires_at float8 NOT NULL,
    result text NOT NULL);
"""

# Layout 4: what the housekeeping deletes is found by an index instead of a scan of the
# whole table (which grows with the traffic kept for ``retention``). None of them is
# written by a one-bucket reserve or commit: an active reservation that is not ``held``
# (its holds in budget_holds, or given back when it expired) is the rare case, and
# events and idempotency records only come with rolling windows and keyed calls.
# (budget_rates keeps one row per key in use, and indexing its TAT would make every
# admission a non-HOT update: it is still scanned.)
_EXPIRY_INDEXES = """
CREATE INDEX IF NOT EXISTS budget_reservations_abandoned ON {s}.budget_reservations
    (expires_at) WHERE status = 'active' AND NOT held;
CREATE INDEX IF NOT EXISTS budget_idempotency_by_expiry ON {s}.budget_idempotency
    (expires_at);
CREATE INDEX IF NOT EXISTS budget_events_by_time ON {s}.budget_events (at);
"""

# The one write. ``tx`` (built by _encode) is
#   {"k": [[budget, subject, win], ...] sorted | null (the function works them out),
#    "g": [[budget, subject, win, since|null, add, ceiling, debt_above|null], ...],
#    "r": reservation id|null,
#    "c": [id, status, expires_at, [[b, s, w, amount]...], data, tenant, listed|null]|null,
#    "f": [status, data]|null, "x": new expires_at|null, "s": [[b, s, w, rolling, amount]...],
#    "i": [key, fingerprint, expires_at, result]|null}
# It returns null when every effect was applied, else the refusal as jsonb.
#
# Cost: each bucket row is read once (with its lock) and written at most once, with its
# final values, whatever number of guards, holds and spends touch it; the holds of the
# reservation it finalizes are read once. A reserve is 4 statements (lock the bucket,
# insert the reservation and its holds, update the bucket), a commit 6 (lock the
# reservation and the bucket, read its holds, delete them, update the reservation and
# the bucket). The buckets are kept in arrays, found by a scan (an operation touches a
# handful).
_APPLY = """
CREATE OR REPLACE FUNCTION {s}.budget_apply(tx jsonb, now float8, max_skew float8,
                                            sync_spend boolean) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
    server float8 := extract(epoch FROM clock_timestamp());
    idem jsonb := tx->'i';
    v_rid text := tx->>'r';
    keys jsonb := tx->'k';
    r_status text;       -- the reservation v_rid
    r_expires float8;
    r_nholds integer;
    r_data text;
    r_held boolean;      -- its one-row hold: live, and on which bucket, how much
    r_hb text;
    r_hs text;
    r_hw bigint;
    r_ha bigint;
    i_fp text;           -- a live idempotency record
    i_expires float8;
    i_result text;
    g jsonb;
    c jsonb;
    kb text[];       -- the locked buckets, in lock order
    ks text[];
    kw bigint[];
    sp0 bigint[];    -- spent and reserved as read (expired holds given back)
    rs0 bigint[];
    sw0 float8[];
    sp1 bigint[];    -- as they will be written
    rs1 bigint[];
    sw1 float8[];
    own bigint[];    -- what v_rid holds on each
    hb text[];       -- v_rid's holds
    hs text[];
    hw bigint[];
    ha bigint[];
    hk integer[];    -- the index of each hold's bucket
    nk integer;
    nh integer := 0;
    j integer;
    m integer;
    sp numeric;
    rs numeric;
    sw float8;
    freed bigint;
    usages jsonb := '[]';
    x float8;
    lst jsonb;
    rolling boolean := false;
BEGIN
    IF max_skew IS NOT NULL AND abs(server - now) > max_skew THEN
        RETURN jsonb_build_object('reason', 'clock', 'server', server);
    END IF;
    IF jsonb_typeof(idem) = 'array' THEN
        INSERT INTO {s}.budget_idempotency AS t (key, fingerprint, expires_at, result)
            VALUES (idem->>0, idem->>1, (idem->>2)::float8, idem->>3)
            ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,
                expires_at = excluded.expires_at, result = excluded.result
            WHERE t.expires_at <= now;
        IF NOT FOUND THEN  -- a live record: the row is locked, read it
            SELECT t.fingerprint, t.expires_at, t.result INTO i_fp, i_expires, i_result
                FROM {s}.budget_idempotency t WHERE t.key = idem->>0;
            RETURN jsonb_build_object('reason', 'idempotency', 'f', i_fp,
                                      'x', i_expires, 'd', i_result);
        END IF;
    ELSE
        idem := NULL;
    END IF;
    IF v_rid IS NOT NULL THEN
        SELECT r.status, r.expires_at, r.nholds, r.data, r.held, r.hold_budget,
               r.hold_subject, r.hold_win, r.hold_amount
            INTO r_status, r_expires, r_nholds, r_data, r_held, r_hb, r_hs, r_hw, r_ha
            FROM {s}.budget_reservations r WHERE r.id = v_rid FOR UPDATE;
        IF NOT FOUND OR r_status <> 'active' OR r_expires <= now THEN
            IF idem IS NOT NULL THEN
                DELETE FROM {s}.budget_idempotency t WHERE t.key = idem->>0;
            END IF;
            RETURN jsonb_build_object('reason', 'reservation', 'd', r_data,
                                      'x', r_expires);
        END IF;
    END IF;
    -- Lock every bucket read or written, in one global order (byte order of budget and
    -- subject, then window; the caller may send them sorted); give back expired holds.
    IF jsonb_typeof(keys) IS DISTINCT FROM 'array' THEN
        SELECT coalesce(jsonb_agg(jsonb_build_array(u.b, u.s, u.w)
                                  ORDER BY u.b COLLATE "C", u.s COLLATE "C", u.w), '[]')
            INTO keys FROM (
            SELECT DISTINCT v->>0 AS b, v->>1 AS s, (v->>2)::bigint AS w
                FROM jsonb_array_elements(tx->'g') v
            UNION SELECT v->>0, v->>1, (v->>2)::bigint
                FROM jsonb_array_elements(CASE WHEN jsonb_typeof(tx->'c') = 'array'
                                          THEN tx->'c'->3 ELSE '[]' END) v
            UNION SELECT v->>0, v->>1,
                         CASE WHEN (v->>3)::boolean THEN 0 ELSE (v->>2)::bigint END
                FROM jsonb_array_elements(tx->'s') v
            UNION SELECT h.budget, h.subject, h.win
                FROM {s}.budget_holds h WHERE v_rid IS NOT NULL AND h.rid = v_rid
            UNION SELECT r_hb, r_hs, r_hw WHERE r_held
        ) u;
    END IF;
    nk := jsonb_array_length(keys);
    FOR j IN 1 .. nk LOOP
        lst := keys->(j - 1);
        kb[j] := lst->>0;
        ks[j] := lst->>1;
        kw[j] := (lst->>2)::bigint;
        SELECT b.spent, b.reserved, b.sweep_at INTO sp, rs, sw FROM {s}.budget_buckets b
            WHERE b.budget = kb[j] AND b.subject = ks[j] AND b.win = kw[j] FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO {s}.budget_buckets (budget, subject, win) VALUES (kb[j], ks[j], kw[j])
                ON CONFLICT DO NOTHING;
            SELECT b.spent, b.reserved, b.sweep_at INTO sp, rs, sw FROM {s}.budget_buckets b
                WHERE b.budget = kb[j] AND b.subject = ks[j] AND b.win = kw[j] FOR UPDATE;
        END IF;
        IF sw <= now THEN
            -- Written at once: a refusal below still commits what is given back here.
            -- One-row holds locked by another transaction are left (it is finishing or
            -- extending them, and locked them before this bucket: waiting could
            -- deadlock); they stay counted, and sweep_at stays due.
            WITH gone AS (
                DELETE FROM {s}.budget_holds h
                WHERE h.budget = kb[j] AND h.subject = ks[j] AND h.win = kw[j]
                AND h.expires_at <= now RETURNING h.amount)
            SELECT coalesce(sum(gone.amount), 0) INTO freed FROM gone;
            rs := rs - freed;
            WITH gone AS (
                UPDATE {s}.budget_reservations r SET held = false
                WHERE r.id IN (SELECT q.id FROM {s}.budget_reservations q
                               WHERE q.hold_budget = kb[j] AND q.hold_subject = ks[j]
                               AND q.hold_win = kw[j] AND q.held AND q.expires_at <= now
                               FOR UPDATE SKIP LOCKED)
                AND r.held AND r.expires_at <= now RETURNING r.hold_amount)
            SELECT coalesce(sum(gone.hold_amount), 0) INTO freed FROM gone;
            rs := rs - freed;
            SELECT least((SELECT min(h.expires_at) FROM {s}.budget_holds h
                          WHERE h.budget = kb[j] AND h.subject = ks[j] AND h.win = kw[j]),
                         (SELECT min(q.expires_at) FROM {s}.budget_reservations q
                          WHERE q.hold_budget = kb[j] AND q.hold_subject = ks[j]
                          AND q.hold_win = kw[j] AND q.held)) INTO sw;
            UPDATE {s}.budget_buckets b SET reserved = rs, sweep_at = sw
                WHERE b.budget = kb[j] AND b.subject = ks[j] AND b.win = kw[j];
        END IF;
        sp0[j] := sp;
        rs0[j] := rs;
        sw0[j] := sw;
        own[j] := 0;
    END LOOP;
    IF v_rid IS NOT NULL THEN
        SELECT array_agg(h.budget), array_agg(h.subject), array_agg(h.win),
               array_agg(h.amount)
            INTO hb, hs, hw, ha FROM {s}.budget_holds h WHERE h.rid = v_rid;
        nh := coalesce(array_length(hb, 1), 0);
        IF r_held THEN
            nh := nh + 1;
            hb[nh] := r_hb;
            hs[nh] := r_hs;
            hw[nh] := r_hw;
            ha[nh] := r_ha;
        END IF;
        -- Fewer holds than created with: a host whose clock is ahead expired it.
        IF nh <> r_nholds THEN
            IF idem IS NOT NULL THEN
                DELETE FROM {s}.budget_idempotency t WHERE t.key = idem->>0;
            END IF;
            RETURN jsonb_build_object('reason', 'reservation', 'd', r_data,
                                      'x', r_expires, 'swept', true);
        END IF;
        FOR j IN 1 .. nh LOOP
            m := 1;
            WHILE m <= nk AND NOT (kb[m] = hb[j] AND ks[m] = hs[j] AND kw[m] = hw[j]) LOOP
                m := m + 1;
            END LOOP;
            IF m > nk THEN
                RAISE EXCEPTION 'budget_apply: a hold of % is on a bucket not locked', v_rid;
            END IF;
            hk[j] := m;
            own[m] := own[m] + ha[j];
        END LOOP;
    END IF;
    FOR j IN 0 .. jsonb_array_length(tx->'g') - 1 LOOP
        g := tx->'g'->j;
        m := 1;
        WHILE m <= nk AND NOT (kb[m] = g->>0 AND ks[m] = g->>1 AND kw[m] = (g->>2)::bigint)
        LOOP
            m := m + 1;
        END LOOP;
        IF m > nk THEN
            RAISE EXCEPTION 'budget_apply: guard % is on a bucket not locked', j;
        END IF;
        sp := sp0[m];
        rs := rs0[m] - own[m];
        IF jsonb_typeof(g->3) = 'number' THEN
            SELECT coalesce(sum(ev.amount), 0) INTO sp FROM {s}.budget_events ev
                WHERE ev.budget = g->>0 AND ev.subject = g->>1 AND ev.at > (g->>3)::float8;
        END IF;
        usages := usages || jsonb_build_array(jsonb_build_array(sp, rs));
        IF (jsonb_typeof(g->6) = 'number' AND sp > (g->>6)::numeric)
           OR sp + rs + (g->>4)::numeric > (g->>5)::numeric THEN
            IF idem IS NOT NULL THEN
                DELETE FROM {s}.budget_idempotency t WHERE t.key = idem->>0;
            END IF;
            RETURN jsonb_build_object(
                'reason', CASE WHEN jsonb_typeof(g->6) = 'number' AND sp > (g->>6)::numeric
                          THEN 'debt' ELSE 'guard' END,
                'i', j, 'u', usages);
        END IF;
    END LOOP;
    -- Every check passed: apply every effect; the buckets' new values are worked out
    -- here and written once each at the end.
    sp1 := sp0;
    rs1 := rs0;
    sw1 := sw0;
    IF v_rid IS NOT NULL THEN
        IF jsonb_typeof(tx->'f') = 'array' THEN
            -- Give back its holds; its spends follow below.
            IF nh > 0 THEN
                IF NOT r_held THEN
                    DELETE FROM {s}.budget_holds d WHERE d.rid = v_rid;
                END IF;
                FOR j IN 1 .. nh LOOP
                    rs1[hk[j]] := rs1[hk[j]] - ha[j];
                END LOOP;
            END IF;
            UPDATE {s}.budget_reservations r SET status = tx->'f'->>0, finished_at = now,
                data = tx->'f'->>1, held = false WHERE r.id = v_rid;
        ELSIF jsonb_typeof(tx->'x') = 'number' THEN
            x := (tx->>'x')::float8;
            UPDATE {s}.budget_reservations r SET expires_at = x WHERE r.id = v_rid;
            IF nh > 0 THEN  -- a one-row hold moved with its row
                IF NOT r_held THEN
                    UPDATE {s}.budget_holds d SET expires_at = x WHERE d.rid = v_rid;
                END IF;
                FOR j IN 1 .. nh LOOP
                    sw1[hk[j]] := least(sw1[hk[j]], x);
                END LOOP;
            END IF;
        END IF;
    END IF;
    IF jsonb_typeof(tx->'c') = 'array' THEN
        c := tx->'c';
        x := (c->>2)::float8;
        lst := c->3;
        IF jsonb_array_length(lst) = 1 THEN  -- one hold: kept in the reservation's row
            INSERT INTO {s}.budget_reservations (id, status, expires_at, nholds, data,
                tenant, listed, hold_budget, hold_subject, hold_win, hold_amount, held)
                VALUES (c->>0, c->>1, x, 1, c->>4, c->>5, c->>6, lst->0->>0, lst->0->>1,
                        (lst->0->>2)::bigint, (lst->0->>3)::bigint, true);
        ELSE
            INSERT INTO {s}.budget_reservations (id, status, expires_at, nholds, finished_at,
                                                 data, tenant, listed)
                VALUES (c->>0, c->>1, x, jsonb_array_length(lst),
                        CASE WHEN c->>1 = 'active' THEN NULL ELSE now END, c->>4, c->>5,
                        c->>6);
        END IF;
        IF jsonb_array_length(lst) > 1 THEN
            INSERT INTO {s}.budget_holds (rid, budget, subject, win, amount, expires_at)
                SELECT c->>0, v->>0, v->>1, (v->>2)::bigint, (v->>3)::bigint, x
                FROM jsonb_array_elements(lst) v;
        END IF;
        IF jsonb_array_length(lst) > 0 THEN
            FOR j IN 0 .. jsonb_array_length(lst) - 1 LOOP
                g := lst->j;
                m := 1;
                WHILE m <= nk
                      AND NOT (kb[m] = g->>0 AND ks[m] = g->>1 AND kw[m] = (g->>2)::bigint)
                LOOP
                    m := m + 1;
                END LOOP;
                IF m > nk THEN
                    RAISE EXCEPTION 'budget_apply: hold % is on a bucket not locked', j;
                END IF;
                rs1[m] := rs1[m] + (g->>3)::bigint;
                sw1[m] := least(sw1[m], x);
            END LOOP;
        END IF;
    END IF;
    lst := tx->'s';
    FOR j IN 0 .. jsonb_array_length(lst) - 1 LOOP
        g := lst->j;
        IF (g->>3)::boolean THEN
            rolling := true;
        ELSE
            m := 1;
            WHILE m <= nk AND NOT (kb[m] = g->>0 AND ks[m] = g->>1 AND kw[m] = (g->>2)::bigint)
            LOOP
                m := m + 1;
            END LOOP;
            IF m > nk THEN
                RAISE EXCEPTION 'budget_apply: spend % is on a bucket not locked', j;
            END IF;
            sp1[m] := sp1[m] + (g->>4)::bigint;
        END IF;
    END LOOP;
    IF rolling THEN
        INSERT INTO {s}.budget_events (budget, subject, at, amount)
            SELECT v->>0, v->>1, now, (v->>4)::bigint
            FROM jsonb_array_elements(lst) v WHERE (v->>3)::boolean;
    END IF;
    FOR j IN 1 .. nk LOOP
        IF sp1[j] <> sp0[j] OR rs1[j] <> rs0[j] OR sw1[j] IS DISTINCT FROM sw0[j] THEN
            UPDATE {s}.budget_buckets b SET spent = sp1[j], reserved = rs1[j],
                sweep_at = sw1[j]
                WHERE b.budget = kb[j] AND b.subject = ks[j] AND b.win = kw[j];
        END IF;
    END LOOP;
    IF sync_spend AND (jsonb_array_length(lst) > 0 OR jsonb_typeof(tx->'x') = 'number') THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    RETURN NULL;
END
$fn$;
"""

# Usage of buckets ([[budget, subject, win, since|null], ...]) as [[spent, reserved], ...],
# expired holds left out. STABLE: every statement reads one snapshot.
_USAGE = """
CREATE OR REPLACE FUNCTION {s}.budget_usage(buckets jsonb, now float8, max_skew float8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    server float8 := extract(epoch FROM clock_timestamp());
    g jsonb;
    sp numeric;
    rs numeric;
    sw float8;
    acc jsonb := '[]';
BEGIN
    IF max_skew IS NOT NULL AND abs(server - now) > max_skew THEN
        RETURN jsonb_build_object('reason', 'clock', 'server', server);
    END IF;
    FOR g IN SELECT v FROM jsonb_array_elements(buckets) v LOOP
        SELECT b.spent, b.reserved, b.sweep_at INTO sp, rs, sw FROM {s}.budget_buckets b
            WHERE b.budget = g->>0 AND b.subject = g->>1 AND b.win = (g->>2)::bigint;
        IF NOT FOUND THEN
            sp := 0;
            rs := 0;
        ELSIF sw <= now THEN
            rs := rs - (SELECT coalesce(sum(h.amount), 0) FROM {s}.budget_holds h
                        WHERE h.budget = g->>0 AND h.subject = g->>1
                        AND h.win = (g->>2)::bigint AND h.expires_at <= now)
                     - (SELECT coalesce(sum(r.hold_amount), 0)
                        FROM {s}.budget_reservations r
                        WHERE r.hold_budget = g->>0 AND r.hold_subject = g->>1
                        AND r.hold_win = (g->>2)::bigint AND r.held
                        AND r.expires_at <= now);
        END IF;
        IF jsonb_typeof(g->3) = 'number' THEN
            SELECT coalesce(sum(ev.amount), 0) INTO sp FROM {s}.budget_events ev
                WHERE ev.budget = g->>0 AND ev.subject = g->>1 AND ev.at > (g->>3)::float8;
        END IF;
        acc := acc || jsonb_build_array(jsonb_build_array(sp, rs));
    END LOOP;
    RETURN acc;
END
$fn$;
"""

# A reserve on one bucket, the common case, as one statement: the conditional UPDATE
# locks the bucket row and checks the guard on its latest version (READ COMMITTED
# re-checks the WHERE after waiting for a lock); the reservation, its hold in its row,
# is inserted only if it updated a row, and the statement returns a row only then
# (the INSERT is the statement itself: no count over the CTE to plan and run). It
# declines (no row) rather than refuses: a bucket not yet created, expired holds to
# give back, a guard that fails or a clock out of bounds all fall back to
# budget_apply, which writes nothing here was written and says why.
# $1-$3 bucket, $4 held amount, $5 guard add, $6 ceiling, $7 debt_above|null,
# $8 reservation id, $9 expires_at, $10 now, $11 max skew|null, $12 record, $13 tenant,
# $14 listing key.
_RESERVE = """
WITH b AS (
    UPDATE {s}.budget_buckets t SET reserved = t.reserved + $4::bigint,
        sweep_at = least(t.sweep_at, $9::float8)
    WHERE t.budget = $1::text AND t.subject = $2::text AND t.win = $3::bigint
        AND ($11::float8 IS NULL
             OR abs(extract(epoch FROM clock_timestamp()) - $10::float8) <= $11::float8)
        AND (t.sweep_at IS NULL OR t.sweep_at > $10::float8)
        AND t.spent::numeric + t.reserved + $5::numeric <= $6::numeric
        AND ($7::numeric IS NULL OR t.spent <= $7::numeric)
    RETURNING 1)
INSERT INTO {s}.budget_reservations (id, status, expires_at, nholds, data, tenant, listed,
    hold_budget, hold_subject, hold_win, hold_amount, held)
SELECT $8::text, 'active', $9::float8, 1, $12::text, $13::text, $14::text, $1::text,
    $2::text, $3::bigint, $4::bigint, true FROM b
RETURNING 1
"""

# A commit or release of a reservation whose hold is in its row (one held bucket) and
# whose spends are on that bucket (all known to this process), the common case, as one
# statement: finalize the reservation if live and still held (the UPDATE locks it, in
# the order budget_apply locks), then give its hold back to the bucket and add the spend
# (the bucket's lock second). It returns 0 (nothing written) when the reservation is not
# live or held; when the bucket's update does not follow (the bucket has expired holds
# to give back, or is missing) it raises _DECLINE through budget_decline, rolling the
# finalization back. Either way the caller runs budget_apply, which says why.
# $1 reservation id, $2-$4 bucket, $5 spend, $6 status, $7 record, $8 now,
# $9 max skew|null, $10 wait for the WAL flush.
_FINISH = """
WITH r AS (
    UPDATE {s}.budget_reservations t SET status = $6::text, finished_at = $8::float8,
        data = $7::text, held = false
    WHERE t.id = $1::text AND t.held AND t.status = 'active' AND t.expires_at > $8::float8
        AND t.hold_budget = $2::text AND t.hold_subject = $3::text AND t.hold_win = $4::bigint
        AND ($9::float8 IS NULL
             OR abs(extract(epoch FROM clock_timestamp()) - $8::float8) <= $9::float8)
    RETURNING t.hold_amount),
b AS (
    UPDATE {s}.budget_buckets t SET reserved = t.reserved - r.hold_amount,
        spent = t.spent + $5::bigint
    FROM r WHERE t.budget = $2::text AND t.subject = $3::text AND t.win = $4::bigint
        AND (t.sweep_at IS NULL OR t.sweep_at > $8::float8)
    RETURNING 1)
SELECT CASE WHEN EXISTS (SELECT FROM b) THEN 1
            WHEN EXISTS (SELECT FROM r) THEN {s}.budget_decline() ELSE 0 END
    + CASE WHEN $10::boolean THEN length(set_config('synchronous_commit', 'on', true)) * 0
           ELSE 0 END
"""
_DECLINE_FN = """
CREATE OR REPLACE FUNCTION {s}.budget_decline() RETURNS bigint LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'budget fast path declines' USING ERRCODE = '{decline}';
END
$fn$;
"""

# One statement (several statements cannot share one call's parameters).
# Rate limits (policyengine.budgets.ratelimit): one GCRA step over every key of a call,
# all or nothing, in one transaction. ``keys`` is [[key, count, period_us, burst], ...]
# sorted by key (the lock order). Each row is locked by one upsert that creates it at
# rest or returns its latest committed TAT; the time is the server's (``clock_timestamp``)
# unless the caller passes ``at_us`` (refused past ``max_skew_us``). Returns
# [refused key index (1-based; 0 when admitted), retry_after_us, now_us], or
# [-1, server_us, 0] for a skewed caller.
_RATE = """
CREATE OR REPLACE FUNCTION {s}.budget_rate_admit(keys jsonb, at_us bigint,
                                                 max_skew_us bigint, consume boolean)
RETURNS bigint[]
LANGUAGE plpgsql AS $fn$
DECLARE
    server bigint := floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    now_us bigint := coalesce(at_us, server);
    n integer := jsonb_array_length(keys);
    tu bigint[];
    tf bigint[];
    k jsonb;
    u bigint;
    f bigint;
    c bigint;
    p bigint;
    d numeric;
    tol numeric;
    wait bigint;
    worst bigint := 0;
    refused integer := 0;
    j integer;
BEGIN
    IF at_us IS NOT NULL AND max_skew_us IS NOT NULL AND abs(server - at_us) > max_skew_us THEN
        RETURN ARRAY[-1, server, 0];
    END IF;
    FOR j IN 1 .. n LOOP
        k := keys->(j - 1);
        c := (k->>1)::bigint;
        p := (k->>2)::bigint;
        INSERT INTO {s}.budget_rates AS t (key, tat_us, tat_frac) VALUES (k->>0, 0, 0)
            ON CONFLICT (key) DO UPDATE SET key = excluded.key
            RETURNING t.tat_us, t.tat_frac INTO u, f;
        IF u < now_us THEN
            u := now_us;
            f := 0;
        END IF;
        d := (u - now_us)::numeric * c + f;
        tol := ((k->>3)::bigint - 1)::numeric * p;
        IF d > tol THEN
            wait := div(d - tol + c - 1, c)::bigint;  -- exact: no numeric rounding
            IF wait > worst THEN
                worst := wait;
                refused := j;
            END IF;
        ELSE
            f := f + p % c;
            u := u + p / c;
            IF f >= c THEN
                f := f - c;
                u := u + 1;
            END IF;
            tu[j] := u;
            tf[j] := f;
        END IF;
    END LOOP;
    IF refused > 0 THEN
        RETURN ARRAY[refused, worst, now_us];
    END IF;
    IF consume THEN
        FOR j IN 1 .. n LOOP
            UPDATE {s}.budget_rates t SET tat_us = tu[j], tat_frac = tf[j]
                WHERE t.key = keys->(j - 1)->>0;
        END LOOP;
    END IF;
    RETURN ARRAY[0, 0, now_us];
END
$fn$;
"""
_RATE_TABLE = """
CREATE TABLE IF NOT EXISTS {s}.budget_rates (
    key text PRIMARY KEY, tat_us bigint NOT NULL, tat_frac bigint NOT NULL)
"""

# Forgetting what nobody can ask about any more, prepared on every connection and run in
# a transaction that _HOUSEKEEP_BEGIN opens. Each delete has an index on the expiry it
# deletes by (budget_rates excepted, see _EXPIRY_INDEXES), but without statistics (a
# table never ANALYZEd: autovacuum off, or not yet run) the planner prices a scan of the
# whole table below it, and reads every reservation kept for ``retention`` each time
# (7 ms at 20,000 rows, every 512 writes of each process): sequential scans are priced
# out for this transaction. JIT is off as well: pricing them out makes the plan's cost
# (budget_rates is still scanned) large enough to compile it, which takes longer than
# the deletes. $1 events before, $2 finished before, $3 now, $4 buckets before,
# $5 rate keys at rest before.
_HOUSEKEEP = """
WITH events AS (DELETE FROM {s}.budget_events WHERE at < $1::float8),
finished AS (DELETE FROM {s}.budget_reservations WHERE finished_at < $2::float8),
abandoned AS (DELETE FROM {s}.budget_reservations r WHERE r.status = 'active'
    AND r.expires_at < $2::float8
    AND NOT r.held AND NOT EXISTS (SELECT 1 FROM {s}.budget_holds h WHERE h.rid = r.id)),
idempotency AS (DELETE FROM {s}.budget_idempotency WHERE expires_at <= $3::float8),
buckets AS (DELETE FROM {s}.budget_buckets WHERE win > 0 AND win < $4::bigint
    AND reserved = 0),
rates AS (DELETE FROM {s}.budget_rates WHERE tat_us < $5::bigint)
SELECT 1
"""
_HOUSEKEEP_BEGIN = b"BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL jit = off"


def _unavailable(exc: BaseException) -> BudgetStoreError:
    return BudgetStoreError("store_unavailable", f"budget database error: {exc}")


def _encode(tx: Transaction, own: ReservationRecord | None) -> bytes:
    """The transaction as the JSON document ``budget_apply`` reads. ``own``: the record
    of ``require_active`` if known here; then the buckets to lock go along, sorted (by
    code point, which is PostgreSQL's "C" byte order of UTF-8), saving the function
    from working them out."""
    created = tx.create
    c: list[Any] | None = None
    if created is not None:
        holds = (
            [[ln[0], ln[1], ln[2], ln[5]] for ln in created.lines if ln[5]]
            if created.status == ACTIVE else []
        )
        c = [created.id, created.status, created.expires_at, holds, compact_json(created),
             created.tenant or "",
             listing_key(created.created_at, created.id) if created.status == ACTIVE
             else None]
    fin = tx.finalize
    idem = tx.idempotency
    keys: list[tuple[str, str, int]] | None = None
    if tx.require_active is None or own is not None:
        found = {(g[0][0], g[0][1], g[0][2]) for g in tx.guards}
        if c is not None:
            found.update((h[0], h[1], h[2]) for h in c[3])
        found.update((sp[0], sp[1], 0 if sp[3] else sp[2]) for sp in tx.spends)
        if own is not None:
            found.update((ln[0], ln[1], ln[2]) for ln in own.lines)
        keys = sorted(found)
    return compact_bytes({
        "k": keys,
        "g": [[g[0][0], g[0][1], g[0][2], g[0][3], g[1], g[2], g[3]] for g in tx.guards],
        "r": tx.require_active,
        "c": c,
        "f": None if fin is None else [fin.status, compact_json(fin)],
        "x": tx.extend_to,
        "s": [list(s) for s in tx.spends],
        "i": None if idem is None else [idem.key, idem.fingerprint, idem.expires_at,
                                        compact_json(idem.result)],
    })


def _record(data: str | None, expires_at: float | None) -> ReservationRecord | None:
    """A stored reservation; its row's ``expires_at`` is authoritative (``extend``
    moves it without rewriting ``data``)."""
    if data is None:
        return None
    rec = record_from_json(data)
    if expires_at is not None and rec.status == ACTIVE and rec.expires_at != expires_at:
        rec = rec._replace(expires_at=expires_at)
    return rec


class PostgresStore:
    """Budget store in PostgreSQL, shared by every process and host that opens ``url``.

    >>> store = PostgresStore("postgresql://app@db/ledger", schema="policyengine")  # doctest: +SKIP

    ``schema``: where the tables live (created with the tables when missing; a lower-case
    SQL name). ``durability``: see the module docstring. ``pool_size``: most connections
    per process (one per concurrently calling thread is enough). ``max_clock_skew``:
    seconds the ``now`` of a call may differ from the server's clock before the call is
    refused with ``clock_skew`` (``None``: trust the caller's clock, for tests that set
    the time). ``retention``: seconds finished reservations and idempotency records are
    kept. ``connect_timeout``: seconds to wait for a connection (libpq's, rounded to a
    whole number of at least 1) or for a free one of the pool. ``url``'s query holds only
    libpq's connection parameters (``sslmode``...; ``store_from_url`` takes the store's
    own out first): any other, or a value libpq does not take, is refused with
    ``invalid_store_url`` before any connection. Raises ``BudgetStoreError``
    ``store_unavailable`` when the server cannot be reached and ``store_incompatible``
    when the schema holds another layout.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "policyengine",
        durability: Durability = "process",
        pool_size: int = 8,
        max_clock_skew: float | None = 2.0,
        retention: float = 86400.0,
        connect_timeout: float = 5.0,
        host_clock: Callable[[], float] = time.time,
    ) -> None:
        check_store_options("PostgresStore", durability=durability, schema=schema,
                            pool_size=pool_size, max_clock_skew=max_clock_skew,
                            retention=retention, connect_timeout=connect_timeout)
        from policyengine._storeurl import StoreUrlError, check_postgres_url
        from policyengine.budgets._options import store_url_error
        try:
            check_postgres_url(url)
        except StoreUrlError as exc:
            raise store_url_error(url, str(exc)) from None
        try:
            import psycopg  # fail here, with the extra to install
        except ImportError as exc:  # pragma: no cover - the extra is part of dev
            raise BudgetStoreError(
                "store_unavailable",
                "PostgresStore needs psycopg: pip install 'policyengine[postgres]'",
            ) from exc
        self._psycopg_error = psycopg.Error
        self.url = url
        self.schema = schema
        self.durability = durability
        self.pool_size = pool_size
        self.max_clock_skew = max_clock_skew
        self.retention = retention
        self.connect_timeout = connect_timeout
        s = f'"{schema}"'
        self._prepare = (
            (_APPLY_STMT, f"SELECT {s}.budget_apply($1::jsonb, $2::float8, $3::float8, "
                          "$4::boolean)::text".encode()),
            (_USAGE_STMT, f"SELECT {s}.budget_usage($1::jsonb, $2::float8, "
                          "$3::float8)::text".encode()),
            (_RESERVE_STMT, _RESERVE.format(s=s).encode()),
            (_RATE_STMT, f"SELECT {s}.budget_rate_admit($1::jsonb, $2::bigint, $3::bigint, "
                         "$4::boolean)::text".encode()),
            (_FINISH_STMT, _FINISH.format(s=s).encode()),
            (_HOUSEKEEP_STMT, _HOUSEKEEP.format(s=s).encode()),
        )
        self._skew_param = None if max_clock_skew is None else repr(float(max_clock_skew)
                                                                    ).encode()
        self._sync_param = b"t" if durability == "spend" else b"f"
        # The connections of this process: idle ones, and how many are open.
        self._idle: deque[Connection[Any]] = deque()
        self._open = 0
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0  # threads waiting in _checkout for a connection
        self._writes = 0
        self._closed = False
        self._create_schema()
        self._recent = RecentReservations()
        self.clock = ServerClock(self.server_time, host=host_clock)
        """Host time corrected to the server's: the ledger's default clock."""

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> Connection[Any]:
        """A new connection: autocommit, its durability set, the two calls prepared."""
        import psycopg
        from psycopg import pq
        conn = psycopg.connect(self.url, autocommit=True,
                               connect_timeout=max(1, round(self.connect_timeout)))
        try:
            conn.execute("SELECT set_config('synchronous_commit', %s, false)",
                         ("on" if self.durability == "full" else "off",))
            for name, sql in self._prepare:
                res = conn.pgconn.prepare(name, sql)
                if res.status != pq.ExecStatus.COMMAND_OK:
                    raise psycopg.errors.error_from_result(res)
        except BaseException:
            conn.close()
            raise
        return conn

    def _checkout(self) -> Connection[Any]:
        """An idle connection of this process, or a new one while fewer than
        ``pool_size`` are open; else wait up to ``connect_timeout`` for one."""
        if self._pid != os.getpid():
            self._after_fork()
        try:
            return self._idle.pop()  # atomic: the common case takes no lock
        except IndexError:
            pass
        deadline = time.monotonic() + self.connect_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise BudgetStoreError("store_unavailable", "the budget store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self.pool_size:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetStoreError(
                        "store_unavailable",
                        f"all {self.pool_size} connections to the budget database stayed "
                        f"busy for {self.connect_timeout} s")
                self._waiting += 1
                try:
                    self._cond.wait(min(left, 0.05))
                finally:
                    self._waiting -= 1
        import psycopg
        try:
            return self._connect()
        except psycopg.Error as exc:
            self._discard(None)
            raise _unavailable(exc) from exc
        except BaseException:
            self._discard(None)
            raise

    def _checkin(self, conn: Connection[Any]) -> None:
        """Give back a connection checked out by this process (so no pid check: a
        child forked meanwhile does not run the rest of its parent's call), idle in no
        transaction; else close it."""
        if (self._closed or conn.pgconn.transaction_status != _IDLE
                or conn.pgconn.status != _CONNECTION_OK):
            self._discard(conn)
            return
        self._idle.append(conn)
        if self._waiting:  # only then take the lock (a waiter also looks every 50 ms)
            with self._cond:
                self._cond.notify()

    def _discard(self, conn: Connection[Any] | None) -> None:
        """Close a connection that failed (or any, once closed) and free its place."""
        if conn is not None:
            with suppress(Exception):  # it is broken already
                conn.close()
        with self._cond:
            if self._pid == os.getpid():
                self._open -= 1
            self._cond.notify()

    def _after_fork(self) -> None:
        # A forked child must not use its parent's sockets (nor close them: psycopg
        # leaves a connection made by another process alone when it is collected).
        with self._cond:
            if self._pid != os.getpid():
                self._idle = deque()
                self._open = 0
                self._pid = os.getpid()

    @contextmanager
    def _connection(self) -> Iterator[Connection[Any]]:
        """A connection of this process's pool for the block (any psycopg error:
        ``store_unavailable``, and the connection is closed, not reused)."""
        import psycopg
        conn = self._checkout()
        try:
            yield conn
        except psycopg.Error as exc:
            self._discard(conn)
            raise _unavailable(exc) from exc
        except BaseException:
            self._discard(conn)
            raise
        self._checkin(conn)

    def _call(self, sql: str, params: tuple[Any, ...]) -> Any:
        """First column of the one row ``sql`` returns."""
        with self._connection() as conn:
            row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _exec(self, name: bytes, params: list[bytes | None], decline: str = ""
              ) -> bytes | None:
        """Run a statement prepared on every connection (text parameters), and return
        the first column of its first row (None: no row). libpq's blocking call, which
        releases the GIL: the driver's asynchronous wait around its send costs more
        client CPU than the rest of an operation."""
        conn = self._checkout()
        try:
            res = conn.pgconn.exec_prepared(name, params)  # type: ignore[arg-type]  # None: NULL
            if res.status != _TUPLES_OK:
                self._failed(conn, res, decline)
                return None  # declined, the connection given back
            value = res.get_value(0, 0)
        except BaseException as exc:
            self._discard(conn)
            if isinstance(exc, self._psycopg_error):
                raise _unavailable(exc) from exc
            raise
        self._checkin(conn)
        return value

    def _failed(self, conn: Connection[Any], res: Any, decline: str) -> None:
        """A statement that did not return its row: None (the connection given back)
        when it is the fast path declining, else the server's error."""
        import psycopg
        from psycopg import pq
        if (decline and res.error_field(pq.DiagnosticField.SQLSTATE) == decline.encode()
                and conn.pgconn.transaction_status == _IDLE):
            self._checkin(conn)  # rolled back, and the connection is fine
            return None
        raise psycopg.errors.error_from_result(res)

    def _create_schema(self) -> None:
        import psycopg
        s = f'"{self.schema}"'
        try:
            with psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
            ) as conn, conn.transaction():
                # Processes creating one schema at once take turns.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                             (f"policyengine.budgets.{self.schema}",))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                found = conn.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s "
                    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
                    "AND c.relname LIKE 'budget%%'", (self.schema,),
                ).fetchall()
                names = {row[0] for row in found}
                version: int | None = None
                if "budget_layout" in names:
                    # A layout table without our columns or without its row (made by
                    # something else, or cut short by hand) is a layout we cannot read:
                    # refused as one, never re-created over or queried into a raw error.
                    row = None
                    if not missing_columns(conn, self.schema, (("budget_layout", "version"),
                                                               ("budget_layout", "code"))):
                        row = conn.execute(f"SELECT max(version) FROM {s}.budget_layout"
                                           ).fetchone()
                    if row is None or row[0] is None:
                        raise BudgetStoreError(
                            "store_incompatible",
                            f"schema {self.schema!r} holds a budget_layout table this "
                            "policyengine does not recognise (no version recorded in "
                            "it): use another schema, or drop that table if nothing "
                            "else uses it",
                        )
                    version = row[0]
                elif names:
                    version = 0  # budget tables without a layout: not ours to read
                if version == _MIGRATES_FROM:
                    # Layout 3 lacks only the expiry indexes: made here, once, by the
                    # first process that opens it (building one blocks writes to its
                    # table until it is built). Processes of the version before that
                    # are running keep working; one opening the schema afterwards is
                    # refused, as for any layout it does not know.
                    for statement in _EXPIRY_INDEXES.format(s=s).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"UPDATE {s}.budget_layout SET version = %s",
                                 (LAYOUT_VERSION,))
                    version = LAYOUT_VERSION
                if version is not None and version != LAYOUT_VERSION:
                    raise BudgetStoreError(
                        "store_incompatible",
                        f"schema {self.schema!r} holds budget layout version {version}, "
                        f"this policyengine reads version {LAYOUT_VERSION}: settle or "
                        "export its budgets with the version that wrote it, or use "
                        "another schema",
                    )
                functions = (_APPLY.format(s=s) + _USAGE.format(s=s)
                             + _DECLINE_FN.format(s=s, decline=_DECLINE)
                             + _RATE.format(s=s))
                code = hashlib.sha256(functions.encode()).hexdigest()
                if version is None:
                    conn.execute(f"CREATE TABLE {s}.budget_layout (version integer "
                                 "NOT NULL, code text NOT NULL)")
                    conn.execute(f"INSERT INTO {s}.budget_layout VALUES (%s, '')",
                                 (LAYOUT_VERSION,))
                    for statement in (_TABLES + _EXPIRY_INDEXES).format(s=s).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                # Rate limits came later in layout 1: their table is made where missing
                # (a new table locks nothing that running operations use).
                if "budget_rates" not in names:
                    conn.execute(_RATE_TABLE.format(s=s))
                # Tables are never touched again once made (DDL would lock them against
                # running operations); the functions are replaced only when they changed.
                row = conn.execute(f"SELECT code FROM {s}.budget_layout").fetchone()
                if row is None or row[0] != code:
                    conn.execute(_APPLY.format(s=s))
                    conn.execute(_USAGE.format(s=s))
                    conn.execute(_DECLINE_FN.format(
                        s=s, decline=_DECLINE))
                    conn.execute(_RATE.format(s=s))
                    conn.execute(f"UPDATE {s}.budget_layout SET code = %s", (code,))
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc

    def server_time(self) -> float:
        """The server's clock (``clock_timestamp()``), POSIX seconds."""
        value = self._call("SELECT extract(epoch FROM clock_timestamp())::float8", ())
        return float(value)

    def close(self) -> None:
        """Close this process's connections (idempotent); later calls fail with
        ``store_unavailable``."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, deque()
            if self._pid != os.getpid():
                return  # the parent's, not ours to close
            self._open -= len(idle)
        for conn in idle:
            conn.close()

    def drop(self) -> None:
        """Drop the schema and everything in it (tests, and tearing a ledger down)."""
        import psycopg
        self.close()
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc

    # -- reads -------------------------------------------------------------------------

    def usage(self, buckets: tuple[Bucket, ...], now: float) -> tuple[Usage, ...]:
        doc = compact_json([[b[0], b[1], b[2], b[3]] for b in buckets])
        text = self._exec(_USAGE_STMT, [doc.encode(), repr(float(now)).encode(),
                                        self._skew_param])
        result = json_loads(text)  # type: ignore[arg-type]
        if type(result) is dict:
            raise _skewed(now, result["server"], self.max_clock_skew)
        return tuple([Usage(int(sp), int(rs)) for sp, rs in result])

    def get_reservation(self, reservation_id: str) -> ReservationRecord | None:
        with self._connection() as conn:
            row = conn.execute(
                f'SELECT data, expires_at FROM "{self.schema}".budget_reservations '
                "WHERE id = %s", (reservation_id,),
            ).fetchone()
        return None if row is None else _record(row[0], row[1])

    def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        with self._connection() as conn:
            row = conn.execute(
                f'SELECT fingerprint, expires_at, result FROM "{self.schema}".'
                "budget_idempotency WHERE key = %s AND expires_at > %s", (key, now),
            ).fetchone()
        if row is None:
            return None
        return IdempotencyRecord(key, row[0], record_from_json(row[2]), row[1])

    def list_reservations(self, tenant: str, after: str | None, limit: int
                          ) -> list[ReservationRecord]:
        with self._connection() as conn:
            rows = conn.execute(
                f'SELECT data, expires_at FROM "{self.schema}".budget_reservations '
                'WHERE tenant = %s AND listed > %s ORDER BY listed LIMIT %s',
                (tenant, after or "", limit),
            ).fetchall()
        return [rec for rec in (_record(row[0], row[1]) for row in rows) if rec is not None]

    def live_reservation(self, reservation_id: str, now: float) -> ReservationRecord | None:
        """This process's last view of a reservation it created, if live by that view
        (no round trip; ``apply`` re-checks it)."""
        return self._recent.live(reservation_id, now)

    # -- the one write -----------------------------------------------------------------

    def apply(self, tx: Transaction, now: float) -> Outcome:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._housekeep(now)
        if tx.create is not None and self._reserve(tx, now):
            self._recent.note(tx)
            return OK
        own = None if tx.require_active is None else self._recent.get(tx.require_active)
        if own is not None and tx.finalize is not None and self._finish(tx, own, now):
            self._recent.note(tx)
            return OK
        text = self._exec(_APPLY_STMT, [_encode(tx, own), repr(float(now)).encode(),
                                        self._skew_param, self._sync_param])
        if text is None:
            self._recent.note(tx)
            return OK
        refusal: dict[str, Any] = json_loads(text)
        reason = refusal["reason"]
        if reason == "clock":
            raise _skewed(now, refusal["server"], self.max_clock_skew)
        if reason == "idempotency":
            found = IdempotencyRecord(tx.idempotency.key,  # type: ignore[union-attr]
                                      refusal["f"], record_from_json(refusal["d"]),
                                      refusal["x"])
            return Outcome(False, "idempotency", idempotency=found)
        if reason == "reservation":
            self._recent.forget(tx.require_active)
            return Outcome(False, "reservation",
                           reservation=_record(refusal.get("d"), refusal.get("x")))
        usages = tuple([Usage(int(sp), int(rs)) for sp, rs in refusal["u"]])
        return Outcome(False, reason, refusal["i"], usages)

    def rate_admit(self, keys: tuple[RateKey, ...], now_us: int | None,
                   consume: bool = True) -> RateOutcome:
        """Rate limits (:mod:`policyengine.budgets.ratelimit`): one call of
        ``budget_rate_admit``, one transaction: all of ``keys`` admit one call and count
        it, or none does, at the server's time (or ``now_us``, within
        ``max_clock_skew``)."""
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._housekeep(self.clock() if now_us is None else now_us / 1e6)
        doc = compact_json([list(k) for k in keys])
        skew = (None if now_us is None or self.max_clock_skew is None
                else str(int(self.max_clock_skew * 1_000_000)).encode())
        text = self._exec(_RATE_STMT, [doc.encode(),
                                       None if now_us is None else str(now_us).encode(),
                                       skew, b"t" if consume else b"f"])
        refused, wait, now = (int(x) for x in
                              text.decode()[1:-1].split(","))  # type: ignore[union-attr]
        if refused < 0:
            raise _skewed(now_us / 1e6, wait / 1e6,  # type: ignore[operator]
                          self.max_clock_skew)
        if refused == 0:
            return RateOutcome(True, -1, 0, now)
        return RateOutcome(False, refused - 1, wait, now)

    def _reserve(self, tx: Transaction, now: float) -> bool:
        """The one-statement reserve (see ``_RESERVE``) when ``tx`` is a plain reserve
        of one calendar bucket; False when it does not apply or declined."""
        created = tx.create
        if (created is None or created.status != ACTIVE or len(tx.guards) != 1
                or tx.require_active is not None or tx.finalize is not None
                or tx.extend_to is not None or tx.spends or tx.idempotency is not None):
            return False
        bucket, add, ceiling, debt_above = tx.guards[0]
        if bucket[3] is not None:
            return False  # rolling: its spend is a sum of events
        held = [ln for ln in created.lines if ln[5]]
        if len(held) != 1:
            return False
        line = held[0]
        if (line[0], line[1], line[2]) != (bucket[0], bucket[1], bucket[2]):
            return False
        value = self._exec(_RESERVE_STMT, [
            bucket[0].encode(), bucket[1].encode(), str(bucket[2]).encode(),
            str(line[5]).encode(), str(add).encode(), str(ceiling).encode(),
            None if debt_above is None else str(debt_above).encode(),
            created.id.encode(), repr(float(created.expires_at)).encode(),
            repr(float(now)).encode(), self._skew_param, compact_bytes(created),
            (created.tenant or "").encode(),
            listing_key(created.created_at, created.id).encode(),
        ])
        return value == b"1"

    def _finish(self, tx: Transaction, own: ReservationRecord, now: float) -> bool:
        """The one-statement commit or release (see ``_FINISH``) when ``tx`` finishes
        ``own``, which holds one bucket (its hold in its row), and spends on that bucket
        only; False when it does not apply or declined."""
        fin = tx.finalize
        if (fin is None or tx.guards or tx.create is not None or tx.extend_to is not None
                or tx.idempotency is not None):
            return False
        held = [ln for ln in own.lines if ln[5]]
        if len(held) != 1:
            return False
        budget, subject, win = held[0][0], held[0][1], held[0][2]
        spend = 0
        for sp in tx.spends:
            if sp[3] or sp[0] != budget or sp[1] != subject or sp[2] != win:
                return False
            spend += sp[4]
        value = self._exec(_FINISH_STMT, [
            own.id.encode(), budget.encode(), subject.encode(), str(win).encode(),
            str(spend).encode(), fin.status.encode(), compact_bytes(fin),
            repr(float(now)).encode(), self._skew_param,
            b"t" if self.durability == "spend" and tx.spends else b"f",
        ], decline=_DECLINE)
        return value == b"1"

    def _housekeep(self, now: float) -> None:
        """Forget what nobody can ask about any more (``_HOUSEKEEP``): three round trips
        on a connection of the pool; correctness never waits for it, so a failure is
        ignored (the next one will do; the operation itself reports any real fault)."""
        try:
            conn = self._checkout()
        except BudgetStoreError:
            return
        try:
            pgconn = conn.pgconn
            done = (
                pgconn.exec_(_HOUSEKEEP_BEGIN).status == _COMMAND_OK
                and pgconn.exec_prepared(_HOUSEKEEP_STMT, self._housekeep_params(now)
                                         ).status == _TUPLES_OK
                and pgconn.exec_(b"COMMIT").status == _COMMAND_OK
            )
        except BaseException as exc:
            self._discard(conn)  # closing it rolls back what it began
            if isinstance(exc, self._psycopg_error):
                return
            raise
        if done:
            self._checkin(conn)
        else:
            self._discard(conn)

    def _housekeep_params(self, now: float) -> list[bytes]:
        """``_HOUSEKEEP``'s parameters, each as text of its column's type (so each
        comparison is an index condition: a float compared with the bigint ``win`` would
        cast every row's instead)."""
        return [
            repr(float(now - MAX_ROLLING_SECONDS - 60)).encode(),
            repr(float(now - self.retention)).encode(),
            repr(float(now)).encode(),
            str(int(now) - _BUCKET_LIFETIME).encode(),
            # rate-limit keys at rest for a minute (their TAT passed)
            str(int((now - 60) * 1_000_000)).encode(),
        ]


def _skewed(now: float, server: float, bound: float | None) -> BudgetStoreError:
    return BudgetStoreError(
        "clock_skew",
        f"this host's time is {now - server:+.3f} s from the budget store's, more than the "
        f"{bound} s allowed: use the store's clock (the ledger's default) or fix the host "
        "clock (NTP)",
        {"skew": round(now - server, 3), "maxSkew": bound},
    )
