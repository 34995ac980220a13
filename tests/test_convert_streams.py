"""StreamConverter: event order invariants, holding/synthesis rules, errors, truncation,
framing (arbitrary splits, line endings, bounded buffer) for every format pair."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plano_fast.convert import ConversionError, StreamConverter
from tests.test_convert_support import (
    HAVE_FIXTURES,
    anthropic_accumulate,
    anthropic_events,
    assert_anthropic_stream_valid,
    assert_gemini_stream_valid,
    assert_openai_stream_valid,
    cassette_stream,
    convert_stream,
    every_split,
    gemini_accumulate,
    gemini_events,
    openai_accumulate,
    openai_chunks,
    raw_fixture,
    sdk_anthropic_stream,
    sdk_openai_final,
    sdk_openai_stream,
    split_at,
)

needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason="shared fixtures not present")

# --------------------------------------------------------------------------------------
# synthetic upstream streams
# --------------------------------------------------------------------------------------


def oai(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
        choices: bool = True) -> bytes:
    chunk: dict[str, Any] = {"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    chunk["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
         "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 5}}
DONE = b"data: [DONE]\n\n"


def call(index: int, cid: str | None = None, name: str | None = None, args: str = "") -> dict[str, Any]:
    tc: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if cid:
        tc["id"], tc["type"] = cid, "function"
        tc["function"]["name"] = name
    return tc


OPENAI_MIXED = b"".join([
    oai({"role": "assistant", "content": ""}),
    oai({"content": "Let me "}),
    oai({"content": "check."}),
    oai({"tool_calls": [call(0, "call_a", "get_weather", "")]}),
    oai({"tool_calls": [call(0, args='{"city":')]}),
    oai({"tool_calls": [call(0, args='"Paris"}')]}),
    oai({"tool_calls": [call(1, "call_b", "get_time", '{"tz":"CET"}')]}),
    oai({}, "tool_calls"),
    oai(usage=USAGE, choices=False),
    DONE,
])


def ant(etype: str, **fields: Any) -> bytes:
    return f"event: {etype}\ndata: ".encode() + json.dumps({"type": etype, **fields}).encode() + b"\n\n"


ANTHROPIC_THINKING_TOOLS = b"".join([
    ant("message_start", message={"id": "msg_01XYZ", "type": "message", "role": "assistant", "model": "claude-x",
                                  "content": [], "stop_reason": None, "stop_sequence": None,
                                  "usage": {"input_tokens": 10, "cache_read_input_tokens": 90,
                                            "cache_creation_input_tokens": 0, "output_tokens": 1}}),
    ant("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""}),
    ant("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Hmm."}),
    ant("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "sig"}),
    ant("content_block_stop", index=0),
    ant("ping"),
    ant("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    ant("content_block_delta", index=1, delta={"type": "text_delta", "text": "Checking both."}),
    ant("content_block_stop", index=1),
    ant("content_block_start", index=2, content_block={"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}}),
    ant("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": ""}),
    ant("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"x": 1'}),
    ant("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": "}"}),
    ant("content_block_stop", index=2),
    ant("content_block_start", index=3, content_block={"type": "tool_use", "id": "toolu_2", "name": "b", "input": {}}),
    ant("content_block_delta", index=3, delta={"type": "input_json_delta", "partial_json": '{"y": "z"}'}),
    ant("content_block_stop", index=3),
    ant("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 42}),
    ant("message_stop"),
])


def gem(parts: list[dict[str, Any]] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    cand: dict[str, Any] = {"content": {"parts": parts or [], "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    doc: dict[str, Any] = {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "resp123"}
    if usage:
        doc["usageMetadata"] = usage
    return b"data: " + json.dumps(doc).encode() + b"\r\n\r\n"


GEMINI_USAGE = {"promptTokenCount": 50, "candidatesTokenCount": 10, "thoughtsTokenCount": 7,
                "cachedContentTokenCount": 20, "totalTokenCount": 67}
GEMINI_STREAM = b"".join([
    gem([{"text": "thinking...", "thought": True}], usage={"promptTokenCount": 50, "totalTokenCount": 50}),
    gem([{"text": "Hello "}], usage={"promptTokenCount": 50, "candidatesTokenCount": 2, "totalTokenCount": 52}),
    gem([{"text": "world"}, {"functionCall": {"name": "lookup", "args": {"q": "x"}}},
         {"functionCall": {"name": "lookup", "args": {"q": "y"}}}], "STOP", GEMINI_USAGE),
])


# --------------------------------------------------------------------------------------
# OpenAI -> Anthropic
# --------------------------------------------------------------------------------------


def test_openai_to_anthropic_text_then_parallel_tools() -> None:
    out, conv = convert_stream("openai", "anthropic", OPENAI_MIXED)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events)
    msg = anthropic_accumulate(events)
    assert [b["type"] for b in msg["blocks"]] == ["text", "tool_use", "tool_use"]
    assert msg["blocks"][0]["text"] == "Let me check."
    assert msg["blocks"][1] | {} == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}}
    assert msg["blocks"][2]["id"] == "call_b" and msg["blocks"][2]["input"] == {"tz": "CET"}
    assert msg["stop_reason"] == "tool_use"
    assert msg["id"] == "msg_abc123" and msg["model"] == "gpt-4o"  # served, not the client's name
    assert msg["usage"] == {"input_tokens": 60, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 40, "output_tokens": 20}
    assert conv.usage == {"input_tokens": 100, "output_tokens": 20, "cache_read_tokens": 40,
                          "cache_write_tokens": 0, "reasoning_tokens": 5, "has_usage": True,
                          "wire_format": "openai"}
    assert not conv.truncated and not conv.errored
    final = sdk_anthropic_stream(out)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert final.usage.output_tokens == 20 and final.stop_reason == "tool_use"


def test_openai_to_anthropic_holds_message_delta_until_usage_chunk() -> None:
    conv = StreamConverter("openai", "anthropic", client_model="c")
    conv.feed(oai({"role": "assistant", "content": "Hi"}))
    held = conv.feed(oai({}, "stop"))
    assert b"content_block_stop" in held and b"message_delta" not in held
    released = conv.feed(oai(usage=USAGE, choices=False))
    names = [e["type"] for e in anthropic_events(released)]
    assert names == ["message_delta", "message_stop"]
    assert json.loads(released.split(b"data: ")[1].split(b"\n")[0])["usage"]["output_tokens"] == 20
    assert conv.feed(DONE) == b""
    assert conv.finish() == b""


def test_openai_usage_on_finish_chunk_is_released_at_once() -> None:
    conv = StreamConverter("openai", "anthropic", client_model="c")
    conv.feed(oai({"content": "Hi"}))
    out = conv.feed(oai({}, "stop", usage=USAGE))
    assert [e["type"] for e in anthropic_events(out)] == ["content_block_stop", "message_delta", "message_stop"]


def test_openai_finish_without_usage_released_by_done_or_eof() -> None:
    for tail in (DONE, b""):
        out, conv = convert_stream("openai", "anthropic", oai({"content": "Hi"}) + oai({}, "length") + tail)
        events = anthropic_events(out)
        assert_anthropic_stream_valid(events)
        assert anthropic_accumulate(events)["stop_reason"] == "max_tokens"
        assert not conv.truncated
        assert conv.usage["has_usage"] is False


def test_only_done_synthesizes_minimal_envelope() -> None:
    out, conv = convert_stream("openai", "anthropic", DONE)
    events = anthropic_events(out)
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert_anthropic_stream_valid(events)
    assert events[1]["delta"]["stop_reason"] == "end_turn"
    assert not conv.truncated
    sdk_anthropic_stream(out)


def test_done_without_finish_reason_ends_turn() -> None:
    out, _ = convert_stream("openai", "anthropic", oai({"content": "partial"}) + DONE)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events)
    assert anthropic_accumulate(events)["stop_reason"] == "end_turn"


def test_truncated_upstream_is_not_completed() -> None:
    data = oai({"content": "Hello"}) + oai({"tool_calls": [call(0, "c1", "f", '{"a"')]})
    out, conv = convert_stream("openai", "anthropic", data)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events, complete=False)
    assert all(e["type"] not in ("message_delta", "message_stop") for e in events)
    assert conv.truncated and not conv.errored and not conv.completed
    err = anthropic_events(conv.error_event("upstream connection lost"))
    assert err == [{"type": "error", "error": {"type": "api_error", "message": "upstream connection lost"}}]
    assert conv.error_event("again") == b""
    # and the same for OpenAI clients: no finish chunk, no [DONE]
    out, conv = convert_stream("anthropic", "openai", ANTHROPIC_THINKING_TOOLS[:900])
    chunks, done = openai_chunks(out)
    assert not done and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert conv.truncated


def test_stream_cut_mid_event_at_eof() -> None:
    data = oai({"content": "Hi"}) + oai({}, "stop") + b'data: {"id":"chatcmpl-abc123","choi'
    out, conv = convert_stream("openai", "anthropic", data)
    assert_anthropic_stream_valid(anthropic_events(out))
    assert not conv.truncated  # the finish was seen before the cut


def test_nothing_after_message_stop() -> None:
    data = oai({"content": "a"}) + oai({}, "stop", usage=USAGE) + oai({"content": "late"}) + DONE + oai({"content": "later"})
    out, _ = convert_stream("openai", "anthropic", data)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events)
    assert events[-1]["type"] == "message_stop"
    assert b"late" not in out


def test_openrouter_style_duplicate_finish_and_comments() -> None:
    data = (b": OPENROUTER PROCESSING\n\n" * 3 + oai({"content": "x"}) + oai({}, "length") + oai({}, "length")
            + oai(usage=USAGE, choices=False) + DONE)
    out, _ = convert_stream("openai", "anthropic", data)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events)
    assert sum(e["type"] == "message_delta" for e in events) == 1


def test_openai_reasoning_becomes_thinking_block() -> None:
    data = (oai({"role": "assistant", "reasoning_content": "think "}) + oai({"reasoning_content": "more"})
            + oai({"content": "answer"}) + oai({}, "stop", usage=USAGE) + DONE)
    out, _ = convert_stream("openai", "anthropic", data)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events)
    msg = anthropic_accumulate(events)
    assert msg["blocks"] == [{"type": "thinking", "thinking": "think more", "signature": ""},
                             {"type": "text", "text": "answer"}]
    final = sdk_anthropic_stream(out)
    assert final.content[0].type == "thinking"


def test_tool_calls_without_index_mistral() -> None:
    mistral = oai({"tool_calls": [{"id": "m1", "function": {"name": "f", "arguments": '{"a": 1}'}},
                                  {"id": "m2", "function": {"name": "g", "arguments": "{}"}}]}, "tool_calls", usage=USAGE)
    out, _ = convert_stream("openai", "anthropic", mistral)
    msg = anthropic_accumulate(anthropic_events(out))
    assert [(b["id"], b.get("input")) for b in msg["blocks"]] == [("m1", {"a": 1}), ("m2", {})]
    out, _ = convert_stream("openai", "openai", mistral)
    assert out == mistral  # same format: pass-through


def test_interleaved_argument_fragments_keep_each_call_whole() -> None:
    # no known provider interleaves parallel calls' fragments; if one does, each fragment
    # still goes to its call's block index (SDKs accumulate by index)
    data = (oai({"tool_calls": [call(0, "c0", "f", '{"a":')]}) + oai({"tool_calls": [call(1, "c1", "g", '{"b":')]})
            + oai({"tool_calls": [call(0, args="1}")]}) + oai({"tool_calls": [call(1, args="2}")]})
            + oai({}, "tool_calls", usage=USAGE) + DONE)
    out, _ = convert_stream("openai", "anthropic", data)
    final = sdk_anthropic_stream(out)
    assert [b.input for b in final.content] == [{"a": 1}, {"b": 2}]  # type: ignore[union-attr]


def test_openai_mid_stream_error_to_anthropic() -> None:
    data = oai({"content": "x"}) + b'data: {"error":{"message":"boom","type":"server_error","code":null}}\n\n' + DONE
    out, conv = convert_stream("openai", "anthropic", data)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events, complete=False)
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    assert conv.errored and not conv.truncated
    with pytest.raises(anthropic.APIStatusError):
        sdk_anthropic_stream(out)


def test_anthropic_mid_stream_error_to_openai() -> None:
    data = ANTHROPIC_THINKING_TOOLS[: ANTHROPIC_THINKING_TOOLS.index(b"event: ping")] + ant("error", error={"type": "overloaded_error", "message": "Overloaded"})
    out, conv = convert_stream("anthropic", "openai", data)
    chunks, done = openai_chunks(out)
    assert not done
    assert chunks[-1] == {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}}
    assert_openai_stream_valid(chunks, done, complete=False)
    assert conv.errored
    with pytest.raises(openai.APIError):
        sdk_openai_stream(out)


def test_gemini_mid_stream_error() -> None:
    data = gem([{"text": "a"}]) + b'data: {"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}\r\n\r\n'
    out, conv = convert_stream("gemini", "anthropic", data)
    assert anthropic_events(out)[-1]["error"] == {"type": "overloaded_error", "message": "overloaded"}
    out, conv = convert_stream("gemini", "openai", data)
    chunks, _ = openai_chunks(out)
    assert chunks[-1]["error"]["code"] == "UNAVAILABLE" and conv.errored
    out, conv = convert_stream("openai", "gemini", oai({"content": "a"}) + b'data: {"error":{"message":"slow","type":"rate_limit_exceeded"}}\n\n')
    assert gemini_events(out)[-1] == {"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}}


# --------------------------------------------------------------------------------------
# Anthropic -> OpenAI
# --------------------------------------------------------------------------------------


def test_anthropic_to_openai_thinking_text_parallel_tools() -> None:
    out, conv = convert_stream("anthropic", "openai", ANTHROPIC_THINKING_TOOLS)
    chunks, done = openai_chunks(out)
    assert_openai_stream_valid(chunks, done)
    acc = openai_accumulate(chunks)
    assert acc["reasoning"] == "Hmm." and acc["content"] == "Checking both."
    assert acc["tool_calls"] == {0: {"id": "toolu_1", "name": "a", "arguments": '{"x": 1}'},
                                 1: {"id": "toolu_2", "name": "b", "arguments": '{"y": "z"}'}}
    assert acc["finish_reason"] == "tool_calls" and acc["id"] == "chatcmpl-01XYZ"
    assert acc["usage"] == {"prompt_tokens": 100, "completion_tokens": 42, "total_tokens": 142,
                            "prompt_tokens_details": {"cached_tokens": 90},
                            "completion_tokens_details": {"reasoning_tokens": 0}}
    assert conv.usage == {"input_tokens": 10, "output_tokens": 42, "cache_read_tokens": 90, "cache_write_tokens": 0,
                          "reasoning_tokens": 0, "has_usage": True, "wire_format": "anthropic"}
    assert b"ping" not in out
    final = sdk_openai_final(out)
    calls = final.choices[0].message.tool_calls or []
    assert [c.id for c in calls] == ["toolu_1", "toolu_2"]
    assert final.usage is not None and final.usage.prompt_tokens == 100


def test_anthropic_to_openai_without_include_usage() -> None:
    out, _ = convert_stream("anthropic", "openai", ANTHROPIC_THINKING_TOOLS, include_usage=False)
    chunks, done = openai_chunks(out)
    assert done and all(c["choices"] for c in chunks)


def test_anthropic_cut_after_message_delta_still_completes() -> None:
    data = ANTHROPIC_THINKING_TOOLS[: ANTHROPIC_THINKING_TOOLS.index(b"event: message_stop")]
    out, conv = convert_stream("anthropic", "openai", data)
    chunks, done = openai_chunks(out)
    assert_openai_stream_valid(chunks, done)
    assert not conv.truncated


# --------------------------------------------------------------------------------------
# Gemini -> OpenAI / Anthropic, and into Gemini
# --------------------------------------------------------------------------------------


def test_gemini_to_openai() -> None:
    out, conv = convert_stream("gemini", "openai", GEMINI_STREAM)
    chunks, done = openai_chunks(out)
    assert_openai_stream_valid(chunks, done)
    acc = openai_accumulate(chunks)
    assert acc["content"] == "Hello world" and acc["reasoning"] == "thinking..."
    calls = acc["tool_calls"]
    assert [c["name"] for c in calls.values()] == ["lookup", "lookup"]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [{"q": "x"}, {"q": "y"}]
    assert calls[0]["id"] != calls[1]["id"] and calls[0]["id"].startswith("call_")
    assert acc["finish_reason"] == "tool_calls"
    assert acc["usage"]["prompt_tokens"] == 50 and acc["usage"]["completion_tokens"] == 17
    assert acc["usage"]["completion_tokens_details"]["reasoning_tokens"] == 7
    assert acc["usage"]["prompt_tokens_details"]["cached_tokens"] == 20
    assert conv.usage == {"input_tokens": 50, "output_tokens": 10, "cache_read_tokens": 20, "cache_write_tokens": 0,
                          "reasoning_tokens": 7, "has_usage": True, "wire_format": "gemini"}
    # ids are stable: the same response converted again gives the same ids
    again = openai_accumulate(openai_chunks(convert_stream("gemini", "openai", GEMINI_STREAM)[0])[0])
    assert again["tool_calls"] == calls


def test_gemini_to_anthropic() -> None:
    out, _ = convert_stream("gemini", "anthropic", GEMINI_STREAM)
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events)
    msg = anthropic_accumulate(events)
    assert [b["type"] for b in msg["blocks"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert msg["blocks"][2]["input"] == {"q": "x"}
    assert msg["stop_reason"] == "tool_use"
    assert events[0]["message"]["usage"]["input_tokens"] == 50
    assert msg["usage"]["output_tokens"] == 17 and msg["usage"]["cache_read_input_tokens"] == 20
    assert msg["usage"]["input_tokens"] == 30
    sdk_anthropic_stream(out)


def test_gemini_finish_without_usage_waits_for_eof() -> None:
    data = gem([{"text": "a"}]) + gem([{"text": "b"}], "MAX_TOKENS")
    conv = StreamConverter("gemini", "anthropic", client_model="c")
    out = conv.feed(data)
    assert b"message_stop" not in out
    out += conv.finish()
    events = anthropic_events(out)
    assert_anthropic_stream_valid(events)
    assert anthropic_accumulate(events)["stop_reason"] == "max_tokens"


def test_gemini_blocked_prompt() -> None:
    data = b'data: {"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5},"responseId":"r"}\r\n\r\n'
    out, _ = convert_stream("gemini", "openai", data)
    chunks, done = openai_chunks(out)
    assert_openai_stream_valid(chunks, done)
    assert openai_accumulate(chunks)["finish_reason"] == "content_filter"


def test_gemini_json_array_form_equals_sse_form() -> None:
    docs = [json.loads(line[6:]) for line in GEMINI_STREAM.decode().split("\r\n\r\n") if line]
    array = ("[" + ",\r\n".join(json.dumps(d) for d in docs) + "]").encode()
    sse_out, _ = convert_stream("gemini", "openai", GEMINI_STREAM)
    for pieces in ([array], [array[:1], array[1:]], [array[i:i + 7] for i in range(0, len(array), 7)], [b"  \n", array]):
        out, _ = convert_stream("gemini", "openai", array, pieces)
        assert out == sse_out


def test_openai_to_gemini() -> None:
    out, _ = convert_stream("openai", "gemini", OPENAI_MIXED)
    events = gemini_events(out)
    assert_gemini_stream_valid(events)
    acc = gemini_accumulate(events)
    assert acc["text"] == "Let me check."
    assert acc["calls"] == [{"id": "call_a", "name": "get_weather", "args": {"city": "Paris"}},
                            {"id": "call_b", "name": "get_time", "args": {"tz": "CET"}}]
    assert acc["finish"] == "STOP"
    assert acc["usage"] == {"promptTokenCount": 100, "candidatesTokenCount": 15, "totalTokenCount": 120,
                            "cachedContentTokenCount": 40, "thoughtsTokenCount": 5}
    assert {e["modelVersion"] for e in events} == {"gpt-4o"}


def test_anthropic_to_gemini() -> None:
    out, _ = convert_stream("anthropic", "gemini", ANTHROPIC_THINKING_TOOLS)
    events = gemini_events(out)
    assert_gemini_stream_valid(events)
    acc = gemini_accumulate(events)
    assert acc["thoughts"] == "Hmm." and acc["text"] == "Checking both."
    assert acc["calls"] == [{"id": "toolu_1", "name": "a", "args": {"x": 1}}, {"id": "toolu_2", "name": "b", "args": {"y": "z"}}]
    assert acc["usage"]["promptTokenCount"] == 100 and acc["usage"]["candidatesTokenCount"] == 42


# --------------------------------------------------------------------------------------
# framing
# --------------------------------------------------------------------------------------

PAIRS = [("openai", "anthropic"), ("openai", "gemini"), ("anthropic", "openai"), ("anthropic", "gemini"),
         ("gemini", "openai"), ("gemini", "anthropic")]
SYNTHETIC = {"openai": OPENAI_MIXED, "anthropic": ANTHROPIC_THINKING_TOOLS, "gemini": GEMINI_STREAM}


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_every_split_offset_and_byte_at_a_time_identical(source: str, target: str) -> None:
    data = SYNTHETIC[source]
    whole, _ = convert_stream(source, target, data)
    assert whole
    for pieces in every_split(data):
        assert convert_stream(source, target, data, pieces)[0] == whole
    assert convert_stream(source, target, data, [data[i:i + 1] for i in range(len(data))])[0] == whole


@needs_fixtures
@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_every_split_offset_recorded_streams(source: str, target: str) -> None:
    data = {
        "openai": lambda: cassette_stream("test_run_stream_sync_streams_real_model.yaml", 0),
        "anthropic": lambda: raw_fixture("anthropic-sdk-python/tool_use_response.txt"),
        "gemini": lambda: cassette_stream("test_google_stream_usage_is_live_mid_stream.yaml", 0),
    }[source]()
    whole, _ = convert_stream(source, target, data)
    for pieces in every_split(data):
        assert convert_stream(source, target, data, pieces)[0] == whole
    assert convert_stream(source, target, data, [data[i:i + 1] for i in range(len(data))])[0] == whole


@settings(max_examples=60, deadline=None)
@given(pair=st.sampled_from(PAIRS), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_random_multi_splits_identical(pair: tuple[str, str], cuts: list[int]) -> None:
    source, target = pair
    data = SYNTHETIC[source]
    whole, _ = convert_stream(source, target, data)
    pieces = split_at(data, [c % (len(data) + 1) for c in cuts])
    assert convert_stream(source, target, data, pieces)[0] == whole


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_ending_variants(eol: bytes) -> None:
    whole, _ = convert_stream("anthropic", "openai", ANTHROPIC_THINKING_TOOLS)
    data = ANTHROPIC_THINKING_TOOLS.replace(b"\n", eol)
    for pieces in ([data], [data[i:i + 1] for i in range(len(data))], list(every_split(data, 37))[3]):
        assert convert_stream("anthropic", "openai", data, pieces)[0] == whole


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    conv = StreamConverter("openai", "anthropic", client_model="c")
    first = oai({"content": "a"}).replace(b"\n\n", b"\r")  # "...}\r" | "\n\r\n"
    out = conv.feed(first) + conv.feed(b"\n\r\n") + conv.feed(oai({}, "stop", usage=USAGE)) + conv.finish()
    assert_anthropic_stream_valid(anthropic_events(out))


def test_multiline_data_and_unknown_fields() -> None:
    body = b'id: 7\nretry: 100\ndata: {"id":"x","choices":[{"index":0,\ndata: "delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    out, _ = convert_stream("openai", "anthropic", body + DONE)
    assert anthropic_accumulate(anthropic_events(out))["blocks"] == [{"type": "text", "text": "hi"}]


def test_bounded_buffer() -> None:
    conv = StreamConverter("openai", "anthropic", client_model="c", max_event_bytes=1000)
    conv.feed(b"data: " + b"x" * 900)
    with pytest.raises(ConversionError) as info:
        conv.feed(b"y" * 200)
    assert info.value.status == 502
    conv = StreamConverter("openai", "anthropic", client_model="c", max_event_bytes=1000)
    with pytest.raises(ConversionError):  # many data lines of one event
        conv.feed(b"data: 12345678\n" * 200)
    conv = StreamConverter("gemini", "openai", client_model="c", max_event_bytes=1000)
    with pytest.raises(ConversionError):
        conv.feed(b'[{"a":"' + b"z" * 2000)
    # the default is 1 MiB per incomplete event
    conv = StreamConverter("openai", "anthropic", client_model="c")
    conv.feed(b"data: " + b"x" * (1 << 20 - 10))
    with pytest.raises(ConversionError):
        conv.feed(b"x" * (1 << 20))


def test_invalid_json_event_raises_502() -> None:
    conv = StreamConverter("openai", "anthropic", client_model="c")
    with pytest.raises(ConversionError) as info:
        conv.feed(b"data: {not json}\n\n")
    assert info.value.status == 502


def test_feed_after_finish_and_double_finish() -> None:
    conv = StreamConverter("openai", "anthropic", client_model="c")
    assert conv.feed(DONE)
    assert conv.finish() == b""
    assert conv.finish() == b""
    with pytest.raises(RuntimeError):
        conv.feed(b"x")


def test_unknown_format_rejected() -> None:
    with pytest.raises(ValueError):
        StreamConverter("cohere", "openai", client_model="c")


def test_passthrough_reads_usage() -> None:
    conv = StreamConverter("anthropic", "anthropic", client_model="c")
    out = b"".join(conv.feed(ANTHROPIC_THINKING_TOOLS[i:i + 50]) for i in range(0, len(ANTHROPIC_THINKING_TOOLS), 50))
    assert out + conv.finish() == ANTHROPIC_THINKING_TOOLS
    assert conv.usage["output_tokens"] == 42 and conv.usage["has_usage"]
    assert conv.error_event("late") == b""  # the stream had completed


def test_error_event_formats() -> None:
    for target, check in (("openai", b'data: {"error":'), ("gemini", b'data: {"error":{"code":504')):
        conv = StreamConverter("anthropic", target, client_model="c")
        conv.feed(ANTHROPIC_THINKING_TOOLS[:300])
        conv.finish()
        assert conv.truncated
        assert conv.error_event("timed out", status=504).startswith(check)
