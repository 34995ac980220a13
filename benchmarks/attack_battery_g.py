"""The attack battery's round g (2026-12-05 "g", trust at the edges): a Gemini path naming two
methods, what a hard limit's reservation cannot bound (fast mode, inference_geo, a predicted
output, a stored item reference), large bodies before identification, the underscore
spellings of dropped headers, a request the provider never answers under a hard limit; and
the cases checked and found safe (usage suppression in a stream, a Gemini JSON-array
stream, a gzip body, a request pipelined after an error).  Registered here, run by
benchmarks/attack_battery.py (which adds ``CASES`` to its own); the helpers are that
module's and round c's.  Tests: tests/test_edges_g.py.
"""

from __future__ import annotations

import gzip
import socket
import time

from benchmarks.attack_battery import ALL_MODES, CHAT, CHAT_PATH, Case, Result, Stack, _req, exchange, post, registrar
from benchmarks.attack_battery_c import _calls_since, _gemini, _not_forwarded

CASES: list[Case] = []
ALL = ALL_MODES
case = registrar(CASES)


def _model_segment(s: Stack) -> bytes:
    return b"gemini-2.0-flash" if s.mode == "firewall" else b"gemini%2Fgemini-2.0-flash"


# paths -----------------------------------------------------------------------------------------
@case("paths", "a Gemini path whose last segment names two methods (m:generateContent:streamGenerateContent, "
      "m:countTokens:generateContent): 404, nothing forwarded (config forwarded it, metered as the wrong kind)")
def gemini_two_methods(s: Stack) -> Result:
    bad = []
    for methods in (b":generateContent:streamGenerateContent", b":streamGenerateContent:generateContent",
                    b":countTokens:generateContent"):
        r = _not_forwarded(s, _gemini(s, _model_segment(s) + methods + b"?alt=sse"), (404,))
        if not r.ok:
            bad.append(f"{methods.decode()}: {r.observed}")
    return Result(not bad, "; ".join(bad)[:300] or "each 404, nothing forwarded")


# hard limits -----------------------------------------------------------------------------------
_TEXT = b'"messages":[{"role":"user","content":"hi"}]'
_PREMIUM = (
    (b"/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":5,"speed":"fast",' + _TEXT + b"}"),
    (b"/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":5,"service_tier":"fast",' + _TEXT + b"}"),
    (b"/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":5,"inference_geo":"us",' + _TEXT + b"}"),
    (b"/v1/chat/completions", b'{"model":"gpt-4o-mini","max_tokens":5,"prediction":{"type":"content",'
                              b'"content":"aaaa"},' + _TEXT + b"}"),
    (b"/v1/responses", b'{"model":"gpt-4o-mini","max_output_tokens":5,"input":[{"type":"item_reference","id":"m"}]}'),
    (b"/v1/responses", b'{"model":"gpt-4o-mini","max_output_tokens":5,"input":[{"id":"msg_1"}]}'),
)


@case("hard limits", "under a hard limit, what is billed above the body's bound (speed/service_tier fast, "
      "inference_geo, prediction, a Responses item_reference): 400 naming it, nothing forwarded", modes=("managed",))
def billed_above_the_bound(s: Stack) -> Result:
    bad = []
    for path, body in _PREMIUM:
        r = _not_forwarded(s, post(path, body, s.auth, b"anthropic-version: 2023-06-01\r\n"), (400,))
        if not r.ok:
            bad.append(f"{body[40:80]!r}: {r.observed}")
    return Result(not bad, "; ".join(bad)[:300] or "each 400, nothing forwarded")


@case("hard limits", "under a hard limit, a request the provider never answers (first-byte timeout, 504) is "
      "charged its reservation (it was settled at 0 while the provider billed it)", modes=("managed",))
def unanswered_is_charged(s: Stack) -> Result:
    before = len(s.usage_rows())
    answer = exchange(s.gateway.port, _req(s, extra=b"x-fake-latency-ms: 8000\r\n"), wait_s=12)
    deadline = time.monotonic() + 6  # (a 504 carries no x-plano-request-id: the rows since)
    while len(rows := s.usage_rows()[before:]) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    ok = (answer.status == 504 and len(rows) == 1 and (rows[0]["cost_nano_usd"] or 0) > 0
          and rows[0]["price_entry"] == "hard_limit_bound")
    return Result(ok, f"{answer.status} rows={[(r['status'], r['cost_nano_usd'], r['price_entry']) for r in rows]}")


# resources -------------------------------------------------------------------------------------
@case("resources", "a 16 MiB body with an unknown key (firewall) or no token (managed): 401 after ~64 KiB, "
      "the connection closed (the whole body used to be held first)", modes=("firewall", "managed"))
def large_body_identified_first(s: Stack) -> Result:
    size = 16 * 1024 * 1024
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-not-registered-000000000000\r\nContent-Length: %d\r\n\r\n" % size)
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", s.gateway.port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(0.2)
        piece = b"x" * 65536
        while sent < size:
            try:
                sent += sock.send(piece)
            except OSError:
                break
            try:
                answer += sock.recv(4096)
                if answer:
                    break
            except TimeoutError:
                pass
            except OSError:
                break
        sock.settimeout(3)
        try:
            answer += sock.recv(4096)
        except OSError:
            pass
    ok = answer.startswith(b"HTTP/1.1 401 ") and sent < size // 4
    return Result(ok, f"{answer[:12]!r} after {sent // 1024} KiB of {size // 1024}")


# headers ---------------------------------------------------------------------------------------
_UNDERSCORED = (b"accept_encoding", b"transfer_encoding", b"x_http_method_override", b"x_http_method",
                b"x_method_override", b"x_goog_fieldmask")


@case("headers", "the underscore spellings of dropped headers (accept_encoding, transfer_encoding, "
      "x_http_method_override, ...) are not forwarded")
def underscore_spellings_dropped(s: Stack) -> Result:
    before = len(s.provider_calls())
    extra = b"".join(name + b": gzip\r\n" for name in _UNDERSCORED)
    answer = exchange(s.gateway.port, _req(s, extra=extra))
    calls = _calls_since(s, before)
    sent = {n.lower() for c in calls for n, _ in c.headers} & {n.decode() for n in _UNDERSCORED}
    return Result(answer.status == 200 and len(calls) == 1 and not sent, f"{answer.status} forwarded={sorted(sent)}")


# checked and found safe ------------------------------------------------------------------------
@case("safe", "stream_options include_usage false / null / {}: include_usage true upstream, the row billed")
def stream_usage_suppressed(s: Stack) -> Result:
    bad = []
    for so in (b'{"include_usage":false}', b"null", b"{}"):
        body = b'{"model":"gpt-4o-mini","stream":true,"stream_options":' + so + b"," + _TEXT + b"}"
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, _req(s, body))
        calls = _calls_since(s, before)
        rows = s.rows_for(answer, settle_s=0)
        sent = calls[0].json().get("stream_options") if calls else None
        if not (answer.status == 200 and sent == {"include_usage": True} and rows and rows[0]["input_tokens"]):
            bad.append(f"{so.decode()}: {answer.status} sent={sent} rows={len(rows)}")
    return Result(not bad, "; ".join(bad)[:300] or "usage asked for and billed each time")


@case("safe", "a Gemini stream without alt=sse (a JSON array) is billed from its usageMetadata",
      modes=("config", "firewall"))
def gemini_array_stream_billed(s: Stack) -> Result:
    answer = exchange(s.gateway.port, _gemini(s, _model_segment(s) + b":streamGenerateContent"))
    rows = s.rows_for(answer, settle_s=0)
    ok = answer.status == 200 and answer.body.startswith(b"[") and len(rows) == 1 and rows[0]["status"] == "ok"
    return Result(ok, f"{answer.status} rows={[(r['status'], r['input_tokens']) for r in rows]}")


@case("safe", "a gzip-encoded chat body: the scanner's 400, nothing forwarded")
def gzip_chat_body(s: Stack) -> Result:
    return _not_forwarded(s, post(CHAT_PATH, gzip.compress(CHAT), s.auth, b"Content-Encoding: gzip\r\n"), (400,))


@case("safe", "a request pipelined after a 400 (invalid JSON) on a kept-alive connection: answered in order, once")
def pipelined_after_an_error(s: Stack) -> Result:
    before = len(s.provider_calls())
    data = post(CHAT_PATH, b'{"model":', s.auth) + post(CHAT_PATH, CHAT, s.auth, b"Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", s.gateway.port), timeout=10) as sock:
        sock.sendall(data)
        raw = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    # (the first answer's body ends without a CRLF: the second status line follows it directly)
    ok = (raw.startswith(b"HTTP/1.1 400 ") and raw.count(b"HTTP/1.1 ") == 2 and b"}HTTP/1.1 200 OK\r\n" in raw
          and len(_calls_since(s, before)) == 1)
    return Result(ok, f"{raw.count(b'HTTP/1.1 ')} answers, first {raw[:12]!r} fwd={len(_calls_since(s, before))}")


@case("billing", "managed count_tokens: free (not_billable, nothing reserved, no max_tokens inserted, "
      "x-api-key); it was charged the whole reservation under a hard limit", modes=("managed",))
def managed_count_tokens_free(s: Stack) -> Result:
    body = b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"hi"}]}'
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, post(b"/v1/messages/count_tokens", body, s.auth,
                                           b"anthropic-version: 2023-06-01\r\n"))
    calls = _calls_since(s, before)
    rows = s.rows_for(answer, settle_s=0)
    sent = {n.lower() for c in calls for n, _ in c.headers}
    ok = (answer.status == 200 and len(calls) == 1 and calls[0].body == body and "x-api-key" in sent
          and [(r["status"], r["cost_nano_usd"] or 0) for r in rows] == [("not_billable", 0)])
    return Result(ok, f"{answer.status} sent_body_same={bool(calls) and calls[0].body == body} "
                      f"rows={[(r['status'], r['cost_nano_usd'], r['price_entry']) for r in rows]}")
