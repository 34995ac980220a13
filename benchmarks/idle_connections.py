"""Memory under many open connections: 10,000 idle keep-alive clients and 1,000 concurrent
streams, gateway RSS before, during and after (issue 27: < 200 MiB per process, flat after
load).

    .venv/bin/python -m benchmarks.idle_connections [--mode config|firewall] [--idle 10000]
        [--streams 1000] [--rounds 3]

Each round opens ``--idle`` connections to one gateway worker, sends one small chat
request on each (so every connection has served a request and sits in keep-alive, as a
pooled client's would), holds them, reads RSS; then runs ``--streams`` concurrent streamed
requests (64 events x 20 ms from the fake provider) on fresh connections while the idle
ones stay open; then closes everything and reads RSS again after the gateway settles.
Rounds repeat the whole cycle: "flat after load" means the after-round RSS stops growing.

The client runs in this process on uvloop; the machine's open-file limit must allow the
connections (both ends are on this machine: the soft limit is raised to the hard one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import MODES, rss_kib, start_fake, stop_proc  # noqa: E402

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                          "messages": [{"role": "user", "content": "hi"}]}).encode()


def _request(body: bytes, headers: list[tuple[str, str]]) -> bytes:
    head = [b"POST /v1/chat/completions HTTP/1.1", b"host: 127.0.0.1", b"content-type: application/json",
            b"content-length: " + str(len(body)).encode()]
    head += [f"{k}: {v}".encode() for k, v in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (content-length or chunked); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def _exchange(port: int, req: bytes) -> tuple[asyncio.StreamWriter | None, bool]:
    """One request on a new connection: (the open connection, answered 200)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(req)
        return writer, await _read_response(reader) == 200
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return None, False


async def _open_idle(port: int, n: int, headers: list[tuple[str, str]], batch: int = 500) -> tuple[list[Any], int]:
    """``n`` connections that each served one request and stay open (keep-alive)."""
    conns: list[Any] = []
    bad = 0
    req = _request(BODY, headers)
    for start in range(0, n, batch):
        for writer, ok in await asyncio.gather(*(_exchange(port, req) for _ in range(min(batch, n - start)))):
            bad += not ok
            if writer is not None:
                conns.append(writer)
    return conns, bad


async def _streams(port: int, n: int, headers: list[tuple[str, str]]) -> int:
    """``n`` concurrent streamed requests, each on its own connection; how many failed."""
    req = _request(STREAM_BODY, headers)
    done = await asyncio.gather(*(_exchange(port, req) for _ in range(n)))
    for writer, _ in done:
        if writer is not None:
            writer.close()
    return sum(not ok for _, ok in done)


def _rss_mb(pids: list[int]) -> float:
    return rss_kib(pids)["rss_max_mb"] if pids else 0.0


async def measure(port: int, pids: list[int], headers: list[tuple[str, str]],
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    await _open_idle(port, 50, headers)  # warm: pools, caches
    base = _rss_mb(pids)
    for r in range(args.rounds):
        t0 = time.monotonic()
        conns, bad_idle = await _open_idle(port, args.idle, headers)
        await asyncio.sleep(1.0)
        idle_mb = _rss_mb(pids)
        bad_streams = await _streams(port, args.streams, headers)
        during_mb = _rss_mb(pids)
        for w in conns:
            w.close()
        await asyncio.sleep(2.0)
        after_mb = _rss_mb(pids)
        row = {"round": r + 1, "idle_open": len(conns), "idle_failed": bad_idle,
               "streams_failed": bad_streams, "rss_before_mb": round(base, 1),
               "rss_idle_mb": round(idle_mb, 1), "rss_after_streams_mb": round(during_mb, 1),
               "rss_after_close_mb": round(after_mb, 1), "seconds": round(time.monotonic() - t0, 1)}
        print(json.dumps(row), flush=True)
        rounds.append(row)
    return rounds


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + args.streams + 256:
        raise SystemExit(f"the open-file limit ({hard}) is below {args.idle + args.streams + 256}")
    from tests.gateway_proc import GatewayProcess

    work = Path(tempfile.mkdtemp(prefix="plano-idle-"))
    fake, fake_port = start_fake(1, work / "fake.log")
    try:
        setup = MODES[args.mode](work, fake_port, 1, ["idle"])  # before the loop: it runs its own
        gw = GatewayProcess(setup.config_path, workers=1, log_path=work / "gateway.log", env=setup.env)
        try:
            return asyncio.run(measure(gw.port, gw.pids or [gw.proc.pid], setup.headers_for("idle"), args))
        finally:
            gw.stop()
    finally:
        stop_proc(fake)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.idle_connections", description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="config", choices=sorted(MODES))
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--streams", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rounds = run(args)
    worst = max(r["rss_after_streams_mb"] for r in rounds)
    after = [r["rss_after_close_mb"] for r in rounds]
    print(f"{args.mode}: peak RSS {worst:.1f} MiB (target < 200); after each round "
          + " -> ".join(f"{a:.1f}" for a in after) + " MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
