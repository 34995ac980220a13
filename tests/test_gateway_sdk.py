"""The official SDKs, pointed at the real gateway, against the shipped fake provider."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config

CLIENT_KEY = "sk-client-own-key-123"


def _openai(gateway: GatewayProcess, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def _anthropic(gateway: GatewayProcess, key: str = CLIENT_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def _last(fake: FakeProviderThread):  # type: ignore[no-untyped-def]
    requests = [r for r in fake.requests if not r.path.startswith("/_fake")]
    assert requests, "the fake provider received nothing"
    return requests[-1]


def test_openai_chat_swaps_access_key(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    fake.clear()
    with _openai(gateway) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    assert reply.choices[0].message.content
    assert reply.model == "gpt-4o-mini"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    seen = _last(fake)
    assert seen.path == "/v1/chat/completions"
    assert seen.header("authorization") == "Bearer sk-server-openai-key"
    assert CLIENT_KEY not in json.dumps(seen.headers)
    # The model needed no rewriting: the body reached the provider byte for byte.
    assert json.loads(seen.body)["model"] == "gpt-4o-mini"


def test_openai_provider_prefix_and_alias_rewrite_model(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    with _openai(gateway) as client:
        for requested in ("openai/gpt-4o-mini", "fast", "openai/gpt-5-nano"):
            fake.clear()
            client.chat.completions.create(
                model=requested, messages=[{"role": "user", "content": "hi"}]
            )
            sent = _last(fake).json()
            expected = "gpt-5-nano" if requested.endswith("nano") else "gpt-4o-mini"
            assert sent["model"] == expected, requested
            assert sent["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_stream_without_usage_request_sees_no_usage_chunk(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    fake.clear()
    with _openai(gateway) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "count"}], stream=True
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The gateway asked the provider for usage (to bill) but the client did not: the
    # usage-only chunk must not reach it.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert _last(fake).json()["stream_options"] == {"include_usage": True}


def test_openai_stream_with_usage_request_keeps_usage_chunk(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    with _openai(gateway) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "count"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens > 0  # type: ignore[union-attr]


def test_openai_passthrough_forwards_client_key(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    fake.clear()
    with _openai(gateway) as client:
        client.chat.completions.create(
            model="vllm/llama-passthrough", messages=[{"role": "user", "content": "x"}]
        )
    seen = _last(fake)
    assert seen.header("authorization") == f"Bearer {CLIENT_KEY}"
    assert "sk-server" not in json.dumps(seen.headers)
    assert seen.json()["model"] == "llama-passthrough"


def test_anthropic_messages_swaps_key(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    fake.clear()
    with _anthropic(gateway) as client:
        message = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello"}],
        )
    assert message.content[0].type == "text"
    assert message.usage.input_tokens > 0
    seen = _last(fake)
    assert seen.path == "/v1/messages"
    assert seen.header("x-api-key") == "sk-ant-server-key"
    # The client's own anthropic-version is kept, and never sent twice.
    assert len(seen.header_all("anthropic-version")) == 1
    assert CLIENT_KEY not in json.dumps(seen.headers)


def test_provider_response_headers_reach_the_client(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    """A real provider's ~20 headers (rate limits, two cookies, ids) are relayed as sent;
    only the hop-by-hop ones and date/server are the gateway's own."""
    fake.provider.provider_headers = True
    try:
        with _openai(gateway) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        with _anthropic(gateway) as aclient:
            araw = aclient.messages.with_raw_response.create(
                model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        fake.provider.provider_headers = False
    assert raw.parse().choices[0].message.content
    h = raw.headers
    assert h["x-ratelimit-remaining-requests"] == "9999"
    assert h["openai-processing-ms"] == "412"
    assert h["cf-ray"] == "8f1c2d3e4f5a6b7c-IAD"
    assert [c.split("=", 1)[0] for c in h.get_list("set-cookie")] == ["__cf_bm", "_cfuvid"]
    assert h.get_list("server") == ["plano_fast"]
    assert len(h.get_list("date")) == 1 and h["date"] != "Thu, 03 Dec 2026 23:00:00 GMT"
    assert araw.parse().usage.input_tokens > 0
    ah = araw.headers
    assert ah["anthropic-ratelimit-tokens-remaining"] == "2398000"
    assert ah["request-id"].startswith("req_fake")
    assert ah.get_list("server") == ["plano_fast"]


def test_anthropic_stream_helper(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    with _anthropic(gateway) as client:
        with client.messages.stream(
            model="anthropic/claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "stream please"}],
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text
    assert final.usage.output_tokens > 0
    assert _last(fake).json()["model"] == "claude-sonnet-4-6"


def test_anthropic_passthrough_forwards_client_key(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    fake.clear()
    with _anthropic(gateway) as client:
        client.messages.create(
            model="anthropic-passthrough",
            max_tokens=16,
            messages=[{"role": "user", "content": "x"}],
        )
    seen = _last(fake)
    # Newer anthropic SDKs send the key as a bearer token, older ones as x-api-key.
    assert CLIENT_KEY in (seen.header("x-api-key"), (seen.header("authorization") or "")[7:])
    assert "sk-ant-server" not in json.dumps(seen.headers)


def test_unknown_model_is_400_in_each_format(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    fake.clear()
    with _openai(gateway) as client, pytest.raises(openai.BadRequestError) as oai:
        client.chat.completions.create(model="nope-1", messages=[{"role": "user", "content": "x"}])
    assert "nope-1" in str(oai.value) and "gpt-4o-mini" in str(oai.value)
    with _anthropic(gateway) as aclient, pytest.raises(anthropic.BadRequestError) as ant:
        aclient.messages.create(
            model="nope-2", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert "nope-2" in str(ant.value)
    assert ant.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert not [r for r in fake.requests if not r.path.startswith("/_fake")]


def test_provider_errors_are_relayed(gateway: GatewayProcess) -> None:
    with _openai(gateway) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-status": "429"},
        )


def test_unreachable_provider_is_502(gateway: GatewayProcess) -> None:
    with _openai(gateway) as client, pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model="down/unreachable-model", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 502
    assert "cannot connect" in str(err.value)


def test_slow_provider_is_504(fake: FakeProviderThread, tmp_path: Path) -> None:
    # A gateway of its own with a 1 s listener timeout (the shared one's is 5 s: waited
    # out, that was 5 s of this test).
    config = write_config(tmp_path / "plano_config.yaml", fake.port, listener_timeout="1s")
    with GatewayProcess(config) as gateway:
        with _openai(gateway) as client, pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-fake-latency-ms": "2500"},
            )
        assert err.value.status_code == 504


def test_models_and_health(gateway: GatewayProcess) -> None:
    with _openai(gateway) as client:
        ids = [m.id for m in client.models.list()]
    assert "openai/gpt-4o-mini" in ids and "anthropic/claude-sonnet-4-6" in ids
    with urllib.request.urlopen(gateway.url + "/healthz") as resp:
        assert resp.status == 200


def test_first_sse_event_arrives_before_stream_ends(gateway: GatewayProcess) -> None:
    """Bytes are relayed as they arrive: with 200 ms between provider events, the
    first event must reach the client long before the provider has finished."""
    with _openai(gateway) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "slow"}],
            stream=True,
            extra_headers={"x-fake-events": "6", "x-fake-interval-ms": "200"},
        )
        start = time.monotonic()
        arrivals = [time.monotonic() - start for _ in stream]
    assert len(arrivals) >= 6
    # Six events 200 ms apart take >= 1 s in all; the first arrives within ~200 ms.
    assert arrivals[-1] - arrivals[0] > 0.8
    assert arrivals[0] < 0.5


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(
    make_gateway,  # type: ignore[no-untyped-def]
) -> None:
    """An upstream that closes a kept-alive connection just as the next request arrives
    (the classic keep-alive race): nothing was sent to the client yet, so the gateway
    retries once on a fresh connection and the client never notices."""
    import socket
    import threading

    body = b'{"id":"x","object":"chat.completion","model":"m","choices":[],"usage":null}'
    reply = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
             % len(body)) + body
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    served: list[int] = []

    def serve() -> None:
        conn_no = 0
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn_no += 1
            with conn:
                # Answer one request, then drop the connection when the second arrives.
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.recv(65536) if b'"m"' not in data else None
                served.append(conn_no)  # before the reply: the client may check at once
                conn.sendall(reply)
                conn.settimeout(5)
                try:
                    conn.recv(65536)  # the next request on this connection ...
                except OSError:
                    pass
                # ... is answered by closing without a byte.

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    extra = (f"  - name: flaky\n    model: flaky/m\n    base_url: http://127.0.0.1:{port}\n"
             "    provider_interface: openai\n    access_key: sk-x\n")
    gateway = make_gateway(extra_providers=extra)
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as client:
            for _ in range(3):
                client.chat.completions.create(model="flaky", messages=[])
    finally:
        server.close()
    # Each request after the first hit a stale connection and was retried on a new one.
    assert served == [1, 2, 3]


def test_an_upstream_cannot_forge_the_gateways_own_response_headers(gateway: GatewayProcess) -> None:
    """Over a socket: the provider's x-plano-request-id and x-model-router-selected-route
    are cut; the client sees exactly one request id, the gateway's (JSON and stream)."""
    import http.client

    for stream in (False, True):
        for forged in ("x-plano-request-id: forged-by-upstream", "x-model-router-selected-route: forged"):
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={
                "content-type": "application/json", "authorization": "Bearer sk-c",
                "x-fake-response-header": forged})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            ids = resp.msg.get_all("x-plano-request-id") or []
            assert len(ids) == 1 and ids[0] != "forged-by-upstream" and len(ids[0]) >= 32, ids
            assert resp.getheader("x-model-router-selected-route") is None
            conn.close()
