"""Does the SQLite store's hot COMMIT block the event loop? (issue 27, concurrency-1 tail)

    .venv/bin/python -m benchmarks.hot_commit_probe [--stored 50000] [--batches 20] [--gap-s 1.1]
    .venv/bin/python -m benchmarks.hot_commit_probe --restart-on-loop     # the old behaviour
    .venv/bin/python -m benchmarks.hot_commit_probe --rows-per-s 500 [--restart-on-loop]

A real ``SqliteStore`` on a file (the work dir's disk, not tmpfs) gets ``--stored`` usage
rows, then ``--batches`` batches of 1,000 rows ``--gap-s`` apart (long enough for the
store's once-a-second checkpoint to run on its thread in between, as at 500 req/s).
Every statement is timed on the connection that runs it, with the thread's context
switches (``getrusage(RUSAGE_THREAD)``): a statement on the event loop with a voluntary
switch inside blocked the loop (an fsync, a page wait), whatever the machine's load.

``--restart-on-loop`` makes the checkpoint a plain ``PRAGMA wal_checkpoint(PASSIVE)``,
as before the WAL restart moved to the thread: the first hot COMMIT after each
checkpoint then restarts the WAL and fsyncs its header on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_cpu_ns = time.thread_time_ns
_cpu: dict[str, list[int]] = {}
_blocked: dict[str, list[int]] = {}  # name -> wall µs of each statement that blocked
_one_row_wall_us: list[int] = []  # each one-row write's wall time, back-offs on a taken lock included
_declined_wall_us: list[int] = []  # those the hot connection declined at once (lock taken): their wait
_restart_hold_us: list[int] = []  # how long the thread's WAL restart held the write lock, each time
_holds: list[tuple[int, int]] = []  # (start ns, end ns) of each hold
_writes: list[tuple[int, int, bool]] = []  # one-row writes: (start ns, wall ns, declined)
_slow_now: list[tuple[float, int, int]] = []  # write_usage_now calls over 2 ms: (wall ms, voluntary, involuntary switches)


def _switches() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


class _TimedConnection(sqlite3.Connection):
    def _timed(self, name: str, run: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            name = "thread: " + name
        cpu, wall, switches = _cpu_ns(), time.monotonic_ns(), _switches()
        try:
            return run()
        finally:
            _cpu.setdefault(name, []).append(_cpu_ns() - cpu)
            if _switches() > switches:
                _blocked.setdefault(name, []).append((time.monotonic_ns() - wall) // 1000)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        return self._timed(" ".join(sql.split()[:2])[:24], lambda: super(_TimedConnection, self).execute(sql, *args))

    def executescript(self, script: str) -> sqlite3.Cursor:  # type: ignore[override]
        return self._timed("script " + " ".join(script.split()[:2])[:24],
                           lambda: super(_TimedConnection, self).executescript(script))


def _row(i: int) -> Any:
    from plano_fast.store import UsageRow

    return UsageRow(
        request_id=f"{'ab' * 16}-{i:x}", time_ns=1_733_000_000_000_000_000 + i * 1000, project_id=None,
        user_id=None, key_hash="k" * 64, token_id=None, provider="openai", model="gpt-4o-mini",
        input_tokens=12, output_tokens=3, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
        streaming=False, status="ok", http_status=200, priced=True, cost_nano_usd=7,
    )  # fmt: skip


async def _run(args: argparse.Namespace, path: str) -> None:
    from plano_fast.store import open_store
    from plano_fast.store.migrate import migrate

    async with open_store(None, path) as store:
        await migrate(store)
        n = 0
        while n < args.stored:
            await store.write_usage([_row(n + j) for j in range(1000)])
            n += 1000
        await asyncio.sleep(args.gap_s)
        _cpu.clear()
        _blocked.clear()
        for _ in range(args.batches):
            await store.write_usage([_row(n + j) for j in range(1000)])
            n += 1000
            if not args.rows_per_s:
                await asyncio.sleep(args.gap_s)
                continue
            # one-row commits in between, as managed mode writes each request's row
            loop = asyncio.get_running_loop()
            end = loop.time() + args.gap_s
            while loop.time() < end:
                # as managed mode writes a request's row at concurrency 1 (GroupWriter,
                # ``alone``): at once on the loop, else (declined) the awaited write
                t0 = time.monotonic_ns()
                ru0 = resource.getrusage(resource.RUSAGE_THREAD)
                declined = store.write_usage_now([_row(n)]) is None
                if time.monotonic_ns() - t0 > 2_000_000:
                    ru1 = resource.getrusage(resource.RUSAGE_THREAD)
                    _slow_now.append(((time.monotonic_ns() - t0) / 1e6, ru1.ru_nvcsw - ru0.ru_nvcsw,
                                      ru1.ru_nivcsw - ru0.ru_nivcsw))
                if declined:
                    await store.write_usage([_row(n)])
                    _declined_wall_us.append((time.monotonic_ns() - t0) // 1000)
                _writes.append((t0, time.monotonic_ns() - t0, declined))
                _one_row_wall_us.append((time.monotonic_ns() - t0) // 1000)
                n += 1
                await asyncio.sleep(1 / args.rows_per_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stored", type=int, default=50_000)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--gap-s", type=float, default=1.1)
    ap.add_argument("--rows-per-s", type=float, default=0.0,
                    help="one-row commits at this rate between the batches (managed mode's per-request writes)")
    ap.add_argument("--restart-on-loop", action="store_true", help="the old checkpoint (PASSIVE only)")
    ap.add_argument("--doubling-backoff", action="store_true",
                    help="a write waiting on the thread's WAL restart backs off doubling, as before RESTART_POLL_S")
    ap.add_argument("--dir", default=None,
                    help="where the database goes (default: the temp dir; a disk, not tmpfs, for fsyncs to cost)")
    args = ap.parse_args(argv)

    original = sqlite3.connect

    def connect(*a: Any, **k: Any) -> sqlite3.Connection:
        k.setdefault("factory", _TimedConnection)
        return original(*a, **k)

    sqlite3.connect = connect  # type: ignore[assignment]
    import plano_fast.store.sqlite as sqlite_store

    if args.restart_on_loop:
        sqlite_store._checkpoint_and_restart = (  # type: ignore[attr-defined]
            lambda conn, restart=None: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
    original_restart = sqlite_store._checkpoint_and_restart

    def restart_timed(conn: sqlite3.Connection, restart: Any = None) -> None:
        class Held:  # the restart's hold of the write lock, timed (and hidden when --doubling-backoff)
            def __init__(self) -> None:
                self.since = 0

            @property
            def held(self) -> bool:
                return False

            @held.setter
            def held(self, value: bool) -> None:
                if value:
                    self.since = time.monotonic_ns()
                elif self.since:
                    _restart_hold_us.append((time.monotonic_ns() - self.since) // 1000)
                    _holds.append((self.since, time.monotonic_ns()))
                if restart is not None and not args.doubling_backoff:
                    restart.held = value

        original_restart(conn, Held())

    sqlite_store._checkpoint_and_restart = restart_timed  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        asyncio.run(_run(args, os.path.join(work, "usage.db")))
    commits = sorted(_cpu.get("COMMIT", []))
    blocked = sorted(_blocked.get("COMMIT", []))
    print(f"{'restart on the loop (old)' if args.restart_on_loop else 'restart on the thread (new)'}: "
          f"{args.batches} batches of 1,000 rows on {args.stored:,} stored, {args.gap_s} s apart")
    print(f"  hot COMMITs that blocked the loop: {len(blocked)} of {len(commits)}"
          + (f", wall ms median {statistics.median(blocked) / 1e3:.1f} max {blocked[-1] / 1e3:.1f}" if blocked else ""))
    print(f"  hot COMMIT CPU µs median {statistics.median(commits) / 1e3:.0f} max {commits[-1] / 1e3:.0f}")
    if _one_row_wall_us:
        w = sorted(_one_row_wall_us)
        print(f"  one-row writes: {len(w)}, wall ms p50 {w[len(w) // 2] / 1e3:.2f} p99 {w[len(w) * 99 // 100] / 1e3:.2f}"
              f" max {w[-1] / 1e3:.1f}, over 5 ms: {sum(x > 5000 for x in w)}")
    if _restart_hold_us or _declined_wall_us:
        h, d = sorted(_restart_hold_us), sorted(_declined_wall_us)
        print(f"  WAL restarts holding the write lock: {len(h)}"
              + (f", held ms median {statistics.median(h) / 1e3:.2f} max {h[-1] / 1e3:.1f}" if h else ""))
        print(f"  one-row writes declined (lock taken): {len(d)}"
              + (f", their wait ms median {statistics.median(d) / 1e3:.2f} max {d[-1] / 1e3:.1f}" if d else ""))
    met = [(w, d, min(abs(w0 - h0) for h0, _ in _holds)) for w0, w, d in _writes
           if any(h0 - w <= w0 <= h1 for h0, h1 in _holds)]
    if _holds:
        print(f"  one-row writes overlapping a restart's hold: {len(met)}, declined {sum(d for _, d, _ in met)}, "
              f"wall ms: {sorted(round(w / 1e6, 2) for w, _, _ in met)}")
    if _slow_now:
        print(f"  write_usage_now calls over 2 ms (wall ms, voluntary, involuntary switches): {_slow_now}")
    for name, walls in sorted(_blocked.items()):
        if name != "COMMIT":
            print(f"  {name}: {len(walls)} blocked of {len(_cpu[name])}, wall ms max {max(walls) / 1e3:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
