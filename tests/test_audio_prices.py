"""OpenAI audio prices in the bundled table, checked against OpenAI's own model pages
(developers.openai.com/api/docs/models/<model>), and the builder rules that set them
(scripts/build_pricing_table.py step 3, cached prices above their uncached ones; step 8,
``DOC_PRICES``).

Before 2026-12-06 the table took Portkey's audio prices as they were: gpt-audio-mini at $1 /
$2 per 1M audio in / out (its snapshots and OpenAI: $10 / $20), gpt-4o-mini-audio-preview-
2024-12-17 swapped ($20 in / $10 out), gpt-4o-mini-realtime-preview* at $100 / $200 (OpenAI:
$10 / $20), gpt-4o-audio-preview at its retired 2024-10-01 snapshot's $100 / $200 (OpenAI:
$40 / $80), gpt-realtime's cached audio at $64 (above its $32 uncached; OpenAI: $0.40) and
gpt-realtime-mini's at $0.08 (a cached *image* price; OpenAI: $0.30).  Managed mode bounds
output at the dearest output rate an entry lists, so a wrong audio price moved reservations
too (gpt-audio-mini was reserved at a tenth of what an answer in audio costs).

Prices below are nano-USD per token (= USD per 1M tokens x 1000): $10 per 1M = 10_000.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from plano_fast.pricing import PricingRegistry, TokenCounts, output_parts, price_tokens

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "plano_fast" / "data" / "prices.json"

# One audio chat row: 1000 prompt tokens = 400 text + 600 audio; 500 output = 100 text + 400 audio.
CHAT = TokenCounts(1000, 500, 0, 0, 0, audio_input_tokens=600, audio_output_tokens=400)
# One realtime row: 1000 prompt tokens = 100 uncached text + 100 cached text + 200 cached audio
# + 600 uncached audio (cache_read 300 = 100 text + 200 audio); output as above.
REALTIME = TokenCounts(1000, 500, 300, 0, 0, audio_input_tokens=600, audio_output_tokens=400,
                       audio_cache_read_tokens=200)  # fmt: skip


@pytest.mark.parametrize(("model", "tokens", "expected"), [
    # gpt-audio-mini: text $0.60 / $2.40, audio $10 / $20 (its default snapshot
    # gpt-audio-mini-2025-12-15).  Was 1,880,000: audio at $1 / $2.
    ("gpt-audio-mini", CHAT, 400 * 600 + 600 * 10_000 + 100 * 2_400 + 400 * 20_000),  # 14,480,000
    # gpt-4o-mini-audio-preview-2024-12-17: text $0.15 / $0.60, audio $10 in / $20 out.
    # Was 16,120,000: audio $20 in / $10 out.
    ("gpt-4o-mini-audio-preview-2024-12-17", CHAT, 400 * 150 + 600 * 10_000 + 100 * 600 + 400 * 20_000),  # 14,120,000
    # gpt-4o-audio-preview (default snapshot -2025-06-03): text $2.50 / $10, audio $40 / $80.
    # Was 142,000,000: audio $100 / $200.
    ("gpt-4o-audio-preview", CHAT, 400 * 2_500 + 600 * 40_000 + 100 * 10_000 + 400 * 80_000),  # 58,000,000
    # gpt-4o-mini-realtime-preview: text $0.60 / $2.40, cached text $0.30; audio $10 / $20,
    # cached audio $0.30.  Was 140,930,000: audio $100 / $200, cached audio $3.
    ("gpt-4o-mini-realtime-preview", REALTIME,
     100 * 600 + 100 * 300 + 200 * 300 + 600 * 10_000 + 100 * 2_400 + 400 * 20_000),  # 14,390,000
    # its default snapshot, priced the same.  Was 140,960,000 and partial: audio $100 / $200,
    # cached audio $3, cached text not listed (Portkey's $3 is above the $0.60 input) -> $0.60.
    ("gpt-4o-mini-realtime-preview-2024-12-17", REALTIME,
     100 * 600 + 100 * 300 + 200 * 300 + 600 * 10_000 + 100 * 2_400 + 400 * 20_000),  # 14,390,000
    # gpt-realtime: text $4 / $16, cached text $0.40; audio $32 / $64, cached audio $0.40.
    # Was 59,640,000: cached audio $64.
    ("gpt-realtime", REALTIME,
     100 * 4_000 + 100 * 400 + 200 * 400 + 600 * 32_000 + 100 * 16_000 + 400 * 64_000),  # 46,920,000
    # its snapshot.  Was 60,000,000 and partial: cached audio $64, cached text not listed -> $4.
    ("gpt-realtime-2025-08-28", REALTIME,
     100 * 4_000 + 100 * 400 + 200 * 400 + 600 * 32_000 + 100 * 16_000 + 400 * 64_000),  # 46,920,000
    # gpt-realtime-mini: text $0.60 / $2.40, cached text $0.06; audio $10 / $20, cached audio
    # $0.30.  Was 14,322,000: cached audio $0.08.
    ("gpt-realtime-mini", REALTIME,
     100 * 600 + 100 * 60 + 200 * 300 + 600 * 10_000 + 100 * 2_400 + 400 * 20_000),  # 14,366,000
])  # fmt: skip
def test_openai_audio_rows_are_priced_at_openais_prices(model: str, tokens: TokenCounts, expected: int) -> None:
    q = PricingRegistry().quote("openai", model, None, tokens)
    assert q is not None
    assert (q.cost_nano_usd, q.partial, q.entry) == (expected, False, f"openai/{model}")


def test_gpt_audio_mini_output_is_bounded_at_its_audio_rate() -> None:
    """Managed mode's bound (``output_parts``): 1000 output tokens of gpt-audio-mini may cost
    $20 per 1M as audio -- 20,000,000 nano-USD, not the 2,400,000 of text.  Was 2,400,000:
    the table's $2 audio output was below the $2.40 text rate, so the text rate won."""
    price = PricingRegistry().price_for("openai", "gpt-audio-mini", None)
    assert price is not None
    bounds = [price_tokens(price, 0, 1000, 0, 0, 0, 0, aout, 0, None, iout)[0]
              for aout, iout in output_parts(price, 1000)]  # fmt: skip
    assert max(bounds) == 1000 * 20_000


def _entries() -> list[tuple[str, str, dict[str, Any]]]:
    models = json.loads(TABLE.read_text(encoding="utf-8"))["models"]
    out = []
    for provider, entries in models.items():
        for model, entry in entries.items():
            for part in (entry, *entry.get("tiers", ()), *entry.get("svc", {}).values()):
                out.append((provider, model, part))
    return out


def test_no_cached_audio_price_above_the_audio_input_price() -> None:
    """A cached read is never dearer than the uncached one (was: gpt-realtime and its
    snapshot, $64 cached against $32)."""
    bad = [(p, m) for p, m, e in _entries() if e.get("acr") is not None and e.get("ain") is not None
           and e["acr"] > e["ain"]]  # fmt: skip
    assert bad == []


def test_openai_audio_output_is_dearer_than_audio_input() -> None:
    """Every OpenAI audio model's page prices audio output at twice the input (or more): an
    entry with them the other way round was swapped (was: gpt-4o-mini-audio-preview-2024-12-17)."""
    bad = [m for p, m, e in _entries() if p == "openai" and e.get("ain") and e.get("aout") and e["aout"] < e["ain"]]
    assert bad == []


# ------------------------------------------------------------------------------ the builder


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_pricing_table", ROOT / "scripts" / "build_pricing_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def _entry(builder: ModuleType, model: str, **prices: int | None) -> Any:
    entry = builder.Entry(model, "portkey", {"in": 4_000_000_000, "out": 16_000_000_000, "cr": None, "cw": None,
                                             **prices})  # fmt: skip
    entry.clean()
    return entry


def test_builder_rejects_cached_audio_above_audio_input(builder: ModuleType) -> None:
    # $64 cached against $32 uncached: not a price (null, filled from another source or
    # priced at the fallback, partial); $0.40 against $32 kept
    assert _entry(builder, "m", ain=32_000_000_000, acr=64_000_000_000).prices["acr"] is None
    assert _entry(builder, "m", ain=32_000_000_000, acr=400_000_000).prices["acr"] == 400_000_000


def test_builder_doc_prices_apply_and_are_recorded(builder: ModuleType) -> None:
    doc = builder.DocPrice("openai", "m", ("4", "16"), (("ain", "32"), ("acr", "0.4")), "https://example/m", "why")
    entry = _entry(builder, "m", ain=32_000_000_000, acr=80_000_000)
    builder.doc_prices("openai", [entry], (doc,))
    # ain already the page's: untouched, not recorded; acr set to $0.40 per 1M and recorded
    assert (entry.prices["ain"], entry.prices["acr"], entry.fill) == (32_000_000_000, 400_000_000,
                                                                      {"acr": "openai-docs"})  # fmt: skip
    other = _entry(builder, "m", ain=1)
    builder.doc_prices("groq", [other], (doc,))  # another provider's override: not applied
    assert other.prices["ain"] == 1


@pytest.mark.parametrize("case", ["missing", "moved", "tiered"])
def test_builder_stops_when_a_doc_price_no_longer_describes_its_entry(builder: ModuleType, case: str) -> None:
    """An override applies only while the entry's text prices are the page's: a re-priced or
    vanished model stops the build (recheck the page) instead of keeping a stale price."""
    doc = builder.DocPrice("openai", "m", ("4", "16"), (("acr", "0.4"),), "https://example/m", "why")
    entry = _entry(builder, "other" if case == "missing" else "m")
    if case == "moved":
        entry.prices["out"] = 24_000_000_000  # the model's text output re-priced: $24 per 1M
    if case == "tiered":
        entry.tiers = [builder.Tier(272_000, dict(entry.prices))]
    with pytest.raises(SystemExit, match="DOC_PRICES openai/m"):
        builder.doc_prices("openai", [entry], (doc,))
