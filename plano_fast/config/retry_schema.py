"""The input shape of a ``retry_policy`` (Plano's proposal, katanemo/plano PR #926), apart
from the rest of the schema so the ``plano_fast:`` settings can take one too (managed pipes'
``managed_retry_policy``) without importing the whole schema."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from plano_fast.failover import Backoff, RetryPolicy, StatusRule


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _BackoffIn(_In):
    apply_to: Literal["all_retries", "same_model"] = "all_retries"
    base_ms: Annotated[int, Field(ge=0, le=600_000)] = 100
    max_ms: Annotated[int, Field(ge=0, le=600_000)] = 5000
    jitter: bool = True


class _StatusRuleIn(_In):
    codes: Annotated[list[Annotated[int, Field(ge=400, le=599)]], Field(min_length=1)]
    strategy: Literal["same_model", "same_provider", "different_provider"] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None


class RetryPolicyIn(_In):
    """Plano's proposed per-provider retry_policy (katanemo/plano PR #926)."""

    fallback_models: list[str] = []
    default_strategy: Literal["same_model", "same_provider", "different_provider"] = "different_provider"
    default_max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    max_retry_duration_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 30_000
    on_status_codes: list[_StatusRuleIn] = []
    backoff: _BackoffIn = _BackoffIn()
    # plano_fast's extension (not in PR #926): hedge non-streaming requests after this long
    # without a response head (config mode; docs/resilience.md)
    hedge_after_ms: Annotated[int, Field(ge=1, le=600_000)] | None = None


def retry_policy_of(pin: RetryPolicyIn) -> RetryPolicy:
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
        hedge_after_ms=pin.hedge_after_ms,
    )
