"""Retries, failover and circuit breaking: the pure decisions (no I/O, no clock of its own).

The exchange asks two questions, each answered here from plain values:

* after an attempt failed before anything reached the client -- a connection error, a
  timeout before the first byte, or a retryable status -- *what next?*
  (:meth:`RetryPlan.next_attempt`: the target to try and how long to wait first, or None);
* before trying a target, *is it healthy?* (:class:`CircuitBreaker`).

Configuration follows Plano's proposed ``retry_policy`` (katanemo/plano PR #926) per model
provider::

    retry_policy:
      fallback_models: [anthropic/claude-sonnet-4-5, openai/gpt-4o-mini]
      default_strategy: different_provider   # same_model | same_provider | different_provider
      default_max_attempts: 3                # attempts in all, the first one included
      max_retry_duration_ms: 30000           # no attempt starts later than this after the first
      on_status_codes:
        - {codes: [429, 503], strategy: different_provider, max_attempts: 3}
      backoff: {apply_to: all_retries, base_ms: 100, max_ms: 5000, jitter: true}

Semantics, where the proposal leaves room:

* The targets are the request's own route followed by ``fallback_models`` in order (each
  resolved through the config when it is loaded: a fallback is never a model the operator
  did not list).  ``same_model`` retries the target that failed; ``same_provider`` moves
  to the next target of the same provider (``openai``, ``anthropic``, ...);
  ``different_provider`` to the next target of another provider; when no target fits, the
  request stops there.  A strategy's ``max_attempts`` bounds the attempts of the whole
  request while that strategy applies.
* Retried: connection failures, timeouts before the first byte, 429, 500, 502, 503, 504
  and 529 (Anthropic's "overloaded"), plus any status named in ``on_status_codes``.  Never
  after the response head was sent to the client, never for other statuses.
* Waits: exponential backoff with full jitter (``uniform(0, min(max_ms, base_ms * 2^n))``,
  n = retries so far; without jitter the cap itself), applied to every retry
  (``apply_to: all_retries``) or only to retries of the same target (``same_model``).  A
  ``Retry-After`` / ``retry-after-ms`` answer makes a retry of the *same* target wait at
  least that long; no wait may end past the retry deadline (``max_retry_duration_ms``):
  a longer one ends the retries there.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Final, Generic, Literal, TypeVar

Strategy = Literal["same_model", "same_provider", "different_provider", "next_target"]
#: the strategies a config may name (Plano PR #926); ``next_target`` (the next healthy
#: target, whatever its provider) is how an alias's target list is walked (alias_policy)
STRATEGIES: Final = ("same_model", "same_provider", "different_provider")

#: Statuses a fresh attempt may fix: rate limited, server errors, Anthropic's overloaded.
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504, 529})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StatusRule:
    codes: frozenset[int]
    strategy: Strategy
    max_attempts: int


@dataclass(frozen=True, slots=True)
class Backoff:
    base_ms: int = 100
    max_ms: int = 5000
    jitter: bool = True
    apply_to: Literal["all_retries", "same_model"] = "all_retries"

    def delay_s(self, retries_so_far: int, same_target: bool, rng: random.Random) -> float:
        if self.apply_to == "same_model" and not same_target:
            return 0.0
        cap_ms = min(self.max_ms, self.base_ms * (1 << min(retries_so_far, 30)))
        return (rng.uniform(0, cap_ms) if self.jitter else cap_ms) / 1000.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A provider's ``retry_policy`` (or the listener's ``max_retries`` on its own)."""

    fallback_models: tuple[str, ...] = ()
    default_strategy: Strategy = "same_model"
    default_max_attempts: int = 1
    max_retry_duration_ms: int = 30_000
    on_status_codes: tuple[StatusRule, ...] = ()
    backoff: Backoff = field(default_factory=Backoff)
    #: hedging (plano_fast.gateway.hedge): a second attempt after this long without a
    #: response head; None: off
    hedge_after_ms: int | None = None

    def rule_for(self, status: int | None) -> tuple[Strategy, int] | None:
        """(strategy, max attempts) for a failure, None when it is not retried.
        ``status`` None: a connection failure or a timeout before the first byte."""
        if status is not None:
            for rule in self.on_status_codes:
                if status in rule.codes:
                    return rule.strategy, rule.max_attempts
            if status not in RETRYABLE_STATUSES:
                return None
        return self.default_strategy, self.default_max_attempts


def retry_after_s(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    """Seconds a ``retry-after-ms`` or ``retry-after`` (seconds or HTTP-date) header asks
    for; None when absent or unreadable."""
    for name, value in headers:
        lname = name.lower()
        try:
            if lname == b"retry-after-ms":
                ms = float(value.strip())
                return ms / 1000.0 if ms >= 0 else None
            if lname == b"retry-after":
                text = value.strip().decode("ascii")
                if text.replace(".", "", 1).isdigit():
                    return float(text)
                when = parsedate_to_datetime(text)
                return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
        except (ValueError, UnicodeDecodeError, TypeError, OverflowError):
            return None
    return None


@dataclass(slots=True)
class RetryPlan(Generic[T]):
    """One request's walk over its targets (``targets[0]`` is the request's own route).

    ``provider_of`` gives each target's provider id (for the strategies); ``started_s`` is
    the loop time of the first attempt.
    """

    targets: Sequence[T]
    provider_of: Sequence[str]
    policy: RetryPolicy
    started_s: float
    rng: random.Random = field(default_factory=random.Random)
    index: int = 0
    attempts: int = 1
    retries: int = 0

    def next_attempt(
        self,
        status: int | None,
        now_s: float,
        retry_after: float | None = None,
        healthy: frozenset[int] | None = None,
    ) -> tuple[int, float] | None:
        """After the current attempt failed (``status`` None: no response), the index of
        the target to try next and the seconds to wait first; None to stop.  ``healthy``:
        the indexes whose circuits allow an attempt (None: all).  Advances the plan."""
        rule = self.policy.rule_for(status)
        if rule is None:
            return None
        strategy, max_attempts = rule
        if self.attempts >= max_attempts:
            return None
        nxt = self._pick(strategy, healthy)
        if nxt is None:
            return None
        same = nxt == self.index
        wait = self.policy.backoff.delay_s(self.retries, same, self.rng)
        if same and retry_after is not None:
            wait = max(wait, retry_after)  # bounded by the retry deadline below
        deadline = self.started_s + self.policy.max_retry_duration_ms / 1000.0
        if now_s + wait > deadline:
            return None
        self.index = nxt
        self.attempts += 1
        self.retries += 1
        return nxt, wait

    def hedge_target(self, healthy: frozenset[int] | None = None) -> int | None:
        """The target a hedge of the current attempt goes to (the default strategy's next
        target; the same one for ``same_model``), None when no attempt is left or no
        target fits.  Does not advance the plan (the caller counts the attempt)."""
        if self.attempts >= self.policy.default_max_attempts:
            return None
        return self._pick(self.policy.default_strategy, healthy)

    def adopt(self, index: int, status: int | None, healthy: frozenset[int] | None = None) -> bool:
        """The current attempt failed (``status`` None: no response) while a hedge to
        ``index`` is in flight (already counted in ``attempts``): whether the attempt that
        follows would go to that target -- then the plan moves there, the hedge becoming
        the current attempt (no wait: it was sent already; no second request to the
        target, which would bill both).  False: the plan goes on as without hedging (the
        caller gives the hedge's attempt back first)."""
        rule = self.policy.rule_for(status)
        if rule is None:
            return False
        strategy, max_attempts = rule
        if self.attempts - 1 >= max_attempts or self._pick(strategy, healthy) != index:
            return False
        self.index = index
        self.retries += 1
        return True

    def _pick(self, strategy: Strategy, healthy: frozenset[int] | None) -> int | None:
        current = self.index
        if strategy == "same_model":
            return current if healthy is None or current in healthy else None
        if strategy == "next_target":
            return next((i for i in range(current + 1, len(self.targets))
                         if healthy is None or i in healthy), None)
        provider = self.provider_of[current]
        for i in range(current + 1, len(self.targets)):
            if healthy is not None and i not in healthy:
                continue
            if (self.provider_of[i] == provider) == (strategy == "same_provider"):
                return i
        return None


@functools.cache
def alias_policy(fallbacks: tuple[str, ...]) -> RetryPolicy:
    """How an alias's target list (``model_aliases.<alias>.target: [a, b, c]``) is walked
    when its first model's provider has no ``retry_policy``: each listed model once, in
    order, skipping open circuits, with no wait between them (another model is not the
    one that just failed).  ``fallbacks``: the models after the first.  Cached: one policy
    per list the config (and preference routing's rankings) can make, not one per request."""
    return RetryPolicy(fallbacks, "next_target", len(fallbacks) + 1, backoff=Backoff(0, 0, False))


@functools.cache
def pipe_policy(targets: int) -> RetryPolicy:
    """How a managed pipe's targets are walked when ``plano_fast.managed_retry_policy`` is
    not set (the behaviour pipes always had): each target once, in order, skipping open
    circuits, with no wait.  Cached per target count."""
    return RetryPolicy((), "next_target", targets, backoff=Backoff(0, 0, False))


class CircuitBreaker:
    """Health memory of one target: ``failure_threshold`` consecutive failures open it for
    ``cooldown_s``; then one probe is let through (half-open): its success closes the
    circuit, its failure opens it again.  A probe that never reports (its client left
    before the answer) is given up after another cooldown, so the circuit cannot stay
    half-open for good.  Times are loop seconds given by the caller."""

    __slots__ = ("failure_threshold", "cooldown_s", "failures", "opened_at", "probing", "probe_at", "opens")

    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.probe_at = 0.0
        #: how many times it opened (for /metrics)
        self.opens = 0

    def state(self, now_s: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now_s - self.opened_at >= self.cooldown_s else "open"

    def available(self, now_s: float) -> bool:
        """Whether an attempt could go to this target now (nothing taken)."""
        if self.opened_at is None:
            return True
        return now_s - self.opened_at >= self.cooldown_s and not self._probe_pending(now_s)

    def _probe_pending(self, now_s: float) -> bool:
        return self.probing and now_s - self.probe_at < self.cooldown_s

    def allow(self, now_s: float) -> bool:
        """Whether an attempt may go to this target now (taking the half-open probe)."""
        if self.opened_at is None:
            return True
        if now_s - self.opened_at < self.cooldown_s or self._probe_pending(now_s):
            return False
        self.probing = True
        self.probe_at = now_s
        return True

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def record_failure(self, now_s: float) -> None:
        self.failures += 1
        if self.probing or (self.opened_at is None and self.failures >= self.failure_threshold):
            self.opened_at = now_s
            self.opens += 1
        self.probing = False


#: longest attempt trail kept on a usage row (``usage_log.attempt_trail``)
MAX_TRAIL_CHARS: Final = 200


def attempt_trail(entries: Sequence[str]) -> str:
    """The usage row's ``attempt_trail``: each attempt's outcome (an HTTP status or an
    error kind) in order, comma-separated; past ``MAX_TRAIL_CHARS`` the first entries that
    fit are kept and ``,...`` ends it (``attempts`` keeps the exact count)."""
    text = ",".join(entries)
    if len(text) <= MAX_TRAIL_CHARS:
        return text
    cut = text.rfind(",", 0, MAX_TRAIL_CHARS - 3)
    return text[:cut] + ",..."
def circuit_views(
    circuits: Iterable[tuple[tuple[str, str, str], CircuitBreaker]], loop_now_s: float, wall_now_s: float
) -> list[dict[str, Any]]:
    """The admin API's ``GET /circuits`` entries: one per target this process has a circuit
    for, named by provider name, model and provider key id (managed pipes; null for the
    config's own key) -- never a key.  ``opened_at`` is wall-clock (Unix seconds)."""
    out = []
    for (provider, model, key_id), c in circuits:
        opened = c.opened_at
        out.append({
            "provider": provider,
            "model": model or None,
            "key_id": key_id or None,
            "state": c.state(loop_now_s),
            "consecutive_failures": c.failures,
            "failure_threshold": c.failure_threshold,
            "opens": c.opens,
            "opened_at": None if opened is None else round(wall_now_s - (loop_now_s - opened), 3),
            "cooldown_s": c.cooldown_s,
            "cooldown_left_s": (
                None if opened is None else round(max(0.0, opened + c.cooldown_s - loop_now_s), 3)
            ),
            "probing": c.probing,
        })
    return out
