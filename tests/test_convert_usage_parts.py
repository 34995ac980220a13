"""A converted answer reports every usage part its row holds that the client's format has a
field for, so the client reads (and a scan of the converted answer bills) what was billed.

Before 2026-12-06 only input / output / cache read / cache write / reasoning were carried:
an OpenAI client on Gemini or a Gemini client on OpenAI lost the audio counts (priced
apart: gemini-2.5-flash audio input $1.00 against $0.30 per 1M, gpt-4o-audio-preview audio
$40 against $2.50 in, $80 against $10 out).

The target formats' documented fields:

* OpenAI chat (openai-python ``types/completion_usage.py``): ``prompt_tokens_details
  .audio_tokens`` / ``.cached_tokens``, ``completion_tokens_details.audio_tokens`` /
  ``.reasoning_tokens``; a tool-use prompt is part of ``prompt_tokens``.
* Gemini (https://ai.google.dev/api/generate-content#UsageMetadata): ``thoughtsTokenCount``
  beside ``candidatesTokenCount``, ``promptTokensDetails`` / ``candidatesTokensDetails``
  ModalityTokenCount lists (``AUDIO``).
* Anthropic Messages usage has no audio or reasoning field.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from plano_fast.convert import convert_response
from tests.test_scan import ANTHROPIC, CHAT, GEMINI, IMPLEMENTATIONS
from tests.test_scan_usage_fields import _WRAP, CONVERTED_USAGE, GEMINI_AUDIO, GEMINI_TOOL_USE, OPENAI_AUDIO

API_OF = {"openai": CHAT, "anthropic": ANTHROPIC, "gemini": GEMINI}
# the row fields each client format can be told (the others stay inside their totals)
TOLD = {
    "openai": ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
               "audio_input_tokens", "audio_output_tokens"),
    "anthropic": ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"),
    "gemini": ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens", "audio_input_tokens",
               "audio_output_tokens"),
}  # fmt: skip

# Gemini TTS (doc-derived, https://ai.google.dev/gemini-api/docs/speech-generation): audio out
GEMINI_AUDIO_OUT = (
    b'{"candidates":[{"content":{"parts":[{"text":"x"}],"role":"model"},"finishReason":"STOP"}],'
    b'"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":320,"totalTokenCount":332,'
    b'"candidatesTokensDetails":[{"modality":"AUDIO","tokenCount":320}]},"modelVersion":"m"}'
)
CASES: list[tuple[int, dict[str, Any]]] = [
    (CHAT, json.loads(OPENAI_AUDIO)["usage"]),
    (GEMINI, json.loads(GEMINI_AUDIO)["usageMetadata"]),
    (GEMINI, json.loads(GEMINI_TOOL_USE)["usageMetadata"]),
    (GEMINI, json.loads(GEMINI_AUDIO_OUT)["usageMetadata"]),
    *CONVERTED_USAGE,
]


@pytest.fixture(params=IMPLEMENTATIONS)
def scan(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def _row(scan: ModuleType, api: int, body: dict[str, Any]) -> Any:
    scanner = scan.UsageScanner(api, False)
    scanner.feed(json.dumps(body).encode())
    scanner.finish()
    usage = scanner.result()
    assert usage.has_usage
    return usage


@pytest.mark.parametrize(("api", "usage"), CASES)
def test_a_converted_answer_carries_every_part_its_format_has(scan: ModuleType, api: int, usage: dict[str, Any]) -> None:
    source, member, shell = _WRAP[api]
    body = {**shell, member: usage}
    billed = _row(scan, api, body)
    for target, target_api in API_OF.items():
        if target == source:
            continue
        told = _row(scan, target_api, convert_response(body, source, target, client_model="m"))
        for name in TOLD[target]:
            assert getattr(told, name) == getattr(billed, name), (source, target, name, told, billed)


def test_the_audio_cases_have_those_parts(scan: ModuleType) -> None:
    """(The cases above are the ones that matter: each has the parts this change carries.)"""
    audio = _row(scan, CHAT, {**_WRAP[CHAT][2], "usage": CASES[0][1]})
    assert (audio.audio_input_tokens, audio.audio_output_tokens) == (100, 80)
    assert _row(scan, GEMINI, {**_WRAP[GEMINI][2], "usageMetadata": CASES[1][1]}).audio_input_tokens == 1560
    assert _row(scan, GEMINI, {**_WRAP[GEMINI][2], "usageMetadata": CASES[3][1]}).audio_output_tokens == 320
