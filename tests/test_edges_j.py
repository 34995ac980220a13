"""Round j of the attack battery (benchmarks/attack_battery_j.py): what it found, as tests.

* An upstream that answers before the request body is sent (an early 413, a server that
  answers after the head) must not have its connection reused while the gateway is still
  writing the body: the next request's bytes would queue behind the unread rest, and the
  provider, which stopped reading, never sees it -- a 504 at the first-byte timeout for
  another client, its row ``upstream_failed`` (under a managed hard limit: charged the
  whole reservation for a request no provider received).
* A request line naming an HTTP version other than 1.0 or 1.1 (``HTTP/2.0``, ``HTTP/0.9``)
  is answered 505 (RFC 9110 §15.6.6), never served as HTTP/1.x.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.attack_battery import exchange, post
from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream

_ANSWER_BODY = json.dumps({
    "id": "chatcmpl-early", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "early"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}).encode()  # fmt: skip
_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
           % len(_ANSWER_BODY)) + _ANSWER_BODY
#: a body the kernel's socket buffers cannot take whole, so part of it is still in the
#: gateway's write buffer when the early answer arrives
_LARGE_PAD_BYTES = 16 * 1024 * 1024


class EarlyAnswerUpstream(RawUpstream):
    """Answers a request whose body is large right after its head, then never reads again
    (the rest of the body stays unread; the connection stays open); answers small requests
    after their whole body, keep-alive.  Counts the connections it accepts."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []
        super().__init__()

    def before_body(self, conn: socket.socket, head: bytes, length: int) -> bool:
        if length <= 1024 * 1024:
            return True
        conn.sendall(_ANSWER)
        self._held.append(conn.dup())  # kept open (the server closes its own copy), never read again
        return False

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        conn.sendall(_ANSWER)
        return True

    def close(self) -> None:
        super().close()
        for conn in self._held:
            conn.close()


@contextlib.contextmanager
def _gateway_before(workdir: Path, model: str, port: int, listener_timeout: str = "5s") -> Iterator[GatewayProcess]:
    """A config-mode gateway whose ``model`` (OpenAI interface) is served on ``port``."""
    config = write_config(workdir / "gateway.yaml", 9, {}, f"""\
  - model: {model}
    base_url: http://127.0.0.1:{port}
    provider_interface: openai
    access_key: sk-upstream
""", listener_timeout=listener_timeout)
    with GatewayProcess(config) as gateway:
        yield gateway


@pytest.fixture
def early_gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, EarlyAnswerUpstream, Path]]:
    upstream = EarlyAnswerUpstream()
    try:
        with _gateway_before(tmp_path, "early/gpt-4o-mini", upstream.port, "2s") as gateway:
            yield gateway, upstream, tmp_path / "gateway.db"
    finally:
        upstream.close()


def _chat(pad_bytes: int) -> bytes:
    return (b'{"model":"early/gpt-4o-mini","messages":[{"role":"user","content":"'
            + b"x" * pad_bytes + b'"}]}')


def test_a_connection_answered_before_its_body_was_sent_is_not_reused(
    early_gateway: tuple[GatewayProcess, EarlyAnswerUpstream, Path],
) -> None:
    gateway, upstream, db_path = early_gateway
    first = exchange(gateway.port, post(b"/v1/chat/completions", _chat(_LARGE_PAD_BYTES), b""), wait_s=20)
    assert first.status == 200 and b"early" in first.body
    # The next request (another client) must reach the provider: on a new connection,
    # not behind the first one's unread body.
    second = exchange(gateway.port, post(b"/v1/chat/completions", _chat(10), b""), wait_s=10)
    assert second.status == 200, second.body
    assert upstream.connections == 2
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(db_path) as db:
            rows = db.execute("select status from usage_log order by id").fetchall()
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows == [("ok",), ("ok",)]


@pytest.fixture(scope="module")
def fake_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, object]]:
    from benchmarks.fake_provider import FakeProviderThread

    workdir = tmp_path_factory.mktemp("edges-j")
    with FakeProviderThread() as fake:
        config = write_config(workdir / "config.yaml", fake.port, {})
        with GatewayProcess(config) as gateway:
            yield gateway, fake


_CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
_STREAM = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
@pytest.mark.parametrize("request_bytes", [
    lambda v: post(b"/v1/chat/completions", _CHAT, b"", version=v),
    lambda v: post(b"/v1/chat/completions", _STREAM, b"", version=v),
    lambda v: b"GET /v1/models " + v + b"\r\nHost: gw\r\n\r\n",
], ids=["chat", "stream", "models"])
def test_a_request_line_of_another_http_version_is_a_505(
    fake_gateway: tuple[GatewayProcess, object], version: bytes, request_bytes: object,
) -> None:
    gateway, fake = fake_gateway
    before = len(fake.requests)  # type: ignore[attr-defined]
    answer = exchange(gateway.port, request_bytes(version), wait_s=5)  # type: ignore[operator]
    assert answer.status == 505, answer.raw[:200]
    error = json.loads(answer.body)["error"]
    assert error["code"] == "http_version_not_supported" and error["type"] == "invalid_request_error"
    assert answer.closed and answer.header(b"x-plano-request-id")
    assert len(fake.requests) == before  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
def test_http_1_0_and_1_1_are_served(fake_gateway: tuple[GatewayProcess, object], version: bytes) -> None:
    gateway, _ = fake_gateway
    answer = exchange(gateway.port, post(b"/v1/chat/completions", _CHAT, b"", version=version), wait_s=5)
    assert answer.status == 200


@pytest.fixture(scope="module")
def scripted_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, object]]:
    from benchmarks.attack_battery import ScriptedProvider

    scripted = ScriptedProvider()
    try:
        with _gateway_before(tmp_path_factory.mktemp("edges-j-scripted"), "scripted/gpt-4o-mini", scripted.port) as gateway:
            yield gateway, scripted
    finally:
        scripted.close()


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"chunked\r\ntransfer-encoding: chunked"], ids=["gzip", "twice"])
def test_an_upstream_transfer_coding_other_than_chunked_is_a_502(
    scripted_gateway: tuple[GatewayProcess, object], coding: bytes,
) -> None:
    """``gzip, chunked`` was relayed as gzip bytes under no coding: the client got bytes it
    could not read, the row ``usage_missing``."""
    import gzip

    gateway, scripted = scripted_gateway
    content = gzip.compress(_ANSWER_BODY) if coding.startswith(b"gzip") else _ANSWER_BODY
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: " + coding + b"\r\n\r\n"
              + b"%x\r\n%s\r\n0\r\n\r\n" % (len(content), content))
    scripted.add("te", answer)  # type: ignore[attr-defined]
    body = b'{"model":"scripted/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    got = exchange(gateway.port, post(b"/v1/chat/completions", body, b"", b"x-script: te\r\n"), wait_s=5)
    assert got.status == 502, got.raw[:300]
    assert "Transfer-Encoding" in json.loads(got.body)["error"]["message"]
