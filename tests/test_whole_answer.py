"""The whole-answer pass (plano_fast/gateway/_answer.pyx) against its twin
(``plano_fast.upstream.take_whole_answer_py``: the relay's callbacks one after the other).

Two gateways, one running the compiled pass and one the pure build
(``PLANO_FAST_PURE_SCANNER=1``: every answer through httptools and the Python callbacks),
get the same requests, answered by a raw upstream with the same bytes -- plain answers the
pass takes (provider headers the gateway drops or keeps, ``Connection: close``, an empty
body, odd header case and spacing, no usage) and the ones it leaves to the twin (chunked,
1xx interim answers before the final one, a close-delimited body, HTTP/1.0, a head split
from its body, error statuses) -- over a keep-alive client connection, an HTTP/1.0 one and
a ``Connection: close`` one.  Every answer's bytes, as the client reads them, must be the
same (but for the ``date`` and request-id values), in config mode (the operator's key:
account headers dropped) and in firewall mode (the client's key), and so must the usage
rows each request settled.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httptools
import pytest

from plano_fast.wire import ACCOUNT_HEADERS, PURE_ENV
from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream
from tests.test_billing_e2e import read_rows
from tests.test_firewall import USER_KEY, setup_keys
from tests.test_managed import DEFAULT_PIPE, Tenant, provision
from tests.test_managed import ENV as MANAGED_ENV

pytest.importorskip("plano_fast.gateway._answer", reason="the Cython extension is not built")
if os.environ.get(PURE_ENV) == "1":  # both gateways would run the twin
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def _completion(text: str, usage: object = _USAGE) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }  # fmt: skip
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


#: a provider's head as OpenAI sends it: the account headers (dropped for the operator's
#: key), date and server (the gateway's own), cookies, rate limits (kept)
_PROVIDER_LINES = (
    b"content-type: application/json\r\n"
    b"date: Thu, 03 Dec 2026 23:00:00 GMT\r\n"
    b"openai-organization: org-secret\r\nopenai-project: proj_secret\r\nopenai-processing-ms: 412\r\n"
    b"x-ratelimit-remaining-tokens: 29999975\r\nx-request-id: req_0123456789abcdef\r\n"
    b"set-cookie: __cf_bm=xxxx; path=/; HttpOnly; Secure\r\nset-cookie: _cfuvid=yyyy; path=/\r\n"
    b"server: cloudflare\r\nalt-svc: h3=\":443\"; ma=86400\r\nkeep-alive: timeout=5\r\n"
)


#: the account headers (ACCOUNT_HEADERS) as sent in any case, thirty of them; and names
#: of their lengths, their last byte another, which are not theirs
_ACCOUNT_NAMES = [(name, name.upper(), name.title())[k % 3] for k, name in enumerate(sorted(ACCOUNT_HEADERS) * 3)]
_NEAR_NAMES = [name[:-1] + (b"~" if k % 2 else b"x" if name[-1:].lower() != b"x" else b"y")
               for k, name in enumerate(_ACCOUNT_NAMES)]


def _plain(body: bytes, status: bytes = b"200 OK", lines: bytes = _PROVIDER_LINES, version: bytes = b"1.1") -> bytes:
    return b"HTTP/%s %s\r\n%scontent-length: %d\r\n\r\n%s" % (version, status, lines, len(body), body)


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return (b"HTTP/1.1 200 OK\r\n" + _PROVIDER_LINES + b"transfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]))


#: case -> (answer bytes, the upstream closes after it, a pause after this many bytes)
CASES: dict[str, tuple[bytes, bool, int]] = {
    "plain": (_plain(_completion("plain")), False, 0),
    "connection-close": (_plain(_completion("close"), lines=_PROVIDER_LINES + b"Connection: close\r\n"), True, 0),
    "connection-keep-alive": (_plain(_completion("ka"), lines=b"Connection: keep-alive\r\n" + _PROVIDER_LINES), False, 0),
    "empty-body": (_plain(b""), False, 0),
    "no-usage": (_plain(_completion("no usage", usage=None)), False, 0),
    "odd-case-and-spacing": (_plain(_completion("odd"), lines=(
        b"Content-Type:application/json \r\nX-Odd-Name:  two  spaces \t\r\nOpenAI-Organization: org-x\r\n"
        b"SET-COOKIE: a=1\r\nx-empty:\r\n")), False, 0),
    # more runs of kept lines than the pass records in place (_head.pxd: HEAD_RUNS), and
    # every account header in three cases (and names one byte off them: kept)
    "many-runs": (_plain(_completion("many runs"), lines=_PROVIDER_LINES + b"".join(
        b"x-kept-%d: v\r\ndate: d\r\n%s: p-%d\r\n%s: near-%d\r\n" % (k, _ACCOUNT_NAMES[k], k, _NEAR_NAMES[k], k)
        for k in range(30))), False, 0),
    "large": (_plain(_completion("x" * 200_000)), False, 0),
    "chunked": (_chunked(_completion("chunked")), False, 0),
    "interim": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
                + _plain(_completion("after interim")), False, 0),
    "close-delimited": (b"HTTP/1.1 200 OK\r\n" + _PROVIDER_LINES + b"connection: close\r\n\r\n"
                        + _completion("until close"), True, 0),
    "http10": (_plain(_completion("http/1.0"), version=b"1.0"), True, 0),
    "split-head-and-body": (_plain(_completion("split")), False, len(_plain(_completion("split"))) - 40),
    "bad-request": (_plain(b'{"error":{"message":"bad","type":"invalid_request_error"}}', b"400 Bad Request"), False, 0),
    "not-found": (_plain(b'{"error":{"message":"no model","type":"invalid_request_error"}}', b"404 Not Found"),
                  False, 0),
    "no-reason-phrase": (_plain(_completion("no reason"), b"200 "), False, 0),
    "created": (_plain(_completion("created"), b"201 Created"), False, 0),
}


class ScriptedUpstream(RawUpstream):
    """Answers each request with the case its last message names."""

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        case = json.loads(body)["messages"][-1]["content"]
        data, close, pause_at = CASES[case]
        if pause_at:
            conn.sendall(data[:pause_at])
            time.sleep(0.05)
            conn.sendall(data[pause_at:])
        else:
            conn.sendall(data)
        return not close


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.close()


def _read_answer(sock: socket.socket, buf: bytearray) -> bytes:
    """One whole answer's bytes from ``sock`` (``buf``: bytes read past the previous one)."""
    done: list[int] = []

    class Sink:
        def on_message_complete(self) -> None:
            done.append(1)

    parser = httptools.HttpResponseParser(Sink())
    raw = bytearray()
    pending = bytes(buf)
    buf.clear()
    while True:
        if pending:
            for i in range(len(pending)):  # byte by byte: the answer's end found exactly
                parser.feed_data(pending[i:i + 1])
                raw += pending[i:i + 1]
                if done:
                    buf += pending[i + 1:]
                    return bytes(raw)
        pending = sock.recv(1 << 20)
        if not pending:
            parser.feed_data(b"")  # (a close-delimited body ends here)
            return bytes(raw)


def _normalized(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = []
    for line in head.split(b"\r\n"):
        name = line.partition(b":")[0].lower()
        if name == b"date" or name == b"x-plano-request-id":
            line = name + b": <volatile>"
        lines.append(line)
    return b"\r\n".join(lines) + sep + body


def _request(case: str, version: bytes, connection: bytes, auth: bytes) -> bytes:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": case}]}).encode()
    return (b"POST /v1/chat/completions HTTP/%s\r\nhost: gw\r\ncontent-type: application/json\r\n%s%s"
            b"content-length: %d\r\n\r\n%s" % (version, auth, connection, len(body), body))


def _answers(gateway: GatewayProcess, auth: bytes) -> dict[str, bytes]:
    """Every case over one keep-alive HTTP/1.1 connection, then the plain one over an
    HTTP/1.0 keep-alive connection and a Connection: close one."""
    out: dict[str, bytes] = {}
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        buf = bytearray()
        for case in CASES:
            sock.sendall(_request(case, b"1.1", b"", auth))
            out[case] = _read_answer(sock, buf)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        buf = bytearray()
        for i, case in enumerate(("plain", "connection-close", "plain")):
            sock.sendall(_request(case, b"1.0", b"connection: keep-alive\r\n", auth))
            out[f"http/1.0 client, {case} {i}"] = _read_answer(sock, buf)
    for case in ("plain", "empty-body"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(_request(case, b"1.1", b"connection: close\r\n", auth))
            out[f"closing client, {case}"] = _read_answer(sock, bytearray())
            assert sock.recv(1) == b"", "the gateway closes after answering a closing client"
    return out


def _usage(sqlite_path: str, count: int) -> list[tuple[object, ...]]:
    deadline = time.monotonic() + 15
    rows = read_rows(None, sqlite_path)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = read_rows(None, sqlite_path)
    return sorted((r.status, r.http_status, r.model, r.input_tokens, r.output_tokens, r.streaming)
                  for r in rows)  # fmt: skip


#: starts a gateway with this environment: (gateway, its SQLite path, the client's credential line)
Start = Callable[[dict[str, str]], tuple[GatewayProcess, str, bytes]]


def _compare(start: Start) -> dict[str, bytes]:
    compiled_gw, compiled_db, compiled_auth = start({})
    twin_gw, twin_db, twin_auth = start({PURE_ENV: "1"})
    with compiled_gw, twin_gw:
        compiled = _answers(compiled_gw, compiled_auth)
        twin = _answers(twin_gw, twin_auth)
        count = len(compiled)
        compiled_rows, twin_rows = _usage(compiled_db, count), _usage(twin_db, count)
    assert list(compiled) == list(twin)
    for case in compiled:
        assert _normalized(compiled[case]) == _normalized(twin[case]), case
    assert compiled_rows == twin_rows, (compiled_rows, twin_rows)
    assert len(compiled_rows) == count, compiled_rows
    return compiled


def _check_answers(answers: dict[str, bytes], operator_key: bool) -> None:
    """What both implementations must relay (so that agreeing on something wrong fails)."""
    plain = answers["plain"]
    head, _, body = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and json.loads(body)["usage"] == _USAGE
    lower = head.lower() + b"\r\n"
    assert b"server: plano_fast\r\n" in lower and b"cloudflare" not in lower
    assert lower.count(b"\r\ndate: ") == 1 and b"2026 23:00:00" not in lower
    assert b"keep-alive" not in lower and b"x-plano-request-id: " in lower
    assert lower.count(b"set-cookie: ") == 2 and b"openai-processing-ms: 412" in lower
    assert (b"openai-organization" in lower) is not operator_key
    assert b"content-length: %d\r\n" % len(body) in lower
    assert b"x-odd-name:  two  spaces \t\r\n" in answers["odd-case-and-spacing"].lower()
    many = answers["many-runs"].partition(b"\r\n\r\n")[0]
    assert many.count(b"\r\nx-kept-") == 30 and many.count(b"\r\ndate: ") == 1
    assert many.count(b": near-") == 30
    assert many.count(b": p-") == (0 if operator_key else 30)
    assert json.loads(answers["interim"].partition(b"\r\n\r\n")[2])["choices"][0]["message"]["content"] == (
        "after interim")
    assert answers["bad-request"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: keep-alive\r\n" in answers["http/1.0 client, plain 2"]
    assert b"connection: close\r\n" in answers["closing client, plain"]


def test_config_mode_answers_are_the_twins_byte_for_byte(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    def start(env: dict[str, str]) -> tuple[GatewayProcess, str, bytes]:
        name = "pure" if env else "compiled"
        config = write_config(tmp_path / f"{name}.yaml", upstream.port)
        return GatewayProcess(config, env=env), str(tmp_path / f"{name}.db"), b""

    _check_answers(_compare(start), operator_key=True)


def test_firewall_mode_answers_are_the_twins_byte_for_byte(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{upstream.port}"

    def start(env: dict[str, str]) -> tuple[GatewayProcess, str, bytes]:
        name = "pure" if env else "compiled"
        config = write_config(tmp_path / f"{name}.yaml", upstream.port, {"mode": "firewall"})
        db = str(tmp_path / f"{name}.db")
        gateway = GatewayProcess(config, env=env, before_start=lambda: setup_keys(db, url))
        return gateway, db, b"authorization: Bearer %s\r\n" % USER_KEY.encode()

    _check_answers(_compare(start), operator_key=False)


def test_managed_mode_answers_are_the_twins_byte_for_byte(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    """Managed mode holds a JSON answer's body until its row is written (HoldTerminal):
    the pass calls that filter as the twin does."""

    def start(env: dict[str, str]) -> tuple[GatewayProcess, str, bytes]:
        name = "pure" if env else "compiled"
        config = write_config(tmp_path / f"{name}.yaml", upstream.port, {"managed": "true"})
        db = str(tmp_path / f"{name}.db")
        tenants: list[Tenant] = []
        gateway = GatewayProcess(config, env={**MANAGED_ENV, **env},
                                 before_start=lambda: tenants.append(provision(None, db, DEFAULT_PIPE)))
        return gateway, db, b"authorization: Bearer %s\r\n" % tenants[0].token.encode()

    _check_answers(_compare(start), operator_key=True)


def test_every_modes_exchange_takes_the_compiled_pass() -> None:
    """A mode whose exchange class overrides a relay callback the pass does not know gets
    the twin for all its answers (correct, but slow): this says so when it happens."""
    from plano_fast.gateway._answer import plan_of
    from plano_fast.gateway.modes.config import ConfigExchange
    from plano_fast.gateway.modes.firewall import FirewallExchange
    from plano_fast.gateway.modes.gemini import GeminiExchange
    from plano_fast.gateway.modes.managed import ManagedExchange
    from plano_fast.gateway.relay import Exchange

    for cls in (Exchange, FirewallExchange, ConfigExchange, GeminiExchange, ManagedExchange):
        assert plan_of(cls), cls
    assert not plan_of(object)
