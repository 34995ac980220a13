"""PostgreSQL store: a usage batch's counter deltas summed by the store
(``postgres._WRITE_USAGE_SUMMED``, issue 27) count exactly what the server's own sums
(``_WRITE_USAGE``) count -- and a batch with a row already in the log (a replay) fails
(a unique violation), is rolled back and runs again as ``_WRITE_USAGE``: the new rows
counted, the old ones never twice."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from plano_fast.store import UsageRow, open_store
from plano_fast.store import postgres
from plano_fast.store.migrate import migrate
from tests import pg

DAY_NS = 86_400 * 10**9


def _rows(n: int, seed: int) -> list[UsageRow]:
    """``n`` rows over every scope shape, both sides of day and month ends, unpriced and
    zero-cost ones, three users (several deltas of one period in a batch)."""
    rng = random.Random(seed)
    instants = [
        1706745599_900_000_000, 1706745600_100_000_000,  # 2024-01-31 23:59:59.9, 2024-02-01 00:00:00.1
        1709251199_900_000_000, 1709251200_000_000_000,  # end of 29 February 2024, 1 March
        time.time_ns(), 10 * DAY_NS, 11 * DAY_NS - 1,  # (never before 1970: see the test)
    ]  # fmt: skip
    out = []
    for i in range(n):
        cost = rng.choice([None, 0, rng.randrange(1, 10**12), rng.randrange(1, 10**12)])
        out.append(UsageRow(
            request_id=f"sum-{seed}-{i:04d}", time_ns=rng.choice(instants) + rng.randrange(-3, 3) * DAY_NS,
            project_id=rng.choice(["pa", "pb", None]), user_id=rng.choice(["ua", "ü-b", "uc", None]),
            key_hash=rng.choice(["a" * 64, "b" * 64, None]), token_id=None, provider="openai",
            model="m", input_tokens=1, output_tokens=1, cache_read_tokens=0, cache_write_tokens=0,
            reasoning_tokens=0, streaming=bool(i % 2), status="ok", http_status=200,
            priced=cost is not None, cost_nano_usd=cost, duration_us=1,
        ))  # fmt: skip
    return out


@pytest.mark.parametrize("flushed", [True, False])
def test_batches_summed_by_the_store_count_exactly_what_the_server_sums(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, flushed: bool
) -> None:
    """The same batches (2 to 99 rows: the group writer's sizes) written with the deltas
    summed by the store and by the server leave the same log and the same counters.  Among
    them, batches with replayed rows (some or all already written: the summed statement
    fails on the request id's unique index and the batch runs as ``_WRITE_USAGE``, which inserts and counts only
    the new rows) and a batch with a row before 1970 (``_WRITE_USAGE`` from the start).
    Each ``write_usage`` returns the number of rows it inserted."""
    rows = _rows(800, 27)
    rows[5] = dataclasses.replace(rows[5], time_ns=-DAY_NS // 2, priced=True, cost_nano_usd=7)
    rng = random.Random(6)
    batches: list[list[UsageRow]] = []
    fresh = 0
    while fresh < len(rows):
        size = rng.randrange(2, 100)
        batch = rows[fresh:fresh + size]
        if len(batches) % 3 == 2:  # replays: one old row among new ones
            batch = batch + [rows[rng.randrange(0, fresh)]]
        batches.append(batch)
        fresh += size
    batches.append(rows[40:60])  # all replayed
    # one project and user's rows of a day (the gateway's usual batch: six deltas, scalars)
    batches += [[dataclasses.replace(r, request_id=f"{r.request_id}-one{j}", project_id="pa", user_id="ua",
                                     key_hash=None, time_ns=rows[0].time_ns) for r in rows[60 + 13 * j:73 + 13 * j]]
                for j in range(3)]
    # unpriced rows only (the billing flusher's, priced later): no counter moves; then again
    unpriced = [dataclasses.replace(r, request_id=f"{r.request_id}-unpriced", priced=False, cost_nano_usd=None,
                                    time_ns=rows[0].time_ns) for r in rows[100:110]]
    batches += [unpriced, unpriced]
    batches = [b for b in batches if len(b) >= 2]
    ran = {"summed": 0, "server": 0, "arrays": 0, "no counter": 0}
    original = asyncpg.connection.Connection.fetchval
    shapes: list[int | None] = [None, *range(postgres._SCALAR_DELTAS_MAX + 1)]
    summed_sql = {sql for n in shapes
                  for sql in (postgres._write_summed_sql(n), postgres._unflushed(postgres._write_summed_sql(n)))}
    arrays_sql = {postgres._write_summed_sql(None), postgres._unflushed(postgres._write_summed_sql(None))}
    no_counter_sql = {postgres._write_summed_sql(0), postgres._unflushed(postgres._write_summed_sql(0))}
    server_sql = {postgres._WRITE_USAGE, postgres._unflushed(postgres._WRITE_USAGE)}

    async def fetchval(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if query in summed_sql:
            ran["summed"] += 1
            ran["arrays"] += query in arrays_sql
            ran["no counter"] += query in no_counter_sql
        elif query in server_sql:
            ran["server"] += 1
        return await original(conn, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)

    async def written(dsn: str) -> tuple[list[int], list[Any], list[Any]]:
        async with open_store(dsn, "unused.db", usage_synchronous_commit=flushed) as store:
            await migrate(store)
            inserted = [await store.write_usage(b) for b in batches]
            log = await store._fetch(  # type: ignore[attr-defined]
                "SELECT request_id, time_ns, project_id, user_id, key_hash, priced, cost_nano_usd, "
                "price_status, streaming FROM usage_log ORDER BY request_id"
            )
            counters = await store._fetch(  # type: ignore[attr-defined]
                "SELECT scope_kind, scope_id, period, period_start, SUM(spent_nano_usd), SUM(reserved_nano_usd) "
                "FROM spending_counters GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            )
            return inserted, [tuple(r) for r in log], [tuple(r) for r in counters]

    with pg.temp_schema(pg_database) as here_dsn, pg.temp_schema(pg_database) as server_dsn:
        monkeypatch.setattr(postgres, "SUM_DELTAS_HERE", True)
        here = asyncio.run(written(here_dsn))
        # Expected: a batch with a row before 1970, by the server; every other one summed,
        # and again by the server when it holds a row written before (a replay).
        expected = {"summed": 0, "server": 0}
        seen: set[str] = set()
        for b in batches:
            if any(r.time_ns < 0 for r in b):
                expected["server"] += 1
            else:
                expected["summed"] += 1
                expected["server"] += any(r.request_id in seen for r in b)
            seen.update(r.request_id for r in b)
        assert expected["server"] >= len(batches) // 3 and expected["summed"] >= len(batches) - 2
        # (the deltas as scalars and, past _SCALAR_DELTAS_MAX, as arrays; none: the
        # unpriced batch and its replay)
        assert 0 < ran.pop("arrays") < expected["summed"]
        assert ran.pop("no counter") == 2
        assert ran == expected, ran
        monkeypatch.setattr(postgres, "SUM_DELTAS_HERE", False)
        ran.update({"summed": 0, "server": 0, "arrays": 0, "no counter": 0})
        server = asyncio.run(written(server_dsn))
        assert ran == {"summed": 0, "server": len(batches), "arrays": 0, "no counter": 0}
    assert here == server
    inserted, log, counters = here
    assert sum(inserted) == len(rows) + 39 + 10 == len(log)
    # (the replays; one user; unpriced, then replayed)
    assert inserted[-6] == 0 and inserted[-5:] == [13, 13, 13, 10, 0] and len(counters) > 40
