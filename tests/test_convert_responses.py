"""convert_response (non-streaming): content, tool calls, stop reasons, usage, ids, model."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from plano_fast.convert import ConversionError, convert_response
from tests.test_convert_support import sdk_anthropic_message, sdk_openai_completion


def openai_body(message: dict[str, Any], finish: str | None = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-XYZ", "object": "chat.completion", "created": 5, "model": "gpt-4o-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, "logprobs": None}],
        "usage": usage or {"prompt_tokens": 4020, "completion_tokens": 30, "total_tokens": 4050,
                           "prompt_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 12},
                           "completion_tokens_details": {"reasoning_tokens": 10}},
    }


def anthropic_body(content: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_01ABC", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": 3, "cache_creation_input_tokens": 418, "cache_read_input_tokens": 1111,
                  "output_tokens": 33, "service_tier": "standard"},
    }


def gemini_body(parts: list[dict[str, Any]], finish: str = "STOP") -> dict[str, Any]:
    return {
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 17713, "cachedContentTokenCount": 17379, "candidatesTokenCount": 68,
                          "thoughtsTokenCount": 821, "totalTokenCount": 18602},
        "modelVersion": "gemini-2.5-flash", "responseId": "bzlXaa_EE",
    }


# --------------------------------------------------------------------------------------
# OpenAI -> Anthropic / Gemini
# --------------------------------------------------------------------------------------


def test_openai_to_anthropic_tools_usage_ids() -> None:
    body = openai_body({"content": "Let me look.", "reasoning_content": "hmm", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
    ]}, "tool_calls")
    out = convert_response(body, "openai", "anthropic", client_model="claude-alias")
    assert out == {  # the model the provider served, not the alias (as Plano reports it)
        "id": "msg_XYZ", "type": "message", "role": "assistant", "model": "gpt-4o-2024",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 8, "cache_creation_input_tokens": 12, "cache_read_input_tokens": 4000, "output_tokens": 30},
    }
    msg = sdk_anthropic_message(out)
    assert msg.stop_reason == "tool_use" and msg.usage.cache_read_input_tokens == 4000


def test_openai_invalid_arguments_and_stop_with_tools() -> None:
    body = openai_body({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"trunc'}}]}, "stop")
    out = convert_response(body, "openai", "anthropic", client_model="m")
    assert out["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]
    assert out["stop_reason"] == "tool_use"  # "stop" with tool calls: Anthropic clients need tool_use


def test_openai_to_gemini() -> None:
    body = openai_body({"content": "Hi", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"a":1}'}}]}, "tool_calls")
    out = convert_response(body, "openai", "gemini", client_model="gemini-alias")
    assert out == {
        "candidates": [{"content": {"parts": [{"text": "Hi"}, {"functionCall": {"id": "call_1", "name": "w", "args": {"a": 1}}}],
                                    "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 4020, "candidatesTokenCount": 20, "totalTokenCount": 4050,
                          "cachedContentTokenCount": 4000, "thoughtsTokenCount": 10},
        "modelVersion": "gpt-4o-2024", "responseId": "XYZ",
    }


def test_openai_unusable_body() -> None:
    with pytest.raises(ConversionError) as info:
        convert_response({"error": {"message": "x"}}, "openai", "anthropic", client_model="m")
    assert info.value.status == 502
    with pytest.raises(ConversionError):
        convert_response({"id": "x"}, "anthropic", "openai", client_model="m")
    with pytest.raises(ConversionError):
        convert_response({}, "gemini", "openai", client_model="m")


# --------------------------------------------------------------------------------------
# Anthropic -> OpenAI / Gemini
# --------------------------------------------------------------------------------------


def test_anthropic_to_openai() -> None:
    body = anthropic_body([
        {"type": "thinking", "thinking": "plan", "signature": "s"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "both."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}, "caller": {"type": "direct"}},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
    ], "tool_use")
    out = convert_response(body, "anthropic", "openai", client_model="gpt-alias", created=123)
    assert out == {
        "id": "chatcmpl-01ABC", "object": "chat.completion", "created": 123, "model": "claude-sonnet-4-5-20250929",
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Checking both.", "refusal": None,
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}],
            "reasoning_content": "plan"}, "finish_reason": "tool_calls", "logprobs": None}],
        "usage": {"prompt_tokens": 1532, "completion_tokens": 33, "total_tokens": 1565,
                  "prompt_tokens_details": {"cached_tokens": 1111, "cache_write_tokens": 418},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
    }
    completion = sdk_openai_completion(out)
    assert completion.choices[0].message.tool_calls is not None
    assert completion.usage is not None and completion.usage.prompt_tokens == 1532


def test_anthropic_to_gemini() -> None:
    body = anthropic_body([{"type": "text", "text": "Hello"}], "max_tokens")
    out = convert_response(body, "anthropic", "gemini", client_model="g")
    assert out["candidates"][0] == {"content": {"parts": [{"text": "Hello"}], "role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}
    assert out["usageMetadata"] == {"promptTokenCount": 1532, "candidatesTokenCount": 33, "totalTokenCount": 1565,
                                    "cachedContentTokenCount": 1111}
    assert out["responseId"] == "01ABC"


# --------------------------------------------------------------------------------------
# Gemini -> OpenAI / Anthropic
# --------------------------------------------------------------------------------------


def test_gemini_to_openai_and_anthropic() -> None:
    body = gemini_body([{"text": "thoughts", "thought": True}, {"text": "Paris."},
                        {"functionCall": {"name": "f", "args": {"x": 1}}}, {"functionCall": {"name": "f", "args": {"x": 2}}}])
    oai = convert_response(body, "gemini", "openai", client_model="m", created=1)
    msg = oai["choices"][0]["message"]
    assert msg["content"] == "Paris." and msg["reasoning_content"] == "thoughts"
    ids = [c["id"] for c in msg["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert [c["function"]["arguments"] for c in msg["tool_calls"]] == ['{"x":1}', '{"x":2}']
    assert oai["choices"][0]["finish_reason"] == "tool_calls"
    assert oai["usage"] == {"prompt_tokens": 17713, "completion_tokens": 889, "total_tokens": 18602,
                            "prompt_tokens_details": {"cached_tokens": 17379},
                            "completion_tokens_details": {"reasoning_tokens": 821}}
    assert oai["id"] == "chatcmpl-bzlXaa_EE"
    ant = convert_response(body, "gemini", "anthropic", client_model="m")
    assert [b["type"] for b in ant["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert [b["id"] for b in ant["content"][2:]] == ids  # same ids whatever the client format
    assert ant["usage"] == {"input_tokens": 334, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 17379,
                            "output_tokens": 889}
    sdk_anthropic_message(ant)
    sdk_openai_completion(oai)


def test_gemini_blocked_prompt() -> None:
    body = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}}
    out = convert_response(body, "gemini", "anthropic", client_model="m")
    assert out["stop_reason"] == "refusal" and out["content"] == []
    assert convert_response(body, "gemini", "openai", client_model="m")["choices"][0]["finish_reason"] == "content_filter"


# --------------------------------------------------------------------------------------
# stop reason tables
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stop", "finish", "gemini"), [
    ("end_turn", "stop", "STOP"), ("stop_sequence", "stop", "STOP"), ("pause_turn", "stop", "STOP"),
    ("max_tokens", "length", "MAX_TOKENS"), ("model_context_window_exceeded", "length", "MAX_TOKENS"),
    ("tool_use", "tool_calls", "STOP"), ("refusal", "content_filter", "SAFETY"),
])
def test_anthropic_stop_reason_table(stop: str, finish: str, gemini: str) -> None:
    body = anthropic_body([{"type": "text", "text": "x"}], stop)
    assert convert_response(body, "anthropic", "openai", client_model="m")["choices"][0]["finish_reason"] == finish
    assert convert_response(body, "anthropic", "gemini", client_model="m")["candidates"][0]["finishReason"] == gemini


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("function_call", "tool_use"),
    ("content_filter", "refusal"), (None, "end_turn"), ("weird", "end_turn"),
])
def test_openai_finish_reason_table(finish: str | None, stop: str) -> None:
    body = openai_body({"content": "x"}, finish)
    assert convert_response(body, "openai", "anthropic", client_model="m")["stop_reason"] == stop


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "stop"),
    ("LANGUAGE", "content_filter"), ("OTHER", "stop"), ("BLOCKLIST", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"), ("IMAGE_SAFETY", "content_filter"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("FINISH_REASON_UNSPECIFIED", "stop"), ("UNEXPECTED_TOOL_CALL", "stop"),
])
def test_gemini_finish_reason_table(reason: str, finish: str) -> None:
    out = convert_response(gemini_body([{"text": "x"}], reason), "gemini", "openai", client_model="m")
    assert out["choices"][0]["finish_reason"] == finish


def test_the_served_model_is_reported_the_alias_only_without_one() -> None:
    body = anthropic_body([{"type": "text", "text": "x"}])
    assert convert_response(body, "anthropic", "anthropic", client_model="alias")["model"] == "claude-sonnet-4-5-20250929"
    assert convert_response(gemini_body([]), "gemini", "gemini", client_model="alias")["modelVersion"] == "gemini-2.5-flash"
    assert convert_response(body, "anthropic", "responses", client_model="alias")["model"] == "claude-sonnet-4-5-20250929"
    assert convert_response(gemini_body([]), "gemini", "anthropic", client_model="alias")["model"] == "gemini-2.5-flash"
    # a provider that names no model: the name the gateway asked it for
    del body["model"]
    assert convert_response(body, "anthropic", "anthropic", client_model="alias")["model"] == "alias"
    assert convert_response(body, "anthropic", "openai", client_model="alias")["model"] == "alias"
    nameless = gemini_body([{"text": "x"}])
    del nameless["modelVersion"]
    assert convert_response(nameless, "gemini", "responses", client_model="alias")["model"] == "alias"


def test_missing_usage_and_ids() -> None:
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}
    out = convert_response(body, "openai", "anthropic", client_model="m")
    assert out["id"].startswith("msg_") and len(out["id"]) > 10
    assert out["usage"] == {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    assert isinstance(anthropic.types.Message.model_validate(out), anthropic.types.Message)
    oai = convert_response(anthropic_body([]), "anthropic", "openai", client_model="m")
    assert oai["choices"][0]["message"]["content"] is None
    openai.types.chat.ChatCompletion.model_validate(oai)
