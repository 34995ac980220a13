"""Managed mode end to end: xproxy_ tokens, pipes, encrypted server-side keys, synchronous
billing, failover, and hard budgets that cannot be overshot across processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.managed.crypto import KeyCipher, generate_master_key, parse_master_key
from plano_fast.managed.state import new_token, token_hash
from plano_fast.store import CounterKey, PipeTarget, Store, open_store
from tests.gateway_proc import GatewayProcess

MASTER_KEY = generate_master_key()
OPENAI_SERVER_KEY = "sk-managed-openai-server-key-42"
ANTHROPIC_SERVER_KEY = "sk-ant-managed-server-key-42"
ENV = {"PLANO_FAST_MASTER_KEY": MASTER_KEY}


def store_call(database_url: str | None, sqlite_path: str, fn: Callable[[Store], Any]) -> Any:
    async def go() -> Any:
        async with open_store(database_url, sqlite_path) as store:
            return await fn(store)

    return asyncio.run(go())


@dataclass
class Tenant:
    project_id: str
    user_id: str
    token: str
    token_id: str


def provision(
    database_url: str | None,
    sqlite_path: str,
    targets: list[tuple[str, str | None, str | None]],
    *,
    limit_nano_usd: int | None = None,
    expires_at_ns: int | None = None,
) -> Tenant:
    """A project, user, encrypted keys, one pipe (provider, model, filter) and a token."""
    cipher = KeyCipher(parse_master_key(MASTER_KEY))

    async def go(store: Store) -> Tenant:
        project = await store.create_project("managed")
        user = await store.create_user("alice")
        keys = {}
        for provider, secret in (("openai", OPENAI_SERVER_KEY), ("anthropic", ANTHROPIC_SERVER_KEY)):
            ciphertext, nonce, key_id = cipher.encrypt(secret, provider)
            keys[provider] = await store.create_provider_key(
                provider, ciphertext, nonce, key_id, project_id=project.id
            )
        pipe_targets = []
        for name, model, model_filter in targets:
            provider = "anthropic" if "anthropic" in name or "claude" in name else "openai"
            pipe_targets.append(PipeTarget(name, model, model_filter, keys[provider].id))
        pipe = await store.create_pipe(project.id, "default", pipe_targets)
        token = new_token()
        row = await store.create_proxy_token(
            token_hash(token), project.id, user_id=user.id, pipe_id=pipe.id,
            expires_at_ns=expires_at_ns,
        )
        if limit_nano_usd is not None:
            await store.set_spending_limit("project", project.id, "total", limit_nano_usd, "hard")
        return Tenant(project.id, user.id, token, row.id)

    result: Tenant = store_call(database_url, sqlite_path, go)
    return result


DEFAULT_PIPE = [
    ("openai/gpt-4o-mini", None, "gpt-4o-mini*"),
    ("anthropic/claude-sonnet-4-6", None, "claude-*"),
]


@pytest.fixture
def managed(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> tuple[GatewayProcess, str, Tenant]:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1}, env=ENV,
        before_start=lambda: tenants.append(provision(None, sqlite_path, DEFAULT_PIPE)),
    )
    return gateway, sqlite_path, tenants[0]


def once_loaded(call: Callable[[], Any], timeout_s: float = 10) -> Any:
    """``call()`` (a request with a token provisioned just now) once the gateway's next
    reload knows the token: until then it is refused with a 401, which reaches no
    provider and writes no row."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "the token never loaded"
            time.sleep(0.05)


def rows(sqlite_path: str, database_url: str | None = None) -> list[Any]:
    return list(store_call(database_url, sqlite_path, lambda s: s.recent_usage(None, limit=10_000)))


def test_sdks_reach_the_provider_with_the_server_side_key(
    managed: tuple[GatewayProcess, str, Tenant], fake: FakeProviderThread
) -> None:
    gateway, sqlite_path, tenant = managed
    fake.clear()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        # Synchronous billing: the row exists the moment the response is complete.
        billed = rows(sqlite_path)
        assert len(billed) == 1 and billed[0].priced and billed[0].cost_nano_usd
        assert billed[0].token_id == tenant.token_id and billed[0].user_id == tenant.user_id
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        ))
        assert len(rows(sqlite_path)) == 2
    assert reply.choices[0].message.content and chunks
    seen = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert {r.header("authorization") for r in seen} == {f"Bearer {OPENAI_SERVER_KEY}"}
    # No bound in the request: the configured ceiling (4096) is the one sent upstream.
    assert [r.json()["max_completion_tokens"] for r in seen] == [4096, 4096]
    assert tenant.token not in json.dumps([r.headers for r in seen])

    with anthropic.Anthropic(base_url=gateway.url, api_key=tenant.token, max_retries=0) as ac:
        with ac.messages.stream(model="claude-sonnet-4-6", max_tokens=20,
                                messages=[{"role": "user", "content": "x"}]) as stream:
            final = stream.get_final_message()
        assert len(rows(sqlite_path)) == 3
    assert final.usage.output_tokens > 0
    ant = [r for r in fake.requests if r.path == "/v1/messages"][-1]
    assert ant.header("x-api-key") == ANTHROPIC_SERVER_KEY
    assert ant.header("authorization") is None


def test_a_client_gone_as_the_response_completes_still_leaves_its_row(
    managed: tuple[GatewayProcess, str, Tenant], fake: FakeProviderThread
) -> None:
    """The provider's last bytes and the client's goodbye reach the gateway in one turn of
    its loop (the gateway is stopped while both arrive): the response is complete, so its
    row is written although the exchange's task is cancelled by the departure (the settle
    starts from the upstream's callback, and the task's wait for it is what is cancelled).
    A regression test of that hand-off: it passes before it too (uvloop reports the reset
    a turn later, when the task already waits on the writer)."""
    gateway, sqlite_path, tenant = managed
    # A first request leaves a pooled provider connection: the one under test is then
    # forwarded at once and ended by its write's callback (no task), the common path.
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as sdk:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(rows(sqlite_path)) == 1
    fake.clear()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + tenant.token.encode() + b"\r\nx-fake-latency-ms: 300\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    client = socket.create_connection(("127.0.0.1", gateway.port))
    stopped = False
    try:
        client.sendall(request)
        deadline = time.monotonic() + 5
        while not [r for r in fake.requests if r.path == "/v1/chat/completions"]:
            assert time.monotonic() < deadline, "the request never reached the provider"
            time.sleep(0.005)
        os.kill(gateway.pids[0], signal.SIGSTOP)  # the provider answers into a stopped gateway
        stopped = True
        time.sleep(0.6)  # the answer (300 ms later) is in the gateway's socket buffer
        # ... and then the client's reset (a FIN alone is a half-close: still answered)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        time.sleep(0.05)
    finally:
        if stopped:
            os.kill(gateway.pids[0], signal.SIGCONT)
        client.close()
    deadline = time.monotonic() + 5
    billed = rows(sqlite_path)
    while len(billed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        billed = rows(sqlite_path)
    assert len(billed) == 2, gateway.log_text()[-2000:]
    assert billed[0].token_id == tenant.token_id and billed[0].priced and billed[0].cost_nano_usd


def test_the_end_of_the_answer_waits_for_the_commit_on_the_task_free_path(
    managed: tuple[GatewayProcess, str, Tenant], fake: FakeProviderThread
) -> None:
    """Another process holds the database's write lock: the gateway's write of the row
    waits (busy back-off), and so does the end of the answer -- a JSON body and a
    stream's [DONE] -- on the path where no task carries the request (a pooled provider
    connection, no hard limit: the done-callback of the write releases the end)."""
    gateway, sqlite_path, tenant = managed
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as sdk:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(rows(sqlite_path)) == 1
    for stream in (False, True):
        body = json.dumps({"model": "gpt-4o-mini", "stream": stream,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + tenant.token.encode() + b"\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        lock = sqlite3.connect(sqlite_path, isolation_level=None, timeout=5)
        lock.execute("BEGIN IMMEDIATE")
        try:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
                client.sendall(request)
                got = b""
                deadline = time.monotonic() + 1.0  # the provider answers in a few ms
                client.settimeout(0.05)
                while time.monotonic() < deadline:
                    try:
                        got += client.recv(65536)
                    except TimeoutError:
                        pass
                held = got
                lock.execute("COMMIT")
                client.settimeout(5)
                while not (got.endswith(b"}") if not stream else b"data: [DONE]" in got):
                    chunk = client.recv(65536)
                    assert chunk, got[-300:]
                    got += chunk
        finally:
            if lock.in_transaction:
                lock.execute("ROLLBACK")
            lock.close()
        if stream:
            assert b"data: [DONE]" not in held and b"chat.completion.chunk" in held
        else:
            assert b'"usage"' not in held  # the body (its last piece) waits with the end
        assert len(rows(sqlite_path)) == 2 + stream


def test_revoked_expired_and_wrong_model(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    gateway = make_gateway({"managed": "true", "managed_reload_s": 1}, env=ENV)
    live = provision(None, sqlite_path, DEFAULT_PIPE)
    expired = provision(None, sqlite_path, DEFAULT_PIPE, expires_at_ns=time.time_ns() - 1)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=live.token, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as wrong:  # (the reload that loads it has both)
            once_loaded(lambda: client.chat.completions.create(
                model="gpt-5", messages=[{"role": "user", "content": "x"}]))  # fmt: skip
        assert "gpt-4o-mini*" in str(wrong.value) and "claude-*" in str(wrong.value)
        store_call(None, sqlite_path, lambda s: s.revoke_proxy_token(live.token_id))
        deadline = time.monotonic() + 5  # bound: managed_reload_s (1 s here)
        while True:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                )
            except openai.AuthenticationError:
                break
            assert time.monotonic() < deadline, "revocation never took effect"
            time.sleep(0.2)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=expired.token, max_retries=0) as c2:
        with pytest.raises(openai.AuthenticationError):
            c2.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="xproxy_" + "A" * 43,
                       max_retries=0) as c3:
        with pytest.raises(openai.AuthenticationError):
            c3.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])


def test_failover_to_the_second_target_bills_the_one_that_served(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    with FakeProviderThread(status=503) as broken:
        extra = (
            f"  - name: broken-openai\n    model: openai/gpt-4o\n"
            f"    base_url: http://127.0.0.1:{broken.port}\n    access_key: sk-unused\n"
        )
        gateway = make_gateway({"managed": "true", "managed_reload_s": 1}, env=ENV,
                               extra_providers=extra)
        tenant = provision(None, sqlite_path, [
            # (provider, upstream model, client models served)
            ("broken-openai", "gpt-4o", "gpt-4o"),
            ("down/unreachable-model", "llama", "gpt-4o"),
            ("openai/gpt-4o-mini", "gpt-4o-mini", "gpt-4o"),
        ])
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as c:
            reply = once_loaded(lambda: c.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}]))  # fmt: skip
        assert len([r for r in broken.requests if r.path.endswith("/chat/completions")]) == 1
    assert reply.model == "gpt-4o-mini"
    [row] = rows(sqlite_path)
    assert row.model is not None and row.model.startswith("gpt-4o-mini") and row.status == "ok"
    # one row, every attempt on it: the 503, the refused connection (tried twice: a
    # connect failure is retried once on the same origin), the answer
    assert (row.attempts, row.attempt_trail) == (4, "503,connect_error,connect_error,200")


def test_provider_keys_are_encrypted_at_rest(managed: tuple[GatewayProcess, str, Tenant]) -> None:
    gateway, sqlite_path, tenant = managed
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as c:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    gateway.stop()
    dump = b"".join(p.read_bytes() for p in Path(sqlite_path).parent.glob("*.db*"))
    log = gateway.log_text()
    for secret in (OPENAI_SERVER_KEY, ANTHROPIC_SERVER_KEY, tenant.token, MASTER_KEY):
        assert secret.encode() not in dump
        assert secret not in log


def test_refuses_to_start_managed_mode_without_a_master_key(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    with pytest.raises(RuntimeError, match="PLANO_FAST_MASTER_KEY"):
        make_gateway({"managed": "true"}, env={"PLANO_FAST_MASTER_KEY": ""})


def test_hard_budget_refuses_with_402_when_the_reservation_does_not_fit(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    log_path = tmp_path / "access.jsonl"
    body = REQUEST_BODY
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1, "access_log": str(log_path)}, env=ENV,
        before_start=lambda: tenants.append(
            provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=3 * request_cost(body))
        ),
    )
    tenant = tenants[0]
    statuses = asyncio.run(fire(gateway.url, tenant.token, body, 6, concurrency=1))
    assert statuses == [200, 200, 200, 402, 402, 402]
    spent = sum(r.cost_nano_usd or 0 for r in rows(sqlite_path))
    assert spent == 3 * request_cost(body)
    # Every answer has its access-log line, the gateway's own refusals included (a 402
    # held budget, an unknown token's 401, a model the pipe does not serve: 400), and
    # no line holds a token.
    unknown = "xproxy_" + "B" * 43
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=unknown, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    gateway.stop()  # the writer's last lines are flushed at stop
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(line["status"], line["outcome"] == "refused") for line in lines] == [
        (200, False), (200, False), (200, False), (402, True), (402, True), (402, True),
        (401, True), (400, True),
    ]
    assert lines[3]["project"] == tenant.project_id and lines[7]["model"] == "gpt-5"
    assert tenant.token not in text and unknown not in text


# -- the overshoot test ----------------------------------------------------------------
# Pinned to the standard tier (``service_tier: "default"``): the tests that send these are
# about something other than the tier, and a pinned body is reserved at the standard
# prices, the ones the fake's answers name (``"service_tier":"default"``), so reservation
# == actual.  A body that does not pin its tier is reserved at the dearest tier its price
# entry lists (UNPINNED_BODY below; tests/test_managed_tiers.py).
REQUEST_BODY = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 50, "service_tier": "default",
     "messages": [{"role": "user", "content": "hi"}]},
    separators=(",", ":"),
).encode()
STREAM_BODY = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 50, "stream": True, "service_tier": "default",
     "messages": [{"role": "user", "content": "hi"}]},
    separators=(",", ":"),
).encode()
# No service_tier: the provider picks (an OpenAI project set to priority serves it at
# priority), so it is reserved at gpt-4o-mini's dearest listed tier, priority.
UNPINNED_BODY = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
    separators=(",", ":"),
).encode()
# gpt-4o-mini in the bundled price table, nano-USD per (input, output) token, by service
# tier (None: standard); priority is the dearest tier its entry lists
# (tests/test_managed_tiers.py checks these against the table).
GPT_4O_MINI_PRICES = {None: (150, 600), "priority": (250, 1_000)}


def request_cost(body: bytes, service_tier: str | None = None) -> int:
    """What the fake provider will report, priced at ``service_tier``: input = the body's
    bytes (the gateway's conservative bound, so reservation == actual at the tier reserved),
    output = max_tokens (50)."""
    input_price, output_price = GPT_4O_MINI_PRICES[service_tier]
    return len(body) * input_price + 50 * output_price


async def fire(
    url: str, token: str, body: bytes, count: int, concurrency: int, extra: dict[str, str] | None = None
) -> list[int]:
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "x-fake-input-tokens": str(len(body)),
        "x-fake-output-tokens": "50",
        **(extra or {}),
    }
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> int:
            async with semaphore:
                async with session.post(url + "/v1/chat/completions", data=body,
                                        headers=headers) as resp:
                    await resp.read()
                    return resp.status

        if concurrency == 1:
            return [await one() for _ in range(count)]
        return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.parametrize(
    ("body", "tier"),
    [(REQUEST_BODY, None), (STREAM_BODY, None), (UNPINNED_BODY, "priority")],
    ids=["json", "stream", "unpinned-answered-at-priority"],
)
def test_no_overshoot_with_400_concurrent_requests_over_4_processes(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str, tmp_path: Path, body: bytes, tier: str | None
) -> None:
    """Pinned to the standard tier and answered at it; or not pinned and answered at
    priority (the tier an OpenAI project set to priority picks): reserved at priority,
    billed at priority, the limit holds to within one request's cost."""
    cost = request_cost(body, tier)
    limit = 50 * cost  # about 50 requests fit
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "database_url": f'"{pg_dsn}"', "managed_reload_s": 1},
        env=ENV, workers=4,
        before_start=lambda: tenants.append(
            provision(pg_dsn, "", DEFAULT_PIPE, limit_nano_usd=limit)
        ),
    )
    tenant = tenants[0]
    extra = {"x-fake-service-tier": tier} if tier else {}
    statuses = asyncio.run(fire(gateway.url, tenant.token, body, 400, concurrency=400, extra=extra))
    served = statuses.count(200)
    assert set(statuses) <= {200, 402}, sorted(set(statuses))
    recorded = [r for r in rows("", pg_dsn) if r.project_id == tenant.project_id]
    spent = sum(r.cost_nano_usd or 0 for r in recorded)
    print(f"served {served} of 400, spent {spent} of limit {limit} (one request = {cost})")
    assert len(recorded) == served
    assert spent <= limit  # (unpinned at priority, reserved at standard: 81 served, 5,730,750 of 3,537,500)
    assert limit - spent < cost  # within one request's cost of the limit
    # billed at the tier the answers named; none above its reservation
    assert {r.price_entry for r in recorded} == {"openai/gpt-4o-mini" + (f"@{tier}" if tier else "")}
    assert not any(r.reservation_overrun_nano_usd for r in recorded)
    # Every answer was settled before it ended: nothing is still held, and the counter
    # (which the reservations were checked against) holds exactly the rows' cost.
    counter = store_call(pg_dsn, "", lambda s: s.get_counter(CounterKey("project", tenant.project_id, "total", 0)))
    assert counter is not None and (counter.spent_nano_usd, counter.reserved_nano_usd) == (spent, 0)


def test_no_overshoot_on_sqlite_with_2_processes_settling_without_a_task(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """SQLite, two worker processes, 60 hard-limited requests 20 at a time (about 20
    fit): the settlements run in the upstream's callback (``Store.settle_now``) or,
    while the other process holds the write lock, in a task; either way spend never
    passes the limit and every served answer's row is written, its reservation
    released, before it ended."""
    sqlite_path = str(tmp_path / "plano_config_0.db")
    cost = request_cost(REQUEST_BODY)
    limit = 20 * cost
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1}, env=ENV, workers=2,
        before_start=lambda: tenants.append(provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit)),
    )
    tenant = tenants[0]
    statuses = asyncio.run(fire(gateway.url, tenant.token, REQUEST_BODY, 60, concurrency=20))
    served = statuses.count(200)
    assert set(statuses) <= {200, 402}, sorted(set(statuses))
    recorded = [r for r in rows(sqlite_path) if r.project_id == tenant.project_id]
    spent = sum(r.cost_nano_usd or 0 for r in recorded)
    assert len(recorded) == served and served > 0
    assert spent <= limit
    counter = store_call(None, sqlite_path, lambda s: s.get_counter(CounterKey("project", tenant.project_id, "total", 0)))
    assert counter is not None and (counter.spent_nano_usd, counter.reserved_nano_usd) == (spent, 0)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Inserted as bytes, the rest of the body untouched (no re-encoding).
        (b'{"model":"m","messages":[{"role":"user","content":"h\xc3\xa9 \\"max\\""}]}',
         b'{"max_completion_tokens":4096,"model":"m","messages":[{"role":"user","content":"h\xc3\xa9 \\"max\\""}]}'),
        (b'  { "model": "m" }', b'  {"max_completion_tokens":4096, "model": "m" }'),
        (b"{ }", b'{"max_completion_tokens":4096 }'),
    ],
)
def test_output_ceiling_is_inserted_without_re_encoding(body: bytes, expected: bytes) -> None:
    from plano_fast.gateway.endpoints import CHAT_COMPLETIONS
    from plano_fast.gateway.modes.managed import _with_max_tokens

    out = _with_max_tokens(body, CHAT_COMPLETIONS, 4096, "openai")
    assert out == expected
    assert json.loads(out)["max_completion_tokens"] == 4096


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","max_completion_tokens":null}',  # present but null: overridden
        b'{"model":"m","max_completion\\u005ftokens":null}',  # an escaped spelling of the key
    ],
)
def test_output_ceiling_overrides_a_null_or_escaped_bound(body: bytes) -> None:
    """Where a byte insert could leave two members of the same name (which one a provider
    reads is its choice), the body is parsed and the one member set."""
    from plano_fast.gateway.endpoints import CHAT_COMPLETIONS
    from plano_fast.gateway.modes.managed import _with_max_tokens

    out = _with_max_tokens(body, CHAT_COMPLETIONS, 4096, "openai")
    pairs = json.loads(out, object_pairs_hook=lambda kv: kv)
    assert [v for k, v in pairs if k == "max_completion_tokens"] == [4096]
