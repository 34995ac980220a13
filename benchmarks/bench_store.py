"""Usage-write throughput of both stores: rows/s for batches of N rows.

    python -m benchmarks.bench_store                    # both backends, 100k rows, batch 1000
    python -m benchmarks.bench_store --rows 200000 --backend postgres
    python -m benchmarks.bench_store --database-url postgresql://...   # an existing server

PostgreSQL: without --database-url a fresh throwaway database is created through
tests/pg.py (the same harness as the test suite) and dropped afterwards.  Note what it runs
on: the local server on 127.0.0.1:5432 has fsync on; a private cluster has fsync off.

Two workloads: "unpriced" (firewall mode: rows arrive unpriced, no counter updates) and
"priced" (every row carries a cost: each batch also upserts its project/user/key counters
for total, monthly and daily).  Batches are written sequentially, one at a time, as the
usage flusher does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from plano_fast.store import Store, UsageRow, open_store
from plano_fast.store.migrate import migrate


def make_rows(n: int, *, priced: bool, tag: str) -> list[UsageRow]:
    keys = [hashlib.sha256(f"key{i}".encode()).hexdigest() for i in range(50)]
    base = 1_717_200_000 * 1_000_000_000
    return [
        UsageRow(
            request_id=f"{tag}-{i:012d}",
            time_ns=base + i * 10_000_000,
            project_id=f"project-{i % 20}",
            user_id=f"user-{i % 100}" if priced else None,
            key_hash=keys[i % 50],
            token_id=None,
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=1200 + i % 50,
            output_tokens=300,
            cache_read_tokens=64,
            cache_write_tokens=0,
            reasoning_tokens=0,
            streaming=bool(i % 2),
            status="ok",
            http_status=200,
            priced=priced,
            cost_nano_usd=(i % 1000) * 1000 if priced else None,
            duration_us=250_000,
        )
        for i in range(n)
    ]


async def bench(store: Store, rows: list[UsageRow], batch: int) -> float:
    await migrate(store)
    # Warm up (prepared statements, pool, page cache) on rows that are not measured.
    warm = [replace(r, request_id="warm-" + r.request_id) for r in rows[:batch]]
    await store.write_usage(warm)
    start = time.perf_counter()
    written = 0
    for i in range(0, len(rows), batch):
        written += await store.write_usage(rows[i : i + batch])
    elapsed = time.perf_counter() - start
    assert written == len(rows), (written, len(rows))
    return len(rows) / elapsed


@contextmanager
def postgres_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from tests import pg

    with pg.temp_database("plano_fast_bench") as dsn:
        yield dsn
    pg.stop_private_cluster()


def run(kind: str, url: str | None, rows: int, batch: int) -> None:
    for priced in (False, True):
        data = make_rows(rows, priced=priced, tag=f"{kind}-{priced}")
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(url if kind == "postgres" else None, os.path.join(tmp, "bench.db"))

            async def main(store: Store = store, data: list[UsageRow] = data) -> float:
                async with store:
                    return await bench(store, data, batch)

            rate = asyncio.run(main())
        label = "priced  " if priced else "unpriced"
        print(f"{kind:8s} {label} batch={batch:5d} rows={rows:7d}: {rate:10,.0f} rows/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--database-url", help="PostgreSQL DSN (default: a throwaway database)")
    args = parser.parse_args(argv)
    if args.backend in ("sqlite", "both"):
        run("sqlite", None, args.rows, args.batch)
    if args.backend in ("postgres", "both"):
        with postgres_url(args.database_url) as url:
            run("postgres", url, args.rows, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
