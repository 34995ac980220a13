"""The DLP floor's cost (issue 24): the scanner's MB/s, and the gateway's instructions per
request with the floor on (every detector ``log``) and off.

    python -m benchmarks.bench_dlp                       # micro: µs and MB/s per case
    python -m benchmarks.bench_dlp --baseline-ref main   # ... and the guardrails.py of a ref
    python -m benchmarks.bench_dlp --gateway --requests 400   # + the gateway A/B under callgrind
    python -m benchmarks.bench_dlp --wallclock --rounds 6     # + the gateway A/B, CPU time from /proc

Micro (timeit, best of 5, in this process): ``guardrails.apply_body`` with every built-in
detector at ``log`` over an OpenAI chat request whose message text is ~2 KB or ~100 KB of:

* ``prose``: English words and punctuation (capitals, a colon or a dash now and then, a
  year every ~2,000 characters): the common case, skimmed;
* ``prose-utf8``: the same with accented and CJK words and ``\\n`` escapes (the decoded-view
  path of strings with escapes or non-ASCII);
* ``numbers``: a number every ~110 characters (prices, dates, versions, ids, times);
* ``pii``: an e-mail, a card number, a phone number, an IP address and a key every ~500
  characters (every one a finding);
* worst cases: ``digits`` (digit groups and spaces only: a card/phone candidate at every
  group), ``colons`` (hex and ':' soup: IPv6 candidates), ``at`` ('@' every 8 characters),
  ``prefixes`` (key prefixes every 12 characters).

Each case runs with the compiled scanner (``wire.dlp_scan_body``), the pure twin (decode +
``_dlp_py.scan_text``) and, with ``--baseline-ref``, that ref's ``plano_fast/guardrails.py``
(json.loads + its ``apply``; loaded from ``git show``).  MB/s are of message text.

``--gateway``: two gateways in config mode (one worker each, one fake provider), A without
``guardrails``, B with every detector at ``log``, each in turn under ``valgrind
--tool=callgrind`` (``benchmarks.ab_refs``'s measurement: a fixed number of requests,
instructions per request minus the idle rate, windows of whole 10 s periods), for the 2 KB
and the 100 KB prose request.  Prints A, B and B/A.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plano_fast import guardrails, wire
from plano_fast.wire import _dlp_py

ROOT = Path(__file__).resolve().parent.parent
ALL_LOG = {"detectors": {name: "log" for name in wire.DLP_DETECTORS}}
#: ``--redact``: every detector at ``redact`` (the redaction path: the body rewritten)
ALL_REDACT = {"detectors": {name: "redact" for name in wire.DLP_DETECTORS}}

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no out up into do any your what "
         "more can about time only also could new other than then some these may first like people over such "
         "latency gateway request provider model token stream response budget").split()  # fmt: skip
UTF8_WORDS = ("café", "naïve", "façade", "Zürich", "東京", "データ", "模型", "São", "Łódź")


def prose(size: int, rng: random.Random, *, utf8: bool = False) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        roll = rng.random()
        if utf8 and roll < 0.08:
            word = rng.choice(UTF8_WORDS)
        elif roll < 0.05:
            word = rng.choice(WORDS).capitalize()
        else:
            word = rng.choice(WORDS)
        if n and n % 2000 < len(word) + 1:
            word += f" in {rng.randrange(1990, 2030)}"
        tail = rng.random()
        if tail < 0.06:
            word += "."
        elif tail < 0.1:
            word += ","
        elif tail < 0.105:
            word += ":"
        elif tail < 0.11:
            word += " -"
        elif utf8 and tail < 0.12:
            word += "\n"
        out.append(word)
        n += len(word) + 1
    return " ".join(out)[:size]


def numbers(size: int, rng: random.Random) -> str:
    forms: list[Callable[[], str]] = [
        lambda: f"${rng.randrange(1, 999)}.{rng.randrange(100):02d}",
        lambda: f"{rng.randrange(1990, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        lambda: f"v{rng.randrange(10)}.{rng.randrange(20)}.{rng.randrange(30)}",
        lambda: f"#{rng.randrange(10**5, 10**7)}",
        lambda: f"{rng.randrange(24):02d}:{rng.randrange(60):02d}",
        lambda: f"{rng.randrange(2, 500)} items",
    ]
    out, n = [], 0
    while n < size:
        piece = prose(100, rng) + " " + rng.choice(forms)()
        out.append(piece)
        n += len(piece) + 1
    return " ".join(out)[:size]


def pii(size: int, rng: random.Random) -> str:
    finds = ["jane.doe@example.com", "4111 1111 1111 1111", "+1 415-555-0134", "192.168.1.20",
             "sk-proj-" + "a1B2c3D4" * 5, "GB82 WEST 1234 5698 7654 32", "078-05-1120"]  # fmt: skip
    out, n = [], 0
    while n < size:
        piece = prose(480, rng) + " " + rng.choice(finds)
        out.append(piece)
        n += len(piece) + 1
    return " ".join(out)[:size]


def repeat(unit: Callable[[], str], size: int) -> str:
    out, n = [], 0
    while n < size:
        piece = unit()
        out.append(piece)
        n += len(piece)
    return "".join(out)[:size]


def cases(size: int) -> dict[str, str]:
    rng = random.Random(size)
    return {
        "prose": prose(size, rng),
        "prose-utf8": prose(size, rng, utf8=True),
        "numbers": numbers(size, rng),
        "pii": pii(size, rng),
        "digits": repeat(lambda: f"{rng.randrange(10**4):04d} ", size),
        "colons": repeat(lambda: f"{rng.randrange(16**3):x}:", size),
        "at": repeat(lambda: "ab.c@de ", size),
        "prefixes": repeat(lambda: rng.choice(["sk-x ", "AIza ", "AKIA ", "ghp_ ", "eyJ. ", "xoxb- "]) + "word ", size),
    }


def chat_body(text: str) -> bytes:
    cut = len(text) // 10
    doc = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": text[:cut]},
                                                {"role": "user", "content": text[cut:]}]}  # fmt: skip
    return json.dumps(doc, ensure_ascii=False).encode()


def baseline_module(ref: str) -> types.ModuleType:
    """``plano_fast/guardrails.py`` as it is at ``ref`` (it imports only plano_fast.errors)."""
    source = subprocess.run(["git", "show", f"{ref}:plano_fast/guardrails.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader(f"guardrails_at_{ref}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module
    exec(compile(source, f"{ref}:plano_fast/guardrails.py", "exec"), module.__dict__)  # noqa: S102
    return module


def best_us(call: Callable[[], object], budget_s: float = 0.15) -> float:
    number = max(1, int(budget_s / max(1e-7, timeit.timeit(call, number=1))))
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def run_pure(policy: Any, body: bytes) -> Any:
    saved = (wire.dlp_scan_body, wire.dlp_scan_text)
    wire.dlp_scan_body, wire.dlp_scan_text = None, _dlp_py.scan_text
    try:
        return guardrails.apply_body(policy, body, "openai", None)
    finally:
        wire.dlp_scan_body, wire.dlp_scan_text = saved


def micro(baseline_ref: str | None, policy_doc: dict[str, Any] = ALL_LOG) -> list[dict[str, Any]]:
    policy = guardrails.parse_policy(policy_doc)
    old = baseline_module(baseline_ref) if baseline_ref else None
    old_policy = old.parse_policy(policy_doc) if old else None
    rows = []
    print(f"compiled scanner: {wire.DLP_IMPLEMENTATION}")
    header = f"{'case':<12}{'size':>8}{'text B':>9}{'found':>7}{'compiled µs':>13}{'MB/s':>8}{'pure µs':>10}{'MB/s':>8}"
    print(header + (f"{'base µs':>10}{'MB/s':>8}" if old else ""))
    for size in (2_000, 100_000):
        for name, text in cases(size).items():
            body = chat_body(text)
            text_bytes = len(text.encode())
            found = len(guardrails.apply_body(policy, body, "openai", None).detections)
            assert found == len(run_pure(policy, body).detections), name
            # the twins write the same redacted bytes (session l)
            assert guardrails.apply_body(policy, body, "openai", None).body == run_pure(policy, body).body, name
            row: dict[str, Any] = {"case": name, "size": size, "text_bytes": text_bytes, "findings": found}
            row["compiled_us"] = best_us(lambda: guardrails.apply_body(policy, body, "openai", None))
            row["pure_us"] = best_us(lambda: run_pure(policy, body))
            if old is not None:
                row["baseline_us"] = best_us(lambda: old.apply(old_policy, json.loads(body), "openai", None))
            rows.append(row)
            line = (f"{name:<12}{size:>8}{text_bytes:>9}{found:>7}{row['compiled_us']:>13.1f}"
                    f"{text_bytes / row['compiled_us']:>8.0f}{row['pure_us']:>10.1f}{text_bytes / row['pure_us']:>8.0f}")
            if old is not None:
                line += f"{row['baseline_us']:>10.1f}{text_bytes / row['baseline_us']:>8.0f}"
            print(line, flush=True)
    return rows


def gateway(requests: int, sizes: list[int]) -> dict[str, Any]:
    from benchmarks import ab_refs
    from benchmarks import run as bench

    args = argparse.Namespace(requests=requests, settle_s=21.0, idle_s=20.0, period_s=10.0)
    work = Path(tempfile.mkdtemp(prefix="bench-dlp-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    bodies = {size: chat_body(cases(size)["prose"]).decode() for size in sizes}
    results: dict[str, Any] = {}
    try:
        for side, extra in (("A", ""), ("B", "  guardrails: " + json.dumps(ALL_LOG) + "\n")):
            workdir = work / side
            workdir.mkdir()
            setup = bench.MODES["config"](workdir, fake_port, 1, ["ab"])
            with open(setup.config_path, "a") as fh:  # the plano_fast: block is the file's last
                fh.write(extra)
            wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
                       f"--callgrind-out-file={workdir}/callgrind.out.%p"]  # fmt: skip
            here = types.SimpleNamespace(run_dir=ROOT)
            gw = ab_refs.RefGateway(here, setup.config_path, setup.env, workdir / "gateway.log",  # type: ignore[arg-type]
                                    wrapper=wrapper, ready_timeout_s=600)  # fmt: skip
            headers = bench.CLIENT_HEADERS + setup.headers_for("ab")
            try:
                for size, body in bodies.items():
                    ab_refs.send(gw.url, headers, 50, 4, body)
                    if size == sizes[0]:
                        ab_refs._control(gw.proc.pid, "--instr=on")
                    ab_refs.send(gw.url, headers, max(20, requests // 10), 4, body)
                    r = ab_refs._callgrind_window(gw, headers, 4, workdir, args, body)
                    results[f"{side}-{size}"] = r
                    print(f"  {side} {size // 1000} KB: {r['per_request']:,.0f} instructions/request "
                          f"(inline {r['inline']:,.0f})", flush=True)
            finally:
                gw.stop()
    finally:
        bench.stop_proc(fake)
    for size in sizes:
        a, b = results[f"A-{size}"], results[f"B-{size}"]
        print(f"{size // 1000} KB prose request: off {a['per_request']:,.0f}, on {b['per_request']:,.0f} "
              f"instructions/request: +{b['per_request'] - a['per_request']:,.0f} "
              f"({(b['per_request'] / a['per_request'] - 1) * 100:+.1f}%); inline "
              f"{a['inline']:,.0f} -> {b['inline']:,.0f} ({(b['inline'] / a['inline'] - 1) * 100:+.1f}%)")
    return results


def wallclock(rounds: int, duration_s: float, sizes: list[int]) -> dict[str, Any]:
    """Both gateways side by side, the load alternated (``ab_settings.alternate``): CPU µs per
    request from /proc (wall-clock: noisy on a shared machine; callgrind is the stable figure)."""
    import statistics

    from benchmarks import ab_settings
    from benchmarks import run as bench

    work = Path(tempfile.mkdtemp(prefix="bench-dlp-wall-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    results: dict[str, Any] = {}
    gateways: dict[str, Any] = {}
    try:
        for side, extra in (("A", ""), ("B", "  guardrails: " + json.dumps(ALL_LOG) + "\n")):
            (work / side).mkdir()
            setup = bench.MODES["config"](work / side, fake_port, 1, ["ab"])
            with open(setup.config_path, "a") as fh:
                fh.write(extra)
            from tests.gateway_proc import GatewayProcess

            gateways[side] = (GatewayProcess(setup.config_path, log_path=work / side / "gw.log", env=setup.env), setup)
        sides = {k: ab_settings.Side(gw.url, gw.proc.pid, bench.CLIENT_HEADERS + setup.headers_for("ab"))
                 for k, (gw, setup) in gateways.items()}  # fmt: skip
        for size in sizes:
            body = chat_body(cases(size)["prose"]).decode()
            runs = ab_settings.alternate(sides, rounds, 8, duration_s, label=f"{size // 1000} KB ", body=body)
            med = {k: statistics.median(c for c, _ in v) for k, v in runs.items()}
            results[str(size)] = {"runs": runs, "median_cpu_us": med}
            print(f"{size // 1000} KB prose request: off {med['A']:.1f}, on {med['B']:.1f} CPU µs/request "
                  f"({(med['B'] / med['A'] - 1) * 100:+.1f}%)", flush=True)
    finally:
        for gw, _ in gateways.values():
            gw.stop()
        bench.stop_proc(fake)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-ref", help="also time this git ref's plano_fast/guardrails.py")
    ap.add_argument("--gateway", action="store_true", help="the gateway A/B under callgrind")
    ap.add_argument("--wallclock", action="store_true", help="the gateway A/B, CPU µs/request from /proc")
    ap.add_argument("--rounds", type=int, default=6, help="--wallclock: alternated rounds per body")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--redact", action="store_true", help="micro: every detector at redact, not log")
    ap.add_argument("--requests", type=int, default=400, help="--gateway: requests counted per body")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if not args.no_micro:
        out["micro"] = micro(args.baseline_ref, ALL_REDACT if args.redact else ALL_LOG)
    if args.gateway:
        out["gateway"] = gateway(args.requests, [2_000, 100_000])
    if args.wallclock:
        out["wallclock"] = wallclock(args.rounds, 2.0, [2_000, 100_000])
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
