"""PostgreSQL store: request-path writes that arrive together run as one statement
(plano_fast/store/pg_batch.py), and every caller still gets its own exact answer."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.store import BudgetTarget, CounterKey, InvalidValue, Store, UsageRow, open_store
from plano_fast.store.migrate import migrate
from tests import pg


@pytest.fixture
def dsn(pg_database: str) -> Iterator[str]:
    with pg.temp_schema(pg_database) as url:
        yield url


def row(i: int, cost: int | None = 5, project: str = "p1") -> UsageRow:
    return UsageRow(
        request_id=f"batch-{i:04d}", time_ns=time.time_ns(), project_id=project, user_id="u1",
        key_hash=None, token_id=None, provider="openai", model="gpt-4o-mini", input_tokens=10,
        output_tokens=2, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
        streaming=False, status="ok", http_status=200, priced=cost is not None, cost_nano_usd=cost,
        duration_us=100,
    )  # fmt: skip


TOTAL = CounterKey("project", "p1", "total", 0)
USER = CounterKey("user", "u1", "total", 0)
TARGETS = [BudgetTarget("project", "p1", "total", 0, 10**12), BudgetTarget("user", "u1", "total", 0, 10**12)]


class StatementCount:
    """asyncpg connection calls (each one statement, one round trip), by kind."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.settles = 0
        self.reserves = 0
        original = asyncpg.connection.Connection.fetchval

        async def fetchval(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if "DELETE FROM spending_reservations" in query:
                self.settles += 1
            elif "INSERT INTO spending_reservations" in query:
                self.reserves += 1
            return await original(conn, query, *args, **kwargs)

        monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)


def run(dsn: str, body: Any) -> None:
    async def main() -> None:
        async with open_store(dsn, "unused.db", max_size=20) as store:
            await migrate(store)
            await body(store)

    asyncio.run(main())


def test_concurrent_settles_share_statements_and_stay_exact(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 settles at once (a loaded gateway with a hard limit): far fewer statements than
    settles, each settle's answer its own, spend = the log and nothing left reserved."""
    count = StatementCount(monkeypatch)

    async def body(store: Store) -> None:
        held = [await store.reserve(TARGETS, 100) for _ in range(60)]
        assert all(r is not None for r in held)
        # One reservation settled twice at once: the first settle takes it, the second
        # finds it gone (False), as one after the other; its row is still recorded.
        results = await asyncio.gather(
            *(store.settle(r, row(i)) for i, r in enumerate(held) if r is not None),
            store.settle(held[0], row(999)),  # type: ignore[arg-type]
        )
        assert results == [True] * 60 + [False]
        assert count.settles < 20, count.settles  # one per settle before batching (61)
        for key in (TOTAL, USER):
            c = await store.get_counter(key)
            assert c is not None and (c.spent_nano_usd, c.reserved_nano_usd) == (61 * 5, 0)
        assert await store.sum_usage_cost("p1") == 61 * 5

    run(dsn, body)


def test_a_refused_row_fails_only_its_own_settle(dsn: str) -> None:
    """One settle's row the store refuses (priced without a cost) among many: that caller
    gets the error, the others are settled."""

    async def body(store: Store) -> None:
        held = [await store.reserve(TARGETS, 100) for _ in range(30)]
        bad = row(7)
        bad.cost_nano_usd = None  # priced, no cost: InvalidValue
        results = await asyncio.gather(
            *(store.settle(r, bad if i == 7 else row(i)) for i, r in enumerate(held) if r is not None),
            return_exceptions=True,
        )
        assert isinstance(results[7], InvalidValue)
        assert results[:7] + results[8:] == [True] * 29
        c = await store.get_counter(TOTAL)
        assert c is not None and (c.spent_nano_usd, c.reserved_nano_usd) == (29 * 5, 100)
        assert await store.release(held[7])  # type: ignore[arg-type]

    run(dsn, body)


def test_concurrent_reservations_share_statements_and_admit_exactly_what_fits(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """80 two-limit reservations at once on existing counters, room for 50 under the user
    limit: exactly 50 granted, in far fewer statements than reservations, and each
    counter holds exactly the granted amounts, one reservation row per counter each."""
    count = StatementCount(monkeypatch)

    async def body(store: Store) -> None:
        await store.write_usage([row(0, cost=1_000)])  # counters exist, 1,000 spent on each
        targets = [BudgetTarget("project", "p1", "total", 0, 10**12), BudgetTarget("user", "u1", "total", 0, 6_000)]
        results = await asyncio.gather(*(store.reserve(targets, 100) for _ in range(80)))
        granted = [r for r in results if r is not None]
        assert len(granted) == 50
        assert count.reserves < 40, count.reserves  # one per reservation before batching (80)
        for key in (TOTAL, USER):
            c = await store.get_counter(key)
            assert c is not None and (c.spent_nano_usd, c.reserved_nano_usd) == (1_000, 5_000)
        assert all(await asyncio.gather(*(store.release(r) for r in granted)))
        for key in (TOTAL, USER):
            c = await store.get_counter(key)
            assert c is not None and c.reserved_nano_usd == 0

    run(dsn, body)


def test_a_batch_admits_a_prefix_and_answers_the_rest_one_by_one(dsn: str) -> None:
    """Amounts 40, 40, 40, 10 against a limit of 100, arriving together (the last ones as
    a batch whose first item no longer fits): as some one-after-the-other order would,
    two 40s and the 10 are granted (a smaller request after a refused one still fits), one
    40 is refused, and the counter holds exactly what was granted."""

    async def body(store: Store) -> None:
        targets = [BudgetTarget("project", "p1", "total", 0, 100)]
        amounts = (40, 40, 40, 10)
        results = await asyncio.gather(*(store.reserve(targets, a) for a in amounts))
        assert sorted(a for a, r in zip(amounts, results, strict=True) if r is None) == [40]
        c = await store.get_counter(TOTAL)
        assert c is not None and c.reserved_nano_usd == 90

    run(dsn, body)


def test_mixed_reservations_from_two_instances_never_overfill_and_refuse_only_misfits(dsn: str) -> None:
    """150 reservations of random amounts on a project limit and three user limits, from
    two store instances at once (batches, their prefix cuts, the lone retries and fresh
    counters racing): no counter holds more than its limit, each holds exactly what was
    granted on it, and every refused request does not fit even now (nothing was released,
    so it did not fit when it was refused either)."""
    import random

    rng = random.Random(27)
    limits = {("project", "pm"): 3_000, ("user", "ua"): 1_000, ("user", "ub"): 1_500, ("user", "uc"): 800}
    asks = [(rng.choice(["ua", "ub", "uc"]), rng.randint(1, 60)) for _ in range(150)]

    def targets(user: str) -> list[BudgetTarget]:
        return [BudgetTarget("project", "pm", "total", 0, limits[("project", "pm")]),
                BudgetTarget("user", user, "total", 0, limits[("user", user)])]  # fmt: skip

    async def main() -> None:
        a = open_store(dsn, "unused.db", max_size=10)
        b = open_store(dsn, "unused.db", max_size=10)
        async with a, b:
            await migrate(a)
            results = await asyncio.gather(
                *((a if n % 2 else b).reserve(targets(user), amount) for n, (user, amount) in enumerate(asks))
            )
            held: dict[tuple[str, str], int] = {}
            for c in await a.load_counters():
                held[(c.scope_kind, c.scope_id)] = c.reserved_nano_usd
            granted: dict[tuple[str, str], int] = dict.fromkeys(limits, 0)
            for (user, amount), res in zip(asks, results, strict=True):
                if res is not None:
                    granted[("project", "pm")] += amount
                    granted[("user", user)] += amount
            for key, limit in limits.items():
                assert held.get(key, 0) == granted[key] <= limit, key
            for (user, amount), res in zip(asks, results, strict=True):
                if res is None:
                    assert any(held.get(k, 0) + amount > limits[k] for k in (("project", "pm"), ("user", user)))
            assert any(r is None for r in results) and any(r is not None for r in results)

    asyncio.run(main())


def test_a_release_is_one_statement_and_batches_with_settles(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A release (errors, failover exhausted: the reservation given back) is one round trip
    (it was BEGIN, DELETE, UPDATEs, COMMIT), and releases and settles arriving together
    share statements; each answers for its own reservation."""
    calls = [0]
    for name in ("execute", "executemany", "fetch", "fetchval", "fetchrow"):
        original = getattr(asyncpg.connection.Connection, name)

        async def counted(conn: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls[0] += 1
            return await _original(conn, *args, **kwargs)

        monkeypatch.setattr(asyncpg.connection.Connection, name, counted)

    async def body(store: Store) -> None:
        held = [await store.reserve(TARGETS, 100) for _ in range(41)]
        assert all(r is not None for r in held)
        calls[0] = 0
        assert await store.release(held[0])  # type: ignore[arg-type]
        assert calls[0] == 1
        assert not await store.release(held[0])  # type: ignore[arg-type]
        calls[0] = 0
        results = await asyncio.gather(
            *(store.release(r) if i % 2 else store.settle(r, row(i)) for i, r in enumerate(held[1:]) if r is not None)
        )
        assert results == [True] * 40
        assert calls[0] < 20, calls[0]
        for key in (TOTAL, USER):
            c = await store.get_counter(key)
            assert c is not None and (c.spent_nano_usd, c.reserved_nano_usd) == (20 * 5, 0)

    run(dsn, body)


# Backends waiting on $1's locks, directly or queued behind one that is (a row's lock queue).
_BLOCKED_BY = """
SELECT count(*) FROM pg_stat_activity a
 WHERE $1 = ANY(pg_blocking_pids(a.pid))
    OR EXISTS (SELECT 1 FROM pg_stat_activity b
                WHERE $1 = ANY(pg_blocking_pids(b.pid)) AND b.pid = ANY(pg_blocking_pids(a.pid)))
"""


def test_a_reservation_made_after_its_caller_left_is_given_back(dsn: str) -> None:
    """A client that disconnects while its reservation waits behind busy batches: once the
    batch it joined has run, the reservation it made for nobody is released at once (the
    cancelled caller never learns of it, so the gateway cannot), not held until its expiry."""
    x = [BudgetTarget("project", "leakX", "total", 0, 10**9)]
    w = [BudgetTarget("project", "leakW", "total", 0, 10**9)]

    async def body(store: Store) -> None:
        for t in (x, w):  # the counters exist (no creation inside the batches)
            made = await store.reserve(t, 1)
            assert made is not None and await store.release(made)
        lock_x, lock_w, observer = [await asyncpg.connect(dsn) for _ in range(3)]
        try:
            tx_x, tx_w = lock_x.transaction(), lock_w.transaction()
            await tx_x.start()
            await tx_w.start()
            await lock_x.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'leakX' FOR UPDATE")
            await lock_w.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'leakW' FOR UPDATE")

            async def lock_waits(holder: Any, n: int) -> None:  # statements blocked by holder's locks
                pid = await holder.fetchval("SELECT pg_backend_pid()")
                for _ in range(500):
                    if await observer.fetchval(_BLOCKED_BY, pid) >= n:
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError(f"{n} statements never waited on a lock")

            busy = [asyncio.create_task(store.reserve(w, 5)) for _ in range(2)]  # both batches in flight
            await lock_waits(lock_w, 2)
            leaving = asyncio.create_task(store.reserve(x, 1000))  # queued behind them
            await asyncio.sleep(0.05)
            assert not leaving.done()
            await tx_w.commit()  # the two batches finish; the queued one starts and waits on X
            await asyncio.gather(*busy)
            await lock_waits(lock_x, 1)  # its batch runs
            leaving.cancel()  # the client disconnects while its batch runs
            with pytest.raises(asyncio.CancelledError):
                await leaving
            await tx_x.commit()
            # a reservation on X waits on the row lock until the left batch has committed
            after = await store.reserve(x, 1)
            assert after is not None and await store.release(after)
            for _ in range(200):
                counter = await store.get_counter(x[0].key)
                if counter is not None and counter.reserved_nano_usd == 0:  # released at once
                    break
                await asyncio.sleep(0.01)
            assert counter is not None and counter.reserved_nano_usd == 0, counter
            assert await lock_x.fetchval(
                "SELECT count(*) FROM spending_reservations WHERE scope_id = 'leakX'") == 0
        finally:
            for conn in (lock_x, lock_w, observer):
                await conn.close()

    run(dsn, body)


# -- a batch whose connection is lost is run once more (settles, releases, reservations) ------


async def _kill_the_queued_batch(dsn: str, store: Store, busy: Any, queued: Any) -> list[Any]:
    """Two batches in flight on project W's locked counters, ``queued`` calls behind them
    (one batch, on project X's locked counters): W's lock goes, X's batch starts and waits
    on its lock, its backend is terminated (pg_terminate_backend) mid-statement, then X's
    lock goes.  Returns each queued call's result or exception."""
    lock_x, lock_w, observer = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        tx_x, tx_w = lock_x.transaction(), lock_w.transaction()
        await tx_x.start()
        await tx_w.start()
        await lock_x.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'lostX' FOR UPDATE")
        await lock_w.execute("SELECT 1 FROM spending_counters WHERE scope_id = 'lostW' FOR UPDATE")

        async def waiting_on(holder: Any, n: int) -> list[int]:  # the pids waiting directly
            pid = await holder.fetchval("SELECT pg_backend_pid()")
            for _ in range(500):
                if await observer.fetchval(_BLOCKED_BY, pid) >= n:
                    return [r[0] for r in await observer.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid)]
                await asyncio.sleep(0.01)
            raise AssertionError(f"{n} statements never waited on a lock")

        in_flight = [asyncio.create_task(c) for c in busy]
        await waiting_on(lock_w, 2)
        behind = [asyncio.create_task(c) for c in queued]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in behind)
        await tx_w.commit()  # the two batches end; the queued calls leave as one batch
        await asyncio.gather(*in_flight)
        [victim] = await waiting_on(lock_x, 1)  # one statement: the whole batch
        assert await observer.fetchval("SELECT pg_terminate_backend($1)", victim)
        for _ in range(500):  # gone before X's lock is given up (else it could still commit)
            if not await observer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", victim):
                break
            await asyncio.sleep(0.01)
        await tx_x.commit()
        return list(await asyncio.gather(*behind, return_exceptions=True))
    finally:
        for conn in (lock_x, lock_w, observer):
            await conn.close()


X = [BudgetTarget("project", "lostX", "total", 0, 10**9)]
W = [BudgetTarget("project", "lostW", "total", 0, 10**9)]


def test_a_settle_batch_whose_connection_is_killed_is_run_once_more(dsn: str) -> None:
    """Was: a settle batch whose backend was terminated mid-statement failed every caller
    in it (ConnectionDoesNotExistError: each row went to the journal, each reservation to
    a background release).  Settles and releases are idempotent, so the batch is run once
    more on another connection: every caller settled, the counters exact."""

    async def body(store: Store) -> None:
        x_held = [await store.reserve(X, 100) for _ in range(8)]
        w_held = [await store.reserve(W, 100) for _ in range(2)]
        assert None not in x_held and None not in w_held
        results = await _kill_the_queued_batch(
            dsn, store,
            [store.settle(r, row(900 + i, project="lostW")) for i, r in enumerate(w_held)],  # type: ignore[arg-type]
            [store.release(r) if i == 7 else store.settle(r, row(i, project="lostX"))  # type: ignore[arg-type]
             for i, r in enumerate(x_held)],
        )  # fmt: skip
        assert results == [True] * 8, results
        c = await store.get_counter(X[0].key)
        assert c is not None and (c.spent_nano_usd, c.reserved_nano_usd) == (7 * 5, 0)
        assert await store.sum_usage_cost("lostX") == 7 * 5

    run(dsn, body)


def test_a_reservation_batch_whose_connection_is_killed_is_run_once_more(dsn: str) -> None:
    """Was: a reservation batch whose backend was terminated failed every caller in it.
    Its statement never committed (the backend died holding X's row locks), so the batch
    runs again: every reservation granted, each counted once."""

    async def body(store: Store) -> None:
        for t in (X, W):  # the counters exist (no creation inside the batches)
            made = await store.reserve(t, 1)
            assert made is not None and await store.release(made)
        results = await _kill_the_queued_batch(
            dsn, store, [store.reserve(W, 5) for _ in range(2)], [store.reserve(X, 7) for _ in range(8)]
        )
        assert all(r is not None and not isinstance(r, BaseException) for r in results), results
        c = await store.get_counter(X[0].key)
        assert c is not None and c.reserved_nano_usd == 8 * 7
        assert await store.release_expired(now_ns=2**62) == 10  # 8 on X, 2 on W: one row each

    run(dsn, body)


@pytest.mark.parametrize("kind", ["reserve", "settle"])
def test_a_statement_that_committed_but_lost_its_answer_counts_once(
    dsn: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The other side of a lost connection: the statement committed and only its answer
    was lost (simulated: each first attempt runs, then raises ConnectionDoesNotExistError).
    The rerun changes nothing twice: a settle finds its rows inserted and its reservation
    gone; a reservation's rerun hits its own rows' primary key (rolled back whole) and
    the rows it finds say what was granted.  Singles and batches, every caller answered."""
    marker = "INSERT INTO spending_reservations" if kind == "reserve" else "DELETE FROM spending_reservations"
    seen: set[str] = set()
    sizes: list[int] = []  # the statements that lost their answer: how many calls each
    original = asyncpg.connection.Connection.fetchval

    async def fetchval(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        result = await original(conn, query, *args, **kwargs)
        if marker not in query:
            return result
        if kind == "settle":
            ids = args[-1]  # the reservation id(s)
        elif len(args) == 2:  # a batch (RESERVE_MANY): one reserve_input tuple per request and counter, now
            ids = [wanted[7] for wanted in args[0]]
        else:
            ids = args[7]
        if repr(ids) not in seen:
            seen.add(repr(ids))
            sizes.append(1 if isinstance(ids, str) else len(set(ids)))
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return result

    async def body(store: Store) -> None:
        targets = [BudgetTarget("project", "p1", "total", 0, 10**12), BudgetTarget("user", "u1", "total", 0, 3_000)]
        await store.write_usage([row(0, cost=1_000)])  # counters exist: room for 20 of 100 under u1
        if kind == "settle":
            held = [await store.reserve(targets, 100) for _ in range(20)]
            monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)
            settled = await asyncio.gather(*(store.settle(r, row(1 + i)) for i, r in enumerate(held)))  # type: ignore[arg-type]
            assert len(settled) == 20  # (False: the lost attempt took the reservation, as a second settle)
            assert await store.sum_usage_cost("p1") == 1_000 + 20 * 5
            expected = (1_000 + 20 * 5, 0)
        else:
            monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)
            results = await asyncio.gather(*(store.reserve(targets, 100) for _ in range(30)))
            assert sum(r is not None for r in results) == 20, results
            expected = (1_000, 20 * 100)
        assert 1 in sizes and max(sizes) > 1, sizes  # singles and batches lost their answers
        for key in (TOTAL, USER):
            c = await store.get_counter(key)
            assert c is not None and (c.spent_nano_usd, c.reserved_nano_usd) == expected, (key, c)

    run(dsn, body)


def test_one_row_writes_count_exactly_what_the_batch_statement_counts(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_usage`` of one row (the group writer's batch at concurrency 1) runs its own
    statement (``_write_one_sql``: scalars, counter deltas computed in Python); rows written
    one by one leave the same log and the same counters as the same rows in one batch
    (``_WRITE_USAGE``, counters computed in SQL): every scope, both sides of day and month
    ends, unpriced and zero-cost rows, replays (never counted twice) and a row before 1970
    (``_WRITE_USAGE``'s day numbering: its own path)."""
    import random

    from plano_fast.store import postgres

    rng = random.Random(27)
    day_ns = 86_400 * 10**9
    instants = [
        1706745599_900_000_000, 1706745600_100_000_000,  # 2024-01-31 23:59:59.9, 2024-02-01 00:00:00.1
        1709251199_900_000_000, 1709251200_000_000_000,  # end of 29 February 2024, 1 March
        time.time_ns(), 0, day_ns - 1,
    ]  # fmt: skip
    rows = []
    for i in range(120):
        cost = rng.choice([None, 0, rng.randrange(1, 10**12)])
        rows.append(UsageRow(
            request_id=f"one-{i:04d}", time_ns=rng.choice(instants) + rng.randrange(-3, 3) * day_ns,
            project_id=rng.choice(["pa", "pb", None]), user_id=rng.choice(["ua", "ü-b", None]),
            key_hash=rng.choice(["a" * 64, "b" * 64, None]), token_id=None, provider="openai",
            model="m", input_tokens=1, output_tokens=1, cache_read_tokens=0, cache_write_tokens=0,
            reasoning_tokens=0, streaming=bool(i % 2), status="ok", http_status=200,
            priced=cost is not None, cost_nano_usd=cost, duration_us=1,
        ))  # fmt: skip
    rows.append(
        dataclasses.replace(rows[0], request_id="before-1970", time_ns=-day_ns // 2, cost_nano_usd=7, priced=True)
    )
    after_1970 = sum(r.time_ns >= 0 for r in rows + rows[:30])
    assert after_1970 < len(rows) + 30
    one_row_statements = [0]
    shapes: set[str] = set()  # one statement per number of counter deltas: each one ran
    original = asyncpg.connection.Connection.fetchval

    async def fetchval(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if query in {postgres._write_one_sql(n) for n in (0, 3, 6, 9)}:
            one_row_statements[0] += 1
            shapes.add(query)
        return await original(conn, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)

    async def written(dsn: str, one_by_one: bool) -> tuple[list[Any], list[Any]]:
        async with open_store(dsn, "unused.db") as store:
            await migrate(store)
            if one_by_one:
                inserted = [await store.write_usage([r]) for r in rows + rows[:30]]  # then 30 replays
                assert inserted == [1] * len(rows) + [0] * 30
            else:
                assert await store.write_usage(rows) == len(rows)
                assert await store.write_usage(rows[:30]) == 0
            log = await store._fetch(  # type: ignore[attr-defined]
                "SELECT request_id, time_ns, project_id, user_id, key_hash, priced, cost_nano_usd, "
                "price_status, streaming FROM usage_log ORDER BY request_id"
            )
            counters = await store._fetch(  # type: ignore[attr-defined]
                "SELECT scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd "
                "FROM spending_counters ORDER BY 1, 2, 3, 4"
            )
            return [tuple(r) for r in log], [tuple(r) for r in counters]

    with pg.temp_schema(pg_database) as one_dsn, pg.temp_schema(pg_database) as batch_dsn:
        one = asyncio.run(written(one_dsn, True))
        assert one_row_statements[0] == after_1970 > len(rows) // 2  # the others: _WRITE_USAGE
        assert len(shapes) == 4
        batch = asyncio.run(written(batch_dsn, False))
        assert one_row_statements[0] == after_1970
    assert one == batch
    assert len(one[0]) == len(rows) and len(one[1]) > 30


def test_one_settle_counts_exactly_what_the_batch_statement_counts(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle alone (concurrency 1 with a hard limit) runs its own statement
    (``_settle_one_sql``); settles one by one leave the same log, counters and reservations,
    and give the same answers, as the same settles in one ``_SETTLE`` batch: mixed rows and
    reservations, a row already written (its reservation freed, its cost not counted
    again) and a reservation already settled (False; its row counted)."""
    import random

    from plano_fast.store import period_start, postgres

    rng = random.Random(2027)
    now = time.time_ns()
    day_ns = 86_400 * 10**9
    work = []
    for i in range(40):
        project, user = rng.choice(["pa", "pb"]), rng.choice(["ua", "ub"])
        targets = [BudgetTarget("project", project, p, period_start(p, now), 10**15) for p in ("monthly", "daily")]
        targets += [BudgetTarget("user", user, "total", 0, 10**15)] if i % 3 else []
        cost = rng.choice([None, 0, rng.randrange(1, 10**9)])
        usage = UsageRow(
            request_id=f"settle-{i:04d}", time_ns=now + rng.randrange(-40, 2) * day_ns, project_id=project,
            user_id=rng.choice([user, None]), key_hash=rng.choice(["c" * 64, None]), token_id=None,
            provider="openai", model="m", input_tokens=1, output_tokens=1, cache_read_tokens=0,
            cache_write_tokens=0, reasoning_tokens=0, streaming=False, status="ok", http_status=200,
            priced=cost is not None, cost_nano_usd=cost, duration_us=1,
        )  # fmt: skip
        work.append((targets, rng.randrange(1, 10**6), usage))
    one_settles = [0]
    shapes: set[str] = set()  # one statement per number of counter deltas: each one ran
    original = asyncpg.connection.Connection.fetchval

    async def fetchval(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if query in {postgres._settle_one_sql(n) for n in (0, 3, 6, 9)}:
            one_settles[0] += 1
            shapes.add(query)
        return await original(conn, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)

    async def settled(dsn: str, alone: bool) -> tuple[Any, ...]:
        async with open_store(dsn, "unused.db") as store:
            await migrate(store)
            held = [await store.reserve(t, amount) for t, amount, _ in work]
            assert all(r is not None for r in held)
            items: list[tuple[str, UsageRow | None]] = [
                (r.id, u) for r, (_, _, u) in zip(held, work, strict=True) if r is not None
            ]
            items.append((items[0][0], dataclasses.replace(work[1][2], request_id="settle-again")))  # settled already
            paid = next(w for w in work if w[2].cost_nano_usd)
            again = await store.reserve(paid[0], 5)
            assert again is not None
            items.append((again.id, paid[2]))  # a priced row written already
            if alone:
                answers = [await store._settle_batch([item]) for item in items]  # type: ignore[attr-defined]
            else:
                answers = [[a] for a in await store._settle_batch(items)]  # type: ignore[attr-defined]
            tables = [
                [tuple(r) for r in await store._fetch(sql)]  # type: ignore[attr-defined]
                for sql in (
                    "SELECT request_id, time_ns, project_id, user_id, key_hash, priced, cost_nano_usd "
                    "FROM usage_log ORDER BY request_id",
                    "SELECT scope_kind, scope_id, period, period_start, spent_nano_usd, reserved_nano_usd "
                    "FROM spending_counters ORDER BY 1, 2, 3, 4, shard",
                    "SELECT count(*) FROM spending_reservations",
                )
            ]
            return answers, *tables

    with pg.temp_schema(pg_database) as one_dsn, pg.temp_schema(pg_database) as batch_dsn:
        one = asyncio.run(settled(one_dsn, True))
        assert one_settles[0] == len(work) + 2
        assert len(shapes) == 4
        batch = asyncio.run(settled(batch_dsn, False))
        assert one_settles[0] == len(work) + 2
    assert one == batch
    assert one[0] == [[True]] * len(work) + [[False], [True]]
    assert one[3] == [(0,)] and len(one[1]) == len(work) + 1
    assert all(reserved == 0 for *_, reserved in one[2])


def test_usage_input_type_is_a_written_usage_row(dsn: str) -> None:
    """``usage_input`` (migration 10), the type of the batch statements' one array of rows,
    has ``USAGE_COLUMN_TYPES``'s attributes in order: a migration adding a written column to
    usage_log must add it there too.  And a batch sent as those tuples lands column for
    column (every column of a row differs from the defaults)."""
    from plano_fast.store.records import PRICE_STATUS_PARTIAL
    from plano_fast.store.sql import _USAGE_COLS, USAGE_COLUMN_TYPES, usage_from_row

    async def body(store: Store) -> None:
        attributes = await store._fetch(  # type: ignore[attr-defined]
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = to_regtype('usage_input'))"
            "   AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        )
        written = {"integer": "integer", "bigint": "bigint", "text": "text", "boolean": "boolean"}
        assert [(r[0], r[1]) for r in attributes] == [(c, written[t]) for c, t in USAGE_COLUMN_TYPES.items()]
        full = [
            UsageRow(
                request_id=f"full-{i}", time_ns=1_700_000_000_000_000_000 + i, project_id="p1", user_id="u1",
                key_hash="d" * 64, token_id="t1", provider="anthropic", model="m1", input_tokens=1 + i,
                output_tokens=2, cache_read_tokens=3, cache_write_tokens=4, reasoning_tokens=5, streaming=True,
                status="ok", http_status=201, priced=True, cost_nano_usd=6 + i, duration_us=7,
                price_status=PRICE_STATUS_PARTIAL, tool_use_prompt_tokens=8, cache_write_1h_tokens=9,
                audio_input_tokens=10, audio_output_tokens=11, usage_api="messages", usage_raw='{"x": "\\"y"}',
                price_entry="e1", reservation_overrun_nano_usd=12, requested_model="m0", attempts=2,
                attempt_trail="503,200",
            )
            for i in range(3)
        ]  # fmt: skip
        assert await store.write_usage(full) == 3
        read = f"SELECT {_USAGE_COLS} FROM usage_log ORDER BY request_id"
        stored = await store._fetch(read)  # type: ignore[attr-defined]
        assert [dataclasses.replace(usage_from_row(r), row_id=None) for r in stored] == full

    run(dsn, body)
