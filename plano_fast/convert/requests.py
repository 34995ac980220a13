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

from plano_fast.convert._common import (
    CLIENT_FORMATS,
    DEFAULT_ANTHROPIC_MAX_TOKENS,
    JSONDict,
    check_format,
    dumps,
)
from plano_fast.convert._ir import Request, Text, Thinking, ToolResult, ToolUse
from plano_fast.convert._request_emit import emit_request
from plano_fast.convert._request_gemini import parse_gemini
from plano_fast.convert._request_parse import parse_anthropic, parse_openai
from plano_fast.convert._request_responses import parse_responses, structured_output_as_tool
from plano_fast.convert.errors import ConversionError

__all__ = ["convert_request", "count_tokens_estimate", "parse_request"]

# ======================================================================================
# public API
# ======================================================================================

_PARSERS = {
    "anthropic": parse_anthropic,
    "openai": parse_openai,
    "gemini": parse_gemini,
    "responses": parse_responses,
}


def parse_request(body: JSONDict, source: str, target: str) -> Request:
    """The neutral model of a ``source``-format request (``target`` names the format in
    error messages)."""
    check_format("source", source, CLIENT_FORMATS)
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
    check_format("source", source, CLIENT_FORMATS)
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
    if source == "responses" and target == "anthropic":
        structured_output_as_tool(req)
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

    Rule (an approximation: about right for English prose, and counting each non-ASCII
    character as a token keeps CJK text from being under-counted): every text
    (system, messages, tool results, tool-call arguments, tool definitions as JSON) counts
    ceil(ASCII bytes / 4) + 1 per non-ASCII character; each image/document/audio part
    counts 1600; each message adds 4.  Requests that cannot be parsed are estimated from
    their whole JSON size the same way.
    """
    check_format("source", source, CLIENT_FORMATS)
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

