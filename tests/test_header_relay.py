"""Header relay (plano_fast.wire._head / _head_py), in both implementations: what the client
gets of an upstream head, what the provider gets of a client's headers, and the two
implementations agree on generated input."""

from __future__ import annotations

import os
from collections.abc import Callable

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast.wire import _head_py

try:
    from plano_fast.wire import _head as _compiled_head
except ImportError:  # the extension is not built: only the twin is tested
    _compiled_head = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_head is not None, "the compiled head filter was not built"

HeadFn = Callable[[bytes], tuple[bytes, int, bool, int]]
ForwardFn = Callable[[list[tuple[bytes, bytes]]], tuple[bytes, bool, bool, int, bytes | None, bytes | None, bytes]]
FORWARD: list[ForwardFn] = [_head_py.forward_request_headers] + (
    [_compiled_head.forward_request_headers] if _compiled_head is not None else []
)
IMPLS: list[HeadFn] = [_head_py.response_head] + (
    [_compiled_head.response_head] if _compiled_head is not None else []
)
IDS = ["python", "cython"][: len(IMPLS)]


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
def test_status_hop_by_hop_date_and_server_are_cut_the_rest_kept_byte_for_byte(
    response_head: HeadFn,
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Connection: keep-alive\r\n"
        b"Date: Thu, 03 Dec 2026 23:00:00 GMT\r\n"
        b"x-ratelimit-remaining-requests: 9999\r\n"
        b"SERVER: cloudflare\r\n"
        b"Content-Length: 915\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"set-cookie: a=1; Path=/\r\n"
        b"set-cookie: b=2\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"TE: trailers\r\nTrailer: x\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n"
        b"Proxy-Authorization: x\r\n"
        b"\r\n"
    )
    body = b'{"id":"x"}'
    block, length, chunked, end = response_head(head + body)
    assert block == (
        b"Content-Type: application/json\r\n"
        b"x-ratelimit-remaining-requests: 9999\r\n"
        b"set-cookie: a=1; Path=/\r\n"
        b"set-cookie: b=2\r\n"
    )
    assert (length, chunked, end) == (915, False, len(head))


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
def test_chunked_no_headers_bare_lf_and_incomplete_heads(response_head: HeadFn) -> None:
    assert response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello") == (
        b"", -1, True, 47
    )
    assert response_head(b"HTTP/1.1 204 No Content\r\n\r\n") == (b"", -1, False, 27)
    # bare LF line ends are accepted and the kept lines leave with CRLF
    assert response_head(b"HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 0\n\n") == (b"x-a: 1\r\n", 0, False, 42)
    assert response_head(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n")[3] == -1
    assert response_head(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r")[3] == -1


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
def test_obs_fold_is_joined_with_one_space_or_dropped_with_its_header(response_head: HeadFn) -> None:
    head = b"HTTP/1.1 200 OK\r\nx-long: one\r\n \t two \r\nserver: s\r\n\tfolded\r\nx-b: 2\r\n\r\n"
    assert response_head(head)[0] == b"x-long: one two\r\nx-b: 2\r\n"


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
@pytest.mark.parametrize("value", [b"", b"abc", b"1 2", b"-1", b"99999999999999999999", b"4611686018427387904"])
def test_an_impossible_content_length_is_refused(response_head: HeadFn, value: bytes) -> None:
    with pytest.raises(ValueError, match="Content-Length"):
        response_head(b"HTTP/1.1 200 OK\r\ncontent-length: " + value + b"\r\n\r\n")


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
@pytest.mark.parametrize("lines", [
    b"transfer-encoding: gzip, chunked\r\n", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n", b"transfer-encoding: chunked, chunked\r\n",
    b"transfer-encoding: xchunked\r\n", b"transfer-encoding: identity\r\n", b"transfer-encoding:\r\n",
])
def test_a_transfer_coding_other_than_one_chunked_is_refused(response_head: HeadFn, lines: bytes) -> None:
    """llhttp undoes ``chunked`` alone: ``gzip, chunked`` was relayed as gzip bytes under no
    coding (round j); chunked twice is never sent (RFC 9112 §7)."""
    with pytest.raises(ValueError, match="Transfer-Encoding"):
        response_head(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b" \tchunked\t "])
def test_one_chunked_in_any_case_is_relayed(response_head: HeadFn, value: bytes) -> None:
    assert response_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding:" + value + b"\r\nx-a: 1\r\n\r\n")[:3] == (
        b"x-a: 1\r\n", -1, True)


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
def test_the_headers_the_gateway_sets_are_never_taken_from_upstream(response_head: HeadFn) -> None:
    """An upstream's x-plano-request-id, x-plano-requested-model, x-plano-guardrail-warning
    or x-model-router-selected-route (another gateway's, or a forged one) would reach the
    client beside the gateway's own, or pass for it: cut, in any case."""
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"X-Plano-Request-Id: upstream\r\nx-plano-requested-model: m\r\n"
        b"x-plano-guardrail-warning: none\r\nX-Model-Router-Selected-Route: forged\r\n"
        b"x-plano-other: kept\r\nx-model-router-selected-routes: kept\r\n\r\n"
    )
    assert response_head(head)[0] == b"x-plano-other: kept\r\nx-model-router-selected-routes: kept\r\n"


@pytest.mark.parametrize("response_head", IMPLS, ids=IDS)
def test_largest_content_length_and_surrounding_whitespace(response_head: HeadFn) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: \t4611686018427387903 \r\n\r\n"
    assert response_head(head)[1] == (1 << 62) - 1


_NAME = st.sampled_from(
    sorted(_head_py.DROPPED) + [b"Content-Length", b"DATE", b"x-request-id", b"set-cookie", b"cf-ray", b"te2", b"x"]
)
_VALUE = st.binary(max_size=30).map(lambda v: v.replace(b"\n", b"").replace(b"\r", b""))
_LINE = st.one_of(
    st.tuples(_NAME, _VALUE).map(lambda nv: nv[0] + b": " + nv[1]),
    _VALUE.map(lambda v: b" " + v),  # obs-fold
    st.just(b"content-length: 12"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINE, max_size=12), eol=st.sampled_from([b"\r\n", b"\n"]), tail=st.binary(max_size=20))
def test_both_implementations_agree(lines: list[bytes], eol: bytes, tail: bytes) -> None:
    buf = b"HTTP/1.1 200 OK" + eol + b"".join(line + eol for line in lines) + eol + tail
    results = []
    for impl in IMPLS:
        try:
            results.append(impl(buf))
        except ValueError:
            results.append(("ValueError",))  # type: ignore[arg-type]
    assert all(r == results[0] for r in results)


def test_the_filter_keeps_what_httptools_parses_minus_the_dropped_names() -> None:
    """The kept block, parsed back, is the upstream's headers without the dropped ones."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        b"x-request-id: req_1\r\nopenai-processing-ms: 412\r\ndate: x\r\nserver: y\r\n\r\n"
    )
    parsed: list[tuple[bytes, bytes]] = []

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            parsed.append((name.lower(), value))

    httptools.HttpResponseParser(Sink()).feed_data(head)
    for impl in IMPLS:
        block, _, chunked, _ = impl(head)
        kept = [tuple(line.split(b": ", 1)) for line in block.split(b"\r\n") if line]
        assert kept == [(n, v) for n, v in parsed if n not in _head_py.DROPPED]
        assert chunked


SDK_REQUEST = [
    (b"host", b"127.0.0.1:12000"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive, x-hop"),
    (b"authorization", b"Bearer sk-client"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"user-agent", b"OpenAI/Python 3.60.0"),
    (b"x-stainless-retry-count", b"0"),
    (b"x-hop", b"only for the next hop"),
    (b"x-xproxy-project", b"forged"),
    (b"x-xproxy-", b"forged too"),
    (b"anthropic-version", b"2023-06-01"),
    (b"x-api-key", b"sk-ant"),
    (b"x-goog-api-key", b"AIza"),
    (b"api-key", b"azure"),
    (b"te", b"trailers"),
    (b"expect", b"100-continue"),
    (b"content-length", b"67"),
    (b"transfer-encoding", b"chunked"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-authorization", b"Basic x"),
    (b"x-request-id", b"client-chosen"),
]


@pytest.mark.parametrize("forward", FORWARD, ids=IDS)
def test_request_headers_forwarded_without_any_credential_header(forward: ForwardFn) -> None:
    kept = (
        b"accept: application/json\r\ncontent-type: application/json\r\nuser-agent: OpenAI/Python 3.60.0\r\n"
        b"x-stainless-retry-count: 0\r\n"
    )
    # Every credential header is dropped and counted; the first is reported (the caller
    # refuses the request when there is more than one: plano_fast.credentials).
    assert forward(SDK_REQUEST) == (
        kept + b"anthropic-version: 2023-06-01\r\n",
        True,
        b"client-chosen",  # never in the block: upstream_request.finish_head writes one
        4,
        b"authorization",
        b"Bearer sk-client",
        kept + b"anthropic-version: 2023-06-01\r\n",
    )
    assert forward([]) == (b"", False, None, 0, None, None, b"")
    assert forward([(b"x-a", b"")]) == (b"x-a: \r\n", False, None, 0, None, None, b"x-a: \r\n")
    # two x-request-ids: b"" (none of them is kept); one listed in Connection: none seen
    assert forward([(b"x-request-id", b"a"), (b"x-request-id", b"a")])[2] == b""
    assert forward([(b"connection", b"x-request-id"), (b"x-request-id", b"a")])[2] is None
    # the underscore spelling (one name to CGI/WSGI servers) is the request id too, never in the block
    assert forward([(b"x_request_id", b"u"), (b"x-a", b"")]) == (b"x-a: \r\n", False, b"u", 0, None, None, b"x-a: \r\n")
    assert forward([(b"x-request-id", b"a"), (b"x_request_id", b"b")])[2] == b""
    # Connection can neither hide a credential from the count nor keep one in the block.
    listed = [(b"connection", b"x-api-key"), (b"x-api-key", b"a"), (b"authorization", b"Bearer b")]
    assert forward(listed) == (b"", False, None, 2, b"x-api-key", b"a", b"")


_REQ_NAME = st.sampled_from(
    sorted(_head_py.DROPPED_REQUEST | _head_py.CREDENTIALS)
    + [b"anthropic-version", b"x-request-id", b"x_request_id", b"x-xproxy-a", b"x-hop", b"x-stainless-os",
       b"accept", b"x"]
    + sorted(_head_py.ACCOUNT_HEADERS) + [b"openai-projects", b"x-openai-project", b"openai-organization-id"]
)
_REQ_VALUE = st.one_of(st.binary(max_size=20), st.sampled_from([b"x-hop", b"close, X-Hop", b"keep-alive"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.lists(st.tuples(_REQ_NAME, _REQ_VALUE), max_size=14))
def test_request_implementations_agree(headers: list[tuple[bytes, bytes]]) -> None:
    results = [impl(headers) for impl in FORWARD]
    assert all(r == results[0] for r in results)
    # the operator's block is the block without its provider-account lines, found in the
    # same pass: the block itself (no copy) when it has none
    for block, *_, operator_block in results:
        assert operator_block == _head_py.without_account_headers(block)
        if operator_block == block:
            assert operator_block is block


@pytest.mark.parametrize("forward", FORWARD, ids=IDS)
def test_the_operators_block_is_cut_in_the_relay_pass(forward: ForwardFn) -> None:
    """Round f's account headers (every spelling, twice, beside look-alikes) are cut from
    the block sent with the operator's key, and only from it; one that Connection names is
    in neither block."""
    headers = [(b"openai-organization", b"org-a"), (b"accept", b"*/*"), (b"openai_project", b"p1"),
               (b"openai-project", b"p2"), (b"openai-project", b"p3"), (b"x-goog-user-project", b"g"),
               (b"x_goog_user_project", b"g2"), (b"openai_organization", b"o2"),
               (b"anthropic-organization-id", b"a"), (b"openai-projects", b"kept"), (b"x-openai-project", b"kept")]
    block, *_, operator_block = forward(headers)
    assert block == b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    assert operator_block == b"accept: */*\r\nopenai-projects: kept\r\nx-openai-project: kept\r\n"
    listed = forward([(b"connection", b"OpenAI-Project"), (b"openai-project", b"p"), (b"x-a", b"1")])
    assert listed[0] == listed[-1] == b"x-a: 1\r\n"


HEADS: list[type] = [_head_py.ResponseHead] + ([_compiled_head.ResponseHead] if _compiled_head is not None else [])


@pytest.mark.parametrize("head_type", HEADS, ids=IDS)
@given(
    st.lists(
        st.tuples(
            st.text("abcXYZ-_0", min_size=1, max_size=8).map(str.encode),
            st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v),
        ),
        max_size=6,
    ),
    st.one_of(st.none(), st.integers(0, 2**40)),
    st.booleans(),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_response_head_twins_agree(
    head_type: type, lines: list[tuple[bytes, bytes]], length: int | None, chunked: bool
) -> None:
    """``ResponseHead`` (the exchange's ``UpstreamHead``), compiled and pure: the same
    fields, and ``headers()`` parses a kept block into the same pairs."""
    block = b"".join(name + b":" + value + b"\r\n" for name, value in lines)
    head = head_type(503, block, length, chunked)
    twin = _head_py.ResponseHead(503, block, length, chunked)
    assert (head.status, head.block, head.content_length, head.chunked) == (503, block, length, chunked)
    assert head.headers() == twin.headers()
    assert twin.headers() == [(n.lower(), v.strip(b" \t")) for n, v in lines]


# -- the gateway's own lines: content-length, a chunk's size, the request id --------------
LINE_MODULES = [_head_py] + ([_compiled_head] if _compiled_head is not None else [])


@pytest.mark.parametrize("mod", LINE_MODULES, ids=IDS)
@pytest.mark.parametrize("n", [0, 1, 9, 10, 15, 16, 99, 100, 101, 255, 256, 915, 999, 1000, 4095, 4096, 10**6, 2**31,
                               10**18 - 1, 10**18, 2**62 - 1, 2**63 - 1])
def test_length_lines_are_the_percent_formats(mod: object, n: int) -> None:
    assert mod.content_length_line(n, False) == b"content-length: %d\r\n" % n  # type: ignore[attr-defined]
    assert mod.content_length_line(n, True) == b"content-length: %d\r\n\r\n" % n  # type: ignore[attr-defined]
    assert mod.chunk_size_line(n) == b"%x\r\n" % n  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(n=st.one_of(st.integers(0, 2**63 - 1), st.integers(0, 10**4), st.sampled_from([10**k + d for k in range(19)
                                                                                     for d in (-1, 0, 1)])))
def test_the_compiled_digit_writers_are_the_percent_formats(n: int) -> None:
    """``_digits.put_decimal`` / ``put_hex`` (shared by _head, _answer and billing/_drain)."""
    for mod in LINE_MODULES:
        assert mod.content_length_line(n, False) == b"content-length: %d\r\n" % n  # type: ignore[attr-defined]
        assert mod.chunk_size_line(n) == b"%x\r\n" % n  # type: ignore[attr-defined]


@pytest.mark.parametrize("mod", LINE_MODULES, ids=IDS)
def test_negative_lengths_are_refused(mod: object) -> None:
    with pytest.raises(ValueError):
        mod.content_length_line(-1, False)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        mod.chunk_size_line(-1)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mod", LINE_MODULES, ids=IDS)
@pytest.mark.parametrize("value", ["", "abc-1f", "0123456789abcdef" * 8, "é€😀"])
def test_header_line_is_start_value_crlf(mod: object, value: str) -> None:
    assert mod.header_line(b"x-request-id: ", value) == b"x-request-id: " + value.encode() + b"\r\n"  # type: ignore[attr-defined]
    with pytest.raises(UnicodeEncodeError):
        mod.header_line(b"x: ", "\udc80")  # type: ignore[attr-defined]


@pytest.mark.parametrize("mod", LINE_MODULES, ids=IDS)
def test_request_ids_count_in_hex_after_the_prefix_and_reset_in_place(mod: object) -> None:
    ids = mod.RequestIds("ab" * 16)  # type: ignore[attr-defined]
    take = ids.next  # bound once, as plano_fast.gateway.relay.new_request_id is
    got = [take() for _ in range(300)]
    assert got == [f"{'ab' * 16}-{i:x}" for i in range(1, 301)]
    ids.reset("cd" * 16)
    assert take() == f"{'cd' * 16}-1"
    with pytest.raises(ValueError):
        ids.reset("é")
    with pytest.raises(ValueError):
        ids.reset("a" * 65)


ACCOUNT_NAMES = sorted(_head_py.ACCOUNT_HEADERS) + [b"OpenAI-Organization", b"X-Goog-User-Project", b"openai-version",
                                                   b"openai-processing-ms", b"x-goog-api-client", b"x", b"openai-projects",
                                                   b"X-MS-Region", b"x-ms-regions", b"x-ms-deployment-name",
                                                   b"apim-request-id", b"Ocp-Apim-Subscription-Key",
                                                   b"ocp-apim-subscription-region"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ACCOUNT_NAMES), st.binary(max_size=6)), max_size=6),
       st.sampled_from([b"", b"tail: no-crlf", b"no colon\r\n"]))
def test_account_headers_are_cut_alike_in_both_twins(headers: list[tuple[bytes, bytes]], tail: bytes) -> None:
    """``without_account_headers``: the compiled filter cuts exactly what the twin cuts (the
    provider-account names in any case, nothing else), and hands back the block itself when
    there is nothing to cut."""
    block = b"".join(n + b": " + v.replace(b"\n", b"") + b"\r\n" for n, v in headers) + tail
    expected = b"".join(n + b": " + v.replace(b"\n", b"") + b"\r\n" for n, v in headers
                        if n.lower() not in _head_py.ACCOUNT_HEADERS) + tail
    assert _head_py.without_account_headers(block) == expected
    if _compiled_head is not None:
        assert _compiled_head.without_account_headers(block) == expected
        if expected == block:
            assert _compiled_head.without_account_headers(block) is block
