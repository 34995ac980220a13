"""Pricing: the integer nano-USD cost of one exchange, from its provider-reported token counts.

Pure code: no I/O after the bundled table is loaded (once, at registry construction), no
floats anywhere on the cost path.  Money is an ``int`` of **nano-USD** (1 nano-USD = 1e-9 USD);
prices are ``int`` nano-USD **per 1,000,000 tokens**, so every published price down to
$0.000001 per 1M tokens is exact.

Cost semantics (per usage family)
---------------------------------
The scanner (``_scan_py``) reports the counts exactly as the provider reported them, and
providers disagree on what a count includes (WIRE_FORMATS.md sections 3.3, 5, 6.2, 7, 8).  With
``in``/``out``/``cr``/``cw`` the model's input / output / cache-read / cache-write prices:

``openai`` family -- openai, deepseek, groq, mistral, together, fireworks, perplexity,
cerebras, qwen, openrouter, moonshotai, zhipu and any provider not listed below:
    ``prompt_tokens`` *includes* cached tokens (``prompt_tokens_details.cached_tokens``) and the
    2026 ``cache_write_tokens``; ``completion_tokens`` *includes* reasoning tokens.  So::

        cost = (input - cache_read - cache_write) * in + cache_read * cr
               + cache_write * cw + output * out            # reasoning NOT added again

    (With no cache-write price -- the usual case -- this is exactly
    ``(input - cache_read) * in + cache_read * cr + output * out``.)  DeepSeek's
    ``prompt_cache_hit_tokens`` is the scanner's cache_read.
``anthropic`` family -- anthropic:
    ``input_tokens`` *excludes* cache reads and writes, which are reported separately
    (``cache_read_input_tokens``, ``cache_creation_input_tokens``); thinking is inside
    ``output_tokens``::

        cost = input * in + cache_write * cw + cache_read * cr + output * out
``separate_reasoning`` family -- gemini, xai:
    input includes cached tokens (Gemini ``promptTokenCount`` includes
    ``cachedContentTokenCount``; xAI ``prompt_tokens`` includes ``cached_tokens``) but the
    output count does **not** include reasoning: Gemini ``candidatesTokenCount`` excludes
    ``thoughtsTokenCount`` (billed as output), and xAI reports ``reasoning_tokens`` outside
    ``completion_tokens`` (recorded: 291 prompt + 26 completion + 189 reasoning = 506 total;
    the genai-prices x-ai extractor adds them too)::

        cost = (input - cache_read - cache_write) * in + cache_read * cr
               + cache_write * cw + (output + reasoning) * out

    The brief puts xAI in the OpenAI family; the recorded traffic says otherwise, so xAI is
    here.  Caveat: plano_fast reaches Gemini through its OpenAI-compatible endpoint, whose
    usage is OpenAI-shaped; if that endpoint already folds thoughts into
    ``completion_tokens`` *and* reports ``reasoning_tokens``, the caller must pass
    ``family="openai"`` for those records (the ``family`` argument overrides the provider
    default).

``input - cache_read - cache_write`` is clamped at 0 (a malformed usage block never makes a
negative charge).  A ``None`` cache price means the table lists none for that model: those
tokens are charged at the **input** price (never undercharged as free).  A cache-write price
is the 5-minute one (Anthropic's 1-hour writes are not distinguished in the counts).

Context tiers: when a model has tiers (e.g. gemini-2.5-pro above 200k prompt tokens, Claude
Sonnet 4/4.5 above 200k, gpt-5.4 above 272k), the tier applies to the **whole request** when
the prompt size is **greater than** its ``above_input_tokens`` threshold.  Prompt size =
``input_tokens`` (openai / separate_reasoning families: already includes cached tokens) or
``input + cache_read + cache_write`` (anthropic).  Absent tier cache prices fall back to the
tier's input price, like the base ones.

Rounding: the exact sum ``tokens x nano-USD-per-1M`` is computed in integers and divided by
1,000,000 **once, at the end, rounding half up** (so a request is never more than 0.5
nano-USD off, and a run of requests is unbiased enough for billing; per-request ceil would
overcharge systematically by up to 1 nano-USD each).

Prices: project override -> global override -> bundled default (``data/prices.json``,
built by ``scripts/build_pricing_table.py``).  An unknown model is ``None`` -- never zero: the
caller records ``unpriced_unknown``.

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
    "FAMILY_ANTHROPIC",
    "FAMILY_OPENAI",
    "FAMILY_SEPARATE_REASONING",
    "ModelPrice",
    "PriceTier",
    "PricingRegistry",
    "PROVIDER_ALIASES",
    "TokenCounts",
    "canonical_provider",
    "cost_nano_usd",
    "load_default_prices",
    "usage_family",
]

TOKENS_PER_PRICE_UNIT: Final = 1_000_000  # prices are per 1M tokens
_HALF_UNIT: Final = TOKENS_PER_PRICE_UNIT // 2

FAMILY_OPENAI: Final = "openai"
FAMILY_ANTHROPIC: Final = "anthropic"
FAMILY_SEPARATE_REASONING: Final = "separate_reasoning"

_PROVIDER_FAMILY: Final[Mapping[str, str]] = MappingProxyType(
    {
        "anthropic": FAMILY_ANTHROPIC,
        "gemini": FAMILY_SEPARATE_REASONING,
        "xai": FAMILY_SEPARATE_REASONING,
    }
)

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
    }
)

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

    def __post_init__(self) -> None:
        _check_price("above_input_tokens", self.above_input_tokens, False)
        _check_price("input_per_mtok", self.input_per_mtok, False)
        _check_price("output_per_mtok", self.output_per_mtok, False)
        _check_price("cache_read_per_mtok", self.cache_read_per_mtok, True)
        _check_price("cache_write_per_mtok", self.cache_write_per_mtok, True)


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

    def __post_init__(self) -> None:
        _check_price("input_per_mtok", self.input_per_mtok, False)
        _check_price("output_per_mtok", self.output_per_mtok, False)
        _check_price("cache_read_per_mtok", self.cache_read_per_mtok, True)
        _check_price("cache_write_per_mtok", self.cache_write_per_mtok, True)
        if type(self.tiers) is not tuple:
            raise TypeError("tiers must be a tuple of PriceTier")
        last = -1
        for tier in self.tiers:
            if not isinstance(tier, PriceTier):
                raise TypeError("tiers must be a tuple of PriceTier")
            if tier.above_input_tokens <= last:
                raise ValueError("tiers must be strictly ascending by above_input_tokens")
            last = tier.above_input_tokens


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Token counts exactly as the provider reported them (see the module docstring)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int

    def __post_init__(self) -> None:
        i = self.input_tokens
        o = self.output_tokens
        cr = self.cache_read_tokens
        cw = self.cache_write_tokens
        r = self.reasoning_tokens
        if not (
            type(i) is int and type(o) is int and type(cr) is int and type(cw) is int and type(r) is int
        ):
            raise TypeError(f"token counts must be ints, got {self!r}")
        if i < 0 or o < 0 or cr < 0 or cw < 0 or r < 0:
            raise ValueError(f"token counts must be >= 0, got {self!r}")


def canonical_provider(provider: str) -> str:
    """The table's provider id for ``provider`` (lower-cased, aliases resolved)."""
    key = provider.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def usage_family(provider: str) -> str:
    """The usage family (``FAMILY_*``) of a provider's reported token counts."""
    return _PROVIDER_FAMILY.get(canonical_provider(provider), FAMILY_OPENAI)


def cost_nano_usd(
    price: ModelPrice, provider: str, tokens: TokenCounts, *, family: str | None = None
) -> int:
    """Cost in integer nano-USD; pure, integer arithmetic, rounded half up once at the end.

    ``family`` overrides the usage family derived from ``provider`` (see module docstring).
    """
    fam = usage_family(provider) if family is None else family
    return _cost(
        price,
        fam,
        tokens.input_tokens,
        tokens.output_tokens,
        tokens.cache_read_tokens,
        tokens.cache_write_tokens,
        tokens.reasoning_tokens,
    )


def _cost(price: ModelPrice, fam: str, inp: int, output: int, cr: int, cw: int, reasoning: int) -> int:
    """``cost_nano_usd`` on validated counts (the one implementation of the formula)."""
    if fam == FAMILY_ANTHROPIC:
        uncached = inp
        prompt = inp + cr + cw
        out = output
    elif fam == FAMILY_OPENAI or fam == FAMILY_SEPARATE_REASONING:
        uncached = inp - cr - cw
        if uncached < 0:
            uncached = 0
        prompt = inp
        out = output
        if fam == FAMILY_SEPARATE_REASONING:
            out += reasoning
    else:
        raise ValueError(f"unknown usage family {fam!r}")

    in_p = price.input_per_mtok
    out_p = price.output_per_mtok
    cr_p = price.cache_read_per_mtok
    cw_p = price.cache_write_per_mtok
    for tier in price.tiers:  # ascending: the last one passed applies
        if prompt <= tier.above_input_tokens:
            break
        in_p = tier.input_per_mtok
        out_p = tier.output_per_mtok
        cr_p = tier.cache_read_per_mtok
        cw_p = tier.cache_write_per_mtok
    if cr_p is None:
        cr_p = in_p
    if cw_p is None:
        cw_p = in_p
    total = uncached * in_p + cr * cr_p + cw * cw_p + out * out_p
    return (total + _HALF_UNIT) // TOKENS_PER_PRICE_UNIT


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
            tiers = tuple(
                PriceTier(
                    _req_int(t, "above"),
                    _req_int(t, "in"),
                    _req_int(t, "out"),
                    _opt_int(t, "cr"),
                    _opt_int(t, "cw"),
                )
                for t in entry.get("tiers", ())
            )
            table[(str(provider), str(model))] = ModelPrice(
                _req_int(entry, "in"),
                _req_int(entry, "out"),
                _opt_int(entry, "cr"),
                _opt_int(entry, "cw"),
                tiers,
                str(entry.get("src", "")),
            )
    return table


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
    family: str


class PricingRegistry:
    """Prices per (provider, model), with admin overrides; all lookups O(1) after the first."""

    def __init__(
        self,
        defaults: Mapping[tuple[str, str], ModelPrice] | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
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
        self._cache: dict[tuple[str, str], _Resolution] = {}
        self._cache_size = max(1, cache_size)
        empty_g: dict[str, ModelPrice] = {}
        empty_p: dict[tuple[str, str], ModelPrice] = {}
        # (global, project) swapped as one tuple, so a reader never sees a half-updated pair.
        self._overrides: tuple[dict[str, ModelPrice], dict[tuple[str, str], ModelPrice]] = (
            empty_g,
            empty_p,
        )

    def __len__(self) -> int:
        return sum(len(models) for models in self._index.values())

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

    def _resolve(self, provider: str, model: str) -> _Resolution:
        key = (provider, model)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        canon = canonical_provider(provider)
        names = _name_variants(canon, model)
        found = self._lookup(canon, names)
        table_key = None if found is None else (canon, found[0])
        if found is None and canon in _AGGREGATORS:
            vendor, sep, rest = model.strip().lower().lstrip("~").partition("/")
            vcanon = canonical_provider(vendor)
            if sep and rest and vcanon != canon:
                found = self._lookup(vcanon, _name_variants(vcanon, rest))
                table_key = None if found is None else (vcanon, found[0])
        resolution = _Resolution(
            names,
            None if found is None else found[1],
            table_key,
            _PROVIDER_FAMILY.get(canon, FAMILY_OPENAI),
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

    def _price(self, resolution: _Resolution, project_id: str | None) -> ModelPrice | None:
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
        return resolution.default

    def price_for(self, provider: str, model: str, project_id: str | None) -> ModelPrice | None:
        """Project override -> global override -> bundled default; ``None`` when unknown."""
        return self._price(self._resolve(provider, model), project_id)

    def cost_nano_usd(
        self,
        provider: str,
        model: str,
        project_id: str | None,
        tokens: TokenCounts,
        *,
        family: str | None = None,
    ) -> int | None:
        """Cost in integer nano-USD, or ``None`` when the model has no price (never 0)."""
        resolution = self._resolve(provider, model)
        price = self._price(resolution, project_id)
        if price is None:
            return None
        return cost_nano_usd(
            price, provider, tokens, family=resolution.family if family is None else family
        )

    def cost_of_counts(
        self,
        provider: str,
        model: str,
        project_id: str | None,
        family: str,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        reasoning_tokens: int,
    ) -> int | None:
        """``cost_nano_usd(provider, model, project_id, TokenCounts(...), family=family)``.

        The same result and the same errors, for the billing hot path: the counts are
        passed as they are (no ``TokenCounts`` is built unless they are invalid, to raise
        its error) and the family is required.
        """
        if not (
            type(input_tokens) is int
            and type(output_tokens) is int
            and type(cache_read_tokens) is int
            and type(cache_write_tokens) is int
            and type(reasoning_tokens) is int
            and (input_tokens | output_tokens | cache_read_tokens | cache_write_tokens | reasoning_tokens) >= 0
        ):  # raises TokenCounts' own TypeError / ValueError
            TokenCounts(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens)
        resolution = self._cache.get((provider, model))
        if resolution is None:
            resolution = self._resolve(provider, model)
        global_prices, project_prices = self._overrides
        if global_prices or project_prices:
            price = self._price(resolution, project_id)
        else:
            price = resolution.default
        if price is None:
            return None
        return _cost(
            price, family, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens
        )
