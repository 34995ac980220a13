"""Answers in a content coding the gateway did not ask for (``Accept-Encoding: identity`` is
what it sends), decoded and relayed in no coding (plano_fast.gateway.coded_answer).

What a coded stream missed, on main: managed mode's ``HoldTerminal`` holds a stream's
terminal event until billing is done, but could not see ``[DONE]`` in compressed bytes, so
the client had the end before the row was written; the usage chunk the gateway asked for
(``include_usage`` injected) could not be cut out of compressed bytes, so the client got a
chunk it never asked for.  Now both hold: the gateway decodes (gzip, deflate) and the client
gets the identity stream.  A coding the gateway cannot decode (``br``) is relayed as it is,
its latest piece held until billing is done.  Real gateway processes, the fake provider and
a scripted provider sending gzip bytes split inside a deflate block; real SQLite.
"""

from __future__ import annotations

import gzip
import json
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.attack_battery import ScriptedProvider
from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_managed import DEFAULT_PIPE, ENV, STREAM_BODY, Tenant, provision, request_cost

PURE = {"PLANO_FAST_PURE_SCANNER": "1"}
BUILDS = [pytest.param({}, id="compiled"), pytest.param(PURE, id="pure")]


# -- reading what the client got -------------------------------------------------------------------
def _request(body: bytes, token: str, extra: bytes = b"") -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + token.encode() + b"\r\n" + extra
            + b"content-length: %d\r\n\r\n" % len(body) + body)


def _split(raw: bytes) -> tuple[dict[bytes, bytes], bytes, bool]:
    """The head's headers, the body's bytes so far (chunked framing removed: the chunks
    complete so far) and whether the body is complete."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") != b"chunked":
        length = int(headers.get(b"content-length", b"-1"))
        return headers, rest, len(rest) == length
    body = b""
    while True:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            return headers, body, False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return headers, body, after.startswith(b"\r\n")
        if len(after) < size + 2:
            return headers, body, False
        body += after[:size]
        rest = after[size + 2 :]


def _plain(headers: dict[bytes, bytes], body: bytes) -> bytes:
    """What the client's HTTP stack reads: the body decoded as its head says (so far)."""
    coding = headers.get(b"content-encoding", b"").lower()
    if coding in (b"gzip", b"br"):  # (the fake provider sends gzip bytes under "br")
        return zlib.decompressobj(31).decompress(body)
    if coding == b"deflate":
        return zlib.decompressobj(15).decompress(body)
    return body


def _held_then_rest(port: int, request: bytes, db_path: str, lock_when: Any = None,
                    hold_s: float = 1.2) -> tuple[bytes, bytes]:
    """The client's bytes while another process holds the database's write lock (the
    gateway's write of the row waits), then all of them once it is released."""
    lock = sqlite3.connect(db_path, isolation_level=None, timeout=5)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            if lock_when is None:
                lock.execute("BEGIN IMMEDIATE")
                client.sendall(request)
            else:
                client.sendall(request)
                lock_when()
                lock.execute("BEGIN IMMEDIATE")
            got = b""
            client.settimeout(0.05)
            deadline = time.monotonic() + hold_s
            while time.monotonic() < deadline:
                try:
                    got += client.recv(65536)
                except TimeoutError:
                    pass
            held = got
            lock.execute("COMMIT")
            client.settimeout(8)
            while not _split(got)[2]:
                chunk = client.recv(65536)
                assert chunk, got[-300:]
                got += chunk
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    return held, got


def _rows(db_path: str, request_id: bytes, timeout_s: float = 6.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(db_path) as db:
            db.row_factory = sqlite3.Row
            found = [dict(r) for r in db.execute("select * from usage_log where request_id = ?",
                                                 (request_id.decode(),))]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _spent(db_path: str) -> int:
    with sqlite3.connect(db_path) as db:
        row = db.execute("select spent_nano_usd from spending_counters where scope_kind='project'").fetchone()
    return int(row[0]) if row else 0


def _reserved(db_path: str) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute("select count(*) from spending_reservations").fetchone()[0])


# -- managed mode: the end waits for the row, the usage chunk is cut -------------------------------
@pytest.mark.parametrize("env", BUILDS)
@pytest.mark.parametrize("hard_limit", [False, True], ids=["no-limit", "hard-limit"])
@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
def test_a_coded_managed_stream_is_relayed_decoded_and_its_end_waits_for_the_row(
    tmp_path: Path, coding: bytes, hard_limit: bool, env: dict[str, str],
) -> None:
    """While the row cannot be written, the client has the stream's chunks but not its
    ``[DONE]``; then the identity stream without the usage chunk it did not ask for, and
    the row is the provider's usage.  On main: ``content-encoding: gzip`` relayed, the
    decoded held bytes end with ``[DONE]`` and carry the injected usage chunk."""
    cost = request_cost(STREAM_BODY)
    with FakeProviderThread() as fake:
        config = write_config(tmp_path / "managed.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})
        db_path = str(config.with_suffix(".db"))
        tenants: list[Tenant] = []
        with GatewayProcess(config, env={**ENV, **env}, before_start=lambda: tenants.append(
                provision(None, db_path, DEFAULT_PIPE, limit_nano_usd=100 * cost if hard_limit else None))) as gateway:
            extra = (b"x-fake-content-encoding: " + coding + b"\r\nx-fake-output-tokens: 50\r\n"
                     b"x-fake-input-tokens: %d\r\n" % len(STREAM_BODY))
            lock_when = None
            if hard_limit:
                # the reservation is a write too: the lock is taken once it is made, while
                # the provider waits before its answer
                extra += b"x-fake-latency-ms: 700\r\n"

                def lock_when() -> None:
                    deadline = time.monotonic() + 5
                    while not _reserved(db_path):
                        assert time.monotonic() < deadline, "no reservation made"
                        time.sleep(0.01)

            held, whole = _held_then_rest(gateway.port, _request(STREAM_BODY, tenants[0].token, extra), db_path,
                                          lock_when, hold_s=1.6 if hard_limit else 1.0)
            headers, body, complete = _split(whole)
            request_id = headers[b"x-plano-request-id"]
            rows = _rows(db_path, request_id)
            spent = _spent(db_path)
    held_headers, held_body, held_complete = _split(held)
    held_plain = _plain(held_headers, held_body)
    assert b"chat.completion.chunk" in held_plain and not held_complete  # the stream came, its end waits
    assert b"[DONE]" not in held_plain, held_plain[-200:]
    assert complete and headers.get(b"content-encoding") is None  # decoded for the client
    assert body.endswith(b"data: [DONE]\n\n")
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    assert events and all(e["choices"] for e in events)  # no usage chunk: the client did not ask
    assert b'"usage"' not in body
    assert [(r["status"], r["input_tokens"], r["output_tokens"], r["cost_nano_usd"]) for r in rows] == [
        ("ok", len(STREAM_BODY), 50, cost)]
    assert spent == cost


# -- gzip bytes split inside a deflate block ------------------------------------------------------
_EVENTS = [
    b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
    *[b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
      b'"choices":[{"index":0,"delta":{"content":"word%d "},"finish_reason":null}]}' % i for i in range(6)],
    b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
]
_USAGE_EVENT = (b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
                b'"usage":{"prompt_tokens":40,"completion_tokens":12,"total_tokens":52}}')
_STREAM = b"".join(b"data: " + e + b"\n\n" for e in [*_EVENTS, _USAGE_EVENT]) + b"data: [DONE]\n\n"
#: what the client gets: the stream less the usage chunk the gateway asked for
_CLIENT_STREAM = b"".join(b"data: " + e + b"\n\n" for e in _EVENTS) + b"data: [DONE]\n\n"


def _coded_answer(coding: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    """The stream compressed in one go (one deflate block: no flush between events), its
    bytes cut at ``cuts`` (fractions of the coded body's length, in thousandths), each
    piece one HTTP chunk written apart; and the coded body."""
    comp = zlib.compressobj(wbits=31 if coding == b"gzip" else 15)
    coded = comp.compress(_STREAM) + comp.flush()
    at = sorted({max(1, min(len(coded) - 1, len(coded) * c // 1000)) for c in cuts})
    pieces = [coded[a:b] for a, b in zip([0, *at], [*at, len(coded)])]
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: " + coding
            + b"\r\ntransfer-encoding: chunked\r\n\r\n")
    framed = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces]
    framed[0] = head + framed[0]
    framed.append(b"0\r\n\r\n")
    return framed, coded


@pytest.fixture(params=BUILDS)
def scripted_managed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[GatewayProcess, str, Tenant,
                                                                                       ScriptedProvider]]:
    scripted = ScriptedProvider()
    try:
        config = write_config(tmp_path / "managed.yaml", scripted.port, {"managed": "true", "managed_reload_s": 1})
        db_path = str(config.with_suffix(".db"))
        tenants: list[Tenant] = []
        with GatewayProcess(config, env={**ENV, **request.param}, before_start=lambda: tenants.append(
                provision(None, db_path, DEFAULT_PIPE))) as gateway:
            yield gateway, db_path, tenants[0], scripted
    finally:
        scripted.close()


@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
@pytest.mark.parametrize("cuts", [[2, 500, 998], [5, 333, 666, 990], [100, 940]],
                         ids=["header-middle-trailer", "thirds", "early-late"])
def test_a_stream_coded_in_one_block_and_cut_anywhere_is_relayed_decoded(
    scripted_managed: tuple[GatewayProcess, str, Tenant, ScriptedProvider], coding: bytes, cuts: list[int],
) -> None:
    """The provider's reads end inside the gzip header, the deflate block and the trailer:
    the client gets exactly the identity stream less the usage chunk, ``[DONE]`` only after
    the row, and the row is the stream's usage (40 in, 12 out).  On main the relay sent the
    coded bytes (the held part decoded to the whole stream, ``[DONE]`` and usage included)."""
    gateway, db_path, tenant, scripted = scripted_managed
    pieces, _ = _coded_answer(coding, cuts)
    scripted.add("", pieces)  # (the request carries no x-script: the default)
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    held, whole = _held_then_rest(gateway.port, _request(body, tenant.token), db_path, hold_s=1.0)
    headers, client_body, complete = _split(whole)
    rows = _rows(db_path, headers[b"x-plano-request-id"])
    held_headers, held_body, _ = _split(held)
    held_plain = _plain(held_headers, held_body)
    assert b'"word0 "' in held_plain and b"[DONE]" not in held_plain, held_plain[-200:]
    assert complete and headers.get(b"content-encoding") is None
    assert client_body == _CLIENT_STREAM
    assert [(r["status"], r["input_tokens"], r["output_tokens"], r["cost_nano_usd"]) for r in rows] == [
        ("ok", 40, 12, 40 * 150 + 12 * 600)]


def test_a_coded_body_that_does_not_decode_is_cut_not_ended(
    scripted_managed: tuple[GatewayProcess, str, Tenant, ScriptedProvider],
) -> None:
    """gzip promised, garbage sent after a good start: the client's answer is cut (no last
    chunk), never the garbage passed on under a head that says no coding."""
    gateway, db_path, tenant, scripted = scripted_managed
    pieces, coded = _coded_answer(b"gzip", [500])
    bad = coded[: len(coded) // 2] + b"\xff" * 64
    head = pieces[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    scripted.add("", head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(bad), bad))  # (one write: nothing left pending)
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=8) as client:
        client.sendall(_request(body, tenant.token))
        got = b""
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            got += chunk
    headers, client_body, complete = _split(got)
    assert got.startswith(b"HTTP/1.1 200") and headers.get(b"content-encoding") is None
    assert not complete  # cut: the client knows it is not the whole answer
    assert b"\xff" not in client_body


# -- a coding the gateway cannot decode --------------------------------------------------------------
def test_an_undecodable_coded_managed_stream_keeps_its_last_piece_until_the_row(tmp_path: Path) -> None:
    """``br`` (the fake provider sends gzip bytes under that name: the gateway cannot tell):
    relayed as it is, unread (``usage_missing``, charged the reservation's bound under the
    hard limit), and its latest piece waits for the row.  On main the whole stream, its
    end included, reached the client before the row."""
    cost = request_cost(STREAM_BODY)
    with FakeProviderThread() as fake:
        config = write_config(tmp_path / "managed.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})
        db_path = str(config.with_suffix(".db"))
        tenants: list[Tenant] = []
        with GatewayProcess(config, env=ENV, before_start=lambda: tenants.append(
                provision(None, db_path, DEFAULT_PIPE, limit_nano_usd=100 * cost))) as gateway:
            extra = (b"x-fake-content-encoding: br\r\nx-fake-output-tokens: 50\r\nx-fake-latency-ms: 700\r\n"
                     b"x-fake-input-tokens: %d\r\n" % len(STREAM_BODY))

            def lock_when() -> None:
                deadline = time.monotonic() + 5
                while not _reserved(db_path):
                    assert time.monotonic() < deadline, "no reservation made"
                    time.sleep(0.01)

            held, whole = _held_then_rest(gateway.port, _request(STREAM_BODY, tenants[0].token, extra), db_path,
                                          lock_when, hold_s=1.6)
            headers, body, complete = _split(whole)
            rows = _rows(db_path, headers[b"x-plano-request-id"])
    _, held_body, _ = _split(held)
    assert complete and headers.get(b"content-encoding") == b"br"  # relayed as it is
    assert held_body and len(held_body) < len(body) and body.startswith(held_body)  # the end waited
    assert b"[DONE]" in gzip.decompress(body)
    assert [(r["status"], r["cost_nano_usd"]) for r in rows] == [("usage_missing", cost)]  # the bound


# -- the conversion path: an Anthropic client, an OpenAI provider answering gzip ---------------------
@pytest.fixture(scope="module", params=BUILDS)
def config_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("coded-config")
    with FakeProviderThread() as fake:
        with GatewayProcess(write_config(workdir / "config.yaml", fake.port, {}), env=request.param) as gateway:
            yield gateway


def _exchange(port: int, request: bytes) -> tuple[dict[bytes, bytes], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=8) as client:
        client.sendall(request)
        got = b""
        while not _split(got)[2]:
            chunk = client.recv(65536)
            assert chunk, got[-300:]
            got += chunk
    headers, body, _ = _split(got)
    assert got.startswith(b"HTTP/1.1 200 "), got[:300]
    return headers, body


@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_anthropic_client_of_an_openai_provider_answering_coded_gets_the_converted_answer(
    config_gateway: GatewayProcess, stream: bool, coding: bytes,
) -> None:
    """The Messages request is converted to chat for the OpenAI provider, whose answer comes
    coded: the converter reads the decoded answer, the client gets a Messages answer in no
    coding, the row is the provider's usage (321 in, 7 out)."""
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (b"POST /v1/messages HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
               b"anthropic-version: 2023-06-01\r\nx-fake-content-encoding: " + coding + b"\r\n"
               b"x-fake-input-tokens: 321\r\nx-fake-output-tokens: 7\r\n"
               + b"content-length: %d\r\n\r\n" % len(body) + body)
    headers, answer = _exchange(config_gateway.port, request)
    assert headers.get(b"content-encoding") is None
    if stream:
        kinds = [json.loads(line[6:])["type"] for line in answer.split(b"\n") if line.startswith(b"data: {")]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
        usage = [json.loads(line[6:]) for line in answer.split(b"\n") if b'"message_delta"' in line][0]["usage"]
        assert usage["output_tokens"] == 7
    else:
        message = json.loads(answer)
        assert message["type"] == "message" and message["content"][0]["type"] == "text"
        assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (321, 7)
    rows = _rows(str(config_gateway.config_path.with_suffix(".db")), headers[b"x-plano-request-id"])
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("ok", 321, 7)]


# -- the response guardrails read a coded answer ---------------------------------------------------------
def test_the_response_detectors_read_a_coded_answer(tmp_path: Path) -> None:
    """``response_guardrails`` (email: warn) over an answer the provider sent in gzip: the
    held JSON answer is checked (``x-plano-guardrail-warning: response:email``) and the
    stream scanned as it passes (named in the access log).  On main a coded answer was
    passed unchecked: ``ResponseHold.checkable`` refused a Content-Encoding, and the stream
    scan read compressed bytes (no warning header: None there)."""
    with FakeProviderThread() as fake:
        config = write_config(tmp_path / "config.yaml", fake.port,
                              {"response_guardrails": "{detectors: {email: warn}, streams: true}",
                               "access_log": tmp_path / "access.log"})
        with GatewayProcess(config) as gateway:
            answers = []
            for stream in (False, True):
                body = json.dumps({"model": "gpt-4o-mini", "stream": stream,
                                   "messages": [{"role": "user", "content": "hi"}]}).encode()
                request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                           b"x-fake-content-encoding: gzip\r\nx-fake-text: write to jane.doe@example.com now\r\nx-fake-events: 1\r\n"
                           + b"content-length: %d\r\n\r\n" % len(body) + body)
                answers.append(_exchange(gateway.port, request))
            deadline = time.monotonic() + 5
            log = b""
            while log.count(b"\n") < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
                log = (tmp_path / "access.log").read_bytes() if (tmp_path / "access.log").exists() else b""
    (json_headers, json_body), (stream_headers, stream_body) = answers
    assert json_headers.get(b"content-encoding") is None and b"jane.doe@example.com" in json_body
    assert json_headers.get(b"x-plano-guardrail-warning") == b"response:email"
    assert stream_headers.get(b"content-encoding") is None and b"jane.doe" in stream_body
    lines = log.splitlines()
    assert len(lines) == 2 and b"response:email" in lines[1], log


def test_a_coded_error_under_the_response_guardrails_is_relayed_not_hung(tmp_path: Path) -> None:
    """A provider's 500 in gzip with ``response_guardrails`` configured: relayed (an error is
    not checked).  On main the hold was wrapped for decoding and its end never
    called: the client got nothing until its own timeout (its answer here: b"")."""
    scripted = ScriptedProvider()
    try:
        error = gzip.compress(b'{"error":{"message":"boom","type":"server_error"}}')
        scripted.add("", b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                         b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(error) + error)
        config = write_config(tmp_path / "config.yaml", scripted.port,
                              {"response_guardrails": "{detectors: {email: warn}}"})
        with GatewayProcess(config) as gateway:
            body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=8) as client:
                client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                               + b"content-length: %d\r\n\r\n" % len(body) + body)
                got = b""
                while not _split(got)[2]:
                    chunk = client.recv(65536)
                    assert chunk, got[-300:]
                    got += chunk
    finally:
        scripted.close()
    headers, answer, _ = _split(got)
    assert got.startswith(b"HTTP/1.1 500 ")
    # decoded: the provider was called with the gateway's key, which an error body is
    # redacted of (test_a_coded_error_echoing_the_gateways_key_is_redacted)
    assert headers.get(b"content-encoding") is None
    assert json.loads(answer)["error"]["message"] == "boom"


# -- managed mode's Responses state of a coded answer ---------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_coded_responses_answer_is_stored_as_state_decoded(tmp_path: Path, stream: bool) -> None:
    """``state_storage`` in managed mode: the first turn's answer comes in gzip, the second
    turn names it (``previous_response_id``) and is served with the history expanded.  On
    main the state recorded the compressed bytes (no response read: nothing stored), so the
    second turn was a 404."""
    from tests.test_responses_managed_state import FAKE_USAGE, b

    with FakeProviderThread() as fake:
        path = write_config(tmp_path / "plano_config.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})
        path.write_text(path.read_text() + "state_storage:\n  type: store\n")
        db_path = str(path.with_suffix(".db"))
        tenants: list[Tenant] = []
        with GatewayProcess(path, env=ENV, before_start=lambda: tenants.append(
                provision(None, db_path, DEFAULT_PIPE))) as gateway:
            extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in FAKE_USAGE.items())
            first = {"model": "gpt-4o-mini", "input": "question 0", "max_output_tokens": 50, "stream": stream}
            raw = _request(b(first), tenants[0].token, extra + b"x-fake-content-encoding: gzip\r\n")
            headers, answer = _exchange(gateway.port, raw.replace(b"/v1/chat/completions", b"/v1/responses", 1))
            assert headers.get(b"content-encoding") is None
            if stream:
                events = [json.loads(line[5:]) for line in answer.split(b"\n") if line.startswith(b"data:")]
                first_id = next(e["response"]["id"] for e in events if e.get("type") == "response.completed")
            else:
                first_id = json.loads(answer)["id"]
            second = {"model": "gpt-4o-mini", "input": "question 1", "max_output_tokens": 50,
                      "previous_response_id": first_id}
            raw = _request(b(second), tenants[0].token, extra)
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=8) as client:
                client.sendall(raw.replace(b"/v1/chat/completions", b"/v1/responses", 1))
                got = b""
                while not _split(got)[2]:
                    chunk = client.recv(65536)
                    assert chunk, got[-300:]
                    got += chunk
            sent = [r for r in fake.requests if r.path.endswith("/responses")][-1].json()
    assert got.startswith(b"HTTP/1.1 200 "), got[:400]
    assert "previous_response_id" not in sent
    assert [i["content"] for i in sent["input"] if i.get("role") == "user"] == ["question 0", "question 1"]


# -- a coded error that echoes the gateway's key ----------------------------------------------------------
@pytest.mark.parametrize("env", BUILDS)
def test_a_coded_error_echoing_the_gateways_key_is_redacted(tmp_path: Path, env: dict[str, str]) -> None:
    """A 400 in gzip whose message quotes the gateway's own provider key: the client gets it
    decoded with the key masked.  On main the redaction read the compressed bytes (no key
    there) and the client's gzip decoder gave the key back."""
    key = b"sk-upstream-operator-secret-0123456789"
    scripted = ScriptedProvider()
    try:
        error = gzip.compress(b'{"error":{"message":"Incorrect API key provided: ' + key + b'.","type":"invalid_request_error"}}')
        scripted.add("", b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                         b"content-length: %d\r\n\r\n" % len(error) + error)
        config = write_config(tmp_path / "config.yaml", 9, {}, f"""\
  - model: scripted/gpt-4o-mini
    base_url: http://127.0.0.1:{scripted.port}
    provider_interface: openai
    access_key: {key.decode()}
""")
        with GatewayProcess(config, env=env) as gateway:
            body = b'{"model":"scripted/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=8) as client:
                client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                               + b"content-length: %d\r\n\r\n" % len(body) + body)
                got = b""
                while not _split(got)[2]:
                    chunk = client.recv(65536)
                    assert chunk, got[-300:]
                    got += chunk
    finally:
        scripted.close()
    headers, answer, _ = _split(got)
    plain = _plain(headers, answer)
    assert got.startswith(b"HTTP/1.1 400 ") and key not in plain  # (on main: the key, decoded by the client)
    assert headers.get(b"content-encoding") is None and b"Incorrect API key provided: " + b"*" * len(key) in plain
