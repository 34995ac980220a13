"""OpenTelemetry traces from Plano's tracing section (issue 21): an OTLP/HTTP receiver in
the test gets the server and attempt spans with GenAI attributes, under the client's trace
id; the provider sees the attempt's traceparent; sampling 0 sends nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Receiver:
    def __init__(self) -> None:
        self.spans: list[Any] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def start(fake: FakeProviderThread, tmp_path: Path, receiver: Receiver, sampling: int) -> GatewayProcess:
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    with open(config, "a") as f:
        f.write(
            f"tracing:\n  random_sampling: {sampling}\n  span_attributes:\n"
            "    header_prefixes: [x-user-]\n    static: {environment: test}\n"
        )
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    return GatewayProcess(config, env=env)


def attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def ask(gateway: GatewayProcess, headers: dict[str, str]) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-SECRET", max_retries=0) as client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )


def test_sampled_request_exports_server_and_attempt_spans(
    fake: FakeProviderThread, tmp_path: Path, receiver: Receiver
) -> None:
    gateway = start(fake, tmp_path, receiver, 0)  # the client's traceparent samples it
    try:
        fake.clear()
        ask(gateway, {"traceparent": PARENT, "x-user-team": "blue"})
        deadline = time.monotonic() + 10
        while len(receiver.spans) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        by_kind = {s.kind: s for s in receiver.spans}
        server, client = by_kind[2], by_kind[3]  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT
        assert server.trace_id.hex() == TRACE_ID == client.trace_id.hex()
        assert server.parent_span_id.hex() == "00f067aa0ba902b7" and client.parent_span_id == server.span_id
        a = attrs(server)
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.response.model"]
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["environment"] == "test" and a["http.request.header.x-user-team"] == "blue"
        assert all("SECRET" not in str(v) for v in a.values())
        (seen,) = [r for r in fake.requests if not r.path.startswith("/_fake")]
        assert seen.header_all("traceparent") == [f"00-{TRACE_ID}-{client.span_id.hex()}-01"]
    finally:
        gateway.stop()


def test_sampling_zero_sends_nothing(fake: FakeProviderThread, tmp_path: Path, receiver: Receiver) -> None:
    gateway = start(fake, tmp_path, receiver, 0)
    try:
        fake.clear()
        ask(gateway, {})
        ask(gateway, {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-00"})  # parent says: not sampled
        seen = [r for r in fake.requests if not r.path.startswith("/_fake")]
        assert seen[1].header_all("traceparent") == [f"00-{TRACE_ID}-00f067aa0ba902b7-00"]  # passed as sent
    finally:
        gateway.stop()
    # nothing, then or at stop (which exports whatever spans are pending: no wait needed)
    assert receiver.spans == []


def test_may_sample_is_the_one_gate_before_any_span() -> None:
    """Dispatch asks ``Tracing.may_sample`` before anything else of tracing: at sampling 0
    only a client's traceparent (whatever its flag: ``sample`` decides) opens the way."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from plano_fast.tracing import Tracing

    plain = [(b"host", b"h"), (b"content-type", b"application/json")]
    traced = [*plain, (b"traceparent", PARENT.encode())]
    off = Tracing({"random_sampling": 0}, InMemorySpanExporter())
    on = Tracing({"random_sampling": 1}, InMemorySpanExporter())
    try:
        assert not off.may_sample(plain)
        assert off.may_sample(traced)
        assert off.sample(traced) is not False  # the parent's sampled flag
        assert on.may_sample(plain) and on.may_sample(traced)
    finally:
        off.shutdown()
        on.shutdown()


def test_each_retried_attempt_sends_its_own_traceparent_alone(
    fake: FakeProviderThread, tmp_path: Path, receiver: Receiver
) -> None:
    """The same model retried twice: each attempt's request carries one ``traceparent``,
    its own span's (the client's, then the previous attempt's, taken out), under the
    client's trace; the receiver gets the three attempts and the server span."""
    import uuid

    from tests.test_failover import providers

    config = write_config(tmp_path / "plano_config.yaml", fake.port, extra_providers=providers(fake.url))
    with open(config, "a") as f:
        f.write("tracing:\n  random_sampling: 0\n")
    gateway = GatewayProcess(config, env={
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    })  # fmt: skip
    try:
        fake.clear()
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-SECRET", max_retries=0) as client:
            client.chat.completions.create(
                model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}],
                extra_headers={"traceparent": PARENT, "x-fake-fail-first": "2", "x-fake-fail-key": uuid.uuid4().hex},
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while len(receiver.spans) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        attempts = sorted((s for s in receiver.spans if s.kind == 3), key=lambda s: s.start_time_unix_nano)
        assert len(attempts) == 3 and len(receiver.spans) == 4
        sent = [r.header_all("traceparent") for r in fake.requests if not r.path.startswith("/_fake")]
        assert sent == [[f"00-{TRACE_ID}-{s.span_id.hex()}-01"] for s in attempts]
    finally:
        gateway.stop()
