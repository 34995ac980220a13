"""Helpers for the plano_fast.convert tests (no tests here): fixture loading, an
independent SSE reader, stream validators/accumulators per format, and the official SDKs
run over a mock HTTP transport so their own parsers read our converted bytes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import yaml
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter

from plano_fast.convert import StreamConverter

from tests.shared_data import FIXTURES  # noqa: E402
HAVE_FIXTURES = FIXTURES.is_dir()


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


def cassette(name: str) -> list[dict[str, Any]]:
    """The interactions of a pydantic-ai VCR cassette."""
    with open(FIXTURES / "pydantic-ai" / name, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    interactions: list[dict[str, Any]] = doc["interactions"]
    return interactions


def cassette_stream(name: str, i: int = 0) -> bytes:
    body: str = cassette(name)[i]["response"]["body"]["string"]
    return body.encode()


def chunks_file(name: str, done: bool = True) -> bytes:
    """A vercel-ai *.chunks.txt (one JSON per line) re-framed as SSE."""
    lines = (FIXTURES / "vercel-ai" / name).read_text().splitlines()
    out = b"".join(b"data: " + line.encode() + b"\n\n" for line in lines if line.strip())
    return out + (b"data: [DONE]\n\n" if done else b"")


def anthropic_chunks_file(name: str) -> bytes:
    """Anthropic-event *.chunks.txt re-framed with ``event:`` lines."""
    out = b""
    for line in (FIXTURES / "vercel-ai" / name).read_text().splitlines():
        if line.strip():
            etype = json.loads(line)["type"]
            out += f"event: {etype}\ndata: {line}\n\n".encode()
    return out


def raw_fixture(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


# --------------------------------------------------------------------------------------
# conversion drivers
# --------------------------------------------------------------------------------------


def convert_stream(
    source: str,
    target: str,
    data: bytes,
    pieces: list[bytes] | None = None,
    *,
    client_model: str = "client-model",
    include_usage: bool = True,
) -> tuple[bytes, StreamConverter]:
    conv = StreamConverter(source, target, client_model=client_model, include_usage=include_usage, created=1700000000)
    out = b"".join(conv.feed(p) for p in (pieces if pieces is not None else [data]))
    out += conv.finish()
    return out, conv


def split_at(data: bytes, offsets: list[int]) -> list[bytes]:
    bounds = [0, *sorted(offsets), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# --------------------------------------------------------------------------------------
# an independent SSE reader (strict "\n\n" or "\r\n\r\n" framing of OUR output)
# --------------------------------------------------------------------------------------


def sse_events(data: bytes) -> list[tuple[str | None, str]]:
    text = data.decode("utf-8")
    sep = "\r\n\r\n" if "\r\n\r\n" in text else "\n\n"
    assert text == "" or text.endswith(sep), f"stream does not end with a blank line: {text[-80:]!r}"
    events: list[tuple[str | None, str]] = []
    for block in text.split(sep):
        if not block:
            continue
        name: str | None = None
        data_lines: list[str] = []
        for line in block.replace("\r\n", "\n").split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data_lines.append(line[6:])
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        events.append((name, "\n".join(data_lines)))
    return events


# --------------------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------------------

_ANTHROPIC_EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)


def anthropic_events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for name, payload in sse_events(data):
        obj = json.loads(payload)
        assert name == obj["type"], f"event name {name!r} != data type {obj['type']!r}"
        out.append(obj)
    return out


def assert_anthropic_stream_valid(events: list[dict[str, Any]], *, complete: bool = True) -> None:
    """Plano's rules: message_start first (exactly once); each block
    content_block_start(index = 0,1,2...) -> matching deltas -> content_block_stop, one
    block open at a time; message_delta after all blocks closed; message_stop exactly once
    and last; no ping; an error event may only end the stream.  Every event must validate
    as the SDK's RawMessageStreamEvent."""
    assert events, "empty stream"
    if events[0]["type"] == "error":
        assert len(events) == 1
        return
    assert events[0]["type"] == "message_start", events[0]
    open_index: int | None = None
    open_type: str | None = None
    next_index = 0
    saw_delta = saw_stop = False
    delta_for = {"text": "text_delta", "tool_use": "input_json_delta", "thinking": "thinking_delta"}
    for pos, ev in enumerate(events):
        etype = ev["type"]
        assert etype != "ping"
        assert not saw_stop, f"event after message_stop: {ev}"
        if etype == "error":
            assert pos == len(events) - 1, "error must end the stream"
            return
        _ANTHROPIC_EVENT.validate_python(ev)
        if etype == "message_start":
            assert pos == 0, "second message_start"
        elif etype == "content_block_start":
            assert not saw_delta
            assert open_index is None, f"block {open_index} still open at {ev}"
            assert ev["index"] == next_index, f"index {ev['index']} != {next_index}"
            open_index, open_type = ev["index"], ev["content_block"]["type"]
            next_index += 1
        elif etype == "content_block_delta":
            assert ev["index"] == open_index, f"delta for index {ev['index']}, open {open_index}"
            assert ev["delta"]["type"] == delta_for[open_type or ""], ev
        elif etype == "content_block_stop":
            assert ev["index"] == open_index
            open_index = open_type = None
        elif etype == "message_delta":
            assert open_index is None, "message_delta with an open block"
            assert not saw_delta, "second message_delta"
            saw_delta = True
        elif etype == "message_stop":
            assert saw_delta, "message_stop without message_delta"
            saw_stop = True
        else:
            raise AssertionError(f"unknown event {etype}")
    if complete:
        assert saw_stop, "no message_stop"


def anthropic_accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Our own accumulation: blocks, stop_reason, usage."""
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    msg: dict[str, Any] = {"blocks": blocks, "stop_reason": None, "usage": {}, "error": None}
    for ev in events:
        t = ev["type"]
        if t == "message_start":
            msg["id"] = ev["message"]["id"]
            msg["model"] = ev["message"]["model"]
            msg["usage"].update(ev["message"]["usage"])
        elif t == "content_block_start":
            blocks.append(dict(ev["content_block"]))
        elif t == "content_block_delta":
            d = ev["delta"]
            b = blocks[ev["index"]]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                b["thinking"] += d["thinking"]
            elif d["type"] == "input_json_delta":
                partial[ev["index"]] = partial.get(ev["index"], "") + d["partial_json"]
        elif t == "message_delta":
            msg["stop_reason"] = ev["delta"]["stop_reason"]
            msg["usage"].update(ev["usage"])
        elif t == "error":
            msg["error"] = ev["error"]
    for idx, js in partial.items():
        blocks[idx]["input"] = json.loads(js) if js else {}
    return msg


# --------------------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------------------


def openai_chunks(data: bytes) -> tuple[list[dict[str, Any]], bool]:
    """(chunks, saw [DONE])"""
    chunks: list[dict[str, Any]] = []
    done = False
    for name, payload in sse_events(data):
        assert name is None
        assert not done, "data after [DONE]"
        if payload == "[DONE]":
            done = True
            continue
        chunks.append(json.loads(payload))
    return chunks, done


def assert_openai_stream_valid(chunks: list[dict[str, Any]], done: bool, *, complete: bool = True) -> None:
    """Role chunk first; one id/model throughout; tool call indices 0.. with id+name on the
    first delta of each; exactly one finish_reason; after it only the usage chunk; [DONE]
    last (unless an error chunk ended the stream).  Every chunk validates as the SDK's
    ChatCompletionChunk."""
    if chunks and "error" in chunks[-1]:
        assert not done
        chunks = chunks[:-1]
    elif complete:
        assert done, "no [DONE]"
    if not chunks:
        return
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    ids = {c["id"] for c in chunks}
    models = {c["model"] for c in chunks}
    assert len(ids) == 1 and len(models) == 1, (ids, models)
    seen_calls: set[int] = set()
    finished = False
    for c in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(c)
        assert c["object"] == "chat.completion.chunk"
        if not c["choices"]:
            assert "usage" in c and finished, "usage chunk before the finish chunk"
            continue
        assert not finished, "content after the finish chunk"
        choice = c["choices"][0]
        for call in choice["delta"].get("tool_calls") or []:
            if call["index"] not in seen_calls:
                assert call["index"] == len(seen_calls), "tool call indices must be 0,1,2..."
                assert call.get("id") and call["function"].get("name") is not None
                seen_calls.add(call["index"])
            else:
                assert "id" not in call
        if choice["finish_reason"] is not None:
            finished = True
    if complete:
        assert finished, "no finish_reason"


def openai_accumulate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"content": "", "reasoning": "", "tool_calls": {}, "finish_reason": None, "usage": None, "error": None}
    for c in chunks:
        if "error" in c:
            out["error"] = c["error"]
            continue
        out["id"], out["model"] = c["id"], c["model"]
        if c.get("usage"):
            out["usage"] = c["usage"]
        for ch in c["choices"]:
            d = ch["delta"]
            out["content"] += d.get("content") or ""
            out["reasoning"] += d.get("reasoning_content") or ""
            for call in d.get("tool_calls") or []:
                slot = out["tool_calls"].setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                if call.get("id"):
                    slot["id"] = call["id"]
                if call["function"].get("name"):
                    slot["name"] = call["function"]["name"]
                slot["arguments"] += call["function"].get("arguments") or ""
            if ch["finish_reason"]:
                out["finish_reason"] = ch["finish_reason"]
    return out


# --------------------------------------------------------------------------------------
# Gemini
# --------------------------------------------------------------------------------------


def gemini_events(data: bytes) -> list[dict[str, Any]]:
    text = data.decode()
    assert "\n\n" not in text.replace("\r\n\r\n", ""), "Gemini events are \\r\\n\\r\\n separated"
    out = []
    for name, payload in sse_events(data):
        assert name is None
        out.append(json.loads(payload))
    return out


def assert_gemini_stream_valid(events: list[dict[str, Any]], *, complete: bool = True) -> None:
    if events and "error" in events[-1]:
        events = events[:-1]
    rid = {e["responseId"] for e in events}
    assert len(rid) <= 1
    for pos, e in enumerate(events):
        cand = e["candidates"][0]
        assert cand["content"]["role"] == "model"
        if "finishReason" in cand:
            assert pos == len(events) - 1, "finishReason before the last event"
    if complete:
        assert events and "finishReason" in events[-1]["candidates"][0]


def gemini_accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"text": "", "thoughts": "", "calls": [], "finish": None, "usage": None, "error": None}
    for e in events:
        if "error" in e:
            out["error"] = e["error"]
            continue
        cand = e["candidates"][0]
        for p in cand["content"]["parts"]:
            if "text" in p:
                out["thoughts" if p.get("thought") else "text"] += p["text"]
            elif "functionCall" in p:
                out["calls"].append(p["functionCall"])
        out["finish"] = cand.get("finishReason", out["finish"])
        out["usage"] = e.get("usageMetadata", out["usage"])
    return out


# --------------------------------------------------------------------------------------
# the official SDKs over a mock transport
# --------------------------------------------------------------------------------------


def _transport(body: bytes, content_type: str, status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.MockTransport(handler)


def anthropic_client(body: bytes, content_type: str = "text/event-stream", status: int = 200) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="test", base_url="http://sdk.test", max_retries=0,
        http_client=httpx.Client(transport=_transport(body, content_type, status)),
    )


def openai_client(body: bytes, content_type: str = "text/event-stream", status: int = 200) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="test", base_url="http://sdk.test/v1", max_retries=0,
        http_client=httpx.Client(transport=_transport(body, content_type, status)),
    )


def sdk_anthropic_stream(data: bytes) -> anthropic.types.Message:
    """Run the Anthropic SDK's MessageStream over converted bytes; the final Message."""
    client = anthropic_client(data)
    with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


def sdk_openai_stream(data: bytes) -> list[openai.types.chat.ChatCompletionChunk]:
    client = openai_client(data)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    return list(stream)


def sdk_openai_final(data: bytes) -> openai.types.chat.ChatCompletion:
    """The SDK's stream helper accumulating converted chunks into a ChatCompletion."""
    client = openai_client(data)
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as stream:
        for _ in stream:
            pass
        return stream.get_final_completion()


def sdk_anthropic_message(body: dict[str, Any]) -> anthropic.types.Message:
    client = anthropic_client(json.dumps(body).encode(), "application/json")
    return client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}])


def sdk_openai_completion(body: dict[str, Any]) -> openai.types.chat.ChatCompletion:
    client = openai_client(json.dumps(body).encode(), "application/json")
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def every_split(data: bytes, step: int = 1) -> Iterator[list[bytes]]:
    for k in range(0, len(data) + 1, step):
        yield [data[:k], data[k:]]


Check = Callable[[bytes], None]


# --------------------------------------------------------------------------------------
# request bodies against the SDKs' own parameter types (deep: pydantic validates the
# SDKs' Iterable[...] fields lazily, so every iterator is consumed)
# --------------------------------------------------------------------------------------

_ANTHROPIC_PARAMS = (TypeAdapter(MessageCreateParamsNonStreaming), TypeAdapter(MessageCreateParamsStreaming))
_OPENAI_PARAMS = (TypeAdapter(CompletionCreateParamsNonStreaming), TypeAdapter(CompletionCreateParamsStreaming))


def _consume(value: Any) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _consume(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _consume(v)
    elif isinstance(value, Iterator):
        for v in value:
            _consume(v)


def validate_anthropic_request(body: dict[str, Any]) -> None:
    _consume(_ANTHROPIC_PARAMS[bool(body.get("stream"))].validate_python(body))


def validate_openai_request(body: dict[str, Any]) -> None:
    _consume(_OPENAI_PARAMS[bool(body.get("stream"))].validate_python(body))
