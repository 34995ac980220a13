"""Parser of OpenAI Responses API requests (``POST /v1/responses``) into the neutral model.

A Responses request is a *client* format only: it is parsed here and emitted as Chat
Completions, Anthropic Messages or Gemini by ``_request_emit.py``; the answer comes back
through ``_responses_out.py`` / ``_stream_responses.py``.

Mapping (Responses -> neutral ``Request``):

* ``instructions`` and ``system``/``developer`` messages -> ``system`` (in order);
* ``input`` string -> one user message; ``input`` items: messages (content a string or
  ``input_text``/``output_text``/``refusal``/``input_image``/``input_file``/``input_audio``
  parts), ``function_call`` -> a tool call in an assistant message,
  ``function_call_output`` -> a tool result in a user message (consecutive ones share a
  message), ``reasoning`` -> thinking (dropped by every target);
* function ``tools`` -> tool definitions; any other tool type (``web_search``,
  ``file_search``, ``code_interpreter``, ``mcp``, ``custom`` ...) is refused (400, naming
  it): the provider behind a conversion cannot run OpenAI's built-in tools;
* ``tool_choice`` ``auto``/``none``/``required``/``{type: function, name}``;
* ``text.format`` ``json_object`` / ``json_schema`` -> the Chat ``response_format`` shape;
* ``reasoning.effort`` -> effort (``none`` = no reasoning); ``max_output_tokens``,
  ``temperature``, ``top_p``, ``parallel_tool_calls``, ``user``/``safety_identifier``.

Dropped (they do not change the answer's shape): ``metadata`` (echoed back in the
response object, not sent upstream), ``store``, ``include``, ``truncation``,
``service_tier``, ``prompt_cache_key``, ``stream_options``, ``text.verbosity``,
``reasoning.summary``, ``max_tool_calls``.  Refused: ``previous_response_id`` and
``conversation`` (server-side state, which a converted provider does not keep),
``item_reference`` items, ``background``, ``prompt`` templates, ``top_logprobs``, files
by ``file_id``.
"""

from __future__ import annotations

from typing import Any

from plano_fast.convert._common import JSONDict, as_dict, parse_data_url
from plano_fast.convert._ir import (
    Audio,
    Document,
    Image,
    Message,
    Part,
    Request,
    Text,
    Thinking,
    ThinkingSpec,
    ToolDef,
    ToolResult,
    ToolUse,
)
from plano_fast.convert._request_parse import (
    _bad,
    _cannot,
    _opt_int,
    _opt_num,
    _parse_arguments,
    _require_dict,
    _require_list,
)
from plano_fast.convert.errors import ConversionError

__all__ = ["JSON_TOOL", "json_tool_for", "parse_responses", "structured_output_as_tool"]

#: The tool a structured-output request becomes in front of Anthropic (which has no
#: response_format): the schema is its input schema and the call is forced; the answer's
#: call to it comes back as the output text (``json_tool_for``).
JSON_TOOL = "plano_json_output"

#: request members that need server-side state or features no converted provider has
_REFUSED_MEMBERS = {
    "previous_response_id": "previous_response_id (conversation state is not kept for this provider)",
    "conversation": "conversation (conversation state is not kept for this provider)",
    "background": "background responses",
    "prompt": "stored prompt templates",
    "top_logprobs": "logprobs",
}


def _refused_tool(where: str, ttype: object, target: str) -> ConversionError:
    return ConversionError(
        f"{where}: the built-in tool {ttype!r} cannot be run by a {target} provider "
        "(only function tools are converted)"
    )


def _image(p: JSONDict, where: str, target: str) -> Image:
    url = p.get("image_url")
    if not isinstance(url, str):
        if p.get("file_id") is not None:
            raise _cannot(where, "images given by file_id", target)
        raise _bad(f"{where}.image_url", "must be a string")
    parsed = parse_data_url(url, where)
    return Image(where, url=url) if parsed is None else Image(where, parsed[0], parsed[1])


def _file(p: JSONDict, where: str, target: str) -> Document:
    title = p.get("filename")
    name = title if isinstance(title, str) else None
    data = p.get("file_data")
    if isinstance(data, str):
        parsed = parse_data_url(data, where)
        if parsed is None:  # bare base64: the Responses API takes that for PDFs
            return Document(where, "application/pdf", data, title=name)
        return Document(where, parsed[0], parsed[1], title=name)
    url = p.get("file_url")
    if isinstance(url, str):
        return Document(where, url=url, title=name)
    raise _cannot(where, "files given by file_id", target)


def _content_parts(content: object, where: str, target: str, role: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    parts: list[Part] = []
    for j, part in enumerate(_require_list(content, where)):
        pwhere = f"{where}[{j}]"
        p = _require_dict(part, pwhere)
        ptype = p.get("type")
        if ptype in ("input_text", "output_text", "text"):
            text = p.get("text")
            if not isinstance(text, str):
                raise _bad(f"{pwhere}.text", "must be a string")
            parts.append(Text(text))
        elif ptype == "refusal":
            refusal = p.get("refusal")
            if not isinstance(refusal, str):
                raise _bad(f"{pwhere}.refusal", "must be a string")
            parts.append(Text(refusal))
        elif ptype == "input_image" and role == "user":
            parts.append(_image(p, pwhere, target))
        elif ptype == "input_file" and role == "user":
            parts.append(_file(p, pwhere, target))
        elif ptype == "input_audio" and role == "user":
            ia = as_dict(p.get("input_audio"))
            data, fmt = ia.get("data"), ia.get("format")
            if not isinstance(data, str) or not isinstance(fmt, str):
                raise _bad(f"{pwhere}.input_audio", "needs string data and format")
            parts.append(Audio(pwhere, fmt, data))
        else:
            raise _cannot(pwhere, f"a {ptype!r} content part in a {role} message", target)
    return parts


def _output_parts(value: object, where: str, target: str) -> list[Text | Image]:
    """``function_call_output.output``: a string or input_text/input_image parts."""
    if isinstance(value, str):
        return [Text(value)]
    out: list[Text | Image] = []
    for j, part in enumerate(_require_list(value, where)):
        pwhere = f"{where}[{j}]"
        p = _require_dict(part, pwhere)
        ptype = p.get("type")
        if ptype in ("input_text", "output_text", "text") and isinstance(p.get("text"), str):
            out.append(Text(p["text"]))
        elif ptype == "input_image":
            out.append(_image(p, pwhere, target))
        else:
            raise _cannot(pwhere, f"a {ptype!r} part in a function_call_output", target)
    return out


def _append(req: Request, role: str, parts: list[Part]) -> None:
    """Consecutive items of one role share a message (tool calls of one turn, their
    results, and the text around them)."""
    if req.messages and req.messages[-1].role == role:
        req.messages[-1].parts.extend(parts)
    else:
        req.messages.append(Message(role, parts))


def _reasoning_text(item: JSONDict) -> str:
    texts: list[str] = []
    for key in ("summary", "content"):
        parts = item.get(key)
        if type(parts) is list:
            texts.extend(p["text"] for p in parts if type(p) is dict and isinstance(p.get("text"), str))
    return "\n".join(texts)


def _input(req: Request, value: object, target: str) -> None:
    if isinstance(value, str):
        req.messages.append(Message("user", [Text(value)]))
        return
    for i, item in enumerate(_require_list(value, "input")):
        where = f"input[{i}]"
        it = _require_dict(item, where)
        itype = it.get("type")
        if itype == "message" or (itype is None and "role" in it):
            role = it.get("role")
            if role in ("system", "developer"):
                parts = _content_parts(it.get("content"), f"{where}.content", target, "system")
                req.system.append("".join(p.text for p in parts if isinstance(p, Text)))
            elif role in ("user", "assistant"):
                _append(req, role, _content_parts(it.get("content"), f"{where}.content", target, role))
            else:
                raise _bad(f"{where}.role", f"unsupported role {role!r}")
        elif itype == "function_call":
            call_id, name = it.get("call_id"), it.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _bad(where, "function_call needs string call_id and name")
            args = _parse_arguments(it.get("arguments"), f"{where}.arguments")
            _append(req, "assistant", [ToolUse(call_id, name, args)])
        elif itype == "function_call_output":
            call_id = it.get("call_id")
            if not isinstance(call_id, str):
                raise _bad(f"{where}.call_id", "must be a string")
            output = _output_parts(it.get("output"), f"{where}.output", target)
            _append(req, "user", [ToolResult(call_id, output)])
        elif itype == "reasoning":
            _append(req, "assistant", [Thinking(_reasoning_text(it))])
        elif itype == "item_reference":
            raise _cannot(where, "item_reference items (conversation state is not kept)", target)
        else:
            raise _cannot(where, f"Responses {itype!r} input items", target)


def _tools(req: Request, value: object, target: str) -> None:
    for i, tool in enumerate(_require_list(value, "tools")):
        where = f"tools[{i}]"
        t = _require_dict(tool, where)
        ttype = t.get("type")
        if ttype != "function":
            raise _refused_tool(where, ttype, target)
        name = t.get("name")
        if not isinstance(name, str):
            raise _bad(f"{where}.name", "must be a string")
        desc = t.get("description")
        params = t.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        req.tools.append(
            ToolDef(name, desc if isinstance(desc, str) and desc else None,
                    _require_dict(params, f"{where}.parameters"))
        )


def _tool_choice(req: Request, tc: object, target: str) -> None:
    if isinstance(tc, str):
        mapped = {"auto": "auto", "none": "none", "required": "any"}.get(tc)
        if mapped is None:
            raise _bad("tool_choice", f"unsupported value {tc!r}")
        req.tool_choice = mapped
    elif isinstance(tc, dict):
        ctype = tc.get("type")
        if ctype == "function":
            name = tc.get("name")
            if not isinstance(name, str):
                raise _bad("tool_choice.name", "must be a string")
            req.tool_choice, req.tool_name = "tool", name
        elif ctype in ("allowed_tools", "custom"):
            raise _cannot("tool_choice", f"tool_choice type {ctype!r}", target)
        else:
            raise _refused_tool("tool_choice", ctype, target)
    elif tc is not None:
        raise _bad("tool_choice", "must be a string or an object")


def _text_format(req: Request, text: object) -> None:
    if text is None:
        return
    fmt = _require_dict(text, "text").get("format")
    if fmt is None:
        return
    f = _require_dict(fmt, "text.format")
    ftype = f.get("type")
    if ftype == "json_object":
        req.response_format = {"type": "json_object"}
    elif ftype == "json_schema":
        name, schema = f.get("name"), f.get("schema")
        if not isinstance(name, str):
            raise _bad("text.format.name", "must be a string")
        js: JSONDict = {"name": name, "schema": _require_dict(schema, "text.format.schema")}
        for key in ("description", "strict"):
            if f.get(key) is not None:
                js[key] = f[key]
        req.response_format = {"type": "json_schema", "json_schema": js}
    elif ftype != "text":
        raise _bad("text.format.type", f"unsupported value {ftype!r}")


def parse_responses(body: JSONDict, target: str) -> Request:
    """A Responses API request as the neutral model (``target`` names the format in
    error messages)."""
    for key, what in _REFUSED_MEMBERS.items():
        if body.get(key) not in (None, False):
            raise _cannot(key, what, target)
    req = Request()
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            req.system.append(instructions)
    elif instructions is not None:
        raise _bad("instructions", "must be a string")
    _input(req, body.get("input"), target)
    if body.get("tools") is not None:
        _tools(req, body["tools"], target)
    _tool_choice(req, body.get("tool_choice"), target)
    ptc = body.get("parallel_tool_calls")
    if isinstance(ptc, bool):
        req.parallel_tool_calls = ptc
    req.max_tokens = _opt_int(body, "max_output_tokens")
    req.temperature = _opt_num(body, "temperature")
    req.top_p = _opt_num(body, "top_p")
    req.stream = body.get("stream") is True
    _text_format(req, body.get("text"))
    reasoning = body.get("reasoning")
    if reasoning is not None:
        effort: Any = _require_dict(reasoning, "reasoning").get("effort")
        if effort is not None and not isinstance(effort, str):
            raise _bad("reasoning.effort", "must be a string")
        if effort not in (None, "none"):
            req.thinking = ThinkingSpec(effort=effort)
    for key in ("safety_identifier", "user"):
        user = body.get(key)
        if isinstance(user, str):
            req.user = user
            break
    return req


def structured_output_as_tool(req: Request) -> None:
    """``text.format`` json_schema / json_object for a target without a response format
    (Anthropic): a tool whose input schema is the schema, with the call forced when the
    client has no tools of its own (``any`` when it has: a function call or the JSON
    answer; ``auto`` with thinking, which Anthropic allows with no forced choice)."""
    rf = req.response_format
    if rf is None:
        return
    req.response_format = None
    js = as_dict(rf.get("json_schema"))
    schema = as_dict(js.get("schema")) or {"type": "object"}
    if any(tool.name == JSON_TOOL for tool in req.tools):
        raise _bad("tools", f"the tool name {JSON_TOOL!r} is reserved for structured output")
    description = "Give the final answer by calling this tool with the answer as its input."
    if isinstance(js.get("description"), str):
        description += " " + js["description"]
    had_tools = bool(req.tools)
    req.tools.append(ToolDef(JSON_TOOL, description, schema))
    if req.thinking is not None or req.tool_choice in ("none", "tool"):
        if req.tool_choice == "none":
            req.tool_choice = "auto"
        return
    if had_tools:
        req.tool_choice = "any"
    else:
        req.tool_choice, req.tool_name = "tool", JSON_TOOL


def json_tool_for(request: JSONDict | None, source: str) -> str | None:
    """The structured-output tool name whose calls are the answer's text, when the
    client's Responses ``request`` went to an Anthropic ``source`` with a JSON format."""
    if source != "anthropic" or request is None:
        return None
    fmt = as_dict(as_dict(request.get("text")).get("format"))
    return JSON_TOOL if fmt.get("type") in ("json_schema", "json_object") else None
