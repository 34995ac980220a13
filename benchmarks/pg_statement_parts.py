"""Where a usage batch statement's backend CPU goes (issue 27): parts of it run alone.

    .venv/bin/python -m benchmarks.pg_statement_parts                 # 13 rows a statement
    .venv/bin/python -m benchmarks.pg_statement_parts --rows 52 --statements 200

On one connection to a fresh database (``bench_managed_store.postgres_url``), each variant
runs ``--statements`` times (after 20 unmeasured) with a batch of ``--rows`` new rows, and
the backend's time on a CPU (``/proc/<pid>/schedstat``) is divided by the statements, for
``--rounds`` rounds (the variants interleaved):

* ``select1``: the round trip's floor;
* ``decode``: the rows' composite array read and counted, nothing written;
* ``insert``: the rows inserted (``ON CONFLICT (request_id) DO NOTHING``), no counters;
* ``insert_plain``: the same without ``ON CONFLICT``;
* ``write``: the store's batch statement (``_WRITE_USAGE``: rows and counters);
* ``write_unflushed``: the same committed with ``synchronous_commit = off`` (no WAL flush);
* ``write_client_deltas``: the rows, and counter deltas summed here, not in SQL (what
  ``_write_one_sql`` does for one row).

Each statement is its own transaction, as the store's are; a loaded machine inflates all of
them (compare within one run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from benchmarks import bench_managed_store as bms
from benchmarks.pg_server_probe import _cpu_ns
from plano_fast.store import open_store, postgres
from plano_fast.store.migrate import migrate
from plano_fast.store.sql import counter_deltas

_COLUMNS = postgres._USAGE_COLUMN_LIST
_INSERT = postgres._INPUT_CTE + f"""
ins AS (INSERT INTO usage_log ({_COLUMNS}) SELECT {_COLUMNS} FROM input
         ON CONFLICT (request_id) DO NOTHING RETURNING 1)
SELECT count(*) FROM ins"""
_INSERT_PLAIN = postgres._INPUT_CTE + f"""
ins AS (INSERT INTO usage_log ({_COLUMNS}) SELECT {_COLUMNS} FROM input RETURNING 1)
SELECT count(*) FROM ins"""
_CLIENT_DELTAS = postgres._INPUT_CTE + f"""
ins AS (INSERT INTO usage_log ({_COLUMNS}) SELECT {_COLUMNS} FROM input
         ON CONFLICT (request_id) DO NOTHING RETURNING 1),
bump AS (
    INSERT INTO spending_counters AS sc
        (scope_kind, scope_id, period, period_start, shard, spent_nano_usd, reserved_nano_usd, updated_at_ns)
    SELECT k, i, p, s, $3::smallint, c, 0, $2::bigint
      FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[]) AS t(k, i, p, s, c)
     WHERE EXISTS (SELECT FROM ins)
     ORDER BY k COLLATE "C", i COLLATE "C", p COLLATE "C", s{postgres._BUMP_SET}
)
SELECT count(*) FROM ins"""


async def measure(dsn: str, rows: int, statements: int, rounds: int) -> dict[str, list[int]]:
    async with open_store(dsn, "unused.db") as store:
        await migrate(store)
        await store.write_usage([bms.make_row(10**9, "proj-bench", "user-bench")])  # counters exist
    conn = await asyncpg.connect(dsn)
    pid = conn.get_server_pid()
    made = [0]
    now = time.time_ns()

    def batch() -> list[Any]:
        made[0] += 1
        return [bms.make_row(made[0] * 10_000 + j, "proj-bench", "user-bench") for j in range(rows)]

    def records() -> tuple[Any, ...]:
        return (postgres._usage_records(batch()),)

    def write() -> tuple[Any, ...]:
        return (*records(), now, 3)

    def client_deltas() -> tuple[Any, ...]:
        made_rows = batch()
        deltas = sorted(counter_deltas(made_rows).items())
        return (postgres._usage_records(made_rows), now, 3, *([key[n] for key, _ in deltas] for n in range(4)),
                [cost for _, cost in deltas])

    variants: dict[str, tuple[str, Callable[[], tuple[Any, ...]]]] = {
        "select1": ("SELECT 1", tuple),
        "decode": ("SELECT count(*) FROM unnest($1::usage_input[])", records),
        "insert": (_INSERT, records),
        "insert_plain": (_INSERT_PLAIN, records),
        "write": (postgres._WRITE_USAGE, write),
        "write_unflushed": (postgres._unflushed(postgres._WRITE_USAGE), write),
        "write_client_deltas": (_CLIENT_DELTAS, client_deltas),
    }
    out: dict[str, list[int]] = {}
    try:
        for _ in range(rounds):
            for name, (sql, args) in variants.items():
                for _ in range(20):
                    await conn.fetchval(sql, *args())
                cpu0 = _cpu_ns(pid)
                for _ in range(statements):
                    await conn.fetchval(sql, *args())
                out.setdefault(name, []).append(round((_cpu_ns(pid) - cpu0) / statements / 1e3))
    finally:
        await conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=13, help="rows a statement (13: the writer's at concurrency 32)")
    ap.add_argument("--statements", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--database-url", help="PostgreSQL DSN (default: a throwaway database on the local server)")
    args = ap.parse_args(argv)
    with bms.postgres_url(args.database_url) as dsn:
        result = asyncio.run(measure(dsn, args.rows, args.statements, args.rounds))
    print(json.dumps({"rows": args.rows, "backend_cpu_us_a_statement": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
