"""Every billed usage field, read by both scanners into the row convention (issue 18).

Cases are written from each provider's documentation (cited per case) and run on both
implementations, whole / split at every byte offset / one byte at a time
(``check_all_splits``).  The convention (plano_fast.wire._scan_py, "Normalized usage"):
input = every prompt token (uncached + cache read + cache write + tool-use prompt), output =
every billed output token (visible + reasoning), the other counts subsets of those.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from plano_fast.convert import convert_response
from plano_fast.wire import _scan_py
from tests.test_scan import ANTHROPIC, CHAT, GEMINI, IMPLEMENTATIONS, NO_USAGE, RESPONSES, U, check_all_splits


@pytest.fixture(params=IMPLEMENTATIONS)
def scan(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


# Gemini UsageMetadata (https://ai.google.dev/api/generate-content#UsageMetadata and the
# GenAI SDK's UsageMetadata type docs): promptTokenCount includes cachedContentTokenCount;
# toolUsePromptTokenCount = "number of tokens present in tool-use prompt(s)", billed as
# input; candidatesTokenCount excludes thoughtsTokenCount, billed as output;
# totalTokenCount = prompt + candidates + toolUsePrompt + thoughts.
GEMINI_TOOL_USE = (
    b'{"candidates":[{"content":{"parts":[{"text":"ok"}],"role":"model"},"finishReason":"STOP"}],'
    b'"usageMetadata":{"promptTokenCount":1200,"cachedContentTokenCount":1000,'
    b'"candidatesTokenCount":50,"toolUsePromptTokenCount":420,"thoughtsTokenCount":300,'
    b'"totalTokenCount":1970,"toolUsePromptTokensDetails":[{"modality":"TEXT","tokenCount":420}]},'
    b'"modelVersion":"gemini-2.5-pro"}'
)

# Gemini audio (https://ai.google.dev/api/generate-content#UsageMetadata: promptTokensDetails /
# cacheTokensDetails / candidatesTokensDetails are ModalityTokenCount lists, {modality,
# tokenCount}; https://ai.google.dev/gemini-api/docs/pricing: gemini-2.5-flash input "$0.30
# (text / image / video), $1.00 (audio)", context caching likewise by modality; the native
# audio / TTS models price audio output apart).  promptTokenCount holds every modality, the
# cached ones included: the AUDIO entry of promptTokensDetails less that of
# cacheTokensDetails is the uncached audio priced at the audio rate.
GEMINI_AUDIO = (
    b'{"candidates":[{"content":{"parts":[{"text":"a summary"}],"role":"model"},"finishReason":"STOP"}],'
    b'"usageMetadata":{"promptTokenCount":1570,"candidatesTokenCount":42,"totalTokenCount":1612,'
    b'"promptTokensDetails":[{"modality":"TEXT","tokenCount":10},{"modality":"AUDIO","tokenCount":1560}],'
    b'"candidatesTokensDetails":[{"modality":"TEXT","tokenCount":42}]},"modelVersion":"gemini-2.5-flash"}'
)
GEMINI_CACHED_AUDIO = (
    b'{"usageMetadata":{"promptTokenCount":2000,"cachedContentTokenCount":1600,"candidatesTokenCount":8,'
    b'"promptTokensDetails":[{"modality":"AUDIO","tokenCount":1600},{"modality":"TEXT","tokenCount":400}],'
    b'"cacheTokensDetails":[{"modality":"TEXT","tokenCount":100},{"modality":"AUDIO","tokenCount":1500}]},'
    b'"modelVersion":"gemini-2.5-flash"}'
)


def _gemini_details(details: str) -> bytes:
    """A Gemini answer whose usageMetadata carries ``details`` (JSON members) after its counts."""
    return b'{"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":5,' + details.encode() + b"}}"


# Anthropic Messages usage (https://docs.anthropic.com/en/api/messages, "usage"; prompt caching
# https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching "Tracking cache
# performance": input_tokens counts only the tokens after the last cache breakpoint;
# cache_creation.ephemeral_5m_input_tokens / ephemeral_1h_input_tokens split the writes by
# TTL) and output_tokens_details.thinking_tokens (the thinking part of output_tokens).
ANTHROPIC_THINKING = (
    b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",'
    b'"content":[{"type":"thinking","thinking":"...","signature":"x"},{"type":"text","text":"hi"}],'
    b'"stop_reason":"end_turn","usage":{"input_tokens":12,"cache_creation_input_tokens":2048,'
    b'"cache_read_input_tokens":4096,"cache_creation":{"ephemeral_5m_input_tokens":1024,'
    b'"ephemeral_1h_input_tokens":1024},"output_tokens":700,'
    b'"output_tokens_details":{"thinking_tokens":640},"server_tool_use":{"web_search_requests":1},'
    b'"service_tier":"standard"}}'
)

# The same on a stream (https://docs.anthropic.com/en/docs/build-with-claude/streaming):
# message_start carries the initial usage, the final message_delta the cumulative one;
# final values win field by field, fields only message_start had are kept.
ANTHROPIC_THINKING_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-5-20250929","content":[],"usage":{"input_tokens":12,'
    b'"cache_creation_input_tokens":2048,"cache_read_input_tokens":4096,"cache_creation":'
    b'{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":1024},"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":350,"output_tokens_details":{"thinking_tokens":300}}}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":700,"output_tokens_details":{"thinking_tokens":640}}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)

# OpenAI CompletionUsage (openai-python src/openai/types/completion_usage.py):
# prompt_tokens_details.audio_tokens / completion_tokens_details.audio_tokens are subsets of
# prompt_tokens / completion_tokens (gpt-4o-audio-preview).
OPENAI_AUDIO = (
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-audio-preview-2024-12-17",'
    b'"choices":[],"usage":{"prompt_tokens":150,"completion_tokens":90,"total_tokens":240,'
    b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":100},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":80}}}'
)

# Chat Completions with n=2, streamed with include_usage: choices interleave by index, each
# ends with its own finish_reason, then one choices:[] chunk with the request's usage.
OPENAI_N2_STREAM = b"".join(
    b'data: {"id":"chatcmpl-2","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18",'
    + chunk + b"}\n\n"
    for chunk in (
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":"A"},"finish_reason":null}],"usage":null',
        b'"choices":[{"index":1,"delta":{"role":"assistant","content":"B"},"finish_reason":null}],"usage":null',
        b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null',
        b'"choices":[{"index":1,"delta":{},"finish_reason":"stop"}],"usage":null',
        b'"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":6,"total_tokens":16,'
        b'"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}',
    )
) + b"data: [DONE]\n\n"

RESPONSES_CACHED = (
    b'{"id":"resp_1","object":"response","status":"completed","model":"gpt-5-2025-08-07","output":[],'
    b'"usage":{"input_tokens":5000,"input_tokens_details":{"cached_tokens":4000},"output_tokens":900,'
    b'"output_tokens_details":{"reasoning_tokens":850},"total_tokens":5900}}'
)

# https://docs.anthropic.com/en/docs/build-with-claude/streaming ("the token counts shown in
# the usage field of the message_delta event are cumulative"); recorded in vercel-ai
# anthropic-message-delta-input-tokens.chunks.txt (message_start input 43, message_delta 61)
ANTHROPIC_DELTA_INPUT_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-5-20250929","content":[],"usage":{"input_tokens":43,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":'
    b'{"ephemeral_5m_input_tokens":200,"ephemeral_1h_input_tokens":100},"output_tokens":1}}}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"input_tokens":61,"cache_creation_input_tokens":300,"cache_read_input_tokens":2000,'
    b'"output_tokens":9,"server_tool_use":{"web_search_requests":1}}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)

CASES: list[tuple[str, int, bool, bytes, tuple[Any, ...]]] = [
    (
        "gemini-json-tool-use",
        GEMINI, False, GEMINI_TOOL_USE,
        U(1200 + 420, 50 + 300, 1000, 0, 300, model="gemini-2.5-pro", tool_use=420),
    ),
    (
        # streamGenerateContent?alt=sse: cumulative usageMetadata, the last one wins
        "gemini-sse-tool-use",
        GEMINI, True,
        b"data: " + GEMINI_TOOL_USE.replace(b'"candidatesTokenCount":50', b'"candidatesTokenCount":5')
        + b"\r\n\r\ndata: " + GEMINI_TOOL_USE + b"\r\n\r\n",
        U(1620, 350, 1000, 0, 300, model="gemini-2.5-pro", tool_use=420),
    ),
    (
        "anthropic-json-thinking-cache-ttl",
        ANTHROPIC, False, ANTHROPIC_THINKING,
        U(12 + 4096 + 2048, 700, 4096, 2048, 640, model="claude-sonnet-4-5-20250929", cache_write_1h=1024,
          web_searches=1),
    ),
    (
        "anthropic-sse-thinking-final-delta-wins",
        ANTHROPIC, True, ANTHROPIC_THINKING_STREAM,
        U(12 + 4096 + 2048, 700, 4096, 2048, 640, model="claude-sonnet-4-5-20250929", cache_write_1h=1024),
    ),
    (
        # only the TTL split reported: the writes are their sum
        "anthropic-json-ttl-only",
        ANTHROPIC, False,
        b'{"usage":{"input_tokens":5,"cache_creation":{"ephemeral_1h_input_tokens":30,'
        b'"ephemeral_5m_input_tokens":10},"output_tokens":1}}',
        U(45, 1, 0, 40, 0, cache_write_1h=30),
    ),
    (
        "openai-json-audio",
        CHAT, False, OPENAI_AUDIO,
        U(150, 90, 0, 0, 0, model="gpt-4o-audio-preview-2024-12-17", audio_in=100, audio_out=80),
    ),
    (
        "openai-sse-audio",
        CHAT, True,
        b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
        b"data: " + OPENAI_AUDIO + b"\n\ndata: [DONE]\n\n",
        U(150, 90, 0, 0, 0, model="gpt-4o-audio-preview-2024-12-17", audio_in=100, audio_out=80),
    ),
    (
        # Responses usage (openai-python types/responses/response_usage.py): cached and
        # cache-write tokens inside input_tokens, reasoning inside output_tokens
        "responses-sse-completed",
        RESPONSES, True,
        b'event: response.created\ndata: {"type":"response.created","response":{"model":"gpt-5","usage":null}}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"gpt-5",'
        b'"usage":{"input_tokens":5000,"input_tokens_details":{"cached_tokens":4000,"cache_write_tokens":600},'
        b'"output_tokens":900,"output_tokens_details":{"reasoning_tokens":850},"total_tokens":5900}}}\n\n',
        U(5000, 900, 4000, 600, 850, model="gpt-5"),
    ),
    (
        # xAI (recorded in vercel-ai xai-tool-call.json): reasoning_tokens outside
        # completion_tokens, told by total_tokens = prompt + completion + reasoning
        "xai-sse-reasoning-outside-completion",
        CHAT, True,
        b'data: {"model":"grok-3-mini","choices":[],"usage":{"prompt_tokens":291,"completion_tokens":26,'
        b'"total_tokens":506,"prompt_tokens_details":{"cached_tokens":244},'
        b'"completion_tokens_details":{"reasoning_tokens":189}}}\n\n',
        U(291, 215, 244, 0, 189, model="grok-3-mini"),
    ),
    (
        # OpenAI proper: reasoning inside completion_tokens (total = prompt + completion)
        "openai-reasoning-inside-completion",
        CHAT, False,
        b'{"usage":{"prompt_tokens":10,"completion_tokens":500,"total_tokens":510,'
        b'"completion_tokens_details":{"reasoning_tokens":448}}}',
        U(10, 500, 0, 0, 448),
    ),
    (
        # OpenAI /v1/embeddings (https://platform.openai.com/docs/api-reference/embeddings/object):
        # usage is {prompt_tokens, total_tokens}; read by the chat scan API
        "openai-embeddings",
        CHAT, False,
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093]}],'
        b'"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}',
        U(8, 0, model="text-embedding-3-small"),
    ),
    (
        # n > 1 (https://platform.openai.com/docs/api-reference/chat/create, "n"): one usage
        # for the whole request, on the final choices:[] chunk -- counted once, not per choice
        "openai-sse-n2",
        CHAT, True, OPENAI_N2_STREAM,
        U(10, 6, model="gpt-4o-mini-2024-07-18"),
    ),
    (
        # Predicted Outputs (completion_usage.py): rejected_prediction_tokens "are still
        # counted in the total completion tokens for purposes of billing" -- inside
        # completion_tokens like accepted ones: output is completion_tokens, nothing added
        "openai-json-predictions",
        CHAT, False,
        b'{"model":"gpt-4o","usage":{"prompt_tokens":100,"completion_tokens":60,"total_tokens":160,'
        b'"prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":0,'
        b'"accepted_prediction_tokens":20,"rejected_prediction_tokens":30}}}',
        U(100, 60, 64, model="gpt-4o"),
    ),
    (
        # Responses, not streamed (openai-python types/responses/response.py: top-level usage)
        "responses-json-cached",
        RESPONSES, False, RESPONSES_CACHED,
        U(5000, 900, 4000, 0, 850, model="gpt-5-2025-08-07"),
    ),
    (
        # a response.failed / response.incomplete event that carries usage: those tokens were
        # consumed and are billed as reported (is_error marks the failure)
        "responses-sse-failed-with-usage",
        RESPONSES, True,
        b'event: response.failed\ndata: {"type":"response.failed","response":{"model":"gpt-5",'
        b'"status":"failed","error":{"code":"server_error","message":"x"},'
        b'"usage":{"input_tokens":50,"output_tokens":7,"output_tokens_details":{"reasoning_tokens":4}}}}\n\n',
        U(50, 7, 0, 0, 4, model="gpt-5", is_error=True),
    ),
    (
        # current Anthropic API: message_delta.usage carries cumulative input and cache counts
        # too (MessageDeltaUsage); its values win over message_start's, fields it lacks
        # (the TTL split) stay; server_tool_use counts web searches (requests, not tokens)
        "anthropic-sse-delta-input-and-cache-win",
        ANTHROPIC, True, ANTHROPIC_DELTA_INPUT_STREAM,
        U(61 + 2000 + 300, 9, 2000, 300, model="claude-sonnet-4-5-20250929", cache_write_1h=100, web_searches=1),
    ),
    (
        # Gemini stream: an early chunk may carry only the prompt count; the last one wins
        # whole (not merged with, nor summed to, the earlier ones)
        "gemini-sse-early-prompt-only",
        GEMINI, True,
        b'data: {"usageMetadata":{"promptTokenCount":18,"cachedContentTokenCount":10,"totalTokenCount":18},'
        b'"modelVersion":"gemini-2.5-flash"}\r\n\r\n'
        b'data: {"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":18,'
        b'"candidatesTokenCount":5,"thoughtsTokenCount":3,"totalTokenCount":26},"modelVersion":"gemini-2.5-flash"}\r\n\r\n',
        U(18, 8, 0, 0, 3, model="gemini-2.5-flash"),
    ),
    # Gemini audio, by modality (GEMINI_AUDIO above)
    ("gemini-json-audio-input", GEMINI, False, GEMINI_AUDIO, U(1570, 42, audio_in=1560, model="gemini-2.5-flash")),
    (
        # cached audio is a cache read (priced as one), not uncached audio: 1600 - 1500
        "gemini-json-cached-audio",
        GEMINI, False, GEMINI_CACHED_AUDIO,
        U(2000, 8, 1600, audio_in=100, model="gemini-2.5-flash"),
    ),
    (
        # a TTS / native-audio stream: cumulative usageMetadata, the last one's AUDIO counts
        "gemini-sse-audio-output",
        GEMINI, True,
        b'data: {"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":40,'
        b'"candidatesTokensDetails":[{"modality":"AUDIO","tokenCount":40}]}}\r\n\r\n'
        b'data: {"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":12,'
        b'"candidatesTokenCount":320,"promptTokensDetails":[{"modality":"TEXT","tokenCount":12}],'
        b'"candidatesTokensDetails":[{"modality":"AUDIO","tokenCount":320}]},'
        b'"modelVersion":"gemini-2.5-flash-preview-tts"}\r\n\r\n',
        U(12, 320, audio_out=320, model="gemini-2.5-flash-preview-tts"),
    ),
    # the other modalities and elements are not read; AUDIO entries add up; a repeated list
    # replaces the earlier one; escapes decode
    (
        "gemini-audio-other-elements-ignored",
        GEMINI, False,
        _gemini_details('"promptTokensDetails":[1,null,[2],{"modality":"TEXT","tokenCount":-1},'
                        '{"modality":["AUDIO"],"tokenCount":7},{"tokenCount":9},{"modality":"AUDIO"},'
                        '{"modality":"AUDIO","tokenCount":null},{"modality":"audio","tokenCount":3},'
                        '{"modality":"AUDIO","tokenCount":30,"x":{"tokenCount":"no"}},'
                        '{"tokenCount":20,"modality":"\\u0041UDIO"}]'),
        U(100, 5, audio_in=50),
    ),
    (
        "gemini-audio-repeated-list",
        GEMINI, False,
        _gemini_details('"promptTokensDetails":[{"modality":"AUDIO","tokenCount":90}],'
                        '"promptTokensDetails":[{"modality":"AUDIO","tokenCount":60}]'),
        U(100, 5, audio_in=60),
    ),
    ("gemini-audio-null-list", GEMINI, False, _gemini_details('"promptTokensDetails":null'), U(100, 5)),
    ("gemini-audio-capped", GEMINI, False,
     _gemini_details('"promptTokensDetails":[{"modality":"AUDIO","tokenCount":80},{"modality":"AUDIO","tokenCount":70}]'),
     U(100, 5, audio_in=100)),
    ("gemini-audio-list-not-array", GEMINI, False, _gemini_details('"promptTokensDetails":{"modality":"AUDIO"}'), NO_USAGE),
    ("gemini-audio-bad-count", GEMINI, False,
     _gemini_details('"cacheTokensDetails":[{"modality":"AUDIO","tokenCount":1.5}]'), NO_USAGE),
    ("gemini-audio-huge-count", GEMINI, False,
     _gemini_details('"candidatesTokensDetails":[{"modality":"AUDIO","tokenCount":1000000000000000000}]'), NO_USAGE),
    # malformed new fields: the whole usage object is ignored, never a made-up number
    ("gemini-bad-tool-use", GEMINI, False, b'{"usageMetadata":{"promptTokenCount":1,"toolUsePromptTokenCount":-1}}', NO_USAGE),
    ("anthropic-bad-thinking", ANTHROPIC, False, b'{"usage":{"input_tokens":1,"output_tokens_details":{"thinking_tokens":"9"}}}', NO_USAGE),
    ("anthropic-bad-cache-creation", ANTHROPIC, False, b'{"usage":{"input_tokens":1,"cache_creation":[1]}}', NO_USAGE),
    ("anthropic-null-cache-creation", ANTHROPIC, False, b'{"usage":{"input_tokens":1,"cache_creation":null}}', U(1)),
    ("chat-bad-audio", CHAT, False, b'{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"audio_tokens":1.5}}}', NO_USAGE),
    # the same key at another API or another level is not read
    ("responses-no-audio", RESPONSES, False, b'{"usage":{"input_tokens":5,"input_tokens_details":{"audio_tokens":3}}}', U(5)),
    ("chat-thinking-not-read", CHAT, False, b'{"usage":{"completion_tokens":5,"completion_tokens_details":{"thinking_tokens":3}}}', U(0, 5)),
    ("anthropic-reasoning-key-not-read", ANTHROPIC, False, b'{"usage":{"output_tokens":5,"output_tokens_details":{"reasoning_tokens":3}}}', U(0, 5)),
    # a later duplicate of a details object replaces the earlier one entirely
    (
        "anthropic-duplicate-details",
        ANTHROPIC, False,
        b'{"usage":{"output_tokens":9,"output_tokens_details":{"thinking_tokens":3},"output_tokens_details":{}}}',
        U(0, 9),
    ),
    # subsets larger than their totals are capped (input >= cache_read + cache_write, output >= reasoning)
    (
        "chat-subsets-capped",
        CHAT, False,
        b'{"usage":{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8,'
        b'"cache_write_tokens":7},"completion_tokens_details":{"reasoning_tokens":4}}}',
        U(10, 3, 8, 2, 3),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "api", "streaming", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_usage_fields(scan: ModuleType, name: str, api: int, streaming: bool, body: bytes, expected: tuple[Any, ...]) -> None:
    check_all_splits(scan, api, streaming, body, expected)


def test_anthropic_stream_cut_before_final_delta(scan: ModuleType) -> None:
    """A stream cut after the first message_delta keeps its (then final) values."""
    cut = ANTHROPIC_THINKING_STREAM.index(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":700")
    check_all_splits(
        scan, ANTHROPIC, True, ANTHROPIC_THINKING_STREAM[:cut],
        U(6156, 350, 4096, 2048, 300, model="claude-sonnet-4-5-20250929", cache_write_1h=1024),
    )  # fmt: skip


def _raw(scan: ModuleType, api: int, streaming: bool, body: bytes) -> bytes | None:
    scanner = scan.UsageScanner(api, streaming)
    for i in range(0, len(body), 7):
        scanner.feed(body[i : i + 7])
    scanner.finish()
    raw: bytes | None = scanner.raw_usage()
    return raw


def test_raw_usage_is_the_providers_objects(scan: ModuleType) -> None:
    """The provider's own usage objects, byte for byte, in a document that re-scans to the
    same row (run_chunks checks the re-scan on every scanner test)."""
    start = ANTHROPIC_THINKING_STREAM.index(b'{"input_tokens":12')
    end = ANTHROPIC_THINKING_STREAM.index(b"}}}\n\n", start) + 1
    first = b'{"output_tokens":350,"output_tokens_details":{"thinking_tokens":300}}'
    final = b'{"output_tokens":700,"output_tokens_details":{"thinking_tokens":640}}'
    assert _raw(scan, ANTHROPIC, True, ANTHROPIC_THINKING_STREAM) == (
        b'[{"message":{"usage":' + ANTHROPIC_THINKING_STREAM[start:end] + b'}},{"usage":' + first
        + b'},{"usage":' + final + b"}]"
    )
    usage = GEMINI_TOOL_USE[GEMINI_TOOL_USE.index(b'{"promptTokenCount"') : -len(b',"modelVersion":"gemini-2.5-pro"}')]
    assert _raw(scan, GEMINI, False, GEMINI_TOOL_USE) == b'{"usageMetadata":' + usage + b"}"
    # Groq's x_groq.usage and the Responses' response.usage are kept as they came
    assert _raw(scan, CHAT, False, b'{"x_groq":{"usage":{"prompt_tokens":5 ,"q":[1]}},"usage":null}') == (
        b'{"usage":{"prompt_tokens":5 ,"q":[1]}}'
    )
    # a multi-line SSE data field: the joining newline is part of the object
    assert _raw(scan, CHAT, True, b'data: {"usage":{"prompt_tokens":5,\ndata: "completion_tokens":1}}\n\n') == (
        b'{"usage":{"prompt_tokens":5,\n"completion_tokens":1}}'
    )
    # nothing counted: nothing kept
    assert _raw(scan, CHAT, False, b'{"usage":{"prompt_tokens":"5"}}') is None
    assert _raw(scan, ANTHROPIC, True, ANTHROPIC_THINKING_STREAM[: ANTHROPIC_THINKING_STREAM.index(b"event: message_delta")]) is None


def test_raw_usage_bound(scan: ModuleType) -> None:
    cap = scan.MAX_RAW_USAGE_BYTES
    assert cap == 4096
    for size, kept in ((cap - 2, True), (cap - 1, False), (cap + 1, False), (3 * cap, False)):
        pad = b" " * (size - len(b'{"usage":{"prompt_tokens":1}}'))
        body = b'{"usage":{"prompt_tokens":1' + pad + b"}}"
        assert len(body) == size
        assert _raw(scan, CHAT, False, body) == (body if kept else None)
        # the counts never depend on the bound
        scanner = scan.UsageScanner(CHAT, False)
        scanner.feed(body)
        scanner.finish()
        assert scanner.result().input_tokens == 1


def test_raw_usage_anthropic_keeps_every_object_that_counted(scan: ModuleType) -> None:
    """Anthropic objects merge field by field, so each one that counted is kept, in order:
    re-scanning gives the merge (a later delta lacking a field keeps the earlier value)."""
    body = (
        b'data: {"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
        b'data: {"type":"message_delta","usage":{"input_tokens":6,"cache_read_input_tokens":7}}\n\n'
        b'data: {"type":"message_delta","usage":{"output_tokens":9}}\n\n'
        b'data: {"type":"message_delta","usage":{"output_tokens":"x"}}\n\n'
    )
    assert _raw(scan, ANTHROPIC, True, body) == (
        b'[{"message":{"usage":{"input_tokens":5,"output_tokens":1}}},'
        b'{"usage":{"input_tokens":6,"cache_read_input_tokens":7}},{"usage":{"output_tokens":9}}]'
    )
    # too many objects for the bound: none kept (never a partial record)
    delta = b'data: {"type":"message_delta","usage":{"output_tokens":9' + b" " * 500 + b"}}\n\n"
    six = _raw(scan, ANTHROPIC, True, body + delta * 6)
    seven = _raw(scan, ANTHROPIC, True, body + delta * 7)
    assert six is not None and seven == six[:-1] + b',{"usage":{"output_tokens":9' + b" " * 500 + b"}}]"
    assert len(seven) + 530 > scan.MAX_RAW_USAGE_BYTES
    assert _raw(scan, ANTHROPIC, True, body + delta * 8) is None


# -- what a converted answer tells its client ------------------------------------------------

_WRAP = {
    CHAT: ("openai", "usage", {"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}),
    ANTHROPIC: ("anthropic", "usage", {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                      "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn"}),
    GEMINI: ("gemini", "usageMetadata", {"candidates": [
        {"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": "STOP"}], "modelVersion": "m"}),
}  # fmt: skip
# usage objects whose billed counts are not the plain fields': every non-streamed case above, and
CONVERTED_USAGE: list[tuple[int, dict[str, Any]]] = [
    (api, json.loads(body)[_WRAP[api][1]]) for _, api, streaming, body, expected in CASES
    if not streaming and api in _WRAP and expected[5]  # (has_usage)
] + [
    # xAI (vercel-ai xai-tool-call.json): reasoning outside completion_tokens, billed as output
    (CHAT, {"prompt_tokens": 291, "completion_tokens": 26, "total_tokens": 506,
            "prompt_tokens_details": {"cached_tokens": 244}, "completion_tokens_details": {"reasoning_tokens": 189}}),
    # DeepSeek's cache hits
    (CHAT, {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}),
]  # fmt: skip


def _told(target: str, answer: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(input, output, cache read, cache write, reasoning) a ``target`` client reads."""
    if target == "openai":
        u = answer["usage"]
        return (u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"],
                u["prompt_tokens_details"].get("cache_write_tokens", 0), u["completion_tokens_details"]["reasoning_tokens"])
    if target == "anthropic":
        u = answer["usage"]
        cached = u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
        return (u["input_tokens"] + cached, u["output_tokens"], u["cache_read_input_tokens"],
                u["cache_creation_input_tokens"], -1)  # (no reasoning count in Messages usage)
    u = answer["usageMetadata"]
    thoughts = u.get("thoughtsTokenCount", 0)
    return (u["promptTokenCount"], u["candidatesTokenCount"] + thoughts, u.get("cachedContentTokenCount", 0), -1, thoughts)


@pytest.mark.parametrize(("api", "usage"), CONVERTED_USAGE)
def test_a_converted_answer_tells_its_client_the_usage_billed(api: int, usage: dict[str, Any]) -> None:
    """An answer converted for a client of another format reports the counts its row holds
    (read by the upstream's scan API), whatever the provider's way of reporting them:
    Anthropic's TTL-only cache writes, xAI's reasoning outside completion_tokens, DeepSeek's
    cache hits, subsets larger than their totals..."""
    source, member, shell = _WRAP[api]
    body = {**shell, member: usage}
    scanner = _scan_py.UsageScanner(api, False)
    scanner.feed(json.dumps(body).encode())
    scanner.finish()
    u = scanner.result()
    billed = (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens)
    for target in ("openai", "anthropic", "gemini"):
        if target == source:
            continue
        told = _told(target, convert_response(body, source, target, client_model="m"))
        assert told == tuple(-1 if t == -1 else b for t, b in zip(told, billed)), (target, told, billed)
