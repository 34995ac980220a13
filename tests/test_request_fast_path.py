"""The request fast path (plano_fast/wire/_request.pyx) against httptools, which stays the
authority: whatever the fast path accepts, httptools must parse to the same method,
target, headers, body and keep-alive, ending at the same byte; what it declines goes to
httptools unchanged, so declining is always safe (and checked to happen for the framing
cases that matter)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.byte_mutations import mutated
from tests.hypothesis_budget import examples

_request = pytest.importorskip("plano_fast.wire._request", reason="the Cython extension is not built")
parse_request = _request.parse_request
from plano_fast.wire import _head_py  # noqa: E402 - after the skip

_head = pytest.importorskip("plano_fast.wire._head", reason="the Cython extension is not built")

MAX_HEAD = 32 * 1024
MAX_BODY = 1024 * 1024

SDK_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:12000\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 3.60.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 3.60.0\r\n"
    b"X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
    b"X-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-test\r\nX-Stainless-Async: false\r\n"
    b"x-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\nContent-Length: 67\r\n\r\n"
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
)


@dataclass
class Message:
    method: bytes = b""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True


class Recorder:
    """httptools' view of a byte string: its messages, and how many were begun."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.messages: list[Message] = []
        self.begun = 0
        self._cur = Message()

    def on_message_begin(self) -> None:
        self.begun += 1
        self._cur = Message()

    def on_url(self, url: bytes) -> None:
        self._cur.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._cur.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._cur.body += body

    def on_message_complete(self) -> None:
        self._cur.method = self.parser.get_method()
        self._cur.keep_alive = self.parser.should_keep_alive()
        self.messages.append(self._cur)

    @staticmethod
    def heads(message: bytes) -> list[tuple[bytes, bytes]]:
        """httptools' headers of the one message ``message`` holds (names as sent)."""
        rec = Recorder()
        rec.parser.feed_data(message)
        return [(name, value) for name, value in rec.messages[0].headers]


def check_against_httptools(data: bytes, start: int = 0) -> bool:
    """Assert the fast path's answer for ``data[start:]`` is httptools'; True if it accepted."""
    parsed = parse_request(data, start, MAX_HEAD, MAX_BODY)
    if parsed is None:
        return False
    method, target, headers, body, keep_alive, end, forward = parsed
    assert start < end <= len(data)
    assert b"#" not in target  # (dispatch checks a fragment only where httptools parsed the request)
    # the headers' own answers, before their pairs are made (what a fast-path request is
    # asked without them: its length, tracing's has)
    names = {name.lower() for name, _ in Recorder.heads(data[start:end])}
    assert len(headers) == len(Recorder.heads(data[start:end]))
    for name in names | {b"traceparent", b"host", b"hos", b"hostx", b"x-request-i"}:
        assert headers.has(name) is (name in names), name
    pairs = list(headers)
    assert headers == pairs and pairs == list(headers) and len(pairs) == len(headers)
    # the upstream block built in the same pass is what both relay twins build from headers
    assert forward == _head.forward_request_headers(pairs) == _head_py.forward_request_headers(pairs)
    assert forward[6] == _head_py.without_account_headers(forward[0])  # (the operator's block)
    rec = Recorder()
    rec.parser.feed_data(data[start:end])  # raises if httptools refuses what we accepted
    # Exactly one message, complete exactly at ``end``, nothing of a next one begun.
    assert rec.begun == 1 and len(rec.messages) == 1
    want = rec.messages[0]
    assert (method, target, headers, body, keep_alive) == (
        want.method, want.target, want.headers, want.body, want.keep_alive,
    )  # fmt: skip
    assert len(head_of(data[start:end])) + len(body) == end - start
    return True


def head_of(message: bytes) -> bytes:
    return message[: message.index(b"\r\n\r\n") + 4]


def test_the_sdk_request_takes_the_fast_path() -> None:
    assert check_against_httptools(SDK_REQUEST)
    method, target, headers, body, keep_alive, end, forward = parse_request(SDK_REQUEST, 0, MAX_HEAD, MAX_BODY)
    assert (method, target, keep_alive, end) == (b"POST", b"/v1/chat/completions", True, len(SDK_REQUEST))
    assert (b"authorization", b"Bearer sk-test") in headers and len(headers) == 17
    block, seen_version, request_id, count, name, value, operator_block = forward
    assert (seen_version, request_id, count, name, value) == (False, None, 1, b"authorization", b"Bearer sk-test")
    assert operator_block is block  # no provider-account header: no second block
    # host, accept-encoding, connection, content-length and the credential stay behind
    assert block.startswith(b"accept: application/json\r\ncontent-type: application/json\r\n")
    for gone in (b"host", b"accept-encoding", b"connection", b"content-length", b"authorization"):
        assert gone + b":" not in block
    assert body.startswith(b'{"model"')


def test_the_forward_block_of_credentials_versions_and_dropped_headers() -> None:
    data = (b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nX-Api-Key: k1\r\nAPI_KEY: k2\r\n"
            b"Anthropic-Version: 2023-06-01\r\nX-Request-Id: r1\r\nX-Xproxy-Project: p\r\nTE: trailers\r\n"
            b"X-HTTP-Method-Override: GET\r\nX-Keep: yes\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    assert check_against_httptools(data)
    block, seen_version, request_id, count, name, value, operator_block = parse_request(data, 0, MAX_HEAD, MAX_BODY)[6]
    assert (seen_version, request_id, count, name, value) == (True, b"r1", 2, b"x-api-key", b"k1")
    assert operator_block is block
    # (the x-request-id is never in the block: upstream_request.finish_head writes one)
    assert block == b"anthropic-version: 2023-06-01\r\nx-keep: yes\r\n"


def test_pipelined_requests_are_taken_one_at_a_time() -> None:
    get = b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n"
    data = SDK_REQUEST + get + SDK_REQUEST[:100]
    first = parse_request(data, 0, MAX_HEAD, MAX_BODY)
    assert first is not None and first[5] == len(SDK_REQUEST)
    second = parse_request(data, first[5], MAX_HEAD, MAX_BODY)
    assert second is not None and second[:4] == (b"GET", b"/v1/models", [(b"host", b"a")], b"")
    assert check_against_httptools(data, first[5])
    assert parse_request(data, second[5], MAX_HEAD, MAX_BODY) is None  # incomplete


def test_connection_close_is_not_keep_alive() -> None:
    data = b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    assert check_against_httptools(data)
    assert parse_request(data, 0, MAX_HEAD, MAX_BODY)[4] is False


DECLINED = {
    "no host": b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    "two hosts": b"POST /x HTTP/1.1\r\nHost: a\r\nhost: b\r\nContent-Length: 2\r\n\r\nhi",
    # a Host that is not a plain host[:port] (httptools' path serves or refuses it: wire._host)
    "a space in the host": b"GET /x HTTP/1.1\r\nHost: g w\r\n\r\n",
    "a tab in the host": b"GET /x HTTP/1.1\r\nHost: g\tw\r\n\r\n",
    "userinfo in the host": b"GET /x HTTP/1.1\r\nHost: u@gw\r\n\r\n",
    "a slash in the host": b"GET /x HTTP/1.1\r\nHost: gw/x\r\n\r\n",
    "a host port not digits": b"GET /x HTTP/1.1\r\nHost: gw:8o\r\n\r\n",
    "a host with two colons": b"GET /x HTTP/1.1\r\nHost: gw:1:2\r\n\r\n",
    "a host that is only a port": b"GET /x HTTP/1.1\r\nHost: :80\r\n\r\n",
    "a host with a high byte": b"GET /x HTTP/1.1\r\nHost: g\xc3\xa9\r\n\r\n",
    "an IP literal host": b"GET /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    "a percent-escape in the host": b"GET /x HTTP/1.1\r\nHost: g%41\r\n\r\n",
    "transfer-encoding": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "content-length and transfer-encoding": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate content-length": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    "content-length with a sign": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nhi",
    "content-length with a space inside": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nhi",
    "content-length of 19 digits": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000002\r\n\r\nhi",
    "expect": b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    "upgrade": b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "upgrade alone": b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
    "connection naming a header": b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: x-foo\r\n\r\n",
    "two connection headers": b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    "HTTP/1.0": b"POST /x HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    "bare LF": b"POST /x HTTP/1.1\nHost: a\nContent-Length: 2\n\nhi",
    "bare LF in a header": b"POST /x HTTP/1.1\r\nHost: a\r\nA: b\nContent-Length: 2\r\n\r\nhi",
    "bare CR in a value": b"POST /x HTTP/1.1\r\nHost: a\r\nA: b\rc\r\nContent-Length: 2\r\n\r\nhi",
    "obs-fold": b"POST /x HTTP/1.1\r\nHost: a\r\nA: b\r\n c\r\nContent-Length: 2\r\n\r\nhi",
    "space before colon": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length : 2\r\n\r\nhi",
    "empty value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
    "trailing whitespace": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b \r\n\r\n",
    "NUL in a value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "lowercase method": b"post /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    "unknown method": b"BREW /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragment in the target": b"GET /x#y HTTP/1.1\r\nHost: a\r\n\r\n",
    "quote in the target": b'GET /x"y HTTP/1.1\r\nHost: a\r\n\r\n',
    "two spaces": b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "incomplete head": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n",
    "incomplete body": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nhi",
}


@pytest.mark.parametrize("data", DECLINED.values(), ids=DECLINED.keys())
def test_declined_cases_are_left_to_httptools(data: bytes) -> None:
    assert parse_request(data, 0, MAX_HEAD, MAX_BODY) is None


def test_limits_are_left_to_httptools() -> None:
    # Over a limit the fast path declines; the server's httptools path answers 431/413.
    assert parse_request(SDK_REQUEST, 0, len(head_of(SDK_REQUEST)) - 1, MAX_BODY) is None
    assert parse_request(SDK_REQUEST, 0, len(head_of(SDK_REQUEST)), MAX_BODY) is not None
    assert parse_request(SDK_REQUEST, 0, MAX_HEAD, 66) is None
    assert parse_request(SDK_REQUEST, 0, MAX_HEAD, 67) is not None


# -- generated requests, then mutated: the fast path never disagrees with httptools ---
METHODS = [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD", b"post", b"BREW", b"CONNECT"]
NAMES = [b"Host", b"Content-Length", b"content-length", b"Connection", b"Transfer-Encoding", b"Expect",
         b"Upgrade", b"Authorization", b"X-Api-Key", b"Content-Type", b"X-A", b"X A", b"X\x00A", b"\xffX",
         b"Te", b"Trailer", b"Keep-Alive", b""]  # fmt: skip
VALUE_BYTES = st.binary(min_size=0, max_size=12) | st.sampled_from(
    [b"chunked", b"close", b"keep-alive", b"Keep-Alive", b"upgrade", b"0", b"2", b"5", b" 2 ", b"-1", b"100-continue",
     b"gzip, chunked", b"\t2", b"2\t", b"caf\xc3\xa9", b"a\r\nB: c"]
)  # fmt: skip


# (no Host: a well-formed request has its one Host line already; NAMES adds a second)
CLEAN_NAMES = [b"Authorization", b"X-Api-Key", b"Content-Type", b"x-stainless-os", b"Accept", b"X_Odd!#$%&'*+.^`|~",
               # round f's provider-account headers in odd cases and spellings, and look-alikes:
               # the operator's block, cut in the same pass, is compared with the twins' too
               b"OpenAI-Organization", b"openai_PROJECT", b"X-Goog-User-Project", b"Anthropic-Organization-Id",
               b"OpenAI-Projects"]
CLEAN_VALUES = st.binary(min_size=1, max_size=12).map(
    lambda v: bytes(c if 33 <= c < 127 or c >= 128 else 97 for c in v)  # no CTL, no edge space
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Half well-formed (what the fast path is for), half anything; then maybe mutated."""
    good = draw(st.booleans())
    method = draw(st.sampled_from(METHODS[:7] if good else METHODS))
    target = draw(
        st.sampled_from([b"/v1/chat/completions", b"/", b"/a?b=c&d=%20", b"/v1/models?x=[1]"])
        if good
        else st.sampled_from([b"/x", b"*", b""]) | st.binary(max_size=8).map(lambda t: b"/" + t) | st.binary(max_size=8)
    )
    version = b"HTTP/1.1" if good else draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 "]))
    eol = b"\r\n" if good else draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]))
    lines = [method + b" " + target + b" " + version]
    if good or draw(st.booleans()):  # (malformed ones too, or the fast path declines them for the Host alone)
        lines.append(b"Host: a")  # (the fast path takes only a request with one Host: RFC 9112 §3.2)
    body = draw(st.binary(max_size=16))
    for _ in range(draw(st.integers(0, 6))):
        clean = good or draw(st.booleans())
        name = draw(st.sampled_from(CLEAN_NAMES if clean else NAMES))
        sep = draw(st.sampled_from([b": ", b":", b":\t"] if clean else [b": ", b":", b":\t", b" : ", b":  "]))
        value = draw(CLEAN_VALUES if clean else VALUE_BYTES)
        if name.lower() == b"content-length" and draw(st.booleans()):
            value = b"%d" % draw(st.sampled_from([len(body), len(body) + 1, max(0, len(body) - 1)]))
        lines.append(name + sep + value)
    if good and draw(st.booleans()):
        lines.append(draw(st.sampled_from([b"Connection: keep-alive", b"Connection: close", b"connection: Close"])))
    if draw(st.booleans()):
        lines.append(b"Content-Length: %d" % len(body))
    head = eol.join(lines) + eol + (eol if good else draw(st.sampled_from([eol, b"\r\n", b"\n"])))
    data = head + body + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"POST"]))
    return mutated(draw, data)  # flip, insert or delete a few bytes anywhere


# 1000 examples (was 3000; 60,000 ran clean when the fast path came): tests/hypothesis_budget.py
@settings(max_examples=examples(1000, deep=60_000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.booleans())
@example(SDK_REQUEST, False)
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False)
def test_generated_requests_agree_with_httptools(data: bytes, after_another: bool) -> None:
    if after_another:
        prefix = b"GET /warm-up HTTP/1.1\r\nHost: a\r\n\r\n"
        check_against_httptools(prefix + data, len(prefix))
    else:
        check_against_httptools(data)


def test_generated_requests_are_often_accepted() -> None:
    """The property above means something only if the fast path accepts a fair share."""
    accepted = 0

    @settings(max_examples=500, deadline=None, database=None, derandomize=True)
    @given(requests())
    def count(data: bytes) -> None:
        nonlocal accepted
        accepted += check_against_httptools(data)

    count()
    assert accepted >= 80


def test_header_pairs_leave_the_cyclic_gc() -> None:
    """Each (name, value) pair holds two bytes objects, so it can be in no cycle: the fast
    path builds it untracked (an in-flight request's pairs were a third of what each young
    collection scanned at saturation).  The headers object holds bytes and that list of
    pairs, which it never hands out: it cannot be in a cycle either (``no_gc``)."""
    import gc

    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}")  # fmt: skip
    parsed = parse_request(request, 0, 32 * 1024, 1024)
    assert parsed is not None
    headers = parsed[2]
    assert headers == [(b"host", b"x"), (b"content-type", b"application/json"),
                       (b"authorization", b"Bearer k"), (b"content-length", b"2")]  # fmt: skip
    assert not any(gc.is_tracked(pair) for pair in headers) and not gc.is_tracked(headers)


def test_the_headers_are_a_read_only_sequence_of_the_pairs() -> None:
    """``RequestHeaders``: what the request path's readers do with a list of pairs
    (iterate, index, slice, ``in``, ``len``, compare) gives what the list gives, before and
    after the pairs are made; names lowercased, values as sent (inner whitespace kept)."""
    request = (b"GET /x HTTP/1.1\r\nHost: x\r\nX-A:\t a \t b\r\nTraceParent: 00-ab\r\nx-a: \xc3\xa9\r\n\r\n")
    want = [(b"host", b"x"), (b"x-a", b"a \t b"), (b"traceparent", b"00-ab"), (b"x-a", b"\xc3\xa9")]
    for first in ("len", "has", "index", "in", "iter", "eq"):
        parsed = parse_request(request, 0, MAX_HEAD, MAX_BODY)
        assert parsed is not None
        headers = parsed[2]
        if first == "len":
            assert len(headers) == 4
        elif first == "has":
            assert headers.has(b"traceparent") and not headers.has(b"TraceParent") and not headers.has(b"x")
        elif first == "index":
            assert headers[1] == (b"x-a", b"a \t b") and headers[-1] == want[-1] and headers[1:3] == want[1:3]
        elif first == "in":
            assert (b"traceparent", b"00-ab") in headers and (b"TraceParent", b"00-ab") not in headers
        elif first == "iter":
            assert [pair for pair in headers] == want
        assert headers == want and not headers != want and headers != want[:-1] and headers != tuple(want)
        assert list(headers) == want and len(headers) == 4 and headers == parse_request(request, 0, MAX_HEAD, MAX_BODY)[2]
        assert repr(headers) == f"RequestHeaders({want!r})"
        with pytest.raises(IndexError):
            headers[4]
        with pytest.raises(TypeError):
            hash(headers)


_TCHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@pytest.mark.parametrize("where", ["name", "value"])
def test_every_byte_at_every_offset_of_a_long_name_or_value(where: str) -> None:
    """The name and value scans go sixteen bytes at a time (plano_fast/wire/_simd.h) before
    the per-byte loops: each byte value at each offset of a 40-byte name or value is
    accepted exactly when the fast path's grammar allows it, and as httptools reads it."""
    for offset in range(40):
        for byte in range(256):
            field = bytearray(b"n" * 40 if where == "name" else b"v" * 40)
            field[offset] = byte
            if where == "name":
                line = bytes(field) + b": value\r\n"
                allowed = byte in _TCHARS or (byte == 58 and offset > 0)  # (a colon ends the name)
            else:
                line = b"x-field: " + bytes(field) + b"\r\n"
                # (trailing whitespace is declined: httptools decides)
                allowed = (byte == 9 or (byte >= 32 and byte != 127)) and not (byte in (9, 32) and offset == 39)
            data = b"POST /v1/chat/completions HTTP/1.1\r\nhost: h\r\n" + line + b"content-length: 2\r\n\r\nok"
            assert check_against_httptools(data) is allowed, (where, offset, byte)


@pytest.mark.parametrize("host", [b"gw", b"gw:12000", b"gw:", b"127.0.0.1:8080", b"A-b_c~d!e$f&g'h(i)j*k+l,m;n=o"])
def test_a_plain_host_is_taken(host: bytes) -> None:
    """A plain host[:port] (wire._host.PLAIN_HOST_CHARS, an optional colon and digits) is
    parsed here, as httptools parses it."""
    data = b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    parsed = parse_request(data, 0, MAX_HEAD, MAX_BODY)
    assert parsed is not None and parsed[2] == [(b"host", host)]
    assert check_against_httptools(data)
