"""What guard models and filter chains cost a request: latency and gateway CPU, A/B in one run.

    python -m benchmarks.bench_guards --requests 300 --rounds 4

A: a plain config-mode gateway.  B: the same with the jailbreak guard and moderation
(asked concurrently), two input filters (in sequence), one output filter and the response
detectors -- every service a local fake (tests/test_guard_models.py's FakeServices), so
the figure is the gateway's own work plus four loopback HTTP round trips, not a model's.
Both gateways run side by side (one worker each) against one fake provider; each round
sends ``--requests`` sequential non-streamed chat requests over one keep-alive connection
to A then B (B then A on odd rounds).  Prints per-round and median latency (p50, p90) and
gateway CPU µs per request (utime + stime from /proc).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_guard_models import FakeServices, guarded_config

BODY = json.dumps({"model": "openai/gpt-4o-mini", "messages": [
    {"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the capital of France?"}]}).encode()  # fmt: skip


def plain_config(path: Path, fake_port: int) -> Path:
    """The guarded config without its guardrails (same providers, listener, store)."""
    path.write_text(f"""\
version: v0.4.0
listeners: [{{type: model, name: m, address: 127.0.0.1, port: 12000, timeout: 5s}}]
model_providers:
  - {{model: openai/gpt-4o-mini, base_url: "http://127.0.0.1:{fake_port}", access_key: sk-o, default: true}}
plano_fast:
  sqlite_path: {path.with_suffix('.db')}
  usage_journal_path: {path.with_suffix('.journal')}
  access_log: {path.with_suffix('.access.log')}
""")
    return path


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(gw: GatewayProcess, n: int) -> tuple[list[float], float]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    pid = gw.pids[0] if gw.pids else gw.proc.pid
    lat = []
    cpu0 = cpu_s(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json",
                                                             "authorization": "Bearer sk-bench"})  # fmt: skip
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        lat.append((time.perf_counter() - t0) * 1000)
    cpu = (cpu_s(pid) - cpu0) / n * 1e6
    conn.close()
    return lat, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_guards_"))
    services = FakeServices()
    with FakeProviderThread() as fake:
        a = GatewayProcess(plain_config(work / "a.yaml", fake.port))
        b = GatewayProcess(guarded_config(work / "b.yaml", fake.port, services.port))
        try:
            for gw in (a, b):
                run(gw, 50)  # warm-up: connections, caches
            res: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
            for r in range(args.rounds):
                order = [("A", a), ("B", b)] if r % 2 == 0 else [("B", b), ("A", a)]
                for name, gw in order:
                    lat, cpu = run(gw, args.requests)
                    q = statistics.quantiles(lat, n=10)
                    res[name].append((statistics.median(lat), q[8], cpu))
                    print(f"round {r + 1} {name}: p50 {res[name][-1][0]:.2f} ms  p90 {q[8]:.2f} ms  CPU {cpu:.0f} µs/req")
            for name in ("A", "B"):
                p50 = statistics.median(x[0] for x in res[name])
                p90 = statistics.median(x[1] for x in res[name])
                cpu = statistics.median(x[2] for x in res[name])
                print(f"{name}: median p50 {p50:.2f} ms, p90 {p90:.2f} ms, CPU {cpu:.0f} µs/req")
        finally:
            a.stop()
            b.stop()
            services.stop()


if __name__ == "__main__":
    main()
