"""Whose CPU, while something else loads a gateway on PostgreSQL: the server's side, per database.

    .venv/bin/python -m benchmarks.pg_cpu_watch --seconds 60 > watch.json &
    .venv/bin/python benchmarks/run.py --modes managed-pg:1 --scenarios ns_sat --quick

Every ``--interval-s`` it lists the server's backends (``pg_stat_activity``: client
backends by database, and the server's own processes -- WAL writer, checkpointer,
autovacuum -- by type) and reads each one's time on a CPU (``/proc/<pid>/schedstat``),
so a backend that comes and goes is counted for the time it was seen.  At the end (the
time is up, or SIGINT / SIGTERM) it prints one JSON object: per database, the backends'
CPU seconds and the server's count of its commits (``pg_stat_database.xact_commit``);
per process type, CPU seconds; and the cluster's WAL flushes (``pg_stat_wal.wal_sync``)
and writes over the watch.  Divide by the requests the load tool reports: statements and
server CPU per request.  The server must run on this machine (``/proc``); other users of
the server add to the cluster-wide figures (not to a database's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]

_BACKENDS = """
SELECT pid, COALESCE(datname, ''), backend_type FROM pg_stat_activity WHERE pid <> pg_backend_pid()
"""
_COMMITS = "SELECT datname, xact_commit, xact_rollback FROM pg_stat_database WHERE datname IS NOT NULL"
_WAL = "SELECT wal_sync, wal_write, wal_records, wal_bytes FROM pg_stat_wal"


def _cpu_ns(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError):
        return None  # (gone)


async def watch(dsn: str, seconds: float, interval_s: float, stop: asyncio.Event) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        last: dict[int, tuple[str, int]] = {}  # pid -> (what, cpu ns at the last look)
        cpu_s: dict[str, float] = {}
        #: per database, its commits + rollbacks when first and last seen (a database
        #: dropped before the end -- the benchmark's are -- keeps its last count)
        first_xacts: dict[str, int] = {}
        last_xacts: dict[str, int] = {}

        async def look() -> None:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            for datname, commits, rollbacks in await conn.fetch(_COMMITS):
                n = int(commits) + int(rollbacks)
                first_xacts.setdefault(datname, 0 if started_s else n)  # (created since: from 0)
                last_xacts[datname] = n
            for pid, datname, kind in await conn.fetch(_BACKENDS):
                what = f"db:{datname}" if kind == "client backend" else f"proc:{kind}"
                now = _cpu_ns(pid)
                if now is None:
                    continue
                seen = last.get(pid)
                if seen is not None and seen[0] == what:
                    cpu_s[what] = cpu_s.get(what, 0.0) + (now - seen[1]) / 1e9
                last[pid] = (what, now)

        async def wal() -> tuple[int, ...]:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return tuple(int(v) for v in await conn.fetchrow(_WAL))

        wal0 = await wal()
        started_s = 0.0
        await look()
        started = started_s = time.monotonic()
        while not stop.is_set() and time.monotonic() - started < seconds:
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
            await look()
        wal1 = await wal()
        wall_s = time.monotonic() - started
    finally:
        await conn.close()
    statements = {db: n - first_xacts[db] for db, n in last_xacts.items() if n - first_xacts[db]}
    return {
        "wall_s": round(wall_s, 3),
        "cpu_s": {k: round(v, 3) for k, v in sorted(cpu_s.items(), key=lambda kv: -kv[1])},
        "transactions": statements,
        "wal_sync": wal1[0] - wal0[0],
        "wal_write": wal1[1] - wal0[1],
        "wal_records": wal1[2] - wal0[2],
        "wal_bytes": wal1[3] - wal0[3],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval-s", type=float, default=0.2)
    args = ap.parse_args(argv)

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await watch(args.dsn, args.seconds, args.interval_s, stop)

    print(json.dumps(asyncio.run(run()), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
