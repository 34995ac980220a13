"""Fake LLM provider: a fast stand-in for OpenAI, Anthropic and Gemini.

Written directly on ``asyncio.Protocol`` + ``httptools`` (run it on uvloop) so it
can serve as the benchmark floor.  It speaks HTTP/1.1 with keep-alive (and
pipelining), accepts Content-Length and chunked request bodies, answers JSON with
Content-Length and streams SSE with ``Transfer-Encoding: chunked``; every SSE
event is written as soon as it is produced and the writer awaits the transport's
flow control (``pause_writing``/``resume_writing``), so a slow reader never makes
this process buffer more than about one event.

Routes (method, path; the query string is ignored for routing)
--------------------------------------------------------------
* ``POST …/chat/completions``                 OpenAI Chat Completions (JSON or SSE)
* ``POST …/responses``                        OpenAI Responses API (JSON or SSE)
* ``POST …/v1/messages``                      Anthropic Messages (JSON or SSE)
* ``POST …/v1/messages/count_tokens``         ``{"input_tokens": I}``
* ``POST …/models/{model}:generateContent``   Gemini JSON
* ``POST …/models/{model}:streamGenerateContent?alt=sse``  Gemini SSE
  (without ``alt=sse``: Gemini's streamed JSON-array form)
* ``POST …/models/{model}:countTokens``       ``{"totalTokens": I}``
* ``GET  …/models``                           OpenAI list shape (Anthropic shape when the
  request carries ``anthropic-version``)
* ``GET /_fake/requests`` (recorded requests as JSON), ``DELETE /_fake/requests``
  (clear), ``GET /_fake/health``
* ``POST /_fake/faults`` / ``GET /_fake/faults`` / ``DELETE /_fake/faults``: server-side
  fault injection (``benchmarks/fake_faults.py``): fail the next N requests (optionally of
  one model) with a status (429 with ``retry-after`` / ``retry-after-ms``), reset before the
  head, stall the head, stream K events then reset; and a seeded random failure rate.
* anything else: 404 with an OpenAI-shaped error body.

Control headers (per request; constructor args / CLI flags give the defaults)
----------------------------------------------------------------------------
* ``x-fake-latency-ms``           delay before the response head
* ``x-fake-events``               number of content delta events (default 8)
* ``x-fake-interval-ms``          pause before each content event after the first
* ``x-fake-status``               reply with this status and a provider-shaped error body
  (429 also sends ``retry-after``; value from ``x-fake-retry-after``, default ``1``)
* ``x-fake-reset-after-events``   stream: write the first N SSE events (of any type,
  e.g. OpenAI's role chunk counts), then reset the TCP connection (RST).  N=0 resets
  right after the response head.  Non-stream requests: reset without any response.
* ``x-fake-error-after-events``   stream: after the first N SSE events send the provider's
  in-stream error event (OpenAI ``data: {"error":…}``, Anthropic/Responses ``event: error``,
  Gemini ``data: {"error":…}``) and end the stream cleanly (no ``[DONE]``/``message_stop``).
* ``x-fake-stream-bytes``         content events carry ``stream_event_bytes`` (64 KiB)
  of text each; ``ceil(bytes / stream_event_bytes)`` of them are sent, so the body is
  at least that many bytes.  Aggregated texts (Responses ``*.done`` /
  ``response.completed``) are replaced by a short placeholder in streams.  Also works
  for non-stream requests (a huge JSON body written with flow control).
* ``x-fake-input-tokens`` ``x-fake-output-tokens`` ``x-fake-cached-tokens``
  ``x-fake-reasoning-tokens`` ``x-fake-cache-write-tokens``  usage overrides
* ``x-fake-omit-usage: 1``        never send usage
* ``x-fake-text``                 the answer's text instead of the canned words, sent as
  ``x-fake-events`` roughly equal content events (chat, messages, Gemini, Responses)
* ``x-fake-tool-call: NAME``      chat, messages and Gemini answer with one call of tool NAME
  (no text) and the provider's tool stop reason; arguments ``x-fake-tool-args`` (a JSON
  object, default ``{}``), streamed in two fragments where the format fragments them;
  Responses (JSON only) answers a reasoning model's tool turn: a ``reasoning`` item by id
  (``rs_…``, no ``encrypted_content``, as with ``store`` on) and a ``function_call`` item
* ``x-fake-retry-after``          value of the retry-after header for error statuses
* ``x-fake-retry-after-ms``       error statuses also send ``retry-after-ms`` with this value
* ``x-fake-response-header: N: V`` a successful answer also carries the header ``N: V``
* ``x-fake-fail-first`` ``x-fake-fail-key``  the first N requests carrying that key get
  ``x-fake-status`` (default 503), the later ones a normal answer (retries, failover)
* ``x-fake-content-encoding: C``  a successful answer (JSON or stream) is sent in content
  coding C, which the gateway did not ask for: ``gzip`` and ``deflate`` (zlib) compressed
  (a stream flushed event by event), any other name (``br``, ``zstd``) gzip bytes under it
* ``x-fake-coding-cut: 1``        with x-fake-content-encoding: the coded body stops before
  its coding's end (every byte of the answer flushed, the compressor's end never sent)
* ``x-fake-bom: 1``               a successful answer's body starts with a UTF-8 BOM
* ``x-fake-service-tier: NAME``   the answer names service tier NAME (letters, digits, ``_``)
  where the provider says which tier served it: chat's top-level ``service_tier`` (every
  chunk; a chat tool-call answer names none), Responses' ``response.service_tier``,
  Anthropic's ``usage.service_tier``; without it ``default`` (OpenAI) and ``standard``
  (Anthropic), as a standard-tier project answers

Usage numbers (canonical record, rendered per provider)
-------------------------------------------------------
``I`` (input total, cache-inclusive) = ``x-fake-input-tokens`` or
``max(1, len(request_body_bytes) // 4)``; ``C`` cached, ``W`` cache-write, ``R``
reasoning default to 0; ``O`` (output total, reasoning-inclusive) =
``x-fake-output-tokens`` or ``content_events + R`` where content_events is
``x-fake-events`` (or the stream-bytes event count).  Rendering:

* OpenAI chat: prompt_tokens=I, completion_tokens=O, total_tokens=I+O,
  prompt_tokens_details.cached_tokens=C, .cache_write_tokens=W,
  completion_tokens_details.reasoning_tokens=R
* Responses: input_tokens=I, output_tokens=O, total_tokens=I+O,
  input_tokens_details.{cached_tokens=C, cache_write_tokens=W},
  output_tokens_details.reasoning_tokens=R
* Anthropic: input_tokens=max(0, I-C-W), cache_read_input_tokens=C,
  cache_creation_input_tokens=W (all 5m), output_tokens=O (message_start has 1);
  ``output_tokens_details.thinking_tokens=R`` only when R>0.  count_tokens returns I.
* Gemini: promptTokenCount=I, candidatesTokenCount=O-R, thoughtsTokenCount=R (if >0),
  cachedContentTokenCount=C (if >0), totalTokenCount=I+O; streamed events carry
  cumulative candidatesTokenCount ``(O-R)*(k+1)//n`` (the last event is final).

Every response carries ``x-fake-peer: ip:port`` and ``x-fake-request-id: N``.
With ``provider_headers=True`` (``--provider-headers``) successful answers also carry the
~20 headers the real provider sends (rate limits, organisation, Cloudflare's cookies and
ray id, HSTS, ...), so a proxy in front pays what it would pay in production.

Python API
----------
``FakeProvider(host, port, *, latency_ms, events, interval_ms, status, input_tokens, …)``
(``await start()`` / ``await stop()``, ``.port``, ``.url``, ``.requests``, ``.clear()``) runs
on the current loop; ``FakeProviderThread(**same)`` runs one on its own uvloop in a
daemon thread (context manager; ``.port``, ``.url``, ``.requests`` snapshot, ``.clear()``,
``.stop()``).  ``.abandoned`` counts the requests whose connection closed before their
answer was done (a client's timeout, a lost hedge).  ``RecordedRequest`` holds method, path (with query), headers
(``[(lowercased name, value)]`` in order), raw body bytes, peer, time, request_id.

CLI
---
``python -m benchmarks.fake_provider --host 127.0.0.1 --port 9000 [--latency-ms X]
[--events N] [--interval-ms X] [--stream-event-bytes N] [--no-record] [--workers N]
[--fail-rate F --fail-seed S --fail-status 503 --fail-action status|reset|stall|stream_reset
--fail-model M]`` prints ``listening on host:port`` once ready; SIGTERM/SIGINT stop it.  ``--workers N``
forks N processes sharing the port with SO_REUSEPORT (``--port 0`` picks one port for all).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import http
import json
import math
import os
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from typing import Any, Callable, Coroutine, Iterator, Optional, Union, cast

import httptools

from benchmarks.fake_faults import Fault, Faults

try:  # orjson is optional; json is the fallback
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _loads: Callable[[Union[bytes, str]], Any] = orjson.loads
    _JSONDecodeError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, UnicodeDecodeError)
except ImportError:  # pragma: no cover - exercised only without orjson

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    _loads = json.loads
    _JSONDecodeError = (ValueError, UnicodeDecodeError)

__all__ = ["FakeProvider", "FakeProviderThread", "RecordedRequest", "main"]

# --------------------------------------------------------------------------------------
# static data

_WORDS: tuple[str, ...] = (
    "Hello", " from", " the", " fake", " provider", ".", " This", " is", " a", " streamed",
    " answer", " with", " one", " token", " per", " event",
)
_WORDS_JSON: tuple[bytes, ...] = tuple(_dumps(w) for w in _WORDS)
_NW = len(_WORDS)
_FILLER = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
_MARK = "@@FAKE_PROVIDER_CONTENT@@"
_MARK_B = _MARK.encode()
_OMITTED_TEXT = "[x-fake-stream-bytes: aggregated text omitted]"
_PAUSE = object()  # pacing point yielded by event generators before content events

_DEFAULT_MODELS = {
    "chat": "gpt-4o-mini",
    "responses": "gpt-4o-mini",
    "messages": "claude-sonnet-4-6",
    "embeddings": "text-embedding-3-small",
}
_LIST_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-5", "claude-sonnet-4-6", "claude-haiku-4-5", "gemini-2.5-flash")
_OPENAI_MODELS_BODY = _dumps(
    {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake-provider"}
            for m in _LIST_MODELS
        ],
    }
)
_ANTHROPIC_MODELS_BODY = _dumps(
    {
        "data": [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in _LIST_MODELS
            if m.startswith("claude")
        ],
        "has_more": False,
        "first_id": "claude-sonnet-4-6",
        "last_id": "claude-haiku-4-5",
    }
)

_CT_JSON = b"application/json"
_CT_SSE = b"text/event-stream; charset=utf-8"


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = {529: "Site Overloaded"}.get(code, "Unknown")
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode())


_STATUS_LINES: dict[int, bytes] = {c: _status_line(c) for c in (200, 400, 404, 405, 429, 500, 503, 529)}


def _get_status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = _STATUS_LINES[code] = _status_line(code)
    return line


# --------------------------------------------------------------------------------------
# public data types


@dataclasses.dataclass(slots=True)
class RecordedRequest:
    """One request as the fake provider received it."""

    method: str
    path: str  # with the query string
    headers: list[tuple[str, str]]  # (lowercased name, value) in the order received
    body: bytes
    peer: tuple[str, int]
    time: float = 0.0
    request_id: int = 0

    def header(self, name: str) -> Optional[str]:
        """First value of header ``name`` (case-insensitive) or None."""
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "headers": [[n, v] for n, v in self.headers],
            "body": self.body.decode("latin-1"),
            "body_base64": base64.b64encode(self.body).decode("ascii"),
            "peer": [self.peer[0], self.peer[1]],
            "time": self.time,
        }


@dataclasses.dataclass(slots=True)
class _Ctl:
    """Effective control settings for one request."""

    latency: float = 0.0  # seconds
    events: int = 8
    interval: float = 0.0  # seconds
    status: int = 0  # 0 = normal
    reset_after: int = -1  # -1 = off
    error_after: int = -1  # -1 = off
    stream_bytes: int = 0  # 0 = off
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cached: int = 0
    reasoning: int = 0
    cache_write: int = 0
    omit_usage: bool = False
    retry_after: str = "1"
    retry_after_ms: str = ""  # "" = no retry-after-ms header
    fault_retry_after: bool = False  # a fault rule decides the retry-after headers
    fail_first: int = 0
    fail_key: str = ""
    text: Optional[str] = None
    tool_call: Optional[str] = None
    tool_args: str = "{}"
    response_header: str = ""  # "name: value", sent as a response header (success answers)
    content_encoding: str = ""  # "" = identity (x-fake-content-encoding)
    bom: bool = False  # x-fake-bom
    service_tier: bytes = b""  # x-fake-service-tier ("" = the format's standard name)
    coding_cut: bool = False  # x-fake-coding-cut


_INT_CTL = {
    "x-fake-events": "events",
    "x-fake-status": "status",
    "x-fake-reset-after-events": "reset_after",
    "x-fake-error-after-events": "error_after",
    "x-fake-stream-bytes": "stream_bytes",
    "x-fake-input-tokens": "input_tokens",
    "x-fake-output-tokens": "output_tokens",
    "x-fake-cached-tokens": "cached",
    "x-fake-reasoning-tokens": "reasoning",
    "x-fake-cache-write-tokens": "cache_write",
    "x-fake-fail-first": "fail_first",
}
_MS_CTL = {"x-fake-latency-ms": "latency", "x-fake-interval-ms": "interval"}


@dataclasses.dataclass(slots=True)
class _Usage:
    i: int  # input total (cache inclusive)
    o: int  # output total (reasoning inclusive)
    c: int  # cache read
    r: int  # reasoning
    w: int  # cache write
    t: bytes = b""  # the service tier the answer names ("" = the format's standard name)


class _BadRequest(Exception):
    pass


# --------------------------------------------------------------------------------------
# per-request response context


class _Ctx:
    __slots__ = ("rid", "uid", "model", "model_json", "created", "n", "big", "usage", "omit_usage",
                 "pieces")

    def __init__(
        self, rid: int, uid: str, model: str, model_json: bytes, n: int, big: Optional[bytes],
        usage: _Usage, omit_usage: bool,
    ) -> None:
        self.rid = rid
        self.uid = uid  # 24 hex chars, unique per request and server
        self.model = model
        self.model_json = model_json
        self.created = int(time.time())
        self.n = n  # number of content events
        self.big = big  # JSON string literal of one big text chunk (stream-bytes mode) or None
        self.usage = usage
        self.omit_usage = omit_usage
        self.pieces: Optional[list[str]] = None  # x-fake-text, split into n events

    def set_text(self, text: str) -> None:
        n = max(1, min(self.n, len(text)))
        step = -(-len(text) // n) or 1
        self.pieces = [text[k:k + step] for k in range(0, len(text), step)] or [""]
        self.n = len(self.pieces)

    def content(self, i: int) -> bytes:
        """JSON string literal of the text of content event ``i``."""
        if self.pieces is not None:
            return _dumps(self.pieces[i])
        big = self.big
        return big if big is not None else _WORDS_JSON[i % _NW]

    def text(self) -> str:
        """Full aggregated text (placeholder marker in stream-bytes mode)."""
        if self.pieces is not None:
            return "".join(self.pieces)
        if self.big is not None:
            return _MARK
        return _full_text(self.n)

    def text_json(self) -> bytes:
        if self.pieces is not None:
            return _dumps(self.text())
        if self.big is not None:
            return b'"' + _MARK_B + b'"'
        return _full_text_json(self.n)


_TEXT_CACHE: dict[int, tuple[str, bytes]] = {}


def _text_pair(n: int) -> tuple[str, bytes]:
    pair = _TEXT_CACHE.get(n)
    if pair is None:
        s = "".join(_WORDS[i % _NW] for i in range(n))
        pair = (s, _dumps(s))
        if len(_TEXT_CACHE) < 1024:
            _TEXT_CACHE[n] = pair
    return pair


def _full_text(n: int) -> str:
    return _text_pair(n)[0]


def _full_text_json(n: int) -> bytes:
    return _text_pair(n)[1]


# ---------------------------------------------------------------------------- OpenAI chat


def _oai_usage(u: _Usage) -> bytes:
    return (
        b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
        b'"prompt_tokens_details":{"cached_tokens":%d,"cache_write_tokens":%d,"audio_tokens":0},'
        b'"completion_tokens_details":{"reasoning_tokens":%d,"audio_tokens":0,'
        b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
    ) % (u.i, u.o, u.i + u.o, u.c, u.w, u.r)


def _chat_json(ctx: _Ctx) -> bytes:
    usage = b"" if ctx.omit_usage else b'"usage":' + _oai_usage(ctx.usage) + b","
    return (
        b'{"id":"chatcmpl-%s","object":"chat.completion","created":%d,"model":%s,'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":%s,"refusal":null,'
        b'"annotations":[]},"logprobs":null,"finish_reason":"stop"}],%s'
        b'"service_tier":"%s","system_fingerprint":"fp_fakeprov"}'
    ) % (ctx.uid.encode(), ctx.created, ctx.model_json, ctx.text_json(), usage, ctx.usage.t or b"default")


def _embeddings_json(ctx: _Ctx) -> bytes:
    """OpenAI's /v1/embeddings answer: usage has prompt and total tokens only."""
    i = ctx.usage.i
    usage = b"" if ctx.omit_usage else b',"usage":{"prompt_tokens":%d,"total_tokens":%d}' % (i, i)
    return (
        b'{"object":"list","data":[{"object":"embedding","index":0,'
        b'"embedding":[0.0023064255,-0.009327292,0.015797347]}],"model":%s%s}'
    ) % (ctx.model_json, usage)


def _chat_events(ctx: _Ctx, include_usage: bool) -> Iterator[object]:
    head = (
        b'data: {"id":"chatcmpl-%s","object":"chat.completion.chunk","created":%d,"model":%s,'
        b'"service_tier":"%s","system_fingerprint":"fp_fakeprov","choices":['
    ) % (ctx.uid.encode(), ctx.created, ctx.model_json, ctx.usage.t or b"default")
    usage_on = include_usage and not ctx.omit_usage
    tail = b',"usage":null}\n\n' if usage_on else b"}\n\n"
    yield (
        head + b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
        b'"logprobs":null,"finish_reason":null}]' + tail
    )
    mid = b'{"index":0,"delta":{"content":'
    end = b'},"logprobs":null,"finish_reason":null}]' + tail
    for i in range(ctx.n):
        if i:
            yield _PAUSE
        yield b"".join((head, mid, ctx.content(i), end))
    yield head + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]' + tail
    if usage_on:
        yield head + b'],"usage":' + _oai_usage(ctx.usage) + b"}\n\n"
    yield b"data: [DONE]\n\n"


# ----------------------------------------------------------------------------- Responses


def _resp_usage(u: _Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.i,
        "input_tokens_details": {"cached_tokens": u.c, "cache_write_tokens": u.w},
        "output_tokens": u.o,
        "output_tokens_details": {"reasoning_tokens": u.r},
        "total_tokens": u.i + u.o,
    }


def _resp_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _resp_item(ctx: _Ctx, text: Optional[str]) -> dict[str, Any]:
    return {
        "id": "msg_" + ctx.uid,
        "type": "message",
        "status": "in_progress" if text is None else "completed",
        "content": [] if text is None else [_resp_part(text)],
        "role": "assistant",
    }


def _resp_object(ctx: _Ctx, req: dict[str, Any], text: Optional[str]) -> dict[str, Any]:
    done = text is not None
    return {
        "id": "resp_" + ctx.uid,
        "object": "response",
        "created_at": ctx.created,
        "status": "completed" if done else "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": ctx.model,
        "output": [_resp_item(ctx, text)] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": req.get("previous_response_id"),
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": ctx.usage.t.decode() or "default",
        "store": bool(req.get("store", True)),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": (None if ctx.omit_usage or not done else _resp_usage(ctx.usage)),
        "user": None,
        "metadata": {},
    }


def _responses_json(ctx: _Ctx, req: dict[str, Any]) -> bytes:
    return _dumps(_resp_object(ctx, req, ctx.text()))


def _sse(event: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _dumps(obj) + b"\n\n"


def _responses_events(ctx: _Ctx, req: dict[str, Any]) -> Iterator[object]:
    seq = 0
    text = _OMITTED_TEXT if ctx.big is not None else ctx.text()
    item_id = "msg_" + ctx.uid
    for typ in ("response.created", "response.in_progress"):
        yield _sse(typ, {"type": typ, "sequence_number": seq, "response": _resp_object(ctx, req, None)})
        seq += 1
    yield _sse(
        "response.output_item.added",
        {"type": "response.output_item.added", "sequence_number": seq, "output_index": 0,
         "item": _resp_item(ctx, None)},
    )
    seq += 1
    yield _sse(
        "response.content_part.added",
        {"type": "response.content_part.added", "sequence_number": seq, "item_id": item_id,
         "output_index": 0, "content_index": 0, "part": _resp_part("")},
    )
    seq += 1
    pre = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
    mid = b',"item_id":"' + item_id.encode() + b'","output_index":0,"content_index":0,"delta":'
    end = b',"logprobs":[]}\n\n'
    for i in range(ctx.n):
        if i:
            yield _PAUSE
        yield b"".join((pre, b"%d" % seq, mid, ctx.content(i), end))
        seq += 1
    yield _sse(
        "response.output_text.done",
        {"type": "response.output_text.done", "sequence_number": seq, "item_id": item_id,
         "output_index": 0, "content_index": 0, "text": text, "logprobs": []},
    )
    seq += 1
    yield _sse(
        "response.content_part.done",
        {"type": "response.content_part.done", "sequence_number": seq, "item_id": item_id,
         "output_index": 0, "content_index": 0, "part": _resp_part(text)},
    )
    seq += 1
    yield _sse(
        "response.output_item.done",
        {"type": "response.output_item.done", "sequence_number": seq, "output_index": 0,
         "item": _resp_item(ctx, text)},
    )
    seq += 1
    yield _sse(
        "response.completed",
        {"type": "response.completed", "sequence_number": seq, "response": _resp_object(ctx, req, text)},
    )


# ----------------------------------------------------------------------------- Anthropic


def _ant_usage(u: _Usage, output_tokens: int) -> bytes:
    extra = b',"output_tokens_details":{"thinking_tokens":%d}' % u.r if u.r else b""
    return (
        b'{"input_tokens":%d,"cache_creation_input_tokens":%d,"cache_read_input_tokens":%d,'
        b'"cache_creation":{"ephemeral_5m_input_tokens":%d,"ephemeral_1h_input_tokens":0},'
        b'"output_tokens":%d%s,"service_tier":"%s"}'
    ) % (max(0, u.i - u.c - u.w), u.w, u.c, u.w, output_tokens, extra, u.t or b"standard")


def _messages_json(ctx: _Ctx) -> bytes:
    usage = b"" if ctx.omit_usage else b',"usage":' + _ant_usage(ctx.usage, ctx.usage.o)
    return (
        b'{"model":%s,"id":"msg_%s","type":"message","role":"assistant",'
        b'"content":[{"type":"text","text":%s}],"stop_reason":"end_turn","stop_sequence":null%s}'
    ) % (ctx.model_json, ctx.uid.encode(), ctx.text_json(), usage)


_ANT_BLOCK_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_ANT_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_ANT_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
_ANT_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_ANT_DELTA_PRE = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":'
)


def _messages_events(ctx: _Ctx) -> Iterator[object]:
    u = ctx.usage
    usage = b"" if ctx.omit_usage else b',"usage":' + _ant_usage(u, 1)
    yield (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_%s","type":"message",'
        b'"role":"assistant","model":%s,"content":[],"stop_reason":null,"stop_sequence":null%s}}\n\n'
    ) % (ctx.uid.encode(), ctx.model_json, usage)
    yield _ANT_BLOCK_START
    yield _ANT_PING
    for i in range(ctx.n):
        if i:
            yield _PAUSE
        yield b"".join((_ANT_DELTA_PRE, ctx.content(i), b"}}\n\n"))
    yield _ANT_BLOCK_STOP
    if ctx.omit_usage:
        dusage = b""
    else:
        dusage = b',"usage":{"input_tokens":%d,"cache_creation_input_tokens":%d,"cache_read_input_tokens":%d,"output_tokens":%d}' % (
            max(0, u.i - u.c - u.w), u.w, u.c, u.o
        )
    yield (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null}%s}\n\n'
    ) % dusage
    yield _ANT_STOP


# -------------------------------------------------------------------------------- Gemini


def _gem_usage(u: _Usage, cand: int) -> bytes:
    extra = b""
    if u.c:
        extra += b',"cachedContentTokenCount":%d' % u.c
    if u.r:
        extra += b',"thoughtsTokenCount":%d' % u.r
    return (
        b'{"promptTokenCount":%d,"candidatesTokenCount":%d,"totalTokenCount":%d,'
        b'"promptTokensDetails":[{"modality":"TEXT","tokenCount":%d}]%s}'
    ) % (u.i, cand, u.i + cand + u.r, u.i, extra)


def _gem_obj(ctx: _Ctx, text_json: bytes, final: bool, cand: int) -> bytes:
    fin = b'"finishReason":"STOP",' if final else b""
    usage = b"" if ctx.omit_usage else b'"usageMetadata":' + _gem_usage(ctx.usage, cand) + b","
    return b"".join((
        b'{"candidates":[{"content":{"parts":[{"text":', text_json, b'}],"role":"model"},', fin,
        b'"index":0}],', usage, b'"modelVersion":', ctx.model_json, b',"responseId":"', ctx.uid.encode(), b'"}',
    ))


def _gemini_json(ctx: _Ctx) -> bytes:
    u = ctx.usage
    return _gem_obj(ctx, ctx.text_json(), True, max(0, u.o - u.r))


def _gemini_events(ctx: _Ctx, sse: bool) -> Iterator[object]:
    u = ctx.usage
    total_cand = max(0, u.o - u.r)
    n = ctx.n
    if n == 0:
        items: Iterator[tuple[int, bytes]] = iter([(0, b'""')])
        n = 1
    else:
        items = ((i, ctx.content(i)) for i in range(n))
    for i, text in items:
        if i:
            yield _PAUSE
        obj = _gem_obj(ctx, text, i == n - 1, total_cand * (i + 1) // n)
        if sse:
            yield b"data: " + obj + b"\r\n\r\n"
        else:
            yield (b"[" if i == 0 else b"\r\n,") + obj
    if not sse:
        yield b"\r\n]"


# ------------------------------------------------- x-fake-content-encoding and x-fake-bom

_BOM = b"\xef\xbb\xbf"


def _compressor(coding: str) -> Any:
    return zlib.compressobj(wbits=15 if coding == "deflate" else 31)


def _coding_line(ctl: _Ctl) -> bytes:
    return b"content-encoding: %s\r\n" % ctl.content_encoding.encode() if ctl.content_encoding else b""


def _coded(ctl: _Ctl, body: bytes) -> bytes:
    """A whole answer's body as x-fake-bom and x-fake-content-encoding say."""
    if ctl.bom:
        body = _BOM + body
    if ctl.content_encoding:
        comp = _compressor(ctl.content_encoding)
        body = comp.compress(body) + comp.flush(zlib.Z_SYNC_FLUSH if ctl.coding_cut else zlib.Z_FINISH)
    return body


def _coded_events(ctl: _Ctl, events: Iterator[object]) -> Iterator[object]:
    """A stream's events as x-fake-bom and x-fake-content-encoding say: each compressed
    event flushed (a client reads it as it comes), the coding's end after the last."""
    if not ctl.bom and not ctl.content_encoding:
        yield from events
        return
    comp = _compressor(ctl.content_encoding) if ctl.content_encoding else None
    first = True
    for ev in events:
        if isinstance(ev, bytes):
            if first and ctl.bom:
                ev = _BOM + ev
            first = False
            if comp is not None:
                ev = comp.compress(ev) + comp.flush(zlib.Z_SYNC_FLUSH)
        yield ev
    if comp is not None and not ctl.coding_cut:
        yield comp.flush()


# ------------------------------------------------------------------------ tool-call answers


def _tool_json(kind: str, ctx: _Ctx, name: str, args: str) -> bytes:
    """A whole answer that is one call of tool ``name`` (x-fake-tool-call)."""
    u = ctx.usage
    if kind == "chat":
        doc: dict[str, Any] = {
            "id": "chatcmpl-" + ctx.uid, "object": "chat.completion", "created": ctx.created,
            "model": ctx.model, "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                    {"id": "call_" + ctx.uid, "type": "function", "function": {"name": name, "arguments": args}}]}}],
        }
        if not ctx.omit_usage:
            doc["usage"] = _loads(_oai_usage(u))
    elif kind == "messages":
        doc = {"id": "msg_" + ctx.uid, "type": "message", "role": "assistant", "model": ctx.model,
               "content": [{"type": "tool_use", "id": "toolu_" + ctx.uid, "name": name, "input": _loads(args)}],
               "stop_reason": "tool_use", "stop_sequence": None}
        if not ctx.omit_usage:
            doc["usage"] = _loads(_ant_usage(u, u.o))
    else:
        doc = _gem_tool_doc(ctx, name, args)
    return _dumps(doc)


def _gem_tool_doc(ctx: _Ctx, name: str, args: str) -> dict[str, Any]:
    u = ctx.usage
    doc: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": name, "args": _loads(args)}}]},
                        "finishReason": "STOP", "index": 0}],
        "modelVersion": ctx.model, "responseId": ctx.uid,
    }
    if not ctx.omit_usage:
        doc["usageMetadata"] = _loads(_gem_usage(u, max(0, u.o - u.r)))
    return doc


def _tool_events(kind: str, ctx: _Ctx, name: str, args: str, include_usage: bool, sse: bool) -> Iterator[object]:
    """A streamed answer that is one call of tool ``name``; arguments in two fragments."""
    half = len(args) // 2
    fragments = (args[:half], args[half:])
    u = ctx.usage
    if kind == "chat":
        base = {"id": "chatcmpl-" + ctx.uid, "object": "chat.completion.chunk", "created": ctx.created,
                "model": ctx.model}

        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> bytes:
            doc = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + _dumps(doc) + b"\n\n"

        yield chunk({"role": "assistant", "content": None})
        yield chunk({"tool_calls": [{"index": 0, "id": "call_" + ctx.uid, "type": "function",
                                     "function": {"name": name, "arguments": ""}}]})
        for fragment in fragments:
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
        yield chunk({}, "tool_calls")
        if include_usage and not ctx.omit_usage:
            yield b"data: " + _dumps({**base, "choices": [], "usage": _loads(_oai_usage(u))}) + b"\n\n"
        yield b"data: [DONE]\n\n"
    elif kind == "messages":
        start: dict[str, Any] = {"id": "msg_" + ctx.uid, "type": "message", "role": "assistant", "model": ctx.model,
                                 "content": [], "stop_reason": None, "stop_sequence": None}
        if not ctx.omit_usage:
            start["usage"] = _loads(_ant_usage(u, 1))
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_" + ctx.uid, "name": name, "input": {}}})
        for fragment in fragments:
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "input_json_delta", "partial_json": fragment}})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}}
        if not ctx.omit_usage:
            delta["usage"] = {"output_tokens": u.o}
        yield _sse("message_delta", delta)
        yield _sse("message_stop", {"type": "message_stop"})
    else:
        doc = _dumps(_gem_tool_doc(ctx, name, args))
        yield b"data: " + doc + b"\r\n\r\n" if sse else b"[" + doc + b"]"


# --------------------------------------------------------------------------------- errors

_OAI_ERR: dict[int, tuple[str, Optional[str]]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
_ANT_ERR: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GEM_ERR: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# Response headers a real provider sends besides the framing ones (``provider_headers=True``,
# CLI ``--provider-headers``).  A proxy pays per header it parses, filters and re-emits, so a
# benchmark against a provider that sends four headers flatters it.  Sets assembled from
# recorded responses in ../shared/data/fixtures (pydantic-ai cassettes: openai-version,
# openai-processing-ms, access-control-expose-headers, alt-svc, strict-transport-security,
# server-timing, vary) and the providers' documented rate-limit headers (OpenAI
# ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``); Cloudflare's edge adds cf-ray,
# cf-cache-status and the __cf_bm/_cfuvid cookies in front of OpenAI and Anthropic.
# Values are fixed, shaped and sized like real ones; identifiers are fake.
_CF_COOKIES = (
    b"set-cookie: __cf_bm=" + b"x" * 120 + b"-1764800000-1.0.1.1-" + b"y" * 40
    + b"; path=/; expires=Thu, 03-Dec-26 23:30:00 GMT; domain=.api.example.com; HttpOnly; Secure; "
    b"SameSite=None\r\n"
    b"set-cookie: _cfuvid=" + b"z" * 43 + b"-1764800000000-0.0.1.1-604800000; path=/; "
    b"domain=.api.example.com; HttpOnly; Secure; SameSite=None\r\n"
)
_PROVIDER_HEADERS: dict[str, bytes] = {
    "openai": (
        b"date: Thu, 03 Dec 2026 23:00:00 GMT\r\n"
        b"access-control-expose-headers: X-Request-ID\r\n"
        b"openai-organization: org-fakefakefakefakefakefake\r\n"
        b"openai-processing-ms: 412\r\n"
        b"openai-project: proj_fakefakefakefakefakefake\r\n"
        b"openai-version: 2020-10-01\r\n"
        b"x-envoy-upstream-service-time: 415\r\n"
        b"x-ratelimit-limit-requests: 10000\r\n"
        b"x-ratelimit-limit-tokens: 30000000\r\n"
        b"x-ratelimit-remaining-requests: 9999\r\n"
        b"x-ratelimit-remaining-tokens: 29999975\r\n"
        b"x-ratelimit-reset-requests: 6ms\r\n"
        b"x-ratelimit-reset-tokens: 0s\r\n"
        b"x-request-id: req_0123456789abcdef0123456789abcdef\r\n"
        b"strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n"
        b"cf-cache-status: DYNAMIC\r\n"
        + _CF_COOKIES +
        b"x-content-type-options: nosniff\r\n"
        b"server: cloudflare\r\n"
        b"cf-ray: 8f1c2d3e4f5a6b7c-IAD\r\n"
        b"alt-svc: h3=\":443\"; ma=86400\r\n"
    ),
    "anthropic": (
        b"date: Thu, 03 Dec 2026 23:00:00 GMT\r\n"
        b"anthropic-organization-id: 00000000-0000-4000-8000-000000000000\r\n"
        b"anthropic-ratelimit-requests-limit: 4000\r\n"
        b"anthropic-ratelimit-requests-remaining: 3999\r\n"
        b"anthropic-ratelimit-requests-reset: 2026-12-03T23:00:01Z\r\n"
        b"anthropic-ratelimit-input-tokens-limit: 2000000\r\n"
        b"anthropic-ratelimit-input-tokens-remaining: 1999000\r\n"
        b"anthropic-ratelimit-input-tokens-reset: 2026-12-03T23:00:01Z\r\n"
        b"anthropic-ratelimit-output-tokens-limit: 400000\r\n"
        b"anthropic-ratelimit-output-tokens-remaining: 399000\r\n"
        b"anthropic-ratelimit-output-tokens-reset: 2026-12-03T23:00:01Z\r\n"
        b"anthropic-ratelimit-tokens-limit: 2400000\r\n"
        b"anthropic-ratelimit-tokens-remaining: 2398000\r\n"
        b"anthropic-ratelimit-tokens-reset: 2026-12-03T23:00:01Z\r\n"
        b"strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n"
        b"via: 1.1 google\r\n"
        b"cf-cache-status: DYNAMIC\r\n"
        b"x-robots-tag: none\r\n"
        + _CF_COOKIES +
        b"server: cloudflare\r\n"
        b"cf-ray: 8f1c2d3e4f5a6b7c-SJC\r\n"
    ),
    "gemini": (
        b"date: Thu, 03 Dec 2026 23:00:00 GMT\r\n"
        b"vary: Origin\r\n"
        b"vary: X-Origin\r\n"
        b"vary: Referer\r\n"
        b"server: scaffolding on HTTPServer2\r\n"
        b"x-xss-protection: 0\r\n"
        b"x-frame-options: SAMEORIGIN\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"server-timing: gfet4t7; dur=512\r\n"
        b"alt-svc: h3=\":443\"; ma=2592000,h3-29=\":443\"; ma=2592000\r\n"
    ),
}


def _error_body(family: str, status: int, message: str, rid: int, unknown_url: bool = False) -> bytes:
    if family == "anthropic":
        etype = _ANT_ERR.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
        return _dumps(
            {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_fake%08d" % rid}
        )
    if family == "gemini":
        gstatus = _GEM_ERR.get(status) or ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return _dumps({"error": {"code": status, "message": message, "status": gstatus}})
    otype, code = _OAI_ERR.get(status) or (
        ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    if unknown_url:
        otype, code = "invalid_request_error", None
    return _dumps({"error": {"message": message, "type": otype, "param": None, "code": code}})


_STREAM_ERR_MSG = "fake provider: injected mid-stream error"


def _stream_error_event(kind: str, sse: bool, sent: int) -> bytes:
    """The provider's in-stream error event (sent after a 200 head), ending the stream."""
    if kind == "chat":
        return b"data: " + _dumps(
            {"error": {"message": _STREAM_ERR_MSG, "type": "server_error", "param": None, "code": None}}
        ) + b"\n\n"
    if kind == "responses":
        return _sse("error", {"type": "error", "sequence_number": sent, "code": "server_error",
                              "message": _STREAM_ERR_MSG, "param": None})
    if kind == "messages":
        return _sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    obj = _dumps({"error": {"code": 500, "message": _STREAM_ERR_MSG, "status": "INTERNAL"}})
    if sse:
        return b"data: " + obj + b"\r\n\r\n"
    return (b"[" if sent == 0 else b"\r\n,") + obj + b"\r\n]"


# ------------------------------------------------------------------------------- routing


def _route(method: str, path: str) -> tuple[Optional[str], str]:
    """(kind, family) for a path; kind None = unknown route."""
    if path.endswith("/chat/completions"):
        return "chat", "openai"
    if path.endswith("/v1/messages"):
        return "messages", "anthropic"
    if path.endswith("/responses"):
        return "responses", "openai"
    if path.endswith("/embeddings"):
        return "embeddings", "openai"
    colon = path.rfind(":")
    if colon > path.rfind("/") > 0:  # Gemini-style ".../models/{model}:{verb}" (also tunedModels, Vertex)
        verb = path[colon + 1:]
        if verb == "generateContent":
            return "gemini", "gemini"
        if verb == "streamGenerateContent":
            return "gemini_stream", "gemini"
        if verb == "countTokens":
            return "gemini_count", "gemini"
        return None, "gemini"
    if path.endswith("/v1/messages/count_tokens"):
        return "count_tokens", "anthropic"
    if path.endswith("/models"):
        return "models", "openai"
    return None, "openai"


_POST_KINDS = frozenset(("chat", "embeddings", "messages", "responses", "gemini", "gemini_stream", "gemini_count", "count_tokens"))


def _wants_stream(family: str, path: str, body: bytes) -> bool:
    """Whether a request asks for a stream (only read when a stream_reset fault fires)."""
    if family == "gemini":
        return ":streamGenerateContent" in path
    try:
        obj = _loads(body) if body else None
    except _JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("stream") is True


def _gemini_model(path: str) -> str:
    return path[path.rfind("/") + 1:path.rfind(":")] or "gemini-2.5-flash"


# ------------------------------------------------------------------------------ protocol

# (method, url, headers, special headers (x-fake-* and anthropic-version), body, keep_alive)
_Pending = tuple[str, str, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes, bool]


class _HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "srv", "loop", "transport", "parser", "peer", "peer_hdr", "_url", "_headers", "_special",
        "_body", "_expect", "_queue", "_task", "_paused", "_waiter", "closed", "_closing", "_reading_paused",
    )

    def __init__(self, srv: "FakeProvider") -> None:
        self.srv = srv
        self.loop = srv._loop_ref()
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] = ("", 0)
        self.peer_hdr = b""
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._special: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._expect = False
        self._queue: collections.deque[_Pending] = collections.deque()
        self._task: Optional[asyncio.Task[None]] = None
        self._paused = False
        self._waiter: Optional[asyncio.Future[None]] = None
        self.closed = False
        self._closing = False
        self._reading_paused = False

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
            host = self.peer[0]
            self.peer_hdr = (("[%s]" % host) if ":" in host else host).encode() + b":%d" % self.peer[1]
        else:
            self.peer = (str(peer or ""), 0)
            self.peer_hdr = self.peer[0].encode() + b":0"
        self.srv._conns.add(self)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self._closing = True
        self.srv._conns.discard(self)
        self._wake()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            self.srv._abandoned_one()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def wait_writable(self) -> None:
        while self._paused and not self.closed:
            w = self._waiter
            if w is None:
                w = self._waiter = self.loop.create_future()
            await w

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            if self._task is None and not self._queue:
                body = _dumps({"error": {"message": "bad request: %s" % exc, "type": "invalid_request_error",
                                         "param": None, "code": None}})
                self.send(400, _CT_JSON, body, 0, b"", False)
            self.close()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        self._special = []
        self._body = []
        self._expect = False

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        self._headers.append((n, value))
        if n.startswith(b"x-fake-") or n == b"anthropic-version":
            self._special.append((n, value))
        elif n == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def on_headers_complete(self) -> None:
        if self._expect and self._task is None and not self._queue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        url = b"".join(self._url).decode("latin-1")
        body = b"".join(self._body) if self._body else b""
        self._queue.append(
            (p.get_method().decode("latin-1"), url, self._headers, self._special, body, bool(p.should_keep_alive()))
        )
        if self._task is None:
            self._process()
        elif len(self._queue) > 32 and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    # -- request processing
    def _process(self) -> None:
        queue = self._queue
        while queue and not self._closing:
            method, url, headers, special, body, keep_alive = queue.popleft()
            coro = self.srv._handle(self, method, url, headers, special, body, keep_alive)
            if coro is not None:
                task = self._task = self.loop.create_task(coro)
                task.add_done_callback(self._task_done)
                return
        if self._reading_paused and not self._closing and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _task_done(self, task: "asyncio.Task[None]") -> None:
        self._task = None
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:  # a bug: drop the connection
                sys.stderr.write("fake_provider: handler error: %r\n" % (exc,))
                self.abort()
                return
        if not self._closing:
            self._process()

    # -- output helpers
    def send(self, status: int, ctype: bytes, body: bytes, rid: int, extra: bytes, keep_alive: bool) -> None:
        t = self.transport
        if t is None or self._closing:
            return
        t.write(
            b"".join((
                _get_status_line(status),
                b"content-type: ", ctype,
                b"\r\ncontent-length: %d\r\nx-fake-peer: " % len(body), self.peer_hdr,
                b"\r\nx-fake-request-id: %d\r\n" % rid, extra,
                b"" if keep_alive else b"connection: close\r\n",
                b"\r\n", body,
            ))
        )
        if not keep_alive:
            self.close()

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self._closing:
            t.write(data)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    async def reset(self) -> None:
        """Let buffered output reach the kernel, then RST the connection."""
        t = self.transport
        if t is None or self.closed:
            return
        deadline = self.loop.time() + 2.0
        while not self.closed and t.get_write_buffer_size() and self.loop.time() < deadline:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.005)  # give a local reader the chance to pull what was sent
        if self.closed:
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.abort()


# -------------------------------------------------------------------------------- server


class FakeProvider:
    """The asyncio fake provider server (run it on uvloop for speed)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float = 0,
        events: int = 8,
        interval_ms: float = 0,
        status: int = 0,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_tokens: int = 0,
        omit_usage: bool = False,
        stream_event_bytes: int = 65536,
        max_recorded: int = 10000,
        record: bool = True,
        reuse_port: bool = False,
        backlog: int = 4096,
        provider_headers: bool = False,
        fail_rate: float = 0.0,
        fail_seed: int = 0,
        fail_status: int = 503,
        fail_action: str = "status",
        fail_models: Optional[list[str]] = None,
    ) -> None:
        self.host = host
        #: send each provider's usual response headers (see _PROVIDER_HEADERS)
        self.provider_headers = provider_headers
        self.port = port
        self._defaults = _Ctl(
            latency=latency_ms / 1000.0,
            events=events,
            interval=interval_ms / 1000.0,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached=cached_tokens,
            reasoning=reasoning_tokens,
            cache_write=cache_write_tokens,
            omit_usage=omit_usage,
        )
        if stream_event_bytes < 16:
            raise ValueError("stream_event_bytes must be >= 16")
        reps = stream_event_bytes // len(_FILLER) + 1
        self._big_raw = (_FILLER * reps)[:stream_event_bytes]
        self._big_json = b'"' + self._big_raw + b'"'
        self.record = record
        self._recorded: collections.deque[RecordedRequest] = collections.deque(maxlen=max_recorded)
        self._lock = threading.Lock()
        self._counter = 0
        self._abandoned = 0
        self._fail_seen: dict[str, int] = {}  # x-fake-fail-key -> requests seen
        self._nonce = os.urandom(6).hex()
        self._reuse_port = reuse_port
        self._backlog = backlog
        self._server: Optional[asyncio.AbstractServer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._conns: set[_HttpProtocol] = set()
        self._model_json: dict[str, bytes] = {}
        #: server-side fault injection (fake_faults.py); ``faults.on`` is the one branch
        #: the request path pays when no fault is configured
        self.faults = Faults()
        if fail_rate > 0:
            self.faults.set_random(fail_rate, Fault(fail_action, fail_status), fail_seed, fail_models)

    # -- lifecycle
    def _loop_ref(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _HttpProtocol(self),
            self.host,
            self.port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        conns = list(self._conns)
        tasks = [c._task for c in conns if c._task is not None]
        for c in conns:
            c.abort()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        for _ in range(3):  # let connection_lost callbacks run
            await asyncio.sleep(0)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", None) else self.host
        if ":" in host:
            host = "[%s]" % host
        return "http://%s:%d" % (host, self.port)

    # -- recording
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._recorded)

    def clear(self) -> None:
        with self._lock:
            self._recorded.clear()
            self._abandoned = 0

    @property
    def abandoned(self) -> int:
        """Requests whose connection closed while their answer was still to come (a
        latency or stall under way, a stream not ended): what a client that gave up on
        them -- a gateway's timeout, a lost hedge -- leaves; since the last ``clear()``."""
        with self._lock:
            return self._abandoned

    def _abandoned_one(self) -> None:
        with self._lock:
            self._abandoned += 1

    # -- request handling
    def _model_bytes(self, model: str) -> bytes:
        mj = self._model_json.get(model)
        if mj is None:
            mj = _dumps(model)
            if len(self._model_json) < 256:
                self._model_json[model] = mj
        return mj

    def _controls(self, special: list[tuple[bytes, bytes]]) -> _Ctl:
        ctl: Optional[_Ctl] = None
        for bname, bvalue in special:
            if not bname.startswith(b"x-fake-"):
                continue
            if ctl is None:
                ctl = dataclasses.replace(self._defaults)
            name = bname.decode("latin-1")
            value = bvalue.decode("latin-1")
            v = value.strip()
            try:
                if name in _INT_CTL:
                    setattr(ctl, _INT_CTL[name], int(v))
                elif name in _MS_CTL:
                    setattr(ctl, _MS_CTL[name], float(v) / 1000.0)
                elif name == "x-fake-omit-usage":
                    ctl.omit_usage = v.lower() in ("1", "true", "yes", "on")
                elif name == "x-fake-bom":
                    ctl.bom = v.lower() in ("1", "true", "yes", "on")
                elif name == "x-fake-coding-cut":
                    ctl.coding_cut = v.lower() in ("1", "true", "yes", "on")
                elif name == "x-fake-content-encoding":
                    if not v.isalnum():
                        raise ValueError(v)
                    ctl.content_encoding = v.lower()
                elif name == "x-fake-retry-after":
                    ctl.retry_after = v
                elif name == "x-fake-retry-after-ms":
                    float(v)
                    ctl.retry_after_ms = v
                elif name == "x-fake-fail-key":
                    ctl.fail_key = v
                elif name == "x-fake-text":
                    ctl.text = value
                elif name == "x-fake-tool-call":
                    ctl.tool_call = v
                elif name == "x-fake-service-tier":
                    if not v.replace("_", "").isalnum():
                        raise ValueError(v)
                    ctl.service_tier = v.encode()
                elif name == "x-fake-response-header":
                    if ":" not in v or "\r" in v or "\n" in v:
                        raise ValueError(v)
                    ctl.response_header = v
                elif name == "x-fake-tool-args":
                    if not isinstance(_loads(v), dict):
                        raise ValueError(v)
                    ctl.tool_args = v
            except ValueError:
                raise _BadRequest("invalid value for %s: %r" % (name, value)) from None
        return ctl if ctl is not None else self._defaults

    def _usage(self, ctl: _Ctl, body: bytes, n_events: int) -> _Usage:
        i = ctl.input_tokens if ctl.input_tokens is not None else max(1, len(body) // 4)
        o = ctl.output_tokens if ctl.output_tokens is not None else n_events + ctl.reasoning
        return _Usage(i, o, ctl.cached, ctl.reasoning, ctl.cache_write, ctl.service_tier)

    def _handle(
        self, p: _HttpProtocol, method: str, url: str, raw_headers: list[tuple[bytes, bytes]],
        special: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool,
    ) -> Optional[Coroutine[Any, Any, None]]:
        path, _, query = url.partition("?")
        if path.startswith("/_fake/"):
            self._admin(p, method, path, keep_alive, body)
            return None
        self._counter += 1
        rid = self._counter
        if self.record:
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers]
            rec = RecordedRequest(method, url, headers, body, p.peer, time.time(), rid)
            with self._lock:
                self._recorded.append(rec)
        kind, family = _route(method, path)
        try:
            ctl = self._controls(special)
        except _BadRequest as exc:
            p.send(400, _CT_JSON, _error_body(family, 400, str(exc), rid), rid, b"", keep_alive)
            return None
        if ctl.fail_first > 0:
            # The first N requests carrying this fail key get x-fake-status (default 503);
            # later ones are answered normally.
            with self._lock:
                seen = self._fail_seen.get(ctl.fail_key, 0)
                self._fail_seen[ctl.fail_key] = seen + 1
            ctl = dataclasses.replace(ctl, status=(ctl.status or 503) if seen < ctl.fail_first else 0)
        if self.faults.on:
            fault = self.faults.take(self._fault_model(self.faults.by_model, family, path, body))
            if fault is not None:
                if fault.action == "reset" or (fault.action == "stream_reset" and not _wants_stream(family, path, body)):
                    return self._reset_later(p, ctl.latency)
                if fault.action == "status":
                    ctl = dataclasses.replace(ctl, status=fault.status, retry_after=fault.retry_after,
                                              retry_after_ms=fault.retry_after_ms, fault_retry_after=True)
                elif fault.action == "stall":
                    ctl = dataclasses.replace(ctl, latency=ctl.latency + fault.stall_ms / 1000.0)
                else:  # stream_reset
                    ctl = dataclasses.replace(ctl, reset_after=max(0, fault.after_events))
        if kind is None:
            return self._respond(p, ctl, rid, 404, _CT_JSON, _error_body(
                family, 404, "Invalid URL (%s %s)" % (method, path), rid, True), keep_alive)
        want = "POST" if kind in _POST_KINDS else "GET"
        if method != want:
            return self._respond(p, ctl, rid, 405, _CT_JSON, _error_body(
                family, 405, "Method %s not allowed for %s" % (method, path), rid, True), keep_alive)
        if kind == "models" and any(n == b"anthropic-version" for n, _ in special):
            family = "anthropic"
        if ctl.status and ctl.status != 200:
            extra = b""
            if ctl.fault_retry_after:
                if ctl.retry_after:
                    extra = b"retry-after: " + ctl.retry_after.encode("latin-1") + b"\r\n"
            elif ctl.status == 429 or any(n == b"x-fake-retry-after" for n, _ in special):
                extra = b"retry-after: " + ctl.retry_after.encode("latin-1") + b"\r\n"
            if ctl.retry_after_ms:
                extra += b"retry-after-ms: " + ctl.retry_after_ms.encode("latin-1") + b"\r\n"
            if family == "anthropic":
                extra += b"request-id: req_fake%08d\r\n" % rid
            return self._respond(p, ctl, rid, ctl.status, _CT_JSON, _error_body(
                family, ctl.status, "fake provider: injected HTTP %d" % ctl.status, rid), keep_alive, extra)
        if kind == "models":
            body_out = _ANTHROPIC_MODELS_BODY if family == "anthropic" else _OPENAI_MODELS_BODY
            return self._respond(p, ctl, rid, 200, _CT_JSON, body_out, keep_alive)

        # body
        req: dict[str, Any]
        if body:
            try:
                obj = _loads(body)
            except _JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                return self._respond(p, ctl, rid, 400, _CT_JSON, _error_body(
                    family, 400, "request body is not a JSON object", rid), keep_alive)
            req = obj
        else:
            req = {}

        if kind == "count_tokens" or kind == "gemini_count":
            i = self._usage(ctl, body, 0).i
            out = _dumps({"input_tokens": i} if kind == "count_tokens" else {"totalTokens": i})
            return self._respond(p, ctl, rid, 200, _CT_JSON, out, keep_alive)

        if family == "gemini":
            model = _gemini_model(path)
            stream = kind == "gemini_stream"
        else:
            m = req.get("model")
            model = m if isinstance(m, str) else _DEFAULT_MODELS[kind]
            stream = req.get("stream") is True
        big: Optional[bytes] = None
        n = ctl.events
        if ctl.stream_bytes > 0:
            big = self._big_json
            n = max(1, math.ceil(ctl.stream_bytes / len(self._big_raw)))
        n = max(0, n)
        ctx = _Ctx(rid, "%s%012x" % (self._nonce, rid), model, self._model_bytes(model), n, big,
                   self._usage(ctl, body, n), ctl.omit_usage)
        if ctl.text is not None:
            ctx.set_text(ctl.text)
        extra = b"request-id: req_fake%08d\r\n" % rid if family == "anthropic" else b""
        if self.provider_headers:
            extra += _PROVIDER_HEADERS[family]
        if ctl.response_header:
            extra += ctl.response_header.encode("latin-1") + b"\r\n"
        if ctl.tool_call is not None and kind == "responses" and not stream:
            doc = _resp_object(ctx, req, "")
            doc["output"] = [
                {"id": "rs_" + ctx.uid, "type": "reasoning", "summary": []},
                {"id": "fc_" + ctx.uid, "type": "function_call", "status": "completed", "call_id": "call_" + ctx.uid,
                 "name": ctl.tool_call, "arguments": ctl.tool_args},
            ]
            return self._respond(p, ctl, rid, 200, _CT_JSON, _coded(ctl, _dumps(doc)), keep_alive,
                                 extra + _coding_line(ctl))
        if ctl.tool_call is not None and kind in ("chat", "messages", "gemini", "gemini_stream"):
            so = req.get("stream_options")
            include_usage = isinstance(so, dict) and so.get("include_usage") is True
            if stream:
                sse = family != "gemini" or "alt=sse" in query
                events = _tool_events(kind, ctx, ctl.tool_call, ctl.tool_args, include_usage, sse)
                ctype = _CT_SSE if sse else _CT_JSON
                return self._stream(p, ctl, rid, ctype, _coded_events(ctl, events), keep_alive,
                                    extra + _coding_line(ctl), kind, sse)
            out = _tool_json(kind, ctx, ctl.tool_call, ctl.tool_args)
            return self._respond(p, ctl, rid, 200, _CT_JSON, _coded(ctl, out), keep_alive, extra + _coding_line(ctl))

        if stream:
            events: Iterator[object]
            ctype = _CT_SSE
            if kind == "chat":
                so = req.get("stream_options")
                include_usage = isinstance(so, dict) and so.get("include_usage") is True
                events = _chat_events(ctx, include_usage)
            elif kind == "responses":
                events = _responses_events(ctx, req)
            elif kind == "messages":
                events = _messages_events(ctx)
            else:
                sse = "alt=sse" in query
                if not sse:
                    ctype = _CT_JSON
                events = _gemini_events(ctx, sse)
            return self._stream(p, ctl, rid, ctype, _coded_events(ctl, events), keep_alive, extra + _coding_line(ctl),
                                kind, ctype is _CT_SSE)

        if kind == "chat":
            out = _chat_json(ctx)
        elif kind == "embeddings":
            out = _embeddings_json(ctx)
        elif kind == "responses":
            out = _responses_json(ctx, req)
        elif kind == "messages":
            out = _messages_json(ctx)
        else:
            out = _gemini_json(ctx)
        if big is not None:
            return self._big_json_response(p, ctl, rid, out, n, keep_alive, extra)
        return self._respond(p, ctl, rid, 200, _CT_JSON, _coded(ctl, out), keep_alive, extra + _coding_line(ctl))

    def _respond(
        self, p: _HttpProtocol, ctl: _Ctl, rid: int, status: int, ctype: bytes, body: bytes,
        keep_alive: bool, extra: bytes = b"",
    ) -> Optional[Coroutine[Any, Any, None]]:
        if ctl.latency <= 0 and ctl.reset_after < 0:
            p.send(status, ctype, body, rid, extra, keep_alive)
            return None
        return self._respond_later(p, ctl, rid, status, ctype, body, keep_alive, extra)

    async def _respond_later(
        self, p: _HttpProtocol, ctl: _Ctl, rid: int, status: int, ctype: bytes, body: bytes,
        keep_alive: bool, extra: bytes,
    ) -> None:
        if ctl.latency > 0:
            await asyncio.sleep(ctl.latency)
        if ctl.reset_after >= 0:
            await p.reset()
            return
        p.send(status, ctype, body, rid, extra, keep_alive)

    async def _big_json_response(
        self, p: _HttpProtocol, ctl: _Ctl, rid: int, template: bytes, n: int, keep_alive: bool, extra: bytes,
    ) -> None:
        if ctl.latency > 0:
            await asyncio.sleep(ctl.latency)
        if ctl.reset_after >= 0:
            await p.reset()
            return
        prefix, _, suffix = template.partition(_MARK_B)
        chunk = self._big_raw
        length = len(prefix) + len(suffix) + n * len(chunk)
        p.write(b"".join((
            _STATUS_LINES[200], b"content-type: application/json\r\ncontent-length: %d\r\nx-fake-peer: " % length,
            p.peer_hdr, b"\r\nx-fake-request-id: %d\r\n" % rid, extra,
            b"" if keep_alive else b"connection: close\r\n", b"\r\n", prefix,
        )))
        for i in range(n):
            if p._paused:
                await p.wait_writable()
            if p.closed:
                return
            p.write(chunk)
            if i & 7 == 7:
                await asyncio.sleep(0)
        p.write(suffix)
        if not keep_alive:
            p.close()

    async def _stream(
        self, p: _HttpProtocol, ctl: _Ctl, rid: int, ctype: bytes, events: Iterator[object],
        keep_alive: bool, extra: bytes, kind: str, sse: bool,
    ) -> None:
        if ctl.latency > 0:
            await asyncio.sleep(ctl.latency)
        if p.closed:
            return
        p.write(b"".join((
            _STATUS_LINES[200], b"content-type: ", ctype, b"\r\ntransfer-encoding: chunked\r\n"
            b"cache-control: no-cache\r\nx-fake-peer: ", p.peer_hdr, b"\r\nx-fake-request-id: %d\r\n" % rid,
            extra, b"" if keep_alive else b"connection: close\r\n", b"\r\n",
        )))
        reset_after = ctl.reset_after
        if reset_after == 0:
            await p.reset()
            return
        interval = ctl.interval
        error_after = ctl.error_after
        sent = 0
        for ev in events:
            if sent == error_after:
                break
            if ev is _PAUSE:
                if interval > 0:
                    await asyncio.sleep(interval)
                continue
            assert isinstance(ev, bytes)
            if p._paused:
                await p.wait_writable()
            if p.closed:
                return
            p.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            sent += 1
            if sent == reset_after:
                await p.reset()
                return
            if len(ev) > 16384 and sent & 7 == 0:
                await asyncio.sleep(0)  # fairness when the reader keeps up
        if p._paused:
            await p.wait_writable()
        if error_after >= 0:  # (also when N >= the number of events: error after the last one)
            ev = _stream_error_event(kind, sse, sent)
            p.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev), ev))
        else:
            p.write(b"0\r\n\r\n")
        if not keep_alive:
            p.close()

    @staticmethod
    def _fault_model(needed: bool, family: str, path: str, body: bytes) -> Optional[str]:
        """The request's model, read only when a fault filters by model."""
        if not needed:
            return None
        if family == "gemini":
            return _gemini_model(path)
        try:
            obj = _loads(body) if body else None
        except _JSONDecodeError:
            return None
        m = obj.get("model") if isinstance(obj, dict) else None
        return m if isinstance(m, str) else None

    async def _reset_later(self, p: _HttpProtocol, latency_s: float) -> None:
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        await p.reset()

    def _admin(self, p: _HttpProtocol, method: str, path: str, keep_alive: bool, body: bytes = b"") -> None:
        if path == "/_fake/faults":
            if method == "GET":
                p.send(200, _CT_JSON, _dumps(self.faults.snapshot()), 0, b"", keep_alive)
                return
            if method == "DELETE":
                self.faults.clear()
                p.send(200, _CT_JSON, _dumps(self.faults.snapshot()), 0, b"", keep_alive)
                return
            if method == "POST":
                try:
                    self.faults.configure(_loads(body or b"{}"))
                except (ValueError, TypeError, KeyError) as exc:  # (JSON decode errors are ValueErrors)
                    p.send(400, _CT_JSON, _dumps({"error": {"message": "bad fault document: %s" % exc}}),
                           0, b"", keep_alive)
                    return
                p.send(200, _CT_JSON, _dumps(self.faults.snapshot()), 0, b"", keep_alive)
                return
        if path == "/_fake/health" and method == "GET":
            p.send(200, _CT_JSON, b'{"status":"ok"}', 0, b"", keep_alive)
        elif path == "/_fake/requests" and method == "GET":
            p.send(200, _CT_JSON, _dumps([r.to_dict() for r in self.requests]), 0, b"", keep_alive)
        elif path == "/_fake/requests" and method == "DELETE":
            with self._lock:
                n = len(self._recorded)
                self._recorded.clear()
            p.send(200, _CT_JSON, _dumps({"cleared": n}), 0, b"", keep_alive)
        else:
            p.send(404, _CT_JSON, _error_body("openai", 404, "Invalid URL (%s %s)" % (method, path), 0, True),
                   0, b"", keep_alive)


# ------------------------------------------------------------------------ thread wrapper


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


class FakeProviderThread:
    """Runs a FakeProvider on its own (uv)loop in a daemon thread.  Context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.provider = FakeProvider(host, port, **kwargs)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "FakeProviderThread":
        if self._thread is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = _new_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                try:
                    loop.run_until_complete(self.provider.start())
                except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                    errors.append(exc)
                    return
                finally:
                    ready.set()
                loop.run_forever()
                loop.run_until_complete(self.provider.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = None
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join()

    def __enter__(self) -> "FakeProviderThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.provider.port

    @property
    def url(self) -> str:
        return self.provider.url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.provider.requests

    def clear(self) -> None:
        self.provider.clear()

    @property
    def abandoned(self) -> int:
        return self.provider.abandoned

    @property
    def faults(self) -> Faults:
        """The server-side fault state (thread-safe: add rules from the test's thread)."""
        return self.provider.faults


# ------------------------------------------------------------------------------------ CLI


def _provider_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "latency_ms": args.latency_ms,
        "events": args.events,
        "interval_ms": args.interval_ms,
        "stream_event_bytes": args.stream_event_bytes,
        "max_recorded": args.max_recorded,
        "record": not args.no_record,
        "provider_headers": args.provider_headers,
        "fail_rate": args.fail_rate,
        "fail_seed": args.fail_seed,
        "fail_status": args.fail_status,
        "fail_action": args.fail_action,
        "fail_models": args.fail_model or None,
    }


async def _serve(host: str, port: int, kwargs: dict[str, Any], reuse_port: bool,
                 on_ready: Callable[[int], None]) -> None:
    provider = FakeProvider(host, port, reuse_port=reuse_port, **kwargs)
    await provider.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_ready(provider.port)
    await stop.wait()
    await provider.stop()


def _run_worker(host: str, port: int, kwargs: dict[str, Any], reuse_port: bool,
                on_ready: Callable[[int], None]) -> None:
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(host, port, kwargs, reuse_port, on_ready))
    finally:
        loop.close()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fake_provider", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--interval-ms", type=float, default=0.0)
    ap.add_argument("--stream-event-bytes", type=int, default=65536)
    ap.add_argument("--max-recorded", type=int, default=10000)
    ap.add_argument("--no-record", action="store_true", help="do not record requests (benchmarks)")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the port via SO_REUSEPORT")
    ap.add_argument("--provider-headers", action="store_true",
                    help="send each provider's usual ~20 response headers (rate limits, Cloudflare, ...)")
    ap.add_argument("--fail-rate", type=float, default=0.0,
                    help="fail this fraction of the requests at random (chaos runs)")
    ap.add_argument("--fail-seed", type=int, default=0, help="seed of --fail-rate's choices (per worker)")
    ap.add_argument("--fail-status", type=int, default=503, help="status of --fail-rate's failures")
    ap.add_argument("--fail-action", default="status", choices=("status", "reset", "stall", "stream_reset"),
                    help="what a --fail-rate failure does")
    ap.add_argument("--fail-model", action="append", default=[],
                    help="--fail-rate applies only to this model (repeatable)")
    args = ap.parse_args(argv)
    kwargs = _provider_kwargs(args)

    def announce(port: int) -> None:
        print("listening on %s:%d" % (args.host, port), flush=True)

    if args.workers <= 1:
        _run_worker(args.host, args.port, kwargs, False, announce)
        return 0

    # multi-process: every worker binds the same port with SO_REUSEPORT
    port = args.port
    placeholder: Optional[socket.socket] = None
    if port == 0:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        placeholder = socket.socket(family, socket.SOCK_STREAM)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        placeholder.bind((args.host, 0))
        port = placeholder.getsockname()[1]
    children: list[int] = []
    ready_r, ready_w = os.pipe()
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # child
            os.close(ready_r)
            if placeholder is not None:
                placeholder.close()
            code = 0

            def ready(_port: int) -> None:
                os.write(ready_w, b"1")

            try:
                _run_worker(args.host, port, kwargs, True, ready)
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        children.append(pid)
    os.close(ready_w)
    got = 0
    while got < args.workers:
        chunk = os.read(ready_r, 64)
        if not chunk:
            break
        got += len(chunk)
    os.close(ready_r)
    if placeholder is not None:
        placeholder.close()
    if got < args.workers:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
        print("fake_provider: workers failed to start", file=sys.stderr)
        return 1

    def forward(signum: int, _frame: object) -> None:
        for cpid in children:
            try:
                os.kill(cpid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # Before the announcement: a SIGTERM sent as soon as it is read must reach the workers
    # (it used to kill this parent alone when it came first, leaving the workers serving).
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    announce(port)
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
