"""The built-in provider table: where each LLM provider lives and how it wants to be called.

One :class:`ProviderSpec` per provider id.  The config loader (``config/``) combines a
spec with a ``model_providers`` entry into a :class:`~plano_fast.config.ModelProvider` whose
paths and auth headers are precomputed; nothing here is consulted on the hot path.

Paths follow Plano's ``target_endpoint_for_provider`` (hermesllm ``clients/endpoints.rs``):
an upstream path is ``<prefix><suffix>``, where ``prefix`` is the *path of the configured
``base_url``* when it has one, and the provider's default prefix (``default_prefix``)
otherwise.  So ``base_url: http://127.0.0.1:4000`` with an OpenAI interface gives
``/v1/chat/completions``, and ``base_url: https://api.z.ai/api/coding/paas/v4`` gives
``/api/coding/paas/v4/chat/completions``.

Sources for the base URLs: Plano's ``config/envoy.template.yaml`` clusters and
``endpoints.rs`` path rules, and the endpoints table of ``WIRE_FORMATS.md`` section 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Mapping
from urllib.parse import quote, urlsplit

# What the upstream speaks (the request/response body shape).
WIRE_OPENAI: Final = "openai"  # OpenAI Chat Completions shape
WIRE_ANTHROPIC: Final = "anthropic"  # Anthropic Messages shape
WIRE_BEDROCK: Final = "bedrock"  # AWS Bedrock Converse (not spoken by plano_fast yet)

# How a configured access_key is presented upstream.
AUTH_BEARER: Final = "bearer"  # Authorization: Bearer <key>
AUTH_ANTHROPIC: Final = "anthropic"  # x-api-key: <key> + anthropic-version: 2023-06-01
AUTH_GOOG: Final = "goog"  # x-goog-api-key: <key> (Gemini native API)
AUTH_AZURE: Final = "azure"  # api-key: <key> (Azure OpenAI)

ANTHROPIC_VERSION: Final = b"2023-06-01"

CHAT_SUFFIX: Final = "/chat/completions"
MESSAGES_SUFFIX: Final = "/messages"
RESPONSES_SUFFIX: Final = "/responses"
AZURE_API_VERSION: Final = "2025-01-01-preview"
# Azure puts the deployment (= model) in the path; "{model}" is substituted at load time
# (or per request for an ``azure_openai/*`` wildcard, see ModelProvider.chat_path_for).
AZURE_CHAT_SUFFIX: Final = "/{model}/chat/completions?api-version=" + AZURE_API_VERSION


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One built-in provider.

    ``base_url`` is the default upstream (scheme, host, optional port and the default path
    prefix).  For providers that need a user-supplied ``base_url`` (``requires_base_url``),
    it is only an example shown in the error message.  ``default_prefix`` is the path used
    when the configured base_url has no path (or "/").  A suffix of ``None`` means the
    upstream has no such endpoint.
    """

    id: str
    base_url: str | None
    default_prefix: str = "/v1"
    wire_api: str = WIRE_OPENAI
    auth_style: str = AUTH_BEARER
    chat_suffix: str | None = CHAT_SUFFIX
    messages_suffix: str | None = None
    responses_suffix: str | None = None
    requires_base_url: bool = False


_SPECS: tuple[ProviderSpec, ...] = (
    ProviderSpec("openai", "https://api.openai.com/v1", responses_suffix=RESPONSES_SUFFIX),
    # Anthropic: native Messages at /v1/messages (x-api-key); /v1/chat/completions is
    # Anthropic's own OpenAI-compatible endpoint (Plano forwards chat there untranslated).
    ProviderSpec(
        "anthropic",
        "https://api.anthropic.com",
        wire_api=WIRE_ANTHROPIC,
        auth_style=AUTH_ANTHROPIC,
        messages_suffix=MESSAGES_SUFFIX,
    ),
    # Gemini through its OpenAI-compatible endpoint, as Plano does (bearer auth).
    ProviderSpec(
        "gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "/v1beta/openai"
    ),
    ProviderSpec("deepseek", "https://api.deepseek.com/v1"),
    ProviderSpec("mistral", "https://api.mistral.ai/v1"),
    ProviderSpec("groq", "https://api.groq.com/openai/v1", "/openai/v1"),
    ProviderSpec("together", "https://api.together.xyz/v1"),
    ProviderSpec("fireworks", "https://api.fireworks.ai/inference/v1", "/inference/v1"),
    # Perplexity serves unversioned paths (Plano: use_unversioned_paths for perplexity/).
    ProviderSpec("perplexity", "https://api.perplexity.ai", ""),
    ProviderSpec("cerebras", "https://api.cerebras.ai/v1"),
    ProviderSpec("xai", "https://api.x.ai/v1", responses_suffix=RESPONSES_SUFFIX),
    ProviderSpec("openrouter", "https://openrouter.ai/api/v1", "/api/v1"),
    ProviderSpec("moonshotai", "https://api.moonshot.ai/v1"),
    ProviderSpec("zhipu", "https://open.bigmodel.cn/api/paas/v4", "/api/paas/v4"),
    ProviderSpec("vercel", "https://ai-gateway.vercel.sh/v1", responses_suffix=RESPONSES_SUFFIX),
    ProviderSpec("digitalocean", "https://inference.do-ai.run/v1"),
    ProviderSpec("github", "https://models.github.ai/inference", "/inference"),
    # ChatGPT subscription (codex backend): Responses API only.
    ProviderSpec(
        "chatgpt",
        "https://chatgpt.com/backend-api/codex",
        "/backend-api/codex",
        chat_suffix=None,
        responses_suffix=RESPONSES_SUFFIX,
    ),
    # Plano requires base_url for these; the URL is the conventional one, shown as a hint.
    ProviderSpec("ollama", "http://localhost:11434/v1", requires_base_url=True),
    ProviderSpec(
        "qwen",
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        "/compatible-mode/v1",
        requires_base_url=True,
    ),
    ProviderSpec(
        "azure_openai",
        "https://<resource>.openai.azure.com",
        "/openai/deployments",
        auth_style=AUTH_AZURE,
        chat_suffix=AZURE_CHAT_SUFFIX,
        requires_base_url=True,
    ),
    ProviderSpec(
        "amazon_bedrock",
        "https://bedrock-runtime.us-east-1.amazonaws.com",
        "",
        wire_api=WIRE_BEDROCK,
        chat_suffix=None,
        requires_base_url=True,
    ),
    # Katanemo-hosted models (Arch-Router, Arch-Function, Plano-Orchestrator).
    ProviderSpec("plano", "https://archfc.katanemo.dev", requires_base_url=True),
    # Known to Plano, but plano_fast has no verified default URL: base_url required.
    ProviderSpec("xiaomi", None, requires_base_url=True),
    ProviderSpec("edenai", None, requires_base_url=True),
)

PROVIDERS: Mapping[str, ProviderSpec] = MappingProxyType({s.id: s for s in _SPECS})

# Other spellings of a provider id seen in model prefixes / provider_interface values.
PROVIDER_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "google": "gemini",
        "together_ai": "together",
        "claude": "anthropic",
        "arch": "plano",
        "amazon": "amazon_bedrock",
        "azure": "azure_openai",
        "do": "digitalocean",
        "do_ai": "digitalocean",
        "x-ai": "xai",
        "moonshot": "moonshotai",
        "fireworks_ai": "fireworks",
    }
)

# provider_interface values accepted in a model_providers entry: Plano's schema enum
# (plano, deepseek, groq, mistral, openai, xiaomi, gemini, chatgpt, digitalocean, vercel,
# openrouter, edenai, moonshotai) plus the older claude / arch and the obvious anthropic.
PROVIDER_INTERFACES: tuple[str, ...] = (
    "plano",
    "deepseek",
    "groq",
    "mistral",
    "openai",
    "xiaomi",
    "gemini",
    "chatgpt",
    "digitalocean",
    "vercel",
    "openrouter",
    "edenai",
    "moonshotai",
    "claude",
    "anthropic",
    "arch",
)


def canonical_provider_id(name: str) -> str | None:
    """Return the table id for a provider prefix or interface name, or None if unknown."""
    key = name.strip().lower()
    key = PROVIDER_ALIASES.get(key, key)
    return key if key in PROVIDERS else None


def auth_headers_for(style: str, key: str) -> tuple[tuple[bytes, bytes], ...]:
    """Header pairs (lowercased names) that present ``key`` in the given auth style."""
    value = key.encode("ascii")
    if style == AUTH_ANTHROPIC:
        return ((b"x-api-key", value), (b"anthropic-version", ANTHROPIC_VERSION))
    if style == AUTH_GOOG:
        return ((b"x-goog-api-key", value),)
    if style == AUTH_AZURE:
        return ((b"api-key", value),)
    return ((b"authorization", b"Bearer " + value),)


@dataclass(frozen=True, slots=True)
class Origin:
    """A parsed ``base_url``: where to connect, and the path prefix it carries."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        """``host`` (IPv6 in brackets), with ``:port`` unless it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


def parse_base_url(url: str) -> Origin:
    """Parse an http(s) base URL; raises ValueError saying what is wrong with it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported scheme in {url!r}: only http and https are allowed")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in base_url are not supported; use access_key or headers")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a query string or fragment is not supported")
    if port is None:
        port = 443 if scheme == "https" else 80
    return Origin(scheme, parts.hostname, port, parts.path)


@dataclass(frozen=True, slots=True)
class Paths:
    """Upstream paths for one provider entry (None: the upstream has no such endpoint)."""

    chat_completions: str | None
    messages: str | None
    responses: str | None
    model_in_path: bool  # chat_completions still holds "{model}" (azure_openai/* wildcard)


def upstream_paths(spec: ProviderSpec, base_path: str, model_id: str, wildcard: bool) -> Paths:
    """Paths under ``base_path`` (the base_url's path), or the spec's default prefix.

    Plano's rule: a base_url path replaces the provider's default prefix; an empty path
    (or "/") keeps it.  A messages path exists only for Anthropic-wire upstreams.
    """
    prefix = base_path.rstrip("/") if base_path.strip("/") else spec.default_prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    chat = None if spec.chat_suffix is None else prefix + spec.chat_suffix
    model_in_path = False
    if chat is not None and "{model}" in chat:
        if wildcard:
            model_in_path = True
        else:
            chat = chat.replace("{model}", quote(model_id, safe=""))
    messages = None
    if spec.wire_api == WIRE_ANTHROPIC and spec.messages_suffix is not None:
        messages = prefix + spec.messages_suffix
    responses = None if spec.responses_suffix is None else prefix + spec.responses_suffix
    return Paths(chat, messages, responses, model_in_path)
