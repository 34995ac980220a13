"""Tests for benchmarks/fake_provider.py (the fake OpenAI / Anthropic / Gemini server)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator, Optional

import aiohttp
import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProvider, FakeProviderThread, RecordedRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as fp:
        yield fp


@pytest.fixture()
def oai(fake: FakeProviderThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0, timeout=30) as client:
        yield client


@pytest.fixture()
def ant(fake: FakeProviderThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0, timeout=30) as client:
        yield client


def _http(
    url: str, body: Optional[Any] = None, headers: Optional[dict[str, str]] = None, method: Optional[str] = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _sse_data(raw: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    out = []
    for block in raw.split(sep):
        for line in block.splitlines():
            if line.startswith(b"data: "):
                out.append(line[6:])
    return out


def _last(fake: FakeProviderThread) -> RecordedRequest:
    return fake.requests[-1]


def _expected_input(rec: RecordedRequest) -> int:
    return max(1, len(rec.body) // 4)


MSGS: list[Any] = [{"role": "user", "content": "Say hello"}]
WORDS8 = "Hello from the fake provider. This is"


# ---------------------------------------------------------------------------- OpenAI chat


def test_openai_chat_non_stream(fake: FakeProviderThread, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "gpt-4o-mini"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == WORDS8
    assert r.choices[0].finish_reason == "stop"
    rec = _last(fake)
    assert r.usage is not None
    assert r.usage.prompt_tokens == _expected_input(rec)
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_openai_chat_usage_overrides(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model="m",
        messages=MSGS,
        extra_headers={
            "x-fake-input-tokens": "100",
            "x-fake-output-tokens": "40",
            "x-fake-cached-tokens": "30",
            "x-fake-reasoning-tokens": "25",
            "x-fake-cache-write-tokens": "7",
        },
    )
    u = r.usage
    assert u is not None and u.prompt_tokens_details is not None and u.completion_tokens_details is not None
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (100, 40, 140)
    assert u.prompt_tokens_details.cached_tokens == 30
    assert u.prompt_tokens_details.cache_write_tokens == 7
    assert u.completion_tokens_details.reasoning_tokens == 25
    # reasoning without an explicit output count: output = events + reasoning
    r = oai.chat.completions.create(
        model="m", messages=MSGS, extra_headers={"x-fake-reasoning-tokens": "5", "x-fake-events": "3"}
    )
    assert r.usage is not None and r.usage.completion_tokens == 8
    assert r.choices[0].message.content == "Hello from the"


def test_openai_chat_stream_without_usage(fake: FakeProviderThread, oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="gpt-x", messages=MSGS, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert all(c.model == "gpt-x" and c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == WORDS8
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    # raw wire: no usage key at all, [DONE] terminator
    status, headers, raw = _http(fake.url + "/v1/chat/completions", {"model": "m", "stream": True})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["transfer-encoding"] == "chunked"
    data = _sse_data(raw)
    assert data[-1] == b"[DONE]"
    objs = [json.loads(d) for d in data[:-1]]
    assert len(objs) == 8 + 2
    assert all("usage" not in o for o in objs)


def test_openai_chat_stream_include_usage(fake: FakeProviderThread, oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens == _expected_input(_last(fake))
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    status, _, raw = _http(
        fake.url + "/v1/chat/completions",
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        {"x-fake-events": "2"},
    )
    data = _sse_data(raw)
    assert data[-1] == b"[DONE]"
    objs = [json.loads(d) for d in data[:-1]]
    assert all("usage" in o for o in objs)
    assert all(o["usage"] is None for o in objs[:-1])
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 2


def test_openai_chat_other_paths(fake: FakeProviderThread) -> None:
    for path in (
        "/openai/v1/chat/completions",
        "/v1beta/openai/chat/completions",
        "/compatible-mode/v1/chat/completions",
        "/chat/completions",
    ):
        status, _, raw = _http(fake.url + path, {"model": "qwen-max", "messages": MSGS})
        assert status == 200, path
        assert json.loads(raw)["model"] == "qwen-max"


def test_omit_usage(fake: FakeProviderThread, oai: openai.OpenAI) -> None:
    status, _, raw = _http(
        fake.url + "/v1/chat/completions", {"model": "m"}, {"x-fake-omit-usage": "1"}
    )
    assert status == 200 and "usage" not in json.loads(raw)
    chunks = list(
        oai.chat.completions.create(
            model="m", messages=MSGS, stream=True, stream_options={"include_usage": True},
            extra_headers={"x-fake-omit-usage": "1"},
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)
    _, _, raw = _http(fake.url + "/v1/messages", {"model": "c", "stream": True}, {"x-fake-omit-usage": "1"})
    assert b'"usage"' not in raw
    _, _, raw = _http(fake.url + "/v1beta/models/g:generateContent", {}, {"x-fake-omit-usage": "1"})
    assert b"usageMetadata" not in raw


# ----------------------------------------------------------------------------- Responses


def test_openai_responses_stream(fake: FakeProviderThread, oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-5", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == WORDS8
    assert final.status == "completed"
    assert final.model == "gpt-5"
    assert final.output_text == WORDS8
    assert final.usage is not None
    assert final.usage.output_tokens == 8
    assert final.usage.input_tokens == _expected_input(_last(fake))
    assert final.usage.total_tokens == final.usage.input_tokens + 8
    # raw iteration (no helper) sees the documented event order
    types = [e.type for e in oai.responses.create(model="gpt-5", input="hi", stream=True,
                                                    extra_headers={"x-fake-events": "2"})]
    assert types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]


def test_openai_responses_non_stream(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="gpt-5", input="hi", extra_headers={"x-fake-cached-tokens": "2"})
    assert r.output_text == WORDS8
    assert r.usage is not None and r.usage.input_tokens_details.cached_tokens == 2


def test_the_answers_name_the_service_tier(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    """``x-fake-service-tier``: chat (JSON and every chunk), Responses and Anthropic answers
    name it where the provider does; without it, the standard tier's names."""
    tier = {"x-fake-service-tier": "priority"}
    assert oai.chat.completions.create(model="m", messages=MSGS).service_tier == "default"
    assert oai.chat.completions.create(model="m", messages=MSGS, extra_headers=tier).service_tier == "priority"
    chunks = list(oai.chat.completions.create(model="m", messages=MSGS, stream=True,
                                              stream_options={"include_usage": True}, extra_headers=tier))
    assert {c.service_tier for c in chunks} == {"priority"} and chunks[-1].usage is not None
    assert oai.responses.create(model="gpt-5", input="hi", extra_headers=tier).service_tier == "priority"
    assert oai.responses.create(model="gpt-5", input="hi").service_tier == "default"
    assert ant.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=MSGS,
                               extra_headers=tier).usage.service_tier == "priority"
    assert ant.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=MSGS).usage.service_tier == "standard"
    with pytest.raises(openai.BadRequestError):  # a name that is no JSON-safe word
        oai.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-fake-service-tier": 'a"b'})


# ----------------------------------------------------------------------------- Anthropic


def test_anthropic_non_stream(fake: FakeProviderThread, ant: anthropic.Anthropic) -> None:
    m = ant.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=MSGS)
    assert m.type == "message" and m.role == "assistant"
    assert m.model == "claude-sonnet-4-6"
    assert m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text == WORDS8
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == _expected_input(_last(fake))
    assert m.usage.output_tokens == 8
    assert m.usage.cache_read_input_tokens == 0


def test_anthropic_stream_helper(fake: FakeProviderThread, ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=MSGS,
        extra_headers={
            "x-fake-input-tokens": "500",
            "x-fake-cached-tokens": "300",
            "x-fake-cache-write-tokens": "50",
            "x-fake-output-tokens": "42",
            "x-fake-events": "5",
        },
    ) as stream:
        text = "".join(stream.text_stream)
        msg = stream.get_final_message()
    assert text == "Hello from the fake provider"
    assert msg.content[0].type == "text" and msg.content[0].text == text
    assert msg.model == "claude-haiku-4-5"
    assert msg.stop_reason == "end_turn"
    # canonical input 500 = uncached 150 + cache read 300 + cache write 50
    assert msg.usage.input_tokens == 150
    assert msg.usage.cache_read_input_tokens == 300
    assert msg.usage.cache_creation_input_tokens == 50
    assert msg.usage.output_tokens == 42
    # wire shape: event lines, ping, no [DONE]
    _, _, raw = _http(fake.url + "/v1/messages", {"model": "c", "stream": True}, {"x-fake-events": "1"})
    events = [line[7:] for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert events == [
        b"message_start", b"content_block_start", b"ping", b"content_block_delta",
        b"content_block_stop", b"message_delta", b"message_stop",
    ]
    assert b"[DONE]" not in raw


def test_anthropic_count_tokens(fake: FakeProviderThread, ant: anthropic.Anthropic) -> None:
    r = ant.messages.count_tokens(model="claude-sonnet-4-6", messages=MSGS)
    assert r.input_tokens == _expected_input(_last(fake))
    r = ant.messages.count_tokens(model="c", messages=MSGS, extra_headers={"x-fake-input-tokens": "77"})
    assert r.input_tokens == 77


# -------------------------------------------------------------------------------- Gemini


def test_gemini_json(fake: FakeProviderThread) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Hello!"}]}]}
    status, _, raw = _http(
        fake.url + "/v1beta/models/gemini-2.5-flash:generateContent", body,
        {"x-goog-api-key": "AIza-test", "x-fake-reasoning-tokens": "4"},
    )
    assert status == 200
    obj = json.loads(raw)
    assert obj["modelVersion"] == "gemini-2.5-flash"
    cand = obj["candidates"][0]
    assert cand["finishReason"] == "STOP"
    assert cand["content"]["role"] == "model"
    assert cand["content"]["parts"][0]["text"] == WORDS8
    um = obj["usageMetadata"]
    rec = _last(fake)
    assert rec.header("x-goog-api-key") == "AIza-test"
    assert um["promptTokenCount"] == _expected_input(rec)
    assert um["candidatesTokenCount"] == 8  # output total 12 = 8 visible + 4 thoughts
    assert um["thoughtsTokenCount"] == 4
    assert um["totalTokenCount"] == um["promptTokenCount"] + 12


def test_gemini_sse(fake: FakeProviderThread) -> None:
    status, headers, raw = _http(
        fake.url + "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "count"}]}]},
        {"x-fake-events": "4", "x-fake-output-tokens": "10"},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert raw.endswith(b"\r\n\r\n")
    blocks = [b for b in raw.split(b"\r\n\r\n") if b]
    assert len(blocks) == 4
    objs = [json.loads(b[len(b"data: "):]) for b in blocks]
    counts = [o["usageMetadata"]["candidatesTokenCount"] for o in objs]
    assert counts == sorted(counts) and counts[-1] == 10
    assert all(o["modelVersion"] == "gemini-2.5-pro" for o in objs)
    assert "finishReason" in objs[-1]["candidates"][0]
    assert all("finishReason" not in o["candidates"][0] for o in objs[:-1])
    text = "".join(o["candidates"][0]["content"]["parts"][0]["text"] for o in objs)
    assert text == "Hello from the fake"
    pt = objs[-1]["usageMetadata"]["promptTokenCount"]
    assert pt == _expected_input(_last(fake))
    assert objs[-1]["usageMetadata"]["totalTokenCount"] == pt + 10
    # without alt=sse: a streamed JSON array
    _, _, raw = _http(fake.url + "/v1beta/models/g:streamGenerateContent", {}, {"x-fake-events": "3"})
    assert len(json.loads(raw)) == 3


def test_gemini_error_shape(fake: FakeProviderThread) -> None:
    status, headers, raw = _http(
        fake.url + "/v1beta/models/g:generateContent", {}, {"x-fake-status": "429"}
    )
    assert status == 429 and "retry-after" in headers
    assert json.loads(raw)["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert json.loads(raw)["error"]["code"] == 429


# ------------------------------------------------------------------------------ controls


def test_status_injection_openai(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as ei:
        oai.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-fake-status": "429"})
    assert ei.value.response.headers["retry-after"] == "1"
    body = ei.value.body
    assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(
            model="m", messages=MSGS, stream=True, extra_headers={"x-fake-status": "500"}
        )
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="m", input="x", extra_headers={"x-fake-status": "400"})


def test_status_injection_anthropic(ant: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as ei:
        ant.messages.create(model="c", max_tokens=5, messages=MSGS, extra_headers={"x-fake-status": "500"})
    assert ei.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "fake provider: injected HTTP 500"},
        "request_id": ei.value.body["request_id"],  # type: ignore[index]
    }
    with pytest.raises(anthropic.RateLimitError):
        ant.messages.create(model="c", max_tokens=5, messages=MSGS, extra_headers={"x-fake-status": "429"})
    with pytest.raises(anthropic.APIStatusError) as ei2:
        with ant.messages.stream(
            model="c", max_tokens=5, messages=MSGS, extra_headers={"x-fake-status": "529"}
        ) as s:
            s.get_final_message()
    assert ei2.value.status_code == 529


def test_reset_after_events(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    got: list[Any] = []
    with pytest.raises(openai.APIConnectionError):  # connection reset mid-stream
        for chunk in oai.chat.completions.create(
            model="m", messages=MSGS, stream=True, extra_headers={"x-fake-reset-after-events": "3"}
        ):
            got.append(chunk)
    assert len(got) == 3  # the first N events arrive, then the connection dies
    events: list[str] = []
    # the anthropic SDK lets the HTTP library's read error through while iterating a stream
    with pytest.raises(Exception) as ei:
        with ant.messages.stream(
            model="c", max_tokens=5, messages=MSGS, extra_headers={"x-fake-reset-after-events": "4"}
        ) as s:
            for ev in s:
                events.append(ev.type)
    assert isinstance(ei.value, anthropic.APIConnectionError) or "ReadError" in type(ei.value).__name__
    assert "reset" in str(ei.value).lower() or isinstance(ei.value, anthropic.APIConnectionError)
    assert events[:2] == ["message_start", "content_block_start"] and "message_stop" not in events
    with pytest.raises(openai.APIConnectionError):  # non-stream: reset with no response
        oai.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-fake-reset-after-events": "0"})
    # the client's pool recovers
    assert oai.chat.completions.create(model="m", messages=MSGS).choices[0].message.content == WORDS8


def test_error_after_events(fake: FakeProviderThread, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    got: list[Any] = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in oai.chat.completions.create(
            model="m", messages=MSGS, stream=True, extra_headers={"x-fake-error-after-events": "2"}
        ):
            got.append(chunk)
    assert len(got) == 2 and "injected mid-stream error" in str(ei.value)
    events: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as ei2:
        with ant.messages.stream(
            model="c", max_tokens=5, messages=MSGS, extra_headers={"x-fake-error-after-events": "3"}
        ) as s:
            for ev in s:
                events.append(ev.type)
    assert events == ["message_start", "content_block_start"]  # ping is not surfaced by the helper
    assert isinstance(ei2.value.body, dict) and ei2.value.body["error"]["type"] == "overloaded_error"
    _, _, raw = _http(fake.url + "/v1/responses", {"model": "m", "stream": True}, {"x-fake-error-after-events": "1"})
    assert raw.endswith(b"\n\n") and raw.count(b"event: ") == 2 and b"event: error" in raw
    _, _, raw = _http(
        fake.url + "/v1beta/models/g:streamGenerateContent?alt=sse", {}, {"x-fake-error-after-events": "1"}
    )
    blocks = [json.loads(b[6:]) for b in raw.split(b"\r\n\r\n") if b]
    assert len(blocks) == 2 and blocks[1]["error"]["status"] == "INTERNAL"


def test_gemini_other_paths(fake: FakeProviderThread) -> None:
    for path, model in (
        ("/v1beta/tunedModels/my-tune:generateContent", "my-tune"),
        ("/v1/projects/p/locations/us/publishers/google/models/gemini-2.0:generateContent", "gemini-2.0"),
        ("/v1/models/gemini-pro:generateContent?key=AIza", "gemini-pro"),
    ):
        status, _, raw = _http(fake.url + path, {})
        assert status == 200 and json.loads(raw)["modelVersion"] == model, path
    status, _, raw = _http(fake.url + "/v1beta/models/g:countTokens", {}, {"x-fake-input-tokens": "9"})
    assert json.loads(raw) == {"totalTokens": 9}


def test_latency_and_interval_pacing(oai: openai.OpenAI) -> None:
    t0 = time.monotonic()
    oai.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-fake-latency-ms": "200"})
    assert time.monotonic() - t0 >= 0.19
    stamps: list[float] = []
    t0 = time.monotonic()
    for chunk in oai.chat.completions.create(
        model="m", messages=MSGS, stream=True,
        extra_headers={"x-fake-events": "5", "x-fake-interval-ms": "100", "x-fake-latency-ms": "50"},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.monotonic())
    assert len(stamps) == 5
    assert stamps[0] - t0 >= 0.045
    assert stamps[-1] - stamps[0] > 0.25  # 4 intervals of 100 ms; first arrives well before the last


def test_bad_control_header(fake: FakeProviderThread) -> None:
    status, _, raw = _http(fake.url + "/v1/chat/completions", {"model": "m"}, {"x-fake-events": "many"})
    assert status == 400 and b"x-fake-events" in raw


# ----------------------------------------------------------------------------- recording


def test_recording_and_peer(fake: FakeProviderThread, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fake.clear()
    raw = oai.chat.completions.with_raw_response.create(model="m", messages=MSGS)
    peer_hdr = raw.headers["x-fake-peer"]
    rid = int(raw.headers["x-fake-request-id"])
    ant.messages.create(model="c", max_tokens=5, messages=MSGS)
    reqs = fake.requests
    assert len(reqs) == 2
    r0, r1 = reqs
    assert r0.method == "POST" and r0.path == "/v1/chat/completions"
    assert r0.header("Authorization") == "Bearer sk-test"
    assert r0.request_id == rid
    assert r0.json()["model"] == "m"
    assert peer_hdr == "%s:%d" % r0.peer
    assert r0.peer[0] == "127.0.0.1"
    assert all(n == n.lower() for n, _ in r0.headers)
    # older anthropic SDKs send x-api-key, newer ones Authorization: Bearer
    assert r1.header("x-api-key") == "sk-ant-test" or r1.header("authorization") == "Bearer sk-ant-test"
    assert r1.header("anthropic-version")
    assert r1.json()["max_tokens"] == 5
    # JSON admin endpoint
    status, _, body = _http(fake.url + "/_fake/requests")
    assert status == 200
    listed = json.loads(body)
    assert [x["path"] for x in listed] == ["/v1/chat/completions", "/v1/messages"]
    assert ["authorization", "Bearer sk-test"] in listed[0]["headers"]
    assert base64.b64decode(listed[0]["body_base64"]) == r0.body
    assert listed[0]["peer"] == [r0.peer[0], r0.peer[1]]
    status, _, _ = _http(fake.url + "/_fake/requests", method="DELETE")
    assert status == 200 and fake.requests == []
    status, _, body = _http(fake.url + "/_fake/health")
    assert status == 200 and fake.requests == []  # admin calls are not recorded


def test_models_and_unknown_path(fake: FakeProviderThread, oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert "gpt-4o-mini" in ids
    status, _, raw = _http(fake.url + "/v1/nothing-here", {"a": 1})
    assert status == 404 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = _http(fake.url + "/v1/chat/completions", b"x" if False else None, method="GET")
    assert status == 405


def _raw_exchange(port: int, payload: bytes, until: bytes, count: int = 1, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        buf = b""
        while buf.count(until) < count:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_chunked_request_body_and_pipelining(fake: FakeProviderThread) -> None:
    fake.clear()
    body = json.dumps({"model": "chunky", "messages": MSGS}).encode()
    half = len(body) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    req1 = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    req2 = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nx-fake-latency-ms: 30\r\n\r\n" % len(body)
        + body
    )
    req3 = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    buf = _raw_exchange(fake.port, req1 + req2 + req3, b"HTTP/1.1 200 OK", 3)
    # wait for the third body too
    assert buf.count(b"HTTP/1.1 200 OK") == 3
    i1, i2, i3 = (buf.find(b"chat.completion"), buf.find(b'"type":"message"'), buf.find(b'"object":"list"'))
    assert 0 < i1 < i2 < i3  # responses in request order
    reqs = fake.requests
    assert [r.path for r in reqs[:2]] == ["/v1/chat/completions", "/v1/messages"]
    assert reqs[0].body == body and reqs[0].json()["model"] == "chunky"
    assert reqs[0].header("transfer-encoding") == "chunked"


def test_stream_bytes_openai(fake: FakeProviderThread) -> None:
    target = 8 * 1024 * 1024
    req = urllib.request.Request(
        fake.url + "/v1/chat/completions",
        data=json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True}}).encode(),
        headers={"content-type": "application/json", "x-fake-stream-bytes": str(target)},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
    assert len(raw) >= target
    data = _sse_data(raw)
    assert data[-1] == b"[DONE]"
    objs = [json.loads(d) for d in data[:-1]]
    text_len = sum(len(o["choices"][0]["delta"].get("content") or "") for o in objs if o["choices"])
    assert text_len >= target
    n_content = sum(1 for o in objs if o["choices"] and o["choices"][0]["delta"].get("content"))
    assert n_content == 128  # 8 MiB / 64 KiB
    assert objs[-1]["usage"]["completion_tokens"] == n_content


def test_stream_bytes_sdks(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    hdr = {"x-fake-stream-bytes": str(1 << 20)}
    with ant.messages.stream(model="c", max_tokens=5, messages=MSGS, extra_headers=hdr) as s:
        msg = s.get_final_message()
    assert msg.content[0].type == "text" and len(msg.content[0].text) >= 1 << 20
    with oai.responses.stream(model="m", input="x", extra_headers=hdr) as rs:
        total = sum(len(e.delta) for e in rs if e.type == "response.output_text.delta")
        final = rs.get_final_response()
    assert total >= 1 << 20 and final.status == "completed"
    r = oai.chat.completions.create(model="m", messages=MSGS, extra_headers=hdr)  # non-stream large body
    assert len(r.choices[0].message.content or "") >= 1 << 20
    assert r.usage is not None and r.usage.completion_tokens == 16


def test_slow_reader_backpressure(fake: FakeProviderThread) -> None:
    """A reader that stops reading must not make the fake buffer the whole stream in memory."""
    body = json.dumps({"model": "m", "stream": True}).encode()
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"x-fake-stream-bytes: %d\r\n\r\n" % (len(body), 256 * 1024 * 1024)
    ) + body
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(req)
        got = 0
        while got < 2 * 1024 * 1024:
            got += len(s.recv(65536))
        time.sleep(0.3)  # stop reading; the fake keeps trying to write
        conns = list(fake.provider._conns)
        buffered = [c.transport.get_write_buffer_size() for c in conns if c.transport is not None]
        assert buffered and max(buffered) < 1024 * 1024
    # server is still healthy afterwards
    assert _http(fake.url + "/_fake/health")[0] == 200


# -------------------------------------------------------------------- asyncio API and CLI


def test_async_api_with_aiohttp() -> None:
    async def run() -> None:
        fp = FakeProvider(events=3, latency_ms=1)
        await fp.start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    fp.url + "/v1/chat/completions", json={"model": "a", "stream": True},
                    headers={"authorization": "Bearer k"},
                ) as resp:
                    assert resp.status == 200
                    raw = await resp.read()
                assert _sse_data(raw)[-1] == b"[DONE]"
                assert len(_sse_data(raw)) == 3 + 3
                # concurrency on keep-alive connections
                async def one(i: int) -> int:
                    async with session.post(fp.url + "/v1/messages", json={"model": "c%d" % i}) as r:
                        return int((await r.json())["usage"]["output_tokens"])

                assert await asyncio.gather(*(one(i) for i in range(50))) == [3] * 50
            assert len(fp.requests) == 51
            assert fp.requests[0].header("authorization") == "Bearer k"
            fp.clear()
            assert fp.requests == []
        finally:
            await fp.stop()

    asyncio.run(run())


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fake_provider", "--host", "127.0.0.1", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its workers can be killed with it (they hold the pipes)
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line
    return proc, int(line.strip().rsplit(":", 1)[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli(workers: str) -> None:
    proc, port = _start_cli("--port", "0", "--events", "2", "--workers", workers)
    try:
        for _ in range(4):
            status, headers, raw = _http("http://127.0.0.1:%d/v1/chat/completions" % port, {"model": "m"})
            assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 2
            assert "x-fake-peer" in headers
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too, or communicate waits on their pipes
            proc.communicate()
            raise
    assert proc.returncode == 0, err


TOOL_HEADERS = {"x-fake-tool-call": "get_weather", "x-fake-tool-args": '{"city":"Paris"}'}


def test_tool_call_answers(fake: FakeProviderThread, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    msgs: Any = [{"role": "user", "content": "x"}]
    reply = oai.chat.completions.create(model="m", messages=msgs, extra_headers=TOOL_HEADERS)
    [call] = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})  # type: ignore[union-attr]
    with oai.chat.completions.stream(model="m", messages=msgs, extra_headers=TOOL_HEADERS,
                                     stream_options={"include_usage": True}) as stream:
        final = stream.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[index]
    assert final.usage is not None and final.usage.completion_tokens > 0
    message = ant.messages.create(model="c", max_tokens=9, messages=msgs, extra_headers=TOOL_HEADERS)
    assert message.stop_reason == "tool_use" and message.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]
    with ant.messages.stream(model="c", max_tokens=9, messages=msgs, extra_headers=TOOL_HEADERS) as astream:
        streamed = astream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    for verb in (":generateContent", ":streamGenerateContent?alt=sse"):
        status, _, raw = _http(fake.url + "/v1beta/models/gemini-2.5-flash" + verb, body, TOOL_HEADERS)
        doc = json.loads(raw[6:] if raw.startswith(b"data: ") else raw)
        assert status == 200
        assert doc["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]
        assert doc["candidates"][0]["finishReason"] == "STOP" and doc["usageMetadata"]["promptTokenCount"] > 0
    status, _, _ = _http(fake.url + "/v1/chat/completions", {"messages": msgs},
                         {**TOOL_HEADERS, "x-fake-tool-args": "[1]"})
    assert status == 400


def test_fixed_text(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    msgs: Any = [{"role": "user", "content": "x"}]
    headers = {"x-fake-text": '{"city": "Paris"}', "x-fake-events": "4"}
    reply = oai.chat.completions.create(model="m", messages=msgs, extra_headers=headers)
    assert reply.choices[0].message.content == '{"city": "Paris"}'
    chunks = list(oai.chat.completions.create(model="m", messages=msgs, stream=True, extra_headers=headers))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 4 and "".join(pieces) == '{"city": "Paris"}'
    with ant.messages.stream(model="c", max_tokens=9, messages=msgs, extra_headers=headers) as stream:
        assert "".join(stream.text_stream) == '{"city": "Paris"}'
