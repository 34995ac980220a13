"""The usage pricer's twins (plano_fast.billing._price, compiled, and _price_py, pure)
against each other and against the registry's own ``quote`` (the pricer before either:
``TokenCounts`` in, ``Quote`` out): every entry of the vendored price table (tiers, cache
reads and writes, 1h writes, audio), the usage counts read from recorded provider traffic,
custom prices, and generated counts and prices up to and past the compiled path's limits
(2**62 per factor, a cost past 2**63), where it hands the event to the twin.  Equal
results, or the same exception type."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast.billing import _price_py, rows
from plano_fast.pricing import ModelPrice, PriceTier, PricingRegistry, TokenCounts, load_default_prices
from plano_fast.usage import (
    STATUS_CLIENT_ABANDONED,
    STATUS_NOT_BILLABLE,
    STATUS_OK,
    STATUS_UPSTREAM_ERROR,
    STATUS_USAGE_MISSING,
    UsageEvent,
)

try:
    from plano_fast.billing import _price as _compiled_price
except ImportError:  # the extension is not built: only the twin is tested
    _compiled_price = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_price is not None, "the compiled pricer was not built"
    assert rows.PRICE_IMPLEMENTATION == "cython"

MODULES: list[ModuleType] = [_price_py] + ([_compiled_price] if _compiled_price is not None else [])
IDS = ["python", "cython"][: len(MODULES)]
TABLE = load_default_prices()
COUNT_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "cache_write_1h_tokens", "audio_input_tokens", "audio_output_tokens")  # fmt: skip


def _event(provider: str, model: str | None, counts: tuple[Any, ...] = (1200, 300, 0, 0, 0, 0, 0), *,
           status: str = STATUS_OK, http_status: int = 200, has_usage: bool = True,
           project_id: str | None = "p1") -> UsageEvent:  # fmt: skip
    event = UsageEvent("r", 1, provider, model, False, status, http_status, has_usage=has_usage,
                       project_id=project_id)  # fmt: skip
    for name, value in zip(COUNT_FIELDS, counts):
        setattr(event, name, value)
    return event


def _reference(pricing: PricingRegistry, event: UsageEvent) -> tuple[int, bool, str] | None:
    """What the registry's ``quote`` (TokenCounts in) says the event costs."""
    inp, out, cr, cw, cw1h, ain, aout = (getattr(event, name) for name in COUNT_FIELDS)
    assert event.model is not None
    quote = pricing.quote(event.provider, event.model, event.project_id,
                          TokenCounts(inp, out, cr, cw, 0, cw1h, ain, aout))  # fmt: skip
    return None if quote is None else (quote.cost_nano_usd, quote.partial, quote.entry)


def _outcome(module: ModuleType, pricing: PricingRegistry, event: UsageEvent) -> Any:
    try:
        return module.price_of_event(pricing, event)
    except Exception as exc:  # noqa: BLE001 - the type is the result compared
        return type(exc)


def _agree(pricing: PricingRegistry, event: UsageEvent) -> Any:
    outcomes = [_outcome(module, pricing, event) for module in MODULES]
    assert all(o == outcomes[0] for o in outcomes), (event, outcomes)
    result = outcomes[0]
    if type(result) is tuple:  # the exact type too: a cost is an int, partial a bool
        assert [type(v) for v in result] == [int, bool, str], result
    return result


COUNT_MIXES = [
    (1200, 300, 0, 0, 0, 0, 0),
    (250_000, 4_000, 64_000, 10_000, 2_000, 0, 0),  # past every tier threshold, cache writes
    (300_000, 900, 0, 0, 0, 5_000, 700),  # audio in and out
    (5, 0, 9, 7, 9, 3, 1),  # parts larger than their totals (clamped)
    (1_000, 10, 1, 1, 1, 1, 1),  # one token of each part: partial wherever a price is absent
    (1_000, 10, 0, 0, 0, 1, 0),  # ... one part at a time
    (1_000, 10, 0, 1, 1, 0, 0),
    (1_000, 10, 0, 1, 0, 0, 0),
    (1_000, 10, 1, 0, 0, 0, 0),
    (1_000, 10, 0, 0, 0, 0, 1),
    (999_999, 1, 0, 0, 0, 0, 0),  # half-way costs: rounding
    (0, 0, 0, 0, 0, 0, 0),
]


@pytest.mark.parametrize("counts", COUNT_MIXES, ids=str)
def test_every_vendored_price_agrees_with_the_registry_quote(counts: tuple[int, ...]) -> None:
    pricing = PricingRegistry()
    tiered = 0
    for provider, model in TABLE:
        event = _event(provider, model, counts)
        for _ in range(2):  # the first call resolves (and caches), the second hits the cache
            assert _agree(pricing, event) == _reference(pricing, event), (provider, model)
        tiered += bool(TABLE[provider, model].tiers)
    assert tiered > 0 and len(TABLE) > 500  # the table has what the cases are for


def test_recorded_provider_usage_prices_alike() -> None:
    """The usage read from recorded traffic (tests/test_scan_fixtures.py's expectations),
    priced as its own model on every provider of the table that lists it."""
    cassettes = pytest.importorskip("tests.test_scan_fixtures").CASSETTES
    pricing = PricingRegistry()
    priced = 0
    for usage in cassettes.values():
        inp, out, cr, cw, _reasoning, has_usage, model, _err, _tool, cw1h, ain, aout = usage
        if not has_usage:
            continue
        for provider in ("openai", "anthropic", "gemini", "mistral", "deepseek", "groq", "openrouter"):
            event = _event(provider, model, (inp, out, cr, cw, cw1h, ain, aout))
            expected = _reference(pricing, event)
            assert _agree(pricing, event) == expected
            priced += expected is not None
    assert priced > 10


def test_statuses_missing_usage_and_no_model() -> None:
    pricing = PricingRegistry()
    cases = [
        (_event("openai", "gpt-4o", status=STATUS_NOT_BILLABLE), (0, False, "")),
        (_event("openai", "gpt-4o", status=STATUS_CLIENT_ABANDONED, has_usage=False), (0, False, "")),
        (_event("openai", "gpt-4o", status=STATUS_UPSTREAM_ERROR, http_status=500, has_usage=False), (0, False, "")),
        (_event("openai", "gpt-4o", status=STATUS_USAGE_MISSING, has_usage=False), None),
        (_event("openai", None), None),
        (_event("openai", "no-such-model-anywhere"), None),
    ]  # fmt: skip
    for event, expected in cases:
        assert _agree(pricing, event) == expected


def test_custom_prices_project_then_global() -> None:
    pricing = PricingRegistry()
    pricing.set_overrides(
        {"gpt-4o": ModelPrice(1_000_000, 2_000_000, None, None, source="custom")},
        {("p1", "gpt-4o"): ModelPrice(3_000_000_000, 9_000_000_000, 1, None, source="custom")},
    )
    counts = (10_000, 2_000, 4_000, 500, 0, 0, 0)
    project = _agree(pricing, _event("openai", "gpt-4o", counts))
    other = _agree(pricing, _event("openai", "gpt-4o", counts, project_id="p2"))
    # (10,000 - 4,000 read - 500 written) x 3e9 + 4,000 x 1 + 500 written at the input price
    # (none of its own: partial) + 2,000 x 9e9, per 1M tokens, rounded half up
    assert project == (36_000_000, True, "custom")
    # every prompt token at 1e6 (no cache prices: partial), 2,000 output at 2e6
    assert other == (14_000, True, "custom")
    assert pricing.quote("openai", "gpt-4o", "p1", TokenCounts(10_000, 2_000, 4_000, 500, 0)) is not None


INT64 = 2**63
BIG = st.sampled_from([2**62 - 1, 2**62, 2**62 + 1, INT64 - 1, INT64, 2**64, 10**30])
COUNT = st.one_of(st.integers(0, 3), st.integers(0, 2_000_000), st.integers(0, 2**40), BIG, st.integers(-5, -1),
                  st.sampled_from([True, 1.0, None, "7"]))  # fmt: skip
RATE = st.one_of(st.integers(0, 10**12), BIG)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.tuples(*[COUNT] * 7),
    rates=st.tuples(RATE, RATE, st.none() | RATE, st.none() | RATE, st.none() | RATE, st.none() | RATE,
                    st.none() | RATE),  # fmt: skip
    tier=st.none() | st.tuples(st.integers(0, 400_000), RATE, RATE, st.none() | RATE, st.none() | RATE),
    custom=st.booleans(),
)
def test_generated_counts_and_prices_agree(
    counts: tuple[Any, ...], rates: tuple[Any, ...], tier: tuple[Any, ...] | None, custom: bool
) -> None:
    in_p, out_p, cr_p, cw_p, cw1h_p, ain_p, aout_p = rates
    tiers = () if tier is None else (PriceTier(*tier),)
    price = ModelPrice(in_p, out_p, cr_p, cw_p, tiers, "gen", cw1h_p, ain_p, aout_p)
    if custom:
        pricing = PricingRegistry({})
        pricing.set_overrides({"m": price}, {})
    else:
        pricing = PricingRegistry({("gen", "m"): price})
    event = _event("gen", "m", counts)
    result = _agree(pricing, event)  # resolves
    assert _agree(pricing, event) == result  # cached
    if all(type(c) is int and c >= 0 for c in counts):
        assert result == _reference(pricing, event)
    else:
        assert result in (TypeError, ValueError)
