"""Service tiers: a request is billed at the tier its response says served it.

Sources (each case below cites its own):

* OpenAI: the request's ``service_tier`` (``auto`` / ``default`` / ``flex`` / ``priority``)
  asks; "when the service_tier parameter is set, the response body will include the
  service_tier value based on the processing mode actually used to serve the request. This
  response value may be different from the value set in the parameter"
  (openai-python ``types/chat/chat_completion.py`` / ``chat_completion_chunk.py``
  ``service_tier``, ``types/responses/response.py`` ``service_tier``).  Chat answers carry it
  at the top level (every chunk of a stream), Responses in the response object (the
  ``response`` of ``response.completed``).  Prices (https://platform.openai.com/docs/pricing,
  "Flex" / "Standard" / "Priority"; the bundled table takes them from Portkey's
  ``execution_modes`` and LiteLLM's ``*_flex`` / ``*_priority`` fields): gpt-5 $1.25 in /
  $0.125 cached / $10 out per 1M standard, $0.625 / $0.0625 / $5 flex, $2.50 / $0.25 / $20
  priority.
* The recorded Responses stream ``tests/data/fixtures/pydantic-ai/
  test_openai_responses_streaming_usage.yaml`` asked for ``flex`` and was served at it
  (``"service_tier":"flex"`` in ``response.completed``): billed at standard rates before,
  twice what OpenAI charged.
* Anthropic (https://platform.claude.com/docs/en/api/service-tiers): "The usage object in the
  response also includes the service tier assigned to the request" (``standard``,
  ``priority``, ``batch``).  Priority Tier is a capacity commitment with no list price: such
  a row is priced at the standard rates and marked ``priced_partial`` (visible, fixable by a
  custom price), as is any tier a price entry does not list.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from plano_fast.billing.rows import quote_usage
from plano_fast.pricing import ModelPrice, PricingRegistry, TokenCounts
from plano_fast.store.records import UsageRow
from tests.test_billing_drain_twins import MODULES, TABLE, _agree, _event
from tests.test_scan import ANTHROPIC, CHAT, GEMINI, IMPLEMENTATIONS, RESPONSES, U, check_all_splits
from tests.test_scan_fixtures import _cassette, _response

RECORDED_FLEX = _response(_cassette("test_openai_responses_streaming_usage.yaml")[0])[1]


@pytest.fixture(params=IMPLEMENTATIONS)
def scan(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def chat_answer(tier: str, usage: str = '{"prompt_tokens":1000,"completion_tokens":100,'
          '"prompt_tokens_details":{"cached_tokens":800}}') -> bytes:
    """An OpenAI chat completion (openai-python ChatCompletion: ``service_tier`` beside ``usage``)."""
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-5-2025-08-07",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
        b'"service_tier":' + tier.encode() + b',"usage":' + usage.encode() + b"}"
    )


# a chat stream with include_usage: every chunk names the tier, the usage chunk too
CHAT_FLEX_STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-5-2025-08-07",'
    b'"service_tier":"flex","choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-5-2025-08-07",'
    b'"service_tier":"flex","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-5-2025-08-07",'
    b'"service_tier":"flex","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27}}\n\n'
    b"data: [DONE]\n\n"
)
# Responses, not streamed: the response object itself
RESPONSES_PRIORITY = (
    b'{"id":"resp_1","object":"response","status":"completed","model":"gpt-5-2025-08-07","output":[],'
    b'"usage":{"input_tokens":53,"input_tokens_details":{"cached_tokens":0},"output_tokens":469,'
    b'"output_tokens_details":{"reasoning_tokens":448},"total_tokens":522},"service_tier":"priority"}'
)
ANTHROPIC_PRIORITY = (
    b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],'
    b'"stop_reason":"end_turn","usage":{"input_tokens":100,"output_tokens":20,"service_tier":"priority"}}'
)
ANTHROPIC_PRIORITY_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,'
    b'"usage":{"input_tokens":100,"output_tokens":1,"service_tier":"priority"}}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":20}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)

GPT5 = "gpt-5-2025-08-07"
SONNET = "claude-sonnet-4-5-20250929"
CASES: list[tuple[str, int, bool, bytes, tuple[Any, ...]]] = [
    ("responses-sse-recorded-flex", RESPONSES, True, RECORDED_FLEX,
     U(53, 469, 0, 0, 448, model=GPT5, service_tier="flex")),
    ("responses-json-priority", RESPONSES, False, RESPONSES_PRIORITY,
     U(53, 469, 0, 0, 448, model=GPT5, service_tier="priority")),
    ("chat-json-priority", CHAT, False, chat_answer('"priority"'), U(1000, 100, 800, model=GPT5, service_tier="priority")),
    ("chat-json-flex", CHAT, False, chat_answer('"flex"'), U(1000, 100, 800, model=GPT5, service_tier="flex")),
    ("chat-sse-flex", CHAT, True, CHAT_FLEX_STREAM, U(20, 7, model=GPT5, service_tier="flex")),
    # the standard tier by each provider's name: no tier of its own
    ("chat-json-default", CHAT, False, chat_answer('"default"'), U(1000, 100, 800, model=GPT5)),
    ("chat-json-auto", CHAT, False, chat_answer('"auto"'), U(1000, 100, 800, model=GPT5)),
    ("chat-json-groq-on-demand", CHAT, False, chat_answer('"on_demand"'), U(1000, 100, 800, model=GPT5)),
    # a tier the gateway knows no rule for: named, so it is priced partial, never silently
    ("chat-json-scale", CHAT, False, chat_answer('"scale"'), U(1000, 100, 800, model=GPT5, service_tier="unknown")),
    ("chat-json-long-name", CHAT, False, chat_answer('"' + "p" * 40 + '"'), U(1000, 100, 800, model=GPT5,
                                                                          service_tier="unknown")),
    # not a string: not a tier; escapes decode; the last duplicate wins
    ("chat-json-tier-number", CHAT, False, chat_answer("2"), U(1000, 100, 800, model=GPT5)),
    ("chat-json-tier-null", CHAT, False, chat_answer("null"), U(1000, 100, 800, model=GPT5)),
    ("chat-json-tier-object", CHAT, False, chat_answer('{"flex":1}'), U(1000, 100, 800, model=GPT5)),
    ("chat-json-tier-escaped", CHAT, False, chat_answer('"fl\\u0065x"'), U(1000, 100, 800, model=GPT5, service_tier="flex")),
    ("chat-json-tier-duplicate", CHAT, False, chat_answer('"priority","service_tier":"flex"'),
     U(1000, 100, 800, model=GPT5, service_tier="flex")),
    # the tier travels with the usage object it came with: a later chunk without usage does
    # not change it
    ("chat-sse-tier-after-usage", CHAT, True,
     CHAT_FLEX_STREAM.replace(b"data: [DONE]", b'data: {"choices":[],"service_tier":"priority"}\n\ndata: [DONE]'),
     U(20, 7, model=GPT5, service_tier="flex")),
    # Groq without include_usage: x_groq.usage, the chunk's own tier
    ("chat-json-x-groq", CHAT, False,
     b'{"model":"llama","service_tier":"flex","x_groq":{"usage":{"prompt_tokens":5,"completion_tokens":2}}}',
     U(5, 2, model="llama", service_tier="flex")),
    # Responses: the nested response's tier, not a stray top-level one of another document
    ("responses-sse-nested", RESPONSES, True,
     b'data: {"type":"response.completed","response":{"model":"gpt-5","service_tier":"priority",'
     b'"usage":{"input_tokens":5,"output_tokens":2}}}\n\n',
     U(5, 2, model="gpt-5", service_tier="priority")),
    # Anthropic: usage.service_tier, merged like every usage field (later values win when present)
    ("anthropic-json-priority", ANTHROPIC, False, ANTHROPIC_PRIORITY,
     U(100, 20, model=SONNET, service_tier="priority")),
    ("anthropic-sse-priority", ANTHROPIC, True, ANTHROPIC_PRIORITY_STREAM,
     U(100, 20, model=SONNET, service_tier="priority")),
    ("anthropic-json-standard", ANTHROPIC, False, ANTHROPIC_PRIORITY.replace(b'"priority"', b'"standard"'),
     U(100, 20, model=SONNET)),
    ("anthropic-json-batch", ANTHROPIC, False, ANTHROPIC_PRIORITY.replace(b'"priority"', b'"batch"'),
     U(100, 20, model=SONNET, service_tier="unknown")),
    ("anthropic-sse-delta-standard", ANTHROPIC, True,
     ANTHROPIC_PRIORITY_STREAM.replace(b'{"output_tokens":20}', b'{"output_tokens":20,"service_tier":"standard"}'),
     U(100, 20, model=SONNET)),
    # an Anthropic top-level tier is no usage field; a Gemini answer has none
    ("anthropic-top-level-not-read", ANTHROPIC, False,
     b'{"service_tier":"priority","usage":{"input_tokens":100,"output_tokens":20}}', U(100, 20)),
    ("gemini-not-read", GEMINI, False,
     b'{"service_tier":"flex","usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"service_tier":"flex"}}',
     U(5, 2)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "api", "streaming", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_served_tier_is_read(scan: ModuleType, name: str, api: int, streaming: bool, body: bytes,
                                 expected: tuple[Any, ...]) -> None:  # fmt: skip
    check_all_splits(scan, api, streaming, body, expected)


def _raw(scan: ModuleType, api: int, streaming: bool, body: bytes) -> bytes | None:
    scanner = scan.UsageScanner(api, streaming)
    scanner.feed(body)
    scanner.finish()
    raw: bytes | None = scanner.raw_usage()
    return raw


def test_the_kept_usage_document_names_the_tier(scan: ModuleType) -> None:
    """The row keeps the tier where a rescan (late pricing, ``usage reprice``) reads it: in
    OpenAI's document beside the usage object; Anthropic's is inside its usage object."""
    usage = b'{"prompt_tokens":1000,"completion_tokens":100,"prompt_tokens_details":{"cached_tokens":800}}'
    assert _raw(scan, CHAT, False, chat_answer('"priority"')) == b'{"service_tier":"priority","usage":' + usage + b"}"
    assert _raw(scan, CHAT, False, chat_answer('"default"')) == b'{"usage":' + usage + b"}"
    assert _raw(scan, CHAT, False, chat_answer('"scale"')) == b'{"service_tier":"unknown","usage":' + usage + b"}"
    raw = _raw(scan, RESPONSES, True, RECORDED_FLEX)
    assert raw is not None and raw.startswith(b'{"service_tier":"flex","usage":{"input_tokens":53,')
    assert _raw(scan, ANTHROPIC, False, ANTHROPIC_PRIORITY) == (
        b'[{"usage":{"input_tokens":100,"output_tokens":20,"service_tier":"priority"}}]'
    )


# ------------------------------------------------------------------------------- pricing


def _quote(model: str, provider: str, tokens: TokenCounts, tier: str | None) -> tuple[int, bool, str]:
    quote = PricingRegistry().quote(provider, model, None, tokens, service_tier=tier)
    assert quote is not None
    return quote.cost_nano_usd, quote.partial, quote.entry


def test_the_bundled_table_lists_openais_tier_prices() -> None:
    gpt5 = dict(TABLE["openai", "gpt-5"].service_tiers)
    assert (gpt5["flex"].input_per_mtok, gpt5["flex"].cache_read_per_mtok, gpt5["flex"].output_per_mtok) == (
        625_000_000, 62_500_000, 5_000_000_000)
    assert (gpt5["priority"].input_per_mtok, gpt5["priority"].cache_read_per_mtok,
            gpt5["priority"].output_per_mtok) == (2_500_000_000, 250_000_000, 20_000_000_000)  # fmt: skip


def test_a_tier_is_priced_at_its_own_rates() -> None:
    recorded = TokenCounts(53, 469, 0, 0, 448)
    # the recorded flex stream: 53 x $0.625 + 469 x $5 per 1M (4,756,250 at standard rates)
    assert _quote(GPT5, "openai", recorded, "flex") == (53 * 625 + 469 * 5_000, False, "openai/gpt-5-2025-08-07@flex")
    assert _quote(GPT5, "openai", recorded, "flex")[0] == 2_378_125
    # priority: 53 x $2.50 + 469 x $20 per 1M
    assert _quote(GPT5, "openai", recorded, "priority") == (53 * 2_500 + 469 * 20_000, False, "openai/gpt-5-2025-08-07@priority")
    # cache reads at the tier's cache price: 200 x $2.50 + 800 x $0.25 + 100 x $20 per 1M
    cached = TokenCounts(1000, 100, 800, 0, 0)
    assert _quote(GPT5, "openai", cached, "priority") == (2_700_000, False, "openai/gpt-5-2025-08-07@priority")
    assert _quote(GPT5, "openai", cached, None) == (200 * 1_250 + 800 * 125 + 100 * 10_000, False, "openai/gpt-5-2025-08-07")


def test_a_tier_without_a_listed_price_is_standard_and_partial() -> None:
    tokens = TokenCounts(100, 20, 0, 0, 0)
    standard = 100 * 3_000 + 20 * 15_000  # claude-sonnet-4-5: $3 in, $15 out per 1M
    # Anthropic Priority Tier: a commitment, no list price
    assert _quote(SONNET, "anthropic", tokens, "priority") == (standard, True, "anthropic/claude-sonnet-4-5-20250929")
    assert _quote(SONNET, "anthropic", tokens, "unknown") == (standard, True, "anthropic/claude-sonnet-4-5-20250929")
    assert _quote(SONNET, "anthropic", tokens, None) == (standard, False, "anthropic/claude-sonnet-4-5-20250929")
    # a custom price has no tier prices
    registry = PricingRegistry()
    registry.set_overrides({"gpt-5": ModelPrice(1_000_000_000, 8_000_000_000, None, None, source="custom")}, {})
    quote = registry.quote("openai", GPT5, None, TokenCounts(1000, 100, 0, 0, 0), service_tier="flex")
    assert quote is not None and (quote.cost_nano_usd, quote.partial, quote.entry) == (
        1000 * 1_000 + 100 * 8_000, True, "custom")


@pytest.mark.parametrize("tier", ["flex", "priority", "unknown"])
def test_the_drain_twins_price_every_vendored_entry_at_each_tier(tier: str) -> None:
    pricing = PricingRegistry()
    listed = 0
    for provider, model in TABLE:
        event = _event(provider, model, (250_000, 4_000, 64_000, 10_000, 2_000, 0, 0, 0))
        event.service_tier = tier
        quote = pricing.quote(provider, model, "p1", TokenCounts(250_000, 4_000, 64_000, 10_000, 0, 2_000),
                              service_tier=tier)  # fmt: skip
        assert quote is not None
        assert _agree(pricing, event) == (quote.cost_nano_usd, quote.partial, quote.entry), (provider, model)
        listed += quote.entry.endswith("@" + tier)
    # (the table lists flex for 35 entries, priority for 69; "unknown" for none)
    assert (listed > 30) if tier != "unknown" else (listed == 0)
    assert len(MODULES) >= 1


def test_the_flushers_rows_are_priced_at_the_tier() -> None:
    """The drain's one pass over a slice of events (its inlined fast path) prices a tier's
    event at the tier, as the registry does, in both twins."""
    import collections

    pricing = PricingRegistry()
    events = []
    for tier in (None, "flex", "priority", None, "unknown"):
        event = _event("openai", GPT5, (53, 469, 0, 0, 0, 0, 0, 0))
        event.service_tier = tier
        events.append(event)
    want = [(53 * 1_250 + 469 * 10_000, "priced", "openai/gpt-5-2025-08-07"),
            (2_378_125, "priced", "openai/gpt-5-2025-08-07@flex"),
            (53 * 2_500 + 469 * 20_000, "priced", "openai/gpt-5-2025-08-07@priority"),
            (53 * 1_250 + 469 * 10_000, "priced", "openai/gpt-5-2025-08-07"),
            (53 * 1_250 + 469 * 10_000, "priced_partial", "openai/gpt-5-2025-08-07")]  # fmt: skip
    for module in MODULES:
        rows: collections.deque[UsageRow] = collections.deque()
        assert module.rows_of_events(pricing, events, rows) == 0
        assert [(r.cost_nano_usd, r.price_status, r.price_entry) for r in rows] == want, module


def test_a_stored_row_is_priced_at_its_kept_tier() -> None:
    """Late pricing and ``usage reprice`` read the tier back from the kept usage document."""
    row = UsageRow(
        request_id="r", time_ns=1, project_id=None, user_id=None, key_hash=None, token_id=None,
        provider="openai", model=GPT5, input_tokens=53, output_tokens=469, cache_read_tokens=0,
        cache_write_tokens=0, reasoning_tokens=448, streaming=True, status="ok", http_status=200,
        priced=False, cost_nano_usd=None, usage_api="openai_responses",
        usage_raw='{"service_tier":"flex","usage":{"input_tokens":53,"output_tokens":469,'
                  '"output_tokens_details":{"reasoning_tokens":448}}}',
    )  # fmt: skip
    quote = quote_usage(PricingRegistry(), row, GPT5)
    assert quote is not None and (quote.cost_nano_usd, quote.entry) == (2_378_125, "openai/gpt-5-2025-08-07@flex")
