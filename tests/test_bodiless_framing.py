"""A relayed answer that has no body by its status (1xx, 204, 304: RFC 9112 §6.3 rule 1)
must go out with no body framing: the client reads nothing after its head, so a
``transfer-encoding: chunked`` head and its ``0\\r\\n\\r\\n`` terminator were read as the
start of the next response on the keep-alive connection (response desync: the client's
next request failed, or got another's answer behind a front proxy).

End to end: a scripted provider (tests/raw_upstream.py) answers ``204 No Content`` (or a
``304``) with no Content-Length; the client (reading no body after a
204/304) then sends a second request on the same connection and must get its own 200.
Plus ``Responder`` itself on a stand-in protocol: the head's framing lines, body bytes
dropped, and an HTTP/1.0 keep-alive kept.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream

_ANSWER_BODY = json.dumps({
    "id": "chatcmpl-second", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}).encode()  # fmt: skip
_OK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
       % len(_ANSWER_BODY)) + _ANSWER_BODY
#: what the provider answers a request whose body holds the key (no Content-Length, no
#: Transfer-Encoding: a bodiless status needs neither)
_BODILESS = {
    b"no-content": b"HTTP/1.1 204 No Content\r\nx-trace: a\r\n\r\n",
    b"not-modified": b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n",
}


class BodilessUpstream(RawUpstream):
    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        for key, reply in _BODILESS.items():
            if key in body:
                conn.sendall(reply)
                return True
        conn.sendall(_OK)
        return True


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    upstream = BodilessUpstream()
    try:
        config = write_config(tmp_path_factory.mktemp("bodiless") / "gateway.yaml", upstream.port, {})
        with GatewayProcess(config) as gw:
            yield gw
    finally:
        upstream.close()


def _chat(content: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}).encode()


def _post(content: str) -> bytes:
    body = _chat(content)
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer sk-test\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


def _read_until(sock: socket.socket, buf: bytes, done: Any) -> bytes:
    while not done(buf):
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return buf


@pytest.mark.parametrize(("key", "status"), [("no-content", 204), ("not-modified", 304)])
def test_a_bodiless_answer_leaves_the_keep_alive_connection_in_step(
    gateway: GatewayProcess, key: str, status: int
) -> None:
    """A client reading as RFC 9112 6.3 says (nothing after a 204/304 head; http.client
    is lenient: it reads a chunked body after a 204 when told so, hiding the desync)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_post(key))
        buf = _read_until(sock, b"", lambda b: b"\r\n\r\n" in b)
        first, _, rest = buf.partition(b"\r\n\r\n")
        sock.sendall(_post("hello"))
        rest = _read_until(sock, rest, lambda b: b"chatcmpl-second" in b and b.endswith(b"}"))
        # The same connection's next response comes right after the first head.  Before:
        # it was preceded by the stray "0\r\n\r\n", read as its status line
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:40]
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["id"] == "chatcmpl-second"
        # The provider's status, relayed with no framing header (a 204 may not carry a
        # Content-Length; neither gets a chunked body) and kept alive
        lines = first.lower().split(b"\r\n")
        assert lines[0].startswith(b"http/1.1 %d " % status)
        assert not [line for line in lines if line.startswith((b"transfer-encoding", b"content-length"))]
        assert b"connection: close" not in lines


# -- Responder on a stand-in protocol ------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: Any) -> None:
        self.data += bytes(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)


class _Proto:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.lost = False
        self.draining = False
        self.done: list[bool] = []

    def exchange_done(self, responder: Any, close: bool, abort: bool = False) -> None:
        self.done.append(close)


@pytest.mark.parametrize("http11", [True, False], ids=["http11", "http10"])
@pytest.mark.parametrize(("status", "length", "length_line"), [
    (204, None, b""),
    (204, 0, b""),  # a 204 never carries a Content-Length (RFC 9110 8.6)
    (304, None, b""),
    (304, 42, b"content-length: 42\r\n"),  # a 304 may say the GET's length; no body follows
    (103, None, b""),
])  # fmt: skip
def test_a_bodiless_status_gets_no_framing_and_no_body(
    status: int, length: int | None, length_line: bytes, http11: bool
) -> None:
    from plano_fast.http_server import Responder

    proto = _Proto()
    responder = Responder(proto, True, http11)  # type: ignore[arg-type]
    responder.send_head_block(status, b"x-a: 1\r\n", length)
    responder.send_body(b"stray body bytes")
    responder.end()
    head, sep, rest = proto.transport.data.partition(b"\r\n\r\n")
    # The head alone: no body, no terminating chunk after it
    assert sep and rest == b""
    lines = head.lower().split(b"\r\n")
    assert b"transfer-encoding: chunked" not in lines
    assert [line for line in lines if line.startswith(b"content-length")] == (
        [length_line.strip()] if length_line else [])
    # Kept alive (an HTTP/1.0 client told so): no close-delimited body to end it
    assert proto.done == [False]
    assert b"connection: close" not in lines
    assert (b"connection: keep-alive" in lines) == (not http11)


def test_a_bodied_status_is_still_chunked_without_a_length() -> None:
    """The control: a 200 of unknown length is chunked, its body and terminator sent."""
    from plano_fast.http_server import Responder

    proto = _Proto()
    responder = Responder(proto, True, True)  # type: ignore[arg-type]
    responder.send_head_block(200, b"", None)
    responder.send_body(b"abc")
    responder.end()
    assert b"transfer-encoding: chunked\r\n" in proto.transport.data
    assert proto.transport.data.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
