"""Rows lost to a SIGKILL under load, with the usage write-ahead log on and off.

    python -m benchmarks.kill_under_load                 # firewall, 1 worker, 2,000 requests
    python -m benchmarks.kill_under_load --requests 2000 --concurrency 32 --kill-after 1000

For each setting: a fresh firewall gateway (one worker, SQLite, the default 10 s flush
interval, so at the kill nearly everything is still in memory); load at ``--concurrency``
until ``--kill-after`` answers came back 2xx, then SIGKILL mid-load; the answers already
received are counted.  A new gateway on the same files replays what was journaled and is
stopped gracefully; then rows in the store are compared with the 2xx answers.  A 2xx
answer whose row is missing is a lost row.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import run as bench
from tests.gateway_proc import GatewayProcess


async def fire(url: str, headers: list[tuple[str, str]], total: int, concurrency: int,
               kill_after: int, kill: Any) -> int:
    ok = 0
    killed = False
    sent = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal ok, killed, sent
            while sent < total and not killed:
                sent += 1
                try:
                    async with session.post(url, data=bench.BODY_JSON.encode(), headers=headers) as resp:
                        await resp.read()
                        if 200 <= resp.status < 300 and not killed:
                            ok += 1
                except aiohttp.ClientError:
                    return
                if ok >= kill_after and not killed:
                    killed = True
                    kill()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def one(wal: bool, args: argparse.Namespace, fake_port: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"kill-wal-{wal}-"))
    setup = bench.MODES["firewall"](work, fake_port, 1, ["kill"])
    with open(setup.config_path, "a") as fh:
        fh.write(f"  usage_wal: {'true' if wal else 'false'}\n")
        fh.write(f"  usage_wal_sync_interval_s: {args.sync_s}\n")
    gw = GatewayProcess(setup.config_path, log_path=work / "gateway.log", env=setup.env)
    headers = bench.CLIENT_HEADERS + setup.headers_for("kill")
    started = time.monotonic()
    answered = asyncio.run(fire(gw.url + bench.PATH, headers, args.requests, args.concurrency,
                                args.kill_after, gw.proc.kill))
    rate = answered / (time.monotonic() - started)
    gw.wait(10)
    gw.stop()
    again = GatewayProcess(setup.config_path, log_path=work / "gateway2.log", env=setup.env, migrate=False)
    again.stop()
    with sqlite3.connect(work / "usage.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM usage_log WHERE status = 'ok'").fetchone()[0]
    return {"wal": wal, "answered_2xx": answered, "rows": rows, "lost": max(0, answered - rows),
            "rate": rate, "window": rate * args.sync_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--kill-after", type=int, default=1000)
    ap.add_argument("--sync-s", type=float, default=0.1, help="usage_wal_sync_interval_s")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kill-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    try:
        for wal in (True, False):
            r = one(wal, args, fake_port)
            print(f"usage_wal={str(r['wal']).lower():5}  2xx answered before the kill {r['answered_2xx']:>5}  "
                  f"rows after restart {r['rows']:>5}  lost {r['lost']:>5}  "
                  f"({r['rate']:.0f} req/s: one {args.sync_s} s sync window = {r['window']:.0f} requests)",
                  flush=True)
    finally:
        bench.stop_proc(fake)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
