"""Bad and unusual HTTP input over raw sockets: each case's status, body, and that the
gateway keeps serving other connections afterwards.  Responses are parsed with h11, an
independent HTTP implementation."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import h11
import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> tuple[h11.Response, bytes]:
    """Read one response, not asking whether the server closes afterwards: proving a
    connection stays open takes ``server_closed``'s 2 s wait, which ``read_responses``
    pays when the server keeps it open; use that one where a test asserts on it."""
    [(response, body)], _ = _read(sock, 1, timeout_s)
    return response, body


def read_responses(
    sock: socket.socket, count: int = 1, timeout_s: float = 10.0
) -> tuple[list[tuple[h11.Response, bytes]], bool]:
    """Read ``count`` responses; returns them and whether the server closed afterwards."""
    results, closed = _read(sock, count, timeout_s)
    if not closed:
        closed = server_closed(sock)
    return results, closed


def _read(
    sock: socket.socket, count: int, timeout_s: float
) -> tuple[list[tuple[h11.Response, bytes]], bool]:
    """``count`` responses, and whether the server closed while they were read."""
    conn = h11.Connection(h11.CLIENT)
    # h11 needs to have "sent" a request per response it parses.
    results: list[tuple[h11.Response, bytes]] = []
    sock.settimeout(timeout_s)
    closed = False
    for _ in range(count):
        conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        response: h11.Response | None = None
        body = b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                raise AssertionError("connection closed before a complete response") from None
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    raise AssertionError("timed out waiting for a response") from None
                if not data:
                    closed = True
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("connection closed before a complete response")
        assert response is not None
        results.append((response, body))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return results, closed


def server_closed(sock: socket.socket, wait_s: float = 2.0) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def request(body: bytes = CHAT, path: bytes = b"/v1/chat/completions", extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer sk-x\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def still_serving(gateway: GatewayProcess) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(request())
        response, body = read_response(sock)
    assert response.status_code == 200, body
    assert json.loads(body)["object"] == "chat.completion"


def error_of(body: bytes) -> str:
    return str(json.loads(body)["error"]["message"])


# -- malformed and ambiguous framing: 400 and close ------------------------------------
SMUGGLING = {
    "content-length and transfer-encoding": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "conflicting content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "invalid content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 5x\r\n\r\nhello",
    "negative content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: -1\r\n\r\n",
    "transfer-encoding gzip, chunked": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding xchunked": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "duplicate transfer-encoding": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding on HTTP/1.0": b"POST /v1/chat/completions HTTP/1.0\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space before colon": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length : 5\r\n\r\nhello",
    "obsolete line folding": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n"
    b"Content-Length: 0\r\n\r\n",
    "garbage request line": b"HELLO\r\n\r\n",
    "bad method": b"P@ST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare LF line ends": b"POST /v1/chat/completions HTTP/1.1\nHost: a\nContent-Length: 0\n\n",
    "bad chunk size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_malformed_or_ambiguous_framing_is_400_and_closed(
    gateway: GatewayProcess, fake: FakeProviderThread, case: str
) -> None:
    fake.clear()
    with connect(gateway.port) as sock:
        sock.sendall(SMUGGLING[case])
        [(response, body)], closed = read_responses(sock)
    assert response.status_code == 400
    assert "malformed request" in error_of(body) or "Transfer-Encoding" in error_of(body)
    assert closed, "the connection must be closed after a framing error"
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]
    still_serving(gateway)


def test_oversized_headers_431(gateway: GatewayProcess) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(request(extra=b"X-Big: " + b"a" * 40_000 + b"\r\n"))
        [(response, body)], closed = read_responses(sock)
    assert response.status_code == 431
    assert "headers exceed" in error_of(body)
    assert closed
    still_serving(gateway)


def test_many_small_headers_in_one_read_431(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    # The limit is on the head as a whole, counted even when it all arrives in one read.
    fake.clear()
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 20) for i in range(2000))
    with connect(gateway.port) as sock:
        sock.sendall(request(extra=many))
        [(response, body)], closed = read_responses(sock)
    assert response.status_code == 431
    assert "headers exceed" in error_of(body)
    assert closed
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]
    still_serving(gateway)


@pytest.mark.parametrize("reads", [1, 40])
def test_chunked_trailers_count_toward_the_header_limit(
    gateway: GatewayProcess, fake: FakeProviderThread, reads: int
) -> None:
    # Trailers come after the body, past the end-of-head check: in one read or many they
    # must still be bounded by the header limit, not pile up in memory.
    fake.clear()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    trailers = [b"X-T%d: %s\r\n" % (i, b"v" * 20) for i in range(2000)]
    step = len(trailers) // reads
    with connect(gateway.port) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n0\r\n" % (len(CHAT), CHAT))
        for i in range(0, len(trailers), step):
            try:
                sock.sendall(b"".join(trailers[i : i + step]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if reads > 1:
                time.sleep(0.005)  # separate reads on the gateway's side
        else:
            sock.sendall(b"\r\n")
        [(response, body)], closed = read_responses(sock)
    assert response.status_code == 431
    assert "headers exceed" in error_of(body)
    assert closed
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]
    still_serving(gateway)


def test_chunked_request_trailers_are_discarded_not_forwarded(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    # A trailer is not a header: forwarding it as one would let a client add headers
    # after every check on the head ran (RFC 9110 6.5.1 allows discarding them).
    fake.clear()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    trailers = b"X-Late-Trailer: 1\r\nX-Title: from-the-trailer\r\n\r\n"
    with connect(gateway.port) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n0\r\n" % (len(CHAT), CHAT) + trailers)
        response, body = read_response(sock)
    assert response.status_code == 200, body
    [forwarded] = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert forwarded.json() == json.loads(CHAT)
    assert forwarded.header("x-late-trailer") is None
    assert forwarded.header("x-title") is None
    still_serving(gateway)


def test_endless_header_is_stopped_at_the_limit(gateway: GatewayProcess) -> None:
    # A header that never ends must not make the gateway buffer it forever.
    with connect(gateway.port) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Endless: ")
        try:
            for _ in range(64):
                sock.sendall(b"b" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            pass
        [(response, _)], closed = read_responses(sock)
    assert response.status_code == 431
    assert closed
    still_serving(gateway)


def test_endless_trailer_is_stopped_at_the_limit(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    # After the last chunk, a trailer value that never ends makes no parser callback;
    # it must be bounded like a header, not buffered until memory runs out.
    fake.clear()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with connect(gateway.port) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n0\r\nX-Endless: " % (len(CHAT), CHAT))
        try:
            for _ in range(64):
                sock.sendall(b"b" * 16384)
                time.sleep(0.001)  # separate reads on the gateway's side
        except (BrokenPipeError, ConnectionResetError):
            pass
        [(response, body)], closed = read_responses(sock)
    assert response.status_code == 431
    assert "headers exceed" in error_of(body)
    assert closed
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]
    still_serving(gateway)


def test_body_over_limit_413(make_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = make_gateway({"max_body_bytes": 1024})
    with connect(gateway.port) as sock:
        sock.sendall(request(body=b'{"model":"gpt-4o-mini","x":"' + b"a" * 2000 + b'"}'))
        [(response, body)], closed = read_responses(sock)
    assert response.status_code == 413
    assert "1024 bytes" in error_of(body)
    assert closed
    # Chunked bodies are counted as they arrive.
    with connect(gateway.port) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"200\r\n" + b"a" * 512 + b"\r\n") * 3
        )
        [(response, body)], closed = read_responses(sock)
    assert response.status_code == 413
    still_serving(gateway)


def test_request_head_timeout_408(make_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = make_gateway({"request_head_timeout_s": 0.5})
    with connect(gateway.port) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n")  # never finished
        started = time.monotonic()
        [(response, body)], closed = read_responses(sock)
        waited = time.monotonic() - started
    assert response.status_code == 408
    assert "time limit" in error_of(body)
    assert closed
    assert 0.3 < waited < 3.0
    still_serving(gateway)


def test_idle_keepalive_connection_is_closed(make_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = make_gateway({"keepalive_timeout_s": 0.5})
    with connect(gateway.port) as sock:
        sock.sendall(request())
        response, _ = read_response(sock)
        assert response.status_code == 200
        assert server_closed(sock, wait_s=3.0)


def test_broken_json_is_400_and_connection_stays_usable(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    fake.clear()
    with connect(gateway.port) as sock:
        sock.sendall(request(body=b'{"model": "gpt-4o-mini", "messages": [}'))
        [(response, body)], closed = read_responses(sock)
        assert response.status_code == 400
        assert "not valid JSON" in error_of(body)
        assert not closed  # the framing was fine: keep-alive continues
        sock.sendall(request())
        response, _ = read_response(sock)
        assert response.status_code == 200
    assert len([r for r in fake.requests if r.path == "/v1/chat/completions"]) == 1


def test_unknown_path_404_and_wrong_method_405(gateway: GatewayProcess) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(request(path=b"/v2/nothing"))
        response, body = read_response(sock)
        assert response.status_code == 404
        assert "/v2/nothing" in error_of(body)
        sock.sendall(b"GET /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n")
        response, body = read_response(sock)
        assert response.status_code == 405


def test_keepalive_and_pipelining_answer_in_order(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    bodies = [
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%d"}]}' % i
        for i in range(5)
    ]
    latency = [b"x-fake-latency-ms: %d\r\n" % ms for ms in (150, 0, 80, 0, 30)]
    with connect(gateway.port) as sock:
        sock.sendall(b"".join(request(body=b, extra=lat) for b, lat in zip(bodies, latency)))
        responses, closed = read_responses(sock, count=5)
    assert [r.status_code for r, _ in responses] == [200] * 5
    assert not closed
    # Answered in request order even though later requests were faster upstream.
    forwarded = [r for r in fake.requests if r.path == "/v1/chat/completions"][-5:]
    assert [r.json()["messages"][0]["content"] for r in forwarded] == [str(i) for i in range(5)]


def test_fast_path_and_httptools_take_turns_in_order(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    # Plain requests take the compiled fast path, the rest go to httptools; a connection
    # switches between them mid-read and across reads without losing or reordering any.
    fake.clear()
    body = [b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%d"}]}' % i for i in range(5)]
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body[1]), body[1])
    )
    split = request(body=body[3])
    with connect(gateway.port) as sock:
        sock.sendall(request(body=body[0]) + chunked + request(body=body[2]) + split[:40])
        time.sleep(0.05)
        sock.sendall(split[40:] + request(body=body[4]))
        responses, closed = read_responses(sock, count=5)
    assert [r.status_code for r, _ in responses] == [200] * 5
    assert not closed
    forwarded = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert [r.json()["messages"][0]["content"] for r in forwarded] == [str(i) for i in range(5)]


def test_nothing_after_connection_close_is_read(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    fake.clear()
    with connect(gateway.port) as sock:
        sock.sendall(request(extra=b"Connection: close\r\n") + request())
        responses, closed = read_responses(sock, count=2)
    assert [r.status_code for r, _ in responses] == [200]
    assert closed
    assert len([r for r in fake.requests if r.path == "/v1/chat/completions"]) == 1


def test_chunked_request_body_and_expect_continue(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    fake.clear()
    with connect(gateway.port) as sock:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        sock.sendall(head)
        sock.settimeout(5)
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        half = len(CHAT) // 2
        for piece in (CHAT[:half], CHAT[half:]):
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        response, _ = read_response(sock)
    assert response.status_code == 200
    seen = [r for r in fake.requests if r.path == "/v1/chat/completions"][-1]
    assert seen.body == CHAT  # de-chunked, forwarded with a Content-Length
    assert seen.header("content-length") == str(len(CHAT))
    assert seen.header("transfer-encoding") is None
    assert seen.header("expect") is None


def test_hop_by_hop_headers_are_not_forwarded(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    fake.clear()
    with connect(gateway.port) as sock:
        sock.sendall(
            request(
                extra=b"Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n"
                b"Keep-Alive: timeout=5\r\nProxy-Authorization: Basic abc\r\nTE: trailers\r\n"
                b"Accept-Encoding: gzip\r\nX-Xproxy-Project-Id: forged\r\nX-Kept: yes\r\n"
            )
        )
        response, _ = read_response(sock)
    assert response.status_code == 200
    seen = [r for r in fake.requests if r.path == "/v1/chat/completions"][-1]
    names = {name for name, _ in seen.headers}
    for dropped in ("x-secret-hop", "keep-alive", "proxy-authorization", "te",
                    "x-xproxy-project-id", "connection"):
        assert dropped not in names, dropped
    # the client's gzip is dropped; the gateway asks for identity (its usage is read)
    assert seen.header_all("accept-encoding") == ["identity"]
    assert seen.header("x-kept") == "yes"
    assert seen.header("host") == f"127.0.0.1:{fake.port}"
    hop = {k.lower() for k, _ in response.headers}
    assert b"keep-alive" not in hop


def test_upstream_reset_mid_stream_is_an_incomplete_response(gateway: GatewayProcess) -> None:
    with connect(gateway.port) as sock:
        body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"x"}]}'
        sock.sendall(request(body=body, extra=b"x-fake-events: 10\r\nx-fake-reset-after-events: 3\r\n"))
        with pytest.raises(AssertionError, match="closed before a complete response"):
            read_response(sock)
    still_serving(gateway)
