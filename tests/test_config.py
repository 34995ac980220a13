"""Config loading: every Plano config generation loads; every broken config says why."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from plano_fast.config import (
    ConfigError,
    GatewayConfig,
    GatewaySettings,
    ModelProvider,
    load_config,
    parse_config,
    parse_duration,
)
from plano_fast.providers import PROVIDERS, auth_headers_for, canonical_provider_id

HERE = Path(__file__).parent
GOOD = HERE / "configs" / "good"
BAD = HERE / "configs" / "bad"
EXAMPLE = HERE.parent / "examples" / "plano_config.yaml"

ENV = {
    "OPENAI_API_KEY": "sk-openai",
    "MISTRAL_API_KEY": "mistral-key",
    "GROQ_API_KEY": "gsk-groq",
    "ANTHROPIC_API_KEY": "sk-ant",
    "ZAI_API_KEY": "zai-key",
    "GEMINI_API_KEY": "AIza-gemini",
    "DEEPSEEK_API_KEY": "sk-deepseek",
    "AZURE_KEY": "azure-key",
    "PLANO_FAST_DB": "/tmp/plano_fast_test.db",
}

MINIMAL = """\
version: v0.4.0
listeners:
  - {type: model, name: model_listener, port: 12000}
model_providers:
"""


def _by_name(cfg: GatewayConfig) -> dict[str, ModelProvider]:
    return {p.name: p for p in cfg.providers}


# ----------------------------------------------------------------------------- good configs


def test_every_good_config_loads() -> None:
    files = sorted(GOOD.glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        cfg = load_config(f, env=ENV)
        assert cfg.listener.type == "model"
        assert cfg.providers


def test_example_config_loads_without_any_env() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.version == "v0.4.0"
    assert (cfg.listener.address, cfg.listener.port, cfg.listener.timeout_s) == (
        "127.0.0.1",
        12000,
        300.0,
    )
    names = [p.name for p in cfg.providers]
    assert names == ["openai/gpt-4o-mini", "openai/*", "anthropic/claude-sonnet-4-5"]
    assert all(p.passthrough_auth and p.auth_headers == () for p in cfg.providers)
    assert cfg.model_aliases == {"fast": "openai/gpt-4o-mini"}
    assert cfg.settings.sqlite_path == "plano_fast.db"
    assert cfg.warnings == ()


def test_v0_1_0_legacy_listener_object_and_llm_providers() -> None:
    cfg = load_config(GOOD / "v0_1_0_legacy.yaml", env=ENV)
    assert cfg.version == "v0.1.0"
    assert [(ls.name, ls.type, ls.port, ls.timeout_s) for ls in cfg.listeners] == [
        ("egress_traffic", "model", 12000, 30.0),
        ("ingress_traffic", "prompt", 10000, 300.0),
    ]
    assert cfg.listener.name == "egress_traffic"
    assert cfg.listener.address == "0.0.0.0"
    gpt, ministral, local = cfg.providers
    # `provider: openai` + bare model (0.1.0)
    assert (gpt.name, gpt.provider, gpt.model, gpt.default) == ("gpt-4o", "openai", "gpt-4o", True)
    assert gpt.access_key == "sk-openai"
    # `provider_interface` + bare model (0.2.0), ${VAR} form
    assert (ministral.provider, ministral.model, ministral.host) == (
        "mistral",
        "ministral-3b-latest",
        "api.mistral.ai",
    )
    assert ministral.access_key == "mistral-key"
    # `endpoint` + `protocol` (0.2.x) -> base URL without path -> interface default prefix
    assert (local.scheme, local.host, local.port, local.tls) == (
        "http",
        "host.docker.internal",
        11434,
        False,
    )
    assert local.chat_completions_path == "/v1/chat/completions"
    assert local.host_header == "host.docker.internal:11434"
    assert any("deprecated" in w and "llm_providers[0].provider" in w for w in cfg.warnings)
    # unused Plano sections are kept raw
    assert cfg.raw["prompt_targets"][0]["name"] == "weather"
    assert "system_prompt" in cfg.raw


def test_v0_1_singular_listener_is_the_prompt_listener() -> None:
    cfg = load_config(GOOD / "v0_1_singular_listener.yaml", env={})
    assert [(ls.name, ls.type, ls.port) for ls in cfg.listeners] == [
        ("egress_traffic", "model", 12000),
        ("ingress_traffic", "prompt", 10000),
    ]
    (p,) = cfg.providers
    assert (p.name, p.provider, p.model, p.access_key) == (
        "OpenAI",
        "openai",
        "gpt-4o",
        "OPENAI_KEY_LITERAL",
    )


def test_v0_3_0_shapes() -> None:
    cfg = load_config(GOOD / "v0_3_0.yaml", env=ENV)
    assert [(ls.name, ls.type, ls.port, ls.timeout_s) for ls in cfg.listeners] == [
        ("model_listener", "model", 12000, 60.0),
        ("prompt_listener", "prompt", 10000, 300.0),
    ]
    assert cfg.listener.max_retries == 2
    p = _by_name(cfg)
    mini = cfg.providers[0]
    assert mini.routing_preferences[0].name == "quick tasks"
    proxy = p["custom/litellm-proxy"]
    assert (proxy.provider, proxy.prefix, proxy.interface) == ("custom", "custom", "openai")
    assert proxy.passthrough_auth and proxy.auth_headers == ()
    assert (proxy.host, proxy.port, proxy.chat_completions_path) == (
        "host.docker.internal",
        4000,
        "/v1/chat/completions",
    )
    ollama = p["ollama/llama3.1"]
    assert (ollama.host, ollama.port, ollama.chat_completions_path) == (
        "localhost",
        11434,
        "/v1/chat/completions",
    )
    groq = cfg.providers[3]
    assert groq.routing_preferences[0].description == "fast generation"  # legacy `usage`
    assert groq.chat_completions_path == "/openai/v1/chat/completions"
    assert cfg.model_aliases == {"fast": "openai/gpt-4o-mini", "local": "llama3.1"}


def test_v0_4_0_everything() -> None:
    cfg = load_config(GOOD / "v0_4_0.yaml", env=ENV)
    assert cfg.listener.name == "model_listener"
    assert cfg.listener.timeout_s == 0.5
    assert [ls.type for ls in cfg.listeners] == ["agent", "model"]
    assert cfg.listeners[0].router == "plano_orchestrator_v1"
    p = _by_name(cfg)
    assert p["openai/*"].is_wildcard and p["openai/*"].model == "*"
    glm = p["glm-coding"]
    assert (glm.provider, glm.host, glm.chat_completions_path) == (
        "zhipu",
        "api.z.ai",
        "/api/coding/paas/v4/chat/completions",
    )
    gem = p["google/gemini-2.0-flash"]
    assert (gem.provider, gem.prefix, gem.host, gem.chat_completions_path) == (
        "gemini",
        "google",
        "generativelanguage.googleapis.com",
        "/v1beta/openai/chat/completions",
    )
    assert gem.auth_headers == ((b"authorization", b"Bearer AIza-gemini"),)
    vllm = p["vllm/*"]
    assert (vllm.provider, vllm.prefix, vllm.chat_completions_path) == (
        "custom",
        "vllm",
        "/v1/chat/completions",
    )
    orr = p["openrouter/anthropic/claude-3.5-sonnet"]
    assert orr.model == "anthropic/claude-3.5-sonnet"
    assert orr.extra_headers == (
        (b"http-referer", b"https://example.com"),
        (b"x-title", b"plano_fast"),
    )
    az = p["azure_openai/my-deployment"]
    assert az.chat_completions_path == (
        "/openai/deployments/my-deployment/chat/completions?api-version=2025-01-01-preview"
    )
    assert az.auth_headers == ((b"api-key", b"azure-key"),)
    assert az.host_header == "myres.openai.azure.com"
    assert cfg.model_aliases == {"smart": "openai/gpt-4o", "cheap": "openai/gpt-4o-mini"}
    s = cfg.settings
    assert (s.sqlite_path, s.max_body_bytes, s.upstream_idle_timeout_s, s.admin_port) == (
        "/tmp/plano_fast_test.db",
        1048576,
        30.0,
        12002,
    )
    assert s.upstream_connect_timeout_s == 3.0  # from Plano's overrides.upstream_connect_timeout
    assert cfg.raw["state_storage"] == {"type": "memory"}


def test_seed_config_list_listener_without_type_and_string_alias_targets() -> None:
    cfg = load_config(GOOD / "seed_research_guide.yaml", env=ENV)
    assert (cfg.listener.name, cfg.listener.port, cfg.listener.timeout_s) == (
        "egress_traffic",
        8080,
        30.0,
    )
    assert any("listeners[0].type" in w for w in cfg.warnings)
    assert cfg.model_aliases["fast-code-gen"] == "gemini/gemini-2.0-flash-exp"


def test_defaults_when_sections_are_missing() -> None:
    cfg = parse_config("version: v0.4.0\nmodel_providers:\n  - model: openai/gpt-4o\n", env={})
    assert (cfg.listener.name, cfg.listener.address, cfg.listener.port) == (
        "egress_traffic",
        "0.0.0.0",
        12000,
    )
    assert cfg.listener.timeout_s == 300.0
    assert cfg.settings == GatewaySettings()
    s = cfg.settings
    assert s.max_body_bytes == 32 * 1024 * 1024 and s.max_header_bytes == 32 * 1024
    assert (s.request_head_timeout_s, s.keepalive_timeout_s, s.drain_timeout_s) == (10, 60, 30)
    assert (s.upstream_connect_timeout_s, s.upstream_idle_timeout_s) == (5, 60)
    assert (s.upstream_pool_max_idle_per_origin, s.dns_ttl_s, s.usage_flush_interval_s) == (
        64,
        60,
        10,
    )
    assert (s.sqlite_path, s.database_url, s.admin_port, s.admin_address) == (
        "plano_fast.db",
        None,
        None,
        "127.0.0.1",
    )


def test_every_supported_version_is_accepted() -> None:
    for v in ("v0.1", "v0.1.0", "0.1-beta", "0.2.0", "v0.3.0", "v0.4.0"):
        cfg = parse_config(f"version: {v}\nmodel_providers:\n  - model: openai/gpt-4o\n", env={})
        assert cfg.version == v


def test_config_objects_are_frozen() -> None:
    cfg = load_config(EXAMPLE, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.version = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.providers[0].model = "x"  # type: ignore[misc]


def test_secrets_are_not_in_repr() -> None:
    text = MINIMAL + "  - model: openai/gpt-4o\n    access_key: sk-secret-123\n"
    cfg = parse_config(text, env={})
    assert "sk-secret-123" not in repr(cfg.providers[0])
    assert "sk-secret-123" not in repr(cfg.listener)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("300s", 300.0), ("1m", 60.0), ("500ms", 0.5), ("1h", 3600.0),
     ("2.5s", 2.5), ("45", 45.0), (30, 30.0), (1.5, 1.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "30 seconds", "-1s", "0s", 0, -3, True, None, "1d"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ----------------------------------------------------------------------------- environment


def test_env_expansion_both_forms_and_in_other_fields() -> None:
    text = MINIMAL + (
        "  - model: custom/m\n"
        "    provider_interface: openai\n"
        "    base_url: http://${HOST}:$PORT/api\n"
        "    access_key: key-$SUFFIX\n"
        "    headers: {X-Tenant: $TENANT}\n"
    )
    env = {"HOST": "10.0.0.5", "PORT": "8080", "SUFFIX": "abc", "TENANT": "t1"}
    (p,) = parse_config(text, env=env).providers
    assert (p.host, p.port, p.chat_completions_path) == ("10.0.0.5", 8080, "/api/chat/completions")
    assert p.access_key == "key-abc"
    assert p.auth_headers == ((b"authorization", b"Bearer key-abc"),)
    assert p.extra_headers == ((b"x-tenant", b"t1"),)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANO_FAST_TEST_KEY", "from-os")
    text = MINIMAL + "  - model: openai/gpt-4o\n    access_key: $PLANO_FAST_TEST_KEY\n"
    assert parse_config(text).providers[0].access_key == "from-os"
    monkeypatch.delenv("PLANO_FAST_TEST_KEY")
    with pytest.raises(ConfigError, match="PLANO_FAST_TEST_KEY, which is not set"):
        parse_config(text)


def test_env_set_but_empty_is_an_error() -> None:
    text = MINIMAL + "  - model: openai/gpt-4o\n    access_key: $KEY\n"
    with pytest.raises(ConfigError) as ei:
        parse_config(text, source="cfg.yaml", env={"KEY": ""})
    assert "cfg.yaml: model_providers[0].access_key: references environment variable $KEY, " \
        "which is empty" in str(ei.value)


def test_unset_env_in_unused_passthrough_key_only_warns() -> None:
    text = MINIMAL + "  - model: openai/gpt-4o\n    access_key: $NOPE\n    passthrough_auth: true\n"
    cfg = parse_config(text, env={})
    assert cfg.providers[0].access_key is None
    assert any("$NOPE, which is not set (unused" in w for w in cfg.warnings)


def test_literal_dollar_without_var_name_is_kept() -> None:
    text = MINIMAL + "  - model: openai/gpt-4o\n    access_key: abc$\n"
    assert parse_config(text, env={}).providers[0].access_key == "abc$"


def test_passthrough_with_access_key_warns_and_sends_no_key() -> None:
    text = MINIMAL + "  - model: openai/gpt-4o\n    access_key: sk-x\n    passthrough_auth: true\n"
    cfg = parse_config(text, source="c.yaml", env={})
    assert cfg.providers[0].auth_headers == ()
    assert cfg.warnings and "c.yaml: model_providers[0]" in cfg.warnings[0]
    assert "passthrough_auth" in cfg.warnings[0]


# ----------------------------------------------------------------------------- bad configs

BAD_CASES: list[tuple[str, str]] = [
    ("unknown_top_level_key.yaml", "guardrails: unknown top-level key"),
    (
        "unknown_provider_field.yaml",
        "model_providers[0].acess_key: unknown field; did you mean 'access_key'?",
    ),
    ("bad_type.yaml", "model_providers[2].passthrough_auth: Input should be a valid boolean"),
    ("two_defaults.yaml", "model_providers[1].default: more than one default provider"),
    ("missing_model.yaml", "model_providers[0].model: Field required"),
    (
        "unknown_provider_without_base_url.yaml",
        "model_providers[0].base_url: provider 'vllm' (from model 'vllm/llama-3.1-8b') is "
        "not built in; it needs base_url and provider_interface",
    ),
    (
        "alias_unknown_target.yaml",
        "model_aliases.smart.target: 'anthropic/claude-opus-9' is not a configured model",
    ),
    (
        "unset_env.yaml",
        "model_providers[0].access_key: references environment variable "
        "$PLANO_FAST_TEST_UNSET_KEY, which is not set",
    ),
    ("bad_timeout.yaml", "listeners[0].timeout: invalid duration '30 seconds'"),
    ("bad_yaml_syntax.yaml", "YAML syntax error"),
    ("bad_version.yaml", "version: Input should be 'v0.1', 'v0.1.0', '0.1-beta', '0.2.0'"),
    (
        "bad_base_url_scheme.yaml",
        "model_providers[0].base_url: unsupported scheme in 'ftp://models.internal:2121/v1'",
    ),
    ("negative_setting.yaml", "plano_fast.max_body_bytes: Input should be greater than 0"),
    ("both_provider_sections.yaml", "llm_providers: use either model_providers or llm_providers"),
    ("provider_requires_base_url.yaml", "model_providers[0].base_url: provider 'qwen' requires"),
    ("wildcard_default.yaml", "model_providers[0].default: 'openai/*' is a wildcard"),
    ("unknown_setting.yaml", "plano_fast.max_body: unknown field; did you mean 'max_body_bytes'?"),
    ("duplicate_yaml_key.yaml", "found duplicate key 'access_key'"),
    ("bad_port.yaml", "listeners[0].port: Input should be less than or equal to 65535"),
    ("no_provider_prefix.yaml", "model_providers[0].model: 'gpt-4o' has no provider prefix"),
    ("duplicate_model.yaml", "model_providers[1].model: duplicate model 'openai/gpt-4o'"),
    ("reserved_header.yaml", "model_providers[0].headers.Host: 'Host' is managed by the gateway"),
    ("bad_provider_interface.yaml", "model_providers[0].provider_interface: Input should be"),
    (
        "routing_preferences_old_version.yaml",
        "routing_preferences: top-level routing_preferences needs version v0.4.0",
    ),
    ("empty.yaml", "the config is empty"),
]


def test_bad_case_table_covers_every_bad_file() -> None:
    on_disk = {f.name for f in BAD.glob("*.yaml")} - {"many_errors.yaml"}
    assert on_disk == {name for name, _ in BAD_CASES}


@pytest.mark.parametrize(("filename", "expected"), BAD_CASES)
def test_bad_config_is_rejected_with_field_path(filename: str, expected: str) -> None:
    path = BAD / filename
    with pytest.raises(ConfigError) as ei:
        load_config(path, env={})
    err = ei.value
    assert expected in str(err), str(err)
    assert str(err) == "\n".join(err.errors)
    assert all(line.startswith(f"{path}: ") for line in err.errors)


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(BAD / "bad_yaml_syntax.yaml", env={})
    assert "line 4, column 1" in str(ei.value)


def test_all_errors_are_collected() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(BAD / "many_errors.yaml", env={})
    text = str(ei.value)
    for expected in (
        "listeners[0].timeout: invalid duration 'soon'",
        "model_providers[0].default: Input should be a valid boolean",
        "model_providers[1].base_url: provider 'mystery'",
        "model_providers[2].access_key: references environment variable "
        "$PLANO_FAST_TEST_UNSET_KEY",
        "plano_fast.dns_ttl_s: Input should be greater than 0",
    ):
        assert expected in text, text
    assert len(ei.value.errors) == 5


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(BAD / "does_not_exist.yaml", env={})


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("  - model: openai/gpt-4o\n    base_url: https://user:pw@h/v1\n", "credentials in"),
        ("  - model: openai/gpt-4o\n    base_url: https://h/v1?x=1\n", "query string"),
        ("  - model: openai/gpt-4o\n    base_url: http://h:99999\n", "invalid URL"),
        ("  - model: openai/gpt-4o\n    base_url: '//h/v1'\n", "unsupported scheme"),
        ("  - model: openai/gpt-4o\n    headers: {'Bad Name': x}\n", "not a valid HTTP header"),
        ("  - model: openai/gpt-4o\n    headers: {X-A: 1}\n", "headers.X-A: Input should be a"),
        ("  - model: openai/gpt-4o\n    access_key: 'a b'\n", "access_key: contains"),
        ("  - model: openai/gpt-4o\n  - model: openai/gpt-4o\n", "duplicate name"),
        ("  - model: openai/*\n  - model: openai/*\n    name: x\n", "duplicate wildcard"),
        ("  - model: openai/\n", "is not of the form"),
        ("  - model: openai/*\n    routing_preferences: [{name: a, description: b}]\n",
         "wildcards cannot have routing_preferences"),
        ("  - openai/gpt-4o\n", "model_providers[0]: expected a mapping, got str"),
        ("  - model: xiaomi/mimo\n", "provider 'xiaomi' requires base_url"),
    ],
)
def test_more_provider_errors(snippet: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(MINIMAL + snippet, env={})
    assert expected in str(ei.value), str(ei.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: v0.4.0\nmodel_providers: []\n", "at least one model provider is required"),
        ("version: v0.4.0\n", "model_providers: at least one model provider is required"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("listeners: []\nmodel_providers: [{model: openai/x}]\n", "version: Field required"),
        ("version: v0.4.0\nlisteners: 5\nmodel_providers: [{model: openai/x}]\n",
         "listeners: expected a list"),
        ("version: v0.4.0\nlisteners:\n  - {type: agent, name: a}\n"
         "model_providers: [{model: openai/x}]\n", "listeners[0].port: required for agent"),
        ("version: v0.4.0\nlisteners: {egress_traffic: {prt: 1}}\n"
         "model_providers: [{model: openai/x}]\n",
         "listeners.egress_traffic.prt: unknown field"),
        ("version: v0.4.0\nlistener: {port: 1}\nlisteners: []\n"
         "model_providers: [{model: openai/x}]\n", "use either 'listeners' or"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\nmode: both\n",
         "mode: Input should be 'llm' or 'prompt'"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\ntracing: 100\n",
         "tracing: Input should be a valid dictionary"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\nmodel_aliases: [a]\n",
         "model_aliases: expected a mapping"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\n"
         "model_aliases: {a: {target: openai/x, extra: 1}}\n", "model_aliases.a.extra: unknown"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\n"
         "overrides: {upstream_connect_timeout: never}\n",
         "overrides.upstream_connect_timeout: invalid duration"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\n"
         "plano_fast: {database_url: $NOPE}\n", "plano_fast.database_url: references"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\n"
         "plano_fast: {admin_port: '8080'}\n", "plano_fast.admin_port: Input should be a valid"),
        ("version: v0.4.0\nmodel_providers: [{model: openai/x}]\nplano_fast: 3\n",
         "plano_fast: expected a mapping"),
        ("version: v0.4.0\n1: x\nmodel_providers: [{model: openai/x}]\n", "is not a string"),
    ],
)
def test_more_top_level_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, source="t.yaml", env={})
    assert expected in str(ei.value), str(ei.value)


def test_multiple_model_listeners_serve_the_first() -> None:
    text = (
        "version: v0.4.0\nlisteners:\n  - {type: model, name: a, port: 1000}\n"
        "  - {type: model, name: b, port: 2000}\nmodel_providers: [{model: openai/x}]\n"
    )
    cfg = parse_config(text, env={})
    assert cfg.listener.name == "a"
    assert cfg.unimplemented == (
        "<string>: listeners[1]: not implemented by plano_fast: a second model listener; "
        "not served (plano_fast serves listeners[0] 'a' on 0.0.0.0:1000)",
    )


def test_duplicate_bare_model_id_warns() -> None:
    text = MINIMAL + "  - model: openai/llama\n  - model: groq/llama\n"
    cfg = parse_config(text, env={})
    assert any("model_providers[1].model" in w and "first one" in w for w in cfg.warnings)


# ----------------------------------------------------------------------------- provider table


def test_provider_table_is_consistent() -> None:
    for pid, spec in PROVIDERS.items():
        assert spec.id == pid
        if spec.base_url is not None and "<" not in spec.base_url:
            from urllib.parse import urlsplit

            parts = urlsplit(spec.base_url)
            assert parts.scheme in ("http", "https")
            # the default URL's path is the default prefix (or empty: prefix added per path)
            assert parts.path.rstrip("/") in ("", spec.default_prefix.rstrip("/")), pid
        if spec.wire_api == "anthropic":
            assert spec.messages_suffix == "/messages"


def test_provider_aliases() -> None:
    assert canonical_provider_id("google") == "gemini"
    assert canonical_provider_id("together_ai") == "together"
    assert canonical_provider_id("Claude") == "anthropic"
    assert canonical_provider_id("nope") is None


def test_auth_header_styles() -> None:
    assert auth_headers_for("bearer", "k") == ((b"authorization", b"Bearer k"),)
    assert auth_headers_for("anthropic", "k") == (
        (b"x-api-key", b"k"),
        (b"anthropic-version", b"2023-06-01"),
    )
    assert auth_headers_for("goog", "k") == ((b"x-goog-api-key", b"k"),)
    assert auth_headers_for("azure", "k") == ((b"api-key", b"k"),)


@pytest.mark.parametrize(
    ("model", "host", "path"),
    [
        ("openai/m", "api.openai.com", "/v1/chat/completions"),
        ("anthropic/m", "api.anthropic.com", "/v1/chat/completions"),
        ("gemini/m", "generativelanguage.googleapis.com", "/v1beta/openai/chat/completions"),
        ("deepseek/m", "api.deepseek.com", "/v1/chat/completions"),
        ("mistral/m", "api.mistral.ai", "/v1/chat/completions"),
        ("groq/m", "api.groq.com", "/openai/v1/chat/completions"),
        ("together/m", "api.together.xyz", "/v1/chat/completions"),
        ("together_ai/m", "api.together.xyz", "/v1/chat/completions"),
        ("fireworks/m", "api.fireworks.ai", "/inference/v1/chat/completions"),
        ("perplexity/m", "api.perplexity.ai", "/chat/completions"),
        ("cerebras/m", "api.cerebras.ai", "/v1/chat/completions"),
        ("xai/m", "api.x.ai", "/v1/chat/completions"),
        ("openrouter/m", "openrouter.ai", "/api/v1/chat/completions"),
        ("moonshotai/m", "api.moonshot.ai", "/v1/chat/completions"),
        ("zhipu/m", "open.bigmodel.cn", "/api/paas/v4/chat/completions"),
    ],
)
def test_builtin_provider_endpoints(model: str, host: str, path: str) -> None:
    (p,) = parse_config(MINIMAL + f"  - model: {model}\n", env={}).providers
    assert (p.scheme, p.host, p.port, p.tls, p.sni, p.host_header) == (
        "https",
        host,
        443,
        True,
        host,
        host,
    )
    assert p.chat_completions_path == path


def test_firewall_mode_needs_no_model_providers() -> None:
    # What the README's firewall block shows: valid on its own.
    cfg = parse_config(
        "version: v0.4.0\nplano_fast:\n  mode: firewall\n  admin_port: 12002\n  admin_key: $K\n",
        env={"K": "k" * 32},
    )
    assert cfg.providers == () and cfg.settings.mode == "firewall"
    # Managed mode's pipes name providers: there they stay required.
    with pytest.raises(ConfigError) as ei:
        parse_config("version: v0.4.0\nplano_fast:\n  mode: firewall\n  managed: true\n", env={})
    assert "model_providers: at least one model provider is required" in str(ei.value)


def test_allow_missing_env_checks_with_placeholders() -> None:
    text = (
        "version: v0.4.0\nmodel_providers:\n"
        "  - {model: vllm/x, base_url: $URL, provider_interface: openai, access_key: $KEY}\n"
        "  - {model: openai/y, headers: {X-Team: $TEAM}, access_key: sk-set}\n"
    )
    with pytest.raises(ConfigError) as ei:
        parse_config(text, source="t.yaml", env={})
    assert len(ei.value.errors) == 2  # base_url first: that provider stops there
    cfg = parse_config(text, source="t.yaml", env={}, allow_missing_env=True)
    assert [w.split(": ")[1] for w in cfg.warnings] == [
        "model_providers[0].base_url", "model_providers[0].access_key", "model_providers[1].headers.X-Team"
    ]
    assert all(w.endswith("(checked with a placeholder)") for w in cfg.warnings)
    # A set variable is still used; a bad value is still an error.
    assert cfg.providers[1].access_key == "sk-set"
    with pytest.raises(ConfigError):
        parse_config(text.replace("provider_interface: openai", "provider_interface: x"), env={},
                     allow_missing_env=True)


def test_project_scopes_in_config_mode_are_warned_never_silent() -> None:
    """Config mode has no projects: a project rate-limit selector or guardrail override
    could never match, so validation says so (firewall mode takes them without a word)."""
    extra = """\
ratelimits:
  - {model: "*", selector: {project: "*"}, limit: {tokens: 100, unit: minute}}
plano_fast:
  guardrails: {detectors: {email: log}, projects: {p1: {email: block}}}
"""
    text = MINIMAL + "  - model: openai/gpt-4o\n    access_key: sk-x\n" + extra
    warnings = parse_config(text, source="c.yaml", env={}).warnings
    assert any("ratelimits[0].selector.project: never matches" in w for w in warnings)
    assert any("plano_fast.guardrails.projects: never applies" in w for w in warnings)
    firewall = text.replace("plano_fast:\n", "plano_fast:\n  mode: firewall\n")
    assert not [w for w in parse_config(firewall, env={}).warnings if "never" in w]


def test_precomputed_upstream_paths_and_origin() -> None:
    """``ModelProvider.upstream_paths`` / ``origin`` / ``host_line`` (built once per provider)
    give what was formatted per request before: the path of each client endpoint (Azure's
    ``{model}`` filled in per request), the pool key and the upstream Host line (with
    ``accept-encoding: identity``, asked of every provider)."""
    from plano_fast.gateway.endpoints import CHAT_COMPLETIONS, COUNT_TOKENS, MESSAGES, RESPONSES, upstream_path
    from plano_fast.gateway.upstream_request import origin_of

    def reference(p: ModelProvider, endpoint: object, model: str | None) -> bytes | None:
        if endpoint is MESSAGES:
            path = p.messages_path
        elif endpoint is COUNT_TOKENS:
            path = p.messages_path + "/count_tokens" if p.messages_path else None
        elif endpoint is CHAT_COMPLETIONS:
            path = p.chat_path_for(model) if model else p.chat_completions_path
        else:
            path = p.responses_path
        return path.encode() if path else None

    providers = [p for f in sorted(GOOD.glob("*.yaml")) for p in load_config(f, env=ENV).providers]
    providers += parse_config(
        "version: v0.4.0\nmodel_providers:\n"
        "  - {model: azure_openai/*, base_url: 'https://x.openai.azure.com', access_key: k}\n"
        "  - {model: anthropic/claude-sonnet-4-5, access_key: k}\n", env={},
    ).providers  # fmt: skip
    assert any(p.model_in_path for p in providers) and any(not p.messages_path for p in providers)
    assert any(p.messages_path for p in providers) and any(p.tls for p in providers)
    for p in providers:
        for endpoint in (CHAT_COMPLETIONS, MESSAGES, COUNT_TOKENS, RESPONSES):
            for model in (None, "", "gpt-4o", "my deployment/x"):
                assert upstream_path(p, endpoint, model) == reference(p, endpoint, model), (p.name, endpoint.name)
        assert origin_of(p) == ("https" if p.tls else "http", p.host, p.port, None)
        assert origin_of(p, "10.0.0.7") == ("https" if p.tls else "http", p.host, p.port, "10.0.0.7")
        assert p.host_line == b"host: " + p.host_header.encode() + b"\r\naccept-encoding: identity\r\n"
