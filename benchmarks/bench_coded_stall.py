"""What one upstream read of a coded answer costs the event loop (gateway/coded_answer.py).

A read's whole decoding and scan run in one callback: nothing else on the loop runs until
it returns.  This times ``DecodingScanner.feed`` (the relay's path for an answer it reads
and relays decoded) and ``DecodedScanner.feed`` (an answer relayed as sent) of one read (a gzip bomb of blank SSE lines,
~1,000 decoded bytes a coded byte, and a real-sized stream) and its peak memory, for the
tree's coded_answer.py and, with ``--against REF``, the one of a git ref (loaded from
``git show REF:plano_fast/gateway/coded_answer.py``), in one run: compare them as ratios
(wall-clock on a shared machine is noisy).  The scanner is the compiled one unless
PLANO_FAST_PURE_SCANNER=1.

    .venv/bin/python benchmarks/bench_coded_stall.py --against main
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plano_fast import wire  # noqa: E402
from plano_fast.wire._shared import API_OPENAI_CHAT  # noqa: E402

READ_BYTES = 256 * 1024  # uvloop's largest read


def _module(ref: str | None) -> ModuleType:
    if ref is None:
        from plano_fast.gateway import coded_answer

        return coded_answer
    text = subprocess.run(["git", "show", f"{ref}:plano_fast/gateway/coded_answer.py"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "coded_answer_ref.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("coded_answer_ref", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bomb() -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\n" * (1 << 20)
    out = [comp.compress(block) for _ in range(300)]
    return (b"".join(out) + comp.flush())[:READ_BYTES]


def _stream() -> bytes:
    event = (b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
             b'"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}\n\n')
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    return comp.compress(event * 2000) + comp.flush()


def _scanner(module: ModuleType, kind: str) -> Any:
    if kind == "DecodedScanner":
        return module.DecodedScanner(API_OPENAI_CHAT, True, b"gzip")
    inner = wire.UsageScanner(API_OPENAI_CHAT, True, False)
    try:
        return module.DecodingScanner(inner, b"gzip", True)
    except TypeError:  # (branch coded's, before the merge: no bounds by kind of answer)
        return module.DecodingScanner(inner, b"gzip")


def _feed(scanner: Any, data: bytes) -> None:
    try:
        scanner.feed(data)
    except ValueError:  # (CodingError: a bound passed, the relay cuts the answer)
        pass


def _one(module: ModuleType, kind: str, data: bytes) -> tuple[float, float]:
    """(seconds, peak MiB) of one feed of ``data`` (the best of 3 for the time)."""
    best = float("inf")
    for _ in range(3):
        scanner = _scanner(module, kind)
        start = time.perf_counter()
        _feed(scanner, data)
        best = min(best, time.perf_counter() - start)
    scanner = _scanner(module, kind)
    tracemalloc.start()
    _feed(scanner, data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="a git ref whose coded_answer.py to time too")
    args = parser.parse_args()
    print(f"scanner: {wire.UsageScanner.__module__}")
    cases = {"bomb, one 256 KiB read": _bomb(), "real-sized stream (2,000 chunks), one read": _stream()}
    for label, ref in [("tree", None)] + ([(args.against, args.against)] if args.against else []):
        module = _module(ref)
        for kind in ("DecodingScanner", "DecodedScanner"):
            if not hasattr(module, kind):
                continue
            for name, data in cases.items():
                seconds, peak = _one(module, kind, data)
                print(f"{label:>8}  {kind:<15} {name:<44} coded {len(data):>7} B  {seconds * 1000:9.1f} ms  "
                      f"peak {peak:7.1f} MiB")


if __name__ == "__main__":
    main()
