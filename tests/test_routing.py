"""Model -> provider resolution, and the upstream endpoints/auth precomputed per provider."""

from __future__ import annotations

import dataclasses

import pytest

from plano_fast import routing
from plano_fast.config import GatewayConfig, ModelProvider, parse_config
from plano_fast.routing import Route, Router, UnknownModel

HEAD = """\
version: v0.4.0
listeners:
  - {type: model, name: model_listener, port: 12000}
"""

CONFIG = HEAD + """\
model_providers:
  - model: openai/gpt-4o
    access_key: sk-openai
    default: true
  - model: openai/gpt-4o-mini
    access_key: sk-openai
  - model: openai/*
    passthrough_auth: true
  - name: claude
    model: anthropic/claude-sonnet-4-5
    access_key: sk-ant
  - model: google/gemini-2.0-flash
    access_key: AIza
  - model: groq/gpt-4o-mini
    access_key: gsk
  - model: together/meta-llama/Llama-3-70b
    access_key: tg
  - model: vllm/*
    base_url: http://gpu:8000
    provider_interface: openai
model_aliases:
  fast: {target: openai/gpt-4o-mini}
  smart: {target: claude}
  nano: {target: openai/gpt-4.1-nano}
  gpt-4o: {target: anthropic/claude-sonnet-4-5}
"""


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    return parse_config(CONFIG, source="routing.yaml", env={})


@pytest.fixture(scope="module")
def router(config: GatewayConfig) -> Router:
    return Router(config)


def _providers(cfg: GatewayConfig) -> dict[str, ModelProvider]:
    return {p.name: p for p in cfg.providers}


def _one(snippet: str, env: dict[str, str] | None = None) -> ModelProvider:
    cfg = parse_config(HEAD + "model_providers:\n" + snippet, env=env or {})
    assert len(cfg.providers) == 1
    return cfg.providers[0]


# ----------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("model", "name", "upstream", "rewrite"),
    [
        # 1. exact: provider/model as configured, a provider's name, canonical prefix form
        ("openai/gpt-4o", "openai/gpt-4o", "gpt-4o", True),
        ("claude", "claude", "claude-sonnet-4-5", True),
        ("anthropic/claude-sonnet-4-5", "claude", "claude-sonnet-4-5", True),
        ("google/gemini-2.0-flash", "google/gemini-2.0-flash", "gemini-2.0-flash", True),
        ("gemini/gemini-2.0-flash", "google/gemini-2.0-flash", "gemini-2.0-flash", True),
        ("groq/gpt-4o-mini", "groq/gpt-4o-mini", "gpt-4o-mini", True),
        # 2. bare model id: the client already sends the upstream id -> no rewrite
        ("gpt-4o", "openai/gpt-4o", "gpt-4o", False),  # beats the alias named gpt-4o
        ("gpt-4o-mini", "openai/gpt-4o-mini", "gpt-4o-mini", False),  # first of two wins
        ("claude-sonnet-4-5", "claude", "claude-sonnet-4-5", False),
        ("gemini-2.0-flash", "google/gemini-2.0-flash", "gemini-2.0-flash", False),
        ("meta-llama/Llama-3-70b", "together/meta-llama/Llama-3-70b", "meta-llama/Llama-3-70b",
         False),
        # 3. aliases (target resolved by the same rules, including wildcards)
        ("fast", "openai/gpt-4o-mini", "gpt-4o-mini", True),
        ("smart", "claude", "claude-sonnet-4-5", True),
        ("nano", "openai/*", "gpt-4.1-nano", True),
        # 4. wildcards
        ("openai/gpt-5", "openai/*", "gpt-5", True),
        ("OpenAI/gpt-5", "openai/*", "gpt-5", True),
        ("vllm/qwen2.5-coder", "vllm/*", "qwen2.5-coder", True),
        ("vllm/org/model", "vllm/*", "org/model", True),
    ],
)
def test_resolution(router: Router, model: str, name: str, upstream: str, rewrite: bool) -> None:
    route = router.resolve(model)
    assert (route.provider.name, route.upstream_model, route.rewrite) == (name, upstream, rewrite)


def test_specific_entry_beats_wildcard(router: Router) -> None:
    assert not router.resolve("openai/gpt-4o").provider.is_wildcard
    assert router.resolve("openai/gpt-4o").provider.access_key == "sk-openai"
    assert router.resolve("openai/o3").provider.passthrough_auth


@pytest.mark.parametrize("model", [None, ""])
def test_no_model_goes_to_default(router: Router, model: str | None) -> None:
    route = router.resolve(model)
    assert (route.provider.name, route.upstream_model, route.rewrite) == (
        "openai/gpt-4o",
        "gpt-4o",
        True,
    )
    assert router.default_route is route


def test_no_model_without_default_is_unknown() -> None:
    cfg = parse_config(HEAD + "model_providers:\n  - model: openai/gpt-4o\n", env={})
    with pytest.raises(UnknownModel) as ei:
        Router(cfg).resolve(None)
    assert ei.value.model == ""
    assert "No model specified" in str(ei.value)
    assert "openai/gpt-4o" in str(ei.value)


@pytest.mark.parametrize(
    "model",
    ["gpt-5", "anthropic/claude-opus-9", "mistral/large", "openai/", "openai/*", "/gpt-4o",
     "vllm", "GPT-4O"],
)
def test_unknown_models(router: Router, model: str) -> None:
    with pytest.raises(UnknownModel) as ei:
        router.resolve(model)
    err = ei.value
    assert err.model == model
    assert str(err).startswith(f"Model '{model}' not found in configured providers")
    assert "openai/gpt-4o" in err.available and "openai/*" in err.available
    assert "fast" in err.available and "vllm/*" in err.available
    assert "openai/gpt-4o, openai/gpt-4o-mini, openai/*, claude" in str(err)


def test_alias_named_like_a_model_is_shadowed_with_a_warning(config: GatewayConfig) -> None:
    assert any("model_aliases.gpt-4o: shadowed" in w for w in config.warnings)


def test_wildcard_cache_is_bounded(monkeypatch: pytest.MonkeyPatch, config: GatewayConfig) -> None:
    monkeypatch.setattr(routing, "WILDCARD_CACHE_SIZE", 8)
    r = Router(config)
    first = r.resolve("openai/m0")
    assert r.resolve("openai/m0") is first  # cached
    for i in range(50):
        route = r.resolve(f"openai/m{i}")
        assert route.upstream_model == f"m{i}"
    assert len(r._wild_cache) <= 8
    assert r.resolve("openai/m0") == first  # evicted, recomputed, equal


def test_route_is_frozen(router: Router) -> None:
    route = router.resolve("fast")
    assert isinstance(route, Route)
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.rewrite = False  # type: ignore[misc]


def test_models_list(router: Router) -> None:
    listed = router.models_list()
    ids = [m["id"] for m in listed]
    assert ids == [
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "claude",
        "google/gemini-2.0-flash",
        "groq/gpt-4o-mini",
        "together/meta-llama/Llama-3-70b",
        "fast",
        "smart",
        "nano",
    ]
    assert listed[0] == {"id": "openai/gpt-4o", "object": "model", "created": 0,
                         "owned_by": "openai"}
    assert {m["id"]: m["owned_by"] for m in listed}["google/gemini-2.0-flash"] == "gemini"
    assert all("*" not in m["id"] for m in listed)
    listed[0]["id"] = "mutated"
    assert router.models_list()[0]["id"] == "openai/gpt-4o"


def test_models_list_custom_provider_owned_by_prefix() -> None:
    cfg = parse_config(
        HEAD + "model_providers:\n  - model: custom/litellm\n    base_url: http://h:4000\n"
        "    provider_interface: openai\n",
        env={},
    )
    assert Router(cfg).models_list()[0]["owned_by"] == "custom"


def test_router_rejects_hand_built_config_with_dangling_alias(config: GatewayConfig) -> None:
    bad = dataclasses.replace(config, model_aliases={"x": "nowhere/none"})
    with pytest.raises(ValueError, match="nowhere/none"):
        Router(bad)


def test_legacy_name_equal_to_model_needs_no_rewrite() -> None:
    cfg = parse_config(
        HEAD + "llm_providers:\n  - {name: gpt-4o, provider: openai, model: gpt-4o}\n", env={}
    )
    route = Router(cfg).resolve("gpt-4o")
    assert (route.upstream_model, route.rewrite) == ("gpt-4o", False)
    assert Router(cfg).resolve("openai/gpt-4o").rewrite


# ----------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("base_url", "scheme", "host", "port", "chat"),
    [
        ("http://127.0.0.1:4000", "http", "127.0.0.1", 4000, "/v1/chat/completions"),
        ("http://127.0.0.1:4000/", "http", "127.0.0.1", 4000, "/v1/chat/completions"),
        ("https://api.z.ai/api/coding/paas/v4", "https", "api.z.ai", 443,
         "/api/coding/paas/v4/chat/completions"),
        ("https://api.z.ai/api/coding/paas/v4/", "https", "api.z.ai", 443,
         "/api/coding/paas/v4/chat/completions"),
        ("http://proxy/v1", "http", "proxy", 80, "/v1/chat/completions"),
        ("HTTPS://Proxy.Example:8443/openai", "https", "proxy.example", 8443,
         "/openai/chat/completions"),
    ],
)
def test_base_url_path_replaces_default_prefix(
    base_url: str, scheme: str, host: str, port: int, chat: str
) -> None:
    p = _one(f"  - model: custom/m\n    base_url: {base_url}\n    provider_interface: openai\n")
    assert (p.scheme, p.host, p.port, p.tls) == (scheme, host, port, scheme == "https")
    assert p.chat_completions_path == chat
    assert p.messages_path is None
    assert p.wire_api == "openai"


def test_builtin_provider_with_base_url_override() -> None:
    p = _one("  - model: openai/gpt-4o\n    base_url: http://localhost:8080\n")
    assert (p.provider, p.host, p.port, p.chat_completions_path) == (
        "openai",
        "localhost",
        8080,
        "/v1/chat/completions",
    )
    assert p.host_header == "localhost:8080"
    g = _one("  - model: gemini/x\n    base_url: https://gw.example\n")
    assert g.chat_completions_path == "/v1beta/openai/chat/completions"


@pytest.mark.parametrize(
    ("base_url", "messages", "chat"),
    [
        (None, "/v1/messages", "/v1/chat/completions"),
        ("https://gw.example", "/v1/messages", "/v1/chat/completions"),
        ("https://gw.example/", "/v1/messages", "/v1/chat/completions"),
        ("https://gw.example/anthropic/v1", "/anthropic/v1/messages",
         "/anthropic/v1/chat/completions"),
    ],
)
def test_anthropic_paths(base_url: str | None, messages: str, chat: str) -> None:
    line = f"    base_url: {base_url}\n" if base_url else ""
    p = _one("  - model: anthropic/claude-sonnet-4-5\n    access_key: sk-ant\n" + line)
    assert p.wire_api == "anthropic"
    assert (p.messages_path, p.chat_completions_path) == (messages, chat)
    assert p.responses_path is None


def test_custom_provider_with_claude_interface_speaks_anthropic() -> None:
    p = _one(
        "  - model: corp/claude\n    base_url: https://llm.corp\n    provider_interface: claude\n"
    )
    assert (p.provider, p.interface, p.wire_api, p.messages_path) == (
        "custom",
        "anthropic",
        "anthropic",
        "/v1/messages",
    )


def test_custom_provider_with_gemini_interface_uses_gemini_prefix() -> None:
    p = _one("  - model: corp/g\n    base_url: https://llm.corp\n    provider_interface: gemini\n")
    assert p.chat_completions_path == "/v1beta/openai/chat/completions"


def test_openai_responses_path() -> None:
    assert _one("  - model: openai/gpt-4o\n").responses_path == "/v1/responses"
    assert _one("  - model: xai/grok-4\n").responses_path == "/v1/responses"
    assert _one("  - model: mistral/large\n").responses_path is None


def test_azure_deployment_in_path_and_wildcard_template() -> None:
    p = _one("  - model: azure_openai/gpt4-dep\n    base_url: https://r.openai.azure.com\n")
    expected = "/openai/deployments/gpt4-dep/chat/completions?api-version=2025-01-01-preview"
    assert p.chat_completions_path == expected
    assert p.chat_path_for("ignored") == expected
    w = _one("  - model: azure_openai/*\n    base_url: https://r.openai.azure.com/custom\n")
    assert w.model_in_path
    assert w.chat_path_for("dep-1") == (
        "/custom/dep-1/chat/completions?api-version=2025-01-01-preview"
    )


def test_bedrock_loads_reported_unimplemented_and_no_paths() -> None:
    cfg = parse_config(
        HEAD + "model_providers:\n  - model: amazon_bedrock/us.amazon.nova-pro-v1:0\n"
        "    base_url: https://bedrock-runtime.us-west-2.amazonaws.com\n",
        env={},
    )
    (p,) = cfg.providers
    assert (p.wire_api, p.chat_completions_path, p.messages_path) == ("bedrock", None, None)
    assert cfg.unimplemented == (
        "<string>: model_providers[0]: not implemented by plano_fast: the amazon_bedrock Converse API",
    )


def test_host_header_sni_and_http_host() -> None:
    p = _one(
        "  - model: openai/x\n    base_url: https://10.1.2.3:8443/v1\n    http_host: api.corp\n"
    )
    assert (p.host, p.sni, p.port, p.host_header, p.http_host) == (
        "10.1.2.3",
        "10.1.2.3",
        8443,
        "api.corp",
        "api.corp",
    )
    v6 = _one("  - model: openai/x\n    base_url: http://[::1]:8000\n")
    assert (v6.host, v6.host_header) == ("::1", "[::1]:8000")
    std = _one("  - model: openai/x\n    base_url: http://h:80\n")
    assert std.host_header == "h"


# ----------------------------------------------------------------------------- auth


def test_auth_headers_per_provider_style(config: GatewayConfig) -> None:
    p = _providers(config)
    assert p["openai/gpt-4o"].auth_headers == ((b"authorization", b"Bearer sk-openai"),)
    assert p["openai/gpt-4o"].chat_auth_headers == p["openai/gpt-4o"].auth_headers
    assert p["claude"].auth_headers == (
        (b"x-api-key", b"sk-ant"),
        (b"anthropic-version", b"2023-06-01"),
    )
    # Anthropic's OpenAI-compatible /v1/chat/completions takes a bearer token.
    assert p["claude"].chat_auth_headers == ((b"authorization", b"Bearer sk-ant"),)
    assert p["google/gemini-2.0-flash"].auth_headers == ((b"authorization", b"Bearer AIza"),)
    assert p["groq/gpt-4o-mini"].auth_headers == ((b"authorization", b"Bearer gsk"),)


def test_passthrough_and_keyless_providers_have_no_auth_headers(config: GatewayConfig) -> None:
    p = _providers(config)
    assert p["openai/*"].passthrough_auth
    assert p["openai/*"].auth_headers == () and p["openai/*"].chat_auth_headers == ()
    assert p["vllm/*"].access_key is None and p["vllm/*"].auth_headers == ()
    both = _one("  - model: anthropic/c\n    access_key: sk\n    passthrough_auth: true\n")
    assert both.auth_headers == () and both.chat_auth_headers == ()
    assert both.access_key == "sk"


def test_azure_uses_api_key_header() -> None:
    p = _one("  - model: azure_openai/d\n    base_url: https://r.openai.azure.com\n"
             "    access_key: $AZ\n", env={"AZ": "az-key"})
    assert p.auth_headers == ((b"api-key", b"az-key"),)


def test_extra_headers_are_lowercased_bytes() -> None:
    p = _one(
        "  - model: chatgpt/gpt-5\n    headers: {ChatGPT-Account-Id: acc-1, originator: cx}\n"
    )
    assert p.extra_headers == ((b"chatgpt-account-id", b"acc-1"), (b"originator", b"cx"))
    assert p.chat_completions_path is None
    assert p.responses_path == "/backend-api/codex/responses"


@pytest.mark.parametrize("aliases", [
    {},
    {"fast": "gpt-4o-mini", "smart": "claude", "gem": "google/gemini-2.0-flash"},
    {"gpt-4o": "no-such-model", "fast": "openai/gpt-x"},  # shadowed alias: target unused
    {"broken": "no-such-model"},  # a Router cannot be built: names are not checked
])
def test_loader_name_checker_agrees_with_the_router(aliases: dict[str, str]) -> None:
    """The loader checks preference-routing names without importing routing
    (config.names.name_checker); a name it accepts is one a request resolves."""
    from types import SimpleNamespace

    from plano_fast.config.names import name_checker

    providers = parse_config(CONFIG).providers
    resolves = name_checker(providers, aliases)
    try:
        router = Router(SimpleNamespace(providers=providers, model_aliases=aliases))
    except ValueError:
        assert resolves is None
        return
    assert resolves is not None
    names = [*aliases, "gpt-4o", "claude", "openai/gpt-4o", "gemini/gemini-2.0-flash", "google/gemini-2.0-flash",
             "gpt-4o-mini", "groq/gpt-4o-mini", "openai/anything", "vllm/llama", "VLLM/llama", "anthropic/x",
             "meta-llama/Llama-3-70b", "together/meta-llama/Llama-3-70b", "nope", "openai/*", "x/y"]
    for name in names:
        try:
            router.resolve(name)
            expected = True
        except UnknownModel:
            expected = False
        assert resolves(name) is expected, name


# ------------------------------------------------- the provider's lines, joined at config load

LINES_CONFIG = CONFIG.replace(
    "  - model: groq/gpt-4o-mini\n    access_key: gsk\n",
    "  - model: groq/gpt-4o-mini\n    access_key: gsk\n    headers: {X-Team: blue, OpenAI-Project: p1}\n"
    "  - name: ant-extra\n    model: anthropic/claude-haiku-4-5\n    access_key: sk-ant2\n"
    "    headers: {X-Route: a}\n"
    "  - name: pass-extra\n    model: mistral/*\n    passthrough_auth: true\n    headers: {X-Route: b}\n",
)


@pytest.mark.parametrize("endpoint_name", ["CHAT_COMPLETIONS", "MESSAGES", "RESPONSES", "COUNT_TOKENS"])
@pytest.mark.parametrize("client_version", [False, True])
@pytest.mark.parametrize("client_request_id", [False, True])
@pytest.mark.parametrize("query", [b"", b"a=1"])
def test_provider_request_writes_the_bytes_upstream_request_does(
    endpoint_name: str, client_version: bool, client_request_id: bool, query: bytes
) -> None:
    # provider_request (config mode: the lines the config joined once) against the
    # general builder, for every provider: credentials, anthropic-version (the client's
    # wins), extra headers, passthrough.
    from plano_fast.credentials import read_client_headers
    from plano_fast.gateway import endpoints
    from plano_fast.gateway.upstream_request import provider_request, upstream_request

    cfg = parse_config(LINES_CONFIG, source="lines.yaml", env={})
    assert {"ant-extra", "pass-extra"} <= {p.name for p in cfg.providers}
    endpoint = getattr(endpoints, endpoint_name)
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-client")]
    if client_version:
        headers.append((b"anthropic-version", b"2024-01-01"))
    if client_request_id:
        headers.append((b"x-request-id", b"client-id"))
    for provider in cfg.providers:
        client = read_client_headers(headers, query)
        line = [b"POST", b" ", b"/v1/x", b"?", query] if query else [b"POST", b" ", b"/v1/x"]
        auth = None if provider.passthrough_auth else endpoints.auth_headers_for(provider, endpoint)
        lines = None if provider.passthrough_auth else endpoints.auth_lines_for(provider, endpoint)
        expected = upstream_request(client, "rid-1", list(line), provider, auth, b"{}")
        got = provider_request(client, "rid-1", list(line), provider, lines, b"{}")
        assert got == expected, provider.name
        head = got[0]
        assert head.startswith(b"POST /v1/x" + (b"?" + query if query else b"") + b" HTTP/1.1\r\n")
        assert head.endswith(b"content-length: 2\r\n\r\n") and got[1] == b"{}"
        assert (b"x-request-id: rid-1\r\n" in head) is not client_request_id
        assert head.count(b"anthropic-version:") <= 1  # the client's wins over the provider's
        assert (b"anthropic-version: 2024-01-01\r\n" in head) is client_version
