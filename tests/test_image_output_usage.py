"""Gemini's generated images and cached audio: read off the wire and billed at their own rates.

Sources:

* Gemini ``UsageMetadata`` (https://ai.google.dev/api/generate-content#UsageMetadata):
  ``candidatesTokensDetails`` / ``cacheTokensDetails`` are ``ModalityTokenCount`` lists
  (``{"modality": "TEXT" | "IMAGE" | "AUDIO" | ..., "tokenCount"}``) that break down
  ``candidatesTokenCount`` / ``cachedContentTokenCount``.  genai-prices' Google extractor reads
  them the same way (``output_image_tokens`` a part of the output, ``cache_audio_read_tokens``
  a part of the cache read).
* Prices (https://ai.google.dev/gemini-api/docs/pricing; the three bundled datasets agree):
  gemini-2.5-flash-image $0.30 input, $2.50 text output, **$30 image output** per 1M tokens
  ("$0.039 per image": an image is 1290 tokens); gemini-2.5-flash $0.30 input, $1.00 audio
  input, $0.03 cached text, **$0.10 cached audio**, $2.50 output per 1M.
* Before: every image token was billed at the text output rate (12x too little) and cached
  audio at the text cache rate; ``gemini-2.5-flash-image-preview``'s output was $0.039 per 1M
  (Portkey's per-image price read as a token price: 64x too little).
* Groq (https://console.groq.com/docs/flex-processing): "Pricing matches the on-demand tier":
  an answer served at ``flex`` is priced, not ``priced_partial``.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from plano_fast.billing.reprice import load_pricing, reprice
from plano_fast.billing.rows import quote_usage
from plano_fast.wire import _scan_py
from plano_fast.pricing import PricingRegistry, TokenCounts
from plano_fast.store import Store, usage_row_from_event
from plano_fast.store.records import UsageRow
from plano_fast.usage import UsageEvent
from tests.test_billing_drain_twins import MODULES, TABLE, _agree, _event
from tests.test_scan import GEMINI, IMPLEMENTATIONS, NO_USAGE, U, check_all_splits, chunkings, sse
from tests.test_store import Backend, all_usage, assert_counters_match_log, backend  # noqa: F401
from tests.test_usage_reprice import T0

ROOT = Path(__file__).resolve().parents[1]
IMAGE_MODEL = "gemini-2.5-flash-image"

# gemini-2.5-flash-image answering with a line of text and one image (1290 tokens)
GEMINI_IMAGE = (
    b'{"candidates":[{"content":{"parts":[{"text":"Here it is"},{"inlineData":{"mimeType":"image/png",'
    b'"data":"iVBORw0KGgo="}}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":12,'
    b'"candidatesTokenCount":1295,"totalTokenCount":1307,"promptTokensDetails":[{"modality":"TEXT","tokenCount":12}],'
    b'"candidatesTokensDetails":[{"modality":"TEXT","tokenCount":5},{"modality":"IMAGE","tokenCount":1290}]},'
    b'"modelVersion":"gemini-2.5-flash-image","responseId":"img-1"}'
)
# the same streamed (alt=sse): usage is cumulative, the last chunk's counts
GEMINI_IMAGE_STREAM = sse(
    '{"candidates":[{"content":{"parts":[{"text":"Here it is"}],"role":"model"}}],"usageMetadata":'
    '{"promptTokenCount":12,"totalTokenCount":12,"promptTokensDetails":[{"modality":"TEXT","tokenCount":12}]},'
    '"modelVersion":"gemini-2.5-flash-image","responseId":"img-2"}',
    '{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}}],'
    '"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":1295,'
    '"totalTokenCount":1307,"promptTokensDetails":[{"modality":"TEXT","tokenCount":12}],"candidatesTokensDetails":'
    '[{"modality":"TEXT","tokenCount":5},{"modality":"IMAGE","tokenCount":1290}]},'
    '"modelVersion":"gemini-2.5-flash-image","responseId":"img-2"}',
    eol=b"\r\n",
)
# gemini-2.5-flash with a cached audio context: 1000 cached (600 of them audio), 800 audio
# prompt tokens (the 600 cached among them)
GEMINI_CACHED_AUDIO = (
    b'{"candidates":[{"content":{"parts":[{"text":"ok"}],"role":"model"},"finishReason":"STOP"}],'
    b'"usageMetadata":{"promptTokenCount":2000,"cachedContentTokenCount":1000,"candidatesTokenCount":100,'
    b'"totalTokenCount":2100,"promptTokensDetails":[{"modality":"TEXT","tokenCount":1200},'
    b'{"modality":"AUDIO","tokenCount":800}],"cacheTokensDetails":[{"modality":"TEXT","tokenCount":400},'
    b'{"modality":"AUDIO","tokenCount":600}],"candidatesTokensDetails":[{"modality":"TEXT","tokenCount":100}]},'
    b'"modelVersion":"gemini-2.5-flash"}'
)


def _usage_meta(**members: Any) -> bytes:
    return json.dumps({"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1300, **members}}).encode()


# (name, streaming, body, the row's usage (U), (image output, cached audio))
CASES = [
    ("image-json", False, GEMINI_IMAGE, U(12, 1295, model=IMAGE_MODEL), (1290, 0)),
    ("image-sse", True, GEMINI_IMAGE_STREAM, U(12, 1295, model=IMAGE_MODEL), (1290, 0)),
    ("cached-audio-json", False, GEMINI_CACHED_AUDIO, U(2000, 100, 1000, audio_in=200, model="gemini-2.5-flash"),
     (0, 600)),
    # an IMAGE prompt entry is input (priced as input), not generated output
    ("image-in-prompt-not-output", False,
     _usage_meta(promptTokensDetails=[{"modality": "IMAGE", "tokenCount": 10}]), U(10, 1300), (0, 0)),
    # several IMAGE entries add up; an entry of another modality, or without a count, adds nothing
    ("images-add-up", False, _usage_meta(candidatesTokensDetails=[
        {"modality": "IMAGE", "tokenCount": 600}, {"modality": "VIDEO", "tokenCount": 7}, {"modality": "IMAGE"},
        {"modality": "IMAGE", "tokenCount": 690}, {"tokenCount": 3}]), U(10, 1300), (1290, 0)),
    # a repeated list replaces the earlier one (as for AUDIO)
    ("image-list-repeated", False, b'{"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":1300,'
     b'"candidatesTokensDetails":[{"modality":"IMAGE","tokenCount":5}],'
     b'"candidatesTokensDetails":[{"modality":"IMAGE","tokenCount":1290}]}}', U(10, 1300), (1290, 0)),
    # capped at the output left after audio (a part never exceeds its total)
    ("image-capped", False, _usage_meta(candidatesTokensDetails=[
        {"modality": "AUDIO", "tokenCount": 1000}, {"modality": "IMAGE", "tokenCount": 5000}]),
     U(10, 1300, audio_out=1000), (300, 0)),
    ("cached-audio-capped", False, _usage_meta(cachedContentTokenCount=4, cacheTokensDetails=[
        {"modality": "AUDIO", "tokenCount": 9}]), U(10, 1300, 4), (0, 4)),
    # null lists: none; a list that is no array, or a bad IMAGE count, spoils the usage object
    ("image-null-list", False, _usage_meta(candidatesTokensDetails=None), U(10, 1300), (0, 0)),
    ("image-list-not-array", False, _usage_meta(candidatesTokensDetails={"modality": "IMAGE"}), NO_USAGE,
     (0, 0)),
    ("image-bad-count", False, _usage_meta(candidatesTokensDetails=[{"modality": "IMAGE", "tokenCount": -1}]),
     NO_USAGE, (0, 0)),
]  # fmt: skip


@pytest.fixture(params=IMPLEMENTATIONS)
def scan(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def _parts(scan: ModuleType, streaming: bool, chunks: list[bytes]) -> tuple[int, int, bytes | None]:
    scanner = scan.UsageScanner(GEMINI, streaming)
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    u = scanner.result()
    return u.image_output_tokens, u.audio_cache_read_tokens, scanner.raw_usage()


@pytest.mark.parametrize(("name", "streaming", "body", "row", "parts"), CASES, ids=[c[0] for c in CASES])
def test_image_output_and_cached_audio_are_read(scan: ModuleType, name: str, streaming: bool, body: bytes,
                                                row: tuple[Any, ...], parts: tuple[int, int]) -> None:  # fmt: skip
    """Each case returns its row (the usual counts) and its (image output, cached audio)
    parts, whole, split at every offset and one byte at a time; the kept usage document
    scans (not streamed) to the same parts, so late pricing and ``usage reprice`` see them."""
    check_all_splits(scan, GEMINI, streaming, body, row)
    first = _parts(scan, streaming, [body])
    assert first[:2] == parts
    for chunks in chunkings(body, 4000, 1500):
        assert _parts(scan, streaming, chunks) == first, [len(c) for c in chunks][:3]
    if first[2] is not None:
        assert _parts(scan, False, [first[2]])[:2] == parts


# ------------------------------------------------------------------------------- pricing


def _quote(provider: str, model: str, tokens: TokenCounts, tier: str | None = None) -> tuple[int, bool, str]:
    quote = PricingRegistry().quote(provider, model, None, tokens, service_tier=tier)
    assert quote is not None
    return quote.cost_nano_usd, quote.partial, quote.entry


# (counts: TokenCounts(12, 1295, 0, 0, 0, image_output_tokens=1290))
# 12 x $0.30 + 5 x $2.50 + 1290 x $30 per 1M (was 3,241,100: every output token at $2.50)
IMAGE_COST = 12 * 300 + 5 * 2_500 + 1290 * 30_000
# (counts: TokenCounts(2000, 100, 1000, 0, 0, audio_input_tokens=200, audio_cache_read_tokens=600))
# 800 x $0.30 text + 400 x $0.03 cached text + 600 x $0.10 cached audio + 200 x $1.00 audio
# + 100 x $2.50 out per 1M (was 720,000: the cached audio at $0.03)
AUDIO_COST = 800 * 300 + 400 * 30 + 600 * 100 + 200 * 1_000 + 100 * 2_500


def test_image_output_is_priced_at_the_image_rate() -> None:
    assert IMAGE_COST == 38_716_100  # (one image: $0.0387, Google's "$0.039 per image")
    tokens = TokenCounts(12, 1295, 0, 0, 0, image_output_tokens=1290)
    assert _quote("gemini", IMAGE_MODEL, tokens) == (IMAGE_COST, False, "gemini/gemini-2.5-flash-image")
    # every image model of the table has an image output price (a dataset lists it)
    for model in ("gemini-2.5-flash-image", "gemini-2.5-flash-image-preview", "gemini-3-pro-image-preview",
                  "gemini-3.1-flash-image-preview"):  # fmt: skip
        assert TABLE["gemini", model].image_output_per_mtok in (30_000_000_000, 60_000_000_000, 120_000_000_000), model


def test_cached_audio_is_priced_at_the_cached_audio_rate() -> None:
    assert AUDIO_COST == 762_000
    tokens = TokenCounts(2000, 100, 1000, 0, 0, audio_input_tokens=200, audio_cache_read_tokens=600)
    assert _quote("gemini", "gemini-2.5-flash", tokens) == (AUDIO_COST, False, "gemini/gemini-2.5-flash")


def test_a_part_without_its_own_price_is_the_fallback_and_partial() -> None:
    # gemini-2.0-flash lists no image output price: the output rate ($0.40), partial; its cache
    # (no audio cache price on gemini-2.5-pro): the cache read rate ($0.125), partial
    assert _quote("gemini", "gemini-2.0-flash", TokenCounts(10, 1300, 0, 0, 0, image_output_tokens=1290)) == (
        10 * 100 + 1300 * 400, True, "gemini/gemini-2.0-flash")
    assert _quote("gemini", "gemini-2.5-pro", TokenCounts(2000, 100, 1000, 0, 0, audio_cache_read_tokens=600)) == (
        1000 * 1_250 + 1000 * 125 + 100 * 10_000, True, "gemini/gemini-2.5-pro")


def test_a_per_image_price_is_never_a_token_price() -> None:
    """Portkey lists gemini-2.5-flash-image-preview's output at 3.9e-06 cents a token under its
    ``-lte-128k`` key ($0.039 per 1M: the price of one image), $2.50 under ``-gt-128k``."""
    price = TABLE["gemini", "gemini-2.5-flash-image-preview"]
    assert (price.input_per_mtok, price.output_per_mtok, price.image_output_per_mtok) == (
        300_000_000, 2_500_000_000, 30_000_000_000)
    # no Gemini entry prices output more than 10x below its input (a per-unit price; the
    # embedding models have no output price at all)
    assert [key for key, p in TABLE.items() if key[0] == "gemini" and 0 < p.output_per_mtok * 10 < p.input_per_mtok] == []


def test_groq_flex_is_priced_at_on_demand_rates() -> None:
    tokens = TokenCounts(1000, 200, 0, 0, 0)
    on_demand = 1000 * 590 + 200 * 790  # llama-3.3-70b-versatile: $0.59 in, $0.79 out per 1M
    assert _quote("groq", "llama-3.3-70b-versatile", tokens, "flex") == (
        on_demand, False, "groq/llama-3.3-70b-versatile@flex")  # (was priced_partial)
    assert _quote("groq", "llama-3.3-70b-versatile", tokens) == (on_demand, False, "groq/llama-3.3-70b-versatile")


def test_the_drain_twins_agree_with_the_registry() -> None:
    """The flusher's drain (both twins) prices an event's image and cached audio parts as the
    registry does, for every entry of the table (the compiled drain hands such events to its
    twin)."""
    pricing = PricingRegistry()
    for provider, model in TABLE:
        event = _event(provider, model, (250_000, 4_000, 64_000, 10_000, 2_000, 0, 0, 0))
        event.image_output_tokens, event.audio_cache_read_tokens = 3_000, 5_000
        quote = pricing.quote(provider, model, "p1", TokenCounts(
            250_000, 4_000, 64_000, 10_000, 0, 2_000, image_output_tokens=3_000, audio_cache_read_tokens=5_000))
        assert quote is not None
        assert _agree(pricing, event) == (quote.cost_nano_usd, quote.partial, quote.entry), (provider, model)
    events = []
    for counts, image, cached_audio in (((12, 1295, 0, 0, 0, 0, 0, 0), 1290, 0), ((12, 1295, 0, 0, 0, 0, 0, 0), 0, 0)):
        event = _event("gemini", IMAGE_MODEL, counts)
        event.image_output_tokens, event.audio_cache_read_tokens = image, cached_audio
        events.append(event)
    event = _event("gemini", "gemini-2.5-flash", (2000, 100, 1000, 0, 0, 200, 0, 0))
    event.audio_cache_read_tokens = 600
    events.append(event)
    want = [(IMAGE_COST, "priced"), (12 * 300 + 1295 * 2_500, "priced"), (AUDIO_COST, "priced")]
    for module in MODULES:
        rows: collections.deque[UsageRow] = collections.deque()
        assert module.rows_of_events(pricing, events, rows) == 0
        assert [(r.cost_nano_usd, r.price_status) for r in rows] == want, module


def _stored(model: str, raw: bytes, inp: int, out: int, cr: int = 0, ain: int = 0) -> UsageRow:
    return UsageRow(
        request_id="r", time_ns=1, project_id=None, user_id=None, key_hash=None, token_id=None,
        provider="gemini", model=model, input_tokens=inp, output_tokens=out, cache_read_tokens=cr,
        cache_write_tokens=0, reasoning_tokens=0, streaming=False, status="ok", http_status=200,
        priced=False, cost_nano_usd=None, usage_api="gemini", usage_raw=raw.decode(), audio_input_tokens=ain,
    )  # fmt: skip


def test_a_stored_row_is_priced_from_its_kept_usage_document() -> None:
    """Late pricing and ``usage reprice`` read the parts back from the kept usage document
    (no column holds them)."""
    raw = _parts(_scan_py, False, [GEMINI_IMAGE])[2]
    assert raw is not None
    quote = quote_usage(PricingRegistry(), _stored(IMAGE_MODEL, raw, 12, 1295), IMAGE_MODEL)
    assert quote is not None and (quote.cost_nano_usd, quote.partial) == (IMAGE_COST, False)
    raw = _parts(_scan_py, False, [GEMINI_CACHED_AUDIO])[2]
    assert raw is not None
    quote = quote_usage(PricingRegistry(), _stored("gemini-2.5-flash", raw, 2000, 100, 1000, 200), "gemini-2.5-flash")
    assert quote is not None and (quote.cost_nano_usd, quote.partial) == (AUDIO_COST, False)


def test_usage_reprice_corrects_rows_billed_at_the_text_rate(backend: Backend) -> None:
    """Rows written before this change (image output at the text rate, cached audio at the
    text cache rate) are re-priced by ``usage reprice`` from their kept usage documents, on
    both stores, counters following the rows; a second run changes nothing."""

    async def body(store: Store) -> None:
        rows = []
        for i, (model, answer, old_cost) in enumerate((
            (IMAGE_MODEL, GEMINI_IMAGE, 12 * 300 + 1295 * 2_500),
            ("gemini-2.5-flash", GEMINI_CACHED_AUDIO, 800 * 300 + 1000 * 30 + 200 * 1_000 + 100 * 2_500),
        )):  # fmt: skip
            scanner = _scan_py.UsageScanner(GEMINI, False)
            scanner.feed(answer)
            scanner.finish()
            u, raw = scanner.result(), scanner.raw_usage()
            assert raw is not None
            event = UsageEvent(
                f"old-{i}", T0 + i, "gemini", model, False, "ok", 200, u.input_tokens, u.output_tokens,
                u.cache_read_tokens, 0, 0, True, "p1", "k" * 64, None, None, 1.0, "gemini", 0, 0,
                u.audio_input_tokens, 0, raw.decode(), "gemini",
            )  # fmt: skip
            rows.append(usage_row_from_event(event, cost_nano_usd=old_cost, price_status="priced",
                                             price_entry=f"gemini/{model}"))  # fmt: skip
        assert await store.write_usage(rows) == 2
        await assert_counters_match_log(store)
        report = await reprice(store, await load_pricing(store))
        assert (report.rows_seen, report.rows_changed) == (2, 2)
        assert (report.cost_before_nano_usd, report.cost_after_nano_usd) == (
            (rows[0].cost_nano_usd or 0) + (rows[1].cost_nano_usd or 0), IMAGE_COST + AUDIO_COST)  # fmt: skip
        got = {r.request_id: (r.cost_nano_usd, r.price_status) for r in await all_usage(store)}
        assert got == {"old-0": (IMAGE_COST, "priced"), "old-1": (AUDIO_COST, "priced")}
        await assert_counters_match_log(store)
        assert (await reprice(store, await load_pricing(store))).rows_changed == 0

    backend.run(body)


def test_the_builder_never_reads_a_per_image_price_as_a_token_price(tmp_path: Path) -> None:
    """A Portkey ``-lte-<N>k`` key whose token price is more than 10x below its ``-gt-<N>k``
    twin's takes the twin's input and output prices (its own other prices kept); a pair
    within 10x (a context tier) keeps its own."""
    spec = importlib.util.spec_from_file_location("build_pricing_table", ROOT / "scripts" / "build_pricing_table.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # (its dataclasses look their module up)
    try:
        spec.loader.exec_module(builder)
    finally:
        del sys.modules[spec.name]
    pricing_dir = tmp_path / "portkey-models" / "pricing"
    pricing_dir.mkdir(parents=True)

    def pay(inp: float, out: float, image: float | None = None) -> dict[str, Any]:
        prices: dict[str, Any] = {"request_token": {"price": inp}, "response_token": {"price": out}}
        if image is not None:
            prices["additional_units"] = {"image_token": {"price": image}}
        return {"pricing_config": {"pay_as_you_go": prices}}

    (pricing_dir / "google.json").write_text(json.dumps({
        "flash-image-preview-lte-128k": pay(3e-05, 3.9e-06, 0.003),  # $0.039 "per 1M": one image
        "flash-image-preview-gt-128k": pay(3e-05, 0.00025),
        "pro-lte-200k": pay(0.000125, 0.001),  # a context tier: $1.25 / $10, then $2.50 / $15
        "pro-gt-200k": pay(0.00025, 0.0015),
    }))  # fmt: skip
    entries = {e.model: e.prices for e in builder.load_portkey(tmp_path, ("google",))}
    assert (entries["flash-image-preview"]["in"], entries["flash-image-preview"]["out"],
            entries["flash-image-preview"]["iout"]) == (300_000_000, 2_500_000_000, 30_000_000_000)  # fmt: skip
    assert (entries["pro"]["in"], entries["pro"]["out"]) == (1_250_000_000, 10_000_000_000)


def test_a_long_prompt_at_openai_flex_is_priced_at_the_flex_context_tier() -> None:
    """OpenAI (developers.openai.com/api/docs/models/gpt-5.4): "prompts with >272K input
    tokens are priced at 2x input and 1.5x output for the full session for standard, batch,
    and flex".  Before: the flex prices without a context tier, ``priced_partial``."""
    tokens = TokenCounts(300_000, 1_000, 0, 0, 0)
    # flex $1.25 in / $7.50 out per 1M, doubled / x1.5 above 272k: $2.50 / $11.25
    assert _quote("openai", "gpt-5.4", tokens, "flex") == (300_000 * 2_500 + 1_000 * 11_250, False,
                                                           "openai/gpt-5.4@flex")  # fmt: skip
    # at most 272k: the flex prices
    assert _quote("openai", "gpt-5.4", TokenCounts(272_000, 1_000, 0, 0, 0), "flex") == (
        272_000 * 1_250 + 1_000 * 7_500, False, "openai/gpt-5.4@flex")
    # priority is not named by OpenAI's rule, and no dataset lists its context tier: its
    # prices ($5 / $30), partial (visible)
    assert _quote("openai", "gpt-5.4", tokens, "priority") == (300_000 * 5_000 + 1_000 * 30_000, True,
                                                               "openai/gpt-5.4@priority")  # fmt: skip
