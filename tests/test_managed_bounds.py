"""The managed-mode reservation is an upper bound: what bytes and max_tokens cannot bound
is multiplied in (n, candidateCount, tools) or refused (images, audio, files, state,
provider-run tools); and a refusal says whether the limit is reached or only held."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.managed.bounds import TOOL_OVERHEAD_TOKENS, UnboundedContent, token_bound
from tests.gateway_proc import GatewayProcess
from tests.test_billing_faults import start_slow_stream, wait_until
from tests.test_managed import DEFAULT_PIPE, ENV, GPT_4O_MINI_PRICES, Tenant, provision, rows


def b(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


TEXT = [{"role": "user", "content": "hi"}]


def test_plain_text_is_bytes_and_max_tokens() -> None:
    body = b({"model": "m", "messages": TEXT, "max_tokens": 50})
    assert token_bound(body, 50) == (len(body), 50)
    # Field names mentioned inside text are escaped there: still plain text.
    prose = b({"model": "m", "messages": [{"role": "user", "content": 'what is "image_url"?'}]})
    assert token_bound(prose, 7) == (len(prose), 7)


@pytest.mark.parametrize(("doc", "factor"), [
    ({"model": "m", "messages": TEXT, "n": 4}, 4),
    ({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"candidateCount": 3}}, 3),
    ({"model": "m", "messages": TEXT, "n": 1}, 1),
])
def test_choices_multiply_the_output_bound(doc: dict[str, Any], factor: int) -> None:
    body = b(doc)
    assert token_bound(body, 100) == (len(body), 100 * factor)


def test_function_tools_add_the_providers_tool_overhead() -> None:
    for tools in (
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
          "properties": {"file_id": {"type": "string"}, "image_url": {"type": "string"}}}}}],
        [{"name": "f", "input_schema": {"type": "object"}}],  # Anthropic
        [{"functionDeclarations": [{"name": "f"}]}],  # Gemini
    ):
        body = b({"model": "m", "messages": TEXT, "tools": tools})
        assert token_bound(body, 10) == (len(body) + TOOL_OVERHEAD_TOKENS, 10)


@pytest.mark.parametrize(("doc", "named"), [
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "https://x/y.png"}}]}]},
     "image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]},
     "image"),
    ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}]},
     "inlineData"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input_file"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                 "input_audio": {"data": "", "format": "wav"}}]}]},
     "input_audio"),
    ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "messages": TEXT, "modalities": ["text", "audio"]}, "modalities"),
    ({"model": "m", "input": "hi", "tools": [{"type": "web_search_preview"}]}, "web_search_preview"),
    ({"model": "m", "messages": TEXT, "tools": [{"type": "web_search_20250305", "name": "web"}]},
     "web_search_20250305"),
    ({"contents": [{"parts": [{"text": "hi"}]}], "tools": [{"googleSearch": {}}]}, "googleSearch"),
    ({"model": "m", "messages": TEXT, "n": 0}, "'n'"),
])
def test_what_bytes_cannot_bound_is_refused_naming_it(doc: dict[str, Any], named: str) -> None:
    with pytest.raises(UnboundedContent, match=named):
        token_bound(b(doc), 10)


@pytest.mark.parametrize(("doc", "named"), [
    ({"model": "m", "messages": TEXT, "web_search_options": {}}, "web_search_options"),
    ({"model": "m", "max_tokens": 5, "messages": TEXT,
      "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}, "mcp_servers"),
    ({"model": "m", "input": "hi", "prompt": {"id": "pmpt_1", "version": "2"}}, "'prompt'"),
    ({"model": "m", "messages": TEXT, "service_tier": "priority"}, "service_tier"),
    ({"model": "m", "input": "hi", "service_tier": "priority"}, "service_tier"),
    # not a string: was a TypeError (unhashable) in the reservation: a 500 "internal gateway error"
    ({"model": "m", "messages": TEXT, "service_tier": ["priority"]}, "service_tier"),
    ({"model": "m", "messages": TEXT, "service_tier": {"tier": "priority"}}, "service_tier"),
    ({"model": "m", "messages": TEXT, "service_tier": 1}, "service_tier"),
])
def test_what_the_provider_adds_to_the_bill_is_refused_naming_it(doc: dict[str, Any], named: str) -> None:
    """Was: bounded by bytes and max_tokens, so reserved as a plain request.  Chat's web
    search (per-call fees, results billed as input), Anthropic's MCP connector (tool results
    as input), a Responses stored prompt (its text as input) and priority processing
    (billed above the price table's rates, with no overrun to show for it) are not in the
    body's bytes: no bound, so a 400 naming the member under a hard limit."""
    with pytest.raises(UnboundedContent, match=named):
        token_bound(b(doc), 10)


def test_an_escaped_key_cannot_hide_an_image() -> None:
    body = (b'{"model":"m","messages":[{"role":"user","content":[{"type":"\\u0069mage_url",'
            b'"\\u0069mage_url":{"url":"https://x/y.png"}}]}]}')
    assert b'"image' not in body
    with pytest.raises(UnboundedContent, match="image_url"):
        token_bound(body, 10)


# -- through the gateway ----------------------------------------------------------------

BODY = b({"model": "gpt-4o-mini", "max_tokens": 50, "messages": TEXT})


def cost(body: bytes, outputs: int = 50, service_tier: str | None = None) -> int:
    """gpt-4o-mini: 150 nano-USD per input token, 600 per output token at the standard
    tier; ``service_tier`` ``"priority"``: 250 / 1,000 (tests.test_managed.GPT_4O_MINI_PRICES)."""
    input_price, output_price = GPT_4O_MINI_PRICES[service_tier]
    return len(body) * input_price + outputs * output_price


def call(url: str, token: str, body: bytes, extra: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
        "authorization": f"Bearer {token}", "content-type": "application/json",
        "x-fake-input-tokens": str(len(body)), "x-fake-output-tokens": "50", **(extra or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


@pytest.fixture
def limited(make_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> Callable[[int], tuple[GatewayProcess, Tenant, str]]:
    def start(limit: int) -> tuple[GatewayProcess, Tenant, str]:
        sqlite_path = str(tmp_path / "plano_config_0.db")
        tenants: list[Tenant] = []
        gateway = make_gateway({"managed": "true", "managed_reload_s": 1}, env=ENV,
                               before_start=lambda: tenants.append(
                                   provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit)))
        return gateway, tenants[0], sqlite_path
    return start


def test_n_and_images_under_a_hard_limit(limited: Callable[[int], tuple[GatewayProcess, Tenant, str]]) -> None:
    gateway, tenant, sqlite_path = limited(3 * cost(BODY))
    four = b({"model": "gpt-4o-mini", "max_tokens": 50, "n": 4, "messages": TEXT})
    status, body, _ = call(gateway.url, tenant.token, four)
    assert status == 402 and body["error"]["code"] == "budget_exceeded"  # 4 x 50 output reserved
    image = b({"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    status, body, _ = call(gateway.url, tenant.token, image)
    assert status == 400 and "image_url" in body["error"]["message"]
    assert call(gateway.url, tenant.token, BODY)[0] == 200
    assert len(rows(sqlite_path)) == 1  # nothing else was forwarded


def test_an_output_ceiling_of_0_is_refused_under_a_hard_limit(
    limited: Callable[[int], tuple[GatewayProcess, Tenant, str]],
) -> None:
    """A ceiling of 0 reserves no output, yet Gemini reads maxOutputTokens 0 as unset (and
    an OpenAI-compatible server may read it as "no limit"): refused, nothing forwarded."""
    gateway, tenant, sqlite_path = limited(3 * cost(BODY))
    for fields in ({"max_tokens": 0}, {"max_completion_tokens": 0}, {"max_tokens": 0, "max_completion_tokens": 0}):
        zero = b({"model": "gpt-4o-mini", "messages": TEXT, **fields})
        status, body, _ = call(gateway.url, tenant.token, zero)
        assert status == 400 and "at least 1" in body["error"]["message"], (fields, status, body)
    assert rows(sqlite_path) == []  # nothing was forwarded
    # the largest ceiling counts: 0 beside 50 reserves 50 output tokens and is served
    status, _, _ = call(gateway.url, tenant.token, b({"model": "gpt-4o-mini", "messages": TEXT,
                                                      "max_tokens": 0, "max_completion_tokens": 50}))
    assert status == 200


def test_a_limit_held_by_in_flight_requests_says_retry(
    limited: Callable[[int], tuple[GatewayProcess, Tenant, str]],
) -> None:
    """Two slow streams hold the whole limit: a third request is told the limit is held,
    with Retry-After; once they settled (spending it), the limit is reached.  No body pins
    its service tier: each is reserved at gpt-4o-mini's dearest listed tier, priority, and
    the streams are answered at it (an OpenAI project set to priority)."""
    from tests.test_billing_faults import ledger

    stream = b({"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
                "messages": [{"role": "user", "content": "slow"}]})
    gateway, tenant, sqlite_path = limited(2 * cost(stream, service_tier="priority") + cost(BODY, service_tier="priority") // 2)
    threads = [start_slow_stream(gateway.url, tenant.token, events=30, interval_ms=50,
                                 extra={"x-fake-service-tier": "priority"})
               for _ in range(2)]
    wait_until(lambda: ledger(None, sqlite_path)["open"] == 2, 10, "two reservations")
    status, body, headers = call(gateway.url, tenant.token, BODY)
    assert status == 402 and body["error"]["code"] == "budget_held_by_in_flight", body
    assert headers["retry-after"] == "1"
    for thread, _ in threads:
        thread.join(20)
    wait_until(lambda: ledger(None, sqlite_path)["open"] == 0, 10, "settled")
    status, body, headers = call(gateway.url, tenant.token, BODY)
    assert status == 402 and body["error"]["code"] == "budget_exceeded"
    assert "retry-after" not in headers


N3_STREAM = b({"model": "gpt-4o-mini", "max_tokens": 50, "n": 3, "stream": True, "messages": TEXT})
TOOLS = b({"model": "gpt-4o-mini", "max_tokens": 50, "messages": TEXT, "tools": [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]})


@pytest.mark.parametrize(("body", "input_tokens", "output_tokens"), [
    (N3_STREAM, len(N3_STREAM), 150),  # the provider bills all three choices
    (TOOLS, len(TOOLS) + TOOL_OVERHEAD_TOKENS, 50),  # and its tool preamble
], ids=["n3-stream", "tools"])
def test_no_overshoot_with_n_and_tools_over_4_processes(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str, body: bytes, input_tokens: int,
    output_tokens: int,
) -> None:
    """400 concurrent requests over 4 processes, each billed at its worst case by the
    provider: spend never passes the limit (before the bound counted n and tools, n=3
    spent ~3x the limit)."""
    import aiohttp

    one = input_tokens * 150 + output_tokens * 600
    limit = 20 * one
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "database_url": f'"{pg_dsn}"', "managed_reload_s": 1},
        env=ENV, workers=4,
        before_start=lambda: tenants.append(provision(pg_dsn, "", DEFAULT_PIPE, limit_nano_usd=limit)),
    )
    headers = {"authorization": f"Bearer {tenants[0].token}", "content-type": "application/json",
               "x-fake-input-tokens": str(input_tokens), "x-fake-output-tokens": str(output_tokens)}

    async def fire() -> list[int]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session:
            async def post() -> int:
                async with session.post(gateway.url + "/v1/chat/completions", data=body,
                                        headers=headers) as resp:
                    await resp.read()
                    return resp.status
            return list(await asyncio.gather(*(post() for _ in range(400))))

    statuses = asyncio.run(fire())
    assert set(statuses) <= {200, 402}, sorted(set(statuses))
    recorded = [r for r in rows("", pg_dsn) if r.project_id == tenants[0].project_id]
    spent = sum(r.cost_nano_usd or 0 for r in recorded)
    print(f"served {statuses.count(200)} of 400, spent {spent} of limit {limit} (one = {one})")
    assert len(recorded) == statuses.count(200) > 0
    assert spent <= limit


def test_a_model_that_searches_on_every_call_is_refused_under_a_hard_limit(
    limited: Callable[[int], tuple[GatewayProcess, Tenant, str]], fake: FakeProviderThread
) -> None:
    """Was: ``gpt-4o-mini-search-preview`` (the pipe's ``gpt-4o-mini*`` filter lets it
    through) was reserved and settled at its token prices only, while OpenAI bills each call
    a search fee ($25 per 1,000 calls: ~3,000 times a short request's tokens), so a tenant
    could spend far past its hard limit with nothing on its rows.  Now a 400 naming the
    model, nothing forwarded; the plain model is served as before."""
    gateway, tenant, _ = limited(10**9)
    fake.clear()
    body = b({"model": "gpt-4o-mini-search-preview", "max_tokens": 50, "messages": TEXT})
    status, answer, _ = call(gateway.url, tenant.token, body)
    assert status == 400 and "searches the web on every call" in answer["error"]["message"], answer
    assert [r for r in fake.requests if not r.path.startswith("/_fake")] == []
    status, answer, _ = call(gateway.url, tenant.token, BODY)
    assert status == 200, answer
