"""The Responses API in front of every provider, over real sockets: the official openai
SDK (``responses.create`` / ``responses.stream`` / ``responses.parse``) through the gateway
to the fake provider speaking Chat Completions (an OpenAI-compatible provider without a
responses path), Anthropic Messages and Gemini; OpenAI itself keeps its passthrough."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pydantic
import pytest

from benchmarks.fake_provider import FakeProviderThread, RecordedRequest
from plano_fast.convert._request_responses import JSON_TOOL
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_billing_e2e import wait_rows

EXTRA_PROVIDERS = (
    "  - model: gemini/gemini-2.5-flash\n"
    "    base_url: http://127.0.0.1:{port}/v1beta\n"
    "    access_key: gemini-server-key\n"
    "  - model: deepseek/deepseek-chat\n"
    "    base_url: http://127.0.0.1:{port}/v1\n"
    "    access_key: sk-deepseek-key\n"
)
#: client model -> the path suffix the fake provider must see
CONVERTED = {
    "deepseek-chat": "/chat/completions",
    "claude-sonnet-4-6": "/v1/messages",
    "gemini-2.5-flash": ":generateContent",
}
STREAM_SUFFIX = {"deepseek-chat": "/chat/completions", "claude-sonnet-4-6": "/v1/messages",
                 "gemini-2.5-flash": ":streamGenerateContent?alt=sse"}
TOOLS: list[Any] = [{
    "type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
}]
TOOL_CALL = {"x-fake-tool-call": "get_weather", "x-fake-tool-args": '{"city":"Paris"}'}


class City(pydantic.BaseModel):
    city: str


@pytest.fixture(scope="module")
def gw(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = write_config(tmp_path_factory.mktemp("resp") / "plano_config.yaml", fake.port,
                          extra_providers=EXTRA_PROVIDERS.format(port=fake.port))
    with GatewayProcess(config) as proc:
        yield proc


@pytest.fixture
def client(gw: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-c", max_retries=0) as c:
        yield c


def last(fake: FakeProviderThread, suffix: str) -> RecordedRequest:
    return [r for r in fake.requests if r.path.endswith(suffix)][-1]


@pytest.mark.parametrize("model", list(CONVERTED))
def test_create_text(client: openai.OpenAI, fake: FakeProviderThread, model: str) -> None:
    fake.clear()
    resp = client.responses.create(
        model=model, instructions="Be brief.", input="Say hello.", max_output_tokens=64,
        metadata={"ticket": "7"},
        extra_headers={"x-fake-text": "Hello there!", "x-fake-input-tokens": "120",
                       "x-fake-cached-tokens": "20", "x-fake-output-tokens": "9"},
    )
    assert resp.object == "response" and resp.status == "completed" and resp.model == model
    assert resp.output_text == "Hello there!" and resp.metadata == {"ticket": "7"}
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (120, 9, 129)
    assert resp.usage.input_tokens_details.cached_tokens == 20
    sent = last(fake, CONVERTED[model])
    body = sent.json()
    if model == "deepseek-chat":
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert body["max_tokens"] == 64 and sent.header("authorization") == "Bearer sk-deepseek-key"
    elif model == "claude-sonnet-4-6":
        assert body["system"] == "Be brief." and body["max_tokens"] == 64
        assert sent.header("x-api-key") == "sk-ant-server-key"
    else:
        assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."
        assert body["generationConfig"]["maxOutputTokens"] == 64
    assert "metadata" not in body


@pytest.mark.parametrize("model", list(CONVERTED))
def test_stream_text(client: openai.OpenAI, fake: FakeProviderThread, model: str) -> None:
    fake.clear()
    with client.responses.stream(
        model=model, input="Say hello.",
        extra_headers={"x-fake-text": "Hello streaming world", "x-fake-events": "5", "x-fake-output-tokens": "5"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "Hello streaming world" == final.output_text
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert final.usage is not None and final.usage.output_tokens == 5
    assert last(fake, STREAM_SUFFIX[model]).json().get("stream", True) is True


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("model", list(CONVERTED))
def test_tool_call_and_result_round_trip(
    client: openai.OpenAI, fake: FakeProviderThread, model: str, streamed: bool
) -> None:
    question: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if streamed:
        with client.responses.stream(model=model, input=question, tools=TOOLS, extra_headers=TOOL_CALL) as stream:
            events = list(stream)
            resp = stream.get_final_response()
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert json.loads(args) == {"city": "Paris"}
    else:
        resp = client.responses.create(model=model, input=question, tools=TOOLS, extra_headers=TOOL_CALL)
    [call] = [item for item in resp.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id
    if streamed:  # the SDK parses strict function tools' arguments
        assert call.parsed_arguments == {"city": "Paris"}  # type: ignore[union-attr]
    # turn 2: the call and its output go back; the upstream sees them in its own format
    fake.clear()
    follow = [*question, *[item.model_dump(exclude_none=True) for item in resp.output],
              {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}]
    answer = client.responses.create(model=model, input=follow, tools=TOOLS,
                                     extra_headers={"x-fake-text": "It is 18C and sunny."})
    assert answer.output_text == "It is 18C and sunny."
    body = last(fake, CONVERTED[model]).json()
    if model == "deepseek-chat":
        assert body["messages"][1]["tool_calls"][0]["id"] == call.call_id
        assert body["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "18C and sunny"}
    elif model == "claude-sonnet-4-6":
        assert body["messages"][1]["content"][-1]["type"] == "tool_use"
        assert body["messages"][2]["content"][0] == {
            "type": "tool_result", "tool_use_id": call.call_id, "content": "18C and sunny"}
    else:
        assert body["contents"][1]["parts"][-1]["functionCall"]["name"] == "get_weather"
        assert body["contents"][2]["parts"][0]["functionResponse"] == {
            "id": call.call_id, "name": "get_weather", "response": {"result": "18C and sunny"}}


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("model", list(CONVERTED))
def test_json_schema_output(
    client: openai.OpenAI, fake: FakeProviderThread, model: str, streamed: bool
) -> None:
    if model == "claude-sonnet-4-6":  # Anthropic answers through the forced tool
        headers = {"x-fake-tool-call": JSON_TOOL, "x-fake-tool-args": '{"city":"Paris"}'}
    else:
        headers = {"x-fake-text": '{"city":"Paris"}'}
    fake.clear()
    if streamed:
        with client.responses.stream(model=model, input="Where?", text_format=City, extra_headers=headers) as stream:
            list(stream)
            parsed = stream.get_final_response()
    else:
        parsed = client.responses.parse(model=model, input="Where?", text_format=City, extra_headers=headers)
    assert parsed.output_parsed == City(city="Paris") and parsed.status == "completed"
    assert [item.type for item in parsed.output] == ["message"]
    body = last(fake, STREAM_SUFFIX[model] if streamed else CONVERTED[model]).json()
    if model == "deepseek-chat":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["name"] == "City"
    elif model == "claude-sonnet-4-6":
        assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
        assert body["tools"][0]["input_schema"]["properties"] == {"city": {"title": "City", "type": "string"}}
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert body["generationConfig"]["responseJsonSchema"]["required"] == ["city"]


@pytest.mark.parametrize("model", list(CONVERTED))
def test_built_in_tools_are_a_400_naming_the_tool(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=model, input="x", tools=[{"type": "web_search"}])
    assert "'web_search'" in err.value.message


def test_reasoning_effort_and_sampling_reach_each_provider(client: openai.OpenAI, fake: FakeProviderThread) -> None:
    kwargs: dict[str, Any] = {"input": "think", "reasoning": {"effort": "high"}, "temperature": 0.3,
                              "top_p": 0.8, "max_output_tokens": 40000, "parallel_tool_calls": False,
                              "tools": TOOLS, "tool_choice": "required"}
    fake.clear()
    for model in CONVERTED:
        client.responses.create(model=model, **kwargs)
    chat = last(fake, "/chat/completions").json()
    assert (chat["reasoning_effort"], chat["temperature"], chat["top_p"]) == ("high", 0.3, 0.8)
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("required", False)
    ant = last(fake, "/v1/messages").json()
    assert ant["thinking"] == {"type": "enabled", "budget_tokens": 24576} and ant["max_tokens"] == 40000
    assert ant["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    gem = last(fake, ":generateContent").json()
    assert gem["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 24576
    assert gem["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


def test_errors_and_failures(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="claude-sonnet-4-6", input="x", extra_headers={"x-fake-status": "429"})
    for model in CONVERTED:
        with pytest.raises(openai.APIError):  # the error event, then response.failed
            with client.responses.stream(model=model, input="x",
                                         extra_headers={"x-fake-error-after-events": "2"}) as stream:
                list(stream)


def test_openai_keeps_its_passthrough(client: openai.OpenAI, fake: FakeProviderThread) -> None:
    fake.clear()
    resp = client.responses.create(model="gpt-4o-mini", input="hello", tools=[{"type": "web_search"}])
    assert resp.output_text
    sent = last(fake, "/responses")
    assert sent.path == "/v1/responses" and sent.json()["tools"] == [{"type": "web_search"}]


def test_converted_responses_are_billed_from_the_upstream_usage(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    gateway = make_gateway(extra_providers=EXTRA_PROVIDERS.format(port=fake.port))
    usage = {"x-fake-input-tokens": "1000", "x-fake-cached-tokens": "200", "x-fake-output-tokens": "100"}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-c", max_retries=0) as c:
        c.responses.create(model="claude-sonnet-4-6", input="x", extra_headers=usage)
        with c.responses.stream(model="gemini-2.5-flash", input="x", extra_headers=usage) as stream:
            list(stream)
        c.responses.create(model="deepseek-chat", input="x", stream=False, extra_headers=usage)
    rows = wait_rows(None, str(gateway.config_path.with_suffix(".db")), 3)
    got = sorted((r.provider, r.input_tokens, r.cache_read_tokens, r.output_tokens) for r in rows)
    # one row convention for every provider (README "Billing"): input includes cache reads,
    # so Anthropic's 800 uncached + 200 read is 1000 like the others
    assert got == [("anthropic", 1000, 200, 100), ("deepseek", 1000, 200, 100), ("gemini", 1000, 200, 100)]
