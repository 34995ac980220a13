"""Instructions per request of the observability code on the request path, under callgrind.

    python -m benchmarks.bench_observability                 # every variant, 20000 calls
    python -m benchmarks.bench_observability --per-request 290000

The end-to-end A/B (``benchmarks.ab_settings --callgrind``) measures whole requests, whose
instruction counts spread by a few percent from one window to the next: too coarse for a
1% budget.  This one runs the gateway's own per-request observability code -- the
exchange's ``observe`` (request metrics, errors, access-log record) and dispatch's tracing
decision -- on a real exchange, in a loop, under ``valgrind --tool=callgrind``, twice (N1
and N2 iterations); (total(N2) - total(N1)) / (N2 - N1) is the cost of one request,
startup and imports cancelled out.  The access log's writer (one JSON line per record,
written every 0.2 s by a task of the gateway) runs too, once per 100 records, to a file.

Variants (each adds to the one before it, but tracing ones start from ``metrics``):
``base`` (request_metrics off, no access log, no tracing), ``metrics``,
``metrics+access_log``, ``tracing0`` (metrics + a tracing section with random_sampling
0). ``--per-request`` (a whole request's instructions, from the end-to-end A/B) turns the
differences into percentages.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("base", "metrics", "metrics+access_log", "tracing0")
#: a client request's headers as the server hands them over (lowercased names)
HEADERS = [
    (b"host", b"127.0.0.1:12000"), (b"user-agent", b"OpenAI/Python 1.54.0"),
    (b"accept", b"application/json"), (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-client"), (b"x-stainless-lang", b"python"),
    (b"x-stainless-os", b"Linux"), (b"x-stainless-retry-count", b"0"),
    (b"content-length", b"120"),
]  # fmt: skip


def build(variant: str, workdir: Path) -> tuple[Any, Any, Any]:
    """A firewall exchange whose request is answered, with the context of ``variant``."""
    from plano_fast.access_log import AccessLog
    from plano_fast.gateway.modes.firewall import FirewallExchange
    from plano_fast.gateway.relay import ExchangeContext
    from plano_fast.http_server import Request, Responder
    from plano_fast.tracing import Tracing
    from plano_fast.usage import STATUS_OK, UsageEvent

    ctx = ExchangeContext(None, None, lambda event: None, (10.0, 60.0, 60.0))  # type: ignore[arg-type]
    ctx.request_metrics = variant != "base"
    if variant == "metrics+access_log":
        ctx.access_log = AccessLog(str(workdir / "access.jsonl"))
        ctx.access_log.open()  # start() without its task: flushed by the loop below
    if variant == "tracing0":
        ctx.tracing = Tracing({"random_sampling": 0})
    transport = types.SimpleNamespace(get_extra_info=lambda name: ("127.0.0.1", 40312))
    proto = types.SimpleNamespace(transport=transport, draining=False, http11=True)
    request = Request(b"POST", b"/v1/chat/completions", HEADERS, b"{}", True)
    exchange = FirewallExchange(ctx, request, Responder(proto, True))  # type: ignore[arg-type]
    exchange.endpoint_name = "chat_completions"
    exchange.key_hash = "ab" * 32
    exchange.project_id = "project-1"
    exchange.sent_ns = exchange.started_ns + 150_000
    exchange.attempts = 1
    event = UsageEvent(exchange.request_id, exchange.started_ns, "openai", "gpt-4o-mini", False, STATUS_OK, 200,
                       12, 30, 0, 0, 0, True, "project-1", exchange.key_hash)  # fmt: skip
    gw = types.SimpleNamespace(ctx=ctx)
    return exchange, event, gw


def loop(variant: str, n: int) -> None:
    """``n`` requests' worth of the observability code (the child under callgrind)."""
    from plano_fast.gateway.dispatch import trace

    workdir = Path(tempfile.mkdtemp(prefix="bench-obs-"))
    exchange, event, gw = build(variant, workdir)
    ctx = exchange.ctx
    access_log = ctx.access_log
    headers = exchange.request.headers
    for i in range(n):
        tracing = ctx.tracing
        # dispatch's check, as written there, then its decision
        if tracing is not None and tracing.may_sample(headers):
            trace(gw, exchange)
        exchange.observe(event)
        if access_log is not None and i % 100 == 99:
            access_log.flush()
    if access_log is not None:
        access_log.flush()
    shutil.rmtree(workdir, ignore_errors=True)


def callgrind_total(variant: str, n: int, out_dir: Path, module: str = "benchmarks.bench_observability") -> int:
    """Instructions of ``python -m module _loop variant n`` under callgrind."""
    out = out_dir / f"callgrind.{variant}.{n}"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                    module, "_loop", variant, str(n)],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
    match = re.search(r"^(?:totals|summary):\s+(\d+)", out.read_text(), re.M)
    assert match is not None, out
    return int(match.group(1))


def main() -> int:
    if sys.argv[1:2] == ["_loop"]:
        loop(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=22000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--per-request", type=float, help="a whole request's instructions (end-to-end A/B)")
    args = ap.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="bench-obs-cg-"))
    per_call: dict[str, float] = {}
    for variant in args.variants.split(","):
        low, high = callgrind_total(variant, args.n1, out_dir), callgrind_total(variant, args.n2, out_dir)
        per_call[variant] = (high - low) / (args.n2 - args.n1)
        print(f"{variant}: {per_call[variant]:,.0f} instructions per request", flush=True)
    for variant, ref in (("metrics", "base"), ("metrics+access_log", "base"), ("tracing0", "metrics")):
        if variant not in per_call or ref not in per_call:
            continue
        extra = per_call[variant] - per_call[ref]
        share = f" = {100 * extra / args.per_request:.2f}% of {args.per_request:,.0f}" if args.per_request else ""
        print(f"{variant} - {ref}: {extra:+,.0f} instructions per request{share}")
    print(f"callgrind files: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
