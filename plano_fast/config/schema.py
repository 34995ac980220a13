"""The input schema: Plano's ``plano_config.yaml`` as pydantic models (``extra="forbid"``,
strict types, as Plano's JSON schema is).  Shapes only; semantic checks are the loader's."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plano_fast import providers as P
from plano_fast.config.model import SUPPORTED_VERSIONS, Duration, Port
from plano_fast.failover import Backoff, RetryPolicy, StatusRule

class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _RoutingPreferenceIn(_In):
    name: str
    description: str


class _BackoffIn(_In):
    # "global" is Plano's schema's name (PR #926) for what its description calls all_retries
    apply_to: Literal["all_retries", "global", "same_model"] = "all_retries"
    base_ms: Annotated[int, Field(ge=0, le=600_000)] = 100
    max_ms: Annotated[int, Field(ge=0, le=600_000)] = 5000
    jitter: bool = True


class _StatusRuleIn(_In):
    # a status, or a range of them as Plano's schema allows ("502-504")
    codes: Annotated[list[Annotated[int, Field(ge=400, le=599)] | str], Field(min_length=1)]
    strategy: Literal["same_model", "same_provider", "different_provider"] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None

    @field_validator("codes")
    @classmethod
    def _ranges(cls, codes: list[int | str]) -> list[int | str]:
        out: list[int | str] = []
        for code in codes:
            if isinstance(code, int):
                out.append(code)
                continue
            first, sep, last = code.partition("-")
            if not (sep and first.strip().isdigit() and last.strip().isdigit()):
                raise ValueError(f"{code!r} is neither a status nor a range like '502-504'")
            lo, hi = int(first), int(last)
            if not 400 <= lo <= hi <= 599:
                raise ValueError(f"range {code!r} must be within 400-599, low to high")
            out.extend(range(lo, hi + 1))
        return out


class _RetryPolicyIn(_In):
    """Plano's proposed per-provider retry_policy (katanemo/plano PR #926)."""

    fallback_models: list[str] = []
    default_strategy: Literal["same_model", "same_provider", "different_provider"] = "different_provider"
    default_max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    max_retry_duration_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 30_000
    on_status_codes: list[_StatusRuleIn] = []
    backoff: _BackoffIn = _BackoffIn()
    # In Plano's schema (PR #926) but not acted on here yet: refused by name, so a Plano
    # file that relies on them fails to load instead of silently behaving otherwise.
    on_timeout: Any = None
    on_high_latency: Any = None
    retry_after_handling: Any = None

    @field_validator("on_timeout", "on_high_latency", "retry_after_handling")
    @classmethod
    def _not_supported(cls, value: Any) -> Any:
        raise ValueError("not supported by plano_fast yet (see docs/resilience.md)")


def _retry_policy(pin: _RetryPolicyIn) -> RetryPolicy:
    return RetryPolicy(
        fallback_models=tuple(m.strip() for m in pin.fallback_models),
        default_strategy=pin.default_strategy,
        default_max_attempts=pin.default_max_attempts,
        max_retry_duration_ms=pin.max_retry_duration_ms,
        on_status_codes=tuple(
            StatusRule(
                frozenset(int(c) for c in r.codes),  # ranges expanded by _StatusRuleIn
                r.strategy or pin.default_strategy,
                r.max_attempts or pin.default_max_attempts,
            )
            for r in pin.on_status_codes
        ),
        backoff=Backoff(
            pin.backoff.base_ms, pin.backoff.max_ms, pin.backoff.jitter,
            "all_retries" if pin.backoff.apply_to == "global" else pin.backoff.apply_to,
        ),
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
    # Per-provider timeouts ("5s", "500ms" or seconds), else the plano_fast: defaults.
    # connect_timeout is Plano's name (its endpoints take one); the other two are ours.
    connect_timeout: Duration | None = None
    first_byte_timeout: Duration | None = None
    body_idle_timeout: Duration | None = None
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
    #: one model, or an ordered list: the first serves, the rest are its fallbacks
    target: str | list[str]


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

