"""Parsers of Anthropic and OpenAI requests into the neutral model (``_ir.py``); shared
validation helpers.  Errors name the JSON path of the offending field."""

from __future__ import annotations

from typing import Any

from plano_fast.convert._common import JSONDict, as_dict, loads, parse_data_url
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
from plano_fast.convert.errors import ConversionError


def _cannot(where: str, what: str, target: str) -> ConversionError:
    return ConversionError(f"{where}: {what} cannot be expressed in the {target} format")


def _bad(where: str, what: str) -> ConversionError:
    return ConversionError(f"{where}: {what}")


def _opt_int(body: JSONDict, key: str, where: str | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise _bad(where or key, "must be an integer")


def _opt_num(body: JSONDict, key: str, where: str | None = None) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) in (int, float):
        return float(value)
    raise _bad(where or key, "must be a number")


def _str_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _bad(where, "must be a string or a list of strings")


def _require_dict(value: object, where: str) -> JSONDict:
    if type(value) is not dict:
        raise _bad(where, "must be an object")
    return value


def _require_list(value: object, where: str) -> list[Any]:
    if type(value) is not list:
        raise _bad(where, "must be a list")
    return value


# ======================================================================================
# Anthropic -> IR
# ======================================================================================


def _anthropic_source(src: JSONDict, where: str, target: str, *, document: bool) -> Part:
    stype = src.get("type")
    if stype == "base64":
        media_type = src.get("media_type")
        data = src.get("data")
        if not isinstance(data, str):
            raise _bad(f"{where}.source.data", "must be a string")
        if document:
            return Document(where, media_type if isinstance(media_type, str) else "application/pdf", data)
        return Image(where, media_type if isinstance(media_type, str) else None, data)
    if stype == "url":
        url = src.get("url")
        if not isinstance(url, str):
            raise _bad(f"{where}.source.url", "must be a string")
        if document:
            return Document(where, url=url)
        return Image(where, url=url)
    if stype == "text" and document:
        data = src.get("data")
        return Text(data if isinstance(data, str) else "")
    raise _cannot(f"{where}.source", f"source type {stype!r}", target)


def _anthropic_tool_result_content(value: object, where: str, target: str) -> list[Text | Image]:
    if value is None:
        return []
    if isinstance(value, str):
        return [Text(value)]
    out: list[Text | Image] = []
    for k, block in enumerate(_require_list(value, where)):
        bwhere = f"{where}[{k}]"
        block = _require_dict(block, bwhere)
        btype = block.get("type")
        if btype == "text":
            out.append(Text(str(block.get("text", ""))))
        elif btype == "image":
            part = _anthropic_source(as_dict(block.get("source")), bwhere, target, document=False)
            assert isinstance(part, Image)
            out.append(part)
        else:
            raise _cannot(bwhere, f"a {btype!r} block inside tool_result", target)
    return out


def _anthropic_block(block: object, where: str, target: str) -> Part:
    b = _require_dict(block, where)
    btype = b.get("type")
    if btype == "text":
        text = b.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", "must be a string")
        return Text(text)
    if btype == "image":
        return _anthropic_source(as_dict(b.get("source")), where, target, document=False)
    if btype == "document":
        part = _anthropic_source(as_dict(b.get("source")), where, target, document=True)
        if isinstance(part, Document) and isinstance(b.get("title"), str):
            part.title = b["title"]
        return part
    if btype == "tool_use":
        tid, name, inp = b.get("id"), b.get("name"), b.get("input", {})
        if not isinstance(tid, str) or not isinstance(name, str):
            raise _bad(where, "tool_use needs string id and name")
        if inp is None:
            inp = {}
        return ToolUse(tid, name, _require_dict(inp, f"{where}.input"))
    if btype == "tool_result":
        tid = b.get("tool_use_id")
        if not isinstance(tid, str):
            raise _bad(f"{where}.tool_use_id", "must be a string")
        content = _anthropic_tool_result_content(b.get("content"), f"{where}.content", target)
        return ToolResult(tid, content, is_error=b.get("is_error") is True)
    if btype == "thinking":
        return Thinking(str(b.get("thinking", "")))
    if btype == "redacted_thinking":
        return Thinking("")
    raise _cannot(where, f"Anthropic {btype!r} content blocks", target)


def parse_anthropic(body: JSONDict, target: str) -> Request:
    req = Request()
    for key in ("mcp_servers", "container"):
        if body.get(key):
            raise _cannot(key, f"Anthropic {key}", target)
    system = body.get("system")
    if isinstance(system, str):
        if system:
            req.system.append(system)
    elif isinstance(system, list):
        for i, block in enumerate(system):
            b = _require_dict(block, f"system[{i}]")
            if b.get("type") != "text" or not isinstance(b.get("text"), str):
                raise _cannot(f"system[{i}]", "non-text system blocks", target)
            req.system.append(b["text"])
    elif system is not None:
        raise _bad("system", "must be a string or a list of text blocks")

    for i, msg in enumerate(_require_list(body.get("messages"), "messages")):
        m = _require_dict(msg, f"messages[{i}]")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"messages[{i}].role", f"unsupported role {role!r}")
        content = m.get("content")
        if isinstance(content, str):
            parts: list[Part] = [Text(content)]
        else:
            parts = [
                _anthropic_block(block, f"messages[{i}].content[{j}]", target)
                for j, block in enumerate(_require_list(content, f"messages[{i}].content"))
            ]
        req.messages.append(Message(role, parts))

    tools = body.get("tools")
    if tools is not None:
        for i, tool in enumerate(_require_list(tools, "tools")):
            t = _require_dict(tool, f"tools[{i}]")
            ttype = t.get("type")
            if ttype not in (None, "custom") or "input_schema" not in t:
                raise _cannot(f"tools[{i}]", f"the Anthropic server tool {ttype!r}", target)
            name = t.get("name")
            if not isinstance(name, str):
                raise _bad(f"tools[{i}].name", "must be a string")
            desc = t.get("description")
            req.tools.append(
                ToolDef(
                    name,
                    desc if isinstance(desc, str) else None,
                    _require_dict(t.get("input_schema"), f"tools[{i}].input_schema"),
                )
            )

    tc = body.get("tool_choice")
    if tc is not None:
        tc = _require_dict(tc, "tool_choice")
        ctype = tc.get("type")
        if ctype not in ("auto", "any", "none", "tool"):
            raise _bad("tool_choice.type", f"unsupported value {ctype!r}")
        req.tool_choice = ctype
        if ctype == "tool":
            name = tc.get("name")
            if not isinstance(name, str):
                raise _bad("tool_choice.name", "must be a string")
            req.tool_name = name
        if tc.get("disable_parallel_tool_use") is True:
            req.parallel_tool_calls = False

    req.max_tokens = _opt_int(body, "max_tokens")
    req.temperature = _opt_num(body, "temperature")
    req.top_p = _opt_num(body, "top_p")
    req.top_k = _opt_int(body, "top_k")
    req.stop = _str_list(body.get("stop_sequences"), "stop_sequences")
    req.stream = body.get("stream") is True
    thinking = body.get("thinking")
    if thinking is not None:
        th = _require_dict(thinking, "thinking")
        ttype = th.get("type")
        if ttype == "enabled":
            budget = _opt_int(th, "budget_tokens", "thinking.budget_tokens")
            req.thinking = ThinkingSpec(budget=budget, dynamic=budget is None)
        elif ttype == "adaptive":
            req.thinking = ThinkingSpec(dynamic=True)
        elif ttype != "disabled":
            raise _bad("thinking.type", f"unsupported value {ttype!r}")
    user_id = as_dict(body.get("metadata")).get("user_id")
    if isinstance(user_id, str):
        req.user = user_id
    return req


# ======================================================================================
# OpenAI -> IR
# ======================================================================================


def _openai_text_parts(content: object, where: str, target: str, *, allow_refusal: bool) -> str:
    """Content that must be text only (system/developer/tool/assistant): joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(_require_list(content, where)):
        p = _require_dict(part, f"{where}[{j}]")
        ptype = p.get("type")
        if ptype == "text" and isinstance(p.get("text"), str):
            texts.append(p["text"])
        elif ptype == "refusal" and allow_refusal and isinstance(p.get("refusal"), str):
            texts.append(p["refusal"])
        else:
            raise _cannot(f"{where}[{j}]", f"a {ptype!r} content part here", target)
    return "".join(texts)


def _openai_user_parts(content: object, where: str, target: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    parts: list[Part] = []
    for j, part in enumerate(_require_list(content, where)):
        pwhere = f"{where}[{j}]"
        p = _require_dict(part, pwhere)
        ptype = p.get("type")
        if ptype == "text":
            text = p.get("text")
            if not isinstance(text, str):
                raise _bad(f"{pwhere}.text", "must be a string")
            parts.append(Text(text))
        elif ptype == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str):
                raise _bad(f"{pwhere}.image_url.url", "must be a string")
            parsed = parse_data_url(url, pwhere)
            if parsed is None:
                parts.append(Image(pwhere, url=url))
            else:
                parts.append(Image(pwhere, parsed[0], parsed[1]))
        elif ptype == "input_audio":
            ia = as_dict(p.get("input_audio"))
            data, fmt = ia.get("data"), ia.get("format")
            if not isinstance(data, str) or not isinstance(fmt, str):
                raise _bad(f"{pwhere}.input_audio", "needs string data and format")
            parts.append(Audio(pwhere, fmt, data))
        elif ptype == "file":
            f = as_dict(p.get("file"))
            file_data = f.get("file_data")
            if not isinstance(file_data, str):
                raise _cannot(pwhere, "file parts without inline file_data (file_id)", target)
            parsed = parse_data_url(file_data, pwhere)
            if parsed is None:
                raise _bad(f"{pwhere}.file.file_data", "must be a base64 data: URL")
            title = f.get("filename")
            parts.append(
                Document(pwhere, parsed[0], parsed[1], title=title if isinstance(title, str) else None)
            )
        else:
            raise _cannot(pwhere, f"OpenAI {ptype!r} content parts", target)
    return parts


def _openai_effort(body: JSONDict) -> ThinkingSpec | None:
    effort = body.get("reasoning_effort")
    if effort is None:
        effort = as_dict(body.get("reasoning")).get("effort")
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str):
        raise _bad("reasoning_effort", "must be a string")
    return ThinkingSpec(effort=effort)


def parse_openai(body: JSONDict, target: str) -> Request:
    n = body.get("n")
    if n is not None and n != 1:
        raise _cannot("n", "n > 1 (several choices)", target)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _cannot("logprobs", "logprobs", target)
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise _cannot("audio", "audio output", target)
    for key in ("functions", "function_call"):
        if body.get(key) is not None:
            raise _cannot(key, "the legacy functions API (use tools)", target)
    if body.get("web_search_options") is not None:
        raise _cannot("web_search_options", "OpenAI web search", target)

    req = Request()
    for i, msg in enumerate(_require_list(body.get("messages"), "messages")):
        where = f"messages[{i}]"
        m = _require_dict(msg, where)
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            req.system.append(_openai_text_parts(content, f"{where}.content", target, allow_refusal=False))
        elif role == "user":
            req.messages.append(Message("user", _openai_user_parts(content, f"{where}.content", target)))
        elif role == "assistant":
            if m.get("audio") is not None:
                raise _cannot(f"{where}.audio", "assistant audio", target)
            if m.get("function_call") is not None:
                raise _cannot(f"{where}.function_call", "the legacy functions API", target)
            parts: list[Part] = []
            reasoning = m.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                parts.append(Thinking(reasoning))
            text = _openai_text_parts(content, f"{where}.content", target, allow_refusal=True)
            if text:
                parts.append(Text(text))
            for j, call in enumerate(_require_list(m.get("tool_calls") or [], f"{where}.tool_calls")):
                cwhere = f"{where}.tool_calls[{j}]"
                c = _require_dict(call, cwhere)
                if c.get("type", "function") != "function":
                    raise _cannot(cwhere, f"{c.get('type')!r} tool calls", target)
                fn = as_dict(c.get("function"))
                cid, name, args = c.get("id"), fn.get("name"), fn.get("arguments")
                if not isinstance(cid, str) or not isinstance(name, str):
                    raise _bad(cwhere, "tool call needs string id and function.name")
                parts.append(ToolUse(cid, name, _parse_arguments(args, f"{cwhere}.function.arguments")))
            req.messages.append(Message("assistant", parts))
        elif role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str):
                raise _bad(f"{where}.tool_call_id", "must be a string")
            text = _openai_text_parts(content, f"{where}.content", target, allow_refusal=False)
            req.messages.append(Message("user", [ToolResult(tid, [Text(text)])]))
        elif role == "function":
            raise _cannot(where, "the legacy 'function' role", target)
        else:
            raise _bad(f"{where}.role", f"unsupported role {role!r}")

    tools = body.get("tools")
    if tools is not None:
        for i, tool in enumerate(_require_list(tools, "tools")):
            t = _require_dict(tool, f"tools[{i}]")
            if t.get("type") != "function":
                raise _cannot(f"tools[{i}]", f"OpenAI {t.get('type')!r} tools", target)
            fn = _require_dict(t.get("function"), f"tools[{i}].function")
            name = fn.get("name")
            if not isinstance(name, str):
                raise _bad(f"tools[{i}].function.name", "must be a string")
            desc = fn.get("description")
            params = fn.get("parameters")
            if params is None:
                params = {"type": "object", "properties": {}}
            req.tools.append(
                ToolDef(name, desc if isinstance(desc, str) and desc else None,
                        _require_dict(params, f"tools[{i}].function.parameters"))
            )

    tc = body.get("tool_choice")
    if isinstance(tc, str):
        mapped = {"auto": "auto", "none": "none", "required": "any"}.get(tc)
        if mapped is None:
            raise _bad("tool_choice", f"unsupported value {tc!r}")
        req.tool_choice = mapped
    elif isinstance(tc, dict):
        if tc.get("type") != "function":
            raise _cannot("tool_choice", f"tool_choice type {tc.get('type')!r}", target)
        name = as_dict(tc.get("function")).get("name")
        if not isinstance(name, str):
            raise _bad("tool_choice.function.name", "must be a string")
        req.tool_choice, req.tool_name = "tool", name
    elif tc is not None:
        raise _bad("tool_choice", "must be a string or an object")
    ptc = body.get("parallel_tool_calls")
    if isinstance(ptc, bool):
        req.parallel_tool_calls = ptc

    max_tokens = _opt_int(body, "max_completion_tokens")
    req.max_tokens = max_tokens if max_tokens is not None else _opt_int(body, "max_tokens")
    req.temperature = _opt_num(body, "temperature")
    req.top_p = _opt_num(body, "top_p")
    req.stop = _str_list(body.get("stop"), "stop")
    req.stream = body.get("stream") is True
    req.thinking = _openai_effort(body)
    user = body.get("user")
    if isinstance(user, str):
        req.user = user
    rf = body.get("response_format")
    if rf is not None:
        rf = _require_dict(rf, "response_format")
        rtype = rf.get("type")
        if rtype in ("json_object", "json_schema"):
            req.response_format = rf
        elif rtype != "text":
            raise _bad("response_format.type", f"unsupported value {rtype!r}")
    req.seed = _opt_int(body, "seed")
    req.presence_penalty = _opt_num(body, "presence_penalty")
    req.frequency_penalty = _opt_num(body, "frequency_penalty")
    return req


def _parse_arguments(args: object, where: str) -> dict[str, Any]:
    if args is None or args == "":
        return {}
    if isinstance(args, dict):
        return args
    if not isinstance(args, str):
        raise _bad(where, "must be a JSON string")
    try:
        value = loads(args)
    except ValueError:
        raise _bad(where, "is not valid JSON") from None
    if not isinstance(value, dict):
        raise _bad(where, "must encode a JSON object")
    return value


