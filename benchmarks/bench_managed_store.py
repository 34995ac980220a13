"""The store work of one managed request, alone: instructions, round trips, latency.

    python -m benchmarks.bench_managed_store                       # both backends, both shapes
    python -m benchmarks.bench_managed_store --backend sqlite --callgrind
    python -m benchmarks.bench_managed_store --backend postgres --requests 2000
    python -m benchmarks.bench_managed_store --backend postgres --shapes hard --concurrency 64

Two shapes, as ``plano_fast.gateway.modes.managed`` runs them one request after another
(concurrency 1, the case whose added p50 issue 27 bounds):

* ``nolimit``: the token's project and user have no hard limit (the benchmark harness's
  ``managed`` mode): the synchronous usage write (``write_usage`` of one row, what the
  group writer does at concurrency 1);
* ``hard``: a hard monthly project limit and a daily user limit: ``reserve`` then
  ``settle`` of the request's row;
* ``group`` (not run by default): one group commit of ``--rows-per-commit`` rows (13 by
  default, the batch size the gateway's writer forms at concurrency 32) through
  ``write_usage_now``, as ``GroupWriter`` commits a batch; figures are per commit;
* ``build`` (not run by default): the ``group`` shape's rows built and not written (its
  instructions are the part of ``group``'s that is the benchmark's, not the store's);
* ``writer`` (not run by default): ``nolimit`` through managed mode's synchronous writer
  (``GroupWriter``: rows of requests finishing together share a batch, up to the store's
  ``write_batches_in_flight`` batches at once), the gateway's path under load: run it with
  ``--concurrency``.

``--concurrency N`` runs N such clients at once (closed loop; ``req_per_s`` is their
total), the shape of a loaded gateway.  Reported per request: wall-clock latency (median and p99; noisy on a shared machine),
CPU µs (process utime+stime), and for PostgreSQL the round trips to the server (counted
by wrapping asyncpg's connection calls: every ``execute``/``fetch*``/``executemany`` is
one, and a transaction's BEGIN / COMMIT and the pool's reset query go through ``execute``).  ``--callgrind`` reruns the SQLite shapes
under valgrind's callgrind twice, with ``--requests`` and with ``--requests`` + 1000, and
reports the difference / 1000: instructions per request with start-up and warm-up
subtracted (the process is otherwise idle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plano_fast.store import BudgetTarget, Store, UsageRow, open_store, period_start
from plano_fast.store.migrate import migrate

ROUND_TRIPS = [0]
LIMIT_NANO_USD = 10**18  # never reached: every reservation fits
AMOUNT_NANO_USD = 2_000_000


def count_round_trips() -> None:
    """Wrap asyncpg's connection calls so each one counts as one round trip (a
    transaction's BEGIN / COMMIT and the pool's reset at release go through ``execute``)."""
    import asyncpg  # type: ignore[import-untyped]

    def counted(cls: Any, name: str) -> None:
        original = getattr(cls, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            ROUND_TRIPS[0] += 1
            return await original(*args, **kwargs)

        setattr(cls, name, wrapper)

    for name in ("execute", "executemany", "fetch", "fetchval", "fetchrow"):
        counted(asyncpg.connection.Connection, name)


def make_row(i: int, project_id: str, user_id: str) -> UsageRow:
    return UsageRow(
        request_id=f"bench-{os.getpid()}-{i:09d}", time_ns=time.time_ns(), project_id=project_id,
        user_id=user_id, key_hash=None, token_id="tok-1", provider="openai", model="gpt-4o-mini",
        input_tokens=12, output_tokens=9, cache_read_tokens=0, cache_write_tokens=0,
        reasoning_tokens=0, streaming=False, status="ok", http_status=200, priced=True,
        cost_nano_usd=16_000, duration_us=900,
    )  # fmt: skip


ROWS_PER_COMMIT = [13]
_WRITERS: dict[int, Any] = {}
UPSTREAM_RNG = random.Random(27)
#: the event a writer hands to its fallback if a batch fails (none does here: counted)
WRITER_EVENT: Any = None


def group_writer(store: Store) -> Any:
    from plano_fast.managed.context import GroupWriter

    writer = _WRITERS.get(id(store))
    if writer is None:
        def failed(event: Any) -> None:
            raise RuntimeError("a synchronous write failed")

        writer = _WRITERS[id(store)] = GroupWriter(store, failed)
    return writer


async def one_request(store: Store, shape: str, i: int) -> None:
    if shape in ("group", "build"):
        n = ROWS_PER_COMMIT[0]
        rows = [make_row(i * n + j, "proj-bench", "user-bench") for j in range(n)]
        if shape == "build":
            return
        if store.write_usage_now(rows) is None:
            await store.write_usage(rows)
        return
    row = make_row(i, "proj-bench", "user-bench")
    if shape == "writer":
        # Each request's upstream time first (0-2 ms, uniform): requests finish at
        # different moments, as a gateway's do, rather than in lockstep with the batch
        # before them (which would make every batch all the clients).
        await asyncio.sleep(UPSTREAM_RNG.random() * 0.002)
        await group_writer(store).write(row, WRITER_EVENT)
        return
    if shape == "nolimit":
        await store.write_usage([row])
        return
    now = time.time_ns()
    targets = [
        BudgetTarget("project", "proj-bench", "monthly", period_start("monthly", now), LIMIT_NANO_USD),
        BudgetTarget("user", "user-bench", "daily", period_start("daily", now), LIMIT_NANO_USD),
    ]
    res = await store.reserve(targets, AMOUNT_NANO_USD, ttl_s=600, owner="bench-instance")
    assert res is not None
    assert await store.settle(res, row)


async def run_shape(store: Store, shape: str, warmup: int, requests: int, concurrency: int = 1) -> dict[str, float]:
    for i in range(warmup):
        await one_request(store, shape, i)
    ROUND_TRIPS[0] = 0
    lat_s: list[float] = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)

    async def client(first: int, step: int) -> None:
        # ``concurrency`` clients, each one request after another (closed loop).
        for i in range(first, warmup + requests, step):
            t0 = time.perf_counter()
            await one_request(store, shape, i)
            lat_s.append(time.perf_counter() - t0)

    w0 = time.perf_counter()
    await asyncio.gather(*(client(warmup + c, concurrency) for c in range(concurrency)))
    wall_s = time.perf_counter() - w0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    lat_s.sort()
    return {
        "p50_ms": statistics.median(lat_s) * 1e3,
        "p99_ms": lat_s[int(len(lat_s) * 0.99) - 1] * 1e3,
        "cpu_us": cpu_s / requests * 1e6,
        "round_trips": ROUND_TRIPS[0] / requests,
        "req_per_s": requests / wall_s,
    }


async def measure(url: str | None, shape: str, warmup: int, requests: int, concurrency: int = 1) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(url, os.path.join(tmp, "managed.db"))
        async with store:
            await migrate(store)
            return await run_shape(store, shape, warmup, requests, concurrency)


@contextmanager
def postgres_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from tests import pg

    with pg.temp_database("plano_fast_bench") as dsn:
        yield dsn


def callgrind_ir(shape: str, requests: int, warmup: int, rows_per_commit: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
             "benchmarks.bench_managed_store", "--backend", "sqlite", "--shapes", shape,
             "--requests", str(requests), "--warmup", str(warmup), "--quiet",
             "--rows-per-commit", str(rows_per_commit)],
            check=True, capture_output=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        text = out.read_text(errors="replace")
    found = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("no totals in the callgrind output")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--shapes", default="nolimit,hard")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--database-url", help="PostgreSQL DSN (default: a throwaway database)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="clients, each one request after another (1: the issue's concurrency-1 case)")
    ap.add_argument("--callgrind", action="store_true", help="SQLite: instructions per request")
    ap.add_argument("--rows-per-commit", type=int, default=13, help="the group shape's rows a commit")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    ROWS_PER_COMMIT[0] = args.rows_per_commit
    results: dict[str, dict[str, float]] = {}
    if args.backend in ("sqlite", "both"):
        for shape in shapes:
            results[f"sqlite/{shape}"] = asyncio.run(measure(None, shape, args.warmup, args.requests, args.concurrency))
            if args.callgrind:
                base = callgrind_ir(shape, args.requests, args.warmup, args.rows_per_commit)
                more = callgrind_ir(shape, args.requests + 1000, args.warmup, args.rows_per_commit)
                results[f"sqlite/{shape}"]["instructions"] = (more - base) / 1000
    if args.backend in ("postgres", "both"):
        count_round_trips()
        with postgres_url(args.database_url) as url:
            for shape in shapes:
                results[f"postgres/{shape}"] = asyncio.run(measure(url, shape, args.warmup, args.requests, args.concurrency))
    if not args.quiet:
        print(f"load: {os.getloadavg()}")
        for name, r in results.items():
            print(f"{name:18s} " + "  ".join(f"{k}={v:,.3f}" for k, v in r.items()))
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
