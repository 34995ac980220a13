"""Shared pieces of the format converters: JSON, ids, usage, stop reasons, mapping tables.

Everything here is pure (no I/O).  The mapping tables are the single source of truth for
the converters and are documented in ``plano_fast/convert/__init__.py``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Final

from plano_fast.convert.errors import ConversionError
from plano_fast.wire import API_ANTHROPIC, API_GEMINI, API_OPENAI_CHAT, usage_counts

try:  # orjson is faster; the stdlib module is the fallback (same compact output)
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is installed in the project venv
    _orjson = None  # type: ignore[assignment]

FORMATS: Final = ("openai", "anthropic", "gemini")
#: formats a client may speak: the three upstream formats and the OpenAI Responses API
#: (a client format only: requests are converted from it, answers into it)
CLIENT_FORMATS: Final = (*FORMATS, "responses")

JSONDict = dict[str, Any]


def check_format(name: str, value: str, formats: tuple[str, ...] = FORMATS) -> None:
    if value not in formats:
        raise ValueError(f"{name} must be one of {formats}, got {value!r}")


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError on invalid input."""
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass  # e.g. lone surrogate escapes orjson refuses: let the stdlib decide
    return json.loads(data)


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (UTF-8, no ASCII escaping)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(obj)
        except TypeError:
            pass  # lone surrogates, ints beyond 64 bit: use the stdlib
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()


# --------------------------------------------------------------------------------------
# ids
# --------------------------------------------------------------------------------------

_ID_PREFIXES: Final = ("chatcmpl-", "msg_")


def _id_core(upstream_id: object) -> str:
    if isinstance(upstream_id, str) and upstream_id:
        for prefix in _ID_PREFIXES:
            if upstream_id.startswith(prefix) and len(upstream_id) > len(prefix):
                return upstream_id[len(prefix) :]
        return upstream_id
    return uuid.uuid4().hex[:24]


def openai_id(upstream_id: object) -> str:
    """``chatcmpl-<core>``: the upstream id with its ``msg_``/``chatcmpl-`` prefix swapped."""
    return "chatcmpl-" + _id_core(upstream_id)


def anthropic_id(upstream_id: object) -> str:
    """``msg_<core>``: the upstream id with its ``chatcmpl-``/``msg_`` prefix swapped."""
    return "msg_" + _id_core(upstream_id)


def gemini_id(upstream_id: object) -> str:
    """Gemini ``responseId``: the bare upstream id."""
    return _id_core(upstream_id)


def synth_call_id(seed: object, n: int) -> str:
    """A stable tool-call id for Gemini function calls (Gemini sends none): the same
    response (``responseId``) and call position always give the same id."""
    digest = hashlib.sha256(f"{seed}\x00{n}".encode("utf-8", "surrogatepass")).hexdigest()
    return "call_" + digest[:24]


# --------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------


def count(value: object) -> int | None:
    """A token count: a non-negative int (bools and floats with fractions are rejected)."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def as_dict(value: object) -> JSONDict:
    return value if type(value) is dict else {}


# --------------------------------------------------------------------------------------
# usage
# --------------------------------------------------------------------------------------


class Usage:
    """Canonical usage, the row convention (plano_fast.wire._scan_py "Normalized usage"):
    ``input_total`` includes cache reads and writes and the tool-use prompt, ``output``
    includes reasoning; ``reasoning``/``cache_*``/``audio_*`` are subsets.  (Anthropic's 1h
    cache writes and server-side searches, Gemini's tool-use prompt: each exists in one
    format only, which no answer is converted into from itself.)"""

    __slots__ = ("input_total", "output", "cache_read", "cache_write", "reasoning", "audio_in", "audio_out")

    def __init__(
        self,
        input_total: int = 0,
        output: int = 0,
        cache_read: int = 0,
        cache_write: int = 0,
        reasoning: int = 0,
        audio_in: int = 0,
        audio_out: int = 0,
    ) -> None:
        self.input_total = input_total
        self.output = output
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.reasoning = reasoning
        self.audio_in = audio_in
        self.audio_out = audio_out

    def __repr__(self) -> str:
        return (
            f"Usage(input_total={self.input_total}, output={self.output}, "
            f"cache_read={self.cache_read}, cache_write={self.cache_write}, "
            f"reasoning={self.reasoning}, audio_in={self.audio_in}, audio_out={self.audio_out})"
        )


def _billed(api: int, u: JSONDict) -> Usage:
    """The counts the scanner bills for ``u`` (``plano_fast.wire.usage_counts``), so a
    client of another format is told what its row holds; zeros for an object that does
    not count (callers check ``counts_as_usage`` first: no usage is reported then)."""
    counts = usage_counts(api, u)
    if counts is None:
        return Usage()
    inp, out, cr, cw, rs, _cw1h, _tool, ain, aout, _ws = counts
    return Usage(inp, out, cr, cw, rs, ain, aout)


def usage_from_openai(u: JSONDict) -> Usage:
    return _billed(API_OPENAI_CHAT, u)


def usage_from_anthropic(u: JSONDict) -> Usage:
    return _billed(API_ANTHROPIC, u)


def usage_from_gemini(u: JSONDict) -> Usage:
    return _billed(API_GEMINI, u)


# The usage a converted answer reports, in the target's documented fields, so its client
# reads (and a scan of it bills) what the row holds: every part the target has a field for.


def usage_to_openai(u: Usage) -> JSONDict:
    """OpenAI CompletionUsage (openai-python ``completion_usage.py``): cached / cache-write /
    audio input tokens in ``prompt_tokens_details``, reasoning and audio output tokens in
    ``completion_tokens_details`` (a tool-use prompt is inside ``prompt_tokens``)."""
    prompt_details: JSONDict = {"cached_tokens": u.cache_read}
    if u.cache_write:
        prompt_details["cache_write_tokens"] = u.cache_write
    if u.audio_in:
        prompt_details["audio_tokens"] = u.audio_in
    completion_details: JSONDict = {"reasoning_tokens": u.reasoning}
    if u.audio_out:
        completion_details["audio_tokens"] = u.audio_out
    return {
        "prompt_tokens": u.input_total,
        "completion_tokens": u.output,
        "total_tokens": u.input_total + u.output,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": completion_details,
    }


def usage_to_anthropic(u: Usage) -> JSONDict:
    """Anthropic Messages usage (anthropic-sdk-python ``types/usage.py``; no audio, and the
    tool-use prompt is input)."""
    return {
        "input_tokens": max(0, u.input_total - u.cache_read - u.cache_write),
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "output_tokens": u.output,
    }


def usage_to_gemini(u: Usage) -> JSONDict:
    """Gemini UsageMetadata (https://ai.google.dev/api/generate-content#UsageMetadata):
    thoughts apart from ``candidatesTokenCount``, audio as the ``AUDIO`` entries of
    ``promptTokensDetails`` / ``candidatesTokensDetails`` (uncached audio: no cached audio
    is reported, so none is taken off)."""
    out: JSONDict = {
        "promptTokenCount": u.input_total,
        "candidatesTokenCount": max(0, u.output - u.reasoning),
        "totalTokenCount": u.input_total + u.output,
    }
    if u.cache_read:
        out["cachedContentTokenCount"] = u.cache_read
    if u.reasoning:
        out["thoughtsTokenCount"] = u.reasoning
    if u.audio_in:
        out["promptTokensDetails"] = [{"modality": "AUDIO", "tokenCount": u.audio_in}]
    if u.audio_out:
        out["candidatesTokensDetails"] = [{"modality": "AUDIO", "tokenCount": u.audio_out}]
    return out


# --------------------------------------------------------------------------------------
# stop reasons.  The canonical value is Anthropic's ``stop_reason`` vocabulary.
# --------------------------------------------------------------------------------------

#: OpenAI ``finish_reason`` -> canonical (Anthropic ``stop_reason``)
OPENAI_TO_STOP: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: canonical -> OpenAI ``finish_reason``
STOP_TO_OPENAI: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: Gemini ``finishReason`` -> canonical; unknown values -> ``end_turn``
GEMINI_TO_STOP: Final[dict[str, str]] = {
    "STOP": "end_turn",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "refusal",
    "RECITATION": "end_turn",
    "LANGUAGE": "refusal",
    "OTHER": "end_turn",
    "BLOCKLIST": "refusal",
    "PROHIBITED_CONTENT": "refusal",
    "SPII": "refusal",
    "IMAGE_SAFETY": "refusal",
    "MALFORMED_FUNCTION_CALL": "end_turn",
    "FINISH_REASON_UNSPECIFIED": "end_turn",
}
#: canonical -> Gemini ``finishReason`` (Gemini reports function calls with ``STOP``)
STOP_TO_GEMINI: Final[dict[str, str]] = {
    "end_turn": "STOP",
    "stop_sequence": "STOP",
    "pause_turn": "STOP",
    "tool_use": "STOP",
    "max_tokens": "MAX_TOKENS",
    "model_context_window_exceeded": "MAX_TOKENS",
    "refusal": "SAFETY",
}
ANTHROPIC_STOPS: Final = frozenset(STOP_TO_OPENAI)


def stop_from(source: str, reason: object, saw_tool_calls: bool) -> str:
    """Canonical stop reason from a source-format value.  A plain "stop" with tool calls
    in the answer becomes ``tool_use`` (some OpenAI-compatible servers and Gemini say
    "stop" for tool calls; Anthropic clients run tools only on ``tool_use``)."""
    if source == "openai":
        stop = OPENAI_TO_STOP.get(reason, "end_turn") if isinstance(reason, str) else "end_turn"
    elif source == "gemini":
        stop = GEMINI_TO_STOP.get(reason, "end_turn") if isinstance(reason, str) else "end_turn"
    else:
        stop = reason if isinstance(reason, str) and reason in ANTHROPIC_STOPS else "end_turn"
    if saw_tool_calls and stop == "end_turn":
        return "tool_use"
    return stop


# --------------------------------------------------------------------------------------
# thinking / reasoning effort
# --------------------------------------------------------------------------------------

#: OpenAI ``reasoning_effort`` -> thinking budget tokens (Anthropic ``budget_tokens`` and
#: Gemini ``thinkingBudget``).  low/medium/high are Google's own OpenAI-compat values;
#: Anthropic's minimum budget is 1024, so "minimal" also maps to 1024.
EFFORT_TO_BUDGET: Final[dict[str, int]] = {
    "minimal": 1024,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
}


def budget_to_effort(budget: int) -> str:
    """Thinking budget -> OpenAI ``reasoning_effort``: <=1024 low, <=8192 medium, else high."""
    if budget <= 1024:
        return "low"
    if budget <= 8192:
        return "medium"
    return "high"


#: Anthropic requires ``max_tokens``; used when the source request has no limit.
DEFAULT_ANTHROPIC_MAX_TOKENS: Final = 4096
ANTHROPIC_MIN_THINKING_BUDGET: Final = 1024


# --------------------------------------------------------------------------------------
# media
# --------------------------------------------------------------------------------------

_EXT_MIME: Final[dict[str, str]] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
    "pdf": "application/pdf",
    "mp3": "audio/mp3",
    "wav": "audio/wav",
    "mp4": "video/mp4",
}


def guess_mime(url: str, default: str) -> str:
    """MIME type from a URL's file extension (a fixed table: no system files read)."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    dot = path.rfind(".")
    if dot != -1 and "/" not in path[dot:]:
        return _EXT_MIME.get(path[dot + 1 :].lower(), default)
    return default


def parse_data_url(url: str, where: str) -> tuple[str, str] | None:
    """``data:<media type>;base64,<data>`` -> (media type, data); None for other URLs."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ConversionError(f"{where}: only base64 data: URLs are supported")
    media_type = head[5:-7].split(";", 1)[0] or "application/octet-stream"
    return media_type, data


def data_url(media_type: str, data: str) -> str:
    return f"data:{media_type};base64,{data}"
