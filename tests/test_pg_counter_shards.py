"""PostgreSQL spending counters in shards (migration 11, issue 27): usage batches in flight at
once add to different rows of a counter, so one never waits for another's row locks (held
until its commit is flushed); a counter is the sum of its rows, and hard budgets -- which
lock and sum every shard -- stay hard across store instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.managed.context import BATCH_BESIDE_BEHIND, BATCH_BESIDE_MIN_ROWS, GroupWriter
from plano_fast.store import BudgetTarget, CounterKey, Store, UsageRow, open_store
from plano_fast.store.migrate import migrate
from plano_fast.usage import STATUS_OK, UsageEvent
from tests import pg


@pytest.fixture
def dsn(pg_database: str) -> Iterator[str]:
    with pg.temp_schema(pg_database) as url:
        yield url


def row(request_id: str, cost: int, project: str | None = "p1", user: str | None = "u1") -> UsageRow:
    return UsageRow(
        request_id=request_id, time_ns=time.time_ns(), project_id=project, user_id=user,
        key_hash=None, token_id=None, provider="openai", model="gpt-4o-mini", input_tokens=10,
        output_tokens=2, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
        streaming=False, status="ok", http_status=200, priced=True, cost_nano_usd=cost, duration_us=100,
    )  # fmt: skip


def on_shard(store: Store, shard: int) -> Store:
    """``store``'s usage batches all on ``shard`` (its free list: one shard)."""
    store._free_shards = [shard]  # type: ignore[attr-defined]
    return store


async def sums(conn: Any, kind: str, scope_id: str) -> tuple[int, int, int]:
    """(spent of the counter's rows, reserved of them, the log's cost) for the total period."""
    spent, reserved = await conn.fetchrow(
        "SELECT COALESCE(SUM(spent_nano_usd), 0), COALESCE(SUM(reserved_nano_usd), 0) FROM spending_counters "
        "WHERE scope_kind = $1 AND scope_id = $2 AND period = 'total'", kind, scope_id)
    column = {"project": "project_id", "user": "user_id"}[kind]
    logged = await conn.fetchval(
        f"SELECT COALESCE(SUM(cost_nano_usd), 0) FROM usage_log WHERE priced AND {column} = $1", scope_id)
    return int(spent), int(reserved), int(logged)


def test_a_usage_batch_does_not_wait_for_another_batchs_counter_locks(dsn: str) -> None:
    """A batch of project p1 holds its counter rows locked until its commit is flushed
    (here: a transaction holding them, never committing while the other writes).  Another
    instance's batch of the same project goes through all the same, on its own shard; once
    both commit the counters sum to exactly the log.  (Before migration 11 the second waited
    for the first's commit: every batch of a project queued behind one WAL flush each.)"""

    async def main() -> None:
        async with open_store(dsn, "unused.db") as a, open_store(dsn, "unused.db") as b:
            await migrate(a)
            on_shard(a, 1)
            on_shard(b, 2)
            assert await a.write_usage([row("first", 100)]) == 1  # p1's and u1's counters exist
            holder = await asyncpg.connect(dsn)
            try:
                async with holder.transaction():
                    # a's next batch, still committing: its counter rows are locked
                    await holder.execute(
                        "SELECT 1 FROM spending_counters WHERE scope_id IN ('p1', 'u1') FOR UPDATE")
                    written = await asyncio.wait_for(b.write_usage([row("beside", 7)]), timeout=10)
                    assert written == 1
                assert await sums(holder, "project", "p1") == (107, 0, 107)
                assert await sums(holder, "user", "u1") == (107, 0, 107)
                assert (await b.get_counter(CounterKey("project", "p1", "total", 0))).spent_nano_usd == 107  # type: ignore[union-attr]
                shards = await holder.fetch(
                    "SELECT shard, spent_nano_usd FROM spending_counters "
                    "WHERE scope_kind = 'project' AND period = 'total' ORDER BY shard")
                assert [tuple(r) for r in shards] == [(1, 100), (2, 7)]
            finally:
                await holder.close()

    asyncio.run(main())


def _writer_item(request_id: str) -> tuple[UsageRow, UsageEvent]:
    """A managed request's row (project p1, cost 5) and its event, for a ``GroupWriter``."""
    event = UsageEvent(request_id, time.time_ns(), "openai", "gpt-4o-mini", False, STATUS_OK, 200, 10, 2,
                       has_usage=True, project_id="p1")
    return row(request_id, 5), event


async def _writer_first_on_shard_1(store: Any, fallback: list[UsageEvent], seed: str) -> GroupWriter:
    """A migrated store's synchronous writer whose first batch writes counter shard 1 (the
    next, shard 2), p1's shard-1 counter rows made to exist by a ``seed`` row of cost 1."""
    await migrate(store)
    writer = GroupWriter(store, fallback.append)
    store._free_shards = [2, 1]  # the first batch: shard 1
    await store.write_usage([row(seed, 1)])  # shard 1's row of p1 exists
    return writer


def test_the_synchronous_writer_keeps_batches_in_flight_side_by_side(dsn: str) -> None:
    """Managed mode's synchronous writer on PostgreSQL: while a batch is stuck (its counter
    row locked elsewhere), rows that arrive after it wait for it while they are few (a
    statement each batch: not worth one yet); once ``BATCH_BESIDE_MIN_ROWS`` wait, they are
    written in a batch of their own beside it -- their waiters answered before the stuck
    one -- and nothing is lost."""

    def item(i: int) -> tuple[UsageRow, UsageEvent]:
        return _writer_item(f"w-{i}")

    async def main() -> None:
        async with open_store(dsn, "unused.db") as store:
            assert store.write_batches_in_flight >= 2
            fallback: list[UsageEvent] = []
            writer = await _writer_first_on_shard_1(store, fallback, "seed-1")
            holder = await asyncpg.connect(dsn)
            try:
                async with holder.transaction():
                    await holder.execute("SELECT 1 FROM spending_counters WHERE shard = 1 FOR UPDATE")
                    stuck = writer.write(*item(0))  # the first batch: shard 1, waits on the lock
                    await asyncio.sleep(0.3)
                    assert not stuck.done()
                    few = [writer.write(*item(i)) for i in range(1, BATCH_BESIDE_MIN_ROWS)]
                    await asyncio.sleep(0.3)
                    assert not any(f.done() for f in few)  # they wait for the stuck batch
                    beside = few + [writer.write(*item(BATCH_BESIDE_MIN_ROWS))]  # enough: shard 2
                    await asyncio.wait_for(asyncio.gather(*beside), timeout=10)
                    assert not stuck.done()
                await asyncio.wait_for(stuck, timeout=10)
                rows = BATCH_BESIDE_MIN_ROWS + 1
                assert fallback == [] and writer.metrics.rows_written == rows
                assert await sums(holder, "project", "p1") == (1 + 5 * rows, 0, 1 + 5 * rows)
            finally:
                await holder.close()

    asyncio.run(main())


def test_rows_gathering_while_a_batch_commits_wait_for_it_until_it_is_behind(dsn: str) -> None:
    """The rows that arrive while a batch of N rows is being written are as many as it had
    when it keeps up: they ride in the next batch (one statement and commit, not two side by
    side) until ``BATCH_BESIDE_BEHIND`` x N wait, which only a batch stuck in its commit
    lets gather; then they get a batch of their own beside it."""

    def item(i: int) -> tuple[UsageRow, UsageEvent]:
        return _writer_item(f"b-{i}")

    async def main() -> None:
        async with open_store(dsn, "unused.db") as store:
            writer = await _writer_first_on_shard_1(store, fallback, "seed-b")
            holder = await asyncpg.connect(dsn)
            first = 2 * BATCH_BESIDE_MIN_ROWS
            behind = BATCH_BESIDE_BEHIND * first
            try:
                async with holder.transaction():
                    await holder.execute("SELECT 1 FROM spending_counters WHERE shard = 1 FOR UPDATE")
                    stuck = [writer.write(*item(i)) for i in range(first)]  # one batch: shard 1, blocked
                    await asyncio.sleep(0.3)
                    assert not any(f.done() for f in stuck)
                    waiting = [writer.write(*item(i)) for i in range(first, first + behind - 1)]
                    await asyncio.sleep(0.3)
                    assert not any(f.done() for f in waiting)  # more than BATCH_BESIDE_MIN_ROWS: still waiting
                    beside = waiting + [writer.write(*item(first + behind - 1))]  # behind: shard 2
                    await asyncio.wait_for(asyncio.gather(*beside), timeout=10)
                    assert not any(f.done() for f in stuck)
                await asyncio.wait_for(asyncio.gather(*stuck), timeout=10)
                rows = first + behind
                assert fallback == [] and writer.metrics.rows_written == rows
                assert await sums(holder, "project", "p1") == (1 + 5 * rows, 0, 1 + 5 * rows)
            finally:
                await holder.close()

    fallback: list[UsageEvent] = []
    asyncio.run(main())


def test_hard_budgets_across_two_instances_count_every_shard(dsn: str) -> None:
    """Reservations from two store instances at once -- each settled at its full amount --
    while plain usage batches of the same user land on other shards (rows of another
    project, no reservation): the project's limit holds exactly (spend already on three
    shards counted: exactly the requests that fit are admitted, never one more), and every
    counter ends equal to the log with nothing left reserved."""
    limit, pre, amount = 10_000, 3 * 500, 100
    fits = (limit - pre) // amount  # 85

    async def main() -> None:
        a = open_store(dsn, "unused.db", max_size=8)
        b = open_store(dsn, "unused.db", max_size=8)
        c = open_store(dsn, "unused.db", max_size=4)
        async with a, b, c:
            await migrate(a)
            for n, store in enumerate((a, b, c)):  # p1 has spent on shards 3, 4 and 5
                await on_shard(store, 3 + n).write_usage([row(f"pre-{n}", 500)])
            a._free_shards, b._free_shards, c._free_shards = [6], [7], [0, 1, 2]  # type: ignore[attr-defined]
            targets = [BudgetTarget("project", "p1", "total", 0, limit),
                       BudgetTarget("user", "u1", "total", 0, 10**15)]  # fmt: skip
            granted: list[int] = []

            async def request(store: Store, n: int) -> None:
                res = await store.reserve(targets, amount)
                if res is None:
                    return
                granted.append(n)
                await asyncio.sleep(0)
                assert await store.settle(res, row(f"req-{n}", amount))

            async def plain(n: int) -> None:  # u1's counters, another project: shards 0-2
                await c.write_usage([row(f"plain-{n}-{k}", 3, project="p2") for k in range(4)])

            await asyncio.gather(
                *(request(a if n % 2 else b, n) for n in range(120)),
                *(plain(n) for n in range(30)),
            )
            assert len(granted) == fits
            conn = await asyncpg.connect(dsn)
            try:
                spent = pre + fits * amount
                assert await sums(conn, "project", "p1") == (spent, 0, spent) and spent <= limit
                assert await sums(conn, "project", "p2") == (30 * 4 * 3, 0, 30 * 4 * 3)
                user = pre + fits * amount + 30 * 4 * 3
                assert await sums(conn, "user", "u1") == (user, 0, user)
                assert await conn.fetchval("SELECT count(*) FROM spending_reservations") == 0
                shards = {r[0] for r in await conn.fetch(
                    "SELECT shard FROM spending_counters WHERE scope_kind = 'user' AND period = 'total'")}
                assert shards >= {0, 3, 4, 5}  # (the premise: spend on several shards)
            finally:
                await conn.close()
            # The limit is reached: not one nano-dollar more fits.
            assert limit - pre - fits * amount == 0
            assert await a.reserve(targets, 1) is None and await b.reserve(targets, 1) is None

    asyncio.run(main())


@pytest.mark.parametrize("existing", [False, True], ids=["new-counter", "older-database-counter"])
def test_a_shard_row_inserted_beside_a_reservation_is_counted(dsn: str, existing: bool) -> None:
    """A usage batch adding the first cost of a shard of p1's counter (its row inserted, not
    yet committed: a batch still waiting for its commit's flush) while a reservation against
    p1's hard limit runs.  The reservation waits for that batch and counts its cost: the
    limit 1,000 with 900 spent on shard 5 leaves no room for 200 -- ``reserve`` returns None,
    and spent + reserved stays <= the limit.  (Before: the reservation locked and summed only
    the rows its snapshot saw, shard 0 alone, admitted the 200 and the counter ended at
    1,100.)  ``older-database-counter``: p1's counter already exists with its shard-0 row
    only (a database written before every shard was created up front): the same."""
    limit = 1_000
    target = [BudgetTarget("project", "p1", "total", 0, limit)]

    async def main() -> None:
        async with open_store(dsn, "unused.db") as store:
            await migrate(store)
            holder = await asyncpg.connect(dsn)
            try:
                if existing:
                    await holder.execute(
                        "INSERT INTO spending_counters (scope_kind, scope_id, period, period_start, shard, "
                        "spent_nano_usd, reserved_nano_usd, updated_at_ns) VALUES ('project', 'p1', 'total', 0, "
                        "0, 0, 0, 0)")
                async with holder.transaction():
                    await store._write_usage_on(  # type: ignore[attr-defined]
                        holder, [row("beside", 900, user=None)], time.time_ns(), 5)
                    reserving = asyncio.ensure_future(store.reserve(target, 200))
                    await asyncio.sleep(0.5)  # (before: the reservation is made by now)
                granted = await asyncio.wait_for(reserving, timeout=10)
                assert granted is None
                spent, reserved, logged = await sums(holder, "project", "p1")
                assert (spent, reserved, logged) == (900, 0, 900) and spent + reserved <= limit
                assert await store.reserve(target, 100) is not None  # exactly the room left
            finally:
                await holder.close()

    asyncio.run(main())
