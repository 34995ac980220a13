"""Byte-scanner benchmarks: compiled scanner vs pure-Python twin vs json.loads vs orjson.loads.

    pytest benchmarks/bench_scan.py --benchmark-only         # pytest-benchmark tables
    pytest benchmarks/bench_scan.py --benchmark-disable      # quick correctness run
    python -m benchmarks.bench_scan                          # ns/op table + ratios vs orjson

(``pytest benchmarks`` / ``make bench`` only collect this file once pytest's ``python_files``
includes ``bench_*.py``; pytest collects ``test_*.py`` by default.)

Cases (all built deterministically here):

* ``large``: a ~100 KB non-streamed OpenAI chat completion, usage at the end.  Variants:
  English prose with a few escapes and non-ASCII characters (``large``), pure ASCII
  (``large-ascii``), CJK text (``large-cjk``) and a structure-dense logprobs body
  (``large-logprobs``) to show where the scanner is weakest.
* ``small``: a ~1 KB non-streamed OpenAI response; ``small-request``: a ~1 KB chat request
  (``scan_request`` vs parsing the whole request).
* ``stream-openai``: 64 OpenAI chat chunks + the usage chunk, fed in 200-1500 byte pieces;
  ``stream-anthropic``: a 64-event Anthropic Messages stream, same chunking.

The json/orjson baselines do the least a JSON-parsing gateway must do: parse the body (or,
for streams, split SSE lines across chunks and parse every ``data:`` payload) and read the
usage fields.
"""

from __future__ import annotations

import json
import random
import sys
import timeit
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from plano_fast.wire import _scan_py

try:
    from plano_fast.wire import _scan as _compiled
except ImportError:
    _compiled = None

try:
    import orjson
except ImportError:
    orjson = None

CHAT = _scan_py.API_OPENAI_CHAT
ANTHROPIC = _scan_py.API_ANTHROPIC

# ---------------------------------------------------------------------------------------------
# inputs

_WORDS = (
    "the model returned a long answer about gateways, latency and throughput; each request is "
    "billed from the usage block which arrives at the end of the body so the scanner has to "
    "walk everything before it"
).split()


def _prose(n: int, seed: int, extra: list[str]) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n:
        word = rng.choice(_WORDS) if rng.random() > 0.03 else rng.choice(extra)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n]


USAGE = {
    "prompt_tokens": 1234,
    "completion_tokens": 5678,
    "total_tokens": 6912,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 64,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
EXPECTED = (1234, 5678, 1024, 0, 64)


def openai_response(content: str, logprobs: Any = None) -> bytes:
    body = {
        "id": "chatcmpl-BEhL3fZWgTz2Z57jXexYbQPsOBUm3",
        "object": "chat.completion",
        "created": 1742842885,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_b8bc95a0ac",
    }
    return json.dumps(body, ensure_ascii=False).encode()


def _logprobs(n_tokens: int) -> dict[str, Any]:
    rng = random.Random(7)
    content = []
    for _ in range(n_tokens):
        token = rng.choice(_WORDS)
        content.append(
            {
                "token": token,
                "logprob": round(-rng.random() * 3, 6),
                "bytes": list(token.encode()),
                "top_logprobs": [],
            }
        )
    return {"content": content, "refusal": None}


PROSE_EXTRA = ["café", "naïve", "“quoted”", '"q"', "line\nbreak", "tab\there", "😀", "C:\\path"]
LARGE = openai_response(_prose(100_000, 1, PROSE_EXTRA))
LARGE_ASCII = openai_response(_prose(100_000, 2, ["alpha", "beta"]))
_HANZI = "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生网关请求计费模型"


def _cjk(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(_HANZI) if rng.random() > 0.04 else rng.choice("，。\n 1") for _ in range(n))


LARGE_CJK = openai_response(_cjk(33_500, 3))
LARGE_LOGPROBS = openai_response("x", _logprobs(1100))
SMALL = openai_response(_prose(640, 4, PROSE_EXTRA))
SMALL_REQUEST = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that answers briefly."},
            {"role": "user", "content": _prose(700, 5, PROSE_EXTRA)},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.7,
        "max_tokens": 512,
        "metadata": {"model": "decoy", "user": "u-1"},
    }
).encode()


def _chunk(body: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks = []
    i = 0
    while i < len(body):
        n = rng.randint(200, 1500)
        chunks.append(body[i : i + n])
        i += n
    return chunks


def openai_stream(n: int = 64) -> bytes:
    events = []
    base = {
        "id": "chatcmpl-Dx0XpqH8w09uBXwq1zFGYdETjtnEl",
        "object": "chat.completion.chunk",
        "created": 1782955817,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_d0469e1700",
    }
    rng = random.Random(11)
    for i in range(n):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": " ".join(rng.sample(_WORDS, 3))}
        chunk = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
        chunk.update(usage=None, obfuscation="C63rqfQVOwfh62")
        events.append(chunk)
    events.append(dict(base, choices=[], usage=USAGE, obfuscation="khVgg3RsaN"))
    body = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


def anthropic_stream(n: int = 64) -> bytes:
    rng = random.Random(12)
    usage = {"input_tokens": 1234, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024, "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-20250514",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    for _ in range(n - 6):
        text = " ".join(rng.sample(_WORDS, 3))
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
        )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 5678}},
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return b"".join(
        b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
        for name, data in events
    )


OPENAI_STREAM = _chunk(openai_stream(), 21)
ANTHROPIC_STREAM = _chunk(anthropic_stream(), 22)

# ---------------------------------------------------------------------------------------------
# the operations being timed


def scanner_body(module: ModuleType, api: int, body: bytes) -> tuple[int, int, int, int, int]:
    scanner = module.UsageScanner(api, False)
    scanner.feed(body)
    scanner.finish()
    u = scanner.result()
    return (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens)


def scanner_stream(module: ModuleType, api: int, chunks: list[bytes]) -> tuple[int, int, int]:
    scanner = module.UsageScanner(api, True)
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    u = scanner.result()
    return (u.input_tokens, u.output_tokens, u.cache_read_tokens)


def loads_body(loads: Callable[[bytes], Any], body: bytes) -> tuple[int, int, int, int, int]:
    usage = loads(body)["usage"]
    details_in = usage.get("prompt_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or {}
    return (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        details_in.get("cached_tokens", 0),
        details_in.get("cache_write_tokens", 0),
        details_out.get("reasoning_tokens", 0),
    )


def loads_stream(loads: Callable[[bytes], Any], api: int, chunks: list[bytes]) -> tuple[int, int, int]:
    """A minimal JSON-parsing SSE reader: split lines across chunks, parse every data line."""
    pending = b""
    inp = out = cached = 0
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = loads(line[6:])
            if api == CHAT:
                usage = event.get("usage")
                if usage:
                    inp = usage["prompt_tokens"]
                    out = usage["completion_tokens"]
                    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            else:
                usage = event.get("usage") or (event.get("message") or {}).get("usage")
                if usage:
                    inp = usage.get("input_tokens", inp)
                    out = usage.get("output_tokens", out)
                    cached = usage.get("cache_read_input_tokens", cached)
    return (inp, out, cached)


def _loads_for(name: str) -> Callable[[bytes], Any]:
    if name == "json":
        return json.loads
    assert orjson is not None
    loads: Callable[[bytes], Any] = orjson.loads
    return loads


BODIES = {
    "large": LARGE,
    "large-ascii": LARGE_ASCII,
    "large-cjk": LARGE_CJK,
    "large-logprobs": LARGE_LOGPROBS,
    "small": SMALL,
}
STREAMS = {"stream-openai": (CHAT, OPENAI_STREAM), "stream-anthropic": (ANTHROPIC, ANTHROPIC_STREAM)}
STREAM_EXPECTED = {"stream-openai": (1234, 5678, 1024), "stream-anthropic": (1234, 5678, 1024)}
# The scanners report the row convention (plano_fast.wire._scan_py, "Normalized usage"): an
# Anthropic prompt counts its cache reads too; the json/orjson baselines read the raw field.
SCANNER_STREAM_EXPECTED = {**STREAM_EXPECTED, "stream-anthropic": (1234 + 1024, 5678, 1024)}


def operation(impl: str, case: str) -> Callable[[], Any]:
    """A no-argument callable doing ``case`` with ``impl``."""
    if case in BODIES:
        body = BODIES[case]
        if impl in ("cython", "python"):
            module = _compiled if impl == "cython" else _scan_py
            return lambda: scanner_body(module, CHAT, body)
        loads = _loads_for(impl)
        return lambda: loads_body(loads, body)
    if case in STREAMS:
        api, chunks = STREAMS[case]
        if impl in ("cython", "python"):
            module = _compiled if impl == "cython" else _scan_py
            return lambda: scanner_stream(module, api, chunks)
        loads = _loads_for(impl)
        return lambda: loads_stream(loads, api, chunks)
    assert case == "small-request"
    if impl in ("cython", "python"):
        module = _compiled if impl == "cython" else _scan_py
        return lambda: module.scan_request(SMALL_REQUEST).model
    loads = _loads_for(impl)
    return lambda: loads(SMALL_REQUEST)["model"]


def expected(case: str, impl: str) -> Any:
    if case in BODIES:
        return EXPECTED
    if case in STREAMS:
        return (SCANNER_STREAM_EXPECTED if impl in ("cython", "python") else STREAM_EXPECTED)[case]
    return "gpt-4o-mini"


IMPLS = ["cython", "python", "json", "orjson"]
CASES = [*BODIES, "small-request", *STREAMS]


def _available(impl: str) -> bool:
    return not ((impl == "cython" and _compiled is None) or (impl == "orjson" and orjson is None))


# ---------------------------------------------------------------------------------------------
# pytest-benchmark


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES)
def test_bench_scan(benchmark: Any, case: str, impl: str) -> None:
    if not _available(impl):
        pytest.skip(f"{impl} not available")
    benchmark.group = case
    fn = operation(impl, case)
    assert benchmark(fn) == expected(case, impl)


def test_input_sizes() -> None:
    assert 95_000 <= len(LARGE) <= 110_000
    assert 95_000 <= len(LARGE_ASCII) <= 110_000
    assert 90_000 <= len(LARGE_CJK) <= 110_000
    assert 90_000 <= len(LARGE_LOGPROBS) <= 120_000
    assert 900 <= len(SMALL) <= 1400
    assert 900 <= len(SMALL_REQUEST) <= 1200
    assert len(OPENAI_STREAM) > 20 and sum(map(len, OPENAI_STREAM)) > 20_000


# ---------------------------------------------------------------------------------------------
# plain table: python -m benchmarks.bench_scan


def _calibrate(fn: Callable[[], Any], target: float = 0.02) -> int:
    number = 1
    while timeit.timeit(fn, number=number) < target:
        number *= 2
    return number


def measure(case: str, rounds: int = 15) -> dict[str, float]:
    """ns/op per implementation: implementations are timed round-robin (so a burst of load on
    a shared machine hits all of them) and the best round of each is kept."""
    fns = {impl: operation(impl, case) for impl in IMPLS if _available(impl)}
    for impl, fn in fns.items():
        assert fn() == expected(case, impl), (impl, case)
    numbers = {impl: _calibrate(fn) for impl, fn in fns.items()}
    best = {impl: float("inf") for impl in fns}
    for _ in range(rounds):
        for impl, fn in fns.items():
            best[impl] = min(best[impl], timeit.timeit(fn, number=numbers[impl]) / numbers[impl] * 1e9)
    return best


def main() -> int:
    print(f"{'case':18} {'bytes':>8} " + " ".join(f"{impl:>12}" for impl in IMPLS) + "   orjson/cython")
    for case in CASES:
        if case in BODIES:
            size = len(BODIES[case])
        elif case in STREAMS:
            size = sum(map(len, STREAMS[case][1]))
        else:
            size = len(SMALL_REQUEST)
        times = measure(case)
        cells = " ".join(f"{times[i]:>12,.0f}" if i in times else f"{'-':>12}" for i in IMPLS)
        ratio = f"{times['orjson'] / times['cython']:.1f}x" if "orjson" in times and "cython" in times else "-"
        print(f"{case:18} {size:>8} {cells}   {ratio}")
    print("(ns per operation; best of 15 interleaved rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
