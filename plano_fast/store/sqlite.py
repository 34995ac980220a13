"""SQLite store: stdlib ``sqlite3``, WAL mode, two connections with separate roles.

The hot writes -- usage batches and, in managed mode, each request's reserve / settle /
release -- run on the event loop, on a connection of their own.  Everything else (opening,
migrations, admin reads and writes, the pricer, expired reservations, WAL checkpoints)
runs on a single-thread executor that owns the other connection.

Why the hot writes are not on the thread, where blocking would not matter: under load the
thread spends its flush waiting to re-take the GIL after each sqlite3 call, and while it
waits every GIL release on the event loop (uvloop releases it around each I/O callback)
pays a futex wake-up.  Measured in the firewall benchmark: ~70 CPU µs per request with the
writer thread against ~54 with the same writes on the loop (and ~50 writing nothing).

What keeps the loop from blocking on the hot connection:
- the write lock is taken with ``BEGIN IMMEDIATE`` and ``busy_timeout = 0``: when another
  process holds it, the attempt is rolled back and retried after an asynchronous back-off,
  up to ``busy_timeout_ms`` in all, instead of sleeping inside SQLite;
- it never checkpoints (``wal_autocheckpoint = 0``): the executor thread runs a passive
  checkpoint at most once a second after hot commits, and then restarts the WAL itself
  (``_checkpoint_and_restart``), so the fsyncs happen off the loop; hot commits only
  append to the WAL (``synchronous = NORMAL``);
- a usage batch is inserted ``_INSERT_CHUNK`` rows at a time with a yield to the loop in between (one
  transaction still, held under ``_hot_lock`` so no other hot write interleaves).

Multi-statement writes use ``BEGIN IMMEDIATE`` (the write lock up front), so a
read-then-write inside one never races another writer.  An in-memory database cannot be
shared by two connections, so ``:memory:`` runs everything on the thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from plano_fast.store.records import (
    PRICE_STATUS_PARTIAL,
    PRICE_STATUS_PENDING,
    PRICE_STATUS_PRICED,
    AlreadyExists,
    BudgetTarget,
    CounterKey,
    InvalidValue,
    MissingReference,
    PriceResult,
    Reservation,
    StoreError,
    UsageRow,
)
from plano_fast.store.sql import (
    REPRICE_COLUMNS,
    USAGE_WRITE_COLUMNS,
    DaySums,
    Row,
    SqlStore,
    Stmt,
    check_targets,
    counter_deltas,
    deltas_of_day_sums,
    normalize_usage_sliced,
    price_result_entry,
    reprice_deltas,
    reprice_values,
    written_price_status,
)
from plano_fast.store import _params_py
from plano_fast.store.times import new_id
from plano_fast.wire import PURE_ENV

T = TypeVar("T")

log = logging.getLogger("plano_fast.store")

#: back-off while another process holds the write lock (hot connection): first wait, cap
BUSY_FIRST_DELAY_S = 0.001
BUSY_MAX_DELAY_S = 0.016
#: the poll step while this store's own thread holds the write lock for the WAL restart
#: (one fsync, 1-25 ms on a disk): the lock is free as soon as that fsync returns, so a
#: hot write waiting for it retries at this step instead of on the doubling back-off,
#: which overshot up to the length of the fsync again (issue 27, concurrency-1 tail)
RESTART_POLL_S = 0.001
#: at most one WAL checkpoint per this many seconds, run on the executor thread
CHECKPOINT_INTERVAL_S = 1.0
#: how long the thread waits for the write lock to restart the WAL after a checkpoint
#: (a 1,000-row usage batch holds it ~15-60 ms); past it, the next writer restarts it
RESTART_LOCK_WAIT_MS = 250

# sqlite3 binds int, float, str and bytes directly but sends every other value through its
# adapter lookup, which for None (user_id, token_id, cost ... on most usage rows) fails two
# attribute lookups, each formatting and dropping an AttributeError: ~3k instructions per
# None, measured under callgrind on the writer thread, which holds the GIL while it binds.
# A registered adapter is one dict hit; ``{}.get(None)`` is None, and a C call (no Python
# frame).  Process-wide, and harmless to any other sqlite3 user: None still binds as NULL.
_NONE_TO_NULL: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NONE_TO_NULL.get)

_USAGE_WIDTH = len(USAGE_WRITE_COLUMNS)
_INSERT_USAGE = (
    f"INSERT INTO usage_log ({', '.join(USAGE_WRITE_COLUMNS)}) VALUES ("
    + ", ".join("?" * _USAGE_WIDTH)
    + ") ON CONFLICT (request_id) DO NOTHING"
)
# Rows per multi-row INSERT (31 columns each, under SQLite's 32,766 variables).  One
# statement is one sqlite3_step instead of one per row; 32 rows keep each synchronous
# stretch on the event loop around 0.15 ms (the hot connection yields between chunks):
# 128 measured ~0.5 ms each, eight of them a second at 1,000 req/s, a p99 cost at
# concurrency 1 (issue 27, benchmarks/tail_probe.py).  A batch is split into full chunks
# and one chunk of the rest, so a batch of up to 32 rows (a group commit of managed
# requests) is one statement: it was split into power-of-two pieces (13 rows: 8 + 4 + 1,
# three statements and a turn of the loop after each), ~165k instructions more per
# 13-row commit than one statement under callgrind (issue 27).  32 sizes of statement
# exist, each prepared once (~0.1-0.3 ms) and kept by sqlite3 (``_HOT_STATEMENTS``).
_INSERT_CHUNK = 32
_INSERT_HEAD, _, _INSERT_TAIL = _INSERT_USAGE.partition("VALUES (" + ", ".join("?" * _USAGE_WIDTH) + ")")
_ROW_MARKS = "(" + ",".join("?" * _USAGE_WIDTH) + ")"


@functools.cache
def _multi_insert(n: int) -> str:
    return _INSERT_HEAD + "VALUES " + ",".join([_ROW_MARKS] * n) + _INSERT_TAIL


# A bound None is not one of the types sqlite3 binds directly: each goes through the
# adapter lookup (a key tuple built, a dict hit, the adapter called), ~800 instructions, and
# most usage rows carry seven or more (user_id, token_id, requested_model, attempt_trail,
# reservation_overrun_nano_usd ... outside managed and routed set-ups): ~8k instructions of
# the ~63k a row cost to write, under callgrind (benchmarks/bench_billing_stages.py).  A
# column that is None in every row of a chunk is therefore left out of that chunk's INSERT:
# the nullable columns have no DEFAULT, so the row stores exactly the NULL it would have
# been bound, and every CHECK sees the same value.  The statement shape is then keyed by
# (rows, left-out columns): a deployment fills the same columns on nearly every row, so a
# handful of shapes exist, each prepared once and kept by sqlite3's statement cache.
_OMITTABLE: Final = tuple(
    i for i, name in enumerate(USAGE_WRITE_COLUMNS)
    if name in ("project_id", "user_id", "key_hash", "token_id", "model", "cost_nano_usd", "usage_api",
                "usage_raw", "price_entry", "reservation_overrun_nano_usd", "requested_model",
                "attempts", "attempt_trail")
)  # fmt: skip
# The same for the usage parts that are 0 on nearly every row: these columns are NOT NULL
# DEFAULT 0 INTEGER, so a part that is 0 in every row of a chunk can be left out and stores
# exactly the 0 it would have been bound (a value == 0 of another numeric type would be
# stored as INTEGER 0 by the column's affinity as well), under the same CHECKs.  Each value
# left out saves its binding and copy, ~300 instructions (issue 27,
# benchmarks/results/billing2-20261205.md).  They are left out in two groups, each only
# when all its columns are 0 in every row (cache writes; tool-use prompt and audio), and
# cache reads and reasoning, set on many rows, are always bound: each column on its own
# gave up to 2**7 shapes per chunk size on mixed traffic (75 in a simulation with the
# earlier 64-entry cache: misses, each ~45 us plus a ~300 us prepare on the event loop),
# the groups give at most 4.
_OMITTABLE_ZERO_GROUPS: Final = tuple(
    tuple(USAGE_WRITE_COLUMNS.index(name) for name in group)
    for group in (("cache_write_tokens", "cache_write_1h_tokens"),
                  ("tool_use_prompt_tokens", "audio_input_tokens", "audio_output_tokens"))
)  # fmt: skip
_OMITTABLE_ZERO: Final = tuple(i for group in _OMITTABLE_ZERO_GROUPS for i in group)
# Values bound once per chunk.  sqlite3 binds every str with SQLITE_TRANSIENT: a mutex, a
# malloc, a copy and later a free, ~1k instructions a text value with the call around it
# (callgrind, issue 27), and a usage row has up to 14 text columns, most of them the same
# in every row of a batch of one key or token (its project, key or token, provider,
# model, scan API, price entry, status and price status).  A column whose value binds
# alike in every row of a chunk (the same object, or an equal exact str or int:
# ``same_binding``) is bound once, as a numbered parameter (``?NNN``) repeated in every
# row's VALUES: the row stores what it would have been bound, under the same CHECKs.  Decided
# per group of columns that go together, not per column: each decision doubles the
# statement shapes, and one per column would turn the coincidences of a few-row chunk on
# mixed traffic into new shapes, each a cache miss and a ~300 us prepare on the event
# loop.  Three groups: the scope (project, user, key, token), the model (provider, model,
# scan API, price entry, requested model) and the outcome (status, HTTP status, priced,
# price status); request id, times, token counts, cost and raw usage differ row to row.
# A chunk of one row shares nothing (the plain shapes).
_SHARE_GROUPS: Final = tuple(
    tuple(USAGE_WRITE_COLUMNS.index(name) for name in group)
    for group in (("project_id", "user_id", "key_hash", "token_id"),
                  ("provider", "model", "usage_api", "price_entry", "requested_model"),
                  ("status", "http_status", "priced", "price_status"))
)  # fmt: skip
# Shapes kept: chunk sizes (32) x zero-group states (4) x 4 patterns of all-None columns (a
# deployment fills the same columns on nearly every row: a few patterns) x 2 sharing states
# (a deployment's batches are of one scope or of several, nearly all of one outcome); the
# hot connection's statement cache holds them all, with room for the full INSERTs and the
# rest (a cached 16-row INSERT is ~22 KiB: ~0.7 MiB for each pattern, zero state and
# sharing state in use).
_OMIT_SHAPES = _INSERT_CHUNK * (1 << len(_OMITTABLE_ZERO_GROUPS)) * 4 * 2
_HOT_STATEMENTS = _OMIT_SHAPES + _INSERT_CHUNK + 64


@functools.lru_cache(maxsize=_OMIT_SHAPES)
def _sparse_insert(n: int, omitted: tuple[int, ...], shared: tuple[int, ...] = ()) -> str:
    """The INSERT of ``n`` rows without the ``omitted`` columns and with the ``shared``
    ones bound once (its parameters: ``_insert_params``' ones: the shared values
    numbered from 1 in column order, then each row's others)."""
    kept = [i for i in range(_USAGE_WIDTH) if i not in omitted]
    head = f"INSERT INTO usage_log ({', '.join(USAGE_WRITE_COLUMNS[i] for i in kept)}) VALUES "
    if not shared:
        marks = "(" + ",".join("?" * len(kept)) + ")"
        return head + ",".join([marks] * n) + _INSERT_TAIL
    number = {column: at for at, column in enumerate(shared, 1)}
    per_row = [i for i in kept if i not in number]
    rows = []
    for r in range(n):
        first = len(shared) + r * len(per_row) + 1
        for at, column in enumerate(per_row):
            number[column] = first + at
        rows.append("(" + ",".join(f"?{number[i]}" for i in kept) + ")")
    return head + ",".join(rows) + _INSERT_TAIL


def _insert_of(n: int, params: list[object]) -> tuple[str, Sequence[object]]:
    """The statement and parameters inserting ``n`` rows whose ``_chunk_params`` are
    ``params``: the columns None in all ``n`` rows left out (see ``_OMITTABLE``), and each
    group of parts 0 in all of them (``_OMITTABLE_ZERO_GROUPS``); each group of
    ``_SHARE_GROUPS`` alike in all of them bound once."""
    # Which columns, and the kept values, in one compiled pass (``_insert_params``): the
    # Python test of each column (a slice and count) and the itemgetter of every kept
    # value were ~65k instructions of a 13-row group commit's ~630k under callgrind; now
    # ~18k with the statement's lookup (issue 27, benchmarks/results/sqlite-20261205.md).
    omitted, shared, bound = _insert_params(n, params, _OMITTABLE, _OMITTABLE_ZERO_GROUPS, _SHARE_GROUPS)
    if not omitted and not shared:
        return _multi_insert(n), params
    return _sparse_insert(n, omitted, shared), bound


def _chunk_sizes(n: int) -> list[int]:
    """``n`` rows as full chunks then one of the rest (32 rows of 31 parameters stay far
    under SQLite's 32,766 variables)."""
    full, rest = divmod(n, _INSERT_CHUNK)
    return [_INSERT_CHUNK] * full + [rest] if rest else [_INSERT_CHUNK] * full


class RestartLock:
    """Whether this store's thread holds the write lock for the WAL restart (set and
    cleared on the thread, read on the loop: one attribute, consistent under the GIL)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = False


def _checkpoint_and_restart(conn: sqlite3.Connection, restart: RestartLock | None = None) -> None:
    """A passive checkpoint, then the WAL's restart (executor thread).

    PASSIVE copies what no reader still needs and never waits for anyone, so it cannot
    hold up the hot writes.  Once it has copied the whole WAL, the next transaction that
    writes a page starts the WAL over from its first frame and, at ``synchronous =
    NORMAL``, fsyncs the new WAL header first (SQLite's documented rule).  Left to the
    hot connection, that fsync ran on the event loop in the first usage batch's (or
    managed request's) COMMIT after every checkpoint: 5-25 ms with the loop blocked on
    this machine's disk (measured: 19 of 20 such COMMITs made a voluntary context switch,
    none without checkpoints; issue 27, benchmarks/hot_commit_probe.py).  So the thread does
    that first write itself, right after the checkpoint: ``user_version`` set to its own
    value (plano_fast does not use it), a header-page write that changes nothing; the
    value is read inside the write transaction, so one set meanwhile by another
    connection is kept.  A hot write can still slip in between the checkpoint and the
    write lock (each statement lets go of the GIL): it then restarts the WAL on the loop,
    as before, which costs time, never a write.  When the checkpoint did not catch up,
    the write only appends one frame.  A hot write during
    the fsync finds the lock taken and backs off on the loop (``_hot_run``), which goes
    on serving requests meanwhile; ``restart.held`` tells it the lock is this thread's,
    for the fsync only, so it retries every ``RESTART_POLL_S`` rather than doubling.
    """
    busy_timeout_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        conn.execute(f"PRAGMA busy_timeout = {RESTART_LOCK_WAIT_MS}")
        conn.execute("BEGIN IMMEDIATE")
        if restart is not None:
            restart.held = True
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if not _is_busy(exc):
            raise
        # Another writer held the lock longer (a batch in flight, another process): the
        # restart is left to the next write, as SQLite does it, rather than holding up the
        # executor thread's other work for up to busy_timeout_ms.
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        if restart is not None:
            restart.held = False
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")


# Counter writes.  An existing counter (nearly always: a scope's counters are created by
# its first request of a period) is changed with a plain UPDATE by primary key, one
# executemany for all of them.  Not an upsert: an INSERT evaluates every CHECK of
# spending_counters, and each ``IN ('project', 'user', 'key')`` / ``IN ('total', ...)``
# list of three or more values is compiled to an ephemeral table built at every
# execution (SQLite codes IN as comparisons only for lists of two values or fewer):
# ~50k instructions per statement, more than the rest of the statement, under callgrind.
# An UPDATE checks only the constraints of the columns it sets.  Counters the UPDATE did
# not find are then created by an INSERT ... ON CONFLICT DO NOTHING (the write lock is
# held, so nothing can create them in between).
#
# SQLite turns an integer sum past 64 bits into a REAL without a word, which would leave
# an inexact counter; the WHERE skips such an update instead (the counter then is neither
# updated nor inserted, which _bump_spent turns into the error PostgreSQL raises for the
# same sum: bigint out of range).
#
# Numbered parameters: an update's are (spent delta, reserved freed, now) + the counter's
# key, a CounterKey being a tuple in the key's column order, so each is one tuple
# concatenation (the delta bound once, read twice) instead of eight lookups into a new
# tuple: ~22k instructions of the Python around a managed request's one-row commit
# (callgrind, issue 27).
_ADD_SPENT = (
    "UPDATE spending_counters SET spent_nano_usd = spent_nano_usd + ?1, "
    "reserved_nano_usd = reserved_nano_usd - ?2, updated_at_ns = ?3 "
    "WHERE scope_kind = ?4 AND scope_id = ?5 AND period = ?6 AND period_start = ?7 "
    "AND spent_nano_usd <= 9223372036854775807 - ?1"
)
_NEW_COUNTER = (
    "INSERT INTO spending_counters (scope_kind, scope_id, period, period_start, "
    "spent_nano_usd, reserved_nano_usd, updated_at_ns) VALUES (?, ?, ?, ?, ?, 0, ?) "
    "ON CONFLICT (scope_kind, scope_id, period, period_start) DO NOTHING"
)


# The same delta added to several counters (a commit of one scope triple's rows of one day:
# the group commit of one token's requests, a lone request's row -- its project's, user's
# and key's total, monthly and daily counters) in ONE UPDATE, each counter found by its
# primary key in a UNION ALL of single-row lookups.  Six UPDATEs of one counter each
# (executemany) cost ~147k instructions per commit, one UPDATE of the six ~125k, in
# sqlite3 alone under callgrind; a 13-row group commit through the store ~715k -> ~703k
# (issue 27): each statement's bind, step and reset is ~18k, the VDBE lookups a fraction
# of it, and the scope ids are bound once each instead of once per period.  Not a
# ``WHERE (...) IN (VALUES ...)`` (an ephemeral table and a scan: +14k) nor an OR of the
# keys (a scan of the table).  The kinds and periods are SQL literals (from the fixed sets
# of ``_SQL_WORD``), the ids and period starts parameters; shapes are few (which scopes a
# deployment's rows carry), each prepared once and kept by sqlite3's statement cache.
# Counters missing (or whose sum would pass 64 bits) are left to the caller's INSERT, as
# with the per-counter UPDATEs: the statement's change count says how many it found.
_SAME_DELTA_MAX: Final = 9
_SQL_WORD: Final = {w: f"'{w}'" for w in ("project", "user", "key", "total", "monthly", "daily")}
#: counter keys (in order) -> (statement, the parameters after the delta and the time)
_SAME_DELTA_SHAPES: dict[tuple[CounterKey, ...], tuple[str, tuple[object, ...]]] = {}
_SAME_DELTA_SHAPES_MAX: Final = 4096


def _same_delta_update(keys: tuple[CounterKey, ...]) -> tuple[str, tuple[object, ...]] | None:
    """The UPDATE adding ``?1`` to the counters ``keys`` (``updated_at_ns = ?2``) and its
    other parameters; None when a kind or period is not one of ``_SQL_WORD``."""
    numbers: dict[tuple[str, object], int] = {}
    params: list[object] = []
    lookups = []
    for kind, scope_id, period, period_start in keys:
        kind_sql, period_sql = _SQL_WORD.get(kind), _SQL_WORD.get(period)
        if kind_sql is None or period_sql is None or type(period_start) is not int or type(scope_id) is not str:
            return None
        marks = []
        for value in (scope_id, period_start):
            at = numbers.get((type(value).__name__, value))
            if at is None:
                params.append(value)
                at = numbers[(type(value).__name__, value)] = len(params) + 2
            marks.append(f"?{at}")
        lookups.append(
            f"SELECT rowid FROM spending_counters WHERE scope_kind = {kind_sql} AND scope_id = {marks[0]} "
            f"AND period = {period_sql} AND period_start = {marks[1]}"
        )
    sql = (
        "UPDATE spending_counters SET spent_nano_usd = spent_nano_usd + ?1, updated_at_ns = ?2 "
        f"WHERE rowid IN ({' UNION ALL '.join(lookups)}) AND spent_nano_usd <= 9223372036854775807 - ?1"
    )
    return sql, tuple(params)


def _add_same_spent(conn: sqlite3.Connection, keys: tuple[CounterKey, ...], delta: int, now: int) -> int:
    """``delta`` added to ``spent`` of the counters ``keys`` (all distinct) in one UPDATE:
    how many it changed, or -1 when it could not be written as one (the caller's
    per-counter UPDATEs then run)."""
    shape = _SAME_DELTA_SHAPES.get(keys)
    if shape is None:
        shape = _same_delta_update(keys)
        if shape is None:
            return -1
        if len(_SAME_DELTA_SHAPES) >= _SAME_DELTA_SHAPES_MAX:
            _SAME_DELTA_SHAPES.clear()
        _SAME_DELTA_SHAPES[keys] = shape
    sql, params = shape
    return int(conn.execute(sql, (delta, now, *params)).rowcount)


def _bump_spent(
    conn: sqlite3.Connection, deltas: dict[CounterKey, int], now: int, freed: dict[CounterKey, int] | None = None
) -> None:
    """Add ``deltas`` to ``spent`` of the spending counters and take ``freed`` (a settled
    reservation's amounts) off their ``reserved`` (inside the caller's transaction).  In
    no particular order: the database-wide write lock is already held, so unlike
    PostgreSQL's row locks there is no lock order to keep."""
    if not freed:
        delta = _same_delta(deltas)
        # (With a settled reservation's amounts, the one UPDATE of the deltas plus one per
        # freed counter measured ~24k instructions more per hard-limited request than one
        # executemany setting both on each counter: benchmarks.bench_managed_store, issue 27.)
        if delta is not None:
            changed = _add_same_spent(conn, tuple(deltas), delta, now)
            if changed == len(deltas):
                return
            if changed >= 0:
                # Some counters are new, as below.
                created = conn.executemany(_NEW_COUNTER, [(*k, d, now) for k, d in deltas.items()]).rowcount
                if changed + created != len(deltas):
                    raise sqlite3.DataError("a spending counter would exceed 64 bits (nano-USD)")
                return
    if freed:
        keys = list(dict.fromkeys([*deltas, *freed]))
        updates = [(deltas.get(k, 0), freed.get(k, 0), now) + k for k in keys]
    else:
        if not deltas:
            return
        keys = list(deltas)
        updates = [(d, 0, now) + k for k, d in deltas.items()]
    changed = conn.executemany(_ADD_SPENT, updates).rowcount
    if changed == len(keys):
        return
    # Some counters are new (a reservation's counter always exists: reserve made it).
    created = conn.executemany(
        _NEW_COUNTER,
        [(k.scope_kind, k.scope_id, k.period, k.period_start, deltas.get(k, 0), now) for k in keys],
    ).rowcount
    if changed + created != len(keys):
        raise sqlite3.DataError("a spending counter would exceed 64 bits (nano-USD)")


def _same_delta(deltas: dict[CounterKey, int]) -> int | None:
    """The delta of every counter of ``deltas`` when they are 2 to ``_SAME_DELTA_MAX``
    and all the same (``_add_same_spent``), else None."""
    if not 1 < len(deltas) <= _SAME_DELTA_MAX:
        return None
    values = iter(deltas.values())
    first = next(values)
    for value in values:
        if value != first:
            return None
    return first


# A reservation, per counter: add the amount to ``reserved`` if spent + reserved + amount
# <= limit (an UPDATE: see above); when that changes nothing, either the counter is new
# (then it is created holding the amount, if the amount fits the limit) or it is refused.
_RESERVE = (
    "UPDATE spending_counters SET reserved_nano_usd = reserved_nano_usd + ?, updated_at_ns = ? "
    "WHERE scope_kind = ? AND scope_id = ? AND period = ? AND period_start = ? "
    "AND spent_nano_usd + reserved_nano_usd + ? <= ?"
)
_RESERVE_NEW = (
    "INSERT INTO spending_counters (scope_kind, scope_id, period, period_start, "
    "spent_nano_usd, reserved_nano_usd, updated_at_ns) SELECT ?, ?, ?, ?, 0, ?, ? WHERE ? <= ? "
    "ON CONFLICT (scope_kind, scope_id, period, period_start) DO NOTHING"
)
_CHUNK = 500  # bound parameters per IN (...) list; old SQLite builds allow only 999


def _translate(exc: sqlite3.IntegrityError) -> StoreError:
    msg = str(exc)
    if "UNIQUE" in msg or "PRIMARY KEY" in msg:
        return AlreadyExists(msg)
    if "FOREIGN KEY" in msg:
        return MissingReference(msg)
    return InvalidValue(msg)


# The parameters of a chunk of rows: ``chunk_params`` of plano_fast/store/_params.pyx (the
# rows' slots read in place, ~1/5 of the twin's instructions a row) where it is built, else
# its twin's (plano_fast/store/_params_py.py, the specification).
_chunk_params: Callable[[Sequence[UsageRow]], list[object]]
_insert_params: Callable[
    [int, list[object], tuple[int, ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]],
    tuple[tuple[int, ...], tuple[int, ...], list[object]],
]
_add_day_sums: Callable[[Sequence[UsageRow], DaySums], None]
_normalize_usage: Callable[[Sequence[UsageRow], set[str] | None], list[UsageRow]]
if os.environ.get(PURE_ENV) == "1":
    _chunk_params, _insert_params, _add_day_sums, _normalize_usage = (
        _params_py.chunk_params, _params_py.insert_params, _params_py.add_day_sums, _params_py.normalize_usage,
    )
else:
    try:
        from plano_fast.store._params import add_day_sums as _add_day_sums
        from plano_fast.store._params import chunk_params as _chunk_params
        from plano_fast.store._params import insert_params as _insert_params
        from plano_fast.store._params import normalize_usage as _normalize_usage
    except ImportError:
        _chunk_params, _insert_params, _add_day_sums, _normalize_usage = (
            _params_py.chunk_params, _params_py.insert_params, _params_py.add_day_sums, _params_py.normalize_usage,
        )
_usage_params = _params_py.usage_params


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _single_step(body: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> Generator[None, None, T]:
    """A transaction body without yield points, in the shape ``_hot_run`` drives."""
    return body(conn)
    yield  # unreachable; makes this function a generator


def _finish(steps: Generator[None, None, T]) -> T:
    """Run a transaction body's steps to the end, with no turn of the loop in between."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


async def _drive_transaction(conn: sqlite3.Connection, steps: Generator[None, None, T]) -> T:
    """BEGIN IMMEDIATE, the body's steps with the loop running between them, COMMIT; any
    failure (cancellation included) rolls back before it propagates."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        stepped = False
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: T = done.value
                break
            stepped = True
            await asyncio.sleep(0)
        if stepped:
            # A many-step body's COMMIT gets a stretch of its own, not one after the last
            # step's work: it writes every dirty page to the WAL (~0.5-0.9 ms for 1,000
            # usage rows, issue 27).  A one-step body (one request's row) commits at once.
            await asyncio.sleep(0)
        conn.execute("COMMIT")
    except BaseException:
        _roll_back(conn, steps)
        raise
    return result


def _run_now(conn: sqlite3.Connection, steps: Generator[None, None, T], cur: sqlite3.Cursor) -> T:
    """``_drive_transaction`` without turns of the loop: BEGIN IMMEDIATE, every step,
    COMMIT, before returning; any failure rolls back before it propagates.  ``cur``: a
    cursor of ``conn`` kept for BEGIN and COMMIT (``Connection.execute`` makes a new
    cursor per call: ~2.7k instructions a commit for the two, callgrind)."""
    cur.execute("BEGIN IMMEDIATE")
    try:
        result = _finish(steps)
        cur.execute("COMMIT")
    except BaseException:
        _roll_back(conn, steps)
        raise
    return result


def _roll_back(conn: sqlite3.Connection, steps: Generator[None, None, T]) -> None:
    """Close a failed transaction's body and roll it back (the caller re-raises)."""
    steps.close()
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the original error is the one worth raising
            log.warning("SQLite rollback failed: %s", exc)


def _connect(path: str, busy_timeout_ms: int, *pragmas: str, check_same_thread: bool = True,
             cached_statements: int = 128) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with ``pragmas`` run."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=check_same_thread,
        cached_statements=cached_statements,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        for pragma in pragmas:
            conn.execute(pragma).fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


class _Refused(Exception):
    pass


class SqliteStore(SqlStore):
    kind = "sqlite"

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        #: the event loop's connection for hot writes (None: everything on the thread)
        self._hot: sqlite3.Connection | None = None
        #: a cursor of ``_hot`` for ``_hot_now``'s BEGIN and COMMIT (set with it)
        self._hot_cursor: sqlite3.Cursor | None = None
        self._hot_lock = asyncio.Lock()
        #: the loop the hot connection serves (set by ``open``)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._last_checkpoint_s = 0.0
        #: set while the thread's WAL restart holds the write lock (``_hot_run`` polls)
        self._restart = RestartLock()

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise StoreError("the SQLite store is not open")
        conn = self._conn
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, conn)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plano-sqlite")

        def connect() -> sqlite3.Connection:
            if self.path != ":memory:":
                parent = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(parent, exist_ok=True)
            return _connect(
                self.path,
                self.busy_timeout_ms,
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = ON",
                "PRAGMA temp_store = MEMORY",
                check_same_thread=False,  # only ever used on the executor's one thread
            )

        loop = self._loop = asyncio.get_running_loop()
        try:
            self._conn = conn = await loop.run_in_executor(self._executor, connect)
            mode = await loop.run_in_executor(
                self._executor, lambda: conn.execute("PRAGMA journal_mode").fetchone()[0]
            )
            if self.path != ":memory:" and str(mode).lower() == "wal":
                # On the loop: a lock held by another process is waited for by _hot_run
                # (never inside SQLite); checkpoints are left to the thread (module doc).
                self._hot = _connect(
                    self.path, 0, "PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON",
                    "PRAGMA wal_autocheckpoint = 0", cached_statements=_HOT_STATEMENTS,
                )  # fmt: skip
                self._hot_cursor = self._hot.cursor()
        except BaseException:
            if self._conn is not None:
                await loop.run_in_executor(self._executor, self._conn.close)
                self._conn = None
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        executor, conn = self._executor, self._conn
        if executor is None:
            return
        async with self._hot_lock:  # a hot transaction in progress finishes first
            hot, self._hot = self._hot, None
            self._hot_cursor = None
            if hot is not None:
                hot.close()
        if self._checkpoint_task is not None:
            await asyncio.gather(self._checkpoint_task, return_exceptions=True)
        self._executor = None
        self._conn = None
        if conn is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def _hot_tx(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """``body`` in one write transaction, as ``_hot_run`` runs one."""
        return await self._hot_run(lambda conn: _single_step(body, conn))

    async def _hot_run(self, attempt: Callable[[sqlite3.Connection], Generator[None, None, T]]) -> T:
        """Run ``attempt`` in one write transaction on the hot connection.  The generator
        it returns yields where the loop may run other work; the lock keeps other hot
        writes out meanwhile.  ``SQLITE_BUSY`` (another process writing) rolls back and
        retries the whole attempt after a back-off, for ``busy_timeout_ms`` at most.
        Without a hot connection (``:memory:``) it runs on the thread, straight through."""
        if self._hot is None:
            return await self._tx(lambda conn: _finish(attempt(conn)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_timeout_ms / 1000
        delay_s = BUSY_FIRST_DELAY_S
        async with self._hot_lock:
            while True:
                conn = self._hot
                if conn is None:
                    raise StoreError("the SQLite store is not open")
                try:
                    result = await _drive_transaction(conn, attempt(conn))
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or loop.time() + delay_s > deadline:
                        raise
                    if self._restart.held:
                        # Our own thread's WAL restart: free once its one fsync returns.
                        await asyncio.sleep(RESTART_POLL_S)
                        continue
                    await asyncio.sleep(delay_s)
                    delay_s = min(BUSY_MAX_DELAY_S, delay_s * 2)
                    continue
                except sqlite3.IntegrityError as exc:
                    raise _translate(exc) from None
                break
        self._after_hot_commit(loop.time())
        return result

    def _after_hot_commit(self, now_s: float) -> None:
        if self._checkpoint_task is None and now_s - self._last_checkpoint_s >= CHECKPOINT_INTERVAL_S:
            self._last_checkpoint_s = now_s
            self._checkpoint_task = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            restart = self._restart
            await self._call(lambda conn: _checkpoint_and_restart(conn, restart))
        except Exception as exc:  # noqa: BLE001 - the next commit schedules another
            log.warning("SQLite WAL checkpoint failed: %s", exc)
        finally:
            self._checkpoint_task = None

    @staticmethod
    def _run_tx(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _tx(self, body: Callable[[sqlite3.Connection], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            try:
                return self._run_tx(conn, body)
            except sqlite3.IntegrityError as exc:
                raise _translate(exc) from None

        return await self._call(run)

    async def _fetch(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        def run(conn: sqlite3.Connection) -> list[Row]:
            return conn.execute(sql, tuple(args)).fetchall()

        return await self._call(run)

    async def _execute(self, sql: str, args: Sequence[object] = ()) -> int:
        def run(conn: sqlite3.Connection) -> int:
            try:
                return conn.execute(sql, tuple(args)).rowcount
            except sqlite3.IntegrityError as exc:
                raise _translate(exc) from None

        return await self._call(run)

    async def _transaction(self, statements: Sequence[Stmt]) -> list[int]:
        def body(conn: sqlite3.Connection) -> list[int]:
            return [conn.execute(sql, tuple(args)).rowcount for sql, args in statements]

        return await self._tx(body)

    # -- migrations -------------------------------------------------------------------------

    async def applied_migrations(self) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            ).fetchone()
            if exists is None:
                return []
            return [int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]

        return await self._call(run)

    async def apply_migration(self, version: int, name: str, sql: str) -> bool:
        statements = _split_script(sql)

        def body(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at_ns INTEGER NOT NULL)"
            )
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                return False
            for stmt in statements:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ns) VALUES (?, ?, ?)",
                (version, name, time.time_ns()),
            )
            return True

        return await self._call(lambda conn: self._run_tx(conn, body))

    # -- usage and billing --------------------------------------------------------------------

    @staticmethod
    def _write_usage_steps(
        conn: sqlite3.Connection, rows: list[UsageRow], now: int, freed: dict[CounterKey, int] | None = None
    ) -> Generator[None, None, int]:
        """Insert + count, yielding between chunks (where ``_hot_run`` lets the loop run);
        the caller holds the write lock (BEGIN IMMEDIATE).  ``freed``: a settled
        reservation's amounts, taken off ``reserved`` by the same counter updates."""
        if not rows:
            if freed:
                _bump_spent(conn, {}, now, freed)
            return 0
        inserted = 0
        sums: DaySums = {}  # what the chunks cost, summed while each one is fully inserted
        start = 0
        for size in _chunk_sizes(len(rows)):
            chunk = rows[start : start + size]
            start += size
            n = conn.execute(*_insert_of(size, _chunk_params(chunk))).rowcount
            inserted += n
            if inserted == start:  # nothing skipped so far (the common case)
                _add_day_sums(chunk, sums)
            if start < len(rows):
                yield  # between chunks only: a one-chunk batch (one request's row) needs
                # no extra turn of the loop before its commit
        if inserted == len(rows):
            deltas = deltas_of_day_sums(sums)
            written = inserted
        else:
            # Some rows were skipped (their request id is stored already): the new ones are
            # the last ``inserted`` ids.  Each new row gets the current maximum id + 1
            # (INTEGER PRIMARY KEY) and nobody else can write while we hold the lock, so
            # the ids this transaction inserted are consecutive and end at last_insert_rowid
            # (found only on this rare path: no MAX(id) read before every insert).
            fresh: set[str] = set()
            if inserted:
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                fresh = {r[0] for r in conn.execute(
                    "SELECT request_id FROM usage_log WHERE id > ? AND id <= ?", (last - inserted, last)
                )}  # fmt: skip
            new = [r for r in rows if r.request_id in fresh]
            if len(new) != inserted:  # cannot happen under the lock; never count blindly
                raise StoreError(f"usage insert wrote {inserted} rows but {len(new)} are new")
            deltas = counter_deltas(new)
            written = len(new)
        if deltas or freed:
            _bump_spent(conn, deltas, now, freed)
        return written

    def rejects_data(self, exc: BaseException) -> bool:
        # A CHECK constraint, or an integer over 64 bits (OverflowError while binding).
        return isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)) or super().rejects_data(exc)

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        if not rows:
            return 0
        batch = await normalize_usage_sliced(rows, _normalize_usage)
        now = time.time_ns()
        return await self._hot_run(lambda conn: self._write_usage_steps(conn, batch, now))

    def write_usage_now(self, rows: Sequence[UsageRow]) -> int | None:
        """The write of a few rows (one INSERT chunk) before returning, as ``_hot_now``
        runs it; ``None`` (nothing written) when it cannot run now or the rows are more
        than one chunk (a longer write yields to the loop between chunks)."""
        if len(rows) > _INSERT_CHUNK:
            return None
        batch = _normalize_usage(rows, None)
        if not batch:
            return 0
        now = time.time_ns()
        return self._hot_now(lambda conn: self._write_usage_steps(conn, batch, now))

    def _hot_now(self, attempt: Callable[[sqlite3.Connection], Generator[None, None, T]]) -> T | None:
        """``attempt`` in one write transaction on the hot connection, committed before
        this returns, when no hot transaction is under way and no other process holds
        the write lock; else ``None`` (nothing done: the caller awaits the usual call).

        Why: a managed request's synchronous write (issue 27) then commits in the turn
        of the loop its answer completed in, with no task to schedule and no turn to
        wait for.  Safe without ``_hot_lock``: nothing here yields to the loop, so no
        other hot write can interleave, and one that is under way holds the lock (then
        this declines).  Another process writing: ``BEGIN IMMEDIATE`` fails at once
        (``busy_timeout = 0``) and the caller's usual call waits with its back-off."""
        conn, cur = self._hot, self._hot_cursor
        if conn is None or cur is None or self._hot_lock.locked() or conn.in_transaction:
            return None
        try:
            result = _run_now(conn, attempt(conn), cur)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return None
            raise
        except sqlite3.IntegrityError as exc:
            raise _translate(exc) from None
        loop = self._loop
        if loop is not None:
            self._after_hot_commit(loop.time())
        return result

    async def set_prices(self, results: Sequence[PriceResult]) -> int:
        latest: dict[int, tuple[int | None, str, str | None]] = {}
        for result in results:
            row_id, cost, status = result[0], result[1], result[2]
            if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 0):
                raise InvalidValue("cost_nano_usd must be a non-negative integer or None")
            latest[int(row_id)] = (cost, status, price_result_entry(result))
        if not latest:
            return 0
        now = time.time_ns()
        ids = sorted(latest)

        def body(conn: sqlite3.Connection) -> int:
            pending: list[UsageRow] = []
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for r in conn.execute(
                    "SELECT id, time_ns, project_id, user_id, key_hash FROM usage_log "
                    f"WHERE id IN ({marks}) AND NOT priced",
                    chunk,
                ):
                    cost = latest[int(r[0])][0]
                    pending.append(
                        UsageRow(
                            "", int(r[1]), r[2], r[3], r[4], None, "", None, 0, 0, 0, 0, 0, False, "", 0,
                            cost is not None, cost, row_id=int(r[0]),
                        )
                    )  # fmt: skip
            conn.executemany(
                "UPDATE usage_log SET priced = ?, cost_nano_usd = ?, price_status = ?, "
                "price_entry = ?, price_attempted_at_ns = ? WHERE id = ? AND NOT priced",
                [
                    (row.priced, row.cost_nano_usd, latest[row.row_id][1], latest[row.row_id][2], now,
                     row.row_id)  # fmt: skip
                    for row in pending
                    if row.row_id is not None
                ],
            )
            deltas = counter_deltas(pending)
            if deltas:
                _bump_spent(conn, deltas, now)
            return sum(1 for row in pending if row.priced)

        return await self._tx(body)

    async def apply_reprice(self, rows: Sequence[UsageRow]) -> int:
        todo = [r for r in rows if r.row_id is not None]
        if not todo:
            return 0
        for r in todo:
            if r.priced and (type(r.cost_nano_usd) is not int or r.cost_nano_usd < 0):
                raise InvalidValue("cost_nano_usd must be a non-negative integer when priced")
        now = time.time_ns()
        sets = ", ".join(f"{c} = ?" for c in REPRICE_COLUMNS)

        def body(conn: sqlite3.Connection) -> int:
            before: dict[int, int] = {}
            ids = [r.row_id for r in todo]
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                for r in conn.execute(
                    f"SELECT id, priced, cost_nano_usd FROM usage_log WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    before[int(r[0])] = int(r[2]) if r[1] and r[2] else 0
            present = [r for r in todo if r.row_id in before]
            conn.executemany(
                f"UPDATE usage_log SET {sets} WHERE id = ?",
                [(*reprice_values(r), r.row_id) for r in present],
            )
            deltas = reprice_deltas(present, before)
            if deltas:
                _bump_spent(conn, deltas, now)
            return len(present)

        return await self._tx(body)

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

        def body(conn: sqlite3.Connection) -> None:
            for t in todo:
                key = (t.scope_kind, t.scope_id, t.period, t.period_start)
                limit = t.limit_nano_usd
                if conn.execute(_RESERVE, (amount_nano_usd, now, *key, amount_nano_usd, limit)).rowcount == 1:
                    continue
                if conn.execute(_RESERVE_NEW, (*key, amount_nano_usd, now, amount_nano_usd, limit)).rowcount != 1:
                    raise _Refused  # it exists and the amount does not fit, or it exceeds the limit
            conn.executemany(
                "INSERT INTO spending_reservations (id, scope_kind, scope_id, period, period_start, "
                "amount_nano_usd, created_at_ns, expires_at_ns, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (res.id, k.scope_kind, k.scope_id, k.period, k.period_start, amount_nano_usd, now,
                     res.expires_at_ns, owner)
                    for k in res.counters
                ],
            )

        try:
            await self._hot_tx(body)
        except _Refused:
            return None
        return res

    @staticmethod
    def _take_sync(conn: sqlite3.Connection, reservation_id: str) -> dict[CounterKey, int] | None:
        """Delete a reservation's rows: what each of its counters holds for it, or None
        if it is gone already (settled, released or expired)."""
        rows = conn.execute(
            "SELECT scope_kind, scope_id, period, period_start, amount_nano_usd "
            "FROM spending_reservations WHERE id = ?",
            (reservation_id,),
        ).fetchall()
        if not rows:
            return None
        conn.execute("DELETE FROM spending_reservations WHERE id = ?", (reservation_id,))
        freed: dict[CounterKey, int] = {}
        for r in rows:
            key = CounterKey(r[0], r[1], r[2], int(r[3]))
            freed[key] = freed.get(key, 0) + int(r[4])
        return freed

    @classmethod
    def _release_sync(cls, conn: sqlite3.Connection, reservation_id: str, now: int) -> bool:
        freed = cls._take_sync(conn, reservation_id)
        if freed is None:
            return False
        _bump_spent(conn, {}, now, freed)
        return True

    def _settle_body(self, reservation: Reservation, usage: UsageRow) -> Callable[[sqlite3.Connection], bool]:
        batch = _normalize_usage([usage], None)
        now = time.time_ns()

        def body(conn: sqlite3.Connection) -> bool:
            # The row's cost and the reservation's release in the same counter updates.
            freed = self._take_sync(conn, reservation.id)
            _finish(self._write_usage_steps(conn, batch, now, freed))
            return freed is not None

        return body

    async def settle(self, reservation: Reservation, usage: UsageRow) -> bool:
        return await self._hot_tx(self._settle_body(reservation, usage))

    def settle_now(self, reservation: Reservation, usage: UsageRow) -> bool | None:
        body = self._settle_body(reservation, usage)
        return self._hot_now(lambda conn: _single_step(body, conn))

    async def release(self, reservation: Reservation) -> bool:
        now = time.time_ns()
        return await self._hot_tx(lambda conn: self._release_sync(conn, reservation.id, now))

    async def release_expired(self, now_ns: int | None = None) -> int:
        now = time.time_ns() if now_ns is None else now_ns

        def body(conn: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT id FROM spending_reservations WHERE expires_at_ns <= ?", (now,)
                )
            ]
            return sum(1 for rid in ids if self._release_sync(conn, rid, now))

        return await self._tx(body)

    async def release_orphaned(self, stale_before_ns: int, now_ns: int | None = None) -> int:
        now = time.time_ns() if now_ns is None else now_ns

        def body(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(self._ORPHANED, (stale_before_ns, stale_before_ns))]
            released = sum(1 for rid in ids if self._release_sync(conn, rid, now))
            conn.execute(self._FORGET_STALE, (stale_before_ns,))
            return released

        return await self._tx(body)


def _split_script(sql: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    buf: list[str] = []
    for line in sql.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            if _has_code(text):
                statements.append(text.strip())
            buf = []
    rest = "".join(buf)
    if _has_code(rest):
        raise InvalidValue("migration ends with an incomplete statement (missing ';'?)")
    return statements


def _has_code(text: str) -> bool:
    return any(line.split("--", 1)[0].strip() for line in text.splitlines())
