"""Pricing: exact integer costs, override precedence, model-name matching, table build."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from plano_fast.pricing import (
    ModelPrice,
    PriceTier,
    PricingRegistry,
    TokenCounts,
    cost_nano_usd as _cost_nano_usd,
    load_default_prices,
    price_tokens,
)
from tests.shared_data import PRICING

ROOT = Path(__file__).resolve().parents[1]
DATA = PRICING  # tests/data/pricing: the datasets the table is built from, vendored
TABLE = ROOT / "plano_fast" / "data" / "prices.json"

USD = 1_000_000_000  # nano-USD per USD
LLAMA_TOGETHER = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
SONNET_45_DATED = "claude-sonnet-4-5-20250929"


def cost_nano_usd(price: ModelPrice, provider: str, tokens: TokenCounts) -> int:
    """The price of row-convention counts (one formula whatever the provider)."""
    del provider
    return _cost_nano_usd(price, tokens)


def tok(i: int = 0, o: int = 0, cr: int = 0, cw: int = 0, r: int = 0) -> TokenCounts:
    return TokenCounts(
        input_tokens=i,
        output_tokens=o,
        cache_read_tokens=cr,
        cache_write_tokens=cw,
        reasoning_tokens=r,
    )


@pytest.fixture(scope="module")
def reg() -> PricingRegistry:
    return PricingRegistry()


# --------------------------------------------------------------------------- exact costs


def test_openai_gpt4o_mini_with_cached_tokens(reg: PricingRegistry) -> None:
    # Published gpt-4o-mini prices: $0.15 / 1M input, $0.075 / 1M cached input, $0.60 / 1M output
    # = 150_000_000 / 75_000_000 / 600_000_000 nano-USD per 1M tokens.
    price = reg.price_for("openai", "gpt-4o-mini-2024-07-18", None)
    assert price is not None
    assert (price.input_per_mtok, price.cache_read_per_mtok, price.output_per_mtok) == (
        150_000_000,
        75_000_000,
        600_000_000,
    )
    # Recorded cache hit (WIRE_FORMATS 3.3): prompt_tokens 4020 (includes cached 4012), completion 4.
    #   uncached (4020 - 4012) =    8 * 150_000_000 =       1_200_000_000
    #   cached              4012 *  75_000_000      =     300_900_000_000
    #   output                 4 * 600_000_000      =       2_400_000_000
    #   sum = 304_500_000_000 / 1_000_000 = 304_500 nano-USD ($0.0003045)
    t = tok(i=4020, o=4, cr=4012)
    assert reg.cost_nano_usd("openai", "gpt-4o-mini-2024-07-18", None, t) == 304_500


def test_openai_reasoning_models_do_not_add_reasoning_twice(reg: PricingRegistry) -> None:
    # o3-mini: $1.10 in / $0.55 cached / $4.40 out per 1M.
    # Responses usage (recorded shape): input 53, output 469 of which reasoning 448.
    #   53 * 1_100_000_000 =    58_300_000_000
    #  469 * 4_400_000_000 = 2_063_600_000_000   (reasoning is inside output_tokens)
    #   sum = 2_121_900_000_000 / 1e6 = 2_121_900 nano-USD
    assert reg.cost_nano_usd("openai", "o3-mini", None, tok(i=53, o=469, r=448)) == 2_121_900
    # gpt-5 (dated id): $1.25 in / $0.125 cached / $10 out per 1M.
    # input 1000 incl. 200 cached, output 3000 incl. 2500 reasoning:
    #   800 * 1_250_000_000  =  1_000_000_000_000
    #   200 *   125_000_000  =     25_000_000_000
    #  3000 * 10_000_000_000 = 30_000_000_000_000
    #   sum = 31_025_000_000_000 / 1e6 = 31_025_000 nano-USD ($0.031025)
    t = tok(i=1000, o=3000, cr=200, r=2500)
    assert reg.cost_nano_usd("openai", "gpt-5-2025-08-07", None, t) == 31_025_000


def test_anthropic_sonnet_45_cache_reads_and_writes(reg: PricingRegistry) -> None:
    # claude-sonnet-4-5: $3 in / $15 out / $0.30 cache read / $3.75 cache write (5 min) per 1M.
    # Anthropic input_tokens 100 excludes cache reads and writes; the row's input is all
    # of them: 100 + 5000 + 2000 = 7100.
    #   uncached     100 *  3_000_000_000 =    300_000_000_000
    #   cache write 2000 *  3_750_000_000 =  7_500_000_000_000
    #   cache read  5000 *    300_000_000 =  1_500_000_000_000
    #   output       700 * 15_000_000_000 = 10_500_000_000_000
    #   sum = 19_800_000_000_000 / 1e6 = 19_800_000 nano-USD ($0.0198)
    t = tok(i=7100, o=700, cr=5000, cw=2000)
    for model in ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"):
        assert reg.cost_nano_usd("anthropic", model, None, t) == 19_800_000


def test_anthropic_long_context_tier(reg: PricingRegistry) -> None:
    # Prompt = input (all prompt tokens). > 200_000 -> $6 / $22.5 / $0.60 / $7.50.
    #   150_000 * 6_000_000_000  = 900_000_000_000_000
    #    60_000 *   600_000_000  =  36_000_000_000_000
    #     1_000 * 22_500_000_000 =  22_500_000_000_000
    #   sum = 958_500_000_000_000 / 1e6 = 958_500_000 nano-USD
    cost = reg.cost_nano_usd("anthropic", "claude-sonnet-4-5", None, tok(210_000, 1000, 60_000))
    assert cost == 958_500_000
    # Exactly 200_000 is not above the threshold: base prices.
    #   140_000 * 3e9 + 60_000 * 3e8 + 1000 * 15e9 = 453_000_000_000_000 / 1e6 = 453_000_000
    cost = reg.cost_nano_usd("anthropic", "claude-sonnet-4-5", None, tok(200_000, 1000, 60_000))
    assert cost == 453_000_000


def test_long_context_tier_prices_its_1h_writes(reg: PricingRegistry) -> None:
    # Anthropic pricing, "Long context pricing": above 200k prompt tokens Sonnet 4.5 costs
    # $6 in / $22.50 out, and the prompt-caching multipliers apply to those rates: 5-minute
    # writes 1.25x ($7.50), 1-hour writes 2x ($12), reads 0.1x ($0.60) -- genai-prices and
    # LiteLLM list the tier's 1h write at $12 ($6 at most 200k).
    # Row: 250_000 prompt = 150_000 uncached + 60_000 read + 40_000 written (30_000 for 1h).
    t = TokenCounts(250_000, 1000, 60_000, 40_000, 0, cache_write_1h_tokens=30_000)
    for model in ("claude-sonnet-4-5", SONNET_45_DATED):
        q = reg.quote("anthropic", model, None, t)
        expected = 150_000 * 6_000 + 60_000 * 600 + 10_000 * 7_500 + 30_000 * 12_000 + 1000 * 22_500
        assert q is not None and (q.cost_nano_usd, q.partial) == (expected, False), model
    # a tier that lists no 1h price: the tier's write price (never the base's $6), partial
    price = ModelPrice(3_000_000_000, 15_000_000_000, 300_000_000, 3_750_000_000,
                       (PriceTier(200_000, 6_000_000_000, 22_500_000_000, 600_000_000, 7_500_000_000),),
                       cache_write_1h_per_mtok=6_000_000_000)  # fmt: skip
    expected = 150_000 * 6_000 + 60_000 * 600 + 40_000 * 7_500 + 1000 * 22_500
    assert price_tokens(price, 250_000, 1000, 60_000, 40_000, 30_000) == (expected, True)
    # audio has tier prices too when listed
    price = ModelPrice(1_000, 2_000, None, None, (PriceTier(10, 3_000, 4_000, None, None, None, 5_000, 6_000),),
                       audio_input_per_mtok=7_000, audio_output_per_mtok=8_000)  # fmt: skip
    assert price_tokens(price, 1_000_000, 1_000_000, 0, 0, 0, 400_000, 500_000) == (
        (600_000 * 3_000 + 400_000 * 5_000 + 500_000 * 4_000 + 500_000 * 6_000) // 1_000_000, False)


def test_anthropic_web_searches_are_priced_per_request(reg: PricingRegistry) -> None:
    # Anthropic web search tool: "$10 per 1,000 searches plus standard token costs"
    # (genai-prices web_searches_kcount 10; LiteLLM search_context_cost_per_query 0.01):
    # 10_000_000 nano-USD a search, whatever the prompt's tier.
    t = TokenCounts(1000, 100, 0, 0, 0, web_search_requests=3)
    for model in ("claude-sonnet-4-5", SONNET_45_DATED, "claude-haiku-4-5", "claude-opus-4-6"):
        q = reg.quote("anthropic", model, None, t)
        plain = reg.quote("anthropic", model, None, TokenCounts(1000, 100, 0, 0, 0))
        assert q is not None and plain is not None, model
        assert (q.cost_nano_usd - plain.cost_nano_usd, q.partial) == (3 * 10_000_000, False), model
    long = reg.quote("anthropic", "claude-sonnet-4-5", None, TokenCounts(250_000, 0, 0, 0, 0, web_search_requests=1))
    assert long is not None and long.cost_nano_usd == 250_000 * 6_000 + 10_000_000
    # a price without one: the searches add nothing and the quote is partial (never silent)
    price = ModelPrice(1_000_000, 2_000_000, None, None)
    assert price_tokens(price, 10, 5, 0, 0, 0, 0, 0, 2) == (20, True)
    assert price_tokens(replace(price, web_search_per_request=7), 10, 5, 0, 0, 0, 0, 0, 2) == (34, False)


def test_gemini_25_flash_cached_and_thoughts(reg: PricingRegistry) -> None:
    # gemini-2.5-flash: $0.30 in / $0.03 cached / $2.50 out (thinking included) per 1M.
    # Recorded usageMetadata (WIRE_FORMATS 6.2): promptTokenCount 17713 (includes cached
    # 17379), candidatesTokenCount 68 (excludes thoughts), thoughtsTokenCount 821.
    #   uncached (17713 - 17379) = 334 *   300_000_000 =   100_200_000_000
    #   cached 17379                   *    30_000_000 =   521_370_000_000
    #   output (68 + 821) = 889        * 2_500_000_000 = 2_222_500_000_000
    #   sum = 2_844_070_000_000 / 1e6 = 2_844_070 nano-USD
    t = tok(i=17713, o=68 + 821, cr=17379, r=821)  # the row: output includes thoughts
    assert reg.cost_nano_usd("gemini", "models/gemini-2.5-flash", None, t) == 2_844_070
    assert reg.cost_nano_usd("google", "gemini-2.5-flash", None, t) == 2_844_070


def test_gemini_25_pro_context_tier(reg: PricingRegistry) -> None:
    # gemini-2.5-pro: <= 200k prompt $1.25 / $10; > 200k $2.50 / $15 per 1M.
    # 250_000 * 2_500_000_000 + 1000 * 15_000_000_000 = 640_000_000_000_000 / 1e6 = 640_000_000
    assert reg.cost_nano_usd("gemini", "gemini-2.5-pro", None, tok(250_000, 1000)) == 640_000_000
    # 100_000 * 1_250_000_000 + 1000 * 10_000_000_000 = 135_000_000_000_000 / 1e6 = 135_000_000
    assert reg.cost_nano_usd("gemini", "gemini-2.5-pro", None, tok(100_000, 1000)) == 135_000_000


def test_one_formula_for_every_provider() -> None:
    p = ModelPrice(1_000_000, 2_000_000, None, None)  # 1 / 2 nano-USD per token
    t = tok(i=10, o=5, r=3)
    for provider in ("openai", "xai", "gemini", "anthropic", "deepseek"):
        assert cost_nano_usd(p, provider, t) == 10 + 10  # reasoning is inside output


def test_missing_cache_prices_fall_back_to_input_price() -> None:
    p = ModelPrice(1_000_000, 2_000_000, None, None)
    # cached 4 of 10 still at the input price: 10 * 1 + 1 * 2 = 12
    assert cost_nano_usd(p, "openai", tok(i=10, o=1, cr=4)) == 12
    # 3 uncached + 4 read + 5 written, all input-priced: 12 * 1 = 12
    assert cost_nano_usd(p, "anthropic", tok(i=12, cr=4, cw=5)) == 12
    # OpenAI cache writes (subset of prompt) with a listed write price:
    q = ModelPrice(1_000_000, 0, 100_000_000, 1_250_000)
    # uncached (100 - 20 - 40) = 40 * 1 + 20 * 100 + 40 * 1.25 = 40 + 2000 + 50 = 2090
    assert cost_nano_usd(q, "openai", tok(i=100, cr=20, cw=40)) == 2090


def test_malformed_counts_never_go_negative() -> None:
    p = ModelPrice(1_000_000, 1_000_000, 500_000, None)
    # cache_read > input: a part never exceeds its total: 10 read * 0.5 = 5, uncached 0
    assert cost_nano_usd(p, "openai", tok(i=10, cr=20)) == 5
    # output < audio output: the same
    q = ModelPrice(0, 1_000_000, None, None, audio_output_per_mtok=3_000_000)
    assert _cost_nano_usd(q, TokenCounts(0, 2, 0, 0, 0, audio_output_tokens=5)) == 6


# ------------------------------------------------------------------------ integer only


def test_rounding_half_up_once_at_the_end() -> None:
    p = ModelPrice(1, 1, None, None)  # 1 nano-USD per 1M tokens
    assert cost_nano_usd(p, "openai", tok(i=499_999)) == 0
    assert cost_nano_usd(p, "openai", tok(i=500_000)) == 1  # exactly half: up
    assert cost_nano_usd(p, "openai", tok(i=1_499_999)) == 1
    # summed before rounding: 300_000 + 300_000 = 600_000 -> 1 (not 0 + 0)
    assert cost_nano_usd(p, "openai", tok(i=300_000, o=300_000)) == 1
    # deepseek-style cache price 2_800_000 / 1M: 1 token = 2.8 nano-USD -> 3
    q = ModelPrice(140_000_000, 280_000_000, 2_800_000, None)
    assert cost_nano_usd(q, "deepseek", tok(i=1, cr=1)) == 3


def test_big_counts_are_exact_integers(reg: PricingRegistry) -> None:
    # 10^9 tokens of gpt-4o-mini: 6e8 uncached * $0.15/M = $90; 4e8 cached * $0.075/M = $30;
    # 1e9 output * $0.60/M = $600 -> $720 = 720_000_000_000 nano-USD.
    t = tok(i=10**9, o=10**9, cr=4 * 10**8, r=10**9)
    cost = reg.cost_nano_usd("openai", "gpt-4o-mini", None, t)
    assert isinstance(cost, int) and cost == 720 * USD
    # Odd prices and counts beyond float precision: compare with exact rational arithmetic.
    p = ModelPrice(123_456_789_123, 987_654_321_987, 12_345_678_901, 155_555_555_557)
    t = tok(i=10**9 + 7, o=10**9 + 11, cr=3 * 10**8 + 1, cw=10**8 + 3, r=5)
    exact = Fraction(
        (10**9 + 7 - (3 * 10**8 + 1) - (10**8 + 3)) * 123_456_789_123
        + (3 * 10**8 + 1) * 12_345_678_901
        + (10**8 + 3) * 155_555_555_557
        + (10**9 + 11) * 987_654_321_987,
        1_000_000,
    )
    expected = int(exact + Fraction(1, 2))  # round half up (all values positive)
    result = cost_nano_usd(p, "openai", t)
    assert type(result) is int and result == expected
    # The integer sum before the final division (~1e21) is far beyond the 2**53 a float holds
    # exactly, so any float on the way would have shown up as a mismatch.
    assert exact * 1_000_000 > 2**53


def test_floats_are_rejected() -> None:
    with pytest.raises(TypeError):
        ModelPrice(0.15, 600_000_000, None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TokenCounts(1.0, 0, 0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TokenCounts(-1, 0, 0, 0, 0)
    with pytest.raises(TypeError):
        ModelPrice(True, 1, None, None)


def test_every_bundled_price_is_an_int() -> None:
    table = load_default_prices()
    assert len(table) > 500
    for price in table.values():
        assert type(price.input_per_mtok) is int and type(price.output_per_mtok) is int
        for v in (price.cache_read_per_mtok, price.cache_write_per_mtok):
            assert v is None or type(v) is int
        for tier in price.tiers:
            assert type(tier.input_per_mtok) is int and type(tier.output_per_mtok) is int
    providers = {p for p, _ in table}
    for expected in (
        "openai", "anthropic", "gemini", "deepseek", "mistral", "groq", "qwen", "together",
        "fireworks", "perplexity", "cerebras", "xai", "openrouter", "moonshotai", "zhipu",
    ):  # fmt: skip
        assert expected in providers
    # A fresh dict each call: callers may mutate their copy.
    table.clear()
    assert len(load_default_prices()) > 500


# --------------------------------------------------------------------------- precedence


def test_override_precedence() -> None:
    default = ModelPrice(1_000_000, 1_000_000, None, None, source="default")
    glob = ModelPrice(2_000_000, 2_000_000, None, None, source="global")
    proj = ModelPrice(3_000_000, 3_000_000, None, None, source="project")
    reg = PricingRegistry({("openai", "gpt-4o"): default})
    assert reg.price_for("openai", "gpt-4o", "p1") is default
    reg.set_overrides({"gpt-4o": glob}, {("p1", "gpt-4o"): proj})
    assert reg.price_for("openai", "gpt-4o", "p1") is proj  # project beats global
    assert reg.price_for("openai", "gpt-4o", "p2") is glob  # another project: global
    assert reg.price_for("openai", "gpt-4o", None) is glob
    # Overrides follow the same name normalisation (dated id, prefix, case).
    assert reg.price_for("openai", "gpt-4o-2024-08-06", "p1") is proj
    assert reg.price_for("openai", "openai/GPT-4o", "p2") is glob
    assert reg.cost_nano_usd("openai", "gpt-4o", "p1", tok(i=10)) == 30
    assert reg.cost_nano_usd("openai", "gpt-4o", "p2", tok(i=10)) == 20
    # A global-only override prices a model the table does not know.
    reg.set_overrides({"my-finetune": glob}, {})
    assert reg.price_for("openai", "my-finetune", "p1") is glob
    assert reg.price_for("openai", "gpt-4o", "p1") is default  # replaced, not merged
    reg.set_overrides({}, {})
    assert reg.price_for("openai", "my-finetune", "p1") is None


def test_project_override_beats_global_on_a_less_specific_name() -> None:
    default = ModelPrice(1_000_000, 1_000_000, None, None)
    glob = ModelPrice(2_000_000, 2_000_000, None, None)
    proj = ModelPrice(3_000_000, 3_000_000, None, None)
    reg = PricingRegistry({("openai", "gpt-4o"): default})
    reg.set_overrides({"gpt-4o-2024-08-06": glob}, {("p1", "gpt-4o"): proj})
    assert reg.price_for("openai", "gpt-4o-2024-08-06", "p1") is proj
    assert reg.price_for("openai", "gpt-4o-2024-08-06", "p2") is glob


# ----------------------------------------------------------------------------- matching


def test_unknown_model_is_none_never_zero(reg: PricingRegistry) -> None:
    assert reg.price_for("openai", "gpt-does-not-exist", None) is None
    assert reg.cost_nano_usd("openai", "gpt-does-not-exist", None, tok(i=1000, o=1000)) is None
    assert reg.cost_nano_usd("no-such-provider", "gpt-does-not-exist", None, tok(i=1)) is None
    assert reg.cost_nano_usd("no-such-provider", "nobody/gpt-4o", None, tok(i=1)) is None
    assert reg.cost_nano_usd("openai", "", None, tok(i=1)) is None


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o-mini-2024-07-18", ("openai", "gpt-4o-mini-2024-07-18")),
        ("openai", "gpt-4o-mini-2099-12-31", ("openai", "gpt-4o-mini")),  # unseen date
        ("openai", "openai/gpt-4o", ("openai", "gpt-4o")),
        ("anthropic", "claude-sonnet-4-5-20250929", ("anthropic", SONNET_45_DATED)),
        ("anthropic", "claude-sonnet-4-5-20991231", ("anthropic", "claude-sonnet-4-5")),
        ("claude", "claude-sonnet-4-5", ("anthropic", "claude-sonnet-4-5")),
        ("gemini", "models/gemini-2.5-flash", ("gemini", "gemini-2.5-flash")),
        ("google", "gemini-2.5-flash", ("gemini", "gemini-2.5-flash")),
        ("gemini", "gemini/gemini-2.5-flash", ("gemini", "gemini-2.5-flash")),
        ("gemini", "gemini-2.5-flash-preview-05-20", ("gemini", "gemini-2.5-flash-preview-05-20")),
        ("gemini", "models/gemini-2.5-pro", ("gemini", "gemini-2.5-pro")),
        ("gemini", "gemini-2.0-flash-009", ("gemini", "gemini-2.0-flash")),
        ("fireworks", "accounts/fireworks/models/deepseek-v3", ("fireworks", "deepseek-v3")),
        ("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo", ("together", LLAMA_TOGETHER)),
        ("together", "META-LLAMA/llama-3.3-70b-instruct-turbo", ("together", LLAMA_TOGETHER)),
        ("dashscope", "qwen-plus", ("qwen", "qwen-plus")),
        ("x-ai", "grok-4", ("xai", "grok-4")),
        ("groq", "openai/gpt-oss-120b", ("groq", "openai/gpt-oss-120b")),  # vendor/ id on groq
        ("openrouter", "anthropic/claude-sonnet-4.5", ("openrouter", "anthropic/claude-sonnet-4.5")),
        # not in OpenRouter's own list: the vendor's table
        ("openrouter", "anthropic/claude-sonnet-4-5-20250929", ("anthropic", SONNET_45_DATED)),
        ("moonshot", "kimi-k2.5", ("moonshotai", "kimi-k2.5")),
    ],
)
def test_model_resolution(
    reg: PricingRegistry, provider: str, model: str, expected: tuple[str, str]
) -> None:
    assert reg.resolve(provider, model) == expected
    assert reg.price_for(provider, model, None) is not None


def test_dated_id_keeps_its_own_price_when_listed(reg: PricingRegistry) -> None:
    # gpt-3.5-turbo-1106 is listed with its own price; it must not collapse to gpt-3.5-turbo.
    assert reg.resolve("openai", "gpt-3.5-turbo-1106") == ("openai", "gpt-3.5-turbo-1106")


def test_resolution_cache_is_bounded() -> None:
    p = ModelPrice(1, 1, None, None)
    reg = PricingRegistry({("openai", "gpt-4o"): p}, cache_size=16)
    for i in range(200):
        assert reg.price_for("openai", f"unknown-{i}", None) is None
    assert reg.price_for("openai", "gpt-4o-2024-08-06", None) is p
    assert len(reg._cache) <= 16
    # Repeated lookups hit the cache (same resolution object).
    first = reg._resolve("openai", "gpt-4o")
    assert reg._resolve("openai", "gpt-4o") is first


# ------------------------------------------------------------------- table and typing


def test_table_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "prices.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build_pricing_table.py"),
            "--data",
            str(DATA),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == TABLE.read_bytes()


def test_pricing_module_passes_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "plano_fast/pricing.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_tier_validation() -> None:
    t1 = PriceTier(100, 2_000_000, 2_000_000, None, None)
    t0 = PriceTier(50, 3_000_000, 3_000_000, None, None)
    with pytest.raises(ValueError):
        ModelPrice(1, 1, None, None, (t1, t0))
    p = ModelPrice(1_000_000, 1_000_000, None, None, (t0, t1))
    assert cost_nano_usd(p, "openai", tok(i=50)) == 50  # not above 50
    assert cost_nano_usd(p, "openai", tok(i=51)) == 153  # 51 * 3
    assert cost_nano_usd(p, "openai", tok(i=101)) == 202  # 101 * 2


# ------------------------------------------------------------- dimensions and partial prices


def test_every_priced_dimension_applies() -> None:
    p = ModelPrice(
        1_000_000, 10_000_000, 100_000, 1_250_000, cache_write_1h_per_mtok=2_000_000,
        audio_input_per_mtok=40_000_000, audio_output_per_mtok=80_000_000,
    )  # fmt: skip
    # input 1000 = 600 uncached (incl. 50 tool-use prompt) + 200 read + 100 written (30 of
    # them 1h) + 100 audio; output 50 = 40 visible/reasoning + 10 audio
    t = TokenCounts(1000, 50, 200, 100, 20, cache_write_1h_tokens=30, audio_input_tokens=100,
                    audio_output_tokens=10, tool_use_prompt_tokens=50)  # fmt: skip
    cost, partial = price_tokens(p, 1000, 50, 200, 100, 30, 100, 10)
    expected = 600 * 1 + 200 * 0.1 + 70 * 1.25 + 30 * 2 + 100 * 40 + 40 * 10 + 10 * 80
    assert cost == _cost_nano_usd(p, t) == round(expected) and not partial


@pytest.mark.parametrize(
    ("counts", "partial"),
    [
        ((100, 10, 0, 0, 0, 0, 0), False),
        ((100, 10, 5, 0, 0, 0, 0), True),  # cache read, no read price: at the input price
        ((100, 10, 0, 5, 0, 0, 0), True),  # cache write, no write price
        ((100, 10, 0, 5, 5, 0, 0), True),  # 1h write, no 1h price
        ((100, 10, 0, 0, 0, 5, 0), True),  # audio in
        ((100, 10, 0, 0, 0, 0, 5), True),  # audio out
    ],
)
def test_a_dimension_without_its_price_is_partial_never_free(counts: tuple[int, ...], partial: bool) -> None:
    p = ModelPrice(1_000_000, 2_000_000, None, None)
    cost, got = price_tokens(p, *counts)
    assert got is partial
    # never free: charged at the fallback (input / output price), like plain tokens
    assert cost == price_tokens(p, counts[0], counts[1], 0, 0)[0] == 100 + 20


def test_1h_write_without_its_price_falls_back_to_the_write_price() -> None:
    p = ModelPrice(1_000_000, 0, None, 2_000_000)
    assert price_tokens(p, 10, 0, 0, 10, 4) == (6 * 2 + 4 * 2, True)
    assert price_tokens(replace(p, cache_write_1h_per_mtok=5_000_000), 10, 0, 0, 10, 4) == (6 * 2 + 4 * 5, False)


def test_quote_names_the_entry(reg: PricingRegistry) -> None:
    q = reg.quote("anthropic", SONNET_45_DATED, None, tok(i=10, o=1))
    assert q is not None and q.entry == "anthropic/claude-sonnet-4-5-20250929" and not q.partial
    custom = PricingRegistry()
    custom.set_overrides({"gpt-4o": ModelPrice(1_000_000, 1_000_000, None, None)}, {})
    q = custom.quote("openai", "gpt-4o-2024-08-06", None, tok(i=10, o=1))
    assert q is not None and (q.cost_nano_usd, q.entry) == (11, "custom")


# ---------------------------------------------------------------------------- resold models


@pytest.mark.parametrize(
    ("provider", "model", "entry"),
    [
        # a vendor prefix names the vendor's table
        ("together", "mistralai/Mistral-Large-2411", "mistral/mistral-large-2411"),
        ("groq", "anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("my-vllm", "google/gemini-2.5-flash", "gemini/gemini-2.5-flash"),
        # a bare name: the first-party tables
        ("my-vllm", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini-2024-07-18"),
        ("groq", "claude-3-5-haiku-latest", "anthropic/claude-3-5-haiku-latest"),
        # the provider's own entry always wins
        ("together", LLAMA_TOGETHER, "together/" + LLAMA_TOGETHER),
        ("openrouter", "anthropic/claude-sonnet-4.5", None),
    ],
)
def test_resold_models_priced_from_the_vendor_table(reg: PricingRegistry, provider: str, model: str, entry: str | None) -> None:
    q = reg.quote(provider, model, None, tok(i=1000, o=100))
    if entry is None:
        assert q is not None and q.entry.startswith("openrouter/")
        return
    assert q is not None and q.entry == entry
    vendor, _, name = entry.partition("/")
    price = reg.price_for(vendor, name, None)
    assert price is not None and q.cost_nano_usd == _cost_nano_usd(price, tok(i=1000, o=100))


def test_pinned_provider() -> None:
    reg = PricingRegistry(pins={"my-proxy": "anthropic"})
    q = reg.quote("my-proxy", "claude-sonnet-4-5", None, tok(i=1000, o=100))
    assert q is not None and q.entry == "anthropic/claude-sonnet-4-5"
    # pinned: only that table (gpt-4o is not an Anthropic model)
    assert reg.quote("my-proxy", "gpt-4o", None, tok(i=1)) is None
    assert PricingRegistry().quote("my-proxy", "gpt-4o", None, tok(i=1)) is not None
    reg.set_pins({})
    assert reg.quote("my-proxy", "gpt-4o", None, tok(i=1)) is not None


def test_bundled_1h_writes_and_audio_are_priced_exactly(reg: PricingRegistry) -> None:
    # claude-sonnet-4-5: $3 in / $15 out / $0.30 read / $3.75 5-minute write / $6 1-hour write
    # (Anthropic prompt caching docs; Portkey additional_units.cache_write_1h = 0.0006 cents).
    # Row: input 6156 = 12 uncached + 4096 read + 2048 written (1024 of them for 1h); output 700.
    t = TokenCounts(6156, 700, 4096, 2048, 640, cache_write_1h_tokens=1024)
    q = reg.quote("anthropic", SONNET_45_DATED, None, t)
    expected = 12 * 3_000 + 4096 * 300 + 1024 * 3_750 + 1024 * 6_000 + 700 * 15_000  # nano-USD
    assert q is not None and (q.cost_nano_usd, q.partial) == (expected, False)
    # gpt-4o-audio-preview (OpenAI's page, default snapshot -2025-06-03: audio $40 in / $80
    # out per 1M; text $2.50 / $10.  Portkey's $100 / $200 are the retired -2024-10-01's:
    # tests/test_audio_prices.py)
    t = TokenCounts(150, 90, 0, 0, 0, audio_input_tokens=100, audio_output_tokens=80)
    q = reg.quote("openai", "gpt-4o-audio-preview", None, t)
    expected = 50 * 2_500 + 100 * 40_000 + 10 * 10_000 + 80 * 80_000
    assert q is not None and (q.cost_nano_usd, q.partial) == (expected, False)
    # a model without an audio price: charged as text, marked partial
    q = reg.quote("openai", "gpt-4o-mini", None, t)
    assert q is not None and q.partial and q.cost_nano_usd == 150 * 150 + 90 * 600


def test_price_counts_is_quote_counts_as_a_tuple() -> None:
    """The drain's tuple form gives the quote's fields exactly, for bundled, tiered, custom
    and unknown models, and raises the same errors for invalid counts."""
    reg = PricingRegistry()
    reg.set_overrides({"my-model": ModelPrice(7, 9, None, 3, source="custom")},
                      {("p1", "gpt-4o-mini"): ModelPrice(1, 2, 1, None, source="custom")})
    cases = [
        ("openai", "gpt-4o-mini", None), ("openai", "gpt-4o-mini", "p1"), ("anthropic", "claude-sonnet-4-5", None),
        ("gemini", "gemini-2.5-pro", None), ("openai", "my-model", "p2"), ("openai", "no-such-model", None),
    ]  # fmt: skip
    counts = [(0, 0, 0, 0, 0, 0, 0), (1200, 300, 64, 0, 0, 0, 0), (300_000, 10, 1000, 500, 100, 50, 5)]
    seen_priced = 0
    for provider, model, project in cases:
        for c in counts:
            quote = reg.quote_counts(provider, model, project, *c)
            priced = reg.price_counts(provider, model, project, *c)
            if quote is None:
                assert priced is None
            else:
                seen_priced += 1
                assert priced == (quote.cost_nano_usd, quote.partial, quote.entry)
    assert seen_priced == 15
    for bad in ((-1, 0, 0, 0), (1.5, 0, 0, 0), (True, 0, 0, 0)):
        with pytest.raises((TypeError, ValueError)) as expected:
            reg.quote_counts("openai", "gpt-4o-mini", None, *bad)
        with pytest.raises(expected.type):
            reg.price_counts("openai", "gpt-4o-mini", None, *bad)
