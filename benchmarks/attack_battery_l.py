"""The attack battery's round l (2026-12-06 "l"): the edges an attacker would try next --
state a provider keeps for the operator's account, model-shaped usage, identity with odd
keys, paths and hop-by-hop headers toward the upstream.  Registered here, run by
benchmarks/attack_battery.py (which adds ``CASES`` to its own):

    .venv/bin/python -m benchmarks.attack_battery -k round_l

* The Responses API's server-side state in managed mode: every project's requests reach
  the provider under the operator's one server-side key, so the provider's stored
  responses, conversations and items are one pool.  A ``previous_response_id``, a
  ``conversation`` or an input item that names a stored item must never reach it from a
  project that did not store it; nor may the stored-response endpoints (``GET`` /
  ``DELETE`` ``/v1/responses/{id}``, ``cancel``, ``input_items``, ``/v1/conversations``).
* The same pool through Anthropic: a Messages body's top-level ``container`` (code-execution
  container reuse) names another request's container and its files.
* A web page as the client: a browser sends a cross-site POST with a ``text/plain`` (or form)
  body without asking the server first; config mode serves it keyless with the operator's key.
* The admin API: several admin keys in one request.
* Usage inside what the model shapes: a tool call's arguments are a JSON *object* in
  Anthropic's ``tool_use.input`` and Gemini's ``functionCall.args``; a client can make the
  model put ``usage`` / ``usageMetadata`` there.  The row must carry the provider's usage.
* Identity with odd keys (firewall): a 16 KiB key, a UTF-8 key, a header key and a query
  key that differ, spaces around ``x-goog-api-key``: the key hashed is the key forwarded.
* Paths and headers toward the upstream: dot segments, doubled slashes, ``tunedModels/``;
  ``Expect``, a ``Connection``-named header, ``Forwarded`` / ``X-Forwarded-Host``.

Findings (each a test in tests/test_edges_l.py): benchmarks/results/attack-battery-20261206l.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from benchmarks.attack_battery import (
    CHAT, CHAT_PATH, STREAM_CHAT, Case, Result, Stack, exchange, post, registrar,
)  # fmt: skip
from benchmarks.attack_battery_c import _calls_since
from benchmarks.attack_battery_j import _key

CASES: list[Case] = []
case = registrar(CASES)

RESPONSES_PATH = b"/v1/responses"
GEMINI_BODY = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
MESSAGES_BODY = b'{"model":"claude-sonnet-4-6","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'

#: an id the battery never stored: in a real deployment, another project's (ids are not
#: secrets: they are in logs, traces, shared transcripts, and guessable from a leak)
FOREIGN = "resp_0123456789abcdef0123456789abcdef0123456789abcdef"


def _responses(doc: dict[str, Any]) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "max_output_tokens": 50, **doc}, separators=(",", ":")).encode()


_UNLIMITED: dict[str, bytes] = {}


def _unlimited_auth(s: Stack) -> bytes:
    """Managed: a second tenant without a hard limit (the stack's own has one, which refuses
    server-side state for its cost alone), provisioned once and awaited until loaded."""
    if s.sqlite_path in _UNLIMITED:
        return _UNLIMITED[s.sqlite_path]
    from tests.test_managed import DEFAULT_PIPE, provision

    tenant = provision(None, s.sqlite_path, DEFAULT_PIPE)
    auth = b"Authorization: Bearer " + tenant.token.encode() + b"\r\n"
    deadline = time.monotonic() + 10
    while exchange(s.gateway.port, post(CHAT_PATH, CHAT, auth), wait_s=5).status != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the unlimited tenant's token never loaded")
        time.sleep(0.2)
    _UNLIMITED[s.sqlite_path] = auth
    return auth


# the Responses API's server-side state ------------------------------------------------------------
#: (name, body, whether the body names state the provider keeps for the operator's account)
STATE_BODIES: list[tuple[str, bytes, bool]] = [
    ("previous_response_id", _responses({"input": "hi", "previous_response_id": FOREIGN}), True),
    ("previous_response_id, escaped name", _responses({"input": "hi"}).replace(
        b'"input"', b'"previous_respons\\u0065_id":"' + FOREIGN.encode() + b'","input"'), True),
    ("conversation id", _responses({"input": "hi", "conversation": "conv_0123456789abcdef"}), True),
    ("conversation object", _responses({"input": "hi", "conversation": {"id": "conv_0123456789abcdef"}}), True),
    ("item_reference", _responses({"input": [{"type": "item_reference", "id": "msg_0123456789abcdef"}]}), True),
    ("an item by id alone", _responses({"input": [{"id": "msg_0123456789abcdef"}]}), True),
    ("a reasoning item by id, no encrypted_content", _responses({"input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_0123456789abcdef", "summary": []}]}), True),
    ("a code_interpreter container by id", _responses({"input": "hi", "tools": [
        {"type": "code_interpreter", "container": "cntr_0123456789abcdef"}]}), True),
    # controls: nothing stored is named
    ("previous_response_id null", _responses({"input": "hi", "previous_response_id": None}), False),
    ("a reasoning item carrying its encrypted_content", _responses({"input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB-opaque"}]}), False),
    ("a code_interpreter container made for the request", _responses({"input": "hi", "tools": [
        {"type": "code_interpreter", "container": {"type": "auto"}}]}), False),
    ("a message item with its content", _responses({"input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}), False),
]


@case("responses-state", "round l: managed (no state_storage, no hard limit): a Responses body naming the provider's "
      "stored state -- previous_response_id, conversation, an item_reference or id-only item, a reasoning item by id, "
      "a code_interpreter container by id -- is a 400 naming it, nothing forwarded (the provider would resolve it in the operator's one account: another "
      "project's conversation); the controls are served", modes=("managed",))
def round_l_managed_foreign_state(s: Stack) -> Result:
    auth = _unlimited_auth(s)
    bad = []
    for name, body, names_state in STATE_BODIES:
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, post(RESPONSES_PATH, body, auth), wait_s=8)
        calls = _calls_since(s, before)
        err = answer.error_json()
        if names_state:
            ok = answer.status == 400 and not calls and isinstance(err, dict) and "error" in err
        else:
            ok = answer.status == 200 and len(calls) == 1
        if not ok:
            bad.append(f"{name}: {answer.status} fwd={len(calls)}")
    return Result(not bad, "; ".join(bad)[:400] or f"{len(STATE_BODIES)} bodies as expected")


#: stored-state endpoints of the OpenAI API (method, path): a gateway that is not keeping the
#: state itself must never pass them on (the provider would answer from the operator's account)
STATE_ENDPOINTS: list[tuple[bytes, bytes]] = [
    (b"GET", b"/v1/responses/" + FOREIGN.encode()),
    (b"DELETE", b"/v1/responses/" + FOREIGN.encode()),
    (b"POST", b"/v1/responses/" + FOREIGN.encode() + b"/cancel"),
    (b"GET", b"/v1/responses/" + FOREIGN.encode() + b"/input_items"),
    (b"POST", b"/v1/responses/input_tokens"),
    (b"GET", b"/v1/conversations/conv_0123456789abcdef"),
    (b"GET", b"/v1/conversations/conv_0123456789abcdef/items"),
    (b"POST", b"/v1/conversations"),
    (b"GET", b"/v1/chat/completions/chatcmpl-0123456789"),
    (b"GET", b"/v1/chat/completions?limit=100"),
]


@case("responses-state", "round l: the stored-state endpoints (GET/DELETE /v1/responses/{id}, cancel, input_items, "
      "input_tokens, /v1/conversations..., stored chat completions) with a valid credential: 404/405 in the client's "
      "format, nothing forwarded")
def round_l_state_endpoints_not_forwarded(s: Stack) -> Result:
    auth = _unlimited_auth(s) if s.mode == "managed" else s.auth
    bad = []
    for method, path in STATE_ENDPOINTS:
        body = b"{}" if method == b"POST" else b""
        data = (method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + auth
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, data, wait_s=5)
        calls = _calls_since(s, before)
        err = answer.error_json()
        if answer.status not in (404, 405) or calls or not (isinstance(err, dict) and "error" in err):
            bad.append(f"{method.decode()} {path.decode()[:40]}: {answer.status} fwd={len(calls)}")
    return Result(not bad, "; ".join(bad)[:400] or f"{len(STATE_ENDPOINTS)} endpoints: 404/405, none forwarded")


# usage inside what the model shapes ------------------------------------------------------------
def _tool_case(s: Stack, path: bytes, body: bytes, args: dict[str, Any], extra: bytes = b"") -> tuple[int, Any]:
    """(status, the row's (input, output) tokens) of a tool-call answer whose arguments
    object is ``args``; the fake provider's own usage is 777 in, 55 out."""
    headers = (b"x-fake-tool-call: lookup\r\nx-fake-tool-args: " + json.dumps(args, separators=(",", ":")).encode()
               + b"\r\nx-fake-input-tokens: 777\r\nx-fake-output-tokens: 55\r\n" + extra)
    answer = exchange(s.gateway.port, post(path, body, b"" if path.startswith(b"/v1beta") and s.mode == "config"
                                           else _auth_for(s, path), headers), wait_s=8, until_close=False)
    rows = s.rows_for(answer, settle_s=0)
    return answer.status, ((rows[0]["input_tokens"], rows[0]["output_tokens"]) if len(rows) == 1 else len(rows))


def _auth_for(s: Stack, path: bytes) -> bytes:
    if path.startswith(b"/v1beta"):
        return b"x-goog-api-key: " + _key(s) + b"\r\n"
    return s.auth


SPOOF_ANTHROPIC = {"usage": {"input_tokens": 1, "output_tokens": 1}, "message": {"usage": {"input_tokens": 2}},
                   "type": "message_delta"}
SPOOF_GEMINI = {"usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}}
SPOOF_OPENAI = {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@case("usage", "round l: a tool call whose arguments object holds usage-shaped members (Anthropic tool_use.input, "
      "Gemini functionCall.args, chat's arguments string; JSON and streamed): 200, the row at the provider's usage "
      "(777 in, 55 out), never the arguments'")
def round_l_usage_in_tool_arguments(s: Stack) -> Result:
    stream_messages = MESSAGES_BODY.replace(b'"max_tokens"', b'"stream":true,"max_tokens"')
    cases: list[tuple[str, bytes, bytes, dict[str, Any]]] = [
        ("messages", b"/v1/messages", MESSAGES_BODY, SPOOF_ANTHROPIC),
        ("messages stream", b"/v1/messages", stream_messages, SPOOF_ANTHROPIC),
        ("chat", CHAT_PATH, CHAT, SPOOF_OPENAI),
        ("chat stream", CHAT_PATH, STREAM_CHAT, SPOOF_OPENAI),
    ]
    if s.mode != "managed":  # (Gemini paths are not managed endpoints)
        model = b"/v1beta/models/" + (b"gemini-2.0-flash" if s.mode == "firewall" else b"gemini%2Fgemini-2.0-flash")
        cases += [
            ("gemini", model + b":generateContent", GEMINI_BODY, SPOOF_GEMINI),
            ("gemini sse", model + b":streamGenerateContent?alt=sse", GEMINI_BODY, SPOOF_GEMINI),
            ("gemini array", model + b":streamGenerateContent", GEMINI_BODY, SPOOF_GEMINI),
        ]
    bad = []
    for name, path, body, args in cases:
        status, tokens = _tool_case(s, path, body, args, b"anthropic-version: 2023-06-01\r\n")
        if status != 200 or tokens != (777, 55):
            bad.append(f"{name}: {status} row={tokens}")
    return Result(not bad, "; ".join(bad)[:400] or f"{len(cases)} answers billed at the provider's usage")


# identity with odd keys (firewall) ------------------------------------------------------------
@case("identity", "round l: odd keys -- 16 KiB, UTF-8 letters, a header and a query key that differ (or agree), "
      "x-goog-api-key with spaces around it: each unknown/mixed one 401 (or 431 for the huge head), nothing forwarded; "
      "the spaced one served with exactly one x-goog-api-key, the row's key_hash the SHA-256 of that key",
      modes=("firewall",))
def round_l_odd_keys(s: Stack) -> Result:
    key = _key(s)
    gemini = b"/v1beta/models/gemini-2.0-flash:generateContent"
    bad = []
    for name, path, lines, statuses in (
        ("16 KiB key", CHAT_PATH, b"Authorization: Bearer sk-" + b"a" * 16384 + b"\r\n", (401, 431)),
        ("UTF-8 key", CHAT_PATH, b"Authorization: Bearer sk-\xc3\xa9\xc3\xa9\xc3\xa9\r\n", (401,)),
        ("Bearer + x-api-key, other key", CHAT_PATH, s.auth + b"x-api-key: sk-other\r\n", (401,)),
        ("x-goog-api-key + ?key=, other key", gemini + b"?key=sk-other", b"x-goog-api-key: " + key + b"\r\n", (401,)),
        ("x-goog-api-key + ?key=, same key", gemini + b"?key=" + key, b"x-goog-api-key: " + key + b"\r\n", (401,)),
        ("?key= + Bearer, other key", gemini + b"?key=" + key, b"Authorization: Bearer sk-other\r\n", (401,)),
        ("xproxy_ token in ?key=", gemini + b"?key=xproxy_abc", b"", (401,)),
        ("spaces around x-goog-api-key", gemini, b"x-goog-api-key:   " + key + b"  \r\n", (200,)),
    ):
        body = GEMINI_BODY if path.startswith(b"/v1beta") else CHAT
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, post(path, body, lines), wait_s=5, close_wait_s=0)
        calls = _calls_since(s, before)
        creds = [v for c in calls for n, v in c.headers if n in ("authorization", "x-api-key", "x-goog-api-key", "api-key")]
        if answer.status not in statuses:
            bad.append(f"{name}: {answer.status}")
        elif statuses != (200,) and calls:
            bad.append(f"{name}: {answer.status} but forwarded {len(calls)}")
        elif statuses == (200,):
            rows = s.rows_for(answer, settle_s=0)
            billed = rows[0]["key_hash"] if rows else None
            if creds != [key.decode()] or billed != hashlib.sha256(key).hexdigest() or b"key=" in calls[0].path.encode():
                bad.append(f"{name}: forwarded={[c[:8] for c in creds]} billed={billed and billed[:12]}")
    return Result(not bad, "; ".join(bad)[:400] or "each as expected; the key hashed is the key forwarded")


# paths and headers toward the upstream -----------------------------------------------------------
PATHS = [
    b"/v1/../v1/chat/completions", b"/v1/./chat/completions", b"/v1/%2e%2e/v1/chat/completions",
    b"/v1/chat/completions/..", b"//v1/chat/completions", b"/v1//chat/completions", b"/v1/chat/completions%2F",
    b"/v1/chat%2Fcompletions", b"/V1/chat/completions", b"/v1/chat/completions;x=1",
    b"/v1beta/tunedModels/x:generateContent", b"/v1beta/models/tunedModels%2Fx:generateContent",
    b"/v1beta/models/gemini-2.0-flash:generateContent/", b"/v1beta/models/gemini-2.0-flash/..:generateContent",
    b"/v1beta/cachedContents", b"/v1beta/files", b"/upload/v1beta/files",
]


@case("paths", "round l: dot segments, doubled slashes, encoded slashes, a case variant, tunedModels/, Gemini's "
      "cachedContents and files: 404 (or 400), nothing forwarded")
def round_l_paths_not_forwarded(s: Stack) -> Result:
    bad = []
    for path in PATHS:
        body = GEMINI_BODY if b"beta" in path else CHAT
        auth = _auth_for(s, path) if s.mode == "firewall" else s.auth
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, post(path, body, auth), wait_s=5)
        calls = _calls_since(s, before)
        if answer.status not in (400, 404) or calls:
            bad.append(f"{path.decode()}: {answer.status} fwd={len(calls)}")
    return Result(not bad, "; ".join(bad)[:400] or f"{len(PATHS)} paths: 404/400, none forwarded")


@case("hop-by-hop", "round l: Expect: 100-continue and a header a Connection line names (x-tenant): 200, the upstream "
      "gets no Expect, no x-tenant, no Connection/Keep-Alive, and the provider's own Host")
def round_l_headers_toward_upstream(s: Stack) -> Result:
    extra = (b"Connection: keep-alive, x-tenant\r\nx-tenant: other-project\r\n")
    data = [(0.0, post(CHAT_PATH, CHAT, s.auth, extra + b"Expect: 100-continue\r\n").split(b"\r\n\r\n")[0] + b"\r\n\r\n"),
            (0.3, CHAT)]
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, data, wait_s=6)
    calls = _calls_since(s, before)
    names = {n for c in calls for n, _ in c.headers}
    hosts = [v for c in calls for n, v in c.headers if n == "host"]
    leaked = sorted(names & {"expect", "x-tenant", "connection", "keep-alive"})
    ok = answer.status == 200 and len(calls) == 1 and not leaked and all("evil" not in h for h in hosts)
    return Result(ok, f"{answer.status} fwd={len(calls)} leaked={leaked} host={hosts}")


# a web page as the client (config mode: keyless requests are served with the operator's key) ---------
#: (name, extra header lines, Content-Type, expected status): what a page's browser sends
BROWSER_CASES: list[tuple[str, bytes, bytes | None, int]] = [
    ("cross-site, text/plain", b"Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n",
     b"text/plain;charset=UTF-8", 403),
    ("cross-site, form", b"Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n",
     b"application/x-www-form-urlencoded", 403),
    ("cross-site, multipart", b"Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n",
     b"multipart/form-data; boundary=x", 403),
    ("cross-site, no type", b"Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n", None, 403),
    ("same-site, text/plain", b"Origin: https://a.gw.example\r\nSec-Fetch-Site: same-site\r\n", b"text/plain", 403),
    ("no Sec-Fetch-Site, another Origin", b"Origin: https://evil.example\r\n", b"text/plain", 403),
    ("no Sec-Fetch-Site, Origin null", b"Origin: null\r\n", b"text/plain", 403),
    # consented to, or not a page's
    ("cross-site, JSON (after a preflight a front proxy answered)",
     b"Origin: https://app.example\r\nSec-Fetch-Site: cross-site\r\n", b"application/json", 200),
    ("same-origin, text/plain", b"Origin: http://127.0.0.1\r\nSec-Fetch-Site: same-origin\r\n", b"text/plain", 200),
    ("no Sec-Fetch-Site, Origin = Host", b"Origin: http://127.0.0.1\r\n", b"text/plain", 200),
    ("Sec-Fetch-Site: none (typed in, an extension)", b"Sec-Fetch-Site: none\r\n", b"text/plain", 200),
    ("no browser headers (curl -d)", b"", b"application/x-www-form-urlencoded", 200),
]
#: a page's GET (free, unreadable to it; a CORS deployment's GET /v1/models has no type): served
BROWSER_GET = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example\r\nSec-Fetch-Site: cross-site\r\n"


@case("browser", "round l: a web page's request the gateway never consented to -- Sec-Fetch-Site cross-site or "
      "same-site, or (no Sec-Fetch-Site) an Origin that is not the Host, without a JSON Content-Type -- is a 403 "
      "in the client's format, nothing forwarded (config mode served it keyless with the operator's access_key: "
      "the page cannot read the answer, the operator pays); JSON, same-origin, none, non-browser and a GET: "
      "served",
      modes=("config",))
def round_l_config_cross_site_request(s: Stack) -> Result:
    bad = []
    for name, lines, content_type, want in BROWSER_CASES:
        head = (b"POST " + CHAT_PATH + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines
                + (b"Content-Type: " + content_type + b"\r\n" if content_type else b""))
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, head + b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT, wait_s=6)
        calls = _calls_since(s, before)
        err = answer.error_json()
        if answer.status != want or len(calls) != (want == 200) or (want == 403 and not (
                isinstance(err, dict) and "error" in err)):
            bad.append(f"{name}: {answer.status} fwd={len(calls)}")
    get = exchange(s.gateway.port, BROWSER_GET + b"\r\n", wait_s=6)
    if get.status != 200:
        bad.append(f"cross-site GET /v1/models: {get.status}")
    return Result(not bad, "; ".join(bad)[:400] or f"{len(BROWSER_CASES)} browser POSTs and a GET as expected")


@case("browser", "round l: a cross-site page's simple request with a Gemini ?key= (a credential a page can put "
      "in a URL): 403, nothing forwarded", modes=("firewall",))
def round_l_firewall_cross_site_query_key(s: Stack) -> Result:
    path = b"/v1beta/models/gemini-2.0-flash:generateContent?key=" + _key(s)
    head = (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
            b"Sec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\n")
    before = len(s.provider_calls())
    answer = exchange(s.gateway.port, head + b"Content-Length: %d\r\n\r\n" % len(GEMINI_BODY) + GEMINI_BODY, wait_s=6)
    calls = _calls_since(s, before)
    return Result(answer.status == 403 and not calls, f"{answer.status} fwd={len(calls)}")


#: (name, body, refused): managed Anthropic Messages bodies naming (or not) a container by id
CONTAINER_BODIES: list[tuple[str, bytes, bool]] = [
    ("container id", MESSAGES_BODY.replace(b'"max_tokens"', b'"container":"container_0123456789abcdef","max_tokens"'),
     True),
    ("container object with an id", MESSAGES_BODY.replace(
        b'"max_tokens"', b'"container":{"id":"container_0123456789abcdef"},"max_tokens"'), True),
    ("container, escaped name", MESSAGES_BODY.replace(
        b'"max_tokens"', b'"c\\u006fntainer":"container_0123456789abcdef","max_tokens"'), True),
    ("container, every letter escaped", MESSAGES_BODY.replace(b'"max_tokens"', b'"' + b"".join(
        b"\\u%04x" % c for c in b"container") + b'":"container_0123456789abcdef","max_tokens"'), True),
    # controls
    ("container object without an id (skills)", MESSAGES_BODY.replace(
        b'"max_tokens"', b'"container":{"skills":[]},"max_tokens"'), False),
    ("container null", MESSAGES_BODY.replace(b'"max_tokens"', b'"container":null,"max_tokens"'), False),
    ("the word in the text", MESSAGES_BODY.replace(b'"hi"', b'"a container ship"'), False),
    ("non-ASCII text, escaped", MESSAGES_BODY.replace(b'"hi"', b'"caf\\u00e9 \\u4f60\\u597d"'), False),
]


@case("responses-state", "round l: managed (no hard limit): an Anthropic Messages body naming a code-execution "
      "container by id (top-level 'container', Anthropic's container reuse: another request's files), in any "
      "spelling: 400 naming it, nothing forwarded; a container object without an id, null, the word in the text, "
      "escaped non-ASCII text: served", modes=("managed",))
def round_l_managed_anthropic_container(s: Stack) -> Result:
    auth = _unlimited_auth(s)
    bad = []
    for name, body, refused in CONTAINER_BODIES:
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, post(b"/v1/messages", body, auth, b"anthropic-version: 2023-06-01\r\n"),
                          wait_s=8)
        calls = _calls_since(s, before)
        if (answer.status, len(calls)) != ((400, 0) if refused else (200, 1)):
            bad.append(f"{name}: {answer.status} fwd={len(calls)}")
    return Result(not bad, "; ".join(bad)[:400] or f"{len(CONTAINER_BODIES)} bodies as expected")
