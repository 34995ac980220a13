"""Round g of the outside checker (benchmarks/attack_battery_g.py): trust at the edges.
Each case over real sockets against the real gateway and the fake provider: the request,
what reached the provider, the usage rows."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_edges import CLOSE, exchange, post, provider_calls
from tests.test_firewall import USER_KEY, firewall  # noqa: F401 - fixture
from tests.test_managed import Tenant, managed, rows  # noqa: F401 - fixture
from tests.test_managed_bounds import limited  # noqa: F401 - fixture
from tests.test_managed_missing_usage import REQUEST_BODY, request_cost, send, settled_rows, spent
from tests.test_managed_missing_usage import start as start_managed

GEMINI_BODY = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
_TEXT = b'"messages":[{"role":"user","content":"hi"}]'


def test_a_gemini_path_names_exactly_one_method(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    """Was: config mode took ``/v1beta/models/{m}:{anything}:generateContent`` for a Gemini
    call (only the text after the last ``:`` was checked) and forwarded the whole method part
    to a Gemini-native provider with the gateway's key: ``m:generateContent:streamGenerateContent``
    was metered as unary while the server streamed it (row ``usage_missing``, unpriced),
    ``m:streamGenerateContent:generateContent`` and ``m:countTokens:generateContent`` left a
    row under a model name no price matches.  Now the last segment's one ``:`` must be
    followed by ``generateContent`` or ``streamGenerateContent``: 404, nothing forwarded."""
    extra = f"  - model: gemini/*\n    base_url: {fake.url}/v1beta\n    access_key: sk-gemini\n"
    gateway = make_gateway({}, extra_providers=extra)
    model = b"/v1beta/models/gemini%2Fgemini-2.0-flash"
    fake.clear()
    for method in (b":generateContent:streamGenerateContent", b":streamGenerateContent:generateContent",
                   b":countTokens:generateContent", b"::generateContent"):
        answer = exchange(gateway.port, post(model + method + b"?alt=sse", GEMINI_BODY, b"", CLOSE))
        assert answer.status == 404, (method, answer.raw[:300])
        assert answer.error_json()["error"]["status"] == "NOT_FOUND"
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, post(model + b":streamGenerateContent?alt=sse", GEMINI_BODY, b"", CLOSE))
    assert answer.status == 200 and len(provider_calls(fake)) == 1, answer.raw[:300]


@pytest.mark.parametrize(("path", "body", "named"), [
    (b"/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":5,"speed":"fast",' + _TEXT + b"}", b"speed"),
    (b"/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":5,"inference_geo":"us",' + _TEXT + b"}",
     b"inference_geo"),
    (b"/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":5,"service_tier":"fast",' + _TEXT + b"}",
     b"service_tier"),
    (b"/v1/chat/completions", b'{"model":"gpt-4o-mini","max_tokens":5,"prediction":{"type":"content",'
                              b'"content":"aaaa"},' + _TEXT + b"}", b"prediction"),
    (b"/v1/responses", b'{"model":"gpt-4o-mini","max_output_tokens":5,"input":[{"type":"item_reference",'
                       b'"id":"msg_1"}]}', b"item_reference"),
    (b"/v1/responses", b'{"model":"gpt-4o-mini","max_output_tokens":5,"input":[{"id":"msg_1"}]}', b"item_reference"),
])
def test_what_is_billed_above_the_body_is_refused_under_a_hard_limit(
    limited: Callable[[int], tuple[GatewayProcess, Tenant, str]],  # noqa: F811 - fixture
    fake: FakeProviderThread, path: bytes, body: bytes, named: bytes,
) -> None:
    """Was: reserved as a plain request of the body's bytes and max_tokens, and forwarded with
    the operator's key.  Anthropic's fast mode (``speed: "fast"``, or ``service_tier: "fast"``:
    2-6x the table's rates), US-only inference (``inference_geo``: 1.1x), a chat
    ``prediction`` (rejected prediction tokens are billed at output rates) and a Responses
    ``item_reference`` (a stored item, with or without its optional type, billed as input)
    cost more than the reservation bounds, and the row is priced at the table's rates, so
    no overrun shows it.  Now a 400 naming the member under a hard limit, nothing forwarded."""
    gateway, tenant, sqlite_path = limited(500_000_000)
    auth = b"Authorization: Bearer " + tenant.token.encode() + b"\r\n"
    fake.clear()
    answer = exchange(gateway.port, post(path, body, auth, CLOSE))
    assert answer.status == 400 and named in answer.body, answer.raw[:400]
    assert provider_calls(fake) == [] and rows(sqlite_path) == []
    plain = body.replace(b'"speed":"fast",', b"").replace(b'"inference_geo":"us",', b"").replace(
        b'"service_tier":"fast",', b'"service_tier":"auto",').replace(
        b'"prediction":{"type":"content","content":"aaaa"},', b"").replace(
        b'[{"type":"item_reference","id":"msg_1"}]', b'"hi"').replace(b'[{"id":"msg_1"}]', b'"hi"')
    answer = exchange(gateway.port, post(path, plain, auth, CLOSE))
    assert answer.status == 200 and len(provider_calls(fake)) == 1, answer.raw[:400]


def _upload(port: int, head: bytes, body_bytes: int, piece: int = 64 * 1024) -> tuple[int, bytes]:
    """Send ``head`` then up to ``body_bytes`` of its body in ``piece``-sized writes,
    stopping when the gateway answers; (body bytes sent, the answer read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        sock.setblocking(False)
        answer = b""
        while sent < body_bytes:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            if answer:
                break
            try:
                sent += sock.send(b"x" * min(piece, body_bytes - sent))
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        return sent, answer


@pytest.mark.parametrize("mode", ["firewall", "managed"])
def test_a_large_body_is_identified_before_it_is_read(
    mode: str, request: pytest.FixtureRequest, fake: FakeProviderThread
) -> None:
    """Was: a request's head was identified only once its whole body had arrived (unless it
    asked for 100-continue), so a client without a valid key could make the gateway hold
    ``max_body_bytes`` (32 MiB) per connection on as many connections as it opened, until
    the body timeout (8 connections: +240 MB of RSS).  Now a body past 64 KiB has its head
    identified first: an unknown key (firewall) or a request without a current token
    (managed) is the 401 before the rest is read, the connection closed; a valid key's
    large body is served as before."""
    started = request.getfixturevalue(mode)  # (one gateway a case: both would share a database)
    gateway = started[0]
    good = USER_KEY if mode == "firewall" else started[2].token
    size = 16 * 1024 * 1024

    def head(key: str, length: int) -> bytes:
        return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (key.encode(), length))

    fake.clear()
    for key in ("sk-not-a-registered-key-000000", "xproxy_not_a_token_0000000000"):
        sent, answer = _upload(gateway.port, head(key, size), size)
        assert answer.startswith(b"HTTP/1.1 401 "), (key, sent, answer[:200])
        assert sent < size // 4, sent  # refused long before the body's end
    assert provider_calls(fake) == []
    # A valid key's large body (sent in pieces, so parsed as it arrives) is served.
    text = b"y" * (300 * 1024)
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + text + b'"}]}'
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head(good, len(body)) + body[:1000])
        time.sleep(0.05)
        try:
            for i in range(1000, len(body), 64 * 1024):
                sock.sendall(body[i:i + 64 * 1024])
        except OSError:
            pass  # (refused early: the answer says why)
        answer = b""
        while b'"usage"' not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert len(provider_calls(fake)) == 1


def test_underscore_spellings_of_dropped_request_headers_are_dropped(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    """Was: ``Accept-Encoding``, ``Transfer-Encoding``, the method overrides and Google's
    field mask were dropped, but not their underscore spellings, which CGI/WSGI-style servers
    read as the same names (as the credentials' and ``x_request_id`` already are):
    ``accept_encoding: gzip`` could get a compressed answer whose usage the gateway cannot
    read (served unbilled), ``transfer_encoding: chunked`` be read as the framing of a body
    sent with Content-Length, ``x_http_method_override`` change the method.  Now none goes
    upstream, on the compiled request path and on httptools' (a chunked body)."""
    names = [b"accept_encoding", b"transfer_encoding", b"x_http_method_override", b"x_http_method",
             b"x_method_override", b"x_goog_fieldmask", b"Accept_Encoding"]
    extra = b"".join(name + b": gzip\r\n" for name in names) + CLOSE
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
               + extra + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    for data in (post(b"/v1/chat/completions", body, b"", extra), chunked):
        fake.clear()
        answer = exchange(gateway.port, data)
        assert answer.status == 200, answer.raw[:300]
        [call] = provider_calls(fake)
        sent = {name.lower() for name, _ in call.headers}
        assert not sent & {n.decode().lower() for n in names}, sent
        assert "content-type" in sent


def test_a_request_the_provider_never_answered_is_charged_its_reservation(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Was: under a managed hard limit, a request the provider received but did not answer
    within the first-byte timeout (a long non-streamed generation, say: the client gets the
    504) was settled at nothing -- row ``upstream_failed``, cost 0, the reservation released
    -- while the provider goes on generating and bills it (providers bill a request whose
    client left).  A tenant could spend without limit through requests slower than the
    timeout.  Now it is charged like a 2xx answer without usage: the reservation,
    ``price_entry = 'hard_limit_bound'``, in the spend.  (A connect error, where nothing
    was sent, still costs nothing.)"""
    reservation = request_cost(REQUEST_BODY)
    gateway, sqlite_path, tenant = start_managed(make_gateway, tmp_path, 10 * reservation,
                                                 upstream_first_byte_timeout_s=0.5)
    assert asyncio.run(send(gateway.url, tenant.token, REQUEST_BODY, {"x-fake-latency-ms": "1500"})) == 504
    (row,) = settled_rows(sqlite_path, 1)
    assert (row.status, row.http_status, row.cost_nano_usd, row.price_entry) == (
        "upstream_failed", 504, reservation, "hard_limit_bound")
    assert spent(sqlite_path, tenant.project_id) == reservation


def test_managed_count_tokens_is_free_and_sent_as_anthropic_expects(
    limited: Callable[[int], tuple[GatewayProcess, Tenant, str]],  # noqa: F811 - fixture
    fake: FakeProviderThread,
) -> None:
    """Was: managed mode treated ``POST /v1/messages/count_tokens`` as a Messages call: the
    output ceiling went into its body (``max_tokens``, which the endpoint does not take), the
    chat bearer (``Authorization``) instead of Anthropic's ``x-api-key``, and its answer (a
    count, no usage) was a row ``usage_missing`` -- under a hard limit charged the whole
    reservation (``hard_limit_bound``) for a call Anthropic does not bill, on every count
    Claude Code makes.  Now it is sent as the client sent it with the Messages credential,
    nothing is reserved, and the row is ``not_billable`` at 0 (as in config mode)."""
    gateway, tenant, sqlite_path = limited(500_000_000)
    auth = b"Authorization: Bearer " + tenant.token.encode() + b"\r\nanthropic-version: 2023-06-01\r\n"
    body = b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"hi"}]}'
    fake.clear()
    answer = exchange(gateway.port, post(b"/v1/messages/count_tokens", body, auth, CLOSE))
    assert answer.status == 200 and b"input_tokens" in answer.body, answer.raw[:300]
    [call] = provider_calls(fake)
    sent = {name.lower(): value for name, value in call.headers}
    assert call.body == body and "x-api-key" in sent and "authorization" not in sent
    for _ in range(100):
        if billed := rows(sqlite_path):
            break
        time.sleep(0.05)
    assert [(r.status, r.cost_nano_usd or 0, r.price_entry) for r in billed] == [("not_billable", 0, None)]
