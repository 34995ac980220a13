"""PostgreSQL store: what a request-path statement does when its connection is lost, and
what it does not do when it merely ran out of time (plano_fast/store/postgres.py,
``_once_more_if_lost`` and ``_reserve_again``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.store import BudgetTarget, open_store
from plano_fast.store.migrate import migrate
from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn
from tests.test_store_pg_batch import dsn, row  # noqa: F401 - fixture

TIMEOUT_TARGETS = [BudgetTarget("project", "tmo", "total", 0, 10**9)]
#: the store's ``command_timeout``: long enough that its caller's wait, at most 1.8x it
#: (one run; two would be 2x), has 1.2 s for a loaded machine's delays
COMMAND_TIMEOUT_S = 1.5


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
        async with open_store(dsn, "unused.db", max_size=5, command_timeout=COMMAND_TIMEOUT_S) as store:
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
            assert len(calls) == 1 and took < COMMAND_TIMEOUT_S * 1.8, (calls, took)

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


LOST_TARGETS = [BudgetTarget("project", "lost", "total", 0, 100), BudgetTarget("user", "lost", "total", 0, 100)]
#: the second counter in the lock order: a reservation locks the first and waits on this one
LOCK_USER_COUNTER = "SELECT 1 FROM spending_counters WHERE scope_kind = 'user' AND scope_id = 'lost' FOR UPDATE"
#: (pid, xid) of the backends ``$1`` (the lock holder) or ``$2`` keep waiting
BLOCKED = """
SELECT pid, backend_xid::text FROM pg_stat_activity
 WHERE pg_blocking_pids(pid) && ARRAY[$1::int, $2::int] AND pid <> $2
"""
# (a counter's reserved amount: the sum of its shard rows, migration 11)
HELD = """
SELECT (SELECT array_agg(reserved ORDER BY scope_kind) FROM (
            SELECT scope_kind, SUM(reserved_nano_usd)::bigint AS reserved FROM spending_counters
             WHERE scope_id = 'lost' GROUP BY scope_kind) AS per_counter),
       (SELECT array_agg(id || ':' || xmin::text ORDER BY scope_kind) FROM spending_reservations)
"""


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """``check()``'s first truthy value (polled; a bound only against a hang)."""
    for _ in range(3000):
        if value := await check():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def counters_made(store: Any) -> None:
    """Migrated, and the two counters made (and empty)."""
    await migrate(store)
    first = await store.reserve(LOST_TARGETS, 1)
    assert first is not None and await store.release(first)


@dataclasses.dataclass
class CutWhileWaiting:
    tx: Any  # another connection's transaction, holding the second counter's lock
    watch: Any  # a connection to look with
    reserving: asyncio.Future[Any]  # store.reserve(LOST_TARGETS, 100)
    old_pid: int  # the backend of the statement whose connection was cut
    old_xid: str  # its transaction
    rerun_pid: int  # the backend of its rerun, waiting in its turn


@contextlib.asynccontextmanager
async def cut_while_waiting(dsn: str, proxy: FaultProxy, store: Any) -> AsyncIterator[CutWhileWaiting]:
    """A reservation whose statement waits on a counter lock when the proxy cuts its
    connection (the backend, waiting, does not notice), and its rerun, waiting too (on
    the lock or on the lost statement)."""
    await counters_made(store)
    lock = await asyncpg.connect(dsn)
    watch = await asyncpg.connect(dsn)
    try:
        tx = lock.transaction()
        await tx.start()
        await lock.execute(LOCK_USER_COUNTER)
        lock_pid = lock.get_server_pid()
        reserving = asyncio.ensure_future(store.reserve(LOST_TARGETS, 100))
        [(old_pid, old_xid)] = await until(lambda: watch.fetch(BLOCKED, lock_pid, 0), "the reservation waits")
        assert old_xid is not None  # (it holds the first counter's lock)
        proxy.cut()
        proxy.restore()
        [(rerun_pid, _)] = await until(lambda: watch.fetch(BLOCKED, lock_pid, old_pid), "the rerun waits")
        yield CutWhileWaiting(tx, watch, reserving, old_pid, old_xid, rerun_pid)
    finally:
        await lock.close()
        await watch.close()


def test_a_lost_statement_waiting_on_a_lock_is_ended_before_the_rerun(dsn: str) -> None:
    """The network cut the store's connection while its reservation statement waited on a
    counter lock: the backend does not notice (it reads nothing while it waits) and would
    commit once the lock is free.  Was: ``_reserve_again`` found no rows yet and ran the
    reservation again behind it, so the lost statement committed after all (here the rerun
    then found its rows; had the lost one been slower still, its reservation was held
    until expiry).  Now that backend is terminated, and gone, before the rows are checked:
    exactly one reservation holds, written by the rerun; the lost statement never commits."""

    async def main(proxy: FaultProxy) -> None:
        async with open_store(proxied_dsn(dsn, proxy.port), "unused.db", max_size=5) as store:
            async with cut_while_waiting(dsn, proxy, store) as cut:
                await cut.tx.commit()
                got = await cut.reserving
                reserved, rows = await cut.watch.fetchrow(HELD)
            assert got is not None
            assert reserved == [100, 100]
            assert [r.split(":")[0] for r in rows] == [got.id, got.id]
            assert all(r.split(":")[1] != cut.old_xid for r in rows), "the lost statement committed"
            assert await store.release(got)

    with FaultProxy(dsn_target(dsn)) as proxy:
        asyncio.run(main(proxy))


def test_a_reservation_whose_check_fails_after_it_committed_is_released(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 3: the reservation committed but its answer was lost with the
    connection, and the check of its rows failed too (the database going away).  The
    caller hears an error, so nobody holds that reservation.  Was: it held the budget until
    its expiry.  Now it is released in the background once the database answers."""
    orig_fetchval = asyncpg.connection.Connection.fetchval
    orig_fetch = asyncpg.connection.Connection.fetch

    async def fetchval(conn: Any, query: str, *a: Any, **k: Any) -> Any:
        value = await orig_fetchval(conn, query, *a, **k)
        if "INSERT INTO spending_reservations" in query:  # committed; the answer is lost
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return value

    async def fetch(conn: Any, query: str, *a: Any, **k: Any) -> Any:
        if "FROM spending_reservations WHERE id = ANY" in query:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await orig_fetch(conn, query, *a, **k)

    async def main() -> None:
        async with open_store(dsn, "unused.db", max_size=5) as store:
            await counters_made(store)
            monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)
            monkeypatch.setattr(asyncpg.connection.Connection, "fetch", fetch)
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
                await store.reserve(LOST_TARGETS, 100)
            monkeypatch.undo()
        # (closing waits for the background release)
        conn = await asyncpg.connect(dsn)
        try:
            reserved, rows = await conn.fetchrow(HELD)
        finally:
            await conn.close()
        assert rows is None and reserved == [0, 0], (reserved, rows)

    asyncio.run(main())


def test_a_rerun_that_loses_its_connection_too_is_ended_and_released(dsn: str) -> None:
    """The rerun of a lost reservation statement loses its connection as well, while it
    waits on a counter lock: its caller hears an error.  Was: that rerun's backend went on
    waiting and committed once the lock was free, its reservation held until expiry.  Now
    the background release first ends it, then releases: nothing stays held."""

    async def main(proxy: FaultProxy) -> None:
        async with open_store(proxied_dsn(dsn, proxy.port), "unused.db", max_size=5) as store:
            async with cut_while_waiting(dsn, proxy, store) as cut:
                proxy.cut()
                proxy.restore()
                with pytest.raises(_LOST):
                    await cut.reserving
                await store.close()  # waits for the background release
                await cut.tx.commit()
                # whatever still waited on the lock has run to its end
                await until(lambda: _idle_or_gone(cut.watch, [cut.old_pid, cut.rerun_pid]), "the waiters end")
                reserved, rows = await cut.watch.fetchrow(HELD)
            assert rows is None and reserved == [0, 0], (reserved, rows)

    with FaultProxy(dsn_target(dsn)) as proxy:
        asyncio.run(main(proxy))


_LOST = (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.InterfaceError, OSError)


async def _idle_or_gone(conn: Any, pids: list[int]) -> bool:
    return not await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) AND state <> 'idle'", pids)
