"""The compiled managed start (``plano_fast/gateway/_managed.pyx``, installed as
``ManagedExchange.start``, ``aim``, ``_complete`` and ``_billed``; twins
``modes.managed.start_py``, ``aim_py``, ``complete_py``, ``billed_py``) against its twins.

Two gateways, one compiled and one the pure build (``PLANO_FAST_PURE_SCANNER=1``), each with
its own recording upstream and a copy of the same provisioned database (the same tokens,
projects and server-side keys), get the same client requests: plain ones the compiled
start takes (a chat request with no output bound -- the ceiling inserted -- or with one, a
stream whose body gets ``include_usage``, a target that rewrites the model, Anthropic's
Messages with and without the client's own anthropic-version, a client x-request-id kept or
replaced, an Azure subscription key beside the token, two pipelined in one read) and the
ones it leaves to the twin or that are refused (no credential, a provider key, an unknown,
expired or revoked token, a token without a pipe, a model the pipe does not serve, a body
that is not JSON, two credentials, a hard limit the request does not fit -- 402 with its
request id -- and one it fits, reserved and settled, count_tokens, the Responses endpoint).
What each upstream received (but for the gateway's own request id), what each client read
(but for ``date`` and the request id) and the usage rows must be the same.

A second test, in process, counts the twin's ``_identify``: plain requests must not reach
it (the compiled start is taken; the first request to a target too, its circuit made by the
compiled start), the others must; and the twin dispatch's ``read_client_headers``: a plain
managed POST is dispatched by the compiled ``dispatch`` (``gateway/_dispatch.pyx``), a GET of
a managed endpoint (405) and an unknown path (404) by the twin.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.managed.state import new_token, token_hash
from plano_fast.store import CounterKey, Store
from plano_fast.store.migrate import prepare_schema
from plano_fast.wire import PURE_ENV
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_managed import ANTHROPIC_SERVER_KEY, DEFAULT_PIPE, ENV, MASTER_KEY, OPENAI_SERVER_KEY, provision, store_call
from tests.test_plain_request import RecordingUpstream, _chat, _exchange, _request, recording_pair
from tests.test_whole_answer import _read_answer

pytest.importorskip("plano_fast.gateway._forward", reason="the Cython extensions are not built")
if os.environ.get(PURE_ENV) == "1":  # both gateways would run the twins
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

_CHAT = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}).encode()  # fmt: skip
_CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18"}
_STREAM = b"".join(b"data: %s\n\n" % json.dumps(event).encode() for event in (
    {**_CHUNK, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
    {**_CHUNK, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}},
)) + b"data: [DONE]\n\n"  # fmt: skip
_MESSAGE = json.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
    "usage": {"input_tokens": 11, "output_tokens": 7},
}).encode()  # fmt: skip


class ManagedUpstream(RecordingUpstream):
    """Records every request's bytes; answers a chat request with a completion (a stream
    when it asked for one), a Messages request with a message, count_tokens with a count."""

    def reply(self, head: bytes, body: bytes) -> bytes:
        target = head.split(b" ", 2)[1]
        kind = b"application/json"
        if target.endswith(b"/count_tokens"):
            payload = b'{"input_tokens":11}'
        elif target.endswith(b"/messages"):
            payload = _MESSAGE
        elif json.loads(body).get("stream"):
            payload, kind = _STREAM, b"text/event-stream"
        else:
            payload = _CHAT
        return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (kind, len(payload), payload)


@pytest.fixture
def upstreams() -> Iterator[tuple[ManagedUpstream, ManagedUpstream]]:
    yield from recording_pair(ManagedUpstream)


#: (provider, upstream model, client models served): one target rewrites the model
_PIPE = [
    ("openai/gpt-4o-mini", None, "gpt-4o-mini*"),
    ("openai/gpt-4o-mini", "gpt-4o-mini", "gpt-4o"),
    ("anthropic/claude-sonnet-4-6", None, "claude-*"),
]


def _provision(sqlite_path: str) -> dict[str, str]:
    """The tenants, in one database: name -> its token.  Every token but the live one's
    is on the live tenant's pipe and keys, so its request meets the circuits the live
    requests made: the compiled start would take it but for the check that refuses it or
    hands it to the twin (expiry, revocation, a hard limit)."""
    asyncio.run(prepare_schema(None, sqlite_path))
    live = provision(None, sqlite_path, _PIPE)
    tokens = {"live": live.token}

    async def more(store: Store) -> None:
        [pipe] = await store.list_pipes(live.project_id)
        for name in ("expired", "revoked", "hard, tiny", "hard, large"):
            user = await store.create_user(name)
            token = tokens[name] = new_token()
            row = await store.create_proxy_token(
                token_hash(token), live.project_id, user_id=user.id, pipe_id=pipe.id,
                expires_at_ns=time.time_ns() - 1 if name == "expired" else None,
            )
            if name == "revoked":
                await store.revoke_proxy_token(row.id)
            elif name.startswith("hard"):
                await store.set_spending_limit("user", user.id, "total", 1 if name == "hard, tiny" else 10**15, "hard")
        project = await store.create_project("no pipe")
        token = tokens["no pipe"] = new_token()
        await store.create_proxy_token(token_hash(token), project.id)

    store_call(None, sqlite_path, more)
    return tokens


def _cases(tokens: dict[str, str]) -> dict[str, list[bytes]]:
    """case -> the requests sent in one write (their answers read in order)."""
    auth = b"authorization: Bearer %s\r\n" % tokens["live"].encode()
    chat = b"/v1/chat/completions"
    messages = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5,
                           "messages": [{"role": "user", "content": "x"}]}).encode()
    unbounded_messages = json.dumps({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "x"}]})

    def bearer(name: str) -> bytes:
        return b"authorization: Bearer %s\r\n" % tokens[name].encode()

    return {
        "chat, no output bound (the ceiling inserted)": [_request(chat, _chat(), auth)],
        "chat, compact body": [_request(chat, b'{"model":"gpt-4o-mini","messages":[]}', auth)],
        "chat, spaces around the body": [_request(chat, b'  \n{ "model":"gpt-4o-mini","messages":[]} ', auth)],
        "chat, max_tokens": [_request(chat, _chat(max_tokens=9), auth)],
        "chat, max_completion_tokens": [_request(chat, _chat(max_completion_tokens=9), auth)],
        "chat, max_tokens null (parsed)": [_request(chat, _chat(max_tokens=None), auth)],
        "chat, an escape in the body (parsed)": [_request(chat, _chat(user="\u00e9t\u00e9"), auth)],
        "chat, the ceiling's name in a message (parsed)": [_request(
            chat, json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": '"max_completion_tokens"'}]}
                             ).encode(), auth)],
        "chat, no /v1": [_request(b"/chat/completions", _chat(), auth)],
        "chat, a query": [_request(chat + b"?api-version=1&x=2", _chat(), auth)],
        "model rewritten by the target": [_request(chat, _chat("gpt-4o"), auth)],
        "stream (include_usage added)": [_request(chat, _chat(stream=True), auth)],
        "stream with include_usage": [_request(chat, _chat(stream=True, stream_options={"include_usage": True}),
                                               auth)],
        "stream, model rewritten": [_request(chat, _chat("gpt-4o", stream=True, max_tokens=3), auth)],
        "chat to an anthropic target": [_request(chat, _chat("claude-sonnet-4-6"), auth)],
        "messages": [_request(b"/v1/messages", messages, auth)],
        "messages, no output bound": [_request(b"/v1/messages", unbounded_messages.encode(), auth)],
        "messages, the client's anthropic-version": [
            _request(b"/v1/messages", messages, auth + b"anthropic-version: 2023-01-01\r\n")],
        "messages, x-api-key": [_request(b"/v1/messages", messages,
                                         b"x-api-key: %s\r\n" % tokens["live"].encode())],
        "client x-request-id": [_request(chat, _chat(), auth + b"x-request-id: abc-123\r\n")],
        "client x-request-id too long": [_request(chat, _chat(), auth + b"x-request-id: " + b"a" * 129 + b"\r\n")],
        "subscription key beside the token": [_request(chat, _chat(),
                                                       auth + b"ocp-apim-subscription-key: sub-123\r\n")],
        "pipelined": [_request(chat, _chat(), auth), _request(chat, _chat(stream=True), auth),
                      _request(b"/v1/messages", messages, auth)],
        "count_tokens (twin)": [_request(b"/v1/messages/count_tokens", messages, auth)],
        "responses (twin)": [_request(b"/v1/responses", json.dumps({"model": "gpt-4o-mini", "input": "x"}).encode(),
                                      auth)],
        "hard limit fitting (twin: reserved)": [_request(chat, _chat(max_tokens=5), bearer("hard, large"))],
        "hard limit not fitting: 402": [_request(chat, _chat(max_tokens=5), bearer("hard, tiny"))],
        "no credential": [_request(chat, _chat(), b"")],
        "a provider key": [_request(chat, _chat(), b"authorization: Bearer sk-not-a-token\r\n")],
        "unknown token": [_request(chat, _chat(), b"authorization: Bearer xproxy_%s\r\n" % (b"A" * 43))],
        "expired token": [_request(chat, _chat(), bearer("expired"))],
        "revoked token": [_request(chat, _chat(), bearer("revoked"))],
        "token without a pipe": [_request(chat, _chat(), bearer("no pipe"))],
        "model not served": [_request(chat, _chat("gpt-5"), auth)],
        "no model": [_request(chat, b'{"messages":[]}', auth)],
        "not json": [_request(chat, b"{not json", auth)],
        "two credentials": [_request(chat, _chat(), auth + b"x-api-key: %s\r\n" % tokens["live"].encode())],
        "wrong method": [_request(chat, b"", auth, b"GET")],
        "unknown path": [_request(b"/v1/nothing/here", _chat(), auth)],
    }


def _rows(sqlite_path: str, count: int) -> list[tuple[Any, ...]]:
    def read() -> list[Any]:
        return list(store_call(None, sqlite_path, lambda s: s.recent_usage(None, limit=10_000)))

    deadline = time.monotonic() + 15
    rows = read()
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = read()
    return sorted((r.status, r.http_status, r.provider, r.model, r.requested_model, r.input_tokens,
                   r.output_tokens, r.streaming, r.project_id, r.user_id, r.token_id, r.cost_nano_usd)
                  for r in rows)  # fmt: skip


def test_managed_requests_go_upstream_as_the_twins(upstreams: tuple[ManagedUpstream, ManagedUpstream],
                                                   tmp_path: Path) -> None:
    template = str(tmp_path / "template.db")
    tokens = _provision(template)
    gateways: list[GatewayProcess] = []
    dbs: list[str] = []
    for name, upstream, env in (("compiled", upstreams[0], {}), ("pure", upstreams[1], {PURE_ENV: "1"})):
        config = write_config(tmp_path / f"{name}.yaml", upstream.port, {"managed": "true", "managed_reload_s": 1})
        db = str(config.with_suffix(".db"))
        gateways.append(GatewayProcess(config, env={**ENV, **env}, migrate=False,
                                       before_start=lambda db=db: shutil.copyfile(template, db)))
        dbs.append(db)
    answers: dict[str, list[bytes]] = {}
    with gateways[0], gateways[1]:
        for case, requests in _cases(tokens).items():
            seen = [len(u.seen) for u in upstreams]
            answers[case] = _exchange(gateways[0], requests)
            twins = _exchange(gateways[1], requests)
            if case == "not json":  # (the pure scanner words its error its own way)
                answers[case] = [a.split(b"\r\n", 1)[0] for a in answers[case]]
                twins = [a.split(b"\r\n", 1)[0] for a in twins]
            assert twins == answers[case], case
            assert upstreams[0].seen[seen[0]:] == upstreams[1].seen[seen[1]:], case
        count = sum(1 for a in answers.values() for answer in a if answer.startswith(b"HTTP/1.1 2"))
        compiled_rows, twin_rows = _rows(dbs[0], count), _rows(dbs[1], count)
    assert compiled_rows == twin_rows, (compiled_rows, twin_rows)
    # what both must do (agreeing on something wrong fails here)
    for case in ("chat, no output bound (the ceiling inserted)", "model rewritten by the target", "messages",
                 "stream (include_usage added)", "hard limit fitting (twin: reserved)", "count_tokens (twin)"):
        assert answers[case][0].startswith(b"HTTP/1.1 200 OK\r\n"), case
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers["pipelined"])
    assert b"data: [DONE]" in answers["stream (include_usage added)"][0]
    refused = answers["hard limit not fitting: 402"][0]
    assert refused.startswith(b"HTTP/1.1 402 ") and b"x-plano-request-id: <volatile>\r\n" in refused
    for case in ("no credential", "a provider key", "unknown token", "expired token", "revoked token",
                 "two credentials"):
        assert answers[case][0].startswith(b"HTTP/1.1 401 "), case
        assert b"x-plano-request-id: <volatile>\r\n" in answers[case][0], case
    for case in ("token without a pipe", "model not served", "no model"):
        assert answers[case][0].startswith(b"HTTP/1.1 400 "), case
    assert answers["not json"][0] == b"HTTP/1.1 400 Bad Request"
    assert answers["wrong method"][0].startswith(b"HTTP/1.1 405 ")
    assert answers["unknown path"][0].startswith(b"HTTP/1.1 404 ")
    seen = b"\n".join(upstreams[0].seen)
    # The server-side keys went upstream, never a token; what the refusals carried never did.
    assert seen.count(b"authorization: Bearer %s\r\n" % OPENAI_SERVER_KEY.encode()) >= 15
    assert b"x-api-key: %s\r\nanthropic-version: 2023-06-01\r\n" % ANTHROPIC_SERVER_KEY.encode() in seen
    assert b"anthropic-version: 2023-01-01\r\n" in seen
    assert b"xproxy_" not in seen and b"sk-not-a-token" not in seen and b"sub-123" not in seen
    assert seen.count(b"POST /v1/chat/completions HTTP/1.1\r\n") >= 15  # (the client's query is not forwarded)
    assert b'"max_completion_tokens":4096' in seen.replace(b" ", b"")
    assert b'"stream_options":{"include_usage":true}' in seen.replace(b" ", b"")
    assert b"x-request-id: abc-123\r\n" in seen
    assert len(upstreams[0].seen) == count  # (every 2xx went upstream once; nothing else did)


def test_plain_requests_take_the_compiled_start_and_the_rest_the_twin(
    fake: FakeProviderThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The twin's ``_identify`` counted in process: a plain request never reaches it, the
    first one to its target included (its circuit is made by the compiled start: the twin
    made it on main); a hard-limited, unknown or refused one does, and so does a token that
    expired since the state was loaded (no reload in the test: only the start's own expiry
    check refuses it).  The twin dispatch's ``read_client_headers`` counted too: every
    managed POST to an exact endpoint is dispatched compiled (0 calls, refused ones
    included: the start refuses them), a GET of one (405) and an unknown path (404) by
    the twin (one call each)."""
    from plano_fast.gateway import dispatch as dispatch_mod
    from plano_fast.gateway.modes import managed as managed_mode
    from tests.test_billing_faults import InProcessGateway

    monkeypatch.setenv("PLANO_FAST_MASTER_KEY", MASTER_KEY)
    config = write_config(tmp_path / "plano_config.yaml", fake.port, {"managed": "true", "managed_reload_s": 600})
    sqlite_path = str(config.with_suffix(".db"))
    asyncio.run(prepare_schema(None, sqlite_path))
    tenant = provision(None, sqlite_path, DEFAULT_PIPE)
    limited = provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=10**15)
    expiring = new_token()
    expires_at_ns = time.time_ns() + 8 * 10**9

    async def expiring_token(store: Store) -> str:
        [pipe] = await store.list_pipes(tenant.project_id)
        row = await store.create_proxy_token(token_hash(expiring), tenant.project_id, user_id=tenant.user_id,
                                             pipe_id=pipe.id, expires_at_ns=expires_at_ns)
        return row.id

    expiring_id = store_call(None, sqlite_path, expiring_token)
    identified: list[str] = []
    real_identify = managed_mode.ManagedExchange._identify

    def counting_identify(self: Any) -> Any:
        identified.append(self.request_id)
        return real_identify(self)

    monkeypatch.setattr(managed_mode.ManagedExchange, "_identify", counting_identify)
    dispatched: list[bytes] = []  # the twin dispatch's managed branch: its read of the headers
    real_read = dispatch_mod.read_client_headers

    def counting_read(headers: Any, query: bytes, forward: Any = None) -> Any:
        dispatched.append(query)  # (b"": none of these requests has a query)
        return real_read(headers, query, forward)

    monkeypatch.setattr(dispatch_mod, "read_client_headers", counting_read)
    gateway = InProcessGateway(config)
    try:
        def chat(token: str, model: str = "gpt-4o-mini", **extra: Any) -> Any:
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0) as client:
                return client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}], **extra)

        assert chat(tenant.token).usage.total_tokens > 0  # (the first: its circuit made compiled)
        assert identified == []
        for _ in range(3):
            assert chat(tenant.token).usage.total_tokens > 0
        assert list(chat(tenant.token, stream=True))
        assert chat(expiring).usage.total_tokens > 0
        assert identified == []  # the compiled start took them
        time.sleep(max(0.0, (expires_at_ns - time.time_ns()) / 1e9) + 0.1)
        with pytest.raises(openai.AuthenticationError):
            chat(expiring)  # (expired since the state was loaded: the twin's 401)
        assert len(identified) == 1
        identified.clear()
        chat(tenant.token)
        assert identified == []
        assert chat(limited.token).usage.total_tokens > 0  # reserved and settled: the twin
        assert len(identified) == 1
        with pytest.raises(openai.AuthenticationError):
            chat("xproxy_" + "C" * 43)
        assert len(identified) == 2
        with pytest.raises(openai.BadRequestError):
            chat(tenant.token, "gpt-5")
        assert len(identified) == 3
        # Whole requests in one write (the fast parser's: the SDK's head and body come in
        # two writes, read by httptools, which leaves ``forward`` unset: the twin dispatch).
        dispatched.clear()
        identified.clear()
        auth = b"authorization: Bearer %s\r\n" % tenant.token.encode()
        with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=10) as sock:
            sock.sendall(_request(b"/v1/chat/completions", _chat(), auth)
                         + _request(b"/v1/chat/completions", _chat(), b"authorization: Bearer xproxy_%s\r\n" % (b"D" * 43))
                         + _request(b"/v1/chat/completions", b"", auth, b"GET")
                         + _request(b"/v1/chat/completionz", _chat(), auth))
            buf = bytearray()
            answers = [_read_answer(sock, buf)[:12] for _ in range(4)]
        assert answers == [b"HTTP/1.1 200", b"HTTP/1.1 401", b"HTTP/1.1 405", b"HTTP/1.1 404"]
        assert len(identified) == 1  # (the unknown token: the compiled dispatch, then the twin start)
        assert dispatched == [b"", b""]  # the GET and the unknown path only (the twin's read of the headers)
    finally:
        gateway.stop()
    rows = list(store_call(None, sqlite_path, lambda s: s.recent_usage(None, limit=100)))
    assert sorted(r.token_id for r in rows) == sorted([tenant.token_id] * 7 + [limited.token_id, expiring_id])
    # the hard-limited request's cost is on its limit's counter, nothing left reserved
    [cost] = [r.cost_nano_usd for r in rows if r.token_id == limited.token_id]
    counter = store_call(None, sqlite_path, lambda s: s.get_counter(CounterKey("project", limited.project_id, "total", 0)))
    assert cost and counter is not None and (counter.spent_nano_usd, counter.reserved_nano_usd) == (cost, 0)


def test_the_compiled_managed_start_is_installed() -> None:
    """Built, the pass replaces the method (else the tests above compare the twin with
    itself): an import of ``_managed`` that fails leaves the twin, and fails here."""
    from plano_fast.gateway.modes import managed  # (first: it installs what _managed holds)
    from plano_fast.gateway import _managed  # noqa: I001

    assert managed.ManagedExchange.start is not managed.start_py
    assert managed.ManagedExchange.start is _managed.start
    assert managed.ManagedExchange.aim is _managed.aim and _managed.aim is not managed.aim_py
    assert managed.ManagedExchange._complete is _managed.complete and _managed.complete is not managed.complete_py
    assert managed.ManagedExchange._billed is _managed.billed and _managed.billed is not managed.billed_py


def test_the_compiled_aim_sets_what_the_twin_sets() -> None:
    """``ManagedExchange.aim`` compiled (``_managed.aim``) and its twin (``managed.aim_py``)
    leave every slot of the exchange the same: a slot the twin gains and the compiled one
    lacks fails here."""
    from plano_fast.gateway.modes import managed  # (first: it installs what _managed holds)
    from plano_fast.gateway import _managed  # noqa: I001
    from plano_fast.gateway.endpoints import CHAT_COMPLETIONS, MESSAGES

    names = [name for cls in managed.ManagedExchange.__mro__ for name in getattr(cls, "__slots__", ())]
    unset = object()
    mctx = object()
    for endpoint in (CHAT_COMPLETIONS, MESSAGES):
        compiled = object.__new__(managed.ManagedExchange)
        twin = object.__new__(managed.ManagedExchange)
        _managed.aim(compiled, mctx, endpoint)  # type: ignore[arg-type]
        managed.aim_py(twin, mctx, endpoint)  # type: ignore[arg-type]
        assert [getattr(compiled, n, unset) for n in names] == [getattr(twin, n, unset) for n in names]
        assert compiled.mctx is mctx and compiled.endpoint is endpoint and compiled.fields is None
