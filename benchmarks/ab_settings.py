"""A/B of one gateway setting: two gateways side by side, load runs alternated, medians.

    python -m benchmarks.ab_settings --mode firewall --a usage_wal=false --b usage_wal=true
    python -m benchmarks.ab_settings --rounds 8 --duration-s 3 --concurrency 32 ...
    python -m benchmarks.ab_settings --callgrind --a request_metrics=false \
        --b access_log=/tmp/access.jsonl --b-section 'tracing: {random_sampling: 0}' --otlp-sink

Both gateways run the same mode with one worker against one fake provider, each with its
own SQLite database; only the settings given differ (``--a``/``--b``: ``plano_fast:``
keys; ``--a-section``/``--b-section``: top-level YAML, e.g. Plano's ``tracing:``).  Each
round runs the load against A then B (B then A on odd rounds, so drift hits both), with
wrk when installed or ``benchmarks.loadgen`` otherwise, and reads each gateway's CPU time
from /proc.  Prints the per-round CPU µs per request and requests per second, and the
medians.

``--callgrind``: instead, each gateway in turn runs under callgrind and the instructions
per request are counted (``benchmarks.ab_refs``'s measurement, this checkout on both
sides): stable whatever else loads the machine.  ``--otlp-sink`` starts an HTTP server
that accepts OTLP/HTTP posts and points both gateways' trace exporter at it (a traced
side then exports for real instead of retrying against nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

from benchmarks import run as bench
from tests.gateway_proc import GatewayProcess


def _value(text: str) -> str:
    """A setting's YAML: booleans, numbers and flow mappings (``{detectors: {email: log}}``)
    as written, anything else as a quoted string."""
    plain = text in ("true", "false") or text.replace(".", "", 1).isdigit() or text.startswith("{")
    return text if plain else json.dumps(text)


def configure(mode: str, workdir: Path, fake_port: int, settings: list[str], sections: list[str],
              env: dict[str, str]) -> Any:
    """``benchmarks.run``'s setup of ``mode`` with ``settings`` added to its ``plano_fast:``
    block and ``sections`` (YAML) at the top level."""
    setup = bench.MODES[mode](workdir, fake_port, 1, ["ab"])
    with open(setup.config_path, "a") as fh:  # the plano_fast: block is the file's last
        for item in settings:
            key, _, value = item.partition("=")
            fh.write(f"  {key}: {_value(value)}\n")
        for section in sections:
            fh.write(section.rstrip() + "\n")
    setup.env.update(env)
    return setup


def start(mode: str, workdir: Path, fake_port: int, settings: list[str], sections: Sequence[str] = (),
          env: dict[str, str] | None = None) -> tuple[GatewayProcess, Any]:
    setup = configure(mode, workdir, fake_port, settings, list(sections), env or {})
    gw = GatewayProcess(setup.config_path, log_path=workdir / "gateway.log", env=setup.env)
    return gw, setup


class OtlpSink:
    """Accepts OTLP/HTTP posts (200, empty body) and counts them: a trace exporter's peer."""

    def __init__(self) -> None:
        sink = self
        self.posts = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length") or 0))
                sink.posts += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def env(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{self.port}/v1/traces"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
    ap.add_argument("--a-section", action="append", default=[], help="top-level YAML added to A's config")
    ap.add_argument("--b-section", action="append", default=[], help="top-level YAML added to B's config")
    ap.add_argument("--otlp-sink", action="store_true", help="an OTLP/HTTP receiver for both sides' traces")
    ap.add_argument("--callgrind", action="store_true", help="instructions per request under callgrind")
    from benchmarks.ab_refs import add_window_options

    add_window_options(ap, requests=1000, concurrency="1,32", idle_s=20.0, settle_s=21.0)
    ap.add_argument("--json-out", type=Path, help="callgrind: also write the results as JSON")
    args = ap.parse_args()
    args.cg_conc = [int(c) for c in args.callgrind_concurrency.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="ab-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    sink = OtlpSink() if args.otlp_sink else None
    env = sink.env if sink is not None else {}
    if args.callgrind:
        try:
            return callgrind(args, work, fake_port, env)
        finally:
            bench.stop_proc(fake)
            if sink is not None:
                print(f"OTLP posts received: {sink.posts}")
                sink.close()
    gateways: dict[str, tuple[GatewayProcess, Any]] = {}
    try:
        for name, settings, sections in (("A", args.a, args.a_section), ("B", args.b, args.b_section)):
            (work / name).mkdir()
            gateways[name] = start(args.mode, work / name, fake_port, settings, sections, env)
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
        if sink is not None:
            print(f"OTLP posts received: {sink.posts}")
            sink.close()
    return 0


def callgrind(args: argparse.Namespace, work: Path, fake_port: int, env: dict[str, str]) -> int:
    """Each side in turn under callgrind (this checkout): instructions per request."""
    from benchmarks import ab_refs

    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("--callgrind needs valgrind and callgrind_control")
    here = ab_refs.PreparedRef("checkout", ab_refs.resolve(bench.ROOT, "HEAD"), bench.ROOT, bench.ROOT,
                               ab_refs.built_extensions(bench.ROOT))
    results: dict[str, Any] = {}
    for name, settings, sections in (("A", args.a, args.a_section), ("B", args.b, args.b_section)):
        workdir = work / name
        workdir.mkdir()
        setup = configure(args.mode, workdir, fake_port, settings, sections, env)
        bench._migrate(setup.config_path, setup.env)
        print(f"{name} {settings} {sections}: under callgrind", flush=True)
        results[name] = ab_refs.callgrind_side(
            here, {"config": str(setup.config_path), "env": setup.env, "headers": setup.headers_for("ab")},
            workdir, args)
    print(f"A = {args.a} {args.a_section}\nB = {args.b} {args.b_section}")
    print("| concurrency | A inline | B inline | B/A | A inline+deferred | B inline+deferred | B/A |")
    print("|---|---|---|---|---|---|---|")
    for conc in args.cg_conc:
        a, b = results["A"][str(conc)], results["B"][str(conc)]
        print(f"| {conc} | {a['inline']:,.0f} | {b['inline']:,.0f} | {b['inline'] / a['inline']:.4f} | "
              f"{a['per_request']:,.0f} | {b['per_request']:,.0f} | {b['per_request'] / a['per_request']:.4f} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"argv": sys.argv[1:], "callgrind": results}, indent=2, default=str))
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
