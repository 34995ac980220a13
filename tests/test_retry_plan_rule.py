"""One rule for "this request has a retry plan": ``routed.plans_retries``, which config
mode asks before calling ``RoutedExchange._first_target`` (to skip the call for the usual
route) and which ``_first_target`` itself starts with.  Pinned here: for every combination
of an alias's target list, a provider retry policy and a listener default, the guard says
yes exactly when ``_first_target`` builds a plan -- or, the route's circuit closed and no
ranked or listed fallbacks to resolve, leaves one to build at the first failure
(``plan_later``: issue 27's retries row)."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from plano_fast.failover import Backoff, RetryPolicy
from plano_fast.gateway.endpoints import CHAT_COMPLETIONS, COUNT_TOKENS
from plano_fast.gateway.routed import RoutedExchange, plans_retries

POLICY = RetryPolicy((), "same_model", 2, backoff=Backoff(0, 0, False))


@dataclasses.dataclass
class _Provider:
    retry_policy: RetryPolicy | None
    name: str = "p"


@dataclasses.dataclass
class _Route:
    provider: _Provider
    fallbacks: tuple[str, ...]
    upstream_model: str | None = None


@pytest.mark.parametrize("fallbacks, provider_policy, default_policy, preference",
                         list(itertools.product([(), ("b", "c")], [None, POLICY], [None, POLICY], [(), ("p",)])))
def test_the_guard_is_first_targets_rule(fallbacks: tuple[str, ...], provider_policy: RetryPolicy | None,
                                         default_policy: RetryPolicy | None, preference: tuple[str, ...]) -> None:
    route: Any = _Route(_Provider(provider_policy), fallbacks)
    planned: list[RetryPolicy] = []

    def plan(route_: object, policy: RetryPolicy, now_s: float) -> Any:
        planned.append(policy)
        return SimpleNamespace(targets=[route_], index=0)

    closed = SimpleNamespace(opened_at=None)
    ctx = SimpleNamespace(default_retry_policy=default_policy, pool=SimpleNamespace(loop=SimpleNamespace(time=lambda: 1.0)),
                          circuit_for=lambda provider, model: closed)  # fmt: skip
    exchange: Any = SimpleNamespace(ctx=ctx, endpoint=CHAT_COMPLETIONS, _plan=plan, plan=None, plan_later=None,
                                    circuit=None)  # fmt: skip
    assert RoutedExchange._first_target(exchange, route, preference) is route
    made_or_left = bool(planned) or exchange.plan_later is not None
    assert made_or_left == plans_retries(route, default_policy)
    assert plans_retries(route, default_policy) == bool(fallbacks or provider_policy or default_policy)
    # left for later only without fallbacks to resolve now (an alias's list, ranked models)
    assert (exchange.plan_later is not None) == (made_or_left and not fallbacks and not preference)
    # count_tokens never plans (its answer is free), whatever the rule says
    planned.clear()
    exchange.plan_later = None
    exchange.endpoint = COUNT_TOKENS
    assert RoutedExchange._first_target(exchange, route, preference) is route and not planned
    assert exchange.plan_later is None
