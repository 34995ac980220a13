"""Requests whose head and body arrive in separate reads take the compiled fast path.

httpx (under the official openai and anthropic SDKs) writes a request's head and its body
with two send() calls, so the server's first read usually holds the head alone.  The fast
parser (``wire._request``) took only a request complete in one read, so every such request
went to httptools (a Python callback per header) and reached the twin dispatch with
``forward`` unset, in every mode.  The server now holds a plain head whose Content-Length
body is not all in (``ServerProtocol._hold``) and completes it from the next reads.

Each gateway runs in process on a real socket, with a recording upstream (or the fake
provider), so that two things are counted: ``ServerProtocol._feed`` (httptools' path) and
the twin dispatch's ``new_exchange`` (the compiled dispatch holds its own reference).  A
split request must reach neither, and get the answer, the upstream bytes and the usage
row a one-write request gets.  Edges: a body in many small writes, a body that never
completes (the body timeout's 408, as before), a Content-Length over the limit (413 at
once), a request pipelined behind a split one, a client that closes mid-body (nothing
upstream, no row), a large body from an unknown key (refused once 64 KiB are in).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.store.migrate import prepare_schema
from plano_fast.wire import PURE_ENV
from tests.gateway_proc import write_config
from tests.test_billing_faults import InProcessGateway
from tests.test_firewall import OTHER_KEY, USER_KEY, setup_keys
from tests.test_managed import MASTER_KEY, provision
from tests.test_plain_managed import ManagedUpstream, _rows
from tests.test_plain_request import _chat, _request, recording_pair
from tests.test_whole_answer import _normalized, _read_answer

pytest.importorskip("plano_fast.gateway._dispatch", reason="the Cython extensions are not built")
if os.environ.get(PURE_ENV) == "1":  # the fast parser is not in use: httptools reads every request
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

CHAT = b"/v1/chat/completions"
#: how long a client waits between its writes: long enough for the gateway to read each alone
PAUSE_S = 0.05


@pytest.fixture
def upstream() -> Iterator[ManagedUpstream]:
    for pair in recording_pair(ManagedUpstream):
        yield pair[0]


class Counted:
    """httptools' path (``ServerProtocol._feed``) and the twin dispatch (its
    ``new_exchange``: the compiled dispatch calls its own reference) counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from plano_fast import http_server
        from plano_fast.gateway import dispatch

        self.fed = 0
        self.twin_dispatched = 0
        self.held = 0  # heads held for their body (``_hold``): the path under test was taken
        real_feed = http_server.ServerProtocol._feed
        real_hold = http_server.ServerProtocol._hold

        def hold(proto: Any, *args: Any) -> None:
            self.held += 1
            real_hold(proto, *args)

        monkeypatch.setattr(http_server.ServerProtocol, "_hold", hold)
        real_new_exchange = dispatch.new_exchange

        def feed(proto: Any, data: bytes) -> None:
            self.fed += 1
            real_feed(proto, data)

        def new_exchange(*args: Any) -> Any:
            self.twin_dispatched += 1
            return real_new_exchange(*args)

        monkeypatch.setattr(http_server.ServerProtocol, "_feed", feed)
        monkeypatch.setattr(dispatch, "new_exchange", new_exchange)

    def take(self) -> tuple[int, int]:
        counts = (self.fed, self.twin_dispatched)
        self.fed = self.twin_dispatched = 0
        return counts


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _head_end(request: bytes) -> int:
    return request.index(b"\r\n\r\n") + 4


def _send_split(sock: socket.socket, request: bytes, piece: int = 0) -> None:
    """The head, then the body (in ``piece``-byte writes when ``piece``), each write read alone."""
    cut = _head_end(request)
    sock.sendall(request[:cut])
    body = request[cut:]
    for at in range(0, len(body), piece or len(body) or 1):
        time.sleep(PAUSE_S)
        sock.sendall(body[at:at + (piece or len(body))])


def _gateway(mode: str, tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch,
             **config: Any) -> tuple[InProcessGateway, str, bytes]:
    """An in-process gateway in ``mode`` forwarding to ``port``: (it, its SQLite path, the
    client's credential line)."""
    settings: dict[str, object] = {"mode": "firewall"} if mode == "firewall" else {}
    if mode == "managed":
        settings = {"managed": "true", "managed_reload_s": 600}
    config_path = write_config(tmp_path / f"{mode}.yaml", port, {**settings, **config.pop("settings", {})},
                               **config)
    db = str(config_path.with_suffix(".db"))
    asyncio.run(prepare_schema(None, db))
    auth = b""
    if mode == "firewall":
        setup_keys(db, f"http://127.0.0.1:{port}")
        auth = b"authorization: Bearer %s\r\n" % USER_KEY.encode()
    elif mode == "managed":
        monkeypatch.setenv("PLANO_FAST_MASTER_KEY", MASTER_KEY)
        tenant = provision(None, db, [("openai/gpt-4o-mini", None, "gpt-4o-mini*")])
        auth = b"authorization: Bearer %s\r\n" % tenant.token.encode()
    return InProcessGateway(config_path), db, auth


def _cases(auth: bytes) -> list[bytes]:
    """A plain chat, a streamed one (include_usage added upstream), a client request id, and
    one without a credential (config mode: the config's key; refused in firewall and
    managed mode, no row)."""
    return [
        _request(CHAT, _chat(), auth),
        _request(CHAT, _chat(stream=True), auth),
        _request(CHAT, _chat(), auth + b"x-request-id: split-1\r\n"),
        _request(CHAT, _chat(), b""),
    ]


def _own_ids_masked(seen: list[bytes]) -> list[bytes]:
    return [b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"x-request-id: <"))
            for raw in seen]


@pytest.mark.parametrize("read", ["compiled", "twin"])
@pytest.mark.parametrize("mode", ["config", "firewall", "managed"])
def test_a_split_request_is_served_as_a_one_write_one_and_takes_the_compiled_path(
    mode: str, read: str, upstream: ManagedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same requests, in one write and then head and body apart (on another
    connection): the same answers, upstream bytes and usage rows; neither kind reaches
    httptools' path nor the twin dispatch (on main the split ones reached both).  The
    server's read compiled (``_serve.pyx``) and its twin (``data_received_py``)."""
    counted = Counted(monkeypatch)
    if read == "twin":
        from plano_fast import http_server

        monkeypatch.setattr(http_server.ServerProtocol, "data_received", http_server.data_received_py)
    gateway, db, auth = _gateway(mode, tmp_path, upstream.port, monkeypatch)
    try:
        cases = _cases(auth)
        answers: dict[str, list[bytes]] = {}
        seen: dict[str, list[bytes]] = {}
        for how in ("one write", "split"):
            before = len(upstream.seen)
            with _connect(gateway.gateway.port) as sock:
                buf = bytearray()
                answers[how] = []
                for request in cases:
                    if how == "split":
                        _send_split(sock, request)
                    else:
                        sock.sendall(request)
                    answers[how].append(_normalized(_read_answer(sock, buf)))
            seen[how] = _own_ids_masked(upstream.seen[before:])
            assert counted.take() == (0, 0), how
            # (split: the gateway read a head alone at least once -- the writes were not
            # merged into one read by a busy machine, which would pass without the path)
            assert (counted.held >= 1) if how == "split" else (counted.held == 0), (how, counted.held)
            counted.held = 0
            if how == "one write":
                forwarded = len(seen[how])
                one_write_rows = _rows(db, forwarded)
    finally:
        gateway.stop()
    assert answers["split"] == answers["one write"]
    assert [a.split(b"\r\n", 1)[0] for a in answers["split"]] == [b"HTTP/1.1 200 OK"] * 3 + [
        b"HTTP/1.1 401 Unauthorized" if mode != "config" else b"HTTP/1.1 200 OK"]
    assert seen["split"] == seen["one write"] and len(seen["split"]) == forwarded
    assert b"x-request-id: split-1\r\n" in b"".join(seen["split"])
    assert len(one_write_rows) == forwarded
    assert _rows(db, 2 * forwarded) == sorted(one_write_rows * 2)


def test_the_sdk_requests_take_the_compiled_path(
    fake: FakeProviderThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The official SDKs (httpx: head and body in two sends), openai's plain and streamed
    and anthropic's Messages: answered with usage, never through httptools' path nor the
    twin dispatch."""
    counted = Counted(monkeypatch)
    gateway, db, _ = _gateway("config", tmp_path, fake.port, monkeypatch)
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            for _ in range(3):
                answer = client.chat.completions.create(model="gpt-4o-mini",
                                                        messages=[{"role": "user", "content": "x" * 2000}])
                assert answer.usage is not None and answer.usage.total_tokens > 0
            chunks = list(client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True))
            assert chunks and chunks[0].choices[0].delta.role == "assistant"
        with anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-client", max_retries=0) as aclient:
            message = aclient.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                              messages=[{"role": "user", "content": "hello"}])
            assert message.usage.input_tokens > 0
        assert counted.take() == (0, 0)
        assert len(_rows(db, 5)) == 5
    finally:
        gateway.stop()


def test_a_body_in_many_small_writes_and_a_request_pipelined_behind_it(
    upstream: ManagedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body in 16-byte writes; then a split request whose body's last write carries the
    next request whole (answered second, in order): the upstream gets each request's
    bytes as one write would send them, all on the compiled path."""
    counted = Counted(monkeypatch)
    gateway, db, auth = _gateway("config", tmp_path, upstream.port, monkeypatch)
    try:
        first = _request(CHAT, _chat(stream=True), auth + b"x-request-id: trickled\r\n")
        second = _request(CHAT, _chat(), auth + b"x-request-id: split\r\n")
        third = _request(CHAT, _chat(), auth + b"x-request-id: pipelined\r\n")
        with _connect(gateway.gateway.port) as sock:
            buf = bytearray()
            _send_split(sock, first, piece=16)
            trickled = _read_answer(sock, buf)
            cut = _head_end(second)
            sock.sendall(second[:cut])
            time.sleep(PAUSE_S)
            sock.sendall(second[cut:] + third)
            answers = [_read_answer(sock, buf), _read_answer(sock, buf)]
        assert trickled.startswith(b"HTTP/1.1 200 OK\r\n") and b"data: [DONE]" in trickled
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2
        assert counted.take() == (0, 0)
        seen = upstream.seen
        assert [s.split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0] for s in seen] == [
            b"trickled", b"split", b"pipelined"]
        assert b'"stream_options":{"include_usage":true}' in seen[0].replace(b" ", b"")
        assert seen[1].endswith(b"\r\n\r\n" + _chat()) and seen[2].endswith(b"\r\n\r\n" + _chat())
        assert len(_rows(db, 3)) == 3
    finally:
        gateway.stop()


def test_a_body_that_never_completes_gets_the_body_timeout(
    upstream: ManagedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a body, then nothing: the listener's timeout answers 408 in the client's
    format and closes, as httptools' path does (same status, code and message); nothing
    goes upstream, no row."""
    gateway, db, auth = _gateway("config", tmp_path, upstream.port, monkeypatch, listener_timeout="1s")
    try:
        request = _request(CHAT, _chat(), auth)
        answers = []
        for held_by in ("fast path", "httptools"):
            with _connect(gateway.gateway.port) as sock:
                cut = _head_end(request)
                if held_by == "httptools":  # (a head the fast parser declines: an obs-fold-free
                    # but trailing-whitespace value, which httptools accepts)
                    sock.sendall(request[:cut - 2].replace(b"user-agent: OpenAI/Python 1.0",
                                                           b"user-agent: OpenAI/Python 1.0 ") + b"\r\n")
                else:
                    sock.sendall(request[:cut])
                time.sleep(PAUSE_S)
                sock.sendall(request[cut:cut + 10])
                answer = _read_answer(sock, bytearray())
                assert sock.recv(1) == b""  # closed
            answers.append(_normalized(answer))
        assert answers[0] == answers[1]
        assert answers[0].startswith(b"HTTP/1.1 408 ") and b"request_timeout" in answers[0]
        assert upstream.seen == []
    finally:
        gateway.stop()
    assert _rows(db, 0) == []


def test_a_content_length_over_the_limit_is_refused_at_once(
    upstream: ManagedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head announcing more than ``max_body_bytes``: 413 before any body byte is sent."""
    gateway, _, auth = _gateway("config", tmp_path, upstream.port, monkeypatch, settings={"max_body_bytes": 1000})
    try:
        request = _request(CHAT, b"x" * 1001, auth)
        with _connect(gateway.gateway.port) as sock:
            sock.sendall(request[:_head_end(request)])
            answer = _read_answer(sock, bytearray())
        assert answer.startswith(b"HTTP/1.1 413 ") and b"request_too_large" in answer
        assert upstream.seen == []
    finally:
        gateway.stop()


def test_a_client_closing_mid_body_sends_nothing_upstream(
    upstream: ManagedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head and half the body, then the client closes (and one that half-closes): nothing
    upstream, no row; the next client is served."""
    counted = Counted(monkeypatch)
    gateway, db, auth = _gateway("managed", tmp_path, upstream.port, monkeypatch)
    try:
        request = _request(CHAT, _chat(), auth)
        cut = _head_end(request)
        for shut in (socket.SHUT_RDWR, socket.SHUT_WR):
            with _connect(gateway.gateway.port) as sock:
                sock.sendall(request[:cut])
                time.sleep(PAUSE_S)
                sock.sendall(request[cut:cut + 10])
                time.sleep(PAUSE_S)
                sock.shutdown(shut)
                if shut == socket.SHUT_WR:
                    assert sock.recv(1) == b""  # no answer: the gateway closes
        with _connect(gateway.gateway.port) as sock:
            _send_split(sock, request)
            assert _read_answer(sock, bytearray()).startswith(b"HTTP/1.1 200 OK\r\n")
        assert counted.take() == (0, 0)
        assert len(upstream.seen) == 1
    finally:
        gateway.stop()
    assert len(_rows(db, 1)) == 1


def test_a_large_body_from_an_unknown_key_is_refused_before_it_is_all_read(
    upstream: ManagedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firewall mode, a 1 MiB body announced by a key nobody registered: once 64 KiB of it
    are in, the head is identified and refused (401, closing), as httptools' path does
    (``_IDENTIFY_AFTER_BYTES``): the rest is never needed."""
    gateway, _, _ = _gateway("firewall", tmp_path, upstream.port, monkeypatch)
    try:
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (1 << 20)}]})
        request = _request(CHAT, body.encode(), b"authorization: Bearer %s\r\n" % OTHER_KEY.encode())
        cut = _head_end(request)
        with _connect(gateway.gateway.port) as sock:
            sock.sendall(request[:cut])
            time.sleep(PAUSE_S)
            sock.sendall(request[cut:cut + 70 * 1024])
            answer = _read_answer(sock, bytearray())
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert upstream.seen == []
    finally:
        gateway.stop()



def test_parse_request_begun_returns_a_head_whose_body_is_not_in() -> None:
    """``wire.parse_request_begun``: a whole request as ``parse_request`` returns it; a plain
    head with part of its body: the same fields, ``body`` the offset where the body starts,
    ``end`` where it will end; a head not complete, a length over the limit, or a head the
    fast path declines (chunked): None."""
    from plano_fast import wire

    begun, whole_only = wire.parse_request_begun, wire.parse_request
    assert begun is not None and whole_only is not None
    request = _request(CHAT, _chat(), b"authorization: Bearer sk-x\r\n")
    cut = _head_end(request)
    assert begun(request, 0, 32768, 4096) == whole_only(request, 0, 32768, 4096)
    for have in (cut, cut + 1, len(request) - 1):
        parsed = begun(request[:have], 0, 32768, 4096)
        assert parsed is not None and whole_only(request[:have], 0, 32768, 4096) is None
        whole = whole_only(request, 0, 32768, 4096)
        assert whole is not None
        assert parsed[3] == cut and parsed[5] == len(request)
        assert parsed[:3] + parsed[4:] == whole[:3] + whole[4:]
    assert begun(b"GET / HTTP/1.1\r\n" + request[:cut], 16, 32768, 4096) is not None  # (at an offset)
    assert begun(request[:cut - 1], 0, 32768, 4096) is None
    assert begun(request[:cut], 0, 32768, len(_chat()) - 1) is None
    chunked = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello"
    assert begun(chunked, 0, 32768, 4096) is None


def test_a_failing_head_check_on_a_held_request_is_answered_400_not_left_to_the_timeout(
    upstream: ManagedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the head check (an error that is not a GatewayError) raised when a held body
    passes 64 KiB: 400 in the client's format, closing, at once, as httptools' path answers an
    error raised in its callback -- not the body timeout's 408 much later; nothing upstream."""
    from plano_fast import app as app_module

    def broken_check(app: Any, request: Any) -> None:
        raise RuntimeError("a bug in the check")

    gateway, _, auth = _gateway("firewall", tmp_path, upstream.port, monkeypatch)
    monkeypatch.setattr(app_module, "precheck", broken_check)
    try:
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (1 << 20)}]})
        request = _request(CHAT, body.encode(), auth)
        cut = _head_end(request)
        with _connect(gateway.gateway.port) as sock:
            sock.sendall(request[:cut])
            time.sleep(PAUSE_S)
            started = time.monotonic()
            sock.sendall(request[cut:cut + 70 * 1024])
            answer = _read_answer(sock, bytearray())
            waited_s = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"could not be checked" in answer
        assert waited_s < 5  # the body timeout is far longer: answered, not timed out
        assert upstream.seen == []
    finally:
        gateway.stop()
