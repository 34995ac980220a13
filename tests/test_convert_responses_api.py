"""The OpenAI Responses API in front of Chat Completions, Anthropic and Gemini, at converter
level: requests (each target's body, validated against the SDKs' parameter types where one
exists), answers through ``client.responses.create`` and streams through the openai SDK's
own ``responses.stream()`` accumulator, split at every byte offset."""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest

from plano_fast.convert import ConversionError, StreamConverter, convert_error, convert_request, convert_response
from plano_fast.convert._request_responses import JSON_TOOL
from tests.test_convert_sdk import OPENAI_STREAMS
from tests.test_convert_streams import SYNTHETIC
from tests.test_convert_support import (
    every_split,
    openai_client,
    validate_anthropic_request,
    validate_openai_request,
)

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
          "parameters": SCHEMA, "strict": True}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

ROUND_TRIP: dict[str, Any] = {
    "model": "client-model",
    "instructions": "Be brief.",
    "input": [
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": [
            {"type": "input_text", "text": "Weather in Paris?"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "need a tool"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C, sunny"},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "max_output_tokens": 300,
    "temperature": 0.4,
    "top_p": 0.9,
    "metadata": {"ticket": "42"},
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": True,
    "include": ["reasoning.encrypted_content"],
}


# ---- requests ----------------------------------------------------------------------------


def test_string_input_to_each_target() -> None:
    body = {"model": "m", "input": "hello", "instructions": "S", "stream": True}
    chat = convert_request(body, "responses", "openai", target_model="gpt-x")
    validate_openai_request(chat)
    assert chat["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "hello"}]
    assert chat["stream_options"] == {"include_usage": True}
    ant = convert_request(body, "responses", "anthropic", target_model="claude-x")
    validate_anthropic_request(ant)
    assert ant["system"] == "S" and ant["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert ant["max_tokens"] == 4096 and ant["stream"] is True
    gem = convert_request(body, "responses", "gemini", target_model="gemini-2.5-flash")
    assert gem == {"contents": [{"role": "user", "parts": [{"text": "hello"}]}],
                   "systemInstruction": {"parts": [{"text": "S"}]}}


def test_item_list_with_tool_round_trip_to_chat() -> None:
    chat = convert_request(ROUND_TRIP, "responses", "openai", target_model="gpt-x")
    validate_openai_request(chat)
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\nUse metric units."},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Paris?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": SCHEMA}}]
    assert (chat["tool_choice"], chat["parallel_tool_calls"], chat["max_completion_tokens"]) == ("auto", False, 300)
    assert (chat["temperature"], chat["top_p"], chat["reasoning_effort"]) == (0.4, 0.9, "medium")
    assert "metadata" not in chat and "store" not in chat and "include" not in chat


def test_item_list_with_tool_round_trip_to_anthropic() -> None:
    ant = convert_request(ROUND_TRIP, "responses", "anthropic", target_model="claude-x")
    validate_anthropic_request(ant)
    assert ant["system"] == "Be brief.\nUse metric units."
    assert [m["role"] for m in ant["messages"]] == ["user", "assistant", "user"]
    assert ant["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert ant["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"}]
    assert ant["tools"][0]["input_schema"] == SCHEMA
    assert ant["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    # medium effort = an 8192-token budget, which does not fit in 300 output tokens: dropped
    assert "thinking" not in ant and ant["max_tokens"] == 300
    roomy = convert_request({**ROUND_TRIP, "max_output_tokens": 20000}, "responses", "anthropic", target_model="c")
    assert roomy["thinking"] == {"type": "enabled", "budget_tokens": 8192} and roomy["max_tokens"] == 20000
    assert "metadata" not in ant


def test_item_list_with_tool_round_trip_to_gemini() -> None:
    gem = convert_request(ROUND_TRIP, "responses", "gemini", target_model="gemini-2.5-flash")
    assert [c["role"] for c in gem["contents"]] == ["user", "model", "user"]
    assert gem["contents"][1]["parts"] == [
        {"text": "Checking."}, {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}}]
    assert gem["contents"][2]["parts"] == [{"functionResponse": {
        "id": "call_1", "name": "get_weather", "response": {"result": "18C, sunny"}}}]
    gc = gem["generationConfig"]
    assert (gc["maxOutputTokens"], gc["temperature"], gc["topP"]) == (300, 0.4, 0.9)
    assert gc["thinkingConfig"] == {"thinkingBudget": 8192, "includeThoughts": True}


def test_tool_choice_and_json_schema_mapping() -> None:
    fmt = {"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}}
    body = {"model": "m", "input": "x", "tools": TOOLS, "tool_choice": {"type": "function", "name": "get_weather"},
            "text": fmt}
    chat = convert_request(body, "responses", "openai", target_model="g")
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    gem = convert_request(body, "responses", "gemini", target_model="gemini-2.5-flash")
    assert gem["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert gem["generationConfig"]["responseJsonSchema"] == SCHEMA
    required = convert_request({**body, "tool_choice": "required", "text": None}, "responses", "openai", target_model="g")
    assert required["tool_choice"] == "required" and "response_format" not in required


def test_json_schema_into_anthropic_is_a_forced_tool() -> None:
    body = {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "city", "schema": SCHEMA}}}
    ant = convert_request(body, "responses", "anthropic", target_model="claude-x")
    validate_anthropic_request(ant)
    assert ant["tools"][-1]["name"] == JSON_TOOL and ant["tools"][-1]["input_schema"] == SCHEMA
    assert ant["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    with_tools = convert_request({**body, "tools": TOOLS}, "responses", "anthropic", target_model="claude-x")
    assert [t["name"] for t in with_tools["tools"]] == ["get_weather", JSON_TOOL]
    assert with_tools["tool_choice"] == {"type": "any"}
    thinking = convert_request({**body, "reasoning": {"effort": "low"}}, "responses", "anthropic", target_model="c")
    assert "tool_choice" not in thinking  # Anthropic refuses a forced tool with thinking
    json_object = convert_request({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}},
                                  "responses", "anthropic", target_model="c")
    assert json_object["tools"][0]["input_schema"] == {"type": "object"}


@pytest.mark.parametrize("target", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("tool", ["web_search", "web_search_preview", "file_search", "code_interpreter",
                                  "computer_use_preview", "image_generation", "mcp", "custom"])
def test_built_in_tools_are_refused_naming_the_tool(target: str, tool: str) -> None:
    body = {"model": "m", "input": "x", "tools": [*TOOLS, {"type": tool}]}
    with pytest.raises(ConversionError) as err:
        convert_request(body, "responses", target, target_model="t")
    assert err.value.status == 400
    assert f"tools[1]: the built-in tool '{tool}'" in str(err.value) and target in str(err.value)


@pytest.mark.parametrize(("body", "named"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0]"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice"),
    ({"input": 5}, "input"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "input[0].arguments"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"reasoning": {"effort": 3}}, "reasoning.effort"),
])
def test_what_cannot_be_converted_is_a_400_naming_the_field(body: dict[str, Any], named: str) -> None:
    with pytest.raises(ConversionError) as err:
        convert_request({"model": "m", "input": "x", **body}, "responses", "openai", target_model="t")
    assert err.value.status == 400 and str(err.value).startswith(named)


def test_function_call_output_parts_and_files() -> None:
    body = {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_file", "filename": "a.pdf",
                                      "file_data": "data:application/pdf;base64,JVBERi0="}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "A"}]},
        {"type": "function_call_output", "call_id": "c2", "output": "B"},
    ]}
    ant = convert_request(body, "responses", "anthropic", target_model="c")
    validate_anthropic_request(ant)
    assert ant["messages"][0]["content"] == [{"type": "document", "title": "a.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]
    assert [b["id"] for b in ant["messages"][1]["content"]] == ["c1", "c2"]  # one assistant turn
    assert ant["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "A"},
        {"type": "tool_result", "tool_use_id": "c2", "content": "B"}]


# ---- non-streamed answers through the SDK -----------------------------------------------

CHAT_ANSWER = {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-x", "choices": [
    {"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.", "reasoning_content": "plan",
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
              "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 5}}}
ANTHROPIC_ANSWER = {"id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-x", "content": [
    {"type": "thinking", "thinking": "plan", "signature": "sig"},
    {"type": "text", "text": "Checking."},
    {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Paris"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 60, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 0, "output_tokens": 20}}
GEMINI_ANSWER = {"responseId": "abc", "modelVersion": "gemini-x", "candidates": [{"content": {"role": "model", "parts": [
    {"text": "plan", "thought": True}, {"text": "Checking."},
    {"functionCall": {"id": "call_9", "name": "get_weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 15, "thoughtsTokenCount": 5,
                      "cachedContentTokenCount": 40, "totalTokenCount": 120}}
ANSWERS = {"openai": CHAT_ANSWER, "anthropic": ANTHROPIC_ANSWER, "gemini": GEMINI_ANSWER}


def sdk_create(body: dict[str, Any], **kwargs: Any) -> Any:
    client = openai_client(json.dumps(body).encode(), "application/json")
    return client.responses.create(model="m", input="x", **kwargs)


@pytest.mark.parametrize("source", ["openai", "anthropic", "gemini"])
def test_sdk_parses_converted_answers(source: str) -> None:
    out = convert_response(ANSWERS[source], source, "responses", client_model="client-model", created=7,
                           request=ROUND_TRIP)
    resp = sdk_create(out)
    assert (resp.id, resp.object, resp.model, resp.status, resp.created_at) == (
        "resp_abc", "response", {"openai": "gpt-x", "anthropic": "claude-x", "gemini": "gemini-x"}[source],
        "completed", 7)  # the model the provider served
    assert [item.type for item in resp.output] == ["reasoning", "message", "function_call"]
    assert resp.output[0].summary[0].text == "plan"
    assert resp.output_text == "Checking."
    call = resp.output[2]
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_9", "get_weather", {"city": "Paris"})
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (100, 20, 120)
    assert resp.usage.input_tokens_details.cached_tokens == 40
    assert resp.usage.output_tokens_details.reasoning_tokens == (0 if source == "anthropic" else 5)
    # the request's settings are echoed; store as the caller says (the gateway sets it)
    assert resp.metadata == {"ticket": "42"} and resp.instructions == "Be brief."
    assert resp.max_output_tokens == 300 and resp.parallel_tool_calls is False and resp.store is True
    assert sdk_create(convert_response(ANSWERS[source], source, "responses", client_model="m")).store is False
    assert [t.name for t in resp.tools] == ["get_weather"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("source", "body", "reason"), [
    ("openai", {"id": "c", "choices": [{"message": {"content": "cut"}, "finish_reason": "length"}]}, "max_output_tokens"),
    ("anthropic", {"id": "m", "content": [{"type": "text", "text": "cut"}], "stop_reason": "max_tokens"}, "max_output_tokens"),
    ("gemini", {"candidates": [{"content": {"parts": [{"text": "no"}]}, "finishReason": "SAFETY"}]}, "content_filter"),
])
def test_incomplete_answers(source: str, body: dict[str, Any], reason: str) -> None:
    resp = sdk_create(convert_response(body, source, "responses", client_model="m"))
    assert resp.status == "incomplete" and resp.incomplete_details.reason == reason  # type: ignore[union-attr]


class City(pydantic.BaseModel):
    city: str


def test_structured_output_from_anthropic_through_sdk_parse() -> None:
    request = {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "city", "schema": SCHEMA}}}
    answer = {"id": "msg_j", "type": "message", "role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3}}
    out = convert_response(answer, "anthropic", "responses", client_model="m", request=request)
    client = openai_client(json.dumps(out).encode(), "application/json")
    parsed = client.responses.parse(model="m", input="x", text_format=City)
    assert parsed.status == "completed" and parsed.output_parsed == City(city="Paris")
    assert [item.type for item in parsed.output] == ["message"]


def test_cache_writes_are_reported() -> None:
    answer = {**ANTHROPIC_ANSWER, "usage": {"input_tokens": 10, "cache_read_input_tokens": 0,
                                            "cache_creation_input_tokens": 4000, "output_tokens": 5}}
    usage = convert_response(answer, "anthropic", "responses", client_model="m")["usage"]
    assert usage["input_tokens"] == 4010
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 4000}


def test_errors_take_the_openai_shape() -> None:
    status, body = convert_error(529, b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}',
                                 "anthropic", "responses")
    assert status == 503 and json.loads(body)["error"]["message"] == "busy"


# ---- streams through the SDK's accumulator, split at every offset -----------------------

ANTHROPIC_JSON_STREAM = b"".join(
    b"event: " + name.encode() + b"\ndata: " + json.dumps({"type": name, **doc}).encode() + b"\n\n"
    for name, doc in [
        ("message_start", {"message": {"id": "msg_js", "type": "message", "role": "assistant", "model": "c",
                                       "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "tool_use", "id": "toolu_j",
                                                               "name": JSON_TOOL, "input": {}}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": 'ty":"Paris"}'}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
        ("message_stop", {}),
    ]
)


def convert(source: str, data: bytes, pieces: list[bytes] | None = None,
            request: dict[str, Any] | None = None) -> bytes:
    conv = StreamConverter(source, "responses", client_model="client-model", created=1700000000, request=request)
    out = b"".join(conv.feed(p) for p in (pieces if pieces is not None else [data]))
    return out + conv.finish()


def sdk_stream(data: bytes, **kwargs: Any) -> tuple[list[Any], Any]:
    client = openai_client(data)
    with client.responses.stream(model="m", input="x", **kwargs) as stream:
        events = list(stream)
        return events, stream.get_final_response()


def event_types(data: bytes) -> list[str]:
    return [line[7:].decode() for line in data.split(b"\n") if line.startswith(b"event: ")]


STREAM_CASES = {
    "openai-text": ("openai", OPENAI_STREAMS["text"]),
    "openai-tools": ("openai", OPENAI_STREAMS["parallel"]),
    "openai-mixed": ("openai", SYNTHETIC["openai"]),
    "anthropic": ("anthropic", SYNTHETIC["anthropic"]),
    "gemini": ("gemini", SYNTHETIC["gemini"]),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_sdk_accumulates_converted_streams(case: str) -> None:
    source, data = STREAM_CASES[case]
    out = convert(source, data)
    events, final = sdk_stream(out)
    types = event_types(out)
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == len(final.output)
    seqs = [json.loads(line[6:])["sequence_number"] for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert seqs == list(range(len(seqs)))
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens > 0
    # the streamed deltas add up to what the final response holds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text
    for item in final.output:
        if item.type == "function_call":
            deltas = "".join(e.delta for e in events
                             if e.type == "response.function_call_arguments.delta" and e.item_id == item.id)
            assert json.loads(deltas or "{}") == json.loads(item.arguments)
    # the same answer as the non-streamed conversion of the same content
    if case == "openai-tools":
        assert [i.type for i in final.output] == ["reasoning", "function_call", "function_call"]
        assert [(i.call_id, json.loads(i.arguments)) for i in final.output[1:]] == [("c1", {"q": "a"}), ("c2", {"q": "b"})]
    if case == "anthropic":
        assert "response.reasoning_summary_text.delta" in types


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_every_split_offset_and_byte_at_a_time_identical(case: str) -> None:
    source, data = STREAM_CASES[case]
    whole = convert(source, data)
    for pieces in every_split(data):
        assert convert(source, data, pieces) == whole
    assert convert(source, data, [data[i:i + 1] for i in range(len(data))]) == whole


def test_structured_output_stream_from_anthropic() -> None:
    request = {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "city", "schema": SCHEMA}}}
    out = convert("anthropic", ANTHROPIC_JSON_STREAM, request=request)
    for pieces in every_split(ANTHROPIC_JSON_STREAM):
        assert convert("anthropic", ANTHROPIC_JSON_STREAM, pieces, request) == out
    client = openai_client(out)
    with client.responses.stream(model="m", input="x", text_format=City) as stream:
        list(stream)
        final = stream.get_final_response()
    assert final.output_parsed == City(city="Paris") and final.status == "completed"
    assert "response.function_call_arguments.delta" not in event_types(out)


def test_length_stop_streams_response_incomplete() -> None:
    data = OPENAI_STREAMS["text"].replace(b'"finish_reason": "stop"', b'"finish_reason": "length"')
    out = convert("openai", data)
    assert event_types(out)[-1] == "response.incomplete"
    doc = json.loads(out.rsplit(b"data: ", 1)[1])
    assert doc["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert doc["response"]["usage"]["input_tokens"] == 5


def test_upstream_error_mid_stream_is_error_then_failed() -> None:
    data = OPENAI_STREAMS["text"].split(b"\n\n")[1] + b"\n\n" + (
        b'data: {"error":{"message":"quota gone","type":"insufficient_quota","code":"insufficient_quota"}}\n\n')
    out = convert("openai", data)
    types = event_types(out)
    assert types[0] == "response.created" and types[-2:] == ["error", "response.failed"]
    failed = json.loads(out.rsplit(b"data: ", 1)[1])["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "insufficient_quota", "message": "quota gone"}
    with pytest.raises(openai.APIError, match="quota gone"):
        sdk_stream(out)


def test_truncated_upstream_gets_a_gateway_failure() -> None:
    data = SYNTHETIC["anthropic"]
    conv = StreamConverter("anthropic", "responses", client_model="m")
    out = conv.feed(data[: len(data) // 2]) + conv.finish()
    assert conv.truncated and "response.completed" not in event_types(out)
    out += conv.error_event("upstream connection lost")
    assert event_types(out)[-2:] == ["error", "response.failed"]
    assert conv.error_event("again") == b""


# ---- properties ---------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.test_convert_roundtrip import json_value_st, openai_streams  # noqa: E402
from tests.test_convert_support import convert_stream, openai_accumulate, openai_chunks  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(data=openai_streams(), upstream=st.sampled_from(["openai", "anthropic", "gemini"]))
def test_generated_streams_accumulate_to_the_same_answer(data: bytes, upstream: str) -> None:
    """Any generated chat stream, as it would come from each upstream format, converts to a
    Responses stream the SDK accepts, holding the text, calls and stop of the original."""
    source = data if upstream == "openai" else convert_stream("openai", upstream, data)[0]
    out = convert(upstream, source)
    with openai_client(out).responses.stream(model="m", input="x") as stream:
        events = list(stream)
    final = json.loads(out.rsplit(b"data: ", 1)[1])["response"]
    chat = openai_accumulate(openai_chunks(data)[0])
    text = "".join(p["text"] for item in final["output"] if item["type"] == "message" for p in item["content"])
    assert text == chat["content"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    calls = [(i["call_id"], json.loads(i["arguments"])) for i in final["output"] if i["type"] == "function_call"]
    assert calls == [(c["id"], json.loads(c["arguments"] or "{}")) for c in chat["tool_calls"].values()]
    assert final["status"] == ("completed" if chat["finish_reason"] in ("stop", "tool_calls") else "incomplete")
    assert final["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]


_item_st = st.one_of(
    json_value_st,
    st.fixed_dictionaries({"type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]),
                           "role": st.sampled_from(["user", "assistant", "system", "x"]),
                           "content": json_value_st, "call_id": json_value_st, "name": json_value_st,
                           "arguments": json_value_st, "output": json_value_st}),
)


@settings(max_examples=300, deadline=None)
@given(body=st.fixed_dictionaries({}, optional={
    "input": st.one_of(json_value_st, st.lists(_item_st, max_size=4)), "instructions": json_value_st,
    "tools": st.one_of(json_value_st, st.lists(st.fixed_dictionaries({"type": json_value_st, "name": json_value_st,
                                                                       "parameters": json_value_st}))),
    "tool_choice": json_value_st, "text": json_value_st, "reasoning": json_value_st,
    "max_output_tokens": json_value_st, "temperature": json_value_st}),
    target=st.sampled_from(["openai", "anthropic", "gemini"]))
def test_any_body_converts_or_is_a_conversion_error(body: dict[str, Any], target: str) -> None:
    """Invariant: a converted request or a ConversionError (a 400 naming the field), never
    another exception."""
    try:
        convert_request(body, "responses", target, target_model="t")
    except ConversionError as exc:
        assert exc.status == 400
