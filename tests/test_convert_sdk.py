"""The official SDKs accept what the converters produce: request bodies validate against
the SDKs' parameter types, non-streamed bodies parse through ``client...create()``, and
converted streams run through the SDKs' own stream parsers and accumulators.  Cases: plain
text, a tool call, parallel tool calls, images (requests), thinking."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plano_fast.convert import convert_request, convert_response
from tests.test_convert_support import (
    convert_stream,
    sdk_anthropic_message,
    sdk_anthropic_stream,
    sdk_openai_completion,
    sdk_openai_final,
    sdk_openai_stream,
    validate_anthropic_request,
    validate_openai_request,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

# ---- requests in each source format: text / tools / parallel tools / images -----------

OPENAI_REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"model": "gpt", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
             "max_tokens": 50, "temperature": 0.5, "stop": ["x"], "stream": True},
    "tools": {"model": "gpt", "messages": [
        {"role": "user", "content": "search"},
        {"role": "assistant", "content": "ok", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "s", "arguments": '{"q":"a"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "found"}],
        "tools": [{"type": "function", "function": {"name": "s", "description": "search", "parameters": SCHEMA}}],
        "tool_choice": {"type": "function", "function": {"name": "s"}}},
    "parallel": {"model": "gpt", "messages": [
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "s", "arguments": '{"q":"a"}'}},
            {"id": "c2", "type": "function", "function": {"name": "s", "arguments": '{"q":"b"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "A"},
        {"role": "tool", "tool_call_id": "c2", "content": "B"}],
        "tools": [{"type": "function", "function": {"name": "s", "parameters": SCHEMA}}], "parallel_tool_calls": True},
    "images": {"model": "gpt", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
    "thinking": {"model": "gpt", "messages": [{"role": "user", "content": "think"}], "reasoning_effort": "high"},
}

ANTHROPIC_REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"model": "c", "max_tokens": 50, "system": "S", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
    "tools": {"model": "c", "max_tokens": 50, "messages": [
        {"role": "user", "content": "search"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {"type": "tool_use", "id": "t1", "name": "s", "input": {"q": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found"}]}],
        "tools": [{"name": "s", "description": "search", "input_schema": SCHEMA}], "tool_choice": {"type": "any"}},
    "parallel": {"model": "c", "max_tokens": 50, "messages": [
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "s", "input": {"q": "a"}},
                                          {"type": "tool_use", "id": "t2", "name": "s", "input": {"q": "b"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "A"},
                                     {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "B"}]}]}],
        "tools": [{"name": "s", "input_schema": SCHEMA}]},
    "images": {"model": "c", "max_tokens": 50, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]},
    "thinking": {"model": "c", "max_tokens": 20000, "messages": [{"role": "user", "content": "think"}],
                 "thinking": {"type": "enabled", "budget_tokens": 10000}},
}

GEMINI_REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"systemInstruction": {"parts": [{"text": "S"}]}, "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
             "generationConfig": {"maxOutputTokens": 50}},
    "tools": {"contents": [
        {"role": "user", "parts": [{"text": "search"}]},
        {"role": "model", "parts": [{"text": "ok"}, {"functionCall": {"name": "s", "args": {"q": "a"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "s", "response": {"result": "found"}}}]}],
        "tools": [{"functionDeclarations": [{"name": "s", "description": "search", "parameters": {"type": "OBJECT", "properties": {"q": {"type": "STRING"}}}}]}]},
    "parallel": {"contents": [
        {"role": "user", "parts": [{"text": "two"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "s", "args": {"q": "a"}}}, {"functionCall": {"name": "s", "args": {"q": "b"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "s", "response": {"result": "A"}}},
                                   {"functionResponse": {"name": "s", "response": {"result": "B"}}}]}],
        "tools": [{"functionDeclarations": [{"name": "s", "parametersJsonSchema": SCHEMA}]}]},
    "images": {"contents": [{"role": "user", "parts": [
        {"text": "what is this"}, {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a.png"}}]}]},
    "thinking": {"contents": [{"role": "user", "parts": [{"text": "think"}]}],
                 "generationConfig": {"thinkingConfig": {"thinkingBudget": 10000}}},
}

REQUESTS = {"openai": OPENAI_REQUESTS, "anthropic": ANTHROPIC_REQUESTS, "gemini": GEMINI_REQUESTS}
CASES = list(OPENAI_REQUESTS)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("source", ["anthropic", "gemini"])
def test_converted_openai_requests_match_sdk_params(source: str, case: str) -> None:
    out = convert_request(REQUESTS[source][case], source, "openai", target_model="gpt-4o", stream=case == "text" or None)
    validate_openai_request(out)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("source", ["openai", "gemini"])
def test_converted_anthropic_requests_match_sdk_params(source: str, case: str) -> None:
    out = convert_request(REQUESTS[source][case], source, "anthropic", target_model="claude", stream=case == "text" or None)
    validate_anthropic_request(out)


def test_parallel_ids_pair_up_in_every_conversion() -> None:
    for source in REQUESTS:
        for target in ("openai", "anthropic", "gemini"):
            if target == source:
                continue
            out = json.dumps(convert_request(REQUESTS[source]["parallel"], source, target, target_model="m"))
            ids = {"openai": ("c1", "c2"), "anthropic": ("t1", "t2")}.get(source)
            if ids:  # the source's ids are kept
                assert all(out.count(f'"{i}"') == 2 for i in ids), out


# ---- responses ------------------------------------------------------------------------

UPSTREAM_RESPONSES: dict[str, dict[str, dict[str, Any]]] = {
    "openai": {
        "text": {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
        "tools": {"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c1", "type": "function", "function": {"name": "s", "arguments": '{"q":"a"}'}},
                      {"id": "c2", "type": "function", "function": {"name": "s", "arguments": '{"q":"b"}'}}]},
                      "finish_reason": "tool_calls"}],
                  "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}},
    },
    "anthropic": {
        "text": {"id": "msg_1", "type": "message", "role": "assistant", "model": "c", "content": [{"type": "text", "text": "Hello"}],
                 "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}},
        "tools": {"id": "msg_2", "type": "message", "role": "assistant", "model": "c", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "tool_use", "id": "t1", "name": "s", "input": {"q": "a"}},
            {"type": "tool_use", "id": "t2", "name": "s", "input": {"q": "b"}}],
            "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 9}},
    },
    "gemini": {
        "text": {"candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "finishReason": "STOP"}],
                 "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1}, "responseId": "r1"},
        "tools": {"candidates": [{"content": {"parts": [{"functionCall": {"name": "s", "args": {"q": "a"}}},
                                                        {"functionCall": {"name": "s", "args": {"q": "b"}}}], "role": "model"},
                                  "finishReason": "STOP"}],
                  "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9}, "responseId": "r2"},
    },
}


@pytest.mark.parametrize("case", ["text", "tools"])
@pytest.mark.parametrize("source", ["openai", "gemini"])
def test_anthropic_sdk_parses_converted_responses(source: str, case: str) -> None:
    msg = sdk_anthropic_message(convert_response(UPSTREAM_RESPONSES[source][case], source, "anthropic", client_model="claude-x"))
    assert msg.model == ("gpt" if source == "openai" else "claude-x")  # served; Gemini's names none
    if case == "text":
        assert msg.content[0].text == "Hello" and msg.stop_reason == "end_turn"  # type: ignore[union-attr]
    else:
        assert [b.input for b in msg.content] == [{"q": "a"}, {"q": "b"}]  # type: ignore[union-attr]
        assert msg.stop_reason == "tool_use"


@pytest.mark.parametrize("case", ["text", "tools"])
@pytest.mark.parametrize("source", ["anthropic", "gemini"])
def test_openai_sdk_parses_converted_responses(source: str, case: str) -> None:
    comp = sdk_openai_completion(convert_response(UPSTREAM_RESPONSES[source][case], source, "openai", client_model="gpt-x"))
    assert comp.model == ("c" if source == "anthropic" else "gpt-x")  # served; Gemini's names none
    choice = comp.choices[0]
    if case == "text":
        assert choice.message.content == "Hello" and choice.finish_reason == "stop"
    else:
        calls = choice.message.tool_calls or []
        assert [json.loads(c.function.arguments) for c in calls] == [{"q": "a"}, {"q": "b"}]  # type: ignore[union-attr]
        assert choice.finish_reason == "tool_calls"


# ---- streams --------------------------------------------------------------------------


def openai_sse(*chunks: dict[str, Any]) -> bytes:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "gpt"}
    return b"".join(b"data: " + json.dumps({**base, **c}).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


OPENAI_STREAMS = {
    "text": openai_sse(delta({"role": "assistant", "content": ""}), delta({"content": "Hel"}), delta({"content": "lo"}),
                       delta({}, "stop"), {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}),
    "parallel": openai_sse(
        delta({"role": "assistant", "reasoning_content": "plan"}),
        delta({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "s", "arguments": '{"q":'}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '"a"}'}}]}),
        delta({"tool_calls": [{"index": 1, "id": "c2", "type": "function", "function": {"name": "s", "arguments": '{"q":"b"}'}}]}),
        delta({}, "tool_calls"), {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}),
}


@pytest.mark.parametrize("case", ["text", "parallel"])
def test_anthropic_sdk_stream_parser_on_converted_openai_stream(case: str) -> None:
    out, _ = convert_stream("openai", "anthropic", OPENAI_STREAMS[case])
    msg = sdk_anthropic_stream(out)
    assert msg.usage.input_tokens == 5
    if case == "text":
        assert msg.content[0].text == "Hello" and msg.stop_reason == "end_turn"  # type: ignore[union-attr]
    else:
        assert [b.type for b in msg.content] == ["thinking", "tool_use", "tool_use"]
        assert [b.input for b in msg.content[1:]] == [{"q": "a"}, {"q": "b"}]  # type: ignore[union-attr]
        assert [b.id for b in msg.content[1:]] == ["c1", "c2"]  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["text", "parallel"])
def test_openai_sdk_stream_parser_on_round_tripped_stream(case: str) -> None:
    """openai -> anthropic -> openai: the SDK's accumulator sees the same completion."""
    ant, _ = convert_stream("openai", "anthropic", OPENAI_STREAMS[case])
    back, _ = convert_stream("anthropic", "openai", ant)
    chunks = sdk_openai_stream(back)
    assert chunks[0].choices[0].delta.role == "assistant"
    final = sdk_openai_final(back)
    original = sdk_openai_final(OPENAI_STREAMS[case])
    assert final.choices[0].message.content == original.choices[0].message.content
    assert final.choices[0].finish_reason == original.choices[0].finish_reason
    got = [(c.id, c.function.arguments) for c in final.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    want = [(c.id, c.function.arguments) for c in original.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    assert [(i, json.loads(a)) for i, a in got] == [(i, json.loads(a)) for i, a in want]
    assert final.usage is not None and original.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (original.usage.prompt_tokens, original.usage.completion_tokens)


def test_sdk_streams_from_gemini() -> None:
    data = (b'data: {"candidates":[{"content":{"parts":[{"text":"Hi "}],"role":"model"}}],"responseId":"g1"}\r\n\r\n'
            b'data: {"candidates":[{"content":{"parts":[{"functionCall":{"name":"s","args":{"q":"a"}}}],"role":"model"},'
            b'"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4},"responseId":"g1"}\r\n\r\n')
    msg = sdk_anthropic_stream(convert_stream("gemini", "anthropic", data)[0])
    assert msg.content[0].text == "Hi " and msg.content[1].input == {"q": "a"}  # type: ignore[union-attr]
    assert msg.stop_reason == "tool_use" and msg.usage.output_tokens == 4
    comp = sdk_openai_final(convert_stream("gemini", "openai", data)[0])
    assert comp.choices[0].message.content == "Hi " and comp.choices[0].finish_reason == "tool_calls"
