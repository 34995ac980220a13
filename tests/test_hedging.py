"""Hedged requests (issue 20, optional): ``retry_policy.hedge_after_ms`` in config mode,
over real sockets with the OpenAI SDK against the fake provider."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.fake_faults import Fault
from benchmarks.fake_provider import FakeProviderThread
from plano_fast.config import ConfigError, parse_config
from tests.gateway_proc import GatewayProcess
from tests.test_failover import rows_for

ADMIN_KEY = "admin-key-for-hedging-tests-0000000000"
#: the slow target's answer: far later than a hedge sent at 100 ms can answer, however
#: loaded the machine (the gateway cancels the attempt it no longer needs, and the fake
#: provider drops its handler then: it costs no wait); under the listener's 5 s timeout
#: (its stream, never hedged, is relayed)
SLOW_MS = 3_000


def providers(base: str) -> str:
    return f"""\
  - name: slow
    model: openai/gpt-4.1
    base_url: {base}
    access_key: sk-server-openai-key
    headers: {{x-fake-latency-ms: "{SLOW_MS}"}}
    retry_policy:
      fallback_models: [openai/gpt-4o-mini]
      default_strategy: same_provider
      hedge_after_ms: 100
  - name: quick
    model: openai/gpt-4.1-mini
    base_url: {base}
    access_key: sk-server-openai-key
    retry_policy:
      fallback_models: [openai/gpt-4o-mini]
      default_strategy: same_provider
      hedge_after_ms: 500
  - name: flaky
    model: openai/gpt-4.1-nano
    base_url: {base}
    access_key: sk-server-openai-key
    headers: {{x-fake-latency-ms: "300"}}
    retry_policy:
      fallback_models: [openai/gpt-4o-mini]
      default_strategy: same_provider
      default_max_attempts: 2
      hedge_after_ms: 100
  - name: stuck
    model: openai/o3-mini
    base_url: {base}
    access_key: sk-server-openai-key
    first_byte_timeout: 300ms
    retry_policy:
      fallback_models: [openai/gpt-4o-mini]
      default_strategy: same_provider
      default_max_attempts: 2
      hedge_after_ms: 100
"""


@pytest.fixture
def hedged(make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path) -> Any:
    gateway = make_gateway({"admin_port": 0, "admin_key": ADMIN_KEY}, extra_providers=providers(fake.url))
    return gateway, str(tmp_path / "plano_config_0.db")


def calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


def metric(gateway: GatewayProcess, name: str) -> float:
    req = urllib.request.Request(f"http://127.0.0.1:{gateway.admin_port}/metrics",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"plano_fast_{name} "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def circuit_failures(gateway: GatewayProcess, model: str) -> int:
    """The consecutive failures of ``model``'s circuit (0 when it has none yet)."""
    req = urllib.request.Request(f"http://127.0.0.1:{gateway.admin_port}/circuits",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        circuits = json.loads(resp.read())["circuits"]
    return sum(int(c["consecutive_failures"]) for c in circuits if c["model"] == model)


def test_a_slow_first_attempt_is_hedged_and_the_first_answer_wins(
    hedged: Any, fake: FakeProviderThread
) -> None:
    """The first target answers after 3 s; after 100 ms a hedge goes to the fallback,
    which answers at once: the client has the fallback's answer long before the slow one,
    the slow attempt is cancelled (its connection closed with the answer still to come:
    it never answers, so it is never billed), and the one row is the fallback's."""
    gateway, sqlite_path = hedged
    fake.clear()
    started = time.monotonic()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        reply = client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    elapsed = time.monotonic() - started
    assert reply.model == "gpt-4o-mini" and reply.choices[0].message.content
    assert elapsed < SLOW_MS / 1000 / 2, elapsed  # not the slow answer
    seen = calls(fake)
    assert [r.json()["model"] for r in seen] == ["gpt-4.1", "gpt-4o-mini"]
    (row,) = rows_for(sqlite_path, 1)
    assert row.model == "gpt-4o-mini" and row.status == "ok"
    deadline = time.monotonic() + 10
    while fake.abandoned < 1 and time.monotonic() < deadline:  # the cancel reaches the fake
        time.sleep(0.01)
    assert fake.abandoned == 1  # the loser's answer never comes
    # and its cancel wrote no row: one written then would be flushed before the row of a
    # request made after it
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "after"}])
    assert [r.model for r in rows_for(sqlite_path, 2)] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert metric(gateway, "upstream_hedges") == 1 and metric(gateway, "upstream_hedges_won") == 1


def test_no_hedge_when_the_first_attempt_answers_in_time_or_streams(
    hedged: Any, fake: FakeProviderThread
) -> None:
    gateway, sqlite_path = hedged
    fake.clear()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        reply = client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.model == "gpt-4.1-mini"
        # streams are never hedged: the slow target's stream is the one relayed
        chunks = list(client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers={"x-fake-latency-ms": "300"},
        ))  # fmt: skip
    assert chunks
    assert [r.json()["model"] for r in calls(fake)] == ["gpt-4.1-mini", "gpt-4.1"]
    time.sleep(0.6)  # past the quick target's hedge delay: nothing more was sent
    assert len(calls(fake)) == 2
    assert len(rows_for(sqlite_path, 2)) == 2
    assert metric(gateway, "upstream_hedges") == 0


def test_a_first_attempt_failing_while_its_hedge_is_in_flight_adopts_the_hedge(
    hedged: Any, fake: FakeProviderThread
) -> None:
    """2 attempts in all, a hedge after 100 ms: the first attempt answers 503 after 300 ms
    while the hedge to the fallback is stalled.  The plan's next attempt is the fallback,
    where the hedge already is: the hedge becomes the request's attempt (its answer, once
    the stall ends, is the client's) -- no second request to the fallback, which the
    provider would bill as well.  (Before: the hedge was cancelled and a new request sent.)"""
    gateway, sqlite_path = hedged
    fake.clear()
    fake.faults.add(Fault("status", 503), 1, model="gpt-4.1-nano")
    fake.faults.add(Fault("stall", stall_ms=700), 1, model="gpt-4o-mini")
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="gpt-4.1-nano", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        fake.faults.clear()
    assert reply.model == "gpt-4o-mini" and reply.choices[0].message.content
    # exactly one request per target: the first attempt, the hedge (adopted)
    assert [r.json()["model"] for r in calls(fake)] == ["gpt-4.1-nano", "gpt-4o-mini"]
    (row,) = rows_for(sqlite_path, 1)
    assert row.model == "gpt-4o-mini" and row.status == "ok"
    assert (row.attempts, row.attempt_trail) == (2, "503,200")
    assert metric(gateway, "upstream_hedges") == 1 and metric(gateway, "upstream_hedges_won") == 0


def test_a_hedge_sent_then_cancelled_is_on_the_row_and_counted(
    hedged: Any, fake: FakeProviderThread
) -> None:
    """The request's own attempt answers at 800 ms, its hedge (sent at 500 ms) is stalled:
    the hedge is cancelled after the provider got it, which may bill what it generated.
    The one row is the own attempt's, priced as ever, and shows both attempts
    (``hedged,200``, as for the slower attempt when a hedge wins); /metrics counts the
    lost hedge (before 2026-12-06 the row said 1 attempt and nothing counted it)."""
    gateway, sqlite_path = hedged
    fake.clear()
    fake.faults.add(Fault("stall", stall_ms=800), 1, model="gpt-4.1-mini")
    fake.faults.add(Fault("stall", stall_ms=1500), 1, model="gpt-4o-mini")
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        fake.faults.clear()
    assert reply.model == "gpt-4.1-mini"
    assert [r.json()["model"] for r in calls(fake)] == ["gpt-4.1-mini", "gpt-4o-mini"]
    (row,) = rows_for(sqlite_path, 1)
    assert (row.model, row.status, row.attempts, row.attempt_trail) == ("gpt-4.1-mini", "ok", 2, "hedged,200")
    assert row.priced and (row.cost_nano_usd or 0) > 0
    assert metric(gateway, "upstream_hedges") == 1 and metric(gateway, "upstream_hedges_won") == 0
    assert metric(gateway, "upstream_hedges_lost") == 1


@pytest.mark.parametrize("pooled", [False, True])
def test_a_first_attempt_timing_out_while_its_hedge_is_in_flight_adopts_the_hedge(
    hedged: Any, fake: FakeProviderThread, pooled: bool
) -> None:
    """The same when the first attempt fails with no response at all (its first-byte
    timeout of 300 ms fires while the hedge, sent at 100 ms, is still waiting for its
    answer): one request per target, the hedge's answer relayed.  ``pooled``: a request
    before leaves an idle connection, so the first attempt is sent at once (the exchange
    lives in callbacks, no task) rather than from a task that opens a connection."""
    gateway, sqlite_path = hedged
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        if pooled:
            client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
        fake.clear()
        fake.faults.add(Fault("stall", stall_ms=3000), 1, model="o3-mini")
        fake.faults.add(Fault("stall", stall_ms=700), 1, model="gpt-4o-mini")
        try:
            reply = client.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": "hi"}])
        finally:
            fake.faults.clear()
    assert reply.model == "gpt-4o-mini" and reply.choices[0].message.content
    assert [r.json()["model"] for r in calls(fake)] == ["o3-mini", "gpt-4o-mini"]
    (row,) = [r for r in rows_for(sqlite_path, 1 + pooled) if r.model != "gpt-4.1-mini"]
    assert row.model == "gpt-4o-mini" and row.status == "ok"
    assert (row.attempts, row.attempt_trail) == (2, "timeout,200")


def test_a_reused_connection_closing_while_its_hedge_is_in_flight_adopts_the_hedge(
    hedged: Any, fake: FakeProviderThread
) -> None:
    """The first attempt goes out on a reused (pooled) connection, which the provider
    closes after 300 ms without a byte, while the hedge sent at 100 ms is stalled.  Was:
    "a reused connection died: once more on a fresh one" dropped the hedge after it was
    sent and sent the first target a second request (and, had that failed too, the plan's
    next attempt a second request to the hedge's target).  Now the hedge is adopted as for
    any other failure: exactly one request per target."""
    gateway, sqlite_path = hedged
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
        fake.clear()
        fake.faults.add(Fault("reset"), 1, model="gpt-4.1-nano")
        fake.faults.add(Fault("stall", stall_ms=700), 1, model="gpt-4o-mini")
        try:
            reply = client.chat.completions.create(model="gpt-4.1-nano", messages=[{"role": "user", "content": "hi"}])
            resets = fake.faults.counts["reset"]
        finally:
            fake.faults.clear()
    assert resets == 1  # the first attempt did fail
    assert [r.json()["model"] for r in calls(fake)] == ["gpt-4.1-nano", "gpt-4o-mini"]
    assert reply.model == "gpt-4o-mini" and reply.choices[0].message.content
    (row,) = [r for r in rows_for(sqlite_path, 2) if r.model != "gpt-4.1-mini"]
    assert row.model == "gpt-4o-mini" and row.status == "ok"
    assert row.attempts == 2, (row.attempts, row.attempt_trail)
    # A stale keep-alive connection is not the provider's fault: no circuit failure (was: 1,
    # so five such races opened a healthy target's circuit; without a hedge none is counted)
    assert circuit_failures(gateway, "gpt-4.1-nano") == 0


def test_hedge_after_ms_validates() -> None:
    base = "version: v0.4.0\nmodel_providers:\n  - model: openai/gpt-4o\n    access_key: k\n"
    ok = base + "    retry_policy: {hedge_after_ms: 250}\n"
    assert parse_config(ok, env={}).providers[0].retry_policy.hedge_after_ms == 250  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"retry_policy\.hedge_after_ms"):
        parse_config(base + "    retry_policy: {hedge_after_ms: 0}\n", env={})
    with pytest.raises(ConfigError, match=r"managed_retry_policy: .*config mode only"):
        parse_config(base + "plano_fast:\n  managed_retry_policy: {hedge_after_ms: 100}\n", env={})
