"""Managed pipes on the failover engine (issue 20): a pipe's targets walked by a RetryPlan
with per-target circuit breakers, under one hard-budget reservation per client request;
the admin API's ``GET /circuits``.  One gateway (official SDKs, real sockets, the fake
provider, SQLite) serves every test here: each uses its own tenant, so its own provider
keys and therefore its own circuits, rows and spend (a tenant shared by two tests made each
depend on the other's having run, or not: a circuit left open, a row more), and a test
reading a circuit picks its own tenant's by key id.  Any test passes alone or in any order."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.config import ConfigError, parse_config
from plano_fast.failover import CircuitBreaker, circuit_views
from tests.gateway_proc import GatewayProcess
from tests.test_managed import (
    ENV,
    OPENAI_SERVER_KEY,
    REQUEST_BODY,
    Tenant,
    provision,
    request_cost,
    rows,
    store_call,
)

ADMIN_KEY = "admin-key-for-managed-failover-0000000"
FLAKY_KEY = uuid.uuid4().hex  # the flaky provider's first two requests fail (fake's fail key)
POLICY = (
    "{default_strategy: same_provider, default_max_attempts: 3, backoff: {base_ms: 5, max_ms: 20},"
    " on_status_codes: [{codes: [429], strategy: same_model, max_attempts: 3}]}"
)


def extra_providers(base: str) -> str:
    """Two more OpenAI providers on the fake (their config models are placeholders: pipe
    targets name the provider and the model to send, gpt-4o-mini)."""
    return f"""\
  - name: always-503
    model: openai/always-503-model
    base_url: {base}
    access_key: sk-unused
    headers: {{x-fake-status: "503"}}
  - name: flaky
    model: openai/flaky-model
    base_url: {base}
    access_key: sk-unused
    headers: {{x-fake-fail-first: "2", x-fake-fail-key: "{FLAKY_KEY}"}}
  - name: stalled
    model: openai/stalled-model
    base_url: {base}
    access_key: sk-unused
    headers: {{x-fake-latency-ms: "3000"}}
"""


MINI = ("openai/gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini")


@pytest.fixture(scope="module")
def pipes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp_path: Path = tmp_path_factory.mktemp("managed_failover")
    sqlite_path = str(tmp_path / "plano_config_0.db")
    from tests.gateway_proc import write_config

    with FakeProviderThread() as fake:
        config = write_config(tmp_path / "plano_config_0.yaml", fake.port, {
            "managed": "true", "managed_reload_s": 1, "admin_port": 0, "admin_key": ADMIN_KEY,
            "managed_retry_policy": POLICY,
            "circuit_failure_threshold": 2, "circuit_cooldown_s": 1,
        }, extra_providers(fake.url))  # fmt: skip
        # A first-byte timeout of 1 s (the listener's timeout) for the stalled target.
        config.write_text(config.read_text().replace("    timeout: 5s\n", "    timeout: 1s\n"))
        assert "timeout: 1s" in config.read_text()
        tenants: dict[str, Tenant] = {}

        def before_start() -> None:
            cost = request_cost(REQUEST_BODY)
            tenants["budget"] = provision(None, sqlite_path, [("always-503", "gpt-4o-mini", "gpt-4o-mini"), MINI],
                                          limit_nano_usd=3 * cost)  # fmt: skip
            tenants["one"] = provision(None, sqlite_path, [MINI])
            tenants["one_stream"] = provision(None, sqlite_path, [MINI])
            tenants["stalled"] = provision(None, sqlite_path, [("stalled", "gpt-4o-mini", "gpt-4o-mini"), MINI])
            for name in ("stalled_limited", "stalled_limited_circuit"):
                tenants[name] = provision(None, sqlite_path, [("stalled", "gpt-4o-mini", "gpt-4o-mini"), MINI],
                                          limit_nano_usd=10 * cost)  # fmt: skip
            tenants["flaky"] = provision(None, sqlite_path, [("flaky", "gpt-4o-mini", "gpt-4o-mini"), MINI])

        with GatewayProcess(config, env=ENV, before_start=before_start) as gateway:
            yield gateway, fake, sqlite_path, tenants


def calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


def admin_get(gateway: GatewayProcess, path: str, key: str | None = ADMIN_KEY) -> tuple[int, bytes]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(f"http://127.0.0.1:{gateway.admin_port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def circuit_of(pipes: Any, provider: str, tenant: Tenant) -> dict[str, Any]:
    """``GET /circuits``' entry for ``provider`` with ``tenant``'s provider key (another
    tenant's target on the same provider has a circuit of its own)."""
    gateway, _, sqlite_path, _ = pipes
    keys = store_call(None, sqlite_path, lambda s: s.list_provider_keys(tenant.project_id))
    key_ids = {k.id for k in keys}
    circuits = json.loads(admin_get(gateway, "/circuits")[1])["circuits"]
    (found,) = [c for c in circuits if c["provider"] == provider and c["key_id"] in key_ids]
    return dict(found)


def chat(gateway: GatewayProcess, token: str, headers: dict[str, str] | None = None) -> Any:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            # REQUEST_BODY's members (pinned to the standard tier, as it is), so its bytes
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}], service_tier="default",
            extra_headers={"x-fake-input-tokens": str(len(REQUEST_BODY)), "x-fake-output-tokens": "50",
                           **(headers or {})},
        )  # fmt: skip


def test_a_503_fails_over_and_the_budget_holds_across_attempts(pipes: Any) -> None:
    """The first target answers 503, the second serves: one row per request, for the
    served attempt only; with a hard limit of three requests' cost, six requests get
    200 x3 then 402 x3 and the spend is exactly three served attempts (one reservation
    per client request, never one per attempt; the failed attempt cost nothing)."""
    gateway, fake, sqlite_path, tenants = pipes
    tenant = tenants["budget"]
    cost = request_cost(REQUEST_BODY)
    fake.clear()
    statuses = []
    for _ in range(6):
        try:
            chat(gateway, tenant.token)
            statuses.append(200)
        except openai.APIStatusError as exc:
            statuses.append(exc.status_code)
    assert statuses == [200, 200, 200, 402, 402, 402]
    billed = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
    assert [r.status for r in billed] == ["ok"] * 3 and all(r.model == "gpt-4o-mini" for r in billed)
    assert sum(r.cost_nano_usd or 0 for r in billed) == 3 * cost
    seen = calls(fake)
    # 503 then served, twice; then the always-503 target's circuit is open (2 failures)
    # and the third request goes straight to the second target; refusals reach nobody.
    assert [r.header("x-fake-status") for r in seen] == ["503", None, "503", None, None]


def test_429_retry_after_is_honoured_for_the_same_target(pipes: Any) -> None:
    gateway, fake, sqlite_path, tenants = pipes
    tenant = tenants["one"]
    fake.clear()
    started = time.monotonic()
    raw = chat(gateway, tenant.token, {"x-fake-fail-first": "1", "x-fake-fail-key": uuid.uuid4().hex,
                                       "x-fake-status": "429", "x-fake-retry-after": "0.4"})  # fmt: skip
    elapsed = time.monotonic() - started
    assert raw.parse().choices[0].message.content
    assert elapsed >= 0.4 * 0.95, elapsed
    assert len(calls(fake)) == 2  # the one target, twice
    billed = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
    assert len(billed) == 1 and billed[0].status == "ok"


def test_circuit_opens_is_skipped_then_recovers_and_shows_in_the_admin_api(pipes: Any) -> None:
    gateway, fake, sqlite_path, tenants = pipes
    tenant = tenants["flaky"]
    flaky = lambda: [r for r in calls(fake) if r.header("x-fake-fail-key") == FLAKY_KEY]  # noqa: E731
    fake.clear()
    for _ in range(2):  # the flaky target fails twice (threshold 2): its circuit opens
        chat(gateway, tenant.token)
    assert len(flaky()) == 2 and len(calls(fake)) == 4
    chat(gateway, tenant.token)
    assert len(flaky()) == 2 and len(calls(fake)) == 5  # skipped, not tried first

    status, body = admin_get(gateway, "/circuits")
    assert status == 200
    view = json.loads(body)
    assert OPENAI_SERVER_KEY.encode() not in body and b"sk-unused" not in body
    mine = [c for c in view["circuits"] if c["provider"] == "flaky"]
    assert len(mine) == 1, view
    circuit = mine[0]
    assert circuit["state"] == "open" and circuit["consecutive_failures"] == 2
    assert circuit["model"] == "gpt-4o-mini" and circuit["key_id"]
    assert 0 < circuit["cooldown_left_s"] <= 1 and circuit["opened_at"] == pytest.approx(time.time(), abs=10)
    assert view["open"] >= 1 and isinstance(view["pid"], int)

    time.sleep(1.1)  # the cooldown: one probe goes to the flaky target, which answers now
    raw = chat(gateway, tenant.token)
    assert len(flaky()) == 3 and len(calls(fake)) == 6
    assert raw.parse().choices[0].message.content
    circuit = next(c for c in json.loads(admin_get(gateway, "/circuits")[1])["circuits"]
                   if c["provider"] == "flaky")  # fmt: skip
    assert circuit["state"] == "closed" and circuit["consecutive_failures"] == 0 and circuit["opens"] == 1
    billed = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
    assert len(billed) == 4 and {r.status for r in billed} == {"ok"}


def test_a_first_byte_timeout_fails_over(pipes: Any) -> None:
    """The first target sends nothing within the first-byte timeout (1 s here): the
    second serves; one row, for the second target."""
    gateway, fake, sqlite_path, tenants = pipes
    tenant = tenants["stalled"]
    fake.clear()
    started = time.monotonic()
    raw = chat(gateway, tenant.token)
    elapsed = time.monotonic() - started
    assert raw.parse().choices[0].message.content
    assert 0.95 <= elapsed < 2.5, elapsed  # the timeout, then the second target at once
    assert [r.header("x-fake-latency-ms") for r in calls(fake)] == ["3000", None]
    billed = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
    assert len(billed) == 1 and billed[0].status == "ok"
    # the timed-out attempt is on the row (not priced: "Not metered", docs/security.md)
    assert (billed[0].attempts, billed[0].attempt_trail) == (2, "timeout,200")
    circuit = circuit_of(pipes, "stalled", tenant)
    assert circuit["state"] == "closed" and circuit["consecutive_failures"] == 1


def test_a_first_byte_timeout_under_a_hard_limit_is_not_retried(pipes: Any) -> None:
    """Was: under a hard limit too, a first-byte timeout failed over to the next target,
    and the row was the second attempt's -- while the provider may go on generating the
    first and bill it (one reservation, two billed attempts, one on the row).  Now the
    request ends in the 504, charged its reservation (``hard_limit_bound``), nothing sent
    to the next target; without a hard limit it fails over as above."""
    gateway, fake, sqlite_path, tenants = pipes
    tenant = tenants["stalled_limited"]
    fake.clear()
    with pytest.raises(openai.APIStatusError) as caught:
        chat(gateway, tenant.token)
    assert caught.value.status_code == 504
    assert [r.header("x-fake-latency-ms") for r in calls(fake)] == ["3000"]
    for _ in range(100):
        billed = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
        if billed:
            break
        time.sleep(0.05)
    assert [(r.status, r.cost_nano_usd, r.price_entry) for r in billed] == [
        ("upstream_failed", request_cost(REQUEST_BODY), "hard_limit_bound")]


def test_a_timeout_not_retried_under_a_hard_limit_counts_on_the_targets_circuit(pipes: Any) -> None:
    """The 504 above is a failure of the stalled target all the same: with a threshold of
    2 its circuit opens, and the next request goes to the pipe's second target at once
    (before 2026-12-06 the timeout was not recorded: every request waited for the stalled
    target and got a 504)."""
    gateway, fake, sqlite_path, tenants = pipes
    tenant = tenants["stalled_limited_circuit"]
    statuses = []
    for _ in range(3):  # 504, 504 (the second failure opens the circuit), 200
        fake.clear()
        try:
            chat(gateway, tenant.token)
            statuses.append(200)
            break
        except openai.APIStatusError as exc:
            statuses.append(exc.status_code)
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {504} and len(statuses) >= 2, statuses
    assert [r.header("x-fake-latency-ms") for r in calls(fake)] == [None]  # (straight to the second)


def test_streams_fail_over_too(pipes: Any) -> None:
    """A stream whose first attempt is refused (429, ``Retry-After: 0``) is retried: the
    client sees one clean stream (nothing of the refusal), billed once."""
    gateway, fake, sqlite_path, tenants = pipes
    tenant = tenants["one_stream"]
    before = len([r for r in rows(sqlite_path) if r.project_id == tenant.project_id])
    fake.clear()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as client:
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers={"x-fake-fail-first": "1", "x-fake-fail-key": uuid.uuid4().hex, "x-fake-status": "429",
                           "x-fake-retry-after": "0"},
        ))  # fmt: skip
    assert chunks and len(calls(fake)) == 2
    billed = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
    assert len(billed) == before + 1 and {r.status for r in billed} == {"ok"}
    # the client asked no usage: the usage chunk the gateway asked for upstream is not relayed
    assert all(c.usage is None for c in chunks) and chunks[-1].choices


def test_admin_circuits_requires_the_admin_key(pipes: Any) -> None:
    gateway = pipes[0]
    assert admin_get(gateway, "/circuits", key=None)[0] == 401
    assert admin_get(gateway, "/circuits", key="wrong-key")[0] == 401


def test_a_probe_that_never_reports_is_given_up_after_a_cooldown() -> None:
    """A half-open circuit's probe whose client left (no success, no failure recorded)
    must not keep the target out for good."""
    c = CircuitBreaker(failure_threshold=1, cooldown_s=10)
    c.record_failure(0)
    assert c.allow(10)  # the probe
    assert not c.available(15) and not c.allow(15)  # one probe at a time
    assert c.available(20) and c.allow(20)  # the first never reported: another probe
    c.record_success()
    assert c.state(21) == "closed"
    (view,) = circuit_views([(("p", "m", ""), c)], 21.0, 1000.0)
    assert view["state"] == "closed" and view["key_id"] is None and view["opened_at"] is None


def test_managed_retry_policy_is_validated_with_field_paths(tmp_path: Path) -> None:
    base = "version: v0.4.0\nmodel_providers:\n  - model: openai/gpt-4o\n    access_key: k\n"
    config = parse_config(base + f"plano_fast:\n  managed_retry_policy: {POLICY}\n", env={})
    assert config.settings.managed_retry_policy is not None
    with pytest.raises(ConfigError, match=r"managed_retry_policy\.default_strategy"):
        parse_config(base + "plano_fast:\n  managed_retry_policy: {default_strategy: sideways}\n", env={})
    with pytest.raises(ConfigError, match=r"managed_retry_policy: .*fallback_models cannot be set"):
        parse_config(base + "plano_fast:\n  managed_retry_policy: {fallback_models: [openai/gpt-4o]}\n", env={})
    with pytest.raises(ConfigError, match=r"circuit_cooldown_s"):
        parse_config(base + "plano_fast:\n  circuit_cooldown_s: 0\n", env={})
