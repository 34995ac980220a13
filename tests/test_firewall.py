"""Firewall mode end to end: clients keep their own keys; the gateway identifies them by
the key's SHA-256, forwards untouched, meters, and enforces soft limits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.store import Store, open_store
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import GPT_4O_MINI_COST, USAGE_HEADERS, wait_rows

USER_KEY = "sk-fw-user-key-0123456789abcdef"
ANT_KEY = "sk-ant-fw-user-key-fedcba9876543210"
OTHER_KEY = "sk-not-registered-at-all-000000"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def with_store(sqlite_path: str, fn: Callable[[Store], Any]) -> Any:
    async def go() -> Any:
        async with open_store(None, sqlite_path) as store:
            return await fn(store)

    return asyncio.run(go())


def setup_keys(sqlite_path: str, fake_url: str, egress_ip: str | None = None) -> str:
    """Register the test keys straight in the store; returns the project id."""

    async def go(store: Store) -> str:
        project = await store.create_project("fw-project")
        await store.register_api_key(sha(USER_KEY), project.id, "openai", fake_url, "user key",
                                     egress_ip)
        await store.register_api_key(sha(ANT_KEY), project.id, "anthropic", fake_url, "ant key")
        return project.id

    return str(with_store(sqlite_path, go))


@pytest.fixture
def firewall(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> tuple[GatewayProcess, str, str]:
    """A firewall-mode gateway with two registered keys; (gateway, sqlite path, project)."""
    sqlite_path = str(tmp_path / "plano_config_0.db")
    projects: list[str] = []
    # Registered after migrate and before the gateway starts: its registry loads them.
    gateway = make_gateway(
        {"mode": "firewall", "key_registry_reload_s": 1, "access_log": str(tmp_path / "access.jsonl")},
        before_start=lambda: projects.append(setup_keys(sqlite_path, fake.url)),
    )
    return gateway, sqlite_path, projects[0]


def _client(gateway: GatewayProcess, key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={**headers, "content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


def _strip_volatile(chunk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in chunk.items() if k not in ("id", "created", "obfuscation")}


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            events.append(_strip_volatile(json.loads(line[6:])))
    return events


def test_key_passes_through_untouched_and_usage_is_billed_to_its_project(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread
) -> None:
    gateway, sqlite_path, project = firewall
    fake.clear()
    with _client(gateway) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            extra_headers={**USAGE_HEADERS, "x-xproxy-project-id": "forged-project",
                           "x-xproxy-firewall-mode": "false"},
        )
    assert reply.choices[0].message.content
    seen = [r for r in fake.requests if r.path == "/v1/chat/completions"][-1]
    assert seen.header("authorization") == f"Bearer {USER_KEY}"
    assert not [name for name, _ in seen.headers if name.startswith("x-xproxy-")]
    rows = wait_rows(None, sqlite_path, 1)
    assert len(rows) == 1
    row = rows[0]
    assert row.project_id == project  # not the forged one
    assert row.key_hash == sha(USER_KEY)
    assert (row.input_tokens, row.cache_read_tokens, row.output_tokens) == (1000, 200, 100)
    assert row.cost_nano_usd == GPT_4O_MINI_COST
    assert (row.attempts, row.attempt_trail) == (1, None)  # one upstream attempt (schema 7)


@pytest.mark.parametrize("client_asks_usage", [False, True])
def test_stream_is_identical_to_the_providers(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread, client_asks_usage: bool
) -> None:
    gateway, sqlite_path, _ = firewall
    body: dict[str, Any] = {
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]
    }
    if client_asks_usage:
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {USER_KEY}", "x-fake-events": "5", **USAGE_HEADERS}
    direct = post(fake.url + "/v1/chat/completions", body, headers)
    through = post(gateway.url + "/v1/chat/completions", body, headers)
    assert _sse_events(through) == _sse_events(direct)
    assert through.endswith(b"data: [DONE]\n\n")
    # Either way the gateway billed the stream from the usage chunk it asked for.
    rows = wait_rows(None, sqlite_path, 1)
    assert rows[0].streaming and rows[0].cost_nano_usd == GPT_4O_MINI_COST


def test_anthropic_sdk_through_firewall(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread
) -> None:
    gateway, sqlite_path, _ = firewall
    with anthropic.Anthropic(base_url=gateway.url, api_key=ANT_KEY, max_retries=0) as client:
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=32, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            final = stream.get_final_message()
    assert final.usage.output_tokens > 0
    rows = wait_rows(None, sqlite_path, 1)
    assert rows[0].provider == "anthropic" and rows[0].output_tokens == final.usage.output_tokens


def test_unregistered_key_never_reaches_the_provider(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread
) -> None:
    gateway, _, _ = firewall
    fake.clear()
    with _client(gateway, OTHER_KEY) as client, pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert "not registered" in str(err.value)
    # No key at all: 401 as well.
    req = urllib.request.Request(gateway.url + "/v1/chat/completions", data=b'{"model":"m"}')
    with pytest.raises(urllib.error.HTTPError) as no_key:
        urllib.request.urlopen(req, timeout=10)
    assert no_key.value.code == 401
    assert json.loads(no_key.value.read())["error"]["code"] == "invalid_api_key"
    assert not [r for r in fake.requests if not r.path.startswith("/_fake")]
    with anthropic.Anthropic(base_url=gateway.url, api_key=OTHER_KEY, max_retries=0) as ac, \
            pytest.raises(anthropic.AuthenticationError):
        ac.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                           messages=[{"role": "user", "content": "x"}])
    # each refusal has its access-log line (written every 0.2 s), without the key
    log_path = gateway.config_path.parent / "access.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        not log_path.exists() or len(log_path.read_text().splitlines()) < 3
    ):
        time.sleep(0.1)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(x["status"], x["outcome"], x["mode"], x["key"]) for x in lines] == [(401, "refused", "firewall", None)] * 3
    assert [x["endpoint"] for x in lines] == ["chat_completions", "chat_completions", "messages"]
    assert OTHER_KEY not in log_path.read_text() and OTHER_KEY[-12:] not in log_path.read_text()


def test_soft_limit_blocks_within_the_bound_and_raising_it_unblocks(
    firewall: tuple[GatewayProcess, str, str],
) -> None:
    """Flush, check (and registry) intervals are 1 s here: the bound must be under 3 s."""
    gateway, sqlite_path, project = firewall
    limit = 3 * GPT_4O_MINI_COST  # the third request reaches it

    async def set_limit(store: Store, nano: int = limit) -> None:
        await store.set_spending_limit("project", project, "total", nano, "soft")

    with_store(sqlite_path, set_limit)
    with _client(gateway) as client:
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                extra_headers=USAGE_HEADERS,
            )
        crossed = time.monotonic()
        blocked_after = None
        while time.monotonic() - crossed < 10:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                    extra_headers=USAGE_HEADERS,
                )
            except openai.RateLimitError as exc:
                blocked_after = time.monotonic() - crossed
                assert exc.body["code"] == "spending_limit_exceeded"  # type: ignore[index]
                assert "exceeded its spending limit" in str(exc)
                break
            time.sleep(0.05)
    assert blocked_after is not None, "never blocked"
    print(f"soft-limit delay: {blocked_after:.2f} s (flush 1 s + check 1 s intervals)")
    assert blocked_after < 3.0

    with_store(sqlite_path, lambda store: set_limit(store, 100 * limit))
    deadline = time.monotonic() + 5
    with _client(gateway) as client:
        while True:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                )
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "raising the limit did not unblock"
                time.sleep(0.1)


def test_egress_address_is_bound_per_key(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    gateway = make_gateway({"mode": "firewall", "key_registry_reload_s": 1})
    keys = {"sk-egress-two-000000000000": "127.0.0.2", "sk-egress-three-0000000000": "127.0.0.3"}

    async def go(store: Store) -> None:
        project = await store.create_project("egress")
        for key, ip in keys.items():
            await store.register_api_key(sha(key), project.id, "openai", fake.url, None, ip)

    with_store(sqlite_path, go)
    deadline = time.monotonic() + 10  # the next registry reload (1 s) has both keys
    for key, ip in keys.items():
        with _client(gateway, key) as client:
            while True:
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                    )
                    break
                except openai.AuthenticationError:  # (not loaded yet: refused, nothing sent)
                    assert time.monotonic() < deadline, "the keys never loaded"
                    time.sleep(0.05)
        assert raw.headers["x-fake-peer"].split(":")[0] == ip


def test_no_raw_key_anywhere(firewall: tuple[GatewayProcess, str, str]) -> None:
    gateway, sqlite_path, _ = firewall
    with _client(gateway) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with _client(gateway, OTHER_KEY) as client, pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    wait_rows(None, sqlite_path, 1)
    gateway.stop()
    assert OTHER_KEY not in str(err.value.body)
    everything = gateway.log_text() + Path(sqlite_path).read_bytes().decode("latin-1")
    for wal in Path(sqlite_path).parent.glob("*.db-wal"):
        everything += wal.read_bytes().decode("latin-1")
    for key in (USER_KEY, ANT_KEY, OTHER_KEY):
        assert key not in everything


def test_admin_api_wired_into_the_gateway(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    """Registering through the gateway's own admin API takes effect at once (the local
    registry reloads on the change), and the admin API refuses calls without its key."""
    admin_key = "admin-key-for-tests-0123456789"
    gateway = make_gateway(
        {"mode": "firewall", "admin_port": 0, "admin_key": "$PLANO_FAST_TEST_ADMIN"},
        env={"PLANO_FAST_TEST_ADMIN": admin_key},
    )
    assert gateway.admin_port
    admin = f"http://127.0.0.1:{gateway.admin_port}"

    def call(method: str, path: str, body: dict[str, Any] | None = None,
             key: str | None = admin_key) -> tuple[int, Any]:
        req = urllib.request.Request(
            admin + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"content-type": "application/json",
                     **({"authorization": f"Bearer {key}"} if key else {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert call("GET", "/budget/blocked", key=None)[0] == 401
    assert call("GET", "/api-keys", key="wrong")[0] == 401
    status, created = call("POST", "/api-keys/register", {
        "api_key": USER_KEY, "provider": "openai", "upstream_url": fake.url, "project": "via-admin",
    })
    assert status == 201, created
    assert USER_KEY not in json.dumps(created)
    with _client(gateway) as client:  # no wait: the registry reloaded on the change
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    status, auth = call("GET", "/auth/check", key=USER_KEY)
    assert status == 200
    assert auth.get("x-xproxy-api-key-hash") or auth.get("X-Xproxy-Api-Key-Hash")
    assert call("GET", "/budget/blocked")[1]["blocked"] == []
    req = urllib.request.Request(admin + "/metrics", headers={"authorization": f"Bearer {admin_key}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        metrics = resp.read().decode()
    assert "plano_fast_key_registry_size 1" in metrics
    assert "# TYPE plano_fast_rows_unpriced_unknown counter" in metrics
    assert USER_KEY not in metrics and USER_KEY not in gateway.log_text()
