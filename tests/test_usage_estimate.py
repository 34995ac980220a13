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


def test_events_end_at_the_first_blank_line_in_any_spelling() -> None:
    """Mixed line ends: each event ends at its own first blank line, whichever spelling
    comes first (one left-to-right search)."""
    text = b'data: {"choices":[{"delta":{"content":"abcd"}}]}'
    stream = text + b"\r\n\r\n" + text + b"\n\n" + text + b"\r\r" + text + b"\n\n"
    meter = _meter(API_OPENAI_CHAT, [stream])
    assert (meter.text_bytes, meter.event_bytes, meter.pending) == (16, len(stream), b"")
    assert _meter(API_OPENAI_CHAT, [stream[i : i + 1] for i in range(len(stream))]).text_bytes == 16


def test_drained_events_without_text_leave_the_relayed_part_at_bytes_over_4() -> None:
    """The client left near the end: the drained events (a finish chunk, keep-alive
    comments) carry no text, so there is no share to apply; what was relayed before counts
    at bytes / 4 (it counted as nothing: 1 token for a ~5,000-token answer)."""
    tail = (b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n' + b": keep-alive\n\n" * 3)
    meter = _meter(API_OPENAI_CHAT, [tail])
    assert meter.event_bytes == len(tail) and meter.text_bytes == 0
    assert meter.output_tokens(28_922) == tokens_of_bytes(28_922)


def test_the_meter_never_raises() -> None:
    """Events the meter cannot read (nested past the JSON parser's depth, a lone surrogate
    in Gemini tool arguments) are counted as framing: an exception here used to end the
    drain, so the provider's own usage was never read."""
    deep = b'data: {"choices":[{"delta":{"content":' + b"[" * 100_000 + b"]" * 100_000 + b"}}]}\n\n"
    assert _meter(API_OPENAI_CHAT, [deep]).text_bytes == 0
    call = b'data: {"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":"\\ud800"}}}]}}]}\n\n'
    assert _meter(API_GEMINI, [call]).text_bytes == len('{"a":"\ud800"}'.encode("utf-8", "surrogatepass"))


def test_a_long_drain_is_sampled_then_counted_at_its_share() -> None:
    """Past SAMPLE_EVENT_BYTES of events the rest is counted at the sample's share of text,
    unparsed (the drain runs on the event loop): the estimate stays that of the whole."""
    from plano_fast.usage_estimate import SAMPLE_EVENT_BYTES

    event = b'data: {"choices":[{"delta":{"content":"abcd"}}]}\n\n'
    count = 4 * SAMPLE_EVENT_BYTES // len(event)
    stream = event * count
    for pieces in ([stream], [stream[i : i + 65_536] for i in range(0, len(stream), 65_536)]):
        meter = _meter(API_OPENAI_CHAT, pieces)
        assert meter.unparsed_bytes > 2 * SAMPLE_EVENT_BYTES  # most of it was not parsed
        assert abs(meter.output_tokens(0) - count) <= 2, (meter.output_tokens(0), count)


def test_a_leading_bom_is_skipped_once_at_the_body_start() -> None:
    """A stream that starts with a UTF-8 BOM (WHATWG SSE skips one; the scanners, the SSE
    parser and the stream DLP do): its first event's text is counted.  On main the first
    line read ``\\xef\\xbb\\xbfdata:`` and that event counted as framing (text_bytes 0
    for a one-event stream, 4 here)."""
    bom = b"\xef\xbb\xbf"
    text = b'data: {"choices":[{"delta":{"content":"abcd"}}]}\n\n'
    assert _meter(API_OPENAI_CHAT, [bom + text]).text_bytes == 4
    whole = bom + text + text
    for cut in range(1, len(whole)):  # split anywhere, inside the BOM too
        meter = _meter(API_OPENAI_CHAT, [whole[:cut], whole[cut:]])
        assert (meter.text_bytes, meter.event_bytes) == (8, len(whole)), cut  # the BOM is framing
    assert _meter(API_OPENAI_CHAT, [whole[i : i + 1] for i in range(len(whole))]).text_bytes == 8
    # only one, only at the body's start: a second BOM, or one on a later event, is not skipped
    assert _meter(API_OPENAI_CHAT, [bom + bom + text]).text_bytes == 0
    assert _meter(API_OPENAI_CHAT, [text + bom + text]).text_bytes == 4
    # a meter started mid-body (the client left mid-event) never skips one: its first
    # bytes belong to the part relayed before
    rest = _meter(API_OPENAI_CHAT, [b"tail\n\n" + bom + text], mid_event=True)
    assert (rest.head_bytes, rest.text_bytes) == (6, 0)
    # a recorded stream with a BOM: the same estimate as without
    stream = cassette_stream("test_deepseek_model_thinking_stream.yaml")
    assert _meter(API_OPENAI_CHAT, [bom + stream]).text_bytes == _meter(API_OPENAI_CHAT, [stream]).text_bytes
