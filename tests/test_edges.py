"""What the outside checker (benchmarks/attack_battery.py) found, each case over real sockets
against the real gateway and the fake provider: the request, what reached the provider,
the usage rows."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.attack_battery import Answer, post
from benchmarks.attack_battery import exchange as battery_exchange
from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_firewall import OTHER_KEY, USER_KEY, firewall  # noqa: F401 - fixture
from plano_fast.managed.bounds import UnboundedContent, token_bound
from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, managed, provision, rows  # noqa: F401 - fixture
from tests.test_managed_bounds import call, limited  # noqa: F401 - fixture


def exchange(port: int, data: bytes, **options: Any) -> Answer:
    """The battery's exchange, returning as soon as the answer is complete: a test that
    reads ``Answer.closed`` asks for the wait for a close (``close_wait_s``)."""
    options.setdefault("close_wait_s", 0.0)
    return battery_exchange(port, data, **options)

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
STREAM_CHAT = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'
#: ``post``'s extra header for a one-request connection (``exchange`` then needs no 0.3 s wait
#: to see whether the server closes)
CLOSE = b"Connection: close\r\n"
MESSAGES = b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'


def provider_calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


# -- managed mode serves tokens only ---------------------------------------------------------


@pytest.fixture(scope="module")
def managed_once(
    fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str, Tenant]]:
    """``managed`` (tests/test_managed.py) started once for the 15 refusal cases below (a
    managed start is a migrate and a serve, ~2 s each case); each case checks only the rows
    its own requests added."""
    config = write_config(tmp_path_factory.mktemp("managed_edges") / "plano_config.yaml", fake.port,
                          {"managed": "true", "managed_reload_s": 1})  # fmt: skip
    sqlite_path = str(config.with_suffix(".db"))
    tenants: list[Tenant] = []
    with GatewayProcess(config, env=ENV,
                        before_start=lambda: tenants.append(provision(None, sqlite_path, DEFAULT_PIPE))) as gateway:
        yield gateway, sqlite_path, tenants[0]


@pytest.mark.parametrize("credential", [b"", b"Authorization: Bearer sk-any-provider-key\r\n",
                                        b"x-api-key: sk-any-provider-key\r\n"])
@pytest.mark.parametrize(("path", "body", "status"), [
    (b"/v1/chat/completions", CHAT, 401),
    (b"/v1/messages", MESSAGES, 401),
    (b"/v1/responses", b'{"model":"gpt-4o-mini","input":"hi"}', 401),
    (b"/v1beta/models/gpt-4o-mini:generateContent", b'{"contents":[{"parts":[{"text":"hi"}]}]}', 404),
    (b"/routing/v1/chat/completions", CHAT, 404),
])
def test_managed_mode_refuses_requests_without_a_token(
    managed_once: Any, fake: FakeProviderThread, credential: bytes, path: bytes, body: bytes, status: int
) -> None:
    """Was: a request without an xproxy_ token went on to config-mode routing and was
    served with the config's own provider keys (200, a usage row with no project, no
    token and no budget): anyone reaching a managed gateway could spend past every hard
    limit.  Now refused in the client's format; nothing reaches the provider."""
    gateway, sqlite_path, tenant = managed_once
    earlier = {r.request_id for r in rows(sqlite_path)}  # the rows of the cases before this one
    fake.clear()
    answer = exchange(gateway.port, post(path, body, credential, b"anthropic-version: 2023-06-01\r\n"))
    assert answer.status == status, answer.raw[:300]
    assert "error" in (answer.error_json() or {})
    assert provider_calls(fake) == []
    # the tenant's token is served as before, and only its request is billed
    served = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"Authorization: Bearer " + tenant.token.encode() + b"\r\n"))
    assert served.status == 200, served.raw[:300]
    billed = [r for r in rows(sqlite_path) if r.request_id not in earlier]
    assert [r.token_id for r in billed] == [tenant.token_id]


# -- Expect: 100-continue on a pipelined request -----------------------------------------------


def _pipelined_expect(port: int, first_auth: bytes, second_auth: bytes) -> tuple[socket.socket, bytes]:
    """A slow stream, and behind it (same write) the head of a request that waits for
    100-continue before sending its body; returns the socket and what arrived in 4 s."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    first = post(b"/v1/chat/completions", STREAM_CHAT, first_auth, b"x-fake-events: 4\r\nx-fake-interval-ms: 100\r\n")
    second = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + second_auth
              + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CHAT))
    sock.sendall(first + second)
    data = b""
    sock.settimeout(0.2)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
        first_end = data.find(b"0\r\n\r\n")
        if first_end > 0 and b"HTTP/1.1 100 Continue\r\n\r\n" in data[first_end:]:
            break  # what the invited case waits for (else the 4 s, and its assertion fails)
    return sock, data


def test_pipelined_expect_continue_is_invited_when_its_turn_comes(gateway: GatewayProcess) -> None:
    """Was: a head asking for 100-continue that arrived while an earlier request was being
    answered never got its 100 (the check ran only when the head ended on an idle
    connection): a client waiting for it waited out the body timeout (408)."""
    sock, data = _pipelined_expect(gateway.port, b"", b"")
    with sock:
        first_end = data.find(b"0\r\n\r\n")
        assert first_end > 0, data[-300:]
        assert data[first_end + 5:].startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), data[first_end:]
        sock.sendall(CHAT)
        sock.settimeout(10)
        rest = b""
        while b"chat.completion" not in rest:
            chunk = sock.recv(65536)
            assert chunk, rest
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:200]


def test_pipelined_expect_continue_identifies_before_the_body(
    firewall: Any, fake: FakeProviderThread  # noqa: F811
) -> None:
    """The same pipelined head with an unregistered key gets its 401 instead of the 100 (the
    body is never invited) and the connection closes; only the first request was forwarded."""
    gateway, _, _ = firewall
    fake.clear()
    sock, data = _pipelined_expect(gateway.port, b"Authorization: Bearer " + USER_KEY.encode() + b"\r\n",
                                   b"Authorization: Bearer " + OTHER_KEY.encode() + b"\r\n")
    with sock:
        first_end = data.find(b"0\r\n\r\n")
        assert first_end > 0, data[-300:]
        after = data[first_end + 5:]
        assert after.startswith(b"HTTP/1.1 401 "), after[:200]
        assert b"100 Continue" not in data and b"connection: close" in after
    assert len(provider_calls(fake)) == 1


# -- managed hard limits: a member read two ways has no bound -----------------------------------


@pytest.mark.parametrize(("body", "named"), [
    (b'{"model":"gpt-4o-mini","max_tokens":50,"n":8,"n":1,"messages":[{"role":"user","content":"hi"}]}', "'n'"),
    # an image in the first of two "messages": json.loads saw only the second
    (b'{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":[{"type":"image_url",'
     b'"image_url":{"url":"https://example.com/cat.png"}}]}],"n":1,"messages":[{"role":"user","content":"hi"}]}',
     '"messages"'),  # (the scanner's refusal now, before the bound's: every mode refuses it)
])
def test_duplicate_members_under_a_hard_limit_are_refused(
    limited: Callable[[int], tuple[GatewayProcess, Tenant, str]],  # noqa: F811
    fake: FakeProviderThread, body: bytes, named: str,
) -> None:
    """Was: the reservation read the body with json.loads (the last duplicate wins), so
    ``"n":8,"n":1`` reserved one choice and went to a provider that may honour the first
    (eight: the hard limit overshot), and an image in a first ``messages`` was never seen.
    Now a 400 naming the member; nothing forwarded, nothing billed."""
    gateway, tenant, sqlite_path = limited(10 ** 12)
    fake.clear()
    status, doc, _ = call(gateway.url, tenant.token, body)
    assert status == 400 and named in doc["error"]["message"], doc
    assert provider_calls(fake) == [] and rows(sqlite_path) == []


@pytest.mark.parametrize("doc", [
    '{"contents":[],"generationConfig":{"candidateCount":1},"generation_config":{"candidateCount":8}}',
    '{"contents":[],"generationConfig":{"candidateCount":1,"candidate_count":8}}',
    '{"model":"m","tools":[{"type":"function","function":{"name":"a","name":"b"}}],"messages":[]}',
])
def test_a_member_in_two_spellings_or_twice_has_no_bound(doc: str) -> None:
    with pytest.raises(UnboundedContent, match="more than once|both"):
        token_bound(doc.encode(), 100)


def test_the_largest_output_cap_is_reserved(
    limited: Callable[[int], tuple[GatewayProcess, Tenant, str]], fake: FakeProviderThread,  # noqa: F811
) -> None:
    """Was: the first of max_tokens / max_completion_tokens was reserved, while vLLM honours
    max_completion_tokens first: ``"max_tokens":10,"max_completion_tokens":5000`` reserved 10
    output tokens for an answer of up to 5000.  The limit here fits 100 output tokens.
    (Pinned to the standard tier, whose prices the limit is computed at.)"""
    body = (b'{"model":"gpt-4o-mini","max_tokens":10,"max_completion_tokens":5000,"service_tier":"default",'
            b'"messages":[{"role":"user","content":"hi"}]}')
    gateway, tenant, sqlite_path = limited(len(body) * 150 + 100 * 600)  # gpt-4o-mini: 150 / 600 nano-USD
    fake.clear()
    status, doc, _ = call(gateway.url, tenant.token, body)
    assert status == 402 and doc["error"]["code"] == "budget_exceeded", doc
    assert provider_calls(fake) == []
    fits = body.replace(b"5000", b"100")
    assert call(gateway.url, tenant.token, fits)[0] == 200


# -- HTTP/1.0 keep-alive -------------------------------------------------------------------------


def test_http10_keep_alive_is_announced(gateway: GatewayProcess) -> None:
    """Was: an HTTP/1.0 client asking for keep-alive got no ``connection: keep-alive`` back
    while the gateway kept the connection open, so the client took it as closing (RFC 9112
    9.3) -- one that reads to the end of the connection waited out the idle timeout."""
    one = post(b"/v1/chat/completions", CHAT, b"", b"Connection: keep-alive\r\n", version=b"HTTP/1.0")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        for _ in range(2):  # the same connection serves a second request
            sock.sendall(one)
            data = b""
            while b"chat.completion" not in data or not data.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            head = data.partition(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 200") and b"\r\nconnection: keep-alive\r\n" in head, head
    plain = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"", version=b"HTTP/1.0"), close_wait_s=0.3)
    assert plain.status == 200 and plain.header(b"connection") == b"close" and plain.closed


def _read_to_close(sock: socket.socket, limit_s: float = 10.0) -> bytes:
    data = b""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the gateway did not close the connection: {data[:2000]!r}")


def _pipelined(port: int, first: bytes, second: bytes) -> bytes:
    """``first`` and ``second`` in one write (the second head is parsed while the first
    request waits on the provider); everything the gateway answers, to its close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(first + second)
        return _read_to_close(sock)


_SLOW = b"x-fake-latency-ms: 300\r\n"


def test_http10_keep_alive_is_announced_with_an_http11_head_queued(gateway: GatewayProcess) -> None:
    """Was: the answer's framing and keep-alive line followed the connection's last parsed
    head, not the request answered: an HTTP/1.1 head pipelined behind an HTTP/1.0
    keep-alive request took the 1.0 answer's ``connection: keep-alive`` away."""
    one = post(b"/v1/chat/completions", CHAT, b"", b"Connection: keep-alive\r\n" + _SLOW, version=b"HTTP/1.0")
    two = post(b"/v1/chat/completions", CHAT, b"", b"Connection: close\r\n")
    data = _pipelined(gateway.port, one, two)
    first_head, _, rest = data.partition(b"\r\n\r\n")
    first_head = first_head.lower()
    assert first_head.startswith(b"http/1.1 200") and b"\r\nconnection: keep-alive\r\n" in first_head, first_head
    assert b"transfer-encoding" not in first_head, first_head
    # the connection persisted: the HTTP/1.1 request was answered on it
    assert rest.count(b"HTTP/1.1 200") == 1, data[:2000]


def test_http10_stream_is_never_chunked_with_an_http11_head_queued(gateway: GatewayProcess) -> None:
    """Was: an HTTP/1.0 streaming answer with an HTTP/1.1 head queued behind it was sent
    ``transfer-encoding: chunked``, which an HTTP/1.0 client cannot decode.  It is
    delimited by the connection's close, as for any HTTP/1.0 answer of unknown length."""
    one = post(b"/v1/chat/completions", STREAM_CHAT, b"", b"Connection: keep-alive\r\n" + _SLOW, version=b"HTTP/1.0")
    two = post(b"/v1/chat/completions", CHAT, b"")
    data = _pipelined(gateway.port, one, two)
    head, _, body = data.partition(b"\r\n\r\n")
    head = head.lower()
    assert head.startswith(b"http/1.1 200"), head
    assert b"transfer-encoding" not in head and b"\r\nconnection: close\r\n" in head, head
    assert body.startswith(b"data: ") and body.rstrip().endswith(b"data: [DONE]"), body[-300:]
    assert b"HTTP/1.1" not in body, body[-300:]  # closed after the stream: the 1.1 request is unread


def test_http11_stream_is_chunked_with_an_http10_head_queued(gateway: GatewayProcess) -> None:
    """The other way round: an HTTP/1.1 stream with an HTTP/1.0 head queued behind it was
    delimited by closing the connection (so the queued request was never answered).  It is
    chunked, and the HTTP/1.0 request is answered after it."""
    one = post(b"/v1/chat/completions", STREAM_CHAT, b"", _SLOW)
    two = post(b"/v1/chat/completions", CHAT, b"", version=b"HTTP/1.0")
    data = _pipelined(gateway.port, one, two)
    head, _, rest = data.partition(b"\r\n\r\n")
    head = head.lower()
    assert head.startswith(b"http/1.1 200") and b"\r\ntransfer-encoding: chunked\r\n" in head, head
    assert b"connection: close" not in head, head
    body, sep, second = rest.partition(b"\r\n0\r\n\r\n")
    assert sep and b"data: [DONE]" in body, rest[-300:]
    second_head = second.partition(b"\r\n\r\n")[0].lower()
    assert second_head.startswith(b"http/1.1 200") and b"\r\nconnection: close\r\n" in second_head, second


# -- a wildcard model that is a dot segment ------------------------------------------------------


@pytest.fixture(scope="module")
def wildcards(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A config-mode gateway with ``azure_openai/*`` and ``gemini/*``, started once for the
    wildcard cases below (each was a gateway start of its own, with this same config):
    they read only the answers and what reached the provider (cleared first), and write
    nothing a later case reads (a 400 before routing, or a 200)."""
    config = write_config(tmp_path_factory.mktemp("wildcards") / "plano_config.yaml", fake.port, None, (
        f"  - model: azure_openai/*\n    base_url: {fake.url}\n    access_key: sk-azure\n"
        f"  - model: gemini/*\n    base_url: {fake.url}/v1beta\n    access_key: sk-gem\n"))  # fmt: skip
    with GatewayProcess(config) as gateway:
        yield gateway


@pytest.mark.parametrize("model", [b"azure_openai/..", b"azure_openai/.", b"gemini/.."])
def test_dot_segment_models_match_no_wildcard(
    wildcards: GatewayProcess, fake: FakeProviderThread, model: bytes
) -> None:
    """Was: ``azure_openai/..`` matched ``azure_openai/*`` and went upstream as
    ``/openai/deployments/../chat/completions`` -- ``/openai/chat/completions`` once
    normalised, another endpoint than the one metered, with the gateway's key."""
    gateway = wildcards
    fake.clear()
    body = b'{"model":"' + model + b'","messages":[{"role":"user","content":"hi"}]}'
    answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b""))
    assert answer.status == 400 and "not found" in answer.error_json()["error"]["message"], answer.body
    assert provider_calls(fake) == []
    plain = body.replace(model, model.split(b"/")[0] + b"/my-deployment")
    assert exchange(gateway.port, post(b"/v1/chat/completions", plain, b"")).status == 200


def test_a_wildcard_model_that_becomes_a_path_segment_is_one_plain_segment(
    wildcards: GatewayProcess, fake: FakeProviderThread
) -> None:
    """Was: ``gemini/x\r\nHost: evil``, ``gemini/../x``, ``azure_openai/x?key=1`` (any id
    after a wildcard's prefix) were routed and sent percent-encoded into the upstream path
    (``/v1beta/models/..%2Fx:generateContent``): no request-line injection, but a path a
    decoding proxy or server reads as another endpoint.  Where the model is a path segment
    upstream, the id must be one segment of letters, digits and ``._-``: else the
    unknown-model 400, nothing forwarded."""
    gateway = wildcards
    for prefix in (b"gemini/", b"azure_openai/"):
        for tail in (b"x\\r\\nHost: evil", b"x\\u0000y", b"../x", b"x/y", b"x?key=1", b"x#y", b"x%2F..", b"x y",
                     b"x:generateContent", b"-x", b"\\u2028x", b"x" * 300):
            fake.clear()
            body = b'{"model":"' + prefix + tail + b'","messages":[{"role":"user","content":"hi"}]}'
            answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b""))
            assert answer.status == 400 and "not found" in answer.error_json()["error"]["message"], (tail, answer.body)
            assert provider_calls(fake) == [], (prefix, tail)
        fake.clear()
        plain = b'{"model":"' + prefix + b'my-model_2.0","messages":[{"role":"user","content":"hi"}]}'
        assert exchange(gateway.port, post(b"/v1/chat/completions", plain, b"")).status == 200
        [call] = provider_calls(fake)
        assert "/my-model_2.0" in call.path, call.path
    # a body-placed wildcard id keeps its '/' (OpenRouter-style "vendor/model" ids)
    fake.clear()
    vendor = b'{"model":"openai/vendor/model-x","messages":[{"role":"user","content":"hi"}]}'
    assert exchange(gateway.port, post(b"/v1/chat/completions", vendor, b"")).status == 200
    assert [c.json()["model"] for c in provider_calls(fake)] == ["vendor/model-x"]


# -- the access log: one line per answer for every reader ---------------------------------------


def test_a_model_name_cannot_forge_an_access_log_line(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Was: NEL, LS and PS in a client's model name were written raw; ``str.splitlines()``
    (benchmarks/chaos.py, features.py) ends a line there, so the rest of the name read as a
    record of its own: a forged one."""
    log_path = tmp_path / "access.jsonl"
    gateway = make_gateway({"access_log": str(log_path)})
    forged = '{"request_id":"forged","status":200,"outcome":"ok"}'
    for brk in ("\x85", "\u2028", "\u2029"):
        body = json.dumps({"model": "x" + brk + forged, "messages": [{"role": "user", "content": "hi"}]}).encode()
        assert exchange(gateway.port, post(b"/v1/chat/completions", body, b"")).status == 400
    gateway.stop()  # the writer's last lines are flushed at stop
    lines = log_path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["status"] == 400 for line in lines), lines
    assert all(json.loads(line)["model"].endswith(forged) for line in lines)


# -- a ?key= credential is checked as decoded ----------------------------------------------------

GEMINI = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'


def test_query_key_with_encoded_whitespace_or_a_bad_escape_is_refused(
    firewall: Any, fake: FakeProviderThread  # noqa: F811
) -> None:
    """Was: ``?key=KEY%20`` (or ``+KEY``, ``%09``) was decoded and then stripped, so a key
    with encoded whitespace was verified and forwarded as the registered one, although
    docs/security.md refuses spaces in a key; a malformed escape (``%zz``, a trailing ``%``)
    was taken literally.  Each is a 401, never forwarded; the plain key is served."""
    gateway, _, _ = firewall
    key = USER_KEY.encode()
    path = b"/v1beta/models/gemini-2.0-flash:generateContent?key="
    for value in (key + b"%20", key + b"+", b"+" + key, b"%20" + key, key + b"%09", b"%09" + key,
                  key + b"%", key + b"%zz", key + b"%0d%0a", key + b"%00", key + b"%C3%A9"):
        fake.clear()
        answer = exchange(gateway.port, post(path + value, GEMINI, b""))
        assert answer.status == 401, (value, answer.raw[:300])
        assert answer.error_json()["error"]["status"] == "UNAUTHENTICATED", answer.body  # Gemini format
        assert USER_KEY not in answer.body.decode()
        assert provider_calls(fake) == [], value
    # the same key, plainly or with an escape that decodes to itself, is served once
    for value in (key, key.replace(b"-", b"%2D", 1)):
        fake.clear()
        answer = exchange(gateway.port, post(path + value, GEMINI, b""))
        assert answer.status == 200, answer.raw[:300]
        [call] = provider_calls(fake)
        assert call.header_all("x-goog-api-key") == [USER_KEY] and "key=" not in call.path


# -- a credential-like query parameter, in config and managed mode --------------------------------
# (firewall mode: tests/test_firewall_hardening.py, test_a_credential_like_query_parameter_...)


@pytest.mark.parametrize("name", [b"key%00", b"key[]", b"$key", b"api_key", b"oauth_token", b"%256Bey",
                                  b"x_api_key", b"ocp-apim-subscription-key", b"token"])
def test_config_mode_refuses_a_credential_like_query_parameter(
    gateway: GatewayProcess, fake: FakeProviderThread, name: bytes
) -> None:
    """Was: config mode forwarded the query as sent apart from ``key`` / ``access_token``,
    so ``?key[]=``, ``?$key=``, ``?api_key=`` ... reached the provider beside the
    gateway's own key (or, on a passthrough provider, beside the client's checked one): a
    credential nobody verified.  Now 401 in the client's format, nothing forwarded."""
    for model, auth in ((b"gpt-4o-mini", b""), (b"vllm/llama-passthrough", b"Authorization: Bearer sk-client-key\r\n")):
        fake.clear()
        body = b'{"model":"' + model + b'","messages":[{"role":"user","content":"hi"}]}'
        answer = exchange(gateway.port, post(b"/v1/chat/completions?" + name + b"=sk-other-key", body, auth, CLOSE))
        assert answer.status == 401, (name, model, answer.raw[:300])
        assert answer.error_json()["error"]["code"] == "invalid_api_key", answer.body
        assert b"sk-other-key" not in answer.raw
        assert provider_calls(fake) == []
    fake.clear()  # an ordinary parameter is still forwarded
    answer = exchange(gateway.port, post(b"/v1/chat/completions?monkey=1", CHAT, b"", CLOSE))
    assert answer.status == 200, answer.raw[:300]
    assert [c.path for c in provider_calls(fake)] == ["/v1/chat/completions?monkey=1"]


@pytest.mark.parametrize("query", [b"alt=sse;key=sk-other-key", b"key=sk-other-key;alt=sse", b"x=1&alt=sse;token=t"])
def test_a_credential_in_a_semicolon_joined_query_part_is_refused(
    gateway: GatewayProcess, fake: FakeProviderThread, query: bytes
) -> None:
    """Was: the ``&``-part was dropped whole, so ``?alt=sse;key=K`` reached the provider
    without ``alt=sse`` (a stream answered as one JSON array) -- while Google, splitting on
    ``&`` only, reads ``alt`` as ``sse;key=K``.  Which reading a provider takes cannot be
    known: now 401, nothing forwarded (a passthrough provider included)."""
    for model, auth in ((b"gpt-4o-mini", b""), (b"vllm/llama-passthrough", b"Authorization: Bearer sk-client-key\r\n")):
        fake.clear()
        body = b'{"model":"' + model + b'","messages":[{"role":"user","content":"hi"}]}'
        answer = exchange(gateway.port, post(b"/v1/chat/completions?" + query, body, auth, CLOSE))
        assert answer.status == 401, (query, model, answer.raw[:300])
        assert b"sk-other-key" not in answer.raw
        assert provider_calls(fake) == []


def test_managed_mode_refuses_a_credential_like_query_parameter(
    managed_once: Any, fake: FakeProviderThread
) -> None:
    """Was: a token and ``?key[]=`` (or ``?$key=``) was served (200): managed mode forwards
    no client query, but two credentials are refused everywhere else (``?key=`` and a token
    is a 401).  Now the same rule in every mode: 401, nothing forwarded."""
    gateway, _, tenant = managed_once
    token = b"Authorization: Bearer " + tenant.token.encode() + b"\r\n"
    for name in (b"key", b"key[]", b"$key", b"api_key"):
        fake.clear()
        answer = exchange(gateway.port, post(b"/v1/chat/completions?" + name + b"=sk-other-key", CHAT, token, CLOSE))
        assert answer.status == 401, (name, answer.raw[:300])
        assert provider_calls(fake) == []


# -- x-request-id: one upstream, the client's only when valid ------------------------------------


def test_one_valid_x_request_id_goes_upstream(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    """Was: the client's x-request-id went upstream as sent -- twice when sent twice, with
    non-ASCII bytes, spaces, any length.  Now exactly one: the client's when it sent one of 1
    to 128 visible ASCII bytes, else the gateway's own id -- the one in x-plano-request-id
    and on the usage row (which always carries the gateway's id: a client's id is not unique)."""
    from tests.test_billing_e2e import read_rows

    sqlite_path = str(gateway.config_path.with_suffix(".db"))
    kept = [b"my-trace-0123", b"x" * 128, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    replaced = [b"one\r\nx-request-id: two", b"r\xc3\xa9q\x85", b"a b", b"x" * 129,
                b"same\r\nx-request-id: same"]
    served: list[bytes] = []
    for value, keep in [(v, True) for v in kept] + [(v, False) for v in replaced]:
        fake.clear()
        answer = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"", b"x-request-id: " + value + b"\r\n" + CLOSE))
        assert answer.status == 200, (value, answer.raw[:300])
        ours = answer.header(b"x-plano-request-id")
        assert ours is not None
        served.append(ours)
        [call] = provider_calls(fake)
        expected = value if keep else ours
        assert call.header_all("x-request-id") == [expected.decode("latin-1")], value
    deadline = time.monotonic() + 8
    while not set(served) <= {r.request_id.encode() for r in read_rows(None, sqlite_path)}:
        assert time.monotonic() < deadline, "the usage rows carry the gateway's ids"
        time.sleep(0.2)


def test_x_request_id_in_its_underscore_spelling_is_the_client_request_id(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    """Was: ``x_request_id`` (which CGI/WSGI servers read as x-request-id) went upstream as
    sent, beside the one x-request-id the gateway writes: a second, unchecked id.  Now it is
    the client's request id as the hyphen spelling is: alone and valid, the one sent up (as
    x-request-id); beside another or invalid, the gateway's own; never forwarded as sent.
    On the request fast path and on the httptools path (a value with a trailing space: not
    kept there, whatever the spelling -- ``x-request-id: U2 `` gets the gateway's id too)."""
    cases = [(b"x_request_id: U1\r\n", b"U1"), (b"X_Request_Id: U2 \r\n", None),
             (b"x-request-id: A\r\nx_request_id: B\r\n", None), (b"x_request_id: a b\r\n", None)]  # fmt: skip
    for extra, expected in cases:
        fake.clear()
        answer = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"", extra + CLOSE))
        assert answer.status == 200, (extra, answer.raw[:300])
        ours = answer.header(b"x-plano-request-id")
        assert ours is not None
        [call] = provider_calls(fake)
        ids = [(n.lower(), v) for n, v in call.headers if n.replace("_", "-").lower() == "x-request-id"]
        assert ids == [("x-request-id", (expected or ours).decode())], (extra, ids)


# -- HEAD: a head, never a body ------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/healthz", b"/v1/models", b"/v1/chat/completions", b"/nowhere"])
def test_a_head_request_gets_no_body(gateway: GatewayProcess, path: bytes) -> None:
    """Was: HEAD got the GET's (or the error's) body after its head -- /healthz's JSON, a
    405's error -- which a front proxy reads as the start of the next response on the
    connection (RFC 9110 9.3.2: a HEAD answer has no content): response desync.  Now the
    head only, and the pipelined GET behind it is answered right after it."""
    data = _pipelined(gateway.port, b"HEAD " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
                      b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:300]
    assert rest.startswith(b"HTTP/1.1 200 "), data[:600]
    second_head, _, second_body = rest.partition(b"\r\n\r\n")
    assert b'"ok"' in second_body, rest[:400]


# -- a NUL in a row's text -----------------------------------------------------------------------


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_a_model_with_a_nul_is_still_billed(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    """Was: ``"model":"openai/x\\u0000y"`` (a wildcard forwards any id) was served, and
    PostgreSQL refused its usage row (text cannot hold U+0000: CharacterNotInRepertoireError)
    -- a served request without a row, kept only in the journal's rejected file.  Now the
    NUL is written as U+FFFD in both stores (the same row either way)."""
    from tests.test_billing_e2e import read_rows

    dsn = request.getfixturevalue("pg_dsn") if store == "postgres" else None
    gateway = make_gateway({"database_url": f'"{dsn}"'} if dsn else {})
    body = b'{"model":"openai/x\\u0000y","messages":[{"role":"user","content":"hi"}]}'
    assert exchange(gateway.port, post(b"/v1/chat/completions", body, b"")).status == 200
    deadline = time.monotonic() + 8
    rows = read_rows(dsn, str(tmp_path / "plano_config_0.db"))
    while not rows and time.monotonic() < deadline:  # (an unknown model is never priced: no wait for it)
        time.sleep(0.2)
        rows = read_rows(dsn, str(tmp_path / "plano_config_0.db"))
    assert [(r.model, r.requested_model) for r in rows] == [("x\ufffdy", "openai/x\ufffdy")]


# -- Upgrade: one answer -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [(b"POST", b"/v1/chat/completions"), (b"GET", b"/healthz")])
def test_an_upgrade_request_gets_one_answer(
    gateway: GatewayProcess, fake: FakeProviderThread, method: bytes, path: bytes
) -> None:
    """Was: a request with ``Connection: Upgrade`` + ``Upgrade: websocket`` was dispatched
    without its body (httptools ends an upgrade request at its head) -- a POST got "not
    valid JSON", a GET its answer -- and then the upgrade was refused: two answers to one
    request, so a front proxy that forwards Upgrade took the second as the answer to its
    next request.  Now one 400 and the connection closes; nothing forwarded."""
    inner = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    fake.clear()
    data = (method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: %d\r\n\r\n" % len(inner) + inner)
    answer = exchange(gateway.port, data, until_close=True, wait_s=5)
    assert answer.raw.count(b"HTTP/1.1 ") == 1, answer.raw[:600]
    assert answer.status == 400 and answer.closed, answer.raw[:300]
    assert "upgrade" in answer.error_json()["error"]["message"]
    assert provider_calls(fake) == []


def test_head_on_an_unbilled_path_is_not_forwarded(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    """Was: ``HEAD`` on a ``firewall_unbilled_paths`` path was forwarded; the provider's
    answer (a Content-Length, no body) was relayed as if a body followed, so the client
    waited for the idle timeout and got a cut answer.  Now a 405 at once, nothing forwarded
    (GET on the same path is forwarded as before)."""
    from tests.test_firewall import setup_keys

    sqlite_path = str(tmp_path / "plano_config_0.db")
    gateway = make_gateway({"mode": "firewall", "key_registry_reload_s": 1, "firewall_unbilled_paths": "[/v1/files]"},
                           before_start=lambda: setup_keys(sqlite_path, fake.url))
    auth = b"Authorization: Bearer " + USER_KEY.encode() + b"\r\n"
    fake.clear()
    # (a body after the head would arrive with it: 0.3 s to see it)
    answer = exchange(gateway.port, b"HEAD /v1/files HTTP/1.1\r\nHost: gw\r\n" + auth + b"\r\n", wait_s=4,
                      close_wait_s=0.3)
    assert answer.status == 405 and answer.body == b"", answer.raw[:300]
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, b"GET /v1/files HTTP/1.1\r\nHost: gw\r\n" + auth + b"\r\n", wait_s=4)
    assert [c.method for c in provider_calls(fake)] == ["GET"], answer.raw[:300]


# -- Groq: usage only under x_groq, in the final chunk ---------------------------------------------


def test_groq_usage_under_x_groq_is_billed(make_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    """Groq streams without ``stream_options.include_usage`` report usage only in the final
    chunk's ``x_groq.usage`` (top-level ``usage`` absent or null).  Over real sockets, from a
    provider that answers exactly so: the stream is relayed as sent and the usage row has
    Groq's counts, priced (was pinned only by the scanner's unit tests)."""
    from benchmarks.attack_battery import ScriptedProvider, sse_answer
    from tests.test_billing_e2e import wait_rows

    groq = ScriptedProvider()
    try:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return json.dumps({"id": "chatcmpl-g", "object": "chat.completion.chunk", "created": 1,
                               "model": "llama-3.1-8b-instant", "system_fingerprint": "fp_g",
                               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                               **extra}).encode()  # fmt: skip

        usage = {"queue_time": 0.02, "prompt_tokens": 5003, "prompt_time": 0.01, "completion_tokens": 359,
                 "completion_time": 0.3, "total_tokens": 5362, "total_time": 0.31}  # fmt: skip
        events = [chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_01"}),
                  chunk({"content": "Hello"}),
                  chunk({}, "stop", x_groq={"id": "req_01", "usage": usage}),
                  b"[DONE]"]  # fmt: skip
        groq.add("groq-stream", sse_answer(events))
        extra = (f"  - model: groq/llama-3.1-8b-instant\n    base_url: http://127.0.0.1:{groq.port}\n"
                 "    access_key: gsk-server-key\n")  # fmt: skip
        gateway = make_gateway({}, extra_providers=extra)
        body = b'{"model":"groq/llama-3.1-8b-instant","stream":true,"messages":[{"role":"user","content":"hi"}]}'
        answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b"", b"x-script: groq-stream\r\n" + CLOSE))
        assert answer.status == 200, answer.raw[:300]
        assert b'"usage": {"queue_time"' in answer.raw and b"[DONE]" in answer.raw  # relayed as sent
        assert len(groq.requests) == 1 and b"authorization: Bearer gsk-server-key" in groq.requests[0]
        [usage_row] = wait_rows(None, str(tmp_path / "plano_config_0.db"), 1)
        assert (usage_row.provider, usage_row.model, usage_row.streaming) == ("groq", "llama-3.1-8b-instant", True)
        assert (usage_row.input_tokens, usage_row.output_tokens, usage_row.status) == (5003, 359, "ok")
        deadline = time.monotonic() + 8  # priced in the background
        while not usage_row.priced and time.monotonic() < deadline:
            time.sleep(0.2)
            [usage_row] = wait_rows(None, str(tmp_path / "plano_config_0.db"), 1)
        assert usage_row.priced and (usage_row.cost_nano_usd or 0) > 0, usage_row
    finally:
        groq.close()


# -- round e: memory per body byte, Google's answer-shaping parameters, background Responses ----


def _peak_rss_kb(gateway: GatewayProcess) -> int:
    """The gateway's processes' peak resident sizes (VmHWM), summed."""
    pid = gateway.proc.pid
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total


def test_a_body_in_tiny_chunks_costs_about_its_size(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    """Was: each chunk of a chunked body was kept as its own bytes object until the body
    was complete: a 4 MiB body sent in 2-byte chunks raised the gateway's peak memory by
    ~270 MB on main (~28 bytes per body byte: a 32 MiB body, the default limit, ~900 MB per
    connection, before any identification).  Now small pieces are gathered in one bytearray: the body costs about
    its size, and arrives intact (small and big chunks mixed).  (Two million chunks can take a
    loaded machine past the default 10 s to receive a request: a minute here.)"""
    gateway = make_gateway({"request_head_timeout_s": 60})
    text = b"a" * (4 * 1024 * 1024)
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + text + b'"}]}'
    pieces: list[bytes] = []
    at = 0
    while at < len(body):  # 2-byte chunks, every 7th of 1 byte, every 50,000th of 5,000 (big pieces between small)
        size = 5000 if len(pieces) % 50_000 == 0 else 1 if len(pieces) % 7 == 3 else 2
        pieces.append(body[at:at + size])
        at += size
    chunked = b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for piece in pieces)
    fake.clear()
    before = _peak_rss_kb(gateway)
    answer = exchange(gateway.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n" + CLOSE + b"\r\n" + chunked + b"0\r\n\r\n", wait_s=60)
    grown_mb = (_peak_rss_kb(gateway) - before) / 1024
    assert answer.status == 200, answer.raw[:300]
    assert [c.body for c in provider_calls(fake)] == [body]
    assert grown_mb < 48, f"peak RSS grew {grown_mb:.0f} MB for a 4 MiB body"


#: Google's system parameters that would answer without a readable usage (a field mask
#: without usageMetadata, binary protobuf, JSONP, ...), in the spellings Google reads
ANSWER_SHAPING_QUERIES = [b"alt=sse&fields=candidates", b"alt=sse&%24fields=candidates", b"alt=proto",
                          b"%24alt=media", b"alt=sse&callback=f", b"alt=sse&$callback=f", b"alt=sse&%24ct=text/plain",
                          b"alt=sse&%24httpMethod=GET", b"alt=sse;fields=candidates", b"alt=json&alt=sse"]


def test_google_answer_shaping_parameters_are_refused(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread  # noqa: F811 - fixture
) -> None:
    """Was: forwarded.  Every Google API honours its system parameters: ``fields`` (or
    ``$fields``) is a response field mask -- ``fields=candidates`` answers without
    ``usageMetadata`` -- ``alt=proto`` answers in binary protobuf, ``callback`` in JSONP:
    the request is served and its row is ``usage_missing``, left unpriced (never counted
    against a limit).  Now each is a 400 naming the parameter, nothing forwarded; the
    ``X-Goog-FieldMask`` header (the mask's other spelling) is dropped; ``alt=sse`` /
    ``alt=json`` and harmless ones (``prettyPrint``, ``quotaUser``) pass."""
    gateway, _, _ = firewall
    auth = b"x-goog-api-key: " + USER_KEY.encode() + b"\r\n"
    body = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
    path = b"/v1beta/models/gemini-2.0-flash:streamGenerateContent?"
    fake.clear()
    for query in ANSWER_SHAPING_QUERIES:
        answer = exchange(gateway.port, post(path + query, body, auth, CLOSE))
        assert answer.status == 400, (query, answer.raw[:300])
        assert "change the form of the provider's answer" in answer.error_json()["error"]["message"], query
    assert provider_calls(fake) == []
    # (``$alt=json;enum-encoding=int``: what Google's REST client libraries send)
    passing = (b"alt=sse", b"%24alt=json&prettyPrint=false&quotaUser=x", b"$alt=json;enum-encoding=int")
    for query in passing:
        answer = exchange(gateway.port, post(path + query, body, auth, b"X-Goog-FieldMask: candidates\r\n" + CLOSE))
        assert answer.status == 200, (query, answer.raw[:300])
    calls = provider_calls(fake)
    assert [c.path.partition("?")[2].encode() for c in calls] == list(passing)
    assert [c.header("x-goog-fieldmask") for c in calls] == [None] * len(passing)


def test_config_mode_refuses_answer_shaping_parameters(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    """Config mode forwards the client's query to its provider (a Gemini provider reads
    Google's system parameters on every endpoint): the same 400, nothing forwarded; the
    header form is dropped."""
    fake.clear()
    answer = exchange(gateway.port, post(b"/v1/chat/completions?fields=choices", CHAT, b"", CLOSE))
    assert answer.status == 400 and "'fields'" in answer.error_json()["error"]["message"], answer.raw[:300]
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"", b"X-Goog-FieldMask: choices\r\n" + CLOSE))
    assert answer.status == 200, answer.raw[:300]
    assert [c.header("x-goog-fieldmask") for c in provider_calls(fake)] == [None]


def test_the_field_mask_header_is_never_forwarded() -> None:
    """Both builds of the header pass drop X-Goog-FieldMask (the socket tests exercise the
    compiled request path)."""
    from plano_fast.wire import _head_py, forward_request_headers

    headers = [(b"x-goog-fieldmask", b"candidates"), (b"accept", b"*/*")]
    for forward in (forward_request_headers, _head_py.forward_request_headers):
        assert forward(headers)[0] == b"accept: */*\r\n"


def test_config_mode_refuses_background_responses(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    """Was: firewall and managed mode refused ``background: true`` on /v1/responses (its
    usage is only readable later, from an endpoint nobody meters), config mode forwarded it
    with the gateway's own access_key: OpenAI answers ``queued`` without usage and runs it,
    unbilled.  Now the same 400 in every mode, nothing forwarded."""
    fake.clear()
    body = b'{"model":"gpt-4o-mini","input":"hi","background":true}'
    answer = exchange(gateway.port, post(b"/v1/responses", body, b"", CLOSE))
    assert answer.status == 400 and "background" in answer.error_json()["error"]["message"], answer.raw[:300]
    assert provider_calls(fake) == []


def test_a_deeply_nested_body_naming_background_is_a_400(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread  # noqa: F811 - fixture
) -> None:
    """Was: a 500 "internal gateway error" -- the background check parses a body naming
    ``background`` with json, which raises RecursionError (not ValueError) past ~1,000
    levels.  Now the scanner's 400 (nested too deep), nothing forwarded."""
    gateway, _, _ = firewall
    fake.clear()
    body = b'{"background":false,"model":"gpt-4o-mini","input":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = exchange(gateway.port, post(b"/v1/responses", body, b"Authorization: Bearer " + USER_KEY.encode() + b"\r\n", CLOSE))
    assert answer.status == 400 and "nested" in answer.error_json()["error"]["message"], answer.raw[:300]
    assert provider_calls(fake) == []


@pytest.mark.parametrize("mode", ["firewall", "config"])
def test_guardrails_refuse_a_gemini_body_they_cannot_read(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path, mode: str
) -> None:
    """Was: a Gemini request's body is not scanned (the model is in the path), and the DLP
    floor reads a body that is not JSON as "nothing found": a gzip-encoded body
    (``Content-Encoding: gzip``, which Google's front end decodes) or an invalid one went
    past a ``block`` policy unread and was forwarded.  Now, with guardrails on, such a body
    is the scanner's 400, nothing forwarded; the plain one is still blocked (403)."""
    import gzip

    from tests.test_firewall import setup_keys

    settings: dict[str, object] = {"guardrails": json.dumps({"detectors": {"ssn": "block"}})}
    sqlite_path = str(tmp_path / "plano_config_0.db")
    if mode == "firewall":
        settings.update({"mode": "firewall", "key_registry_reload_s": 1})
        gateway = make_gateway(settings, before_start=lambda: setup_keys(sqlite_path, fake.url))
        auth, model = b"x-goog-api-key: " + USER_KEY.encode() + b"\r\n", b"gemini-2.0-flash"
    else:
        extra = f"  - model: gemini/*\n    base_url: {fake.url}/v1beta\n    access_key: sk-gemini\n"
        gateway = make_gateway(settings, extra_providers=extra)
        auth, model = b"", b"gemini%2Fgemini-2.0-flash"
    path = b"/v1beta/models/" + model + b":generateContent"
    secret = b'{"contents":[{"role":"user","parts":[{"text":"my ssn is 078-05-1120"}]}]}'
    fake.clear()
    answer = exchange(gateway.port, post(path, secret, auth, CLOSE))
    assert answer.status == 403, answer.raw[:300]
    for body, extra_header in [(gzip.compress(secret), b"Content-Encoding: gzip\r\n"), (secret[:-1] + b",}", b"")]:
        answer = exchange(gateway.port, post(path, body, auth, extra_header + CLOSE))
        assert answer.status == 400 and "not valid JSON" in answer.error_json()["error"]["message"], answer.raw[:300]
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, post(path, b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}', auth, CLOSE))
    assert answer.status == 200 and len(provider_calls(fake)) == 1, answer.raw[:300]


def test_guardrails_refuse_a_firewall_count_tokens_body_they_cannot_read(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    """Was: firewall mode's ``/v1/messages/count_tokens`` (free, so not scanned) went to the
    DLP floor unscanned, which reads a body that is not JSON as "nothing found": a
    gzip-encoded or invalid body with a ``block`` finding in it was forwarded to Anthropic.
    Now the guard phase itself scans what no mode scanned: the scanner's 400, nothing
    forwarded; the plain body is still blocked (403), a clean one counted."""
    import gzip

    from tests.test_firewall import setup_keys

    sqlite_path = str(tmp_path / "plano_config_0.db")
    gateway = make_gateway({"guardrails": json.dumps({"detectors": {"ssn": "block"}}), "mode": "firewall",
                            "key_registry_reload_s": 1},
                           before_start=lambda: setup_keys(sqlite_path, fake.url))  # fmt: skip
    auth = b"x-api-key: " + USER_KEY.encode() + b"\r\n"
    path = b"/v1/messages/count_tokens"
    secret = b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"my ssn is 078-05-1120"}]}'
    fake.clear()
    answer = exchange(gateway.port, post(path, secret, auth, CLOSE))
    assert answer.status == 403, answer.raw[:300]
    for body, extra_header in [(gzip.compress(secret), b"Content-Encoding: gzip\r\n"), (secret[:-1] + b",}", b"")]:
        answer = exchange(gateway.port, post(path, body, auth, extra_header + CLOSE))
        assert answer.status == 400 and "not valid JSON" in answer.error_json()["error"]["message"], answer.raw[:300]
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, post(path, secret.replace(b"078-05-1120", b"unknown"), auth, CLOSE))
    assert answer.status == 200 and len(provider_calls(fake)) == 1, answer.raw[:300]


def test_the_routing_decision_api_refuses_a_key_over_its_limit(
    fake: FakeProviderThread, tmp_path: Path
) -> None:
    """Was: ``POST /routing/v1/...`` asked the router model (a call billed to the caller's
    key) without checking the key's soft limit: a key blocked for its spending went on
    spending through it.  Now the 429 ``spending_limit_exceeded`` its requests get, before
    the router is asked."""
    import hashlib
    import urllib.request

    from tests.test_metrics import ADMIN_KEY
    from tests.test_preference_routing import FakeRouter, routing_yaml

    router = FakeRouter()
    try:
        config = tmp_path / "plano_config.yaml"
        config.write_text(
            "version: v0.4.0\nlisteners:\n  - {type: model, name: m, address: 127.0.0.1, port: 12000, timeout: 5s}\n"
            + routing_yaml(fake.port, router.port)
            + f"plano_fast:\n  sqlite_path: {config.with_suffix('.db')}\n  usage_journal_path: {config.with_suffix('.journal')}\n"
            f"  usage_flush_interval_s: 0.2\n  price_interval_s: 0.2\n  budget_check_interval_s: 0.5\n"
            f"  admin_port: 0\n  admin_key: {ADMIN_KEY}\n"
        )
        key = "sk-routing-decision-limited-01"
        digest = hashlib.sha256(key.encode()).hexdigest()
        auth = f"Authorization: Bearer {key}\r\n".encode()
        with GatewayProcess(config) as gateway:
            def admin(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{gateway.admin_port}{path}", method=method,
                    data=json.dumps(body).encode() if body is not None else None,
                    headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return json.loads(resp.read())

            admin("PUT", "/limits", {"scope_kind": "key", "scope_id": digest, "period": "total", "limit_nano_usd": 1})
            assert exchange(gateway.port, post(b"/v1/chat/completions", CHAT, auth, CLOSE)).status == 200
            deadline = time.monotonic() + 15
            while ["key", digest] not in admin("GET", "/budget/blocked")["scopes"]:
                assert time.monotonic() < deadline, "the key was never blocked"
                time.sleep(0.2)
            asked = len(router.prompts)
            answer = exchange(gateway.port, post(b"/routing/v1/chat/completions", CHAT, auth, CLOSE))
            assert answer.status == 429, answer.raw[:300]
            assert answer.error_json()["error"]["code"] == "spending_limit_exceeded"
            assert len(router.prompts) == asked  # the router was not asked
            # another key is still answered (the router asked)
            other = post(b"/routing/v1/chat/completions", CHAT, b"Authorization: Bearer sk-another-key-02\r\n", CLOSE)
            assert exchange(gateway.port, other).status == 200
            assert len(router.prompts) == asked + 1
    finally:
        router.stop()


# -- round f: the operator's provider account (config mode's access_key, managed mode) ----------

#: account-selecting request headers, in the spellings a client may send them
ACCOUNT_REQUEST_HEADERS = (b"OpenAI-Organization: org-attacker\r\nOpenAI-Project: proj_attacker\r\n"
                           b"openai_project: proj_underscore\r\nX-Goog-User-Project: attacker-project\r\n")


def test_account_selecting_headers_are_cut_where_the_key_is_the_operators(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    """Was: ``OpenAI-Organization`` / ``OpenAI-Project`` (and Google's ``X-Goog-User-Project``)
    went upstream beside the gateway's own ``access_key``: a caller chose which of the
    operator's organizations or projects paid.  Now cut where the key is the operator's;
    a passthrough provider (the client's own key) still gets them."""
    fake.clear()
    answer = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"", ACCOUNT_REQUEST_HEADERS + CLOSE))
    assert answer.status == 200, answer.raw[:300]
    [call] = provider_calls(fake)
    for name in ("openai-organization", "openai-project", "openai_project", "x-goog-user-project"):
        assert call.header_all(name) == [], name
    assert call.header_all("authorization") == ["Bearer sk-server-openai-key"]
    fake.clear()
    body = b'{"model":"anthropic/claude-passthrough","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    answer = exchange(gateway.port, post(b"/v1/messages", body, b"x-api-key: sk-ant-client-own\r\n",
                                         ACCOUNT_REQUEST_HEADERS + CLOSE))
    assert answer.status == 200, answer.raw[:300]
    [call] = provider_calls(fake)
    assert call.header_all("openai-organization") == ["org-attacker"]
    assert call.header_all("x-goog-user-project") == ["attacker-project"]


#: the same headers as the parsers may see them: odd case, twice, an underscore spelling,
#: trailing whitespace (the compiled fast path declines that head: httptools parses it),
#: beside look-alikes that are ordinary headers
ODD_ACCOUNT_HEADERS = (b"OPENAI-ORGANIZATION: org-attacker\r\nopenai-organization: org-attacker2\r\n"
                       b"OpenAI_Organization: org-underscore\r\nx-GOOG-user-project: attacker-project  \r\n"
                       b"Anthropic-Organization-Id: anth-attacker\r\nOpenAI-Projects: kept-1\r\n"
                       b"X-OpenAI-Project: kept-2\r\n")
ACCOUNT_NAMES = ("openai-organization", "openai_organization", "openai-project", "openai_project",
                 "x-goog-user-project", "x_goog_user_project", "anthropic-organization-id")


def _byte_by_byte(data: bytes) -> list[tuple[float, bytes]]:
    """``data`` in one-byte reads (a pause between: the server parses each read alone)."""
    return [(0.0 if i == 0 else 0.001, data[i:i + 1]) for i in range(len(data))]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte_by_byte"])
@pytest.mark.parametrize("extra", [ACCOUNT_REQUEST_HEADERS, ODD_ACCOUNT_HEADERS], ids=["usual", "odd"])
def test_account_headers_are_cut_whatever_parser_reads_them(
    gateway: GatewayProcess, fake: FakeProviderThread, extra: bytes, split: bool
) -> None:
    """The account headers are now found in the parsers' own pass over the head (the
    compiled fast path, or the relay pass after httptools: a head read in pieces, or with
    trailing whitespace): every spelling, case and repetition is cut where the key is the
    operator's, the look-alikes go on, and a passthrough provider still gets them all."""
    data = post(b"/v1/chat/completions", CHAT, b"", extra + CLOSE)
    fake.clear()
    answer = exchange(gateway.port, _byte_by_byte(data) if split else data)
    assert answer.status == 200, answer.raw[:300]
    [call] = provider_calls(fake)
    for name in ACCOUNT_NAMES:
        assert call.header_all(name) == [], name
    assert call.header_all("authorization") == ["Bearer sk-server-openai-key"]
    if extra is ODD_ACCOUNT_HEADERS:
        assert call.header_all("openai-projects") == ["kept-1"] and call.header_all("x-openai-project") == ["kept-2"]
    body = b'{"model":"anthropic/claude-passthrough","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    data = post(b"/v1/messages", body, b"x-api-key: sk-ant-client-own\r\n", extra + CLOSE)
    fake.clear()
    answer = exchange(gateway.port, _byte_by_byte(data) if split else data)
    assert answer.status == 200, answer.raw[:300]
    [call] = provider_calls(fake)
    # (httptools leaves a value's trailing whitespace on it, and the relay forwards it as read)
    assert [v.rstrip() for v in call.header_all("x-goog-user-project")] == ["attacker-project"]
    if extra is ODD_ACCOUNT_HEADERS:
        assert call.header_all("openai-organization") == ["org-attacker", "org-attacker2"]
        assert call.header_all("openai_organization") == ["org-underscore"]


def test_a_folded_account_header_is_never_forwarded(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    """An obs-fold line (a value continued on the next line) is refused by both parsers:
    nothing reaches the provider that a line-by-line filter would have had to cut."""
    fake.clear()
    folded = b"X-Note: a\r\n OpenAI-Project: proj_attacker\r\n"
    answer = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"", folded + CLOSE))
    assert answer.status == 400, answer.raw[:300]
    assert provider_calls(fake) == []


def test_managed_mode_cuts_the_account_headers(managed_once: Any, fake: FakeProviderThread) -> None:
    """Managed mode forwards with the operator's key too: the same cut, whole or in pieces."""
    gateway, _, tenant = managed_once
    token = b"Authorization: Bearer " + tenant.token.encode() + b"\r\n"
    for split in (False, True):
        data = post(b"/v1/chat/completions", CHAT, token, ODD_ACCOUNT_HEADERS + ACCOUNT_REQUEST_HEADERS + CLOSE)
        fake.clear()
        answer = exchange(gateway.port, _byte_by_byte(data) if split else data)
        assert answer.status == 200, answer.raw[:300]
        [call] = provider_calls(fake)
        for name in ACCOUNT_NAMES:
            assert call.header_all(name) == [], (split, name)
        assert call.header_all("openai-projects") == ["kept-1"]


@pytest.mark.parametrize("header", [b"openai-organization: org-operator0000",
                                    b"OpenAI-Project: proj_operator0000",
                                    b"anthropic-organization-id: 00000000-0000-4000-8000-operator0000",
                                    b"X-MS-Region: operator0000-swedencentral"])
def test_provider_account_ids_in_answers_are_cut_where_the_key_is_the_operators(
    gateway: GatewayProcess, fake: FakeProviderThread, header: bytes
) -> None:
    """Was: the provider's ``openai-organization``, ``openai-project`` and
    ``anthropic-organization-id`` reached every caller of a config-mode gateway: the
    operator's account ids.  Now cut there (streamed or not); a passthrough provider's
    answer (the client's own account) keeps them; rate-limit and request-id headers stay."""
    name = header.partition(b":")[0].lower()
    for body in (CHAT, STREAM_CHAT):
        answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b"",
                                             b"x-fake-response-header: " + header + b"\r\n" + CLOSE))
        assert answer.status == 200, answer.raw[:300]
        assert answer.header(name) is None and b"operator0000" not in answer.raw, answer.raw[:600]
        assert answer.header(b"x-fake-request-id") is not None  # the provider's other headers stay
    body = b'{"model":"anthropic/claude-passthrough","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    answer = exchange(gateway.port, post(b"/v1/messages", body, b"x-api-key: sk-ant-client-own\r\n",
                                         b"x-fake-response-header: " + header + b"\r\n" + CLOSE))
    assert answer.status == 200, answer.raw[:300]
    assert answer.header(name) == header.partition(b": ")[2]


def test_azure_subscription_keys_and_region_are_cut_where_the_key_is_the_operators(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    """Was: an Azure OpenAI provider with the operator's ``access_key`` got the client's
    ``Ocp-Apim-Subscription-Key`` beside the gateway's ``api-key`` -- a credential Azure AI
    services accept, of the client's choosing (an API Management subscription in front of
    the resource reads it too) -- and the client got Azure's ``x-ms-region``, where the
    operator's resource is.  Now both are cut there (any case, the underscore spelling);
    the headers that describe the request (``apim-request-id``, ``x-ms-deployment-name``)
    stay."""
    gateway = make_gateway(extra_providers=f"  - model: azure_openai/*\n    base_url: {fake.url}\n    access_key: sk-azure-operator\n")
    body = b'{"model":"azure_openai/my-deployment","messages":[{"role":"user","content":"hi"}]}'
    sent = b"Ocp-Apim-Subscription-Key: client-chosen-key-1\r\nocp_apim_subscription_key: client-chosen-key-2\r\n"
    for header in (b"x-ms-region: operator0000-swedencentral", b"apim-request-id: 1f7c", b"x-ms-deployment-name: my-deployment"):
        fake.clear()
        answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b"",
                                             sent + b"x-fake-response-header: " + header + b"\r\n" + CLOSE))
        assert answer.status == 200, answer.raw[:300]
        [call] = provider_calls(fake)
        assert not any("client-chosen" in v for _, v in call.headers), call.headers
        assert call.header_all("ocp-apim-subscription-key") == [] and call.header_all("ocp_apim_subscription_key") == []
        assert call.header_all("api-key") == ["sk-azure-operator"]
        name, _, value = header.partition(b": ")
        if name == b"x-ms-region":
            assert answer.header(name) is None and b"operator0000" not in answer.raw, answer.raw[:600]
        else:
            assert answer.header(name) == value, answer.raw[:600]


OPERATOR_KEY = b"sk-proj-operator-secret-0123456789abcd"


@pytest.fixture
def scripted_operator(make_gateway: Callable[..., GatewayProcess]) -> Iterator[tuple[GatewayProcess, Any]]:
    """A config-mode gateway whose ``scripted/*`` provider (the operator's key) and
    ``scriptedpt/*`` provider (passthrough_auth) answer what ``x-script`` names."""
    from benchmarks.attack_battery import ScriptedProvider

    scripted = ScriptedProvider()
    try:
        extra = (f"  - model: scripted/gpt-4o-mini\n    base_url: http://127.0.0.1:{scripted.port}\n"
                 f"    provider_interface: openai\n    access_key: {OPERATOR_KEY.decode()}\n"
                 f"  - model: scriptedpt/gpt-4o-mini\n    base_url: http://127.0.0.1:{scripted.port}\n"
                 "    provider_interface: openai\n    passthrough_auth: true\n")  # fmt: skip
        yield make_gateway({}, extra_providers=extra), scripted
    finally:
        scripted.close()


def test_a_provider_rejecting_the_operators_key_is_the_gateways_502(scripted_operator: Any) -> None:
    """Was: OpenAI's 401 to the gateway's own key reached the client as sent: "Incorrect
    API key provided: sk-proj-****abcd" (the key's last characters) and a 401 that told the
    client its own credential was wrong.  Now the gateway's 502 in the client's format,
    nothing of the provider's body; a passthrough provider's 401 (the client's key) is
    relayed as it came."""
    from benchmarks.attack_battery import json_answer

    gateway, scripted = scripted_operator
    rejected_ids: list[str] = []
    for status in (401, 403):
        body = {"error": {"message": "Incorrect API key provided: sk-proj-****abcd. You can find your API key at "
                                     "https://platform.openai.com/account/api-keys.",
                          "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        scripted.add(f"denied{status}", json_answer(body, status))
        chat = CHAT.replace(b"gpt-4o-mini", b"scripted/gpt-4o-mini")
        answer = exchange(gateway.port, post(b"/v1/chat/completions", chat, b"",
                                             b"x-script: denied%d\r\n" % status + CLOSE))
        assert answer.status == 502, answer.raw[:400]
        assert b"abcd" not in answer.raw and b"Incorrect" not in answer.raw
        assert answer.error_json()["error"]["code"] == "upstream_credential_rejected"
        # named as a relayed answer is (absent on main): the id the log line names too
        request_id = answer.header(b"x-plano-request-id")
        assert request_id, answer.raw[:400]
        rejected_ids.append(request_id.decode())
        messages = MESSAGES.replace(b"claude-sonnet-4-6", b"scripted/gpt-4o-mini")
        answer = exchange(gateway.port, post(b"/v1/messages", messages, b"", b"x-script: denied%d\r\n" % status + CLOSE))
        assert answer.status == 502 and answer.error_json()["type"] == "error", answer.raw[:400]
        assert b"abcd" not in answer.raw
    chat = CHAT.replace(b"gpt-4o-mini", b"scriptedpt/gpt-4o-mini")
    answer = exchange(gateway.port, post(b"/v1/chat/completions", chat, b"Authorization: Bearer sk-client-own-key\r\n",
                                         b"x-script: denied401\r\n" + CLOSE))
    assert answer.status == 401 and b"Incorrect API key provided" in answer.raw, answer.raw[:400]
    deadline = time.monotonic() + 5  # the operator is told, without the key
    while "answered 401 to the gateway's credential" not in gateway.log_text():
        assert time.monotonic() < deadline, gateway.log_text()[-2000:]
        time.sleep(0.1)
    assert OPERATOR_KEY.decode() not in gateway.log_text() and "abcd" not in gateway.log_text()
    assert all(request_id in gateway.log_text() for request_id in rejected_ids), rejected_ids


def test_an_error_body_echoing_the_operators_key_is_masked(scripted_operator: Any) -> None:
    """Was: a provider error that quoted the request's key (a misconfigured proxy, a
    validation message) reached the client with the operator's key in it.  Now the key's
    bytes are masked, length kept (the Content-Length still holds)."""
    from benchmarks.attack_battery import json_answer

    gateway, scripted = scripted_operator
    body = {"error": {"message": "header Authorization: Bearer " + OPERATOR_KEY.decode() + " is not allowed here",
                      "type": "invalid_request_error", "code": None}}
    scripted.add("echo", json_answer(body, 400))
    chat = CHAT.replace(b"gpt-4o-mini", b"scripted/gpt-4o-mini")
    answer = exchange(gateway.port, post(b"/v1/chat/completions", chat, b"", b"x-script: echo\r\n" + CLOSE))
    assert answer.status == 400, answer.raw[:400]
    assert OPERATOR_KEY not in answer.raw and b"0123456789abcd" not in answer.raw
    assert answer.error_json()["error"]["message"] == "header Authorization: Bearer " + "*" * len(OPERATOR_KEY) + " is not allowed here"


@pytest.mark.parametrize("split", [1, 3, 4, 20, len(OPERATOR_KEY) - 1])
def test_an_error_body_echoing_the_operators_key_split_across_reads_is_masked(
    scripted_operator: Any, split: int
) -> None:
    """Was: only a whole key within one read of the body was masked: a provider that
    wrote its error body in two TCP writes, the key split between them, sent the operator's
    key to the client unmasked (the key's head in one read, its tail in the next).  Now the
    key's bytes are masked across the reads (a tail of 4+ of its first bytes at once; the
    first 1-3, its public ``sk-`` marker, are left); the Content-Length holds."""
    from benchmarks.attack_battery import json_answer

    gateway, scripted = scripted_operator
    message = "header Authorization: Bearer " + OPERATOR_KEY.decode() + " is not allowed here"
    answer_bytes = json_answer({"error": {"message": message, "type": "invalid_request_error", "code": None}}, 400)
    cut = answer_bytes.index(OPERATOR_KEY) + split
    scripted.add(f"split{split}", [answer_bytes[:cut], answer_bytes[cut:]])
    chat = CHAT.replace(b"gpt-4o-mini", b"scripted/gpt-4o-mini")
    answer = exchange(gateway.port, post(b"/v1/chat/completions", chat, b"", b"x-script: split%d\r\n" % split + CLOSE))
    assert answer.status == 400, answer.raw[:400]
    kept = OPERATOR_KEY[:split] if split < 4 else b""  # (at most "sk-")
    expected = "header Authorization: Bearer " + kept.decode() + "*" * (len(OPERATOR_KEY) - len(kept)) + " is not allowed here"
    assert answer.error_json()["error"]["message"] == expected, answer.raw[:400]
    assert b"operator-secret" not in answer.raw and b"0123456789abcd" not in answer.raw


# -- round f: Host ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "hosts"), [
    (b"/v1/chat/completions", CHAT, b""),
    (b"/v1/chat/completions", CHAT, b"Host: gw\r\nHost: other\r\n"),
    (b"/v1/messages", MESSAGES, b"host: gw\r\nHOST: gw\r\n"),
    (b"/v1/chat/completions", CHAT, b"Host: gw\r\nTransfer-Encoding: chunked\r\nHost: other\r\n"),
])
def test_an_http11_request_needs_exactly_one_host(
    gateway: GatewayProcess, fake: FakeProviderThread, path: bytes, body: bytes, hosts: bytes
) -> None:
    """Was: served without a Host, or with two (the gateway never reads Host), while
    RFC 9112 §3.2 makes both a 400: a load balancer before the gateway that picks the
    other Host (or answers a Host-less request itself) routes the request elsewhere than
    the gateway believes.  Now a 400 in the client's format and the connection closes;
    nothing goes upstream.  HTTP/1.0 without a Host is still served."""
    fake.clear()
    if b"chunked" in hosts:
        data = (b"POST " + path + b" HTTP/1.1\r\n" + hosts + b"Content-Type: application/json\r\n\r\n"
                + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    else:
        data = (b"POST " + path + b" HTTP/1.1\r\n" + hosts + b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    answer = exchange(gateway.port, data)
    assert answer.status == 400, answer.raw[:300]
    assert b"Host" in answer.body and answer.header(b"connection") == b"close"
    if path == b"/v1/messages":
        assert answer.error_json()["type"] == "error"
    else:
        assert answer.error_json()["error"]["code"] == "malformed_request"
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT)
    assert answer.status == 200, answer.raw[:300]


# -- round f: a message list given twice ---------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    (b"/v1/chat/completions", b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"my ssn is 078-05-1120"}],'
                              b'"messages":[{"role":"user","content":"hi"}]}'),
    (b"/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":5,"system":"my ssn is 078-05-1120",'
                      b'"messages":[{"role":"user","content":"hi"}],"system":"be brief"}'),
    (b"/v1/responses", b'{"model":"gpt-4o-mini","input":"my ssn is 078-05-1120","input":"hi"}'),
    (b"/v1beta/models/gemini%2Fgemini-2.0-flash:generateContent",
     b'{"contents":[{"role":"user","parts":[{"text":"my ssn is 078-05-1120"}]}],'
     b'"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'),
])
def test_a_conversation_given_twice_is_refused(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, path: bytes, body: bytes
) -> None:
    """Was: with ``"messages"`` (``"contents"``, ``"input"``, ``"system"``) twice in one body
    the guardrails read JSON's last copy (clean) while a first-wins parser upstream acts on
    the first (the secret a ``block`` policy exists to stop): forwarded.  Now the scanner's
    400 naming the member, nothing forwarded."""
    settings: dict[str, object] = {"guardrails": json.dumps({"detectors": {"ssn": "block"}})}
    extra = f"  - model: gemini/*\n    base_url: {fake.url}/v1beta\n    access_key: sk-gemini\n"
    gateway = make_gateway(settings, extra_providers=extra)
    fake.clear()
    answer = exchange(gateway.port, post(path, body, b"", CLOSE))
    assert answer.status == 400, answer.raw[:300]
    assert b"appears more than once" in answer.body, answer.raw[:300]
    assert provider_calls(fake) == []


# -- round f: alt=sse on a unary Gemini call -----------------------------------------------------


def test_alt_sse_on_a_unary_gemini_call_is_refused(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread  # noqa: F811 - fixture
) -> None:
    """Was: ``:generateContent?alt=sse`` was forwarded and Google answers it with server-sent
    events, which the unary usage scanner cannot read: the row was ``usage_missing``,
    unpriced, never counted against a limit.  Now a 400 in Gemini's format (the stream is
    ``:streamGenerateContent?alt=sse``), nothing forwarded; ``alt=json`` passes."""
    gateway, _, _ = firewall
    auth = b"x-goog-api-key: " + USER_KEY.encode() + b"\r\n"
    body = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
    path = b"/v1beta/models/gemini-2.0-flash:generateContent?"
    fake.clear()
    for query in (b"alt=sse", b"prettyPrint=false&%61lt=%73se", b"$alt=sse"):
        answer = exchange(gateway.port, post(path + query, body, auth, CLOSE))
        assert answer.status == 400, (query, answer.raw[:300])
        assert answer.error_json()["error"]["status"] == "INVALID_ARGUMENT" and b"streamGenerateContent" in answer.body
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, post(path + b"alt=json", body, auth, CLOSE))
    assert answer.status == 200 and len(provider_calls(fake)) == 1, answer.raw[:300]


def test_config_mode_refuses_alt_sse_on_a_unary_gemini_call(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    """The same in config mode, for a Gemini-native provider (the query is forwarded)."""
    extra = f"  - model: gemini/*\n    base_url: {fake.url}/v1beta\n    access_key: sk-gemini\n"
    gateway = make_gateway({}, extra_providers=extra)
    body = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
    fake.clear()
    answer = exchange(gateway.port, post(b"/v1beta/models/gemini%2Fgemini-2.0-flash:generateContent?alt=sse", body, b"", CLOSE))
    assert answer.status == 400 and b"streamGenerateContent" in answer.body, answer.raw[:300]
    assert provider_calls(fake) == []
    answer = exchange(gateway.port, post(b"/v1beta/models/gemini%2Fgemini-2.0-flash:streamGenerateContent?alt=sse",
                                         body, b"", CLOSE))
    assert answer.status == 200 and len(provider_calls(fake)) == 1, answer.raw[:300]


def test_an_azure_subscription_key_header_is_refused_where_the_clients_key_goes_upstream(
    gateway: GatewayProcess, fake: FakeProviderThread
) -> None:
    """Was: a ``passthrough_auth`` provider got the client's ``Ocp-Apim-Subscription-Key``
    beside the client's own key (or as its only one) -- a credential Azure AI services and
    an API Management front read, that nothing checked.  Now a 401 in the client's format,
    as its query form is, nothing forwarded (any case, the underscore spelling, on both
    request parsers); where the key sent is the operator's it is still dropped (round f)."""
    chat = b'{"model":"llama-passthrough","messages":[{"role":"user","content":"hi"}]}'
    messages = b'{"model":"claude-passthrough","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    for path, body, own in ((b"/v1/chat/completions", chat, b"Authorization: Bearer sk-own-key\r\n"),
                            (b"/v1/messages", messages, b"x-api-key: sk-ant-own-key\r\n")):
        for header in (b"Ocp-Apim-Subscription-Key: client-chosen\r\n", b"ocp_apim_subscription_key: client-chosen\r\n"):
            for auth in (own, b""):
                fake.clear()
                answer = exchange(gateway.port, post(path, body, auth, header + CLOSE))
                assert answer.status == 401, answer.raw[:300]
                error = answer.error_json()
                assert (error["type"] == "error") if path == b"/v1/messages" else ("code" in error["error"]), error
                assert provider_calls(fake) == []
                chunked = (b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + auth
                           + header + CLOSE + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
                assert exchange(gateway.port, chunked).status == 401
                assert provider_calls(fake) == []
    fake.clear()
    answer = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"",
                                         b"Ocp-Apim-Subscription-Key: client-chosen\r\n" + CLOSE))
    assert answer.status == 200, answer.raw[:300]
    [call] = provider_calls(fake)
    assert call.header_all("ocp-apim-subscription-key") == []
    fake.clear()
    answer = exchange(gateway.port, post(b"/v1/chat/completions", chat, b"Authorization: Bearer sk-own-key\r\n",
                                         b"x-note: ocp-apim-subscription-key: v\r\n" + CLOSE))
    assert answer.status == 200, answer.raw[:300]
