"""What managed mode keeps in memory: tokens, pipes with decrypted keys, hard limits.

Everything is a cache of the shared store with a stated staleness bound: the whole state
is reloaded every ``reload_interval_s`` (default 5 s) and at once after an admin change on
this instance.  So a revocation is effective immediately on the instance that made it and
within ``reload_interval_s`` on every other one.  Tokens are looked up by SHA-256 only.

``last_used_at`` is kept without a write per request: uses are noted in a dict and
written in one statement per reload cycle (``touch_proxy_tokens`` only moves forward).

Pipe targets name a provider from the config's ``model_providers`` (by ``name``, or by
provider id such as ``openai``): the config says where and how to reach it, the pipe
says which server-side key to use.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from plano_fast.config import GatewayConfig, ModelProvider
from plano_fast.managed.crypto import KeyCipher
from plano_fast.periodic import Periodic
from plano_fast.providers import AUTH_BEARER, PROVIDERS, WIRE_ANTHROPIC, auth_headers_for
from plano_fast.store import Pipe, ProviderKey, ProxyToken, SpendingLimit, Store

log = logging.getLogger("plano_fast.managed")

TOKEN_PREFIX = "xproxy_"
Header = tuple[bytes, bytes]


def new_token() -> str:
    """``xproxy_`` + 32 random bytes, url-safe: shown once, stored only as its hash."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str | bytes) -> str:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def _auth_lines(auth: tuple[Header, ...], seen_version: bool) -> bytes:
    """``auth``'s header lines as ``upstream_request`` writes them: one anthropic-version
    at most, none when the client sent its own (``seen_version``)."""
    lines = []
    for name, value in auth:
        if name == b"anthropic-version":
            if seen_version:
                continue
            seen_version = True
        lines.append(name + b": " + value + b"\r\n")
    return b"".join(lines)


@dataclass(frozen=True, slots=True)
class Target:
    """One pipe target, ready to send to."""

    provider: ModelProvider
    model: str | None  # upstream model to use; None = the client's
    model_filter: str | None  # fnmatch pattern of client models this target serves
    chat_auth: tuple[Header, ...]
    messages_auth: tuple[Header, ...]
    #: the provider key's id (never the key): with provider and model, names the target's
    #: circuit breaker
    key_id: str = ""
    #: ``chat_auth`` / ``messages_auth`` as the upstream head's lines, joined once: (for a
    #: client that sent no anthropic-version, for one that did) -- what
    #: ``upstream_request`` writes of them, without a concatenation per header per request
    #: (the compiled managed start, plano_fast/gateway/_managed.pyx)
    chat_lines: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    messages_lines: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chat_lines", (_auth_lines(self.chat_auth, False), _auth_lines(self.chat_auth, True)))
        object.__setattr__(self, "messages_lines", (
            _auth_lines(self.messages_auth, False), _auth_lines(self.messages_auth, True)
        ))  # fmt: skip

    def serves(self, model: str | None) -> bool:
        if self.model_filter is not None:
            return model is not None and fnmatch.fnmatchcase(model, self.model_filter)
        if self.model is not None:
            return model is None or model == self.model
        return True

    def describe(self) -> str:
        return self.model_filter or self.model or "*"


@dataclass(frozen=True, slots=True)
class ResolvedPipe:
    pipe: Pipe
    targets: tuple[Target, ...]
    #: (client model, endpoint name) -> the targets that serve it there, in order: the
    #: managed exchange's route, computed once per pair (plano_fast.gateway.modes.managed
    #: ``_route``).  A ResolvedPipe is rebuilt at every reload of the state, the cache with
    #: it, so a revoked key or an edited pipe never meets an old entry.
    routes: dict[tuple[str | None, str], tuple[Target, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def candidates(self, model: str | None) -> list[Target]:
        return [t for t in self.targets if t.serves(model)]

    def allowed_models(self) -> list[str]:
        return [t.describe() for t in self.targets]


class ManagedState:
    def __init__(
        self,
        store: Store,
        cipher: KeyCipher,
        config: GatewayConfig,
        *,
        reload_interval_s: float = 5.0,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.config = config
        self.reload_interval_s = reload_interval_s
        self.ready = False
        self.tokens: dict[str, ProxyToken] = {}
        self.pipes: dict[str, ResolvedPipe] = {}
        self._project_pipes: dict[str, list[ResolvedPipe]] = {}
        #: (scope_kind, scope_id) -> that scope's active hard limits
        self.hard_limits: dict[tuple[str, str], list[SpendingLimit]] = {}
        self._last_used: dict[str, int] = {}
        self._loop = Periodic(
            "managed-state", self.reload, lambda: self.reload_interval_s, on_error=self._reload_failed
        )

    # -- hot path ---------------------------------------------------------------------
    def lookup(self, token_sha256: str, now_ns: int) -> ProxyToken | None:
        token = self.tokens.get(token_sha256)
        if token is None or token.revoked:
            return None
        if token.expires_at_ns is not None and token.expires_at_ns <= now_ns:
            return None
        self._last_used[token.id] = now_ns
        return token

    def hard_limited(self, project_id: str | None, user_id: str | None) -> bool:
        """Whether a request of this project / user must reserve against a hard limit."""
        limits = self.hard_limits
        return bool(limits) and (
            (project_id is not None and bool(limits.get(("project", project_id))))
            or (user_id is not None and bool(limits.get(("user", user_id))))
        )

    def pipe_for(self, token: ProxyToken) -> ResolvedPipe | None:
        if token.pipe_id is not None:
            return self.pipes.get(token.pipe_id)
        pipes = self._project_pipes.get(token.project_id, [])
        for pipe in pipes:
            if pipe.pipe.name == "default":
                return pipe
        return pipes[0] if len(pipes) == 1 else None

    # -- loading ----------------------------------------------------------------------
    async def reload(self) -> None:
        store = self.store
        tokens = {t.token_hash: t for t in await store.list_active_proxy_tokens()}
        keys = {k.id: k for k in await store.list_provider_keys() if k.is_active}
        pipes: dict[str, ResolvedPipe] = {}
        project_pipes: dict[str, list[ResolvedPipe]] = {}
        for pipe in await store.list_pipes():
            resolved = ResolvedPipe(pipe, tuple(self._targets(pipe, keys)))
            pipes[pipe.id] = resolved
            project_pipes.setdefault(pipe.project_id, []).append(resolved)
        hard: dict[tuple[str, str], list[SpendingLimit]] = {}
        for limit in await store.list_active_spending_limits():
            if limit.enforcement == "hard":
                hard.setdefault((limit.scope_kind, limit.scope_id), []).append(limit)
        self.tokens, self.pipes, self._project_pipes, self.hard_limits = (
            tokens, pipes, project_pipes, hard
        )
        self.ready = True
        if self._last_used:
            used, self._last_used = self._last_used, {}
            await store.touch_proxy_tokens(used)

    def _targets(self, pipe: Pipe, keys: dict[str, ProviderKey]) -> list[Target]:
        targets = []
        for spec in pipe.targets:
            provider = self._configured_provider(spec.provider)
            if provider is None:
                log.error("pipe %s: provider %r is not in model_providers; target skipped",
                          pipe.name, spec.provider)
                continue
            key = keys.get(spec.provider_key_id or "")
            if key is None:
                log.error("pipe %s: target %s has no active provider key; skipped",
                          pipe.name, spec.provider)
                continue
            secret = self.cipher.decrypt(key.ciphertext, key.nonce, key.key_id, key.provider)
            table = PROVIDERS.get(provider.interface)
            style = table.auth_style if table is not None else AUTH_BEARER
            messages_auth = auth_headers_for(style, secret)
            chat_auth = (
                auth_headers_for(AUTH_BEARER, secret)
                if provider.wire_api == WIRE_ANTHROPIC else messages_auth
            )
            targets.append(Target(
                provider, spec.model, spec.model_filter, chat_auth, messages_auth, key.id
            ))
        return targets

    def _configured_provider(self, name: str) -> ModelProvider | None:
        providers = self.config.providers
        for provider in providers:
            if provider.name == name:
                return provider
        for provider in providers:
            if provider.provider == name or provider.prefix == name:
                return provider
        return None

    async def start(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # noqa: BLE001 - not ready: requests get 503
            log.warning("managed state not loaded yet: %s", type(exc).__name__)
        self._loop.start()

    @staticmethod
    def _reload_failed(exc: Exception) -> None:
        # keep the last good state
        log.warning("managed state reload failed: %s", type(exc).__name__)

    async def stop(self) -> None:
        await self._loop.stop()
        if self._last_used:
            try:
                await self.store.touch_proxy_tokens(self._last_used)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


def now_ns() -> int:
    return time.time_ns()
