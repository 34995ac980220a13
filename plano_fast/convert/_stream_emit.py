"""Stream emitters: a source parser (``streams.py``) calls these methods in stream order
and each emitter renders the client's wire format, keeping that format's invariants.

Call protocol (what a source does): ``start`` once (lazily repeated calls are ignored),
``text``/``thinking``/``tool_start``/``tool_args``/``tool_end`` for content,
``set_usage`` whenever the upstream reports usage, ``finish`` once with the canonical
stop reason (``usage_final`` = the same upstream event carried the usage), ``done`` when
the upstream signalled its end, ``error`` for a mid-stream error.  After ``done``/``error``
an emitter ignores everything (nothing is ever emitted after the terminator).
"""

from __future__ import annotations

from typing import Any

from plano_fast.convert._common import (
    STOP_TO_GEMINI,
    STOP_TO_OPENAI,
    JSONDict,
    Usage,
    anthropic_id,
    dumps,
    gemini_id,
    openai_id,
    usage_to_anthropic,
    usage_to_gemini,
    usage_to_openai,
)
from plano_fast.convert.errors import ErrorInfo, render_error
from plano_fast.convert.responses import parse_arguments_lenient


def render_stream_error(target: str, info: ErrorInfo) -> bytes:
    """One mid-stream error event in ``target`` format."""
    doc = dumps(render_error(target, info))
    if target == "anthropic":
        return b"event: error\ndata: " + doc + b"\n\n"
    if target == "gemini":
        return b"data: " + doc + b"\r\n\r\n"
    return b"data: " + doc + b"\n\n"


class Emitter:
    """Base: output buffering and the shared state flags (also the no-op emitter used
    when source and target formats are the same)."""

    __slots__ = (
        "out",
        "model",
        "include_usage",
        "created",
        "started",
        "finished",
        "closed",
        "usage",
        "stop",
    )

    def __init__(self, client_model: str, include_usage: bool, created: int) -> None:
        self.out: list[bytes] = []
        self.model = client_model
        self.include_usage = include_usage
        self.created = created
        self.started = False
        self.finished = False
        self.closed = False
        self.usage: Usage | None = None
        self.stop = "end_turn"

    def take(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def served(self, model: object) -> None:
        """The model the provider says it served (its first event): reported from then
        on instead of the name the client asked for, as Plano does."""
        if type(model) is str and model:
            self.model = model

    def start(self, upstream_id: object, usage: Usage | None) -> None:
        self.started = True

    def text(self, text: str) -> None:
        pass

    def thinking(self, text: str) -> None:
        pass

    def tool_start(self, key: object, call_id: str, name: str) -> None:
        pass

    def tool_args(self, key: object, fragment: str) -> None:
        pass

    def tool_end(self, key: object) -> None:
        pass

    def set_usage(self, usage: Usage) -> None:
        self.usage = usage

    def finish(self, stop: str, usage_final: bool) -> None:
        self.finished = True
        self.stop = stop

    def done(self) -> None:
        self.closed = True

    def error(self, info: ErrorInfo) -> None:
        self.closed = True


# ======================================================================================
# Anthropic Messages events
# ======================================================================================


class AnthropicEmitter(Emitter):
    """message_start -> (content_block_start -> deltas -> content_block_stop)* ->
    message_delta -> message_stop, exactly once each, block indices 0,1,2... in order.
    ``message_delta`` is held after ``finish`` until the usage arrives (OpenAI sends its
    usage chunk after the finish chunk) or the upstream ends."""

    __slots__ = ("_index", "_next", "_open", "_open_key", "_tools")

    def __init__(self, client_model: str, include_usage: bool, created: int) -> None:
        super().__init__(client_model, include_usage, created)
        self._index = -1
        self._next = 0
        self._open: str | None = None
        self._open_key: object = None
        self._tools: dict[object, int] = {}

    def _ev(self, name: bytes, obj: JSONDict) -> None:
        self.out.append(b"event: " + name + b"\ndata: " + dumps(obj) + b"\n\n")

    def start(self, upstream_id: object, usage: Usage | None) -> None:
        if self.started or self.closed:
            return
        self.started = True
        if usage is None:
            start_usage: JSONDict = {"input_tokens": 0, "output_tokens": 0}
        else:
            start_usage = usage_to_anthropic(usage)
            start_usage["output_tokens"] = 0  # the final count comes in message_delta
        message: JSONDict = {
            "id": anthropic_id(upstream_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        self._ev(b"message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> None:
        if self._open is not None:
            self._ev(b"content_block_stop", {"type": "content_block_stop", "index": self._index})
            self._open = None
            self._open_key = None

    def _open_block(self, kind: str, block: JSONDict, key: object = None) -> None:
        if not self.started:
            self.start(None, None)
        self._close_block()
        self._index = self._next
        self._next += 1
        self._open = kind
        self._open_key = key
        self._ev(
            b"content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def text(self, text: str) -> None:
        if self.closed or not text:
            return
        if self._open != "text":
            self._open_block("text", {"type": "text", "text": ""})
        self._ev(
            b"content_block_delta",
            {
                "type": "content_block_delta",
                "index": self._index,
                "delta": {"type": "text_delta", "text": text},
            },
        )

    def thinking(self, text: str) -> None:
        if self.closed or not text:
            return
        if self._open != "thinking":
            self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self._ev(
            b"content_block_delta",
            {
                "type": "content_block_delta",
                "index": self._index,
                "delta": {"type": "thinking_delta", "thinking": text},
            },
        )

    def tool_start(self, key: object, call_id: str, name: str) -> None:
        if self.closed:
            return
        self._open_block("tool", {"type": "tool_use", "id": call_id, "name": name, "input": {}}, key)
        self._tools[key] = self._index

    def tool_args(self, key: object, fragment: str) -> None:
        if self.closed or not fragment:
            return
        index = self._tools.get(key)
        if index is None:
            return
        # A fragment for an earlier, already closed tool block (upstreams that interleave
        # parallel calls; none observed) still goes to that block's index: SDKs
        # accumulate by index, so the arguments stay whole.
        self._ev(
            b"content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": fragment},
            },
        )

    def tool_end(self, key: object) -> None:
        if self._open == "tool" and self._open_key == key and not self.closed:
            self._close_block()

    def set_usage(self, usage: Usage) -> None:
        self.usage = usage
        if self.finished and not self.closed:
            self._release()

    def finish(self, stop: str, usage_final: bool) -> None:
        if self.closed or self.finished:
            return
        if not self.started:
            self.start(None, None)
        self.finished = True
        self.stop = stop
        self._close_block()
        if usage_final:
            self._release()

    def _release(self) -> None:
        self._close_block()
        self._ev(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop, "stop_sequence": None},
                "usage": usage_to_anthropic(self.usage or Usage()),
            },
        )
        self._ev(b"message_stop", {"type": "message_stop"})
        self.closed = True

    def done(self) -> None:
        if self.closed:
            return
        if not self.finished:
            self.finish("end_turn", True)  # upstream ended without a stop reason ([DONE] only)
        else:
            self._release()

    def error(self, info: ErrorInfo) -> None:
        if self.closed:
            return
        self.out.append(render_stream_error("anthropic", info))
        self.closed = True


# ======================================================================================
# OpenAI chat.completion.chunk
# ======================================================================================


class OpenAIEmitter(Emitter):
    """Role chunk first, content / tool_calls deltas (``index`` per call, ``id`` + name on
    its first delta), one finish chunk, a ``choices: []`` usage chunk when
    ``include_usage``, then ``data: [DONE]``."""

    __slots__ = ("_prefix", "_tools", "_id")

    def __init__(self, client_model: str, include_usage: bool, created: int) -> None:
        super().__init__(client_model, include_usage, created)
        self._prefix = b""
        self._tools: dict[object, int] = {}
        self._id = ""

    def start(self, upstream_id: object, usage: Usage | None) -> None:
        if self.started or self.closed:
            return
        self.started = True
        self._id = openai_id(upstream_id)
        self._prefix = (
            b'data: {"id":'
            + dumps(self._id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self.created).encode()
            + b',"model":'
            + dumps(self.model)
            + b',"choices":[{"index":0,"delta":'
        )
        self._chunk({"role": "assistant"})

    def _chunk(self, delta: JSONDict, finish: bytes = b"null") -> None:
        self.out.append(self._prefix + dumps(delta) + b',"finish_reason":' + finish + b"}]}\n\n")

    def text(self, text: str) -> None:
        if self.closed or not text:
            return
        if not self.started:
            self.start(None, None)
        self._chunk({"content": text})

    def thinking(self, text: str) -> None:
        if self.closed or not text:
            return
        if not self.started:
            self.start(None, None)
        self._chunk({"reasoning_content": text})

    def tool_start(self, key: object, call_id: str, name: str) -> None:
        if self.closed:
            return
        if not self.started:
            self.start(None, None)
        index = self._tools[key] = len(self._tools)
        self._chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
        )

    def tool_args(self, key: object, fragment: str) -> None:
        if self.closed or not fragment:
            return
        index = self._tools.get(key)
        if index is not None:
            self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def finish(self, stop: str, usage_final: bool) -> None:
        if self.closed or self.finished:
            return
        if not self.started:
            self.start(None, None)
        self.finished = True
        self.stop = stop
        self._chunk({}, b'"' + STOP_TO_OPENAI.get(stop, "stop").encode() + b'"')

    def done(self) -> None:
        if self.closed:
            return
        if not self.finished:
            self.finish("end_turn", True)
        if self.include_usage and self.usage is not None:
            chunk: dict[str, Any] = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_to_openai(self.usage),
            }
            self.out.append(b"data: " + dumps(chunk) + b"\n\n")
        self.out.append(b"data: [DONE]\n\n")
        self.closed = True

    def error(self, info: ErrorInfo) -> None:
        if self.closed:
            return
        self.out.append(render_stream_error("openai", info))
        self.closed = True


# ======================================================================================
# Gemini streamGenerateContent?alt=sse
# ======================================================================================


class GeminiEmitter(Emitter):
    """``data: <GenerateContentResponse>\\r\\n\\r\\n`` per event: text parts as deltas,
    each function call as one whole ``functionCall`` part (Gemini never fragments them),
    ``finishReason`` + ``usageMetadata`` on the last event."""

    __slots__ = ("_rid", "_pending")

    def __init__(self, client_model: str, include_usage: bool, created: int) -> None:
        super().__init__(client_model, include_usage, created)
        self._rid = ""
        self._pending: dict[object, tuple[str, str, list[str]]] = {}

    def start(self, upstream_id: object, usage: Usage | None) -> None:
        if self.started or self.closed:
            return
        self.started = True
        self._rid = gemini_id(upstream_id)

    def _event(
        self, parts: list[JSONDict], finish: str | None = None, usage: JSONDict | None = None
    ) -> None:
        cand: JSONDict = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish is not None:
            cand["finishReason"] = finish
        doc: JSONDict = {"candidates": [cand]}
        if usage is not None:
            doc["usageMetadata"] = usage
        doc["modelVersion"] = self.model
        doc["responseId"] = self._rid
        self.out.append(b"data: " + dumps(doc) + b"\r\n\r\n")

    @staticmethod
    def _call(call: tuple[str, str, list[str]]) -> JSONDict:
        call_id, name, fragments = call
        args = parse_arguments_lenient("".join(fragments))
        return {"functionCall": {"id": call_id, "name": name, "args": args}}

    def _flush_calls(self) -> list[JSONDict]:
        parts = [self._call(c) for c in self._pending.values()]
        self._pending.clear()
        return parts

    def _content(self, part: JSONDict) -> None:
        if not self.started:
            self.start(None, None)
        parts = self._flush_calls()
        parts.append(part)
        self._event(parts)

    def text(self, text: str) -> None:
        if not self.closed and text:
            self._content({"text": text})

    def thinking(self, text: str) -> None:
        if not self.closed and text:
            self._content({"text": text, "thought": True})

    def tool_start(self, key: object, call_id: str, name: str) -> None:
        if self.closed:
            return
        if not self.started:
            self.start(None, None)
        self._pending[key] = (call_id, name, [])

    def tool_args(self, key: object, fragment: str) -> None:
        call = self._pending.get(key)
        if call is not None and fragment:
            call[2].append(fragment)

    def tool_end(self, key: object) -> None:
        call = self._pending.pop(key, None)
        if call is not None and not self.closed:
            self._event([self._call(call)])

    def set_usage(self, usage: Usage) -> None:
        self.usage = usage
        if self.finished and not self.closed:
            self._release()

    def finish(self, stop: str, usage_final: bool) -> None:
        if self.closed or self.finished:
            return
        if not self.started:
            self.start(None, None)
        self.finished = True
        self.stop = stop
        if usage_final:
            self._release()

    def _release(self) -> None:
        parts = self._flush_calls() or [{"text": ""}]
        usage = usage_to_gemini(self.usage) if self.usage is not None else None
        self._event(parts, STOP_TO_GEMINI.get(self.stop, "STOP"), usage)
        self.closed = True

    def done(self) -> None:
        if self.closed:
            return
        if not self.started:
            self.start(None, None)
        self.finished = True
        self._release()

    def error(self, info: ErrorInfo) -> None:
        if self.closed:
            return
        self.out.append(render_stream_error("gemini", info))
        self.closed = True


EMITTERS: dict[str, type[Emitter]] = {
    "anthropic": AnthropicEmitter,
    "openai": OpenAIEmitter,
    "gemini": GeminiEmitter,
}
