"""The OpenAI Responses API answer shape: a neutral answer as a ``response`` object, and
the pieces the stream emitter (``_stream_responses.py``) shares with it.

Output items, in the order of the upstream's content: thinking -> a ``reasoning`` item
(its text as one ``summary_text``), consecutive texts -> one assistant ``message`` with one
``output_text`` part, each tool call -> a ``function_call`` item (``call_id`` = the
upstream's call id, ``arguments`` a JSON string).  Stop reasons: ``max_tokens`` /
``model_context_window_exceeded`` -> status ``incomplete`` with reason
``max_output_tokens``, ``refusal`` -> ``incomplete`` with reason ``content_filter``,
anything else -> ``completed``.  Usage in the Responses shape (``input_tokens`` includes
cached tokens, ``output_tokens`` includes reasoning).  Ids: ``resp_<core>`` where
``<core>`` is the upstream id without its ``chatcmpl-``/``msg_`` prefix; items
``msg_``/``rs_``/``fc_`` + ``<core>_<n>``.
"""

from __future__ import annotations

from typing import Final

from plano_fast.convert._common import JSONDict, Usage, _id_core, dumps_str
from plano_fast.convert._ir import Text, Thinking, ToolUse

__all__ = ["echo_fields", "emit_responses", "response_object", "responses_usage", "status_for"]

#: request members a Responses answer echoes (what OpenAI returns in the response object)
_ECHOED: Final = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
    "safety_identifier",
)
_DEFAULTS: Final[JSONDict] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "reasoning": {"effort": None, "summary": None},
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "truncation": "disabled",
}


def echo_fields(request: JSONDict) -> JSONDict:
    """The members of the client's Responses request that the answer echoes, with the
    API's defaults for absent ones.  ``store`` is true only when the caller says so
    (``request["store"] is True``: the gateway stored the answer)."""
    out = dict(_DEFAULTS)
    for key in _ECHOED:
        value = request.get(key)
        if value is not None:
            out[key] = value
    out["store"] = request.get("store") is True
    return out


def responses_usage(u: Usage) -> JSONDict:
    details: JSONDict = {"cached_tokens": u.cache_read}
    if u.cache_write:  # as OpenAI reports a prompt-cache write (WIRE_FORMATS section 4)
        details["cache_write_tokens"] = u.cache_write
    return {
        "input_tokens": u.input_total,
        "input_tokens_details": details,
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input_total + u.output,
    }


def status_for(stop: str) -> tuple[str, JSONDict | None]:
    """(status, incomplete_details) for a canonical stop reason."""
    if stop in ("max_tokens", "model_context_window_exceeded"):
        return "incomplete", {"reason": "max_output_tokens"}
    if stop == "refusal":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_id(upstream_id: object) -> str:
    return "resp_" + _id_core(upstream_id)


def response_object(
    rid: str,
    model: str,
    created: int,
    echo: JSONDict,
    *,
    status: str,
    output: list[JSONDict],
    usage: Usage | None,
    incomplete: JSONDict | None = None,
    error: JSONDict | None = None,
) -> JSONDict:
    out: JSONDict = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
    }
    out.update(echo)
    out["usage"] = responses_usage(usage) if usage is not None else None
    return out


def message_item(item_id: str, text: str, status: str = "completed") -> JSONDict:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text(text)] if status == "completed" else [],
    }


def output_text(text: str) -> JSONDict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(item_id: str, text: str | None) -> JSONDict:
    summary = [] if text is None else [{"type": "summary_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": summary}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> JSONDict:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def emit_responses(
    parts: list[Text | Thinking | ToolUse], stop: str, usage: Usage | None, upstream_id: object, client_model: str,
    created: int, echo: JSONDict, json_tool: str | None = None,
) -> JSONDict:
    """A non-streamed neutral answer (``responses.Response`` fields) as a response object.
    A call to ``json_tool`` (structured output through a forced tool) is the output text."""
    core = _id_core(upstream_id)
    output: list[JSONDict] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            output.append(message_item(f"msg_{core}_{len(output)}", "".join(texts)))
            texts.clear()

    calls = 0
    for p in parts:
        if isinstance(p, ToolUse) and p.name == json_tool:
            texts.append(dumps_str(p.input))
        elif isinstance(p, Text):
            texts.append(p.text)
        elif isinstance(p, Thinking):
            flush()
            output.append(reasoning_item(f"rs_{core}_{len(output)}", p.text))
        elif isinstance(p, ToolUse):
            flush()
            calls += 1
            output.append(call_item(f"fc_{core}_{len(output)}", p.id, p.name, dumps_str(p.input)))
    flush()
    if json_tool is not None and stop == "tool_use" and not calls:
        stop = "end_turn"
    status, incomplete = status_for(stop)
    return response_object(
        "resp_" + core, client_model, created, echo,
        status=status, output=output, usage=usage or Usage(), incomplete=incomplete,
    )
