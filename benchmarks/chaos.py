"""The chaos run (issue 20): retries and failover under random upstream failures.

    python -m benchmarks.chaos                      # 3 repeats x (baseline, chaos), 10,000 requests each
    python -m benchmarks.chaos --requests 2000 --repeats 1    # a quick look

Two fake providers (``benchmarks/fake_provider.py``, each in its own process, ``--latency-ms``
20 ms before every answer): the *primary* serves ``openai/gpt-4o-mini``, the *secondary*
``anthropic/claude-sonnet-4-6``.  The primary's config has Plano's ``retry_policy`` (PR #926
shape) with the secondary as its fallback (``different_provider``, 2 attempts, backoff only
between retries of the same model, so a failover does not wait).  One gateway (config
mode, one worker, SQLite store, access log on) in front; ``--concurrency`` (24) closed-loop
keep-alive clients send ``--requests`` (10,000) OpenAI chat completions each run.

Each repeat runs twice on fresh processes, in alternating order: **baseline** (no
failures) and **chaos** (the primary fails ``--fail-rate`` = 20 % of its requests at random
with a 503, seeded per repeat).  Reported per run: the success rate the clients saw, how many answers needed a
retry (the access log's ``attempts`` > 1, joined by ``x-plano-request-id``), the circuit
skips (one attempt, served by the secondary), and the p50/p99 latency of the requests that
needed **no** retry, against the baseline's p50/p99 (the issue's target: within 10 %), and
the usage rows (one per client request).  The table goes to
``benchmarks/results/chaos-<date>.md`` (``--out``).  Wall-clock figures on a shared machine
are noisy: read the spread of the repeats, not one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import loadgen
from benchmarks import run as bench
from tests.gateway_proc import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
PRIMARY_MODEL = "gpt-4o-mini"
FALLBACK_MODEL = "claude-sonnet-4-6"
BODY = json.dumps({"model": PRIMARY_MODEL, "messages": [{"role": "user", "content": "Say hello."}]},
                  separators=(",", ":")).encode()


def start_fake(log_path: Path, latency_ms: float, fail_rate: float = 0.0,
               seed: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    args = [sys.executable, "-m", "benchmarks.fake_provider", "--port", "0", "--no-record",
            "--latency-ms", str(latency_ms)]
    if fail_rate > 0:
        args += ["--fail-rate", str(fail_rate), "--fail-seed", str(seed), "--fail-status", "503"]
    logf = open(log_path, "ab")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=logf)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"fake provider did not start: {log_path.read_text(errors='replace')[-2000:]}")
    return proc, int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])


def write_config(work: Path, primary_port: int, secondary_port: int) -> Path:
    path = work / "chaos.yaml"
    path.write_text(f"""\
version: v0.4.0
listeners:
  - {{type: model, name: chaos, address: 127.0.0.1, port: 12000, timeout: 30s}}
model_providers:
  - model: openai/{PRIMARY_MODEL}
    base_url: http://127.0.0.1:{primary_port}
    access_key: sk-chaos-primary
    default: true
    retry_policy:
      fallback_models: [anthropic/{FALLBACK_MODEL}]
      default_strategy: different_provider
      default_max_attempts: 2
      max_retry_duration_ms: 10000
      backoff: {{apply_to: same_model, base_ms: 50, max_ms: 1000, jitter: true}}
  - model: anthropic/{FALLBACK_MODEL}
    base_url: http://127.0.0.1:{secondary_port}
    access_key: sk-ant-chaos-secondary
plano_fast:
  sqlite_path: {work / "usage.db"}
  usage_journal_path: {work / "usage.journal"}
  access_log: {work / "access.log"}
""")
    return path


class _Conn(loadgen._Conn):
    """loadgen's keep-alive connection, also keeping the gateway's request id."""

    def reset(self) -> None:
        super().reset()
        self.request_id = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-plano-request-id":
            self.request_id = value


async def drive(url: str, total: int, concurrency: int, timeout_s: float) -> list[tuple[str, int, float]]:
    """``total`` requests from ``concurrency`` closed-loop connections: (request id, status
    (0: transport error), seconds) per request."""
    spec = loadgen.LoadSpec(url=url, body=BODY, headers=[("authorization", "Bearer sk-chaos-client")])
    req = spec.request_bytes()
    host, port = spec.host_port()
    loop = asyncio.get_running_loop()
    out: list[tuple[str, int, float]] = []
    left = total

    async def worker() -> None:
        nonlocal left
        conn: Optional[_Conn] = None
        while left > 0:
            left -= 1
            if conn is None or conn.closed:
                _, conn = await loop.create_connection(lambda: _Conn(False), host, port)
            conn.reset()
            fut: asyncio.Future[float] = loop.create_future()
            conn.waiter = fut
            t0 = loadgen.now()
            assert conn.transport is not None
            conn.transport.write(req)
            try:
                t1 = await asyncio.wait_for(fut, timeout_s)
            except (ConnectionError, asyncio.TimeoutError):
                out.append(("", 0, loadgen.now() - t0))
                if conn.transport is not None:
                    conn.transport.abort()
                conn = None
                continue
            out.append((conn.request_id.decode(), conn.status, t1 - t0))
            if not conn.keep_alive:
                conn.transport.close()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def read_access_log(path: Path) -> dict[str, dict[str, Any]]:
    lines: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        lines[doc["request_id"]] = doc
    return lines


def one_run(label: str, args: argparse.Namespace, fail_rate: float, seed: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"chaos-{label}-"))
    primary, primary_port = start_fake(work / "primary.log", args.latency_ms, fail_rate, seed)
    secondary, secondary_port = start_fake(work / "secondary.log", args.latency_ms)
    try:
        config = write_config(work, primary_port, secondary_port)
        with GatewayProcess(config, log_path=work / "gateway.log") as gw:
            url = gw.url + "/v1/chat/completions"
            asyncio.run(drive(url, args.warmup, args.concurrency, args.timeout_s))  # warm-up, not counted
            started = time.monotonic()
            results = asyncio.run(drive(url, args.requests, args.concurrency, args.timeout_s))
            wall_s = time.monotonic() - started
        # stopped: the access log and the usage rows are flushed
        log = read_access_log(work / "access.log")
        with sqlite3.connect(work / "usage.db") as db:
            rows = db.execute("SELECT COUNT(*) FROM usage_log").fetchone()[0]
    finally:
        bench.stop_proc(primary)
        bench.stop_proc(secondary)
    ok = [r for r in results if 200 <= r[1] < 300]
    first_try: list[float] = []
    retried: list[float] = []
    skipped = 0
    for rid, _, seconds in ok:
        entry = log.get(rid)
        if entry is None:
            continue
        if entry["attempts"] > 1:
            retried.append(seconds)
        else:
            first_try.append(seconds)
            skipped += entry["model"] != PRIMARY_MODEL  # circuit open: the primary was skipped
    q_first = loadgen.summarize(first_try, (50.0, 99.0)) if first_try else {}
    q_all = loadgen.summarize([r[2] for r in ok], (50.0, 99.0)) if ok else {}
    return {
        "label": label, "seed": seed, "fail_rate": fail_rate, "requests": len(results),
        "ok": len(ok), "success": len(ok) / max(1, len(results)),
        "statuses": {str(s): sum(1 for r in results if r[1] == s) for s in sorted({r[1] for r in results})},
        "retried": len(retried), "circuit_skips": skipped, "unmatched": len(ok) - len(first_try) - len(retried),
        "first_try_p50_ms": q_first.get("p50", 0.0), "first_try_p99_ms": q_first.get("p99", 0.0),
        "all_p50_ms": q_all.get("p50", 0.0), "all_p99_ms": q_all.get("p99", 0.0),
        "retried_p50_ms": (statistics.median(retried) * 1000) if retried else None,
        "rows": rows, "expected_rows": len(results) + args.warmup, "rps": len(results) / wall_s, "work": str(work),
    }


def render(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"# Chaos run ({_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python -m benchmarks.chaos --requests {args.requests} --concurrency {args.concurrency} "
        f"--repeats {args.repeats} --fail-rate {args.fail_rate} --latency-ms {args.latency_ms}`",
        "",
        "Two fake providers (primary openai/gpt-4o-mini, secondary anthropic/claude-sonnet-4-6), "
        f"{args.latency_ms:g} ms before every answer; the primary's retry_policy falls over to the "
        "secondary (different_provider, 2 attempts). One gateway worker, SQLite store, access log on. "
        f"chaos: the primary answers 503 to {args.fail_rate:.0%} of its requests at random (seeded). "
        "First-try: the answers that needed one upstream attempt (access log `attempts` = 1).",
        "",
        "| repeat | run | requests | success | retried | circuit skips | first-try p50 ms | first-try p99 ms "
        "| all p50 ms | all p99 ms | usage rows / requests incl. warm-up | req/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        out.append(
            f"| {r['seed']} | {r['label']} | {r['requests']} | {r['success']:.4%} | {r['retried']} "
            f"| {r['circuit_skips']} | {r['first_try_p50_ms']:.2f} | {r['first_try_p99_ms']:.2f} "
            f"| {r['all_p50_ms']:.2f} | {r['all_p99_ms']:.2f} | {r['rows']} / {r['expected_rows']} | {r['rps']:.0f} |"
        )
    out += ["", "| repeat | first-try p50 chaos / baseline | first-try p99 chaos / baseline |", "|---|---|---|"]
    ratios50, ratios99 = [], []
    for seed in sorted({r["seed"] for r in runs}):
        base = next(r for r in runs if r["seed"] == seed and r["label"] == "baseline")
        chaos = next(r for r in runs if r["seed"] == seed and r["label"] == "chaos")
        r50 = chaos["first_try_p50_ms"] / base["first_try_p50_ms"]
        r99 = chaos["first_try_p99_ms"] / base["first_try_p99_ms"]
        ratios50.append(r50)
        ratios99.append(r99)
        out.append(f"| {seed} | {r50:.3f} | {r99:.3f} |")
    chaos_runs = [r for r in runs if r["label"] == "chaos"]
    out += [
        "",
        f"Success (chaos runs): min {min(r['success'] for r in chaos_runs):.4%} "
        f"over {sum(r['requests'] for r in chaos_runs)} requests (target >= 99.9 %).  "
        f"First-try p99 ratio: {min(ratios99):.3f} .. {max(ratios99):.3f}, median "
        f"{statistics.median(ratios99):.3f} (target <= 1.10); p50 ratio {min(ratios50):.3f} .. "
        f"{max(ratios50):.3f}, median {statistics.median(ratios50):.3f}.  Baseline p99 alone: "
        f"{min(r['first_try_p99_ms'] for r in runs if r['label'] == 'baseline'):.2f} .. "
        f"{max(r['first_try_p99_ms'] for r in runs if r['label'] == 'baseline'):.2f} ms.",
        "",
    ]
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=500, help="requests sent first, not counted")
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fail-rate", type=float, default=0.2)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="each fake provider's delay before answering")
    ap.add_argument("--timeout-s", type=float, default=30.0)
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/chaos-<date>.md)")
    ap.add_argument("--json", action="store_true", help="also print the runs as JSON")
    args = ap.parse_args(argv)
    runs = []
    for seed in range(1, args.repeats + 1):
        pair = [("baseline", 0.0), ("chaos", args.fail_rate)]
        for label, rate in pair if seed % 2 else pair[::-1]:  # alternate the order: drift cancels
            r = one_run(label, args, rate, seed)
            print(f"repeat {seed} {label:8}: success {r['success']:.4%}  retried {r['retried']}  "
                  f"first-try p50 {r['first_try_p50_ms']:.2f} ms p99 {r['first_try_p99_ms']:.2f} ms  "
                  f"rows {r['rows']}  {r['rps']:.0f} req/s", flush=True)
            runs.append(r)
    text = render(runs, args)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"chaos-{_dt.date.today():%Y%m%d}.md"
    out.write_text(text)
    print(text)
    if args.json:
        print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
