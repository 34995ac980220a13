"""Redis's own cost of a rate-limited request: the backend's check (and, for a token
limit, the debit after the response) driven directly, at concurrency 1, against a private
``redis-server`` -- no gateway, no HTTP, so the numbers are Redis's alone.

    python -m benchmarks.ratelimit_redis                      # 20,000 requests, token limit
    python -m benchmarks.ratelimit_redis --kind requests --requests 50000

Per request: what Redis reports in ``INFO commandstats`` (calls and usec per call of each
command: EVALSHA's figure includes the script's own redis.call()s) and redis-server's CPU
time (utime + stime from /proc, which also holds the event-loop and socket work of each
read: a write Redis has to wake up for costs more than the command), plus the round trips
(writes to Redis) per request.  Unlike wall-clock timings these hardly depend on the
machine's load.  With leases (``RedisBackend``) most requests are admitted on the
process's lease and make no call at all: the figures are then the lease grants, returns and
debits beyond the lease spread over the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

from benchmarks import run as bench
from benchmarks.private_redis import PrivateRedis
from plano_fast.ratelimit import build


def commandstats(port: int) -> dict[str, tuple[int, float]]:
    """command -> (calls, usec) since the last CONFIG RESETSTAT."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < int(data[1 : data.index(b"\r\n")]) + data.index(b"\r\n") + 2:
            data += sock.recv(65536)
    out = {}
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[8:].partition(":")
            fields = dict(f.split("=", 1) for f in rest.split(","))
            out[name] = (int(fields["calls"]), float(fields["usec"]))
    return out


def reset_stats(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"CONFIG RESETSTAT\r\n")
        sock.recv(64)


async def drive(url: str, kind: str, requests: int, tokens: int) -> tuple[float, int]:
    """``requests`` checks (+ debits) at concurrency 1; returns (seconds, writes to Redis)."""
    limits = build(
        [{"model": "*", "selector": {"project": "*"}, "limit": {kind: 1_000_000_000, "unit": "minute"}}],
        url, fail_open=False, shared_dir=None,
    )  # fmt: skip
    assert limits is not None
    client = limits.backend.client  # type: ignore[union-attr]
    writes = 0
    real_send = client._send

    def counting_send(*args: object) -> None:
        nonlocal writes
        writes += 1
        real_send(*args)  # type: ignore[arg-type]

    client._send = counting_send  # type: ignore[method-assign]
    buckets = limits.buckets(["m"], [], "p1", None)
    for _ in range(200):  # connect, load the script
        await limits.admit(buckets)
    await asyncio.sleep(0.05)
    writes = 0
    t0 = time.perf_counter()
    for _ in range(requests):
        await limits.admit(buckets)
        # the response's turn: the relay settles after the upstream answered (~a loop turn)
        limits.settle(buckets, tokens)
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # the last debits
    elapsed = time.perf_counter() - t0
    await limits.backend.close()
    return elapsed, writes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--kind", choices=("tokens", "requests"), default="tokens")
    ap.add_argument("--tokens", type=int, default=30, help="tokens debited per request")
    args = ap.parse_args()
    import uvloop

    work = Path(tempfile.mkdtemp(prefix="rl-redis-"))
    redis = PrivateRedis(work)
    try:
        assert redis.proc is not None
        # warm-up run (script load, connection), then the measured one
        uvloop.run(drive(redis.url, args.kind, 500, args.tokens))
        reset_stats(redis.port)
        cpu0 = bench.cpu_s([redis.proc.pid])
        elapsed, writes = uvloop.run(drive(redis.url, args.kind, args.requests, args.tokens))
        cpu1 = bench.cpu_s([redis.proc.pid])
        stats = commandstats(redis.port)
    finally:
        redis.stop()
    n = args.requests
    print(f"{n} {args.kind}-limited requests at c=1 in {elapsed:.2f} s; {writes / n:.2f} writes to Redis/request")
    total_usec = 0.0
    for name, (calls, usec) in sorted(stats.items()):
        if name in ("config", "info", "ping"):
            continue
        total_usec += usec
        print(f"  {name}: {calls / n:.3f} calls/request, {usec / max(1, calls):.2f} usec/call")
    print(f"commandstats: {total_usec / n:.2f} usec/request; redis-server CPU {(cpu1 - cpu0) / n * 1e6:.1f} µs/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
