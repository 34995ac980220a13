"""The compiled scanner's compact-JSON member run (``members_fast`` in _scan_tokens.pxi) and
the chained ':' / ',' in ``fast_skip``: the same results as the pure twin for compact answers
of every API, split in two at every byte offset and fed one byte at a time -- with usage
look-alikes where they must not count (a ``usage`` key inside tool-call input objects, inside
strings, behind escapes), members the run must hand back to the general path (whitespace,
escaped keys, containers, numbers the fast path refuses), and broken documents.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from plano_fast.wire import _scan_py
from tests.test_scan import chunkings, run_chunks

try:
    from plano_fast.wire import _scan as _compiled
except ImportError:  # extension not built
    _compiled = None

pytestmark = pytest.mark.skipif(_compiled is None, reason="extension not built")

CHAT = _scan_py.API_OPENAI_CHAT
RESPONSES = _scan_py.API_OPENAI_RESPONSES
ANTHROPIC = _scan_py.API_ANTHROPIC
GEMINI = _scan_py.API_GEMINI

OAI_USAGE = (
    b'{"prompt_tokens":1234,"completion_tokens":567,"total_tokens":1801,'
    b'"prompt_tokens_details":{"cached_tokens":1000,"cache_write_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":12,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)


def chat(usage: bytes = OAI_USAGE, content: bytes = b'"Hello \\"usage\\":{\\"prompt_tokens\\":9} there"',
         extra: bytes = b"") -> bytes:
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1796513011,"model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":' + content + b','
        b'"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":' + usage + b',' + extra + b'"service_tier":"default","system_fingerprint":"fp_x"}'
    )


# (api, body): compact documents, each run by both implementations at every split
CASES: list[tuple[int, bytes]] = [
    (CHAT, chat()),
    # a tool call whose arguments (a string) and a nested object both say "usage"
    (CHAT, chat(extra=b'"tool":{"usage":{"prompt_tokens":99999,"completion_tokens":99999}},')),
    (CHAT, chat(content=b'null', extra=b'"x":["usage",{"usage":{"prompt_tokens":5}}],')),
    # usage null, usage twice (the duplicate-key rule), usage not an object
    (CHAT, chat(usage=b"null")),
    (CHAT, chat(extra=b'"usage":{"prompt_tokens":1,"completion_tokens":2},')),
    (CHAT, chat(usage=b'"usage"')),
    (CHAT, chat(usage=b"[1,2]")),
    # an escaped key that spells usage / prompt_tokens, whitespace between tokens
    (CHAT, chat(extra=b'"us\\u0061ge":{"prompt_tokens":77},')),
    (CHAT, chat(usage=b'{"prompt_tok\\u0065ns":3,"completion_tokens":4}')),
    (CHAT, chat(usage=b'{ "prompt_tokens" : 3 ,"completion_tokens":4 }')),
    (CHAT, chat(usage=b'{"prompt_tokens":3 ,"completion_tokens": 4,\n"total_tokens":7}')),
    # numbers the fast path refuses (negative, fraction, exponent, too many digits, leading 0)
    (CHAT, chat(usage=b'{"prompt_tokens":-3,"completion_tokens":4}')),
    (CHAT, chat(usage=b'{"prompt_tokens":3.0,"completion_tokens":4}')),
    (CHAT, chat(usage=b'{"prompt_tokens":3e2,"completion_tokens":4}')),
    (CHAT, chat(usage=b'{"prompt_tokens":1234567890123456789,"completion_tokens":4}')),
    (CHAT, chat(usage=b'{"prompt_tokens":0,"completion_tokens":04}')),
    (CHAT, chat(usage=b'{"prompt_tokens":3,"completion_tokens":true}')),
    # model: escaped, non-ASCII, not a string, over the cap
    (CHAT, chat().replace(b'"model":"gpt-4o-mini"', b'"model":"gpt-\\u00e9"')),
    (CHAT, chat().replace(b'"model":"gpt-4o-mini"', "\"model\":\"gpt-é\"".encode())),
    (CHAT, chat().replace(b'"model":"gpt-4o-mini"', b'"model":7')),
    (CHAT, chat().replace(b'"model":"gpt-4o-mini"', b'"model":"' + b"m" * 300 + b'"')),
    # error shapes and a type member
    (CHAT, b'{"error":{"message":"bad","type":"invalid_request_error","code":null}}'),
    (RESPONSES, b'{"type":"error","code":"x","message":"y"}'),
    # broken documents: a missing value, a trailing comma, an unclosed object, trailing data
    (CHAT, chat(usage=b'{"prompt_tokens":,"completion_tokens":4}')),
    (CHAT, chat(usage=b'{"prompt_tokens":3,}')),
    (CHAT, chat()[:-1]),
    (CHAT, chat() + b"x"),
    (CHAT, chat(usage=b'{"prompt_tokens":3"completion_tokens":4}')),
    (CHAT, chat(usage=b'{"prompt_tokens"3,"completion_tokens":4}')),
    (CHAT, chat(usage=b'{"prompt_tokens":3,"completion_tokens":4"}')),
    # Anthropic: tool_use input objects carrying a usage member, usage in the text
    (ANTHROPIC,
     b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":['
     b'{"type":"text","text":"\\"usage\\":{\\"input_tokens\\":5}"},'
     b'{"type":"tool_use","id":"t","name":"f","input":{"usage":{"input_tokens":999,"output_tokens":999},'
     b'"message":{"usage":{"input_tokens":888}}}}],"stop_reason":"tool_use","stop_sequence":null,'
     b'"usage":{"input_tokens":10,"cache_creation_input_tokens":2,"cache_read_input_tokens":3,'
     b'"cache_creation":{"ephemeral_5m_input_tokens":1,"ephemeral_1h_input_tokens":1},'
     b'"output_tokens":20,"server_tool_use":{"web_search_requests":1},"service_tier":"standard"}}'),
    # OpenAI Responses: usage under response / at the top, output items with usage members
    (RESPONSES,
     b'{"id":"resp_1","object":"response","model":"gpt-4o","output":[{"type":"function_call",'
     b'"arguments":"{\\"usage\\":{}}","usage":{"input_tokens":999}}],'
     b'"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":4},"output_tokens":22,'
     b'"output_tokens_details":{"reasoning_tokens":5},"total_tokens":33},"status":"completed"}'),
    # Gemini
    (GEMINI,
     b'{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"usageMetadata":'
     b'{"promptTokenCount":999}}}}],"role":"model"},"finishReason":"STOP"}],'
     b'"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":8,"totalTokenCount":15,'
     b'"thoughtsTokenCount":2,"cachedContentTokenCount":1},"modelVersion":"gemini-2.5"}'),
]


@pytest.mark.parametrize("api,body", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_compact_members_match_the_twin_at_every_split(api: int, body: bytes) -> None:
    assert _compiled is not None
    compiled: ModuleType = _compiled
    want = run_chunks(_scan_py, api, False, [body])
    for chunks in chunkings(body):
        assert run_chunks(compiled, api, False, chunks) == want, [len(c) for c in chunks][:3]


@pytest.mark.parametrize("api,body", [c for c in CASES if c[1].startswith(b'{"id"')][:4])
def test_compact_members_match_the_twin_in_sse_events(api: int, body: bytes) -> None:
    """The same documents as the data of SSE events (the walker is fed per event)."""
    assert _compiled is not None
    stream = b"data: " + body + b"\n\ndata: " + body + b"\n\ndata: [DONE]\n\n"
    want = run_chunks(_scan_py, api, True, [stream])
    for chunks in chunkings(stream):
        assert run_chunks(_compiled, api, True, chunks) == want, [len(c) for c in chunks][:3]


def test_the_usage_look_alikes_do_not_count() -> None:
    """The nested and in-string "usage" members above leave the top-level counts alone."""
    assert _compiled is not None
    for scan in (_scan_py, _compiled):
        usage = run_chunks(scan, CHAT, False, [CASES[1][1]])[0]
        assert usage[:2] == (1234, 567) and usage[5]
        usage = run_chunks(scan, ANTHROPIC, False, [CASES[-3][1]])[0]
        assert usage[1] == 20 and usage[0] == 10 + 2 + 3 and usage[5]


_BYTES = sorted({0x00, 0x09, 0x1F, 0x20, 0x22, 0x2F, 0x5C, 0x61, 0x7F, 0x80, 0xBF, 0xC3, 0xE2, 0xFF})
_LENGTHS = (1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 65)


def _string_docs(length: int, offset: int, byte: int) -> list[bytes]:
    """A ``length``-byte string with ``byte`` at ``offset`` as skipped content, as the
    captured model, as a key of the read usage object and as a key of a skipped object."""
    s = bytearray(b"k" * length)
    s[offset] = byte
    text = bytes(s)
    return [
        chat(content=b'"' + text + b'"'),
        chat().replace(b'"model":"gpt-4o-mini"', b'"model":"' + text + b'"'),
        chat(usage=b'{"' + text + b'":5,"prompt_tokens":3,"completion_tokens":4}'),
        chat(content=b'{"' + text + b'":"' + text + b'","a":1}'),
    ]


def test_every_byte_at_every_offset_of_a_string() -> None:
    """String runs are found 16 bytes first, then 32 at a time, then 16, then byte by byte
    (``pf_scan_string`` in plano_fast/wire/_simd.h): a quote, backslash, control byte or
    non-ASCII byte at each offset of strings around those block sizes, whole and cut just
    before and after it, reads as the twin reads it."""
    assert _compiled is not None
    for length in _LENGTHS:
        for offset in range(length):
            for byte in _BYTES:
                text = bytearray(b"k" * length)
                text[offset] = byte
                for body in _string_docs(length, offset, byte):
                    want = run_chunks(_scan_py, CHAT, False, [body])
                    assert run_chunks(_compiled, CHAT, False, [body]) == want, (length, offset, byte, body)
                    at = body.index(bytes(text)) + offset
                    for cut in (at, at + 1, at + 2):
                        got = run_chunks(_compiled, CHAT, False, [body[:cut], body[cut:]])
                        assert got == want, (length, offset, byte, cut)


def test_every_byte_value_in_a_skipped_and_a_read_string() -> None:
    """All 256 byte values at each offset of a 40-byte string (skipped and captured)."""
    assert _compiled is not None
    for offset in range(40):
        for byte in range(256):
            for body in _string_docs(40, offset, byte)[:2]:
                want = run_chunks(_scan_py, CHAT, False, [body])
                assert run_chunks(_compiled, CHAT, False, [body]) == want, (offset, byte)
