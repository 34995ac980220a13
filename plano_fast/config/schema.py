"""The input schema: Plano's ``plano_config.yaml`` as pydantic models (``extra="forbid"``,
strict types, as Plano's JSON schema is).  Shapes only; semantic checks are the loader's."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plano_fast import providers as P
from plano_fast.config.model import SUPPORTED_VERSIONS, Duration, Port
from plano_fast.config.retry_schema import RetryPolicyIn as _RetryPolicyIn


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _RoutingPreferenceIn(_In):
    name: str
    description: str


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

