"""Conversion errors and provider-error translation between the three wire formats.

``ConversionError`` is raised when a request/response cannot be expressed in the target
format (status 400, the message names the offending field) or when upstream bytes are
unusable (status 502).

``convert_error`` turns a provider's error response into the error shape the client's SDK
understands, keeping the HTTP status (except Anthropic's 529, which becomes 503 for
OpenAI/Gemini clients) and mapping the error type by status with the gateway's one table,
:data:`plano_fast.errors.ERROR_KINDS` (OpenAI ``error.type``, Anthropic ``error.type``,
Gemini ``error.status``; an unlisted 4xx is the client's, an unlisted 5xx the server's).

Type hints from the source win over the status table where they are more precise: an
OpenAI ``insufficient_quota`` becomes Anthropic ``billing_error``; an Anthropic type is kept
verbatim as the OpenAI ``type`` (the OpenAI SDK only looks at the status); Gemini's
``error.status`` becomes the OpenAI ``code``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from plano_fast.errors import anthropic_error_type, gemini_error_status, openai_error_type


class ConversionError(ValueError):
    """A request/response that cannot be expressed in the target format."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0])


_FORMATS: Final = ("openai", "anthropic", "gemini")

# Source type/status strings -> an HTTP status (used for mid-stream errors, which carry none).
_STATUS_BY_ANTHROPIC_TYPE: Final[dict[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_STATUS_BY_OPENAI_TYPE: Final[dict[str, int]] = {
    "invalid_request_error": 400,
    "invalid_api_key": 401,
    "authentication_error": 401,
    "insufficient_quota": 429,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "requests": 429,
    "tokens": 429,
    "server_error": 500,
    "api_error": 500,
    "service_unavailable": 503,
    "overloaded_error": 503,
    "timeout_error": 504,
}
_STATUS_BY_GEMINI_STATUS: Final[dict[str, int]] = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
@dataclass(slots=True)
class ErrorInfo:
    """A provider error, format-neutral."""

    status: int
    message: str
    source: str
    type: str | None = None  # OpenAI type / Anthropic type / Gemini status string
    code: Any = None  # OpenAI code (may be an int: OpenRouter)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def error_info_from(source: str, doc: object, status: int | None) -> ErrorInfo:
    """Read an error document (a whole error body or a mid-stream error event's JSON) of
    the ``source`` format.  ``status`` None = a mid-stream error: guessed from the type."""
    if isinstance(doc, list) and doc:  # Gemini's streamed JSON array form
        doc = doc[0]
    err: Any = doc.get("error") if isinstance(doc, dict) else None
    message: str | None = None
    etype: str | None = None
    code: Any = None
    if isinstance(err, dict):
        message = _str(err.get("message"))
        if source == "gemini":
            etype = _str(err.get("status"))
            ecode = err.get("code")
            if status is None and type(ecode) is int:
                status = ecode
        else:
            etype = _str(err.get("type"))
            code = err.get("code")
    elif isinstance(err, str):
        message = err
    if status is None:
        status = _guess_status(source, etype, code)
    if message is None:
        message = _status_phrase(status)
    return ErrorInfo(status=status, message=message, source=source, type=etype, code=code)


def _guess_status(source: str, etype: str | None, code: Any) -> int:
    if type(code) is int and 400 <= code <= 599:
        return code
    if etype is not None:
        if source == "anthropic":
            return _STATUS_BY_ANTHROPIC_TYPE.get(etype, 500)
        if source == "gemini":
            return _STATUS_BY_GEMINI_STATUS.get(etype, 500)
        by_type = _STATUS_BY_OPENAI_TYPE.get(etype)
        if by_type is not None:
            return by_type
    if isinstance(code, str) and code in _STATUS_BY_OPENAI_TYPE:
        return _STATUS_BY_OPENAI_TYPE[code]
    return 500


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Upstream error"


def render_error(target: str, info: ErrorInfo) -> dict[str, Any]:
    """The error document a ``target``-format client expects."""
    status = info.status
    if target == "anthropic":
        if info.source == "anthropic" and info.type:
            etype = info.type
        elif info.source == "openai" and "insufficient_quota" in (info.type, info.code):
            etype = "billing_error"
        else:
            etype = anthropic_error_type(status)
        return {"type": "error", "error": {"type": etype, "message": info.message}}
    if status == 529:
        status = 503
    if target == "gemini":
        if info.source == "gemini" and info.type:
            gstatus = info.type
        else:
            gstatus = gemini_error_status(status)
        return {"error": {"code": status, "message": info.message, "status": gstatus}}
    # openai
    code: Any = None
    if info.source == "openai" and info.type:
        otype = info.type
        code = info.code
    elif info.source == "anthropic" and info.type:
        otype = info.type
    elif info.source == "gemini" and info.type:
        # The Gemini status names its HTTP status; the table gives that status's type.
        otype = openai_error_type(_STATUS_BY_GEMINI_STATUS.get(info.type, status))
        code = info.type
    else:
        otype = openai_error_type(status)
        if info.source == "openai":
            code = info.code
    return {"error": {"message": info.message, "type": otype, "param": None, "code": code}}


def convert_error(status: int, body: bytes, source: str, target: str) -> tuple[int, bytes]:
    """A provider error response (``status``, raw ``body`` in ``source`` format) as the
    (status, body) a ``target``-format client expects.  Non-JSON bodies keep their text
    (first 2000 characters) as the message."""
    if target == "responses":
        target = "openai"  # the Responses API answers errors in the OpenAI shape
    for name, value in (("source", source), ("target", target)):
        if value not in _FORMATS:
            raise ValueError(f"{name} must be one of {_FORMATS}, got {value!r}")
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    info = error_info_from(source, doc, status)
    if doc is None or not isinstance(doc, (dict, list)):
        text = body.decode("utf-8", "replace").strip()
        if text:
            info.message = text[:2000]
    out_status = 503 if status == 529 and target != "anthropic" else status
    rendered = render_error(target, info)
    return out_status, json.dumps(rendered, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "replace"
    )
