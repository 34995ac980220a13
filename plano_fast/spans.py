"""A sampled request's trace spans as records, and the calls the relay makes on them.

The relay imports this module at every start; it imports nothing of OpenTelemetry (the
SDK costs ~45 ms of CPU to import): ``plano_fast.tracing`` (the sampler, the SDK's batch
processor and exporter) and ``plano_fast.otlp`` (the encoder) load only when the
configuration has a ``tracing`` section (tests/test_start_imports.py).

``end_attempt`` and ``end_server`` are compiled where built (``plano_fast/_spans.pyx``,
installed over ``end_attempt_py`` / ``end_server_py``, their twins, at the end of this
module); call them through this module (``spans.end_server``), which holds whichever is in
force.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from time import time_ns
from typing import Any, Final

from plano_fast.twins import install_compiled

log = logging.getLogger("plano_fast.tracing")

#: OTLP Span.SpanKind
KIND_SERVER: Final = 2
KIND_CLIENT: Final = 3
#: GenAI operation names by endpoint label
OPERATIONS: Final = {
    "chat_completions": "chat",
    "messages": "chat",
    "responses": "chat",
    "gemini": "generate_content",
    "embeddings": "embeddings",
    "completions": "text_completion",
}


class SpanOwner:
    """What a span needs from its tracer: the attribute limits and where it goes when
    it ends (the batch processor)."""

    __slots__ = ("max_attributes", "max_length", "on_end")

    def __init__(self, max_attributes: int | None, max_length: int | None,
                 on_end: Callable[[TraceSpan], None]) -> None:  # fmt: skip
        self.max_attributes = max_attributes
        self.max_length = max_length
        self.on_end = on_end


class TraceSpan:
    """One span of a sampled request: what OTLP exports of it, nothing else.

    ``parent_id`` is 0 for a root span; ``remote_parent`` says the parent is a client's
    (its ``traceparent``).  ``error`` is None for an unset status, else the description of
    an ERROR status.  Mutators after ``end`` are ignored, as the SDK's are."""

    __slots__ = ("name", "trace_id", "span_id", "parent_id", "remote_parent", "kind", "start_ns", "end_ns",
                 "attributes", "dropped", "error", "owner")

    def __init__(self, owner: SpanOwner, name: str, kind: int, trace_id: int, span_id: int, parent_id: int,
                 remote_parent: bool, attributes: dict[str, Any], dropped: int, start_ns: int) -> None:
        self.owner = owner
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.remote_parent = remote_parent
        self.attributes = attributes
        self.dropped = dropped
        self.start_ns = start_ns
        self.end_ns = 0
        self.error: str | None = None

    @property
    def context(self) -> Any:
        """The SDK's ``SpanContext`` of the span, sampled (every span here is: sampling
        was decided before it existed).  Read only by the ``BatchSpanProcessor.on_end`` of
        an SDK whose batch processor has no ``emit`` (before ~1.33), which exports what its
        context says is sampled; imported here, so that this module imports no OpenTelemetry."""
        from opentelemetry.trace import SpanContext, TraceFlags

        return SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def set_attribute(self, key: str, value: Any) -> None:
        """The SDK's ``BoundedAttributes`` rules: a key set again moves to the end; past
        the count limit the oldest is dropped (and counted); strings cut at the length limit;
        an empty key is dropped (and counted)."""
        if self.end_ns:
            log.warning("Setting attribute on ended span.")
            return
        if not key:
            log.warning("invalid key `%s`. must be non-empty string. Dropping key from attributes.", key)
            self.dropped += 1
            return
        attributes = self.attributes
        owner = self.owner
        if key in attributes:
            del attributes[key]
        elif owner.max_attributes is not None and len(attributes) >= owner.max_attributes:
            self.dropped += 1
            if owner.max_attributes == 0:
                return
            del attributes[next(iter(attributes))]
        if owner.max_length is not None and type(value) is str and len(value) > owner.max_length:
            value = value[: owner.max_length]
        attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """``set_attribute`` of each item, in order; one dict update when no key is
        already set, none is empty and no limit can be reached (the gateway's own calls)."""
        mine = self.attributes
        owner = self.owner
        if (
            not self.end_ns and owner.max_length is None
            and (owner.max_attributes is None or len(mine) + len(attributes) <= owner.max_attributes)
            and mine.keys().isdisjoint(attributes) and "" not in attributes
        ):  # fmt: skip
            mine.update(attributes)
            return
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_error(self, description: str) -> None:
        """Status ERROR with ``description`` (the only status the gateway sets)."""
        if not self.end_ns:
            self.error = description

    def end(self, end_ns: int) -> None:
        if self.end_ns:
            log.warning("Calling end() on an ended span.")
            return
        self.end_ns = end_ns
        self.owner.on_end(self)


def traceparent(span: TraceSpan) -> bytes:
    return b"00-%032x-%016x-01" % (span.trace_id, span.span_id)


_TRACEPARENT_LINE: Final = re.compile(rb"\r\ntraceparent:[^\r\n]*")


def upstream_head(head: bytes, span: TraceSpan) -> bytes:
    """``head`` (an upstream request head: its lines, then an empty one) without its
    ``traceparent`` lines (the client's, a previous attempt's) and with ``span``'s, last.
    (The pure twin of ``plano_fast._otlp.upstream_head``: ``Tracing.upstream_head`` is one
    or the other.)"""
    return _TRACEPARENT_LINE.sub(b"", head)[:-2] + b"traceparent: " + traceparent(span) + b"\r\n\r\n"


def end_attempt_py(span: TraceSpan, status: int, error: str | None = None) -> None:
    """An upstream attempt's span ends: its status (0: no answer), an error status for an
    error (``error``: the reason, e.g. "retried"), a status >= 400 or no answer."""
    if status:
        span.set_attribute("http.response.status_code", status)
    if error is not None or status >= 400 or not status:
        span.set_error(error or f"HTTP {status}")
    span.end(time_ns())


def end_server_py(
    span: TraceSpan,
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
    """A sampled request's server span ends: its name (``<operation> <model>``), the GenAI
    and gateway attributes, an error status for a 5xx or a failed upstream.  (Positional
    parameters: the compiled settle calls it with no keyword dict.)"""
    operation = OPERATIONS.get(endpoint, endpoint or "chat")
    if not span.end_ns:  # (an ended span keeps its name, as the SDK's)
        span.name = f"{operation} {request_model or ''}".strip()
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
        span.set_error(outcome)
    span.end(time_ns())


# The twins above; compiled where built (plano_fast/_spans.pyx): ~22k instructions of
# Python bytecode a traced request for the two ends (benchmarks.bench_tracing_parts)
end_attempt = end_attempt_py
end_server = end_server_py
install_compiled(sys.modules[__name__], "plano_fast._spans", end_attempt="end_attempt", end_server="end_server")
