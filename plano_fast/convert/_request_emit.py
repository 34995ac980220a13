"""Emit a neutral :class:`~plano_fast.convert._ir.Request` as an OpenAI, Anthropic or
Gemini request body (see ``requests.py`` for the entry point)."""

from __future__ import annotations

import re
from typing import Any

from plano_fast.convert._common import (
    ANTHROPIC_MIN_THINKING_BUDGET,
    EFFORT_TO_BUDGET,
    JSONDict,
    budget_to_effort,
    data_url,
    dumps_str,
    guess_mime,
)
from plano_fast.convert._ir import (
    Audio,
    Document,
    Image,
    Request,
    Text,
    Thinking,
    ThinkingSpec,
    ToolResult,
    ToolUse,
)
from plano_fast.convert.errors import ConversionError


def _cannot(where: str, what: str, target: str) -> ConversionError:
    return ConversionError(f"{where}: {what} cannot be expressed in the {target} format")


def _result_text(part: ToolResult) -> str:
    text = "\n".join(item.text for item in part.content if isinstance(item, Text))
    return "Error: " + text if part.is_error else text


def _budget(spec: ThinkingSpec, where: str) -> int:
    if spec.budget is not None:
        return spec.budget
    if spec.effort is not None:
        budget = EFFORT_TO_BUDGET.get(spec.effort)
        if budget is None:
            raise ConversionError(f"{where}: unsupported reasoning effort {spec.effort!r}")
        return budget
    return EFFORT_TO_BUDGET["medium"]  # dynamic: "thinking on, size up to the model"


# ======================================================================================
# -> OpenAI
# ======================================================================================


def _openai_media(part: Image | Document | Audio) -> JSONDict:
    if isinstance(part, Image):
        if part.data is not None:
            url = data_url(part.media_type or "image/png", part.data)
        else:
            url = part.url or ""
        return {"type": "image_url", "image_url": {"url": url}}
    if isinstance(part, Document):
        if part.data is None:
            raise _cannot(part.where, "documents given by URL", "openai")
        return {
            "type": "file",
            "file": {
                "filename": part.title or "document.pdf",
                "file_data": data_url(part.media_type, part.data),
            },
        }
    return {"type": "input_audio", "input_audio": {"data": part.data, "format": part.format}}


def _emit_openai(req: Request, model: str, max_field: str) -> JSONDict:
    messages: list[JSONDict] = []
    if req.system:
        messages.append({"role": "system", "content": "\n".join(req.system)})
    for i, msg in enumerate(req.messages):
        if msg.role == "assistant":
            texts: list[str] = []
            calls: list[JSONDict] = []
            for part in msg.parts:
                if isinstance(part, Text):
                    texts.append(part.text)
                elif isinstance(part, ToolUse):
                    calls.append(
                        {
                            "id": part.id,
                            "type": "function",
                            "function": {"name": part.name, "arguments": dumps_str(part.input)},
                        }
                    )
                elif isinstance(part, (Image, Document, Audio)):
                    raise _cannot(part.where, "media in assistant messages", "openai")
                elif isinstance(part, ToolResult):
                    raise _cannot(f"messages[{i}]", "tool results in assistant messages", "openai")
            text = "".join(texts)
            if not text and not calls:
                continue
            out: JSONDict = {"role": "assistant", "content": text or None}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
            continue
        tool_messages: list[JSONDict] = []
        content: list[JSONDict] = []
        for part in msg.parts:
            if isinstance(part, ToolResult):
                tool_messages.append(
                    {"role": "tool", "tool_call_id": part.tool_use_id, "content": _result_text(part)}
                )
                # images inside a tool result: OpenAI tool messages are text-only, so they
                # travel in the user message that follows the tool messages
                content.extend(_openai_media(item) for item in part.content if isinstance(item, Image))
            elif isinstance(part, Text):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, (Image, Document, Audio)):
                content.append(_openai_media(part))
            elif isinstance(part, ToolUse):
                raise _cannot(f"messages[{i}]", "tool calls in user messages", "openai")
        messages.extend(tool_messages)
        if content:
            if len(content) == 1 and content[0]["type"] == "text":
                messages.append({"role": "user", "content": content[0]["text"]})
            else:
                messages.append({"role": "user", "content": content})
        elif not tool_messages:
            messages.append({"role": "user", "content": ""})

    body: JSONDict = {"model": model, "messages": messages}
    if req.tools:
        tools: list[JSONDict] = []
        for tool in req.tools:
            fn: JSONDict = {"name": tool.name}
            if tool.description:
                fn["description"] = tool.description
            fn["parameters"] = tool.parameters
            tools.append({"type": "function", "function": fn})
        body["tools"] = tools
        if req.tool_choice == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": req.tool_name}}
        elif req.tool_choice is not None:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[req.tool_choice]
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_tokens is not None:
        body[max_field] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = req.stop
    if req.seed is not None:
        body["seed"] = req.seed
    if req.presence_penalty is not None:
        body["presence_penalty"] = req.presence_penalty
    if req.frequency_penalty is not None:
        body["frequency_penalty"] = req.frequency_penalty
    if req.thinking is not None:
        spec = req.thinking
        if spec.effort is not None:
            body["reasoning_effort"] = spec.effort
        elif spec.budget is not None:
            body["reasoning_effort"] = budget_to_effort(spec.budget)
    if req.user is not None:
        body["user"] = req.user
    if req.response_format is not None:
        body["response_format"] = req.response_format
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# ======================================================================================
# -> Anthropic
# ======================================================================================

_ANTHROPIC_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def _anthropic_tool_id(tool_id: str) -> str:
    """Anthropic accepts tool ids matching ``^[a-zA-Z0-9_-]+$``: other characters become
    ``_`` (applied to tool_use and tool_result alike, so pairs still match)."""
    if _ANTHROPIC_ID_BAD.search(tool_id) is None and tool_id:
        return tool_id
    return _ANTHROPIC_ID_BAD.sub("_", tool_id) or "toolu_empty"


def _anthropic_media(part: Image | Document | Audio) -> JSONDict:
    if isinstance(part, Audio):
        raise _cannot(part.where, "audio input", "anthropic")
    kind = "image" if isinstance(part, Image) else "document"
    if part.data is not None:
        default = "image/png" if kind == "image" else "application/pdf"
        source: JSONDict = {"type": "base64", "media_type": part.media_type or default, "data": part.data}
    else:
        url = part.url or ""
        if not url.startswith(("http://", "https://")):
            raise _cannot(part.where, f"{kind}s by non-HTTP URL", "anthropic")
        source = {"type": "url", "url": url}
    block: JSONDict = {"type": kind, "source": source}
    if isinstance(part, Document) and part.title:
        block["title"] = part.title
    return block


def _emit_anthropic(req: Request, model: str, default_max_tokens: int) -> JSONDict:
    messages: list[JSONDict] = []
    for msg in req.messages:
        blocks: list[JSONDict] = []
        for part in msg.parts:
            if isinstance(part, Text):
                if part.text:
                    blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, ToolUse):
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": _anthropic_tool_id(part.id),
                        "name": part.name,
                        "input": part.input,
                    }
                )
            elif isinstance(part, ToolResult):
                result: JSONDict = {
                    "type": "tool_result",
                    "tool_use_id": _anthropic_tool_id(part.tool_use_id),
                }
                items = part.content
                if all(isinstance(item, Text) for item in items):
                    result["content"] = "\n".join(item.text for item in items if isinstance(item, Text))
                else:
                    result["content"] = [
                        {"type": "text", "text": item.text}
                        if isinstance(item, Text)
                        else _anthropic_media(item)
                        for item in items
                        if not isinstance(item, Text) or item.text
                    ]
                if part.is_error:
                    result["is_error"] = True
                blocks.append(result)
            elif isinstance(part, Thinking):
                continue
            else:
                blocks.append(_anthropic_media(part))
        if not blocks:
            continue
        if messages and messages[-1]["role"] == msg.role:
            messages[-1]["content"].extend(blocks)  # Anthropic needs alternating roles
        else:
            messages.append({"role": msg.role, "content": blocks})
    for m in messages:  # tool_result blocks must open the user message
        if m["role"] == "user":
            m["content"].sort(key=lambda b: b["type"] != "tool_result")

    body: JSONDict = {"model": model, "messages": messages}
    if req.system:
        body["system"] = "\n".join(req.system)
    max_tokens = req.max_tokens
    if req.thinking is not None:
        budget = max(_budget(req.thinking, "thinking"), ANTHROPIC_MIN_THINKING_BUDGET)
        if max_tokens is None:
            max_tokens = budget + default_max_tokens
        elif max_tokens <= budget:
            budget = max_tokens - 1  # Anthropic needs budget_tokens < max_tokens
        if budget >= ANTHROPIC_MIN_THINKING_BUDGET:
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body["max_tokens"] = max_tokens if max_tokens is not None else default_max_tokens
    if req.tools:
        tools: list[JSONDict] = []
        for tool in req.tools:
            t: JSONDict = {"name": tool.name}
            if tool.description:
                t["description"] = tool.description
            t["input_schema"] = tool.parameters
            tools.append(t)
        body["tools"] = tools
        choice: JSONDict | None = None
        if req.tool_choice is not None:
            choice = {"type": req.tool_choice}
            if req.tool_choice == "tool":
                choice["name"] = req.tool_name
        if req.parallel_tool_calls is False:
            if choice is None:
                choice = {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice is not None:
            body["tool_choice"] = choice
    if req.temperature is not None:
        body["temperature"] = min(req.temperature, 1.0)  # Anthropic's range is 0..1
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.top_k is not None:
        body["top_k"] = req.top_k
    if req.stop:
        body["stop_sequences"] = req.stop
    if req.stream:
        body["stream"] = True
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.response_format is not None:
        raise _cannot("response_format", f"response_format {req.response_format.get('type')!r}", "anthropic")
    return body


# ======================================================================================
# -> Gemini
# ======================================================================================


def _gemini_media(part: Image | Document | Audio) -> JSONDict:
    if isinstance(part, Audio):
        fmt = "mp3" if part.format in ("mp3", "mpeg") else part.format
        return {"inlineData": {"mimeType": f"audio/{fmt}", "data": part.data}}
    default = "image/jpeg" if isinstance(part, Image) else "application/pdf"
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type or default, "data": part.data}}
    url = part.url or ""
    return {"fileData": {"mimeType": part.media_type or guess_mime(url, default), "fileUri": url}}


#: Google's documented sentinel for function calls that Gemini 3+ did not produce itself
#: (history from another model or rebuilt by the client): without a ``thoughtSignature``
#: Gemini 3 answers 400 "Function call is missing a thought_signature".
SKIP_THOUGHT_SIGNATURE = "skip_thought_signature_validator"
_GEMINI_MAJOR = re.compile(r"gemini-(\d+)")


def _needs_thought_signature(model: str) -> bool:
    found = _GEMINI_MAJOR.search(model)
    return found is not None and int(found.group(1)) >= 3


def _emit_gemini(req: Request, model: str) -> JSONDict:
    signature = _needs_thought_signature(model)
    names = {
        part.id: part.name
        for msg in req.messages
        for part in msg.parts
        if isinstance(part, ToolUse)
    }
    contents: list[JSONDict] = []
    for i, msg in enumerate(req.messages):
        role = "model" if msg.role == "assistant" else "user"
        parts: list[JSONDict] = []
        media_after: list[JSONDict] = []
        for part in msg.parts:
            if isinstance(part, Text):
                if part.text:
                    parts.append({"text": part.text})
            elif isinstance(part, ToolUse):
                call: JSONDict = {"functionCall": {"id": part.id, "name": part.name, "args": part.input}}
                if signature:
                    call["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE
                parts.append(call)
            elif isinstance(part, ToolResult):
                name = part.name or names.get(part.tool_use_id)
                if name is None:
                    raise ConversionError(
                        f"messages[{i}]: tool result for unknown tool call id "
                        f"{part.tool_use_id!r}: Gemini needs the function name"
                    )
                text = "\n".join(item.text for item in part.content if isinstance(item, Text))
                response: JSONDict = {"error": text} if part.is_error else {"result": text}
                parts.append(
                    {"functionResponse": {"id": part.tool_use_id, "name": name, "response": response}}
                )
                media_after.extend(_gemini_media(item) for item in part.content if isinstance(item, Image))
            elif isinstance(part, Thinking):
                continue
            else:
                parts.append(_gemini_media(part))
        parts.extend(media_after)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    body: JSONDict = {"contents": contents}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": s} for s in req.system]}
    if req.tools:
        decls: list[JSONDict] = []
        for tool in req.tools:
            d: JSONDict = {"name": tool.name}
            if tool.description:
                d["description"] = tool.description
            d["parametersJsonSchema"] = tool.parameters
            decls.append(d)
        body["tools"] = [{"functionDeclarations": decls}]
        if req.tool_choice is not None:
            modes = {"auto": "AUTO", "any": "ANY", "none": "NONE", "tool": "ANY"}
            fcc: JSONDict = {"mode": modes[req.tool_choice]}
            if req.tool_choice == "tool":
                fcc["allowedFunctionNames"] = [req.tool_name]
            body["toolConfig"] = {"functionCallingConfig": fcc}
    gc: JSONDict = {}
    if req.max_tokens is not None:
        gc["maxOutputTokens"] = req.max_tokens
    if req.temperature is not None:
        gc["temperature"] = req.temperature
    if req.top_p is not None:
        gc["topP"] = req.top_p
    if req.top_k is not None:
        gc["topK"] = req.top_k
    if req.stop:
        gc["stopSequences"] = req.stop
    if req.seed is not None:
        gc["seed"] = req.seed
    if req.presence_penalty is not None:
        gc["presencePenalty"] = req.presence_penalty
    if req.frequency_penalty is not None:
        gc["frequencyPenalty"] = req.frequency_penalty
    rf = req.response_format
    if rf is not None:
        gc["responseMimeType"] = "application/json"
        if rf.get("type") == "json_schema":
            js: Any = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if isinstance(schema, dict):
                gc["responseJsonSchema"] = schema
    if req.thinking is not None:
        spec = req.thinking
        if spec.dynamic and spec.budget is None and spec.effort is None:
            gc["thinkingConfig"] = {"thinkingBudget": -1, "includeThoughts": True}
        else:
            budget = _budget(spec, "reasoning_effort")
            gc["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": True}
    if gc:
        body["generationConfig"] = gc
    return body


def emit_request(
    req: Request,
    target: str,
    *,
    target_model: str,
    openai_max_tokens_field: str,
    default_max_tokens: int,
) -> JSONDict:
    if target == "openai":
        return _emit_openai(req, target_model, openai_max_tokens_field)
    if target == "anthropic":
        return _emit_anthropic(req, target_model, default_max_tokens)
    return _emit_gemini(req, target_model)
