"""Any client to any provider: the official SDKs through the gateway to a fake provider
speaking the other format; the SDKs' own parsers must accept every byte."""

from __future__ import annotations

import json
from collections.abc import Callable

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import wait_rows

TOOLS_ANTHROPIC = [{
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}]


def _last(fake: FakeProviderThread, suffix: str):  # type: ignore[no-untyped-def]
    return [r for r in fake.requests if r.path.endswith(suffix)][-1]


def test_anthropic_sdk_on_an_openai_provider(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    fake.clear()
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-c", max_retries=0) as client:
        message = client.messages.create(
            model="gpt-4o-mini", max_tokens=64, system="Be brief.", tools=TOOLS_ANTHROPIC,
            messages=[{"role": "user", "content": "hello"}],
        )
        assert message.type == "message" and message.content[0].type == "text"
        assert message.model == "gpt-4o-mini" and message.usage.input_tokens > 0
        sent = _last(fake, "/chat/completions")
        body = sent.json()
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert body["tools"][0]["function"]["name"] == "get_weather"
        assert sent.header("authorization") == "Bearer sk-server-openai-key"

        with client.messages.stream(
            model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "stream"}],
            extra_headers={"x-fake-events": "6"},
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text and final.stop_reason == "end_turn"
        assert final.usage.output_tokens > 0
        assert _last(fake, "/chat/completions").json()["stream_options"] == {"include_usage": True}


def test_openai_sdk_on_anthropic_native(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    fake.clear()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-c", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="claude-sonnet-4-6",
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "hello"}],
            max_tokens=32,
        )
        assert reply.object == "chat.completion" and reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop"
        sent = _last(fake, "/v1/messages")
        assert sent.json()["system"] == "Be brief."
        assert sent.header("x-api-key") == "sk-ant-server-key"

        chunks = list(client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}], max_tokens=32,
            stream=True, stream_options={"include_usage": True},
        ))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_converted_usage_is_billed(make_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = make_gateway()
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-c", max_retries=0) as client:
        client.messages.create(
            model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-input-tokens": "1000", "x-fake-cached-tokens": "200",
                           "x-fake-output-tokens": "100"},
        )
    [row] = wait_rows(None, str(gateway.config_path.with_suffix(".db")), 1)
    assert (row.provider, row.input_tokens, row.cache_read_tokens, row.output_tokens) == (
        "openai", 1000, 200, 100)
    assert row.cost_nano_usd == 195_000


def test_provider_errors_reach_the_client_in_its_own_shape(gateway: GatewayProcess) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-c", max_retries=0) as client:
        with pytest.raises(anthropic.RateLimitError) as err:
            client.messages.create(
                model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-fake-status": "429"},
            )
    assert err.value.body["type"] == "error"  # type: ignore[index]


def test_inexpressible_requests_are_refused_naming_the_field(gateway: GatewayProcess) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-c", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}], n=2
            )
    assert "n" in json.dumps(err.value.body)


def test_count_tokens_in_front_of_any_provider(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-c", max_retries=0) as client:
        # An Anthropic provider counts itself ...
        fake.clear()
        exact = client.messages.count_tokens(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hello there"}]
        )
        assert exact.input_tokens > 0
        assert _last(fake, "/v1/messages/count_tokens").header("x-api-key") == "sk-ant-server-key"
        # ... any other gets a documented estimate, without a provider call.
        fake.clear()
        estimate = client.messages.count_tokens(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there " * 40}]
        )
        assert estimate.input_tokens > 40
        assert not [r for r in fake.requests if not r.path.startswith("/_fake")]


GEMINI_NATIVE = (
    "  - model: gemini/gemini-2.5-flash\n"
    "    base_url: http://127.0.0.1:{port}/v1beta\n"
    "    access_key: gemini-server-key\n"
)


def test_openai_and_anthropic_sdks_on_gemini_native(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    """A base_url of .../v1beta (not .../v1beta/openai) selects Gemini's native API."""
    gateway = make_gateway(extra_providers=GEMINI_NATIVE.format(port=fake.port))
    fake.clear()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-c", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "hello"}],
        )
        assert reply.choices[0].message.content and reply.usage is not None
        sent = _last(fake, ":generateContent")
        assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
        assert sent.header("x-goog-api-key") == "gemini-server-key"
        assert sent.json()["systemInstruction"]["parts"][0]["text"] == "Be brief."
        chunks = list(client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}], stream=True,
            stream_options={"include_usage": True},
        ))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None
        assert _last(fake, "streamGenerateContent?alt=sse").path.endswith("?alt=sse")
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-c", max_retries=0) as ac:
        with ac.messages.stream(model="gemini-2.5-flash", max_tokens=32,
                                messages=[{"role": "user", "content": "x"}]) as stream:
            final = stream.get_final_message()
        assert final.content[0].type == "text" and final.usage.output_tokens > 0
    rows = wait_rows(None, str(gateway.config_path.with_suffix(".db")), 3)
    assert {r.provider for r in rows} == {"gemini"} and all(r.input_tokens > 0 for r in rows)


def _gemini_post(url: str, body: dict[str, object], key: str = "client-goog-key") -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "content-type": "application/json", "x-goog-api-key": key})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_gemini_clients_native_and_converted(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    gateway = make_gateway(extra_providers=GEMINI_NATIVE.format(port=fake.port))
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    fake.clear()
    status, raw = _gemini_post(gateway.url + "/v1beta/models/gemini-2.5-flash:generateContent", body)
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["candidates"][0]["content"]["parts"][0]["text"]
    assert answer["usageMetadata"]["promptTokenCount"] > 0
    sent = _last(fake, ":generateContent")
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.header("x-goog-api-key") == "gemini-server-key"

    # A Gemini client in front of an OpenAI provider, streaming.
    status, raw = _gemini_post(
        gateway.url + "/v1beta/models/gpt-4o-mini:streamGenerateContent?alt=sse", body)
    assert status == 200, raw
    events = [json.loads(line[6:]) for line in raw.split(b"\r\n") if line.startswith(b"data: ")]
    assert "".join(p["text"] for e in events for c in e.get("candidates", [])
                   for p in c["content"]["parts"] if "text" in p)
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] > 0
    assert _last(fake, "/chat/completions").json()["stream"] is True

    status, raw = _gemini_post(gateway.url + "/v1beta/models/no-such-model:generateContent", body)
    assert status == 400
    error = json.loads(raw)["error"]
    assert error["status"] == "INVALID_ARGUMENT" and "no-such-model" in error["message"]
    rows = wait_rows(None, str(gateway.config_path.with_suffix(".db")), 2)
    assert sorted(r.provider for r in rows) == ["gemini", "openai"]


def test_an_anthropic_overload_reaches_an_openai_client_as_a_retryable_503(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    """Anthropic's 529 ``overloaded_error`` for an OpenAI-format client: 503, the status
    OpenAI itself answers when overloaded ("Slow Down" / "server is overloaded"), which the
    openai SDK retries (it retries 408, 409, 429 and every 5xx, waiting ``retry-after-ms`` /
    ``retry-after`` when given); 529 is no status an OpenAI client knows.  The provider's
    message and its Retry-After headers reach the client."""
    overload = {"x-fake-status": "529", "x-fake-retry-after": "3", "x-fake-retry-after-ms": "20"}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-c", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="claude-sonnet-4-6", max_tokens=8,
                                           messages=[{"role": "user", "content": "x"}], extra_headers=overload)
    assert err.value.status_code == 503
    assert err.value.body == {"message": "fake provider: injected HTTP 529", "type": "overloaded_error",  # type: ignore[comparison-overlap]
                              "param": None, "code": None}
    assert (err.value.response.headers["retry-after"], err.value.response.headers["retry-after-ms"]) == ("3", "20")
    # The SDK's own retry, after the provider's 20 ms, gets the answer.
    fake.clear()
    key = "overload-" + str(id(err))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-c", max_retries=1) as client:
        reply = client.chat.completions.create(
            model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "x"}],
            extra_headers={**overload, "x-fake-fail-first": "1", "x-fake-fail-key": key})
    assert reply.choices[0].message.content
    assert [r.path for r in fake.requests] == ["/v1/messages"] * 2
