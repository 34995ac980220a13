"""OpenTelemetry traces from Plano's ``tracing:`` section, GenAI semantic conventions.

Config (Plano's shape)::

    tracing:
      random_sampling: 10              # percent of requests traced (default 0: none)
      opentracing_grpc_endpoint: http://otel-collector:4317   # OTLP/gRPC (needs the
                                       # opentelemetry-exporter-otlp-proto-grpc package)
      span_attributes:
        header_prefixes: [x-user-]     # request headers copied as span attributes
        static: {environment: prod}

Without ``opentracing_grpc_endpoint`` spans go over OTLP/HTTP, configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables.  Spans are exported by the SDK's ``BatchSpanProcessor``
(a thread of its own; ``OTEL_BSP_*`` variables).

The spans are not the SDK's: a sampled request's spans are ``plano_fast.spans.TraceSpan``
records, written as OTLP protobuf bytes by ``plano_fast.otlp.OtlpEncoder`` and posted by
the SDK's OTLP/HTTP exporter client (its endpoint, headers, compression, TLS and retries).
The bytes are the ones the SDK would send for its own spans of the same calls
(tests/test_tracing_otlp.py); the SDK's span pipeline and encoder cost ~950k instructions
a traced request, these ~150k (benchmarks/results/tracing-cost-20261205.md).  The SDK's
attribute limits (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` ...) and resource
(``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``) apply; ``OTEL_TRACES_SAMPLER`` does
not (``random_sampling`` and the client decide; a warning says so; ``OTEL_SDK_DISABLED=true``
samples nothing), nor do the exporter's
own self-metrics (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``).  An exporter other than
the SDK's OTLP/HTTP one (the gRPC one, a test's) gets the SDK's ``ReadableSpan`` of each
record and encodes as before.

Sampling is decided before any span exists: a client's W3C ``traceparent`` decides by its
sampled flag (parent-based), otherwise ``random_sampling`` percent of requests.  An
unsampled request runs nothing of tracing: at ``random_sampling: 0`` it costs dispatch one
C scan of the header names (``wire.has_header``: is there a ``traceparent``?), ~0.6k
instructions; above 0, the header lookup and one random draw.

The per-request methods (``may_sample``, ``sample``, ``start_server``, ``start_attempt``)
are compiled where built (``plano_fast/_spans.pyx``, with the span ends of
``plano_fast.spans``; the ``*_py`` functions below are their twins).

A sampled request gets a server span (``<operation> <model>``, kind SERVER) and a child
span per upstream attempt (kind CLIENT); the attempt's ``traceparent`` goes upstream in
place of the client's.  Attributes: ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``http.response.status_code``, ``plano_fast.mode``,
``plano_fast.request_id``, ``plano_fast.outcome``, plus the configured header and static
ones (credential headers are never copied: ``wire.SECRET_HEADERS``).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from typing import Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from plano_fast import otlp
from plano_fast.otlp import OtlpEncoder
from plano_fast.spans import KIND_CLIENT, KIND_SERVER, SpanOwner, TraceSpan, upstream_head
from plano_fast.twins import install_compiled
from plano_fast.wire import SECRET_HEADERS, has_header

log = logging.getLogger("plano_fast.tracing")

_TRACEPARENT: Final = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: the instrumentation scope (``TracerProvider.get_tracer("plano_fast")``'s)
SCOPE: Final = InstrumentationScope("plano_fast", "", None, None)


class Tracing:
    """The configured tracer, or nothing when ``random_sampling`` is 0 and no client asks.

    Spans are ``plano_fast.spans.TraceSpan`` records, batched by the SDK's
    ``BatchSpanProcessor`` (``OTEL_BSP_*`` variables) and written as OTLP bytes by
    ``plano_fast.otlp.OtlpEncoder``, posted by the SDK's OTLP/HTTP exporter client
    (``OTEL_EXPORTER_OTLP_*`` variables: endpoint, headers, compression, timeout,
    certificates; its retries).  Any other exporter (gRPC, a test's in-memory one) gets
    the SDK's ``ReadableSpan`` of each record (``readable``)."""

    def __init__(self, section: Mapping[str, Any], exporter: SpanExporter | None = None) -> None:
        self.rate = float(section.get("random_sampling") or 0) / 100.0
        attributes = section.get("span_attributes") or {}
        self.header_prefixes = tuple(
            p.lower().encode() for p in attributes.get("header_prefixes") or () if isinstance(p, str)
        )
        self.static = {str(k): str(v) for k, v in (attributes.get("static") or {}).items()}
        #: OTEL_SDK_DISABLED=true: nothing is traced (the SDK's tracer made no spans)
        self.disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        sampler = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        if sampler and sampler != "parentbased_always_on":
            log.warning("OTEL_TRACES_SAMPLER=%s is not used: tracing.random_sampling and the client's "
                        "traceparent decide which requests are traced", sampler)  # fmt: skip
        self.resource = Resource.create({"service.name": "plano_fast"})
        limits = SpanLimits()  # the SDK's, from OTEL_SPAN_ATTRIBUTE_* / OTEL_ATTRIBUTE_* variables
        self.limits = limits
        self.exporter = RecordExporter(exporter or _exporter(section), self)
        self.processor = BatchSpanProcessor(self.exporter)
        # BatchSpanProcessor.on_end checks the span's sampled flag (always set here) and
        # hands it to its BatchProcessor's emit: emit directly when the SDK has one (~3.5k
        # instructions a span less under callgrind)
        batcher = getattr(self.processor, "_batch_processor", None)
        emit = getattr(batcher, "emit", None) if batcher is not None else None
        self.owner = SpanOwner(limits.max_span_attributes, limits.max_attribute_length,
                               emit if callable(emit) else self.processor.on_end)  # type: ignore[arg-type]
        # the static attributes as a span starts with them (the limits applied once)
        start = TraceSpan(self.owner, "", KIND_SERVER, 1, 1, 0, False, {}, 0, 0)
        start.set_attributes(self.static)
        self._start_attributes, self._start_dropped = start.attributes, start.dropped
        #: no limit an attempt's two attributes can reach
        self._plain = limits.max_attribute_length is None and (
            limits.max_span_attributes is None or limits.max_span_attributes >= 2
        )
        self._random = random.random
        #: an attempt's upstream head: the client's (or a previous attempt's) ``traceparent``
        #: lines out, the attempt's in (``plano_fast._otlp``'s where built, else the twin)
        compiled = otlp.compiled()
        self.upstream_head: Callable[[bytes, TraceSpan], bytes] = (
            upstream_head if compiled is None else compiled.upstream_head
        )

    def may_sample(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether ``sample`` could say yes: only a random draw (``random_sampling`` above
        0) or a client's ``traceparent`` can sample.  Without either nothing more is done:
        at ``random_sampling: 0`` one C scan of the header names
        (benchmarks/results/observability-cost-20261205.md)."""
        return self.rate > 0 or has_header(headers, b"traceparent")

    def sample(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, int] | bool:
        """False: not sampled; True: sampled, no parent; (trace id, parent span id):
        sampled under the client's trace.  (The headers are looked at in Python only when
        a C scan found a ``traceparent``.)"""
        if self.disabled:
            return False
        for name, value in headers if has_header(headers, b"traceparent") else ():
            if name == b"traceparent":
                m = _TRACEPARENT.fullmatch(value.strip().lower())
                if m is None or m.group(1) == b"0" * 32 or m.group(2) == b"0" * 16:
                    break  # malformed: decide as if absent
                flags = int(m.group(3), 16)
                if not flags & 1:
                    return False
                return int(m.group(1), 16), int(m.group(2), 16)
        return self.rate > 0 and self._random() < self.rate

    def start_server(
        self, decision: tuple[int, int] | bool, headers: Sequence[tuple[bytes, bytes]], path: bytes
    ) -> TraceSpan:
        if isinstance(decision, tuple):
            trace_id, parent_id = decision
        else:
            trace_id, parent_id = _getrandbits(128) or _new_id(128), 0
        span = TraceSpan(
            self.owner, path.decode("latin-1"), KIND_SERVER, trace_id, _getrandbits(64) or _new_id(64), parent_id,
            bool(parent_id),
            self._start_attributes.copy(), self._start_dropped, time_ns(),
        )  # fmt: skip
        if self.header_prefixes:
            for name, value in headers:
                if name.startswith(self.header_prefixes) and name not in SECRET_HEADERS:
                    span.set_attribute("http.request.header." + name.decode("latin-1"), value.decode("latin-1"))
        return span

    def start_attempt(self, server: TraceSpan, provider: str, model: str | None) -> TraceSpan:
        attributes = {"gen_ai.provider.name": provider, "gen_ai.request.model": model or ""}
        span = TraceSpan(
            self.owner, f"upstream {provider}", KIND_CLIENT, server.trace_id, _getrandbits(64) or _new_id(64),
            server.span_id, False, attributes if self._plain else {}, 0, time_ns(),
        )  # fmt: skip
        if not self._plain:  # limits to apply
            span.set_attributes(attributes)
        return span

    def readable(self, span: TraceSpan) -> ReadableSpan:
        """The SDK's ``ReadableSpan`` of a record (for an exporter other than OTLP/HTTP)."""
        from opentelemetry.attributes import BoundedAttributes

        flags = TraceFlags(TraceFlags.SAMPLED)
        parent = (
            SpanContext(span.trace_id, span.parent_id, is_remote=span.remote_parent, trace_flags=flags)
            if span.parent_id else None
        )  # fmt: skip
        attributes = BoundedAttributes(
            self.limits.max_span_attributes, span.attributes, immutable=True,
            max_value_len=self.limits.max_attribute_length,
        )  # fmt: skip
        attributes.dropped = span.dropped
        return ReadableSpan(
            span.name, context=SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=flags),
            parent=parent, resource=self.resource, attributes=attributes,
            kind=SpanKind.SERVER if span.kind == KIND_SERVER else SpanKind.CLIENT,
            status=Status(StatusCode.UNSET) if span.error is None else Status(StatusCode.ERROR, span.error),
            start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=SCOPE,
        )  # fmt: skip

    def force_flush(self) -> bool:
        return self.processor.force_flush()

    def shutdown(self) -> None:
        self.processor.shutdown()  # type: ignore[no-untyped-call]


_getrandbits: Final = random.getrandbits  # (the SDK's ids too: seeded alike in the tests)


def _new_id(bits: int) -> int:
    """A random non-zero id (the SDK's ``RandomIdGenerator``)."""
    value = random.getrandbits(bits)
    while not value:
        value = random.getrandbits(bits)
    return value


#: the twins of the compiled methods (plano_fast/_spans.pyx), installed over them below
may_sample_py = Tracing.may_sample
sample_py = Tracing.sample
start_server_py = Tracing.start_server
start_attempt_py = Tracing.start_attempt
install_compiled(Tracing, "plano_fast._spans", may_sample="may_sample", sample="sample", start_server="start_server",
                 start_attempt="start_attempt")


class RecordExporter(SpanExporter):
    """The batch processor's exporter: records in, OTLP out.  With the SDK's OTLP/HTTP
    exporter the bytes are ``OtlpEncoder``'s, posted by that exporter's client after that
    exporter's own checks (``OTLPSpanExporter.export``: nothing after shutdown, no request
    over its ``max_request_size``, 64 MiB by default); any other exporter is given the SDK's
    ``ReadableSpan``s."""

    def __init__(self, inner: SpanExporter, tracing: Tracing) -> None:
        self.inner = inner
        self.tracing = tracing
        scope = SCOPE
        self.encoder = OtlpEncoder(
            tracing.resource.attributes, tracing.resource.schema_url, scope.name, scope.version,
            scope.attributes, scope.schema_url,
        )  # fmt: skip
        self._post: Any = None
        #: the SDK exporter's limit on a request's size (uncompressed); 0 or less: none
        self._max_request_size = 0
        self._shutdown = False
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:  # pragma: no cover - a dependency of the package
            return
        client = getattr(inner, "_client", None)  # SDK >= 1.4x: _OTLPHTTPClient.export(bytes)
        if type(inner) is OTLPSpanExporter and callable(getattr(client, "export", None)):
            self._post = client.export  # type: ignore[union-attr]
            # (an SDK without the attribute enforces no limit)
            self._max_request_size = getattr(inner, "_max_request_size", None) or 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        """``OTLPSpanExporter.export`` with our bytes: its checks, its words, its result."""
        if self._post is None:
            return self.inner.export([self.tracing.readable(s) for s in spans])
        if self._shutdown:
            log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        try:
            data = self.encoder.request(spans)
        except Exception as exc:
            log.error("Failed to encode span batch: %s", exc)
            return SpanExportResult.FAILURE
        if 0 < self._max_request_size < len(data):
            log.warning("Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                        len(data), self._max_request_size)  # fmt: skip
            return SpanExportResult.FAILURE
        result = self._post(data)
        return SpanExportResult.SUCCESS if getattr(result, "success", False) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown = True
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _exporter(section: Mapping[str, Any]) -> SpanExporter:
    endpoint = section.get("opentracing_grpc_endpoint")
    if endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as Grpc,
            )
        except ImportError:
            log.warning(
                "tracing.opentracing_grpc_endpoint needs the opentelemetry-exporter-otlp-proto-grpc "
                "package; exporting over OTLP/HTTP (OTEL_EXPORTER_OTLP_* variables) instead"
            )
        else:
            return Grpc(endpoint=str(endpoint), insecure=str(endpoint).startswith("http://"))  # type: ignore[no-any-return]
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http()
