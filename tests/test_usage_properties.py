"""The row convention as a property (issue 18): for ANY usage object of any provider family,
read by either scanner, whole or in pieces,

* ``input >= cache_read + cache_write (+ audio_input)``, ``input >= tool_use_prompt``,
  ``cache_write >= cache_write_1h``, ``output >= reasoning``, ``output >= audio_output``;
* the cost is exactly the sum over the row's dimensions of tokens x price (checked with
  rational arithmetic, independently of plano_fast.pricing), rounded half up once;
* the provider usage kept on the row re-scans to the same row.
"""

from __future__ import annotations

import json
from fractions import Fraction
from types import ModuleType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from plano_fast.wire import _scan_py
from plano_fast.pricing import ModelPrice, PriceTier, TokenCounts, cost_nano_usd, price_tokens
from tests.test_scan import usage_tuple
from tests.test_scan_properties import IMPLS, SETTINGS

COUNT = st.one_of(st.integers(0, 2_000), st.integers(0, 10**12), st.integers(0, 10**18 - 1))
MAYBE = st.one_of(st.none(), COUNT)


def _obj(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@st.composite
def chat_usage(draw: st.DrawFn) -> dict[str, Any]:
    return _obj(
        prompt_tokens=draw(MAYBE), completion_tokens=draw(MAYBE), total_tokens=draw(MAYBE),
        prompt_cache_hit_tokens=draw(MAYBE),
        prompt_tokens_details=draw(st.one_of(st.none(), st.builds(
            lambda c, w, a: _obj(cached_tokens=c, cache_write_tokens=w, audio_tokens=a), MAYBE, MAYBE, MAYBE))),
        completion_tokens_details=draw(st.one_of(st.none(), st.builds(
            lambda r, a: _obj(reasoning_tokens=r, audio_tokens=a), MAYBE, MAYBE))),
    )  # fmt: skip


@st.composite
def consistent_xai_usage(draw: st.DrawFn) -> dict[str, Any]:
    p, c, r = draw(COUNT), draw(COUNT), draw(st.integers(1, 10**6))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c + r,
            "completion_tokens_details": {"reasoning_tokens": r}}  # fmt: skip


@st.composite
def responses_usage(draw: st.DrawFn) -> dict[str, Any]:
    return _obj(
        input_tokens=draw(MAYBE), output_tokens=draw(MAYBE),
        input_tokens_details=draw(st.one_of(st.none(), st.builds(
            lambda c, w: _obj(cached_tokens=c, cache_write_tokens=w), MAYBE, MAYBE))),
        output_tokens_details=draw(st.one_of(st.none(), st.builds(lambda r: _obj(reasoning_tokens=r), MAYBE))),
    )  # fmt: skip


@st.composite
def anthropic_usage(draw: st.DrawFn) -> dict[str, Any]:
    return _obj(
        input_tokens=draw(MAYBE), output_tokens=draw(MAYBE), cache_read_input_tokens=draw(MAYBE),
        cache_creation_input_tokens=draw(MAYBE),
        cache_creation=draw(st.one_of(st.none(), st.builds(
            lambda a, b: _obj(ephemeral_5m_input_tokens=a, ephemeral_1h_input_tokens=b), MAYBE, MAYBE))),
        output_tokens_details=draw(st.one_of(st.none(), st.builds(lambda t: _obj(thinking_tokens=t), MAYBE))),
        server_tool_use=draw(st.one_of(st.none(), st.builds(lambda n: _obj(web_search_requests=n), MAYBE))),
    )  # fmt: skip


@st.composite
def gemini_usage(draw: st.DrawFn) -> dict[str, Any]:
    return _obj(
        promptTokenCount=draw(MAYBE), candidatesTokenCount=draw(MAYBE), cachedContentTokenCount=draw(MAYBE),
        thoughtsTokenCount=draw(MAYBE), toolUsePromptTokenCount=draw(MAYBE), totalTokenCount=draw(MAYBE),
    )  # fmt: skip


CHAT, RESPONSES, ANTHROPIC, GEMINI = 1, 2, 3, 4


@st.composite
def bodies(draw: st.DrawFn) -> tuple[int, bool, bytes]:
    """A response body of some family: JSON, or SSE (Anthropic: message_start + deltas)."""
    api = draw(st.sampled_from([CHAT, RESPONSES, ANTHROPIC, GEMINI]))
    streaming = draw(st.booleans())
    if api == CHAT:
        usage = draw(st.one_of(chat_usage(), consistent_xai_usage()))
        docs = [{"choices": [], "usage": usage}]
    elif api == RESPONSES:
        usage = draw(responses_usage())
        docs = [{"type": "response.completed", "response": {"usage": usage}}] if streaming else [{"usage": usage}]
    elif api == ANTHROPIC:
        if streaming:
            docs = [{"type": "message_start", "message": {"usage": draw(anthropic_usage())}}]
            docs += [{"type": "message_delta", "usage": draw(anthropic_usage())} for _ in range(draw(st.integers(1, 3)))]
        else:
            docs = [{"type": "message", "usage": draw(anthropic_usage())}]
    else:
        docs = [{"usageMetadata": draw(gemini_usage())} for _ in range(draw(st.integers(1, 2)))]
    if streaming:
        return api, True, b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs)
    return api, False, json.dumps(docs[-1]).encode()


PRICE = st.one_of(st.none(), st.integers(0, 10**11))


@st.composite
def prices(draw: st.DrawFn) -> ModelPrice:
    tiers: tuple[PriceTier, ...] = ()
    if draw(st.booleans()):
        tiers = (PriceTier(draw(st.integers(0, 10**6)), draw(st.integers(0, 10**11)), draw(st.integers(0, 10**11)),
                           draw(PRICE), draw(PRICE)),)  # fmt: skip
    return ModelPrice(
        draw(st.integers(0, 10**11)), draw(st.integers(0, 10**11)), draw(PRICE), draw(PRICE), tiers,
        cache_write_1h_per_mtok=draw(PRICE), audio_input_per_mtok=draw(PRICE), audio_output_per_mtok=draw(PRICE),
    )  # fmt: skip


def _scan(impl: ModuleType, api: int, streaming: bool, chunks: list[bytes]) -> tuple[Any, bytes | None]:
    scanner = impl.UsageScanner(api, streaming)
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    return scanner.result(), scanner.raw_usage()


def _sum_of_dimensions(price: ModelPrice, u: TokenCounts) -> int:
    """Σ dimension × price, the dimensions read straight off the row (rational arithmetic)."""
    p_in, p_out, p_cr, p_cw = price.input_per_mtok, price.output_per_mtok, price.cache_read_per_mtok, price.cache_write_per_mtok
    p_1h, p_ain, p_aout = price.cache_write_1h_per_mtok, price.audio_input_per_mtok, price.audio_output_per_mtok
    for tier in price.tiers:
        if u.input_tokens > tier.above_input_tokens:
            p_in, p_out, p_cr, p_cw = tier.input_per_mtok, tier.output_per_mtok, tier.cache_read_per_mtok, tier.cache_write_per_mtok
            p_1h = p_ain = p_aout = None
    p_cr = p_in if p_cr is None else p_cr
    p_cw = p_in if p_cw is None else p_cw
    p_1h = p_cw if p_1h is None else p_1h
    p_ain = p_in if p_ain is None else p_ain
    p_aout = p_out if p_aout is None else p_aout
    dims = [
        (u.input_tokens - u.cache_read_tokens - u.cache_write_tokens - u.audio_input_tokens, p_in),
        (u.cache_read_tokens, p_cr),
        (u.cache_write_tokens - u.cache_write_1h_tokens, p_cw),
        (u.cache_write_1h_tokens, p_1h),
        (u.audio_input_tokens, p_ain),
        (u.output_tokens - u.audio_output_tokens, p_out),
        (u.audio_output_tokens, p_aout),
    ]  # fmt: skip
    assert all(n >= 0 for n, _ in dims)
    exact = sum((Fraction(n * p, 1_000_000) for n, p in dims), Fraction(0))
    return int(exact + Fraction(1, 2))  # half up, once


@SETTINGS
@given(bodies(), prices(), st.data())
def test_any_usage_object_keeps_the_convention_and_prices_exactly(
    case: tuple[int, bool, bytes], price: ModelPrice, data: st.DataObject
) -> None:
    api, streaming, body = case
    cut = data.draw(st.integers(0, len(body)))
    results = []
    for impl in IMPLS:
        for chunks in ([body], [body[:cut], body[cut:]]):
            results.append(_scan(impl, api, streaming, chunks))
    u, raw = results[0]
    assert all(usage_tuple(r[0]) == usage_tuple(u) and r[1] == raw for r in results), results
    assert u.has_usage == (raw is not None)
    if not u.has_usage:
        return
    t = TokenCounts(
        u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens,
        u.cache_write_1h_tokens, u.audio_input_tokens, u.audio_output_tokens, u.tool_use_prompt_tokens,
    )  # fmt: skip
    assert t.input_tokens >= t.cache_read_tokens + t.cache_write_tokens + t.audio_input_tokens
    assert t.input_tokens >= t.tool_use_prompt_tokens and t.cache_write_tokens >= t.cache_write_1h_tokens
    assert t.output_tokens >= t.reasoning_tokens and t.output_tokens >= t.audio_output_tokens
    assert cost_nano_usd(price, t) == _sum_of_dimensions(price, t)
    # partial exactly when a dimension the row has lacks its own price
    _, partial = price_tokens(price, t.input_tokens, t.output_tokens, t.cache_read_tokens, t.cache_write_tokens,
                              t.cache_write_1h_tokens, t.audio_input_tokens, t.audio_output_tokens)  # fmt: skip
    if not price.tiers and partial:
        assert (
            (t.cache_read_tokens and price.cache_read_per_mtok is None)
            or (t.cache_write_tokens > t.cache_write_1h_tokens and price.cache_write_per_mtok is None)
            or (t.cache_write_1h_tokens and price.cache_write_1h_per_mtok is None)
            or (t.audio_input_tokens and price.audio_input_per_mtok is None)
            or (t.audio_output_tokens and price.audio_output_per_mtok is None)
        )
    # the kept provider usage re-scans to the same row
    assert raw is not None
    again, _ = _scan(_scan_py, api, False, [raw])
    assert again.has_usage
    assert usage_tuple(again)[:5] + usage_tuple(again)[8:] == usage_tuple(u)[:5] + usage_tuple(u)[8:]
