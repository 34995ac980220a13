"""Cost of a rate limit, A/B in one run: a firewall request with no limit (A) vs one that
falls in a Redis token bucket (B: ``model: "*"``, ``selector: {project: "*"}``, a limit
never reached, so every request is checked before forwarding and debited after).

    python -m benchmarks.ratelimit_ab                       # 6 rounds of 3 s, concurrency 1
    python -m benchmarks.ratelimit_ab --rounds 8 --duration-s 4 --kind requests

Both gateways: firewall mode, one worker, the same fake provider and the same private
``redis-server`` (``redis_url`` set on both; A has no ``ratelimits``).  Each round runs
wrk (``-c1 --latency``) against A then B (B then A on odd rounds) and reads the CPU time
of each gateway and of redis-server from /proc.  Prints per round and the medians: gateway
CPU µs per request, Redis CPU µs per request, p50 and p99 latency, and B - A.  Redis round
trips on B's hot path: one EVALSHA per request (the token debit is a pipelined
INCRBY+EXPIRE after the response, off the hot path) -- counted from Redis's own
``INFO commandstats`` over the run, not assumed.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import run as bench
from benchmarks.ab_settings import start
from benchmarks.private_redis import PrivateRedis


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration-s", type=float, default=3.0)
    ap.add_argument("--kind", choices=("tokens", "requests"), default="tokens")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rl-ab-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    redis = PrivateRedis(work)
    gateways: dict[str, Any] = {}
    try:
        for name in ("A", "B"):
            (work / name).mkdir()
            gw, setup = start("firewall", work / name, fake_port, [f"redis_url={redis.url}"])
            gateways[name] = (gw, setup)
        # B: the same config plus one limit every request falls in; restarted to read it
        gw_b, setup_b = gateways["B"]
        gw_b.stop()
        with open(setup_b.config_path, "a") as fh:
            fh.write(f"ratelimits:\n  - model: \"*\"\n    selector: {{project: \"*\"}}\n"
                     f"    limit: {{{args.kind}: 1000000000, unit: minute}}\n")  # fmt: skip
        from tests.gateway_proc import GatewayProcess

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
                rows[name].append({
                    "cpu_us": (cpu1 - cpu0) / n * 1e6, "redis_cpu_us": (rcpu1 - rcpu0) / n * 1e6,
                    "p50_us": r["latency_ms"].get("p50", 0.0) * 1000, "p99_us": r["latency_ms"].get("p99", 0.0) * 1000,
                    "rps": r.get("rps", 0.0), "checks_per_req": evals / n,
                    "incrby_per_req": (calls1.get("incrby", 0) - calls0.get("incrby", 0)) / n,
                    "non2xx": r.get("non2xx", 0),
                })  # fmt: skip
            print(f"round {rnd + 1}: " + "  ".join(
                f"{k} {v[-1]['cpu_us']:.1f} CPU µs/req p50 {v[-1]['p50_us']:.0f} µs p99 {v[-1]['p99_us']:.0f} µs "
                f"({v[-1]['checks_per_req']:.2f} checks/req, {v[-1]['non2xx']:.0f} non-2xx)"
                for k, v in rows.items()), flush=True)  # fmt: skip
        med = {k: {f: statistics.median(row[f] for row in v) for f in v[0]} for k, v in rows.items()}
        for k in ("A", "B"):
            m = med[k]
            print(f"{k}: median {m['cpu_us']:.1f} gateway CPU µs/req, {m['redis_cpu_us']:.1f} Redis CPU µs/req, "
                  f"p50 {m['p50_us']:.0f} µs, p99 {m['p99_us']:.0f} µs, {m['rps']:.0f} req/s, "
                  f"{m['checks_per_req']:.2f} Redis checks/req, {m['incrby_per_req']:.2f} debits/req")
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
