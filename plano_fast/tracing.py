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
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables.  Spans
are exported by the SDK's ``BatchSpanProcessor`` (a thread of its own).

Sampling is decided before any span exists: a client's W3C ``traceparent`` decides by its
sampled flag (parent-based), otherwise ``random_sampling`` percent of requests.  An
unsampled request runs nothing of the SDK: at ``random_sampling: 0`` it costs dispatch one
C scan of the header names (``wire.has_header``: is there a ``traceparent``?), ~0.6k
instructions; above 0, the header lookup and one random draw.

A sampled request gets a server span (``<operation> <model>``, kind SERVER) and a child
span per upstream attempt (kind CLIENT); the attempt's ``traceparent`` goes upstream in
place of the client's.  Attributes: ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``http.response.status_code``, ``plano_fast.mode``,
``plano_fast.request_id``, ``plano_fast.outcome``, plus the configured header and static
ones (credential headers are never copied).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry import trace

from plano_fast.wire import has_header
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

log = logging.getLogger("plano_fast.tracing")

_TRACEPARENT: Final = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: never copied into a span, whatever header_prefixes say
_SECRET_HEADERS: Final = frozenset(
    {b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key", b"cookie", b"proxy-authorization"}
)
#: GenAI operation names by endpoint label
OPERATIONS: Final = {
    "chat_completions": "chat",
    "messages": "chat",
    "responses": "chat",
    "gemini": "generate_content",
    "embeddings": "embeddings",
    "completions": "text_completion",
}


class Tracing:
    """The configured tracer, or nothing when ``random_sampling`` is 0 and no client asks."""

    def __init__(self, section: Mapping[str, Any], exporter: SpanExporter | None = None) -> None:
        self.rate = float(section.get("random_sampling") or 0) / 100.0
        attributes = section.get("span_attributes") or {}
        self.header_prefixes = tuple(
            p.lower().encode() for p in attributes.get("header_prefixes") or () if isinstance(p, str)
        )
        self.static = {str(k): str(v) for k, v in (attributes.get("static") or {}).items()}
        provider = TracerProvider(resource=Resource.create({"service.name": "plano_fast"}))
        provider.add_span_processor(BatchSpanProcessor(exporter or _exporter(section)))
        self.provider = provider
        self.tracer = provider.get_tracer("plano_fast")
        self._random = random.random

    def may_sample(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether ``sample`` could say yes: only a random draw (``random_sampling`` above
        0) or a client's ``traceparent`` can sample.  Without either nothing more is done:
        at ``random_sampling: 0`` one C scan of the header names
        (benchmarks/results/observability-cost-20261205.md)."""
        return self.rate > 0 or has_header(headers, b"traceparent")

    def sample(self, headers: Sequence[tuple[bytes, bytes]]) -> SpanContext | bool:
        """False: not sampled; True: sampled, no parent; a SpanContext: sampled under the
        client's trace."""
        for name, value in headers:
            if name == b"traceparent":
                m = _TRACEPARENT.fullmatch(value.strip().lower())
                if m is None or m.group(1) == b"0" * 32 or m.group(2) == b"0" * 16:
                    break  # malformed: decide as if absent
                flags = int(m.group(3), 16)
                if not flags & 1:
                    return False
                return SpanContext(
                    int(m.group(1), 16), int(m.group(2), 16), is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )  # fmt: skip
        return self.rate > 0 and self._random() < self.rate

    def start_server(
        self, decision: SpanContext | bool, headers: Sequence[tuple[bytes, bytes]], path: bytes
    ) -> Span:
        context = (
            trace.set_span_in_context(NonRecordingSpan(decision))
            if isinstance(decision, SpanContext)
            else None
        )
        span = self.tracer.start_span(
            path.decode("latin-1"), context=context, kind=SpanKind.SERVER, attributes=self.static
        )
        if self.header_prefixes:
            for name, value in headers:
                if name.startswith(self.header_prefixes) and name not in _SECRET_HEADERS:
                    span.set_attribute("http.request.header." + name.decode("latin-1"), value.decode("latin-1"))
        return span

    def start_attempt(self, server: Span, provider: str, model: str | None) -> Span:
        span = self.tracer.start_span(
            f"upstream {provider}", context=trace.set_span_in_context(server), kind=SpanKind.CLIENT,
            attributes={"gen_ai.provider.name": provider, "gen_ai.request.model": model or ""},
        )  # fmt: skip
        return span

    def shutdown(self) -> None:
        self.provider.shutdown()


def traceparent(span: Span) -> bytes:
    ctx = span.get_span_context()
    return b"00-%032x-%016x-01" % (ctx.trace_id, ctx.span_id)


def end_attempt(span: Span, status: int, error: str | None = None) -> None:
    if status:
        span.set_attribute("http.response.status_code", status)
    if error is not None or status >= 400 or not status:
        span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
    span.end()


def end_server(
    span: Span,
    *,
    mode: str,
    endpoint: str,
    request_id: str,
    provider: str,
    request_model: str | None,
    response_model: str | None,
    outcome: str,
    status: int,
    tokens: tuple[int, int] | None,
) -> None:
    operation = OPERATIONS.get(endpoint, endpoint or "chat")
    span.update_name(f"{operation} {request_model or ''}".strip())
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model or "",
        "gen_ai.response.model": response_model or "",
        "http.response.status_code": status,
        "plano_fast.mode": mode,
        "plano_fast.request_id": request_id,
        "plano_fast.outcome": outcome,
    }
    if tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = tokens[0]
        attributes["gen_ai.usage.output_tokens"] = tokens[1]
    span.set_attributes(attributes)
    if status >= 500 or outcome in ("upstream_failed",):
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()


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
