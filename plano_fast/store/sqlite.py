"""SQLite store: stdlib ``sqlite3``, WAL mode, one connection owned by one thread.

Every call runs on a single-thread executor that owns the connection, so the event loop
never blocks on disk and writes from this process are serialized.  Multi-statement writes
use ``BEGIN IMMEDIATE`` (take the write lock up front; ``busy_timeout`` waits for other
processes sharing the file), so a read-then-write inside one never races another writer.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from plano_fast.store import (
    PRICE_STATUS_PENDING,
    PRICE_STATUS_PRICED,
    AlreadyExists,
    BudgetTarget,
    CounterKey,
    DaySums,
    InvalidValue,
    MissingReference,
    Reservation,
    Row,
    SqlStore,
    Stmt,
    StoreError,
    UsageRow,
    add_day_sums,
    check_targets,
    counter_deltas,
    deltas_of_day_sums,
    new_id,
    normalize_usage,
)

T = TypeVar("T")

# sqlite3 binds int, float, str and bytes directly but sends every other value through its
# adapter lookup, which for None (user_id, token_id, cost ... on most usage rows) fails two
# attribute lookups, each formatting and dropping an AttributeError: ~3k instructions per
# None, measured under callgrind on the writer thread, which holds the GIL while it binds.
# A registered adapter is one dict hit; ``{}.get(None)`` is None, and a C call (no Python
# frame).  Process-wide, and harmless to any other sqlite3 user: None still binds as NULL.
_NONE_TO_NULL: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NONE_TO_NULL.get)

_INSERT_USAGE = (
    "INSERT INTO usage_log (request_id, time_ns, project_id, user_id, key_hash, token_id, "
    "provider, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "reasoning_tokens, streaming, status, http_status, priced, cost_nano_usd, duration_us, "
    "price_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (request_id) DO NOTHING"
)
# Rows per multi-row INSERT (20 columns each, under SQLite's 32,766 variables).  One
# statement means one sqlite3_step, so the writer thread releases and re-takes the GIL once
# per chunk instead of once per row: with the event loop busy in the other thread, the
# per-row hand-offs cost more CPU than the inserts themselves (measured with py-spy).  But
# the writer holds the GIL while it builds and binds a chunk's parameters, and the event
# loop waits that long: 128 rows (params ~0.03 ms; 500 rows with the old per-row tuples
# took ~0.3 ms) at no measurable cost in throughput (benchmarks/bench_store.py).  A batch is split into full
# chunks and then power-of-two pieces, so only 8 statement shapes exist (each prepared once,
# then cached by sqlite3).
_INSERT_CHUNK = 128
_INSERT_HEAD, _, _INSERT_TAIL = _INSERT_USAGE.partition(
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ROW_MARKS = "(" + ",".join("?" * 20) + ")"


@functools.cache
def _multi_insert(n: int) -> str:
    return _INSERT_HEAD + "VALUES " + ",".join([_ROW_MARKS] * n) + _INSERT_TAIL


def _chunk_sizes(n: int) -> list[int]:
    """``n`` rows as full chunks then decreasing powers of two (8 statement shapes at most)."""
    full, rest = divmod(n, _INSERT_CHUNK)
    sizes = [_INSERT_CHUNK] * full
    bit = 1 << max(0, rest.bit_length() - 1)
    while rest:
        if rest & bit:
            sizes.append(bit)
            rest ^= bit
        bit >>= 1
    return sizes


_BUMP_SPENT = (
    "INSERT INTO spending_counters (scope_kind, scope_id, period, period_start, "
    "spent_nano_usd, reserved_nano_usd, updated_at_ns) VALUES (?, ?, ?, ?, ?, 0, ?) "
    "ON CONFLICT (scope_kind, scope_id, period, period_start) DO UPDATE SET "
    "spent_nano_usd = spent_nano_usd + excluded.spent_nano_usd, updated_at_ns = excluded.updated_at_ns"
)
# One atomic statement per counter: create it holding the reservation if it is new and the
# amount fits, otherwise add to reserved only if spent + reserved + amount <= limit.
_RESERVE = (
    "INSERT INTO spending_counters (scope_kind, scope_id, period, period_start, "
    "spent_nano_usd, reserved_nano_usd, updated_at_ns) SELECT ?, ?, ?, ?, 0, ?, ? WHERE ? <= ? "
    "ON CONFLICT (scope_kind, scope_id, period, period_start) DO UPDATE SET "
    "reserved_nano_usd = reserved_nano_usd + excluded.reserved_nano_usd, "
    "updated_at_ns = excluded.updated_at_ns "
    "WHERE spent_nano_usd + reserved_nano_usd + excluded.reserved_nano_usd <= ?"
)
_UNRESERVE = (
    "UPDATE spending_counters SET reserved_nano_usd = reserved_nano_usd - ?, updated_at_ns = ? "
    "WHERE scope_kind = ? AND scope_id = ? AND period = ? AND period_start = ?"
)
_CHUNK = 500  # bound parameters per IN (...) list; old SQLite builds allow only 999


def _translate(exc: sqlite3.IntegrityError) -> StoreError:
    msg = str(exc)
    if "UNIQUE" in msg or "PRIMARY KEY" in msg:
        return AlreadyExists(msg)
    if "FOREIGN KEY" in msg:
        return MissingReference(msg)
    return InvalidValue(msg)


def _usage_params(row: UsageRow) -> tuple[object, ...]:
    # Booleans are bound as the ints SQLite stores anyway: sqlite3 binds only exact int,
    # float, str and None-free types directly and sends the rest through its adapter
    # lookup, which formats and discards an AttributeError per value (~2,000 instructions).
    priced = 1 if row.priced else 0
    return (
        row.request_id, row.time_ns, row.project_id, row.user_id, row.key_hash, row.token_id,
        row.provider, row.model, row.input_tokens, row.output_tokens, row.cache_read_tokens,
        row.cache_write_tokens, row.reasoning_tokens, 1 if row.streaming else 0, row.status,
        row.http_status, priced, row.cost_nano_usd if priced else None, row.duration_us,
        PRICE_STATUS_PRICED if priced else PRICE_STATUS_PENDING,
    )  # fmt: skip


def _chunk_params(rows: Sequence[UsageRow]) -> list[object]:
    """The parameters of ``_multi_insert(len(rows))``: ``_usage_params`` of each row, flat."""
    params: list[object] = []
    add = params.extend
    for r in rows:
        if r.priced is True:  # the common shapes, without the per-row tuple and calls
            add((
                r.request_id, r.time_ns, r.project_id, r.user_id, r.key_hash, r.token_id,
                r.provider, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens,
                r.cache_write_tokens, r.reasoning_tokens, 1 if r.streaming else 0, r.status,
                r.http_status, 1, r.cost_nano_usd, r.duration_us, PRICE_STATUS_PRICED,
            ))  # fmt: skip
        elif r.priced is False:
            add((
                r.request_id, r.time_ns, r.project_id, r.user_id, r.key_hash, r.token_id,
                r.provider, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens,
                r.cache_write_tokens, r.reasoning_tokens, 1 if r.streaming else 0, r.status,
                r.http_status, 0, None, r.duration_us, PRICE_STATUS_PENDING,
            ))  # fmt: skip
        else:
            add(_usage_params(r))
    return params


class _Refused(Exception):
    pass


class SqliteStore(SqlStore):
    kind = "sqlite"

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

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
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # only ever used on the executor's one thread
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode = WAL").fetchall()
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA temp_store = MEMORY")
            except BaseException:
                conn.close()
                raise
            return conn

        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, connect)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        executor, conn = self._executor, self._conn
        if executor is None:
            return
        self._executor = None
        self._conn = None
        if conn is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

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
    def _write_usage_sync(conn: sqlite3.Connection, rows: list[UsageRow], now: int) -> int:
        """Insert + count; the caller holds the write lock (BEGIN IMMEDIATE)."""
        if not rows:
            return 0
        # New rows get ids above the current maximum (INTEGER PRIMARY KEY, and nobody else
        # can write while we hold the lock): that tells which rows the insert skipped.
        before = conn.execute("SELECT COALESCE(MAX(id), 0) FROM usage_log").fetchone()[0]
        inserted = 0
        sums: DaySums = {}  # what the chunks cost, summed while each one is fully inserted
        start = 0
        for size in _chunk_sizes(len(rows)):
            chunk = rows[start : start + size]
            start += size
            n = conn.execute(_multi_insert(size), _chunk_params(chunk)).rowcount
            inserted += n
            if inserted == start:  # nothing skipped so far (the common case)
                add_day_sums(chunk, sums)
        if inserted == len(rows):
            deltas = deltas_of_day_sums(sums)
            written = inserted
        else:
            fresh = {r[0] for r in conn.execute("SELECT request_id FROM usage_log WHERE id > ?", (before,))}
            new = [r for r in rows if r.request_id in fresh]
            if len(new) != inserted:  # cannot happen under the lock; never count blindly
                raise StoreError(f"usage insert wrote {inserted} rows but {len(new)} are new")
            deltas = counter_deltas(new)
            written = len(new)
        if deltas:
            conn.executemany(
                _BUMP_SPENT,
                [(k.scope_kind, k.scope_id, k.period, k.period_start, v, now) for k, v in sorted(deltas.items())],
            )
        return written

    def rejects_data(self, exc: BaseException) -> bool:
        # A CHECK constraint, or an integer over 64 bits (OverflowError while binding).
        return isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)) or super().rejects_data(exc)

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        if not rows:
            return 0
        given = list(rows)
        now = time.time_ns()

        def body(conn: sqlite3.Connection) -> int:
            # Validated on the writer thread: the event loop has enough work of its own.
            return self._write_usage_sync(conn, normalize_usage(given), now)

        return await self._tx(body)

    async def set_prices(self, results: Sequence[tuple[int, int | None, str]]) -> int:
        latest: dict[int, tuple[int | None, str]] = {}
        for row_id, cost, status in results:
            if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 0):
                raise InvalidValue("cost_nano_usd must be a non-negative integer or None")
            latest[int(row_id)] = (cost, status)
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
                    cost, _ = latest[int(r[0])]
                    pending.append(
                        UsageRow(
                            "", int(r[1]), r[2], r[3], r[4], None, "", None, 0, 0, 0, 0, 0, False, "", 0,
                            cost is not None, cost, row_id=int(r[0]),
                        )
                    )  # fmt: skip
            conn.executemany(
                "UPDATE usage_log SET priced = ?, cost_nano_usd = ?, price_status = ?, "
                "price_attempted_at_ns = ? WHERE id = ? AND NOT priced",
                [
                    (row.priced, row.cost_nano_usd, latest[row.row_id][1], now, row.row_id)
                    for row in pending
                    if row.row_id is not None
                ],
            )
            deltas = counter_deltas(pending)
            if deltas:
                conn.executemany(
                    _BUMP_SPENT,
                    [(k.scope_kind, k.scope_id, k.period, k.period_start, v, now) for k, v in sorted(deltas.items())],
                )
            return sum(1 for row in pending if row.priced)

        return await self._tx(body)

    # -- hard budgets -------------------------------------------------------------------------

    async def reserve(
        self, targets: Sequence[BudgetTarget], amount_nano_usd: int, *, ttl_s: float = 600.0
    ) -> Reservation | None:
        todo = check_targets(targets, amount_nano_usd)
        now = time.time_ns()
        res = Reservation(new_id(), amount_nano_usd, tuple(t.key for t in todo), now + int(ttl_s * 1e9))

        def body(conn: sqlite3.Connection) -> None:
            for t in todo:
                key = (t.scope_kind, t.scope_id, t.period, t.period_start)
                limit = t.limit_nano_usd
                cur = conn.execute(_RESERVE, (*key, amount_nano_usd, now, amount_nano_usd, limit, limit))
                if cur.rowcount != 1:
                    raise _Refused
            conn.executemany(
                "INSERT INTO spending_reservations (id, scope_kind, scope_id, period, period_start, "
                "amount_nano_usd, created_at_ns, expires_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (res.id, k.scope_kind, k.scope_id, k.period, k.period_start, amount_nano_usd, now, res.expires_at_ns)
                    for k in res.counters
                ],
            )

        try:
            await self._tx(body)
        except _Refused:
            return None
        return res

    @staticmethod
    def _release_sync(conn: sqlite3.Connection, reservation_id: str, now: int) -> bool:
        rows = conn.execute(
            "SELECT scope_kind, scope_id, period, period_start, amount_nano_usd "
            "FROM spending_reservations WHERE id = ?",
            (reservation_id,),
        ).fetchall()
        if not rows:
            return False
        conn.execute("DELETE FROM spending_reservations WHERE id = ?", (reservation_id,))
        held = sorted((CounterKey(r[0], r[1], r[2], int(r[3])), int(r[4])) for r in rows)
        conn.executemany(
            _UNRESERVE, [(amount, now, k.scope_kind, k.scope_id, k.period, k.period_start) for k, amount in held]
        )
        return True

    async def settle(self, reservation: Reservation, usage: UsageRow) -> bool:
        batch = normalize_usage([usage])
        now = time.time_ns()

        def body(conn: sqlite3.Connection) -> bool:
            self._write_usage_sync(conn, batch, now)
            return self._release_sync(conn, reservation.id, now)

        return await self._tx(body)

    async def release(self, reservation: Reservation) -> bool:
        now = time.time_ns()
        return await self._tx(lambda conn: self._release_sync(conn, reservation.id, now))

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
