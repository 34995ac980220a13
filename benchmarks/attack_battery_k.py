"""The attack battery's round k (2026-12-06 "k"): this wave's new code from outside, and three
questions the last round left open.  Registered here, run by benchmarks/attack_battery.py
(which adds ``CASES`` to its own):

    .venv/bin/python -m benchmarks.attack_battery -k round_k

* Held request heads (``ServerProtocol._hold``, compiled ``_serve.pyx``): a plain head whose
  Content-Length body is not all in one read is held and its body completed from the next
  reads.  Every framing trick is sent twice -- in one write and as head, pause, body -- and
  must be answered the same; a body trickled, a head then a close, a Content-Length that
  lies, requests pipelined behind a held one.
* Identity (firewall): which key is billed and which is forwarded, for spellings of the
  credential headers the last rounds did not try.
* What an upstream sends: a status line of another HTTP version, an event stream (or a JSON
  body) that starts with a UTF-8 BOM, an answer in a content coding the gateway did not ask for.
* Budget bypass attempts under the managed hard limit: a compressed answer, ``n`` > 1 with
  the usage turned off and the stream cut.

Findings (each a test in tests/test_edges_k.py): see benchmarks/results/attack-battery-20261206k.md.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import sqlite3
import time
import zlib
from typing import Any

from benchmarks.attack_battery import (
    CHAT, CHAT_PATH, OK_CHAT, STREAM_CHAT, Answer, Case, Result, Stack, _row_text, _scripted_pair, exchange,
    json_answer, post, registrar,
)  # fmt: skip
from benchmarks.attack_battery_c import _calls_since, _gemini_auth
from benchmarks.attack_battery_j import _key, _raw

CASES: list[Case] = []
case = registrar(CASES)

BOM = b"\xef\xbb\xbf"


def _rows(s: Stack, answer: Answer, settle_s: float = 0.5) -> list[dict[str, Any]]:
    return s.rows_for(answer, settle_s=settle_s)


# held heads: the one-write path and the held path answer alike ------------------------------------
def _head_body(s: Stack, lines: bytes, body: bytes) -> tuple[bytes, bytes]:
    head = b"POST " + CHAT_PATH + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + s.auth + lines
    return head + b"\r\n", body


def _held_cases(s: Stack) -> list[tuple[str, bytes, bytes]]:
    cl = b"Content-Length: %d\r\n" % len(CHAT)
    te = b"Transfer-Encoding: chunked\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
    return [
        ("plain", *_head_body(s, cl, CHAT)),
        ("CL+TE", *_head_body(s, cl + te, chunked)),
        ("two CL, same", *_head_body(s, cl + cl, CHAT)),
        ("two CL, differ", *_head_body(s, cl + b"Content-Length: 3\r\n", CHAT)),
        ("obs-fold", *_head_body(s, b"X-A: a\r\n b\r\n" + cl, CHAT)),
        ("bare LF line", *_head_body(s, b"X-A: a\n" + cl, CHAT)),
        ("NUL in a value", *_head_body(s, b"X-A: a\x00b\r\n" + cl, CHAT)),
        ("CL shorter than the body", *_head_body(s, b"Content-Length: %d\r\n" % (len(CHAT) - 2), CHAT)),
        ("CL with a plus", *_head_body(s, b"Content-Length: +%d\r\n" % len(CHAT), CHAT)),
        ("CL with leading zeros", *_head_body(s, b"Content-Length: 000%d\r\n" % len(CHAT), CHAT)),
        ("Host twice", *_head_body(s, b"Host: other\r\n" + cl, CHAT)),
        ("body not JSON", *_head_body(s, b"Content-Length: 5\r\n", b"hello")),
    ]


#: after each case's bytes: a request the gateway answers (and closes after) only if it still
#: reads the connection -- so the connection's whole story is read, quickly, to its close
_LAST = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def _statuses(raw: bytes) -> list[int]:
    return [int(code) for code in _STATUS_LINE.findall(raw)]


def _outcome(s: Stack, pieces: list[tuple[float, bytes]]) -> tuple[list[int], int]:
    """(every status the connection answered, in order, until it closed; requests forwarded)."""
    before = len(s.provider_calls())
    pieces = [*pieces[:-1], (pieces[-1][0], pieces[-1][1] + _LAST)]
    answer = exchange(s.gateway.port, pieces, wait_s=6, until_close=True)
    return _statuses(answer.raw), len(_calls_since(s, before))


@case("held", "round k: every framing case (CL+TE, two CLs, obs-fold, bare LF, NUL, a CL shorter than the body, "
      "+CL, a second Host, a body not JSON) sent in one write, as head then body, and as head + half then the rest: "
      "the same status, close and forwarding each time")
def round_k_held_head_answers_as_one_write(s: Stack) -> Result:
    bad = []
    for name, head, body in _held_cases(s):
        half = len(body) // 2
        one = _outcome(s, [(0, head + body)])
        held = _outcome(s, [(0, head), (0.2, body)])
        split = _outcome(s, [(0, head + body[:half]), (0.2, body[half:])])
        if not one == held == split:
            bad.append(f"{name}: one={one} held={held} split={split}")
    return Result(not bad, "; ".join(bad)[:300] or f"{len(_held_cases(s))} cases, three ways each, alike")


@case("held", "round k: a held request's body trickled one byte every 50 ms, then a request pipelined behind it "
      "in the body's last write and a third after it: three answers in order, each forwarded once")
def round_k_held_trickle_then_pipelined(s: Stack) -> Result:
    head, body = _head_body(s, b"Content-Length: %d\r\nx-fake-latency-ms: 200\r\n" % len(CHAT), CHAT)
    second = post(CHAT_PATH, CHAT, s.auth, b"x-fake-latency-ms: 100\r\n")
    third = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    pieces = [(0.0, head)] + [(0.05, body[i:i + 1]) for i in range(len(body) - 1)]
    pieces.append((0.05, body[-1:] + second + third))
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, pieces, wait_s=15, until_close=True)
    statuses = _statuses(answer.raw)
    forwarded = len(_calls_since(s, before))
    return Result(statuses == [200, 200, 200] and forwarded == 2 and answer.closed,
                  f"statuses={statuses} forwarded={forwarded} closed={answer.closed}")


@case("held", "round k: a held head then a close (half the body, or none): nothing forwarded, no usage row, the "
      "gateway serves the next connection")
def round_k_held_then_close(s: Stack) -> Result:
    bad = []
    for sent in (0, len(CHAT) // 2):
        head, body = _head_body(s, b"Content-Length: %d\r\n" % len(CHAT), CHAT)
        time.sleep(1.0)  # (the earlier cases' rows flushed first)
        last_id = max((r["id"] for r in s.usage_rows()), default=0)
        before = len(s.provider_calls())
        sock = socket.create_connection(("127.0.0.1", s.gateway.port), timeout=5)
        sock.sendall(head + body[:sent])
        time.sleep(0.2)
        sock.close()
        time.sleep(0.5)
        after = exchange(s.gateway.port, post(CHAT_PATH, CHAT, s.auth), wait_s=5)
        forwarded = len(_calls_since(s, before))
        time.sleep(1.0)
        rows = [r["request_id"] for r in s.usage_rows() if r["id"] > last_id]
        if forwarded != 1 or after.status != 200 or rows != [(after.header(b"x-plano-request-id") or b"").decode()]:
            bad.append(f"sent {sent}: forwarded={forwarded} next={after.status} rows={rows}")
    return Result(not bad, "; ".join(bad) or "nothing forwarded or billed for the held ones; the next served")


@case("held", "round k: a Content-Length larger than the body, the client then sending its next request: that "
      "request's bytes are the first one's body (one 400 for the mixed body, nothing forwarded), in one write and held")
def round_k_held_content_length_lie(s: Stack) -> Result:
    head, body = _head_body(s, b"Content-Length: %d\r\n" % (len(CHAT) + 40), CHAT)
    nxt = post(CHAT_PATH, CHAT, s.auth)
    one = _outcome(s, [(0, head + body + nxt)])
    held = _outcome(s, [(0, head), (0.2, body), (0.2, nxt)])
    ok = one == held and one[0][:1] == [400] and one[1] == 0
    return Result(ok, f"one={one} held={held}")


# identity ---------------------------------------------------------------------------------------
@case("identity", "round k: the billed key (the row's key_hash) is the forwarded key, in one header: two Authorization "
      "lines (other keys), Authorization + x_api_key, Proxy-Authorization alone, a non-ASCII or NBSP-ended key, Basic: "
      "401 and nothing forwarded; 'Bearer  key' (two spaces) and a trailing tab: served, the key forwarded once",
      modes=("firewall",))
def round_k_billed_key_is_forwarded_key(s: Stack) -> Result:
    key = _key(s)
    want_hash = hashlib.sha256(key).hexdigest()
    bad = []
    for name, lines, status in (
        ("two Authorization, other key second", s.auth + b"Authorization: Bearer sk-other-key\r\n", 401),
        ("two Authorization, same key", s.auth + s.auth, 401),
        ("Authorization + x_api_key", s.auth + b"x_api_key: " + key + b"\r\n", 401),
        ("Proxy-Authorization alone", b"Proxy-Authorization: Bearer " + key + b"\r\n", 401),
        ("key with a trailing NBSP", b"Authorization: Bearer " + key + b"\xc2\xa0\r\n", 401),
        ("key with a non-ASCII letter", b"Authorization: Bearer " + key[:-1] + b"\xd0\xb0\r\n", 401),
        ("Basic", b"Authorization: Basic " + key + b"\r\n", 401),
        ("Bearer, two spaces", b"Authorization: Bearer  " + key + b"\r\n", 200),
        ("a trailing tab", b"Authorization: Bearer " + key + b"\t\r\n", 200),
    ):
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, _raw(s, lines + b"Content-Length: %d\r\n" % len(CHAT)), wait_s=5,
                          close_wait_s=0)
        calls = _calls_since(s, before)
        creds = [v for c in calls for n, v in c.headers if n in ("authorization", "x-api-key", "x-goog-api-key", "api-key")]
        rows = _rows(s, answer, settle_s=0) if status == 200 else []
        billed = rows[0]["key_hash"] if rows else None
        if answer.status != status or (status == 200 and (creds != ["Bearer " + key.decode()] or billed != want_hash)) \
                or (status != 200 and calls):
            bad.append(f"{name}: {answer.status} forwarded={creds} billed={billed and billed[:12]}")
    return Result(not bad, "; ".join(bad)[:300] or "each as expected; the billed key is the one forwarded")


# the upstream's status line ----------------------------------------------------------------------
@case("upstream", "round k: an upstream status line of another HTTP version (HTTP/2.0, HTTP/0.9, HTTP/1.2, HTTP/3): "
      "502, the connection not reused; HTTP/1.0 relayed", modes=("config",))
def round_k_upstream_http_version(s: Stack) -> Result:
    bad = []
    for version, status in ((b"HTTP/2.0", 502), (b"HTTP/0.9", 502), (b"HTTP/1.2", 502), (b"HTTP/3", 502),
                            (b"HTTP/1.0", 200)):
        answer = json_answer(OK_CHAT).replace(b"HTTP/1.1", version, 1)
        first, second = _scripted_pair(s, answer, first_close=version == b"HTTP/1.0")
        if first.status != status or second.status != 200:
            bad.append(f"{version.decode()}: {first.status} then {second.status}")
    return Result(not bad, "; ".join(bad)[:300] or "each as expected, the next request served")


# BOM and content codings from the provider (the fake provider's x-fake-bom / x-fake-content-encoding) ---
def _formats(s: Stack) -> dict[str, bytes]:
    key = _key(s)
    messages_auth = b"x-api-key: " + key + b"\r\n" if s.mode == "firewall" else s.auth
    claude = b"anthropic/claude-sonnet-4-6" if s.mode == "config" else b"claude-sonnet-4-6"
    version = b"anthropic-version: 2023-06-01\r\n"
    out = {
        "chat": post(CHAT_PATH, CHAT, s.auth),
        "chat stream": post(CHAT_PATH, STREAM_CHAT, s.auth),
        "messages": post(b"/v1/messages", b'{"model":"' + claude + b'","max_tokens":100,'
                         b'"messages":[{"role":"user","content":"hi"}]}', messages_auth, version),
        "messages stream": post(b"/v1/messages", b'{"model":"' + claude + b'","max_tokens":100,"stream":true,'
                                b'"messages":[{"role":"user","content":"hi"}]}', messages_auth, version),
        "responses stream": post(b"/v1/responses", b'{"model":"gpt-4o-mini","stream":true,"input":"hi"}', s.auth),
    }
    if s.mode != "managed":
        segment = b"gemini-2.0-flash" if s.mode == "firewall" else b"gemini%2Fgemini-2.0-flash"
        gemini = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
        out["gemini sse"] = post(b"/v1beta/models/" + segment + b":streamGenerateContent?alt=sse", gemini, _gemini_auth(s))
        out["gemini array"] = post(b"/v1beta/models/" + segment + b":streamGenerateContent", gemini, _gemini_auth(s))
    return out


def _with(data: bytes, lines: bytes) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    return head + b"\r\n" + lines.rstrip(b"\r\n") + sep + body


def _billed(s: Stack, data: bytes, lines: bytes) -> tuple[Answer, list[dict[str, Any]]]:
    answer = exchange(s.gateway.port, _with(data, lines + b"x-fake-input-tokens: 321\r\nx-fake-output-tokens: 7\r\n"),
                      wait_s=8)
    return answer, _rows(s, answer, settle_s=0.3)


@case("usage", "round k: an answer (JSON or stream, every format) that starts with a UTF-8 BOM: relayed as sent, "
      "billed at the provider's usage (WHATWG SSE skips one leading BOM; json.loads of bytes and the SDKs take it)")
def round_k_bom_answers_billed(s: Stack) -> Result:
    bad = []
    for name, data in _formats(s).items():
        answer, rows = _billed(s, data, b"x-fake-bom: 1\r\n")
        if answer.status != 200 or not answer.body.startswith(BOM) or len(rows) != 1 \
                or (rows[0]["input_tokens"], rows[0]["output_tokens"]) != (321, 7):
            bad.append(f"{name}: {answer.status} {[_row_text(r) for r in rows]}")
    return Result(not bad, "; ".join(bad)[:300] or f"{len(_formats(s))} formats, each billed at the provider's usage")


def _decoded(answer: Answer, coding: bytes) -> bytes:
    if coding == b"deflate":
        return zlib.decompress(answer.body)
    return gzip.decompress(answer.body)


@case("usage", "round k: an answer in Content-Encoding gzip or deflate although the gateway asked for identity "
      "(every format, streamed and not): relayed as sent (the client decodes it), billed at the provider's usage "
      "(read decoded); br / zstd (not decoded): usage_missing")
def round_k_coded_answers_billed(s: Stack) -> Result:
    bad = []
    for coding in (b"gzip", b"deflate"):
        for name, data in _formats(s).items():
            answer, rows = _billed(s, data, b"x-fake-content-encoding: " + coding + b"\r\n")
            try:
                plain = _decoded(answer, coding)
            except Exception:  # noqa: BLE001 - a body that does not decode is the finding
                plain = b""
            if answer.status != 200 or answer.header(b"content-encoding") != coding or b"321" not in plain \
                    or len(rows) != 1 or (rows[0]["input_tokens"], rows[0]["output_tokens"]) != (321, 7):
                bad.append(f"{coding.decode()} {name}: {answer.status} {[_row_text(r) for r in rows]}")
    for coding in (b"br", b"zstd"):
        answer, rows = _billed(s, _formats(s)["chat"], b"x-fake-content-encoding: " + coding + b"\r\n")
        if answer.status != 200 or len(rows) != 1 or rows[0]["status"] != "usage_missing":
            bad.append(f"{coding.decode()}: {answer.status} {[_row_text(r) for r in rows]}")
    return Result(not bad, "; ".join(bad)[:300] or "gzip and deflate billed in every format; br and zstd usage_missing")


@case("budget", "round k: a managed hard limit that fits 10 requests, 30 concurrent gzip-coded streams: 10 served, "
      "the rest 402; the spend exactly the ten's usage (read decoded, not the reservations' bound)", modes=("managed",))
def round_k_coded_streams_at_the_limit(s: Stack) -> Result:
    import asyncio

    from benchmarks.attack_battery_j import hard_limit_gateway
    from tests.test_managed import STREAM_BODY

    async def one(port: int, token: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(CHAT_PATH, STREAM_BODY, b"Authorization: Bearer " + token + b"\r\n",
                          b"x-fake-input-tokens: %d\r\nx-fake-output-tokens: 50\r\nx-fake-events: 10\r\n"
                          b"x-fake-content-encoding: gzip\r\n" % len(STREAM_BODY)))
        raw = b""
        while (more := await reader.read(65536)):
            raw += more
            if raw.endswith(b"0\r\n\r\n") or (raw.startswith(b"HTTP/1.1 402") and b"}" in raw):
                break
        writer.close()
        return int(raw.split(b" ")[1]) if raw.startswith(b"HTTP/1.1 ") else 0

    async def fire(port: int, token: bytes) -> list[int]:
        return list(await asyncio.gather(*(one(port, token) for _ in range(30))))

    with hard_limit_gateway(s, 10, "round-k-coded-") as (gateway, token, db_path, cost):
        limit = 10 * cost
        statuses = asyncio.run(fire(gateway.port, token))
        time.sleep(1.5)
        with sqlite3.connect(db_path) as db:
            rows = db.execute("select status, cost_nano_usd from usage_log").fetchall()
            reserved = db.execute("select coalesce(sum(reserved_nano_usd), 0) from spending_counters").fetchone()[0]
    served = statuses.count(200)
    spent = sum(c or 0 for _, c in rows)
    ok = set(statuses) <= {200, 402} and served == len(rows) == 10 and spent == limit and not reserved \
        and {st for st, _ in rows} == {"ok"}
    return Result(ok, f"served {served}, rows {len(rows)} {sorted({st for st, _ in rows})}, spent {spent} of {limit}, "
                      f"reserved {reserved}")


@case("budget", "round k: under the hard limit, streams with the usage turned off (include_usage false), cut by "
      "the client after its head: n=3; a function tool answered with a tool call; each one row at the provider's "
      "usage (never zero), the reservation given back", modes=("managed",))
def round_k_cut_no_usage_billed(s: Stack) -> Result:
    off = b'"stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"hi"}]'
    tools = b',"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]'
    cases = {
        "n=3": (b'{"model":"gpt-4o-mini","n":3,"max_tokens":40,' + off + b"}", b""),
        "tool call": (b'{"model":"gpt-4o-mini","max_tokens":40,' + off + tools + b"}", b"x-fake-tool-call: f\r\n"),
    }
    bad = []
    for name, (body, extra) in cases.items():
        sock = socket.create_connection(("127.0.0.1", s.gateway.port), timeout=5)
        sock.sendall(post(CHAT_PATH, body, s.auth, extra + b"x-fake-events: 30\r\nx-fake-interval-ms: 20\r\n"))
        head = sock.recv(4096)
        sock.close()
        rid = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"x-plano-request-id:")), "")
        deadline = time.monotonic() + 6
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not rows:
            rows = [r for r in s.usage_rows() if r["request_id"] == rid]
            time.sleep(0.1)
        time.sleep(0.3)
        with sqlite3.connect(s.sqlite_path) as db:
            held = db.execute("select count(*) from spending_reservations").fetchone()[0]
        if not head.startswith(b"HTTP/1.1 200") or len(rows) != 1 or not (rows[0]["cost_nano_usd"] or 0) or held:
            bad.append(f"{name}: {head[:12]!r} rows={[_row_text(r) for r in rows]} reservations={held}")
    return Result(not bad, "; ".join(bad)[:300] or "each one row at the provider's usage; nothing left reserved")


@case("held", "round k: a held body trickled past the body timeout (the listener's, 1 s here; a gateway of its own) answers "
      "408 and closes, as a chunked body (httptools' path) does; nothing forwarded", modes=("config",))
def round_k_held_slowloris_body(s: Stack) -> Result:
    import tempfile
    from pathlib import Path

    from tests.gateway_proc import GatewayProcess, write_config

    # (the body timeout is the listener's timeout: 1 s)
    config = write_config(Path(tempfile.mkdtemp(prefix="round-k-slow-")) / "slow.yaml", s.fake.port, {},
                          listener_timeout="1s")
    head, body = _head_body(s, b"Content-Length: %d\r\n" % len(CHAT), CHAT)
    chunked_head, _ = _head_body(s, b"Transfer-Encoding: chunked\r\n", b"")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
    before = len(s.provider_calls())
    with GatewayProcess(config) as gateway:
        got = {}
        for name, first, rest in (("held", head, body), ("chunked", chunked_head, chunked)):
            pieces = [(0.0, first)] + [(0.4, rest[i:i + 1]) for i in range(6)]
            answer = exchange(gateway.port, pieces, wait_s=5, until_close=True)
            got[name] = (_statuses(answer.raw), answer.closed)
    forwarded = len(_calls_since(s, before))
    ok = got["held"] == got["chunked"] == ([408], True) and not forwarded
    return Result(ok, f"{got} forwarded={forwarded}")


@case("held", "round k: an unknown key on a held head whose body passes 64 KiB: refused (401) before the body is "
      "all in, as httptools' path refuses it; nothing forwarded", modes=("firewall",))
def round_k_held_head_identified_early(s: Stack) -> Result:
    big = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"x" * 1_000_000 + b'"}]}'
    bad = b"Authorization: Bearer sk-unknown-key-round-k\r\n"
    head = (b"POST " + CHAT_PATH + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + bad
            + b"Content-Length: %d\r\n\r\n" % len(big))
    chunked_head = (b"POST " + CHAT_PATH + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + bad
                    + b"Transfer-Encoding: chunked\r\n\r\n")
    before = len(s.provider_calls())
    got = {}
    for name, data in (("held", [(0.0, head), (0.2, big[:100_000])]),
                       ("chunked", [(0.0, chunked_head), (0.2, b"%x\r\n" % len(big) + big[:100_000])])):
        answer = exchange(s.gateway.port, data, wait_s=5, until_close=True)
        got[name] = (_statuses(answer.raw), answer.closed)
    forwarded = len(_calls_since(s, before))
    ok = got["held"] == got["chunked"] == ([401], True) and not forwarded
    return Result(ok, f"{got} forwarded={forwarded}")
