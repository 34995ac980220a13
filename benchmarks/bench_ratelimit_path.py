"""Instructions per request of the rate-limit lease path alone, in one process.

    python -m benchmarks.bench_ratelimit_path                     # callgrind, tokens limit
    python -m benchmarks.bench_ratelimit_path --kind requests --interval-ms 0
    python -m benchmarks.bench_ratelimit_path --profile           # cProfile table
    python -m benchmarks.bench_ratelimit_path --upto buckets      # only RateLimits.buckets

What a firewall request falling in ``benchmarks.ratelimit_ab``'s limit runs of
``plano_fast.ratelimit`` (``model: "*"``, ``selector: {project: "*"}``, a limit never
reached), against a private ``redis-server``: ``RateLimits.buckets``, ``admit_leased``
(``admit_remote`` when the leases cannot admit), a loop turn, ``settle`` with the
tokens of a response -- and the loop's work they cause (lease fetches, the idle-return
and debit timers, the script's replies).  A request every ``--interval-ms`` (default 2:
about the pace of ``ratelimit_ab --callgrind``'s gateway under valgrind, which sizes the
leases; 0: as fast as the loop goes).  The A side runs the same loop with no limits
(B - A is the rate limit's cost).  Under ``valgrind --tool=callgrind
--instr-atstart=no`` the child switches the instrumentation on after its warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: ``--upto``: the calls made per request, cumulatively (the rest done once, before the loop)
STAGES = ("buckets", "admit", "settle")
HEADERS = [(b"host", b"127.0.0.1:12000"), (b"content-type", b"application/json"), (b"x-user-id", b"u-17")]


async def _run(redis_url: str, kind: str, limited: bool, n: int, interval_s: float, profile: str, upto: str) -> None:
    from plano_fast import ratelimit

    raw = [{"model": "*", "selector": {"project": "*"}, "limit": {kind: 1_000_000_000, "unit": "minute"}}]
    limits = ratelimit.build(raw, redis_url, False, None) if limited else None
    models = ("gpt-4o-mini",)
    key_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    stage = STAGES.index(upto)

    async def one() -> None:
        buckets: Any = ()
        if limits is not None:
            buckets = limits.buckets(models, HEADERS, "proj-1", key_hash)
            if stage >= 1 and limits.admit_leased(buckets, False) is None:
                await limits.admit_remote(buckets, False)
        await asyncio.sleep(interval_s)  # the request in flight: the loop runs meanwhile
        if limits is not None and stage >= 2:
            limits.settle(buckets, 57)

    for _ in range(300):
        await one()
    profiler = None
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
    if os.environ.get("BENCH_RL_CALLGRIND"):
        subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
    for _ in range(n):
        await one()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    os._exit(0)


def child(redis_url: str, kind: str, limited: bool, n: int, interval_s: float, profile: str, upto: str) -> None:
    import uvloop

    uvloop.run(_run(redis_url, kind, limited, n, interval_s, profile, upto))


def _cmd(args: argparse.Namespace, redis_url: str, limited: bool, profile: str = "") -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path[:0] = [{str(ROOT)!r}]; "
            "from benchmarks.bench_ratelimit_path import child; "
            f"child({redis_url!r}, {args.kind!r}, {limited!r}, {args.n}, {args.interval_ms / 1000!r}, {profile!r}, "
            f"{args.upto!r})"]


def main() -> int:
    from benchmarks.private_redis import PrivateRedis

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=("tokens", "requests"), default="tokens")
    ap.add_argument("--n", type=int, default=2000, help="requests counted")
    ap.add_argument("--interval-ms", type=float, default=2.0)
    ap.add_argument("--upto", choices=STAGES, default="settle",
                    help="buckets: only RateLimits.buckets per request; admit: and admit_leased (no settle: "
                         "the leases drain, more script calls); settle: the whole path")  # fmt: skip
    ap.add_argument("--profile", action="store_true", help="cProfile of the B loop instead of callgrind")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    redis = PrivateRedis(work)
    try:
        if args.profile:
            out = str(work / "profile.out")
            subprocess.run(_cmd(args, redis.url, True, out), cwd=ROOT, check=True)
            stats = pstats.Stats(out)
            rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
            print(f"cProfile of {args.n} requests (per request: calls, tottime µs, cumtime µs)")
            for (file, line, fn), (_, nc, tt, ct, _) in rows[: args.top]:
                where = f"{Path(file).name}:{line}" if line else file
                print(f"   {nc / args.n:6.3f} {tt / args.n * 1e6:7.2f} {ct / args.n * 1e6:7.2f}  {fn}  {where}")
            return 0
        per = {}
        for side, limited in (("A", False), ("B", True)):
            out = work / f"callgrind.{side}"
            env = {**os.environ, "PYTHONHASHSEED": "0", "BENCH_RL_CALLGRIND": "1"}
            subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                            *_cmd(args, redis.url, limited)], cwd=ROOT, env=env, check=True, capture_output=True)
            match = re.search(r"^(?:totals|summary):\s+(\d+)", out.read_text(), re.M)
            assert match is not None, out
            per[side] = int(match.group(1)) / args.n
            print(f"{side}: {per[side]:,.0f} instructions/request", flush=True)
        print(f"B - A ({args.kind} limit in Redis, a request every {args.interval_ms} ms): "
              f"{per['B'] - per['A']:+,.0f} instructions/request")
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
