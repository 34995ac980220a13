from __future__ import annotations
import asyncio, time
from typing import Any
import asyncpg, pytest
from plano_fast.store import BudgetTarget, open_store
from plano_fast.store.migrate import migrate
from tests.test_store_pg_batch import dsn, row  # noqa: F401

T = [BudgetTarget("project", "tmo", "total", 0, 10**9)]

@pytest.mark.parametrize("kind", ["settle", "reserve"])
def test_a_timeout_is_not_run_once_more(dsn: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """command_timeout 0.5 s; the counter row locked by another transaction: a timed-out
    statement must fail after ~0.5 s, not be retried as a lost connection (~1 s)."""
    calls = []
    orig = asyncpg.connection.Connection.fetchval
    async def fetchval(conn: Any, query: str, *a: Any, **k: Any) -> Any:
        if "spending_reservations" in query:
            calls.append(query[:30])
        return await orig(conn, query, *a, **k)
    async def main() -> None:
        async with open_store(dsn, "unused.db", max_size=5, command_timeout=0.5) as store:
            await migrate(store)
            held = await store.reserve(T, 5)
            lock = await asyncpg.connect(dsn)
            tx = lock.transaction(); await tx.start()
            await lock.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'tmo' FOR UPDATE")
            monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                if kind == "settle":
                    await store.settle(held, row(1, project="tmo"))
                else:
                    await store.reserve(T, 5)
            took = time.monotonic() - t0
            await tx.rollback(); await lock.close()
            assert len(calls) == 1 and took < 0.9, (calls, took)
    asyncio.run(main())


def test_a_rerun_refused_because_the_lost_statement_committed_meanwhile(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lost statement's backend is still running (blocked on a counter lock) when
    _reserve_again looks for its rows: none yet, so it reruns; the lost one gets the lock
    first and commits; the rerun, seeing that reservation, no longer fits and refuses
    (no row inserted: no primary-key collision).  The caller is told None while its own
    reservation holds the budget until expiry."""
    T1 = [BudgetTarget("project", "orph", "total", 0, 100)]
    orig = asyncpg.connection.Connection.fetchval
    state: dict[str, Any] = {}

    async def fetchval(conn: Any, query: str, *a: Any, **k: Any) -> Any:
        if "INSERT INTO spending_reservations" in query and "orphan" not in state:
            state["orphan"] = asyncio.ensure_future(orig(state["side"], query, *a, **k))
            await asyncio.sleep(0.3)  # blocked on the lock
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await orig(conn, query, *a, **k)

    async def main() -> None:
        async with open_store(dsn, "unused.db", max_size=5) as store:
            await migrate(store)
            first = await store.reserve(T1, 1)
            assert first is not None and await store.release(first)  # the counter exists
            state["side"] = await asyncpg.connect(dsn)
            lock = await asyncpg.connect(dsn)
            tx = lock.transaction(); await tx.start()
            await lock.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'orph' FOR UPDATE")
            monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)

            async def unlock() -> None:
                await asyncio.sleep(0.8)
                await tx.commit()
            u = asyncio.ensure_future(unlock())
            got = await store.reserve(T1, 100)
            await u
            await state["orphan"]
            monkeypatch.undo()
            held = await store.get_counter(T1[0].key)
            rows = await lock.fetch("SELECT id FROM spending_reservations")
            await lock.close(); await state["side"].close()
            assert not (got is None and held.reserved_nano_usd == 100), (got, held, rows)
    asyncio.run(main())
