"""Streaming conversion: upstream SSE bytes in one format -> client SSE bytes in another.

``StreamConverter(source, target, client_model=...)`` is fed the raw upstream body in
chunks split anywhere (``feed``) and returns the client's bytes for each chunk (possibly
``b""``); ``finish()`` at the end of the upstream body flushes and closes the stream.

Pipeline: framing (``_sse.py``: SSE, or Gemini's JSON-array form detected from the first
byte) -> one ``json.loads`` per event -> a *source* parser below that calls a *target*
emitter (``_stream_emit.py``) which keeps the client format's invariants:

* Anthropic: message_start -> content_block_start -> deltas -> content_block_stop ->
  message_delta -> message_stop; never message_stop without message_start, at most one
  message_stop, a minimal envelope when the upstream sent only ``[DONE]``, nothing after
  message_stop, ``ping`` never forwarded; message_delta is held until OpenAI's usage chunk.
* OpenAI: role chunk, deltas, one finish chunk, usage chunk (``include_usage``), ``[DONE]``.
* Gemini: ``\\r\\n\\r\\n``-separated ``GenerateContentResponse`` events, finishReason and
  usageMetadata on the last.

End of stream: the upstream *completed* when it sent its terminator or a stop reason
(``[DONE]`` / ``finish_reason``; ``message_stop`` / ``message_delta.stop_reason``;
``finishReason``).  Then ``finish()`` synthesizes whatever terminators the client format
still needs.  Otherwise the upstream was cut: ``finish()`` emits nothing that would
pretend completion and sets ``truncated = True`` (the caller may then send
``error_event(...)``).  A mid-stream upstream error becomes the client format's error
event and sets ``errored``; it is not ``truncated``.

``usage`` holds the upstream's own counts, exactly as ``plano_fast.wire._scan_py.UsageScanner``
reads them from the upstream bytes (``wire_format`` = the source format), so converted
traffic is billed with the upstream provider's usage semantics.  Mid-stream JSON that
does not parse, or one event over ``max_event_bytes``, raises :class:`ConversionError` (502).
"""

from __future__ import annotations

import time
from typing import Any

from plano_fast.convert._common import (
    CLIENT_FORMATS,
    JSONDict,
    Usage,
    as_dict,
    check_format,
    count,
    dumps_str,
    loads,
    stop_from,
    synth_call_id,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai,
)
from plano_fast.convert._sse import MAX_EVENT_BYTES, JSONArrayParser, SSEParser
from plano_fast.convert._request_responses import json_tool_for
from plano_fast.convert._responses_out import echo_fields
from plano_fast.convert._stream_emit import EMITTERS, Emitter, render_stream_error
from plano_fast.convert._stream_responses import ResponsesEmitter
from plano_fast.convert.errors import ConversionError, ErrorInfo, error_info_from
from plano_fast.wire import API_ANTHROPIC, API_GEMINI, API_OPENAI_CHAT, counts_as_usage

__all__ = ["StreamConverter", "MAX_EVENT_BYTES"]


def _invalid_json(source: str) -> ConversionError:
    return ConversionError(f"upstream {source} stream sent an event that is not JSON", status=502)


class _Source:
    """Base of the per-format stream parsers."""

    __slots__ = ("em", "usage", "started", "finished", "completed", "errored")

    fmt = ""

    def __init__(self, em: Emitter, usage: dict[str, Any]) -> None:
        self.em = em
        self.usage = usage
        self.started = False
        self.finished = False  # a stop reason was seen
        self.completed = False  # the format's terminator was seen
        self.errored = False

    def event(self, name: str | None, payload: bytes) -> None:
        raise NotImplementedError

    def _loads(self, payload: bytes) -> Any:
        try:
            return loads(payload)
        except ValueError:
            raise _invalid_json(self.fmt) from None

    def _record(self, inp: object, out: object, read: object, write: object, reasoning: object) -> None:
        u = self.usage
        u["input_tokens"] = count(inp) or 0
        u["output_tokens"] = count(out) or 0
        u["cache_read_tokens"] = count(read) or 0
        u["cache_write_tokens"] = count(write) or 0
        u["reasoning_tokens"] = count(reasoning) or 0
        u["has_usage"] = True


class _OpenAISource(_Source):
    __slots__ = ("tools", "upstream_id")
    fmt = "openai"

    def __init__(self, em: Emitter, usage: dict[str, Any]) -> None:
        super().__init__(em, usage)
        self.tools: dict[object, str] = {}
        self.upstream_id: object = None

    def event(self, name: str | None, payload: bytes) -> None:
        if payload[:1] in (b"[", b" ") and payload.strip() == b"[DONE]":
            self.completed = True
            self.em.done()
            return
        obj = self._loads(payload)
        if type(obj) is not dict:
            return
        em = self.em
        if not self.started:
            self.started = True
            self.upstream_id = obj.get("id")
            em.served(obj.get("model"))
            em.start(self.upstream_id, None)
        usage = obj.get("usage")
        if usage is None:
            usage = as_dict(obj.get("x_groq")).get("usage")  # Groq without include_usage
        usage_here: Usage | None = None
        # Only a usage object that counts for the bill (the scanner twin's whole-object rule,
        # plano_fast.wire._scan_py): one with a negative, fractional, huge or string count is
        # ignored there (usage_missing when no other came), so the client is not told it.
        if type(usage) is dict and counts_as_usage(API_OPENAI_CHAT, usage):
            pd = as_dict(usage.get("prompt_tokens_details"))
            read = pd.get("cached_tokens")
            if read is None:
                read = usage.get("prompt_cache_hit_tokens")
            self._record(
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                read,
                pd.get("cache_write_tokens"),
                as_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"),
            )
            usage_here = usage_from_openai(usage)
        if obj.get("error") is not None:  # the error wins over a held finish (OpenRouter)
            self.errored = True
            em.error(error_info_from("openai", obj, None))
            return
        if usage_here is not None:
            em.set_usage(usage_here)
        choices = obj.get("choices")
        if type(choices) is not list:
            return
        for choice in choices:
            if type(choice) is not dict or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if type(delta) is dict:
                reasoning = delta.get("reasoning_content")
                if type(reasoning) is not str:
                    reasoning = delta.get("reasoning")
                if type(reasoning) is str and reasoning:
                    em.thinking(reasoning)
                content = delta.get("content")
                if type(content) is str and content:
                    em.text(content)
                refusal = delta.get("refusal")
                if type(refusal) is str and refusal:
                    em.text(refusal)
                calls = delta.get("tool_calls")
                if type(calls) is list:
                    for pos, call in enumerate(calls):
                        if type(call) is dict:
                            self._tool(call, pos)
            reason = choice.get("finish_reason")
            if reason and not self.finished:
                self.finished = True
                em.finish(stop_from("openai", reason, bool(self.tools)), usage_here is not None)
            break

    def _tool(self, call: dict[str, Any], pos: int) -> None:
        index = call.get("index")
        call_id = call.get("id")
        key: object
        if type(index) is int:
            key = index
        elif type(call_id) is str and call_id:
            key = call_id  # Mistral: whole calls without index
        else:
            key = ("pos", pos)
        fn = as_dict(call.get("function"))
        if key not in self.tools:
            if type(call_id) is not str or not call_id:
                call_id = synth_call_id(self.upstream_id, len(self.tools))
            name = fn.get("name")
            self.tools[key] = call_id
            self.em.tool_start(key, call_id, name if type(name) is str else "")
        args = fn.get("arguments")
        if type(args) is str and args:
            self.em.tool_args(key, args)


class _AnthropicSource(_Source):
    __slots__ = ("tools", "raw_usage")
    fmt = "anthropic"

    def __init__(self, em: Emitter, usage: dict[str, Any]) -> None:
        super().__init__(em, usage)
        self.tools: set[object] = set()
        self.raw_usage: dict[str, Any] = {}

    def _merge(self, usage: object, top_level: bool) -> Usage | None:
        """Merge a usage object field by field, as the scanner does; None (nothing merged)
        for one that does not count for the bill (the scanner twin's whole-object rule:
        a negative, fractional, huge or string count), so the client is told what is
        billed."""
        if type(usage) is not dict or not counts_as_usage(API_ANTHROPIC, usage):
            return None
        raw = self.raw_usage
        for key, value in usage.items():
            if value is not None:
                raw[key] = value
        u = self.usage
        u["input_tokens"] = count(raw.get("input_tokens")) or 0
        u["output_tokens"] = count(raw.get("output_tokens")) or 0
        u["cache_read_tokens"] = count(raw.get("cache_read_input_tokens")) or 0
        u["cache_write_tokens"] = count(raw.get("cache_creation_input_tokens")) or 0
        if top_level:
            u["has_usage"] = True
        return usage_from_anthropic(raw)

    def event(self, name: str | None, payload: bytes) -> None:
        obj = self._loads(payload)
        if type(obj) is not dict:
            return
        etype = obj.get("type") or name
        em = self.em
        if etype == "content_block_delta":
            delta = as_dict(obj.get("delta"))
            dtype = delta.get("type")
            if dtype == "text_delta":
                text = delta.get("text")
                if type(text) is str:
                    em.text(text)
            elif dtype == "input_json_delta":
                index = obj.get("index")
                fragment = delta.get("partial_json")
                if index in self.tools and type(fragment) is str:
                    em.tool_args(index, fragment)
            elif dtype == "thinking_delta":
                text = delta.get("thinking")
                if type(text) is str:
                    em.thinking(text)
        elif etype == "content_block_start":
            index = obj.get("index")
            block = as_dict(obj.get("content_block"))
            btype = block.get("type")
            if btype == "text":
                text = block.get("text")
                if type(text) is str and text:
                    em.text(text)
            elif btype == "tool_use":
                self.tools.add(index)
                call_id, tool_name = block.get("id"), block.get("name")
                em.tool_start(
                    index,
                    call_id if type(call_id) is str else synth_call_id(index, 0),
                    tool_name if type(tool_name) is str else "",
                )
                initial = block.get("input")
                if type(initial) is dict and initial:
                    em.tool_args(index, dumps_str(initial))
            elif btype == "thinking":
                text = block.get("thinking")
                if type(text) is str and text:
                    em.thinking(text)
        elif etype == "content_block_stop":
            index = obj.get("index")
            if index in self.tools:
                em.tool_end(index)
        elif etype == "message_start":
            message = as_dict(obj.get("message"))
            usage = self._merge(message.get("usage"), False)
            if not self.started:
                self.started = True
                em.served(message.get("model"))
                em.start(message.get("id"), usage)
        elif etype == "message_delta":
            final = self._merge(obj.get("usage"), True)
            if final is not None:
                em.set_usage(final)
            reason = as_dict(obj.get("delta")).get("stop_reason")
            if reason and not self.finished:
                self.finished = True
                em.finish(stop_from("anthropic", reason, False), True)
        elif etype == "message_stop":
            self.completed = True
            em.done()
        elif etype == "error":
            self.errored = True
            em.error(error_info_from("anthropic", obj, None))
        # "ping" and unknown events are not forwarded


class _GeminiSource(_Source):
    __slots__ = ("calls", "response_id")
    fmt = "gemini"

    def __init__(self, em: Emitter, usage: dict[str, Any]) -> None:
        super().__init__(em, usage)
        self.calls = 0
        self.response_id: object = None

    def event(self, name: str | None, payload: bytes) -> None:
        obj = self._loads(payload)
        if type(obj) is list:
            for item in obj:
                self._doc(item)
        else:
            self._doc(obj)

    def _doc(self, obj: object) -> None:
        if type(obj) is not dict:
            return
        em = self.em
        if obj.get("error") is not None:
            self.errored = True
            em.error(error_info_from("gemini", obj, None))
            return
        meta = obj.get("usageMetadata")
        usage: Usage | None = None
        if type(meta) is not dict or not counts_as_usage(API_GEMINI, meta):
            # Cumulative, the final counts on the last event: an event without usage (or
            # with one the bill refuses) leaves none that is final, as the scanner rules
            # (plano_fast.wire._scan_py, Gemini): no usage for the client either.
            self.usage["has_usage"] = False
            em.usage = None
        else:  # cumulative: every event carries the totals so far
            self._record(
                meta.get("promptTokenCount"),
                meta.get("candidatesTokenCount"),
                meta.get("cachedContentTokenCount"),
                0,
                meta.get("thoughtsTokenCount"),
            )
            usage = usage_from_gemini(meta)
        if not self.started:
            self.started = True
            self.response_id = obj.get("responseId")
            em.served(obj.get("modelVersion"))
            em.start(self.response_id, usage)
        if usage is not None:
            em.set_usage(usage)
        reason: object = None
        candidates = obj.get("candidates")
        if type(candidates) is list and candidates:
            cand = as_dict(candidates[0])
            for part in as_dict(cand.get("content")).get("parts") or ():
                if type(part) is not dict:
                    continue
                text = part.get("text")
                if type(text) is str:
                    if part.get("thought") is True:
                        em.thinking(text)
                    else:
                        em.text(text)
                    continue
                call = part.get("functionCall")
                if type(call) is dict:
                    key = self.calls
                    self.calls += 1
                    call_id = call.get("id")
                    if type(call_id) is not str or not call_id:
                        call_id = synth_call_id(self.response_id, key)
                    fname = call.get("name")
                    args = call.get("args")
                    em.tool_start(key, call_id, fname if type(fname) is str else "")
                    em.tool_args(key, dumps_str(args if type(args) is dict else {}))
                    em.tool_end(key)
            reason = cand.get("finishReason")
        elif as_dict(obj.get("promptFeedback")).get("blockReason"):
            reason = "SAFETY"
        if reason and not self.finished:
            self.finished = True
            em.finish(stop_from("gemini", reason, self.calls > 0), usage is not None)
            if usage is not None:
                self.completed = True
                em.done()


_EMITTERS: dict[str, type[Emitter]] = {**EMITTERS, "responses": ResponsesEmitter}

_SOURCES: dict[str, type[_Source]] = {
    "openai": _OpenAISource,
    "anthropic": _AnthropicSource,
    "gemini": _GeminiSource,
}


class StreamConverter:
    """Stateful converter of one upstream stream (see the module docstring).

    ``include_usage``: OpenAI targets end with a usage chunk (the client asked for
    ``stream_options.include_usage``).  Target ``"responses"``: the Responses API event
    stream (``_stream_responses.py``); ``request`` is the client's request, whose settings
    every response object echoes.  ``created``: the OpenAI ``created`` timestamp
    (default: now).  ``max_event_bytes``: bound on one incomplete upstream event.
    Same ``source`` and ``target``: bytes pass through unchanged, usage is still read.
    """

    __slots__ = (
        "source",
        "target",
        "usage",
        "truncated",
        "_em",
        "_src",
        "_sse",
        "_array",
        "_mode",
        "_passthrough",
        "_ended",
        "_limit",
    )

    def __init__(
        self,
        source: str,
        target: str,
        *,
        client_model: str,
        include_usage: bool = True,
        created: int | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        request: JSONDict | None = None,
    ) -> None:
        check_format("source", source)
        check_format("target", target, CLIENT_FORMATS)
        self.source = source
        self.target = target
        self.truncated = False
        self.usage: dict[str, Any] = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "has_usage": False,
            "wire_format": source,
        }
        self._passthrough = source == target
        emitter_cls = Emitter if self._passthrough else _EMITTERS[target]
        self._em = emitter_cls(client_model, include_usage, int(time.time()) if created is None else created)
        if isinstance(self._em, ResponsesEmitter):
            self._em.echo = echo_fields(request or {})
            self._em.json_tool = json_tool_for(request, source)
        self._src = _SOURCES[source](self._em, self.usage)
        self._sse = SSEParser(max_event_bytes)
        self._array: JSONArrayParser | None = None
        # Gemini streams are SSE with alt=sse, a JSON array without: decided on byte one
        self._mode = "undecided" if source == "gemini" else "sse"
        self._ended = False
        self._limit = max_event_bytes

    @property
    def final_response(self) -> JSONDict | None:
        """Responses targets: the last response object sent (None before the end)."""
        em = self._em
        return em.final if isinstance(em, ResponsesEmitter) else None

    @property
    def errored(self) -> bool:
        """The upstream sent a mid-stream error (forwarded as the client's error event)."""
        return self._src.errored

    @property
    def completed(self) -> bool:
        """The upstream ended properly (terminator or stop reason seen)."""
        return self._src.completed or self._src.finished

    def _events(self, data: bytes) -> list[tuple[str | None, bytes]]:
        if self._mode == "undecided":
            stripped = data.lstrip()
            if not stripped:
                return []
            if stripped[:1] == b"[":
                self._mode = "array"
                self._array = JSONArrayParser(self._limit)
            else:
                self._mode = "sse"
        if self._array is not None:
            return [(None, doc) for doc in self._array.feed(data)]
        return self._sse.feed(data)

    def feed(self, data: bytes) -> bytes:
        """Upstream bytes (split anywhere) -> client bytes (maybe ``b""``)."""
        if self._ended:
            raise RuntimeError("feed() after finish()")
        event = self._src.event
        for name, payload in self._events(data):
            event(name, payload)
        if self._passthrough:
            return data
        return self._em.take()

    def finish(self) -> bytes:
        """End of the upstream body: flush; close the client stream if the upstream
        completed, else set ``truncated`` and add nothing that pretends completion."""
        if self._ended:
            return b""
        self._ended = True
        src = self._src
        if self._array is None:
            try:
                for name, payload in self._sse.close():
                    src.event(name, payload)
            except ConversionError:
                pass  # an event cut mid-JSON at the very end: the stream was truncated
        if src.errored:
            pass
        elif src.completed or src.finished:
            self._em.done()
        else:
            self.truncated = True
        return b"" if self._passthrough else self._em.take()

    def error_event(self, message: str, *, status: int = 502) -> bytes:
        """A gateway-made error event in the client's format (e.g. after ``truncated``
        or an upstream timeout); ``b""`` if the client stream is already closed."""
        if self._passthrough:
            if self._em.closed:
                return b""
            self._em.closed = True
            return render_stream_error(self.target, ErrorInfo(status, message, "gateway"))
        self._em.error(ErrorInfo(status, message, "gateway"))
        return self._em.take()
