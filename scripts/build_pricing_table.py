#!/usr/bin/env python3
"""Build plano_fast's bundled price table (``plano_fast/data/prices.json``).

Usage (from the repository root)::

    python scripts/build_pricing_table.py --data ../shared/data/pricing --out plano_fast/data/prices.json
    python scripts/build_pricing_table.py --data ../shared/data/pricing --out plano_fast/data/prices.json --check

Inputs: the three public datasets described in ``<data>/SOURCES.md``:

* ``portkey-models/pricing/<provider>.json`` -- Portkey-AI/models (MIT), US **cents per token**.
  **Primary source** (SOURCES.md recommendation: MIT, broadest split by provider, explicit
  cache read/write prices).
* ``litellm/model_prices_and_context_window.json`` -- BerriAI/litellm (MIT), **USD per token**.
  First fallback.
* ``genai-prices/prices/new_data/v2/data.json`` -- pydantic/genai-prices (MIT), **USD per 1M
  tokens**.  Second fallback, and the preferred source of context tiers (explicit thresholds).

Output: integer **nano-USD per 1,000,000 tokens** (1 nano-USD = 1e-9 USD) for input, output,
cache read and cache write, per (gateway provider id, model id), with the source of each entry
and a ``sources`` header (dataset, commit / snapshot date, licence, sha256 of the files read).

Merge policy (per gateway provider; all of it is deterministic, no clock, no network):

1. Portkey entries come first.  Then LiteLLM entries, then genai-prices entries, for model ids
   (compared case-insensitively) that no earlier source had.  Each entry records ``src``.
   Majority rule: when LiteLLM and genai-prices both list a Portkey model with the same
   input/output prices and Portkey differs, the two-source majority wins
   (``"src": "litellm+genai-prices"``).
2. Portkey cleaning: ``pricing_config: null`` skipped; ``request_text_token`` /
   ``response_text_token`` used when ``request_token`` / ``response_token`` are absent;
   OpenRouter ``:batch`` keys (batch prices) and ``openrouter/*`` meta-routers (variable price)
   skipped; keys ``<model>-lte-<N>k`` become ``<model>`` (the ``-gt-<N>k`` twin is not used as a
   tier: its thresholds are inconsistent with the providers' published ones, e.g.
   gemini-2.5-pro is tiered at 200k, Portkey labels it 128k -- tiers come from step 4 instead).
3. Zero token prices: an entry whose input and output prices are both 0 is kept (a known free
   model, e.g. ``...:free``) only when it has no other non-zero price (image / audio /
   per-unit) -- otherwise it is a non-token model and is skipped.  A cache price of 0 (while
   input is not free) means "not listed" and becomes null; a cache-read price above the input
   price is rejected as a data error (null), and so is a cached-audio price above the audio
   input price (Portkey's gpt-realtime: cached audio $64 per 1M against $32 uncached).  Null
   cache prices are filled from the next source that lists the same model with the *same*
   input and output prices (``fill`` records it).
4. Context tiers (whole request priced at the tier when prompt tokens > ``above``): taken
   from genai-prices, else LiteLLM ``*_above_<N>k_tokens``, for the same model id, only when
   that source's base input/output prices equal the entry's.
5. Service tiers (OpenAI ``flex`` / ``priority``: the tier the answer names is billed at its
   own rates): Portkey's ``custom_pricing.regions.default.execution_modes.<tier>``, LiteLLM's
   ``*_flex`` / ``*_priority`` fields (and their ``*_above_<N>k_tokens_<tier>`` context
   tiers); genai-prices lists none.  A tier the entry's source lacks is taken whole from the
   next source listing the same model at the same input/output prices (``fill``:
   ``svc.<tier>``).  Written as ``"svc": {"<tier>": {in, out, cr, ...}}``.
6. Image output and cached audio (``iout``, ``acr``: Gemini's IMAGE entry of
   ``candidatesTokensDetails`` and AUDIO entry of ``cacheTokensDetails`` are billed at their own
   rates): Portkey ``response_image_token`` / ``additional_units.image_token`` and
   ``cache_read_audio_input_token``, LiteLLM ``output_cost_per_image_token`` and
   ``cache_read_input_audio_token_cost``, genai-prices ``output_image_mtok`` and
   ``cache_audio_read_mtok``.  LiteLLM's ``image_generation`` entries are read only when their
   image output is priced per token (Gemini's image models, answered by generateContent).
   A per-image price is never a token price: a Portkey ``<model>-lte-<N>k`` key whose input or
   output token price is more than 10x below its ``-gt-<N>k`` twin's (gemini-2.5-flash-image-preview:
   $0.039 "per 1M output tokens" is the price of one image; the twin says $2.50) takes the
   twin's input and output prices instead (a context tier never divides a price by 10); every model whose token
   prices differ more than 10x between the sources is listed by the build (``--outliers``).
7. Provider rules from the providers' own documentation where no dataset lists a price:
   Groq's ``flex`` service tier is priced as on-demand (console.groq.com/docs/flex-processing:
   "Pricing matches the on-demand tier"), so every Groq entry gets ``svc.flex`` = its prices
   (``fill``: ``"svc.flex": "groq-docs"``).  OpenAI's context tier applies at flex too
   (developers.openai.com/api/docs/models/gpt-5.4: "prompts with >272K input tokens are
   priced at 2x input and 1.5x output for the full session for standard, batch, and flex"):
   an OpenAI entry with context tiers whose ``svc.flex`` has none gets them, each price of the
   flex tier scaled by the standard tier's own ratio to the standard price (``fill``:
   ``"svc.flex.tiers": "openai-docs"``).  Priority is not named there: it stays without
   context tiers (a long prompt at priority is priced_partial).
8. Prices from the provider's own model pages where the primary source is wrong and the rules
   above cannot tell (``DOC_PRICES``: audio prices swapped, 10x too high or too low, an
   alias priced at a retired snapshot's rates, a cached *image* price read as cached audio).
   Each override names its page and what it says, and applies only while the entry's text
   input / output prices are the page's (else the build stops: the data moved, recheck);
   ``fill`` records ``"<provider>-docs"`` for each field it changes.  Found by comparing
   every model's audio prices with its dated snapshots and family
   (benchmarks/results/prices2-l-20261206.md).
9. genai-prices date-constrained prices: the price in effect on the genai-prices snapshot date
   is used; time-of-day (off-peak) variants are ignored.
10. Conversions are exact (``Decimal``); a value that is not a whole number of nano-USD per 1M
    tokens is rounded half up (counted in the build summary).

To refresh: copy the new dataset snapshots into the data folder, update SOURCES.md and
``SOURCE_META`` below (commit, date), rerun this script, review the diff, commit both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Snapshot metadata.  The build checks that each commit is mentioned in SOURCES.md, so a
# refreshed data folder with stale metadata here fails loudly instead of mislabelling prices.
SOURCE_META: dict[str, dict[str, str]] = {
    "portkey": {
        "dataset": "Portkey-AI/models pricing/*.json",
        "url": "https://github.com/Portkey-AI/models",
        "commit": "f654307ec968cc9c8a54f2139fb79ede59c3d688",
        "snapshot_date": "2026-08-21",
        "licence": "MIT (Copyright (c) 2025 Portkey.ai)",
        "unit": "US cents per token",
        "role": "primary",
    },
    "litellm": {
        "dataset": "BerriAI/litellm model_prices_and_context_window.json",
        "url": "https://github.com/BerriAI/litellm",
        "mirror": "https://github.com/RoCry/llm-api-price",
        "commit": "8442b939a6ead479f7995b5d74d8dce488bd0966",
        "licence": "MIT",
        "unit": "USD per token",
        "role": "fallback 1 (missing models, missing cache prices, context tiers)",
    },
    "genai-prices": {
        "dataset": "pydantic/genai-prices prices/new_data/v2/data.json",
        "url": "https://github.com/pydantic/genai-prices",
        "commit": "47df840a5ab10bbcffb8e5ac01b9899032245d1b",
        "snapshot_date": "2026-08-21",
        "licence": "MIT",
        "unit": "USD per 1M tokens",
        "role": "fallback 2 (missing models, missing cache prices); preferred source of context tiers",
    },
}

PORTKEY_DIR = "portkey-models/pricing"
LITELLM_FILE = "litellm/model_prices_and_context_window.json"
GENAI_FILE = "genai-prices/prices/new_data/v2/data.json"


@dataclass(frozen=True)
class ProviderSources:
    gateway_id: str
    portkey: tuple[str, ...]  # file stems, in priority order
    litellm: tuple[str, ...]  # litellm_provider values
    genai: tuple[str, ...]  # genai-prices provider ids
    exclude: tuple[str, ...] = ()  # model-id prefixes that belong to another provider


PROVIDERS: tuple[ProviderSources, ...] = (
    ProviderSources("anthropic", ("anthropic",), ("anthropic",), ("anthropic",)),
    ProviderSources("cerebras", ("cerebras",), ("cerebras",), ("cerebras",)),
    ProviderSources("deepseek", ("deepseek",), ("deepseek",), ("deepseek",)),
    ProviderSources("fireworks", ("fireworks-ai",), ("fireworks_ai",), ("fireworks",)),
    # genai-prices' "google" provider also lists Vertex-hosted Claude models.
    ProviderSources("gemini", ("google",), ("gemini",), ("google",), exclude=("claude",)),
    ProviderSources("groq", ("groq",), ("groq",), ("groq",)),
    ProviderSources("mistral", ("mistral-ai",), ("mistral",), ("mistral",)),
    ProviderSources("moonshotai", ("moonshot",), ("moonshot",), ("moonshotai",)),
    ProviderSources("openai", ("openai",), ("openai",), ("openai",)),
    ProviderSources("openrouter", ("openrouter",), ("openrouter",), ("openrouter",)),
    ProviderSources("perplexity", ("perplexity-ai",), ("perplexity",), ("perplexity",)),
    ProviderSources("qwen", ("dashscope",), ("dashscope",), ()),  # genai-prices has no DashScope
    ProviderSources("together", ("together-ai",), ("together_ai",), ("together",)),
    ProviderSources("xai", ("x-ai",), ("xai",), ("x-ai",)),
    ProviderSources("zhipu", ("zhipu", "z-ai"), ("zai",), ("zhipuai", "zai")),
)

LITELLM_MODES = ("chat", "responses", "completion")
FIREWORKS_PREFIX = "accounts/fireworks/models/"

# Multipliers from each source unit to nano-USD per 1M tokens.
CENTS_PER_TOKEN = Decimal(10) ** 13  # /100 (USD) * 1e6 (per M) * 1e9 (nano)
USD_PER_TOKEN = Decimal(10) ** 15
USD_PER_MTOK = Decimal(10) ** 9
USD_PER_KCOUNT = Decimal(10) ** 6  # USD per 1,000 requests -> nano-USD per request
USD_PER_REQUEST = Decimal(10) ** 9

_TIER_KEY = re.compile(r"^(?P<base>.+)-(?P<kind>lte|gt)-(?P<n>\d+)k$")
_LITELLM_TIER = re.compile(
    r"^(?P<field>input_cost_per_token|output_cost_per_token|cache_read_input_token_cost|"
    r"cache_creation_input_token_cost_above_1hr|cache_creation_input_token_cost)"
    r"_above_(?P<n>\d+)k_tokens$"
)
_LITELLM_FIELDS = {
    "input_cost_per_token": "in",
    "output_cost_per_token": "out",
    "cache_read_input_token_cost": "cr",
    "cache_creation_input_token_cost": "cw",
    "cache_creation_input_token_cost_above_1hr": "cw1h",
}
_GENAI_FIELDS = {
    "input_mtok": "in",
    "output_mtok": "out",
    "cache_read_mtok": "cr",
    "cache_write_mtok": "cw",
}
PRICE_FIELDS = ("in", "out", "cr", "cw")
# Priced dimensions a source lists for fewer models: 1h cache writes (Anthropic), audio in / out,
# server-side web searches (Anthropic; "ws": nano-USD per request, not per 1M tokens).
# A context tier has one only where its source lists it for that tier (never the base price).
# Image output and cached audio reads (Gemini: IMAGE in candidatesTokensDetails, AUDIO in
# cacheTokensDetails) are priced apart too ("iout", "acr").
EXTRA_FIELDS = ("cw1h", "ain", "aout", "ws", "iout", "acr")
_LITELLM_EXTRA = {
    "cache_creation_input_token_cost_above_1hr": "cw1h",
    "input_cost_per_audio_token": "ain",
    "output_cost_per_audio_token": "aout",
    "output_cost_per_image_token": "iout",
    "cache_read_input_audio_token_cost": "acr",
}
_GENAI_EXTRA = {
    "cache_write_1h_mtok": "cw1h",
    "input_audio_mtok": "ain",
    "output_audio_mtok": "aout",
    "output_image_mtok": "iout",
    "cache_audio_read_mtok": "acr",
}
# A token price more than this many times another source's (or a Portkey -lte- key's twin's)
# for the same model is a price of something else (an image, a request): never a token price.
OUTLIER_RATIO = 10
# Service tiers a provider documents at its standard prices (no dataset lists them).
SAME_AS_STANDARD_TIERS: dict[str, tuple[str, ...]] = {"groq": ("flex",)}
# Service tiers a provider documents as taking the model's context tiers at the same ratios.
CONTEXT_TIERED_SERVICE_TIERS: dict[str, tuple[str, ...]] = {"openai": ("flex",)}
# Service tiers priced apart (the names the scanner reports: Usage.service_tier).
SERVICE_TIERS = ("flex", "priority")


@dataclass(frozen=True)
class DocPrice:
    """Prices a provider's own model page gives where the primary dataset is wrong (step 8).
    ``text``: the page's text input / output USD per 1M -- the override applies only while the
    built entry has them (else the build stops: the data moved, recheck by hand).  ``prices``:
    field -> USD per 1M.  ``why``: what the page and the datasets say."""

    provider: str
    model: str
    text: tuple[str, str]
    prices: tuple[tuple[str, str], ...]
    url: str
    why: str


_OPENAI_MODELS = "https://developers.openai.com/api/docs/models/"
DOC_PRICES: tuple[DocPrice, ...] = (
    DocPrice("openai", "gpt-audio-mini", ("0.6", "2.4"), (("ain", "10"), ("aout", "20")),
             _OPENAI_MODELS + "gpt-audio-mini",
             "alias of its 'Default snapshot: gpt-audio-mini-2025-12-15', which Portkey prices at audio "
             "$10 in / $20 out (as its -2025-10-06 snapshot, LiteLLM and genai-prices price the alias); "
             "Portkey's alias entry says $1 / $2: 10x low"),
    DocPrice("openai", "gpt-4o-mini-audio-preview-2024-12-17", ("0.15", "0.6"), (("ain", "10"), ("aout", "20")),
             _OPENAI_MODELS + "gpt-4o-mini-audio-preview",
             "'Default snapshot: gpt-4o-mini-audio-preview-2024-12-17' ... Audio tokens: Input $10, "
             "Output $20 (LiteLLM agrees); Portkey's snapshot entry has them swapped ($20 in / $10 out)"),
    DocPrice("openai", "gpt-4o-mini-realtime-preview", ("0.6", "2.4"),
             (("cr", "0.3"), ("ain", "10"), ("aout", "20"), ("acr", "0.3")),
             _OPENAI_MODELS + "gpt-4o-mini-realtime-preview",
             "Text tokens: Cached input $0.3; Audio tokens: Input $10, Cached input $0.3, Output $20 "
             "(genai-prices and LiteLLM agree); Portkey says audio $100 / $200, cached $3: 10x high"),
    DocPrice("openai", "gpt-4o-mini-realtime-preview-2024-12-17", ("0.6", "2.4"),
             (("cr", "0.3"), ("ain", "10"), ("aout", "20"), ("acr", "0.3")),
             _OPENAI_MODELS + "gpt-4o-mini-realtime-preview",
             "'Default snapshot: gpt-4o-mini-realtime-preview-2024-12-17', priced as its alias above "
             "(LiteLLM agrees); Portkey: audio $100 / $200, cached text and audio $3: 10x high"),
    DocPrice("openai", "gpt-4o-audio-preview", ("2.5", "10"), (("ain", "40"), ("aout", "80")),
             _OPENAI_MODELS + "gpt-4o-audio-preview",
             "'Default snapshot: gpt-4o-audio-preview-2025-06-03' ... Audio tokens: Input $40, Output $80 "
             "(LiteLLM agrees); Portkey prices the alias at the retired -2024-10-01 snapshot's $100 / $200"),
    DocPrice("openai", "gpt-realtime-2025-08-28", ("4", "16"), (("cr", "0.4"), ("acr", "0.4")),
             _OPENAI_MODELS + "gpt-realtime",
             "the alias gpt-realtime (default snapshot gpt-realtime-2025-08-28): cached text and audio "
             "input $0.40 per 1M (genai-prices and LiteLLM, as OpenAI's gpt-realtime-1.5 page); Portkey "
             "says $16 and $64, above the uncached $4 and $32"),
    DocPrice("openai", "gpt-realtime-mini", ("0.6", "2.4"), (("acr", "0.3"),),
             _OPENAI_MODELS + "gpt-realtime-mini",
             "cached audio input $0.30 per 1M (genai-prices, LiteLLM and Portkey's own -2025-10-06 / "
             "-2025-12-15 snapshots); Portkey's alias entry says $0.08, the snapshots' cached *image* price"),
)
_LITELLM_SVC_FIELDS = {
    "input_cost_per_token": "in",
    "output_cost_per_token": "out",
    "cache_read_input_token_cost": "cr",
    "cache_creation_input_token_cost": "cw",
    "input_cost_per_audio_token": "ain",
    "output_cost_per_audio_token": "aout",
}


class Stats:
    def __init__(self) -> None:
        self.rounded = 0
        self.rejected_cache_read = 0
        self.skipped: dict[str, int] = {}
        self.filled = 0
        self.tiers_attached = 0
        self.disagreements = 0
        self.majority = 0
        self.per_unit_lte = 0
        self.doc_prices = 0  # prices changed by DOC_PRICES
        # (provider, model, field, [(source, nano-USD per 1M), ...]) differing > OUTLIER_RATIO
        self.outliers: list[tuple[str, str, str, list[tuple[str, int]]]] = []

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


STATS = Stats()


def to_nano(value: Any, unit: Decimal) -> int | None:
    """Exact conversion of a dataset number to integer nano-USD per 1M tokens."""
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, (int, Decimal)):
        raise TypeError(f"unexpected price value {value!r}")
    scaled = Decimal(value) * unit
    whole = scaled.to_integral_value(rounding=ROUND_HALF_UP)
    if whole != scaled:
        STATS.rounded += 1
    if whole < 0:
        raise ValueError(f"negative price {value!r}")
    return int(whole)


@dataclass
class Tier:
    above: int
    prices: dict[str, int | None]


@dataclass
class Entry:
    model: str
    src: str
    prices: dict[str, int | None]  # in, out, cr, cw, cw1h, ain, aout
    tiers: list[Tier] = field(default_factory=list)
    fill: dict[str, str] = field(default_factory=dict)
    # service tier -> its prices (an Entry of its own: prices and context tiers)
    svc: dict[str, Entry] = field(default_factory=dict)

    def clean(self) -> None:
        for tier_entry in self.svc.values():
            tier_entry.clean()
        inp = self.prices["in"] or 0
        for key in EXTRA_FIELDS:
            self.prices.setdefault(key, None)
        for key in ("cr", "cw", *EXTRA_FIELDS):
            if self.prices[key] == 0 and inp > 0:
                self.prices[key] = None
        # A cached price above its uncached one is a data error (the text read, or the audio
        # read: Portkey's gpt-realtime lists cached audio at $64 per 1M, audio input at $32).
        for cached, uncached in (("cr", inp), ("acr", self.prices["ain"])):
            value = self.prices[cached]
            if value is not None and uncached is not None and value > uncached:
                self.prices[cached] = None
                STATS.rejected_cache_read += 1


def load_json(path: Path) -> Any:
    with path.open("rb") as fh:
        return json.loads(fh.read(), parse_float=Decimal)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- Portkey


def _pk_price(pay: dict[str, Any], *names: str) -> Any:
    for name in names:
        node = pay.get(name)
        if isinstance(node, dict) and "price" in node:
            return node["price"]
    return None


def _has_other_price(node: Any, skip: frozenset[str]) -> bool:
    """Any non-zero number anywhere in ``node`` outside the keys in ``skip``."""
    if isinstance(node, dict):
        return any(_has_other_price(v, skip) for k, v in node.items() if k not in skip)
    if isinstance(node, list):
        return any(_has_other_price(v, skip) for v in node)
    if isinstance(node, (int, Decimal)) and not isinstance(node, bool):
        return node != 0
    return False


_PK_TOKEN_KEYS = frozenset(
    {
        "request_token",
        "response_token",
        "request_text_token",
        "response_text_token",
        "cache_read_input_token",
        "cache_write_input_token",
    }
)


def _pk_token_prices(pay: dict[str, Any]) -> dict[str, int | None] | None:
    """in / out / cache / audio prices of a Portkey ``pay_as_you_go`` (None: no token price)."""
    inp = to_nano(_pk_price(pay, "request_token", "request_text_token"), CENTS_PER_TOKEN)
    outp = to_nano(_pk_price(pay, "response_token", "response_text_token"), CENTS_PER_TOKEN)
    if inp is None or outp is None:
        return None
    return {
        "in": inp,
        "out": outp,
        "cr": to_nano(_pk_price(pay, "cache_read_input_token"), CENTS_PER_TOKEN),
        "cw": to_nano(_pk_price(pay, "cache_write_input_token"), CENTS_PER_TOKEN),
        "cw1h": to_nano(_pk_price(pay.get("additional_units") or {}, "cache_write_1h"), CENTS_PER_TOKEN),
        "ain": to_nano(_pk_price(pay, "request_audio_token"), CENTS_PER_TOKEN),
        "aout": to_nano(_pk_price(pay, "response_audio_token"), CENTS_PER_TOKEN),
        "iout": to_nano(
            _pk_price(pay, "response_image_token") or _pk_price(pay.get("additional_units") or {}, "image_token"),
            CENTS_PER_TOKEN,
        ),
        "acr": to_nano(_pk_price(pay, "cache_read_audio_input_token"), CENTS_PER_TOKEN),
    }


def _pk_service_tiers(model: str, value: dict[str, Any]) -> dict[str, Entry]:
    """Portkey's ``custom_pricing.regions.default.execution_modes.<tier>`` prices."""
    node: Any = value
    for key in ("custom_pricing", "regions", "default", "execution_modes"):
        node = node.get(key) if isinstance(node, dict) else None
    out: dict[str, Entry] = {}
    for name in SERVICE_TIERS:
        mode = node.get(name) if isinstance(node, dict) else None
        config = mode.get("pricing_config") if isinstance(mode, dict) else None
        pay = config.get("pay_as_you_go") if isinstance(config, dict) else None
        prices = _pk_token_prices(pay) if isinstance(pay, dict) else None
        if prices is not None:
            out[name] = Entry(model, "portkey", prices)
    return out


def _pk_twin_prices(twin: Any) -> dict[str, int | None] | None:
    """The token prices of a Portkey ``-gt-<N>k`` key (None: none)."""
    config = twin.get("pricing_config") if isinstance(twin, dict) else None
    pay = config.get("pay_as_you_go") if isinstance(config, dict) else None
    return _pk_token_prices(pay) if isinstance(pay, dict) else None


def _per_unit_below(prices: dict[str, int | None], twin: dict[str, int | None]) -> bool:
    """Whether an input or output price of ``prices`` is more than OUTLIER_RATIO times below
    the same price of its longer-context twin: a per-unit price read as a token price."""
    for key in ("in", "out"):
        low, high = prices[key], twin[key]
        if low is not None and high is not None and low * OUTLIER_RATIO < high:
            return True
    return False


def load_portkey(data: Path, stems: tuple[str, ...]) -> list[Entry]:
    out: list[Entry] = []
    seen: set[str] = set()
    for stem in stems:
        doc = load_json(data / PORTKEY_DIR / f"{stem}.json")
        plain = {k.lower() for k in doc}
        for key, value in doc.items():
            if key == "default":
                continue
            model = key
            m = _TIER_KEY.match(key)
            twin: Any = None
            if m:
                if m["kind"] == "gt":
                    STATS.skip("portkey -gt-Nk tier key")
                    continue
                model = m["base"]
                if model.lower() in plain:  # a plain key for the same model wins
                    STATS.skip("portkey -lte-Nk key shadowed by plain key")
                    continue
                twin = doc.get(f"{m['base']}-gt-{m['n']}k")
            if key.endswith(":batch"):
                STATS.skip("portkey :batch variant")
                continue
            if key.startswith("openrouter/"):
                STATS.skip("openrouter meta-router")
                continue
            config = value.get("pricing_config") if isinstance(value, dict) else None
            if not isinstance(config, dict):
                STATS.skip("portkey pricing_config null")
                continue
            pay = config.get("pay_as_you_go")
            if not isinstance(pay, dict):
                STATS.skip("portkey no pay_as_you_go")
                continue
            prices = _pk_token_prices(pay)
            if prices is None:
                STATS.skip("portkey no token price")
                continue
            twin_prices = _pk_twin_prices(twin)
            if twin_prices is not None and _per_unit_below(prices, twin_prices):
                # (gemini-2.5-flash-image-preview-lte-128k: output $0.039 per 1M, the price of
                # one image; its -gt-128k twin: $2.50, the token price)
                STATS.per_unit_lte += 1
                prices = {**prices, "in": twin_prices["in"], "out": twin_prices["out"]}
            if prices["in"] == 0 and prices["out"] == 0 and _has_other_price(pay, _PK_TOKEN_KEYS):
                STATS.skip("portkey non-token model")
                continue
            if model.lower() in seen:
                STATS.skip("duplicate within source")
                continue
            seen.add(model.lower())
            entry = Entry(model, "portkey", prices, svc=_pk_service_tiers(model, value))
            entry.clean()
            out.append(entry)
    return out


# ----------------------------------------------------------------------------- LiteLLM


def _litellm_web_search(per_query: Any) -> int | None:
    """``search_context_cost_per_query`` (USD per search, by search context size) as one
    price per request: only when it does not depend on the size (Anthropic's flat $10 per
    1,000); a size-dependent price is not one the usage tells, so none."""
    if not isinstance(per_query, dict) or not per_query:
        return None
    values = set(per_query.values())
    if len(values) != 1:
        return None
    return to_nano(values.pop(), USD_PER_REQUEST)


def load_litellm(doc: dict[str, Any], providers: tuple[str, ...]) -> list[Entry]:
    out: list[Entry] = []
    seen: set[str] = set()
    for key in sorted(doc):
        value = doc[key]
        if not isinstance(value, dict) or value.get("litellm_provider") not in providers:
            continue
        mode = value.get("mode")
        if mode not in LITELLM_MODES and not (
            mode == "image_generation" and value.get("output_cost_per_image_token") is not None
        ):
            continue
        provider = value["litellm_provider"]
        model = key[len(provider) + 1 :] if key.startswith(provider + "/") else key
        if model.startswith(FIREWORKS_PREFIX):
            model = model[len(FIREWORKS_PREFIX) :]
        inp = to_nano(value.get("input_cost_per_token"), USD_PER_TOKEN)
        outp = to_nano(value.get("output_cost_per_token"), USD_PER_TOKEN)
        if inp is None or outp is None:
            STATS.skip("litellm no token price")
            continue
        if model.lower() in seen:
            STATS.skip("duplicate within source")
            continue
        seen.add(model.lower())
        tiers: dict[int, dict[str, int | None]] = {}
        for fname, fvalue in value.items():
            m = _LITELLM_TIER.match(fname)
            if m:
                above = int(m["n"]) * 1000
                tiers.setdefault(above, {})[_LITELLM_FIELDS[m["field"]]] = to_nano(
                    fvalue, USD_PER_TOKEN
                )
        entry = Entry(
            model,
            "litellm",
            {
                "in": inp,
                "out": outp,
                "cr": to_nano(value.get("cache_read_input_token_cost"), USD_PER_TOKEN),
                "cw": to_nano(value.get("cache_creation_input_token_cost"), USD_PER_TOKEN),
                **{k: to_nano(value.get(f), USD_PER_TOKEN) for f, k in _LITELLM_EXTRA.items()},
                "ws": _litellm_web_search(value.get("search_context_cost_per_query")),
            },
        )
        entry.svc = _litellm_service_tiers(model, value)
        entry.clean()
        entry.tiers = _complete_tiers(entry.prices, tiers)
        out.append(entry)
    return out


def _litellm_service_tiers(model: str, value: dict[str, Any]) -> dict[str, Entry]:
    """LiteLLM's ``<field>_<tier>`` prices and ``<field>_above_<N>k_tokens_<tier>`` tiers."""
    out: dict[str, Entry] = {}
    for name in SERVICE_TIERS:
        prices = {key: to_nano(value.get(f"{f}_{name}"), USD_PER_TOKEN) for f, key in _LITELLM_SVC_FIELDS.items()}
        if prices["in"] is None or prices["out"] is None:
            continue
        tiers: dict[int, dict[str, int | None]] = {}
        for fname, fvalue in value.items():
            if fname.endswith("_" + name):
                m = _LITELLM_TIER.match(fname[: -len(name) - 1])
                if m:
                    tiers.setdefault(int(m["n"]) * 1000, {})[_LITELLM_FIELDS[m["field"]]] = to_nano(
                        fvalue, USD_PER_TOKEN
                    )
        entry = Entry(model, "litellm", prices)
        entry.clean()
        entry.tiers = _complete_tiers(entry.prices, tiers)
        out[name] = entry
    return out


def _complete_tiers(
    base: dict[str, int | None], tiers: dict[int, dict[str, int | None]]
) -> list[Tier]:
    """Tiers with every field set: a field a tier does not mention keeps its lower value --
    but a 1h-write or audio price (EXTRA_FIELDS) only a lower tier's, never the base's: a
    long prompt pays the tier's own (Claude Sonnet 4.5's 1h writes: $6 per 1M at most 200k
    prompt tokens, $12 above), and without one the tier's fallback, priced_partial."""
    result: list[Tier] = []
    untiered = {key: None for key in EXTRA_FIELDS}
    current = {**base, **untiered}
    for above in sorted(tiers):
        for key, value in tiers[above].items():
            current[key] = value
        if "in" not in tiers[above] and "out" not in tiers[above]:
            continue
        if current == (result[-1].prices if result else {**base, **untiered}):
            continue  # a tier that changes nothing
        result.append(Tier(above, dict(current)))
    return result


# ------------------------------------------------------------------------ genai-prices


def _genai_effective(prices: Any, snapshot_date: str) -> dict[str, Any] | None:
    if isinstance(prices, dict):
        return prices
    best: dict[str, Any] | None = None
    best_start = ""
    for item in prices:
        constraint = item.get("constraint")
        if constraint is None:
            start = ""
        elif "start_date" in constraint:
            start = str(constraint["start_date"])
            if start > snapshot_date:
                continue
        else:  # time-of-day window (off-peak prices): ignored
            continue
        if best is None or start >= best_start:
            best, best_start = item["prices"], start
    return best


def _genai_price(
    value: Any, key: str, base: dict[str, int | None], tiers: dict[int, dict[str, int | None]]
) -> None:
    """One genai-prices per-1M price (a number, or TieredPrices) into ``base`` and ``tiers``."""
    if isinstance(value, dict):  # TieredPrices
        base[key] = to_nano(value["base"], USD_PER_MTOK)
        for tier in value["tiers"]:
            tiers.setdefault(int(tier["start"]), {})[key] = to_nano(tier["price"], USD_PER_MTOK)
    else:
        base[key] = to_nano(value, USD_PER_MTOK)


def load_genai(doc: list[dict[str, Any]], providers: tuple[str, ...]) -> list[Entry]:
    snapshot_date = SOURCE_META["genai-prices"]["snapshot_date"]
    out: list[Entry] = []
    seen: set[str] = set()
    for provider in doc:
        if provider["id"] not in providers:
            continue
        for model in provider["models"]:
            prices = _genai_effective(model["prices"], snapshot_date)
            if prices is None:
                STATS.skip("genai-prices no effective price")
                continue
            base: dict[str, int | None] = {}
            tiers: dict[int, dict[str, int | None]] = {}
            for src_key, key in _GENAI_FIELDS.items():
                _genai_price(prices.get(src_key), key, base, tiers)
            if base["in"] is None and base["out"] is None:
                STATS.skip("genai-prices no token price")
                continue
            base["in"] = base["in"] or 0
            base["out"] = base["out"] or 0
            base["ws"] = to_nano(prices.get("web_searches_kcount"), USD_PER_KCOUNT)
            for src_key, key in _GENAI_EXTRA.items():
                _genai_price(prices.get(src_key), key, base, tiers)
            model_id = str(model["id"])
            if model_id.lower() in seen:
                STATS.skip("duplicate within source")
                continue
            seen.add(model_id.lower())
            entry = Entry(model_id, "genai-prices", base)
            entry.clean()
            entry.tiers = _complete_tiers(entry.prices, tiers)
            out.append(entry)
    return out


# ----------------------------------------------------------------------------- merge


def _in_out(entry: Entry) -> tuple[int | None, int | None]:
    return entry.prices["in"], entry.prices["out"]


def _note_outliers(provider: str, entries: list[Entry]) -> None:
    """Record a model whose input or output price differs more than OUTLIER_RATIO times
    between the sources (STATS.outliers: listed by the build, reviewed by hand)."""
    for key in ("in", "out"):
        values = [(e.src, e.prices[key]) for e in entries if e.prices[key]]
        if len(values) > 1:
            low = min(v for _, v in values)
            high = max(v for _, v in values)
            if high > OUTLIER_RATIO * low:  # (low > 0: zero prices are left out above)
                STATS.outliers.append((provider, entries[0].model, key, [(src, v or 0) for src, v in values]))


def same_as_standard(entries: list[Entry], tiers: tuple[str, ...], why: str) -> None:
    """Give every entry the service ``tiers`` at its own prices (a provider documents them
    so), unless a source lists them."""
    for entry in entries:
        for name in tiers:
            if name not in entry.svc:
                entry.svc[name] = Entry(entry.model, entry.src, dict(entry.prices),
                                        [Tier(t.above, dict(t.prices)) for t in entry.tiers])  # fmt: skip
                entry.fill["svc." + name] = why


def _scaled(value: int | None, base: int | None, tier: int | None) -> int | None:
    """``value`` scaled by ``tier / base`` (exact, rounded half up), None when any is absent."""
    if value is None or base is None or tier is None or base == 0:
        return None
    return int((Decimal(value) * tier / base).to_integral_value(rounding=ROUND_HALF_UP))


def context_tiered(entries: list[Entry], tiers: tuple[str, ...], why: str) -> None:
    """Give each listed service tier without context tiers those of its entry, every price
    scaled as the standard tier scales it (a provider documents the same ratios)."""
    for entry in entries:
        for name in tiers:
            svc = entry.svc.get(name)
            if svc is None or svc.tiers or not entry.tiers:
                continue
            svc.tiers = [
                Tier(t.above, {key: _scaled(svc.prices.get(key), entry.prices.get(key), t.prices.get(key))
                               for key in t.prices})  # fmt: skip
                for t in entry.tiers
            ]
            entry.fill[f"svc.{name}.tiers"] = why


def doc_prices(provider: str, entries: list[Entry], overrides: tuple[DocPrice, ...]) -> None:
    """Apply the ``overrides`` for ``provider`` (step 8); stop the build when one names a model
    the table lacks or whose text prices moved (the page no longer describes the entry)."""
    by_model = {e.model: e for e in entries}
    for doc in overrides:
        if doc.provider != provider:
            continue
        entry = by_model.get(doc.model)
        text = (to_nano(Decimal(doc.text[0]), USD_PER_MTOK), to_nano(Decimal(doc.text[1]), USD_PER_MTOK))
        if entry is None or _in_out(entry) != text or entry.tiers or entry.svc:
            raise SystemExit(
                f"DOC_PRICES {provider}/{doc.model}: the built entry is missing, tiered, or its text "
                f"prices are not the page's {doc.text} (USD per 1M): recheck {doc.url}"
            )
        for key, usd in doc.prices:
            value = to_nano(Decimal(usd), USD_PER_MTOK)
            if entry.prices.get(key) != value:
                entry.prices[key] = value
                entry.fill[key] = f"{provider}-docs"
                STATS.doc_prices += 1


def merge(sources: list[list[Entry]], provider: str = "") -> list[Entry]:
    merged: dict[str, Entry] = {}
    later: dict[str, list[Entry]] = {}
    for entries in sources:
        for entry in entries:
            key = entry.model.lower()
            if key in merged:
                later.setdefault(key, []).append(entry)
            else:
                merged[key] = entry
    for key in list(merged):
        entry = merged[key]
        others = later.get(key, [])
        if others:
            _note_outliers(provider, [entry, *others])
        if len(others) >= 2 and _in_out(others[0]) == _in_out(others[1]) != _in_out(entry):
            # Both fallbacks list the model at the same price and the primary differs: the
            # two-source majority wins (recorded as "src": "<a>+<b>").
            STATS.majority += 1
            winner = others[0]
            entry = Entry(
                winner.model if winner.model == entry.model else entry.model,
                f"{winner.src}+{others[1].src}",
                dict(winner.prices),
                list(winner.tiers),
                svc=dict(winner.svc),
            )
            others = [others[1]]
            merged[key] = entry
        agreeing = [o for o in others if _in_out(o) == _in_out(entry)]
        STATS.disagreements += len(others) - len(agreeing)
        for field_name in ("cr", "cw", *EXTRA_FIELDS):
            if entry.prices.get(field_name) is None:
                for other in agreeing:
                    if other.prices[field_name] is not None:
                        entry.prices[field_name] = other.prices[field_name]
                        entry.fill[field_name] = other.src
                        STATS.filled += 1
                        break
        for name in SERVICE_TIERS:
            if name not in entry.svc:
                for other in agreeing:
                    if name in other.svc:
                        entry.svc[name] = other.svc[name]
                        entry.fill["svc." + name] = other.src
                        STATS.filled += 1
                        break
        if not entry.tiers:
            # genai-prices first: explicit, curated thresholds.
            for other in sorted(agreeing, key=lambda o: o.src != "genai-prices"):
                if other.tiers:
                    entry.tiers = [Tier(t.above, dict(t.prices)) for t in other.tiers]
                    entry.fill["tiers"] = other.src
                    STATS.tiers_attached += 1
                    break
    return sorted(merged.values(), key=lambda e: (e.model.lower(), e.model))


# ----------------------------------------------------------------------------- output


def _prices_obj(entry: Entry) -> dict[str, Any]:
    obj: dict[str, Any] = {"in": entry.prices["in"], "out": entry.prices["out"]}
    for key in ("cr", "cw", *EXTRA_FIELDS):
        if entry.prices.get(key) is not None:
            obj[key] = entry.prices[key]
    if entry.tiers:
        tiers = []
        for tier in entry.tiers:
            t: dict[str, Any] = {"above": tier.above}
            for key in (*PRICE_FIELDS, *EXTRA_FIELDS):
                if tier.prices.get(key) is not None:
                    t[key] = tier.prices[key]
            tiers.append(t)
        obj["tiers"] = tiers
    return obj


def entry_json(entry: Entry) -> str:
    obj = _prices_obj(entry)
    if entry.svc:
        obj["svc"] = {name: _prices_obj(entry.svc[name]) for name in sorted(entry.svc)}
    obj["src"] = entry.src
    if entry.fill:
        obj["fill"] = dict(sorted(entry.fill.items()))
    return json.dumps(obj, separators=(",", ":"))


def build(data: Path) -> str:
    sources_md = data / "SOURCES.md"
    if sources_md.exists():
        text = sources_md.read_text(encoding="utf-8")
        for name, meta in SOURCE_META.items():
            if meta["commit"] not in text:
                raise SystemExit(
                    f"{sources_md} does not mention the {name} commit {meta['commit']}: "
                    "update SOURCE_META in this script after refreshing the data"
                )
    litellm_path = data / LITELLM_FILE
    genai_path = data / GENAI_FILE
    litellm_doc = load_json(litellm_path)
    genai_doc = load_json(genai_path)

    used_portkey: set[str] = set()
    table: dict[str, list[Entry]] = {}
    for ps in PROVIDERS:
        used_portkey.update(ps.portkey)
        loaded = [
            load_portkey(data, ps.portkey),
            load_litellm(litellm_doc, ps.litellm),
            load_genai(genai_doc, ps.genai),
        ]
        loaded = [
            [e for e in entries if not e.model.lower().startswith(ps.exclude)] for entries in loaded
        ]
        table[ps.gateway_id] = merge(loaded, ps.gateway_id)
        if ps.gateway_id in SAME_AS_STANDARD_TIERS:
            same_as_standard(table[ps.gateway_id], SAME_AS_STANDARD_TIERS[ps.gateway_id], f"{ps.gateway_id}-docs")
        if ps.gateway_id in CONTEXT_TIERED_SERVICE_TIERS:
            context_tiered(table[ps.gateway_id], CONTEXT_TIERED_SERVICE_TIERS[ps.gateway_id], f"{ps.gateway_id}-docs")
        doc_prices(ps.gateway_id, table[ps.gateway_id], DOC_PRICES)

    sources: dict[str, Any] = {}
    for name, meta in SOURCE_META.items():
        sources[name] = dict(meta)
    sources["portkey"]["files"] = {
        f"{PORTKEY_DIR}/{stem}.json": sha256_of(data / PORTKEY_DIR / f"{stem}.json")
        for stem in sorted(used_portkey)
    }
    sources["litellm"]["snapshot_date"] = str(litellm_doc.get("last_updated", ""))[:10]
    sources["litellm"]["files"] = {LITELLM_FILE: sha256_of(litellm_path)}
    sources["genai-prices"]["files"] = {GENAI_FILE: sha256_of(genai_path)}

    header = {
        "schema": SCHEMA_VERSION,
        "unit": "integer nano-USD (1e-9 USD) per 1,000,000 tokens",
        "generated_by": "scripts/build_pricing_table.py",
        "fields": {
            "in": "input (uncached prompt) tokens",
            "out": "output tokens (reasoning included)",
            "cr": "cache-read input tokens (absent: not listed, priced as input)",
            "cw": "cache-write input tokens (absent: not listed, priced as input)",
            "cw1h": "cache writes with a 1-hour lifetime (absent: not listed, priced as cw, the row is priced_partial)",
            "ain": "audio input tokens (absent: not listed, priced as input, the row is priced_partial)",
            "aout": "audio output tokens (absent: not listed, priced as output, the row is priced_partial)",
            "ws": "nano-USD per server-side web search request (absent: not listed, searches add nothing, the row is priced_partial)",
            "iout": "image output tokens (Gemini IMAGE candidates; absent: not listed, priced as output, the row is priced_partial)",
            "acr": "cached audio input tokens (Gemini AUDIO cache tokens; absent: not listed, priced as cr, the row is priced_partial)",
            "tiers": "context tiers: all prices switch when prompt tokens > above (a tier without cw1h/ain/aout: its cw/in/out, priced_partial)",
            "svc": "service tiers (OpenAI flex / priority, Groq flex): every price above replaced when the answer names the tier (ws: the entry's; a tier not listed: the entry's prices, priced_partial)",
            "src": "source of the base prices (key of 'sources'; 'a+b': both fallbacks agreed against the primary)",
            "fill": "fields taken from another source listing the same model at the same in/out prices",
        },
        "sources": sources,
    }
    lines = ["{"]
    for key in ("schema", "unit", "generated_by", "fields", "sources"):
        rendered = json.dumps(header[key], indent=1, sort_keys=True, ensure_ascii=False)
        rendered = rendered.replace("\n", "\n ")
        lines.append(f" {json.dumps(key)}: {rendered},")
    lines.append(' "models": {')
    providers = sorted(table)
    for pi, provider in enumerate(providers):
        lines.append(f"  {json.dumps(provider)}: {{")
        entries = table[provider]
        for ei, entry in enumerate(entries):
            comma = "," if ei < len(entries) - 1 else ""
            name = json.dumps(entry.model, ensure_ascii=False)
            lines.append(f"   {name}: {entry_json(entry)}{comma}")
        lines.append("  }" + ("," if pi < len(providers) - 1 else ""))
    lines.append(" }")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # must be valid JSON
    summary = ", ".join(f"{p}={len(table[p])}" for p in providers)
    print(f"entries: {sum(len(v) for v in table.values())} ({summary})", file=sys.stderr)
    print(
        f"rounded={STATS.rounded} rejected_cache_read={STATS.rejected_cache_read} "
        f"filled={STATS.filled} tiers_attached={STATS.tiers_attached} "
        f"fallback_disagreements={STATS.disagreements} majority_over_primary={STATS.majority}",
        file=sys.stderr,
    )
    print(f"portkey -lte- keys with a per-unit price, twin's used: {STATS.per_unit_lte}", file=sys.stderr)
    print(f"prices set from the providers' model pages (DOC_PRICES): {STATS.doc_prices}", file=sys.stderr)
    for reason, count in sorted(STATS.skipped.items()):
        print(f"skipped {count}: {reason}", file=sys.stderr)
    for provider, model, key, values in STATS.outliers:
        shown = ", ".join(f"{src} {value / 1e9:g}" for src, value in values)
        print(f"outlier > {OUTLIER_RATIO}x: {provider}/{model} {key} (USD per 1M: {shown})", file=sys.stderr)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared pricing data folder")
    parser.add_argument("--out", type=Path, required=True, help="output file (prices.json)")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if --out differs from the build"
    )
    args = parser.parse_args(argv)
    text = build(args.data)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(text.encode("utf-8"))
    print(f"wrote {args.out} ({len(text.encode('utf-8'))} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
