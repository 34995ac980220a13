"""The loaded config's types: frozen, pure data (the loader builds them, the gateway reads them)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from plano_fast.config.retry_schema import RetryPolicyIn
from plano_fast.failover import RetryPolicy
from plano_fast.wire import upstream_host_lines

if TYPE_CHECKING:  # the runtime module (asyncio, per-request state) is not the model's concern
    from plano_fast.preference_routing import PreferenceConfig

SUPPORTED_VERSIONS = ("v0.1", "v0.1.0", "0.1-beta", "0.2.0", "v0.3.0", "v0.4.0")
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_ADDRESS = "0.0.0.0"
DEFAULT_PORTS = {"model": 12000, "prompt": 10000}


class ConfigError(Exception):
    """The config cannot be used.  ``errors`` holds one ``file: path: reason`` line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class RoutingPreference:
    """A ``routing_preferences`` item: a route preference routing may choose."""

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
    # (connect, first byte, idle between body bytes) timeouts in seconds: the provider's
    # connect_timeout / first_byte_timeout / body_idle_timeout, else the plano_fast:
    # defaults (upstream_connect_timeout_s, upstream_first_byte_timeout_s,
    # upstream_body_idle_timeout_s, the last two defaulting to the listener's timeout),
    # resolved when the config loads.
    timeouts: tuple[float, float, float] = (5.0, DEFAULT_TIMEOUT_S, DEFAULT_TIMEOUT_S)
    # Derived from the fields above once (``__post_init__``), not per request:
    #: the upstream pool's key for this provider, no egress address (scheme, host, port, None)
    origin: tuple[str, str, int, None] = field(init=False, repr=False, compare=False)
    #: client endpoint name ("chat_completions", "messages", "count_tokens", "responses")
    #: -> the provider path serving it as bytes, None where it has none (the chat path as
    #: written when ``model_in_path``: gateway.endpoints.upstream_path fills the model in)
    upstream_paths: dict[str, bytes | None] = field(init=False, repr=False, compare=False)
    #: ``host: <host_header>\r\naccept-encoding: identity\r\n``: the upstream head's Host
    #: line, and the coding asked for (``wire.upstream_host_lines``: usage is read from the
    #: answer as it comes)
    host_line: bytes = field(init=False, repr=False, compare=False)
    #: the upstream head's lines of ``auth_headers`` then ``extra_headers``, joined once:
    #: (all of them, those without ``anthropic-version`` -- for a client that sent its own);
    #: the same of ``chat_auth_headers`` (``auth_lines`` when it has none); and of
    #: ``extra_headers`` alone (passthrough_auth).  plano_fast.gateway.upstream_request
    #: writes them as they are: ~1.6k instructions a request fewer than a concatenation
    #: per header line.
    auth_lines: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    chat_auth_lines: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    extra_lines: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", ("https" if self.tls else "http", self.host, self.port, None))
        object.__setattr__(self, "host_line", upstream_host_lines(self.host_header))
        messages = self.messages_path
        paths = {
            "chat_completions": self.chat_completions_path,
            "messages": messages,
            "count_tokens": messages + "/count_tokens" if messages else None,
            "responses": self.responses_path,
        }
        object.__setattr__(self, "upstream_paths", {k: v.encode() if v else None for k, v in paths.items()})
        object.__setattr__(self, "extra_lines", _lines(self.extra_headers, True))
        object.__setattr__(self, "auth_lines", _auth_lines(self.auth_headers, self.extra_lines))
        object.__setattr__(self, "chat_auth_lines", (
            _auth_lines(self.chat_auth_headers, self.extra_lines) if self.chat_auth_headers else self.auth_lines
        ))  # fmt: skip

    def chat_path_for(self, upstream_model: str) -> str | None:
        """The chat-completions path for ``upstream_model`` (differs only for Azure *)."""
        path = self.chat_completions_path
        if path is None or not self.model_in_path:
            return path
        return path.replace("{model}", quote(upstream_model, safe=""))


def _lines(headers: tuple[tuple[bytes, bytes], ...], version: bool) -> bytes:
    """``name: value`` CRLF-ended lines (without ``anthropic-version`` unless ``version``)."""
    return b"".join(
        name + b": " + value + b"\r\n" for name, value in headers if version or name != b"anthropic-version"
    )


def _auth_lines(auth: tuple[tuple[bytes, bytes], ...], extra_lines: bytes) -> tuple[bytes, bytes]:
    return _lines(auth, True) + extra_lines, _lines(auth, False) + extra_lines


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


def _no_pipe_fallbacks(value: RetryPolicyIn) -> RetryPolicyIn:
    if value.fallback_models:
        raise ValueError(
            "fallback_models cannot be set for managed pipes: a pipe's own targets, in order, "
            "are its fallbacks"
        )
    if value.hedge_after_ms is not None:
        raise ValueError("hedge_after_ms is not supported for managed pipes (config mode only)")
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
    # After the drain, the bound on what a stop asks of the store (usage flush, settles,
    # releases, close), whatever the database does; past it rows are journaled.
    store_stop_timeout_s: PosFloat = 10.0
    upstream_connect_timeout_s: PosFloat = 5.0  # TCP + TLS connect to a provider
    # No response byte this long after the request was sent: the attempt fails (retried
    # when the provider's retry policy allows); None: the model listener's timeout.
    upstream_first_byte_timeout_s: PosFloat | None = None
    # No body byte this long once a response started: the response is cut (the client
    # sees the cut); None: the model listener's timeout.  A provider may set its own.
    upstream_body_idle_timeout_s: PosFloat | None = None
    upstream_idle_timeout_s: PosFloat = 60.0  # how long an idle pooled connection is kept
    upstream_pool_max_idle_per_origin: PosInt = 64  # idle connections kept per origin
    dns_ttl_s: PosFloat = 60.0  # how long a resolved address is reused
    sqlite_path: NonEmptyStr = "plano_fast.db"  # usage store when database_url is unset
    database_url: str | None = Field(default=None, repr=False)  # PostgreSQL usage store
    # PostgreSQL only.  false: usage writes and settles (managed mode's synchronous write)
    # commit with synchronous_commit = off -- seen by every instance at once, but a
    # PostgreSQL or OS crash can lose the last ~3 x wal_writer_delay of them (README,
    # "Durability of usage writes").  true: each commit waits for its WAL flush.
    usage_synchronous_commit: bool = True
    usage_flush_interval_s: PosFloat = 10.0  # usage batch flush period
    # With --workers N: how often each worker publishes its metrics for the others'
    # scrapes (a scrape is at most this stale); also the idle upstream pool's sweep period.
    metrics_publish_interval_s: PosFloat = 1.0
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
    # The per-route request series of /metrics (requests, latency histograms, tokens,
    # errors of relayed answers); off: only the process counters and refusals are
    # counted.  Preference routing's latency policy reads them: kept on when it is set.
    request_metrics: bool = True
    # A Server-Timing response header with the gateway's and the upstream's share (off:
    # it tells clients how the gateway is deployed).
    server_timing: bool = False
    # Redis for Plano's ratelimits shared by every worker and instance
    # (redis://[user:password@]host:port/db, rediss:// for TLS, unix:///path?db=N)
    redis_url: str | None = Field(default=None, repr=False)
    # Rate-limit backend unreachable: refuse (503) or admit unlimited.
    ratelimit_on_backend_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    # The x-ratelimit-* (OpenAI) / anthropic-ratelimit-* headers of ratelimits: on 429
    # refusals only, or also on every admitted response of a request that falls in a
    # bucket (from the check's own answer: no extra Redis round trip).
    ratelimit_headers: Literal["refused", "always"] = "refused"
    # The DLP floor: PII/secret detectors and their actions (plano_fast.guardrails).
    guardrails: dict[str, Any] | None = None
    # Guard models behind prompt_guards (jailbreak) and content moderation
    # (plano_fast.guard_models); the filter chains' deadline and error policy
    # (plano_fast.filter_chain); DLP log/warn on answers (plano_fast.response_guard).
    guard_models: dict[str, Any] | None = Field(default=None, repr=False)
    filter_chain: dict[str, Any] | None = None
    response_guardrails: dict[str, Any] | None = None
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
    # How a managed pipe's targets are walked on failures: a retry_policy (Plano's shape)
    # without fallback_models (the pipe's targets are the fallbacks).  Unset: each target
    # once, in order, no wait (docs/resilience.md).
    managed_retry_policy: Annotated[RetryPolicyIn, AfterValidator(_no_pipe_fallbacks)] | None = None
    # Circuit breakers (per target, per process): consecutive failures that open one, and
    # how long it stays open before one probe is let through.
    circuit_failure_threshold: PosInt = 5
    circuit_cooldown_s: PosFloat = 30.0


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
    #: alias -> ordered fallback models (``model_aliases.<alias>.target`` as a list: the
    #: first model serves, these follow it in a retry plan)
    alias_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: (connect, first byte, idle between body bytes) upstream timeouts in seconds for a
    #: target that sets none of its own: plano_fast's upstream_*_timeout_s, the last two
    #: defaulting to the served listener's timeout (resolved once, by the loader)
    upstream_timeouts: tuple[float, float, float] = (5.0, DEFAULT_TIMEOUT_S, DEFAULT_TIMEOUT_S)

