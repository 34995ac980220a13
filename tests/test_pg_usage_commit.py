"""``plano_fast.usage_synchronous_commit: false`` (issue 27): PostgreSQL usage writes and
settles commit with ``synchronous_commit = off``, set inside their own statement.  The
setting is accepted only with a PostgreSQL ``database_url`` (never accepted and ignored),
reaches the store the gateway opens, and changes what the statements commit, not what
they write: rows, counters and reservations end as with the default."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.config import ConfigError, parse_config
from plano_fast.store import BudgetTarget, UsageRow, open_store
from plano_fast.store.migrate import migrate
from tests import pg

_CONFIG = "version: v0.4.0\nmodel_providers: [{model: openai/x, access_key: k}]\nplano_fast: {%s}\n"


@pytest.fixture
def dsn(pg_database: str) -> Iterator[str]:
    with pg.temp_schema(pg_database) as url:
        yield url


def row(request_id: str, cost: int, project: str = "p1") -> UsageRow:
    return UsageRow(
        request_id=request_id, time_ns=time.time_ns(), project_id=project, user_id="u1",
        key_hash=None, token_id=None, provider="openai", model="gpt-4o-mini", input_tokens=10,
        output_tokens=2, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
        streaming=False, status="ok", http_status=200, priced=True, cost_nano_usd=cost, duration_us=100,
    )  # fmt: skip


@pytest.mark.parametrize("settings", ["usage_synchronous_commit: false",
                                      "usage_synchronous_commit: false, sqlite_path: x.db",
                                      "usage_synchronous_commit: false, database_url: 'sqlite:///x.db'"])
def test_off_without_postgresql_is_refused(settings: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(_CONFIG % settings, source="t.yaml", env={})
    assert "plano_fast.usage_synchronous_commit: false needs a PostgreSQL database_url" in str(ei.value)


def test_the_setting_reaches_the_gateways_store() -> None:
    from plano_fast.app import Gateway

    on = parse_config(_CONFIG % "database_url: 'postgresql://h/db'", env={})
    off = parse_config(_CONFIG % "database_url: 'postgresql://h/db', usage_synchronous_commit: false", env={})
    assert (on.settings.usage_synchronous_commit, off.settings.usage_synchronous_commit) == (True, False)
    assert Gateway(on).store.usage_synchronous_commit is True  # type: ignore[attr-defined]
    assert Gateway(off).store.usage_synchronous_commit is False  # type: ignore[attr-defined]


def test_writes_and_settles_commit_unflushed_with_the_same_effect(dsn: str) -> None:
    """With the option off, each usage write and settle the store sends -- one row, a small
    batch, a COPYed batch (its transaction's ``SET LOCAL``), one settle, a batch of settles
    -- asks for ``synchronous_commit = off``; with the default none does.  Both stores end
    with the same log, counters (spend = the log) and no reservation left; a replayed row is
    counted once."""
    sent: list[str] = []
    connection = asyncpg.connection.Connection
    originals = {name: getattr(connection, name) for name in ("_execute", "execute")}

    def spying(name: str) -> Any:
        async def spy(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            sent.append(query)
            return await originals[name](conn, query, *args, **kwargs)
        return spy

    async def run(synchronous: bool) -> tuple[tuple[int, ...], list[str]]:
        sent.clear()
        async with open_store(dsn, "unused.db", usage_synchronous_commit=synchronous) as store:
            await migrate(store)
            await store.pool.execute("TRUNCATE usage_log, spending_counters, spending_reservations")  # type: ignore[attr-defined]
            for name in originals:
                setattr(connection, name, spying(name))
            try:
                tag = "on" if synchronous else "off"
                assert await store.write_usage([row(f"{tag}-one", 3)]) == 1
                assert await store.write_usage([row(f"{tag}-few-{i}", 5) for i in range(4)]) == 4
                assert await store.write_usage([row(f"{tag}-many-{i}", 1) for i in range(150)]) == 150
                assert await store.write_usage([row(f"{tag}-one", 3)]) == 0  # (a replay: once)
                targets = [BudgetTarget("project", "p1", "total", 0, 10**9)]
                res = await store.reserve(targets, 100)
                assert res is not None and await store.settle(res, row(f"{tag}-settled", 40))
                many = [await store.reserve(targets, 10) for _ in range(3)]
                settled = await asyncio.gather(*(store.settle(r, row(f"{tag}-s{i}", 7))  # type: ignore[arg-type]
                                                 for i, r in enumerate(many)))
                assert settled == [True] * 3
            finally:
                for name, method in originals.items():
                    setattr(connection, name, method)
            conn = await asyncpg.connect(dsn)
            try:
                totals = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM usage_log), (SELECT SUM(cost_nano_usd) FROM usage_log),"
                    " (SELECT SUM(spent_nano_usd) FROM spending_counters WHERE scope_kind = 'project'"
                    "   AND period = 'total'),"
                    " (SELECT SUM(reserved_nano_usd) FROM spending_counters), (SELECT count(*) FROM spending_reservations)")
            finally:
                await conn.close()
        return tuple(int(v) for v in totals), list(sent)

    async def main() -> None:
        on, on_sent = await run(True)
        off, off_sent = await run(False)
        expected_cost = 3 + 4 * 5 + 150 + 40 + 3 * 7
        assert on == off == (1 + 4 + 150 + 1 + 3, expected_cost, expected_cost, 0, 0)
        writes = [q for q in off_sent if "INSERT INTO usage_log" in q]
        alone = [q for q in writes if "plano_usage_staging" not in q]  # (their own transaction)
        assert len(alone) >= 4 and len(writes) == len(alone) + 1
        assert all("set_config('synchronous_commit', 'off', true)" in q for q in alone), alone
        # the COPYed batch: its transaction's SET LOCAL, just before its statement
        staged = off_sent.index(next(q for q in writes if "plano_usage_staging" in q))
        assert "SET LOCAL synchronous_commit = off" in off_sent[:staged]
        assert not any("synchronous_commit" in q for q in on_sent)
        # reservations wait for their flush either way
        assert not any("synchronous_commit" in q for q in off_sent if "spending_reservations (id" in q)

    asyncio.run(main())


@pytest.fixture(scope="module")
def durable_dsn() -> Iterator[str]:
    """A private cluster with fsync on, used by nobody else: its WAL flushes are the test's."""
    try:
        cluster = pg.PrivateCluster(durable=True)
        dsn = cluster.start()
    except pg.PostgresUnavailable as exc:
        pytest.skip(f"no private PostgreSQL cluster ({exc})")
    try:
        yield dsn
    finally:
        cluster.stop()


async def _wal_syncs(dsn: str) -> int:
    """``pg_stat_wal.wal_sync`` once every other backend of the cluster's clients has
    exited (a backend adds its counts to the shared ones at exit at the latest)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                                  " AND pid <> pg_backend_pid()"):
            assert time.monotonic() < deadline, "the store's backends never exited"
            await asyncio.sleep(0.02)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(await conn.fetchval("SELECT wal_sync FROM pg_stat_wal"))
    finally:
        await conn.close()


def test_the_option_skips_the_wal_flush_of_writes_and_settles_not_reservations(durable_dsn: str) -> None:
    """Counted by the server (``pg_stat_wal.wal_sync``, fsync on, nothing else writing):
    by default each one-row usage write, reservation and settle waits for a flush of its
    own (one after another, none can share one); with the option, the writes and settles
    commit without one and the reservations still flush, one each."""
    writes, pairs = 30, 10

    async def flushes(synchronous: bool) -> int:
        before = await _wal_syncs(durable_dsn)
        async with open_store(durable_dsn, "unused.db", usage_synchronous_commit=synchronous) as store:
            tag = "on" if synchronous else "off"
            for i in range(writes):
                assert await store.write_usage([row(f"{tag}-w{i}", 3)]) == 1
            targets = [BudgetTarget("project", "p1", "total", 0, 10**15)]
            for i in range(pairs):
                res = await store.reserve(targets, 10)
                assert res is not None and await store.settle(res, row(f"{tag}-s{i}", 7))
        return await _wal_syncs(durable_dsn) - before

    async def main() -> None:
        async with open_store(durable_dsn, "unused.db") as store:
            await migrate(store)
            # (the counters exist before either run: their creation flushes once more)
            assert await store.reserve([BudgetTarget("project", "p1", "total", 0, 10**15)], 1) is not None
        on = await flushes(True)
        off = await flushes(False)
        assert on >= writes + 2 * pairs, (on, off)
        # the reservations' flushes, and at most a few of the server's own (a WAL segment's end)
        assert pairs <= off <= pairs + 3, (on, off)

    asyncio.run(main())
