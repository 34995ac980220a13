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

Each repeat starts two such stacks side by side on fresh processes: **baseline** (no
failures) and **chaos** (the primary fails ``--fail-rate`` = 20 % of its requests at random
with a 503, seeded per repeat), and loads them in turns of ``--chunk`` (500) requests, the
order flipping every turn, until each has had ``--requests``: on a machine whose load
drifts (other work), both runs see the same drift -- an A/B by alternation, as
``benchmarks/ab_refs.py`` does.  (Only one stack is loaded at a time; the idle one costs
nothing.)  Reported per run: the success rate the clients saw, how many answers needed a
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
    return proc, bench.listening_port(proc, 20, log_path, "fake provider")


def retry_policy_yaml(fallback_model: str, indent: str = "    ") -> str:
    """A provider entry's ``retry_policy`` (its lines, ``indent``-ed, newline-terminated):
    different_provider to ``fallback_model``, 2 attempts.  Also ``benchmarks/run.py
    --features retries``' B side, where the provider never fails (configured, not triggered)."""
    lines = ["retry_policy:", f"  fallback_models: [{fallback_model}]", "  default_strategy: different_provider",
             "  default_max_attempts: 2", "  max_retry_duration_ms: 10000",
             "  backoff: {apply_to: same_model, base_ms: 50, max_ms: 1000, jitter: true}"]  # fmt: skip
    return "".join(f"{indent}{line}\n" for line in lines)


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
{retry_policy_yaml(f"anthropic/{FALLBACK_MODEL}")}  - model: anthropic/{FALLBACK_MODEL}
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


async def drive(url: str, total: int, concurrency: int, timeout_s: float,
                rate: Optional[float] = None) -> list[tuple[str, int, float]]:
    """``total`` requests over ``concurrency`` keep-alive connections: (request id, status
    (0: transport error), seconds) per request.  Closed loop without ``rate``; with it, open
    loop (wrk2 style): connection ``i`` sends its k-th request at ``start + (i + k*C) / rate``
    and a late send is timed from when it was due (no coordinated omission), so both runs
    of a comparison get the same arrival rate whatever their retries cost."""
    spec = loadgen.LoadSpec(url=url, body=BODY, headers=[("authorization", "Bearer sk-chaos-client")])
    req = spec.request_bytes()
    host, port = spec.host_port()
    loop = asyncio.get_running_loop()
    out: list[tuple[str, int, float]] = []
    per_conn = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]
    start = loadgen.now() + 0.05

    async def worker(i: int) -> None:
        conn: Optional[_Conn] = None
        for k in range(per_conn[i]):
            due = None
            if rate is not None:
                due = start + (i + k * concurrency) / rate
                delay = due - loadgen.now()
                if delay > 0:
                    await asyncio.sleep(delay)
            if conn is None or conn.closed:
                _, conn = await loop.create_connection(lambda: _Conn(False), host, port)
            conn.reset()
            fut: asyncio.Future[float] = loop.create_future()
            conn.waiter = fut
            t0 = loadgen.now()
            if due is not None and due < t0:
                t0 = due
            transport = conn.transport
            assert transport is not None
            transport.write(req)
            try:
                t1 = await asyncio.wait_for(fut, timeout_s)
            except (ConnectionError, asyncio.TimeoutError):
                out.append(("", 0, loadgen.now() - t0))
                transport.abort()
                conn = None
                continue
            out.append((conn.request_id.decode(), conn.status, t1 - t0))
            if not conn.keep_alive:
                transport.close()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return out


def read_access_log(path: Path) -> dict[str, dict[str, Any]]:
    lines: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        lines[doc["request_id"]] = doc
    return lines


class Stack:
    """Two fake providers (the primary failing ``fail_rate`` at random) and a gateway."""

    def __init__(self, label: str, args: argparse.Namespace, fail_rate: float, seed: int) -> None:
        self.label, self.fail_rate, self.seed = label, fail_rate, seed
        self.work = Path(tempfile.mkdtemp(prefix=f"chaos-{label}-"))
        self.fakes: list[subprocess.Popen[bytes]] = []
        self.gateway: Optional[GatewayProcess] = None
        primary, primary_port = start_fake(self.work / "primary.log", args.latency_ms, fail_rate, seed)
        self.fakes.append(primary)
        secondary, secondary_port = start_fake(self.work / "secondary.log", args.latency_ms)
        self.fakes.append(secondary)
        config = write_config(self.work, primary_port, secondary_port)
        self.gateway = GatewayProcess(config, log_path=self.work / "gateway.log")
        self.url = self.gateway.url + "/v1/chat/completions"
        self.results: list[tuple[str, int, float]] = []
        self.busy_s = 0.0

    def drive(self, n: int, args: argparse.Namespace, keep: bool = True) -> None:
        started = time.monotonic()
        out = asyncio.run(drive(self.url, n, args.concurrency, args.timeout_s, args.rate or None))
        if keep:
            self.results += out
            self.busy_s += time.monotonic() - started

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()  # the access log and the usage rows are flushed
            self.gateway = None
        for proc in self.fakes:
            bench.stop_proc(proc)
        self.fakes = []

    def report(self, args: argparse.Namespace) -> dict[str, Any]:
        log = read_access_log(self.work / "access.log")
        with sqlite3.connect(self.work / "usage.db") as db:
            rows = db.execute("SELECT COUNT(*) FROM usage_log").fetchone()[0]
        results = self.results
        ok = [r for r in results if 200 <= r[1] < 300]
        first_try: list[float] = []
        first_try_gw: list[float] = []  # the gateway's own duration_ms (no client-side delays)
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
                first_try_gw.append(entry["duration_ms"] / 1000.0)
                skipped += entry["model"] != PRIMARY_MODEL  # circuit open: the primary was skipped
        q_first = loadgen.summarize(first_try, (50.0, 99.0)) if first_try else {}
        q_gw = loadgen.summarize(first_try_gw, (50.0, 99.0)) if first_try_gw else {}
        q_all = loadgen.summarize([r[2] for r in ok], (50.0, 99.0)) if ok else {}
        return {
            "label": self.label, "seed": self.seed, "fail_rate": self.fail_rate, "requests": len(results),
            "ok": len(ok), "success": len(ok) / max(1, len(results)),
            "statuses": {str(s): sum(1 for r in results if r[1] == s) for s in sorted({r[1] for r in results})},
            "retried": len(retried), "circuit_skips": skipped,
            "unmatched": len(ok) - len(first_try) - len(retried),
            "first_try_p50_ms": q_first.get("p50", 0.0), "first_try_p99_ms": q_first.get("p99", 0.0),
            "gw_p50_ms": q_gw.get("p50", 0.0), "gw_p99_ms": q_gw.get("p99", 0.0),
            "all_p50_ms": q_all.get("p50", 0.0), "all_p99_ms": q_all.get("p99", 0.0),
            "retried_p50_ms": (statistics.median(retried) * 1000) if retried else None,
            "rows": rows, "expected_rows": len(results) + args.warmup,
            "rps": len(results) / self.busy_s if self.busy_s else 0.0, "work": str(self.work),
        }


def one_repeat(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """Both stacks up at once; their load alternates in chunks of ``--chunk`` requests
    (the order flipping every chunk), so the machine's load drift falls on both alike."""
    stacks: list[Stack] = []
    try:
        stacks.append(Stack("baseline", args, 0.0, seed))
        stacks.append(Stack("chaos", args, args.fail_rate, seed))
        for stack in stacks:
            stack.drive(args.warmup, args, keep=False)
        left = args.requests
        turn = 0
        while left > 0:
            n = min(args.chunk, left)
            for stack in stacks if turn % 2 == 0 else stacks[::-1]:
                stack.drive(n, args)
            left -= n
            turn += 1
        for stack in stacks:
            stack.stop()
        return [stack.report(args) for stack in stacks]
    finally:
        for stack in stacks:
            stack.stop()


def render(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"# Chaos run ({_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python -m benchmarks.chaos --requests {args.requests} --concurrency {args.concurrency} "
        f"--repeats {args.repeats} --chunk {args.chunk} --rate {args.rate:g} --fail-rate {args.fail_rate} --latency-ms {args.latency_ms}`",
        "",
        "Two fake providers (primary openai/gpt-4o-mini, secondary anthropic/claude-sonnet-4-6), "
        f"{args.latency_ms:g} ms before every answer; the primary's retry_policy falls over to the "
        "secondary (different_provider, 2 attempts). One gateway worker, SQLite store, access log on; the "
        f"baseline and chaos stacks are loaded in alternating turns of {args.chunk} requests. "
        f"chaos: the primary answers 503 to {args.fail_rate:.0%} of its requests at random (seeded). "
        "First-try: the answers that needed one upstream attempt (access log `attempts` = 1); "
        "client-observed latency, and the gateway-side `duration_ms` of the access log (request "
        "head to last byte inside the gateway: no client-side scheduling delay).",
        "",
        "| repeat | run | requests | success | retried | circuit skips | first-try p50 ms | first-try p99 ms "
        "| gateway-side first-try p50 / p99 ms | all p50 ms | all p99 ms | usage rows / requests incl. warm-up | req/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        out.append(
            f"| {r['seed']} | {r['label']} | {r['requests']} | {r['success']:.4%} | {r['retried']} "
            f"| {r['circuit_skips']} | {r['first_try_p50_ms']:.2f} | {r['first_try_p99_ms']:.2f} "
            f"| {r['gw_p50_ms']:.2f} / {r['gw_p99_ms']:.2f} "
            f"| {r['all_p50_ms']:.2f} | {r['all_p99_ms']:.2f} | {r['rows']} / {r['expected_rows']} | {r['rps']:.0f} |"
        )
    out += ["", "| repeat | first-try p50 chaos / baseline | first-try p99 chaos / baseline "
            "| gateway-side p50 / p99 chaos / baseline |", "|---|---|---|---|"]
    ratios50, ratios99 = [], []
    for seed in sorted({r["seed"] for r in runs}):
        base = next(r for r in runs if r["seed"] == seed and r["label"] == "baseline")
        chaos = next(r for r in runs if r["seed"] == seed and r["label"] == "chaos")
        r50 = chaos["first_try_p50_ms"] / base["first_try_p50_ms"]
        r99 = chaos["first_try_p99_ms"] / base["first_try_p99_ms"]
        ratios50.append(r50)
        ratios99.append(r99)
        g50 = chaos["gw_p50_ms"] / base["gw_p50_ms"]
        g99 = chaos["gw_p99_ms"] / base["gw_p99_ms"]
        out.append(f"| {seed} | {r50:.3f} | {r99:.3f} | {g50:.3f} / {g99:.3f} |")
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
    ap.add_argument("--rate", type=float, default=0.0,
                    help="requests/s per stack, open loop (0: closed loop, as fast as the gateway answers)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=500, help="requests per turn; the two stacks alternate turns")
    ap.add_argument("--fail-rate", type=float, default=0.2)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="each fake provider's delay before answering")
    ap.add_argument("--timeout-s", type=float, default=30.0)
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/chaos-<date>.md)")
    ap.add_argument("--json", action="store_true", help="also print the runs as JSON")
    args = ap.parse_args(argv)
    runs = []
    for seed in range(1, args.repeats + 1):
        for r in one_repeat(args, seed):
            print(f"repeat {seed} {r['label']:8}: success {r['success']:.4%}  retried {r['retried']}  "
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
