"""Instructions per traced request of each part of tracing, under callgrind.

    python -m benchmarks.bench_tracing_parts                  # every part, 512 and 4608 calls (--n1, --n2)
    python -m benchmarks.bench_tracing_parts --parts encode,encode_python

The end-to-end A/B (``benchmarks.ab_settings --callgrind --otlp-sink --b-section
'tracing: {random_sampling: 100}'``) gives a traced request's whole cost; this one says
where it goes.  Each part is the gateway's own call, as the exchange makes it, in a loop
under ``valgrind --tool=callgrind``, run twice (N1 and N2 calls): (total(N2) - total(N1)) /
(N2 - N1) is one request's, startup and set-up cancelled out (``bench_observability``'s
method).  Parts: ``sample`` (a request without a ``traceparent``), ``start_server``,
``start_attempt``, ``traceparent`` (the relay's rewrite of the upstream head:
``Tracing.upstream_head``),
``end_attempt``, ``end_server``, ``encode`` (the export request of both spans, in
512-span batches); ``*_python``: the pure twins of the compiled parts (the records'
calls: ``plano_fast/_spans.pyx``'s twins in ``spans`` and ``tracing``; the encoder and
the ``traceparent``: ``plano_fast/_otlp.pyx``'s).  Not here: the SDK's batch processor
(``emit``, its thread) and the post.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks.bench_observability import HEADERS, callgrind_total

PARTS = ("sample", "sample_python", "start_server", "start_server_python", "start_attempt", "start_attempt_python",
         "traceparent", "traceparent_python", "end_attempt", "end_attempt_python", "end_server", "end_server_python",
         "encode", "encode_python")
#: the largest count a loop runs (the records are made before it)
MAX_N = 8192


def loop(part: str, n: int) -> None:
    """``n`` requests' worth of ``part`` (the child under callgrind)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from plano_fast import otlp, spans
    from plano_fast import tracing as tracing_module
    from plano_fast.spans import TraceSpan
    from plano_fast.tracing import Tracing

    if part in ("encode_python", "traceparent_python"):
        otlp._compiled = None
    elif part.endswith("_python"):  # the records' twins
        for name in ("end_attempt", "end_server"):
            setattr(spans, name, getattr(spans, f"{name}_py"))
        for name in ("may_sample", "sample", "start_server", "start_attempt"):
            setattr(Tracing, name, getattr(tracing_module, f"{name}_py"))
    part = part.removesuffix("_python") if part not in ("encode_python", "traceparent_python") else part
    end_attempt, end_server = spans.end_attempt, spans.end_server
    tracing = Tracing({"random_sampling": 100}, InMemorySpanExporter())
    ended: list[TraceSpan] = []
    tracing.owner.on_end = ended.append
    servers = [tracing.start_server(True, HEADERS, b"/v1/chat/completions") for _ in range(MAX_N)]
    attempts = [tracing.start_attempt(s, "openai", "gpt-4o-mini") for s in servers]
    request_ids = [uuid.uuid4().hex for _ in range(MAX_N)]
    upstream_data = [b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.openai.com\r\ncontent-type: application/json"
                     b"\r\nauthorization: Bearer sk-provider\r\ncontent-length: 120\r\n\r\n"]  # fmt: skip
    if part == "sample":
        for _ in range(n):
            tracing.sample(HEADERS)
    elif part == "start_server":
        for _ in range(n):
            tracing.start_server(True, HEADERS, b"/v1/chat/completions")
    elif part == "start_attempt":
        for server in servers[:n]:
            tracing.start_attempt(server, "openai", "gpt-4o-mini")
    elif part in ("traceparent", "traceparent_python"):
        for attempt in attempts[:n]:  # as Exchange._trace_attempt writes it
            upstream_data[0] = tracing.upstream_head(upstream_data[0], attempt)
    elif part == "end_attempt":
        for attempt in attempts[:n]:
            end_attempt(attempt, 200)
    else:
        ends = n if part == "end_server" else MAX_N  # the encoding's spans are ended before it
        for attempt in attempts[:ends] if part != "end_server" else ():
            end_attempt(attempt, 200)
        for server, request_id in zip(servers[:ends], request_ids):
            end_server(server, mode="config", endpoint="chat_completions", request_id=request_id,
                       provider="openai", request_model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18",
                       outcome="ok", status=200, tokens=(12, 345))  # fmt: skip
        if part != "end_server":  # both spans of n requests, in the batch processor's 512-span batches
            spans = [span for pair in zip(attempts[:n], servers[:n]) for span in pair]
            request = tracing.exporter.encoder.request
            for i in range(0, len(spans), 512):
                request(spans[i : i + 512])


def main() -> int:
    if sys.argv[1:2] == ["_loop"]:
        loop(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n1", type=int, default=512)
    ap.add_argument("--n2", type=int, default=4608)
    ap.add_argument("--parts", default=",".join(PARTS))
    args = ap.parse_args()
    if not 0 <= args.n1 < args.n2 <= MAX_N:
        ap.error(f"0 <= --n1 < --n2 <= {MAX_N}")
    out_dir = Path(tempfile.mkdtemp(prefix="bench-tracing-cg-"))
    for part in args.parts.split(","):
        low = callgrind_total(part, args.n1, out_dir, "benchmarks.bench_tracing_parts")
        high = callgrind_total(part, args.n2, out_dir, "benchmarks.bench_tracing_parts")
        print(f"{part}: {(high - low) / (args.n2 - args.n1):,.0f} instructions per request", flush=True)
    print(f"callgrind files: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
