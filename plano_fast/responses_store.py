"""Conversation state shared across processes: SQLite and PostgreSQL backends of the
Responses API state (``plano_fast.responses_state`` holds the in-memory one and the logic).

Config (Plano's ``state_storage``, or its older name ``state_storage_v1_responses``):

* ``type: sqlite`` (``path``, default the gateway's ``sqlite_path``): a SQLite file every
  worker and every gateway process on the host shares (WAL mode);
* ``type: postgres`` with Plano's ``connection_string`` (default: the gateway's
  ``database_url``): any number of gateways;
* ``type: store``: the gateway's own store, PostgreSQL when ``database_url`` is set, else
  its SQLite file;
* common: ``ttl_s`` (default 24 h after the write), ``max_conversation_bytes`` (default
  4 MiB of JSON per stored conversation; a longer one is not stored), ``sweep_interval_s``
  (expired rows deleted, default 300 s).

One row per stored response (table ``response_states``, migration 0005; created here too
when absent, e.g. in a PostgreSQL that is not the gateway's own): its id, owner (the
caller's key hash), model, provider, the conversation's input items (history included),
the turn's output items, the answer as the client got it (for GET), and its times.  In
managed mode the ids of a turn's output items are kept too (table
``response_state_items``: owner, item id, expiry; created by this module when absent, no
numbered migration), so a later body sending such an item back by id (a reasoning item
without its ``encrypted_content``) can be told to be the owner's own
(``owned_items``, plano_fast.responses_managed).  Deleting a response leaves its items'
ids until they expire: the provider still holds the items.

These stores have their own connections (SQLite: one connection used on the event loop
and one on a thread of its own; PostgreSQL: an asyncpg pool), opened on first use, so a
database that is away costs the requests that need it (503 for a
``previous_response_id``; a write is logged and dropped) and nothing else.  Writes never
wait on the event loop: PostgreSQL is asyncpg; SQLite follows the usage store's
loop-owned pattern (``plano_fast.store.sqlite``): rows up to ``LOOP_ROW_BYTES`` and reads
by key run on the loop with ``busy_timeout = 0`` (a lock held by another process is waited
for with ``asyncio.sleep``, 1 -> 16 ms, up to ``busy_timeout_ms``), without checkpoints
there (a passive one runs on the thread at most once a second); bigger rows go to the
thread.  Measured (``python -m benchmarks.bench_responses --requests 1000 --state
sqlite``, gateway CPU per request, Responses -> chat, JSON): no state 180 us, memory 210,
SQLite 270 (all writes on the thread: 320); a continued turn (read, expand, write):
memory 220, SQLite 370 (thread: 620).  A
write is started as the answer completes, before its last bytes are sent; its entry is
readable in this process at once (``_pending``), and a miss is read again for up to
``MISS_GRACE_S`` since the previous turn's write may still be landing from another process.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from plano_fast.convert._common import dumps, loads

__all__ = ["MISS_GRACE_S", "PostgresResponseStore", "SharedResponseStore", "SqliteResponseStore",
           "StateUnavailable"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how long a miss is re-read (another process may still be writing the previous turn)
MISS_GRACE_S = 0.25
_MISS_RETRY_S = (0.01, 0.02, 0.04, 0.08, 0.1)

_COLUMNS = ("id, owner, model, provider, input_items, output_items, response, "
            "created_at_ns, expires_at_ns")


#: the output items' ids of managed turns (IF NOT EXISTS: run on every open)
_ITEMS_DDL = (
    "CREATE TABLE IF NOT EXISTS response_state_items ("
    " owner TEXT NOT NULL, item_id TEXT NOT NULL, expires_at_ns BIGINT NOT NULL,"
    " PRIMARY KEY (owner, item_id))",
    "CREATE INDEX IF NOT EXISTS response_state_items_expires ON response_state_items (expires_at_ns)",
)


class StateUnavailable(RuntimeError):
    """The state database cannot be reached (the request needing it gets a 503)."""


def _migration_sql(kind: str) -> str:
    path = importlib.resources.files("plano_fast").joinpath(
        "migrations", kind, "0005_response_states.sql")
    return path.read_text(encoding="utf-8")


class SharedResponseStore:
    """What the SQL backends share: caps, expiry, the writes in flight, the miss grace."""

    kind = "shared"

    def __init__(self, *, ttl_s: float, max_conversation_bytes: int, sweep_interval_s: float = 300.0,
                 miss_grace_s: float = MISS_GRACE_S) -> None:
        self.ttl_s = ttl_s
        self.max_conversation_bytes = max_conversation_bytes
        self.sweep_interval_s = sweep_interval_s
        self.miss_grace_s = miss_grace_s
        self._pending: dict[str, Any] = {}  # id -> StoredResponse being written
        self._pending_items: dict[str, tuple[str, tuple[str, ...]]] = {}  # id -> (owner, item ids)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._open_lock: asyncio.Lock | None = None
        self._opened = False
        self._next_sweep = 0.0
        self.writes_failed = 0

    # -- backend hooks ------------------------------------------------------------------
    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def _select(self, response_id: str, owner: str, now_ns: int) -> tuple[Any, ...] | None:
        raise NotImplementedError

    async def _insert(self, values: tuple[Any, ...]) -> None:
        raise NotImplementedError

    async def _delete(self, response_id: str, owner: str, now_ns: int) -> bool:
        raise NotImplementedError

    async def _insert_items(self, owner: str, item_ids: tuple[str, ...], expires_at_ns: int) -> None:
        raise NotImplementedError

    async def _select_items(self, owner: str, item_ids: list[str], now_ns: int) -> set[str]:
        raise NotImplementedError

    async def _sweep(self, now_ns: int) -> int:
        raise NotImplementedError

    # -- the store interface (see responses_state) ------------------------------------
    async def ensure_open(self) -> None:
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._opened:
                return
            try:
                await self._open()
            except Exception as exc:  # noqa: BLE001 - any reason the database is away
                raise StateUnavailable(f"{self.kind} conversation state unavailable: "
                                       f"{type(exc).__name__}: {exc}") from None
            self._opened = True

    async def fetch(self, response_id: str, owner: str) -> Any:
        """The caller's stored response, or None (unknown, expired, another owner's)."""
        from plano_fast.responses_state import StoredResponse

        entry = self._pending.get(response_id)
        if entry is not None:
            return entry if entry.owner == owner else None
        await self.ensure_open()
        deadline = time.monotonic() + self.miss_grace_s
        for pause in (0.0, *_MISS_RETRY_S):
            if pause:
                if time.monotonic() + pause > deadline:
                    break
                await asyncio.sleep(pause)
                entry = self._pending.get(response_id)
                if entry is not None:
                    return entry if entry.owner == owner else None
            try:
                row = await self._select(response_id, owner, time.time_ns())
            except Exception as exc:  # noqa: BLE001
                raise StateUnavailable(f"conversation state read failed: {type(exc).__name__}") from None
            if row is not None:
                rid, row_owner, model, provider, inputs, outputs, response, created_ns, _ = row
                return StoredResponse(
                    rid, row_owner, model, provider, [*loads(inputs), *loads(outputs)],
                    created_ns / 1e9, None if response is None else loads(response),
                )
        return None

    def put(self, entry: Any, output_count: int = 0, item_ids: tuple[str, ...] = ()) -> bool:
        """Start writing ``entry`` (its last ``output_count`` items are the turn's output;
        ``item_ids``: their ids, kept for ``owned_items``); False (nothing stored) when the
        conversation is over the cap."""
        items = entry.items
        split = len(items) - output_count
        inputs, outputs = dumps(items[:split]), dumps(items[split:])
        if len(inputs) + len(outputs) > self.max_conversation_bytes:
            return False
        now_ns = time.time_ns()
        entry.stored_at_s = now_ns / 1e9
        values = (entry.id, entry.owner, entry.model, entry.provider, inputs.decode(), outputs.decode(),
                  None if entry.response is None else dumps(entry.response).decode(),
                  now_ns, now_ns + int(self.ttl_s * 1e9))
        self._pending[entry.id] = entry
        if item_ids:
            self._pending_items[entry.id] = (entry.owner, item_ids)
        task = asyncio.get_running_loop().create_task(self._write(entry.id, values, item_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _write(self, response_id: str, values: tuple[Any, ...], item_ids: tuple[str, ...] = ()) -> None:
        try:
            await self.ensure_open()
            await self._insert(values)
            if item_ids:
                await self._insert_items(values[1], item_ids, values[8])
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + self.sweep_interval_s
                await self._sweep(time.time_ns())
        except Exception as exc:  # noqa: BLE001 - the answer was sent; the state is lost
            self.writes_failed += 1
            log.warning("conversation state for %s not stored: %s: %s", response_id,
                        type(exc).__name__, exc)
        finally:
            self._pending.pop(response_id, None)
            self._pending_items.pop(response_id, None)

    async def owned_items(self, owner: str, item_ids: list[str]) -> set[str]:
        """Those of ``item_ids`` that are output items of ``owner``'s stored, unexpired
        answers (a miss is read again for ``miss_grace_s``: the turn that answered them may
        still be written by another process)."""
        found: set[str] = set()
        for pending_owner, ids in list(self._pending_items.values()):
            if pending_owner == owner:
                found.update(i for i in ids if i in item_ids)
        if len(found) == len(set(item_ids)):
            return found
        await self.ensure_open()
        deadline = time.monotonic() + self.miss_grace_s
        for pause in (0.0, *_MISS_RETRY_S):
            if pause:
                if time.monotonic() + pause > deadline:
                    break
                await asyncio.sleep(pause)
            try:
                found |= await self._select_items(owner, [i for i in item_ids if i not in found], time.time_ns())
            except Exception as exc:  # noqa: BLE001
                raise StateUnavailable(f"conversation state read failed: {type(exc).__name__}") from None
            if len(found) == len(set(item_ids)):
                break
        return found

    async def remove(self, response_id: str, owner: str) -> bool:
        entry = self._pending.get(response_id)
        if entry is not None and entry.owner == owner:
            await self.flush()
        await self.ensure_open()
        try:
            return await self._delete(response_id, owner, time.time_ns())
        except Exception as exc:  # noqa: BLE001
            raise StateUnavailable(f"conversation state delete failed: {type(exc).__name__}") from None

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait for the writes in flight (bounded)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def close(self) -> None:
        await self.flush()
        if self._opened:
            self._opened = False
            await self._close()


#: item ids a SQLite statement carries (3 variables each; old builds allow 999 a statement)
_ITEMS_A_STATEMENT = 300

#: SQLite rows up to this size are written on the event loop, bigger ones on the thread
LOOP_ROW_BYTES = 64 * 1024


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteResponseStore(SharedResponseStore):
    """SQLite in WAL mode (shared by every process on the host): a loop-owned connection
    for reads and small writes, a thread's for big writes and checkpoints."""

    kind = "sqlite"

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None  # the thread's
        self._loop_conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._next_checkpoint = 0.0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connect(self) -> None:
        if self.path != ":memory:":
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'response_states'"
            ).fetchone()
            if exists is None:
                conn.executescript("BEGIN IMMEDIATE;\n" + _migration_sql("sqlite") + "\nCOMMIT;")
            for statement in _ITEMS_DDL:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="response-state")
        await self._run(self._connect)
        if self.path != ":memory:":
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._loop_conn = conn

    async def _close(self) -> None:
        loop_conn, self._loop_conn = self._loop_conn, None
        if loop_conn is not None:
            loop_conn.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _conn_now(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    async def _on_loop(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """One statement on the loop-owned connection; a busy database is waited for
        asynchronously (never inside SQLite, which would block the loop)."""
        conn = self._loop_conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_timeout_ms / 1000
        pause = 0.001
        while True:
            try:
                return conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or loop.time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.016)

    async def _select(self, response_id: str, owner: str, now_ns: int) -> tuple[Any, ...] | None:
        sql = f"SELECT {_COLUMNS} FROM response_states WHERE id = ? AND owner = ? AND expires_at_ns > ?"
        params = (response_id, owner, now_ns)
        if self._loop_conn is not None:
            row = (await self._on_loop(sql, params)).fetchone()
            return tuple(row) if row is not None else None

        def run() -> tuple[Any, ...] | None:
            found = self._conn_now().execute(sql, params).fetchone()
            return tuple(found) if found is not None else None
        return await self._run(run)

    async def _insert(self, values: tuple[Any, ...]) -> None:
        sql = f"INSERT OR REPLACE INTO response_states ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        size = len(values[4]) + len(values[5]) + len(values[6] or "")
        if self._loop_conn is not None and size <= LOOP_ROW_BYTES:
            await self._on_loop(sql, values)
            now = time.monotonic()
            if now >= self._next_checkpoint:  # the loop's connection never checkpoints
                self._next_checkpoint = now + 1.0
                await self._run(lambda: self._conn_now().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
            return
        await self._run(lambda: self._conn_now().execute(sql, values))

    async def _insert_items(self, owner: str, item_ids: tuple[str, ...], expires_at_ns: int) -> None:
        # one statement (one commit) for a turn's items, in chunks under SQLite's 999-variable
        # limit of older builds; a turn has a few
        for start in range(0, len(item_ids), _ITEMS_A_STATEMENT):
            chunk = item_ids[start:start + _ITEMS_A_STATEMENT]
            sql = ("INSERT OR REPLACE INTO response_state_items (owner, item_id, expires_at_ns) VALUES "
                   + ", ".join(["(?, ?, ?)"] * len(chunk)))
            params = tuple(v for item_id in chunk for v in (owner, item_id, expires_at_ns))
            if self._loop_conn is not None:
                await self._on_loop(sql, params)
            else:
                await self._run(lambda: self._conn_now().execute(sql, params))  # noqa: B023 - awaited here

    async def _select_items(self, owner: str, item_ids: list[str], now_ns: int) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(item_ids), _ITEMS_A_STATEMENT):
            chunk = item_ids[start:start + _ITEMS_A_STATEMENT]
            sql = (f"SELECT item_id FROM response_state_items WHERE owner = ? AND item_id IN "
                   f"({', '.join('?' * len(chunk))}) AND expires_at_ns > ?")
            params = (owner, *chunk, now_ns)
            if self._loop_conn is not None:
                found.update(row[0] for row in (await self._on_loop(sql, params)).fetchall())
            else:
                found.update(await self._run(lambda: [r[0] for r in self._conn_now().execute(sql, params)]))  # noqa: B023
        return found

    async def _delete(self, response_id: str, owner: str, now_ns: int) -> bool:
        def run() -> bool:
            cur = self._conn_now().execute(
                "DELETE FROM response_states WHERE id = ? AND owner = ? AND expires_at_ns > ?",
                (response_id, owner, now_ns),
            )
            return cur.rowcount > 0
        return await self._run(run)

    async def _sweep(self, now_ns: int) -> int:
        def run() -> int:
            cur = self._conn_now().execute("DELETE FROM response_states WHERE expires_at_ns <= ?", (now_ns,))
            self._conn_now().execute("DELETE FROM response_state_items WHERE expires_at_ns <= ?", (now_ns,))
            return cur.rowcount
        return await self._run(run)


class PostgresResponseStore(SharedResponseStore):
    """An asyncpg pool of its own (``connection_string``)."""

    kind = "postgres"

    def __init__(self, dsn: str, *, max_connections: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dsn = dsn
        self.max_connections = max_connections
        self._pool: Any = None

    async def _open(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.max_connections, timeout=10)
        try:
            async with pool.acquire() as conn:
                exists = await conn.fetchval("SELECT to_regclass('response_states') IS NOT NULL")
                if not exists:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(7380986161473074547)")
                        if not await conn.fetchval("SELECT to_regclass('response_states') IS NOT NULL"):
                            await conn.execute(_migration_sql("postgres"))
                if not await conn.fetchval("SELECT to_regclass('response_state_items') IS NOT NULL"):
                    async with conn.transaction():  # (the lock: two gateways creating it at once)
                        await conn.execute("SELECT pg_advisory_xact_lock(7380986161473074547)")
                        for statement in _ITEMS_DDL:
                            await conn.execute(statement)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.wait_for(pool.close(), 5.0)

    async def _select(self, response_id: str, owner: str, now_ns: int) -> tuple[Any, ...] | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM response_states WHERE id = $1 AND owner = $2 AND expires_at_ns > $3",
            response_id, owner, now_ns,
        )
        return tuple(row) if row is not None else None

    async def _insert(self, values: tuple[Any, ...]) -> None:
        await self._pool.execute(
            f"INSERT INTO response_states ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, model = EXCLUDED.model, "
            "provider = EXCLUDED.provider, input_items = EXCLUDED.input_items, "
            "output_items = EXCLUDED.output_items, response = EXCLUDED.response, "
            "created_at_ns = EXCLUDED.created_at_ns, expires_at_ns = EXCLUDED.expires_at_ns",
            *values,
        )

    async def _insert_items(self, owner: str, item_ids: tuple[str, ...], expires_at_ns: int) -> None:
        await self._pool.execute(
            "INSERT INTO response_state_items (owner, item_id, expires_at_ns) "
            "SELECT $1, unnest($2::text[]), $3 "
            "ON CONFLICT (owner, item_id) DO UPDATE SET expires_at_ns = EXCLUDED.expires_at_ns",
            owner, list(item_ids), expires_at_ns,
        )

    async def _select_items(self, owner: str, item_ids: list[str], now_ns: int) -> set[str]:
        rows = await self._pool.fetch(
            "SELECT item_id FROM response_state_items WHERE owner = $1 AND item_id = ANY($2::text[]) "
            "AND expires_at_ns > $3",
            owner, item_ids, now_ns,
        )
        return {row[0] for row in rows}

    async def _delete(self, response_id: str, owner: str, now_ns: int) -> bool:
        status = await self._pool.execute(
            "DELETE FROM response_states WHERE id = $1 AND owner = $2 AND expires_at_ns > $3",
            response_id, owner, now_ns,
        )
        return str(status).endswith(" 1")

    async def _sweep(self, now_ns: int) -> int:
        status = await self._pool.execute("DELETE FROM response_states WHERE expires_at_ns <= $1", now_ns)
        await self._pool.execute("DELETE FROM response_state_items WHERE expires_at_ns <= $1", now_ns)
        return int(str(status).rsplit(" ", 1)[-1] or 0)
