"""Stream emitter for Responses API clients: the event sequence OpenAI sends and the
openai SDK's ``responses.stream()`` accumulates.

``response.created`` -> ``response.in_progress`` -> per output item
``response.output_item.added`` ... ``response.output_item.done`` -> ``response.completed``
(``response.incomplete`` for a length or content-filter stop) carrying the whole output
and the usage.  Inside the items:

* message: ``content_part.added``, ``output_text.delta``*, ``output_text.done``,
  ``content_part.done``;
* reasoning: ``reasoning_summary_part.added``, ``reasoning_summary_text.delta``*,
  ``reasoning_summary_text.done``, ``reasoning_summary_part.done``;
* function call: ``function_call_arguments.delta``*, ``function_call_arguments.done``.

Every event has ``sequence_number`` 0, 1, 2 ...  With ``json_tool`` set (structured output
through a forced tool, Anthropic), that tool's argument fragments are the output text.  A text or reasoning item closes when
another item starts; a function call closes at its source's end of block (Anthropic,
Gemini) or at the finish (OpenAI chat does not mark it), so interleaved argument
fragments of parallel calls still land in their own item.  The final event is held after
``finish`` until the usage arrives (OpenAI chat sends it after the finish chunk), as the
Anthropic emitter does.  A failure is an ``error`` event (``{"error": {...}}``, the shape
the SDK raises on) followed by ``response.failed``; nothing follows a terminal event.
"""

from __future__ import annotations

from plano_fast.convert._common import JSONDict, Usage, _id_core, dumps
from plano_fast.convert._responses_out import (
    call_item,
    echo_fields,
    message_item,
    output_text,
    reasoning_item,
    response_object,
    status_for,
)
from plano_fast.convert._stream_emit import Emitter
from plano_fast.convert.errors import ErrorInfo, render_error

__all__ = ["ResponsesEmitter"]


_TEXT_DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
)
_SUMMARY_DELTA = (
    b"event: response.reasoning_summary_text.delta\n"
    b'data: {"type":"response.reasoning_summary_text.delta","sequence_number":'
)


class _Call:
    __slots__ = ("index", "item_id", "call_id", "name", "args", "open")

    def __init__(self, index: int, item_id: str, call_id: str, name: str) -> None:
        self.index = index
        self.item_id = item_id
        self.call_id = call_id
        self.name = name
        self.args: list[str] = []
        self.open = True


class ResponsesEmitter(Emitter):
    __slots__ = ("echo", "json_tool", "_json_keys", "_seq", "_core", "_rid", "_items", "_kind", "_open_id",
                 "_acc", "_calls", "_delta_head", "final")

    def __init__(self, client_model: str, include_usage: bool, created: int) -> None:
        super().__init__(client_model, include_usage, created)
        #: request members echoed in every response object (set by the caller)
        self.echo: JSONDict = echo_fields({})
        #: calls to this tool are the answer's text (structured output via a forced tool)
        self.json_tool: str | None = None
        self._json_keys: set[object] = set()
        self._seq = 0
        self._core = ""
        self._rid = ""
        #: the final form of each output item, by output_index (None while open)
        self._items: list[JSONDict | None] = []
        self._kind: str | None = None  # "message" | "reasoning": the open text-like item
        self._open_id = ""
        self._acc: list[str] = []
        self._calls: dict[object, _Call] = {}
        #: the bytes after ``sequence_number`` up to the delta of the open item's deltas
        self._delta_head = b""
        #: the last response object sent (completed, incomplete or failed)
        self.final: JSONDict | None = None

    def _ev(self, etype: str, body: JSONDict) -> None:
        doc: JSONDict = {"type": etype, "sequence_number": self._seq}
        doc.update(body)
        self._seq += 1
        self.out.append(b"event: " + etype.encode() + b"\ndata: " + dumps(doc) + b"\n\n")

    def _response(self, status: str, usage: Usage | None, **extra: JSONDict | None) -> JSONDict:
        output = [item for item in self._items if item is not None]
        return response_object(
            self._rid, self.model, self.created, self.echo, status=status, output=output,
            usage=usage, **extra,
        )

    def _delta(self, head: bytes, text: str, tail: bytes) -> None:
        """A text delta of the open item, rendered without a dict: the most frequent event
        (same bytes as ``_ev`` would give; saves about a third of a converted stream's time)."""
        seq = self._seq
        self._seq = seq + 1
        self.out.append(head + str(seq).encode() + self._delta_head + dumps(text) + tail)

    def start(self, upstream_id: object, usage: Usage | None) -> None:
        if self.started or self.closed:
            return
        self.started = True
        self._core = _id_core(upstream_id)
        self._rid = "resp_" + self._core
        self._ev("response.created", {"response": self._response("in_progress", None)})
        self._ev("response.in_progress", {"response": self._response("in_progress", None)})

    def _begin(self, kind: str) -> int:
        if not self.started:
            self.start(None, None)
        if self._kind is not None:
            self._close_text()
        index = len(self._items)
        self._items.append(None)
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item_id = f"{prefix}_{self._core}_{index}"
        if kind == "function_call":
            return index
        self._kind = kind
        self._open_id = item_id
        ids: JSONDict = {"item_id": item_id, "output_index": index}
        self._delta_head = (
            b',"item_id":' + dumps(item_id) + b',"output_index":' + str(index).encode()
            + (b',"content_index":0,"delta":' if kind == "message" else b',"summary_index":0,"delta":')
        )
        if kind == "message":
            self._ev("response.output_item.added",
                     {"output_index": index, "item": message_item(item_id, "", "in_progress")})
            self._ev("response.content_part.added", {**ids, "content_index": 0, "part": output_text("")})
        else:
            self._ev("response.output_item.added",
                     {"output_index": index, "item": reasoning_item(item_id, None)})
            self._ev("response.reasoning_summary_part.added",
                     {**ids, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})
        return index

    def _close_text(self) -> None:
        kind = self._kind
        if kind is None:
            return
        index = len(self._items) - 1
        item_id = self._open_id
        text = "".join(self._acc)
        self._acc = []
        self._kind = None
        ids: JSONDict = {"item_id": item_id, "output_index": index}
        if kind == "message":
            self._ev("response.output_text.done", {**ids, "content_index": 0, "text": text, "logprobs": []})
            self._ev("response.content_part.done", {**ids, "content_index": 0, "part": output_text(text)})
            item = message_item(item_id, text)
        else:
            self._ev("response.reasoning_summary_text.done", {**ids, "summary_index": 0, "text": text})
            self._ev("response.reasoning_summary_part.done",
                     {**ids, "summary_index": 0, "part": {"type": "summary_text", "text": text}})
            item = reasoning_item(item_id, text)
        self._items[index] = item
        self._ev("response.output_item.done", {"output_index": index, "item": item})

    def text(self, text: str) -> None:
        if self.closed or not text:
            return
        if self._kind != "message":
            self._begin("message")
        self._acc.append(text)
        self._delta(_TEXT_DELTA, text, b',"logprobs":[]}\n\n')

    def thinking(self, text: str) -> None:
        if self.closed or not text:
            return
        if self._kind != "reasoning":
            self._begin("reasoning")
        self._acc.append(text)
        self._delta(_SUMMARY_DELTA, text, b"}\n\n")

    def tool_start(self, key: object, call_id: str, name: str) -> None:
        if self.closed or key in self._calls:
            return
        if name == self.json_tool and self.json_tool is not None:
            self._json_keys.add(key)
            return
        index = self._begin("function_call")
        call = self._calls[key] = _Call(index, f"fc_{self._core}_{index}", call_id, name)
        self._ev("response.output_item.added", {
            "output_index": index,
            "item": call_item(call.item_id, call_id, name, "", "in_progress"),
        })

    def tool_args(self, key: object, fragment: str) -> None:
        if key in self._json_keys:
            self.text(fragment)
            return
        call = self._calls.get(key)
        if self.closed or not fragment or call is None or not call.open:
            return
        call.args.append(fragment)
        self._ev("response.function_call_arguments.delta",
                 {"item_id": call.item_id, "output_index": call.index, "delta": fragment})

    def _close_call(self, call: _Call) -> None:
        call.open = False
        args = "".join(call.args) or "{}"
        self._ev("response.function_call_arguments.done", {
            "item_id": call.item_id, "output_index": call.index, "name": call.name, "arguments": args,
        })
        item = call_item(call.item_id, call.call_id, call.name, args)
        self._items[call.index] = item
        self._ev("response.output_item.done", {"output_index": call.index, "item": item})

    def tool_end(self, key: object) -> None:
        call = self._calls.get(key)
        if call is not None and call.open and not self.closed:
            self._close_call(call)

    def _close_all(self) -> None:
        self._close_text()
        for call in self._calls.values():
            if call.open:
                self._close_call(call)

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
        self.stop = "end_turn" if stop == "tool_use" and self._json_keys and not self._calls else stop
        self._close_all()
        if usage_final:
            self._release()

    def _release(self) -> None:
        status, incomplete = status_for(self.stop)
        etype = "response.completed" if status == "completed" else "response.incomplete"
        response = self._response(status, self.usage or Usage(), incomplete=incomplete)
        self.final = response
        self._ev(etype, {"response": response})
        self.closed = True

    def done(self) -> None:
        if self.closed:
            return
        if not self.finished:
            self.finish("end_turn", True)  # upstream ended without a stop reason
        else:
            self._release()

    def error(self, info: ErrorInfo) -> None:
        if self.closed:
            return
        if not self.started:
            self.start(None, None)
        err = render_error("openai", info)["error"]
        self._ev("error", {"error": err})
        failure = {"code": err.get("code") or err.get("type") or "server_error", "message": info.message}
        self.final = self._response("failed", self.usage, error=failure)
        self._ev("response.failed", {"response": self.final})
        self.closed = True
