"""PostgreSQL: the request path's lone statements on a connection held off the pool
(``plano_fast.store.pg_hot``, issue 27): a usage write or a settle pays no pool
acquire/release; the pool serves whatever arrives while that connection is busy, and a
connection that is lost is replaced in the background with no row lost or counted twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
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
            assert len(acquired) == 6, acquired  # the reservations' own and _ENSURE_COUNTERS
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
        async with open_store(dsn, "unused.db") as store:
            await migrate(store)
            assert await store.write_usage([row("first")]) == 1
            old_pid = await hot_pid(store)
            admin = await asyncpg.connect(dsn)
            try:
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
            finally:
                await admin.close()

    asyncio.run(main())
