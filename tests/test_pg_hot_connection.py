"""PostgreSQL: the request path's lone statements on a connection held off the pool
(``plano_fast.store.pg_hot``, issue 27): a usage write or a settle pays no pool
acquire/release; the pool serves whatever arrives while that connection is busy, and a
connection that is lost is replaced in the background with no row lost or counted twice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.store import BudgetTarget, Store, UsageRow, open_store
from plano_fast.store.migrate import migrate
from tests import pg


@pytest.fixture
def dsn(pg_database: str) -> Iterator[str]:
    with pg.temp_schema(pg_database) as url:
        yield url


def row(request_id: str, cost: int = 7) -> UsageRow:
    return UsageRow(
        request_id=request_id, time_ns=time.time_ns(), project_id="p1", user_id="u1",
        key_hash=None, token_id=None, provider="openai", model="gpt-4o-mini", input_tokens=10,
        output_tokens=2, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
        streaming=False, status="ok", http_status=200, priced=True, cost_nano_usd=cost, duration_us=100,
    )  # fmt: skip


async def hot_pid(store: Store) -> int:
    """The hot connection's backend pid, once the background open has made it."""
    for _ in range(500):
        pid = store._hot.pid  # type: ignore[attr-defined]
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the hot connection was never opened")


@contextlib.asynccontextmanager
async def hot_store(dsn: str, **options: Any) -> AsyncIterator[tuple[Store, int, Any]]:
    """A migrated store whose hot connection is open (one row, "first", cost 7, written),
    that connection's backend pid, and an admin connection of its own."""
    async with open_store(dsn, "unused.db") as plain:  # (migrated with no short timeout)
        await migrate(plain)
    async with open_store(dsn, "unused.db", **options) as store:
        assert await store.write_usage([row("first")]) == 1
        pid = await hot_pid(store)
        admin = await asyncpg.connect(dsn)
        try:
            yield store, pid, admin
        finally:
            await admin.close()


async def spent_and_logged(conn: Any) -> tuple[int, int, int]:
    """(p1's total spent, summed over its shard rows; its reserved; the log's cost)."""
    spent, reserved = await conn.fetchrow(
        "SELECT COALESCE(SUM(spent_nano_usd), 0), COALESCE(SUM(reserved_nano_usd), 0) FROM spending_counters "
        "WHERE scope_kind = 'project' AND scope_id = 'p1' AND period = 'total'")
    logged = await conn.fetchval("SELECT COALESCE(SUM(cost_nano_usd), 0) FROM usage_log WHERE project_id = 'p1'")
    return int(spent), int(reserved), int(logged)


def test_lone_writes_and_settles_take_no_pool_connection(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One request after another (concurrency 1): once the hot connection is open, 20 usage
    writes and 5 reserve + settle pairs acquire a pool connection only for the 5
    reservations and the counters' creation before the first (6; 0 for the writes and
    settles; before: one acquire each, 31); every
    write returns 1, every settle True, and p1's counter ends equal to the log
    (20 * 7 + 5 * 9 = 185) with nothing reserved."""
    acquired: list[int] = []
    original = asyncpg.pool.Pool.acquire

    def acquire(pool: Any, *args: Any, **kwargs: Any) -> Any:
        acquired.append(1)
        return original(pool, *args, **kwargs)

    async def main() -> None:
        async with open_store(dsn, "unused.db") as store:
            await migrate(store)
            assert await store.write_usage([row("first")]) == 1  # (the pool: the hot one opens now)
            await hot_pid(store)
            monkeypatch.setattr(asyncpg.pool.Pool, "acquire", acquire)
            written = [await store.write_usage([row(f"w-{i}")]) for i in range(20)]
            targets = [BudgetTarget("project", "p1", "total", 0, 10**12)]
            settled = []
            for i in range(5):
                res = await store.reserve(targets, 100)
                assert res is not None
                settled.append(await store.settle(res, row(f"s-{i}", 9)))
            monkeypatch.undo()
            assert written == [1] * 20 and settled == [True] * 5
            assert len(acquired) == 1, acquired  # _ENSURE_COUNTERS (the reservations: the hot connection)
            conn = await asyncpg.connect(dsn)
            try:
                assert await spent_and_logged(conn) == (7 + 185, 0, 7 + 185)
            finally:
                await conn.close()

    asyncio.run(main())


def test_writes_beside_a_busy_hot_connection_go_through_the_pool(dsn: str) -> None:
    """Ten usage writes at once: one runs on the hot connection, the rest on the pool at the
    same time (none waits for the hot connection); all ten return 1 and the counter equals
    the log (77)."""

    async def main() -> None:
        async with open_store(dsn, "unused.db", max_size=4) as store:
            await migrate(store)
            assert await store.write_usage([row("first")]) == 1
            await hot_pid(store)
            results = await asyncio.gather(*(store.write_usage([row(f"c-{i}")]) for i in range(10)))
            assert results == [1] * 10
            conn = await asyncpg.connect(dsn)
            try:
                assert await spent_and_logged(conn) == (77, 0, 77)
            finally:
                await conn.close()

    asyncio.run(main())


def test_a_lost_hot_connection_is_replaced_and_nothing_is_counted_twice(dsn: str) -> None:
    """The hot connection's backend is terminated (a server restart, an administrator).
    The next write either finds it closed already and takes the pool (returns 1), or fails
    on it with the connection error (its caller -- the group writer -- hands the row to the
    journaled pipeline, as for a pooled connection that was lost) and the replay returns 1:
    either way the row is written and counted once (a further replay returns 0).  The
    following writes go through the pool while a new hot connection opens in the
    background, then through it (another backend pid); the counter ends equal to the log
    (21)."""

    async def main() -> None:
        async with hot_store(dsn) as (store, old_pid, admin):
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
            await asyncio.sleep(0.2)
            try:
                first_try = await store.write_usage([row("lost")])
            except (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.InterfaceError,
                    asyncpg.exceptions.OperatorInterventionError, OSError):
                first_try = 0
            replay = await store.write_usage([row("lost")])
            assert first_try + replay == 1
            assert await store.write_usage([row("lost")]) == 0  # (once only)
            new_pid = await hot_pid(store)
            assert new_pid != old_pid
            assert await store.write_usage([row("after")]) == 1
            assert await spent_and_logged(admin) == (21, 0, 21)

    asyncio.run(main())


async def lock_counters(admin: Any) -> Any:
    """Every counter row held by an open transaction of ``admin`` (a statement that updates
    one waits); the transaction, to be committed by the caller."""
    tx = admin.transaction()
    await tx.start()
    await admin.execute("SELECT 1 FROM spending_counters FOR UPDATE")
    return tx


async def waiting_on_a_lock(admin: Any, pid: int) -> None:
    """Until backend ``pid`` waits for a lock."""
    for _ in range(1000):
        if await admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited on a lock")


def test_a_usage_write_that_loses_its_connection_mid_statement_is_run_once_more(dsn: str) -> None:
    """A one-row usage write waits on the hot connection for counter rows another
    transaction holds; its backend is terminated there (mid-statement).  The write is run
    once more on another connection (idempotent by request id) and returns 1: the caller
    sees no failure (managed mode's writer would have sent the row to the journal, written
    later).  On main the write raised the connection's error.  Counted once: p1's counter
    equals the log (7 + 7)."""

    async def main() -> None:
        async with hot_store(dsn) as (store, pid, admin):
            tx = await lock_counters(admin)
            write = asyncio.create_task(store.write_usage([row("lost")]))
            await waiting_on_a_lock(admin, pid)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(0.2)  # (the rerun's statement waits on the same rows)
            await tx.commit()
            assert await write == 1
            assert await store.write_usage([row("lost")]) == 0  # (once only)
            assert await spent_and_logged(admin) == (14, 0, 14)

    asyncio.run(main())


def test_a_reservation_runs_on_the_hot_connection_and_survives_its_loss(dsn: str) -> None:
    """A reservation at concurrency 1 runs on the hot connection (its backend is the one
    found waiting).  Terminated there mid-statement, its lost statement is checked and run
    once more (``_reserve_again``, the pid read from the hot connection): the reservation
    is granted exactly once -- one reservation row, 100 reserved, where the limit (150)
    would refuse a second -- and its settle counts the cost and frees it."""

    async def main() -> None:
        async with hot_store(dsn) as (store, pid, admin):
            targets = [BudgetTarget("project", "p1", "total", 0, 157)]
            warm = await store.reserve(targets, 1)  # (counters made; the hot connection reused)
            assert warm is not None and await store.release(warm)
            tx = await lock_counters(admin)
            reserving = asyncio.create_task(store.reserve(targets, 100))
            await waiting_on_a_lock(admin, pid)  # (the hot connection's backend: not the pool's)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(0.2)
            await tx.commit()
            res = await reserving
            assert res is not None
            assert await admin.fetchval("SELECT count(*) FROM spending_reservations") == 1
            assert await spent_and_logged(admin) == (7, 100, 7)
            assert await store.settle(res, row("settled", 50))
            assert await spent_and_logged(admin) == (57, 0, 57)

    asyncio.run(main())


def test_a_timed_out_reservation_on_the_hot_connection_grants_nothing(dsn: str) -> None:
    """A reservation statement times out on the hot connection while waiting for counter
    rows (``command_timeout``).  That connection is closed on this side only: its backend
    still waits, and would commit the reservation once the rows are free -- held for
    nobody until its expiry.  It is ended first, then the reservation given back
    (``_release_later``): once the rows are free, nothing is reserved and no reservation
    row exists."""

    async def main() -> None:
        async with hot_store(dsn, command_timeout=0.5) as (store, pid, admin):
            targets = [BudgetTarget("project", "p1", "total", 0, 10**9)]
            warm = await store.reserve(targets, 1)
            assert warm is not None and await store.release(warm)
            tx = await lock_counters(admin)
            with pytest.raises(TimeoutError):
                await store.reserve(targets, 100)
            for _ in range(500):  # (the background give-back: the backend ended)
                if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                    break
                await asyncio.sleep(0.01)
            await tx.commit()
            for _ in range(500):
                if not store._releases:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
            assert await admin.fetchval("SELECT count(*) FROM spending_reservations") == 0
            assert await spent_and_logged(admin) == (7, 0, 7)

    asyncio.run(main())
