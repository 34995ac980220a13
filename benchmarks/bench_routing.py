"""Preference routing's added cost (issue 23): what the gateway adds to a request on top of
the router model's own time, and what a pinned session adds.

    python -m benchmarks.bench_routing                     # 5 rounds of 1000 requests a kind
    python -m benchmarks.bench_routing --rounds 9 -n 2000 --router-ms 1

One fake provider, one fake router model answering after ``--router-ms`` (the issue's
1 ms), and two one-worker gateways on the same config, one with ``routing_preferences``
and one without.  Each round sends, one at a time on a keep-alive connection:
``unrouted`` (the gateway without routes), ``routed`` (matched by the router), ``pinned``
(an ``x-model-affinity`` session already decided) and ``router`` (the fake router called
directly, the request the gateway makes, on its own connection).  Per kind it prints the
median over rounds of:

* wall-clock p50 (ms): ``overhead excl. router = routed - unrouted - router``, the issue's
  figure (target <= 0.3 ms p50), and ``pinned - unrouted`` (target <= 0.05 ms);
* gateway CPU per request (µs, from /proc: user + system of the gateway process), which
  the loaded shared machine disturbs less: ``routed - unrouted`` is the routing work
  the gateway does itself, kernel time of the router hop included (the router is
  another process).

``--callgrind``: instead, each gateway runs under ``valgrind --tool=callgrind
--instr-atstart=no``; per kind, after a warm-up the counters are zeroed, ``-n`` requests
are sent one at a time, 1.5 s more (their usage rows' flush) and dumped; the gateway's
idle rate (measured over ``--idle-s`` before) times the window is subtracted.  One gateway
per kind.  Instructions per request in the gateway process,
independent of the machine's load (user space only: the kernel's share of the router hop
is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_preference_routing import FakeRouter, Http, routing_config

TICKS_S = os.sysconf("SC_CLK_TCK")
ROUTED_MODEL = "openai/gpt-4o-mini"  # what routed requests name; the route sends them to gpt-4.1
UNROUTED_MODEL = "openai/gpt-4.1"  # the same upstream model, named
SETTLE_S = 1.5


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_S  # utime, stime


def run_kind(port: int, pid: int | None, n: int, content: str, headers: dict[str, str], path: str = "/v1/chat/completions",
             model: str = "openai/gpt-4o-mini") -> tuple[float, float]:  # fmt: skip
    # (routed and pinned requests name gpt-4o-mini and are sent to the route's gpt-4.1;
    # unrouted ones name gpt-4.1: the same upstream, answer and usage row)
    """(p50 ms, gateway CPU µs per request) of ``n`` sequential requests."""
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    times = []
    with Http(port) as http:
        http.request("POST", path, body, headers)  # connect outside the measurement
        before = cpu_s(pid) if pid else 0.0
        for _ in range(n):
            t = time.perf_counter()
            status, _ = http.request("POST", path, body, headers)
            times.append(time.perf_counter() - t)
            assert status == 200, status
        cpu = (cpu_s(pid) - before) / n * 1e6 if pid else 0.0
    return statistics.median(times) * 1000, cpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dump(pid: int, out_dir: Path) -> int:
    before = set(out_dir.glob(f"callgrind.out.{pid}*"))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = set(out_dir.glob(f"callgrind.out.{pid}*")) - before
        if new:
            time.sleep(0.3)
            text = max(new, key=lambda p: p.stat().st_mtime).read_text(errors="replace")
            m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
            assert m is not None
            return int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def callgrind(cfg: Path, kinds: list[tuple[str, str, dict[str, str], str]], n: int, idle_s: float, work: Path
              ) -> dict[str, float]:  # fmt: skip
    """Instructions per request of each ``(name, content, headers, model)`` kind, in one gateway."""
    port = _free_port()
    subprocess.run([sys.executable, "-m", "plano_fast", "migrate", "--config", str(cfg)], check=True,
                   capture_output=True, cwd=os.getcwd())  # fmt: skip
    log = open(work / f"{cfg.stem}.callgrind.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
                             f"--callgrind-out-file={work}/callgrind.out.%p",
                             sys.executable, "-m", "plano_fast", "serve", "--config", str(cfg), "--port", str(port),
                             "--workers", "1"], stdout=log, stderr=log, cwd=os.getcwd())  # fmt: skip
    out: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the gateway did not start"
                time.sleep(0.5)
        for name, content, headers, model in kinds:
            run_kind(port, None, 200, content, headers, model=model)  # translate the code before counting
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True, timeout=120)
        for name, content, headers, model in kinds:
            run_kind(port, None, 50, content, headers, model=model)
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True, timeout=120)
            t0 = time.monotonic()
            time.sleep(idle_s)
            idle_rate = _dump(proc.pid, work) / (time.monotonic() - t0)
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True, timeout=120)
            t0 = time.monotonic()
            run_kind(port, None, n, content, headers, model=model)
            time.sleep(SETTLE_S)  # the usage rows' flush: deferred, but this kind's work
            total = _dump(proc.pid, work)
            out[name] = (total - idle_rate * (time.monotonic() - t0)) / n
            print(f"  {cfg.stem} {name}: {out[name]:,.0f} instructions/request (idle {idle_rate:,.0f}/s)", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=1000, help="requests per kind per round")
    ap.add_argument("--router-ms", type=float, default=1.0, help="the fake router's service time")
    ap.add_argument("--callgrind", action="store_true", help="instructions per request under callgrind")
    ap.add_argument("--idle-s", type=float, default=5.0, help="callgrind: the idle baseline's length")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    router = FakeRouter()
    router.delay_s = args.router_ms / 1000
    with FakeProviderThread() as fake:
        cfg = routing_config(work / "routed.yaml", fake.port, router.port)
        # The test config's 1 s price cycle would be most of an idle baseline; rows are flushed
        # within 0.5 s, so a kind's rows are written in its own callgrind window.
        text = (cfg.read_text().replace("session_ttl_seconds: 1}", "session_ttl_seconds: 3600}")
                .replace("usage_flush_interval_s: 1\n", "usage_flush_interval_s: 0.5\n")
                .replace("price_interval_s: 1\n", "price_interval_s: 600\n"))  # fmt: skip
        cfg.write_text(text)
        plain = work / "plain.yaml"
        plain.write_text(text.split("routing_preferences:")[0] + "plano_fast:" + text.split("plano_fast:")[1]
                         .replace(str(work / "routed"), str(work / "plain")))  # fmt: skip
        if args.callgrind:
            session = {"x-model-affinity": "bench-pinned"}
            # one gateway per kind: no kind's deferred work lands in another's window
            ir = callgrind(plain, [("unrouted", "write code", {}, UNROUTED_MODEL)], args.n, args.idle_s, work)
            ir |= callgrind(cfg, [("routed", "write code", {}, ROUTED_MODEL)], args.n, args.idle_s, work)
            ir |= callgrind(cfg, [("pinned", "write code", session, ROUTED_MODEL)], args.n, args.idle_s, work)
            router.stop()
            print(f"instructions/request: unrouted {ir['unrouted']:,.0f}, routed {ir['routed']:,.0f} "
                  f"(+{ir['routed'] - ir['unrouted']:,.0f}), pinned {ir['pinned']:,.0f} "
                  f"(+{ir['pinned'] - ir['unrouted']:,.0f})")  # fmt: skip
            return
        rows: dict[str, list[tuple[float, float]]] = {k: [] for k in ("unrouted", "routed", "pinned", "router")}
        with GatewayProcess(cfg) as routed, GatewayProcess(plain) as unrouted:
            rpid, upid = routed.pids[0], unrouted.pids[0]
            session = {"x-model-affinity": "bench-pinned"}
            run_kind(routed.port, None, 1, "write code", session)  # decide the session once
            rbody_content = "write code"
            for r in range(args.rounds):
                kinds = [
                    ("unrouted", lambda: run_kind(unrouted.port, upid, args.n, "write code", {}, model=UNROUTED_MODEL)),
                    ("routed", lambda: run_kind(routed.port, rpid, args.n, "write code", {})),
                    ("pinned", lambda: run_kind(routed.port, rpid, args.n, "write code", session)),
                    ("router", lambda: run_kind(router.port, None, args.n, "<conversation>\n"
                                                + json.dumps([{"role": "user", "content": rbody_content}])
                                                + "\n</conversation>", {}, model="Arch-Router")),
                ]  # fmt: skip
                if r % 2:
                    kinds.reverse()
                for name, fn in kinds:
                    rows[name].append(fn())
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.3f} ms {v[-1][1]:.0f} us cpu" for k, v in rows.items()),
                      flush=True)  # fmt: skip
    router.stop()
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in rows.items()}
    per_round = [rows["routed"][i][0] - rows["unrouted"][i][0] - rows["router"][i][0] for i in range(args.rounds)]
    pinned_round = [rows["pinned"][i][0] - rows["unrouted"][i][0] for i in range(args.rounds)]
    print(f"\nmedians over {args.rounds} rounds of {args.n} sequential requests (router {args.router_ms} ms):")
    for k, (ms, cpu) in med.items():
        print(f"  {k:9s} p50 {ms:.3f} ms" + (f", gateway CPU {cpu:.0f} us/request" if k != "router" else ""))
    print(f"  overhead excl. router (routed - unrouted - router, per round): p50 median {statistics.median(per_round):.3f} ms "
          f"(rounds: {', '.join(f'{x:.3f}' for x in per_round)})")  # fmt: skip
    print(f"  pinned - unrouted: {statistics.median(pinned_round):.3f} ms "
          f"(rounds: {', '.join(f'{x:.3f}' for x in pinned_round)})")  # fmt: skip
    print(f"  gateway CPU: routed - unrouted {med['routed'][1] - med['unrouted'][1]:.0f} us, "
          f"pinned - unrouted {med['pinned'][1] - med['unrouted'][1]:.0f} us")


if __name__ == "__main__":
    main()
