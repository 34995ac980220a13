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
from collections.abc import Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import Final


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


# --------------------------------------------------------------------------- the error table

#: The one status -> error-kind table, a column per client format: (OpenAI ``error.type``,
#: Anthropic ``error.type``, Gemini ``error.status``).  The gateway's own errors
#: (:func:`error_body`) and provider errors converted for another format's client
#: (:mod:`plano_fast.convert.errors`) both read it.  The official SDKs pick their exception
#: class by HTTP status alone (openai/anthropic ``_make_status_error``) and keep the body's
#: ``type``/``code`` as attributes, so the strings matter to code that inspects them:
#:
#: * OpenAI: the types in OpenAI's error-codes guide (as tabulated in Microsoft's
#:   learn.microsoft.com dev-proxy "openai-rate-limit-reached" page): 429 ``slow_down`` has
#:   type ``rate_limit_error`` (``rate_limit_exceeded`` is the ``error.code`` of a
#:   per-minute limit, whose type is ``requests``/``tokens``: :mod:`plano_fast.ratelimit`
#:   sends those), 503 ``server_is_overloaded`` has type ``service_unavailable_error``;
#:   ``server_error`` for 500, ``insufficient_quota`` for quota.  401 and 404 are
#:   ``invalid_request_error`` with the reason in ``code`` (``invalid_api_key``,
#:   ``model_not_found``), as OpenAI answers them (help.openai.com 6891839; the recorded
#:   404 in tests/data/fixtures/pydantic-ai/test_tool_regular_error.yaml).
#: * Anthropic: docs.anthropic.com/en/api/errors (529 and 503 are ``overloaded_error``).
#: * Gemini: Google's canonical codes (ai.google.dev/gemini-api/docs/troubleshooting).
#:
#: A status not listed falls back by class: 4xx is the client's
#: (``invalid_request_error`` / ``INVALID_ARGUMENT``), 5xx the server's
#: (``server_error`` / ``api_error`` / ``INTERNAL``).
ERROR_KINDS: Final[Mapping[int, tuple[str, str, str]]] = MappingProxyType({
    400: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    401: ("invalid_request_error", "authentication_error", "UNAUTHENTICATED"),
    402: ("insufficient_quota", "billing_error", "RESOURCE_EXHAUSTED"),
    403: ("permission_error", "permission_error", "PERMISSION_DENIED"),
    404: ("invalid_request_error", "not_found_error", "NOT_FOUND"),
    408: ("timeout_error", "timeout_error", "DEADLINE_EXCEEDED"),
    409: ("invalid_request_error", "invalid_request_error", "ABORTED"),
    413: ("invalid_request_error", "request_too_large", "INVALID_ARGUMENT"),
    422: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    429: ("rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    431: ("invalid_request_error", "request_too_large", "INVALID_ARGUMENT"),
    500: ("server_error", "api_error", "INTERNAL"),
    502: ("server_error", "api_error", "UNAVAILABLE"),
    503: ("service_unavailable_error", "overloaded_error", "UNAVAILABLE"),
    504: ("timeout_error", "timeout_error", "DEADLINE_EXCEEDED"),
    529: ("service_unavailable_error", "overloaded_error", "UNAVAILABLE"),
})
_CLIENT_KINDS: Final = ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT")
_SERVER_KINDS: Final = ("server_error", "api_error", "INTERNAL")


def error_kinds(status: int) -> tuple[str, str, str]:
    """(OpenAI type, Anthropic type, Gemini status) for an HTTP ``status``."""
    found = ERROR_KINDS.get(status)
    if found is not None:
        return found
    return _CLIENT_KINDS if status < 500 else _SERVER_KINDS


def openai_error_type(status: int) -> str:
    return error_kinds(status)[0]


def anthropic_error_type(status: int) -> str:
    return error_kinds(status)[1]


def gemini_error_status(status: int) -> str:
    return error_kinds(status)[2]


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
            "error": {"type": anthropic_error_type(status), "message": message},
        }
    elif fmt is ApiFormat.GEMINI:
        doc = {
            "error": {
                "code": status,
                "message": message,
                "status": gemini_error_status(status),
            }
        }
    else:
        doc = {
            "error": {
                "message": message,
                "type": openai_type or openai_error_type(status),
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
    #: the request id answered as ``x-plano-request-id``, as a relayed answer carries it:
    #: the exchange's where one handled the request (its usage row and access-log line have
    #: it: ``Exchange.refused``, or set where the exchange ends with this error), else a
    #: fresh one, its access-log line's (the server's refusal handler, ``Gateway._refusal``)
    request_id: str | None = None

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


class HttpVersionNotSupported(MalformedRequest):
    """A request line naming an HTTP version other than 1.0 or 1.1 (``HTTP/2.0``, ``HTTP/0.9``,
    both of which llhttp parses): 505 (RFC 9110 §15.6.6), closing; never served as HTTP/1.x."""

    status = 505
    code = "http_version_not_supported"
    openai_type = "invalid_request_error"


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
    #: the attempt's outcome on the usage row's attempt trail (plano_fast.failover)
    kind = "upstream_error"


class UpstreamConnectError(UpstreamError):
    # Nothing reached the provider, so trying another connection is safe.
    retryable = True
    code = "upstream_connect_error"
    kind = "connect_error"


class UpstreamTimeout(UpstreamError):
    """No response byte within the first-byte timeout (retryable before the head)."""

    status = 504
    code = "upstream_timeout"
    kind = "timeout"


class UpstreamStalled(UpstreamTimeout):
    """The response started, then no byte came for the idle timeout: the client sees the
    cut (its head was sent), billed for what the provider reported."""

    kind = "idle_timeout"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "unavailable"


class ProviderCredentialRejected(UpstreamError):
    """The provider answered 401/403 to the gateway's own key (config mode's ``access_key``,
    a managed provider key): the client's credential is fine, the operator's is not.  A 502,
    not the provider's answer: its body can name part of the key (OpenAI's "Incorrect API
    key provided: sk-proj-****abcd"), and a 401 would tell the client its own key is wrong."""

    code = "upstream_credential_rejected"
    kind = "upstream_credential_rejected"

    def __init__(self) -> None:
        super().__init__("the provider rejected the gateway's credential for it; the operator has been told")
