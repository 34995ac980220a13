"""Cost of a rate limit, A/B in one run: a firewall request with no limit (A) vs one that
falls in a Redis token bucket (B: ``model: "*"``, ``selector: {project: "*"}``, a limit
never reached, so every request is checked before forwarding and debited after).

    python -m benchmarks.ratelimit_ab                       # 6 rounds of 3 s, concurrency 1
    python -m benchmarks.ratelimit_ab --rounds 8 --duration-s 4 --kind requests
    python -m benchmarks.ratelimit_ab --callgrind --requests 1000   # instructions per request
    python -m benchmarks.ratelimit_ab --unix-socket        # Redis over a unix socket, not TCP

Both gateways: firewall mode, one worker, the same fake provider and the same private
``redis-server`` (``redis_url`` set on both; A has no ``ratelimits``).  Each round runs
wrk (``-c1 --latency``) against A then B (B then A on odd rounds) and reads the CPU time
of each gateway and of redis-server from /proc.  Prints per round and the medians: gateway
CPU µs per request, Redis CPU µs per request, p50 and p99 latency, and B - A.  Redis round
trips on B's hot path: one EVALSHA per request, which also carries the token debits of
earlier responses (one more script call only when no check comes within 5 ms) --
counted from Redis's own ``INFO commandstats`` over the run, not assumed: script calls
(EVALSHA + EVAL) and checks (the script's MGET, one per check) per request.

``--callgrind``: instead of wrk, each gateway in turn runs under valgrind's callgrind and
the instructions per request at concurrency 1 are counted as ``benchmarks.ab_refs
--callgrind`` does (its measurement window, idle baseline and deferred work included):
stable on a loaded machine, where wall-clock and CPU time are not.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import run as bench
from benchmarks.ab_settings import start
from benchmarks.private_redis import PrivateRedis
from tests.gateway_proc import GatewayProcess


def ratelimit_section(kind: str = "tokens") -> str:
    """Top-level ``ratelimits:`` YAML with one limit every firewall request falls in and
    never reaches (also ``benchmarks/run.py --features rate_limit``'s B side)."""
    return (f"ratelimits:\n  - model: \"*\"\n    selector: {{project: \"*\"}}\n"
            f"    limit: {{{kind}: 1000000000, unit: minute}}\n")  # fmt: skip


def redis_calls(port: int) -> dict[str, int]:
    """Calls per command since start (INFO commandstats), over a raw socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2 or len(data) < int(data[1:data.index(b"\r\n")]):
            data += sock.recv(65536)
    calls = {}
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[8:].partition(":")
            calls[name] = int(rest.split("calls=")[1].split(",")[0])
    return calls


def latency_run(url: str, headers: list[tuple[str, str]], duration_s: float, work: Path) -> dict[str, Any]:
    script = bench._wrk_script(work / "ab.lua", bench.BODY_JSON, headers)
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{max(1, round(duration_s))}s", "--latency", "-s", str(script),
                          url + bench.PATH], capture_output=True, text=True, check=True).stdout  # fmt: skip
    return bench.parse_wrk(out)


class WrappedGateway(GatewayProcess):
    """``plano_fast serve`` (1 worker) under a wrapper (valgrind)."""

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path, wrapper: list[str]) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        args = [*wrapper, sys.executable, "-m", "plano_fast", "serve", "--config", str(config_path),
                "--port", "0", "--workers", "1"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, cwd=bench.ROOT,
                                     env={**os.environ, **env})  # fmt: skip
        self.port = 0
        self.admin_port = 0
        self.pids = []
        self._wait_ready(1, 600)
        self.url = f"http://127.0.0.1:{self.port}"


def callgrind(configs: dict[str, tuple[Path, Any]], work: Path, args: argparse.Namespace, redis_port: int) -> None:
    from benchmarks import ab_refs

    per_request: dict[str, float] = {}
    for name, (config_path, setup) in configs.items():
        out = work / f"cg-{name}"
        out.mkdir()
        wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
                   f"--callgrind-out-file={out}/callgrind.out.%p"]  # fmt: skip
        gw = WrappedGateway(config_path, setup.env, out / "gateway.log", wrapper)
        headers = bench.CLIENT_HEADERS + setup.headers_for("ab")
        try:
            ab_refs.send(gw.url, headers, args.warmup, 1)
            ab_refs._control(gw.proc.pid, "--instr=on")
            ab_refs.send(gw.url, headers, max(20, args.requests // 10), 1)  # translate the instrumented code
            calls0 = redis_calls(redis_port)
            r = ab_refs._callgrind_window(gw, headers, 1, out, args)
            calls1 = redis_calls(redis_port)
        finally:
            gw.stop()
        per_request[name] = float(r["per_request"])
        # (the script calls in the measured window: under valgrind a request takes
        # milliseconds, so the process's rate, and the leases sized by it, are ~50x smaller
        # than at full speed: more script calls per request than under wrk)
        evals = sum(calls1.get(c, 0) - calls0.get(c, 0) for c in ("evalsha", "eval"))
        print(f"{name}: {r['per_request']:,.0f} instructions/request at c=1 (inline {r['inline']:,.0f} + "
              f"deferred {r['deferred']:,.0f}); {r['requests']} requests in {r['wall_s']:.1f} s; "
              f"{evals / max(1, int(r['requests'])):.3f} Redis script calls/request", flush=True)
    print(f"B - A ({args.kind} limit in Redis): {per_request['B'] - per_request['A']:+,.0f} instructions/request "
          f"({(per_request['B'] / per_request['A'] - 1) * 100:+.1f}%)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration-s", type=float, default=3.0)
    ap.add_argument("--kind", choices=("tokens", "requests"), default="tokens")
    ap.add_argument("--unix-socket", action="store_true",
                    help="the gateways reach Redis over a unix socket (redis_url unix://...) instead of TCP")  # fmt: skip
    ap.add_argument("--callgrind", action="store_true", help="instructions per request under callgrind")
    ap.add_argument("--requests", type=int, default=1000, help="callgrind: requests counted")
    ap.add_argument("--warmup", type=int, default=300, help="callgrind: requests before counting")
    ap.add_argument("--idle-s", type=float, default=20.0, help="callgrind: idle baseline")
    ap.add_argument("--period-s", type=float, default=10.0, help="callgrind: windows last whole multiples")
    ap.add_argument("--settle-s", type=float, default=21.0, help="callgrind: wait for deferred work")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rl-ab-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    sock_path = work / "redis.sock"
    redis = PrivateRedis(work, extra_args=("--unixsocket", str(sock_path), "--unixsocketperm", "700")
                         if args.unix_socket else ())  # fmt: skip
    redis_url = f"unix://{sock_path}?db=0" if args.unix_socket else redis.url
    gateways: dict[str, Any] = {}
    try:
        for name in ("A", "B"):
            (work / name).mkdir()
            gw, setup = start("firewall", work / name, fake_port, [f"redis_url={redis_url}"])
            gateways[name] = (gw, setup)
        # B: the same config plus one limit every request falls in; restarted to read it
        gw_b, setup_b = gateways["B"]
        gw_b.stop()
        with open(setup_b.config_path, "a") as fh:
            fh.write(ratelimit_section(args.kind))
        if args.callgrind:
            gateways["A"][0].stop()
            callgrind({k: (setup.config_path, setup) for k, (_, setup) in gateways.items()}, work, args, redis.port)
            return 0
        gateways["B"] = (GatewayProcess(setup_b.config_path, log_path=work / "B" / "gateway2.log",
                                        env=setup_b.env), setup_b)  # fmt: skip
        assert redis.proc is not None
        rows: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for rnd in range(args.rounds):
            order = ["A", "B"] if rnd % 2 == 0 else ["B", "A"]
            for name in order:
                gw, setup = gateways[name]
                pids = bench.proc_tree(gw.proc.pid)
                bench.wait_quiet(pids + [redis.proc.pid])
                cpu0, rcpu0, calls0 = bench.cpu_s(pids), bench.cpu_s([redis.proc.pid]), redis_calls(redis.port)
                r = latency_run(gw.url, bench.CLIENT_HEADERS + setup.headers_for("ab"), args.duration_s, work)
                cpu1, rcpu1, calls1 = bench.cpu_s(pids), bench.cpu_s([redis.proc.pid]), redis_calls(redis.port)
                n = max(1, int(r.get("completed", 0)))
                evals = (calls1.get("evalsha", 0) + calls1.get("eval", 0)) - (calls0.get("evalsha", 0) + calls0.get("eval", 0))
                checks = calls1.get("mget", 0) - calls0.get("mget", 0)
                rows[name].append({
                    "cpu_us": (cpu1 - cpu0) / n * 1e6, "redis_cpu_us": (rcpu1 - rcpu0) / n * 1e6,
                    "p50_us": r["latency_ms"].get("p50", 0.0) * 1000, "p99_us": r["latency_ms"].get("p99", 0.0) * 1000,
                    "rps": r.get("rps", 0.0), "calls_per_req": evals / n, "checks_per_req": checks / n,
                    "incrby_per_req": (calls1.get("incrby", 0) - calls0.get("incrby", 0)) / n,
                    "non2xx": r.get("non2xx", 0),
                })  # fmt: skip
            print(f"round {rnd + 1}: " + "  ".join(
                f"{k} {v[-1]['cpu_us']:.1f} CPU µs/req p50 {v[-1]['p50_us']:.0f} µs p99 {v[-1]['p99_us']:.0f} µs "
                f"({v[-1]['calls_per_req']:.2f} script calls/req, {v[-1]['non2xx']:.0f} non-2xx)"
                for k, v in rows.items()), flush=True)  # fmt: skip
        med = {k: {f: statistics.median(row[f] for row in v) for f in v[0]} for k, v in rows.items()}
        for k in ("A", "B"):
            m = med[k]
            print(f"{k}: median {m['cpu_us']:.1f} gateway CPU µs/req, {m['redis_cpu_us']:.1f} Redis CPU µs/req, "
                  f"p50 {m['p50_us']:.0f} µs, p99 {m['p99_us']:.0f} µs, {m['rps']:.0f} req/s, "
                  f"{m['calls_per_req']:.2f} Redis script calls/req (round trips), {m['checks_per_req']:.2f} checks/req, "
                  f"{m['incrby_per_req']:.2f} INCRBY debits/req")
        print(f"B - A ({args.kind} limit in Redis): {med['B']['cpu_us'] - med['A']['cpu_us']:+.1f} gateway CPU µs/req, "
              f"{med['B']['p50_us'] - med['A']['p50_us']:+.0f} µs p50, {med['B']['p99_us'] - med['A']['p99_us']:+.0f} µs p99")
    finally:
        for gw, _ in gateways.values():
            gw.stop()
        redis.stop()
        bench.stop_proc(fake)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
