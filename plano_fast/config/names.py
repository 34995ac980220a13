"""Model-name lookup over the configured providers: pure tables, no I/O.

:class:`ModelIndex` holds resolution rules 1, 2 and 4 of :mod:`plano_fast.routing`
(exact name or ``provider/model``, bare model id, ``prefix/*`` wildcard).  The loader
checks alias targets, fallbacks and preference-routing models with it, and
:class:`plano_fast.routing.Router` is built on it, so a name the loader accepts is a name
a request resolves.  It lives here, not in routing, so the loader never imports routing
(routing imports the config package for :class:`ModelProvider`).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

from plano_fast.config.model import ModelProvider
from plano_fast.providers import canonical_provider_id

__all__ = ["ModelIndex", "name_checker"]


def _owner(p: ModelProvider) -> str:
    """The key a provider's wildcard is indexed under: canonical id, or custom prefix."""
    return p.prefix.lower() if p.provider == "custom" else p.provider


#: what a wildcard never matches after its prefix
_NOT_MODEL_IDS = frozenset(("", "*", ".", ".."))
#: what a wildcard matches after its prefix where the model id becomes a path segment
#: upstream (Azure's deployment, Gemini's model): one segment of letters, digits and
#: ``._-`` starting with a letter or digit, as the firewall's Gemini paths (docs/security.md).
#: Anything else -- "/", "?", "#", "%", CR/LF, NUL, spaces -- would be sent percent-encoded
#: to a path a decoding proxy or server could read as another endpoint.
_PATH_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")

class ModelIndex:
    """Lookup tables over a provider list (rules 1, 2 and 4).  Used by the loader too."""

    __slots__ = ("exact", "bare", "wildcards", "_providers")

    def __init__(self, providers: Iterable[ModelProvider]) -> None:
        self._providers = tuple(providers)
        self.exact: dict[str, ModelProvider] = {}
        self.bare: dict[str, ModelProvider] = {}
        self.wildcards: dict[str, ModelProvider] = {}
        for p in self._providers:
            if p.is_wildcard:
                self.wildcards.setdefault(_owner(p), p)
                continue
            for key in (p.name, f"{p.prefix}/{p.model}", f"{_owner(p)}/{p.model}"):
                self.exact.setdefault(key, p)
        for p in self._providers:
            if not p.is_wildcard:
                self.bare.setdefault(p.model, p)

    def lookup(self, model: str) -> tuple[ModelProvider, str] | None:
        """(provider, upstream model id) for ``model`` by rules 1, 2 and 4, or None."""
        p = self.exact.get(model) or self.bare.get(model)
        if p is not None:
            return p, p.model
        return self.lookup_wildcard(model)

    def lookup_wildcard(self, model: str) -> tuple[ModelProvider, str] | None:
        prefix, sep, rest = model.partition("/")
        # "." and ".." are never model ids, and where the model is a path segment (Azure's
        # deployment, Gemini's model) they would move the request to another endpoint
        if not sep or rest in _NOT_MODEL_IDS or not self.wildcards:
            return None
        key = prefix.strip().lower()
        p = self.wildcards.get(key)
        if p is None:
            canonical = canonical_provider_id(key)
            if canonical is not None:
                p = self.wildcards.get(canonical)
        if p is None:
            return None
        if (p.model_in_path or p.gemini_base_path is not None) and _PATH_MODEL_ID.fullmatch(rest) is None:
            return None
        return p, rest

    def names(self) -> list[str]:
        """Configured model names (wildcards as ``prefix/*``), in config order."""
        out: list[str] = []
        for p in self._providers:
            n = f"{p.prefix}/*" if p.is_wildcard else p.name
            if n not in out:
                out.append(n)
        return out


def name_checker(
    providers: Iterable[ModelProvider], aliases: Mapping[str, str]
) -> Callable[[str], bool] | None:
    """Whether a non-empty model name resolves as a request's ``model`` would (rules 1-4 of
    :mod:`plano_fast.routing`, aliases included); None when an alias target does not
    resolve -- that is reported on its own, and no Router could be built to compare with.
    """
    index = ModelIndex(providers)
    # As Router: an alias named like a configured model is shadowed (its target unused).
    live = [a for a in aliases if a not in index.exact and a not in index.bare]
    if any(index.lookup(aliases[a]) is None for a in live):
        return None
    alias_names = frozenset(live)

    def resolves(model: str) -> bool:
        return index.lookup(model) is not None or model in alias_names

    return resolves
