"""The attack battery's round j (2026-12-06 "j", outside-in as a strict HTTP peer): request
lines, framing and credential spellings a lenient parser would take; what an upstream sends
that a relay must not pass on (transfer codings, framing lists); which usage object a
response's bill is read from (duplicates, escaped names, comments, text that looks like
usage); streams the client cuts in every format; concurrent cut streams at a managed hard
limit's edge.  Registered here, run by benchmarks/attack_battery.py (which adds ``CASES`` to
its own):

    .venv/bin/python -m benchmarks.attack_battery -k round_j

Findings (each a test in tests/test_edges_j.py or tests/test_header_relay.py): HTTP/2.0 and
HTTP/0.9 request lines were served as HTTP/1.x (now 505); an upstream's ``Transfer-Encoding:
gzip, chunked`` was relayed as gzip bytes under no coding (now 502); and, found by a
hand-written upstream the stacks here do not have (tests/test_edges_j.py), a connection
whose provider answered before the request body was written was reused, the next request
queued behind the unread body (now closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.attack_battery import (
    CHAT, CHAT_PATH, OK_CHAT, STREAM_CHAT, Case, Result, Stack, _row_text, _scripted, _scripted_pair, exchange, json_answer,
    post, registrar,
)  # fmt: skip
from benchmarks.attack_battery_c import _calls_since, _gemini_auth

CASES: list[Case] = []
case = registrar(CASES)


def _key(s: Stack) -> bytes:
    return s.auth.split(b"Bearer ", 1)[1].split(b"\r\n", 1)[0]


def _raw(s: Stack, lines: bytes, body: bytes = CHAT, version: bytes = b"HTTP/1.1", target: bytes = CHAT_PATH) -> bytes:
    return (b"POST " + target + b" " + version + b"\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + lines + b"\r\n" + body)


def _chunked(body: bytes, size: bytes | None = None, after: bytes = b"\r\n") -> bytes:
    return (size if size is not None else b"%x" % len(body)) + b"\r\n" + body + after + b"0\r\n\r\n"


# request framing and versions: (name, request bytes, the statuses RFC 9112 / 9110 allow) -------------
def _framing_cases(s: Stack) -> list[tuple[str, bytes, tuple[int, ...]]]:
    cl = b"Content-Length: %d\r\n" % len(CHAT)
    te = b"Transfer-Encoding: chunked\r\n"
    a = s.auth
    return [
        ("HTTP/2.0 request line (RFC 9110 15.6.6)", _raw(s, a + cl, version=b"HTTP/2.0"), (505,)),
        ("HTTP/0.9 request line", _raw(s, a + cl, version=b"HTTP/0.9"), (505,)),
        ("HTTP/2 (no minor)", _raw(s, a + cl, version=b"HTTP/2"), (400, 505)),
        ("HTTP/1.2", _raw(s, a + cl, version=b"HTTP/1.2"), (400, 505)),
        ("http/1.1 lower-case", _raw(s, a + cl, version=b"http/1.1"), (400,)),
        ("space before a colon (RFC 9112 5.1)", _raw(s, a + b"X-A : 1\r\n" + cl), (400,)),
        ("Authorization in an obs-fold", _raw(s, b"X-A: a\r\n Authorization: Bearer sk-other\r\n" + a + cl), (400,)),
        ("Content-Length: n,n", _raw(s, a + b"Content-Length: %d,%d\r\n" % (len(CHAT), len(CHAT))), (400,)),
        ("Content-Length: -1", _raw(s, a + b"Content-Length: -1\r\n"), (400,)),
        ("TE chunked twice (two lines)", _raw(s, a + te + te, _chunked(CHAT)), (400,)),
        ("TE chunked, chunked", _raw(s, a + b"Transfer-Encoding: chunked, chunked\r\n", _chunked(CHAT)), (400,)),
        ("TE gzip, chunked (501 or 400)", _raw(s, a + b"Transfer-Encoding: gzip, chunked\r\n", _chunked(CHAT)), (400, 501)),
        ("TE on HTTP/1.0 (RFC 9112 6.1)", _raw(s, a + te, _chunked(CHAT), version=b"HTTP/1.0"), (400,)),
        ("chunk size 0x..", _raw(s, a + te, _chunked(CHAT, b"0x%x" % len(CHAT))), (400,)),
        ("chunk size then a space", _raw(s, a + te, _chunked(CHAT, b"%x " % len(CHAT))), (400,)),
        ("chunk data then LF only", _raw(s, a + te, _chunked(CHAT, after=b"\n")), (400,)),
        ("chunk ext quoted CRLF", _raw(s, a + te, _chunked(CHAT, b'%x;a="x\r\ny"' % len(CHAT))), (400,)),
        ("bare CR in a value", _raw(s, a + b"X-A: a\rb\r\n" + cl), (400,)),
        ("chunk size, 22 leading zeros (1*HEXDIG)", _raw(s, a + te, _chunked(CHAT, b"0" * 22 + b"%x" % len(CHAT))), (200,)),
    ]


@case("framing", "round j: request lines and framing a lenient parser would take: HTTP/2.0 and HTTP/0.9 a 505, "
      "the rest 400 (or 501 for an unknown coding); nothing forwarded; leading zeros in a chunk size served")
def round_j_strict_framing(s: Stack) -> Result:
    bad = []
    for name, data, statuses in _framing_cases(s):
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, data, wait_s=5, close_wait_s=0.2)
        forwarded = len(_calls_since(s, before))
        if answer.status not in statuses or (answer.status != 200 and (forwarded or not answer.closed)):
            bad.append(f"{name}: {answer.status} fwd={forwarded} closed={answer.closed}")
    return Result(not bad, "; ".join(bad)[:300] or f"{len(_framing_cases(s))} cases as RFC 9112 says")


# identity: the billed key is the forwarded key --------------------------------------------------------
@case("identity", "round j: the key forwarded is exactly the key identified, in one header: Bearer in any case, "
      "x-api-key with tabs around it (OWS); the same key twice (Authorization + x-api-key) or a trailing comma: 401",
      modes=("firewall",))
def round_j_forwarded_key_is_the_billed_key(s: Stack) -> Result:
    key = _key(s)
    cl = b"Content-Length: %d\r\n" % len(CHAT)
    bad = []
    for name, lines, status in (
        ("bearer", b"Authorization: bearer " + key + b"\r\n", 200),
        ("BEARER", b"Authorization: BEARER " + key + b"\r\n", 200),
        ("x-api-key with tabs", b"x-api-key:\t" + key + b"\t\r\n", 200),
        ("same key twice", s.auth + b"x-api-key: " + key + b"\r\n", 401),
        ("a trailing comma", b"Authorization: Bearer " + key + b",\r\n", 401),
    ):
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, _raw(s, lines + cl), wait_s=5, close_wait_s=0)
        calls = _calls_since(s, before)
        creds = [(n, v) for c in calls for n, v in c.headers
                 if n in ("authorization", "x-api-key", "x-goog-api-key", "api-key")]
        sent = [v.removeprefix("Bearer ").encode() for _, v in creds]
        if answer.status != status or (status == 200 and sent != [key]) or (status != 200 and calls):
            bad.append(f"{name}: {answer.status} forwarded={creds}")
    return Result(not bad, "; ".join(bad)[:300] or "each as expected; one credential forwarded, the identified key")


# the upstream's framing --------------------------------------------------------------------------------
@case("upstream", "round j: an upstream's Transfer-Encoding other than one chunked (gzip, chunked; chunked on two "
      "lines) or a Content-Length list: 502, the connection not reused; HTTP/1.0 with chunked: relayed whole",
      modes=("config",))
def round_j_upstream_codings(s: Stack) -> Result:
    gz = gzip.compress(OK_CHAT)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    bad = []
    for name, answer, status in (
        ("gzip, chunked", head + b"transfer-encoding: gzip, chunked\r\n\r\n" + _chunked(gz), 502),
        ("chunked twice", head + b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(OK_CHAT), OK_CHAT), 502),
        ("Content-Length: n, n", head + b"content-length: %d, %d\r\n\r\n" % (len(OK_CHAT), len(OK_CHAT)) + OK_CHAT, 502),
        ("HTTP/1.0 + chunked", b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(OK_CHAT), OK_CHAT), 200),
    ):
        first, second = _scripted_pair(s, answer)
        if first.status != status or second.status != 200 or (status == 200 and b"fine" not in first.body):
            bad.append(f"{name}: {first.status} then {second.status}")
    return Result(not bad, "; ".join(bad)[:300] or "each as expected, the next request served")


# which usage object is billed -------------------------------------------------------------------------
def _chat_answer(usage_part: bytes, content: bytes = b'"ok"') -> bytes:
    return json_answer(b'{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
                       b'"message":{"role":"assistant","content":' + content + b'},"finish_reason":"stop"}],'
                       + usage_part + b"}")


def _usage(prompt: int, completion: int) -> bytes:
    return b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (prompt, completion,
                                                                                      prompt + completion)


def _sse(*events: bytes) -> bytes:
    body = b"".join(events)
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body) + body


_CHUNK = (b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
          b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}')


def _usage_chunk(prompt: int, completion: int) -> bytes:
    return (b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
            + _usage(prompt, completion) + b"}")


@case("usage", "round j: the usage billed is the one a JSON reader of the answer sees: a repeated usage (or count) "
      "is the last (RFC 8259 leaves it open; Python's json, JavaScript and the SDKs take the last), an escaped "
      "member name is decoded, usage text inside content or an SSE comment is not read, two usage chunks: the last; "
      "SSE lines ended by CR alone are SSE (WHATWG)", modes=("config",))
def round_j_usage_read_as_a_json_reader_reads_it(s: Stack) -> Result:
    stream = b'{"model":"scripted/gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},' \
             b'"messages":[{"role":"user","content":"hi"}]}'
    cases: list[tuple[str, bytes, bytes | None, tuple[int, int]]] = [
        ("usage twice, small first", _chat_answer(_usage(1, 1) + b"," + _usage(1000, 1000)), None, (1000, 1000)),
        ("usage twice, big first", _chat_answer(_usage(1000, 1000) + b"," + _usage(1, 1)), None, (1, 1)),
        ("prompt_tokens twice", _chat_answer(b'"usage":{"prompt_tokens":1000,"prompt_tokens":1,"completion_tokens":1}'),
         None, (1, 1)),
        ("escaped member name", _chat_answer(b'"us\\u0061ge":{"prompt_tokens":7,"completion_tokens":7}'), None, (7, 7)),
        ("usage text in content", _chat_answer(_usage(5, 5), json.dumps('x", "usage":{"prompt_tokens":0}').encode()),
         None, (5, 5)),
        ("usage in an SSE comment", _sse(b"data: " + _CHUNK + b"\n\n", b": data: " + _usage_chunk(900, 900) + b"\n\n",
                                         b"data: " + _usage_chunk(3, 3) + b"\n\n", b"data: [DONE]\n\n"), stream, (3, 3)),
        ("two usage chunks", _sse(b"data: " + _CHUNK + b"\n\n", b"data: " + _usage_chunk(900, 900) + b"\n\n",
                                  b"data: " + _usage_chunk(3, 3) + b"\n\n", b"data: [DONE]\n\n"), stream, (3, 3)),
        ("lines ended by CR", _sse(b"data: " + _CHUNK + b"\r\r", b"data: " + _usage_chunk(9, 9) + b"\r\r",
                                   b"data: [DONE]\r\r"), stream, (9, 9)),
    ]
    bad = []
    for i, (name, answer, body, want) in enumerate(cases):
        got, row = _scripted(s, f"j-usage-{i}", answer, body)
        seen = (row or {}).get("input_tokens"), (row or {}).get("output_tokens")
        if got.status != 200 or seen != want:
            bad.append(f"{name}: {got.status} {_row_text(row)}")
    return Result(not bad, "; ".join(bad)[:300] or f"{len(cases)} answers, each billed as a JSON reader reads it")


@contextlib.contextmanager
def hard_limit_gateway(s: Stack, requests: int, prefix: str) -> Iterator[tuple[Any, bytes, str, int]]:
    """A managed gateway of its own (SQLite, the stack's fake provider) whose one tenant's hard
    limit fits ``requests`` streams of ``tests.test_managed.STREAM_BODY``: (the gateway, the
    tenant's token, the SQLite path, one request's cost)."""
    from tests.gateway_proc import GatewayProcess, write_config
    from tests.test_managed import DEFAULT_PIPE, ENV, STREAM_BODY, provision, request_cost

    cost = request_cost(STREAM_BODY)
    config = write_config(Path(tempfile.mkdtemp(prefix=prefix)) / "limit.yaml", s.fake.port,
                          {"managed": "true", "managed_reload_s": 1})
    db_path = str(config.with_suffix(".db"))
    tenants: list[Any] = []
    with GatewayProcess(config, env=ENV, before_start=lambda: tenants.append(
            provision(None, db_path, DEFAULT_PIPE, limit_nano_usd=requests * cost))) as gateway:
        yield gateway, tenants[0].token.encode(), db_path, cost


# streams the client cuts -------------------------------------------------------------------------------
def _cut(s: Stack, data: bytes, read_bytes: int) -> tuple[int, str]:
    """Send ``data``, read at least ``read_bytes`` of the answer, close; (status, request id)."""
    sock = socket.create_connection(("127.0.0.1", s.gateway.port), timeout=5)
    sock.sendall(data)
    raw = b""
    while len(raw) < read_bytes or b"\r\n\r\n" not in raw:
        more = sock.recv(65536)
        if not more:
            break
        raw += more
    sock.close()
    head = raw.split(b"\r\n\r\n", 1)[0]
    rid = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-plano-request-id:")), b"")
    return (int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0), rid.decode()


def _rows_of(s: Stack, rid: str, timeout_s: float = 6.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in s.usage_rows() if r["request_id"] == rid]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@case("budget", "round j: a stream the client cuts (after its head, or 600 bytes in) in each format (chat with and "
      "without include_usage, Messages, Responses, Gemini SSE and JSON-array): one row, priced at the provider's "
      "usage (read to the end), never zero")
def round_j_cut_streams_billed(s: Stack) -> Result:
    slow = b"x-fake-events: 40\r\nx-fake-interval-ms: 20\r\n"
    key = _key(s)
    messages_auth = b"x-api-key: " + key + b"\r\n" if s.mode == "firewall" else s.auth
    claude = b"anthropic/claude-sonnet-4-6" if s.mode == "config" else b"claude-sonnet-4-6"
    cases = {
        "chat": post(CHAT_PATH, STREAM_CHAT, s.auth, slow),
        "chat include_usage false": post(CHAT_PATH, b'{"model":"gpt-4o-mini","stream":true,"stream_options":'
                                         b'{"include_usage":false},"messages":[{"role":"user","content":"hi"}]}',
                                         s.auth, slow),
        "messages": post(b"/v1/messages", b'{"model":"' + claude + b'","max_tokens":100,"stream":true,'
                         b'"messages":[{"role":"user","content":"hi"}]}', messages_auth,
                         slow + b"anthropic-version: 2023-06-01\r\n"),
        "responses": post(b"/v1/responses", b'{"model":"gpt-4o-mini","stream":true,"input":"hi"}', s.auth, slow),
    }
    if s.mode != "managed":  # (Gemini paths are not managed endpoints)
        segment = b"gemini-2.0-flash" if s.mode == "firewall" else b"gemini%2Fgemini-2.0-flash"
        gemini = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
        cases["gemini sse"] = post(b"/v1beta/models/" + segment + b":streamGenerateContent?alt=sse", gemini,
                                   _gemini_auth(s), slow)
        cases["gemini array"] = post(b"/v1beta/models/" + segment + b":streamGenerateContent", gemini,
                                     _gemini_auth(s), slow)
    bad = []
    for name, data in cases.items():
        for read_bytes in (1, 600):
            status, rid = _cut(s, data, read_bytes)
            rows = _rows_of(s, rid)
            if status != 200 or len(rows) != 1 or rows[0]["output_tokens"] != 40 or not rows[0]["input_tokens"]:
                bad.append(f"{name}/{read_bytes}: {status} {[_row_text(r) for r in rows]}")
    return Result(not bad, "; ".join(bad)[:300] or f"{2 * len(cases)} cut streams, each one row at the provider's usage")


@case("budget", "round j: 120 concurrent streams (half cut by the client after the head) against a hard limit that "
      "fits 20, over 120 connections: 20 served, the rest 402; the spend exactly the limit (each row at the "
      "provider's usage, cut ones included), nothing left reserved", modes=("managed",))
def round_j_cut_streams_at_the_limit_edge(s: Stack) -> Result:
    from tests.test_managed import STREAM_BODY

    async def one(port: int, token: bytes, cut: bool) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(CHAT_PATH, STREAM_BODY, b"Authorization: Bearer " + token + b"\r\n",
                          b"x-fake-input-tokens: %d\r\nx-fake-output-tokens: 50\r\nx-fake-events: 20\r\n"
                          b"x-fake-interval-ms: 10\r\n" % len(STREAM_BODY)))
        first = await reader.read(200)
        status = int(first.split(b" ")[1]) if first.startswith(b"HTTP/1.1 ") else 0
        if not (cut and status == 200):
            while (more := await reader.read(65536)) and b"0\r\n\r\n" not in more:
                pass
        writer.transport.abort()
        return status

    async def fire(port: int, token: bytes) -> list[int]:
        return list(await asyncio.gather(*(one(port, token, i % 2 == 0) for i in range(120))))

    with hard_limit_gateway(s, 20, "round-j-edge-") as (gateway, token, db_path, cost):
        limit = 20 * cost
        statuses = asyncio.run(fire(gateway.port, token))
        time.sleep(2.0)
        with sqlite3.connect(db_path) as db:
            costs = [r[0] for r in db.execute("select cost_nano_usd from usage_log")]
            reserved = db.execute("select coalesce(sum(reserved_nano_usd), 0) from spending_counters").fetchone()[0]
            held = db.execute("select count(*) from spending_reservations").fetchone()[0]
    served = statuses.count(200)
    spent = sum(c or 0 for c in costs)
    ok = set(statuses) <= {200, 402} and served == len(costs) and spent <= limit and limit - spent < cost \
        and not reserved and not held
    return Result(ok, f"served {served}, rows {len(costs)}, spent {spent} of {limit} (one request {cost}), "
                      f"reserved {reserved}, reservations {held}")
