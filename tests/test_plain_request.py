"""The compiled request passes against their twins: ``plano_fast/_serve.pyx``
(``ServerProtocol.data_received`` and ``_start``; twins ``http_server.data_received_py``,
``start_py``), ``plano_fast/gateway/_firewall.pyx`` (``FirewallExchange.start``; twin
``modes.firewall.start_py``), ``plano_fast/gateway/_forward.pyx``
(``Exchange.forward_now``; twin ``relay.forward_now_py``) and ``plano_fast/gateway/_dispatch.pyx``
(``dispatch.dispatch``; twin ``dispatch.dispatch_py``).

Two gateways, one compiled and one the pure build (``PLANO_FAST_PURE_SCANNER=1``), each with
its own recording upstream, get the same client requests: plain ones the passes take (each
metered endpoint, a query, a client x-request-id kept or replaced, a stream whose body gets
``include_usage``, an upstream URL with a base path, two pipelined in one read) and the ones
they leave to the twin or refuse on the way (no key, an unknown key, two keys, a ``key=``
beside a header, a body that is not JSON, a free endpoint, the Responses endpoint, an unknown
path, a wrong method).  What each upstream received (but for the gateway's own request id),
what each client read (but for ``date`` and the request id) and the usage rows must be the
same, in firewall mode and in config mode.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from plano_fast.wire import PURE_ENV
from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream
from tests.test_firewall import ANT_KEY, OTHER_KEY, USER_KEY, setup_keys
from tests.test_whole_answer import _normalized, _read_answer, _usage

pytest.importorskip("plano_fast.gateway._forward", reason="the Cython extension is not built")
if os.environ.get(PURE_ENV) == "1":  # both gateways would run the twins
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

_BODY = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}).encode()  # fmt: skip
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_BODY), _BODY)
#: the gateway's own request ids (relay.new_request_id): different in each process
_OWN_ID = re.compile(rb"x-request-id: [0-9a-f]{32}-[0-9a-f]+\r\n")


class RecordingUpstream(RawUpstream):
    """Records every request's bytes (the gateway's own request id and the port masked:
    they differ between the two gateways); answers each with ``reply``'s bytes, here the
    same plain completion (tests/test_plain_managed.py answers by endpoint)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__()

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        with self.lock:
            head = _OWN_ID.sub(b"x-request-id: <gateway's>\r\n", head).replace(b":%d" % self.port, b":<port>")
            self.seen.append(head + b"\r\n\r\n" + body)
        conn.sendall(self.reply(head, body))
        return True

    def reply(self, head: bytes, body: bytes) -> bytes:
        """The whole answer to a request (``head`` as recorded)."""
        return _ANSWER


_R = TypeVar("_R", bound=RecordingUpstream)


def recording_pair(cls: type[_R]) -> Iterator[tuple[_R, _R]]:
    """Two recording upstreams, one a gateway (a fixture's body: closed after the test)."""
    pair = (cls(), cls())
    yield pair
    for server in pair:
        server.close()


@pytest.fixture
def upstreams() -> Iterator[tuple[RecordingUpstream, RecordingUpstream]]:
    yield from recording_pair(RecordingUpstream)


def _chat(model: str = "gpt-4o-mini", **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}).encode()


def _request(target: bytes, body: bytes, lines: bytes, method: bytes = b"POST") -> bytes:
    return (b"%s %s HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nuser-agent: OpenAI/Python 1.0\r\n"
            b"%scontent-length: %d\r\n\r\n%s" % (method, target, lines, len(body), body))


def _cases(key: bytes) -> dict[str, list[bytes]]:
    """case -> the requests sent in one write (their answers read in order)."""
    auth = b"authorization: Bearer %s\r\n" % key if key else b""
    ant = b"x-api-key: %s\r\nanthropic-version: 2023-06-01\r\n" % ANT_KEY.encode()
    messages = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5,
                           "messages": [{"role": "user", "content": "x"}]}).encode()
    return {
        "chat": [_request(b"/v1/chat/completions", _chat(), auth)],
        "chat, no /v1": [_request(b"/chat/completions", _chat(), auth)],
        "query": [_request(b"/v1/chat/completions?api-version=2024-06-01&x=1", _chat(), auth)],
        "client x-request-id": [_request(b"/v1/chat/completions", _chat(), auth + b"x-request-id: abc-123\r\n")],
        "client x-request-id too long": [
            _request(b"/v1/chat/completions", _chat(), auth + b"x-request-id: " + b"a" * 129 + b"\r\n")],
        "client x-request-id not visible ascii": [
            _request(b"/v1/chat/completions", _chat(), auth + b"x-request-id: a b\r\n")],
        "two x-request-ids": [_request(b"/v1/chat/completions", _chat(),
                                       auth + b"x-request-id: one\r\nx-request-id: two\r\n")],
        "stream (include_usage added)": [_request(b"/v1/chat/completions", _chat(stream=True), auth)],
        "stream with include_usage": [_request(
            b"/v1/chat/completions", _chat(stream=True, stream_options={"include_usage": True}), auth)],
        "completions": [_request(b"/v1/completions", json.dumps({"model": "gpt-4o-mini", "prompt": "x"}).encode(),
                                 auth)],
        "embeddings": [_request(b"/v1/embeddings", json.dumps({"model": "e", "input": "x"}).encode(), auth)],
        "messages": [_request(b"/v1/messages", messages, ant)],
        "count_tokens (free)": [_request(b"/v1/messages/count_tokens", messages, ant)],
        "responses": [_request(b"/v1/responses", json.dumps({"model": "gpt-4o-mini", "input": "x"}).encode(), auth)],
        "models (GET)": [_request(b"/v1/models", b"", auth, b"GET")],
        "pipelined": [_request(b"/v1/chat/completions", _chat(), auth),
                      _request(b"/v1/chat/completions", _chat(stream=True), auth)],
        # (config mode: a passthrough provider gets the client's own key, never a gateway
        # token; an alias, a wildcard, a prefixed and an unknown model)
        "passthrough provider": [_request(b"/v1/chat/completions", _chat("vllm/llama-passthrough"),
                                          b"authorization: Bearer sk-client-own-key\r\n")],
        "gateway token to a passthrough provider": [
            _request(b"/v1/chat/completions", _chat("vllm/llama-passthrough"), b"authorization: Bearer xproxy_abc\r\n")],
        "alias": [_request(b"/v1/chat/completions", _chat("fast"), auth)],
        "wildcard model": [_request(b"/v1/chat/completions", _chat("openai/gpt-4.1"), auth)],
        "prefixed model": [_request(b"/v1/chat/completions", _chat("openai/gpt-4o-mini"), auth)],
        "unknown model": [_request(b"/v1/chat/completions", _chat("nope/none"), auth)],
        "subscription key beside the key": [_request(b"/v1/chat/completions", _chat(),
                                                     auth + b"ocp-apim-subscription-key: sub-123\r\n")],
        # (the spellings both parsers fold to it, on the exact path the compiled start takes)
        "subscription key, underscores": [_request(b"/v1/chat/completions", _chat(),
                                                   auth + b"ocp_apim_subscription_key: sub-123\r\n")],
        "subscription key, capitals": [_request(b"/v1/chat/completions", _chat(),
                                                auth + b"OCP-APIM-Subscription-KEY: sub-123\r\n")],
        "subscription key to a passthrough provider": [
            _request(b"/v1/chat/completions", _chat("vllm/llama-passthrough"),
                     b"authorization: Bearer sk-client-own-key\r\nocp-apim-subscription-key: sub-123\r\n")],
        # (the client's headers read in C only for no key or one plain ``Bearer <key>``:
        # the general rules' spellings, a bad token and two Authorization lines go to the twin)
        "bearer, lower case and two spaces": [_request(b"/v1/chat/completions", _chat(),
                                                       b"authorization: bearer  %s\r\n" % key if key else b"")],
        "Bearer, a tab": [_request(b"/v1/chat/completions", _chat(), b"authorization: Bearer\t%s\r\n" % key)],
        "Bearer, no token": [_request(b"/v1/chat/completions", _chat(), b"authorization: Bearer \r\n")],
        "two authorization lines": [_request(b"/v1/chat/completions", _chat(), auth + auth)],
        "no key": [_request(b"/v1/chat/completions", _chat(), b"")],
        "unknown key": [_request(b"/v1/chat/completions", _chat(), b"authorization: Bearer %s\r\n" % OTHER_KEY.encode())],
        "two keys": [_request(b"/v1/chat/completions", _chat(), auth + b"x-api-key: %s\r\n" % ANT_KEY.encode())],
        "key= and a header": [_request(b"/v1/chat/completions?key=abc", _chat(), auth)],
        "not json": [_request(b"/v1/chat/completions", b"{not json", auth)],
        "unknown path": [_request(b"/v1/nothing/here", _chat(), auth)],
        "health": [_request(b"/healthz", b"", b"", b"GET")],
        "decision API": [_request(b"/routing/v1/chat/completions", _chat(), auth + (  # (its trace id the client's)
            b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"))],
        "wrong method": [_request(b"/v1/chat/completions", b"", auth, b"GET")],
    }


def _exchange(gateway: GatewayProcess, requests: list[bytes]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        buf = bytearray()
        return [_normalized(_read_answer(sock, buf)) for _ in requests]


def _compare(compiled: GatewayProcess, twin: GatewayProcess, dbs: tuple[str, str],
             upstreams: tuple[RecordingUpstream, RecordingUpstream], key: bytes) -> dict[str, list[bytes]]:
    answers: dict[str, list[bytes]] = {}
    with compiled, twin:
        for case, requests in _cases(key).items():
            seen = [len(u.seen) for u in upstreams]
            answers[case] = _exchange(compiled, requests)
            twins = _exchange(twin, requests)
            if case == "not json":  # (the pure scanner words its error its own way)
                answers[case] = [a.split(b"\r\n", 1)[0] for a in answers[case]]
                twins = [a.split(b"\r\n", 1)[0] for a in twins]
            assert twins == answers[case], case
            assert upstreams[0].seen[seen[0]:] == upstreams[1].seen[seen[1]:], case
        # A forwarded request has a row; a refused one, or one the gateway answers itself
        # (config mode's GET /v1/models: a 200 that is no row), has none.  Counting the
        # 2xx answers instead waited out _usage's 15 s deadline twice in config mode.
        count = len(upstreams[0].seen)
        compiled_rows, twin_rows = _usage(dbs[0], count), _usage(dbs[1], count)
    assert len(compiled_rows) == count, (count, compiled_rows)
    assert compiled_rows == twin_rows, (compiled_rows, twin_rows)
    return answers


def test_firewall_requests_go_upstream_as_the_twins(upstreams: tuple[RecordingUpstream, RecordingUpstream],
                                                    tmp_path: Path) -> None:
    gateways: list[GatewayProcess] = []
    dbs: list[str] = []
    for name, upstream, env in (("compiled", upstreams[0], {}), ("pure", upstreams[1], {PURE_ENV: "1"})):
        config = write_config(tmp_path / f"{name}.yaml", upstream.port, {"mode": "firewall"})
        db = str(tmp_path / f"{name}.db")
        # (a base path on the registered upstream URL: prefixed to the client's path)
        url = f"http://127.0.0.1:{upstream.port}/base"
        gateways.append(GatewayProcess(config, env=env, before_start=lambda db=db, url=url: setup_keys(db, url)))
        dbs.append(db)
    answers = _compare(gateways[0], gateways[1], (dbs[0], dbs[1]), upstreams, USER_KEY.encode())
    # what both must do (agreeing on something wrong fails here)
    assert answers["chat"][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers["pipelined"][1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers["bearer, lower case and two spaces"][0].startswith(b"HTTP/1.1 200 OK\r\n")
    for case in ("no key", "unknown key", "two keys", "key= and a header", "subscription key beside the key",
                 "subscription key, underscores", "subscription key, capitals", "Bearer, a tab",
                 "Bearer, no token", "two authorization lines"):
        assert answers[case][0].startswith(b"HTTP/1.1 401 "), case
    assert answers["not json"][0] == b"HTTP/1.1 400 Bad Request"
    assert answers["unknown path"][0].startswith(b"HTTP/1.1 404 ")
    assert answers["health"][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers["wrong method"][0].startswith(b"HTTP/1.1 405 ")
    seen = b"\n".join(upstreams[0].seen)
    assert b"POST /base/v1/chat/completions?api-version=2024-06-01&x=1 HTTP/1.1\r\n" in seen
    assert b"x-request-id: abc-123\r\n" in seen and b"x-request-id: one\r\n" not in seen
    assert b'"stream_options":{"include_usage":true}' in seen.replace(b" ", b"")
    assert seen.count(b"authorization: Bearer %s\r\n" % USER_KEY.encode()) >= 10


def test_config_requests_go_upstream_as_the_twins(upstreams: tuple[RecordingUpstream, RecordingUpstream],
                                                  tmp_path: Path) -> None:
    gateways: list[GatewayProcess] = []
    dbs: list[str] = []
    for name, upstream, env in (("compiled", upstreams[0], {}), ("pure", upstreams[1], {PURE_ENV: "1"})):
        config = write_config(tmp_path / f"{name}.yaml", upstream.port)
        gateways.append(GatewayProcess(config, env=env))
        dbs.append(str(tmp_path / f"{name}.db"))
    answers = _compare(gateways[0], gateways[1], (dbs[0], dbs[1]), upstreams, b"")
    assert answers["chat"][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers["pipelined"][1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"authorization: Bearer sk-server-openai-key\r\n" in upstreams[0].seen[0]
    assert answers["passthrough provider"][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers["gateway token to a passthrough provider"][0].startswith(b"HTTP/1.1 401 ")
    assert answers["subscription key to a passthrough provider"][0].startswith(b"HTTP/1.1 401 ")
    seen = b"\n".join(upstreams[0].seen)
    assert b"authorization: Bearer sk-client-own-key\r\n" in seen and b"xproxy_abc" not in seen
    assert b"openai/gpt-4o-mini" not in seen and b"openai/gpt-4.1" not in seen  # (the prefix rewritten away)


def test_the_compiled_passes_are_installed() -> None:
    """Built, the passes replace the methods (else every test above compares the twin with
    itself)."""
    from plano_fast import http_server
    from plano_fast.gateway import relay
    from plano_fast import credentials
    from plano_fast.gateway import dispatch, phases
    from plano_fast.gateway.modes import config, firewall

    assert firewall.FirewallExchange.start is not firewall.start_py
    assert config.ConfigExchange.start is not config.start_py
    assert credentials.plain_bearer is not credentials._plain_bearer
    assert phases.key_hash is not phases._key_hash
    assert relay.Exchange.forward_now is not relay.forward_now_py
    assert dispatch.dispatch is not dispatch.dispatch_py
    assert http_server.ServerProtocol.data_received is not http_server.data_received_py
    assert http_server.ServerProtocol._start is not http_server.start_py
