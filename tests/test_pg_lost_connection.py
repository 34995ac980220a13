"""PostgreSQL store: what a request-path statement does when its connection is lost, and
what it does not do when it merely ran out of time (plano_fast/store/postgres.py,
``_once_more_if_lost`` and ``_reserve_again``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.store import BudgetTarget, open_store
from plano_fast.store.migrate import migrate
from tests.test_store_pg_batch import dsn, row  # noqa: F401 - fixture

TIMEOUT_TARGETS = [BudgetTarget("project", "tmo", "total", 0, 10**9)]


@pytest.mark.parametrize("kind", ["settle", "reserve"])
def test_a_timed_out_statement_is_not_run_once_more(dsn: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: a statement past ``command_timeout`` raised TimeoutError, an OSError, which was
    taken for a lost connection: the settle (or reservation) was run once more and its
    caller waited twice the timeout.  Now the TimeoutError goes to the caller after one
    run.  (The counter row is locked by another transaction, so each run times out.)"""
    calls: list[str] = []
    orig = asyncpg.connection.Connection.fetchval

    async def fetchval(conn: Any, query: str, *a: Any, **k: Any) -> Any:
        if "spending_reservations" in query:
            calls.append(query[:30])
        return await orig(conn, query, *a, **k)

    async def main() -> None:
        async with open_store(dsn, "unused.db", max_size=5, command_timeout=0.5) as store:
            await migrate(store)
            held = await store.reserve(TIMEOUT_TARGETS, 5)
            lock = await asyncpg.connect(dsn)
            tx = lock.transaction()
            await tx.start()
            await lock.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'tmo' FOR UPDATE")
            monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                if kind == "settle":
                    await store.settle(held, row(1, project="tmo"))
                else:
                    await store.reserve(TIMEOUT_TARGETS, 5)
            took = time.monotonic() - t0
            monkeypatch.undo()
            await tx.rollback()
            await lock.close()
            assert len(calls) == 1 and took < 0.9, (calls, took)

    asyncio.run(main())


def test_a_rerun_refused_because_the_lost_statement_committed_meanwhile_answers_its_rows(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lost reservation's backend is still running (blocked on a counter lock) when
    ``_reserve_again`` looks for its rows: none yet, so it runs the reservation once more;
    the lost one gets the lock first and commits; the rerun, seeing that reservation, no
    longer fits and refuses (inserting no row: no primary-key collision).  Was: the caller
    was told None (refused) while its own reservation held the budget until expiry.  Now
    the rows are looked for again after the rerun: the caller gets the reservation."""
    targets = [BudgetTarget("project", "orph", "total", 0, 100)]
    orig = asyncpg.connection.Connection.fetchval
    state: dict[str, Any] = {}

    async def fetchval(conn: Any, query: str, *a: Any, **k: Any) -> Any:
        if "INSERT INTO spending_reservations" in query and "orphan" not in state:
            # the statement goes on, on another connection, while its caller hears it was lost
            state["orphan"] = asyncio.ensure_future(orig(state["side"], query, *a, **k))
            await asyncio.sleep(0.3)  # (blocked on the lock)
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await orig(conn, query, *a, **k)

    async def main() -> None:
        async with open_store(dsn, "unused.db", max_size=5) as store:
            await migrate(store)
            first = await store.reserve(targets, 1)
            assert first is not None and await store.release(first)  # the counter exists
            state["side"] = await asyncpg.connect(dsn)
            lock = await asyncpg.connect(dsn)
            tx = lock.transaction()
            await tx.start()
            await lock.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'orph' FOR UPDATE")
            monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)

            async def unlock() -> None:
                await asyncio.sleep(0.8)
                await tx.commit()

            unlocking = asyncio.ensure_future(unlock())
            got = await store.reserve(targets, 100)
            await unlocking
            await state["orphan"]
            monkeypatch.undo()
            held = await store.get_counter(targets[0].key)
            await lock.close()
            await state["side"].close()
            assert held.reserved_nano_usd == 100
            assert got is not None, "refused while its own reservation holds the budget"
            assert await store.release(got)
            assert (await store.get_counter(targets[0].key)).reserved_nano_usd == 0

    asyncio.run(main())
