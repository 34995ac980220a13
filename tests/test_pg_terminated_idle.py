"""PostgreSQL store: a statement on a connection whose backend was terminated while it was
idle, in the moment between the server's FATAL message and its close.

``pg_terminate_backend`` (an operator, a failover, the chaos benchmark) makes the backend
send ``FATAL 57P01 terminating connection due to administrator command`` and then exit.
asyncpg reads that message on an idle connection as a protocol error and parks the
connection in its error-consuming state; the connection says it is open until the close
arrives.  A statement started in between fails before anything is sent with
``InternalClientError: cannot switch to state 12; another operation (2) is in progress``
(seen in the round i chaos runs: no two operations of ours on one connection, the "(2)" is
that state).  That is a lost connection, and the store now treats it as one: the statement
is run on another connection (a reservation through ``_reserve_again``, a settle and a
pooled read through ``_once_more_if_lost``), where before the caller was failed (a 503,
the journal, a failed sweep or admin call); a pooled write is not run again.

The gap is stretched by a proxy that passes the FATAL on and holds the close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.store import BudgetTarget, CounterKey, open_store
from plano_fast.store.migrate import migrate
from plano_fast.store.postgres import _CONNECTION_LOST
from plano_fast.store.sql import SqlStore
from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn
from tests.test_store_pg_batch import dsn, row  # noqa: F401 - fixture

TARGETS = [BudgetTarget("project", "tidle", "total", 0, 10**9)]


async def _terminate_while_idle(proxy: FaultProxy, direct_dsn: str, pid: int) -> None:
    """``pid``'s backend terminated: its FATAL read by the client, its close held."""
    proxy.hold_closes()
    killer = await asyncpg.connect(direct_dsn)
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()
    deadline = time.monotonic() + 10
    while proxy.closes_held < 1:
        assert time.monotonic() < deadline, "the backend never closed"
        await asyncio.sleep(0.01)
    # (the FATAL was written to the client before the held close: a few loop turns read it)
    for _ in range(20):
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("kind", ["reserve", "settle"])
def test_a_statement_on_a_connection_terminated_while_idle_runs_on_another(dsn: str, kind: str) -> None:
    with FaultProxy(dsn_target(dsn)) as proxy:

        async def main() -> None:
            async with open_store(proxied_dsn(dsn, proxy.port), "unused.db", min_size=1, max_size=1) as store:
                await migrate(store)
                held = await store.reserve(TARGETS, 5)
                assert held is not None
                # Reservations, settles and small usage writes run on the hot connection
                # (store/pg_hot.py; opened in the background by the first of them): its
                # backend is the one terminated, whichever statement comes next.
                if kind == "settle":
                    await store.write_usage([row(9000)])
                deadline = time.monotonic() + 10
                while store._hot is None or store._hot.pid is None:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                pid = store._hot.pid
                await _terminate_while_idle(proxy, dsn, pid)
                try:
                    if kind == "reserve":
                        second = await store.reserve(TARGETS, 7)
                        assert second is not None and second.amount_nano_usd == 7
                        expected = (0, 5 + 7)
                    else:
                        assert await store.settle(held, row(9001, cost=3, project="tidle"))
                        expected = (3, 0)
                finally:
                    proxy.release_closes()
                counter = await store.get_counter(CounterKey("project", "tidle", "total", 0))
                assert counter is not None
                assert (counter.spent_nano_usd, counter.reserved_nano_usd) == expected

        asyncio.run(main())


def test_a_read_on_a_pooled_connection_terminated_while_idle_runs_once_more(dsn: str) -> None:
    """The pool's statements: a read (an admin list, the budget checker's counters, the
    sweep's expired reservations) whose idle connection was ended is run once more on a
    new connection, where before it failed once (``InternalClientError``); a write is not
    run again (whether it committed is unknown): its caller gets the failure."""
    with FaultProxy(dsn_target(dsn)) as proxy:

        async def pooled_pid(store: Any) -> int:
            return int((await store._fetch("SELECT pg_backend_pid()"))[0][0])

        async def main() -> None:
            async with open_store(proxied_dsn(dsn, proxy.port), "unused.db", min_size=1, max_size=1) as store:
                await migrate(store)
                project = await store.create_project("idle-read")
                # (max_size 1: every read and write of the pool runs on that one connection)
                reads: list[tuple[str, Callable[[], Awaitable[object]], object]] = [
                    ("list_projects", lambda: store.list_projects(), [project]),
                    ("get_counter", lambda: store.get_counter(CounterKey("project", "tidle", "total", 0)), None),
                    ("release_expired", lambda: store.release_expired(), 0),
                ]
                for name, read, expected in reads:
                    await _terminate_while_idle(proxy, dsn, await pooled_pid(store))
                    try:
                        assert await read() == expected, name
                    finally:
                        proxy.release_closes()
                await _terminate_while_idle(proxy, dsn, await pooled_pid(store))
                try:
                    with pytest.raises(_CONNECTION_LOST):
                        await store.create_project("not-run-again")
                finally:
                    proxy.release_closes()
                assert [p.name for p in await store.list_projects()] == ["idle-read"]

        asyncio.run(main())


def test_an_idempotent_write_on_a_pooled_connection_terminated_while_idle_runs_once_more(dsn: str) -> None:
    """The heartbeat and the instance sweeps (``SqlStore.IDEMPOTENT_WRITES``) leave the
    same state however often they run: one whose idle pooled connection was ended runs once
    more on a new connection, where before it failed once (``InternalClientError``: a missed
    heartbeat, a failed stop's vouch).  Each case returns None and leaves its row as
    written; a write outside the set still fails (the previous test)."""
    with FaultProxy(dsn_target(dsn)) as proxy:

        async def pooled_pid(store: Any) -> int:
            return int((await store._fetch("SELECT pg_backend_pid()"))[0][0])

        async def beat_of(store: Any, instance_id: str) -> object:
            rows = await store._fetch("SELECT heartbeat_at_ns FROM gateway_instances WHERE id = ?", (instance_id,))
            return rows[0][0] if rows else None

        async def main() -> None:
            async with open_store(proxied_dsn(dsn, proxy.port), "unused.db", min_size=1, max_size=1) as store:
                await migrate(store)
                now = time.time_ns()
                writes: list[tuple[str, Callable[[], Awaitable[object]], str, object]] = [
                    ("heartbeat", lambda: store.heartbeat("idle-beat", "h", 1, now, alive_until_ns=now + 5),
                     "idle-beat", now + 5),
                    ("heartbeat again", lambda: store.heartbeat("idle-beat", "h", 1, now, alive_until_ns=now + 9),
                     "idle-beat", now + 9),
                    ("forget_instance", lambda: store.forget_instance("idle-beat"), "idle-beat", None),
                    # (release_orphaned's sweep of stale instances; called alone, since its read
                    # before it would meet the ended connection first)
                    ("forget stale", lambda: store._execute(  # type: ignore[attr-defined]
                        SqlStore._FORGET_STALE, (now + 1,)), "idle-stale", None),
                ]
                await store.heartbeat("idle-stale", "h", 2, now, alive_until_ns=now)
                for name, write, instance_id, expected in writes:
                    await _terminate_while_idle(proxy, dsn, await pooled_pid(store))
                    try:
                        await write()
                    finally:
                        proxy.release_closes()
                    assert await beat_of(store, instance_id) == expected, name

        asyncio.run(main())
