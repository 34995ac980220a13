"""Request conversion: OpenAI Chat Completions <-> Anthropic Messages <-> Gemini generateContent.

``convert_request(body, source, target, target_model=...)`` parses ``body`` (the client's
request in ``source`` format) into the neutral model of ``_ir.py`` and emits it in
``target`` format (``_request_emit.py``).  Anything the target cannot express raises
:class:`ConversionError` (HTTP 400) naming the field; unknown fields that do not change the
answer's shape (``metadata``, ``store``, ``service_tier``, ``safetySettings``,
``cache_control`` ...) are dropped.

Gemini requests carry neither model nor stream flag in the body (they are in the URL):
pass ``stream=True`` for ``:streamGenerateContent``; ``target_model`` names the upstream
model.  For a Gemini *target* the returned body has no ``model``: the caller puts
``target_model`` in the URL.
"""

from __future__ import annotations

from typing import Any

from plano_fast.convert._common import (
    DEFAULT_ANTHROPIC_MAX_TOKENS,
    JSONDict,
    as_dict,
    check_format,
    dumps,
    guess_mime,
    loads,
    parse_data_url,
    synth_call_id,
)
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
from plano_fast.convert._request_emit import emit_request
from plano_fast.convert.errors import ConversionError

__all__ = ["convert_request", "count_tokens_estimate", "parse_request"]


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


def _parse_anthropic(body: JSONDict, target: str) -> Request:
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


def _parse_openai(body: JSONDict, target: str) -> Request:
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


# ======================================================================================
# Gemini -> IR
# ======================================================================================


def _g(d: JSONDict, camel: str, snake: str) -> Any:
    """Gemini accepts both camelCase and snake_case (proto JSON) field names."""
    value = d.get(camel)
    return d.get(snake) if value is None else value


def gemini_schema_to_json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-subset schema (``type: STRING``, ``nullable``) -> JSON Schema."""
    if isinstance(schema, list):
        return [gemini_schema_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: JSONDict = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {k: gemini_schema_to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "not", "additionalProperties"):
            out[key] = gemini_schema_to_json_schema(value)
        elif key in ("nullable", "propertyOrdering"):
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


_AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mp3": "mp3", "audio/mpeg": "mp3"}


def _gemini_blob(blob: JSONDict, where: str, target: str, *, inline: bool) -> Part:
    mime = _g(blob, "mimeType", "mime_type")
    mime = mime if isinstance(mime, str) else ""
    if inline:
        data = blob.get("data")
        if not isinstance(data, str):
            raise _bad(f"{where}.inlineData.data", "must be a string")
        if mime.startswith("image/"):
            return Image(where, mime, data)
        if mime == "application/pdf":
            return Document(where, mime, data)
        if mime in _AUDIO_FORMATS:
            return Audio(where, _AUDIO_FORMATS[mime], data)
        raise _cannot(where, f"inline data of type {mime!r}", target)
    uri = _g(blob, "fileUri", "file_uri")
    if not isinstance(uri, str):
        raise _bad(f"{where}.fileData.fileUri", "must be a string")
    mime = mime or guess_mime(uri, "")
    if mime.startswith("image/"):
        return Image(where, mime, url=uri)
    if mime == "application/pdf":
        return Document(where, mime, url=uri)
    raise _cannot(where, f"file data of type {mime or 'unknown'!r}", target)


def gemini_response_text(response: object) -> tuple[str, bool]:
    """A ``functionResponse.response`` object as tool-result text (+ is_error)."""
    if isinstance(response, dict) and len(response) == 1:
        (key, value), = response.items()
        if isinstance(value, str):
            if key == "error":
                return value, True
            if key in ("result", "output", "content", "return_value"):
                return value, False
    if isinstance(response, str):
        return response, False
    return dumps(response).decode(), False


def _parse_gemini(body: JSONDict, target: str) -> Request:
    req = Request()
    if _g(body, "cachedContent", "cached_content"):
        raise _cannot("cachedContent", "Gemini cached content", target)
    sysi = _g(body, "systemInstruction", "system_instruction")
    if sysi is not None:
        if isinstance(sysi, str):
            req.system.append(sysi)
        else:
            for j, part in enumerate(_require_list(as_dict(sysi).get("parts") or [], "systemInstruction.parts")):
                text = as_dict(part).get("text")
                if not isinstance(text, str):
                    raise _cannot(f"systemInstruction.parts[{j}]", "non-text system parts", target)
                req.system.append(text)

    call_no = 0
    pending: list[tuple[str, str]] = []  # (id, name) of calls without a response yet
    for i, content in enumerate(_require_list(body.get("contents"), "contents")):
        where = f"contents[{i}]"
        c = _require_dict(content, where)
        role = c.get("role") or "user"
        if role == "function":
            role = "user"
        if role not in ("user", "model"):
            raise _bad(f"{where}.role", f"unsupported role {role!r}")
        parts: list[Part] = []
        for j, part in enumerate(_require_list(c.get("parts") or [], f"{where}.parts")):
            pwhere = f"{where}.parts[{j}]"
            p = _require_dict(part, pwhere)
            if "text" in p:
                text = p.get("text")
                text = text if isinstance(text, str) else ""
                parts.append(Thinking(text) if p.get("thought") is True else Text(text))
                continue
            blob = _g(p, "inlineData", "inline_data")
            if blob is not None:
                parts.append(_gemini_blob(as_dict(blob), pwhere, target, inline=True))
                continue
            blob = _g(p, "fileData", "file_data")
            if blob is not None:
                parts.append(_gemini_blob(as_dict(blob), pwhere, target, inline=False))
                continue
            fc = _g(p, "functionCall", "function_call")
            if fc is not None:
                fc = _require_dict(fc, f"{pwhere}.functionCall")
                name = fc.get("name")
                if not isinstance(name, str):
                    raise _bad(f"{pwhere}.functionCall.name", "must be a string")
                cid = fc.get("id")
                if not isinstance(cid, str) or not cid:
                    cid = synth_call_id("gemini-request", call_no)
                call_no += 1
                args = fc.get("args")
                parts.append(ToolUse(cid, name, _require_dict(args if args is not None else {}, f"{pwhere}.functionCall.args")))
                pending.append((cid, name))
                continue
            fr = _g(p, "functionResponse", "function_response")
            if fr is not None:
                fr = _require_dict(fr, f"{pwhere}.functionResponse")
                name = fr.get("name")
                if not isinstance(name, str):
                    raise _bad(f"{pwhere}.functionResponse.name", "must be a string")
                rid = fr.get("id")
                if not isinstance(rid, str) or not rid:
                    rid = _match_pending(pending, name)
                else:
                    pending[:] = [pc for pc in pending if pc[0] != rid]
                text, is_error = gemini_response_text(fr.get("response"))
                parts.append(ToolResult(rid, [Text(text)], is_error=is_error, name=name))
                continue
            if "thoughtSignature" in p or "thought_signature" in p or "videoMetadata" in p:
                continue
            raise _cannot(pwhere, f"Gemini parts with keys {sorted(p)}", target)
        req.messages.append(Message("assistant" if role == "model" else "user", parts))

    tools = body.get("tools")
    if isinstance(tools, dict):
        tools = [tools]
    for i, tool in enumerate(_require_list(tools or [], "tools")):
        t = _require_dict(tool, f"tools[{i}]")
        for key, decls in t.items():
            if key not in ("functionDeclarations", "function_declarations"):
                raise _cannot(f"tools[{i}].{key}", f"the Gemini tool {key!r}", target)
            for k, decl in enumerate(_require_list(decls, f"tools[{i}].{key}")):
                d = _require_dict(decl, f"tools[{i}].{key}[{k}]")
                name = d.get("name")
                if not isinstance(name, str):
                    raise _bad(f"tools[{i}].{key}[{k}].name", "must be a string")
                schema = _g(d, "parametersJsonSchema", "parameters_json_schema")
                if schema is None:
                    params = d.get("parameters")
                    schema = gemini_schema_to_json_schema(params) if params is not None else None
                if schema is None:
                    schema = {"type": "object", "properties": {}}
                desc = d.get("description")
                req.tools.append(ToolDef(name, desc if isinstance(desc, str) and desc else None,
                                         _require_dict(schema, f"tools[{i}].{key}[{k}].parameters")))

    fcc = as_dict(_g(as_dict(_g(body, "toolConfig", "tool_config")),
                     "functionCallingConfig", "function_calling_config"))
    mode = fcc.get("mode")
    if mode is not None:
        mapped = {"AUTO": "auto", "ANY": "any", "NONE": "none", "VALIDATED": "auto"}.get(str(mode).upper())
        if mapped is None and str(mode).upper() != "MODE_UNSPECIFIED":
            raise _bad("toolConfig.functionCallingConfig.mode", f"unsupported value {mode!r}")
        req.tool_choice = mapped
        allowed = _g(fcc, "allowedFunctionNames", "allowed_function_names")
        if mapped == "any" and allowed:
            names = _str_list(allowed, "toolConfig.functionCallingConfig.allowedFunctionNames")
            if len(names) == 1:
                req.tool_choice, req.tool_name = "tool", names[0]
            elif len(names) > 1 and set(names) != {t.name for t in req.tools}:
                raise _cannot("toolConfig.functionCallingConfig.allowedFunctionNames",
                              "a subset of several allowed functions", target)

    gc = as_dict(_g(body, "generationConfig", "generation_config"))
    _parse_gemini_generation(gc, req, target)
    return req


def _match_pending(pending: list[tuple[str, str]], name: str) -> str:
    """The id of the earliest unanswered call of ``name`` (else the earliest unanswered)."""
    for k, (cid, cname) in enumerate(pending):
        if cname == name:
            del pending[k]
            return cid
    if pending:
        return pending.pop(0)[0]
    return synth_call_id("gemini-orphan-response:" + name, 0)


def _parse_gemini_generation(gc: JSONDict, req: Request, target: str) -> None:
    where = "generationConfig"
    cc = _g(gc, "candidateCount", "candidate_count")
    if cc is not None and cc != 1:
        raise _cannot(f"{where}.candidateCount", "candidateCount > 1", target)
    if _g(gc, "responseLogprobs", "response_logprobs") or gc.get("logprobs"):
        raise _cannot(f"{where}.responseLogprobs", "logprobs", target)
    modalities = _g(gc, "responseModalities", "response_modalities")
    if modalities is not None and any(str(m).upper() != "TEXT" for m in _require_list(modalities, f"{where}.responseModalities")):
        raise _cannot(f"{where}.responseModalities", "non-text output modalities", target)
    if _g(gc, "speechConfig", "speech_config") is not None:
        raise _cannot(f"{where}.speechConfig", "speech output", target)
    max_out = _g(gc, "maxOutputTokens", "max_output_tokens")
    req.max_tokens = _opt_int({"v": max_out}, "v", f"{where}.maxOutputTokens")
    req.temperature = _opt_num(gc, "temperature", f"{where}.temperature")
    req.top_p = _opt_num({"v": _g(gc, "topP", "top_p")}, "v", f"{where}.topP")
    req.top_k = _opt_int({"v": _g(gc, "topK", "top_k")}, "v", f"{where}.topK")
    req.stop = _str_list(_g(gc, "stopSequences", "stop_sequences"), f"{where}.stopSequences")
    req.seed = _opt_int(gc, "seed", f"{where}.seed")
    req.presence_penalty = _opt_num({"v": _g(gc, "presencePenalty", "presence_penalty")}, "v")
    req.frequency_penalty = _opt_num({"v": _g(gc, "frequencyPenalty", "frequency_penalty")}, "v")
    mime = _g(gc, "responseMimeType", "response_mime_type")
    if mime == "application/json":
        schema = _g(gc, "responseJsonSchema", "response_json_schema")
        if schema is None:
            legacy = _g(gc, "responseSchema", "response_schema")
            schema = gemini_schema_to_json_schema(legacy) if legacy is not None else None
        if schema is None:
            req.response_format = {"type": "json_object"}
        else:
            req.response_format = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema},
            }
    elif mime not in (None, "text/plain"):
        raise _cannot(f"{where}.responseMimeType", f"response MIME type {mime!r}", target)
    tc = _g(gc, "thinkingConfig", "thinking_config")
    if tc is not None:
        tc = as_dict(tc)
        budget = _g(tc, "thinkingBudget", "thinking_budget")
        level = _g(tc, "thinkingLevel", "thinking_level")
        if type(budget) is int:
            if budget > 0:
                req.thinking = ThinkingSpec(budget=budget)
            elif budget < 0:
                req.thinking = ThinkingSpec(dynamic=True)
        elif isinstance(level, str) and level.upper() not in ("THINKING_LEVEL_UNSPECIFIED",):
            req.thinking = ThinkingSpec(effort=level.lower())


# ======================================================================================
# public API
# ======================================================================================

_PARSERS = {"anthropic": _parse_anthropic, "openai": _parse_openai, "gemini": _parse_gemini}


def parse_request(body: JSONDict, source: str, target: str) -> Request:
    """The neutral model of a ``source``-format request (``target`` names the format in
    error messages)."""
    check_format("source", source)
    if type(body) is not dict:
        raise ConversionError("request body must be a JSON object")
    return _PARSERS[source](body, target)


def convert_request(
    body: JSONDict,
    source: str,
    target: str,
    *,
    target_model: str,
    stream: bool | None = None,
    openai_max_tokens_field: str = "max_completion_tokens",
    default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
) -> JSONDict:
    """``body`` (a ``source``-format request) as a ``target``-format request for
    ``target_model``.

    ``stream`` overrides the body's stream flag (required for Gemini sources, whose flag is
    the URL method).  ``openai_max_tokens_field`` is ``"max_completion_tokens"`` (OpenAI,
    required by its reasoning models) or ``"max_tokens"`` (older OpenAI-compatible servers).
    ``default_max_tokens`` is sent to Anthropic when the source has no output limit
    (Anthropic requires one).  Raises :class:`ConversionError` for what the target cannot
    express.  The same format on both sides returns a copy with ``model`` replaced.
    """
    check_format("source", source)
    check_format("target", target)
    if openai_max_tokens_field not in ("max_completion_tokens", "max_tokens"):
        raise ValueError("openai_max_tokens_field must be max_completion_tokens or max_tokens")
    if type(body) is not dict:
        raise ConversionError("request body must be a JSON object")
    if source == target:
        out = dict(body)
        if target != "gemini":
            out["model"] = target_model
        if stream is not None and target != "gemini":
            out["stream"] = stream
        return out
    req = _PARSERS[source](body, target)
    if stream is not None:
        req.stream = stream
    return emit_request(
        req,
        target,
        target_model=target_model,
        openai_max_tokens_field=openai_max_tokens_field,
        default_max_tokens=default_max_tokens,
    )


# ======================================================================================
# count_tokens estimate
# ======================================================================================

#: tokens charged per image/document/audio part (Anthropic's ~1600-token cap per image)
MEDIA_TOKENS = 1600
#: per-message framing overhead (role markers)
MESSAGE_TOKENS = 4


def _text_tokens(text: str) -> int:
    """ceil(ASCII bytes / 4) + one token per non-ASCII character."""
    if text.isascii():
        return (len(text) + 3) // 4
    ascii_len = sum(1 for ch in text if ch < "\x80")
    return (ascii_len + 3) // 4 + (len(text) - ascii_len)


def count_tokens_estimate(body: JSONDict, source: str) -> int:
    """An ESTIMATE of a request's input tokens, for ``POST /v1/messages/count_tokens`` in
    front of a provider without a counting endpoint.  It is not the provider's count.

    Rule (documented, deliberately on the high side for English and CJK text): every text
    (system, messages, tool results, tool-call arguments, tool definitions as JSON) counts
    ceil(ASCII bytes / 4) + 1 per non-ASCII character; each image/document/audio part
    counts 1600; each message adds 4.  Requests that cannot be parsed are estimated from
    their whole JSON size the same way.
    """
    check_format("source", source)
    try:
        req = _PARSERS[source](body, "neutral")
    except (ConversionError, AttributeError, TypeError):
        return _text_tokens(dumps(body).decode()) if isinstance(body, dict) else 0
    total = sum(_text_tokens(s) for s in req.system)
    for msg in req.messages:
        total += MESSAGE_TOKENS
        for part in msg.parts:
            if isinstance(part, Text):
                total += _text_tokens(part.text)
            elif isinstance(part, Thinking):
                continue  # thinking from earlier turns is not counted as input by providers
            elif isinstance(part, ToolUse):
                total += _text_tokens(part.name) + _text_tokens(dumps(part.input).decode())
            elif isinstance(part, ToolResult):
                for item in part.content:
                    total += _text_tokens(item.text) if isinstance(item, Text) else MEDIA_TOKENS
            else:
                total += MEDIA_TOKENS
    if req.tools:
        total += _text_tokens(
            dumps([[t.name, t.description, t.parameters] for t in req.tools]).decode()
        )
    return total
