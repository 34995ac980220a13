"""Parser of Gemini ``generateContent`` requests into the neutral model (``_ir.py``).

Gemini accepts camelCase and snake_case field names; function calls may lack ids (stable
ones are synthesized from their position, and a ``functionResponse`` without id is matched
to the earliest unanswered call of the same name); OpenAPI-style schemas
(``type: STRING``) are turned into JSON Schema."""

from __future__ import annotations

from typing import Any

from plano_fast.convert._common import JSONDict, as_dict, dumps, guess_mime, synth_call_id
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
    _require_dict,
    _require_list,
    _str_list,
)


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


def parse_gemini(body: JSONDict, target: str) -> Request:
    req = Request()
    if _g(body, "cachedContent", "cached_content"):
        raise _cannot("cachedContent", "Gemini cached content", target)
    sysi = _g(body, "systemInstruction", "system_instruction")
    if sysi is not None:
        if isinstance(sysi, str):
            req.system.append(sysi)
        else:
            sys_parts = _require_list(as_dict(sysi).get("parts") or [], "systemInstruction.parts")
            for j, part in enumerate(sys_parts):
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
                args = _require_dict(args if args is not None else {}, f"{pwhere}.functionCall.args")
                parts.append(ToolUse(cid, name, args))
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
    mod_list = [] if modalities is None else _require_list(modalities, f"{where}.responseModalities")
    if any(str(m).upper() != "TEXT" for m in mod_list):
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


