"""A stop while requests wait for a rate limit's Redis check: once ``drain_timeout_s`` is
over each gets the shutdown 503 in its client's API format (``Connection: close``, its
request id), as the other registered waits do (tests/test_stop_waiting.py), its row
``gateway_stopped``, nothing forwarded.  Before, such a request was in no registry: its
connection was aborted with no answer.

The Redis is a peer that accepts and never answers; the backend's own timeout (1 s) is
raised for the test so the wait lasts past the drain whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.ratelimit import RedisBackend
from plano_fast.store.migrate import prepare_schema
from tests.gateway_proc import write_config
from tests.test_billing_e2e import read_rows
from tests.test_billing_faults import ledger
from tests.test_stop_unanswered import _answer, _raw, _read_all
from tests.test_stop_waiting import SilentPeer

LIMITS = (
    "ratelimits:\n"
    "  - model: gpt-4o-mini\n    selector: {key: x-user-id, value: \"*\"}\n    limit: {requests: 100, unit: hour}\n"
    "  - model: claude-sonnet-4-6\n    selector: {key: x-user-id, value: \"*\"}\n"
    "    limit: {requests: 100, unit: hour}\n"
)

REQUESTS = {
    "openai": _raw(b"/v1/chat/completions", b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
                   b"x-user-id: u1\r\n"),
    "anthropic": _raw(b"/v1/messages",
                      b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}',
                      b"x-user-id: u1\r\n"),
}


@pytest.fixture
def silent_redis() -> Iterator[SilentPeer]:
    peer = SilentPeer()
    yield peer
    peer.close()


def _stop_while_waiting(gateway: Any, requests: dict[str, bytes]) -> dict[str, tuple[str, Any]]:
    """Send ``requests``, wait until each waits for its check (the registry holds it -- on
    main it never does, so this gives up after 5 s and the answers tell), stop the gateway
    (drain 1 s, then the waits are answered): each client's 503 request id and error."""
    limits = gateway.gateway.ctx.ratelimits
    assert limits is not None and isinstance(limits.backend, RedisBackend)
    limits.backend.client.timeout_s = 60.0  # (the wait outlasts the drain, however slow the machine)
    socks: dict[str, socket.socket] = {}
    try:
        for kind, raw in requests.items():
            socks[kind] = socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=20)
            socks[kind].sendall(raw)

        async def all_waiting() -> None:
            while len(gateway.gateway.ctx.waiting) < len(requests):
                await asyncio.sleep(0.01)

        try:
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(all_waiting(), 5), gateway.loop).result(10)
        except TimeoutError:
            pass
    finally:
        # Once the waits are answered, the backend's timeout back to short: its close waits
        # that long for the silent peer.
        stopping = asyncio.run_coroutine_threadsafe(gateway.gateway.stop(1.0), gateway.loop)
        answers = {kind: _read_all(sock) for kind, sock in socks.items()}
        limits.backend.client.timeout_s = 0.2
        stopping.result(30)
        gateway.loop.call_soon_threadsafe(gateway.loop.stop)
        gateway.thread.join(10)
        gateway.loop.close()
        for sock in socks.values():
            sock.close()
    errors: dict[str, tuple[str, Any]] = {}
    for kind, answer in answers.items():
        headers, body = _answer(answer)
        errors[kind] = (headers[b"x-plano-request-id"].decode(), json.loads(body))
    return errors


def test_sigterm_answers_503_to_requests_waiting_for_redis(
    fake: FakeProviderThread, tmp_path: Path, silent_redis: SilentPeer
) -> None:
    """Config mode: the check's reply callback (``admitted_forward``), no task of its own."""
    from tests.test_billing_faults import InProcessGateway

    config = write_config(tmp_path / "plano_config.yaml", fake.port,
                          {"redis_url": f"redis://127.0.0.1:{silent_redis.port}"}, extra_providers=LIMITS)
    asyncio.run(prepare_schema(None, str(config.with_suffix(".db"))))
    fake.clear()
    errors = _stop_while_waiting(InProcessGateway(config), REQUESTS)
    assert errors["openai"][1]["error"]["type"] == "service_unavailable_error", errors
    assert errors["anthropic"][1]["type"] == "error", errors
    assert errors["anthropic"][1]["error"]["type"] == "overloaded_error", errors
    assert not [r for r in fake.requests if not r.path.startswith("/_fake")]  # never forwarded
    rows = {row.request_id: row for row in read_rows(None, str(config.with_suffix(".db")))}
    for request_id, _ in errors.values():
        row = rows[request_id]
        assert (row.status, row.http_status, row.attempts) == ("gateway_stopped", 503, 0), row


def test_sigterm_answers_503_to_a_managed_request_waiting_for_redis(
    fake: FakeProviderThread, tmp_path: Path, silent_redis: SilentPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Managed mode: the check awaited in the request's task (``admit_awaited``), before its
    reservation: nothing reserved, nothing forwarded."""
    from tests.test_billing_faults import InProcessGateway
    from tests.test_managed import DEFAULT_PIPE, MASTER_KEY, provision

    monkeypatch.setenv("PLANO_FAST_MASTER_KEY", MASTER_KEY)
    config = write_config(tmp_path / "plano_config.yaml", fake.port,
                          {"managed": "true", "managed_reload_s": 600,
                           "redis_url": f"redis://127.0.0.1:{silent_redis.port}"}, extra_providers=LIMITS)
    sqlite_path = str(config.with_suffix(".db"))
    asyncio.run(prepare_schema(None, sqlite_path))
    tenant = provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=10**9)
    fake.clear()
    errors = _stop_while_waiting(InProcessGateway(config), {"managed": _raw(
        b"/v1/chat/completions", b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
        b"x-user-id: u1\r\nauthorization: Bearer " + tenant.token.encode() + b"\r\n")})
    assert errors["managed"][1]["error"]["type"] == "service_unavailable_error", errors
    assert not [r for r in fake.requests if not r.path.startswith("/_fake")]  # never forwarded
    row = {r.request_id: r for r in read_rows(None, sqlite_path)}[errors["managed"][0]]
    assert (row.status, row.http_status, row.attempts) == ("gateway_stopped", 503, 0), row
    assert ledger(None, sqlite_path)["open"] == 0  # (nothing reserved)
