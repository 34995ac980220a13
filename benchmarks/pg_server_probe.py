"""The PostgreSQL server's side of one managed request (issue 27): backend CPU, WAL, flushes.

    .venv/bin/python -m benchmarks.pg_server_probe                       # nolimit and hard, 3000 each
    .venv/bin/python -m benchmarks.pg_server_probe --shapes nolimit --requests 5000
    .venv/bin/python -m benchmarks.pg_server_probe --explain             # + EXPLAIN of the one-row write

The store work of ``bench_managed_store``'s shapes (``nolimit``: the synchronous write of
one row; ``hard``: reserve + settle), one request after another (concurrency 1) on a fresh
database of the local server, with load-independent figures from the server itself, per
request:

* ``backend_cpu_us``: time on a CPU of the store's backends (``pg_stat_activity`` pids of
  its database, ``/proc/<pid>/schedstat``; a loaded machine inflates it: compare A/B
  interleaved);
* ``statements``: the server's count of statements run in that database
  (``pg_stat_database.xact_commit`` + ``xact_rollback``: each of the store's statements is
  its own transaction) and ``round_trips`` counted on the client (``bench_managed_store``);
* ``wal_bytes`` (``pg_current_wal_lsn()`` delta: the whole cluster, so other users of the
  server add to it: the minimum of ``--rounds`` is the figure), ``wal_records`` and
  ``wal_fpi`` (full-page images) and ``wal_syncs`` (``pg_stat_wal``: flushes);
* ``blocks_hit`` / ``blocks_dirtied`` of the database's tables and indexes
  (``pg_statio_user_tables`` / ``_indexes``: buffer hits).

The server must run on this machine (``/proc``).  Client-side numbers are
``bench_managed_store``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from benchmarks import bench_managed_store as bms
from plano_fast.store import open_store
from plano_fast.store.migrate import migrate

def _cpu_ns(pid: int) -> int:
    """``pid``'s time on a CPU so far, ns (``/proc/<pid>/schedstat``: the scheduler's own
    count, not the 10 ms ticks of ``stat``'s utime + stime)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


_STATS = """
SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()),
       pg_current_wal_lsn(),
       (SELECT wal_records FROM pg_stat_wal), (SELECT wal_fpi FROM pg_stat_wal),
       (SELECT wal_sync FROM pg_stat_wal),
       (SELECT COALESCE(SUM(heap_blks_hit + COALESCE(idx_blks_hit, 0)), 0) FROM pg_statio_user_tables),
       (SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid())
"""


async def server_stats(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        xacts, lsn, records, fpi, syncs, hits, pids = await conn.fetchrow(_STATS)
        return {"xacts": int(xacts), "lsn": lsn, "records": int(records), "fpi": int(fpi),
                "syncs": int(syncs), "hits": int(hits), "pids": list(pids or [])}
    finally:
        await conn.close()


async def wal_delta(dsn: str, a: str, b: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)", b, a))
    finally:
        await conn.close()


async def probe(dsn: str, shape: str, warmup: int, requests: int, concurrency: int = 1) -> dict[str, float]:
    async with open_store(dsn, "unused.db") as store:
        await migrate(store)
        async def clients(first: int, last: int) -> None:
            async def client(start: int) -> None:
                for i in range(start, last, concurrency):
                    await bms.one_request(store, shape, i)

            await asyncio.gather(*(client(first + c) for c in range(concurrency)))

        await clients(0, warmup)  # (at the run's concurrency: the pool's connections opened)
        before = await server_stats(dsn)
        pids = before["pids"]
        cpu0 = {p: _cpu_ns(p) for p in pids}
        bms.ROUND_TRIPS[0] = 0
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        await clients(warmup, warmup + requests)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_ns = sum(_cpu_ns(p) - t for p, t in cpu0.items())
        round_trips = bms.ROUND_TRIPS[0]
        after = await server_stats(dsn)
        if set(after["pids"]) != set(pids):
            raise RuntimeError(f"the store's backends changed during the run: {pids} -> {after['pids']}")
        # (the stats connections' own transactions: two, taken off)
        wal = await wal_delta(dsn, before["lsn"], after["lsn"])
        plans = await _plans(store)
    n = requests
    return {
        "backend_cpu_us": cpu_ns / n / 1e3,
        "client_cpu_us": ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n * 1e6,
        "statements": (after["xacts"] - before["xacts"] - 2) / n,
        "round_trips": round_trips / n,
        "wal_bytes": wal / n,
        "wal_records": (after["records"] - before["records"]) / n,
        "wal_fpi": (after["fpi"] - before["fpi"]) / n,
        "wal_syncs": (after["syncs"] - before["syncs"]) / n,
        "blocks_hit": (after["hits"] - before["hits"]) / n,
        "backends": len(pids),
        "rows_per_request": bms.ROWS_PER_COMMIT[0] if shape == "group" else 1,
        "hot_plans": plans,
    }


async def _plans(store: Any) -> list[str]:
    """The hot connection's prepared statements that ran: generic / custom plans each
    (``pg_prepared_statements``: a custom plan is planned again at every execution)."""
    hot = getattr(store, "_hot", None)
    conn = None if hot is None else hot._conn
    if conn is None or hot._busy:
        return []
    rows = await conn.fetch(
        "SELECT generic_plans, custom_plans, regexp_replace(left(statement, 400), '\\s+', ' ', 'g')"
        "  FROM pg_prepared_statements WHERE generic_plans + custom_plans > 0 ORDER BY generic_plans + custom_plans DESC")
    return [f"generic {r[0]} custom {r[1]}: {r[2][:90]}" for r in rows]


async def explain(dsn: str, rows: int = 1) -> str:
    """EXPLAIN (ANALYZE, BUFFERS, WAL) of the write of ``rows`` rows (1: the one-row
    statement of ``nolimit``; more: the batch statement the group writer sends under
    load) on a warm counter."""
    from plano_fast.store import postgres

    async with open_store(dsn, "unused.db") as store:
        await migrate(store)
        for i in range(50):
            await bms.one_request(store, "nolimit", i)
        import time

        batch = [bms.make_row(10**6 + n, "proj-bench", "user-bench") for n in range(rows)]
        one = postgres.PostgresStore._write_one_statement(batch, time.time_ns(), 0)
        assert one is not None
        sql, args = one
        # (it runs: one more row, in a throwaway database)
        async with store.pool.acquire() as conn:  # type: ignore[attr-defined]
            plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) " + sql, *args)
        return "\n".join(r[0] for r in plan)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="nolimit,hard")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--database-url", help="PostgreSQL DSN (default: a throwaway database on the local server)")
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--explain-rows", type=int, default=1, help="rows of the explained write (1: the one-row statement)")
    ap.add_argument("--concurrency", type=int, default=1, help="clients at once (closed loop)")
    ap.add_argument("--batches-in-flight", type=int,
                    help="PostgresStore.write_batches_in_flight for the writer shape (default: the store's)")
    ap.add_argument("--rows-per-commit", type=int, default=13, help="the group shape's rows a commit")
    ap.add_argument("--beside-min-rows", type=int,
                    help="managed.context.BATCH_BESIDE_MIN_ROWS for the writer shape (default: the module's)")
    ap.add_argument("--beside-behind", type=int,
                    help="managed.context.BATCH_BESIDE_BEHIND for the writer shape (default: the module's; 0: "
                         "a batch beside as soon as BATCH_BESIDE_MIN_ROWS wait, the rule before it)")
    ap.add_argument("--sql-deltas", action="store_true",
                    help="batches' counter deltas summed by the server (postgres._WRITE_USAGE, the statement "
                         "before SUM_DELTAS_HERE) rather than by the store")
    args = ap.parse_args(argv)
    if args.sql_deltas:
        from plano_fast.store import postgres

        postgres.SUM_DELTAS_HERE = False
    bms.count_round_trips()
    bms.ROWS_PER_COMMIT[0] = args.rows_per_commit
    if args.beside_min_rows is not None or args.beside_behind is not None:
        from plano_fast.managed import context

        if args.beside_min_rows is not None:
            context.BATCH_BESIDE_MIN_ROWS = args.beside_min_rows
        if args.beside_behind is not None:
            context.BATCH_BESIDE_BEHIND = args.beside_behind
    if args.batches_in_flight:
        from plano_fast.store.postgres import PostgresStore

        PostgresStore.write_batches_in_flight = args.batches_in_flight
    out: dict[str, Any] = {}
    for shape in args.shapes.split(","):
        for r in range(args.rounds):
            with bms.postgres_url(args.database_url) as dsn:
                out[f"{shape}#{r}"] = asyncio.run(probe(dsn, shape, args.warmup, args.requests, args.concurrency))
            print(json.dumps({f"{shape}#{r}": out[f"{shape}#{r}"]}), flush=True)
    if args.explain:
        with bms.postgres_url(args.database_url) as dsn:
            print(asyncio.run(explain(dsn, args.explain_rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
