"""Pure-Python twin of :mod:`plano_fast.wire._scan` (the compiled byte scanner).

Both modules expose the same API and give the same results; the compiled one walks the raw
bytes once (no JSON objects are built), this one leans on :mod:`json` and small slices.
:mod:`plano_fast.wire` picks whichever is available.  Everything below is the specification
both implementations follow.

Request side (:func:`scan_request`, :func:`rewrite_request`)
------------------------------------------------------------
* The body must be one valid JSON text (RFC 8259, UTF-8, no BOM) whose top-level value is an
  object; otherwise :class:`ScanError`.  ``NaN``/``Infinity`` are rejected (``json.loads``
  would accept them), as is nesting deeper than :data:`MAX_DEPTH`.
* Only *top-level* keys are read (keys are compared after decoding escapes, so
  ``"mod\\u0065l"`` is ``model``).  A member the gateway reads (:data:`DUPLICATE_NAMES`)
  that appears twice is a :class:`ScanError` naming it: parsers disagree on which duplicate
  wins, so the gateway and the provider could read different values.  Other duplicate keys:
  the last one wins, exactly like ``json.loads``.
* ``model``: a string (``None`` when absent or ``null``).  A model whose escapes decode to a
  lone UTF-16 surrogate is rejected (it could not be logged or forwarded as UTF-8).
* ``stream``: a boolean; absent or ``null`` -> ``False`` (the OpenAI API documents
  ``boolean or null``); any other type -> :class:`ScanError`.
* ``stream_options``: an object or ``null``; ``include_usage`` inside it: a boolean or
  ``null`` (-> ``None``).
* ``max_output_tokens`` is the largest non-null of ``max_tokens``, ``max_completion_tokens``,
  ``max_output_tokens`` (top level) and Gemini's ``generationConfig.maxOutputTokens``: it
  bounds a managed reservation, and providers differ on which one wins when several are
  given (vLLM reads ``max_completion_tokens`` first, the others ``max_tokens``).  Each of them, when present and not ``null``, must be
  an integer ``0 <= n <= MAX_TOKEN_COUNT``.
* :func:`rewrite_request` replaces the value of **every** top-level ``model`` member (so a
  duplicate key cannot smuggle another model past an upstream parser that keeps the first
  one), or inserts ``"model":...`` as the first member.  ``inject_include_usage`` inserts
  ``"stream_options":{"include_usage":true}`` as the first member when absent, replaces a
  ``null`` ``stream_options``, inserts ``"include_usage":true`` into an object lacking it, and
  turns every ``false``/``null`` ``include_usage`` into ``true``.  All other bytes are kept.
  When nothing has to change the very same ``bytes`` object is returned.  The model string is
  written like ``json.dumps(model, ensure_ascii=False)`` (``ensure_ascii=True`` if it contains
  lone surrogates).  ``stream_options`` is only valid upstream together with ``stream: true``;
  the caller decides when to ask for it.

Response side (:class:`UsageScanner`)
-------------------------------------
Normalized usage: :class:`Usage` follows one row convention whatever the provider (issue 18),
derived from the provider's documented fields:

* ``input_tokens``: every prompt token the request consumed (uncached + cache read + cache
  write + tool-use prompt);
* ``cache_read_tokens``, ``cache_write_tokens`` (of which ``cache_write_1h_tokens``),
  ``tool_use_prompt_tokens``, ``audio_input_tokens``: subsets of ``input_tokens``;
* ``output_tokens``: every billed output token (visible + reasoning/thinking);
* ``reasoning_tokens``, ``audio_output_tokens``, ``image_output_tokens``: subsets of
  ``output_tokens`` (image: Gemini's generated images, priced at their own rate);
* ``audio_cache_read_tokens``: a subset of ``cache_read_tokens`` (Gemini's cached audio,
  priced at its own rate);
* ``web_search_requests``: server-side web searches, billed per request, not tokens
  (Anthropic ``server_tool_use.web_search_requests``; 0 for the other APIs).

=================  ==========================================  ================================================
API                input side                                  output side
=================  ==========================================  ================================================
OpenAI chat        ``prompt_tokens`` (cached ⊂);               ``completion_tokens`` (reasoning ⊂);
                   cache read ``prompt_tokens_details          reasoning ``completion_tokens_details
                   .cached_tokens`` (else DeepSeek's           .reasoning_tokens``; audio ``.audio_tokens``.
                   ``prompt_cache_hit_tokens``); cache write   When ``total_tokens == prompt + completion +
                   ``.cache_write_tokens``; audio              reasoning`` with reasoning > 0 (xAI reports
                   ``.audio_tokens``                           reasoning outside completion) output =
                                                               completion + reasoning
OpenAI Responses   ``input_tokens``; ``input_tokens_details    ``output_tokens``; ``output_tokens_details
                   .cached_tokens`` / ``.cache_write_tokens``  .reasoning_tokens``
Anthropic          ``input_tokens + cache_read_input_tokens    ``output_tokens``; reasoning
                   + cache_creation_input_tokens``; cache      ``output_tokens_details.thinking_tokens``
                   write = ``cache_creation_input_tokens``
                   (at least ``cache_creation
                   .ephemeral_5m_input_tokens +
                   ephemeral_1h_input_tokens``), 1h part
                   ``ephemeral_1h_input_tokens``
Gemini             ``promptTokenCount +                        ``candidatesTokenCount + thoughtsTokenCount``;
                   toolUsePromptTokenCount``; cache read       reasoning ``thoughtsTokenCount``; audio the
                   ``cachedContentTokenCount``; tool-use       ``AUDIO`` entry of ``candidatesTokensDetails``,
                   ``toolUsePromptTokenCount``; audio the      image its ``IMAGE`` entry
                   ``AUDIO`` entry of ``promptTokensDetails``
                   less that of ``cacheTokensDetails``
                   (cached audio is a cache read: its
                   ``AUDIO`` entry, the cached audio part)
=================  ==========================================  ================================================

``service_tier``: the processing tier the provider says served the request, priced at its
own rates (plano_fast.pricing, "Service tiers"): ``"flex"``, ``"priority"``, ``"unknown"`` (a
name the gateway has no rule for: priced partial) or None (absent, not a string, or a name of
the standard tier: ``default``, ``auto``, ``standard``, ``standard_only``, Groq's
``on_demand``).  OpenAI chat: the top-level ``service_tier`` of the document whose usage
counted (every chunk of a stream carries one; ``x_groq.usage`` takes its document's);
Responses: the top-level one with a top-level ``usage``, else ``response.service_tier``
beside ``response.usage``; Anthropic: ``usage.service_tier`` (merged like the counts: a
later usage object without one keeps the earlier one's); Gemini: none.  It travels with its
usage object: a later document without usage does not change it.

Gemini's ``*TokensDetails`` are ``ModalityTokenCount`` lists (``{"modality", "tokenCount"}``):
such a list must be an array or ``null``; the ``tokenCount`` of an element whose ``modality``
is the string ``"AUDIO"`` is read (absent or ``null``: none; the AUDIO entries add up, capped
at :data:`MAX_TOKEN_COUNT`), and in ``candidatesTokensDetails`` also those of ``"IMAGE"``
elements (the same way); other elements are not read.

A subset larger than its total (a malformed or inconsistent object, e.g. an OpenRouter
recording with ``reasoning_tokens`` 11 > ``completion_tokens`` 10) is capped at what is left
of the total, in the order cache read, cache write, 1h write / tool-use / audio: a row never
holds a negative uncached or visible count.  Totals are never raised to fit a subset.

The provider's own usage objects are kept too (:meth:`UsageScanner.raw_usage`), byte for byte
as received, in a document that scans (same API, not streaming) to the same row: the last
usage object that counted as ``{"usage":U}`` (Gemini ``{"usageMetadata":U}``, wherever it was
found: top level, ``x_groq``, ``response``), with OpenAI's service tier beside it when it is
not the standard one (``{"service_tier":"flex","usage":U}``); for Anthropic, whose objects merge field by
field, every one that counted, in order, ``[{"message":{"usage":START}},{"usage":DELTA},...]``.
``None`` when no usage counted or the document would exceed :data:`MAX_RAW_USAGE_BYTES`
(4 KiB).  The compiled scanner copies the bytes while it walks them.  OpenAI
``/v1/embeddings`` usage (``prompt_tokens``, ``total_tokens``) reads with the chat API.

Where the usage object is looked for, per JSON document (a non-streamed body, or the ``data``
of one SSE event; a top-level array is treated as a sequence of documents, which covers
Gemini's ``streamGenerateContent`` without ``alt=sse``):

* OpenAI chat: top-level ``usage``; when that is absent/``null``, ``x_groq.usage`` (Groq
  without ``include_usage``).  ``"usage": null`` chunks are ignored.
* Responses: top-level ``usage`` (non-streamed) or, when absent/``null``, ``response.usage`` of
  any event (in practice ``response.completed`` / ``response.incomplete`` /
  ``response.failed``; the earlier events carry ``null``, which is ignored).
* Anthropic: top-level ``usage`` (non-streamed body, ``message_delta``) and ``message.usage``
  (``message_start``).  Anthropic fields (including the ones inside ``cache_creation``,
  ``output_tokens_details`` and ``server_tool_use``) are merged one by one, later values win, so ``message_delta``
  counts override ``message_start`` ones when present.  Only a top-level
  ``usage`` sets ``has_usage``: a stream cut after ``message_start`` keeps the input counts
  in the fields but reports ``has_usage=False`` and no output (``output_tokens``,
  ``reasoning_tokens`` 0: ``message_start``'s output count is a placeholder, not a count).
* Gemini: ``usageMetadata`` (cumulative: the last one wins).  It sets ``has_usage`` only
  while the last document carried one that counts: a stream whose last chunk has none
  (the final counts ride on the last chunk, with its ``finishReason``) keeps the earlier
  counts in the fields but reports ``has_usage=False``, as an Anthropic stream without
  its ``message_delta`` usage does (the input counts are final, the output count is not).
* For the other APIs the last usage object seen replaces the previous one entirely.

A usage object counts only when it is an object, at least one of its input/output counts is
present, every count that is present (and not ``null``) is an integer
``0 <= n <= MAX_TOKEN_COUNT`` and every ``*_details`` / ``cache_creation`` /
``server_tool_use`` member that is read is an object or ``null``;
otherwise it is ignored (``has_usage`` stays as it was: never a made-up number).  Absent
counts read as 0.  ``model`` is the top-level ``model`` string (Gemini ``modelVersion``;
Responses ``response.model`` and Anthropic ``message.model`` when the top-level one is
missing); the last one seen wins; strings longer than :data:`MAX_MODEL_BYTES` UTF-8 bytes or
containing lone surrogates are ignored.  ``is_error`` becomes true for any document with a
non-null top-level ``error`` or a top-level ``type`` of ``"error"`` or ``"response.failed"``,
and for any SSE ``event: error`` line.

Validity: a document contributes nothing unless it is entirely valid JSON (same rules as the
request side, except that bytes inside strings are not checked for UTF-8 validity: providers
send valid UTF-8, and checking it would dominate the scan time of non-Latin text; an invalid
key, model or ``type`` string simply never matches).  A non-streamed body is only evaluated at
:meth:`UsageScanner.finish`.

A body (streamed or not) may start with one UTF-8 byte order mark (``EF BB BF``): it is skipped
before anything else is read (WHATWG SSE strips it from an event stream; RFC 8259 §8.1 lets a
JSON parser ignore it, and ``json.loads`` of bytes -- the SDKs' reader -- does), so the usage
billed is the one the client's reader sees.  Only at the very start and only one: bytes that
begin like a BOM and then differ are read as what they are.

Streams (``streaming=True``): the body is SSE unless its first non-whitespace byte is ``{`` or
``[`` (an error returned as plain JSON, or Gemini's JSON-array stream), in which case it is
handled as a non-streamed body.  SSE follows the WHATWG rules: lines end in ``\\n``,
``\\r\\n`` or ``\\r``; ``:`` lines are comments; ``data`` values (one optional leading space
removed) of one event are joined with ``\\n``; a blank line dispatches the event.  ``[DONE]``
and any other non-JSON data are ignored.  Unlike the spec, an event still pending at the end
of the body (no final blank line) is dispatched by :meth:`UsageScanner.finish`: truncated JSON
is invalid anyway, and several recorded Anthropic streams end without the blank line.

Bounded memory (all caps apply identically to both implementations, so billing never depends
on which one is installed):

* :data:`MAX_BODY_BYTES` (32 MiB): a non-streamed body larger than this gives
  ``has_usage=False`` (the twin buffers up to this much; the compiled scanner buffers nothing).
* :data:`MAX_EVENT_BYTES` (8 MiB): an SSE event whose joined data is larger is ignored.
  (The twin buffers at most one line/event of this size; the compiled scanner buffers nothing.)
* :data:`MAX_HOLD_BYTES` (64 KiB): with ``strip_usage_chunk`` the scanner holds back the
  current event until it is complete; an event larger than this is forwarded as it arrives
  and never stripped.
* :data:`MAX_DEPTH` (512) nesting levels.

``strip_usage_chunk`` (OpenAI chat streams only): an event whose data is a JSON object with
``"choices": []``, a ``usage`` object and no non-null ``error`` is removed entirely (its lines
and terminating blank line).  On the other events a single top-level ``"usage":null`` member
(which OpenAI only sends because ``include_usage`` was requested) is removed too, together
with its separating comma, so the client receives the bytes OpenAI would have sent without
``include_usage``.  Events whose data spans several ``data:`` lines are never rewritten.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from plano_fast.wire._shared import (
    API_ANTHROPIC,
    API_GEMINI,
    API_OPENAI_CHAT,
    API_OPENAI_RESPONSES,
    DECODER,
    DUPLICATE_NAMES,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_HOLD_BYTES,
    MAX_KEYS,
    MAX_MODEL_BYTES,
    MAX_RAW_USAGE_BYTES,
    MAX_TOKEN_COUNT,
    MSG_GENERATION_CONFIG_TYPE,
    MSG_INCLUDE_USAGE_TYPE,
    MSG_MODEL_SURROGATE,
    MSG_MODEL_TYPE,
    MSG_NOT_OBJECT,
    MSG_STREAM_OPTIONS_TYPE,
    MSG_STREAM_TYPE,
    ConstantError,
    ScanError,
    encode_json_string,
    has_lone_surrogate,
    msg_duplicate,
    msg_max_type,
)

__all__ = [
    "API_ANTHROPIC",
    "API_GEMINI",
    "API_OPENAI_CHAT",
    "API_OPENAI_RESPONSES",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_HOLD_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_RAW_USAGE_BYTES",
    "MAX_TOKEN_COUNT",
    "RequestFields",
    "ScanError",
    "Usage",
    "UsageScanner",
    "rewrite_request",
    "scan_request",
]

_APIS: Final = (API_OPENAI_CHAT, API_OPENAI_RESPONSES, API_ANTHROPIC, API_GEMINI)
_UNIQUE_TOP: Final = frozenset(n for n in DUPLICATE_NAMES if "." not in n)
_UNIQUE_NESTED: Final = {"stream_options": "include_usage", "generationConfig": "maxOutputTokens"}


# ---------------------------------------------------------------------------------------------
# strict JSON parsing


_STRING_RE: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NON_BRACKET_RE: Final = re.compile(r"[^\[\]{}]+")
_PAIR_RE: Final = re.compile(r"\[\]|\{\}")
_WS_RE: Final = re.compile(r"[ \t\n\r]*")
_EOL_RE: Final = re.compile(rb"[\r\n]")
_JSON_WS: Final = b" \t\r\n"
#: a UTF-8 byte order mark: one at the very start of a response body is skipped (see
#: "Validity" in this module's docstring)
_BOM: Final = b"\xef\xbb\xbf"


def _skip_ws(text: str, pos: int) -> int:
    match = _WS_RE.match(text, pos)
    assert match is not None
    return match.end()


def _too_deep(text: str) -> bool:
    """Whether valid JSON ``text`` nests deeper than MAX_DEPTH (measured on the text itself,
    so containers later replaced by a duplicate key count too)."""
    brackets = _NON_BRACKET_RE.sub("", _STRING_RE.sub("", text))
    if len(brackets) <= 2 * MAX_DEPTH:
        return False
    for _ in range(MAX_DEPTH):
        brackets = _PAIR_RE.sub("", brackets)
        if not brackets:
            return False
    return True


def _loads(data: bytes, lenient: bool = False) -> Any:
    """Parse one strict JSON text from UTF-8 bytes; ScanError on anything malformed.

    ``lenient`` (response side): invalid UTF-8 inside strings is tolerated (it becomes lone
    surrogates, which never match a key nor make a usable model string)."""
    try:
        text = data.decode("utf-8", "surrogateescape" if lenient else "strict")
    except UnicodeDecodeError as exc:
        raise ScanError(f"malformed JSON: invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ScanError(f"malformed JSON: {exc.msg} (character {exc.pos})") from None
    except ConstantError as exc:
        raise ScanError(f"malformed JSON: {exc.args[0]} is not allowed") from None
    except RecursionError:
        raise ScanError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
    if text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(text):
        raise ScanError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
    return obj


# ---------------------------------------------------------------------------------------------
# request side


class RequestFields:
    """What the gateway needs from a request body."""

    __slots__ = ("include_usage", "max_output_tokens", "model", "stream")

    def __init__(
        self,
        model: str | None,
        stream: bool,
        include_usage: bool | None,
        max_output_tokens: int | None,
    ) -> None:
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.max_output_tokens = max_output_tokens

    def __repr__(self) -> str:
        return (
            f"RequestFields(model={self.model!r}, stream={self.stream!r}, "
            f"include_usage={self.include_usage!r}, max_output_tokens={self.max_output_tokens!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestFields):
            return NotImplemented
        return (self.model, self.stream, self.include_usage, self.max_output_tokens) == (
            other.model,
            other.stream,
            other.include_usage,
            other.max_output_tokens,
        )

    __hash__ = None  # type: ignore[assignment]


def _req_count(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:
        raise ScanError(msg_max_type(key))
    return value


def _request_fields(obj: Any) -> RequestFields:
    if type(obj) is not dict:
        raise ScanError(MSG_NOT_OBJECT)
    model = obj.get("model")
    if model is not None:
        if type(model) is not str:
            raise ScanError(MSG_MODEL_TYPE)
        if has_lone_surrogate(model):
            raise ScanError(MSG_MODEL_SURROGATE)
    stream = obj.get("stream")
    if stream is None:
        stream = False
    elif type(stream) is not bool:
        raise ScanError(MSG_STREAM_TYPE)
    include_usage: bool | None = None
    options = obj.get("stream_options")
    if options is not None:
        if type(options) is not dict:
            raise ScanError(MSG_STREAM_OPTIONS_TYPE)
        flag = options.get("include_usage")
        if flag is not None:
            if type(flag) is not bool:
                raise ScanError(MSG_INCLUDE_USAGE_TYPE)
            include_usage = flag
    max_out: int | None = None
    for key in MAX_KEYS:
        count = _req_count(obj.get(key), key)
        if count is not None and (max_out is None or count > max_out):
            max_out = count
    config = obj.get("generationConfig")
    if config is not None:
        if type(config) is not dict:
            raise ScanError(MSG_GENERATION_CONFIG_TYPE)
        count = _req_count(config.get("maxOutputTokens"), "generationConfig.maxOutputTokens")
        if count is not None and (max_out is None or count > max_out):
            max_out = count
    return RequestFields(model, stream, include_usage, max_out)


def _check_body(body: object) -> bytes:
    if type(body) is not bytes:
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    return body


def scan_request(body: bytes) -> RequestFields:
    """Read model / stream / stream_options.include_usage / max tokens from a request body."""
    obj = _loads(_check_body(body))
    if type(obj) is dict:
        _refuse_duplicates(body)
    return _request_fields(obj)


def _refuse_duplicates(body: bytes) -> None:
    """ScanError naming the first member of DUPLICATE_NAMES that is repeated (document
    order, nested ones included); ``body`` is a valid JSON object."""
    text = body.decode("latin-1")
    seen: set[str] = set()
    for key, _, value_start, _ in _members(text, _skip_ws(text, 0)):
        if key not in _UNIQUE_TOP:
            continue
        if key in seen:
            raise ScanError(msg_duplicate(key))
        seen.add(key)
        inner = _UNIQUE_NESTED.get(key)
        if inner is not None and text[value_start] == "{":
            count = sum(1 for m in _members(text, value_start) if m[0] == inner)
            if count > 1:
                raise ScanError(msg_duplicate(f"{key}.{inner}"))


def _members(text: str, pos: int) -> list[tuple[str, int, int, int]]:
    """Members of the (valid) JSON object starting at ``text[pos] == '{'``.

    ``text`` is the body decoded as latin-1, so indexes are byte offsets.  Returns
    ``(key, key_start, value_start, value_end)`` tuples; the key is only meaningful for ASCII
    names (all the names looked up are ASCII)."""
    members: list[tuple[str, int, int, int]] = []
    raw_decode = DECODER.raw_decode
    i = _skip_ws(text, pos + 1)
    if text[i] == "}":
        return members
    while True:
        key_start = i
        key, i = raw_decode(text, i)
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # skip ":"
        value_start = i
        _, i = raw_decode(text, i)
        members.append((key, key_start, value_start, i))
        i = _skip_ws(text, i)
        if text[i] == "}":
            return members
        i = _skip_ws(text, i + 1)  # skip ","


_INCLUDE_USAGE_OBJECT: Final = b'{"include_usage":true}'


def rewrite_request(
    body: bytes, model: str | None = None, inject_include_usage: bool = False
) -> bytes:
    """Return ``body`` with the model replaced/inserted and/or include_usage forced on.

    Returns the same object when nothing had to change."""
    scan_request(body)  # validate first
    encoded = None if model is None else encode_json_string(model)
    if encoded is None and not inject_include_usage:
        return body
    text = body.decode("latin-1")
    root = _skip_ws(text, 0)
    members = _members(text, root)
    edits: list[tuple[int, int, bytes]] = []
    inserts: list[bytes] = []
    if encoded is not None:
        occurrences = [m for m in members if m[0] == "model"]
        if not occurrences:
            inserts.append(b'"model":' + encoded)
        for _, _, start, end in occurrences:
            if body[start:end] != encoded:
                edits.append((start, end, encoded))
    if inject_include_usage:
        occurrences = [m for m in members if m[0] == "stream_options"]
        if not occurrences:
            inserts.append(b'"stream_options":' + _INCLUDE_USAGE_OBJECT)
        for _, _, start, end in occurrences:
            if body[start] != 0x7B:  # null (or an earlier duplicate of another type)
                edits.append((start, end, _INCLUDE_USAGE_OBJECT))
                continue
            inner = _members(text, start)
            flags = [m for m in inner if m[0] == "include_usage"]
            if not flags:
                edits.append((start + 1, start + 1, b'"include_usage":true' + (b"," if inner else b"")))
            for _, _, fstart, fend in flags:
                if body[fstart:fend] != b"true":
                    edits.append((fstart, fend, b"true"))
    if inserts:
        edits.append((root + 1, root + 1, b",".join(inserts) + (b"," if members else b"")))
    if not edits:
        return body
    edits.sort()
    out: list[bytes] = []
    pos = 0
    for start, end, replacement in edits:
        out.append(body[pos:start])
        out.append(replacement)
        pos = end
    out.append(body[pos:])
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# response side


class Usage:
    """Token usage read from a response body or stream."""

    __slots__ = (
        "audio_cache_read_tokens",
        "audio_input_tokens",
        "audio_output_tokens",
        "cache_read_tokens",
        "cache_write_1h_tokens",
        "cache_write_tokens",
        "has_usage",
        "image_output_tokens",
        "input_tokens",
        "is_error",
        "model",
        "output_tokens",
        "reasoning_tokens",
        "service_tier",
        "tool_use_prompt_tokens",
        "web_search_requests",
    )

    def __init__(
        self,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        has_usage: bool = False,
        model: str | None = None,
        is_error: bool = False,
        tool_use_prompt_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        audio_input_tokens: int = 0,
        audio_output_tokens: int = 0,
        web_search_requests: int = 0,
        service_tier: str | None = None,
        image_output_tokens: int = 0,
        audio_cache_read_tokens: int = 0,
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens
        self.has_usage = has_usage
        self.model = model
        self.is_error = is_error
        self.tool_use_prompt_tokens = tool_use_prompt_tokens
        self.cache_write_1h_tokens = cache_write_1h_tokens
        self.audio_input_tokens = audio_input_tokens
        self.audio_output_tokens = audio_output_tokens
        self.web_search_requests = web_search_requests
        self.service_tier = service_tier
        self.image_output_tokens = image_output_tokens
        self.audio_cache_read_tokens = audio_cache_read_tokens

    def _key(self) -> tuple[object, ...]:
        return (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
            self.has_usage,
            self.model,
            self.is_error,
            self.tool_use_prompt_tokens,
            self.cache_write_1h_tokens,
            self.audio_input_tokens,
            self.audio_output_tokens,
            self.web_search_requests,
            self.service_tier,
            self.image_output_tokens,
            self.audio_cache_read_tokens,
        )

    def __repr__(self) -> str:
        return (
            f"Usage(input_tokens={self.input_tokens}, output_tokens={self.output_tokens}, "
            f"cache_read_tokens={self.cache_read_tokens}, "
            f"cache_write_tokens={self.cache_write_tokens}, "
            f"reasoning_tokens={self.reasoning_tokens}, has_usage={self.has_usage}, "
            f"model={self.model!r}, is_error={self.is_error}, "
            f"tool_use_prompt_tokens={self.tool_use_prompt_tokens}, "
            f"cache_write_1h_tokens={self.cache_write_1h_tokens}, "
            f"audio_input_tokens={self.audio_input_tokens}, "
            f"audio_output_tokens={self.audio_output_tokens}, "
            f"web_search_requests={self.web_search_requests}, "
            f"service_tier={self.service_tier!r}, "
            f"image_output_tokens={self.image_output_tokens}, "
            f"audio_cache_read_tokens={self.audio_cache_read_tokens})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


class _Bad(Exception):
    pass


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:
        raise _Bad
    return value


def _details(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise _Bad
    return value


def _modality(value: Any, modality: str = "AUDIO") -> int | None:
    """Gemini's ``modality`` tokens in a ``ModalityTokenCount`` list (``promptTokensDetails``,
    ``cacheTokensDetails``, ``candidatesTokensDetails``): the sum of the ``tokenCount`` of
    the elements whose ``modality`` is that string (capped at MAX_TOKEN_COUNT), None when
    there is none.  The list must be an array or null; the other elements are not read."""
    if value is None:
        return None
    if type(value) is not list:
        raise _Bad
    total: int | None = None
    for element in value:
        if type(element) is dict and element.get("modality") == modality:
            count = _count(element.get("tokenCount"))
            if count is not None:
                total = count if total is None else min(total + count, MAX_TOKEN_COUNT)
    return total


# Service tiers, as raw codes (the compiled scanner's TIER_*): absent, a standard tier by
# one of its names, flex, priority, another name (priced partial: plano_fast.pricing)
_TIER_STANDARD, _TIER_FLEX, _TIER_PRIORITY, _TIER_OTHER = 1, 2, 3, 4
_STANDARD_TIERS: Final = frozenset(("default", "auto", "standard", "standard_only", "on_demand"))
#: ``Usage.service_tier`` by raw code: None for the standard tier
TIER_NAMES: Final = (None, None, "flex", "priority", "unknown")


def _tier_code(value: Any) -> int | None:
    """The raw code of a ``service_tier`` value: None when it is no string (absent, null,
    another type), else standard (``default``, ``auto``, ``standard``, ``standard_only``,
    Groq's ``on_demand``), flex, priority, or other for any other name."""
    if type(value) is not str:
        return None
    if value == "flex":
        return _TIER_FLEX
    if value == "priority":
        return _TIER_PRIORITY
    return _TIER_STANDARD if value in _STANDARD_TIERS else _TIER_OTHER


# Raw fields, in this order (absent: None): the provider's own counts (and the service tier
# code), nothing derived.
_IN, _OUT, _CR, _CW, _RS, _TOOL, _CW5, _CW1H, _AIN, _AOUT, _TOT, _WS, _CAUD, _TIER, _IOUT = range(15)
_NRAW: Final = 15
_Counts = tuple[int | None, ...]


def _usage_counts(api: int, usage: Any) -> _Counts | None:
    """The raw fields (see ``_IN``...) with None for absent, or None when the usage object
    does not count."""
    if type(usage) is not dict:
        return None
    raw: list[int | None] = [None] * _NRAW
    try:
        if api == API_OPENAI_CHAT or api == API_OPENAI_RESPONSES:
            chat = api == API_OPENAI_CHAT
            raw[_IN] = _count(usage.get("prompt_tokens" if chat else "input_tokens"))
            raw[_OUT] = _count(usage.get("completion_tokens" if chat else "output_tokens"))
            in_details = _details(
                usage.get("prompt_tokens_details" if chat else "input_tokens_details")
            )
            out_details = _details(
                usage.get("completion_tokens_details" if chat else "output_tokens_details")
            )
            raw[_CR] = _count(in_details.get("cached_tokens"))
            raw[_CW] = _count(in_details.get("cache_write_tokens"))
            raw[_RS] = _count(out_details.get("reasoning_tokens"))
            if chat:
                hit = _count(usage.get("prompt_cache_hit_tokens"))  # DeepSeek
                if raw[_CR] is None:
                    raw[_CR] = hit
                raw[_AIN] = _count(in_details.get("audio_tokens"))
                raw[_AOUT] = _count(out_details.get("audio_tokens"))
                raw[_TOT] = _count(usage.get("total_tokens"))
        elif api == API_ANTHROPIC:
            raw[_IN] = _count(usage.get("input_tokens"))
            raw[_OUT] = _count(usage.get("output_tokens"))
            raw[_CR] = _count(usage.get("cache_read_input_tokens"))
            raw[_CW] = _count(usage.get("cache_creation_input_tokens"))
            creation = _details(usage.get("cache_creation"))
            raw[_CW5] = _count(creation.get("ephemeral_5m_input_tokens"))
            raw[_CW1H] = _count(creation.get("ephemeral_1h_input_tokens"))
            raw[_RS] = _count(_details(usage.get("output_tokens_details")).get("thinking_tokens"))
            raw[_WS] = _count(_details(usage.get("server_tool_use")).get("web_search_requests"))
            raw[_TIER] = _tier_code(usage.get("service_tier"))
        else:
            raw[_IN] = _count(usage.get("promptTokenCount"))
            raw[_OUT] = _count(usage.get("candidatesTokenCount"))
            raw[_CR] = _count(usage.get("cachedContentTokenCount"))
            raw[_RS] = _count(usage.get("thoughtsTokenCount"))
            raw[_TOOL] = _count(usage.get("toolUsePromptTokenCount"))
            raw[_AIN] = _modality(usage.get("promptTokensDetails"))
            raw[_CAUD] = _modality(usage.get("cacheTokensDetails"))
            candidates = usage.get("candidatesTokensDetails")
            raw[_AOUT] = _modality(candidates)
            raw[_IOUT] = _modality(candidates, "IMAGE")
    except _Bad:
        return None
    if raw[_IN] is None and raw[_OUT] is None:
        return None
    return tuple(raw)


def _normalize(api: int, v: list[int]) -> Usage:
    """The row convention (module docstring, "Normalized usage") from raw fields."""
    cw1h = tool = ain = aout = ws = iout = acr = 0
    if api == API_ANTHROPIC:
        cr = v[_CR]
        cw = max(v[_CW], v[_CW5] + v[_CW1H])
        cw1h = v[_CW1H]
        inp = v[_IN] + cr + cw
        out = v[_OUT]
        rs = v[_RS]
        ws = v[_WS]
    elif api == API_GEMINI:
        tool = v[_TOOL]
        inp = v[_IN] + tool
        cr = v[_CR]
        cw = 0
        rs = v[_RS]
        out = v[_OUT] + rs
        # audio is priced apart (ai.google.dev/gemini-api/docs/pricing); cached audio is a
        # cache read (in cachedContentTokenCount), not an uncached audio token
        ain = max(v[_AIN] - v[_CAUD], 0)
        aout = v[_AOUT]
        # ... as are generated images ($30 per 1M for gemini-2.5-flash-image, its text $2.50)
        # and cached audio (the cache read's audio part)
        iout = v[_IOUT]
        acr = v[_CAUD]
    else:
        inp = v[_IN]
        cr = v[_CR]
        cw = v[_CW]
        rs = v[_RS]
        out = v[_OUT]
        if api == API_OPENAI_CHAT:
            ain = v[_AIN]
            aout = v[_AOUT]
            if rs > 0 and v[_TOT] == inp + out + rs:
                out += rs  # reasoning reported outside completion_tokens (xAI)
    cr = min(cr, inp)
    cw = min(cw, inp - cr)
    aout = min(aout, out)
    return Usage(
        inp,
        out,
        cr,
        cw,
        min(rs, out),
        tool_use_prompt_tokens=min(tool, inp),
        cache_write_1h_tokens=min(cw1h, cw),
        audio_input_tokens=min(ain, inp - cr - cw),
        audio_output_tokens=aout,
        web_search_requests=ws,
        service_tier=TIER_NAMES[v[_TIER]],
        image_output_tokens=min(iout, out - aout),
        audio_cache_read_tokens=min(acr, cr),
    )


def _good_model(value: Any) -> str | None:
    if type(value) is not str:
        return None
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value if len(raw) <= MAX_MODEL_BYTES else None


_NESTED: Final = {
    API_OPENAI_CHAT: "x_groq",
    API_OPENAI_RESPONSES: "response",
    API_ANTHROPIC: "message",
}


class _Acc:
    __slots__ = ("counts", "has_usage", "is_error", "model", "raw", "raw_set")

    def __init__(self) -> None:
        self.counts = [0] * _NRAW
        self.has_usage = False
        self.is_error = False
        self.model: str | None = None
        # the provider's usage object(s) as received, wrapped (see _raw_piece); None: the
        # document would be larger than MAX_RAW_USAGE_BYTES
        self.raw_set = False
        self.raw: bytes | None = b""


def _elements(text: str, pos: int) -> list[int]:
    """Start offsets of the elements of the (valid) JSON array at ``text[pos] == '['``."""
    starts: list[int] = []
    raw_decode = DECODER.raw_decode
    i = _skip_ws(text, pos + 1)
    if text[i] == "]":
        return starts
    while True:
        starts.append(i)
        _, i = raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] == "]":
            return starts
        i = _skip_ws(text, i + 1)


def _raw_member(payload: bytes, text: str, pos: int, path: tuple[str, ...]) -> bytes:
    """The bytes of the value at ``path`` (last duplicate wins at each level) in the object
    at ``pos``."""
    for key in path:
        hits = [m for m in _members(text, pos) if m[0] == key]
        start, end = hits[-1][2], hits[-1][3]
        pos = start
    return payload[start:end]


def _raw_piece(acc: _Acc, api: int, usage: bytes, nested: bool, tier: int | None = None) -> None:
    """Record a usage object that counted: its document piece replaces the previous one
    (``{"usage":U}``, Gemini ``{"usageMetadata":U}``; OpenAI's with the service tier that
    came with it, ``{"service_tier":"flex","usage":U}``, when not the standard one), or for
    Anthropic, whose objects merge field by field (the tier inside), is appended after a
    comma (``{"message":{"usage":U}}`` for message_start's).  The whole, with Anthropic's
    ``[`` ``]``, stays within MAX_RAW_USAGE_BYTES, else it is dropped (None)."""
    acc.raw_set = True
    if api == API_GEMINI:
        piece = b'{"usageMetadata":' + usage + b"}"
    elif api == API_ANTHROPIC and nested:
        piece = b'{"message":{"usage":' + usage + b"}}"
    elif tier is not None and tier > _TIER_STANDARD:
        name = TIER_NAMES[tier]
        assert name is not None
        piece = b'{"service_tier":"' + name.encode() + b'","usage":' + usage + b"}"
    else:
        piece = b'{"usage":' + usage + b"}"
    if api == API_ANTHROPIC:
        if acc.raw is None:
            return
        piece = acc.raw + b"," + piece if acc.raw else piece
    acc.raw = piece if len(piece) <= MAX_RAW_USAGE_BYTES - 2 else None


class _Doc:
    """Where a parsed document sits in its payload (to copy usage objects as received)."""

    __slots__ = ("payload", "pos", "text")

    def __init__(self, payload: bytes, text: str, pos: int) -> None:
        self.payload = payload
        self.text = text
        self.pos = pos


def _apply_doc(acc: _Acc, api: int, doc: dict[str, Any], where: _Doc) -> None:
    if doc.get("error") is not None or doc.get("type") in ("error", "response.failed"):
        acc.is_error = True
    nested_name = _NESTED.get(api)
    nested = doc.get(nested_name) if nested_name is not None else None
    if type(nested) is not dict:
        nested = None
    model = _good_model(doc.get("modelVersion" if api == API_GEMINI else "model"))
    if model is None and nested is not None and api != API_OPENAI_CHAT:
        model = _good_model(nested.get("model"))
    if model is not None:
        acc.model = model
    top_name = "usageMetadata" if api == API_GEMINI else "usage"
    top = doc.get(top_name)
    inner = nested.get("usage") if nested is not None else None
    top_path = (top_name,)
    inner_path = (nested_name or "", "usage")
    if api == API_ANTHROPIC:
        for usage, final, path in ((inner, False, inner_path), (top, True, top_path)):
            if usage is None:
                continue
            counts = _usage_counts(api, usage)
            if counts is None:
                continue
            for i, value in enumerate(counts):
                if value is not None:
                    acc.counts[i] = value
            _raw_piece(acc, api, _raw_member(where.payload, where.text, where.pos, path), not final)
            if final:
                acc.has_usage = True
        return
    usage, path = (top, top_path) if top is not None else (inner, inner_path)
    counts = None if usage is None else _usage_counts(api, usage)
    if counts is not None:
        acc.counts = [0 if value is None else value for value in counts]
        if api != API_GEMINI:
            # OpenAI's tier sits beside the usage object: the document's (chat, Groq's
            # x_groq.usage included), or the response object's (Responses)
            holder = nested if top is None and api == API_OPENAI_RESPONSES else doc
            acc.counts[_TIER] = _tier_code(holder.get("service_tier") if holder is not None else None) or 0
        acc.has_usage = True
        _raw_piece(acc, api, _raw_member(where.payload, where.text, where.pos, path), False, acc.counts[_TIER])
    elif api == API_GEMINI:
        # Gemini's usageMetadata is cumulative and the final one rides on the last chunk:
        # a document after it without one leaves counts that are not the final ones (the
        # input is, the output is short), so the usage is not complete (the fields stay).
        acc.has_usage = False


def _apply_value(acc: _Acc, api: int, value: Any, payload: bytes) -> None:
    text = payload.decode("latin-1")
    root = _skip_ws(text, 0)
    if type(value) is dict:
        _apply_doc(acc, api, value, _Doc(payload, text, root))
    elif type(value) is list:
        starts: list[int] | None = None
        for i, item in enumerate(value):
            if type(item) is dict:
                if starts is None:
                    starts = _elements(text, root)
                _apply_doc(acc, api, item, _Doc(payload, text, starts[i]))


def _raw_document(api: int, acc: _Acc) -> bytes | None:
    """``UsageScanner.raw_usage``: the usage object(s) in a re-scannable document."""
    if not acc.has_usage or not acc.raw_set or not acc.raw:
        return None
    return b"[" + acc.raw + b"]" if api == API_ANTHROPIC else acc.raw


def _usage_only(value: Any) -> bool:
    return (
        type(value) is dict
        and value.get("choices") == []
        and type(value.get("choices")) is list
        and type(value.get("usage")) is dict
        and value.get("error") is None
    )


def _usage_null_span(payload: bytes) -> tuple[int, int] | None:
    """Byte span to cut so the single top-level ``"usage":null`` member disappears."""
    text = payload.decode("latin-1")
    root = _skip_ws(text, 0)
    members = _members(text, root)
    hits = [i for i, m in enumerate(members) if m[0] == "usage"]
    if len(hits) != 1:
        return None
    i = hits[0]
    key, key_start, value_start, value_end = members[i]
    if payload[value_start:value_end] != b"null":
        return None
    if i > 0:
        return (members[i - 1][3], value_end)
    if len(members) > 1:
        return (key_start, members[1][1])
    return (key_start, value_end)


_M_UNDECIDED: Final = 0
_M_SSE: Final = 1
_M_JSON: Final = 2
_KEEP: Final = 0
_DROP: Final = 1
_LINE_CAP: Final = MAX_EVENT_BYTES + 16
_INVALID: Final = object()


class UsageScanner:
    """Incremental usage reader for one response body (see the module docstring)."""

    __slots__ = (
        "_acc",
        "_api",
        "_bom",
        "_data_first_offset",
        "_data_len",
        "_data_lines",
        "_data_over",
        "_data_parts",
        "_decision",
        "_decision_pending",
        "_finished",
        "_flushed",
        "_held",
        "_json_len",
        "_json_over",
        "_json_parts",
        "_line",
        "_line_len",
        "_line_offset",
        "_line_trunc",
        "_mode",
        "_pending_cr",
        "_region_len",
        "_strip",
    )

    def __init__(self, api: int, streaming: bool, strip_usage_chunk: bool = False) -> None:
        if api not in _APIS:
            raise ValueError(f"unknown api {api!r}")
        if strip_usage_chunk and (api != API_OPENAI_CHAT or not streaming):
            raise ValueError(
                "strip_usage_chunk is only supported for streamed OpenAI chat completions"
            )
        self._api = api
        self._strip = bool(strip_usage_chunk)
        self._mode = _M_UNDECIDED if streaming else _M_JSON
        self._finished = False
        self._acc = _Acc()
        #: bytes of a leading BOM seen so far; -1 once the body's start is decided
        self._bom = 0
        self._json_parts: list[bytes] = []
        self._json_len = 0
        self._json_over = False
        self._line: list[bytes] = []
        self._line_len = 0
        self._line_trunc = False
        self._line_offset = 0
        self._pending_cr = False
        self._data_parts: list[bytes] = []
        self._data_len = 0
        self._data_lines = 0
        self._data_over = False
        self._data_first_offset = 0
        self._held = bytearray()
        self._region_len = 0
        self._flushed = False
        self._decision: int | tuple[int, int] = _KEEP
        self._decision_pending = False

    # -- public API --------------------------------------------------------------------------

    def feed_from(self, data: bytes, start: int) -> bytes | None:
        """``feed(data[start:])``: None when the bytes to forward are exactly
        ``data[start:]``, else those bytes (the compiled scanner's saves the slice)."""
        if not 0 <= start <= len(data):
            raise ValueError("start is outside data")
        piece = data[start:]
        out = self.feed(piece)
        return None if out is piece else out

    def feed(self, data: bytes) -> bytes:
        if type(data) is not bytes:
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if self._finished:
            raise ValueError("feed() called after finish()")
        if not data:
            return data
        skip = 0
        if self._bom >= 0:
            skip = self._take_bom(data)
            if self._bom > 0:  # the body so far is the start of a BOM: nothing to read yet
                if self._strip:
                    held: list[bytes] = []
                    self._region_add(data, held)
                    return b"".join(held)
                return data
        piece = data[skip:] if skip else data
        mode = self._mode
        if mode == _M_JSON:
            self._json_add(piece)
            return data
        if mode == _M_UNDECIDED:
            rest = piece.lstrip(_JSON_WS)
            if rest and rest[0] in b"{[":
                self._mode = _M_JSON
                self._json_add(rest)
                if self._strip and self._held:
                    kept = bytes(self._held)
                    self._held.clear()
                    return kept + data
                return data
            if rest:
                self._mode = _M_SSE
        if not self._strip:
            if piece:
                self._sse(piece, None)
            return data
        out: list[bytes] = []
        if skip:
            self._region_add(data[:skip], out)  # (the BOM goes to the client with the first event)
        if piece:
            self._sse(piece, out)
        if len(out) == 1 and out[0] == data:
            return data
        return b"".join(out)

    def _take_bom(self, data: bytes) -> int:
        """At the body's start: how many bytes of ``data`` continue a leading UTF-8 BOM (all
        of them while it is incomplete).  When the body turns out not to start with one, the
        bytes taken by earlier feeds are read as what they are -- JSON text (then invalid)
        or the start of an SSE line's field name -- and ``data`` is read from its start."""
        have = self._bom
        n = len(data)
        i = 0
        while i < n and have + i < 3 and data[i] == _BOM[have + i]:
            i += 1
        if have + i == 3:
            self._bom = -1
            return i
        if i == n:
            self._bom = have + i
            return n
        self._bom = -1
        if have:
            if self._mode == _M_JSON:
                self._json_add(_BOM[:have])
            else:
                self._mode = _M_SSE
                self._line_add(_BOM[:have])
        return 0

    def finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        if self._mode == _M_JSON:
            if not self._json_over and self._json_parts:
                self._eval(b"".join(self._json_parts))
            self._json_parts = []
            return b""
        out: list[bytes] | None = [] if self._strip else None
        self._pending_cr = False
        if out is not None and self._decision_pending:
            self._apply_decision(out)
        if self._line_len:
            self._end_line()
        if self._data_lines:
            self._dispatch()
        if out is not None:
            self._apply_decision(out)
            return b"".join(out)
        return b""

    def raw_usage(self) -> bytes | None:
        """The provider's usage object(s) exactly as received, wrapped in a document that
        scans (``UsageScanner(api, streaming=False)``) to the same counts: the last usage
        object that counted as ``{"usage":U}`` (Gemini ``{"usageMetadata":U}``); for
        Anthropic, whose objects merge field by field, every one that counted, in order:
        ``[{"message":{"usage":START}},{"usage":DELTA},...]``.  ``None`` when no usage
        counted or the document would be longer than :data:`MAX_RAW_USAGE_BYTES`."""
        return _raw_document(self._api, self._acc)

    def usage_fields(self) -> tuple[object, ...]:
        """``result()._key() + (raw_usage(),)``: the counts, the model, the error flag and
        the raw usage document in one call (the compiled scanner's saves the settle step
        three calls: ``gateway/_settle.pyx``)."""
        return (*self.result()._key(), self.raw_usage())

    def result(self) -> Usage:
        acc = self._acc
        usage = _normalize(self._api, acc.counts)
        if self._api == API_ANTHROPIC and not acc.has_usage:
            # Only message_start's usage counted (no top-level one): its output_tokens is a
            # placeholder (1), not a count; a row column of "every billed output token"
            # (README "Usage rows") must not sum it: no output reported, the input stays.
            usage.output_tokens = usage.reasoning_tokens = usage.audio_output_tokens = 0
        usage.has_usage = acc.has_usage
        usage.model = acc.model
        usage.is_error = acc.is_error
        return usage

    # -- non-streamed JSON --------------------------------------------------------------------

    def _json_add(self, data: bytes) -> None:
        if self._json_over:
            return
        self._json_len += len(data)
        if self._json_len > MAX_BODY_BYTES:
            self._json_over = True
            self._json_parts = []
        else:
            self._json_parts.append(data)

    def _eval(self, payload: bytes) -> Any:
        try:
            value = _loads(payload, lenient=True)
        except ScanError:
            return _INVALID
        _apply_value(self._acc, self._api, value, payload)
        return value

    # -- SSE ------------------------------------------------------------------------------------

    def _sse(self, data: bytes, out: list[bytes] | None) -> None:
        n = len(data)
        pos = 0
        if self._pending_cr:
            self._pending_cr = False
            if data[0] == 0x0A:
                pos = 1
                if out is not None:
                    self._region_add(data[:1], out)
        if out is not None and self._decision_pending:
            self._apply_decision(out)
        search = _EOL_RE.search
        while pos < n:
            match = search(data, pos)
            if match is None:
                piece = data[pos:]
                self._line_add(piece)
                if out is not None:
                    self._region_add(piece, out)
                return
            eol = match.start()
            self._line_add(data[pos:eol])
            nxt = eol + 1
            if data[eol] == 0x0D:
                if nxt < n:
                    if data[nxt] == 0x0A:
                        nxt += 1
                else:
                    self._pending_cr = True
            if out is not None:
                self._region_add(data[pos:nxt], out)
            if self._end_line() and out is not None and not self._pending_cr:
                self._apply_decision(out)
            pos = nxt

    def _line_add(self, piece: bytes) -> None:
        if self._line_len == 0:
            self._line_offset = self._region_len
        if not piece:
            return
        if not self._line_trunc:
            if self._line_len + len(piece) <= _LINE_CAP:
                self._line.append(piece)
            else:
                head = (b"".join(self._line) + piece)[:16]
                self._line = [head]
                self._line_trunc = True
        self._line_len += len(piece)

    def _end_line(self) -> bool:
        """Process the buffered line; True when it was blank (event dispatched)."""
        if self._line_len == 0:
            self._dispatch()
            if self._strip:
                self._decision_pending = True
            return True
        line = b"".join(self._line)
        total = self._line_len
        trunc = self._line_trunc
        offset = self._line_offset
        self._line = []
        self._line_len = 0
        self._line_trunc = False
        if line[0] == 0x3A:  # ':' comment
            return False
        colon = line.find(b":")
        if colon < 0:
            field = line
            value = b""
            value_start = total
        else:
            field = line[:colon]
            value_start = colon + 1
            if line[value_start : value_start + 1] == b" ":
                value_start += 1
            value = line[value_start:]
        if field == b"data":
            self._data_line(value, total - value_start, trunc, offset + value_start)
        elif field == b"event" and not trunc and value == b"error":
            self._acc.is_error = True
        return False

    def _data_line(self, value: bytes, length: int, trunc: bool, offset: int) -> None:
        self._data_lines += 1
        if self._data_lines == 1:
            self._data_first_offset = offset
        else:
            length += 1
        self._data_len += length
        if self._data_over:
            return
        if trunc or self._data_len > MAX_EVENT_BYTES:
            self._data_over = True
            self._data_parts = []
        else:
            self._data_parts.append(value)

    def _dispatch(self) -> None:
        decision: int | tuple[int, int] = _KEEP
        if self._data_lines and not self._data_over:
            payload = b"\n".join(self._data_parts)
            value = self._eval(payload)
            if self._strip and type(value) is dict:
                if _usage_only(value):
                    decision = _DROP
                elif self._data_lines == 1 and "usage" in value and value["usage"] is None:
                    span = _usage_null_span(payload)
                    if span is not None:
                        base = self._data_first_offset
                        decision = (base + span[0], base + span[1])
        self._data_parts = []
        self._data_len = 0
        self._data_lines = 0
        self._data_over = False
        self._decision = decision

    # -- strip_usage_chunk: hold back the current event ------------------------------------------

    def _region_add(self, piece: bytes, out: list[bytes]) -> None:
        self._region_len += len(piece)
        if self._flushed:
            out.append(piece)
            return
        self._held += piece
        if self._region_len > MAX_HOLD_BYTES:
            out.append(bytes(self._held))
            self._held.clear()
            self._flushed = True

    def _apply_decision(self, out: list[bytes]) -> None:
        decision = self._decision
        if not self._flushed and self._region_len <= MAX_HOLD_BYTES:
            if decision == _DROP:
                pass
            elif isinstance(decision, tuple):
                start, end = decision
                out.append(bytes(self._held[:start]) + bytes(self._held[end:]))
            elif self._held:
                out.append(bytes(self._held))
        elif self._held:
            out.append(bytes(self._held))
        self._held.clear()
        self._region_len = 0
        self._flushed = False
        self._decision = _KEEP
        self._decision_pending = False
