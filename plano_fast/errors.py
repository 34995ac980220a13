"""Gateway errors and their rendering in the client's API format.

Every error the gateway itself produces knows three things (the Pingora habit): its HTTP
status, whose fault it is (``source``: "client", "gateway" or "upstream"), and whether it is
safe to retry on a fresh upstream connection.  The body is rendered in the shape the
client's SDK expects, so an ``openai`` client raises ``openai.BadRequestError`` and an
``anthropic`` client ``anthropic.BadRequestError`` with our message, instead of choking on
an unexpected body.
"""

from __future__ import annotations

import enum
import json
from http import HTTPStatus


class ApiFormat(enum.IntEnum):
    """The wire format a client speaks, decided by the request path."""

    OPENAI = 1
    ANTHROPIC = 2
    GEMINI = 3


def api_format_for_path(path: bytes) -> ApiFormat:
    """Pick the error/response format from the request path (query string ignored)."""
    # find(), not ``in``: on 3.11 ``bytes in bytes`` first tries the needle as an int and
    # formats a TypeError it then discards (~1,800 instructions a test).
    if path.find(b"/messages") >= 0:
        return ApiFormat.ANTHROPIC
    if path.find(b"/models/") >= 0 and path.find(b":") >= 0:  # /v1beta/models/{model}:generateContent
        return ApiFormat.GEMINI
    return ApiFormat.OPENAI


# OpenAI's error "type" strings by status, as its API sends them.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    431: "invalid_request_error",
    502: "api_error",
    503: "service_unavailable",
    504: "timeout_error",
}
# Anthropic's documented error types (docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    431: "request_too_large",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Google's canonical status names (ai.google.dev/gemini-api/docs/troubleshooting).
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "INVALID_ARGUMENT",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(
    fmt: ApiFormat,
    status: int,
    message: str,
    code: str | None = None,
    openai_type: str | None = None,
) -> bytes:
    """Render an error body the client's SDK understands.

    ``code`` is a short machine-readable reason (``"model_not_found"``); it goes where each
    format keeps one.  Messages must never contain secrets: callers pass fixed text or
    values the client sent itself (model names), never keys.
    """
    if fmt is ApiFormat.ANTHROPIC:
        doc: dict[str, object] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        }
    elif fmt is ApiFormat.GEMINI:
        doc = {
            "error": {
                "code": status,
                "message": message,
                "status": _GEMINI_STATUS.get(status, "INTERNAL"),
            }
        }
    else:
        doc = {
            "error": {
                "message": message,
                "type": openai_type or _OPENAI_TYPES.get(status, "api_error"),
                "param": None,
                "code": code,
            }
        }
    return json.dumps(doc, separators=(",", ":")).encode()


class GatewayError(Exception):
    """An error the gateway answers itself, with a status and a client-format body."""

    status: int = 500
    source: str = "gateway"
    retryable: bool = False
    code: str | None = None
    #: the connection must be closed after the answer (framing can no longer be trusted)
    close_connection: bool = False
    #: OpenAI-format "type" when it is not the usual one for the status
    openai_type: str | None = None

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or HTTPStatus(self.status).phrase)

    @property
    def message(self) -> str:
        return str(self.args[0])

    def body(self, fmt: ApiFormat) -> bytes:
        return error_body(fmt, self.status, self.message, self.code, self.openai_type)

    def headers(self, fmt: ApiFormat) -> tuple[tuple[bytes, bytes], ...]:
        """Extra response headers (Retry-After, rate-limit headers) in the client's format."""
        return ()


class ClientError(GatewayError):
    status = 400
    source = "client"
    code = "invalid_request"


class MalformedRequest(ClientError):
    """The HTTP framing is broken or ambiguous: answer 400 and close (RFC 9112 §6.3)."""

    code = "malformed_request"
    close_connection = True


class HeadersTooLarge(ClientError):
    status = 431
    code = "request_header_fields_too_large"
    close_connection = True


class BodyTooLarge(ClientError):
    status = 413
    code = "request_too_large"
    close_connection = True


class RequestHeadTimeout(ClientError):
    status = 408
    code = "request_timeout"
    close_connection = True


class NotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class UnknownModelError(ClientError):
    code = "model_not_found"


class BadRequestBody(ClientError):
    code = "invalid_json"


class Unauthorized(ClientError):
    status = 401
    code = "invalid_api_key"


class SpendingLimitExceeded(ClientError):
    """A soft or hard budget refuses the request (the original design's body)."""

    status = 429
    code = "spending_limit_exceeded"
    openai_type = "spending_limit_exceeded"

    def __init__(self, message: str = "project has exceeded its spending limit") -> None:
        super().__init__(message)


class UpstreamError(GatewayError):
    """The provider could not be reached or broke the exchange."""

    status = 502
    source = "upstream"
    code = "upstream_error"


class UpstreamConnectError(UpstreamError):
    # Nothing reached the provider, so trying another connection is safe.
    retryable = True
    code = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "unavailable"
