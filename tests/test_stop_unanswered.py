"""SIGTERM while requests wait for their provider's first byte: once ``drain_timeout_s`` is
over, each gets a 503 in its client's API error shape (OpenAI, Anthropic, Gemini) carrying
its ``x-plano-request-id``, and its usage row is the one it had before (an estimate,
``client_disconnected_estimated``: the provider may be generating and billing the answer).
Before 2026-12-05 the connection was closed with no answer.  A real gateway process and
the fake provider over real sockets."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import read_rows

SLOW = b"x-fake-latency-ms: 20000\r\n"


def _raw(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n" + extra
            + b"content-length: %d\r\n\r\n" % len(body) + body)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _answer(answer: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """A shutdown's 503 (``Connection: close``, the whole body, "shutting down"): its headers
    (names lower-cased) and body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer[:300]
    headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:])}
    assert headers[b"connection"] == b"close" and int(headers[b"content-length"]) == len(body)
    assert b"shutting down" in body
    return headers, body


def _stop_and_read(gateway: GatewayProcess, socks: dict[str, socket.socket]) -> dict[str, bytes]:
    """SIGTERM, then what each socket read to its end: the gateway exits 0 within 5 s."""
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    answers = {}
    for kind, sock in socks.items():
        with sock:
            answers[kind] = _read_all(sock)
    assert gateway.wait(10) == 0
    assert time.monotonic() - started < 5
    return answers


def test_sigterm_answers_503_to_requests_still_waiting_for_the_provider(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    gateway = make_gateway(
        {"drain_timeout_s": 0.5},
        extra_providers=f"  - model: gemini/gemini-2.5-flash\n    base_url: {fake.url}/v1beta\n    access_key: sk-gem\n",
    )
    chat = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    requests = {
        # one on the pooled connection the warm-up leaves (the exchange runs in callbacks),
        # the others on new connections (the exchange waits in a task)
        "openai": (b"/v1/chat/completions", chat),
        "openai stream": (b"/v1/chat/completions",
                          b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'),
        "anthropic": (b"/v1/messages",
                      b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'),
        "gemini": (b"/v1beta/models/gemini-2.5-flash:generateContent",
                   b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'),
    }
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as warm:
        warm.sendall(_raw(b"/v1/chat/completions", chat, b"connection: close\r\n"))
        assert _read_all(warm).startswith(b"HTTP/1.1 200 ")
    fake.clear()
    socks = {}
    for kind, (path, body) in requests.items():
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        sock.sendall(_raw(path, body, SLOW))
        socks[kind] = sock
    deadline = time.monotonic() + 10
    while len([r for r in fake.requests if not r.path.startswith("/_fake")]) < len(requests):
        assert time.monotonic() < deadline, [r.path for r in fake.requests]  # (all four reach it)
        time.sleep(0.05)
    answers = _stop_and_read(gateway, socks)
    ids = {}
    for kind, answer in answers.items():
        headers, body = _answer(answer)
        ids[kind] = headers[b"x-plano-request-id"].decode()
        error = json.loads(body)
        if kind == "anthropic":
            assert error["type"] == "error" and error["error"]["type"] == "overloaded_error", error
        elif kind == "gemini":
            assert error["error"]["code"] == 503 and error["error"]["status"] == "UNAVAILABLE", error
        else:
            assert error["error"]["code"] == "unavailable" and error["error"]["type"] == "service_unavailable_error", error
        assert "shutting down" in body.decode()
    rows = {row.request_id: row for row in read_rows(None, str(gateway.config_path.with_suffix(".db")))}
    for kind, request_id in ids.items():
        row = rows[request_id]
        # the row as before: the provider was sent the request and may bill it
        assert row.status == "client_disconnected_estimated" and row.input_tokens > 0, (kind, row)
    assert len(rows) == len(requests) + 1  # and the warm-up's


def test_sigterm_answers_503_in_managed_mode_and_settles_the_reservations(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, fake: FakeProviderThread
) -> None:
    """Under a hard limit: the 503, the rows as before (an estimate each), every
    reservation settled (none left open, spent == the log)."""
    from tests.test_billing_faults import ledger
    from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

    sqlite_path = str(tmp_path / "plano_config_0.db")
    tenants: list[Tenant] = []
    gateway = make_gateway({"managed": "true", "managed_reload_s": 1, "drain_timeout_s": 0.5}, env=ENV,
                           before_start=lambda: tenants.append(
                               provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=10**9)))
    auth = f"authorization: Bearer {tenants[0].token}\r\n".encode()
    socks = []
    fake.clear()
    for stream in (b"false", b"true"):
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        sock.sendall(_raw(b"/v1/chat/completions", b'{"model":"gpt-4o-mini","max_tokens":50,"stream":' + stream
                          + b',"messages":[{"role":"user","content":"hi"}]}', auth + SLOW))
        socks.append(sock)
    deadline = time.monotonic() + 10
    while len([r for r in fake.requests if not r.path.startswith("/_fake")]) < len(socks):
        assert time.monotonic() < deadline, [r.path for r in fake.requests]  # (both forwarded: held 20 s)
        time.sleep(0.05)
    gateway.signal(signal.SIGTERM)
    answers = []
    for sock in socks:
        with sock:
            answers.append(_read_all(sock))
    assert gateway.wait(10) == 0
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 503 ") and b"x-plano-request-id: " in answer, answer[:300]
    state = ledger(None, sqlite_path)
    assert [row.status for row in state["rows"]] == ["client_disconnected_estimated"] * 2, state["rows"]
    # what the clients got (0 before 2026-12-06), and charged their estimates as before
    assert [row.http_status for row in state["rows"]] == [503] * 2, state["rows"]
    assert all(row.priced and (row.cost_nano_usd or 0) > 0 for row in state["rows"]), state["rows"]
    assert state["open"] == 0 and state["reserved"] == 0
