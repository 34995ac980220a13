"""Preference routing: a router model picks a route, the route's models are ranked.

Plano's headline feature (katanemo/plano ``router/orchestrator.rs``,
``handlers/llm/model_selection.rs``, ``docs/routing-api.md``), in three parts:

* **config** (:func:`parse`, pure): v0.4 top-level ``routing_preferences: [{name,
  description, models, selection_policy: {prefer: cheapest|fastest|none}}]``; v0.3 inline
  ``routing_preferences: [{name, description}]`` on a provider (and the older ``usage``),
  lifted to top-level routes of that one model as Plano's config generator does; the
  router model from ``overrides.llm_routing_model`` (default ``Plano-Orchestrator``),
  else the legacy ``routing.model`` / ``routing.llm_provider``.  The router model must be
  served by a configured provider (any OpenAI-compatible endpoint serving Arch-Router or
  Plano-Orchestrator); without one, routing is off and the loader warns (Plano would use
  Katanemo's hosted router, which plano_fast does not call on its own).
* **decision** (:meth:`PreferenceRouter.decide`): the router prompt
  (:mod:`plano_fast.router_prompt`) POSTed through the gateway's own upstream pool with a
  strict timeout (``routing.timeout_ms``, a plano_fast extension, default 3000 ms); on
  timeout, error or no match the request's own ``model`` is used.
* **selection** (:func:`rank`): ``cheapest`` by the price table (input + output price for
  the request's estimated size: body bytes / 4 in, ``max_tokens`` or as many out);
  ``fastest`` by this process's own mean upstream time per model (request sent to last
  byte) over about the last 5 minutes (:class:`LatencyWindow`, read off its request
  metrics); models without a price or a measurement go last, in config order; ``none``
  keeps config order.

A request body's own top-level ``routing_preferences`` (same item shape) replaces the
config's routes for that request and is cut out of the body before it is forwarded
(:func:`strip_member`: the other members' bytes are kept, not re-encoded); such a request
is neither answered from nor stored in its session.

Sessions (``x-model-affinity``, or ``routing.session_cache.tenant_header`` + it) keep their
decision for ``session_ttl_seconds`` in a bounded in-memory LRU, and in Redis with
``session_cache.type: redis`` (then the LRU caches Redis: a decision read from it lives
locally for up to one more TTL): the router is asked once per session, and never once per
retry (the exchange decides before its retry plan).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from plano_fast import router_prompt as RP
from plano_fast.model_metrics import ModelMetrics, rank_by
from plano_fast.errors import ClientError, UpstreamError
from plano_fast.http_post import exchange
from plano_fast.usage import STATUS_OK, STATUS_UPSTREAM_ERROR, STATUS_USAGE_MISSING, UsageEvent, UsageSink
from plano_fast.wire import header_value

if TYPE_CHECKING:
    from plano_fast.config import ModelProvider
    from plano_fast.model_metrics import Source
    from plano_fast.http_server import Request
    from plano_fast.metrics import RequestMetrics
    from plano_fast.pricing import PricingRegistry
    from plano_fast.routing import Router
    from plano_fast.upstream import UpstreamPool

__all__ = [
    "Decision",
    "PreferenceConfig",
    "PreferenceRouter",
    "Preference",
    "SessionCache",
    "parse",
    "rank",
]

DEFAULT_ROUTER_MODEL: Final = "Plano-Orchestrator"
DEFAULT_SESSION_TTL_S: Final = 600
MAX_SESSION_ENTRIES: Final = 10_000
DEFAULT_ROUTER_TIMEOUT_MS: Final = 3000
AFFINITY_HEADER: Final = b"x-model-affinity"
#: the router call's usage row: the routed request's id + this
ROUTER_ROW_SUFFIX: Final = "-router"
PREFERS: Final = ("cheapest", "fastest", "none")

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Preference:
    """One route: what the router reads (name, description) and where it leads."""

    name: str
    description: str
    models: tuple[str, ...]
    prefer: str = "none"


@dataclass(frozen=True, slots=True)
class PreferenceConfig:
    preferences: tuple[Preference, ...]
    #: the provider serving the router model, and the model id sent to it
    router_provider: ModelProvider
    router_model: str
    session_ttl_s: float = DEFAULT_SESSION_TTL_S
    session_max_entries: int = MAX_SESSION_ENTRIES
    tenant_header: bytes | None = None
    #: routing.session_cache type redis: sessions shared by every worker and instance
    session_redis_url: str | None = None
    route_on_user_only: bool = False
    max_token_length: int = RP.MAX_TOKEN_LEN
    timeout_s: float = DEFAULT_ROUTER_TIMEOUT_MS / 1000
    #: model_metrics_sources (plano_fast.model_metrics): figures for cheapest / fastest
    metrics_sources: tuple[Source, ...] = ()


# --------------------------------------------------------------------------- config


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse(
    data: dict[str, Any],
    providers: tuple[ModelProvider, ...],
    resolves: Callable[[str], bool] | None,
) -> tuple[PreferenceConfig | None, list[tuple[Loc, str]], list[tuple[Loc, str]]]:
    """``(config or None, errors, warnings)`` for the raw config ``data``; each problem
    is ``(field path, message)``.  ``resolves`` tells whether a model name resolves as a
    request's would (the loader's :func:`plano_fast.config.names.name_checker`; None:
    unchecked)."""
    errors: list[tuple[Loc, str]] = []
    warnings: list[tuple[Loc, str]] = []
    prefs: list[Preference] = []
    seen: dict[str, int] = {}

    top = data.get("routing_preferences")
    if isinstance(top, list):
        for i, item in enumerate(top):
            loc: Loc = ("routing_preferences", i)
            if not isinstance(item, dict):
                errors.append((loc, "expected a mapping {name, description, models, selection_policy}"))
                continue
            for key in item:
                if key not in ("name", "description", "models", "selection_policy"):
                    errors.append((loc + (str(key),), "unknown field"))
            name, desc, models = item.get("name"), item.get("description"), item.get("models")
            if not isinstance(name, str) or not name.strip():
                errors.append((loc + ("name",), "required, a non-empty string"))
                continue
            if not isinstance(desc, str):
                errors.append((loc + ("description",), "required, a string"))
            if not isinstance(models, list) or not models:
                errors.append((loc + ("models",), "required, a list of at least one model"))
                models = []
            good: list[str] = []
            for j, m in enumerate(models):
                if not isinstance(m, str) or not m.strip():
                    errors.append((loc + ("models", j), "expected a model name"))
                    continue
                if resolves is not None and not resolves(m.strip()):
                    errors.append((loc + ("models", j), f"'{m}' is not a configured model"))
                    continue
                good.append(m.strip())
            prefer = "none"
            policy = item.get("selection_policy")
            if policy is not None:
                if not isinstance(policy, dict) or set(policy) - {"prefer"}:
                    errors.append((loc + ("selection_policy",), "expected {prefer: cheapest|fastest|none}"))
                else:
                    p = policy.get("prefer")
                    if p in (None, ""):
                        p = "none"
                    if p not in PREFERS:
                        errors.append((loc + ("selection_policy", "prefer"), f"expected one of {', '.join(PREFERS)}, got {p!r}"))
                    else:
                        prefer = p
            if name in seen:
                errors.append((loc + ("name",), f"duplicate route name '{name}'"))
                continue
            seen[name] = len(prefs)
            prefs.append(Preference(name, desc if isinstance(desc, str) else "", tuple(good), prefer))

    # v0.3 inline preferences: each becomes a route to that one provider's model (lifted as
    # Plano's config generator does; a route named on two providers lists both).
    for p in providers:
        for rp in p.routing_preferences:
            if rp.name in seen:
                old = prefs[seen[rp.name]]
                if p.name not in old.models:
                    prefs[seen[rp.name]] = Preference(old.name, old.description, old.models + (p.name,), old.prefer)
                continue
            seen[rp.name] = len(prefs)
            prefs.append(Preference(rp.name, rp.description, (p.name,)))

    routing = data.get("routing")
    routing = routing if isinstance(routing, dict) else {}
    overrides = data.get("overrides")
    overrides = overrides if isinstance(overrides, dict) else {}

    ttl = routing.get("session_ttl_seconds", DEFAULT_SESSION_TTL_S)
    if not _is_int(ttl) or ttl < 0:
        errors.append((("routing", "session_ttl_seconds"), "expected a whole number of seconds >= 0"))
        ttl = DEFAULT_SESSION_TTL_S
    entries = routing.get("session_max_entries", MAX_SESSION_ENTRIES)
    if not _is_int(entries) or not 1 <= entries <= MAX_SESSION_ENTRIES:
        errors.append((("routing", "session_max_entries"), f"expected a whole number from 1 to {MAX_SESSION_ENTRIES}"))
        entries = MAX_SESSION_ENTRIES
    on_user = routing.get("route_on_user_only", False)
    if not isinstance(on_user, bool):
        errors.append((("routing", "route_on_user_only"), "expected true or false"))
        on_user = False
    timeout_ms = routing.get("timeout_ms", DEFAULT_ROUTER_TIMEOUT_MS)
    if not _is_int(timeout_ms) or not 1 <= timeout_ms <= 600_000:
        errors.append((("routing", "timeout_ms"), "expected milliseconds from 1 to 600000"))
        timeout_ms = DEFAULT_ROUTER_TIMEOUT_MS
    tenant: bytes | None = None
    redis_url: str | None = None
    cache = routing.get("session_cache")
    if isinstance(cache, dict):
        kind = cache.get("type", "memory")
        if kind not in ("memory", "redis"):
            errors.append((("routing", "session_cache", "type"), "expected memory or redis"))
        url = cache.get("url")
        if kind == "redis":
            if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
                errors.append((("routing", "session_cache", "url"), "type redis needs a redis:// URL"))
            else:
                redis_url = url
        th = cache.get("tenant_header")
        if isinstance(th, str) and th.strip():
            tenant = th.strip().lower().encode()
    elif cache is not None:
        errors.append((("routing", "session_cache"), "expected a mapping {type, url, tenant_header}"))
    ctx_len = overrides.get("orchestrator_model_context_length", RP.MAX_TOKEN_LEN)
    if not _is_int(ctx_len) or ctx_len < 1:
        errors.append((("overrides", "orchestrator_model_context_length"), "expected a positive whole number"))
        ctx_len = RP.MAX_TOKEN_LEN

    if not prefs or errors:
        return None, errors, warnings

    # The router model: llm_routing_model, else the legacy routing.model / llm_provider.
    router_loc: Loc = ("overrides", "llm_routing_model")
    wanted = overrides.get("llm_routing_model")
    by_name = routing.get("llm_provider")
    if wanted is None and (routing.get("model") is not None or by_name is not None):
        wanted, router_loc = routing.get("model"), ("routing", "model")
    if wanted is not None and not isinstance(wanted, str):
        errors.append((router_loc, "expected a model name"))
        return None, errors, warnings
    provider: ModelProvider | None = None
    if isinstance(by_name, str):
        provider = next((p for p in providers if p.name == by_name), None)
        if provider is None:
            errors.append((("routing", "llm_provider"), f"no model provider is named '{by_name}'"))
            return None, errors, warnings
    model_name = wanted or (provider.name if provider is not None else DEFAULT_ROUTER_MODEL)
    if provider is None:
        provider = _router_provider(providers, model_name)
    if provider is None:
        warnings.append((
            router_loc if wanted else ("routing_preferences",),
            f"preference routing is off: no model provider serves the router model '{model_name}' "
            "(add one, e.g. an OpenAI-compatible vLLM/Ollama serving katanemo/Arch-Router or "
            "Plano-Orchestrator); requests go to their own model",
        ))
        return None, errors, warnings
    model_id = provider.model if not provider.is_wildcard else model_name.partition("/")[2] or model_name
    return (
        PreferenceConfig(
            preferences=tuple(prefs),
            router_provider=provider,
            router_model=model_id,
            session_ttl_s=float(ttl),
            session_max_entries=entries,
            tenant_header=tenant,
            session_redis_url=redis_url,
            route_on_user_only=on_user,
            max_token_length=ctx_len,
            timeout_s=timeout_ms / 1000,
        ),
        errors,
        warnings,
    )


def _resolves(router: Router, model: str) -> bool:
    from plano_fast.routing import UnknownModel

    try:
        router.resolve(model.strip())
    except UnknownModel:
        return False
    return True


def _router_provider(providers: tuple[ModelProvider, ...], model: str) -> ModelProvider | None:
    """The provider serving ``model`` (a name, ``provider/model`` or the bare id, as
    Plano's brightstaff matches the router model against provider models)."""
    bare = model.partition("/")[2] if "/" in model else model
    for p in providers:
        if p.is_wildcard:
            continue
        if model in (p.name, f"{p.prefix}/{p.model}") or p.model in (model, bare):
            return p
    return None


# --------------------------------------------------------------------------- per request

OVERRIDE_MEMBER: Final = "routing_preferences"


def request_preferences(value: Any, router: Router) -> tuple[Preference, ...]:
    """A request body's ``routing_preferences`` (Plano's docs/routing-api.md: it overrides
    the config's routes for that request); raises :class:`ClientError` naming the field."""
    if not isinstance(value, list) or not value:
        raise ClientError("routing_preferences: expected a non-empty list of {name, description, models}")
    out: list[Preference] = []
    for i, item in enumerate(value):
        where = f"routing_preferences[{i}]"
        if not isinstance(item, dict):
            raise ClientError(f"{where}: expected an object {{name, description, models}}")
        name, desc, models = item.get("name"), item.get("description"), item.get("models")
        if not isinstance(name, str) or not name or not isinstance(desc, str):
            raise ClientError(f"{where}: name and description are required strings")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise ClientError(f"{where}.models: expected a non-empty list of model names")
        for j, m in enumerate(models):
            if not _resolves(router, m):
                raise ClientError(f"{where}.models[{j}]: '{m}' is not a configured model")
        prefer = "none"
        policy = item.get("selection_policy")
        if isinstance(policy, dict) and policy.get("prefer") in PREFERS:
            prefer = policy["prefer"]
        out.append(Preference(name, desc, tuple(models), prefer))
    return tuple(out)


def strip_member(body: bytes, name: str) -> bytes:
    """``body`` (a JSON object) without its top-level member ``name``: the other members'
    bytes are kept as they are, not re-encoded.  Unchanged when the member is absent."""
    text = body.decode()
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    if text[i : i + 1] != "{":
        return body
    i += 1
    spans: list[tuple[int, int, bool]] = []  # [start, end) of each member, dropped
    while True:
        while text[i] in ws:
            i += 1
        if text[i] == "}":
            break
        start = i
        key, i = decoder.raw_decode(text, i)
        while text[i] in ws:
            i += 1
        i += 1  # the colon
        while text[i] in ws:
            i += 1
        _, i = decoder.raw_decode(text, i)
        spans.append((start, i, key == name))
        while text[i] in ws:
            i += 1
        if text[i] == ",":
            i += 1
    if not any(dropped for _, _, dropped in spans):
        return body
    # Cut ranges: a dropped member up to the next member's start (its comma goes with it);
    # a dropped last member from the end of the last kept one (the comma before it).
    cuts: list[tuple[int, int]] = []
    for k, (a, b, dropped) in enumerate(spans):
        if not dropped:
            continue
        if k + 1 < len(spans):
            cuts.append((a, spans[k + 1][0]))
        else:
            kept = [m for m in spans[:k] if not m[2]]
            cuts.append((kept[-1][1] if kept else a, b))
    cuts.sort()
    out: list[str] = []
    pos = 0
    for a, b in cuts:
        if a > pos:
            out.append(text[pos:a])
        pos = max(pos, b)
    out.append(text[pos:])
    return "".join(out).encode()


# --------------------------------------------------------------------------- selection


def estimate_tokens(body_len: int, body: dict[str, Any]) -> tuple[int, int]:
    """(input, output) tokens a request is priced at for ``cheapest``."""
    inp = max(1, body_len // 4)
    out = 0
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out = v
            break
    return inp, out or inp


def rank(
    models: tuple[str, ...],
    prefer: str,
    router: Router,
    pricing: PricingRegistry | None,
    latency: Mapping[LatencyKey, float] | None,
    tokens: tuple[int, int],
) -> list[str]:
    """``models`` ordered by the selection policy (stable; unknowns last, in order):
    ``latency`` is seconds per (provider, model) for ``fastest``."""
    if prefer == "none" or len(models) < 2:
        return list(models)
    scores: list[tuple[int, float, int, str]] = []
    latency = latency or {}
    for i, m in enumerate(models):
        route = router.resolve(m)
        provider, upstream = route.provider.provider, route.upstream_model or m
        score: float | None = None
        if prefer == "cheapest" and pricing is not None:
            price = pricing.price_for(provider, upstream, None)
            if price is not None:
                score = price.input_per_mtok * tokens[0] + price.output_per_mtok * tokens[1]
        elif prefer == "fastest":
            score = latency.get((provider, upstream))
        scores.append((0 if score is not None else 1, score or 0.0, i, m))
    scores.sort()
    return [s[3] for s in scores]


LatencyKey = tuple[str, str]  # (provider, upstream model)


def latency_totals(metrics: RequestMetrics) -> dict[LatencyKey, tuple[float, float]]:
    """(seconds, requests) per (provider, model) of upstream time (request sent to last
    byte), summed since the process started, from the gateway's own request metrics."""
    out: dict[LatencyKey, tuple[float, float]] = {}
    for labels, stats in metrics.routes.items():
        row = stats.hists[1]  # upstream_duration_seconds
        if row is None:
            continue
        key = (labels[1], labels[2])
        s, n = out.get(key, (0.0, 0.0))
        out[key] = (s + row[-1], n + sum(row[:-1]))
    return out


class LatencyWindow:
    """Mean upstream time per model over about the last ``window_s``: snapshots of the
    cumulative metrics every ``step_s``, the mean being the difference between now and the
    oldest snapshot still in the window (the mean since start for a model without traffic
    in it).  Read only when a ``fastest`` route is ranked: nothing on the hot path."""

    __slots__ = ("metrics", "window_s", "step_s", "_snaps")

    def __init__(self, metrics: RequestMetrics, window_s: float = 300.0, step_s: float = 10.0) -> None:
        self.metrics = metrics
        self.window_s = window_s
        self.step_s = step_s
        self._snaps: deque[tuple[float, dict[LatencyKey, tuple[float, float]]]] = deque()

    def means(self, now: float) -> dict[LatencyKey, float]:
        totals = latency_totals(self.metrics)
        snaps = self._snaps
        if not snaps or now - snaps[-1][0] >= self.step_s:
            snaps.append((now, totals))
        while len(snaps) > 1 and now - snaps[1][0] >= self.window_s:
            snaps.popleft()
        base = snaps[0][1]
        out: dict[LatencyKey, float] = {}
        for key, (total_s, n) in totals.items():
            base_s, base_n = base.get(key, (0.0, 0.0))
            if n > base_n:
                out[key] = (total_s - base_s) / (n - base_n)
            elif n:
                out[key] = total_s / n
        return out


# --------------------------------------------------------------------------- sessions


class SessionCache:
    """Session id -> (models, route), bounded, each entry kept ``ttl_s`` after its store."""

    __slots__ = ("ttl_s", "max_entries", "_entries")

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, tuple[str, ...], str | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> tuple[tuple[str, ...], str | None] | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return hit[1], hit[2]

    def put(self, key: str, models: tuple[str, ...], route: str | None, now: float) -> None:
        entries = self._entries
        entries[key] = (now + self.ttl_s, models, route)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)


class RedisSessions:
    """Sessions in Redis (``routing.session_cache.type: redis``): one JSON value per
    session under ``plano_fast:session:<key>`` with the session TTL.  Fails open, as
    Plano's does: a Redis error is a miss (counted), never a refused request."""

    PREFIX: Final = "plano_fast:session:"

    def __init__(self, url: str, ttl_s: float) -> None:
        import redis.asyncio as aioredis

        self.client: Any = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.ttl_s = ttl_s
        self.errors = 0

    async def get(self, key: str) -> tuple[tuple[str, ...], str | None] | None:
        try:
            raw = await self.client.get(self.PREFIX + key)
        except Exception:  # noqa: BLE001 - fail open
            self.errors += 1
            return None
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            models, route = tuple(str(m) for m in doc["models"]), doc.get("route")
        except (ValueError, KeyError, TypeError):
            return None
        return models, route if isinstance(route, str) else None

    async def put(self, key: str, models: tuple[str, ...], route: str | None) -> None:
        value = json.dumps({"models": list(models), "route": route})
        try:
            await self.client.set(self.PREFIX + key, value, px=max(1, int(self.ttl_s * 1000)))
        except Exception:  # noqa: BLE001 - fail open
            self.errors += 1

    async def close(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------- runtime


@dataclass(frozen=True, slots=True)
class Decision:
    """``models``: ranked, first to use; ``route``: the matched route (None: the request's
    own model); ``pinned``: taken from the session; ``session_id`` when one was given."""

    models: tuple[str, ...]
    route: str | None
    pinned: bool = False
    session_id: str | None = None
    router_ms: float = 0.0
    error: str = ""


async def post_json(
    pool: UpstreamPool, provider: ModelProvider, model: str, body: bytes, timeout_s: float
) -> tuple[int, bytes]:
    """POST ``body`` to ``provider``'s chat-completions path through the pool; (status,
    body).  The whole exchange (connect included) is bounded by ``timeout_s``."""
    path = provider.chat_path_for(model) or "/v1/chat/completions"
    head = [b"POST " + path.encode() + b" HTTP/1.1\r\ncontent-type: application/json\r\n"]
    for name, value in provider.chat_auth_headers or provider.auth_headers:
        head.append(name + b": " + value + b"\r\n")
    for name, value in provider.extra_headers:
        head.append(name + b": " + value + b"\r\n")
    head.append(b"host: " + provider.host_header.encode() + b"\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    origin = ("https" if provider.tls else "http", provider.host, provider.port, None)
    return await exchange(pool, origin, [b"".join(head), body], timeout_s)


class PreferenceRouter:
    """The decision for a request: session, router call, ranking (one per gateway)."""

    __slots__ = (
        "config", "router", "pool", "pricing", "metrics", "sessions", "routes_text",
        "by_name", "calls", "failures", "pinned_hits", "usage_sink", "latency", "redis",
        "model_metrics", "turns", "replays", "builder", "_pinned_decisions",
    )

    def __init__(
        self,
        config: PreferenceConfig,
        router: Router,
        pool: UpstreamPool,
        pricing: PricingRegistry | None = None,
        metrics: RequestMetrics | None = None,
        usage_sink: UsageSink | None = None,
    ) -> None:
        self.config = config
        #: where the router call's own usage rows go (the billing pipeline)
        self.usage_sink = usage_sink
        self.router = router
        self.pool = pool
        self.pricing = pricing
        self.metrics = metrics
        self.latency = LatencyWindow(metrics) if metrics is not None else None
        self.sessions = SessionCache(config.session_ttl_s, config.session_max_entries)
        #: session -> its last pinned Decision, reused while the cache holds the same
        #: entry (a frozen dataclass's construction is ~6 attribute sets through
        #: object.__setattr__: the largest part of a pinned request's routing cost)
        self._pinned_decisions: dict[str, Decision] = {}
        #: route_on_user_only: the decision of each conversation's last user turn
        self.turns = SessionCache(config.session_ttl_s, config.session_max_entries)
        self.replays = 0
        self.redis: RedisSessions | None = None
        if config.session_redis_url is not None:
            self.redis = RedisSessions(config.session_redis_url, config.session_ttl_s)
        self.routes_text = RP.render_routes((p.name, p.description) for p in config.preferences)
        #: the router call's body less the conversation, built once for the config's routes
        self.builder: RP.RequestBuilder | None = None
        try:
            self.builder = RP.RequestBuilder(config.router_model, self.routes_text)
        except ValueError:
            pass  # a route description naming {conversation}: the prompt is rendered whole
        self.by_name = {p.name: p for p in config.preferences}
        self.model_metrics = ModelMetrics(config.metrics_sources) if config.metrics_sources else None
        self.calls = 0
        self.failures = 0
        self.pinned_hits = 0

    def _bill(self, billing: tuple[str, str | None], status: int, tokens: tuple[int, int] | None, ms: float) -> None:
        """The router call's own usage row: the request's id + ``-router`` (the tag that
        marks routing overhead), billed to the same caller."""
        sink = self.usage_sink
        if sink is None:
            return
        provider = self.config.router_provider
        sink(UsageEvent(
            request_id=billing[0] + ROUTER_ROW_SUFFIX,
            time_ns=time.time_ns(),
            provider=provider.provider,
            model=self.config.router_model,
            streaming=False,
            status=STATUS_OK if tokens is not None and status < 400 else (
                STATUS_UPSTREAM_ERROR if status >= 400 else STATUS_USAGE_MISSING),
            http_status=status,
            input_tokens=tokens[0] if tokens else 0,
            output_tokens=tokens[1] if tokens else 0,
            has_usage=tokens is not None,
            key_hash=billing[1],
            duration_ms=ms,
        ))  # fmt: skip

    async def decide_request(
        self,
        request: Request,
        api: str,
        model: str | None,
        billing: tuple[str, str | None] | None = None,
    ) -> Decision:
        """:meth:`decide` for a request whose body the scanner has already accepted.
        A pinned session costs a header scan and a dict lookup: the body is parsed only
        when the router is asked."""
        override = request.body.find(b'"routing_preferences"') >= 0
        session = self.session_key(request.headers)
        if session is not None and not override:
            pinned = self._pinned(session)
            if pinned is None and self.redis is not None:
                hit = await self.redis.get(session)
                if hit is not None:
                    self.sessions.put(session, hit[0], hit[1], time.monotonic())
                    self.pinned_hits += 1
                    pinned = Decision(hit[0], hit[1], True, session)
            if pinned is not None:
                return pinned
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return Decision((model,) if model else (), None, False, session)
        prefs = None
        if OVERRIDE_MEMBER in body:
            prefs = request_preferences(body[OVERRIDE_MEMBER], self.router)
        return await self._ask(body, len(request.body), api, model, session, prefs, billing)

    def _pinned(self, session: str) -> Decision | None:
        hit = self.sessions.get(session, time.monotonic())
        if hit is None:
            return None
        self.pinned_hits += 1
        memo = self._pinned_decisions
        decision = memo.get(session)
        if decision is None or decision.models is not hit[0] or decision.route != hit[1]:
            decision = Decision(hit[0], hit[1], True, session)
            if len(memo) >= self.sessions.max_entries:
                memo.clear()  # (bounded as the session cache is)
            memo[session] = decision
        return decision

    def pinned_decision(self, request: Request) -> Decision | None:
        """The session's decision when the request belongs to a live one (and carries no
        routes of its own), else None: synchronous, so a pinned request needs no task."""
        if request.body.find(b'"routing_preferences"') >= 0:
            return None
        session = self.session_key(request.headers)
        # With Redis, the local copy is a cache of the shared one: a miss here is looked
        # up there (asynchronously) by decide_request.
        return None if session is None else self._pinned(session)

    def session_key(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The session a request belongs to (``x-model-affinity``, scoped by the tenant
        header when configured), or None."""
        # (each header's last value; ``header_value`` looks in a fast-path request's lines
        # in C, no pairs made: a loop here over the pairs, and their making, was ~20k
        # instructions a pinned request, benchmarks/results/features-feat2-20261206.md)
        value = header_value(headers, AFFINITY_HEADER)
        session = None if value is None else value.decode("latin-1").strip()
        if not session:
            return None
        th = self.config.tenant_header
        value = None if th is None or th == AFFINITY_HEADER else header_value(headers, th)
        tenant = None if value is None else value.decode("latin-1").strip()
        return f"{tenant}:{session}" if tenant else session

    async def decide(
        self, body: dict[str, Any], body_len: int, api: str, model: str | None, session: str | None
    ) -> Decision:
        """The ranked models for a parsed request body (``api``: chat_completions,
        messages or responses); never raises: failures fall back to ``model``."""
        if session is not None:
            pinned = self._pinned(session)
            if pinned is not None:
                return pinned
        return await self._ask(body, body_len, api, model, session)

    async def _ask(
        self,
        body: dict[str, Any],
        body_len: int,
        api: str,
        model: str | None,
        session: str | None,
        prefs: tuple[Preference, ...] | None = None,
        billing: tuple[str, str | None] | None = None,
    ) -> Decision:
        """Ask the router (``prefs``: the request's own routes, else the config's;
        ``billing``: the request's id and caller key hash, for the router's usage row)."""
        fallback = (model,) if model else ()
        if prefs is None:
            routes_text, by_name = self.routes_text, self.by_name
        else:
            routes_text = RP.render_routes((p.name, p.description) for p in prefs)
            by_name = {p.name: p for p in prefs}
        messages = RP.conversation_of(body, api)
        if not messages:
            return Decision(fallback, None, False, session)
        turn: str | None = None
        user_turn = True
        if self.config.route_on_user_only and prefs is None:
            # Plano's route_on_user_only: a continuation (tool results, assistant steps)
            # replays the decision of the user turn that started it, found by the
            # conversation's identity; without one it is routed as any request.
            turn = RP.turn_key(body, api, model, session)
            user_turn = RP.is_user_turn(body, api)
            if not user_turn:
                hit = self.turns.get(turn, time.monotonic())
                if hit is not None:
                    self.replays += 1
                    return Decision(hit[0], hit[1], False, session)
        builder = self.builder if prefs is None else None
        if builder is not None:
            request = builder.build(messages, self.config.max_token_length)
        else:
            prompt = RP.render_prompt(routes_text, messages, self.config.max_token_length)
            request = RP.router_request(self.config.router_model, prompt)
        self.calls += 1
        started = time.perf_counter()
        error = ""
        names: list[str] = []
        tokens: tuple[int, int] | None = None
        status = 0
        try:
            status, answer = await post_json(
                self.pool, self.config.router_provider, self.config.router_model, request,
                self.config.timeout_s,
            )
            if status != 200:
                raise RP.RouterAnswerError(f"router answered HTTP {status}")
            content, tokens = RP.read_answer(answer)
            names = RP.parse_answer(content, by_name)
        except TimeoutError:
            error = f"router timed out after {self.config.timeout_s * 1000:.0f} ms"
        except (UpstreamError, RP.RouterAnswerError, OSError) as exc:
            error = str(exc) or type(exc).__name__
        router_ms = (time.perf_counter() - started) * 1000
        if billing is not None and status:
            self._bill(billing, status, tokens, router_ms)
        if error:
            self.failures += 1
        decision: Decision
        if names:
            pref = by_name[names[0]]
            decision = Decision(tuple(self._rank(pref, body_len, body)), pref.name, False, session, router_ms)
        else:
            decision = Decision(fallback, None, False, session, router_ms, error)
        if turn is not None and user_turn and not error:
            self.turns.put(turn, decision.models, decision.route, time.monotonic())
        if session is not None and not error and prefs is None:
            self.sessions.put(session, decision.models, decision.route, time.monotonic())
            if self.redis is not None:
                await self.redis.put(session, decision.models, decision.route)
        return decision

    def _rank(self, pref: Preference, body_len: int, body: dict[str, Any]) -> list[str]:
        """The route's models in ``selection_policy`` order: by the metrics source's
        figures when it has one for any of them (Plano's ranking), else by the price table
        (cheapest) or this process's measured latency (fastest)."""
        prefer = pref.prefer
        if prefer == "none" or len(pref.models) < 2:
            return list(pref.models)
        mm = self.model_metrics
        if mm is not None:
            figures = mm.cost if prefer == "cheapest" else mm.latency
            if figures and any(m in figures for m in pref.models):
                return rank_by(pref.models, figures)
        latency = None
        if prefer == "fastest" and self.latency is not None:
            latency = self.latency.means(time.monotonic())
        return rank(pref.models, prefer, self.router, self.pricing, latency, estimate_tokens(body_len, body))

    def start(self) -> None:
        """Background work (the metrics sources' fetches); on the running loop."""
        if self.model_metrics is not None:
            self.model_metrics.start()

    async def close(self) -> None:
        if self.model_metrics is not None:
            await self.model_metrics.stop()
        if self.redis is not None:
            await self.redis.close()


def decision_body(decision: Decision, trace_id: str) -> bytes:
    """The ``/routing/v1/*`` answer (Plano's docs/routing-api.md)."""
    out: dict[str, Any] = {
        "models": list(decision.models),
        "route": decision.route,
        "trace_id": trace_id,
    }
    if decision.session_id is not None:
        out["session_id"] = decision.session_id
    # Plano's RoutingDecisionResponse: always both; ``switched`` is its routing budget's
    # verdict, and without routing budgets a pinned session never switches.
    out["pinned"] = decision.pinned
    out["switched"] = False
    return json.dumps(out, separators=(",", ":")).encode()
