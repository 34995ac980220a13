"""Loading and validating ``plano_config.yaml`` (Plano / ArchGW format) for plano_fast.

Pure: text (plus an environment mapping) in, a frozen :class:`GatewayConfig` out.  The
schema is Plano's ``config/plano_config_schema.yaml`` across its versions, checked with
pydantic models (``extra="forbid"``, strict types, as Plano's JSON schema is), followed by
the semantic checks of Plano's ``config_generator.py``.  Every problem found is reported,
not just the first, as ``<file>: <field path>: <reason>`` lines in a :class:`ConfigError`.

Accepted shapes
---------------
* ``version``: ``v0.1``, ``v0.1.0``, ``0.1-beta``, ``0.2.0``, ``v0.3.0``, ``v0.4.0``.
* ``listeners``: the list form (``[{type: model|prompt|agent, name, address, port,
  timeout, ...}]``), the legacy object form (``{egress_traffic: {...}, ingress_traffic:
  {...}}``) or the 0.1.0 singular ``listener:`` (that one configured the *prompt* listener;
  the LLM egress listener was implicit, 0.0.0.0:12000).  The gateway serves the first
  ``type: model`` listener (``egress_traffic``); the legacy forms without one get the
  implicit 0.0.0.0:12000, but a list of listeners without one is an error (Plano would
  serve no model listener there).  Listeners that are not served are reported in
  ``GatewayConfig.unimplemented``.
  Lenient extras: a list item without ``type`` is inferred from its name (``ingress*`` ->
  prompt, else model) and may carry the legacy ``message_format``; a missing ``listeners``
  means the default model listener.  ``timeout``: "30s", "500ms", "1m", "1h" or a number of
  seconds; default 300 s.
* ``model_providers`` or the deprecated ``llm_providers`` (same items).  Both present is
  an error, as in Plano.  Required, except in firewall mode without managed mode (it
  routes nothing by model).  Items: ``model`` (required, ``provider/model`` or
  ``provider/*``), ``name``, ``access_key``, ``base_url``, ``provider_interface``,
  ``passthrough_auth``, ``default``, ``http_host``, ``headers``, ``routing_preferences``;
  the older ``provider``, ``endpoint``, ``protocol``, ``usage`` and ``stream`` are
  accepted with a deprecation warning.
* ``model_aliases: {alias: {target: model}}`` (a bare string target is also accepted).
  The target must resolve to a configured model (exact, bare or via a wildcard).
* Plano's other top-level keys are kept in ``raw`` (type-checked only) and reported in
  ``GatewayConfig.unimplemented`` (the list: :mod:`plano_fast.unimplemented`); any other
  key is an error.  ``state_storage_v1_responses`` (an older name of ``state_storage``) is accepted.
* ``plano_fast:`` -- this gateway's own settings (:class:`GatewaySettings`).  Plano itself
  would reject this key; keep it out of configs that must also run on Plano.

Environment: ``$VAR`` / ``${VAR}`` are expanded in ``access_key``, ``base_url``,
``http_host``, ``headers`` values and ``plano_fast.database_url`` / ``sqlite_path`` /
``admin_key``.  A referenced variable that is unset (or empty) is an error naming the
field and variable -- only a warning for the ``access_key`` of a ``passthrough_auth``
provider, which is unused, and, with ``allow_missing_env``, a warning and a placeholder.

Checks taken from Plano: at most one ``default: true``; a wildcard cannot be the default
or carry routing_preferences; duplicate names, duplicate ``provider/model`` entries and
duplicate wildcards are errors; ``azure_openai``, ``ollama``, ``qwen``,
``amazon_bedrock`` and ``plano`` need ``base_url``; a prefix that is not built in needs
``base_url`` and ``provider_interface`` (its ``provider`` is then "custom"); top-level
``routing_preferences`` need ``v0.4.0``.  Where plano_fast is more lenient than Plano: two
providers sharing a bare model id (``openai/llama``, ``groq/llama``) only warn -- a request
for the bare id goes to the first; an alias target may resolve through a wildcard;
``provider_interface`` may be set on a built-in provider (it then picks paths and wire
format, e.g. an OpenAI-speaking proxy for ``anthropic/...`` models).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, TypeVar
from urllib.parse import quote

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from plano_fast import providers as P
from plano_fast import unimplemented as UNIMPLEMENTED
from plano_fast.failover import Backoff, RetryPolicy, StatusRule
from plano_fast.guardrails import GuardrailConfigError, parse_policy
from plano_fast.preference_routing import PreferenceConfig
from plano_fast.preference_routing import parse as parse_preferences
from plano_fast.ratelimit import RateLimitConfigError, parse_limits

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "GatewaySettings",
    "ListenerConfig",
    "ModelProvider",
    "RoutingPreference",
    "SUPPORTED_VERSIONS",
    "load_config",
    "parse_config",
    "parse_duration",
]

SUPPORTED_VERSIONS = ("v0.1", "v0.1.0", "0.1-beta", "0.2.0", "v0.3.0", "v0.4.0")
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_ADDRESS = "0.0.0.0"
DEFAULT_PORTS = {"model": 12000, "prompt": 10000}


# --------------------------------------------------------------------------- public types


class ConfigError(Exception):
    """The config cannot be used.  ``errors`` holds one ``file: path: reason`` line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class RoutingPreference:
    """A ``routing_preferences`` item (kept for preference routing; not used yet)."""

    name: str
    description: str


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """A listener; ``type`` is "model", "prompt" or "agent"."""

    name: str
    address: str
    port: int
    timeout_s: float
    type: str
    max_retries: int | None = None
    router: str | None = None
    #: where it is written ("listeners[1]", "listeners.ingress_traffic", "listener");
    #: "" for the implicit default model listener
    loc: str = ""


@dataclass(frozen=True, slots=True)
class ModelProvider:
    """One configured model provider, with everything the hot path needs precomputed.

    ``provider`` is the table id ("openai", "anthropic", "gemini", ... or "custom" for a
    prefix that is not built in); ``prefix`` is the prefix as written in the config
    ("google", "vllm", ...); ``interface`` the table entry whose paths and auth style are
    used (the ``provider_interface`` if given, else ``provider``).  ``model`` is the id
    sent upstream ("*" for a wildcard).  Secrets are kept out of ``repr``.
    """

    name: str
    provider: str
    model: str
    wire_api: str
    scheme: str
    host: str
    port: int
    tls: bool
    sni: str
    host_header: str
    chat_completions_path: str | None
    messages_path: str | None
    access_key: str | None = field(repr=False)
    passthrough_auth: bool
    auth_headers: tuple[tuple[bytes, bytes], ...] = field(repr=False)
    extra_headers: tuple[tuple[bytes, bytes], ...] = field(repr=False)
    default: bool
    is_wildcard: bool
    routing_preferences: tuple[RoutingPreference, ...] = ()
    prefix: str = ""
    interface: str = ""
    base_url: str = ""
    http_host: str | None = None
    responses_path: str | None = None
    # Headers for requests sent to chat_completions_path.  Equal to auth_headers except for
    # an Anthropic-wire provider, whose OpenAI-compatible endpoint takes a bearer token.
    chat_auth_headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)
    # True when chat_completions_path still contains "{model}" (azure_openai/* wildcard).
    model_in_path: bool = False
    # Gemini's native generateContent API (wire_api "gemini"): the path prefix the
    # "/models/{model}:generateContent" paths hang off, e.g. "/v1beta".
    gemini_base_path: str | None = None
    # Retries and fallbacks (plano_fast.failover); None: only a dead pooled connection is
    # retried, once (or listeners[].max_retries applies).
    retry_policy: RetryPolicy | None = None

    def chat_path_for(self, upstream_model: str) -> str | None:
        """The chat-completions path for ``upstream_model`` (differs only for Azure *)."""
        path = self.chat_completions_path
        if path is None or not self.model_in_path:
            return path
        return path.replace("{model}", quote(upstream_model, safe=""))


def parse_duration(value: object) -> float:
    """Seconds from "30s", "500ms", "1m", "1h", "2.5s", a bare number string or a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as 30s, 500ms or 1m, got {value!r}")
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise ValueError(
                f"invalid duration {value!r} (expected e.g. 30s, 500ms, 1m or a number of seconds)"
            )
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be greater than 0, got {value!r}")
    return seconds


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=0, le=65535)]
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def _plain_path(value: str) -> str:
    segments = value.split("/")
    if (
        len(value) > 1024
        or segments[0] != ""
        or len(segments) < 2
        or any(s in (".", "..") or not _PLAIN_SEGMENT.fullmatch(s) for s in segments[1:])
    ):
        raise ValueError(
            "must be an exact path: '/'-separated segments of letters, digits and '._~-', "
            "none of them '.' or '..' (no percent-encoding, query or trailing slash)"
        )
    return value


#: An exact origin-form path (firewall_unbilled_paths).
PlainPath = Annotated[str, AfterValidator(_plain_path)]


class GatewaySettings(BaseModel):
    """The ``plano_fast:`` section: this gateway's own knobs (not part of Plano's schema).

    Every field is optional; numbers must be positive.  ``upstream_connect_timeout_s``
    falls back to Plano's ``overrides.upstream_connect_timeout`` when not set here.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_body_bytes: PosInt = 32 * 1024 * 1024  # largest request body accepted
    max_header_bytes: PosInt = 32 * 1024  # largest request head (request line + headers)
    request_head_timeout_s: PosFloat = 10.0  # time allowed to receive a request head
    keepalive_timeout_s: PosFloat = 60.0  # idle client connection lifetime
    drain_timeout_s: PosFloat = 30.0  # grace period for in-flight requests at shutdown
    upstream_connect_timeout_s: PosFloat = 5.0  # TCP + TLS connect to a provider
    upstream_idle_timeout_s: PosFloat = 60.0  # how long an idle pooled connection is kept
    upstream_pool_max_idle_per_origin: PosInt = 64  # idle connections kept per origin
    dns_ttl_s: PosFloat = 60.0  # how long a resolved address is reused
    sqlite_path: NonEmptyStr = "plano_fast.db"  # usage store when database_url is unset
    database_url: str | None = Field(default=None, repr=False)  # PostgreSQL usage store
    usage_flush_interval_s: PosFloat = 10.0  # usage batch flush period
    usage_batch_size: PosInt = 1000  # rows per bulk write
    usage_max_pending_events: PosInt = 100_000  # in memory while the store is down; then journal
    usage_journal_path: NonEmptyStr = "plano_fast_usage.journal"  # spill file (one per process)
    # Write-ahead log of usage events (<usage_journal_path>.<pid>.<n>.wal): a SIGKILL loses
    # at most the events of the last sync window.
    usage_wal: bool = True
    # A client that hangs up mid-response: the provider's answer is still read (not
    # relayed) for up to this long / this many bytes, so its own usage is billed.
    client_gone_drain_s: PosFloat = 60.0
    client_gone_drain_bytes: PosInt = 16 * 1024 * 1024
    usage_wal_sync_interval_s: PosFloat = 0.1
    price_interval_s: PosFloat = 10.0  # PriceCalculator period (rows priced late)
    # Resold models: provider id (as in usage rows: "together", "groq", "custom" for a
    # custom base_url...) -> the bundled table's provider whose prices its models take when
    # its own table has no entry for them (see plano_fast.pricing, matching step 5).
    price_as: dict[NonEmptyStr, NonEmptyStr] = Field(default_factory=dict)
    budget_check_interval_s: PosFloat = 10.0  # BudgetChecker period (soft-limit delay)
    admin_port: Port | None = None  # admin API port; None disables the admin API
    admin_address: NonEmptyStr = "127.0.0.1"  # admin API bind address
    # Admin API key ($ENV expanded); PLANO_FAST_ADMIN_KEY in the environment also works.
    admin_key: str | None = Field(default=None, repr=False)
    # "config": route by model (Plano); "firewall": clients use their own registered keys.
    mode: Literal["config", "firewall"] = "config"
    key_registry_reload_s: PosFloat = 60.0  # firewall key registry refresh from the store
    # Data-plane access log: one JSON line per request ("stdout" or a file path; off by
    # default).  Never a credential or a body.
    access_log: NonEmptyStr | None = None
    # A Server-Timing response header with the gateway's and the upstream's share (off:
    # it tells clients how the gateway is deployed).
    server_timing: bool = False
    # Redis for Plano's ratelimits shared by every worker and instance (redis://host:port/db)
    redis_url: str | None = Field(default=None, repr=False)
    # Rate-limit backend unreachable: refuse (503) or admit unlimited.
    ratelimit_on_backend_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    # The DLP floor: PII/secret detectors and their actions (plano_fast.guardrails).
    guardrails: dict[str, Any] | None = None
    # Firewall mode forwards only the endpoints it meters; paths listed here (exact, any
    # method) are forwarded too and recorded with status "unbilled" (never priced at 0).
    firewall_unbilled_paths: list[PlainPath] = []
    # Managed mode: xproxy_ tokens with server-side provider keys (needs
    # PLANO_FAST_MASTER_KEY in the environment).  Works beside config or firewall mode.
    managed: bool = False
    managed_reload_s: PosFloat = 5.0  # token/pipe/limit cache refresh (revocation bound)
    managed_max_output_tokens: PosInt = 4096  # output ceiling when a request sets none
    managed_reservation_ttl_s: PosFloat = 600.0  # a hard-budget reservation's expiry
    # Heartbeat + release of expired reservations and of those of instances whose heartbeat
    # is 3 intervals old (killed); instances sharing a database should use the same value.
    reservation_sweep_interval_s: PosFloat = 10.0


@dataclass(frozen=True)
class GatewayConfig:
    """A loaded, validated config.

    ``unimplemented`` has one ``file: field path: not implemented ...`` line per section,
    field or listener the config uses that this version does not implement (the list is
    :mod:`plano_fast.unimplemented`); ``plano-fast validate|serve --strict`` refuses a
    config with any.
    """

    version: str
    listener: ListenerConfig
    listeners: tuple[ListenerConfig, ...]
    providers: tuple[ModelProvider, ...]
    model_aliases: dict[str, str]
    settings: GatewaySettings
    warnings: tuple[str, ...]
    raw: dict[str, Any]
    unimplemented: tuple[str, ...] = ()
    #: preference routing (plano_fast.preference_routing); None when not configured
    preference_routing: PreferenceConfig | None = None


@dataclass(frozen=True)
class _RoutingParts:
    providers: tuple[ModelProvider, ...]
    model_aliases: Mapping[str, str]


def _router_for(provs: list[ModelProvider], aliases: dict[str, str]) -> Any:
    """A plano_fast.routing.Router over the loaded providers (names in routing sections
    resolve exactly as requests do); None when the aliases do not resolve."""
    from plano_fast.routing import Router  # routing imports this module

    try:
        return Router(_RoutingParts(tuple(provs), aliases))
    except ValueError:
        return None


# --------------------------------------------------------------------------- input schema


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _RoutingPreferenceIn(_In):
    name: str
    description: str


class _BackoffIn(_In):
    apply_to: Literal["all_retries", "same_model"] = "all_retries"
    base_ms: Annotated[int, Field(ge=0, le=600_000)] = 100
    max_ms: Annotated[int, Field(ge=0, le=600_000)] = 5000
    jitter: bool = True


class _StatusRuleIn(_In):
    codes: Annotated[list[Annotated[int, Field(ge=400, le=599)]], Field(min_length=1)]
    strategy: Literal["same_model", "same_provider", "different_provider"] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None


class _RetryPolicyIn(_In):
    """Plano's proposed per-provider retry_policy (katanemo/plano PR #926)."""

    fallback_models: list[str] = []
    default_strategy: Literal["same_model", "same_provider", "different_provider"] = "different_provider"
    default_max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    max_retry_duration_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 30_000
    on_status_codes: list[_StatusRuleIn] = []
    backoff: _BackoffIn = _BackoffIn()


def _retry_policy(pin: _RetryPolicyIn) -> RetryPolicy:
    return RetryPolicy(
        fallback_models=tuple(m.strip() for m in pin.fallback_models),
        default_strategy=pin.default_strategy,
        default_max_attempts=pin.default_max_attempts,
        max_retry_duration_ms=pin.max_retry_duration_ms,
        on_status_codes=tuple(
            StatusRule(
                frozenset(r.codes),
                r.strategy or pin.default_strategy,
                r.max_attempts or pin.default_max_attempts,
            )
            for r in pin.on_status_codes
        ),
        backoff=Backoff(pin.backoff.base_ms, pin.backoff.max_ms, pin.backoff.jitter, pin.backoff.apply_to),
    )


class _ProviderIn(_In):
    model: str
    name: str | None = None
    access_key: str | None = None
    default: bool = False
    base_url: str | None = None
    passthrough_auth: bool = False
    http_host: str | None = None
    provider_interface: Literal[P.PROVIDER_INTERFACES] | None = None  # type: ignore[valid-type]
    headers: dict[str, str] | None = None
    routing_preferences: list[_RoutingPreferenceIn] | None = None
    retry_policy: _RetryPolicyIn | None = None
    # Older releases (0.1.0 - 0.3.0); accepted with a deprecation warning.
    provider: str | None = None
    endpoint: str | None = None
    protocol: Literal["http", "https"] | None = None
    usage: str | None = None
    stream: bool | None = None


class _AgentRefIn(_In):
    id: str
    description: str
    default: bool | None = None
    input_filters: list[str] | None = None


class _ListenerItemIn(_In):
    name: str
    type: Literal["model", "prompt", "agent"] | None = None
    address: str | None = None
    port: Port | None = None
    timeout: Duration | None = None
    router: Literal["plano_orchestrator_v1"] | None = None
    max_retries: Annotated[int, Field(ge=0)] | None = None
    agents: list[_AgentRefIn] | None = None
    input_filters: list[str] | None = None
    output_filters: list[str] | None = None
    message_format: Literal["openai"] | None = None  # legacy, tolerated


class _LegacyListenerIn(_In):
    address: str | None = None
    port: Port | None = None
    message_format: Literal["openai"] | None = None
    timeout: Duration | None = None


class _LegacyListenersIn(_In):
    egress_traffic: _LegacyListenerIn | None = None
    ingress_traffic: _LegacyListenerIn | None = None


class _SingularListenerIn(_In):  # 0.1.0 `listener:` (the prompt/ingress listener)
    address: str | None = None
    port: Port | None = None
    message_format: str | None = None
    connect_timeout: Duration | None = None
    timeout: Duration | None = None


class _AliasIn(_In):
    target: str


class _TopIn(_In):
    version: Literal[SUPPORTED_VERSIONS]  # type: ignore[valid-type]
    listeners: Any = None
    listener: Any = None
    model_providers: Any = None
    llm_providers: Any = None
    model_aliases: Any = None
    plano_fast: Any = None
    # Plano sections plano_fast does not use yet: type-checked, kept in `raw`.
    agents: list[Any] | None = None
    filters: list[Any] | None = None
    endpoints: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    prompt_caching: dict[str, Any] | None = None
    system_prompt: str | None = None
    prompt_targets: list[Any] | None = None
    ratelimits: list[Any] | None = None
    tracing: dict[str, Any] | None = None
    mode: Literal["llm", "prompt"] | None = None
    routing: dict[str, Any] | None = None
    state_storage: dict[str, Any] | None = None
    state_storage_v1_responses: dict[str, Any] | None = None
    prompt_guards: dict[str, Any] | None = None
    routing_preferences: list[Any] | None = None
    model_metrics_sources: list[Any] | None = None


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    allow_missing_env: bool = False,
) -> GatewayConfig:
    """Read and validate a config file; ``env`` (default ``os.environ``) expands ``$VAR``.

    ``allow_missing_env``: an unset variable is replaced by a placeholder and reported as a
    warning instead of an error, so a config can be checked away from its secrets (never
    for serving: the placeholders would be sent).
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read config: {exc}"]) from None
    return parse_config(text, source=source, env=env, allow_missing_env=allow_missing_env)


def parse_config(
    text: str,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    *,
    allow_missing_env: bool = False,
) -> GatewayConfig:
    """Validate config text; raises :class:`ConfigError` listing every problem found."""
    b = _Builder(source, os.environ if env is None else env, allow_missing_env)
    return b.build(text)


Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)


def _fmt_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


class _DupKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _DupKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with `<<:` may be overridden; only explicit ones count
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if dup:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_DupKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


class _Builder:
    def __init__(self, source: str, env: Mapping[str, str], allow_missing_env: bool = False) -> None:
        self.source = source
        self.env = env
        self.allow_missing_env = allow_missing_env
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.unimplemented: list[str] = []

    # -- reporting

    def line(self, loc: Loc, msg: str) -> str:
        where = _fmt_loc(loc)
        return f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}"

    def err(self, loc: Loc, msg: str) -> None:
        self.errors.append(self.line(loc, msg))

    def warn(self, loc: Loc, msg: str) -> None:
        self.warnings.append(self.line(loc, msg))

    def not_implemented(self, loc: Loc | str, msg: str) -> None:
        where = loc if isinstance(loc, str) else _fmt_loc(loc)
        self.unimplemented.append(f"{self.source}: {where}: not implemented by plano_fast: {msg}")

    def validate(self, cls: type[_M], data: Any, loc: Loc) -> _M | None:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            for e in exc.errors(include_url=False):
                sub: Loc = tuple(e["loc"])
                kind = e["type"]
                if kind == "extra_forbidden":
                    hint = ""
                    if len(sub) == 1 and isinstance(sub[0], str):
                        hint = _suggest(sub[0], list(cls.model_fields))
                    if cls is _TopIn:
                        msg = (
                            "unknown top-level key (not a Plano config key; plano_fast's own "
                            "settings go under 'plano_fast:')" + hint
                        )
                    else:
                        msg = "unknown field" + hint
                elif kind == "value_error":
                    msg = str(e.get("ctx", {}).get("error", e["msg"]))
                elif kind == "literal_error":
                    msg = f"{e['msg']} (got {e['input']!r})"
                elif kind == "model_type" or kind == "model_attributes_type":
                    msg = f"expected a mapping, got {type(e['input']).__name__}"
                else:
                    msg = e["msg"]
                self.err(loc + sub, msg)
            return None

    def expand(self, value: str | None, loc: Loc, required: bool = True) -> str | None:
        """Expand $VAR / ${VAR}; None if a variable is unset or empty.

        That is an error, or only a warning when the value is not ``required``.
        """
        if value is None or "$" not in value:
            return value
        bad: list[str] = []

        def sub(m: re.Match[str]) -> str:
            var = m.group(1) or m.group(2)
            got = self.env.get(var)
            if not got:
                bad.append(var)
                return ""
            return got

        out = _ENV_RE.sub(sub, value)
        for var in bad:
            state = "is empty" if var in self.env else "is not set"
            msg = f"references environment variable ${var}, which {state}"
            if not required:
                self.warn(loc, msg + " (unused: passthrough_auth is true)")
            elif self.allow_missing_env:
                self.warn(loc, msg + " (checked with a placeholder)")
            else:
                self.err(loc, msg)
        if bad and required and self.allow_missing_env:
            return _ENV_RE.sub(lambda m: self.env.get(m.group(1) or m.group(2)) or
                               _placeholder(value, loc), value)
        return None if bad else out

    # -- the whole file

    def build(self, text: str) -> GatewayConfig:
        try:
            data = yaml.load(text, Loader=_DupKeyLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
            raise ConfigError([f"{self.source}: {where}YAML syntax error: {what}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{self.source}: YAML error: {exc}"]) from None
        if data is None:
            raise ConfigError([f"{self.source}: the config is empty"])
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{self.source}: expected a mapping at the top level, got {type(data).__name__}"]
            )
        for key in data:
            if not isinstance(key, str):
                self.err((), f"top-level key {key!r} is not a string")
        if self.errors:
            raise ConfigError(self.errors)

        top = self.validate(_TopIn, data, ())
        version = top.version if top is not None else str(data.get("version", ""))

        listeners = self.build_listeners(data)
        settings = self.build_settings(data.get("plano_fast"), data.get("overrides"))
        # Firewall mode forwards each registered key to its registered upstream and routes
        # nothing by model, so (without managed mode, whose pipes name providers) it needs
        # no model_providers.
        firewall_only = settings is not None and settings.mode == "firewall" and not settings.managed
        provs = self.build_providers(data, required=not firewall_only)
        aliases = self.build_aliases(data.get("model_aliases"), provs)
        self.check_fallbacks(provs)
        try:
            parse_limits(data.get("ratelimits"))
        except RateLimitConfigError as exc:
            self.errors.append(f"{self.source}: {exc}")
        if settings is not None:
            try:
                parse_policy(settings.guardrails)
            except GuardrailConfigError as exc:
                self.errors.append(f"{self.source}: {exc}")

        if (
            data.get("routing_preferences") is not None
            and version in SUPPORTED_VERSIONS
            and version != "v0.4.0"
        ):
            self.err(
                ("routing_preferences",), "top-level routing_preferences needs version v0.4.0"
            )

        preference = None
        if provs is not None:
            preference, perrs, pwarns = parse_preferences(data, tuple(provs), _router_for(provs, aliases))
            for loc, msg in perrs:
                self.err(loc, msg)
            for loc, msg in pwarns:
                self.warn(loc, msg)

        if self.errors or top is None or provs is None or settings is None or listeners is None:
            raise ConfigError(self.errors or [f"{self.source}: invalid config"])
        model_listeners = [ls for ls in listeners if ls.type == "model"]
        self.report_unimplemented(data, listeners, model_listeners[0])
        return GatewayConfig(
            version=version,
            listener=model_listeners[0],
            listeners=tuple(listeners),
            providers=tuple(provs),
            model_aliases=aliases,
            settings=settings,
            warnings=tuple(self.warnings),
            raw=data,
            unimplemented=tuple(self.unimplemented),
            preference_routing=preference,
        )

    def report_unimplemented(
        self, data: dict[str, Any], listeners: list[ListenerConfig], served: ListenerConfig
    ) -> None:
        """One line per listener and field of :mod:`plano_fast.unimplemented` in use."""
        where = f"{served.loc or 'the default listener'} '{served.name}' on {served.address}:{served.port}"
        skipped: list[str] = []  # listeners reported whole: their fields are not repeated
        for ls in listeners:
            if ls.type in UNIMPLEMENTED.LISTENER_TYPES:
                reason = UNIMPLEMENTED.LISTENER_TYPES[ls.type]
            elif ls is not served:
                reason = "a second model listener"
            else:
                continue
            skipped.append(ls.loc)
            self.not_implemented(ls.loc, f"{reason}; not served (plano_fast serves {where})")
        for loc, reason in UNIMPLEMENTED.unimplemented_fields(data):
            path = _fmt_loc(loc)
            if any(path.startswith(s + ".") or path.startswith(s + "[") for s in skipped):
                continue
            self.not_implemented(path, reason + " (ignored)")

    # -- listeners

    def build_listeners(self, data: dict[str, Any]) -> list[ListenerConfig] | None:
        raw, single = data.get("listeners"), data.get("listener")
        n_err = len(self.errors)
        out: list[ListenerConfig] = []
        if raw is not None and single is not None:
            self.err(("listener",), "use either 'listeners' or the legacy 'listener', not both")
            return None
        if single is not None:
            s = self.validate(_SingularListenerIn, single, ("listener",))
            if s is not None:
                out.append(
                    ListenerConfig(
                        "ingress_traffic",
                        s.address or DEFAULT_ADDRESS,
                        DEFAULT_PORTS["prompt"] if s.port is None else s.port,
                        s.timeout or DEFAULT_TIMEOUT_S,
                        "prompt",
                        loc="listener",
                    )
                )
        elif isinstance(raw, list):
            for i, item in enumerate(raw):
                li = self.validate(_ListenerItemIn, item, ("listeners", i))
                if li is None:
                    continue
                kind: str
                if li.type is not None:
                    kind = li.type
                else:
                    kind = "prompt" if li.name.startswith("ingress") else "model"
                    self.warn(("listeners", i, "type"), f"missing; assuming '{kind}'")
                port = li.port if li.port is not None else DEFAULT_PORTS.get(kind)
                if port is None:
                    self.err(("listeners", i, "port"), f"required for {kind} listeners")
                    continue
                out.append(
                    ListenerConfig(
                        li.name,
                        li.address or DEFAULT_ADDRESS,
                        port,
                        li.timeout or DEFAULT_TIMEOUT_S,
                        kind,
                        li.max_retries,
                        li.router,
                        loc=_fmt_loc(("listeners", i)),
                    )
                )
        elif isinstance(raw, dict):
            lg = self.validate(_LegacyListenersIn, raw, ("listeners",))
            if lg is not None:
                for name, kind, part in (
                    ("egress_traffic", "model", lg.egress_traffic),
                    ("ingress_traffic", "prompt", lg.ingress_traffic),
                ):
                    if part is None:
                        continue
                    port = DEFAULT_PORTS[kind] if part.port is None else part.port
                    out.append(
                        ListenerConfig(
                            name,
                            part.address or DEFAULT_ADDRESS,
                            port,
                            part.timeout or DEFAULT_TIMEOUT_S,
                            kind,
                            loc=_fmt_loc(("listeners", name)),
                        )
                    )
        elif raw is not None:
            self.err(
                ("listeners",),
                "expected a list of listeners or the legacy {egress_traffic, ingress_traffic} "
                f"mapping, got {type(raw).__name__}",
            )
        if len(self.errors) != n_err:
            return None
        if isinstance(raw, list) and out and not any(ls.type == "model" for ls in out):
            # Plano serves no model listener here; starting the implicit 0.0.0.0:12000 one
            # would expose the providers' keys on a port the config never asked for.
            found = "; ".join(f"{ls.loc} '{ls.name}' ({ls.type}, port {ls.port})" for ls in out)
            self.err(
                ("listeners",),
                f"no type: model listener, the only kind plano_fast serves ({found} "
                "not implemented); add one, e.g. {type: model, name: model_listener, "
                "address: 127.0.0.1, port: 12000}",
            )
            return None
        if not any(ls.type == "model" for ls in out):
            out.insert(
                0,
                ListenerConfig(
                    "egress_traffic",
                    DEFAULT_ADDRESS,
                    DEFAULT_PORTS["model"],
                    DEFAULT_TIMEOUT_S,
                    "model",
                ),
            )
        return out

    # -- plano_fast settings

    def build_settings(self, raw: Any, overrides: Any) -> GatewaySettings | None:
        data = {} if raw is None else raw
        if isinstance(data, dict):
            data = dict(data)
            for key in ("database_url", "sqlite_path", "admin_key"):
                if isinstance(data.get(key), str):
                    data[key] = self.expand(data[key], ("plano_fast", key))
            if "sqlite_path" in data and data["sqlite_path"] is None:
                del data["sqlite_path"]  # unset env var: already reported
        s = self.validate(GatewaySettings, data, ("plano_fast",))
        if s is None:
            return None
        # Plano's overrides.upstream_connect_timeout applies unless plano_fast sets its own.
        if isinstance(overrides, dict) and "upstream_connect_timeout" in overrides:
            if "upstream_connect_timeout_s" not in s.model_fields_set:
                try:
                    t = parse_duration(overrides["upstream_connect_timeout"])
                except ValueError as exc:
                    self.err(("overrides", "upstream_connect_timeout"), str(exc))
                    return None
                s = s.model_copy(update={"upstream_connect_timeout_s": t})
        return s

    # -- providers

    def build_providers(self, data: dict[str, Any], required: bool = True) -> list[ModelProvider] | None:
        section = "model_providers"
        raw = data.get("model_providers")
        if data.get("llm_providers") is not None:
            if raw is not None:
                self.err(
                    ("llm_providers",),
                    "use either model_providers or llm_providers (deprecated), not both",
                )
                return None
            section, raw = "llm_providers", data["llm_providers"]
        if raw is None and not required:
            return []
        if raw is None:
            self.err(
                ("model_providers",),
                "at least one model provider is required (only plano_fast.mode: firewall "
                "without managed mode routes nothing by model)",
            )
            return None
        if not isinstance(raw, list):
            self.err((section,), f"expected a list, got {type(raw).__name__}")
            return None
        if not raw:
            self.err((section,), "at least one model provider is required")
            return None
        n_err = len(self.errors)
        out: list[ModelProvider] = []
        for i, item in enumerate(raw):
            pin = self.validate(_ProviderIn, item, (section, i))
            if pin is not None:
                mp = self.build_provider(pin, (section, i))
                if mp is not None:
                    out.append(mp)
        if len(self.errors) != n_err:
            return None
        self.check_provider_set(out, section)
        return out if len(self.errors) == n_err else None

    def build_provider(self, pin: _ProviderIn, loc: Loc) -> ModelProvider | None:
        n_err = len(self.errors)
        model_str = pin.model.strip()
        if not model_str:
            self.err(loc + ("model",), "must not be empty")
            return None
        for legacy in ("provider", "endpoint", "protocol", "usage", "stream"):
            if getattr(pin, legacy) is not None:
                self.warn(loc + (legacy,), "deprecated field (accepted for older configs)")

        # Which provider, and the model id sent upstream.
        if pin.provider is not None:  # 0.1.0: `provider: openai` + bare `model: gpt-4o`
            prefix = pin.provider.strip()
            model_id = model_str
            if model_id.startswith(prefix + "/"):
                model_id = model_id[len(prefix) + 1 :]
        elif "/" in model_str:
            prefix, model_id = model_str.split("/", 1)
        elif pin.provider_interface is not None:  # 0.2.0: provider_interface + bare model
            prefix, model_id = pin.provider_interface, model_str
        else:
            self.err(
                loc + ("model",),
                f"'{model_str}' has no provider prefix; write it as <provider>/<model> "
                f"(e.g. openai/{model_str}) or set provider_interface",
            )
            return None
        prefix = prefix.strip()
        if not prefix or not model_id:
            self.err(loc + ("model",), f"'{model_str}' is not of the form <provider>/<model>")
            return None
        is_wildcard = model_id == "*"
        known = P.canonical_provider_id(prefix)
        iface = P.canonical_provider_id(pin.provider_interface) if pin.provider_interface else None

        base_url = self.expand(pin.base_url, loc + ("base_url",))
        if pin.endpoint is not None:
            if pin.base_url is not None:
                self.err(loc + ("endpoint",), "set either base_url or the legacy endpoint")
                return None
            ep = pin.endpoint.strip()
            ep_scheme = pin.protocol or ("https" if ep.endswith(":443") else "http")
            base_url = ep if "://" in ep else f"{ep_scheme}://{ep}"
        if pin.base_url is not None and base_url is None:
            return None  # env error already reported

        if known is None:
            missing = "base_url" if base_url is None else "provider_interface"
            if base_url is None or iface is None:
                self.err(
                    loc + (missing,),
                    f"provider '{prefix}' (from model '{model_str}') is not built in; "
                    "it needs base_url and provider_interface",
                )
                return None
            provider = "custom"
        else:
            provider = known
            spec_own = P.PROVIDERS[known]
            if base_url is None:
                if spec_own.requires_base_url or spec_own.base_url is None:
                    hint = f" (e.g. {spec_own.base_url})" if spec_own.base_url else ""
                    self.err(loc + ("base_url",), f"provider '{known}' requires base_url{hint}")
                    return None
                base_url = spec_own.base_url
        assert base_url is not None
        spec = P.PROVIDERS[iface or provider]

        try:
            origin = P.parse_base_url(base_url)
        except ValueError as exc:
            self.err(loc + ("base_url",), str(exc))
            return None
        paths = P.upstream_paths(spec, origin.path, model_id, is_wildcard)
        wire_api = spec.wire_api
        auth_style = spec.auth_style
        gemini_base: str | None = None
        if spec.id == "gemini" and origin.path.strip("/") and not origin.path.rstrip("/").endswith(
            "/openai"
        ):
            # A base_url such as https://generativelanguage.googleapis.com/v1beta (not its
            # /openai compatibility layer) selects Gemini's native API: requests are then
            # converted to generateContent (plano_fast extension; Plano uses the compat API).
            wire_api, auth_style = "gemini", P.AUTH_GOOG
            gemini_base = origin.path.rstrip("/")
            paths = P.Paths(None, None, None, False)
        if spec.wire_api in UNIMPLEMENTED.WIRE_APIS:
            self.not_implemented(loc, UNIMPLEMENTED.WIRE_APIS[spec.wire_api])

        # Credentials.
        # With passthrough_auth the key is never sent, so an unset $VAR only warns.
        access_key = self.expand(
            pin.access_key, loc + ("access_key",), required=not pin.passthrough_auth
        ) or None
        if access_key is not None and not _KEY_RE.fullmatch(access_key):
            self.err(loc + ("access_key",), "contains characters not allowed in an HTTP header")
        name = (pin.name or model_str).strip()
        if pin.passthrough_auth and pin.access_key is not None:
            self.warn(
                loc,
                f"provider '{name}' has both passthrough_auth: true and access_key; the "
                "access_key is ignored and the client's credentials are forwarded",
            )
        auth: tuple[tuple[bytes, bytes], ...] = ()
        chat_auth: tuple[tuple[bytes, bytes], ...] = ()
        if access_key and not pin.passthrough_auth and len(self.errors) == n_err:
            auth = P.auth_headers_for(auth_style, access_key)
            chat_auth = P.auth_headers_for(P.AUTH_BEARER, access_key) if (
                spec.wire_api == P.WIRE_ANTHROPIC
            ) else auth

        extra = self.build_headers(pin.headers, loc + ("headers",))

        http_host = pin.http_host.strip() if pin.http_host is not None else None
        if http_host is not None:
            http_host = self.expand(http_host, loc + ("http_host",))
            if http_host is not None and not _HOST_RE.fullmatch(http_host):
                self.err(loc + ("http_host",), f"not a valid Host header value: {http_host!r}")
        host_header = http_host or origin.host_header

        prefs = tuple(
            RoutingPreference(r.name, r.description) for r in pin.routing_preferences or ()
        )
        if not prefs and pin.usage:
            prefs = (RoutingPreference(name, pin.usage),)
        if is_wildcard and pin.default:
            self.err(loc + ("default",), f"'{model_str}' is a wildcard and cannot be the default")
        if is_wildcard and pin.routing_preferences:
            self.err(
                loc + ("routing_preferences",),
                f"'{model_str}' is a wildcard; wildcards cannot have routing_preferences",
            )
        if len(self.errors) != n_err:
            return None
        return ModelProvider(
            name=name,
            provider=provider,
            model=model_id,
            wire_api=wire_api,
            scheme=origin.scheme,
            host=origin.host,
            port=origin.port,
            tls=origin.tls,
            sni=origin.host,
            host_header=host_header,
            chat_completions_path=paths.chat_completions,
            messages_path=paths.messages,
            access_key=access_key,
            passthrough_auth=pin.passthrough_auth,
            auth_headers=auth,
            extra_headers=extra,
            default=pin.default,
            is_wildcard=is_wildcard,
            routing_preferences=prefs,
            prefix=prefix,
            interface=spec.id,
            base_url=base_url,
            http_host=http_host,
            responses_path=paths.responses,
            chat_auth_headers=chat_auth,
            model_in_path=paths.model_in_path,
            gemini_base_path=gemini_base,
            retry_policy=_retry_policy(pin.retry_policy) if pin.retry_policy is not None else None,
        )

    def build_headers(
        self, headers: dict[str, str] | None, loc: Loc
    ) -> tuple[tuple[bytes, bytes], ...]:
        out: list[tuple[bytes, bytes]] = []
        for key, value in (headers or {}).items():
            hl = loc + (key,)
            if not _TOKEN_RE.fullmatch(key):
                self.err(hl, "not a valid HTTP header name")
                continue
            if key.lower() in _RESERVED_HEADERS:
                self.err(hl, f"'{key}' is managed by the gateway and cannot be set here"
                         + (" (use http_host)" if key.lower() == "host" else ""))
                continue
            v = self.expand(value, hl)
            if v is None:
                continue
            if not _HEADER_VALUE_RE.fullmatch(v):
                self.err(hl, "value contains characters not allowed in an HTTP header")
                continue
            out.append((key.lower().encode("ascii"), v.encode("latin-1")))
        return tuple(out)

    def check_provider_set(self, provs: list[ModelProvider], section: str) -> None:
        names: dict[str, int] = {}
        models: dict[str, int] = {}
        wild: dict[str, int] = {}
        bare: dict[str, int] = {}
        default_at: int | None = None
        for i, p in enumerate(provs):
            if p.name in names:
                also = f"{section}[{names[p.name]}]"
                self.err((section, i, "name"), f"duplicate name '{p.name}' (also {also})")
            else:
                names[p.name] = i
            owner = p.prefix.lower() if p.provider == "custom" else p.provider
            full = f"{owner}/{p.model}"
            if p.is_wildcard:
                if owner in wild:
                    also = f"{section}[{wild[owner]}]"
                    self.err((section, i, "model"), f"duplicate wildcard '{full}' (also {also})")
                else:
                    wild[owner] = i
            elif full in models:
                also = f"{section}[{models[full]}]"
                self.err((section, i, "model"), f"duplicate model '{full}' (also {also})")
            else:
                models[full] = i
                if p.model in bare:
                    self.warn(
                        (section, i, "model"),
                        f"model id '{p.model}' is also configured by {section}[{bare[p.model]}]; "
                        f"a request for the bare name '{p.model}' goes to the first one",
                    )
                else:
                    bare[p.model] = i
            if p.default:
                if default_at is not None:
                    self.err(
                        (section, i, "default"),
                        f"more than one default provider (also {section}[{default_at}]); "
                        "at most one may be default",
                    )
                else:
                    default_at = i

    # -- aliases

    def check_fallbacks(self, provs: list[ModelProvider] | None) -> None:
        """A retry_policy's fallback_models must be configured models: failover never
        reaches a model the operator did not list."""
        if provs is None:
            return
        from plano_fast.routing import ModelIndex  # routing imports this module

        index = ModelIndex(provs)
        for i, p in enumerate(provs):
            for j, fallback in enumerate(p.retry_policy.fallback_models if p.retry_policy else ()):
                if index.lookup(fallback) is None:
                    self.err(
                        ("model_providers", i, "retry_policy", "fallback_models", j),
                        f"'{fallback}' is not a configured model (a fallback must be one of "
                        f"the configured models: {', '.join(index.names())})",
                    )

    def build_aliases(self, raw: Any, provs: list[ModelProvider] | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if raw is None:
            return out
        if not isinstance(raw, dict):
            self.err(
                ("model_aliases",),
                f"expected a mapping of alias -> {{target: model}}, got {type(raw).__name__}",
            )
            return out
        for alias, spec in raw.items():
            loc: Loc = ("model_aliases", str(alias))
            if not isinstance(alias, str) or not alias:
                self.err(loc, "alias names must be non-empty strings")
                continue
            if isinstance(spec, str):
                target = spec
            else:
                a = self.validate(_AliasIn, spec, loc)
                if a is None:
                    continue
                target = a.target
            out[alias] = target.strip()
        if provs is None:
            return out  # provider errors already reported; targets cannot be checked
        from plano_fast.routing import ModelIndex  # routing imports this module

        index = ModelIndex(provs)
        for alias, target in out.items():
            if index.lookup(target) is None:
                self.err(
                    ("model_aliases", alias, "target"),
                    f"'{target}' is not a configured model "
                    f"(configured: {', '.join(index.names())})",
                )
            elif index.lookup(alias) is not None:
                self.warn(
                    ("model_aliases", alias), "shadowed by a configured model of the same name"
                )
        return out


_ENV_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEY_RE = re.compile(r"[\x21-\x7e]*")
_HEADER_VALUE_RE = re.compile(r"[\x20-\x7e\x80-\xff\t]*")
_HOST_RE = re.compile(r"[A-Za-z0-9.\-_\[\]:]+")
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
    }
)


def _placeholder(value: str, loc: Loc) -> str:
    """What an unset ``$VAR`` stands for under ``allow_missing_env``: a value every check
    of that field accepts (a URL where the variable is the whole ``base_url``)."""
    if loc and loc[-1] == "base_url" and _ENV_RE.fullmatch(value.strip()):
        return "http://env-placeholder.invalid"
    # Long enough for any length rule on a secret (an admin key, say).
    return "env-placeholder-" + "0" * 32


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
