"""Property-based tests for the byte scanner.

* requests: generated bodies (random nesting, escapes, unicode, whitespace, duplicate keys,
  decoy "model" keys nested or inside strings), their mutations and random garbage bytes give
  exactly what a ``json.loads``-based reference gives -- the same fields, or ScanError;
* rewrite_request: the result parses to the original object with only model / stream_options
  changed, identically in both implementations;
* responses: random SSE streams and JSON bodies, split at random points, give identical
  results (and forwarded bytes with strip_usage_chunk) in both implementations, whatever the
  chunking.
"""

from __future__ import annotations

import json
import random
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plano_fast.wire import _scan_py
from tests.hypothesis_budget import examples
from tests.test_scan import _compiled, request_tuple, run_chunks

IMPLS: list[ModuleType] = [_scan_py] + ([_compiled] if _compiled is not None else [])

# 150 examples a test (was 300; tests/hypothesis_budget.py: PLANO_FAST_HYPOTHESIS=deep runs
# 5000, PLANO_FAST_HYPOTHESIS_EXAMPLES=N any count); the one bug a run found is an @example.
SETTINGS = settings(
    max_examples=examples(150, deep=5000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

ERROR = ("ScanError",)


# ---------------------------------------------------------------------------------------------
# a JSON writer with random formatting: objects are lists of (key, value) pairs so that
# duplicate keys can be produced


class Obj(list):  # type: ignore[type-arg]
    pass


class Raw(str):
    """A literal JSON token (numbers written in unusual ways)."""


WHITESPACE = ["", "", "", " ", "\n", "\t", "\r\n  ", "  \n\t"]
SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def write_string(s: str, rng: random.Random) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        roll = rng.random()
        if ch == '"' or ch == "\\":
            out.append(SHORT[ch] if roll < 0.8 else f"\\u{code:04x}")
        elif code < 0x20:
            if ch in SHORT and roll < 0.7:
                out.append(SHORT[ch])
            else:
                out.append(f"\\u{code:04X}" if roll < 0.85 else f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")  # lone surrogate: only representable escaped
        elif roll < 0.1:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04X}")
            else:
                out.append(f"\\u{code:04x}")
        elif ch == "/" and roll < 0.5:
            out.append("\\/")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def write(value: Any, rng: random.Random) -> str:
    ws = lambda: rng.choice(WHITESPACE)  # noqa: E731
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, str):
        return write_string(value, rng)
    if isinstance(value, Obj):
        if not value:
            return "{" + ws() + "}"
        members = [ws() + write_string(k, rng) + ws() + ":" + ws() + write(v, rng) + ws() for k, v in value]
        return "{" + ",".join(members) + "}"
    assert isinstance(value, list)
    if not value:
        return "[" + ws() + "]"
    return "[" + ",".join(ws() + write(v, rng) + ws() for v in value) + "]"


def to_bytes(value: Any, rng: random.Random) -> bytes:
    text = rng.choice(WHITESPACE) + write(value, rng) + rng.choice(WHITESPACE)
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------
# strategies

TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list('"\\/\n\r\t\b\f\x00\x1f{}[]:,') + ["é", "😀", "\u2028", "\x7f", "模"]),
        st.sampled_from(['"model": "evil"', '{"model":"x"}', "\\u006d", "model", "usage", '"choices":[]']),
    ),
    max_size=8,
).map("".join)
LONE = st.sampled_from(["\ud800", "\udc00", "\udbff"]).flatmap(lambda s: st.just("x" + s))
STRINGS = st.one_of(TEXT, TEXT, TEXT, LONE)
NUMBERS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers(min_value=0, max_value=5000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [Raw(x) for x in ["0", "-0", "1e5", "1E+2", "2e-3", "-1.5e-3", "0.0", "10.50", "999999999999999999", "1000000000000000000"]]
    ),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, STRINGS)
KEY_POOL = [
    "model", "stream", "stream_options", "include_usage", "max_tokens", "max_completion_tokens",
    "max_output_tokens", "generationConfig", "maxOutputTokens", "messages", "metadata", "usage",
    "Model", "mod\u00e9l", "", "model ", "prompt_tokens", "content",
]  # fmt: skip
KEYS = st.one_of(st.sampled_from(KEY_POOL), TEXT)


def values(keys: st.SearchStrategy[str] = KEYS, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(st.tuples(keys, children), max_size=4).map(Obj),
        ),
        max_leaves=max_leaves,
    )


ANY = values()


def member(key: str, likely: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, Any]]:
    return st.tuples(st.just(key), st.one_of(likely, likely, likely, ANY))


STREAM_OPTIONS = st.lists(
    st.one_of(member("include_usage", st.one_of(st.booleans(), st.none())), st.tuples(KEYS, ANY)), max_size=3
).map(Obj)
COUNT = st.one_of(st.integers(min_value=0, max_value=10**6), st.none(), NUMBERS)
REQUEST_MEMBERS = st.one_of(
    member("model", STRINGS),
    member("stream", st.one_of(st.booleans(), st.none())),
    member("stream_options", st.one_of(STREAM_OPTIONS, st.none())),
    member("max_tokens", COUNT),
    member("max_completion_tokens", COUNT),
    member("max_output_tokens", COUNT),
    member("generationConfig", st.lists(member("maxOutputTokens", COUNT), max_size=2).map(Obj)),
    member("messages", st.lists(st.lists(st.tuples(KEYS, ANY), max_size=3).map(Obj), max_size=3)),
    st.tuples(KEYS, ANY),
)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    if draw(st.integers(0, 19)) == 0:
        return to_bytes(draw(ANY), rng)  # not an object (usually)
    return to_bytes(Obj(draw(st.lists(REQUEST_MEMBERS, max_size=8))), rng)


# ---------------------------------------------------------------------------------------------
# reference: json.loads + the documented rules


def _reject(name: str) -> Any:
    raise ValueError(name)


def _count(value: Any) -> bool:
    return value is None or (type(value) is int and 0 <= value <= _scan_py.MAX_TOKEN_COUNT)


class _Pairs(list):  # type: ignore[type-arg]
    """An object as its member list (duplicates kept)."""


def _repeats_read_member(body: bytes) -> bool:
    """Whether a member the scanner reads appears twice (top level, or include_usage /
    maxOutputTokens inside stream_options / generationConfig): refused by rule."""
    pairs = json.loads(body.decode("utf-8"), object_pairs_hook=_Pairs)
    names = [name for name, _ in pairs]
    top = ("model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
           "max_output_tokens", "generationConfig",
           "messages", "contents", "input", "system")  # the conversation too (attack round f)  # fmt: skip
    if any(names.count(name) > 1 for name in top):
        return True
    for parent, child in (("stream_options", "include_usage"), ("generationConfig", "maxOutputTokens")):
        for name, value in pairs:
            if name == parent and isinstance(value, _Pairs) and [n for n, _ in value].count(child) > 1:
                return True
    return False


def reference(body: bytes) -> tuple[Any, ...]:
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ERROR
    if type(obj) is not dict or _repeats_read_member(body):
        return ERROR
    model = obj.get("model")
    if model is not None:
        if type(model) is not str:
            return ERROR
        try:
            model.encode("utf-8")
        except UnicodeEncodeError:
            return ERROR
    stream = obj.get("stream")
    if stream is not None and type(stream) is not bool:
        return ERROR
    options = obj.get("stream_options")
    include = None
    if options is not None:
        if type(options) is not dict:
            return ERROR
        include = options.get("include_usage")
        if include is not None and type(include) is not bool:
            return ERROR
    limits = [obj.get(k) for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")]
    config = obj.get("generationConfig")
    if config is not None:
        if type(config) is not dict:
            return ERROR
        limits.append(config.get("maxOutputTokens"))
    if not all(_count(v) for v in limits):
        return ERROR
    # the largest cap given (the scanner's value bounds a managed reservation)
    given = [v for v in limits if v is not None]
    limit = max(given) if given else None
    return (model, bool(stream), include, limit)


def outcome(impl: ModuleType, body: bytes) -> tuple[Any, ...]:
    try:
        return request_tuple(impl.scan_request(body))
    except _scan_py.ScanError:
        return ERROR


def check_request(body: bytes) -> None:
    expected = reference(body)
    for impl in IMPLS:
        assert outcome(impl, body) == expected, impl.__name__


@SETTINGS
@given(request_bodies())
# found by a run of this test (40e7a4c): the largest output cap given is the one read
@example(b'{"max_tokens": 0, "max_output_tokens": 1}')
@example(b'{"max_output_tokens": 7, "generationConfig": {"maxOutputTokens": 3}, "max_tokens": 5}')
def test_scan_request_matches_json_loads(body: bytes) -> None:
    check_request(body)


MUTATION_BYTES = st.sampled_from(list(b'{}[]:,"\\ 0123456789-+.eEtrufalsn\x00\x1f\x7f\xff\xc3\xa9\xed\n\r'))


@SETTINGS
@given(
    request_bodies(),
    st.lists(st.tuples(st.integers(0, 3), st.integers(min_value=0), MUTATION_BYTES), min_size=1, max_size=3),
)
def test_mutated_requests_match_json_loads(body: bytes, mutations: list[tuple[int, int, int]]) -> None:
    data = bytearray(body)
    for op, pos, byte in mutations:
        pos = pos % (len(data) + 1)
        if op == 0 and pos < len(data):
            del data[pos]
        elif op == 1:
            data.insert(pos, byte)
        elif op == 2 and pos < len(data):
            data[pos] = byte
        else:
            data[pos:pos] = data[pos : pos + 5]
    check_request(bytes(data))


TOKENS = st.sampled_from(
    ["{", "}", "[", "]", ":", ",", '"model"', '"stream"', '"x"', '"', "true", "false", "null", "1", "-0",
     "2.5e3", " ", "\n", '"\\u00e9"', '"\\"', "NaN", "tru", "\xef\xbb\xbf", '"stream_options"']
)  # fmt: skip


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.lists(TOKENS, max_size=30).map(lambda t: "".join(t).encode("utf-8", "surrogatepass"))))
def test_garbage_requests(body: bytes) -> None:
    check_request(body)


@SETTINGS
@given(
    request_bodies(),
    st.one_of(st.none(), STRINGS),
    st.booleans(),
)
# found by CI's run once "messages" joined DUPLICATE_NAMES and this reference did not
@example(b'{"\\u006d\\u0065\\u0073\\u0073\\u0061\\u0067\\u0065\\u0073":[],'
         b'"\\u006d\\u0065\\u0073\\u0073\\u0061\\u0067\\u0065\\u0073":[]}', None, False)
def test_rewrite_request_property(body: bytes, model: str | None, inject: bool) -> None:
    if reference(body) == ERROR:
        for impl in IMPLS:
            with pytest.raises(_scan_py.ScanError):
                impl.rewrite_request(body, model, inject)
        return
    outputs = [impl.rewrite_request(body, model, inject) for impl in IMPLS]
    assert all(out == outputs[0] for out in outputs)
    for out in outputs:
        if out == body:
            assert out is body
    expected = json.loads(body.decode("utf-8"))
    if model is not None:
        expected["model"] = model
    if inject:
        expected["stream_options"] = dict(expected.get("stream_options") or {}, include_usage=True)
    assert json.loads(outputs[0].decode("utf-8")) == expected
    if model is None and not inject:
        assert outputs[0] is body
    if model is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in model):
        return  # scan_request rejects lone surrogates in the model
    for impl in IMPLS:  # the rewritten body scans to the new values
        fields = impl.scan_request(outputs[0])
        if model is not None:
            assert fields.model == model
        if inject:
            assert fields.include_usage is True


# ---------------------------------------------------------------------------------------------
# responses: both implementations agree, whatever the chunking

RESPONSE_KEYS = st.sampled_from(
    ["model", "modelVersion", "usage", "usageMetadata", "error", "type", "choices", "x_groq", "response",
     "message", "id", "object", "content", "delta"]
)  # fmt: skip
TOKEN_KEYS = st.sampled_from(
    ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "cache_read_input_tokens",
     "cache_creation_input_tokens", "promptTokenCount", "candidatesTokenCount", "cachedContentTokenCount",
     "thoughtsTokenCount", "total_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
     "prompt_cache_hit_tokens", "toolUsePromptTokenCount", "thinking_tokens", "audio_tokens",
     "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens", "web_search_requests"]
)  # fmt: skip
# service tiers: the names read, near misses, and anything else
TIERS = st.one_of(
    st.sampled_from(["flex", "priority", "default", "auto", "standard", "standard_only", "on_demand", "scale",
                     "batch", "Flex", "flex ", "priorit", "", "p" * 40]),
    ANY,
)  # fmt: skip
DETAIL_KEYS = st.sampled_from(
    ["prompt_tokens_details", "completion_tokens_details", "input_tokens_details", "output_tokens_details",
     "cache_creation", "server_tool_use"]
)  # fmt: skip
TOKEN_VALUES = st.one_of(
    st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6), SCALARS
)
DETAILS = st.one_of(
    st.lists(st.tuples(TOKEN_KEYS, TOKEN_VALUES), max_size=3).map(Obj), st.none(), SCALARS
)
USAGE = st.one_of(
    st.lists(st.one_of(st.tuples(TOKEN_KEYS, TOKEN_VALUES), st.tuples(DETAIL_KEYS, DETAILS),
                       st.tuples(st.just("service_tier"), TIERS)), max_size=7).map(Obj),
    st.none(),
    ANY,
)
TYPES = st.sampled_from(["error", "response.failed", "response.completed", "message_delta", "erro", "error "])
MODELS = st.one_of(st.sampled_from(["gpt-4o", "claude-x", "gemini-2.5-flash", "m" * 256, "m" * 257]), STRINGS)
DOC_MEMBER = st.one_of(
    st.tuples(st.just("service_tier"), TIERS),
    st.tuples(st.sampled_from(["usage", "usageMetadata"]), USAGE),
    st.tuples(st.sampled_from(["model", "modelVersion"]), MODELS),
    st.tuples(st.sampled_from(["x_groq", "response", "message"]), st.lists(
        st.one_of(st.tuples(st.just("usage"), USAGE), st.tuples(st.just("model"), MODELS),
                  st.tuples(st.just("service_tier"), TIERS), st.tuples(RESPONSE_KEYS, ANY)),
        max_size=3).map(Obj)),
    st.tuples(st.just("error"), st.one_of(st.none(), ANY)),
    st.tuples(st.just("type"), st.one_of(TYPES, ANY)),
    st.tuples(st.just("choices"), st.one_of(st.just([]), st.lists(ANY, max_size=2), ANY)),
    st.tuples(RESPONSE_KEYS, ANY),
)
DOCS = st.one_of(
    st.lists(DOC_MEMBER, max_size=6).map(Obj),
    st.lists(st.lists(DOC_MEMBER, max_size=4).map(Obj), max_size=3),
    ANY,
)
EOLS = st.sampled_from(["\n", "\n", "\r\n", "\r"])


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    parts: list[str | bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        eol = draw(EOLS)
        if kind <= 4:
            payload = to_bytes(draw(DOCS), rng).decode("utf-8", "surrogatepass").strip(" \r\n")
            if "\n" in payload or "\r" in payload:  # split into several data lines
                payload = payload.replace("\r\n", "\n").replace("\r", "\n")
            lines = payload.split("\n")
            space = draw(st.sampled_from(["", " ", "  "]))
            parts.append("".join(f"data:{space}{line}{eol}" for line in lines))
        elif kind == 5:
            parts.append(draw(st.sampled_from([": comment", ": OPENROUTER PROCESSING", "id: 1", "retry: 5", "data", "event: error", "event: message", "data: [DONE]", "  data: x"])) + eol)
        elif kind == 6:
            parts.append("data: " + draw(TEXT).replace("\n", " ").replace("\r", " ") + eol)
        elif kind == 7:
            parts.append(draw(st.binary(max_size=20)))
        if draw(st.integers(0, 5)) != 0:
            parts.append(draw(EOLS))
    out = b"".join(p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p for p in parts)
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out


@st.composite
def chunked(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    body = draw(bodies)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    return body, chunks


def check_scanners(api: int, streaming: bool, body: bytes, chunks: list[bytes]) -> None:
    for strip in ([False, True] if api == 1 and streaming else [False]):
        results = []
        for impl in IMPLS:
            whole = run_chunks(impl, api, streaming, [body], strip)
            split = run_chunks(impl, api, streaming, chunks, strip)
            bytewise = run_chunks(impl, api, streaming, [body[i : i + 1] for i in range(len(body))], strip)
            assert whole == split == bytewise, impl.__name__
            if not strip:
                assert whole[1] == body
            results.append(whole)
        assert all(r == results[0] for r in results), results
        check_convention(results[0][0])


def check_convention(u: tuple[Any, ...]) -> None:
    """The row convention holds for any input: subsets never exceed their totals."""
    inp, out, cr, cw, rs = u[:5]
    tool, cw1h, ain, aout = u[8:12]
    assert inp >= cr + cw + ain and inp >= tool and cw >= cw1h, u
    assert out >= rs and out >= aout, u


@SETTINGS
@given(st.sampled_from([1, 2, 3, 4]), chunked(sse_streams()))
def test_sse_streams_agree(api: int, case: tuple[bytes, list[bytes]]) -> None:
    check_scanners(api, True, *case)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    body = to_bytes(draw(DOCS), rng)
    if draw(st.integers(0, 4)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    return body


@SETTINGS
@given(st.sampled_from([1, 2, 3, 4]), st.booleans(), chunked(json_bodies()))
def test_json_bodies_agree(api: int, streaming: bool, case: tuple[bytes, list[bytes]]) -> None:
    check_scanners(api, streaming, *case)


@SETTINGS
@given(st.sampled_from([1, 2, 3, 4]), st.booleans(), chunked(st.binary(max_size=120)))
def test_garbage_responses_agree(api: int, streaming: bool, case: tuple[bytes, list[bytes]]) -> None:
    check_scanners(api, streaming, *case)


@st.composite
def chat_streams(draw: st.DrawFn) -> bytes:
    """OpenAI-like chunk streams: content chunks with "usage":null, usage-only chunks."""
    rng = draw(st.randoms(use_true_random=False))
    eol = draw(EOLS)
    events = []
    for _ in range(draw(st.integers(1, 5))):
        members = Obj([("id", "c"), ("choices", [Obj([("delta", Obj([("content", draw(TEXT))]))])])])
        if draw(st.booleans()):
            members.insert(draw(st.integers(0, 2)), ("usage", None))
        events.append(members)
    usage = Obj([("prompt_tokens", draw(st.integers(0, 10**6))), ("completion_tokens", draw(st.integers(0, 99)))])
    last = Obj([("id", "c"), ("choices", []), ("usage", usage)])
    if draw(st.booleans()):
        last.append(("error", draw(st.one_of(st.none(), ANY))))
    events.insert(draw(st.integers(0, len(events))), last)
    body = b"".join(b"data: " + to_bytes(e, rng).replace(b"\r", b"").replace(b"\n", b"") + (eol * 2).encode() for e in events)
    return body + (b"data: [DONE]" + (eol * 2).encode() if draw(st.booleans()) else b"")


@SETTINGS
@given(chunked(chat_streams()))
def test_chat_streams_strip_agree(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    check_scanners(1, True, body, chunks)
    out = run_chunks(_scan_py, 1, True, [body], True)[1]
    assert len(out) <= len(body)
    for event in out.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n"):
        if event.startswith(b"data: {"):
            parsed = json.loads(event[6:])
            assert not _scan_py._usage_only(parsed)
            assert "usage" not in parsed or parsed["usage"] is not None
