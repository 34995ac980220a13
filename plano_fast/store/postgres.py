"""PostgreSQL store: asyncpg pool; usage written in bulk.

``write_usage`` runs ONE data-modifying statement per batch: it inserts the rows
(``ON CONFLICT (request_id) DO NOTHING``), takes exactly the rows it inserted (``RETURNING``)
and upserts their cost into ``spending_counters`` per scope and period.  Batches of 100 rows
or more are first COPYed (binary) into a per-connection temp table in the same transaction;
smaller ones travel as one array of rows (``usage_input``, migration 10), and a single row
(``write_usage`` or ``settle`` of one request: concurrency 1) as scalars, with its counter
deltas computed here as SQLite's are (``_write_one_sql``, ``_settle_one_sql``); a smaller
batch's deltas are computed here too, and its rows inserted without ``ON CONFLICT``
(``_write_summed_sql``: a replayed row fails it, and it runs again as the statement above,
``_WRITE_USAGE``).  ``set_prices``
is built the same way around ``UPDATE ... WHERE NOT priced``.  So spend always equals the
sum of the log, whatever is replayed or retried.

Managed mode's hard budgets are on the request path, so each of their writes is one
statement run on its own (its own transaction, one round trip): ``reserve`` (every limit or
none) and ``settle`` (the row, its cost and the reservation's release in one counter
upsert).  Calls that arrive while earlier ones are being written share one statement
(``pg_batch.GroupRunner``; ``pg_reserve`` for the reservations' batch): one commit and one
hold of the counter locks for all of them.  The pool sends no reset query at release
(``_keep_session``).

Counter rows are always locked in one global order (``COLLATE "C"`` in SQL, code-point order
in Python) to keep concurrent writers and reservers from deadlocking; a deadlock or
serialization failure that happens anyway is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import functools
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]

from plano_fast.store.pg_batch import GroupRunner
from plano_fast.store.pg_hot import HotConnection
from plano_fast.store.pg_reserve import LOCK_COUNTERS, NONE_REFUSED, PARTIAL, RESERVE_MANY
from plano_fast.store.records import (
    PRICE_STATUS_PARTIAL,
    PRICE_STATUS_PENDING,
    PRICE_STATUS_PRICED,
    AlreadyExists,
    BudgetTarget,
    InvalidValue,
    MissingReference,
    PriceResult,
    Reservation,
    StoreError,
    UsageRow,
)
from plano_fast.store.sql import (
    USAGE_COLUMN_TYPES,
    USAGE_WRITE_COLUMNS,
    Row,
    SqlStore,
    Stmt,
    check_targets,
    counter_deltas,
    normalize_usage,
    normalize_usage_sliced,
    price_result_entry,
    reprice_deltas,
    reprice_values,
    written_price_status,
)
from plano_fast.store.times import new_id

T = TypeVar("T")

_MIGRATION_LOCK = 0x706C616E6F5F6D  # pg_advisory_xact_lock key for migrations ("plano_m")
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
#: A request-path batch whose connection was lost (a backend terminated or restarted, a
#: reset socket) is run once more on another connection before its callers are failed
#: (``_once_more_if_lost``).  Not a timeout (TimeoutError is an OSError): a statement that
#: ran out of time would only wait as long again.
_CONNECTION_LOST = (
    asyncpg.exceptions.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    # A connection whose backend was terminated while idle: asyncpg reads the server's
    # FATAL (57P01, sent before the backend exits) as a protocol error and parks the
    # connection in its error state until the close arrives; a statement started between
    # fails before it is sent, "cannot switch to state 12; another operation (2) is in
    # progress" (tests/test_pg_terminated_idle.py).  Any protocol state asyncpg cannot go
    # on from is a connection to drop, not the statement's fault.
    asyncpg.exceptions.InternalClientError,
    OSError,
)
_RESERVED_IDS = "SELECT DISTINCT id FROM spending_reservations WHERE id = ANY($1::text[])"
# A lost reservation statement's backend, ended before the statement is checked and run
# again (``_end_backends``).  Only a backend of this role in this database: the pid of a
# backend that is gone may have been given to another process since.
_END_BACKENDS = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
 WHERE pid = ANY($1::int[]) AND usename = current_user AND datname = current_database()
"""
_BACKENDS_LEFT = """
SELECT count(*) FROM pg_stat_activity
 WHERE pid = ANY($1::int[]) AND usename = current_user AND datname = current_database()
"""
_BACKENDS_GONE_WAIT_S = 5.0
"""How long a terminated backend may take to exit (it rolls back first; one waiting on a
lock exits at once) before the rerun goes ahead without that certainty."""
_RELEASE_RETRY_MAX_S = 2.0
"""The longest pause between two attempts of a background release (``_release_when_back``)."""
log = logging.getLogger(__name__)


def _counters_cte(source: str, now_param: str, freed: str | None = None, shard: str = "0") -> str:
    """CTEs adding ``source``'s (time_ns, project_id, user_id, key_hash, cost_nano_usd)
    to spending_counters for each scope present and each period.  Costs are first summed
    per scope and UTC day, so the month arithmetic runs per day, not per row.

    ``freed`` names a CTE of (k, i, p, s, a) -- a settled reservation's rows: ``a`` comes
    off ``reserved`` of those counters in the same upsert (one statement may modify a row
    only once, and one ordered upsert keeps the global lock order).

    ``shard``: the counter rows' shard (migration 11), an SQL expression: a usage batch's
    writer's (``_WRITE_SHARDS``); 0, the reservations' shard, wherever ``freed`` is."""
    freed_keys = (
        f'\n    UNION ALL\n    SELECT k COLLATE "default", i COLLATE "default", p COLLATE "default", s, 0::bigint'
        f"\n      FROM {freed}"
        if freed
        else ""
    )
    freed_set = (
        f""",
           reserved_nano_usd = sc.reserved_nano_usd - COALESCE((
               SELECT SUM(f.a) FROM {freed} f WHERE f.k = sc.scope_kind AND f.i = sc.scope_id
                  AND f.p = sc.period AND f.s = sc.period_start), 0)"""
        if freed
        else ""
    )
    return f"""
scoped AS (
    SELECT k, i, d, SUM(c) AS c FROM (
        SELECT 'project'::text AS k, project_id AS i, time_ns / 86400000000000 AS d, cost_nano_usd AS c
          FROM {source} WHERE project_id IS NOT NULL
        UNION ALL
        SELECT 'user', user_id, time_ns / 86400000000000, cost_nano_usd
          FROM {source} WHERE user_id IS NOT NULL
        UNION ALL
        SELECT 'key', key_hash, time_ns / 86400000000000, cost_nano_usd
          FROM {source} WHERE key_hash IS NOT NULL
    ) per_row
    GROUP BY k, i, d
),
periods AS (
    SELECT k, i, 'total'::text AS p, 0::bigint AS s, c FROM scoped
    UNION ALL
    SELECT k, i, 'monthly',
           EXTRACT(EPOCH FROM date_trunc('month', to_timestamp(d * 86400) AT TIME ZONE 'UTC'))::bigint,
           c
      FROM scoped
    UNION ALL
    SELECT k, i, 'daily', d * 86400, c FROM scoped{freed_keys}
),
bump AS (
    INSERT INTO spending_counters AS sc
        (scope_kind, scope_id, period, period_start, shard, spent_nano_usd, reserved_nano_usd, updated_at_ns)
    SELECT k, i, p, s, {shard}, SUM(c)::bigint, 0, {now_param}
      FROM periods
     GROUP BY k, i, p, s
     ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s
    ON CONFLICT (scope_kind, scope_id, period, period_start, shard) DO UPDATE
       SET spent_nano_usd = sc.spent_nano_usd + EXCLUDED.spent_nano_usd,
           updated_at_ns = EXCLUDED.updated_at_ns{freed_set}
    RETURNING 1
)"""


_USAGE_COLUMNS = USAGE_WRITE_COLUMNS
_USAGE_COLUMN_LIST = ", ".join(_USAGE_COLUMNS)
_USAGE_WIDTH = len(_USAGE_COLUMNS)

_INSERT_AND_COUNT = f"""
ins AS (
    INSERT INTO usage_log ({_USAGE_COLUMN_LIST})
    SELECT {_USAGE_COLUMN_LIST} FROM {{source}}
    ON CONFLICT (request_id) DO NOTHING
    RETURNING time_ns, project_id, user_id, key_hash, priced, cost_nano_usd
),
src AS (
    SELECT time_ns, project_id, user_id, key_hash, cost_nano_usd FROM ins
     WHERE priced AND cost_nano_usd > 0
),{{counters}}
SELECT count(*) FROM ins
"""

# Small batches (and ``settle``): one statement, the rows as ONE array of ``usage_input``
# (the composite type of migration 10: ``USAGE_COLUMN_TYPES``; a tuple per row, ``$1``),
# read as the rows of ``input``.  Not one array per column: asyncpg checks each element of
# an array parameter against collections.abc (~39 Python-level ``__instancecheck__`` calls
# per row, ~0.4 µs each; three per row here).
_INPUT_CTE = """
WITH input AS (
    SELECT * FROM unnest($1::usage_input[])
),"""
_WRITE_USAGE = _INPUT_CTE + _INSERT_AND_COUNT.format(
    source="input", counters=_counters_cte("src", "$2", shard="$3::smallint")
)


# One row, the group writer's batch at concurrency 1 (issue 27): its columns as scalars
# (``$1`` .. ``$width``) and its counter deltas computed here, as SQLite's are
# (``counter_deltas``), as scalars too: ``VALUES`` of (kind, scope id, period, period start,
# cost), counted only when the row was inserted.  The same effect as ``_WRITE_USAGE`` on one
# row, without its 31 one-element arrays (encoded here, unnested there) and its per-day
# month arithmetic: measured ~60-90 µs less server CPU and ~20-40 µs less client CPU per
# row.  No array parameter at all: asyncpg checks each array and each element of one
# against abstract base classes (``isinstance(x, collections.abc.Iterable)`` and ``Sized``,
# a Python-level ``__instancecheck__`` each, ~0.4 µs): 63 of them for the deltas as five
# arrays, ~140 for the row as 31.  One statement per number of deltas (0, 3, 6 or 9: three
# periods per scope present, one day).
_ONE_ROW_VALUES = ", ".join(f"${i}::{t}" for i, t in enumerate(USAGE_COLUMN_TYPES.values(), 1))
_INSERT_ONE = f"""
ins AS (
    INSERT INTO usage_log ({_USAGE_COLUMN_LIST}) VALUES ({_ONE_ROW_VALUES})
    ON CONFLICT (request_id) DO NOTHING
    RETURNING 1
)"""
_BUMP_SET = """
    ON CONFLICT (scope_kind, scope_id, period, period_start, shard) DO UPDATE
       SET spent_nano_usd = sc.spent_nano_usd + EXCLUDED.spent_nano_usd,
           updated_at_ns = EXCLUDED.updated_at_ns"""

# The same batch with its counter deltas summed here (``counter_deltas``, as SQLite's and
# the one-row statement's are; in the counters' lock order) and upserted as they come: no
# per-row UNION, GROUP BY and month arithmetic on the server (``pg_server_probe --shapes
# group``, 13 rows a statement, backend CPU a statement -6% to -25%).  Up to
# ``_SCALAR_DELTAS_MAX`` deltas travel as scalars (``$4`` on: kind, scope id, period, period
# start, cost each; one statement per number of deltas, as ``_write_one_sql``), more as
# five arrays: asyncpg checks an array parameter's elements against collections.abc, ~0.4
# µs a Python-level check, ~2-4 an element -- ~30 µs of client CPU a batch for the six
# deltas of one project and user.  The deltas are the whole batch's, so they are right
# only when every row is inserted: the rows are inserted without ``ON CONFLICT``, and a row
# whose request id is in the log already (a replay) fails the statement
# (``UniqueViolationError`` on ``_REQUEST_ID_INDEX``), which rolls all of it back; the
# batch is then run again as ``_WRITE_USAGE``, which inserts and counts exactly the new
# rows.  (A plain insert also saves a speculative insertion a row: its index pre-check and
# its confirmation, one WAL record of six; EXPLAIN ANALYZE of 13 rows: 78 -> 66 records,
# execution 0.185 -> 0.171 ms.)  ``ins`` is read by the final SELECT, so it runs first
# and ``bump`` after it (a data-modifying CTE nobody reads runs at the statement's end):
# rows, then counters, as in ``_WRITE_USAGE``.
_REQUEST_ID_INDEX: Final = "usage_log_request_id_key"
_SCALAR_DELTAS_MAX = 12
_DELTA_ARRAYS = "unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[])"


@functools.lru_cache(maxsize=_SCALAR_DELTAS_MAX + 2)
def _write_summed_sql(deltas: int | None) -> str:
    """A batch's statement with ``deltas`` counter deltas as scalars (None: as arrays; 0:
    no counter to move, the rows unpriced or free: ``$1`` only)."""
    if deltas is None:
        source = _DELTA_ARRAYS
    elif deltas:
        source = f"(VALUES {_delta_values(deltas, 4)})"
    else:
        source = ""
    bump = f""",
bump AS (
    INSERT INTO spending_counters AS sc
        (scope_kind, scope_id, period, period_start, shard, spent_nano_usd, reserved_nano_usd, updated_at_ns)
    SELECT k, i, p, s, $3::smallint, c, 0, $2::bigint
      FROM {source} AS t(k, i, p, s, c)
     ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s{_BUMP_SET}
)""" if source else ""
    return f"""{_INPUT_CTE}
ins AS (
    INSERT INTO usage_log ({_USAGE_COLUMN_LIST})
    SELECT {_USAGE_COLUMN_LIST} FROM input
    RETURNING 1
){bump}
SELECT count(*) FROM ins
"""


def _write_summed_args(rows: list[UsageRow], records: list[tuple[Any, ...]], now: int, shard: int
                       ) -> tuple[str, tuple[Any, ...]]:
    """``_write_summed_sql`` for ``rows`` (none before 1970) and its arguments."""
    deltas = sorted(counter_deltas(rows).items())  # (the counters' lock order)
    if not deltas:
        return _write_summed_sql(0), (records,)
    if len(deltas) > _SCALAR_DELTAS_MAX:
        return _write_summed_sql(None), (
            records, now, shard,
            [k.scope_kind for k, _ in deltas], [k.scope_id for k, _ in deltas],
            [k.period for k, _ in deltas], [k.period_start for k, _ in deltas],
            [c for _, c in deltas],
        )  # fmt: skip
    flat: list[Any] = [records, now, shard]
    for key, cost in deltas:
        flat += key
        flat.append(cost)
    return _write_summed_sql(len(deltas)), tuple(flat)


SUM_DELTAS_HERE = True
"""Batches written by ``_write_summed_sql`` (False: ``_WRITE_USAGE``, the server sums; an
A/B switch of ``benchmarks/pg_server_probe --sql-deltas``)."""


def _delta_values(deltas: int, first: int = _USAGE_WIDTH + 2) -> str:
    """``deltas`` rows of scalar parameters (k, i, p, s, c) from ``$first`` (by default:
    after the row's and ``now``)."""
    return ", ".join(
        f"(${n}::text, ${n + 1}::text, ${n + 2}::text, ${n + 3}::bigint, ${n + 4}::bigint)"
        for n in range(first, first + 5 * deltas, 5)
    )


@functools.lru_cache(maxsize=16)
def _write_one_sql(deltas: int) -> str:
    """``write_usage`` of one row with ``deltas`` counter deltas (none: no ``now`` either,
    nor a shard; else the shard is the last parameter)."""
    if not deltas:
        return f"WITH {_INSERT_ONE}\nSELECT count(*) FROM ins"
    return f"""
WITH {_INSERT_ONE},
bump AS (
    INSERT INTO spending_counters AS sc
        (scope_kind, scope_id, period, period_start, shard, spent_nano_usd, reserved_nano_usd, updated_at_ns)
    SELECT k, i, p, s, ${_USAGE_WIDTH + 2 + 5 * deltas}::smallint, c, 0, ${_USAGE_WIDTH + 1}::bigint
      FROM (VALUES {_delta_values(deltas)}) AS t(k, i, p, s, c)
     WHERE EXISTS (SELECT FROM ins)
     ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s{_BUMP_SET}
)
SELECT count(*) FROM ins
"""


def _write_one_args(row: UsageRow, now: int) -> tuple[int, tuple[Any, ...]] | None:
    """The number of ``row``'s counter deltas and the one-row statements' arguments
    (``_write_one_sql``, ``_settle_one_sql``) for ``row`` (normalized); None for a row
    before 1970, whose UTC day SQL's integer division and Python's floor division number
    differently: the batch statements count it, as they always did."""
    if row.time_ns < 0:
        return None
    record = _usage_records((row,))[0]
    deltas = counter_deltas((row,))
    if not deltas:
        return 0, record
    flat: list[Any] = []
    for key, cost in sorted(deltas.items()):  # (the counters' lock order)
        flat += key
        flat.append(cost)
    return len(deltas), (*record, now, *flat)


# ``settle``: the usage rows written, their cost counted and their reservations taken
# back, in ONE statement (one round trip, its own transaction) for a whole batch of
# settles (``pg_batch.GroupRunner``; one row and one id at concurrency 1): the
# reservations' rows are deleted and their amounts come off ``reserved`` in the same
# ordered upsert that adds the cost.  The result: the ids of the reservations taken.
_SETTLE = (
    _INPUT_CTE
    + """
taken AS (
    DELETE FROM spending_reservations WHERE id = ANY($3::text[])
    RETURNING id, scope_kind AS k, scope_id AS i, period AS p, period_start AS s, amount_nano_usd AS a
),"""
    + _INSERT_AND_COUNT.format(
        source="input", counters=_counters_cte("src", "$2", freed="taken")
    ).replace("SELECT count(*) FROM ins", "SELECT ARRAY(SELECT DISTINCT id FROM taken)")
)
# ``settle`` of one request (concurrency 1 with a hard limit): ``_SETTLE`` for one row and
# one reservation, shaped as ``_write_one_sql`` (the row's columns and its counter deltas as
# scalars, counted only when the row was inserted; then the reservation id).
@functools.lru_cache(maxsize=16)
def _settle_one_sql(deltas: int) -> str:
    counted = f"""
        SELECT k, i, p, s, c FROM (VALUES {_delta_values(deltas)}) AS t(k, i, p, s, c)
         WHERE EXISTS (SELECT FROM ins)
        UNION ALL""" if deltas else ""
    return f"""
WITH taken AS (
    DELETE FROM spending_reservations WHERE id = ${_USAGE_WIDTH + 2 + 5 * deltas}::text
    RETURNING id, scope_kind AS k, scope_id AS i, period AS p, period_start AS s, amount_nano_usd AS a
),{_INSERT_ONE},
bump AS (
    INSERT INTO spending_counters AS sc
        (scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd, updated_at_ns)
    SELECT k, i, p, s, SUM(c)::bigint, 0, ${_USAGE_WIDTH + 1}::bigint FROM ({counted}
        SELECT k COLLATE "default" AS k, i COLLATE "default" AS i, p COLLATE "default" AS p, s,
               0::bigint AS c
          FROM taken
    ) AS counted
     GROUP BY k, i, p, s
     ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s{_BUMP_SET},
           reserved_nano_usd = sc.reserved_nano_usd - COALESCE((
               SELECT SUM(f.a) FROM taken f WHERE f.k = sc.scope_kind AND f.i = sc.scope_id
                  AND f.p = sc.period AND f.s = sc.period_start), 0)
)
SELECT ARRAY(SELECT id FROM taken)
"""


_WRITE_SHARDS = 8
"""Counter shards usage batches write (migration 11).  A counter row is locked from the
batch's upsert until its commit is flushed, so batches of one project, each in its own
transaction, were serialized behind one WAL flush each, however many ran at once; on
different shards they overlap (and their commits share flushes).  Reservations and settles
keep shard 0; a reservation locks and sums every shard of its counters (``_RESERVE``)."""
WRITE_BATCHES_IN_FLIGHT = 3
"""Usage batches a caller may have in flight at once (``UsageStore.write_batches_in_flight``:
the synchronous writer of managed mode), each on its own shard."""

_SETTLES_IN_FLIGHT = 2
"""Settle batches running at once.  Batches of one project update the same counter rows,
so they run one after another whatever this is; two let a batch gather while another
commits, and other projects' batches run beside them (PostgreSQL flushes commits that
wait together with one WAL flush)."""

# Large batches: COPY into a per-connection temp table (binary, the fastest way in), then
# the same single statement reading from it.  The temp table empties itself at commit.
_STAGING = "plano_usage_staging"
_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (
    {", ".join(f"{column} {type_}" for column, type_ in USAGE_COLUMN_TYPES.items())}
) ON COMMIT DELETE ROWS
"""
_WRITE_STAGED = "WITH" + _INSERT_AND_COUNT.format(
    source=_STAGING, counters=_counters_cte("src", "$1", shard="$2::smallint")
)
_COPY_THRESHOLD = 100  # rows; below this the one-statement array path is quicker

# usage reprice: lock the rows (id order) and read what they count now, rewrite them, then
# move the counters by the differences (arrays sorted in the counters' lock order).
_REPRICE_LOCK = "SELECT id, priced, cost_nano_usd FROM usage_log WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"
_REPRICE_UPDATE = """
WITH v AS (
    SELECT * FROM unnest(
        $1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
        $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::boolean[], $12::bigint[],
        $13::text[], $14::text[]
    ) AS v(id, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           reasoning_tokens, tool_use_prompt_tokens, cache_write_1h_tokens, audio_input_tokens,
           audio_output_tokens, priced, cost_nano_usd, price_status, price_entry)
),
upd AS (
    UPDATE usage_log u
       SET input_tokens = v.input_tokens, output_tokens = v.output_tokens,
           cache_read_tokens = v.cache_read_tokens, cache_write_tokens = v.cache_write_tokens,
           reasoning_tokens = v.reasoning_tokens, tool_use_prompt_tokens = v.tool_use_prompt_tokens,
           cache_write_1h_tokens = v.cache_write_1h_tokens, audio_input_tokens = v.audio_input_tokens,
           audio_output_tokens = v.audio_output_tokens, priced = v.priced,
           cost_nano_usd = v.cost_nano_usd, price_status = v.price_status, price_entry = v.price_entry
      FROM v
     WHERE u.id = v.id
    RETURNING 1
)
SELECT count(*) FROM upd
"""
_BUMP_DELTAS = """
INSERT INTO spending_counters AS sc
    (scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd, updated_at_ns)
SELECT k, i, p, s, d, 0, $6
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS t(k, i, p, s, d)
ON CONFLICT (scope_kind, scope_id, period, period_start, shard) DO UPDATE
   SET spent_nano_usd = sc.spent_nano_usd + EXCLUDED.spent_nano_usd,
       updated_at_ns = EXCLUDED.updated_at_ns
"""

_SET_PRICES = f"""
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $5::text[]) AS v(id, cost, status, entry)
),
upd AS (
    UPDATE usage_log u
       SET priced = (v.cost IS NOT NULL), cost_nano_usd = v.cost, price_status = v.status,
           price_entry = v.entry, price_attempted_at_ns = $4
      FROM v
     WHERE u.id = v.id AND NOT u.priced
    RETURNING u.time_ns, u.project_id, u.user_id, u.key_hash, u.priced, u.cost_nano_usd
),
src AS (
    SELECT time_ns, project_id, user_id, key_hash, cost_nano_usd FROM upd
     WHERE priced AND cost_nano_usd > 0
),{_counters_cte("src", "$4")}
SELECT count(*) FILTER (WHERE priced) FROM upd
"""

# ``reserve`` in ONE statement (one round trip, its own transaction), all or nothing:
# ``lk`` locks the rows of the target counters that exist -- every shard of each (migration
# 11) -- in the global lock order (shard last), and reads their latest versions (READ
# COMMITTED re-reads a row once its lock is granted); ``chk`` sums them per counter.  Only
# when every one fits ``spent + reserved + amount <= limit`` (and the amount fits the limit
# of every counter still to be created) does ``held`` add the amount to all of them (on
# shard 0, the reservations' shard), creating the missing ones, and the reservation's rows
# are written from what ``held`` returns.  ``held`` updates only shard-0 rows ``lk``
# locked, so one that a concurrent reservation created between ``lk`` and ``held`` is never
# overfilled; then ``held`` covers only part of the targets, and the statement fails on
# purpose (the cast of ``_PARTIAL``), which rolls all of it back: ``reserve`` runs it again
# (it then sees that row in ``lk``).  The result: the number of counters reserved,
# len(targets) or 0.
_PARTIAL = PARTIAL  # the one-request statement fails the same way (pg_reserve)
_RESERVE = f"""
WITH t AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS t(k, i, p, s, lim)
),
{LOCK_COUNTERS}
chk AS (
    SELECT SUM(lk.used) + $6::bigint <= t.lim AS fits
      FROM t JOIN lk ON lk.k = t.k AND lk.i = t.i AND lk.p = t.p AND lk.s = t.s
     GROUP BY t.k, t.i, t.p, t.s, t.lim
),
held AS (
    INSERT INTO spending_counters AS sc
        (scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd, updated_at_ns)
    SELECT k, i, p, s, 0, $6::bigint, $7::bigint FROM t
     WHERE (SELECT bool_and(fits) IS NOT FALSE FROM chk) AND (SELECT bool_and($6::bigint <= lim) FROM t)
     ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s
    ON CONFLICT (scope_kind, scope_id, period, period_start, shard) DO UPDATE
       SET reserved_nano_usd = sc.reserved_nano_usd + EXCLUDED.reserved_nano_usd,
           updated_at_ns = EXCLUDED.updated_at_ns
     WHERE EXISTS (SELECT 1 FROM lk WHERE lk.k = sc.scope_kind AND lk.i = sc.scope_id
                                      AND lk.p = sc.period AND lk.s = sc.period_start AND lk.shard = 0)
    RETURNING scope_kind, scope_id, period, period_start
),
rows AS (
    INSERT INTO spending_reservations (id, scope_kind, scope_id, period, period_start,
                                       amount_nano_usd, created_at_ns, expires_at_ns, owner)
    SELECT $8::text, scope_kind, scope_id, period, period_start, $6::bigint, $7::bigint, $9::bigint, $10::text
      FROM held
)
SELECT CAST(CASE WHEN n = cardinality($1::text[]) OR n = 0 THEN n::text ELSE '{_PARTIAL}' END AS integer)
  FROM (SELECT count(*) AS n FROM held) AS h
"""
# A reservation's counters made to exist before it locks them -- every shard of each, in
# one statement, in the lock order (key, then shard): ``LOCK_COUNTERS`` locks the rows its
# snapshot sees, so a shard row a usage batch inserted after that (its first cost on that
# shard) would be neither locked nor summed, and a hard limit could be passed by it.  With
# all shards present, a batch's upsert only ever UPDATEs a row the reservation holds (and
# waits for it).  A shard row being inserted by a batch that has not committed yet makes
# this statement wait for that commit (ON CONFLICT), so its cost is seen.  Counters of an
# older database with fewer rows are filled in by the first reservation against them after
# a (re)start (``_known_counters`` starts empty).
_ENSURE_COUNTERS = f"""
INSERT INTO spending_counters AS sc
    (scope_kind, scope_id, period, period_start, shard, spent_nano_usd, reserved_nano_usd, updated_at_ns)
SELECT k, i, p, s, n, 0, 0, $5
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(k, i, p, s)
 CROSS JOIN generate_series(0, {_WRITE_SHARDS - 1}) AS n
 ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s, n
ON CONFLICT DO NOTHING
"""
_RESERVES_IN_FLIGHT = 2
"""Reservation batches running at once (as ``_SETTLES_IN_FLIGHT``)."""
_RESERVE_ATTEMPTS = 5
"""A partial ``held`` needs a counter created by a concurrent reservation in the same
instant; each retry sees it, so a second attempt is all it takes in practice."""

_TAKE_RESERVATION = """
DELETE FROM spending_reservations WHERE id = $1
RETURNING scope_kind, scope_id, period, period_start, amount_nano_usd
"""

_UNRESERVE = """
UPDATE spending_counters SET reserved_nano_usd = reserved_nano_usd - $1, updated_at_ns = $2
 WHERE scope_kind = $3 AND scope_id = $4 AND period = $5 AND period_start = $6 AND shard = 0
"""


# ``usage_synchronous_commit=False`` (an operator's choice: ``plano_fast.
# usage_synchronous_commit``): usage writes and settles commit without waiting for their WAL
# to reach the disk.  Their statements run on their own (implicit) transaction, so the
# setting is made inside the statement -- ``set_config(..., true)`` lasts to the end of
# that transaction, and the commit that follows the statement reads it -- not by a ``SET
# LOCAL`` of its own, which would need a transaction block (BEGIN ... COMMIT: two round
# trips more).  The statement's last SELECT becomes a scalar subquery over a one-row
# FROM that calls it (a SELECT-only CTE nobody reads is never run).  A batch that COPYs
# is a transaction block already: ``SET LOCAL`` there.
_UNFLUSHED_FROM = "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS unflushed"
_SET_UNFLUSHED = "SET LOCAL synchronous_commit = off"


@functools.lru_cache(maxsize=64)
def _unflushed(sql: str) -> str:
    """``sql`` (a statement whose last line starts its final SELECT) committed with
    ``synchronous_commit = off``: the same value, from the same CTEs."""
    head, sep, last = sql.rstrip().rpartition("\nSELECT ")
    if not sep:
        raise ValueError("no final SELECT on a line of its own")
    return f"{head}\nSELECT (SELECT {last}) {_UNFLUSHED_FROM}"


@functools.lru_cache(maxsize=1024)
def _dollar(sql: str) -> str:
    """Rewrite portable ``?`` placeholders to PostgreSQL's ``$n``."""
    parts = sql.split("?")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], start=1):
        out.append(f"${n}")
        out.append(part)
    return "".join(out)


def _is_read(sql: str) -> bool:
    """``sql`` is a plain ``SELECT`` (no data-modifying ``WITH``, no ``INSERT ...
    RETURNING``): safe to run again when its connection was lost.  The store's reads
    call no function with a side effect."""
    return sql.lstrip()[:7].upper() in ("SELECT ", "SELECT\n")


def _rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        return AlreadyExists(str(exc))
    if isinstance(exc, asyncpg.exceptions.ForeignKeyViolationError):
        return MissingReference(str(exc))
    if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
        return InvalidValue(str(exc))
    return exc


_REQUEST_ID = operator.attrgetter("request_id")


def _usage_records(rows: Sequence[UsageRow]) -> list[tuple[Any, ...]]:
    """The rows as ``_USAGE_COLUMNS`` tuples (cost only if priced, status from priced)."""
    out: list[tuple[Any, ...]] = []
    add = out.append
    for r in rows:
        priced = r.priced
        if priced is True:  # the common shapes first: no per-row conversions
            add((
                r.request_id, r.time_ns, r.project_id, r.user_id, r.key_hash, r.token_id, r.provider,
                r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens,
                r.reasoning_tokens, bool(r.streaming), r.status, r.http_status, True,
                r.cost_nano_usd, r.duration_us,
                PRICE_STATUS_PARTIAL if r.price_status == PRICE_STATUS_PARTIAL else PRICE_STATUS_PRICED,
                r.tool_use_prompt_tokens, r.cache_write_1h_tokens, r.audio_input_tokens,
                r.audio_output_tokens, r.usage_api, r.usage_raw, r.price_entry,
                r.reservation_overrun_nano_usd, r.requested_model, r.attempts, r.attempt_trail,
            ))  # fmt: skip
        elif priced is False:
            add((
                r.request_id, r.time_ns, r.project_id, r.user_id, r.key_hash, r.token_id, r.provider,
                r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens,
                r.reasoning_tokens, bool(r.streaming), r.status, r.http_status, False,
                None, r.duration_us, PRICE_STATUS_PENDING,
                r.tool_use_prompt_tokens, r.cache_write_1h_tokens, r.audio_input_tokens,
                r.audio_output_tokens, r.usage_api, r.usage_raw, r.price_entry,
                r.reservation_overrun_nano_usd, r.requested_model, r.attempts, r.attempt_trail,
            ))  # fmt: skip
        else:
            add((
                r.request_id, r.time_ns, r.project_id, r.user_id, r.key_hash, r.token_id, r.provider,
                r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens,
                r.reasoning_tokens, bool(r.streaming), r.status, r.http_status, bool(priced),
                r.cost_nano_usd if priced else None, r.duration_us, written_price_status(r),
                r.tool_use_prompt_tokens, r.cache_write_1h_tokens, r.audio_input_tokens,
                r.audio_output_tokens, r.usage_api, r.usage_raw, r.price_entry,
                r.reservation_overrun_nano_usd, r.requested_model, r.attempts, r.attempt_trail,
            ))  # fmt: skip
    return out


class _OneLinePoolWarnings(logging.Filter):
    """asyncpg's pool logs every failed attempt to restore its connection floor with a
    full traceback (asyncpg/pool.py ``_maintain_min_size``: 1, 2, 4 ... 60 s apart while
    the database is away): 84 tracebacks in the 30-minute soak.  Kept as one line naming
    the error, and no secret can ride along in a traceback's locals or DSN."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            reason = str(exc).splitlines()[0] if str(exc) else ""
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {reason})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_POOL_FILTER: Final = _OneLinePoolWarnings()


async def _keep_session(conn: Any) -> None:
    """The pool's reset at each release, in place of asyncpg's default: that one sends
    ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` -- a round trip
    per release, so one more per store call (a managed request's reserve and settle are
    one statement each).  This store leaves no session state to reset: no ``SET`` (only
    transaction-scoped settings and ``pg_advisory_xact_lock``), no ``LISTEN``, no cursors
    held past a transaction, and its temp table empties at each commit.  asyncpg still
    rolls back a transaction left open before this is called."""


async def _reserve_on(conn: Any, lost_pids: list[int], sql: str, *args: Any) -> int:
    """``PostgresStore._reserving`` on ``conn``."""
    pid = conn.get_server_pid()  # (read now: a lost pooled connection leaves the pool's hands)
    try:
        return int(await conn.fetchval(sql, *args))
    except _CONNECTION_LOST:  # (TimeoutError among them: a statement that ran out of time)
        # Its backend may still run it (waiting on a counter lock: the connection is closed
        # on this side only) and commit a reservation nobody holds.
        lost_pids.append(pid)
        with contextlib.suppress(asyncpg.exceptions.InterfaceError):  # (closed: detached)
            conn.terminate()
        raise


class PostgresStore(SqlStore):
    kind = "postgres"
    write_batches_in_flight = WRITE_BATCHES_IN_FLIGHT

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 60.0,
        connect_timeout_s: float = 10.0,
        usage_synchronous_commit: bool = True,
    ) -> None:
        self.dsn = dsn
        #: False: usage writes and settles commit with ``synchronous_commit = off``
        #: (``_unflushed``): visible to every instance at once, but a server or OS crash
        #: can lose the last few hundred milliseconds of them (README, "Durability")
        self.usage_synchronous_commit = usage_synchronous_commit
        self.connect_timeout_s = connect_timeout_s
        self.min_size = min_size
        self.max_size = max_size
        self.command_timeout = command_timeout
        self._pool: Any = None
        #: the request path's lone statements (usage writes, settles) off the pool
        #: (``pg_hot``); made at ``open``
        self._hot: HotConnection | None = None
        self._settles: GroupRunner[tuple[str, UsageRow | None], bool] | None = None
        self._reserves: GroupRunner[tuple[list[BudgetTarget], Reservation], Reservation | None] | None = None
        #: background releases (``_release_later``): reservations nobody will use
        self._releases: set[asyncio.Task[None]] = set()
        #: counters known to exist: a reservation's counters are created (empty, in the lock
        #: order, their own statement) before it locks them, so it never inserts one while
        #: holding others' locks (the deadlock with a settle's ordered upsert at rollover)
        self._known_counters: set[Any] = set()
        #: counter shards no ``write_usage`` of this store holds now (popped from the end):
        #: this process's turn first, so two processes' lone batches (a gateway's workers,
        #: instances) tend to write different rows too
        first = os.getpid() % _WRITE_SHARDS
        self._free_shards: list[int] = [(first - n) % _WRITE_SHARDS for n in range(_WRITE_SHARDS - 1, -1, -1)]
        self._shard_turn = first

    # -- plumbing ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        logging.getLogger("asyncpg.pool").addFilter(_POOL_FILTER)  # idempotent
        pool = asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            command_timeout=self.command_timeout,
            timeout=self.connect_timeout_s,
            reset=_keep_session,
        )
        try:
            await pool
        except BaseException:
            # Refused, timed out or cancelled half-way: drop whatever connected, no waiting.
            pool.terminate()
            raise
        self._pool = pool
        self._hot = HotConnection(self.dsn, self.command_timeout, self.connect_timeout_s)

    async def close(self) -> None:
        if self._releases:  # reservations given back in the background (_release_later)
            # Waited for while the database answers; still retrying past the bound (the
            # database away), they are left to the expiry sweep, as they would be anyway.
            _, waiting = await asyncio.wait(set(self._releases), timeout=self.connect_timeout_s)
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        hot, self._hot = self._hot, None
        if hot is not None:
            await hot.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def terminate(self) -> None:
        for task in self._releases:  # left to the expiry sweep
            task.cancel()
        hot, self._hot = self._hot, None
        if hot is not None:
            hot.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open")
        return self._pool

    async def _fetchval_hot(self, sql: str, *args: Any) -> Any:
        """``sql``'s value on the hot connection when it is free, else on the pool
        (``pg_hot``): the request path's lone statements."""
        hot = self._hot
        if hot is None:
            raise StoreError("the PostgreSQL store is not open")
        return await hot.fetchval(self._pool, sql, *args)

    async def _retrying(self, fn: Callable[[], Awaitable[T]], attempts: int = 6) -> T:
        for attempt in range(attempts):
            try:
                return await fn()
            except _RETRYABLE:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.005 * 2**attempt)
            except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
                raise _translate(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _in_tx(self, body: Callable[[Any], Awaitable[T]]) -> T:
        async def attempt() -> T:
            async with self.pool.acquire() as conn, conn.transaction():
                return await body(conn)

        return await self._retrying(attempt)

    async def _fetch(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        async def run() -> list[Row]:
            rows: list[Row] = await self.pool.fetch(_dollar(sql), *args)
            return rows

        if _is_read(sql):
            # A pooled connection lost while idle (its backend ended, a reset socket) fails
            # the next statement given to it, however healthy the server is: a read --
            # the heartbeat's sweeps, the budget checker's counters, the admin's lists --
            # is run once more on another connection, since running it twice changes
            # nothing.  A write is not: whether it committed is unknown (its caller decides).
            return await self._once_more_if_lost(run, "read")
        return await self._retrying(run)

    async def _execute(self, sql: str, args: Sequence[object] = ()) -> int:
        async def run() -> int:
            return _rowcount(await self.pool.execute(_dollar(sql), *args))

        if sql in self.IDEMPOTENT_WRITES:
            # As a read (``_fetch``): the heartbeat and the instance sweeps leave the same
            # state however often they run, and nobody reads their count, so a connection
            # lost while idle (a backend ended between two heartbeats) costs no failed beat.
            return await self._once_more_if_lost(run, "write")
        return await self._retrying(run)

    async def _transaction(self, statements: Sequence[Stmt]) -> list[int]:
        async def body(conn: Any) -> list[int]:
            return [_rowcount(await conn.execute(_dollar(sql), *args)) for sql, args in statements]

        return await self._in_tx(body)

    # -- migrations -------------------------------------------------------------------------

    async def applied_migrations(self) -> list[int]:
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return []
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            return [int(r[0]) for r in rows]

    async def apply_migration(self, version: int, name: str, sql: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialize concurrent `migrate` runs (several hosts starting at once).
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            # Read pg_class with this statement's snapshot (to_regclass would consult the
            # catalog cache, which may predate the run that held the lock before us).
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relname = 'schema_migrations' "
                "AND n.nspname = current_schema())"
            )
            if not exists:
                await conn.execute(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at_ns BIGINT NOT NULL)"
                )
            elif await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                return False
            await conn.execute(sql)  # simple-query protocol: many statements, one transaction
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ns) VALUES ($1, $2, $3)",
                version,
                name,
                time.time_ns(),
            )
            return True

    # -- usage and billing --------------------------------------------------------------------

    @staticmethod
    def _write_one_statement(
        rows: list[UsageRow], now: int, shard: int, summed: bool = False
    ) -> tuple[str, tuple[Any, ...]] | None:
        """The one statement that writes and counts ``rows`` (fewer than
        ``_COPY_THRESHOLD``; into counter rows of ``shard``) and its arguments; None for a
        batch that needs the staging table.  ``summed``: a batch of several rows as
        ``_write_summed_sql`` (which fails when not every row is inserted: the caller
        then runs ``_WRITE_USAGE``) where it can be."""
        if len(rows) == 1 and (one := _write_one_args(rows[0], now)) is not None:
            deltas, args = one
            return _write_one_sql(deltas), (*args, *((shard,) if deltas else ()))
        if len(rows) < _COPY_THRESHOLD:
            records = _usage_records(rows)
            # (not with a row before 1970: its UTC day is SQL's to number, see _write_one_args)
            if summed and all(r.time_ns >= 0 for r in rows):
                return _write_summed_args(rows, records, now, shard)
            return _WRITE_USAGE, (records, now, shard)
        return None

    @staticmethod
    async def _write_usage_on(conn: Any, rows: list[UsageRow], now: int, shard: int) -> int:
        """Insert + count (into counter rows of ``shard``) on ``conn``, which must be inside
        a transaction for big batches."""
        one = PostgresStore._write_one_statement(rows, now, shard)
        if one is not None:
            return int(await conn.fetchval(one[0], *one[1]))
        await conn.execute(_CREATE_STAGING)
        await conn.copy_records_to_table(_STAGING, records=_usage_records(rows), columns=_USAGE_COLUMNS)
        return int(await conn.fetchval(_WRITE_STAGED, now, shard))

    def rejects_data(self, exc: BaseException) -> bool:
        # Out-of-range numbers (DataError: the server's, or asyncpg's own when it encodes
        # an int over 64 bits) and broken constraints; not connection or server trouble.
        return isinstance(
            exc, (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)
        ) or super().rejects_data(exc)

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        batch = await normalize_usage_sliced(rows)
        if not batch:
            return 0
        # Insert in one global order, so concurrent batches that overlap (replays) wait on
        # each other instead of deadlocking on the request_id index.
        batch.sort(key=_REQUEST_ID)
        now = time.time_ns()
        # A shard of the counters no other batch of this store is writing (one of the free
        # ones, or any when all are taken): batches in flight at once do not queue on each
        # other's counter row locks.
        free = self._free_shards
        held = bool(free)
        if held:
            shard = free.pop()
        else:
            shard = self._shard_turn = (self._shard_turn + 1) % _WRITE_SHARDS

        try:
            one = self._write_one_statement(batch, now, shard, SUM_DELTAS_HERE)

            unflushed = not self.usage_synchronous_commit

            async def attempt() -> int:
                if one is not None:  # one statement: its own transaction, on the hot connection
                    sql, args = one
                    if sql is not _WRITE_USAGE and len(batch) > 1:  # (_write_summed_sql)
                        try:
                            return int(await self._fetchval_hot(_unflushed(sql) if unflushed else sql, *args))
                        except asyncpg.exceptions.UniqueViolationError as exc:
                            if exc.constraint_name != _REQUEST_ID_INDEX:
                                raise
                        # (a row was in the log already: rolled back; counted row by row)
                        sql, args = _WRITE_USAGE, (args[0], now, shard)
                    return int(await self._fetchval_hot(_unflushed(sql) if unflushed else sql, *args))
                async with self.pool.acquire() as conn, conn.transaction():
                    if unflushed:
                        await conn.execute(_SET_UNFLUSHED)
                    return await self._write_usage_on(conn, batch, now, shard)

            # Idempotent, so run once more if its connection was lost (a backend ended, a
            # reset socket) before its callers are failed (managed mode's writer would send
            # the rows to the journal, written later): a lost statement that did commit, or
            # still commits, leaves the rerun nothing to insert or count (ON CONFLICT
            # (request_id) DO NOTHING, which waits for that commit).
            return await self._once_more_if_lost(attempt, "usage write")
        finally:
            if held:
                free.append(shard)

    async def set_prices(self, results: Sequence[PriceResult]) -> int:
        latest: dict[int, tuple[int | None, str, str | None]] = {}
        for result in results:
            row_id, cost, status = result[0], result[1], result[2]
            if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 0):
                raise InvalidValue("cost_nano_usd must be a non-negative integer or None")
            latest[int(row_id)] = (cost, status, price_result_entry(result))
        if not latest:
            return 0
        ids = sorted(latest)
        costs = [latest[i][0] for i in ids]
        statuses = [latest[i][1] for i in ids]
        entries = [latest[i][2] for i in ids]
        now = time.time_ns()

        async def attempt() -> int:
            return int(await self.pool.fetchval(_SET_PRICES, ids, costs, statuses, now, entries))

        return await self._retrying(attempt)

    async def apply_reprice(self, rows: Sequence[UsageRow]) -> int:
        todo = sorted((r for r in rows if r.row_id is not None), key=lambda r: r.row_id or 0)
        if not todo:
            return 0
        for r in todo:
            if r.priced and (type(r.cost_nano_usd) is not int or r.cost_nano_usd < 0):
                raise InvalidValue("cost_nano_usd must be a non-negative integer when priced")
        now = time.time_ns()
        ids = [r.row_id for r in todo]
        columns = [list(c) for c in zip(*(reprice_values(r) for r in todo), strict=True)]

        async def body(conn: Any) -> int:
            before = {
                int(r[0]): int(r[2]) if r[1] and r[2] else 0
                for r in await conn.fetch(_REPRICE_LOCK, ids)
            }
            n = int(await conn.fetchval(_REPRICE_UPDATE, ids, *columns))
            deltas = reprice_deltas([r for r in todo if r.row_id in before], before)
            if deltas:
                keys = sorted(deltas)  # the counters' lock order
                await conn.execute(
                    _BUMP_DELTAS,
                    [k.scope_kind for k in keys], [k.scope_id for k in keys],
                    [k.period for k in keys], [k.period_start for k in keys],
                    [deltas[k] for k in keys], now,
                )  # fmt: skip
            return n

        return await self._in_tx(body)

    # -- hard budgets -------------------------------------------------------------------------

    async def reserve(
        self,
        targets: Sequence[BudgetTarget],
        amount_nano_usd: int,
        *,
        ttl_s: float = 600.0,
        owner: str | None = None,
    ) -> Reservation | None:
        todo = check_targets(targets, amount_nano_usd)
        now = time.time_ns()
        res = Reservation(new_id(), amount_nano_usd, tuple(t.key for t in todo), now + int(ttl_s * 1e9), owner)
        if not todo:
            return res
        new = [t for t in todo if t.key not in self._known_counters]
        if new and all(amount_nano_usd <= t.limit_nano_usd for t in todo):  # else refused anyway
            async def ensure() -> None:
                await self.pool.execute(_ENSURE_COUNTERS, [t.scope_kind for t in new], [t.scope_id for t in new],
                                        [t.period for t in new], [t.period_start for t in new], now)
            await self._once_more_if_lost(ensure, "counter creation")  # (ON CONFLICT DO NOTHING)
            if len(self._known_counters) > 100_000:
                self._known_counters.clear()
            self._known_counters.update(t.key for t in new)
        reserves = self._reserves
        if reserves is None:
            reserves = self._reserves = GroupRunner(
                self._reserve_batch, in_flight=_RESERVES_IN_FLIGHT, isolate=self.rejects_data,
                abandoned=self._give_back,
            )
        return await reserves.run((todo, res))

    def _give_back(self, item: tuple[list[BudgetTarget], Reservation], result: Reservation | None) -> None:
        """A reservation made after its caller left (its client disconnected): released
        now rather than held until its expiry."""
        if result is not None:
            self._release_later([result], [])

    def _release_later(self, reservations: list[Reservation], lost_pids: list[int]) -> None:
        """Release ``reservations``, which no caller holds (their callers were answered
        with an error, or left), in the background: once ``lost_pids`` (the backends of
        statements that lost their connection while making them) are ended, so that none
        can commit one afterwards, and retried until the database answers or they expire.
        A release is idempotent (``settle`` without a row: it frees what it deletes), so a
        reservation that was never made, or is already released, costs nothing."""
        task = asyncio.get_running_loop().create_task(self._release_when_back(reservations, lost_pids))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_when_back(self, reservations: list[Reservation], lost_pids: list[int]) -> None:
        delay_s = 0.05
        until_ns = max(r.expires_at_ns for r in reservations)
        while True:
            try:
                await self._end_backends(lost_pids)
                await asyncio.gather(*(self.release(r) for r in reservations))
                return
            except Exception as exc:  # noqa: BLE001 - retried; the expiry sweep is the backstop
                if self._pool is None or time.time_ns() + delay_s * 1e9 >= until_ns:
                    log.warning("%d reservation(s) no caller holds could not be released (%s); "
                                "left to their expiry", len(reservations), type(exc).__name__)
                    return
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _RELEASE_RETRY_MAX_S)

    async def _reserve_batch(
        self, batch: Sequence[tuple[list[BudgetTarget], Reservation]]
    ) -> list[Reservation | None | BaseException]:
        """Reservations that arrived together: the longest prefix that fits in one
        statement (``pg_reserve``), each one from the first misfit on alone."""
        if len(batch) == 1:
            return [await self._reserve_one(*batch[0])]
        now = time.time_ns()
        wanted = [
            (j, t.scope_kind, t.scope_id, t.period, t.period_start, t.limit_nano_usd,
             res.amount_nano_usd, res.id, res.expires_at_ns, res.owner)
            for j, (todo, res) in enumerate(batch, 1) for t in todo
        ]  # fmt: skip

        lost_pids: list[int] = []

        async def attempt() -> int:
            for _ in range(_RESERVE_ATTEMPTS):
                try:
                    return await self._reserving(lost_pids, RESERVE_MANY, wanted, now)
                except asyncpg.exceptions.InvalidTextRepresentationError as exc:
                    if PARTIAL not in str(exc):
                        raise
            return 1  # counters still being created: each request alone

        made = [res for _, res in batch]
        try:
            first_refused = await self._retrying(attempt)
        except TimeoutError:  # an OSError, but not a lost connection (see _CONNECTION_LOST)
            self._release_later(made, lost_pids)  # (what the timed-out statement may still grant)
            raise
        except _CONNECTION_LOST as exc:
            first_refused = await self._reserve_again(
                attempt, made,
                lambda found: next((j for j, r in enumerate(made, 1) if r.id not in found), NONE_REFUSED),
                exc, lost_pids,
            )
        out: list[Reservation | None | BaseException] = []
        for j, (todo, res) in enumerate(batch, 1):
            if j < first_refused:
                out.append(res)
                continue
            try:  # exact for each (a smaller one may fit); rare: a limit is (nearly) reached
                out.append(await self._reserve_one(todo, res))
            except Exception as exc:  # noqa: BLE001 - that request's own failure
                out.append(exc)
        return out

    async def _reserve_one(self, todo: list[BudgetTarget], res: Reservation) -> Reservation | None:
        amount_nano_usd, now, owner = res.amount_nano_usd, time.time_ns(), res.owner
        args = (
            [t.scope_kind for t in todo], [t.scope_id for t in todo], [t.period for t in todo],
            [t.period_start for t in todo], [t.limit_nano_usd for t in todo],
            amount_nano_usd, now, res.id, res.expires_at_ns, owner,
        )  # fmt: skip

        lost_pids: list[int] = []

        async def attempt() -> int:
            for tries_left in range(_RESERVE_ATTEMPTS - 1, -1, -1):
                try:
                    return await self._reserving(lost_pids, _RESERVE, *args)
                except asyncpg.exceptions.InvalidTextRepresentationError as exc:
                    if _PARTIAL not in str(exc):
                        raise
                    if not tries_left:  # refused rather than a reservation half made
                        return 0
            raise AssertionError("unreachable")  # pragma: no cover

        try:
            admitted = await self._retrying(attempt)
        except TimeoutError:  # an OSError, but not a lost connection (see _CONNECTION_LOST)
            self._release_later([res], lost_pids)  # (what the timed-out statement may still grant)
            raise
        except _CONNECTION_LOST as exc:
            admitted = await self._reserve_again(attempt, [res], len, exc, lost_pids)
        return res if admitted else None

    async def _reserving(self, lost_pids: list[int], sql: str, *args: Any) -> int:
        """The reservation statement ``sql``'s value, on the hot connection when it is free
        (``pg_hot``; else on a pooled one).  When its connection is lost, or the statement
        times out, the backend pid of that connection goes into ``lost_pids`` (the caller
        ends that backend before it checks, reruns or gives back: ``_reserve_again``,
        ``_release_later``) and the connection is closed on this side if it was not
        already, so that neither the hot connection nor the pool uses it again."""
        hot = self._hot
        if hot is None:
            raise StoreError("the PostgreSQL store is not open")
        return await hot.run(self._pool, _reserve_on, lost_pids, sql, *args)

    async def _reserve_again(
        self, attempt: Callable[[], Awaitable[int]], made: list[Reservation], committed: Callable[[set[str]], int],
        exc: Exception, lost_pids: list[int],
    ) -> int:
        """A reservation statement whose connection was lost, answered without reserving
        anything twice.  Its backend may still be running it (a connection cut by the
        network, not by the server: the backend waits on a counter lock and notices only
        when it next writes), so it is ended first (``_end_backends``): once it is gone,
        nothing of that statement can commit any more.  Then its reservation rows, keyed by
        the reservation ids, say whether it committed: some found -- it did, and they are
        what it granted (``committed``: the attempt's answer from the ids found; a batch
        grants a prefix of its arrival order).  None found -- it granted nothing, so it is
        run once more, a fresh decision.

        Without that certainty (terminating the backend was not permitted, or it outlived
        ``_BACKENDS_GONE_WAIT_S``) the lost statement could still commit while the rerun
        waits on its counter locks: the rerun's rows then collide with its own (same
        primary key) and it rolls back whole, and the rows found answer; had it granted and
        left no room, the rerun granted nothing and collided with nothing, so the rows are
        looked for again after the rerun.  (Had it not committed yet by then, its
        reservations stay held until their expiry: never an overspend.)

        Any failure on the way (the connection lost again, the check itself failing) goes
        to the callers, and every reservation of ``made`` -- which none of them will hold,
        but which the lost statement or the rerun may have committed -- is released in the
        background (``_release_later``)."""
        log.warning("a reservation statement lost its connection (%s); checked and run once more",
                    type(exc).__name__)
        ids = [r.id for r in made]

        async def found() -> set[str]:
            return {r[0] for r in await self.pool.fetch(_RESERVED_IDS, ids)}

        try:
            await self._end_backends(lost_pids)
            present = await self._once_more_if_lost(found, "reservation check")
            if present:
                return committed(present)
            try:
                answer = await self._retrying(attempt)
            except AlreadyExists:  # (the UniqueViolation, translated by _retrying)
                return committed(await self._retrying(found))
            # A lost statement that took the counter locks before the rerun has ended by now;
            # had it granted, the rerun granted nothing (no collision): its rows answer.
            # (Once the lost backends are gone none can have; looked for all the same, for
            # when they could not be ended: one read, on this rare path.)
            present = await self._retrying(found)
            return committed(present) if present else answer
        except BaseException as failure:
            # (Not when the store refused the data: the batch is then run again item by
            # item, with these same reservations -- pg_batch's ``isolate``.)
            if not self.rejects_data(failure):
                self._release_later(made, lost_pids)
            raise

    async def _end_backends(self, pids: list[int]) -> None:
        """Terminate the backends ``pids`` (lost connections' statements) and wait until
        they are gone: a terminated backend rolls its transaction back before it leaves
        ``pg_stat_activity``.  When the role may not terminate them, or one outlives
        ``_BACKENDS_GONE_WAIT_S``, that is logged and the caller goes on without the
        certainty (as it did before this existed).  A connection error is raised."""
        if not pids:
            return

        async def terminate() -> object:
            return await self.pool.fetch(_END_BACKENDS, pids)

        try:
            # (once more on another connection if lost: a network cut that took the
            # statement's connection takes the pool's idle ones too -- and, since
            # reservations run on the hot connection, the pool may still hold one)
            await self._once_more_if_lost(terminate, "backend termination")
        except asyncpg.exceptions.InsufficientPrivilegeError as exc:
            log.warning("a lost reservation statement's backend could not be ended (%s); its "
                        "reservation may stay held until it expires", type(exc).__name__)
            pids.clear()  # (asking again on every release retry would fail the same way)
            return
        deadline = time.monotonic() + _BACKENDS_GONE_WAIT_S
        pause_s = 0.002
        while await self._retrying(lambda: self.pool.fetchval(_BACKENDS_LEFT, pids)):
            if time.monotonic() >= deadline:
                log.warning("a lost reservation statement's backend was still running %.0f s after "
                            "it was terminated; its reservation may stay held until it expires",
                            _BACKENDS_GONE_WAIT_S)
                return
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.1)
        # Gone: each pid is ended once.  A later caller with this list (a background release
        # after a failed rerun) must not terminate them again: a gone pid may since be one of
        # this role's own healthy pooled connections.
        pids.clear()

    async def _once_more_if_lost(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """``attempt`` (an idempotent statement: settle, release, a read), run once more on
        another connection when its connection was lost, before its callers are failed."""
        try:
            return await self._retrying(attempt)
        except TimeoutError:  # an OSError, but not a lost connection (see _CONNECTION_LOST)
            raise
        except _CONNECTION_LOST as exc:
            log.warning("a %s statement lost its connection (%s); run once more", what, type(exc).__name__)
            return await self._retrying(attempt)

    @staticmethod
    async def _release_on(conn: Any, reservation_id: str, now: int) -> bool:
        rows = await conn.fetch(_TAKE_RESERVATION, reservation_id)
        if not rows:
            return False
        held = sorted(((r[0], r[1], r[2], int(r[3])), int(r[4])) for r in rows)
        await conn.executemany(_UNRESERVE, [(amount, now, *key) for key, amount in held])
        return True

    def _settle_runner(self) -> GroupRunner[tuple[str, UsageRow | None], bool]:
        settles = self._settles
        if settles is None:
            settles = self._settles = GroupRunner(
                self._settle_batch, in_flight=_SETTLES_IN_FLIGHT, isolate=self.rejects_data
            )
        return settles

    async def settle(self, reservation: Reservation, usage: UsageRow) -> bool:
        return await self._settle_runner().run((reservation.id, usage))

    async def _settle_batch(self, batch: Sequence[tuple[str, UsageRow | None]]) -> list[bool | BaseException]:
        """Settle ``batch`` (reservation id, row; no row: a release) in one statement; per
        item, whether its reservation was still held (a second settle of one reservation
        in the batch: False, as if it had come after the first)."""
        rows = await normalize_usage_sliced([row for _, row in batch if row is not None])
        now = time.time_ns()
        one = _write_one_args(rows[0], now) if len(batch) == 1 and rows else None
        if one is not None:  # one request's settle: its own statement (_settle_one_sql)
            deltas, values = one
            # (``now`` is the settle's own parameter, even when the row counts nothing)
            args: tuple[Any, ...] = (*values, *(() if deltas else (now,)), batch[0][0])
            sql = _settle_one_sql(deltas)
        else:
            # Inserted in one global order (as ``write_usage``); ids sorted likewise.
            rows.sort(key=_REQUEST_ID)
            ids = sorted({rid for rid, _ in batch})
            args, sql = (_usage_records(rows), now, ids), _SETTLE
        if not self.usage_synchronous_commit:
            sql = _unflushed(sql)

        async def attempt() -> list[str]:
            taken: list[str] = await self._fetchval_hot(sql, *args)
            return taken

        # Idempotent, so run again if its connection was lost: a settle that did commit
        # inserts no row twice (ON CONFLICT (request_id) DO NOTHING, and only inserted rows
        # are counted) and finds its reservation gone (``taken`` empty: nothing freed twice).
        taken = set(await self._once_more_if_lost(attempt, "settle"))
        results: list[bool | BaseException] = []
        for rid, _ in batch:
            results.append(rid in taken)
            taken.discard(rid)
        return results

    async def release(self, reservation: Reservation) -> bool:
        # A settle without a row: one statement (it was BEGIN, DELETE, UPDATEs, COMMIT),
        # batched with the settles and releases that arrive with it.
        return await self._settle_runner().run((reservation.id, None))

    async def release_expired(self, now_ns: int | None = None) -> int:
        now = time.time_ns() if now_ns is None else now_ns
        rows = await self._fetch("SELECT DISTINCT id FROM spending_reservations WHERE expires_at_ns <= ?", (now,))
        return await self._release_ids([r[0] for r in rows], now)

    async def release_orphaned(self, stale_before_ns: int, now_ns: int | None = None) -> int:
        now = time.time_ns() if now_ns is None else now_ns
        rows = await self._fetch(self._ORPHANED, (stale_before_ns, stale_before_ns))
        released = await self._release_ids([r[0] for r in rows], now)
        await self._execute(self._FORGET_STALE, (stale_before_ns,))
        return released

    async def _release_ids(self, ids: list[str], now: int) -> int:
        """Each reservation in its own short transaction (counter locks held briefly)."""
        released = 0
        for r in ids:
            rid: str = r

            async def body(conn: Any, rid: str = rid) -> bool:
                return await self._release_on(conn, rid, now)

            if await self._in_tx(body):
                released += 1
        return released
