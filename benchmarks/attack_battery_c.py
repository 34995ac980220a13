"""The attack battery's second round (2026-12-05 "c"): Gemini paths, header injection,
hop-by-hop headers, request smuggling against a front proxy, JSON tricks on the hot path and
resource exhaustion.  Cases are registered here and run by benchmarks/attack_battery.py (which
adds ``CASES`` to its own); the helpers are that module's.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from typing import Any

from benchmarks.attack_battery import (
    ALL_MODES,
    CHAT,
    CHAT_PATH,
    STREAM_CHAT,
    Answer,
    Case,
    Result,
    Stack,
    _chunked,
    _head,
    _req,
    exchange,
    parse_first,
    post,
    refused,
    registrar,
)

CASES: list[Case] = []
ALL = ALL_MODES
case = registrar(CASES)


GEMINI_BODY = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'


def _gemini_auth(s: Stack) -> bytes:
    """Firewall: the registered key as x-goog-api-key; config: none needed; managed: the
    token (Gemini paths are not managed endpoints: 404 whatever the path)."""
    if s.mode == "config":
        return b""
    return b"x-goog-api-key: " + s.auth.split(b"Bearer ")[1]


def _gemini(s: Stack, model_segment: bytes, extra: bytes = b"") -> bytes:
    return post(b"/v1beta/models/" + model_segment, GEMINI_BODY, _gemini_auth(s), extra)


def _calls_since(s: Stack, before: int) -> list[Any]:
    return s.provider_calls()[before:]


def _not_forwarded(s: Stack, data: bytes, statuses: tuple[int, ...], must_close: bool = False,
                   **kw: Any) -> Result:
    return refused(s, data, statuses, must_close=must_close, **kw)


# credentials: every source, the same rules ---------------------------------------------------------
@case("identity", "each credential source (Bearer, x-api-key, x-goog-api-key, api-key, ?key=) with an encoded or "
      "inner space, a control byte (a header's: the parser's 400), non-ASCII, an empty value or twice: 401, nothing "
      "forwarded; the plain key: 200",
      modes=("firewall",))
def credential_sources_same_rules(s: Stack) -> Result:
    key = s.auth.split(b"Bearer ")[1].strip()
    path = b"/v1beta/models/gemini-2.0-flash:generateContent"
    bad: list[str] = []

    def attempt(headers: bytes, query: bytes, want: int) -> None:
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, post(path + (b"?" + query if query else b""), GEMINI_BODY, headers))
        fwd = len(_calls_since(s, before))
        # (a control byte in a header value is the HTTP parser's 400, before identification)
        status_ok = answer.status == want or (want == 401 and answer.status == 400 and b"\x01" in headers)
        if not status_ok or (want != 200 and fwd) or key.decode() in answer.body.decode("latin-1"):
            bad.append(f"{(headers + query)[:60]!r}->{answer.status} fwd={fwd}")

    for name in (b"Authorization: Bearer ", b"x-api-key: ", b"x-goog-api-key: ", b"api-key: "):
        attempt(name + key + b"\r\n", b"", 200)
        for value in (key + b"%20", b"K EY", key + b"\x01", key + b"\xc3\xa9", b""):
            attempt(name + value + b"\r\n", b"", 401)
        attempt(name + key + b"\r\n" + name + key + b"\r\n", b"", 401)
    attempt(b"", b"key=" + key, 200)
    for value in (key + b"%20", key + b"+", b"%20" + key, key + b"%09", key + b"%01", key + b"%C3%A9", b"", key + b"%zz"):
        attempt(b"", b"key=" + value, 401)
    attempt(b"", b"key=" + key + b"&key=" + key, 401)
    attempt(b"x-goog-api-key: " + key + b"\r\n", b"key=" + key, 401)
    return Result(not bad, "; ".join(bad)[:300] or "every malformed or repeated credential: 401, none forwarded")


# gemini paths --------------------------------------------------------------------------------
GEMINI_PATHS: dict[str, bytes] = {
    "gemini_path_traversal": b"..%2F..%2Fx:generateContent",
    "gemini_encoded_colon": b"gemini-2.0-flash%3AgenerateContent",
    "gemini_double_encoded": b"gemini-2.0-flash%253AgenerateContent",
    "gemini_double_encoded_slash": b"..%252F..%252Fv1%252Fx:generateContent",
    "gemini_semicolon_param": b"gemini-2.0-flash;x=1:generateContent",
    "gemini_slash_in_model": b"gemini/2.0:generateContent",
    "gemini_encoded_slash_in_wildcard": b"gemini%2F..%2Fx:generateContent",
    "gemini_two_slashes_in_wildcard": b"gemini%2Fx%2Fy:generateContent",
    "gemini_nul_in_model": b"gemini%00x:generateContent",
    "gemini_crlf_in_model": b"gemini%0d%0aHost:%20evil.example%0d%0a:generateContent",
    "gemini_question_in_model": b"gemini%3Fkey=x:generateContent",
    "gemini_hash_in_model": b"gemini%23x:generateContent",
    "gemini_dot_model": b".:generateContent",
    "gemini_dotdot_model": b"..:generateContent",
    "gemini_backslash_model": b"..%5C..%5Cx:generateContent",
}


def _gemini_path_case(name: str, segment: bytes) -> None:
    def run(s: Stack) -> Result:
        return _not_forwarded(s, _gemini(s, segment), (400, 404))
    run.__name__ = name
    case("gemini-path", "400/404 in the client's format, nothing forwarded")(run)


for _name, _segment in GEMINI_PATHS.items():
    _gemini_path_case(_name, _segment)


@case("gemini-path", "config: a provider-qualified model (gemini%2F2.0) goes to one plain segment upstream; "
      "firewall: 400/404, nothing forwarded")
def gemini_qualified_model(s: Stack) -> Result:
    if s.mode != "config":
        return _not_forwarded(s, _gemini(s, b"gemini%2F2.0:generateContent"), (400, 404))
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, _gemini(s, b"gemini%2F2.0:generateContent"))
    paths = [c.path for c in _calls_since(s, before)]
    return Result(answer.status == 200 and paths == ["/v1beta/models/2.0:generateContent"], f"{answer.status} paths={paths}")


@case("gemini-path", "64 KB model name: 400/404/414/431, nothing forwarded, never a 5xx")
def gemini_huge_model(s: Stack) -> Result:
    return _not_forwarded(s, _gemini(s, b"g" * 65536 + b":generateContent"), (400, 404, 414, 431))


@case("gemini-path", "a plain Gemini request is forwarded to exactly the metered path", modes=("config", "firewall"))
def gemini_plain_path(s: Stack) -> Result:
    before = len(s.provider_calls())
    model = b"gemini/gemini-2.0-flash" if s.mode == "config" else b"gemini-2.0-flash"
    answer = exchange(s.gateway.port, _gemini(s, model.split(b"/")[-1] + b":generateContent")
                      if s.mode == "firewall" else post(
                          b"/v1/chat/completions", b'{"model":"' + model + b'","messages":[{"role":"user","content":"hi"}]}', b""))
    calls = _calls_since(s, before)
    paths = [c.path for c in calls]
    ok = answer.status == 200 and len(calls) == 1 and paths[0].startswith("/v1beta/models/gemini-2.0-flash:generateContent")
    return Result(ok, f"{answer.status} paths={paths}")


@case("gemini-path", "model names with CR/LF, NUL, '/', '?', '#', '%' in the body never reach a path: 400, nothing forwarded",
      modes=("config",))
def body_model_into_upstream_path(s: Stack) -> Result:
    """Config mode puts a gemini/* or azure_openai/* model into the upstream path."""
    seen = []
    ok = True
    for prefix in (b"gemini/", b"azure_openai/"):
        for tail in (b"x\\r\\nHost: evil", b"x\\u0000y", b"../x", b"x/../../y", b"x?key=1", b"x#y", b"x%2F..", b"x y",
                     b"x:generateContent", b"\\u2028x"):
            body = b'{"model":"' + prefix + tail + b'","messages":[{"role":"user","content":"hi"}]}'
            before = len(s.provider_calls())
            answer = exchange(s.gateway.port, post(CHAT_PATH, body, b""))
            calls = _calls_since(s, before)
            if calls or answer.status != 400:
                ok = False
                seen.append(f"{(prefix + tail).decode()!r}->{answer.status} {[c.path for c in calls]}")
    return Result(ok, "all 400, none forwarded" if ok else "; ".join(seen)[:300])


# header injection ------------------------------------------------------------------------------
@case("header-injection", "CR/LF/NUL in a header value: 400, close, nothing forwarded")
def header_crlf_values(s: Stack) -> Result:
    bad = []
    for name in (b"x-request-id", b"traceparent", b"anthropic-version", b"anthropic-beta", b"OpenAI-Organization"):
        for junk in (b"a\rb", b"a\x00b", b"a\x0bb", b"a\x7fb"):
            r = _not_forwarded(s, _req(s, extra=name + b": " + junk + b"\r\n"), (400,), must_close=True)
            if not r.ok:
                bad.append(f"{name.decode()}:{junk!r}: {r.observed}")
    return Result(not bad, "all 400" if not bad else "; ".join(bad)[:300])


@case("header-injection", "a non-ASCII x-request-id / traceparent is forwarded as opaque bytes or dropped, "
      "never echoed raw into the gateway's own headers or a log line")
def header_non_ascii_request_id(s: Stack) -> Result:
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, _req(s, extra=b"x-request-id: r\xc3\xa9q\x85\r\ntraceparent: 00-\xff\xfe-x\r\n"))
    calls = _calls_since(s, before)
    rid = answer.header(b"x-plano-request-id") or b""
    ok = answer.status == 200 and len(calls) == 1 and rid.isascii() and b"\x85" not in answer.head
    return Result(ok, f"{answer.status} fwd={len(calls)} x-plano-request-id={rid[:40]!r} "
                      f"upstream x-request-id={[c.header('x-request-id') for c in calls]}")


@case("header-injection", "a 100 KB header value: 431, close, nothing forwarded")
def header_huge_value(s: Stack) -> Result:
    return _not_forwarded(s, _req(s, extra=b"anthropic-beta: " + b"b" * 100_000 + b"\r\n"), (431,), must_close=True)


@case("header-injection", "one x-request-id upstream: the client's, once (two sent: 400 or the first, never both)")
def header_two_request_ids(s: Stack) -> Result:
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, _req(s, extra=b"x-request-id: one\r\nx-request-id: two\r\n"))
    calls = _calls_since(s, before)
    sent = [c.header_all("x-request-id") for c in calls]
    ok = answer.status == 400 and not calls or answer.status == 200 and len(calls) == 1 and len(sent[0]) <= 2
    return Result(ok, f"{answer.status} upstream x-request-id={sent}")


# hop-by-hop ------------------------------------------------------------------------------------
@case("hop-by-hop", "Connection: x-api-key does not strip the credential: 200, the key forwarded once", modes=("firewall",))
def connection_names_the_credential(s: Stack) -> Result:
    key = s.auth.split(b"Bearer ")[1].strip()
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, post(CHAT_PATH, CHAT, b"x-api-key: " + key + b"\r\n",
                                           b"Connection: x-api-key, keep-alive\r\n"))
    calls = _calls_since(s, before)
    sent = [c.header_all("x-api-key") for c in calls]
    ok = answer.status == 200 and sent == [[key.decode()]] and all(c.header("connection") in (None, "keep-alive") for c in calls)
    return Result(ok, f"{answer.status} upstream x-api-key={'[key]' if sent == [[key.decode()]] else sent}")


@case("hop-by-hop", "Connection: authorization: the credential is still required and forwarded once (config: the gateway's key)")
def connection_names_authorization(s: Stack) -> Result:
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, _req(s, extra=b"Connection: authorization\r\n"))
    calls = _calls_since(s, before)
    auths = [c.header_all("authorization") for c in calls]
    ok = answer.status == 200 and len(calls) == 1 and len(auths[0]) == 1
    if s.mode == "managed":  # the token never leaves the gateway: the pipe's key is sent
        ok = ok and b"xproxy_" not in auths[0][0].encode()
    return Result(ok, f"{answer.status} fwd={len(calls)} authorization lines={[len(a) for a in auths]}")


@case("hop-by-hop", "Upgrade: websocket, Proxy-Authorization, TE, Keep-Alive, Proxy-Connection: 200 (or 400), none forwarded, never a 101")
def hop_by_hop_dropped(s: Stack) -> Result:
    before = len(s.provider_calls())
    extra = (b"Connection: Upgrade, Keep-Alive, TE\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"
             b"Proxy-Authorization: Basic c2stQ0FOQVJZ\r\nTE: trailers\r\nKeep-Alive: timeout=999\r\n"
             b"Proxy-Connection: keep-alive\r\n")
    answer = exchange(s.gateway.port, _req(s, extra=extra))
    calls = _calls_since(s, before)
    leaked = sorted({n for c in calls for n, _ in c.headers} & {"upgrade", "proxy-authorization", "te", "keep-alive",
                                                                "proxy-connection", "connection"})
    ok = answer.status in (200, 400) and answer.status != 101 and not leaked and (answer.status == 200) == (len(calls) == 1)
    return Result(ok, f"{answer.status} fwd={len(calls)} leaked={leaked}")


@case("hop-by-hop", "Connection: Upgrade + Upgrade: websocket with a body that is a request: one 400, close, nothing forwarded")
def upgrade_with_body(s: Stack) -> Result:
    inner = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    before = len(s.provider_calls())
    data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + s.auth + b"Connection: Upgrade\r\n"
            b"Upgrade: websocket\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
    answer = exchange(s.gateway.port, data, until_close=True, wait_s=4)
    answers = answer.raw.count(b"HTTP/1.1 ")
    fwd = len(_calls_since(s, before))
    return Result(answers == 1 and answer.status == 400 and answer.closed and not fwd,
                  f"{answer.status} answers={answers} closed={answer.closed} fwd={fwd}")


# smuggling against a front proxy ----------------------------------------------------------------------
@case("smuggling", "GET with TE chunked + CL 0: 400, close")
def get_te_and_cl(s: Stack) -> Result:
    data = (b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + s.auth + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
            b"5\r\nGET /\r\n0\r\n\r\n")
    return refused(s, data, (400,))


@case("smuggling", "chunked body with a trailer (x-smuggled, Content-Length): 200, trailer never forwarded, no second answer")
def chunked_trailer_headers(s: Stack) -> Result:
    before = len(s.provider_calls())
    data = (_head(s, b"Transfer-Encoding: chunked\r\n\r\n") + b"%x\r\n%s\r\n0\r\n" % (len(CHAT), CHAT)
            + b"Content-Length: 50\r\nx-smuggled: 1\r\nAuthorization: Bearer sk-CANARY\r\n\r\n")
    answer = exchange(s.gateway.port, data, wait_s=4)
    calls = _calls_since(s, before)
    leaked = [n for c in calls for n, v in c.headers if n == "x-smuggled" or "CANARY" in v]
    two = answer.raw.count(b"HTTP/1.1 ")
    ok = answer.status in (200, 400) and not leaked and two == 1 and (answer.status == 200) == (len(calls) == 1)
    return Result(ok, f"{answer.status} fwd={len(calls)} leaked={leaked} answers={two}")


@case("smuggling", "HEAD to a POST endpoint: 405 (or 404) with no body bytes after the head (a proxy reads none)")
def head_to_post_endpoint(s: Stack) -> Result:
    data = (b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + s.auth + b"\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    answer = exchange(s.gateway.port, data, until_close=True, wait_s=4)
    head, _, rest = answer.raw.partition(b"\r\n\r\n")
    ok = answer.status in (404, 405) and rest.startswith(b"HTTP/1.1 200")
    return Result(ok, f"{answer.status} after head: {rest[:40]!r}")


@case("smuggling", "HEAD /healthz and /v1/models: no body bytes after the head")
def head_to_get_endpoint(s: Stack) -> Result:
    bad = []
    for path in (b"/healthz", b"/v1/models"):
        data = (b"HEAD " + path + b" HTTP/1.1\r\nHost: gw\r\n" + s.auth + b"\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        answer = exchange(s.gateway.port, data, until_close=True, wait_s=4)
        rest = answer.raw.partition(b"\r\n\r\n")[2]
        if not rest.startswith(b"HTTP/1.1 200"):
            bad.append(f"{path.decode()} {answer.status} then {rest[:30]!r}")
    return Result(not bad, "; ".join(bad) or "no body after either head")


@case("smuggling", "OPTIONS *: 4xx (or 200 without a body), the connection stays in sync")
def options_star(s: Stack) -> Result:
    data = (b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    answer = exchange(s.gateway.port, data, until_close=True, wait_s=4)
    status, head, body, _ = parse_first(answer.raw)
    second = answer.raw[len(head) + 4 + len(body):]
    ok = status in (200, 204, 400, 404, 405) and (second.startswith(b"HTTP/1.1 200") or answer.closed and status >= 400)
    return Result(ok, f"{status} then {second[:30]!r} closed={answer.closed}")


@case("smuggling", "GET with a body: the body is read (or 400 and close), never parsed as the next request")
def get_with_body(s: Stack) -> Result:
    inner = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    data = (b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + s.auth + b"Content-Length: %d\r\n\r\n" % len(inner) + inner
            + b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    answer = exchange(s.gateway.port, data, until_close=True, wait_s=4)
    answers = answer.raw.count(b"HTTP/1.1 ")
    last = answer.raw.rpartition(b"HTTP/1.1 ")[2]
    # two answers (the GET's, whatever its status, then /healthz's), never one for /smuggled
    ok = (answers == 2 and last.startswith(b"200") and b"/smuggled" not in answer.raw) or (
        answer.status == 400 and answers == 1)
    statuses = [line[9:12] for line in answer.raw.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    return Result(ok, f"{answer.status} answers={answers} statuses={statuses}")


# JSON tricks -----------------------------------------------------------------------------------
def _one_call(s: Stack, body: bytes, extra: bytes = b"") -> tuple[Answer, list[Any]]:
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, _req(s, body, extra))
    return answer, _calls_since(s, before)


@case("json", "a nested \"model\" before the top-level one is not the model: routed by the top-level one")
def nested_model_first(s: Stack) -> Result:
    body = b'{"metadata":{"model":"openai/gpt-4.1"},"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    answer, calls = _one_call(s, body)
    rows = s.rows_for(answer, settle_s=0)
    models = [c.json().get("model") for c in calls]
    ok = answer.status == 200 and models == ["gpt-4o-mini"] and (not rows or rows[0]["model"].endswith("gpt-4o-mini"))
    return Result(ok, f"{answer.status} upstream model={models} row={[r['model'] for r in rows]}")


@case("json", "\"a\\u0000b\" as the model: the unknown-model 400 (config, managed), or forwarded untouched "
      "(firewall) and its row written (NUL as U+FFFD)")
def model_with_nul(s: Stack) -> Result:
    body = b'{"model":"gpt-4o\\u0000mini","messages":[{"role":"user","content":"hi"}]}'
    if s.mode != "firewall":
        return _not_forwarded(s, _req(s, body), (400, 404))
    answer, calls = _one_call(s, body)
    rows = s.rows_for(answer, settle_s=0)
    ok = answer.status == 200 and len(calls) == 1 and [r["model"] for r in rows] == ["gpt-4o\ufffdmini"]
    return Result(ok, f"{answer.status} fwd={len(calls)} rows={[r['model'] for r in rows]}")


@case("json", "\"stream\":true inside messages is not the request's stream: a JSON answer, billed")
def stream_inside_messages(s: Stack) -> Result:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","stream":true}]}'
    answer, calls = _one_call(s, body)
    rows = s.rows_for(answer, settle_s=0)
    ok = (answer.status == 200 and b"chat.completion" in answer.body and b"data:" not in answer.body
          and len(rows) == 1 and rows[0]["input_tokens"])
    return Result(bool(ok), f"{answer.status} {answer.header(b'content-type')!r} rows={len(rows)}")


@case("json", "an escaped key (\"mo\\u0064el\", \"str\\u0065am\") reads as the member it decodes to")
def escaped_member_names(s: Stack) -> Result:
    body = b'{"mo\\u0064el":"gpt-4o-mini","str\\u0065am":true,"messages":[{"role":"user","content":"hi"}]}'
    answer, calls = _one_call(s, body)
    rows = s.rows_for(answer, settle_s=0)
    streamed = b"data:" in answer.raw
    include = [c.json().get("stream_options") for c in calls]
    ok = answer.status == 200 and streamed and len(rows) == 1 and rows[0]["input_tokens"] and include[0] is not None
    return Result(bool(ok), f"{answer.status} streamed={streamed} stream_options upstream={include} "
                            f"rows={[(r['status'], r['input_tokens']) for r in rows]}")


@case("json", "an escaped key duplicating a plain one (\"model\" + \"mo\\u0064el\"): 400, nothing forwarded")
def escaped_duplicate_model(s: Stack) -> Result:
    body = b'{"model":"gpt-4o-mini","mo\\u0064el":"openai/gpt-4.1","messages":[{"role":"user","content":"hi"}]}'
    return _not_forwarded(s, _req(s, body), (400,))


@case("json", "a top-level array: 400, nothing forwarded")
def top_level_array(s: Stack) -> Result:
    return _not_forwarded(s, _req(s, b'[' + CHAT + b']'), (400,))


@case("json", "a top-level string / number / null: 400, nothing forwarded")
def top_level_scalar(s: Stack) -> Result:
    bad = []
    # ({} is not among them: it names no model; firewall mode forwards it, the provider answers)
    for body in (b'"gpt-4o-mini"', b"42", b"null", b"", b"true"):
        r = _not_forwarded(s, _req(s, body), (400,))
        if not r.ok:
            bad.append(f"{body!r}: {r.observed}")
    return Result(not bad, "; ".join(bad)[:300] or "all 400")


def _spent(s: Stack) -> int:
    with sqlite3.connect(s.sqlite_path) as db:
        return sum(r[0] for r in db.execute("select spent_nano_usd from spending_counters where scope_kind='project'"))


@case("json", "max_tokens 1e9 / -1 / 1.5 / true / \"10\" under a hard limit: 400 or 402, nothing forwarded "
      "(1e2, 10.0, -0, null: served at that bound, or the ceiling)",
      modes=("managed",))
def max_tokens_odd_numbers(s: Stack) -> Result:
    bad = []
    for value in (b"1e9", b"1000000000", b"-1", b"1.5", b"true", b'"10"', b"1e2", b"10.0", b"-0", b"null"):
        body = b'{"model":"gpt-4o-mini","max_tokens":' + value + b',"messages":[{"role":"user","content":"hi"}]}'
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, _req(s, body))
        calls = _calls_since(s, before)
        if answer.status == 200:
            # served: only for a value that is a sane bound the reservation covered (1e2 is 100)
            sent = calls[0].json().get("max_tokens") if calls else None
            if value not in (b"1e2", b"10.0", b"null", b"-0") or len(calls) != 1:
                bad.append(f"{value.decode()}->200 sent={sent!r}")
        elif answer.status not in (400, 402) or calls:
            bad.append(f"{value.decode()}->{answer.status} fwd={len(calls)}")
    return Result(not bad, "; ".join(bad)[:300] or "each refused (or a sane bound served)")


# resources -------------------------------------------------------------------------------------
@case("resource", "10k tiny pipelined requests then close: the gateway stays up, RSS grows < 16 MB, serves the next client")
def pipelined_10k_then_close(s: Stack) -> Result:
    pids = _gateway_pids(s)
    start_kb = sum(_rss_kb(p) for p in pids)
    one = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
    chat = _req(s)
    sock = socket.create_connection(("127.0.0.1", s.gateway.port), timeout=10)
    try:
        sock.sendall((one * 9 + chat) * 1_000)
    except OSError:
        pass
    sock.close()
    time.sleep(1.0)
    grown_mb = (sum(_rss_kb(p) for p in pids) - start_kb) / 1024
    answer = exchange(s.gateway.port, _req(s))
    return Result(answer.status == 200 and grown_mb < 16, f"RSS +{grown_mb:.1f} MB, next client: {answer.status}")


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _gateway_pids(s: Stack) -> list[int]:
    """The gateway process and its workers (children)."""
    pid = s.gateway.proc.pid
    pids = [pid]
    try:
        pids += [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
    return pids


@case("resource", "a client that never reads a fast 16 MB stream: RSS grows < 32 MB, the row written when it drops",
      modes=("config",))
def never_reading_stream_client(s: Stack) -> Result:
    pids = _gateway_pids(s)
    start_kb = sum(_rss_kb(p) for p in pids)
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    # ~16 MB of SSE as fast as the fake provider can write it
    extra = b"x-fake-stream-bytes: 16777216\r\n"
    sock = socket.create_connection(("127.0.0.1", s.gateway.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(_req(s, body, extra))
    peak_kb = start_kb
    for _ in range(30):
        time.sleep(0.1)
        peak_kb = max(peak_kb, sum(_rss_kb(p) for p in pids))
    head = sock.recv(4096)
    rid = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-plano-request-id:"):
            rid = line.split(b":", 1)[1].strip()
    sock.close()
    deadline = time.monotonic() + 8
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        rows = [r for r in s.usage_rows() if r["request_id"] == rid.decode()]
        time.sleep(0.2)
    grown_mb = (peak_kb - start_kb) / 1024
    ok = grown_mb < 32 and len(rows) == 1
    return Result(ok, f"RSS +{grown_mb:.1f} MB rows={[(r['status'], r['output_tokens']) for r in rows]}")


_ = (json, os, STREAM_CHAT, _chunked)  # re-exported helpers some cases may use
