"""Client endpoints of config and managed mode, and how a provider serves each one.

Pure lookups on the config model: which provider path serves an endpoint, whether it is
reached through format conversion, which credential headers go with it, and the request
shape guardrails read message text from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from plano_fast import wire as scan

if TYPE_CHECKING:
    from plano_fast.config import ModelProvider
    from plano_fast.upstream import Header


class Endpoint:
    """What a client endpoint means for routing and scanning."""

    __slots__ = ("name", "scan_api", "wire_api")

    def __init__(self, name: str, scan_api: int, wire_api: str) -> None:
        self.name = name
        self.scan_api = scan_api
        self.wire_api = wire_api


CHAT_COMPLETIONS = Endpoint("chat_completions", scan.API_OPENAI_CHAT, "openai")
RESPONSES = Endpoint("responses", scan.API_OPENAI_RESPONSES, "openai")
MESSAGES = Endpoint("messages", scan.API_ANTHROPIC, "anthropic")
# Claude Code calls it before requests; counted, not billed.
COUNT_TOKENS = Endpoint("count_tokens", scan.API_ANTHROPIC, "anthropic")


def upstream_path(provider: ModelProvider, endpoint: Endpoint, model: str | None) -> bytes | None:
    """The provider path serving ``endpoint``, or None when it cannot be served (encoded
    once per provider, ``ModelProvider.upstream_paths``, but for Azure's ``{model}``)."""
    if model and endpoint is CHAT_COMPLETIONS and provider.model_in_path:
        path = provider.chat_path_for(model)
        return path.encode() if path else None
    paths = provider.upstream_paths
    name = endpoint.name
    return paths[name] if name in paths else paths["responses"]


def converts(endpoint: Endpoint, provider: ModelProvider) -> bool:
    """Whether ``endpoint`` reaches ``provider`` through format conversion.  A Responses
    request passes through to an OpenAI-family provider with a responses path, and is
    converted (to chat completions, Messages or Gemini) for every other provider."""
    if endpoint is RESPONSES:
        return provider.wire_api != "openai" or provider.responses_path is None
    return provider.wire_api != endpoint.wire_api


def auth_headers_for(provider: ModelProvider, endpoint: Endpoint) -> tuple[Header, ...]:
    # Anthropic's OpenAI-compatible chat endpoint takes a bearer token, its Messages API
    # an x-api-key; the config precomputes both.
    if endpoint is CHAT_COMPLETIONS and provider.chat_auth_headers:
        return provider.chat_auth_headers
    return provider.auth_headers


def auth_lines_for(provider: ModelProvider, endpoint: Endpoint) -> tuple[bytes, bytes]:
    """``auth_headers_for``'s headers and the provider's extra headers as the upstream
    head's lines, joined at config load (``ModelProvider.auth_lines``)."""
    if endpoint is CHAT_COMPLETIONS:
        return provider.chat_auth_lines
    return provider.auth_lines


class RequestFieldsLike(Protocol):
    """What the exchange reads of a request (scan.RequestFields, or a Gemini path's)."""

    @property
    def model(self) -> str | None: ...

    @property
    def stream(self) -> bool: ...

    @property
    def include_usage(self) -> bool | None: ...


#: client endpoint -> the request shape guardrails read message text from
GUARD_FORMATS: Final = {
    "chat_completions": "openai",
    "completions": "openai",
    "messages": "anthropic",
    "count_tokens": "anthropic",
    "responses": "responses",
    "gemini": "gemini",
    "embeddings": "embeddings",
}
