"""A/B of one gateway setting: two gateways side by side, load runs alternated, medians.

    python -m benchmarks.ab_settings --mode firewall --a usage_wal=false --b usage_wal=true
    python -m benchmarks.ab_settings --rounds 8 --duration-s 3 --concurrency 32 ...

Both gateways run the same mode with one worker against one fake provider, each with its
own SQLite database; only the settings given differ.  Each round runs the load against A
then B (B then A on odd rounds, so drift hits both), with wrk when installed or
``benchmarks.loadgen`` otherwise, and reads each gateway's CPU time from /proc.  Prints
the per-round CPU µs per request and requests per second, and the medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import run as bench
from tests.gateway_proc import GatewayProcess


def _value(text: str) -> str:
    """A setting's YAML: booleans, numbers and flow mappings (``{detectors: {email: log}}``)
    as written, anything else as a quoted string."""
    plain = text in ("true", "false") or text.replace(".", "", 1).isdigit() or text.startswith("{")
    return text if plain else json.dumps(text)


def start(mode: str, workdir: Path, fake_port: int, settings: list[str]) -> tuple[GatewayProcess, Any]:
    setup = bench.MODES[mode](workdir, fake_port, 1, ["ab"])
    with open(setup.config_path, "a") as fh:  # the plano_fast: block is the file's last
        for item in settings:
            key, _, value = item.partition("=")
            fh.write(f"  {key}: {_value(value)}\n")
    gw = GatewayProcess(setup.config_path, log_path=workdir / "gateway.log", env=setup.env)
    return gw, setup


def load(url: str, headers: list[tuple[str, str]], concurrency: int, duration_s: float,
         body: str = bench.BODY_JSON) -> int:
    """Run the load once (each request sends ``body``); returns the requests completed."""
    wrk = shutil.which("wrk")
    if wrk:
        script = bench._wrk_script(Path(tempfile.mkdtemp()) / "ab.lua", body, headers)
        out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "-s",
                              str(script), url], capture_output=True, text=True, check=True).stdout
        return int(bench.parse_wrk(out).get("completed", 0))
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--body", body,
           "-c", str(concurrency), "-d", str(duration_s), "--json"]
    for k, v in headers:
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=bench.ROOT, check=True).stdout
    return int(json.loads(out)["completed"])


@dataclasses.dataclass
class Side:
    """One gateway of an A/B: its URL, its process and the headers a client sends."""

    url: str
    root_pid: int
    headers: list[tuple[str, str]]


def alternate(sides: dict[str, Side], rounds: int, concurrency: int, duration_s: float,
              *, label: str = "", body: str | None = None) -> dict[str, list[tuple[float, float]]]:
    """Run the load against each side in turn, ``rounds`` times, A,B then B,A (so drift hits
    both); returns per side the (CPU µs per request, req/s) of each round, read from /proc
    over the gateway's process tree.  Prints each round as it ends."""
    names = list(sides)
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for rnd in range(rounds):
        order = names if rnd % 2 == 0 else names[::-1]
        for name in order:
            side = sides[name]
            pids = bench.proc_tree(side.root_pid)
            bench.wait_quiet(pids)
            cpu0 = bench.cpu_s(pids)
            extra = {} if body is None else {"body": body}  # (None: load's own default body)
            n = load(side.url + bench.PATH, side.headers, concurrency, duration_s, **extra)
            cpu1 = bench.cpu_s(pids)
            results[name].append(((cpu1 - cpu0) / max(1, n) * 1e6, n / duration_s))
        print(f"{label}round {rnd + 1}: " + "  ".join(
            f"{k} {v[-1][0]:.1f} µs/req {v[-1][1]:.0f} req/s" for k, v in results.items()), flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="firewall")
    ap.add_argument("--a", nargs="*", default=[], help="settings of A, key=value")
    ap.add_argument("--b", nargs="*", default=[], help="settings of B, key=value")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration-s", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    gateways: dict[str, tuple[GatewayProcess, Any]] = {}
    try:
        for name, settings in (("A", args.a), ("B", args.b)):
            (work / name).mkdir()
            gateways[name] = start(args.mode, work / name, fake_port, settings)
        sides = {name: Side(gw.url, gw.proc.pid, bench.CLIENT_HEADERS + setup.headers_for("ab"))
                 for name, (gw, setup) in gateways.items()}
        results = alternate(sides, args.rounds, args.concurrency, args.duration_s)
        med = {k: (statistics.median(c for c, _ in v), statistics.median(r for _, r in v))
               for k, v in results.items()}
        print(f"A {args.a}: median {med['A'][0]:.1f} CPU µs/req, {med['A'][1]:.0f} req/s")
        print(f"B {args.b}: median {med['B'][0]:.1f} CPU µs/req, {med['B'][1]:.0f} req/s")
        print(f"B - A: {med['B'][0] - med['A'][0]:+.1f} CPU µs/req")
    finally:
        for gw, _ in gateways.values():
            gw.stop()
        bench.stop_proc(fake)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
