"""convert_error: provider error bodies in the client's error shape; the SDKs raise the
right exception classes from the converted bodies."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.test_convert_support import (
    HAVE_FIXTURES,
    anthropic_client,
    cassette,
    openai_client,
    raw_fixture,
)
from plano_fast.convert import convert_error

needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason="shared fixtures not present")

OPENAI_429_QUOTA = json.dumps({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                         "param": None, "code": "insufficient_quota"}}).encode()
ANTHROPIC_529 = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}'
GEMINI_400 = json.dumps({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}).encode()


def conv(status: int, body: bytes, source: str, target: str) -> tuple[int, dict[str, object]]:
    out_status, out = convert_error(status, body, source, target)
    return out_status, json.loads(out)


def test_openai_quota_to_anthropic_billing() -> None:
    assert conv(429, OPENAI_429_QUOTA, "openai", "anthropic") == (
        429, {"type": "error", "error": {"type": "billing_error", "message": "You exceeded your current quota"}})


def test_anthropic_overloaded_to_openai_and_gemini() -> None:
    assert conv(529, ANTHROPIC_529, "anthropic", "openai") == (
        503, {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}})
    assert conv(529, ANTHROPIC_529, "anthropic", "gemini") == (
        503, {"error": {"code": 503, "message": "Overloaded", "status": "UNAVAILABLE"}})


def test_gemini_to_openai_and_anthropic() -> None:
    assert conv(400, GEMINI_400, "gemini", "openai") == (
        400, {"error": {"message": "API key not valid.", "type": "invalid_request_error", "param": None,
                        "code": "INVALID_ARGUMENT"}})
    assert conv(400, GEMINI_400, "gemini", "anthropic")[1]["error"] == {"type": "invalid_request_error",
                                                                         "message": "API key not valid."}


@pytest.mark.parametrize(("status", "ant_type", "gem_status"), [
    (400, "invalid_request_error", "INVALID_ARGUMENT"), (401, "authentication_error", "UNAUTHENTICATED"),
    (403, "permission_error", "PERMISSION_DENIED"), (404, "not_found_error", "NOT_FOUND"),
    (413, "request_too_large", "INVALID_ARGUMENT"), (429, "rate_limit_error", "RESOURCE_EXHAUSTED"),
    (500, "api_error", "INTERNAL"), (503, "overloaded_error", "UNAVAILABLE"), (504, "timeout_error", "DEADLINE_EXCEEDED"),
    (418, "invalid_request_error", "INVALID_ARGUMENT"), (599, "api_error", "INTERNAL"),
])
def test_status_table(status: int, ant_type: str, gem_status: str) -> None:
    body = json.dumps({"error": {"message": "m", "type": "whatever", "code": None}}).encode()
    assert conv(status, body, "openai", "anthropic")[1]["error"] == {"type": ant_type, "message": "m"}
    assert conv(status, body, "openai", "gemini")[1]["error"] == {"code": status, "message": "m", "status": gem_status}


def test_non_json_body_keeps_text_and_status() -> None:
    assert conv(502, b"<html>Bad gateway</html>", "openai", "anthropic") == (
        502, {"type": "error", "error": {"type": "api_error", "message": "<html>Bad gateway</html>"}})
    assert conv(500, b"", "anthropic", "openai")[1]["error"]["message"] == "Internal Server Error"  # type: ignore[index]


@pytest.mark.parametrize(("status", "exc"), [
    (400, anthropic.BadRequestError), (401, anthropic.AuthenticationError), (404, anthropic.NotFoundError),
    (429, anthropic.RateLimitError), (500, anthropic.InternalServerError),
])
def test_anthropic_sdk_raises_matching_exception(status: int, exc: type[Exception]) -> None:
    out_status, body = convert_error(status, OPENAI_429_QUOTA, "openai", "anthropic")
    client = anthropic_client(body, "application/json", out_status)
    with pytest.raises(exc) as info:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert "quota" in str(info.value)


@pytest.mark.parametrize(("status", "exc"), [
    (400, openai.BadRequestError), (403, openai.PermissionDeniedError), (429, openai.RateLimitError),
    (529, openai.InternalServerError),
])
def test_openai_sdk_raises_matching_exception(status: int, exc: type[Exception]) -> None:
    out_status, body = convert_error(status, ANTHROPIC_529, "anthropic", "openai")
    client = openai_client(body, "application/json", out_status)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert "Overloaded" in str(info.value)


@needs_fixtures
def test_recorded_error_bodies() -> None:
    quota = raw_fixture("vercel-ai/openai-error.1.json")
    assert conv(429, quota, "openai", "anthropic")[1]["error"]["type"] == "billing_error"  # type: ignore[index]
    legacy = raw_fixture("vercel-ai/reasoning-model-legacy-parameter-error.json")
    status, doc = conv(400, legacy, "openai", "anthropic")
    assert status == 400 and doc["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_completion_tokens" in doc["error"]["message"]  # type: ignore[index]
    google = raw_fixture("vercel-ai/google-429-retry-info.json")
    status, doc = conv(429, google, "gemini", "openai")
    assert doc["error"] == {"message": "You exceeded your current quota, please check your plan.",  # type: ignore[comparison-overlap]
                            "type": "rate_limit_error", "param": None, "code": "RESOURCE_EXHAUSTED"}
    assert conv(429, google, "gemini", "anthropic")[1]["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    groq404 = json.dumps(cassette("test_tool_regular_error.yaml")[0]["response"]["parsed_body"]).encode()
    status, doc = conv(404, groq404, "openai", "anthropic")
    assert doc["error"]["type"] == "not_found_error" and "does not exist" in doc["error"]["message"]  # type: ignore[index]
    openrouter = json.dumps(cassette("test_openrouter_errors_raised.yaml")[0]["response"]["parsed_body"]).encode()
    status, doc = conv(429, openrouter, "openai", "anthropic")
    assert doc["error"] == {"type": "rate_limit_error", "message": "Provider returned error"}
    o1 = json.dumps(cassette("test_openai_o1_mini_system_role[developer].yaml")[0]["response"]["parsed_body"]).encode()
    status, doc = conv(400, o1, "openai", "gemini")
    assert doc["error"]["status"] == "INVALID_ARGUMENT" and "developer" in doc["error"]["message"]  # type: ignore[index]


def test_unknown_format() -> None:
    with pytest.raises(ValueError):
        convert_error(400, b"{}", "openai", "cohere")
