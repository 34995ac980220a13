from __future__ import annotations
import socket, time, json
from typing import Any
from benchmarks.fake_provider import FakeProviderThread
from tests.test_firewall_hardening import hardened, provider_calls, REGISTERED, CHAT_BODY  # noqa: F401

def _send(port: int, data: bytes, n: int) -> bytes:
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(data); s.settimeout(5)
    out = b""
    deadline = time.time() + 5
    while out.count(b"HTTP/1.") < n and time.time() < deadline:
        try:
            c = s.recv(65536)
        except socket.timeout:
            break
        if not c: break
        out += c
    time.sleep(0.3); s.close(); return out

def req(extra: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST /v1/chat/completions " + version + b"\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: Bearer " + REGISTERED
            + b"\r\n" + extra + b"content-length: %d\r\n\r\n" % len(CHAT_BODY) + CHAT_BODY)

def test_rid(hardened: Any, fake: FakeProviderThread) -> None:
    gateway, _, _ = hardened
    fake.clear()
    _send(gateway.port, req(b"x-request-id: A1\r\n") + req(b"") + req(b"X-Request-Id: B\r\nx-request-id: C\r\n") + req(b"x-request-id: \xc3\xa9\r\n"), 4)
    _send(gateway.port, req(b"x-request-id: H10\r\n", b"HTTP/1.0"), 1)
    _send(gateway.port, req(b"x-request-id: T \r\n"), 1)   # trailing space: httptools path
    _send(gateway.port, req(b"x_request_id: U\r\n"), 1)
    got = [[(n, v) for n, v in c.headers if n.replace("_", "-").lower() == "x-request-id"] for c in provider_calls(fake)]
    assert [len(g) for g in got] == [1] * 7, got  # x_request_id: U goes up beside ours
