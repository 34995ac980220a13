"""Model -> provider resolution: pure, no I/O, O(1) per request.

Resolution order for a request's ``model`` (Plano's brightstaff order, aliases included):

1. exact: a provider's ``name``, or its ``provider/model`` (as written in the config, e.g.
   ``google/gemini-2.0-flash``, and in canonical form, ``gemini/gemini-2.0-flash``);
2. bare model id (the part after ``provider/``); when two providers share a bare id, the
   one configured first wins (the loader warns about it);
3. ``model_aliases`` (the alias target is resolved by rules 1, 2 and 4; aliases do not
   chain, and an alias named like a configured model is shadowed by it);
4. wildcard: ``openai/gpt-x`` matches a configured ``openai/*`` (prefix spellings such as
   ``google``/``gemini`` are equivalent; the prefix is case-insensitive); the upstream
   model is ``gpt-x``.  Bare ids are *not* matched against wildcards: plano_fast has no
   catalogue of each provider's model ids (Plano expands ``openai/*`` from one).

No model (``None`` or ``""``) -> the ``default: true`` provider (a wildcard can never be
the default; the loader rejects it).  Anything else raises :class:`UnknownModel`.

Rules 1-3 are merged into one dict at construction, so ``resolve`` is a single dict lookup
for configured names; wildcard hits are cached in a bounded FIFO dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from plano_fast.config import ModelProvider
from plano_fast.config.names import ModelIndex

__all__ = ["ModelIndex", "Route", "Router", "UnknownModel"]

WILDCARD_CACHE_SIZE = 4096


class UnknownModel(Exception):
    """The requested model matches no configured provider, alias or wildcard."""

    def __init__(self, model: str, available: tuple[str, ...]) -> None:
        self.model = model
        self.available = available
        listing = ", ".join(available) if available else "(none)"
        if model:
            msg = f"Model '{model}' not found in configured providers. Available models: {listing}"
        else:
            msg = (
                "No model specified and no default model provider is configured. "
                f"Available models: {listing}"
            )
        super().__init__(msg)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes.

    ``upstream_model`` is the model id to send upstream (no ``provider/`` prefix);
    ``rewrite`` is True when it differs from what the client sent, i.e. the body's
    ``model`` must be rewritten; False means the body can be forwarded byte for byte.
    """

    provider: ModelProvider
    upstream_model: str | None
    rewrite: bool
    #: an alias with a target list: the other listed models, in order (its failover plan)
    fallbacks: tuple[str, ...] = ()
    #: what the gateway derives from this route for each client endpoint, filled on first
    #: use (``plano_fast.gateway.routed.target_of``): once per (route, endpoint), not per request
    per_endpoint: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


class RoutingConfig(Protocol):
    """What a Router reads of a config (a GatewayConfig)."""

    @property
    def providers(self) -> tuple[ModelProvider, ...]: ...

    @property
    def model_aliases(self) -> Mapping[str, str]: ...


class Router:
    """Resolves request models to routes; built once per config."""

    __slots__ = ("routes", "_index", "_wild_cache", "_default", "_available", "_models")

    def __init__(self, config: RoutingConfig) -> None:
        index = ModelIndex(config.providers)
        routes: dict[str, Route] = {}
        # Priority: exact > bare > alias (first writer wins).
        for key, p in index.exact.items():
            routes.setdefault(key, Route(p, p.model, key != p.model))
        for key, p in index.bare.items():
            routes.setdefault(key, Route(p, p.model, key != p.model))
        aliases: list[str] = []
        # (a RoutingConfig without target lists need not have the attribute)
        alias_fallbacks: Mapping[str, tuple[str, ...]] = getattr(config, "alias_fallbacks", {})
        for alias, target in config.model_aliases.items():
            if alias in routes:
                continue  # shadowed by a configured model (the loader warned)
            hit = index.lookup(target)
            if hit is None:
                raise ValueError(f"model alias '{alias}' targets unknown model '{target}'")
            fallbacks = alias_fallbacks.get(alias, ())
            for name in fallbacks:
                if index.lookup(name) is None:
                    raise ValueError(f"model alias '{alias}' falls back to unknown model '{name}'")
            routes[alias] = Route(hit[0], hit[1], alias != hit[1], fallbacks)
            aliases.append(alias)
        #: the configured names' routes (rules 1-3): ``resolve``'s first lookup, which
        #: config mode's request path makes inline (a call fewer per request)
        self.routes: Mapping[str, Route] = routes
        self._index = index
        self._wild_cache: dict[str, Route] = {}
        default = next((p for p in config.providers if p.default), None)
        self._default: Route | None = None
        if default is not None:
            up = None if default.is_wildcard else default.model
            self._default = Route(default, up, True)
        self._available = tuple(index.names()) + tuple(aliases)

        models: list[dict[str, Any]] = []
        seen: set[str] = set()
        for p in config.providers:
            if not p.is_wildcard and p.name not in seen:
                seen.add(p.name)
                models.append(_model_entry(p.name, p))
        for alias in aliases:
            if alias not in seen:
                seen.add(alias)
                models.append(_model_entry(alias, routes[alias].provider))
        self._models = tuple(models)

    @property
    def default_route(self) -> Route | None:
        return self._default

    def resolve(self, model: str | None) -> Route:
        """The route for a request's ``model`` value; raises :class:`UnknownModel`."""
        if not model:
            if self._default is None:
                raise UnknownModel("", self._available)
            return self._default
        route = self.routes.get(model)
        if route is not None:
            return route
        route = self._wild_cache.get(model)
        if route is not None:
            return route
        hit = self._index.lookup_wildcard(model)
        if hit is None:
            raise UnknownModel(model, self._available)
        route = Route(hit[0], hit[1], True)
        cache = self._wild_cache
        if len(cache) >= WILDCARD_CACHE_SIZE:
            del cache[next(iter(cache))]  # FIFO eviction keeps memory bounded
        cache[model] = route
        return route

    def models_list(self) -> list[dict[str, Any]]:
        """Entries for ``GET /v1/models``: configured models by name, then aliases.

        Wildcard providers are left out (``openai/*`` is not a model a client can pick);
        ``owned_by`` is the provider id, or the prefix as written for a custom provider.
        """
        return [dict(m) for m in self._models]


def _model_entry(model_id: str, p: ModelProvider) -> dict[str, Any]:
    owner = p.prefix if p.provider == "custom" else p.provider
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
