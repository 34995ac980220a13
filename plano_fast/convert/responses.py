"""Non-streaming response conversion between OpenAI, Anthropic and Gemini.

``convert_response(body, source, target, client_model=...)``: ``body`` is the provider's
2xx JSON answer in ``source`` format; the result is what a ``target``-format client
expects.  The reported model is the one the provider says it served (its ``model`` /
``modelVersion``), as Plano reports it; ``client_model`` only when the provider names none;
ids are derived from the upstream id (``chatcmpl-<core>`` / ``msg_<core>`` where ``<core>``
is the upstream id without its ``chatcmpl-``/``msg_`` prefix).

Kept: text, tool calls (ids kept; OpenAI's JSON-string ``arguments`` <-> Anthropic's
``input`` object <-> Gemini's ``args``), reasoning (OpenAI ``reasoning_content``/
``reasoning`` <-> Anthropic ``thinking`` blocks with an empty signature <-> Gemini
``thought`` parts), stop reason (tables in ``_common.py``) and usage including cache and
reasoning tokens.  Dropped: Anthropic server-tool blocks, citations, logprobs, safety
ratings.  Tool-call arguments that are not a JSON object (a truncated answer) become ``{}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from plano_fast.convert._common import (
    CLIENT_FORMATS,
    STOP_TO_GEMINI,
    STOP_TO_OPENAI,
    JSONDict,
    Usage,
    anthropic_id,
    as_dict,
    check_format,
    dumps_str,
    gemini_id,
    loads,
    openai_id,
    stop_from,
    synth_call_id,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai,
    usage_to_anthropic,
    usage_to_gemini,
    usage_to_openai,
)
from plano_fast.convert._ir import Text, Thinking, ToolUse
from plano_fast.convert._request_responses import json_tool_for
from plano_fast.convert._responses_out import echo_fields, emit_responses
from plano_fast.convert.errors import ConversionError
from plano_fast.wire import API_ANTHROPIC, API_GEMINI, API_OPENAI_CHAT, counts_as_usage

__all__ = ["convert_response", "parse_response", "Response"]


@dataclass(slots=True)
class Response:
    """A non-streamed answer, format-neutral.  ``stop`` uses Anthropic's vocabulary."""

    id: str | None = None
    model: str | None = None
    parts: list[Text | Thinking | ToolUse] = field(default_factory=list)
    stop: str = "end_turn"
    stop_sequence: str | None = None
    usage: Usage | None = None


def _upstream_unusable(source: str, why: str) -> ConversionError:
    return ConversionError(f"upstream {source} response {why}", status=502)


def parse_arguments_lenient(args: object) -> dict[str, Any]:
    """Tool-call arguments (a JSON string) as an object; ``{}`` when not a JSON object."""
    if isinstance(args, dict):
        return args
    if not isinstance(args, str) or not args.strip():
        return {}
    try:
        value = loads(args)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _parse_openai(body: JSONDict) -> Response:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _upstream_unusable("openai", "has no choices")
    choice = as_dict(choices[0])
    msg = as_dict(choice.get("message"))
    resp = Response(id=body.get("id"), model=body.get("model"))
    reasoning = msg.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        resp.parts.append(Thinking(reasoning))
    content = msg.get("content")
    if isinstance(content, list):
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    if isinstance(content, str) and content:
        resp.parts.append(Text(content))
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal:
        resp.parts.append(Text(refusal))
    calls = msg.get("tool_calls")
    n_calls = 0
    if isinstance(calls, list):
        for k, call in enumerate(calls):
            c = as_dict(call)
            fn = as_dict(c.get("function"))
            cid = c.get("id")
            if not isinstance(cid, str) or not cid:
                cid = synth_call_id(body.get("id"), k)
            name = fn.get("name")
            args = parse_arguments_lenient(fn.get("arguments"))
            resp.parts.append(ToolUse(cid, name if isinstance(name, str) else "", args))
            n_calls += 1
    resp.stop = stop_from("openai", choice.get("finish_reason"), n_calls > 0)
    usage = body.get("usage")
    if isinstance(usage, dict) and counts_as_usage(API_OPENAI_CHAT, usage):  # else none: as billed
        resp.usage = usage_from_openai(usage)
    return resp


def _parse_anthropic(body: JSONDict) -> Response:
    content = body.get("content")
    if not isinstance(content, list):
        raise _upstream_unusable("anthropic", "has no content list")
    resp = Response(id=body.get("id"), model=body.get("model"))
    for block in content:
        b = as_dict(block)
        btype = b.get("type")
        if btype == "text" and isinstance(b.get("text"), str):
            resp.parts.append(Text(b["text"]))
        elif btype == "tool_use":
            inp = b.get("input")
            resp.parts.append(
                ToolUse(str(b.get("id", "")), str(b.get("name", "")), inp if isinstance(inp, dict) else {})
            )
        elif btype == "thinking" and isinstance(b.get("thinking"), str):
            resp.parts.append(Thinking(b["thinking"]))
    resp.stop = stop_from("anthropic", body.get("stop_reason"), False)
    seq = body.get("stop_sequence")
    resp.stop_sequence = seq if isinstance(seq, str) else None
    usage = body.get("usage")
    if isinstance(usage, dict) and counts_as_usage(API_ANTHROPIC, usage):  # else none: as billed
        resp.usage = usage_from_anthropic(usage)
    return resp


def _parse_gemini(body: JSONDict) -> Response:
    resp = Response(id=body.get("responseId"), model=body.get("modelVersion"))
    candidates = body.get("candidates")
    n_calls = 0
    finish: object = None
    if isinstance(candidates, list) and candidates:
        cand = as_dict(candidates[0])
        finish = cand.get("finishReason")
        for part in as_dict(cand.get("content")).get("parts") or []:
            p = as_dict(part)
            if isinstance(p.get("text"), str):
                resp.parts.append(Thinking(p["text"]) if p.get("thought") is True else Text(p["text"]))
                continue
            fc = p.get("functionCall") or p.get("function_call")
            if isinstance(fc, dict):
                cid = fc.get("id")
                if not isinstance(cid, str) or not cid:
                    cid = synth_call_id(body.get("responseId"), n_calls)
                args = fc.get("args")
                resp.parts.append(ToolUse(cid, str(fc.get("name", "")), args if isinstance(args, dict) else {}))
                n_calls += 1
    elif as_dict(body.get("promptFeedback")).get("blockReason"):
        finish = "SAFETY"  # the prompt itself was blocked: no candidates
    elif not isinstance(body.get("usageMetadata"), dict):
        raise _upstream_unusable("gemini", "has no candidates")
    resp.stop = stop_from("gemini", finish, n_calls > 0)
    usage = body.get("usageMetadata")
    if isinstance(usage, dict) and counts_as_usage(API_GEMINI, usage):  # else none: as billed
        resp.usage = usage_from_gemini(usage)
    return resp


_PARSERS = {"openai": _parse_openai, "anthropic": _parse_anthropic, "gemini": _parse_gemini}


def parse_response(body: JSONDict, source: str) -> Response:
    check_format("source", source)
    if type(body) is not dict:
        raise _upstream_unusable(source, "is not a JSON object")
    return _PARSERS[source](body)


def _emit_openai(resp: Response, client_model: str, created: int) -> JSONDict:
    texts = [p.text for p in resp.parts if isinstance(p, Text)]
    thinking = [p.text for p in resp.parts if isinstance(p, Thinking)]
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": dumps_str(p.input)}}
        for p in resp.parts
        if isinstance(p, ToolUse)
    ]
    message: JSONDict = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return {
        "id": openai_id(resp.id),
        "object": "chat.completion",
        "created": created,
        "model": client_model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": STOP_TO_OPENAI.get(resp.stop, "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_to_openai(resp.usage or Usage()),
    }


def _emit_anthropic(resp: Response, client_model: str) -> JSONDict:
    content: list[JSONDict] = []
    for p in resp.parts:
        if isinstance(p, Text):
            if p.text:
                content.append({"type": "text", "text": p.text})
        elif isinstance(p, Thinking):
            content.append({"type": "thinking", "thinking": p.text, "signature": ""})
        else:
            content.append({"type": "tool_use", "id": p.id, "name": p.name, "input": p.input})
    return {
        "id": anthropic_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": resp.stop,
        "stop_sequence": resp.stop_sequence,
        "usage": usage_to_anthropic(resp.usage or Usage()),
    }


def _emit_gemini(resp: Response, client_model: str) -> JSONDict:
    parts: list[JSONDict] = []
    for p in resp.parts:
        if isinstance(p, Text):
            parts.append({"text": p.text})
        elif isinstance(p, Thinking):
            parts.append({"text": p.text, "thought": True})
        else:
            parts.append({"functionCall": {"id": p.id, "name": p.name, "args": p.input}})
    return {
        "candidates": [
            {
                "content": {"parts": parts or [{"text": ""}], "role": "model"},
                "finishReason": STOP_TO_GEMINI.get(resp.stop, "STOP"),
                "index": 0,
            }
        ],
        "usageMetadata": usage_to_gemini(resp.usage or Usage()),
        "modelVersion": client_model,
        "responseId": gemini_id(resp.id),
    }


def convert_response(
    body: JSONDict,
    source: str,
    target: str,
    *,
    client_model: str,
    created: int | None = None,
    request: JSONDict | None = None,
) -> JSONDict:
    """A provider's non-streamed 2xx answer (``source`` format) as the ``target``-format
    answer.  ``created`` (OpenAI and Responses targets) defaults to now.  ``request``
    (Responses targets): the client's request, whose settings the answer echoes.  Raises
    :class:`ConversionError` with status 502 when the upstream body is unusable."""
    check_format("source", source)
    check_format("target", target, CLIENT_FORMATS)
    if type(body) is not dict:
        raise _upstream_unusable(source, "is not a JSON object")
    if source == target:
        out = dict(body)
        key = "modelVersion" if target == "gemini" else "model"
        served = out.get(key)
        if type(served) is not str or not served:
            out[key] = client_model
        return out
    resp = _PARSERS[source](body)
    if type(resp.model) is str and resp.model:
        client_model = resp.model  # the model the provider served
    if target == "responses":
        return emit_responses(
            resp.parts, resp.stop, resp.usage, resp.id, client_model,
            int(time.time()) if created is None else created, echo_fields(request or {}),
            json_tool_for(request, source),
        )
    if target == "openai":
        return _emit_openai(resp, client_model, int(time.time()) if created is None else created)
    if target == "anthropic":
        return _emit_anthropic(resp, client_model)
    return _emit_gemini(resp, client_model)
