"""Tracing's own spans and OTLP encoding (issue 27) against the OpenTelemetry SDK's.

The oracle is the SDK itself, driven as ``plano_fast.tracing`` drove it before issue 27
(``SdkTracing`` below: SDK spans from ``TracerProvider.get_tracer("plano_fast")``, the
same calls): for the same requests, with the same ids (``random`` seeded alike: both
draw ids with ``random.getrandbits``, trace id first) and the same clock, the export
request ``plano_fast.otlp.OtlpEncoder`` writes is byte for byte the one the SDK's encoder
(``encode_spans``) writes of the SDK's spans; so is the one of ``Tracing.readable`` (what
a non-OTLP/HTTP exporter gets).  Cases: a client's parent, a root, retried and failed
attempts, header and static attributes, routing attributes, a static key set again,
other value types, and the SDK's attribute limits from the environment.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

import plano_fast.spans as spans_module
import plano_fast.tracing as tracing_module
from plano_fast.spans import TraceSpan, end_attempt, end_server, traceparent
from plano_fast.tracing import Tracing
from tests.test_tracing import Receiver, receiver  # noqa: F401 - the fixture

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SECTION: dict[str, Any] = {
    "random_sampling": 100,
    "span_attributes": {"header_prefixes": ["x-user-"], "static": {"environment": "test", "plano_fast.mode": "x"}},
}
HEADERS = [(b"host", b"gw"), (b"authorization", b"Bearer sk-SECRET"), (b"x-user-team", b"blue \xe9"),
           (b"x-user-id", b"42"), (b"traceparent", PARENT)]


class SdkTracing:
    """The SDK's spans for the gateway's calls, as plano_fast.tracing made them before
    issue 27 (the oracle)."""

    def __init__(self, section: dict[str, Any]) -> None:
        attributes = section.get("span_attributes") or {}
        self.header_prefixes = tuple(p.lower().encode() for p in attributes.get("header_prefixes") or ())
        self.static = {str(k): str(v) for k, v in (attributes.get("static") or {}).items()}
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": "plano_fast"}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("plano_fast")

    def start_server(self, decision: tuple[int, int] | bool, headers: Sequence[tuple[bytes, bytes]],
                     path: bytes) -> Any:  # fmt: skip
        context = None
        if isinstance(decision, tuple):
            parent = SpanContext(decision[0], decision[1], is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        span = self.tracer.start_span(path.decode("latin-1"), context=context, kind=SpanKind.SERVER,
                                      attributes=self.static)  # fmt: skip
        for name, value in headers:
            if self.header_prefixes and name.startswith(self.header_prefixes) and name not in (
                b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key", b"cookie", b"proxy-authorization"
            ):  # fmt: skip
                span.set_attribute("http.request.header." + name.decode("latin-1"), value.decode("latin-1"))
        return span

    def start_attempt(self, server: Any, provider: str, model: str | None) -> Any:
        return self.tracer.start_span(
            f"upstream {provider}", context=trace.set_span_in_context(server), kind=SpanKind.CLIENT,
            attributes={"gen_ai.provider.name": provider, "gen_ai.request.model": model or ""},
        )  # fmt: skip

    @staticmethod
    def end_attempt(span: Any, status: int, error: str | None = None) -> None:
        if status:
            span.set_attribute("http.response.status_code", status)
        if error is not None or status >= 400 or not status:
            span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
        span.end()

    @staticmethod
    def end_server(span: Any, *, mode: str, endpoint: str, request_id: str, provider: str,
                   request_model: str | None, response_model: str | None, outcome: str, status: int,
                   tokens: tuple[int, int] | None) -> None:  # fmt: skip
        operation = spans_module.OPERATIONS.get(endpoint, endpoint or "chat")
        span.update_name(f"{operation} {request_model or ''}".strip())
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
            "gen_ai.request.model": request_model or "", "gen_ai.response.model": response_model or "",
            "http.response.status_code": status, "plano_fast.mode": mode, "plano_fast.request_id": request_id,
            "plano_fast.outcome": outcome,
        }  # fmt: skip
        if tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = tokens[0]
            attributes["gen_ai.usage.output_tokens"] = tokens[1]
        span.set_attributes(attributes)
        if status >= 500 or outcome in ("upstream_failed",):
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()


class Ours:
    """plano_fast.tracing with its finished spans captured (not exported)."""

    def __init__(self, section: dict[str, Any]) -> None:
        self.tracing = Tracing(section, InMemorySpanExporter())
        self.spans: list[TraceSpan] = []
        self.tracing.owner.on_end = self.spans.append
        # (the module's, as the exchange calls them: the compiled ones or, in the
        # ``implementation`` fixture's pure case, the twins)
        self.end_attempt = spans_module.end_attempt
        self.end_server = spans_module.end_server

    def start_server(self, decision: tuple[int, int] | bool, headers: Sequence[tuple[bytes, bytes]],
                     path: bytes) -> TraceSpan:  # fmt: skip
        return self.tracing.start_server(decision, headers, path)

    def start_attempt(self, server: TraceSpan, provider: str, model: str | None) -> TraceSpan:
        return self.tracing.start_attempt(server, provider, model)


def requests(t: Any) -> None:
    """Three requests' calls, as the exchange makes them."""
    decision = Tracing(SECTION, InMemorySpanExporter()).sample(HEADERS)  # the client's parent
    assert isinstance(decision, tuple)
    # 1: under the client's trace, one attempt, routing attributes (config mode), usage
    server = t.start_server(decision, HEADERS, b"/v1/chat/completions")
    server.set_attribute("routing.determination_ms", 1.25)
    server.set_attribute("plano.route.name", "code")
    attempt = t.start_attempt(server, "openai", "gpt-4o-mini")
    t.end_attempt(attempt, 200)
    t.end_server(server, mode="config", endpoint="chat_completions", request_id="req-1", provider="openai",
                 request_model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18", outcome="ok", status=200,
                 tokens=(12, 345))  # fmt: skip
    # 2: a root; the first attempt retried, the second fails; no usage
    server = t.start_server(True, HEADERS[:2], b"/v1/messages")
    attempt = t.start_attempt(server, "anthropic", None)
    t.end_attempt(attempt, 503, "retried")
    attempt = t.start_attempt(server, "anthropic", "claude")
    t.end_attempt(attempt, 0)
    t.end_server(server, mode="firewall", endpoint="messages", request_id="req-2", provider="anthropic",
                 request_model=None, response_model=None, outcome="upstream_failed", status=502, tokens=None)
    # 3: other value types, a value with non-ASCII text, an unknown endpoint, a 4xx
    server = t.start_server(True, [], b"/v1/embeddings")
    server.set_attribute("flag", True)
    server.set_attribute("negative", -7)
    server.set_attribute("ratio", 0.0)
    server.set_attribute("empty", "")
    server.set_attribute("list", ["a", "b"])  # unhashable: the encoder's slow path
    server.set_attribute("text", "réponse ✓")
    server.set_attribute("lone surrogate", "\ud800")  # not UTF-8: left out (and logged)
    attempt = t.start_attempt(server, "gemini", "g")
    t.end_attempt(attempt, 404)
    t.end_server(server, mode="config", endpoint="other", request_id="req-3", provider="gemini", request_model="g",
                 response_model="g", outcome="upstream_error", status=404, tokens=(0, 0))


#: the span records' calls compiled where built (plano_fast/_spans.pyx) and their twins
RECORD_TWINS: dict[Any, tuple[str, ...]] = {
    spans_module: ("end_attempt", "end_server"),
    Tracing: ("may_sample", "sample", "start_server", "start_attempt"),
}


@pytest.fixture(params=["python", "cython"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test on both builds of the encoder -- ``plano_fast._otlp``'s ``request`` and its
    twin ``OtlpEncoder._request_py`` (with ``_span_py``; chosen when the encoder is made)
    -- and of the span records' calls: ``plano_fast._spans``' (installed over
    ``spans.end_attempt`` / ``end_server`` and ``Tracing``'s methods) or their twins
    (``*_py``)."""
    from plano_fast import otlp
    from plano_fast.wire import PURE_ENV

    if request.param == "python":
        monkeypatch.setattr(otlp, "_compiled", None)
        for owner, names in RECORD_TWINS.items():
            twins = spans_module if owner is spans_module else tracing_module
            for name in names:
                monkeypatch.setattr(owner, name, getattr(twins, f"{name}_py"))
    elif otlp.ENCODER_IMPLEMENTATION != "cython":
        if os.environ.get(PURE_ENV) == "1":
            pytest.skip("pure build forced by the environment")
        pytest.fail("plano_fast._otlp is not built (make env)")
    else:
        import importlib

        compiled = importlib.import_module("plano_fast._spans")  # (ImportError: not built)
        for owner, names in RECORD_TWINS.items():
            for name in names:
                assert getattr(owner, name) is getattr(compiled, name), name
    return str(request.param)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """The same clock for both sides: a counter (re)started by the returned function."""
    counter = itertools.count(1_733_400_000_000_000_000, 1_234_567)
    state = {"it": counter}

    def now() -> int:
        return next(state["it"])

    def restart() -> None:
        state["it"] = itertools.count(1_733_400_000_000_000_000, 1_234_567)

    monkeypatch.setattr("opentelemetry.sdk.trace.time_ns", now)
    monkeypatch.setattr(tracing_module, "time_ns", now)  # spans start
    monkeypatch.setattr(spans_module, "time_ns", now)  # and end
    yield restart


def both(section: dict[str, Any], restart: Callable[[], None],
         calls: Callable[[Any], None] = requests) -> tuple[bytes, Ours, Sequence[ReadableSpan]]:  # fmt: skip
    restart()
    random.seed(27)
    sdk = SdkTracing(section)
    calls(sdk)
    expected = encode_spans(sdk.exporter.get_finished_spans()).SerializePartialToString()
    restart()
    random.seed(27)
    ours = Ours(section)
    calls(ours)
    return expected, ours, sdk.exporter.get_finished_spans()


def test_encoded_bytes_are_the_sdks(clock: Callable[[], None], implementation: str) -> None:
    expected, ours, sdk_spans = both(SECTION, clock)
    encoder = ours.tracing.exporter.encoder
    assert isinstance(encoder.request, functools.partial) == (implementation == "cython")
    assert len(ours.spans) == len(sdk_spans) == 7
    assert ours.tracing.exporter.encoder.request(ours.spans) == expected
    # the cache of KeyValue encodings: a second pass gives the same bytes
    assert ours.tracing.exporter.encoder.request(ours.spans) == expected
    # what an exporter other than OTLP/HTTP gets encodes to the same bytes too
    readable = [ours.tracing.readable(s) for s in ours.spans]
    assert encode_spans(readable).SerializePartialToString() == expected
    # the traceparent sent upstream names the attempt's span under the client's trace
    first_attempt = ours.spans[0]
    assert traceparent(first_attempt) == b"00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-01" % first_attempt.span_id


@pytest.mark.usefixtures("implementation")
def test_attribute_limits_from_the_environment_are_the_sdks(
    clock: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "5")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=core")
    expected, ours, sdk_spans = both(SECTION, clock)
    assert any(s.dropped_attributes for s in sdk_spans)  # the limits were reached
    assert ours.tracing.exporter.encoder.request(ours.spans) == expected
    assert encode_spans([ours.tracing.readable(s) for s in ours.spans]).SerializePartialToString() == expected


@pytest.mark.usefixtures("implementation")
def test_many_static_attributes_and_a_zero_count_limit(
    clock: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    many = {**SECTION, "span_attributes": {"static": {f"k{i}": f"v{i}" for i in range(140)}}}
    expected, ours, _ = both(many, clock)
    assert ours.tracing.exporter.encoder.request(ours.spans) == expected
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "0")
    expected, ours, _ = both(SECTION, clock)
    assert ours.tracing.exporter.encoder.request(ours.spans) == expected


def zeros_and_empty_keys(t: Any) -> None:
    """0.0 then -0.0 under one key (equal, one hash: one KeyValue cache entry), and empty
    attribute keys, set one by one, together and among the static attributes."""
    for value in (0.0, -0.0, 0.0, -0.0, 1.5, 0):
        server = t.start_server(True, [], b"/v1/chat/completions")
        server.set_attribute("ratio", value)
        server.set_attribute("", "dropped")
        server.set_attributes({"": 1, "kept": value})
        t.end_server(server, mode="config", endpoint="chat_completions", request_id="r", provider="openai",
                     request_model="m", response_model="m", outcome="ok", status=200, tokens=None)  # fmt: skip


@pytest.mark.parametrize("limit", [None, "3", "0"])
@pytest.mark.usefixtures("implementation")
def test_negative_zero_and_empty_keys_are_the_sdks(
    clock: Callable[[], None], monkeypatch: pytest.MonkeyPatch, limit: str | None
) -> None:
    """Was: -0.0 was exported as 0.0 after a 0.0 under the same key (the KeyValue cache
    is keyed by (key, value, type) and 0.0 == -0.0), and an empty attribute key was kept
    where the SDK drops it (and counts it dropped).  Now floats are not cached and an
    empty key is dropped and counted, as ``BoundedAttributes`` does."""
    if limit is not None:
        monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", limit)
    section = {**SECTION, "span_attributes": {"static": {"": "v", "environment": "test"}}}
    expected, ours, sdk_spans = both(section, clock, zeros_and_empty_keys)
    assert any(s.dropped_attributes for s in sdk_spans)
    encoder = ours.tracing.exporter.encoder
    assert encoder.request(ours.spans) == expected
    assert encoder.request(ours.spans) == expected  # (with the cache filled)
    assert encode_spans([ours.tracing.readable(s) for s in ours.spans]).SerializePartialToString() == expected


@pytest.mark.usefixtures("implementation")
def test_the_keyvalue_cache_keeps_no_long_entry() -> None:
    """Was: every KeyValue of a string was cached, a client's header value (up to the 32 KiB
    head) among them: 4000 sampled requests with a distinct 30 KB x-user-id held ~230 MiB
    until the cache's 4096 entries filled.  Now an encoding longer than the bound is made
    each time: a long header value or a long header name leaves nothing in the cache, and
    the bytes are the same."""
    from plano_fast import otlp

    t = Tracing({"random_sampling": 0, "span_attributes": {"header_prefixes": ["x-user-"]}}, InMemorySpanExporter())
    try:
        encoder = t.exporter.encoder
        spans = []
        for i in range(50):
            headers = [(b"x-user-id", b"%06d" % i * 5000), (b"x-user-" + b"n%06d" % i * 3000, b"1"),
                       (b"x-user-team", b"blue"), (b"traceparent", PARENT)]  # fmt: skip
            span = t.start_server((1, 1), headers, b"/v1/chat/completions")
            span.end_ns = 1
            spans.append(span)
        first = encoder.request(spans)
        assert encoder._kv, "the short entries are cached"
        for (key, value, _), kv in encoder._kv.items():
            assert len(kv) <= otlp._KV_CACHE_ENTRY_MAX and len(key) + len(str(value)) <= otlp._KV_CACHE_ENTRY_MAX
        assert sum(len(kv) for kv in encoder._kv.values()) < 2000
        assert encoder.request(spans) == first
        readable = [t.readable(s) for s in spans]
        assert encode_spans(readable).SerializePartialToString() == first
    finally:
        t.shutdown()


def test_no_credential_header_is_copied_into_a_span() -> None:
    """Was: tracing kept its own list of secret headers (authorization, x-api-key,
    x-goog-api-key, api-key, cookie, proxy-authorization): Azure API Management's
    ``Ocp-Apim-Subscription-Key`` and the credentials' underscore spellings (``x_api_key``,
    which CGI/WSGI servers read as ``x-api-key``) were copied into a span when a configured
    prefix matched them.  Now the one list, ``wire.SECRET_HEADERS``, shared with the
    operator-key masking."""
    t = Tracing({"random_sampling": 0, "span_attributes": {"header_prefixes": ["ocp-", "x", "api"]}},
                InMemorySpanExporter())  # fmt: skip
    try:
        headers = [(b"ocp-apim-subscription-key", b"SECRET1"), (b"x_api_key", b"SECRET2"),
                   (b"x_goog_api_key", b"SECRET3"), (b"api_key", b"SECRET4"), (b"x-api-key", b"SECRET5"),
                   (b"x-user-team", b"blue"), (b"ocp-apim-trace", b"true")]  # fmt: skip
        span = t.start_server((1, 1), headers, b"/v1/chat/completions")
        copied = {k: v for k, v in span.attributes.items() if k.startswith("http.request.header.")}
        assert copied == {"http.request.header.x-user-team": "blue", "http.request.header.ocp-apim-trace": "true"}
    finally:
        t.shutdown()


@pytest.mark.usefixtures("implementation")
def test_otlp_http_posts_the_encoders_bytes() -> None:
    """With the default exporter (OTLP/HTTP) the records are encoded here and posted by
    the SDK exporter's client: if an SDK release moves that client, this fails (and the
    export would fall back to the SDK's slow encoding, correct but ~65 µs a request)."""
    t = Tracing({"random_sampling": 100})
    try:
        assert t.exporter._post is not None
        posted: list[bytes] = []

        class Result:
            success = True

        t.exporter._post = lambda data: posted.append(data) or Result()
        server = t.start_server(True, [], b"/v1/chat/completions")
        end_server(server, mode="config", endpoint="chat_completions", request_id="r", provider="openai",
                   request_model="m", response_model="m", outcome="ok", status=200, tokens=None)
        t.force_flush()
        assert posted == [t.exporter.encoder.request([server])]
    finally:
        t.shutdown()


@pytest.mark.usefixtures("implementation")
def test_spans_ended_or_set_after_the_end_change_nothing() -> None:
    t = Tracing({"random_sampling": 100}, InMemorySpanExporter())
    ended: list[TraceSpan] = []
    t.owner.on_end = ended.append
    try:
        span = t.start_server(True, [], b"/p")
        span.end(5)
        span.set_attribute("late", 1)
        span.set_error("late")
        span.end(6)
        # (the server span's renaming, end_server's: not once it has ended)
        spans_module.end_server(span, mode="config", endpoint="chat_completions", request_id="r", provider="p",
                                request_model="late", response_model="late", outcome="ok", status=500,
                                tokens=None)  # fmt: skip
        spans_module.end_attempt(span, 503, "retried")  # (an attempt's end: nothing either)
        assert ended == [span] and span.attributes == {} and span.name == "/p"
        assert span.error is None and span.end_ns == 5
    finally:
        t.shutdown()


def test_sdk_disabled_samples_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=true: the SDK's tracer made no spans; neither does Tracing (the
    client's traceparent then goes upstream as sent)."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    t = Tracing({"random_sampling": 100}, InMemorySpanExporter())
    try:
        assert t.sample(HEADERS) is False and t.sample([]) is False
    finally:
        t.shutdown()


def _ended_server(t: Tracing, request_id: str) -> TraceSpan:
    server = t.start_server(True, [], b"/v1/chat/completions")
    end_server(server, mode="config", endpoint="chat_completions", request_id=request_id, provider="openai",
               request_model="m", response_model="m", outcome="ok", status=200, tokens=None)  # fmt: skip
    return server


@pytest.mark.usefixtures("implementation")
def test_otlp_http_drops_a_request_over_the_exporters_max_request_size(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: the encoder's bytes were posted whatever their size, where the SDK's exporter
    drops a request over its ``max_request_size`` (64 MiB unless set; 0 or less: no limit)
    and fails the export.  Now the same check, at the same edge, before any post."""
    endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"
    spans: list[TraceSpan] = []
    t = Tracing({"random_sampling": 100})
    t.owner.on_end = spans.append
    try:
        _ended_server(t, "r")
        size = len(t.exporter.encoder.request(spans))
    finally:
        t.shutdown()
    results = []
    for limit in (size - 1, size, 0, -1):
        t = Tracing({"random_sampling": 100}, OTLPSpanExporter(endpoint=endpoint, max_request_size=limit))
        try:
            assert t.exporter._post is not None  # our bytes, the SDK's client
            results.append(t.exporter.export(spans))
        finally:
            t.shutdown()
    assert results == [SpanExportResult.FAILURE, SpanExportResult.SUCCESS, SpanExportResult.SUCCESS,
                       SpanExportResult.SUCCESS]  # fmt: skip
    assert len(receiver.spans) == 3  # the first request was not sent
    assert f"serialized size {size} bytes exceeds max_request_size {size - 1} bytes" in caplog.text
    # the SDK's exporter, given the same spans as its own, decides alike
    sdk = OTLPSpanExporter(endpoint=endpoint, max_request_size=size - 1)
    try:
        assert sdk.export([Tracing({}, InMemorySpanExporter()).readable(s) for s in spans]) == SpanExportResult.FAILURE
    finally:
        sdk.shutdown()
    assert len(receiver.spans) == 3


def test_otlp_http_exports_nothing_after_shutdown(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """Was: an export after the exporter's shutdown (the batch processor's worker outliving
    its shutdown timeout) still posted; the SDK's exporter refuses it.  Now refused alike."""
    t = Tracing({"random_sampling": 100},
                OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.port}/v1/traces"))  # fmt: skip
    spans: list[TraceSpan] = []
    t.owner.on_end = spans.append
    _ended_server(t, "before")
    assert t.exporter.export(spans) == SpanExportResult.SUCCESS
    t.shutdown()
    _ended_server(t, "after")
    assert t.exporter.export(spans[1:]) == SpanExportResult.FAILURE
    assert [s.span_id for s in receiver.spans] == [spans[0].span_id.to_bytes(8, "big")]
    assert "Exporter already shutdown, ignoring batch" in caplog.text


#: upstream heads: none, the client's first, a previous attempt's last, several (one
#: empty), names that are not ``traceparent``, a bare LF inside, degenerate ones
HEADS = [
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\ntraceparent: " + PARENT + b"\r\nhost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nhost: a\r\ntraceparent: 00-1-2-01\r\n\r\n",
    b"POST / HTTP/1.1\r\ntraceparent: a\r\ntraceparent:\r\nhost: a\r\ntraceparent: c\r\n\r\n",
    b"POST / HTTP/1.1\r\nTraceparent: kept\r\ntraceparent-x: kept\r\nx: traceparent: kept\r\n\r\n",
    b"POST / HTTP/1.1\r\ntraceparent: lf\nx: y\r\n\r\n",
    b"", b"\r", b"\r\n", b"\r\ntraceparent:", b"\r\ntraceparent: x",
]  # fmt: skip


def test_the_upstream_heads_traceparent_is_the_attempts_on_both_builds() -> None:
    """``plano_fast._otlp.upstream_head`` writes what its twin ``spans.upstream_head``
    (a regular expression's strip, then the line) does, ids of every width included."""
    from plano_fast import otlp
    from plano_fast.spans import upstream_head
    from plano_fast.wire import PURE_ENV

    compiled = otlp.compiled()
    if compiled is None:
        if os.environ.get(PURE_ENV) == "1":
            pytest.skip("pure build forced by the environment")
        pytest.fail("plano_fast._otlp is not built (make env)")
    t = Tracing({"random_sampling": 100}, InMemorySpanExporter())
    try:
        assert t.upstream_head is compiled.upstream_head
        spans = [t.start_server(decision, [], b"/") for decision in
                 ((1, 1), ((1 << 128) - 1, (1 << 64) - 1), (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7))]
        spans += [t.start_attempt(s, "openai", "m") for s in spans]
        for head in HEADS:
            for span in spans:
                assert compiled.upstream_head(head, span) == upstream_head(head, span), (head, span.trace_id)
        span = spans[-1]
        assert upstream_head(HEADS[1], span) == (
            b"POST / HTTP/1.1\r\nhost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-01\r\n\r\n"
            % span.span_id
        )
    finally:
        t.shutdown()
