"""convert_request: every mapping of the brief, per direction, and what raises."""

from __future__ import annotations

from typing import Any

import pytest

from plano_fast.convert import ConversionError, convert_request, count_tokens_estimate

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def a2o(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return convert_request(body, "anthropic", "openai", target_model="gpt-4o", **kw)


def o2a(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return convert_request(body, "openai", "anthropic", target_model="claude-sonnet-4-5", **kw)


def conv(body: dict[str, Any], source: str, target: str, **kw: Any) -> dict[str, Any]:
    return convert_request(body, source, target, target_model="m", **kw)


ANTHROPIC_TOOL_CONVERSATION: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 1000,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
               {"type": "text", "text": "Use tools."}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Paris and Rome? See picture."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "abc"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "down"}],
             "is_error": True},
            {"type": "text", "text": "Thanks"},
        ]},
    ],
    "tools": [{"name": "weather", "description": "Get weather", "input_schema": WEATHER_SCHEMA,
               "cache_control": {"type": "ephemeral"}}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 5,
    "stop_sequences": ["END"],
    "stream": True,
    "metadata": {"user_id": "u-1"},
}


# ======================================================================================
# Anthropic -> OpenAI
# ======================================================================================


def test_anthropic_to_openai_full_conversation() -> None:
    out = a2o(ANTHROPIC_TOOL_CONVERSATION)
    assert out["model"] == "gpt-4o"
    assert out["messages"] == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Paris and Rome? See picture."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: down"},
        {"role": "user", "content": "Thanks"},
    ]
    assert out["tools"] == [{"type": "function", "function": {"name": "weather", "description": "Get weather",
                                                              "parameters": WEATHER_SCHEMA}}]
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is False
    assert out["max_completion_tokens"] == 1000 and "max_tokens" not in out
    assert out["temperature"] == 0.3 and out["top_p"] == 0.9 and "top_k" not in out
    assert out["stop"] == ["END"]
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["user"] == "u-1"


def test_anthropic_to_openai_max_tokens_field_option_and_no_stream() -> None:
    body = {"model": "c", "max_tokens": 50, "system": "S", "messages": [{"role": "user", "content": "hi"}]}
    out = a2o(body, openai_max_tokens_field="max_tokens")
    assert out == {"model": "gpt-4o", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
                   "max_tokens": 50}


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
])
def test_anthropic_tool_choice_to_openai(choice: dict[str, Any], expected: Any) -> None:
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": choice,
            "tools": [{"name": "weather", "input_schema": WEATHER_SCHEMA}]}
    assert a2o(body)["tool_choice"] == expected
    assert conv(body, "anthropic", "gemini")["toolConfig"]["functionCallingConfig"]["mode"] == (
        {"auto": "AUTO", "any": "ANY", "none": "NONE", "tool": "ANY"}[choice["type"]])


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (1025, "medium"), (8192, "medium"), (8193, "high"), (32000, "high")])
def test_anthropic_thinking_budget_to_reasoning_effort(budget: int, effort: str) -> None:
    body = {"max_tokens": 40000, "messages": [{"role": "user", "content": "x"}],
            "thinking": {"type": "enabled", "budget_tokens": budget}}
    assert a2o(body)["reasoning_effort"] == effort
    gem = conv(body, "anthropic", "gemini")
    assert gem["generationConfig"]["thinkingConfig"] == {"thinkingBudget": budget, "includeThoughts": True}
    assert "reasoning_effort" not in a2o({**body, "thinking": {"type": "disabled"}})


def test_anthropic_document_and_tool_result_image() -> None:
    body = {"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "here"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        ]}]}
    msgs = a2o(body)["messages"]
    assert msgs[1] == {"role": "tool", "tool_call_id": "t1", "content": "here"}
    assert msgs[2]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
    ]
    parts = conv(body, "anthropic", "gemini")["contents"][1]["parts"]
    assert parts == [
        {"functionResponse": {"id": "t1", "name": "shot", "response": {"result": "here"}}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
    ]


@pytest.mark.parametrize(("body", "field"), [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"mcp_servers": [{"url": "x"}]}, "mcp_servers"),
    ({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, "messages[0].content[0].source"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": "hi"}, "messages"),
])
def test_anthropic_inexpressible_raises(body: dict[str, Any], field: str) -> None:
    full = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **body}
    for target in ("openai", "gemini"):
        with pytest.raises(ConversionError) as info:
            conv(full, "anthropic", target)
        assert info.value.status == 400
        assert info.value.message.startswith(field)


# ======================================================================================
# OpenAI -> Anthropic
# ======================================================================================

OPENAI_TOOL_CONVERSATION: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "description": "Get weather",
                                                "parameters": WEATHER_SCHEMA, "strict": True}}],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_completion_tokens": 300,
    "temperature": 1.7,
    "top_p": 0.5,
    "stop": "END",
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "u-2",
    "seed": 3,
    "n": 1,
}


def test_openai_to_anthropic_full_conversation() -> None:
    out = o2a(OPENAI_TOOL_CONVERSATION)
    assert out["system"] == "Be brief.\nUse tools."
    assert out["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ]
    assert out["tools"] == [{"name": "weather", "description": "Get weather", "input_schema": WEATHER_SCHEMA}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["max_tokens"] == 300
    assert out["temperature"] == 1.0  # capped to Anthropic's range
    assert out["top_p"] == 0.5 and out["stop_sequences"] == ["END"]
    assert out["stream"] is True and "stream_options" not in out
    assert out["metadata"] == {"user_id": "u-2"}
    assert "seed" not in out and "n" not in out


def test_openai_to_anthropic_default_max_tokens_and_id_sanitizing() -> None:
    body = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "fc.1:x", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "fc.1:x", "content": "ok"},
    ]}
    out = o2a(body)
    assert out["max_tokens"] == 4096
    assert out["messages"][1]["content"][0]["id"] == "fc_1_x"
    assert out["messages"][2]["content"][0]["tool_use_id"] == "fc_1_x"
    assert o2a(body, default_max_tokens=123)["max_tokens"] == 123


@pytest.mark.parametrize(("effort", "budget"), [("minimal", 1024), ("low", 1024), ("medium", 8192), ("high", 24576)])
def test_openai_reasoning_effort_to_thinking(effort: str, budget: int) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort}
    out = o2a(body)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == budget + 4096
    gem = conv(body, "openai", "gemini")
    assert gem["generationConfig"]["thinkingConfig"] == {"thinkingBudget": budget, "includeThoughts": True}
    # an explicit limit below the budget shrinks the budget (Anthropic needs budget < max_tokens)
    small = o2a({**body, "max_completion_tokens": 5000})
    assert small["max_tokens"] == 5000
    assert small["thinking"]["budget_tokens"] == min(budget, 4999)
    assert "thinking" not in o2a({**body, "max_completion_tokens": 1000})
    assert "thinking" not in o2a({**body, "reasoning_effort": "none"})


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"}),
])
def test_openai_tool_choice_to_anthropic(choice: Any, expected: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "tool_choice": choice,
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}}]}
    assert o2a(body)["tool_choice"] == expected


@pytest.mark.parametrize(("extra", "field"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "logprobs"),
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
    ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]}, "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}, "messages[0].content[0]"),
])
def test_openai_inexpressible_raises(extra: dict[str, Any], field: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **extra}
    for target in ("anthropic", "gemini"):
        with pytest.raises(ConversionError) as info:
            conv(body, "openai", target)
        assert info.value.status == 400
        assert info.value.message.startswith(field), info.value.message


def test_openai_anthropic_only_limits() -> None:
    audio = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}]}
    with pytest.raises(ConversionError, match=r"messages\[0\]\.content\[0\]: audio input"):
        o2a(audio)
    assert conv(audio, "openai", "gemini")["contents"][0]["parts"] == [{"inlineData": {"mimeType": "audio/wav", "data": "AAA"}}]
    schema = {"messages": [{"role": "user", "content": "x"}],
              "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": WEATHER_SCHEMA}}}
    with pytest.raises(ConversionError, match="response_format"):
        o2a(schema)
    gc = conv(schema, "openai", "gemini")["generationConfig"]
    assert gc == {"responseMimeType": "application/json", "responseJsonSchema": WEATHER_SCHEMA}


# ======================================================================================
# OpenAI / Anthropic -> Gemini
# ======================================================================================


def test_openai_to_gemini_full_conversation() -> None:
    out = conv(OPENAI_TOOL_CONVERSATION, "openai", "gemini")
    assert "model" not in out
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [
            {"text": "Weather?"},
            {"inlineData": {"mimeType": "image/png", "data": PNG}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
        ]},
        {"role": "model", "parts": [
            {"functionCall": {"id": "call_1", "name": "weather", "args": {"city": "Paris"}}},
            {"functionCall": {"id": "call_2", "name": "weather", "args": {"city": "Rome"}}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"id": "call_1", "name": "weather", "response": {"result": "18C"}}},
            {"functionResponse": {"id": "call_2", "name": "weather", "response": {"result": "21C"}}},
            {"text": "And tomorrow?"},
        ]},
    ]
    assert out["tools"] == [{"functionDeclarations": [
        {"name": "weather", "description": "Get weather", "parametersJsonSchema": WEATHER_SCHEMA}]}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert out["generationConfig"] == {"maxOutputTokens": 300, "temperature": 1.7, "topP": 0.5,
                                       "stopSequences": ["END"], "seed": 3}


def test_anthropic_to_gemini_full_conversation() -> None:
    out = conv(ANTHROPIC_TOOL_CONVERSATION, "anthropic", "gemini")
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]}
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert out["contents"][1]["parts"][0] == {"text": "Checking."}  # thinking dropped
    assert out["contents"][2]["parts"][:2] == [
        {"functionResponse": {"id": "toolu_1", "name": "weather", "response": {"result": "18C"}}},
        {"functionResponse": {"id": "toolu_2", "name": "weather", "response": {"error": "down"}}},
    ]
    assert out["generationConfig"] == {"maxOutputTokens": 1000, "temperature": 0.3, "topP": 0.9, "topK": 5,
                                       "stopSequences": ["END"]}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_tool_result_for_unknown_call_into_gemini_raises() -> None:
    body = {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}
    with pytest.raises(ConversionError, match="nope"):
        conv(body, "openai", "gemini")


# ======================================================================================
# Gemini -> OpenAI / Anthropic (ingress)
# ======================================================================================

GEMINI_CONVERSATION: dict[str, Any] = {
    "systemInstruction": {"role": "user", "parts": [{"text": "You are helpful."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Capital and weather?"},
                                   {"inlineData": {"mimeType": "image/png", "data": PNG}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "capital", "args": {"country": "France"}}},
                                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"result": "18C"}}},
                                   {"functionResponse": {"name": "capital", "response": {"return_value": "Paris"}}}]},
    ],
    "tools": [{"functionDeclarations": [
        {"name": "capital", "description": "Capital of a country",
         "parameters": {"type": "OBJECT", "properties": {"country": {"type": "STRING", "nullable": True}},
                        "required": ["country"]}},
        {"name": "weather", "parametersJsonSchema": WEATHER_SCHEMA},
    ]}],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}},
    "generationConfig": {"maxOutputTokens": 200, "temperature": 0.2, "topP": 0.8, "topK": 4,
                         "stopSequences": ["X"], "thinkingConfig": {"thinkingBudget": 2048}},
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
}


def test_gemini_to_openai_conversation_with_synthesized_ids() -> None:
    out = conv(GEMINI_CONVERSATION, "gemini", "openai", stream=True)
    msgs = out["messages"]
    assert msgs[0] == {"role": "system", "content": "You are helpful."}
    assert msgs[1]["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    calls = msgs[2]["tool_calls"]
    ids = [c["id"] for c in calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    # responses are matched to calls by name, whatever their order
    assert msgs[3] == {"role": "tool", "tool_call_id": ids[1], "content": "18C"}
    assert msgs[4] == {"role": "tool", "tool_call_id": ids[0], "content": "Paris"}
    # the ids are stable: the same history converts to the same ids
    assert [c["id"] for c in conv(GEMINI_CONVERSATION, "gemini", "openai")["messages"][2]["tool_calls"]] == ids
    assert out["tools"][0]["function"] == {
        "name": "capital", "description": "Capital of a country",
        "parameters": {"type": "object", "properties": {"country": {"type": ["string", "null"]}}, "required": ["country"]}}
    assert out["tools"][1]["function"]["parameters"] == WEATHER_SCHEMA
    assert out["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert out["max_completion_tokens"] == 200 and out["temperature"] == 0.2 and out["top_p"] == 0.8
    assert out["stop"] == ["X"] and out["reasoning_effort"] == "medium"
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert "stream" not in conv(GEMINI_CONVERSATION, "gemini", "openai")


def test_gemini_to_anthropic_conversation() -> None:
    out = conv(GEMINI_CONVERSATION, "gemini", "anthropic")
    assert out["system"] == "You are helpful."
    assert out["max_tokens"] == 200 and out["top_k"] == 4
    assert "thinking" not in out  # budget 2048 must stay below max_tokens 200: < 1024 left, dropped
    results = out["messages"][2]["content"]
    calls = out["messages"][1]["content"]
    assert results[0]["tool_use_id"] == calls[1]["id"] and results[1]["tool_use_id"] == calls[0]["id"]
    assert out["tool_choice"] == {"type": "tool", "name": "weather"}


def test_gemini_ids_snake_case_and_recorded_ids() -> None:
    body = {"contents": [
        {"role": "model", "parts": [{"function_call": {"id": "abc", "name": "f", "args": {}}}]},
        {"role": "user", "parts": [{"function_response": {"id": "abc", "name": "f", "response": {"error": "bad"}}}]},
    ], "tools": {"function_declarations": [{"name": "f", "parameters": {"type": "object", "properties": {}}}]},
        "generation_config": {"max_output_tokens": 9}}
    out = conv(body, "gemini", "anthropic")
    assert out["messages"] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "abc", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "abc", "content": "bad", "is_error": True}]},
    ]
    assert out["max_tokens"] == 9


@pytest.mark.parametrize(("config", "expected"), [
    ({"thinkingBudget": 0}, None), ({"thinkingBudget": -1}, None), ({"thinkingBudget": 512}, "low"),
    ({"thinkingBudget": 24576}, "high"), ({"thinkingLevel": "HIGH"}, "high"),
])
def test_gemini_thinking_to_openai(config: dict[str, Any], expected: str | None) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"thinkingConfig": config}}
    assert conv(body, "gemini", "openai").get("reasoning_effort") == expected


def test_gemini_response_mime_type() -> None:
    body: dict[str, Any] = {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseMimeType": "application/json"}}
    assert conv(body, "gemini", "openai")["response_format"] == {"type": "json_object"}
    body["generationConfig"]["responseSchema"] = {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}}
    assert conv(body, "gemini", "openai")["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}


@pytest.mark.parametrize(("extra", "field"), [
    ({"generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount"),
    ({"generationConfig": {"responseLogprobs": True}}, "generationConfig.responseLogprobs"),
    ({"generationConfig": {"responseModalities": ["AUDIO"]}}, "generationConfig.responseModalities"),
    ({"tools": [{"googleSearch": {}}]}, "tools[0].googleSearch"),
    ({"cachedContent": "cachedContents/1"}, "cachedContent"),
    ({"contents": [{"role": "model", "parts": [{"executableCode": {"code": "1"}}]}]}, "contents[0].parts[0]"),
    ({"contents": [{"role": "user", "parts": [{"fileData": {"mimeType": "video/mp4", "fileUri": "https://youtu.be/x"}}]}]}, "contents[0].parts[0]"),
])
def test_gemini_inexpressible_raises(extra: dict[str, Any], field: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], **extra}
    for target in ("openai", "anthropic"):
        with pytest.raises(ConversionError) as info:
            conv(body, "gemini", target)
        assert info.value.message.startswith(field), info.value.message


# ======================================================================================
# misc
# ======================================================================================


def test_same_format_replaces_model_only() -> None:
    body = {"model": "alias", "messages": [], "stream": False}
    out = convert_request(body, "openai", "openai", target_model="gpt-4o")
    assert out == {"model": "gpt-4o", "messages": [], "stream": False} and body["model"] == "alias"
    gem = {"contents": []}
    assert convert_request(gem, "gemini", "gemini", target_model="x") == gem


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        convert_request({}, "openai", "bedrock", target_model="m")
    with pytest.raises(ConversionError):
        convert_request([], "openai", "anthropic", target_model="m")  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match="messages: must be a list"):
        convert_request({}, "openai", "anthropic", target_model="m")
    with pytest.raises(ConversionError, match=r"messages\[0\]: must be an object"):
        convert_request({"messages": ["hi"]}, "openai", "anthropic", target_model="m")
    with pytest.raises(ConversionError, match="max_completion_tokens: must be an integer"):
        convert_request({"messages": [], "max_completion_tokens": "9"}, "openai", "anthropic", target_model="m")


# ======================================================================================
# count_tokens estimate
# ======================================================================================


def test_count_tokens_estimate_rule() -> None:
    text = "a" * 400
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
    assert count_tokens_estimate(body, "anthropic") == 100 + 4
    with_system = {**body, "system": "b" * 40}
    assert count_tokens_estimate(with_system, "anthropic") == 114
    cjk = {**body, "messages": [{"role": "user", "content": "日本語のテキスト"}]}
    assert count_tokens_estimate(cjk, "anthropic") == 8 + 4  # one per non-ASCII character
    image = {**body, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100000}}]}]}
    assert count_tokens_estimate(image, "anthropic") == 1600 + 4
    tools = {**body, "tools": [{"name": "weather", "input_schema": WEATHER_SCHEMA}]}
    assert count_tokens_estimate(tools, "anthropic") > count_tokens_estimate(body, "anthropic")


def test_count_tokens_estimate_same_for_equivalent_requests() -> None:
    ant = ANTHROPIC_TOOL_CONVERSATION
    est = count_tokens_estimate(ant, "anthropic")
    assert est > 0
    oai = convert_request(ant, "anthropic", "openai", target_model="m")
    gem = convert_request(ant, "anthropic", "gemini", target_model="m")
    # OpenAI splits tool results into extra messages (+4 each) and prefixes "Error: "
    assert abs(count_tokens_estimate(oai, "openai") - est) <= 16
    assert abs(count_tokens_estimate(gem, "gemini") - est) <= 16
    # unparseable requests fall back to their JSON size
    assert count_tokens_estimate({"messages": [{"role": "user", "content": [{"type": "mystery"}]}]}, "anthropic") > 0


@pytest.mark.parametrize(("model", "injected"), [
    ("gemini-3-pro-preview", True), ("gemini-3.1-flash", True), ("models/gemini-4-x", True),
    ("gemini-2.5-flash", False), ("gemini-2.0-flash", False), ("my-tuned-model", False),
])
def test_gemini3_gets_thought_signature_sentinel_on_foreign_calls(model: str, injected: bool) -> None:
    out = convert_request(OPENAI_TOOL_CONVERSATION, "openai", "gemini", target_model=model)
    calls = out["contents"][1]["parts"]
    assert all(("thoughtSignature" in p) is injected for p in calls)
    if injected:
        assert calls[0]["thoughtSignature"] == "skip_thought_signature_validator"
