"""The input shape of a ``retry_policy`` (Plano's proposal, katanemo/plano PR #926), apart
from the rest of the schema so the ``plano_fast:`` settings can take one too (managed pipes'
``managed_retry_policy``) without importing the whole schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plano_fast.failover import Backoff, RetryPolicy, StatusRule


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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
    # In Plano's schema (PR #926) but not acted on here yet: refused by name, so a Plano
    # file that relies on them fails to load instead of silently behaving otherwise.
    on_timeout: Any = None
    on_high_latency: Any = None
    retry_after_handling: Any = None

    @field_validator("on_timeout", "on_high_latency", "retry_after_handling")
    @classmethod
    def _not_supported(cls, value: Any) -> Any:
        raise ValueError("not supported by plano_fast yet (see docs/resilience.md)")


def retry_policy_of(pin: RetryPolicyIn) -> RetryPolicy:
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
        hedge_after_ms=pin.hedge_after_ms,
    )
