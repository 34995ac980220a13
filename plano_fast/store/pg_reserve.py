"""PostgreSQL: many hard-budget reservations in ONE statement (issue 27).

Reservations of one project all lock its counter rows until their commit is flushed, so
one at a time they are serialized behind one WAL flush each.  ``RESERVE_MANY`` takes the
reservations that arrived together (``pg_batch.GroupRunner``), in arrival order
``j = 1..n``, and admits the longest prefix that fits: request ``j`` is admitted when, on
every counter it names, ``spent + reserved + (the amounts of requests 1..j on that
counter) <= its limit``, and so are all the requests before it.  That is exactly what n
single reservations run one after another would admit up to the first refusal; the
requests from the first misfit on are then each run alone (``postgres._RESERVE``), which
answers each exactly (a smaller one may still fit).  All or nothing per request, as
before: a request's rows are all written or none.

Counter rows -- every shard of each counter (migration 11: a counter is the sum of its
rows) -- are locked (``lk``, ``FOR UPDATE``) in the global lock order (shard last) and read
at their latest version (READ COMMITTED re-reads a row once its lock is granted); ``chk``
sums them per counter.  Reservations live on shard 0.  A shard-0 row that did not exist at
``lk`` but was created by a concurrent statement before ``held`` inserts it cannot be
checked here: ``held`` leaves it alone, covers fewer counters than
the batch needs, and the statement fails on purpose (the cast of ``PARTIAL``), which rolls
all of it back; it is run again (that counter is then locked in ``chk``).

The batch travels as ONE array of ``reserve_input`` (migration 10: a tuple per request and
counter, ``(j, k, i, p, s, lim, a, rid, exp, own)``), ``$1``; ``$2`` is now.  Not ten
arrays, one per column: asyncpg checks each element of an array parameter against
collections.abc (a Python-level ``__instancecheck__`` each, ~0.4 µs; ~15 per tuple).

The result: the arrival number of the first request not admitted (``NONE_REFUSED`` when
all were).
"""

from __future__ import annotations

from typing import Final

PARTIAL: Final = "plano_reservation_partial"
NONE_REFUSED: Final = 2**31 - 1

#: every shard row of the counters in ``t`` locked (key, then shard: one lock order for all
#: reservation statements) with its spent + reserved; shared by ``RESERVE_MANY`` and
#: ``postgres._RESERVE``, which sum it per counter
LOCK_COUNTERS: Final = """lk AS MATERIALIZED (
    SELECT sc.scope_kind AS k, sc.scope_id AS i, sc.period AS p, sc.period_start AS s, sc.shard,
           sc.spent_nano_usd + sc.reserved_nano_usd AS used
      FROM spending_counters sc
     WHERE (sc.scope_kind, sc.scope_id, sc.period, sc.period_start) IN (SELECT k, i, p, s FROM t)
     ORDER BY sc.scope_kind COLLATE "C", sc.scope_id COLLATE "C", sc.period COLLATE "C", sc.period_start, sc.shard
       FOR UPDATE OF sc
),"""

RESERVE_MANY: Final = f"""
WITH t AS (
    SELECT * FROM unnest($1::reserve_input[])
),
{LOCK_COUNTERS}
chk AS (
    SELECT k, i, p, s, SUM(used) AS used FROM lk GROUP BY k, i, p, s
),
cum AS (
    SELECT t.j,
           COALESCE(chk.used, 0) + SUM(t.a) OVER (PARTITION BY t.k, t.i, t.p, t.s ORDER BY t.j) <= t.lim AS fits
      FROM t LEFT JOIN chk ON chk.k = t.k AND chk.i = t.i AND chk.p = t.p AND chk.s = t.s
),
cut AS (
    SELECT COALESCE(MIN(j), {NONE_REFUSED}) AS first_refused FROM cum WHERE NOT fits
),
ok AS (
    SELECT * FROM t WHERE t.j < (SELECT first_refused FROM cut)
),
held AS (
    INSERT INTO spending_counters AS sc
        (scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd, updated_at_ns)
    SELECT k, i, p, s, 0, SUM(a)::bigint, $2::bigint FROM ok
     GROUP BY k, i, p, s
     ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s
    ON CONFLICT (scope_kind, scope_id, period, period_start, shard) DO UPDATE
       SET reserved_nano_usd = sc.reserved_nano_usd + EXCLUDED.reserved_nano_usd,
           updated_at_ns = EXCLUDED.updated_at_ns
     WHERE EXISTS (SELECT 1 FROM lk WHERE lk.k = sc.scope_kind AND lk.i = sc.scope_id
                                      AND lk.p = sc.period AND lk.s = sc.period_start AND lk.shard = 0)
    RETURNING 1
),
rows AS (
    INSERT INTO spending_reservations (id, scope_kind, scope_id, period, period_start,
                                       amount_nano_usd, created_at_ns, expires_at_ns, owner)
    SELECT rid, k, i, p, s, a, $2::bigint, exp, own FROM ok
)
SELECT CAST(CASE WHEN (SELECT count(*) FROM held) = (SELECT count(*) FROM (SELECT DISTINCT k, i, p, s FROM ok) d)
                 THEN (SELECT first_refused FROM cut)::text ELSE '{PARTIAL}' END AS integer)
"""
