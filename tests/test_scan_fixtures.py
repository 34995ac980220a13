"""Recorded provider traffic (/work/shared/data/fixtures, see its SOURCES.md for provenance and
licences) through both scanner implementations.

The expected numbers were read from the fixtures with ``json`` once and are hard-coded here.
Streams are fed whole, one byte at a time and split in two at every offset (for the few bodies
over 4 KB: every offset of the last 1.5 KB, where the usage lives, plus an even spread; fewer
for the slower pure-Python twin).
"""

from __future__ import annotations

import copy
import functools
import json
from types import ModuleType
from typing import Any

import pytest

from tests.test_scan import (
    ANTHROPIC,
    CHAT,
    GEMINI,
    IMPLEMENTATIONS,
    RESPONSES,
    U,
    check_all_splits,
    request_tuple,
)
from tests.shared_data import FIXTURES

yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")


@pytest.fixture(params=IMPLEMENTATIONS)
def scan(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def _api_for(uri: str) -> int:
    if "generativelanguage.googleapis.com" in uri:
        return GEMINI
    if uri.endswith("/responses"):
        return RESPONSES
    if "api.anthropic.com" in uri:
        return ANTHROPIC
    return CHAT


@functools.cache
def _parsed_cassette(name: str) -> list[dict[str, Any]]:
    """A cassette parsed once per process: ~150 cases read the same 21 files, and the
    YAML parse (up to ~0.6 s a file on a loaded machine) was most of this module's time."""
    with open(FIXTURES / "pydantic-ai" / name, encoding="utf-8") as fh:
        interactions: list[dict[str, Any]] = yaml.safe_load(fh)["interactions"]
    return interactions


def _cassette(name: str) -> list[dict[str, Any]]:
    """The cassette's interactions, a copy of its own for each caller (no case can see
    another's changes)."""
    return copy.deepcopy(_parsed_cassette(name))


def _response(interaction: dict[str, Any]) -> tuple[bool, bytes]:
    """(streamed, body bytes) of a cassette interaction."""
    response = interaction["response"]
    if "parsed_body" in response:
        return False, json.dumps(response["parsed_body"]).encode()
    string: str = response["body"]["string"]
    return True, string.encode()


# (cassette, interaction index) -> expected Usage tuple
# U(input, output, cache_read, cache_write, reasoning, has_usage=True, model=..., is_error=...)
CASSETTES: dict[tuple[str, int], tuple[Any, ...]] = {
    ("test_anthropic_cache_real_api.yaml", 0): U(3 + 1111, 406, 1111, 0, 0, model="claude-sonnet-4-5-20250929"),
    ("test_anthropic_cache_real_api.yaml", 1): U(3 + 1111 + 418, 33, 1111, 418, 0, model="claude-sonnet-4-5-20250929"),
    ("test_cerebras_model_simple.yaml", 0): U(43, 9, model="llama-3.3-70b"),
    ("test_deepseek_model_thinking_part.yaml", 0): U(12, 789, 0, 0, 415, model="deepseek-reasoner"),
    ("test_deepseek_model_thinking_stream.yaml", 0): U(6, 212, 0, 0, 198, model="deepseek-reasoner"),
    ("test_google_model.yaml", 0): U(9, 9 + 34, 0, 0, 34, model="gemini-2.5-flash"),
    ("test_google_model_iter_stream.yaml", 0): U(52, 5, model="gemini-2.0-flash"),
    ("test_google_model_iter_stream.yaml", 1): U(64, 5, model="gemini-2.0-flash"),
    ("test_google_model_iter_stream.yaml", 2): U(79, 12, model="gemini-2.0-flash"),
    # a video's audio track is AUDIO tokens, priced at the audio rate
    # (https://ai.google.dev/gemini-api/docs/pricing); 1,881 of its 1,917 are cache reads
    # (cacheTokensDetails): 36 uncached audio tokens
    ("test_google_model_mobile_youtube_video_url_input.yaml", 0): U(
        17713, 68 + 821, 17379, 0, 821, model="gemini-2.5-flash", audio_in=1917 - 1881
    ),
    ("test_google_stream_usage_is_live_mid_stream.yaml", 0): U(18, 80 + 35, 0, 0, 35, model="gemini-2.5-flash"),
    ("test_groq_model_web_search_tool_stream.yaml", 0): U(5003, 359, model="groq/compound"),
    ("test_mistral_history_uses_prompt_cache.yaml", 0): U(253, 5, 0, model="mistral-large-latest"),
    ("test_mistral_history_uses_prompt_cache.yaml", 1): U(268, 5, 224, model="mistral-large-latest"),
    ("test_multiple_agent_tool_calls.yaml", 0): U(23, 5, model="gemini-2.0-flash-exp"),
    ("test_multiple_agent_tool_calls.yaml", 1): U(35, 8, model="gemini-2.0-flash-exp"),
    ("test_multiple_agent_tool_calls.yaml", 2): U(104, 16, 0, 0, 0, model="gpt-4o-mini-2024-07-18"),
    ("test_multiple_agent_tool_calls.yaml", 3): U(129, 9, 0, 0, 0, model="gpt-4o-mini-2024-07-18"),
    ("test_ollama_cloud_tool_output.yaml", 0): U(134, 122, model="gpt-oss:20b"),
    ("test_ollama_cloud_tool_output.yaml", 1): U(206, 194, model="gpt-oss:20b"),
    ("test_openai_chat_prompt_cache_e2e.yaml", 0): U(4020, 4, 0, 4012, 0, model="gpt-5.6-sol"),
    ("test_openai_chat_prompt_cache_e2e.yaml", 1): U(4020, 4, 4012, 0, 0, model="gpt-5.6-sol"),
    ("test_openai_o1_mini_system_role[developer].yaml", 0): U(has_usage=False, is_error=True),
    ("test_openai_responses_prompt_cache_e2e.yaml", 0): U(4020, 5, 0, 4012, 0, model="gpt-5.6-sol"),
    ("test_openai_responses_prompt_cache_e2e.yaml", 1): U(4020, 5, 4012, 0, 0, model="gpt-5.6-sol"),
    # asked for and served at the flex tier ("service_tier":"flex" in response.completed)
    ("test_openai_responses_streaming_usage.yaml", 0): U(53, 469, 0, 0, 448, model="gpt-5-2025-08-07",
                                                         service_tier="flex"),
    ("test_openrouter_errors_raised.yaml", 0): U(has_usage=False, is_error=True),
    ("test_openrouter_errors_raised.yaml", 1): U(has_usage=False, is_error=True),
    ("test_openrouter_errors_raised.yaml", 2): U(has_usage=False, is_error=True),
    # OpenRouter mid-stream error chunk that also carries usage
    # (it reports reasoning_tokens 11 > completion_tokens 10 with total 53 = 43 + 10: OpenRouter
    # bills 10 output tokens, and reasoning, a subset of output, is capped at them)
    ("test_openrouter_stream_error.yaml", 0): U(43, 10, 0, 0, 10, model="minimax/minimax-m2:free", is_error=True),
    ("test_run_stream_sync_streams_real_model.yaml", 0): U(53, 15, 0, 0, 0, model="gpt-4o-mini-2024-07-18"),
    ("test_run_stream_sync_streams_real_model.yaml", 1): U(78, 9, 0, 0, 0, model="gpt-4o-mini-2024-07-18"),
    ("test_tool_regular_error.yaml", 0): U(has_usage=False, is_error=True),
    ("test_tool_use_failed_error.yaml", 0): U(has_usage=False, is_error=True),
    ("test_tool_use_failed_error.yaml", 1): U(301, 52, 0, 0, 22, model="openai/gpt-oss-120b"),
    ("test_tool_use_failed_error.yaml", 2): U(336, 96, 256, 0, 59, model="openai/gpt-oss-120b"),
}


def test_every_cassette_interaction_is_covered() -> None:
    names = sorted(p.name for p in (FIXTURES / "pydantic-ai").glob("*.yaml"))
    covered = {name for name, _ in CASSETTES}
    assert covered == set(names)
    for name in names:
        count = len(_cassette(name))
        assert {i for n, i in CASSETTES if n == name} == set(range(count)), name


@pytest.mark.parametrize(("name", "index"), sorted(CASSETTES), ids=lambda v: str(v))
def test_cassette_response(scan: ModuleType, name: str, index: int) -> None:
    interaction = _cassette(name)[index]
    streamed, body = _response(interaction)
    api = _api_for(interaction["request"]["uri"])
    check_all_splits(scan, api, streamed, body, CASSETTES[name, index])


@pytest.mark.parametrize(("name", "index"), sorted(CASSETTES), ids=lambda v: str(v))
def test_cassette_request(scan: ModuleType, name: str, index: int) -> None:
    parsed = _cassette(name)[index]["request"].get("parsed_body")
    if not isinstance(parsed, dict):
        pytest.skip("no JSON request body")
    for body in (json.dumps(parsed).encode(), json.dumps(parsed, indent=2, ensure_ascii=False).encode()):
        fields = scan.scan_request(body)
        options = parsed.get("stream_options") or {}
        assert request_tuple(fields)[:3] == (
            parsed.get("model"),
            bool(parsed.get("stream")),
            options.get("include_usage"),
        )
        assert scan.rewrite_request(body) is body
        out = scan.rewrite_request(body, model="routed-model", inject_include_usage=True)
        expected = dict(parsed, model="routed-model")
        expected["stream_options"] = dict(options, include_usage=True)
        assert json.loads(out) == expected


# anthropic-sdk-python raw SSE transcripts
SSE_FILES = {
    "basic_response.txt": U(11, 6, 0, 0, 0, model="claude-3-opus-latest"),
    "tool_use_response.txt": U(377, 65, 0, 0, 0, model="claude-sonnet-4-20250514"),
    "refusal_response.txt": U(20, 0, 0, 0, 0, model="claude-opus-4-7"),
}


@pytest.mark.parametrize("name", sorted(SSE_FILES))
def test_anthropic_sse_transcripts(scan: ModuleType, name: str) -> None:
    body = (FIXTURES / "anthropic-sdk-python" / name).read_bytes()
    check_all_splits(scan, ANTHROPIC, True, body, SSE_FILES[name])


def test_anthropic_snapshot_json(scan: ModuleType) -> None:
    path = FIXTURES / "anthropic-sdk-python" / "10e53c1d-51be-4c64-b5bf-99adb3fa4719.json"
    interactions = json.loads(path.read_bytes())
    expected = [
        U(656, 74, 0, 0, 0, model="claude-haiku-4-5-20251001"),
        U(760, 63, 0, 0, 0, model="claude-haiku-4-5-20251001"),
    ]
    assert len(interactions) == len(expected)
    for interaction, want in zip(interactions, expected):
        body = json.dumps(interaction["response"]["body"]).encode()
        check_all_splits(scan, ANTHROPIC, False, body, want)
        request = json.dumps(interaction["request"]["body"]).encode()
        assert request_tuple(scan.scan_request(request)) == ("claude-haiku-4-5", False, None, 1024)


# vercel-ai *.chunks.txt: one JSON per line (SSE framing stripped) -> re-framed as SSE
CHUNK_FILES = {
    "alibaba-tool-call.chunks.txt": (CHAT, U(295, 22, 0, 0, 0, model="qwen3-max")),
    "anthropic-message-delta-input-tokens.chunks.txt": (
        ANTHROPIC,
        U(61, 2, 0, 0, 0, model="claude-opus-4-5-20251101"),
    ),
    "groq-tool-call.chunks.txt": (CHAT, U(210, 15, model="llama-3.3-70b-versatile")),
    "mistral-tool-call.chunks.txt": (CHAT, U(124, 22, model="mistral-small-latest")),
    "perplexity-text.chunks.txt": (CHAT, U(11, 434, model="sonar")),
    "openai-error.1.chunks.txt": (
        RESPONSES,
        U(has_usage=False, model="gpt-5-nano-2025-08-07", is_error=True),
    ),
}


@pytest.mark.parametrize("name", sorted(CHUNK_FILES))
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_vercel_chunks(scan: ModuleType, name: str, eol: bytes) -> None:
    api, expected = CHUNK_FILES[name]
    lines = (FIXTURES / "vercel-ai" / name).read_bytes().splitlines()
    body = b"".join(b"data: " + line + eol + eol for line in lines)
    if api == CHAT:
        body += b"data: [DONE]" + eol + eol
    check_all_splits(scan, api, True, body, expected)
    # truncated before the last event: the cumulative usage of the earlier chunks, or none
    if name == "perplexity-text.chunks.txt":
        cut = body.rindex(b"data: {")
        check_all_splits(scan, api, True, body[:cut], U(11, 434, model="sonar"))
    if name == "anthropic-message-delta-input-tokens.chunks.txt":
        cut = body.index(b'data: {"type":"message_delta"')
        # (no output: message_start's output_tokens 1 is a placeholder, not a count)
        check_all_splits(scan, api, True, body[:cut], U(43, 0, has_usage=False, model="claude-opus-4-5-20251101"))


JSON_FILES = {
    # xAI reports reasoning outside completion_tokens (total 506 = 291 + 26 + 189): output = 26 + 189
    "xai-tool-call.json": (CHAT, U(291, 26 + 189, 244, 0, 189, model="grok-3-mini")),
    "openai-error.1.json": (RESPONSES, U(has_usage=False, is_error=True)),
    "google-429-retry-info.json": (GEMINI, U(has_usage=False, is_error=True)),
    "reasoning-model-legacy-parameter-error.json": (CHAT, U(has_usage=False, is_error=True)),
}


@pytest.mark.parametrize("name", sorted(JSON_FILES))
def test_vercel_json(scan: ModuleType, name: str) -> None:
    api, expected = JSON_FILES[name]
    body = (FIXTURES / "vercel-ai" / name).read_bytes()
    check_all_splits(scan, api, False, body, expected)
    # the same body arriving on a streaming request (error before the stream started)
    check_all_splits(scan, api, True, body, expected)


def test_sse_without_usage(scan: ModuleType) -> None:
    body = (FIXTURES / "vercel-ai" / "anthropic-fallback-tool-call.sse").read_bytes()
    check_all_splits(scan, CHAT, True, body, U(has_usage=False, model="claude-haiku-4-5-20251001"))


# ---------------------------------------------------------------------------------------------
# strip_usage_chunk on the recorded OpenAI stream


def _openai_stream(index: int) -> bytes:
    return _response(_cassette("test_run_stream_sync_streams_real_model.yaml")[index])[1]


def _as_without_include_usage(body: bytes) -> bytes:
    """What OpenAI sends when include_usage was not requested: no usage-only chunk and no
    "usage" member on the other chunks."""
    events = body.split(b"\n\n")
    kept = [e.replace(b',"usage":null', b"") for e in events if b'"choices":[]' not in e]
    return b"\n\n".join(kept)


@pytest.mark.parametrize("index", [0, 1])
def test_strip_usage_chunk_recorded(scan: ModuleType, index: int) -> None:
    body = _openai_stream(index)
    expected = _as_without_include_usage(body)
    assert len(expected) < len(body) and b'"usage"' not in expected
    want = CASSETTES["test_run_stream_sync_streams_real_model.yaml", index]
    check_all_splits(scan, CHAT, True, body, want, strip=True, expected_out=expected)
    crlf = body.replace(b"\n", b"\r\n")
    check_all_splits(
        scan, CHAT, True, crlf, want, strip=True, expected_out=_as_without_include_usage(body).replace(b"\n", b"\r\n")
    )


def test_strip_usage_chunk_other_providers(scan: ModuleType) -> None:
    # DeepSeek puts usage on the finish chunk: nothing to remove there, and its usage:null
    # members are removed like OpenAI's
    body = _response(_cassette("test_deepseek_model_thinking_stream.yaml")[0])[1]
    result = check_all_splits(
        scan, CHAT, True, body, CASSETTES["test_deepseek_model_thinking_stream.yaml", 0], strip=True
    )
    assert b'"usage":{' in result[1]
    assert result[1] == body.replace(b',"usage":null', b"")
    # OpenRouter's error chunk carrying usage is never removed
    body = _response(_cassette("test_openrouter_stream_error.yaml")[0])[1]
    check_all_splits(
        scan, CHAT, True, body, CASSETTES["test_openrouter_stream_error.yaml", 0], strip=True, expected_out=body
    )
    # DashScope's choices:[] usage chunk is removed
    lines = (FIXTURES / "vercel-ai" / "alibaba-tool-call.chunks.txt").read_bytes().splitlines()
    body = b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"
    expected = b"".join(
        b"data: " + line.replace(b',"usage":null', b"") + b"\n\n" for line in lines if b'"choices":[]' not in line
    ) + b"data: [DONE]\n\n"
    check_all_splits(scan, CHAT, True, body, CHUNK_FILES["alibaba-tool-call.chunks.txt"][1], strip=True, expected_out=expected)

