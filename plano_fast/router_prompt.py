"""The router-model protocol, byte-compatible with Plano's ``orchestrator_model_v1``.

Pure: request JSON in, the router request body out; the router's answer in, route names
out.  Source: katanemo/plano ``crates/brightstaff/src/router/orchestrator_model_v1.rs``
(0.4.36):

* the prompt is ``SYSTEM_PROMPT`` with ``{routes}`` and ``{conversation}`` replaced (the
  ``{{"route": ...}}`` braces stay doubled: Plano's template is a raw string, not a
  format string);
* routes: one spaced JSON object per line (``{"name": "x", "description": "y",
  "parameters": {"type": "object", "properties": {}, "required": []}}``), in config order
  (Plano iterates a HashMap, so its order is arbitrary);
* conversation: system, developer and tool messages and messages without text dropped,
  the last ``MAX_ROUTING_TURNS`` kept, then newest first while ``len(prompt)/4 +
  sum(len(text)/4)`` (UTF-8 bytes) stays within the budget; a user message that overflows
  is middle-trimmed (60 % head, ``…``, 40 % tail) into what is left; rendered as
  ``json.dumps(indent=4)`` of ``{"role", "content"}`` objects;
* one user message carrying the prompt, ``temperature: 0.01``;
* the answer: ``'`` -> ``"`` and literal ``\\n`` removed, then ``{"route": [names]}``;
  the older Arch-Router form ``{"route": "name"}`` (``"other"`` = no route) is accepted
  too.  Unknown names are dropped; the first known one wins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring
from typing import Any, Final

__all__ = [
    "MAX_ROUTING_TURNS",
    "MAX_TOKEN_LEN",
    "SYSTEM_PROMPT",
    "RequestBuilder",
    "RouterAnswerError",
    "conversation_of",
    "is_user_turn",
    "turn_key",
    "parse_answer",
    "render_prompt",
    "render_routes",
    "router_request",
    "trim_middle_utf8",
]

MAX_TOKEN_LEN: Final = 8192
MAX_ROUTING_TURNS: Final = 16
TOKEN_LENGTH_DIVISOR: Final = 4
TRIM_MARKER: Final = "…"
ROUTER_TEMPERATURE: Final = 0.01

SYSTEM_PROMPT: Final = """
You are a helpful assistant that selects the most suitable routes based on user intent.
You are provided with a list of available routes enclosed within <routes></routes> XML tags:
<routes>
{routes}
</routes>

You are also given the conversation context enclosed within <conversation></conversation> XML tags:
<conversation>
{conversation}
</conversation>

## Instructions
1. Analyze the latest user intent from the conversation.
2. Compare it against the available routes to find which routes can help fulfill the request.
3. Respond only with the exact route names from <routes>.
4. If no routes can help or the intent is already fulfilled, return an empty list.

## Response Format
Return your answer strictly in JSON as follows:
{{"route": ["route_name_1", "route_name_2", "..."]}}
If no routes are needed, return an empty list for `route`.
"""

_PROMPT_TOKENS: Final = len(SYSTEM_PROMPT.encode()) // TOKEN_LENGTH_DIVISOR
_EXCLUDED_ROLES: Final = frozenset({"system", "developer", "tool"})
#: content-part types whose ``text`` is message text (chat, Responses, Anthropic)
_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})


class RouterAnswerError(ValueError):
    """The router's answer is not JSON of the expected shape."""


def _spaced(obj: Any) -> str:
    # serde_json with Plano's SpacedJsonFormatter == Python's default separators, no ASCII escaping.
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def render_routes(routes: Iterable[tuple[str, str]]) -> str:
    """``(name, description)`` pairs as Plano renders them: one spaced JSON line each."""
    return "\n".join(
        _spaced(
            {
                "name": name,
                "description": description,
                "parameters": {"type": "object", "properties": {}, "required": []},
            }
        )
        for name, description in routes
    )


def _text(content: Any) -> str:
    """Plano's ``extract_text``: a string, or the text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") in _TEXT_PARTS and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def conversation_of(body: Any, api: str) -> list[tuple[str, str]]:
    """``(role, text)`` of a request's messages, in order (``api``: ``chat_completions``,
    ``messages`` or ``responses``).  Anthropic's ``system`` and Responses' ``instructions``
    are system prompts, which the router never sees; Responses items without a role
    (function calls and their outputs) carry no text to classify."""
    if not isinstance(body, dict):
        return []
    if api == "responses":
        items = body.get("input")
        if isinstance(items, str):
            return [("user", items)]
    else:
        items = body.get("messages")
    if not isinstance(items, list):
        return []
    out: list[tuple[str, str]] = []
    for m in items:
        if isinstance(m, dict) and isinstance(m.get("role"), str):
            out.append((m["role"], _text(m.get("content"))))
    return out


#: text a harness (Claude Code) injects into user messages next to tool results: not the
#: user speaking (Plano's ``session_router::INJECTED_USER_ENVELOPES``)
_ENVELOPES: Final = (("<system-reminder>", "</system-reminder>"),
                     ("<user-prompt-submit-hook>", "</user-prompt-submit-hook>"))  # fmt: skip
#: content parts that are neither text nor a tool result: an image, a document, audio
_NOT_SPOKEN: Final = frozenset({"tool_result", "tool_use", "thinking", "redacted_thinking"})


def _strip_envelopes(text: str) -> str:
    for open_tag, close_tag in _ENVELOPES:
        while (start := text.find(open_tag)) >= 0:
            end = text.find(close_tag, start + len(open_tag))
            text = text[:start] + ("" if end < 0 else text[end + len(close_tag):])
    return text


def is_user_turn(body: Any, api: str) -> bool:
    """Plano's ``session_router::is_user_turn``: the last message is the user's and says
    something -- an attachment, or text left after the harness envelopes are cut.  Tool
    results (an OpenAI ``tool`` message, Anthropic ``tool_result`` blocks, a Responses
    ``function_call_output``), assistant steps and an empty or reminder-only user tail
    are not."""
    if not isinstance(body, dict):
        return False
    items = body.get("input") if api == "responses" else body.get("messages")
    if isinstance(items, str):
        return bool(_strip_envelopes(items).strip())
    if not isinstance(items, list) or not items:
        return False
    last = items[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return False
    content = last.get("content")
    if isinstance(content, str):
        return bool(_strip_envelopes(content).strip())
    if not isinstance(content, list):
        return False
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
        elif kind not in _NOT_SPOKEN:
            return True  # an image or a document: the user speaking without words
    return bool(_strip_envelopes("\n".join(texts)).strip())


def _tool_names(tools: Any) -> list[str]:
    out: list[str] = []
    if isinstance(tools, list):
        for t in tools:
            if isinstance(t, dict):
                fn = t.get("function")
                name = fn.get("name") if isinstance(fn, dict) else t.get("name")
                if isinstance(name, str):
                    out.append(name)
    return sorted(out)


def turn_key(body: Any, api: str, model: str | None, tenant: str | None) -> str:
    """A conversation's identity without a session header, as Plano derives its implicit
    affinity key: the system prompt, the tool names and the first user message, plus the
    requested model (Plano's binding lane: a harness's small-model calls do not replay
    the main model's decision) and the tenant."""
    system: list[str] = []
    first_user = ""
    if isinstance(body, dict):
        if api == "messages":
            system.append(_text(body.get("system")))
        elif api == "responses":
            system.append(_text(body.get("instructions")))
        for role, text in conversation_of(body, api):
            if role in ("system", "developer"):
                system.append(text)
            elif role == "user" and not first_user:
                first_user = text
        tools = _tool_names(body.get("tools"))
    else:
        tools = []
    doc = json.dumps([model, tenant, system, tools, first_user], ensure_ascii=False)
    return "turn:" + hashlib.blake2b(doc.encode(), digest_size=16).hexdigest()


def _is_boundary(b: bytes, i: int) -> bool:
    return i <= 0 or i >= len(b) or (b[i] & 0xC0) != 0x80


def trim_middle_utf8(s: str, max_bytes: int) -> str:
    """At most ``max_bytes`` UTF-8 bytes of ``s``: ~60 % head, ``…``, ~40 % tail."""
    b = s.encode()
    if len(b) <= max_bytes:
        return s
    marker = TRIM_MARKER.encode()
    if max_bytes <= len(marker):
        end = max_bytes
        while end > 0 and not _is_boundary(b, end):
            end -= 1
        return b[:end].decode()
    available = max_bytes - len(marker)
    start_len = available * 3 // 5
    while start_len > 0 and not _is_boundary(b, start_len):
        start_len -= 1
    end_len = available - start_len
    end_start = max(0, len(b) - end_len)
    while end_start < len(b) and not _is_boundary(b, end_start):
        end_start += 1
    return (b[:start_len] + marker + b[end_start:]).decode()


def select_messages(
    messages: Sequence[tuple[str, str]], max_token_length: int = MAX_TOKEN_LEN
) -> list[tuple[str, str]]:
    """The messages the router sees (see the module docstring), oldest first."""
    filtered = [(r, t) for r, t in messages if r not in _EXCLUDED_ROLES and t]
    window = filtered[-MAX_ROUTING_TURNS:]
    token_count = _PROMPT_TOKENS
    picked: list[tuple[str, str]] = []
    for role, text in reversed(window):
        tokens = len(text.encode()) // TOKEN_LENGTH_DIVISOR
        if token_count + tokens > max_token_length:
            remaining = max(0, max_token_length - token_count)
            if role == "user" and remaining > 0:
                picked.append(("user", trim_middle_utf8(text, remaining * TOKEN_LENGTH_DIVISOR)))
            break
        token_count += tokens
        picked.append((role, text))
    if not picked and window:
        picked.append(window[-1])
    picked.reverse()
    return picked


def render_prompt(
    routes_text: str, messages: Sequence[tuple[str, str]], max_token_length: int = MAX_TOKEN_LEN
) -> str:
    """The router prompt for a conversation (``routes_text`` from :func:`render_routes`)."""
    selected = select_messages(messages, max_token_length)
    conversation = conversation_json(selected)
    return SYSTEM_PROMPT.replace("{routes}", routes_text).replace("{conversation}", conversation)


def conversation_json(selected: Sequence[tuple[str, str]]) -> str:
    """``json.dumps([{"role", "content"}...], indent=4, ensure_ascii=False)`` written out:
    the standard library's indented encoder is pure Python (~10x slower); the strings go
    through the same C escaper it uses, so the text is the same byte for byte."""
    if not selected:
        return "[]"
    esc = encode_basestring
    return "[\n" + ",\n".join(
        '    {\n        "role": ' + esc(r) + ',\n        "content": ' + esc(t) + "\n    }"
        for r, t in selected
    ) + "\n]"


class RequestBuilder:
    """The router call's body for one model and one set of routes, without rendering the
    prompt and re-encoding it whole: the JSON of everything but the conversation (the
    template with the routes in it, escaped as a JSON string) is built once; a request
    escapes only its conversation.  JSON string escaping is per character, so the bytes
    are :func:`router_request` (:func:`render_prompt`)'s."""

    __slots__ = ("prefix", "suffix")

    def __init__(self, model: str, routes_text: str) -> None:
        if "{conversation}" in routes_text:
            # render_prompt would fill that one too: not a prefix/suffix split; use it
            raise ValueError("routes mention the {conversation} placeholder")
        head, _, tail = SYSTEM_PROMPT.replace("{routes}", routes_text).partition("{conversation}")
        esc = encode_basestring
        self.prefix = ('{"model": ' + esc(model) + ', "messages": [{"role": "user", "content": '
                       + esc(head)[:-1]).encode()  # fmt: skip
        self.suffix = (esc(tail)[1:] + '}], "temperature": ' + json.dumps(ROUTER_TEMPERATURE) + "}").encode()

    def build(self, messages: Sequence[tuple[str, str]], max_token_length: int = MAX_TOKEN_LEN) -> bytes:
        conversation = conversation_json(select_messages(messages, max_token_length))
        return self.prefix + encode_basestring(conversation)[1:-1].encode() + self.suffix


def router_request(model: str, prompt: str) -> bytes:
    """The chat-completions body sent to the router model."""
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": ROUTER_TEMPERATURE,
        },
        ensure_ascii=False,
    ).encode()


def read_answer(body: bytes) -> tuple[str, tuple[int, int] | None]:
    """(text, (prompt tokens, completion tokens) or None) of a chat-completions answer."""
    try:
        doc = json.loads(body)
        content = doc["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RouterAnswerError(f"not a chat completion: {exc}") from None
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise RouterAnswerError("the answer's content is not a string")
    usage = doc.get("usage")
    tokens = None
    if isinstance(usage, dict):
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(pt, int) and isinstance(ct, int) and pt >= 0 and ct >= 0:
            tokens = (pt, ct)
    return content, tokens


def parse_answer(content: str, known: Iterable[str]) -> list[str]:
    """Route names chosen by the router that are among ``known``, in its order.

    Empty for an empty answer, an empty or null ``route`` and unknown names; raises
    :class:`RouterAnswerError` when the (fixed-up) answer is not JSON of that shape.
    """
    if not content:
        return []
    fixed = content.replace("'", '"').replace("\\n", "")
    try:
        doc = json.loads(fixed)
    except ValueError as exc:
        raise RouterAnswerError(f"the router's answer is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RouterAnswerError("the router's answer is not a JSON object")
    route = doc.get("route")
    if route is None:
        return []
    if isinstance(route, str):
        names = [] if route == "other" else [route]  # Arch-Router's single-route answer
    elif isinstance(route, list) and all(isinstance(r, str) for r in route):
        names = route
    else:
        raise RouterAnswerError("'route' is neither a list of names nor a name")
    allowed = set(known)
    return [n for n in names if n and n in allowed]
