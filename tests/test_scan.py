"""Tests for the byte scanner (plano_fast.wire: _scan / _scan_py / the selector).

Every behavioural test runs against both implementations (the ``scan`` fixture), and stream
inputs are fed whole, split in two at every byte offset and one byte at a time.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from plano_fast.wire import _scan_py

try:
    from plano_fast.wire import _scan as _compiled
except ImportError:  # extension not built
    _compiled = None

ROOT = pathlib.Path(__file__).resolve().parent.parent

IMPLEMENTATIONS = [
    pytest.param(_scan_py, id="python"),
    pytest.param(
        _compiled,
        id="cython",
        marks=pytest.mark.skipif(_compiled is None, reason="extension not built"),
    ),
]

CHAT = _scan_py.API_OPENAI_CHAT
RESPONSES = _scan_py.API_OPENAI_RESPONSES
ANTHROPIC = _scan_py.API_ANTHROPIC
GEMINI = _scan_py.API_GEMINI


@pytest.fixture(params=IMPLEMENTATIONS)
def scan(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


# ---------------------------------------------------------------------------------------------
# helpers (also imported by the other test_scan_* modules)


def usage_tuple(u: Any) -> tuple[Any, ...]:
    return (
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.has_usage,
        u.model,
        u.is_error,
        u.tool_use_prompt_tokens,
        u.cache_write_1h_tokens,
        u.audio_input_tokens,
        u.audio_output_tokens,
        u.web_search_requests,
        u.service_tier,
    )


def request_tuple(r: Any) -> tuple[Any, ...]:
    return (r.model, r.stream, r.include_usage, r.max_output_tokens)


def run_chunks(
    scan: ModuleType, api: int, streaming: bool, chunks: list[bytes], strip: bool = False
) -> tuple[tuple[Any, ...], bytes, bytes | None]:
    """(usage, forwarded bytes, raw usage document); the raw document, scanned again as a
    plain JSON body, gives the very same counts (what ``plano-fast usage reprice`` relies on)."""
    scanner = scan.UsageScanner(api, streaming, strip)
    out = [scanner.feed(chunk) for chunk in chunks]
    out.append(scanner.finish())
    usage = usage_tuple(scanner.result())
    raw = scanner.raw_usage()
    # (the answer pass's feed from inside the upstream read: the same bytes forwarded, the
    # same counts)
    again_from = scan.UsageScanner(api, streaming, strip)
    out_from = []
    for chunk in chunks:
        forwarded = again_from.feed_from(b"HTTP/1.1 200 OK\r\n\r\n" + chunk, 19)
        out_from.append(chunk if forwarded is None else forwarded)
    out_from.append(again_from.finish())
    assert b"".join(out_from) == b"".join(out) and usage_tuple(again_from.result()) == usage
    # (the settle step's one call: the same counts, model, flags and document; the image
    # output and cached audio parts after the tier: tests/test_image_output_usage.py)
    result = scanner.result()
    assert scanner.usage_fields() == (*usage, result.image_output_tokens, result.audio_cache_read_tokens, raw)
    if raw is not None:
        assert usage[5], "raw usage without usage"
        assert len(raw) <= scan.MAX_RAW_USAGE_BYTES
        again = scan.UsageScanner(api, False)
        again.feed(raw)
        again.finish()
        redone = usage_tuple(again.result())
        assert redone[:5] + redone[8:] == usage[:5] + usage[8:] and redone[5], (raw, redone, usage)
    return usage, b"".join(out), raw


def split_offsets(n: int, limit: int = 4000, tail: int = 1500) -> list[int]:
    """Every offset when the body is small; otherwise every offset of the last ``tail``
    bytes (where usage lives) and of the first 300, plus an even spread of the rest."""
    if n <= limit:
        return list(range(n + 1))
    picked = set(range(0, 300)) | set(range(max(0, n - tail), n + 1))
    step = max(1, n // (limit - len(picked) if limit > len(picked) else 1))
    picked |= set(range(0, n, step))
    return sorted(picked)


def chunkings(body: bytes, limit: int = 4000, tail: int = 1500) -> Iterator[list[bytes]]:
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    for k in split_offsets(len(body), limit, tail):
        yield [body[:k], body[k:]]


def check_all_splits(
    scan: ModuleType,
    api: int,
    streaming: bool,
    body: bytes,
    expected: tuple[Any, ...] | None = None,
    strip: bool = False,
    expected_out: bytes | None = None,
    limit: int = 4000,
) -> tuple[tuple[Any, ...], bytes]:
    """Same result (and forwarded bytes) for every way of splitting ``body``."""
    tail = 1500
    if scan is _scan_py and len(body) > limit:
        limit, tail = 200, 120  # the twin is ~20x slower: sample fewer split points on big bodies
    first = run_chunks(scan, api, streaming, [body], strip)
    if expected is not None:
        assert first[0] == expected
    if expected_out is not None:
        assert first[1] == expected_out
    elif not strip:
        assert first[1] == body
    for chunks in chunkings(body, limit, tail):
        got = run_chunks(scan, api, streaming, chunks, strip)
        assert got == first, [len(c) for c in chunks][:3]
    return first


def sse(*events: str | bytes, eol: bytes = b"\n") -> bytes:
    out = []
    for event in events:
        data = event.encode() if isinstance(event, str) else event
        out.append(b"data: " + data + eol + eol)
    return b"".join(out)


def U(
    inp: int = 0,
    out: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
    has_usage: bool = True,
    model: str | None = None,
    is_error: bool = False,
    tool_use: int = 0,
    cache_write_1h: int = 0,
    audio_in: int = 0,
    audio_out: int = 0,
    web_searches: int = 0,
    service_tier: str | None = None,
) -> tuple[Any, ...]:
    """An expected :class:`Usage` in the row convention (input includes every prompt token,
    output every billed output token; see plano_fast.wire._scan_py "Normalized usage")."""
    return (
        inp, out, cache_read, cache_write, reasoning, has_usage, model, is_error,
        tool_use, cache_write_1h, audio_in, audio_out, web_searches, service_tier,
    )  # fmt: skip


NO_USAGE = U(has_usage=False)


# ---------------------------------------------------------------------------------------------
# module structure, shim


PUBLIC = [
    "API_ANTHROPIC",
    "API_GEMINI",
    "API_OPENAI_CHAT",
    "API_OPENAI_RESPONSES",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_HOLD_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_RAW_USAGE_BYTES",
    "MAX_TOKEN_COUNT",
    "RequestFields",
    "ScanError",
    "Usage",
    "UsageScanner",
    "rewrite_request",
    "scan_request",
]


def test_public_api_and_constants(scan: ModuleType) -> None:
    for name in PUBLIC:
        assert hasattr(scan, name), name
    assert (scan.API_OPENAI_CHAT, scan.API_OPENAI_RESPONSES, scan.API_ANTHROPIC, scan.API_GEMINI) == (
        1,
        2,
        3,
        4,
    )
    for name in PUBLIC:
        if name.startswith("MAX_"):
            assert getattr(scan, name) == getattr(_scan_py, name), name
    assert scan.ScanError is _scan_py.ScanError
    assert issubclass(scan.ScanError, ValueError)


def test_shim_reports_implementation() -> None:
    from plano_fast import wire as shim

    assert shim.IMPLEMENTATION in ("cython", "python")
    assert shim.ScanError is _scan_py.ScanError
    for name in PUBLIC:
        assert hasattr(shim, name), name
    if os.environ.get("PLANO_FAST_PURE_SCANNER") == "1":
        assert shim.IMPLEMENTATION == "python"


@pytest.mark.skipif(_compiled is None, reason="extension not built")
def test_shim_uses_compiled_module_when_built() -> None:
    from plano_fast import wire as shim

    if os.environ.get("PLANO_FAST_PURE_SCANNER") == "1":
        pytest.skip("pure scanner forced by the environment")
    assert shim.IMPLEMENTATION == "cython"
    assert _compiled is not None
    assert shim.UsageScanner is _compiled.UsageScanner
    assert shim.scan_request is _compiled.scan_request
    assert _compiled.__file__ is not None and not _compiled.__file__.endswith(".py")


def test_shim_env_var_forces_twin() -> None:
    code = (
        "import plano_fast.wire as s, plano_fast.wire._scan_py as p;"
        "assert s.UsageScanner is p.UsageScanner;"
        "print(s.IMPLEMENTATION)"
    )
    env = dict(os.environ, PLANO_FAST_PURE_SCANNER="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "python"


# ---------------------------------------------------------------------------------------------
# scan_request


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model":"gpt-4o","stream":true}', ("gpt-4o", True, None, None)),
        (b'{"stream":false,"model":"m"}', ("m", False, None, None)),
        (b"{}", (None, False, None, None)),
        (b' \r\n\t{ "model" :\t"a b" , "stream" : true }\n ', ("a b", True, None, None)),
        (b'{"model":null,"stream":null}', (None, False, None, None)),
        # nested / decoy model keys are not taken
        (
            b'{"messages":[{"role":"user","content":"{\\"model\\": \\"evil\\"}","model":"x"}],'
            b'"metadata":{"model":"y","stream":true},"model":"real"}',
            ("real", False, None, None),
        ),
        (b'{"messages":[{"model":"x"}]}', (None, False, None, None)),
        (b'{"x":"\\"model\\":\\"evil\\"","model":"ok"}', ("ok", False, None, None)),
        # escapes in the value and in the key
        (b'{"model":"caf\\u00e9 \\"q\\" \\\\ \\/ \\n"}', ('café "q" \\ / \n', False, None, None)),
        (b'{"model":"\\ud83d\\ude00"}', ("\U0001f600", False, None, None)),
        (b'{"mod\\u0065l":"esc-key","stream":true}', ("esc-key", True, None, None)),
        ('{"model":"模型-é😀"}'.encode(), ("模型-é😀", False, None, None)),
        # duplicates of members the gateway does not read: the last one wins, like json.loads
        (b'{"x":1,"x":2,"model":"b"}', ("b", False, None, None)),
        (b'{"messages":[{"model":"a"},{"model":"b"}],"model":"c"}', ("c", False, None, None)),
        # stream_options
        (b'{"stream_options":{"include_usage":true}}', (None, False, True, None)),
        (b'{"stream_options":{"include_usage":false}}', (None, False, False, None)),
        (b'{"stream_options":{"include_usage":null}}', (None, False, None, None)),
        (b'{"stream_options":null}', (None, False, None, None)),
        (b'{"stream_options":{}}', (None, False, None, None)),
        (b'{"include_usage":true,"a":{"stream_options":{"include_usage":true}}}', (None, False, None, None)),
        # max output tokens: max_tokens, max_completion_tokens, max_output_tokens, generationConfig
        (b'{"max_tokens":100}', (None, False, None, 100)),
        (b'{"max_completion_tokens":7,"max_tokens":100}', (None, False, None, 100)),
        (b'{"max_completion_tokens":7}', (None, False, None, 7)),
        (b'{"max_output_tokens":0}', (None, False, None, 0)),
        (b'{"max_tokens":null,"max_output_tokens":9}', (None, False, None, 9)),
        (b'{"generationConfig":{"maxOutputTokens":64,"temperature":0.5}}', (None, False, None, 64)),
        (b'{"generationConfig":{"maxOutputTokens":64},"max_tokens":3}', (None, False, None, 64)),
        # the largest cap: an upper bound whichever member the provider honours
        (b'{"max_tokens":10,"max_completion_tokens":5000}', (None, False, None, 5000)),
        (b'{"max_output_tokens":9,"max_tokens":null,"max_completion_tokens":2}', (None, False, None, 9)),
        (b'{"max_tokens":-0}', (None, False, None, 0)),
        (b'{"max_tokens":999999999999999999}', (None, False, None, 999999999999999999)),
        (b'{"a":{"max_tokens":5}}', (None, False, None, None)),
    ],
)
def test_scan_request(scan: ModuleType, body: bytes, expected: tuple[Any, ...]) -> None:
    assert request_tuple(scan.scan_request(body)) == expected
    reference = json.loads(body)
    assert reference.get("model") == expected[0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b'{"model":"x"',
        b'{"model":"x",}',
        b'{"model" "x"}',
        b'{"model":"x"} {}',
        b'{"model":"x"}x',
        b"[1,2]",
        b'"model"',
        b"null",
        b"42",
        b'{"a":[1,]}',
        b'{"a":01}',
        b'{"a":1.}',
        b'{"a":.5}',
        b'{"a":-}',
        b'{"a":1e}',
        b'{"a":tru}',
        b'{"a":True}',
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":"\\x"}',
        b'{"a":"\\u12g4"}',
        b'{"a":"line\nbreak"}',
        b'{"a":"tab\there"}',
        b'{"a":"\xff"}',
        b'{"a":"\xc3"}',
        b'{"a":"\xed\xa0\x80"}',  # UTF-8 encoded surrogate
        b'{"a":"\xc0\xaf"}',  # overlong
        b"\xef\xbb\xbf{}",  # BOM
        b"{'a':1}",
        b'{"model":"a"]',
        b'{"a":[}',
        b'{"model":"x"}\x00',
        # type errors on the fields the gateway reads
        b'{"model":5}',
        b'{"model":["x"]}',
        b'{"model":"a","model":{}}',
        b'{"stream":"true"}',
        b'{"stream":1}',
        b'{"stream_options":true}',
        b'{"stream_options":{"include_usage":"yes"}}',
        b'{"max_tokens":"5"}',
        b'{"max_tokens":1.0}',
        b'{"max_tokens":1e3}',
        b'{"max_tokens":-1}',
        b'{"max_tokens":true}',
        b'{"max_tokens":1000000000000000000}',
        b'{"max_tokens":5,"max_output_tokens":"x"}',
        b'{"generationConfig":[]}',
        b'{"generationConfig":{"maxOutputTokens":-3}}',
        b'{"model":"\\ud800"}',  # lone surrogate in the model
        b'{"model":"\\udc00x"}',
    ],
)
def test_scan_request_malformed(scan: ModuleType, body: bytes) -> None:
    with pytest.raises(_scan_py.ScanError):
        scan.scan_request(body)


def test_scan_request_error_messages_match(scan: ModuleType) -> None:
    cases = {
        b"[]": _scan_py.MSG_NOT_OBJECT,
        b'{"model":1}': _scan_py.MSG_MODEL_TYPE,
        b'{"stream":1}': _scan_py.MSG_STREAM_TYPE,
        b'{"stream_options":1}': _scan_py.MSG_STREAM_OPTIONS_TYPE,
        b'{"stream_options":{"include_usage":1}}': _scan_py.MSG_INCLUDE_USAGE_TYPE,
        b'{"max_completion_tokens":-1}': _scan_py.msg_max_type("max_completion_tokens"),
        b'{"model":"\\ud800"}': _scan_py.MSG_MODEL_SURROGATE,
    }
    for body, message in cases.items():
        with pytest.raises(_scan_py.ScanError) as info:
            scan.scan_request(body)
        assert str(info.value) == message
    with pytest.raises(_scan_py.ScanError, match="malformed JSON"):
        scan.scan_request(b'{"a":}')


def test_scan_request_depth_limit(scan: ModuleType) -> None:
    depth = _scan_py.MAX_DEPTH
    ok = b'{"model":"m","a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    assert scan.scan_request(ok).model == "m"
    too_deep = b'{"model":"m","a":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(_scan_py.ScanError):
        scan.scan_request(too_deep)
    way_too_deep = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(_scan_py.ScanError):
        scan.scan_request(way_too_deep)
    # a deep value later replaced by a duplicate key still counts
    replaced = b'{"a":' + b"{" * depth + b"}" * depth + b',"a":1}'
    with pytest.raises(_scan_py.ScanError):
        scan.scan_request(replaced)


def test_scan_request_type_checks(scan: ModuleType) -> None:
    with pytest.raises(TypeError):
        scan.scan_request("{}")
    with pytest.raises(TypeError):
        scan.scan_request(bytearray(b"{}"))
    fields = scan.scan_request(b'{"model":"m","stream":true}')
    assert fields == scan.RequestFields("m", True, None, None)
    assert "model='m'" in repr(fields)


def test_scan_request_large_body(scan: ModuleType) -> None:
    messages = [{"role": "user", "content": "x" * 1000 + "é\n\"" * 50, "model": "decoy"}] * 200
    body = json.dumps({"messages": messages, "model": "gpt-4o", "stream": True}).encode()
    assert request_tuple(scan.scan_request(body)) == ("gpt-4o", True, None, None)


# ---------------------------------------------------------------------------------------------
# rewrite_request


def rewritten(scan: ModuleType, body: bytes, **kwargs: Any) -> bytes:
    out = scan.rewrite_request(body, **kwargs)
    assert isinstance(out, bytes)
    assert out == _scan_py.rewrite_request(body, **kwargs)
    return out


def test_rewrite_identity(scan: ModuleType) -> None:
    bodies = [
        b'{"model":"gpt-4o","stream":true}',
        b'{ "model" : "gpt-4o" , "stream_options" : { "include_usage" : true } }',
        b'{"stream_options":{"include_usage":true},"model":"gpt-4o"}',
    ]
    for body in bodies:
        assert scan.rewrite_request(body) is body
        assert scan.rewrite_request(body, model="gpt-4o") is body
    assert scan.rewrite_request(bodies[1], model="gpt-4o", inject_include_usage=True) is bodies[1]
    assert scan.rewrite_request(bodies[2], inject_include_usage=True) is bodies[2]


@pytest.mark.parametrize(
    ("body", "kwargs", "expected"),
    [
        (b'{"model":"a","x":1}', {"model": "b"}, b'{"model":"b","x":1}'),
        (b'{ "x" : 1 ,\n "model" :  "a"  }', {"model": "bb"}, b'{ "x" : 1 ,\n "model" :  "bb"  }'),
        (b'{"x":1}', {"model": "m"}, b'{"model":"m","x":1}'),
        (b"{}", {"model": "m"}, b'{"model":"m"}'),
        (b" { } ", {"model": "m"}, b' {"model":"m" } '),
        (b'{"model":null}', {"model": "m"}, b'{"model":"m"}'),
        (b'{"mod\\u0065l":"a"}', {"model": "c"}, b'{"mod\\u0065l":"c"}'),
        (b'{"a":{"model":"x"},"model":"y"}', {"model": "z"}, b'{"a":{"model":"x"},"model":"z"}'),
        (b'{"model":"a"}', {"model": 'q"\\\n\té😀'}, b'{"model":"q\\"\\\\\\n\\t\xc3\xa9\xf0\x9f\x98\x80"}'),
        (b'{"model":"a"}', {"model": "\ud800"}, b'{"model":"\\ud800"}'),
        # include_usage injection
        (b'{"stream":true}', {"inject_include_usage": True}, b'{"stream_options":{"include_usage":true},"stream":true}'),
        (b"{}", {"inject_include_usage": True}, b'{"stream_options":{"include_usage":true}}'),
        (
            b'{"stream_options":{"include_usage":false},"stream":true}',
            {"inject_include_usage": True},
            b'{"stream_options":{"include_usage":true},"stream":true}',
        ),
        (
            b'{"stream_options":{"include_usage":null}}',
            {"inject_include_usage": True},
            b'{"stream_options":{"include_usage":true}}',
        ),
        (
            b'{"stream_options":{"include_obfuscation":false}}',
            {"inject_include_usage": True},
            b'{"stream_options":{"include_usage":true,"include_obfuscation":false}}',
        ),
        (
            b'{"stream_options": { } }',
            {"inject_include_usage": True},
            b'{"stream_options": {"include_usage":true } }',
        ),
        (b'{"stream_options":null}', {"inject_include_usage": True}, b'{"stream_options":{"include_usage":true}}'),
        (
            b'{"a":{"stream_options":{"include_usage":false}}}',
            {"inject_include_usage": True},
            b'{"stream_options":{"include_usage":true},"a":{"stream_options":{"include_usage":false}}}',
        ),
        # both
        (
            b'{"messages":[],"stream":true}',
            {"model": "m", "inject_include_usage": True},
            b'{"model":"m","stream_options":{"include_usage":true},"messages":[],"stream":true}',
        ),
        (
            b'{"model":"x","stream":true,"stream_options":{"include_usage":false}}',
            {"model": "y", "inject_include_usage": True},
            b'{"model":"y","stream":true,"stream_options":{"include_usage":true}}',
        ),
    ],
)
def test_rewrite_request(scan: ModuleType, body: bytes, kwargs: dict[str, Any], expected: bytes) -> None:
    out = rewritten(scan, body, **kwargs)
    assert out == expected
    original = json.loads(body)
    result = json.loads(out)
    if "model" in kwargs:
        original["model"] = kwargs["model"]
    if kwargs.get("inject_include_usage"):
        options = original.get("stream_options")
        original["stream_options"] = dict(options or {}, include_usage=True)
    assert result == original


def test_rewrite_keeps_everything_else(scan: ModuleType) -> None:
    messages = [{"role": "user", "content": 'hi "model": "x" é😀\n', "model": "nested"}]
    body = (
        b'{\n  "messages": '
        + json.dumps(messages, ensure_ascii=False).encode()
        + b',\n  "model": "gpt-4o-mini",\n  "temperature": 0.25,\n  "stream": true\n}'
    )
    out = rewritten(scan, body, model="claude-x", inject_include_usage=True)
    assert out.replace(b'"claude-x"', b'"gpt-4o-mini"').replace(
        b'"stream_options":{"include_usage":true},', b""
    ) == body
    parsed = json.loads(out)
    assert parsed["messages"] == messages
    assert parsed["model"] == "claude-x"
    assert parsed["stream_options"] == {"include_usage": True}


# A member the gateway reads, repeated: parsers disagree on which one wins (json.loads and
# this scanner used to take the last, others take the first), so the gateway could route,
# meter or inject on one value while the provider acts on the other.  Refused, named.
@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b'{"model":"big-expensive","model":"gpt-4o-mini"}', "model"),
        (b'{"model":"a","model":null}', "model"),
        (b'{"model":5,"model":"b"}', "model"),
        (b'{"mod\\u0065l":"a","model":"b"}', "model"),  # escapes decode before comparing
        (b'{"stream":true,"stream":false}', "stream"),
        (b'{"stream":"yes","stream":true}', "stream"),
        (b'{"stream_options":{"include_usage":true},"stream_options":{"x":1}}', "stream_options"),
        (b'{"stream_options":7,"stream_options":{}}', "stream_options"),
        (
            b'{"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}',
            "stream_options.include_usage",
        ),
        (b'{"max_tokens":1,"max_tokens":100000}', "max_tokens"),
        (b'{"max_completion_tokens":1,"max_completion_tokens":2}', "max_completion_tokens"),
        (b'{"max_output_tokens":1,"max_output_tokens":2}', "max_output_tokens"),
        (b'{"generationConfig":{},"generationConfig":{}}', "generationConfig"),
        (b'{"generationConfig":{"maxOutputTokens":1,"maxOutputTokens":9}}', "generationConfig.maxOutputTokens"),
        # the first repeated one in document order is named
        (b'{"stream":true,"model":"a","stream":true,"model":"b"}', "stream"),
        (b'{"model":"a","stream_options":{"include_usage":true,"include_usage":true},"model":"a"}',
         "stream_options.include_usage"),
    ],
)  # fmt: skip
def test_repeated_members_refused(scan: ModuleType, body: bytes, name: str) -> None:
    for call in (
        lambda: scan.scan_request(body),
        lambda: scan.rewrite_request(body, model="x", inject_include_usage=True),
    ):
        with pytest.raises(_scan_py.ScanError) as info:
            call()
        assert str(info.value) == f'request member "{name}" appears more than once; send it once'


def test_repeated_members_many(scan: ModuleType) -> None:
    body = b"{" + b",".join([b'"model":"a"'] * 12 + [b'"stream_options":{"include_usage":false}'] * 12) + b"}"
    with pytest.raises(_scan_py.ScanError, match='"model" appears more than once'):
        scan.rewrite_request(body, model="b", inject_include_usage=True)


def test_rewrite_errors(scan: ModuleType) -> None:
    with pytest.raises(_scan_py.ScanError):
        scan.rewrite_request(b'{"model":', model="x")
    with pytest.raises(_scan_py.ScanError):
        scan.rewrite_request(b'{"stream_options":5}', inject_include_usage=True)
    with pytest.raises(_scan_py.ScanError):
        scan.rewrite_request(b"[]", model="x")
    with pytest.raises(TypeError):
        scan.rewrite_request(b"{}", model=5)


# ---------------------------------------------------------------------------------------------
# UsageScanner: construction and pass-through


def test_scanner_arguments(scan: ModuleType) -> None:
    with pytest.raises(ValueError):
        scan.UsageScanner(9, True)
    with pytest.raises(ValueError):
        scan.UsageScanner(ANTHROPIC, True, True)
    with pytest.raises(ValueError):
        scan.UsageScanner(CHAT, False, True)
    scanner = scan.UsageScanner(CHAT, True)
    with pytest.raises(TypeError):
        scanner.feed("text")
    assert scanner.finish() == b""
    with pytest.raises(ValueError):
        scanner.feed(b"data: {}\n\n")
    assert scanner.finish() == b""
    assert usage_tuple(scanner.result()) == NO_USAGE


def test_feed_returns_same_object(scan: ModuleType) -> None:
    for api, streaming in ((CHAT, True), (CHAT, False), (ANTHROPIC, True), (GEMINI, False)):
        scanner = scan.UsageScanner(api, streaming)
        for chunk in (b'data: {"a":', b'1}\n\n', b"", b"x" * 10):
            assert scanner.feed(chunk) is chunk
    scanner = scan.UsageScanner(CHAT, True, True)
    chunk = b'data: {"choices":[{"delta":{}}]}\n\n'
    assert scanner.feed(chunk) == chunk
    empty = b""
    assert scanner.feed(empty) is empty


def test_usage_repr_and_equality(scan: ModuleType) -> None:
    scanner = scan.UsageScanner(CHAT, False)
    scanner.feed(b'{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2}}')
    scanner.finish()
    u = scanner.result()
    assert u == scan.Usage(1, 2, 0, 0, 0, True, "m", False)
    assert u != scan.Usage(1, 2, 0, 0, 0, False, "m", False)
    assert "input_tokens=1" in repr(u)


# ---------------------------------------------------------------------------------------------
# UsageScanner: non-streamed bodies


OPENAI_BODY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": 'Hi "usage": {"prompt_tokens": 9} é😀'},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 104,
            "completion_tokens": 16,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0, "cache_write_tokens": 8},
            "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": 0},
        },
    },
    ensure_ascii=False,
).encode()


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        (CHAT, OPENAI_BODY, U(104, 16, 64, 8, 5, model="gpt-4o-2024-08-06")),
        (
            CHAT,
            b'{"usage":{"prompt_tokens":3,"completion_tokens":4,'
            b'"prompt_tokens_details":null,"completion_tokens_details":null},"model":"m"}',
            U(3, 4, model="m"),
        ),
        (
            RESPONSES,
            b'{"model":"gpt-5","error":null,"output":[{"usage":{"input_tokens":1}}],'
            b'"usage":{"input_tokens":4020,"input_tokens_details":{"cache_write_tokens":4012,'
            b'"cached_tokens":0},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2}}}',
            U(4020, 5, 0, 4012, 2, model="gpt-5"),
        ),
        (
            ANTHROPIC,
            b'{"type":"message","model":"claude","usage":{"input_tokens":3,'
            b'"cache_creation_input_tokens":418,"cache_read_input_tokens":1111,'
            b'"cache_creation":{"ephemeral_5m_input_tokens":418},"output_tokens":33}}',
            U(3 + 1111 + 418, 33, 1111, 418, 0, model="claude"),
        ),
        (
            GEMINI,
            b'{"candidates":[],"modelVersion":"gemini-2.5-flash","usageMetadata":{'
            b'"promptTokenCount":17713,"cachedContentTokenCount":17379,'
            b'"candidatesTokenCount":68,"thoughtsTokenCount":821,"totalTokenCount":18602}}',
            U(17713, 68 + 821, 17379, 0, 821, model="gemini-2.5-flash"),
        ),
        # Gemini JSON-array stream (streamGenerateContent without alt=sse), last one wins
        (
            GEMINI,
            b'[{"usageMetadata":{"promptTokenCount":5},"modelVersion":"g"}\r\n,'
            b'{"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":7}}]',
            U(5, 7, model="g"),
        ),
        # only the top level counts for model/usage/error
        (CHAT, b'{"choices":[{"usage":{"prompt_tokens":1},"model":"x","error":1}]}', NO_USAGE),
        # usage present but not usable
        (CHAT, b'{"usage":null}', NO_USAGE),
        (CHAT, b'{"usage":{}}', NO_USAGE),
        (CHAT, b'{"usage":{"total_tokens":5}}', NO_USAGE),
        (CHAT, b'{"usage":[1]}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":"1","completion_tokens":2}}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":-1,"completion_tokens":2}}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":true,"completion_tokens":2}}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":1,"prompt_tokens_details":5}}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":1000000000000000000}}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":999999999999999999}}', U(999999999999999999)),
        (CHAT, b'{"usage":{"prompt_tokens":null,"completion_tokens":2}}', U(0, 2)),
        (CHAT, b'{"usage":{"prompt_tokens":-0,"completion_tokens":2}}', U(0, 2)),
        # duplicate keys behave like json.loads (last one wins, whole value replaced)
        (CHAT, b'{"usage":{"prompt_tokens":1},"usage":{"completion_tokens":2}}', U(0, 2)),
        (CHAT, b'{"usage":{"prompt_tokens":1},"usage":null}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":"x","prompt_tokens":3}}', U(3)),
        (
            CHAT,
            b'{"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":2},'
            b'"prompt_tokens_details":{}}}',
            U(3),
        ),
        (CHAT, b'{"model":"a","model":7}', U(has_usage=False)),
        (CHAT, b'{"model":"a","model":"b"}', U(has_usage=False, model="b")),
        # DeepSeek: prompt_cache_hit_tokens is the cache read when cached_tokens is absent
        (
            CHAT,
            b'{"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_cache_hit_tokens":7,'
            b'"prompt_cache_miss_tokens":3}}',
            U(10, 2, 7),
        ),
        (
            CHAT,
            b'{"usage":{"prompt_tokens":10,"prompt_cache_hit_tokens":7,'
            b'"prompt_tokens_details":{"cached_tokens":6}}}',
            U(10, 0, 6),
        ),
        (CHAT, b'{"usage":{"prompt_tokens":10,"prompt_cache_hit_tokens":"7"}}', NO_USAGE),
        (RESPONSES, b'{"usage":{"input_tokens":10,"prompt_cache_hit_tokens":7}}', U(10)),
        # Groq without include_usage: x_groq.usage
        (
            CHAT,
            b'{"x_groq":{"usage":{"prompt_tokens":5003,"completion_tokens":359}},"usage":null}',
            U(5003, 359),
        ),
        (CHAT, b'{"x_groq":{"usage":{"prompt_tokens":1}},"usage":{"prompt_tokens":2}}', U(2)),
        # errors
        (CHAT, b'{"error":{"message":"bad","type":"invalid_request_error"}}', U(has_usage=False, is_error=True)),
        (CHAT, b'{"error":null,"usage":{"prompt_tokens":1}}', U(1)),
        (ANTHROPIC, b'{"type":"error","error":{"type":"overloaded_error"}}', U(has_usage=False, is_error=True)),
        (GEMINI, b'{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}', U(has_usage=False, is_error=True)),
        (RESPONSES, b'{"status":"failed","error":{"code":"x"},"usage":null}', U(has_usage=False, is_error=True)),
        # model: long / lone surrogate strings are ignored, escapes decoded
        (CHAT, b'{"model":"' + b"m" * 256 + b'"}', U(has_usage=False, model="m" * 256)),
        (CHAT, b'{"model":"' + b"m" * 257 + b'"}', NO_USAGE),
        (CHAT, b'{"model":"\\ud800"}', NO_USAGE),
        (CHAT, b'{"model":"gpt\\u002d4\\ud83d\\ude00"}', U(has_usage=False, model="gpt-4\U0001f600")),
        # responses tolerate invalid UTF-8 inside strings (never in what is read)
        (CHAT, b'{"c":"bad \xff\xc3 utf-8","model":"m","usage":{"prompt_tokens":1}}', U(1, model="m")),
        (CHAT, b'{"c":"\xed\xa0\x80\xe4","usage":{"prompt_tokens":1}}', U(1)),
        (CHAT, b'{"model":"m\xff","usage":{"prompt_tokens":1}}', U(1)),
        (CHAT, b'{"model":"caf\xc3\xa9","usage":{"prompt_tokens":1}}', U(1, model="café")),
        (CHAT, b'{"us\xffage":{"prompt_tokens":1}}', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":1}}\xc3\xa9', NO_USAGE),
        (CHAT, b'{"usage":{"prompt_tokens":1},\xff"a":1}', NO_USAGE),
        (ANTHROPIC, b'{"type":"err\xffor"}', NO_USAGE),
        # invalid JSON anywhere: nothing counts
        (CHAT, OPENAI_BODY[:-1], NO_USAGE),
        (CHAT, OPENAI_BODY + b"x", NO_USAGE),
        (CHAT, OPENAI_BODY.replace(b'"stop"', b"'stop'"), NO_USAGE),
        (CHAT, b"<html>502 Bad Gateway</html>", NO_USAGE),
        (CHAT, b"", NO_USAGE),
        (CHAT, b'{"error":{"a":NaN}}', NO_USAGE),
    ],
)
def test_non_streamed(scan: ModuleType, api: int, body: bytes, expected: tuple[Any, ...]) -> None:
    check_all_splits(scan, api, False, body, expected)


def test_non_streamed_mid_result_is_empty(scan: ModuleType) -> None:
    scanner = scan.UsageScanner(CHAT, False)
    scanner.feed(OPENAI_BODY)
    assert usage_tuple(scanner.result()) == NO_USAGE  # evaluated at finish()
    scanner.finish()
    assert scanner.result().input_tokens == 104


def test_non_streamed_body_cap(scan: ModuleType) -> None:
    cap = _scan_py.MAX_BODY_BYTES
    usage = b',"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    filler = b'{"pad":"' + b"x" * (cap - 10 - len(usage)) + b'"'
    body = filler + usage
    assert len(body) <= cap
    assert run_chunks(scan, CHAT, False, [body[: cap // 2], body[cap // 2 :]])[0] == U(1, 2)
    big = b'{"pad":"' + b"x" * (cap + 1) + b'"' + usage
    assert run_chunks(scan, CHAT, False, [big[:100], big[100:]])[0] == NO_USAGE


# ---------------------------------------------------------------------------------------------
# UsageScanner: streams


OPENAI_STREAM_EVENTS = [
    '{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":'
    '[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}',
    '{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":'
    '[{"index":0,"delta":{"content":"Hé \\"usage\\": {\\"prompt_tokens\\": 1}"},"finish_reason":null}],'
    '"usage":null}',
    '{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":'
    '[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}',
    '{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[],'
    '"usage":{"prompt_tokens":53,"completion_tokens":15,"total_tokens":68,'
    '"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":1,"audio_tokens":0}}}',
    "[DONE]",
]
OPENAI_EXPECTED = U(53, 15, 3, 0, 1, model="gpt-4o-mini-2024-07-18")


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_openai_stream(scan: ModuleType, eol: bytes) -> None:
    body = sse(*OPENAI_STREAM_EVENTS, eol=eol)
    check_all_splits(scan, CHAT, True, body, OPENAI_EXPECTED)


def test_openai_stream_truncated(scan: ModuleType) -> None:
    body = sse(*OPENAI_STREAM_EVENTS)
    usage_event = body.index(b"data: {", body.index(b'"finish_reason":"stop"'))
    for cut in range(0, usage_event + 1, 7):
        got = run_chunks(scan, CHAT, True, [body[:cut]])[0]
        assert got[5] is False  # has_usage
        assert got[:5] == (0, 0, 0, 0, 0)
    # cut inside the usage event: never a partial number
    end = body.index(b"[DONE]")
    for cut in range(usage_event, end - 4):
        got = run_chunks(scan, CHAT, True, [body[:cut]])[0]
        assert got[5] is False or got == OPENAI_EXPECTED, cut


def test_stream_without_final_blank_line(scan: ModuleType) -> None:
    body = sse(*OPENAI_STREAM_EVENTS[:3]) + b"data: " + OPENAI_STREAM_EVENTS[3].encode()
    check_all_splits(scan, CHAT, True, body, OPENAI_EXPECTED)


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        # SSE framing: comments, other fields, "data" without a space, multi-line data
        (
            CHAT,
            b": OPENROUTER PROCESSING\n\n: ping\nid: 7\nretry: 100\nevent: message\n"
            b'data:{"usage":{"prompt_tokens":1,\ndata: "completion_tokens":2}}\n\n',
            U(1, 2),
        ),
        (CHAT, b'data: {"usage":{"prompt_tokens":1}}\ndata: {"usage":{"prompt_tokens":2}}\n\n', NO_USAGE),
        (CHAT, b'data:  {"usage":{"prompt_tokens":4}}\n\n', U(4)),
        (CHAT, b'data {"usage":{"prompt_tokens":4}}\n\n', NO_USAGE),
        (CHAT, b' data: {"usage":{"prompt_tokens":4}}\n\n', NO_USAGE),
        (CHAT, b'DATA: {"usage":{"prompt_tokens":4}}\n\n', NO_USAGE),
        (CHAT, b'data\ndata: {"usage":{"prompt_tokens":4}}\n\n', U(4)),
        (CHAT, b"data: [DONE]\n\n", NO_USAGE),
        (CHAT, b"data: 5\n\ndata: [1,2]\n\ndata: null\n\n", NO_USAGE),
        # perplexity-style cumulative usage: the last one wins, whole object replaced
        (
            CHAT,
            sse(
                '{"usage":{"prompt_tokens":11,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":5}}}',
                '{"usage":{"prompt_tokens":11,"completion_tokens":434}}',
            ),
            U(11, 434),
        ),
        # a later invalid usage does not erase an earlier valid one
        (CHAT, sse('{"usage":{"prompt_tokens":3}}', '{"usage":{"prompt_tokens":"x"}}'), U(3)),
        (CHAT, sse('{"usage":{"prompt_tokens":3}}', '{"usage":{"prompt_tokens":4}'), U(3)),
        # in-stream errors
        (CHAT, sse('{"error":{"message":"boom"}}'), U(has_usage=False, is_error=True)),
        (CHAT, b"event: error\ndata: {}\n\n", U(has_usage=False, is_error=True)),
        (CHAT, b"event:error\n\n", U(has_usage=False, is_error=True)),
        (CHAT, b"event: errors\n\nevent: error x\n\n: event: error\n\n", NO_USAGE),
        (
            ANTHROPIC,
            b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n',
            U(has_usage=False, is_error=True),
        ),
        # Responses API
        (
            RESPONSES,
            b'event: response.created\ndata: {"type":"response.created","response":{"model":"gpt-5",'
            b'"usage":null}}\n\n'
            b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"gpt-5",'
            b'"usage":{"input_tokens":53,"input_tokens_details":{"cached_tokens":0},"output_tokens":469,'
            b'"output_tokens_details":{"reasoning_tokens":448},"total_tokens":522}}}\n\n',
            U(53, 469, 0, 0, 448, model="gpt-5"),
        ),
        (
            RESPONSES,
            b'data: {"type":"response.incomplete","response":{"usage":{"input_tokens":5,"output_tokens":6}}}\n\n',
            U(5, 6),
        ),
        (
            RESPONSES,
            b'data: {"type":"error","error":{"type":"insufficient_quota"}}\n\n'
            b'data: {"type":"response.failed","response":{"error":{"code":"x"},"usage":null}}\n\n',
            U(has_usage=False, is_error=True),
        ),
        (RESPONSES, b'data: {"type":"response.failed","response":{}}\n\n', U(has_usage=False, is_error=True)),
        (RESPONSES, b'data: {"type":"response.failed ","response":{}}\n\n', NO_USAGE),
        # Anthropic: message_start counts, overridden field by field by message_delta
        (
            ANTHROPIC,
            b"event: message_start\n"
            b'data: {"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":43,'
            b'"cache_read_input_tokens":7,"output_tokens":1}}}\n\n'
            b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
            b"event: message_delta\n"
            b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
            b'"usage":{"input_tokens":61,"output_tokens":2}       }\n\n'
            b'event: message_stop\ndata: {"type":"message_stop"               }\n\n',
            U(61 + 7, 2, 7, 0, 0, model="claude-x"),
        ),
        # Anthropic stream cut before message_delta: input counts kept, but has_usage is False
        # and no output (message_start's output_tokens is a placeholder, not a count)
        (
            ANTHROPIC,
            b'data: {"type":"message_start","message":{"model":"c","usage":{"input_tokens":43,'
            b'"output_tokens":1}}}\n\n',
            U(43, 0, has_usage=False, model="c"),
        ),
        # Gemini alt=sse with CRLF framing; cumulative usageMetadata
        (
            GEMINI,
            b'data: {"usageMetadata":{"promptTokenCount":18,"candidatesTokenCount":31,'
            b'"thoughtsTokenCount":35},"modelVersion":"gemini-2.5-flash"}\r\n\r\n'
            b'data: {"usageMetadata":{"promptTokenCount":18,"candidatesTokenCount":80,'
            b'"thoughtsTokenCount":35},"modelVersion":"gemini-2.5-flash"}\r\n\r\n',
            U(18, 80 + 35, 0, 0, 35, model="gemini-2.5-flash"),
        ),
        # a JSON (not SSE) body on a streaming request: error before the stream started
        (
            ANTHROPIC,
            b'  \n{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
            U(has_usage=False, is_error=True),
        ),
        (
            GEMINI,
            b'[{"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1}}\r\n,'
            b'{"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":9}}\r\n]',
            U(5, 9),
        ),
        (CHAT, b"", NO_USAGE),
        (CHAT, b"\n\n\r\n  \n", NO_USAGE),
    ],
)
def test_streams(scan: ModuleType, api: int, body: bytes, expected: tuple[Any, ...]) -> None:
    check_all_splits(scan, api, True, body, expected)


def test_result_mid_stream(scan: ModuleType) -> None:
    scanner = scan.UsageScanner(CHAT, True)
    scanner.feed(sse(*OPENAI_STREAM_EVENTS[:3]))
    mid = scanner.result()
    assert mid.has_usage is False and mid.model == "gpt-4o-mini-2024-07-18"
    scanner.feed(sse(*OPENAI_STREAM_EVENTS[3:]))
    assert usage_tuple(scanner.result()) == OPENAI_EXPECTED
    scanner.finish()
    assert usage_tuple(scanner.result()) == OPENAI_EXPECTED


def test_event_cap(scan: ModuleType) -> None:
    cap = _scan_py.MAX_EVENT_BYTES
    usage = b'{"usage":{"prompt_tokens":1},"pad":"'
    fits = b"data: " + usage + b"x" * (cap - len(usage) - 2) + b'"}\n\n'
    assert len(fits) - 8 == cap
    assert run_chunks(scan, CHAT, True, [fits[:1000], fits[1000:]])[0] == U(1)
    over = b"data: " + usage + b"x" * (cap - len(usage) - 1) + b'"}\n\n'
    assert run_chunks(scan, CHAT, True, [over[:1000], over[1000:]])[0] == NO_USAGE
    # the cap counts the joined data of the event (data lines + "\n" separators)
    line1 = b'{"usage":{"prompt_tokens":1},"a":"' + b"x" * (cap // 2) + b'"'
    line2_fixed = b',"b":""}'
    for total, expected in ((cap, U(1)), (cap + 1, NO_USAGE)):
        line2 = line2_fixed[:-2] + b"y" * (total - len(line1) - 1 - len(line2_fixed)) + b'"}'
        two = b"data: " + line1 + b"\ndata:" + line2 + b"\n\n"
        assert len(line1) + 1 + len(line2) == total
        assert run_chunks(scan, CHAT, True, [two])[0] == expected
    # events after an oversized one are read normally
    tail = sse('{"usage":{"prompt_tokens":2}}')
    assert run_chunks(scan, CHAT, True, [over, tail])[0] == U(2)


def test_long_comment_and_unknown_lines_are_skipped(scan: ModuleType) -> None:
    body = b":" + b"c" * 3_000_000 + b"\nfoo: " + b"f" * 100_000 + b"\n\n" + sse('{"usage":{"prompt_tokens":9}}')
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    assert run_chunks(scan, CHAT, True, chunks)[0] == U(9)


# ---------------------------------------------------------------------------------------------
# strip_usage_chunk


def _without_usage(event: str) -> str:
    """The chunk OpenAI sends when include_usage was not requested (no "usage" member)."""
    return event.replace(',"usage":null', "")


def test_strip_usage_chunk_synthetic(scan: ModuleType) -> None:
    with_usage = sse(*OPENAI_STREAM_EVENTS)
    expected = sse(*[_without_usage(e) for e in OPENAI_STREAM_EVENTS if '"choices":[]' not in e])
    assert expected != with_usage
    check_all_splits(scan, CHAT, True, with_usage, OPENAI_EXPECTED, strip=True, expected_out=expected)


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_strip_usage_chunk_other_line_endings(scan: ModuleType, eol: bytes) -> None:
    with_usage = sse(*OPENAI_STREAM_EVENTS, eol=eol)
    expected = sse(*[_without_usage(e) for e in OPENAI_STREAM_EVENTS if '"choices":[]' not in e], eol=eol)
    check_all_splits(scan, CHAT, True, with_usage, OPENAI_EXPECTED, strip=True, expected_out=expected)


@pytest.mark.parametrize(
    ("event", "stripped"),
    [
        ('{"usage":null}', "{}"),
        ('{"usage":null,"a":1}', '{"a":1}'),
        ('{"a":1,"usage":null}', '{"a":1}'),
        ('{"a":1,"usage":null,"b":2}', '{"a":1,"b":2}'),
        ('{ "a" : 1 , "usage" : null , "b" : 2 }', '{ "a" : 1 , "b" : 2 }'),
        ('{ "usage" : null , "b" : 2 }', '{ "b" : 2 }'),
        ('{"usage":null,"usage":null}', '{"usage":null,"usage":null}'),  # duplicates: untouched
        ('{"usage":{"prompt_tokens":1},"usage":null}', '{"usage":{"prompt_tokens":1},"usage":null}'),
        ('{"a":{"usage":null}}', '{"a":{"usage":null}}'),
        ('{"choices":[],"usage":null}', '{"choices":[]}'),
        # usage on the finish chunk (DeepSeek/Groq/Mistral style) is kept
        (
            '{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}',
            '{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}',
        ),
        # an error chunk that also carries usage is never removed
        (
            '{"choices":[],"error":{"code":400},"usage":{"prompt_tokens":1}}',
            '{"choices":[],"error":{"code":400},"usage":{"prompt_tokens":1}}',
        ),
        ('{"choices":[],"usage":{"prompt_tokens":1}}', None),
        ('{"choices":[ ],"error":null,"usage":{"bogus":1}}', None),
        ('{"choices":[],"usage":{"prompt_tokens":1}', '{"choices":[],"usage":{"prompt_tokens":1}'),  # invalid JSON
        ('{"choices":[0],"usage":{"prompt_tokens":1}}', '{"choices":[0],"usage":{"prompt_tokens":1}}'),
        ("[DONE]", "[DONE]"),
    ],
)
def test_strip_usage_chunk_cases(scan: ModuleType, event: str, stripped: str | None) -> None:
    before = sse('{"choices":[{"delta":{"content":"x"}}],"usage":null}')
    body = before + sse(event) + b"data: [DONE]\n\n"
    expected = sse('{"choices":[{"delta":{"content":"x"}}]}') + (sse(stripped) if stripped else b"") + b"data: [DONE]\n\n"
    check_all_splits(scan, CHAT, True, body, None, strip=True, expected_out=expected)


def test_strip_keeps_multiline_and_comment_events(scan: ModuleType) -> None:
    body = (
        b": keep-alive\n\n"
        b'data: {"a":1,\ndata: "usage":null}\n\n'
        b'event: x\ndata: {"choices":[],\ndata: "usage":{"prompt_tokens":1}}\n\n'
    )
    expected = b": keep-alive\n\n" b'data: {"a":1,\ndata: "usage":null}\n\n'
    check_all_splits(scan, CHAT, True, body, U(1), strip=True, expected_out=expected)


def test_strip_json_body_passes_through(scan: ModuleType) -> None:
    body = b'\n{"error":{"message":"x"},"choices":[],"usage":{"prompt_tokens":1}}'
    check_all_splits(scan, CHAT, True, body, U(1, is_error=True), strip=True, expected_out=body)


def test_strip_hold_cap(scan: ModuleType) -> None:
    cap = _scan_py.MAX_HOLD_BYTES
    pad = "x" * (cap - 80)
    small = '{"choices":[],"usage":{"prompt_tokens":1},"p":"' + pad + '"}'
    body = sse(small)
    assert len(body) <= cap
    assert run_chunks(scan, CHAT, True, [body[:5000], body[5000:]], True)[:2] == (U(1), b"")
    big = '{"choices":[],"usage":{"prompt_tokens":1},"p":"' + pad + "y" * 200 + '"}'
    body = sse(big)
    assert len(body) > cap
    got = run_chunks(scan, CHAT, True, [body[:5000], body[5000:50000], body[50000:]], True)
    assert got[:2] == (U(1), body)
    # bytes are released as they arrive once the cap is passed: memory stays bounded
    scanner = scan.UsageScanner(CHAT, True, True)
    line = b"data: " + b"[" + b"1," * 200_000
    released = scanner.feed(line)
    assert len(line) - len(released) <= cap


def test_strip_incomplete_tail_is_returned_by_finish(scan: ModuleType) -> None:
    scanner = scan.UsageScanner(CHAT, True, True)
    first = scanner.feed(b'data: {"choices":[{"delta":{}}]}\n\ndata: {"choi')
    assert first == b'data: {"choices":[{"delta":{}}]}\n\n'
    assert scanner.finish() == b'data: {"choi'


# ---------------------------------------------------------------------------------------------
# recorded fixtures (see /work/shared/data/fixtures/SOURCES.md)
