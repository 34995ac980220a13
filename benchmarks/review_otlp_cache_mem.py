# Review repro (not a benchmark to keep): memory the OtlpEncoder KeyValue cache holds after 4000 sampled
# requests with a distinct 30 KB x-user-* header each.  Run: .venv/bin/python benchmarks/review_otlp_cache_mem.py
import os, tracemalloc, gc
from plano_fast.tracing import Tracing, end_server
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
t = Tracing({"random_sampling": 0, "span_attributes": {"header_prefixes": ["x-user-"]}}, InMemorySpanExporter())
enc = t.exporter.encoder
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
for i in range(4000):
    v = (b"%06d" % i) * 5000  # a 30 KB header value, distinct per request (fits a 32 KiB head)
    span = t.start_server((1, 1), [(b"x-user-id", v), (b"traceparent", b"00-" + b"1"*32 + b"-" + b"2"*16 + b"-01")], b"/v1/chat/completions")
    span.end_ns = 1
    enc.request([span])  # what the export thread does with each batch
    del span
gc.collect()
print("encoder caches retain %.0f MiB after 4000 spans (kv entries %d)" % ((tracemalloc.get_traced_memory()[0]-base)/2**20, len(enc._kv)))
