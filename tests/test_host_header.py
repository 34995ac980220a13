"""The Host field, RFC 9112 §3.2: a request with an invalid Host value, with more than one
Host line, or an HTTP/1.1 request without one gets a 400 in its client's API format (the
connection closes, nothing goes upstream); a valid value is served.

Both builds, each a real gateway over a real socket: the compiled one (plain requests
parsed by ``wire/_request.pyx``, which declines any Host but a plain ``host[:port]`` to
httptools' path) and the pure one (``PLANO_FAST_PURE_SCANNER=1``: every request through
httptools and ``ServerProtocol``'s callbacks).  Was: ``Host: g w``, ``a@b``, ``a/b``,
``a:8o``, an empty Host... all served 200 by both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.wire import PURE_ENV
from plano_fast.wire._host import valid_host
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_edges import CHAT, MESSAGES, exchange, provider_calls

#: Host lines (the whole line(s), or none) each refused with a 400
INVALID = {
    "a space inside": b"Host: g w\r\n",
    "a tab inside": b"Host: g\tw\r\n",
    "userinfo @": b"Host: user@gw\r\n",
    "a slash": b"Host: gw/x\r\n",
    "a port that is not digits": b"Host: gw:8o\r\n",
    "a second colon": b"Host: gw:80:81\r\n",
    "a port sign": b"Host: gw:+80\r\n",
    "empty": b"Host:\r\n",
    "only spaces": b"Host:   \r\n",
    "only a port": b"Host: :80\r\n",
    "a bad percent-escape": b"Host: g%zzw\r\n",
    "an unclosed IP literal": b"Host: [::1\r\n",
    "an IP literal and junk": b"Host: [::1]x\r\n",
    "a high byte": b"Host: g\xc3\xa9w\r\n",
    "a quote": b'Host: "gw"\r\n',
    "a backslash": b"Host: gw\\x\r\n",
    "two Host lines": b"Host: gw\r\nHost: gw\r\n",
    "two Host lines, one valid": b"Host: gw\r\nhost: g w\r\n",
    "no Host": b"",
}

#: Host lines with a control byte: httptools' parser itself refuses those (its message)
CONTROL = {
    "a DEL": b"Host: g\x7fw\r\n",
    "a control byte": b"Host: g\x01w\r\n",
    "a NUL": b"Host: g\x00w\r\n",
}
#: what each refusal's message names
REASON = {**{name: b"Host" for name in INVALID}, **{name: b"Invalid header value char" for name in CONTROL}}

#: Host lines a request is served with
VALID = {
    "a name": b"Host: gw\r\n",
    "a name and a port": b"Host: gw:12000\r\n",
    "an empty port": b"Host: gw:\r\n",
    "an IPv4 address": b"Host: 127.0.0.1:8080\r\n",
    "an IPv6 literal": b"Host: [::1]:8080\r\n",
    "a percent-escape": b"Host: g%41w\r\n",
    "sub-delims": b"Host: a-b_c~d!e$f&g'h(i)j*k+l,m;n=o\r\n",
    "upper case": b"HOST: GW.Example.COM\r\n",
    "trailing whitespace (not the value, RFC 9112 §5)": b"Host: gw \t\r\n",
    "whitespace around": b"Host:  gw:12000  \r\n",
}

BUILDS = ["compiled", "pure"]


@pytest.fixture(scope="module", params=BUILDS)
def build_gateway(
    request: pytest.FixtureRequest, fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    if request.param == "compiled":
        pytest.importorskip("plano_fast.wire._request", reason="the Cython extension is not built")
        if os.environ.get(PURE_ENV) == "1":
            pytest.skip("pure scanner forced by the environment")
    env = {PURE_ENV: "1"} if request.param == "pure" else {}
    config = write_config(tmp_path_factory.mktemp(f"host-{request.param}") / "plano_config.yaml", fake.port)
    with GatewayProcess(config, env=env) as proc:
        yield proc


def _request(path: bytes, body: bytes, host_lines: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST " + path + b" " + version + b"\r\n" + host_lines + b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("case", [*INVALID, *CONTROL])
@pytest.mark.parametrize(("path", "body"), [(b"/v1/chat/completions", CHAT), (b"/v1/messages", MESSAGES)],
                         ids=["openai", "anthropic"])
def test_an_invalid_host_is_a_400_in_the_clients_format(
    build_gateway: GatewayProcess, fake: FakeProviderThread, path: bytes, body: bytes, case: str
) -> None:
    """Each INVALID and CONTROL case: 400, the OpenAI error object (code
    ``malformed_request``) on /v1/chat/completions or Anthropic's (``type: error``) on
    /v1/messages, its message naming Host (CONTROL: the parser's "Invalid header value
    char", as before), ``Connection: close``, nothing sent upstream."""
    fake.clear()
    host_lines = INVALID[case] if case in INVALID else CONTROL[case]
    answer = exchange(build_gateway.port, _request(path, body, host_lines))
    assert answer.status == 400, answer.raw[:300]
    assert REASON[case] in answer.body and answer.header(b"connection") == b"close", answer.raw[:300]
    if path == b"/v1/messages":
        assert answer.error_json()["type"] == "error", answer.body
    else:
        assert answer.error_json()["error"]["code"] == "malformed_request", answer.body
    assert provider_calls(fake) == []


@pytest.mark.parametrize("host_lines", VALID.values(), ids=VALID.keys())
def test_a_valid_host_is_served(build_gateway: GatewayProcess, fake: FakeProviderThread, host_lines: bytes) -> None:
    """Each VALID case: 200 (the compiled build takes the IP literal and the escape through
    httptools' path, the rest through its fast path; the answers are the same)."""
    answer = exchange(build_gateway.port, _request(b"/v1/chat/completions", CHAT, host_lines))
    assert answer.status == 200, answer.raw[:300]


def test_http10_without_host_is_served_and_with_an_invalid_one_refused(build_gateway: GatewayProcess) -> None:
    """HTTP/1.0 has no Host requirement: without one, 200; with an invalid value, 400
    (§3.2's "invalid field value" is any request's)."""
    served = exchange(build_gateway.port, _request(b"/v1/chat/completions", CHAT, b"", b"HTTP/1.0"))
    assert served.status == 200, served.raw[:300]
    refused = exchange(build_gateway.port, _request(b"/v1/chat/completions", CHAT, b"Host: g w\r\n", b"HTTP/1.0"))
    assert refused.status == 400, refused.raw[:300]


def test_the_grammar_itself() -> None:
    """``valid_host`` on the value alone (what the server checks: httptools' value, its
    leading spaces already gone, without its trailing spaces and tabs): every VALID value True, every INVALID one False (but
    the two-line and no-Host cases, which are about the count)."""
    def value(lines: bytes) -> bytes:
        return lines.split(b":", 1)[1].removesuffix(b"\r\n").strip(b" \t")

    for lines in VALID.values():
        assert valid_host(value(lines)), lines
    for name, lines in INVALID.items():
        if lines.count(b"\r\n") == 1:
            assert not valid_host(value(lines).rstrip(b" ")), name
