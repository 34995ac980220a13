"""The output estimate of a streamed answer whose usage could not be read
(plano_fast.usage_estimate), on recorded provider streams: the generated text at 4 bytes a
token, not the stream's bytes (tests over sockets: tests/test_billing_faults.py)."""

from __future__ import annotations

import random

import pytest

from plano_fast import wire
from plano_fast.usage_estimate import ContentMeter, tokens_of_bytes
from plano_fast.wire import API_ANTHROPIC, API_GEMINI, API_OPENAI_CHAT
from tests.test_convert_support import HAVE_FIXTURES, anthropic_chunks_file, cassette_stream

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason="shared fixtures not present")


def _meter(api: int, pieces: list[bytes], mid_event: bool = False) -> ContentMeter:
    meter = ContentMeter(api, mid_event)
    for piece in pieces:
        meter.feed(piece)
    return meter


def _reported_output(api: int, stream: bytes) -> int:
    scanner = wire.UsageScanner(api, True, False)
    scanner.feed(stream)
    scanner.finish()
    usage = scanner.result()
    assert usage.has_usage
    return usage.output_tokens


def test_a_recorded_stream_is_estimated_near_its_reported_output() -> None:
    """DeepSeek's recorded thinking stream (67 kB of SSE): 212 output tokens reported;
    bytes / 4 said 16,913."""
    stream = cassette_stream("test_deepseek_model_thinking_stream.yaml")
    reported = _reported_output(API_OPENAI_CHAT, stream)
    whole = _meter(API_OPENAI_CHAT, [stream])
    estimate = whole.output_tokens(0)
    assert reported / 2 <= estimate <= reported * 2, (estimate, reported)
    assert tokens_of_bytes(len(stream)) > 50 * reported  # what the old estimate counted
    # any split point, one byte at a time too
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(stream)), 200))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    assert _meter(API_OPENAI_CHAT, pieces).text_bytes == whole.text_bytes
    assert _meter(API_OPENAI_CHAT, [stream[i : i + 1] for i in range(4000)]).text_bytes == (
        _meter(API_OPENAI_CHAT, [stream[:4000]]).text_bytes)


def test_the_part_relayed_before_is_estimated_at_the_drained_share_of_text() -> None:
    """The client left mid-event after ``cut`` bytes: the meter sees the rest only, and
    estimates the relayed part at the drained events' share of text."""
    stream = cassette_stream("test_deepseek_model_thinking_stream.yaml")
    whole = _meter(API_OPENAI_CHAT, [stream]).output_tokens(0)
    for cut in (len(stream) // 3 + 17, len(stream) // 2 + 5):
        rest = _meter(API_OPENAI_CHAT, [stream[cut:]], mid_event=True)
        assert rest.head_bytes > 0  # the cut event's tail: part of the relayed bytes
        assert abs(rest.output_tokens(cut) - whole) <= whole * 0.25, (rest.output_tokens(cut), whole)


def test_other_formats_count_their_generated_text() -> None:
    ant = anthropic_chunks_file("anthropic-message-delta-input-tokens.chunks.txt")  # text "pong"
    meter = _meter(API_ANTHROPIC, [ant])
    assert (meter.text_bytes, meter.output_tokens(0)) == (4, 1)
    gem = cassette_stream("test_google_model_iter_stream.yaml")
    assert _meter(API_GEMINI, [gem]).output_tokens(0) == _reported_output(API_GEMINI, gem)  # 5 and 5


def test_without_a_whole_event_drained_bytes_over_four_remain() -> None:
    partial = b'data: {"choices":[{"delta":{"content":"hel'
    meter = _meter(API_OPENAI_CHAT, [partial])
    assert meter.output_tokens(1000) == tokens_of_bytes(1000 + len(partial))
    assert ContentMeter(API_OPENAI_CHAT).output_tokens(0) == 1  # never zero
