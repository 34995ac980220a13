"""One status -> error-kind table (plano_fast.errors.ERROR_KINDS) for the gateway's own
errors and for provider errors converted for another format's client.

Before it, two tables disagreed: an OpenAI-format client got a 429 as
``rate_limit_exceeded`` from the gateway and ``rate_limit_error`` from a converted provider
error, a 503 as ``service_unavailable`` or ``server_error``.  The values checked here are
the providers' documented ones (sources in the table's comment).
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from plano_fast.convert import convert_error
from plano_fast.errors import ApiFormat, GatewayError, ServiceUnavailable, Unauthorized, error_body, error_kinds
from tests.test_convert_support import anthropic_client, openai_client

STATUSES = [*range(400, 432), *range(500, 512), 529, 599]


def gateway_kind(fmt: ApiFormat, status: int) -> str:
    doc = json.loads(error_body(fmt, status, "m"))
    return str(doc["error"]["status"] if fmt is ApiFormat.GEMINI else doc["error"]["type"])


def converted_kind(target: str, status: int) -> str:
    """A provider error with no type of its own, converted for a ``target`` client."""
    source = "gemini" if target != "gemini" else "openai"
    out_status, body = convert_error(status, b'{"error":{"message":"m"}}', source, target)
    doc = json.loads(body)
    if target == "gemini":
        return str(doc["error"]["status"])
    return str(doc["error"]["type"])


@pytest.mark.parametrize("status", STATUSES)
def test_gateway_and_converted_errors_agree(status: int) -> None:
    """Both paths read the one table (529 is sent as 503 to non-Anthropic clients)."""
    seen = 503 if status == 529 else status
    assert gateway_kind(ApiFormat.OPENAI, seen) == converted_kind("openai", status)
    assert gateway_kind(ApiFormat.ANTHROPIC, status) == converted_kind("anthropic", status)
    assert gateway_kind(ApiFormat.GEMINI, seen) == converted_kind("gemini", status)


@pytest.mark.parametrize(("status", "kinds"), [
    (429, ("rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED")),
    (503, ("service_unavailable_error", "overloaded_error", "UNAVAILABLE")),
    (529, ("service_unavailable_error", "overloaded_error", "UNAVAILABLE")),
    (500, ("server_error", "api_error", "INTERNAL")),
    (402, ("insufficient_quota", "billing_error", "RESOURCE_EXHAUSTED")),
    # OpenAI answers a bad key and an unknown model or path with invalid_request_error and
    # the reason in ``code`` (WIRE_FORMATS.md, the recorded 404 model_not_found).
    (401, ("invalid_request_error", "authentication_error", "UNAUTHENTICATED")),
    (404, ("invalid_request_error", "not_found_error", "NOT_FOUND")),
    (418, ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT")),
    (599, ("server_error", "api_error", "INTERNAL")),
])
def test_documented_kinds(status: int, kinds: tuple[str, str, str]) -> None:
    assert error_kinds(status) == kinds


def test_gemini_status_to_openai_type_follows_the_table() -> None:
    body = b'{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}'
    _, out = convert_error(503, body, "gemini", "openai")
    assert json.loads(out)["error"] == {"message": "busy", "type": "service_unavailable_error",
                                        "param": None, "code": "UNAVAILABLE"}


def test_bad_key_body_is_openais() -> None:
    """The shape OpenAI documents for 401 (help.openai.com 6891839)."""
    doc = json.loads(Unauthorized("the API key is not registered").body(ApiFormat.OPENAI))
    assert doc == {"error": {"message": "the API key is not registered", "type": "invalid_request_error",
                             "param": None, "code": "invalid_api_key"}}


class _Limited(GatewayError):
    status = 429


def test_sdks_read_the_gateway_error_kinds() -> None:
    """The SDKs pick the class by status and keep the table's type on the exception."""
    for err, exc_cls, kind in ((ServiceUnavailable(), openai.InternalServerError, "service_unavailable_error"),
                               (_Limited("slow down"), openai.RateLimitError, "rate_limit_error")):
        client = openai_client(err.body(ApiFormat.OPENAI), "application/json", err.status)
        with pytest.raises(exc_cls) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert info.value.type == kind
    for err, aexc in ((ServiceUnavailable(), anthropic.InternalServerError), (_Limited(), anthropic.RateLimitError)):
        aclient = anthropic_client(err.body(ApiFormat.ANTHROPIC), "application/json", err.status)
        with pytest.raises(aexc) as ainfo:
            aclient.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
        assert isinstance(ainfo.value.body, dict)
        assert ainfo.value.body["error"]["type"] == error_kinds(err.status)[1]
