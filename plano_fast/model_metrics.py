"""``model_metrics_sources``: cost and latency per model from outside the gateway.

Plano's ``router/model_metrics.rs`` (katanemo/plano 0.4.36) and its config schema
(``config/plano_config_schema.yaml``), same fields and same parsing:

* ``{type: cost, provider: digitalocean | models.dev, url?, refresh_interval?,
  model_aliases?}``: a pricing catalog.  ``digitalocean`` reads ``{data: [{model_id,
  pricing: {input_price_per_million, output_price_per_million}}]}`` whose prices are USD
  per *token* (scaled by 1e6, as Plano does); ``models.dev`` reads ``{<provider>: {models:
  {<model>: {cost: {input, output}}}}}`` keyed ``provider/model`` (the bare model id too).
  ``model_aliases`` maps a catalog key to the model name used in ``routing_preferences``.
  The ranking figure is input + output USD per million tokens.
* ``{type: latency, provider: prometheus, url, query, refresh_interval?}``: ``GET
  {url}/api/v1/query?query=...``, one figure per result series labelled ``model_name``.

At most one source of each type (Plano's startup check).  Each source is fetched once when
the gateway starts and again every ``refresh_interval`` seconds when set (Plano: once
only without it), always off the request path: a request reads the last figures, a dict
lookup per candidate model.  Where plano_fast differs, on purpose:

* a failed fetch keeps the last good figures (Plano empties them) and is logged once per
  run of failures (and once when the source answers again);
* a route whose models have no figure in the source (none fetched yet, every fetch
  failed, or the catalog does not name them) is ranked by the bundled price table
  (``cheapest``) or the gateway's own measured latency (``fastest``) instead of staying in
  config order; Plano refuses to start a ``cheapest``/``fastest`` route without a source,
  plano_fast ranks it by those two without one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from plano_fast.periodic import Periodic

log = logging.getLogger("plano_fast")

__all__ = ["CostSource", "LatencySource", "ModelMetrics", "parse_sources"]

DO_PRICING_URL: Final = "https://api.digitalocean.com/v2/gen-ai/models/catalog"
MODELS_DEV_URL: Final = "https://models.dev/api.json"
COST_PROVIDERS: Final = {"digitalocean": DO_PRICING_URL, "models.dev": MODELS_DEV_URL}
TOKENS_PER_MILLION: Final = 1_000_000.0
#: one fetch (connect included); Plano's client: 5 s connect, 30 s total
FETCH_TIMEOUT_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 5.0

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class CostSource:
    provider: str  # digitalocean | models.dev
    url: str
    refresh_interval_s: int | None = None
    #: catalog key -> the model name routing_preferences uses
    model_aliases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LatencySource:
    url: str
    query: str
    refresh_interval_s: int | None = None


Source = CostSource | LatencySource


# --------------------------------------------------------------------------- config


def _interval(item: dict[str, Any], loc: Loc, errors: list[tuple[Loc, str]]) -> int | None:
    v = item.get("refresh_interval")
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        errors.append((loc + ("refresh_interval",), "expected a whole number of seconds >= 1"))
        return None
    return v


def parse_sources(value: Any) -> tuple[tuple[Source, ...], list[tuple[Loc, str]]]:
    """``model_metrics_sources`` as written -> (sources, errors) with Plano's schema rules."""
    errors: list[tuple[Loc, str]] = []
    if value is None:
        return (), errors
    if not isinstance(value, list):
        return (), [(("model_metrics_sources",), "expected a list of {type: cost|latency, ...}")]
    out: list[Source] = []
    for i, item in enumerate(value):
        loc: Loc = ("model_metrics_sources", i)
        if not isinstance(item, dict):
            errors.append((loc, "expected a mapping {type: cost|latency, provider, ...}"))
            continue
        kind = item.get("type")
        if kind == "cost":
            allowed = {"type", "provider", "url", "refresh_interval", "model_aliases"}
        elif kind == "latency":
            allowed = {"type", "provider", "url", "query", "refresh_interval"}
        else:
            errors.append((loc + ("type",), f"expected cost or latency, got {kind!r}"))
            continue
        for key in item:
            if key not in allowed:
                errors.append((loc + (str(key),), f"unknown field for a {kind} source"))
        provider = item.get("provider")
        url = item.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            errors.append((loc + ("url",), "expected an http:// or https:// URL"))
            url = None
        interval = _interval(item, loc, errors)
        if kind == "cost":
            if provider not in COST_PROVIDERS:
                errors.append((loc + ("provider",), f"expected digitalocean or models.dev, got {provider!r}"))
                continue
            aliases = item.get("model_aliases") or {}
            if not isinstance(aliases, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
            ):
                errors.append((loc + ("model_aliases",), "expected a mapping of catalog key to model name"))
                aliases = {}
            out.append(CostSource(provider, url or COST_PROVIDERS[provider], interval, dict(aliases)))
        else:
            if provider != "prometheus":
                errors.append((loc + ("provider",), f"expected prometheus, got {provider!r}"))
                continue
            query = item.get("query")
            if url is None:
                errors.append((loc + ("url",), "required: the Prometheus server's URL"))
            if not isinstance(query, str) or not query.strip():
                errors.append((loc + ("query",), "required: a PromQL query giving latency per model_name"))
            if url is None or not isinstance(query, str) or not query.strip():
                continue
            out.append(LatencySource(url, query, interval))
    for kind, cls in (("cost", CostSource), ("latency", LatencySource)):
        if sum(isinstance(s, cls) for s in out) > 1:
            errors.append((("model_metrics_sources",), f"only one {kind} metrics source is allowed"))
    return tuple(out), errors


# --------------------------------------------------------------------------- parsing


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_digitalocean(doc: Any, aliases: Mapping[str, str]) -> dict[str, float]:
    """DigitalOcean's GenAI catalog -> model -> input + output USD per million tokens
    (the catalog's prices are per token despite their ``_per_million`` names)."""
    out: dict[str, float] = {}
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("not a DigitalOcean catalog: no data list")
    for m in data:
        if not isinstance(m, dict) or not isinstance(m.get("model_id"), str):
            continue
        pricing = m.get("pricing")
        if not isinstance(pricing, dict):
            continue
        inp = _num(pricing.get("input_price_per_million")) or 0.0
        outp = _num(pricing.get("output_price_per_million")) or 0.0
        key = m["model_id"]
        out[aliases.get(key, key)] = (inp + outp) * TOKENS_PER_MILLION
    return out


def parse_models_dev(doc: Any, aliases: Mapping[str, str]) -> dict[str, float]:
    """models.dev's ``api.json`` -> ``provider/model`` (and the bare model id, when no
    other provider claimed it first) -> input + output USD per million tokens."""
    if not isinstance(doc, dict):
        raise ValueError("not a models.dev catalog: not an object")
    out: dict[str, float] = {}
    bare: dict[str, float] = {}
    for provider_id, provider in doc.items():
        models = provider.get("models") if isinstance(provider, dict) else None
        if not isinstance(models, dict):
            continue
        for model_key, model in models.items():
            cost = model.get("cost") if isinstance(model, dict) else None
            if not isinstance(cost, dict):
                continue
            inp, outp = _num(cost.get("input")), _num(cost.get("output"))
            if inp is None or outp is None:
                continue
            raw = f"{provider_id}/{model_key}"
            out[aliases.get(raw, raw)] = inp + outp
            bare.setdefault(model_key, inp + outp)
    for k, v in bare.items():
        out.setdefault(k, v)
    return out


def parse_prometheus(doc: Any) -> dict[str, float]:
    """A Prometheus ``/api/v1/query`` instant-vector answer -> model_name -> value."""
    data = doc.get("data") if isinstance(doc, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise ValueError("not a Prometheus query answer: no data.result list")
    out: dict[str, float] = {}
    for r in result:
        if not isinstance(r, dict):
            continue
        metric, value = r.get("metric"), r.get("value")
        name = metric.get("model_name") if isinstance(metric, dict) else None
        if not isinstance(name, str) or not isinstance(value, list) or len(value) != 2:
            continue
        try:
            out[name] = float(value[1])
        except (TypeError, ValueError):
            continue
    return out


def rank_by(models: tuple[str, ...], figures: Mapping[str, float]) -> list[str]:
    """Plano's ``rank_by_ascending_metric``: models with a figure by it (stable), then
    those without (NaN counts as none) in their order."""
    have = [(v, i, m) for i, m in enumerate(models) if (v := figures.get(m)) is not None and v == v]
    have.sort()
    ranked = {m for _, _, m in have}
    return [m for _, _, m in have] + [m for m in models if m not in ranked]


# --------------------------------------------------------------------------- runtime


class _Feed:
    """One source: its last good figures and its failure state."""

    __slots__ = ("source", "figures", "failing", "fetches", "failures")

    def __init__(self, source: Source) -> None:
        self.source = source
        self.figures: dict[str, float] = {}
        self.failing = False
        self.fetches = 0
        self.failures = 0

    @property
    def what(self) -> str:
        s = self.source
        return f"cost source {s.provider}" if isinstance(s, CostSource) else "latency source prometheus"

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if not self.failing:  # once per run of failures: a down catalog is not a log flood
            self.failing = True
            keep = f"keeping the last {len(self.figures)} figures" if self.figures else (
                "ranking by the bundled price table / measured latency until it answers")
            log.warning("model_metrics_sources: %s at %s failed (%s: %s); %s", self.what,
                        self.source.url, type(exc).__name__, str(exc)[:200], keep)  # fmt: skip

    def fetched(self, figures: dict[str, float]) -> None:
        self.fetches += 1
        if self.failing:
            log.warning("model_metrics_sources: %s answers again (%d models)", self.what, len(figures))
        self.failing = False
        self.figures = figures


class ModelMetrics:
    """The figures of the configured sources, fetched at start and refreshed in the
    background.  ``cost`` / ``latency``: model -> figure, replaced whole on each good
    fetch (a reader never sees a half-built map)."""

    __slots__ = ("feeds", "cost_feed", "latency_feed", "_tasks", "_first", "_session")

    def __init__(self, sources: tuple[Source, ...]) -> None:
        self.feeds = [_Feed(s) for s in sources]
        self.cost_feed = next((f for f in self.feeds if isinstance(f.source, CostSource)), None)
        self.latency_feed = next((f for f in self.feeds if isinstance(f.source, LatencySource)), None)
        self._tasks: list[Periodic] = []
        self._first: asyncio.Task[None] | None = None
        self._session: Any = None

    @property
    def cost(self) -> Mapping[str, float] | None:
        return self.cost_feed.figures if self.cost_feed is not None else None

    @property
    def latency(self) -> Mapping[str, float] | None:
        return self.latency_feed.figures if self.latency_feed is not None else None

    async def fetch(self, feed: _Feed) -> None:
        """One fetch of ``feed``'s source; never raises (a failure is logged once)."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
            )
        src = feed.source
        try:
            if isinstance(src, LatencySource):
                url = src.url.rstrip("/") + "/api/v1/query"
                async with self._session.get(url, params={"query": src.query}) as resp:
                    resp.raise_for_status()
                    figures = parse_prometheus(await resp.json(content_type=None))
            else:
                async with self._session.get(src.url) as resp:
                    resp.raise_for_status()
                    doc = await resp.json(content_type=None)
                parse = parse_digitalocean if src.provider == "digitalocean" else parse_models_dev
                figures = parse(doc, src.model_aliases)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            feed.failed(exc)
            return
        feed.fetched(figures)

    def start(self) -> None:
        """First fetch of every source now (in the background: the listener does not wait
        for a catalog), then each one with a ``refresh_interval`` on its own period."""
        loop = asyncio.get_running_loop()
        self._first = loop.create_task(self._fetch_all(), name="model-metrics-first")
        for feed in self.feeds:
            interval = feed.source.refresh_interval_s
            if interval is not None:
                p = Periodic(f"model-metrics {feed.what}", functools.partial(self.fetch, feed), float(interval))
                p.start()
                self._tasks.append(p)

    async def _fetch_all(self) -> None:
        await asyncio.gather(*(self.fetch(f) for f in self.feeds))

    async def stop(self) -> None:
        for p in self._tasks:
            await p.stop()
        self._tasks.clear()
        if self._first is not None and not self._first.done():
            self._first.cancel()
            await asyncio.wait((self._first,), timeout=1.0)
        if self._session is not None:
            await self._session.close()
            self._session = None
