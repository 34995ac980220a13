"""Retries, failover and circuit breaking (issue 20): the pure decisions, then config mode
over real sockets with the official SDKs against the fake provider's fault controls."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.app import listener_retry_policy
from plano_fast.config import ConfigError, parse_config
from plano_fast.failover import Backoff, CircuitBreaker, RetryPlan, RetryPolicy, StatusRule, retry_after_s
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import read_rows

# -- pure -------------------------------------------------------------------------------


def plan(providers: list[str], policy: RetryPolicy) -> RetryPlan[str]:
    return RetryPlan([f"t{i}" for i in range(len(providers))], providers, policy, 0.0, random.Random(1))


NO_WAIT = Backoff(base_ms=0, max_ms=0, jitter=False)


def test_strategies_walk_the_targets_in_order() -> None:
    providers = ["openai", "openai", "anthropic", "gemini"]
    p = plan(providers, RetryPolicy(("a", "b", "c"), "different_provider", 4, backoff=NO_WAIT))
    assert p.next_attempt(503, 0.0) == (2, 0.0)  # next target of another provider
    assert p.next_attempt(None, 0.0) == (3, 0.0)
    assert p.next_attempt(503, 0.0) is None  # nothing after the last
    p = plan(providers, RetryPolicy(("a", "b", "c"), "same_provider", 4, backoff=NO_WAIT))
    assert p.next_attempt(429, 0.0) == (1, 0.0)
    assert p.next_attempt(429, 0.0) is None  # no third openai target
    p = plan(providers, RetryPolicy((), "same_model", 3, backoff=NO_WAIT))
    assert [p.next_attempt(500, 0.0), p.next_attempt(500, 0.0), p.next_attempt(500, 0.0)] == [
        (0, 0.0), (0, 0.0), None,  # 3 attempts in all
    ]


def test_a_hedge_in_flight_is_adopted_only_where_the_plan_goes_next() -> None:
    """RetryPlan.adopt: the hedge (counted in ``attempts``) becomes the next attempt when
    the failure is retried and the plan's pick is the hedge's target; otherwise nothing
    moves (the caller cancels the hedge and asks next_attempt)."""
    providers = ["openai", "openai", "anthropic"]
    p = plan(providers, RetryPolicy(("a", "b"), "same_provider", 3, backoff=NO_WAIT))
    p.attempts += 1  # the hedge to target 1
    assert p.adopt(1, 503) and (p.index, p.attempts, p.retries) == (1, 2, 1)
    p = plan(providers, RetryPolicy(("a", "b"), "same_provider", 3, backoff=NO_WAIT))
    p.attempts += 1
    assert not p.adopt(1, 400)  # not retried: the client gets the 400
    assert not p.adopt(2, 503)  # the plan goes to target 1, not the hedge's
    assert not p.adopt(1, 503, healthy=frozenset({0}))  # target 1 unhealthy: plan goes elsewhere
    assert (p.index, p.attempts, p.retries) == (0, 2, 0)
    rule = StatusRule(frozenset({429}), "same_model", 3)
    p = plan(providers, RetryPolicy(("a", "b"), "same_provider", 3, on_status_codes=(rule,), backoff=NO_WAIT))
    p.attempts += 1
    assert not p.adopt(1, 429)  # a 429's rule retries the same target
    p = plan(providers, RetryPolicy(("a", "b"), "same_provider", 1, backoff=NO_WAIT))
    p.attempts += 1
    assert not p.adopt(1, 503)  # one attempt allowed without the hedge: none follows


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_not_retried_unless_configured(status: int) -> None:
    assert plan(["a", "b"], RetryPolicy(("x",), "different_provider", 3)).next_attempt(status, 0.0) is None
    rule = StatusRule(frozenset({status}), "same_model", 2)
    p = plan(["a", "b"], RetryPolicy(("x",), "different_provider", 3, on_status_codes=(rule,), backoff=NO_WAIT))
    assert p.next_attempt(status, 0.0) == (0, 0.0)
    assert p.next_attempt(status, 0.0) is None  # the rule's own max_attempts


def test_backoff_full_jitter_retry_after_and_deadline() -> None:
    backoff = Backoff(base_ms=100, max_ms=1000, jitter=True)
    rng = random.Random(7)
    for retries in range(6):
        cap = min(1000, 100 * 2**retries) / 1000
        assert all(0 <= backoff.delay_s(retries, True, rng) <= cap for _ in range(200))
    assert Backoff(100, 1000, False).delay_s(3, True, rng) == 0.8
    assert Backoff(100, 1000, False, "same_model").delay_s(3, False, rng) == 0.0
    p = plan(["a"], RetryPolicy((), "same_model", 5, max_retry_duration_ms=2000, backoff=NO_WAIT))
    assert p.next_attempt(429, 0.0, retry_after=1.5) == (0, 1.5)  # Retry-After honoured
    assert p.next_attempt(429, 1.6, retry_after=1.5) is None  # would end past the deadline
    # a Retry-After past the deadline ends the retries (bounded by max_retry_duration_ms)
    p = plan(["a"], RetryPolicy((), "same_model", 5, max_retry_duration_ms=30_000, backoff=Backoff(0, 200, False)))
    assert p.next_attempt(429, 0.0, retry_after=60) is None


def test_retry_after_headers() -> None:
    assert retry_after_s([(b"Retry-After", b"2")]) == 2.0
    assert retry_after_s([(b"retry-after-ms", b"250")]) == 0.25
    assert retry_after_s([(b"retry-after", b"Wed, 21 Oct 2015 07:28:00 GMT")]) == 0.0
    assert retry_after_s([(b"retry-after", b"soon")]) is None
    assert retry_after_s([]) is None


def test_circuit_opens_probes_and_recovers() -> None:
    c = CircuitBreaker(failure_threshold=3, cooldown_s=10)
    for t in range(3):
        assert c.allow(t)
        c.record_failure(t)
    assert c.state(3) == "open" and not c.available(5) and not c.allow(5)
    assert c.state(12.5) == "half_open" and c.allow(12.5)
    assert not c.allow(12.6)  # one probe at a time
    c.record_failure(13)  # the probe failed: open again
    assert c.state(14) == "open" and c.opens == 2
    assert c.allow(23) and c.record_success() is None
    assert c.state(23) == "closed" and c.allow(23)


def test_listener_max_retries_is_the_default_attempt_count() -> None:
    assert listener_retry_policy(None) is None and listener_retry_policy(0) is None
    policy = listener_retry_policy(2)
    assert policy is not None and policy.default_max_attempts == 3 and policy.default_strategy == "same_model"


PLANO_926 = """
version: v0.4.0
model_providers:
  - model: openai/gpt-4o
    access_key: $OPENAI_API_KEY
    default: true
    retry_policy:
      fallback_models: [anthropic/claude-sonnet-4-5, openai/gpt-4o-mini]
      default_strategy: different_provider
      default_max_attempts: 3
      max_retry_duration_ms: 30000
      on_status_codes:
        - {codes: [429, 503], strategy: different_provider, max_attempts: 3}
      backoff: {apply_to: all_retries, base_ms: 100, max_ms: 5000, jitter: true}
  - model: anthropic/claude-sonnet-4-5
    access_key: $ANTHROPIC_API_KEY
  - model: openai/gpt-4o-mini
    access_key: $OPENAI_API_KEY
"""


def test_plano_pr_926_shape_validates() -> None:
    config = parse_config(PLANO_926, env={"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"})
    policy = config.providers[0].retry_policy
    assert policy is not None and policy.fallback_models == ("anthropic/claude-sonnet-4-5", "openai/gpt-4o-mini")
    assert policy.on_status_codes[0].codes == {429, 503}
    env = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    with pytest.raises(ConfigError, match=r"retry_policy\.default_strategy"):
        parse_config(PLANO_926.replace("default_strategy: different_provider", "default_strategy: sideways"), env=env)
    with pytest.raises(ConfigError, match=r"fallback_models\[1\]: 'openai/gpt-5' is not a configured model"):
        parse_config(PLANO_926.replace("openai/gpt-4o-mini]", "openai/gpt-5]"), env=env)


# -- over sockets ------------------------------------------------------------------------


def providers(base: str) -> str:
    return f"""\
  - name: always-503
    model: openai/gpt-4.1
    base_url: {base}
    access_key: sk-server-openai-key
    headers: {{x-fake-status: "503"}}
    retry_policy:
      fallback_models: [anthropic/claude-sonnet-4-6]
      default_strategy: different_provider
      backoff: {{base_ms: 5, max_ms: 20}}
  - name: same-model
    model: openai/gpt-4.1-mini
    base_url: {base}
    access_key: sk-server-openai-key
    retry_policy:
      default_strategy: same_model
      default_max_attempts: 3
      backoff: {{base_ms: 5, max_ms: 20}}
  - name: refused
    model: openai/gpt-4.1-nano
    base_url: http://127.0.0.1:9
    access_key: sk-server-openai-key
    retry_policy:
      fallback_models: [openai/gpt-4o-mini]
      default_strategy: same_provider
"""


@pytest.fixture
def retrying(make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path) -> Any:
    gateway = make_gateway({"admin_port": 0, "admin_key": "admin-key-for-failover-tests-000000"},
                           extra_providers=providers(fake.url))  # fmt: skip
    return gateway, str(tmp_path / "plano_config_0.db")


def calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


def ask(gateway: GatewayProcess, model: str, headers: dict[str, str] | None = None) -> Any:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], extra_headers=headers or {}
        )


def rows_for(sqlite_path: str, count: int) -> list[Any]:
    deadline = time.monotonic() + 15
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = read_rows(None, sqlite_path)
        if len(rows) >= count:
            break
        time.sleep(0.2)
    return rows


def test_fails_over_to_another_provider_and_bills_the_one_that_served(
    retrying: Any, fake: FakeProviderThread
) -> None:
    gateway, sqlite_path = retrying
    fake.clear()
    reply = ask(gateway, "gpt-4.1")  # 503 from the first target; anthropic (converted) serves
    assert reply.choices[0].message.content
    seen = calls(fake)
    assert [r.path for r in seen] == ["/v1/chat/completions", "/v1/messages"]
    (row,) = rows_for(sqlite_path, 1)
    assert row.provider == "anthropic" and row.model == "claude-sonnet-4-6" and row.status == "ok"


def test_same_model_retries_until_it_answers(retrying: Any, fake: FakeProviderThread) -> None:
    gateway, sqlite_path = retrying
    fake.clear()
    key = uuid.uuid4().hex
    reply = ask(gateway, "gpt-4.1-mini", {"x-fake-fail-first": "2", "x-fake-fail-key": key})
    assert reply.model == "gpt-4.1-mini"
    assert len(calls(fake)) == 3
    rows = rows_for(sqlite_path, 1)
    assert len(rows) == 1 and rows[0].status == "ok"  # one row per client request


def test_retry_after_is_honoured(retrying: Any, fake: FakeProviderThread) -> None:
    gateway, _ = retrying
    fake.clear()
    headers = {"x-fake-fail-first": "1", "x-fake-fail-key": uuid.uuid4().hex, "x-fake-status": "429",
               "x-fake-retry-after": "0.4"}  # fmt: skip
    started = time.monotonic()
    ask(gateway, "gpt-4.1-mini", headers)
    assert time.monotonic() - started >= 0.4 * 0.95
    assert len(calls(fake)) == 2


def test_exhausted_attempts_relay_the_last_error_and_4xx_is_not_retried(
    retrying: Any, fake: FakeProviderThread
) -> None:
    gateway, _ = retrying
    fake.clear()
    with pytest.raises(openai.InternalServerError) as err:
        ask(gateway, "gpt-4.1-mini", {"x-fake-status": "503"})
    assert err.value.status_code == 503 and len(calls(fake)) == 3
    fake.clear()
    with pytest.raises(openai.BadRequestError):
        ask(gateway, "gpt-4.1-mini", {"x-fake-status": "400"})
    assert len(calls(fake)) == 1


def test_refused_connection_fails_over(retrying: Any, fake: FakeProviderThread) -> None:
    gateway, _ = retrying
    fake.clear()
    assert ask(gateway, "gpt-4.1-nano").model == "gpt-4o-mini"
    assert [r.path for r in calls(fake)] == ["/v1/chat/completions"]


def test_circuit_opens_after_consecutive_failures_and_is_skipped(
    retrying: Any, fake: FakeProviderThread
) -> None:
    gateway, _ = retrying
    for _ in range(5):  # five failures of the always-503 target open its circuit
        ask(gateway, "gpt-4.1")
    fake.clear()
    ask(gateway, "gpt-4.1")
    assert [r.path for r in calls(fake)] == ["/v1/messages"]  # skipped, not tried first
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{gateway.admin_port}/metrics",
        headers={"authorization": "Bearer admin-key-for-failover-tests-000000"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        metrics = resp.read().decode()
    assert "plano_fast_circuits_open_current 1" in metrics
    assert "plano_fast_upstream_failovers " in metrics


# -- model_aliases with a target list: ordered fallbacks ----------------------------------


def test_next_target_walks_the_list_in_order_whatever_the_provider() -> None:
    from plano_fast.failover import alias_policy

    policy = alias_policy(("b", "c", "d"))
    assert policy.default_strategy == "next_target" and policy.default_max_attempts == 4
    assert policy.fallback_models == ("b", "c", "d")
    assert alias_policy(("b", "c", "d")) is policy  # one per list, not one per request
    p = plan(["openai", "openai", "anthropic", "openai"], policy)
    assert [p.next_attempt(503, 0.0), p.next_attempt(None, 0.0), p.next_attempt(429, 0.0)] == [
        (1, 0.0), (2, 0.0), (3, 0.0),  # same provider or not, in the listed order, no wait
    ]
    assert p.next_attempt(503, 0.0) is None  # each listed model once
    p = plan(["openai", "openai", "anthropic"], alias_policy(("b", "c")))
    assert p.next_attempt(503, 0.0, healthy=frozenset({0, 2})) == (2, 0.0)  # open circuit skipped
    assert plan(["a", "b"], alias_policy(("b",))).next_attempt(400, 0.0) is None  # 4xx: not retried


ALIAS_LIST = """
version: v0.4.0
model_providers:
  - model: openai/gpt-4o
    access_key: k
    default: true
  - model: anthropic/claude-sonnet-4-5
    access_key: k
model_aliases:
  smart:
    target: [openai/gpt-4o, anthropic/claude-sonnet-4-5]
  plain:
    target: openai/gpt-4o
"""


def test_alias_target_lists_validate_every_model() -> None:
    from plano_fast.routing import Router

    config = parse_config(ALIAS_LIST, env={})
    assert config.model_aliases == {"smart": "openai/gpt-4o", "plain": "openai/gpt-4o"}
    assert config.alias_fallbacks == {"smart": ("anthropic/claude-sonnet-4-5",)}
    router = Router(config)
    assert router.resolve("smart").fallbacks == ("anthropic/claude-sonnet-4-5",)
    assert router.resolve("plain").fallbacks == () and router.resolve("gpt-4o").fallbacks == ()
    with pytest.raises(ConfigError, match=r"model_aliases\.smart\.target: 'openai/gpt-5' is not a configured model"):
        parse_config(ALIAS_LIST.replace("anthropic/claude-sonnet-4-5]", "openai/gpt-5]"), env={})
    with pytest.raises(ConfigError, match=r"model_aliases\.smart\.target: a model is listed twice"):
        parse_config(ALIAS_LIST.replace("anthropic/claude-sonnet-4-5]", "openai/gpt-4o]"), env={})
    with pytest.raises(ConfigError, match=r"model_aliases\.smart\.target: a target list needs"):
        parse_config(ALIAS_LIST.replace("[openai/gpt-4o, anthropic/claude-sonnet-4-5]", "[]"), env={})


def test_an_alias_list_fails_over_in_order_and_bills_the_model_that_served(
    fake: FakeProviderThread, tmp_path: Path
) -> None:
    """``resilient``'s first model is unreachable (connection refused); the next listed
    model serves, through the SDK, and the row names it."""
    from tests.gateway_proc import write_config

    path = write_config(tmp_path / "aliases.yaml", fake.port)
    one = "model_aliases:\n  fast:\n    target: openai/gpt-4o-mini\n"
    path.write_text(path.read_text().replace(one, one + (
        "  resilient:\n    target: [down/unreachable-model, openai/gpt-4o-mini]\n")))
    with GatewayProcess(path) as gateway:
        fake.clear()
        reply = ask(gateway, "resilient")
        assert reply.choices[0].message.content
        assert [r.path for r in calls(fake)] == ["/v1/chat/completions"]
        (row,) = rows_for(str(path.with_suffix(".db")), 1)
        assert row.model == "gpt-4o-mini" and row.status == "ok"
        with pytest.raises(openai.InternalServerError) as err:  # a one-model name: no fallback
            ask(gateway, "down/unreachable-model")
        assert err.value.status_code == 502 and "cannot connect to upstream" in str(err.value)
