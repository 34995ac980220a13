"""Pricing: the integer nano-USD cost of one exchange, from its provider-reported token counts.

Pure code: no I/O after the bundled table is loaded (once, at registry construction), no
floats anywhere on the cost path.  Money is an ``int`` of **nano-USD** (1 nano-USD = 1e-9 USD);
prices are ``int`` nano-USD **per 1,000,000 tokens**, so every published price down to
$0.000001 per 1M tokens is exact.

Cost semantics (one row convention)
-----------------------------------
Counts follow the row convention the scanner reports for every provider (plano_fast.wire._scan_py,
"Normalized usage"; README "Usage rows"): ``input`` is every prompt token, of which
``cache_read``, ``cache_write`` (of which ``cache_write_1h``), ``audio_input`` and
``tool_use_prompt`` are parts, and ``audio_cache_read`` a part of ``cache_read`` (Gemini's
cached audio); ``output`` is every billed output token (reasoning included), of which
``audio_output`` and ``image_output`` (Gemini's generated images) are parts.  With
``in``/``out``/``cr``/``cw``/``cw1h``/``ain``/``aout``/``acr``/``iout`` the model's prices::

    cost = (input - cache_read - cache_write - audio_input) * in      # tool-use prompt too
           + (cache_read - audio_cache_read) * cr + audio_cache_read * acr
           + (cache_write - cache_write_1h) * cw + cache_write_1h * cw1h
           + audio_input * ain + (output - audio_output - image_output) * out
           + audio_output * aout + image_output * iout

plus ``web_search_requests * ws`` (Anthropic's server-side web searches, priced per request:
``ws`` is nano-USD per request, $10 per 1,000 in the bundled table's Claude entries).

Each uncached / visible part is clamped at 0 (a malformed row never makes a negative charge).
A dimension the row has (non-zero) but the price entry does not list is charged at its
fallback -- cache read/write and audio input at ``in``, 1h cache writes at ``cw`` (else
``in``), audio and image output at ``out``, cached audio at ``cr`` (else ``in``) -- never as
free (gemini-2.5-flash-image's images are $30 per 1M tokens, its text $2.50), and the result is marked **partial**
(``price_status = 'priced_partial'``: counted, visible, re-priceable).  Web searches have no
token price to fall back to: without a ``ws`` price they add nothing and the result is partial.

Context tiers: when a model has tiers (e.g. gemini-2.5-pro above 200k prompt tokens, Claude
Sonnet 4/4.5 above 200k, gpt-5.4 above 272k), the tier applies to the **whole request** when
the prompt size (``input_tokens``, every prompt token) is **greater than** its
``above_input_tokens`` threshold.  Absent tier cache prices fall back to the tier's input
price, like the base ones; so do absent tier 1h-write and audio prices (to the tier's write,
input and output prices: partial; so do image output and cached audio), never to the base ones, which a long prompt does not pay
(Claude Sonnet 4/4.5's 1h writes are $6 per 1M at most 200k prompt tokens, $12 above).

Service tiers: a provider that sells a model at several processing tiers says in its
answer which one served the request (OpenAI ``service_tier`` ``flex`` / ``priority``,
Anthropic ``usage.service_tier``; the scanner reports it as ``Usage.service_tier``, None for
the standard tier).  The request is priced at that tier's prices when the entry lists them
(``ModelPrice.service_tiers``: every price of the formula replaced, the price entry named
``"<entry>@<tier>"``), else at the standard ones and marked **partial** (Anthropic's Priority
Tier, a commitment with no list price; a custom price; a tier the gateway does not know,
``"unknown"``).  A long prompt past the entry's context tier at a tier whose prices list no
context tier is priced at the tier's prices and marked partial.

Rounding: the exact sum ``tokens x nano-USD-per-1M`` is computed in integers and divided by
1,000,000 **once, at the end, rounding half up** (so a request is never more than 0.5
nano-USD off, and a run of requests is unbiased enough for billing; per-request ceil would
overcharge systematically by up to 1 nano-USD each).

Prices: project override -> global override -> bundled default (``data/prices.json``,
built by ``scripts/build_pricing_table.py``).  An unknown model is ``None`` -- never zero: the
caller records ``unpriced_unknown``.  :meth:`PricingRegistry.quote` also names the price entry
used (``"anthropic/claude-sonnet-4-5"``, ``"custom"``), which the usage row records.

Model-name matching (first hit wins; the resolution is cached per (provider, model))
------------------------------------------------------------------------------------
Provider ids are canonicalised first (:data:`PROVIDER_ALIASES`: ``google`` -> ``gemini``,
``together_ai`` -> ``together``, ``dashscope`` -> ``qwen``, ``x-ai`` -> ``xai``, ...).  Then the
model id is tried, case-insensitively, as:

1. the id as given;
2. without a leading ``models/`` (Gemini resource names), without a leading provider prefix
   that names this same provider (``openai/gpt-4o`` on openai, ``google/...`` on gemini), and
   without Fireworks' ``accounts/fireworks/models/``;
3. each of those without one version suffix: ``-YYYY-MM-DD``, ``-YYYYMMDD``, ``@YYYYMMDD``,
   ``-latest`` or ``-00N`` (so ``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``,
   ``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``, ``gemini-2.0-flash-001`` ->
   ``gemini-2.0-flash``), applied up to twice;
4. aggregators (``openrouter``, ``vercel``): when ``vendor/model`` is not in the
   aggregator's own table, ``model`` is looked up (steps 1-3) in the vendor's table
   (``anthropic/claude-sonnet-4-5`` -> anthropic ``claude-sonnet-4-5``).
5. resold models, on any provider whose own table does not list the model (Together, Groq,
   a custom ``base_url``...): the provider's pinned vendor (``PricingRegistry(pins=...)``,
   from the config's ``price_as``) when there is one, else the vendor the name's prefix names
   (``mistralai/``, ``anthropic/``, ``google/``, ``deepseek-ai/``, ``qwen/`` ...), else, for
   a bare name, the first-party tables in :data:`FIRST_PARTY` order.  The model is looked up
   there by steps 1-3 (``mistralai/Mistral-Small-24B`` -> mistral ``mistral-small-24b``).

Exact ids always win, so a dated id the table lists with its own price (e.g.
``gpt-3.5-turbo-1106``, ``gemini-2.5-flash-preview-05-20``) keeps that price.  Overrides are
matched against the names of steps 1-3 (lower-cased), most specific first; project overrides
are searched before global ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "FIRST_PARTY",
    "ModelPrice",
    "PriceTier",
    "PricingRegistry",
    "PROVIDER_ALIASES",
    "Quote",
    "TokenCounts",
    "canonical_provider",
    "cost_nano_usd",
    "load_default_prices",
    "price_tokens",
    "service_price",
]

TOKENS_PER_PRICE_UNIT: Final = 1_000_000  # prices are per 1M tokens
_HALF_UNIT: Final = TOKENS_PER_PRICE_UNIT // 2


# Other spellings of the table's provider ids (gateway ids, dataset ids, vendor prefixes).
PROVIDER_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "google": "gemini",
        "google-ai-studio": "gemini",
        "claude": "anthropic",
        "together_ai": "together",
        "together-ai": "together",
        "togetherai": "together",
        "dashscope": "qwen",
        "alibaba": "qwen",
        "x-ai": "xai",
        "moonshot": "moonshotai",
        "zhipuai": "zhipu",
        "z-ai": "zhipu",
        "zai": "zhipu",
        "mistralai": "mistral",
        "mistral-ai": "mistral",
        "fireworks_ai": "fireworks",
        "fireworks-ai": "fireworks",
        "perplexity-ai": "perplexity",
        "deepseek-ai": "deepseek",
        "qwenlm": "qwen",
        "moonshotai": "moonshotai",
    }
)

# Step 5: where a bare resold model name is looked for, in this order.
FIRST_PARTY: Final = ("openai", "anthropic", "gemini", "mistral", "deepseek", "xai", "qwen", "moonshotai", "zhipu")

# Providers whose model ids are "vendor/model" and that charge the vendor's list price
# when they have no own entry.
_AGGREGATORS: Final = frozenset({"openrouter", "vercel"})

_FIREWORKS_PREFIX: Final = "accounts/fireworks/models/"
_VERSION_SUFFIX: Final = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest|-00\d)$")

DEFAULT_CACHE_SIZE: Final = 4096


def _check_price(name: str, value: object, optional: bool) -> None:
    if value is None and optional:
        return
    if type(value) is not int:
        raise TypeError(f"{name} must be an int (nano-USD per 1M tokens), got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Prices that replace the base ones when the prompt has more than ``above_input_tokens``."""

    above_input_tokens: int
    input_per_mtok: int
    output_per_mtok: int
    cache_read_per_mtok: int | None
    cache_write_per_mtok: int | None
    cache_write_1h_per_mtok: int | None = None
    audio_input_per_mtok: int | None = None
    audio_output_per_mtok: int | None = None
    image_output_per_mtok: int | None = None
    audio_cache_read_per_mtok: int | None = None

    def __post_init__(self) -> None:
        _check_price("above_input_tokens", self.above_input_tokens, False)
        _check_price("input_per_mtok", self.input_per_mtok, False)
        _check_price("output_per_mtok", self.output_per_mtok, False)
        _check_price("cache_read_per_mtok", self.cache_read_per_mtok, True)
        _check_price("cache_write_per_mtok", self.cache_write_per_mtok, True)
        _check_price("cache_write_1h_per_mtok", self.cache_write_1h_per_mtok, True)
        _check_price("audio_input_per_mtok", self.audio_input_per_mtok, True)
        _check_price("audio_output_per_mtok", self.audio_output_per_mtok, True)
        _check_price("image_output_per_mtok", self.image_output_per_mtok, True)
        _check_price("audio_cache_read_per_mtok", self.audio_cache_read_per_mtok, True)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Integer nano-USD per 1,000,000 tokens.

    ``cache_read_per_mtok`` / ``cache_write_per_mtok`` ``None``: not offered / not listed --
    such tokens are charged at ``input_per_mtok``.  ``tiers``: context tiers, ascending by
    threshold (optional).  ``source``: where the price came from (a dataset key of the
    bundled table, or whatever the admin API sets); informational only.
    """

    input_per_mtok: int
    output_per_mtok: int
    cache_read_per_mtok: int | None
    cache_write_per_mtok: int | None
    tiers: tuple[PriceTier, ...] = ()
    source: str = ""
    cache_write_1h_per_mtok: int | None = None
    audio_input_per_mtok: int | None = None
    audio_output_per_mtok: int | None = None
    #: nano-USD per server-side web search (not per 1M: one request is one unit)
    web_search_per_request: int | None = None
    #: the prices of the provider's service tiers, by the name the scanner reports
    #: (``Usage.service_tier``: OpenAI's ``flex`` / ``priority``): ``((name, price), ...)``;
    #: a tier's price has none of its own
    service_tiers: tuple[tuple[str, ModelPrice], ...] = ()
    #: generated image tokens (Gemini's IMAGE candidates tokens)
    image_output_per_mtok: int | None = None
    #: cached audio input tokens (Gemini's AUDIO cache tokens)
    audio_cache_read_per_mtok: int | None = None

    def __post_init__(self) -> None:
        _check_price("input_per_mtok", self.input_per_mtok, False)
        _check_price("output_per_mtok", self.output_per_mtok, False)
        _check_price("cache_read_per_mtok", self.cache_read_per_mtok, True)
        _check_price("cache_write_per_mtok", self.cache_write_per_mtok, True)
        _check_price("cache_write_1h_per_mtok", self.cache_write_1h_per_mtok, True)
        _check_price("audio_input_per_mtok", self.audio_input_per_mtok, True)
        _check_price("audio_output_per_mtok", self.audio_output_per_mtok, True)
        _check_price("web_search_per_request", self.web_search_per_request, True)
        _check_price("image_output_per_mtok", self.image_output_per_mtok, True)
        _check_price("audio_cache_read_per_mtok", self.audio_cache_read_per_mtok, True)
        if type(self.tiers) is not tuple:
            raise TypeError("tiers must be a tuple of PriceTier")
        last = -1
        for tier in self.tiers:
            if not isinstance(tier, PriceTier):
                raise TypeError("tiers must be a tuple of PriceTier")
            if tier.above_input_tokens <= last:
                raise ValueError("tiers must be strictly ascending by above_input_tokens")
            last = tier.above_input_tokens
        if type(self.service_tiers) is not tuple:
            raise TypeError("service_tiers must be a tuple of (name, ModelPrice)")
        for item in self.service_tiers:
            if not (type(item) is tuple and len(item) == 2 and type(item[0]) is str
                    and isinstance(item[1], ModelPrice) and not item[1].service_tiers):
                raise TypeError("service_tiers must be a tuple of (name, ModelPrice without service tiers)")


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Token counts in the row convention (see the module docstring)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    tool_use_prompt_tokens: int = 0
    web_search_requests: int = 0
    image_output_tokens: int = 0
    audio_cache_read_tokens: int = 0

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"token counts must be ints, got {self!r}")
            if value < 0:
                raise ValueError(f"token counts must be >= 0, got {self!r}")


@dataclass(frozen=True, slots=True)
class Quote:
    """What one exchange costs: exact nano-USD, whether a dimension had no price of its own
    (``partial``), and the price entry used (``"provider/model"`` of the bundled table, or
    ``"custom"`` for an admin-set price)."""

    cost_nano_usd: int
    partial: bool
    entry: str


def canonical_provider(provider: str) -> str:
    """The table's provider id for ``provider`` (lower-cased, aliases resolved)."""
    key = provider.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def cost_nano_usd(price: ModelPrice, tokens: TokenCounts) -> int:
    """Cost in integer nano-USD; pure, integer arithmetic, rounded half up once at the end."""
    return price_tokens(
        price, tokens.input_tokens, tokens.output_tokens, tokens.cache_read_tokens,
        tokens.cache_write_tokens, tokens.cache_write_1h_tokens, tokens.audio_input_tokens,
        tokens.audio_output_tokens, tokens.web_search_requests, None, tokens.image_output_tokens,
        tokens.audio_cache_read_tokens,
    )[0]  # fmt: skip


_TEXT_OUTPUT_ONLY = ((0, 0),)


def output_parts(price: ModelPrice, output_tokens: int) -> tuple[tuple[int, int], ...]:
    """The ways ``output_tokens`` of output may be billed by ``price`` (its context and
    service tiers included), as ``(audio_output, image_output)`` parts for
    ``price_tokens``: all text, and all audio or all images where a price lists a rate for
    them (each may be dearer than text: gemini-2.5-flash-image's images $30 per 1M against
    $2.50).  For a bound the provider cannot exceed whatever it generates."""
    prices: tuple[ModelPrice | PriceTier, ...] = (price, *price.tiers, *(p for _, p in price.service_tiers))
    parts = [(0, 0)]
    if any(p.audio_output_per_mtok is not None for p in prices):
        parts.append((output_tokens, 0))
    if any(p.image_output_per_mtok is not None for p in prices):
        parts.append((0, output_tokens))
    return _TEXT_OUTPUT_ONLY if len(parts) == 1 else tuple(parts)


def service_price(price: ModelPrice, service_tier: str | None) -> ModelPrice | None:
    """The price ``price`` lists for ``service_tier`` (None: the standard tier), or None
    when it lists none."""
    if service_tier is None:
        return price
    for name, tier_price in price.service_tiers:
        if name == service_tier:
            return tier_price
    return None


def price_tokens(
    price: ModelPrice, inp: int, out: int, cr: int, cw: int, cw1h: int = 0, ain: int = 0, aout: int = 0,
    ws: int = 0, service_tier: str | None = None, iout: int = 0, acr: int = 0,
) -> tuple[int, bool]:
    """``(cost in nano-USD, partial)`` of validated counts: the one implementation of the
    formula in the module docstring, at the prices of ``service_tier`` (module docstring,
    "Service tiers").  ``iout``: image output tokens; ``acr``: cached audio tokens."""
    tier_partial = False
    if service_tier is not None:
        tier_price = service_price(price, service_tier)
        if tier_price is None:
            tier_partial = True  # a tier the entry lists no price for: its standard prices
        else:
            if price.tiers and not tier_price.tiers and inp > price.tiers[0].above_input_tokens:
                tier_partial = True  # a long prompt: the tier's prices list no context tier
            price = tier_price
    in_p = price.input_per_mtok
    out_p = price.output_per_mtok
    cr_p = price.cache_read_per_mtok
    cw_p = price.cache_write_per_mtok
    cw1h_p = price.cache_write_1h_per_mtok
    ain_p = price.audio_input_per_mtok
    aout_p = price.audio_output_per_mtok
    iout_p = price.image_output_per_mtok
    acr_p = price.audio_cache_read_per_mtok
    for tier in price.tiers:  # ascending: the last one passed applies
        if inp <= tier.above_input_tokens:
            break
        in_p = tier.input_per_mtok
        out_p = tier.output_per_mtok
        cr_p = tier.cache_read_per_mtok
        cw_p = tier.cache_write_per_mtok
        cw1h_p = tier.cache_write_1h_per_mtok
        ain_p = tier.audio_input_per_mtok
        aout_p = tier.audio_output_per_mtok
        iout_p = tier.image_output_per_mtok
        acr_p = tier.audio_cache_read_per_mtok
    # parts, each within what is left of its total
    if cr > inp:
        cr = inp
    if cw > inp - cr:
        cw = inp - cr
    if cw1h > cw:
        cw1h = cw
    if ain > inp - cr - cw:
        ain = inp - cr - cw
    if aout > out:
        aout = out
    if iout > out - aout:
        iout = out - aout
    if acr > cr:
        acr = cr
    partial = False
    if cr_p is None:
        cr_p = in_p
        partial = cr > 0
    if cw_p is None:
        cw_p = in_p
        partial = partial or cw > cw1h
    if cw1h_p is None:
        cw1h_p = cw_p
        partial = partial or cw1h > 0
    if ain_p is None:
        ain_p = in_p
        partial = partial or ain > 0
    if aout_p is None:
        aout_p = out_p
        partial = partial or aout > 0
    if iout_p is None:
        iout_p = out_p
        partial = partial or iout > 0
    if acr_p is None:
        acr_p = cr_p
        partial = partial or acr > 0
    ws_p = price.web_search_per_request if ws else 0  # (per request: no context tier changes it)
    if ws_p is None:
        ws_p = 0
        partial = True
    total = (
        (inp - cr - cw - ain) * in_p + (cr - acr) * cr_p + acr * acr_p + (cw - cw1h) * cw_p
        + cw1h * cw1h_p + ain * ain_p + (out - aout - iout) * out_p + aout * aout_p + iout * iout_p
        + ws * ws_p * TOKENS_PER_PRICE_UNIT
    )  # fmt: skip
    return (total + _HALF_UNIT) // TOKENS_PER_PRICE_UNIT, partial or tier_partial


# ----------------------------------------------------------------------------- table


def _opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise ValueError(f"prices.json: {key}={value!r} is not an integer")
    return value


def _req_int(obj: Mapping[str, Any], key: str) -> int:
    value = _opt_int(obj, key)
    if value is None:
        raise ValueError(f"prices.json: missing {key}")
    return value


def _parse_table(doc: Any) -> dict[tuple[str, str], ModelPrice]:
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ValueError("prices.json: no 'models' object")
    table: dict[tuple[str, str], ModelPrice] = {}
    for provider, models in doc["models"].items():
        if not isinstance(models, dict):
            raise ValueError(f"prices.json: models[{provider!r}] is not an object")
        for model, entry in models.items():
            if not isinstance(entry, dict):
                raise ValueError(f"prices.json: {provider}/{model} is not an object")
            services = entry.get("svc", {})
            if not isinstance(services, dict) or not all(isinstance(v, dict) for v in services.values()):
                raise ValueError(f"prices.json: {provider}/{model} svc is not an object of objects")
            ws = _opt_int(entry, "ws")
            table[(str(provider), str(model))] = _entry_price(
                entry,
                ws,
                tuple(
                    # (a web search costs the same at every service tier)
                    (str(name), _entry_price(prices, ws if "ws" not in prices else _opt_int(prices, "ws"), ()))
                    for name, prices in sorted(services.items())
                ),
            )
    return table


def _entry_price(entry: Mapping[str, Any], ws: int | None, services: tuple[tuple[str, ModelPrice], ...]) -> ModelPrice:
    """The ``ModelPrice`` of one prices.json entry (or of one of its ``svc`` prices)."""
    tiers = tuple(
        PriceTier(
            _req_int(t, "above"),
            _req_int(t, "in"),
            _req_int(t, "out"),
            _opt_int(t, "cr"),
            _opt_int(t, "cw"),
            _opt_int(t, "cw1h"),
            _opt_int(t, "ain"),
            _opt_int(t, "aout"),
            _opt_int(t, "iout"),
            _opt_int(t, "acr"),
        )
        for t in entry.get("tiers", ())
    )
    return ModelPrice(
        _req_int(entry, "in"),
        _req_int(entry, "out"),
        _opt_int(entry, "cr"),
        _opt_int(entry, "cw"),
        tiers,
        str(entry.get("src", "")),
        _opt_int(entry, "cw1h"),
        _opt_int(entry, "ain"),
        _opt_int(entry, "aout"),
        ws,
        services,
        _opt_int(entry, "iout"),
        _opt_int(entry, "acr"),
    )


@lru_cache(maxsize=1)
def _bundled() -> Mapping[tuple[str, str], ModelPrice]:
    text = resources.files("plano_fast").joinpath("data/prices.json").read_text("utf-8")
    return MappingProxyType(_parse_table(json.loads(text)))


def load_default_prices() -> dict[tuple[str, str], ModelPrice]:
    """The bundled table, ``(provider, model) -> ModelPrice`` (a fresh dict; parsed once)."""
    return dict(_bundled())


# -------------------------------------------------------------------------- matching


def _strip_prefixes(provider: str, model: str) -> list[str]:
    """Step 2 of the matching rules: ids without ``models/`` / own-provider prefixes."""
    out: list[str] = []
    name = model
    while True:
        if name.startswith("models/"):
            name = name[len("models/") :]
        elif name.startswith(_FIREWORKS_PREFIX):
            name = name[len(_FIREWORKS_PREFIX) :]
        else:
            head, sep, rest = name.partition("/")
            if sep and rest and canonical_provider(head) == provider:
                name = rest
            else:
                break
        out.append(name)
    return out


def _name_variants(provider: str, model: str) -> tuple[str, ...]:
    """Lower-cased candidate names for ``model`` on ``provider``, most specific first."""
    base = model.strip().lower()
    stems = [base, *_strip_prefixes(provider, base)]
    names: list[str] = []
    for stem in stems:
        name = stem
        for _ in range(3):  # the name itself, then up to two version suffixes removed
            if name and name not in names:
                names.append(name)
            stripped = _VERSION_SUFFIX.sub("", name)
            if stripped == name:
                break
            name = stripped
    return tuple(names)


@dataclass(frozen=True, slots=True)
class _Resolution:
    names: tuple[str, ...]  # override lookup keys
    default: ModelPrice | None
    table_key: tuple[str, str] | None
    entry: str  # "provider/model" of table_key, "" when none


_CUSTOM: Final = "custom"


class PricingRegistry:
    """Prices per (provider, model), with admin overrides; all lookups O(1) after the first.

    ``pins``: gateway provider id -> the table provider its resold models are priced from
    (step 5 of the matching rules), e.g. ``{"my-vllm": "openai"}``.
    """

    def __init__(
        self,
        defaults: Mapping[tuple[str, str], ModelPrice] | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        pins: Mapping[str, str] | None = None,
    ) -> None:
        if defaults is None:
            defaults = _bundled()
        index: dict[str, dict[str, tuple[str, ModelPrice]]] = {}
        for (provider, model), price in defaults.items():
            if not isinstance(price, ModelPrice):
                raise TypeError(f"default price for {provider}/{model} is not a ModelPrice")
            per_provider = index.setdefault(canonical_provider(provider), {})
            per_provider.setdefault(model.strip().lower(), (model, price))
        self._index = index
        self._pins: dict[str, str] = {}
        self._cache: dict[tuple[str, str], _Resolution] = {}
        self._cache_size = max(1, cache_size)
        self.set_pins(pins or {})
        empty_g: dict[str, ModelPrice] = {}
        empty_p: dict[tuple[str, str], ModelPrice] = {}
        # (global, project) swapped as one tuple, so a reader never sees a half-updated pair.
        self._overrides: tuple[dict[str, ModelPrice], dict[tuple[str, str], ModelPrice]] = (
            empty_g,
            empty_p,
        )

    def __len__(self) -> int:
        return sum(len(models) for models in self._index.values())

    def set_pins(self, pins: Mapping[str, str]) -> None:
        """Replace the per-provider vendor pins (resolutions are recomputed)."""
        self._pins = {canonical_provider(k): canonical_provider(v) for k, v in pins.items()}
        self._cache = {}

    def set_overrides(
        self,
        global_prices: Mapping[str, ModelPrice],
        project_prices: Mapping[tuple[str, str], ModelPrice],
    ) -> None:
        """Replace all custom prices at once (model ids are matched case-insensitively)."""
        new_global: dict[str, ModelPrice] = {}
        for model, price in global_prices.items():
            if not isinstance(price, ModelPrice):
                raise TypeError(f"override for {model!r} is not a ModelPrice")
            new_global[model.strip().lower()] = price
        new_project: dict[tuple[str, str], ModelPrice] = {}
        for (project_id, model), price in project_prices.items():
            if not isinstance(price, ModelPrice):
                raise TypeError(f"override for {project_id!r}/{model!r} is not a ModelPrice")
            new_project[(project_id, model.strip().lower())] = price
        self._overrides = (new_global, new_project)

    def _lookup(self, provider: str, names: tuple[str, ...]) -> tuple[str, ModelPrice] | None:
        table = self._index.get(provider)
        if table is not None:
            for name in names:
                hit = table.get(name)
                if hit is not None:
                    return hit
        return None

    def _find(self, canon: str, model: str, names: tuple[str, ...]) -> tuple[str, str, ModelPrice] | None:
        """Steps 1-5 of the matching rules: ``(table provider, table model, price)``."""
        found = self._lookup(canon, names)
        if found is not None:
            return (canon, found[0], found[1])
        vendor, sep, rest = model.strip().lower().lstrip("~").partition("/")
        vcanon = canonical_provider(vendor) if sep and rest else ""
        if canon in _AGGREGATORS:
            if vcanon and vcanon != canon:
                found = self._lookup(vcanon, _name_variants(vcanon, rest))
                if found is not None:
                    return (vcanon, found[0], found[1])
            return None
        pinned = self._pins.get(canon)
        if pinned is not None:
            tables: tuple[str, ...] = (pinned,)
        elif vcanon:
            tables = (vcanon,) if vcanon in self._index else ()
        else:
            tables = FIRST_PARTY
        bare = rest if vcanon else model
        for table in tables:
            if table == canon:
                continue
            found = self._lookup(table, _name_variants(table, bare))
            if found is None and bare is not model:
                found = self._lookup(table, _name_variants(table, model))
            if found is not None:
                return (table, found[0], found[1])
        return None

    def _resolve(self, provider: str, model: str) -> _Resolution:
        key = (provider, model)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        canon = canonical_provider(provider)
        names = _name_variants(canon, model)
        found = self._find(canon, model, names)
        resolution = _Resolution(
            names,
            None if found is None else found[2],
            None if found is None else (found[0], found[1]),
            "" if found is None else f"{found[0]}/{found[1]}",
        )
        cache = self._cache
        if len(cache) >= self._cache_size:
            try:
                del cache[next(iter(cache))]  # FIFO eviction
            except (StopIteration, KeyError, RuntimeError):
                cache.clear()
        cache[key] = resolution
        return resolution

    def resolve(self, provider: str, model: str) -> tuple[str, str] | None:
        """The bundled-table entry ``(provider, model)`` that ``model`` maps to, if any."""
        return self._resolve(provider, model).table_key

    def _custom(self, resolution: _Resolution, project_id: str | None) -> ModelPrice | None:
        global_prices, project_prices = self._overrides
        if project_prices and project_id is not None:
            for name in resolution.names:
                hit = project_prices.get((project_id, name))
                if hit is not None:
                    return hit
        if global_prices:
            for name in resolution.names:
                hit = global_prices.get(name)
                if hit is not None:
                    return hit
        return None

    def price_for(self, provider: str, model: str, project_id: str | None) -> ModelPrice | None:
        """Project override -> global override -> bundled default; ``None`` when unknown."""
        resolution = self._resolve(provider, model)
        custom = self._custom(resolution, project_id)
        return resolution.default if custom is None else custom

    def cost_nano_usd(
        self, provider: str, model: str, project_id: str | None, tokens: TokenCounts
    ) -> int | None:
        """Cost in integer nano-USD, or ``None`` when the model has no price (never 0)."""
        quote = self.quote(provider, model, project_id, tokens)
        return None if quote is None else quote.cost_nano_usd

    def quote(
        self, provider: str, model: str, project_id: str | None, tokens: TokenCounts,
        service_tier: str | None = None,
    ) -> Quote | None:
        """The cost, partial flag and price entry; ``None`` when the model has no price.
        ``service_tier``: the tier the response says served it (``Usage.service_tier``)."""
        return self.quote_counts(
            provider, model, project_id, tokens.input_tokens, tokens.output_tokens,
            tokens.cache_read_tokens, tokens.cache_write_tokens, tokens.cache_write_1h_tokens,
            tokens.audio_input_tokens, tokens.audio_output_tokens, tokens.web_search_requests,
            service_tier=service_tier, image_output_tokens=tokens.image_output_tokens,
            audio_cache_read_tokens=tokens.audio_cache_read_tokens,
        )  # fmt: skip

    def quote_counts(
        self, provider: str, model: str, project_id: str | None, *counts: int, service_tier: str | None = None,
        image_output_tokens: int = 0, audio_cache_read_tokens: int = 0,
    ) -> Quote | None:
        """``quote(provider, model, project_id, TokenCounts(...))`` for the billing hot path:
        the same result and the same errors, without building a ``TokenCounts`` unless the
        counts are invalid (to raise its error).  ``counts``: as ``price_counts`` takes them."""
        priced = self.price_counts(
            provider, model, project_id, *counts, service_tier=service_tier,
            image_output_tokens=image_output_tokens, audio_cache_read_tokens=audio_cache_read_tokens,
        )  # fmt: skip
        return None if priced is None else Quote(*priced)

    def price_counts(
        self,
        provider: str,
        model: str,
        project_id: str | None,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        cache_write_1h_tokens: int = 0,
        audio_input_tokens: int = 0,
        audio_output_tokens: int = 0,
        web_search_requests: int = 0,
        *,
        service_tier: str | None = None,
        image_output_tokens: int = 0,
        audio_cache_read_tokens: int = 0,
    ) -> tuple[int, bool, str] | None:
        """``quote_counts`` as a plain ``(cost_nano_usd, partial, entry)`` tuple: what the
        flusher's drain reads per event.  A ``Quote`` (a frozen dataclass: one
        ``object.__setattr__`` call per field) cost ~0.4 µs an event to build, a sixth of
        pricing and row building together (benchmarks/bench_billing_stages.py)."""
        if not (
            type(input_tokens) is int
            and type(output_tokens) is int
            and type(cache_read_tokens) is int
            and type(cache_write_tokens) is int
            and type(cache_write_1h_tokens) is int
            and type(audio_input_tokens) is int
            and type(audio_output_tokens) is int
            and type(web_search_requests) is int
            and type(image_output_tokens) is int
            and type(audio_cache_read_tokens) is int
            and (input_tokens | output_tokens | cache_read_tokens | cache_write_tokens
                 | cache_write_1h_tokens | audio_input_tokens | audio_output_tokens
                 | web_search_requests | image_output_tokens | audio_cache_read_tokens) >= 0
        ):  # raises TokenCounts' own TypeError / ValueError
            TokenCounts(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, 0,
                        cache_write_1h_tokens, audio_input_tokens, audio_output_tokens,
                        web_search_requests=web_search_requests, image_output_tokens=image_output_tokens,
                        audio_cache_read_tokens=audio_cache_read_tokens)  # fmt: skip
        resolution = self._cache.get((provider, model))
        if resolution is None:
            resolution = self._resolve(provider, model)
        global_prices, project_prices = self._overrides
        price = self._custom(resolution, project_id) if global_prices or project_prices else None
        if price is not None:
            entry = _CUSTOM
        else:
            price = resolution.default
            if price is None:
                return None
            entry = resolution.entry
        cost, partial = price_tokens(
            price, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
            cache_write_1h_tokens, audio_input_tokens, audio_output_tokens, web_search_requests, service_tier,
            image_output_tokens, audio_cache_read_tokens,
        )  # fmt: skip
        if service_tier is not None and service_price(price, service_tier) is not None:
            entry = f"{entry}@{service_tier}"  # the tier's own prices were used
        return cost, partial, entry
