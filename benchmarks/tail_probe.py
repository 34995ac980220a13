"""Concurrency-1 tail probe: who makes the slow requests slow (issue 27).

    .venv/bin/python benchmarks/tail_probe.py --mode config --rate 1000 -d 20
    .venv/bin/python benchmarks/tail_probe.py --mode firewall --hooks          # attribution
    .venv/bin/python benchmarks/tail_probe.py --ab /work/base /work/wt-tail --rounds 3

One fake provider (benchmarks/fake_provider.py, a real provider's response headers), one
gateway worker set up as ``benchmarks/run.py`` sets up its ``config``/``firewall`` modes
(SQLite store, production flush intervals), and an open-loop client at concurrency 1
(``--rate`` req/s, the openai SDK's headers; latency counts from the intended send time
when the previous answer was late, as ``benchmarks/loadgen.py`` does).  Each request's
send time is kept on CLOCK_MONOTONIC, the clock the gateway's hooks use.

Per run: client latency percentiles, and per 10k requests the count of requests slower
than ``--slow-ms`` (default 1 ms).  With ``--hooks`` the gateway runs under
``benchmarks/tail_hooks.py`` and every slow request is matched with what the gateway did
while it waited (a gc pass, a task's stretch of the loop, the access log, ...): the
report gives the share of slow requests each cause overlaps and the no-op ticker
process's stalls beside the gateway's (the VM's share).  Hooks cost CPU: compare A/B
without them.

``--ab ROOT_A ROOT_B``: the gateway source trees (each with its Cython modules built in
place) run alternately, ``--rounds`` times each, same fake provider, same client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import run as bench  # noqa: E402

HERE = Path(__file__).resolve().parent
now_ns = time.monotonic_ns


# --------------------------------------------------------------------------- client


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Optional[asyncio.Transport] = None
        self.done: Optional[asyncio.Future[None]] = None
        self.server_timing = b""
        self._name = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"server-timing":
            self.server_timing = value

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))


def _gateway_ms(value: bytes) -> float:
    for part in value.split(b","):
        part = part.strip()
        if part.startswith(b"gateway;dur="):
            return float(part[12:])
    return -1.0


async def _c1(host: str, port: int, request: bytes, rate: float, duration_s: float,
              warmup_s: float) -> list[tuple[int, int, float]]:
    """(intended send ns, latency ns, gateway ms or -1) per measured request."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, host, port)
    assert conn.transport is not None
    period_ns = int(1e9 / rate)
    start = now_ns() + 50_000_000
    measure_from = start + int(warmup_s * 1e9)
    end = measure_from + int(duration_s * 1e9)
    out: list[tuple[int, int, float]] = []
    i = 0
    while True:
        due = start + i * period_ns
        if due >= end:
            break
        i += 1
        t = now_ns()
        if due > t:
            await asyncio.sleep((due - t) / 1e9)
            t = now_ns()
        # late: count from the intended time (the target made us late); on time: from now
        origin = due if t - due > 1_000_000 else t
        conn.done = loop.create_future()
        conn.server_timing = b""
        conn.transport.write(request)
        await conn.done
        latency = now_ns() - origin
        if due >= measure_from:
            out.append((origin, latency, _gateway_ms(conn.server_timing)))
    conn.transport.close()
    return out


def _request_bytes(port: int, headers: list[tuple[str, str]]) -> bytes:
    body = bench.BODY_JSON.encode()
    lines = ["POST /v1/chat/completions HTTP/1.1", f"host: 127.0.0.1:{port}",
             "content-type: application/json", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in [*bench.SDK_HEADERS, *headers]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _preload(port: int, headers: list[tuple[str, str]], seconds: float) -> None:
    """What ``benchmarks/run.py`` does to a gateway before its c=1 runs: the saturation
    scenario (64 connections, closed loop), so the heap, the usage store and the access
    log are as large as they are there; then a pause for the usage flush to finish."""
    from benchmarks.loadgen import LoadSpec, run_load

    run_load(LoadSpec(url=f"http://127.0.0.1:{port}/v1/chat/completions", body=bench.BODY_JSON.encode(),
                      headers=[*bench.SDK_HEADERS, *headers], concurrency=64, duration_s=seconds,
                      warmup_s=0.0, timeout_s=10))
    time.sleep(3.0)


# --------------------------------------------------------------------------- processes


def _start_gateway(root: Path, cfg: Path, env_extra: dict[str, str], hooks_out: Optional[Path],
                   log: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(root)}
    if hooks_out is not None:
        args = [bench.PY, str(HERE / "tail_hooks.py"), str(hooks_out), "serve", "--config", str(cfg)]
    else:
        args = [bench.PY, "-m", "plano_fast", "serve", "--config", str(cfg)]
    args += ["--port", "0"]  # not the config's 12000: another probe or gateway may hold it
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=open(log, "ab"))
    return proc, bench.listening_port(proc, 60, log, "gateway")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Strace:
    """``strace -c -f`` attached to the gateway (every thread) for the measured window:
    system calls per request, by name, counted -- not timed, so a loaded machine does not
    change them.  (strace slows the gateway down: the client's latencies of such a run mean
    nothing.)"""

    def __init__(self, pid: int, out: Path, after_s: float) -> None:
        self.out = out
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start_ns = self.stop_ns = 0
        self._timer = threading.Timer(after_s, self._attach, args=(pid,))
        self._timer.start()

    def _attach(self, pid: int) -> None:
        self.proc = subprocess.Popen(["strace", "-c", "-f", "-qq", "-o", str(self.out), "-p", str(pid)],
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached to every thread
        self.start_ns = now_ns()

    def stop(self, reqs: list[tuple[int, int, float]]) -> dict[str, Any]:
        self._timer.join()
        self.stop_ns = now_ns()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        n = sum(1 for t, _, _ in reqs if self.start_ns <= t <= self.stop_ns)
        calls: dict[str, int] = {}
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
        per = {k: round(v / max(1, n), 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
        return {"requests": n, "per_request_total": round(sum(calls.values()) / max(1, n), 2), "per_request": per}


# --------------------------------------------------------------------------- analysis


def _pct(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k] / 1e6


def _attribute(reqs: list[tuple[int, int, float]], hooks: dict[str, Any], slow_ns: int) -> dict[str, Any]:
    """For each slow request: the gateway's recorded activity overlapping its wait; and,
    inside the measured window, the gateway's own stalls: stretches of the loop (and gc
    passes) that used >= 0.5 ms of the loop thread's CPU, per cause, per 10k requests."""
    lo, hi = reqs[0][0], reqs[-1][0] + reqs[-1][1]
    per10k = 1e4 / max(1, len(reqs))
    events: list[tuple[int, int, int, str]] = [tuple(e) for e in hooks["spans"]]  # type: ignore[misc]
    events += [(s, d, c, f"gc gen{g}") for s, d, c, g, _ in hooks["gcs"] if d >= 100_000]
    events = sorted(e for e in events if lo <= e[0] <= hi)
    causes: dict[str, int] = {}
    slow = [(t, lat) for t, lat, _ in reqs if lat >= slow_ns]
    j = 0
    for t, lat in slow:
        end = t + lat
        while j < len(events) and events[j][0] + events[j][1] < t - 50_000_000:
            j += 1
        hit = set()
        for s, d, _, n in events[j:]:
            if s > end:
                break
            if s + d >= t:
                hit.add(n)
        for n in hit or {"(nothing recorded: VM or the request itself)"}:
            causes[n] = causes.get(n, 0) + 1
    # Every request (slow or not) against the causes overlapping it: a cause that delays
    # the requests it meets shows a higher median than the requests it does not meet
    # (robust to a loaded machine, which slows both groups alike).
    met: dict[str, list[int]] = {}
    untouched: list[int] = []
    j = 0
    for t, lat, _ in reqs:
        while j < len(events) and events[j][0] + events[j][1] < t - 50_000_000:
            j += 1
        hit = set()
        for s, d, _, n in events[j:]:
            if s > t + lat:
                break
            if s + d >= t:
                hit.add(n)
        for n in hit:
            met.setdefault(n, []).append(lat)
        if not hit:
            untouched.append(lat)
    untouched.sort()
    overlap = {"(none)": {"n": len(untouched), "p50_ms": _pct(untouched, 50), "p90_ms": _pct(untouched, 90)}}
    for n, lats in sorted(met.items(), key=lambda kv: -len(kv[1])):
        lats.sort()
        overlap[n] = {"n": len(lats), "p50_ms": round(_pct(lats, 50), 3), "p90_ms": round(_pct(lats, 90), 3)}
    # Stretches of the loop thread that blocked (a voluntary context switch inside: file
    # I/O, the GIL held by another thread, a lock) or were preempted (involuntary), per
    # name, inside the window: how many and the wall time they took.
    blocked: dict[str, dict[str, float]] = {}
    for (st, d, c, n), (nv, niv) in zip(hooks["spans"], hooks.get("span_switches", [])):
        if not lo <= st <= hi or n.startswith("thread: "):
            continue
        row = blocked.setdefault(n, {"stretches": 0, "blocked": 0, "blocked_wall_ms_max": 0.0,
                                     "blocked_wait_ms_sum": 0.0, "preempted": 0})
        row["stretches"] += 1
        if nv:
            row["blocked"] += 1
            row["blocked_wall_ms_max"] = max(row["blocked_wall_ms_max"], d / 1e6)
            row["blocked_wait_ms_sum"] = round(row["blocked_wait_ms_sum"] + max(0, d - c) / 1e6, 3)
        row["preempted"] += bool(niv)
    stalls: dict[str, dict[str, float]] = {}
    for _, d, c, n in events:
        row = stalls.setdefault(n, {"n_over_100us": 0, "cpu_over_0.5ms": 0, "cpu_over_1ms": 0,
                                    "max_cpu_ms": 0.0, "max_wall_ms": 0.0})
        row["n_over_100us"] += 1
        row["cpu_over_0.5ms"] += c >= 500_000
        row["cpu_over_1ms"] += c >= 1_000_000
        row["max_cpu_ms"] = max(row["max_cpu_ms"], c / 1e6)
        row["max_wall_ms"] = max(row["max_wall_ms"], d / 1e6)
    for row in stalls.values():
        for k in ("n_over_100us", "cpu_over_0.5ms", "cpu_over_1ms"):
            row[k + "_per_10k"] = round(row.pop(k) * per10k, 2)
    gcs = [g for g in hooks["gcs"] if lo <= g[0] <= hi]
    by_gen: dict[str, list[int]] = {}
    for _, _, c, g, _ in gcs:
        by_gen.setdefault(f"gen{g}", []).append(c)
    # The loop's own stalls: task stretches (every background job of the gateway is a
    # task; the request path is not) of >= 0.5 ms of the loop thread's CPU.
    tasks = [c for _, _, c, n in events if n.startswith("task ")]
    return {
        "loop_stalls_per_10k": round(sum(1 for c in tasks if c >= 500_000) * per10k, 2),
        "loop_stalls_over_1ms_per_10k": round(sum(1 for c in tasks if c >= 1_000_000) * per10k, 2),
        "loop_stall_cpu_ms_per_10k": round(sum(c for c in tasks if c >= 500_000) / 1e6 * per10k, 2),
        "slow_requests": len(slow),
        "slow_causes": dict(sorted(causes.items(), key=lambda kv: -kv[1])),
        "latency_by_overlap": overlap,
        "blocked_stretches": dict(sorted(blocked.items(), key=lambda kv: -kv[1]["blocked"])),
        "stalls_in_window": dict(sorted(stalls.items(), key=lambda kv: -kv[1]["cpu_over_0.5ms_per_10k"])),
        "gc_in_window": {g: {"per_10k": round(len(cs) * per10k, 1), "median_cpu_us": round(statistics.median(cs) / 1e3, 1),
                             "max_cpu_ms": max(cs) / 1e6, "cpu_over_0.5ms": sum(1 for c in cs if c >= 500_000)}
                         for g, cs in sorted(by_gen.items())},
        "late_ticks": _late(hooks),
    }


def _late(hooks: dict[str, Any]) -> dict[str, Any]:
    late = hooks["late_ticks_ns"]
    ticks = max(1, hooks["ticks"])
    return {"ticks": hooks["ticks"],
            "over_1.5ms_per_10k": round(sum(1 for x in late if x >= 1_500_000) * 1e4 / ticks, 2),
            "over_3ms_per_10k": round(sum(1 for x in late if x >= 3_000_000) * 1e4 / ticks, 2),
            "max_ms": max(late) / 1e6 if late else 0.0}


def summarize(reqs: list[tuple[int, int, float]], slow_ns: int) -> dict[str, Any]:
    lat = sorted(r[1] for r in reqs)
    gw = sorted(int(r[2] * 1e6) for r in reqs if r[2] >= 0)
    n = max(1, len(lat))
    return {
        "requests": len(lat),
        "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99),
        "p999_ms": _pct(lat, 99.9), "max_ms": lat[-1] / 1e6 if lat else float("nan"),
        "slow_per_10k": round(sum(1 for x in lat if x >= slow_ns) * 1e4 / n, 1),
        "over_2ms_per_10k": round(sum(1 for x in lat if x >= 2_000_000) * 1e4 / n, 1),
        "gateway_p50_ms": _pct(gw, 50), "gateway_p99_ms": _pct(gw, 99), "gateway_p999_ms": _pct(gw, 99.9),
    }


# --------------------------------------------------------------------------- one run


def one_run(root: Path, mode: str, fake_port: int, args: argparse.Namespace, work: Path,
            tag: str) -> dict[str, Any]:
    wd = work / tag
    wd.mkdir(parents=True)
    setup = bench.MODES[mode](wd, fake_port, 1, ["c1"])
    extra = "  server_timing: true\n"
    if args.access_log:
        extra += f"  access_log: {json.dumps(str(wd / 'access.log'))}\n"
    with open(setup.config_path, "a") as fh:
        fh.write(extra)
    hooks_out = wd / "hooks.json" if args.hooks else None
    proc, port = _start_gateway(root, setup.config_path, setup.env, hooks_out, wd / "gateway.log")
    noop = None
    if args.hooks:
        noop = subprocess.Popen([bench.PY, str(HERE / "tail_hooks.py"), str(wd / "noop.json"), "--noop",
                                 str(args.duration_s + args.warmup_s + 1)])
    try:
        if args.preload_s > 0:
            _preload(port, setup.headers_for("c1"), args.preload_s)
        cpu0 = _cpu_s(proc.pid)
        request = _request_bytes(port, setup.headers_for("c1"))
        tracer = _Strace(proc.pid, wd / "strace.txt", args.warmup_s + 0.1) if args.strace else None
        t0 = time.monotonic()
        reqs = asyncio.run(_c1("127.0.0.1", port, request, args.rate, args.duration_s, args.warmup_s))
        wall = time.monotonic() - t0
        cpu = _cpu_s(proc.pid) - cpu0
        if tracer is not None:
            syscalls = tracer.stop(reqs)
    finally:
        _stop(proc)
        if noop is not None:
            noop.wait(60)
    result: dict[str, Any] = {"root": str(root), "mode": mode, "load": os.getloadavg(),
                              **summarize(reqs, int(args.slow_ms * 1e6)),
                              "gateway_cpu_us_per_req": round(cpu * 1e6 / max(1, len(reqs) * wall /
                                                              (args.duration_s + args.warmup_s)), 1)}
    if tracer is not None:
        result["syscalls"] = syscalls
    if hooks_out is not None and hooks_out.exists():
        hooks = json.loads(hooks_out.read_text())
        result["attribution"] = _attribute(reqs, hooks, int(args.slow_ms * 1e6))
        if (wd / "noop.json").exists():
            result["noop_late_ticks"] = _late(json.loads((wd / "noop.json").read_text()))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="config", help="config or firewall (comma list)")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("-d", "--duration-s", type=float, default=20.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--slow-ms", type=float, default=1.0, help="a request this slow counts as slow")
    ap.add_argument("--hooks", action="store_true", help="instrumented gateway (attribution)")
    ap.add_argument("--access-log", action="store_true", help="the gateway writes an access log file")
    ap.add_argument("--ab", nargs=2, metavar=("ROOT_A", "ROOT_B"), help="two gateway source trees, alternated")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--preload-s", type=float, default=0.0,
                    help="saturate the gateway this long first (64 connections), as run.py's ns_sat does")
    ap.add_argument("--json-out", help="write every run's result here")
    ap.add_argument("--strace", action="store_true",
                    help="count the gateway's system calls per request in the window (strace -c -f)")
    args = ap.parse_args(argv)
    roots = [Path(p).resolve() for p in args.ab] if args.ab else [bench.ROOT]
    work = Path(tempfile.mkdtemp(prefix="tail-probe-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    results: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for mode in args.mode.split(","):
                for k, root in enumerate(roots):
                    tag = f"r{r}-{mode}-{'AB'[k] if args.ab else 'x'}"
                    res = one_run(root, mode, fake_port, args, work, tag)
                    res["tag"] = tag
                    results.append(res)
                    print(json.dumps({k2: v for k2, v in res.items() if k2 != "attribution"}), flush=True)
                    if "attribution" in res:
                        print(json.dumps(res["attribution"], indent=1), flush=True)
    finally:
        bench.stop_proc(fake)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    keys = ("p50_ms", "p99_ms", "p999_ms", "slow_per_10k", "over_2ms_per_10k", "gateway_p99_ms",
            "gateway_p999_ms", "gateway_cpu_us_per_req")
    hook_keys = ("loop_stalls_per_10k", "loop_stalls_over_1ms_per_10k", "loop_stall_cpu_ms_per_10k")
    for mode in args.mode.split(","):
        for k, root in enumerate(roots):
            rows = [x for x in results if x["mode"] == mode and x["root"] == str(root)]
            med = {key: round(statistics.median(x[key] for x in rows), 3) for key in keys}
            if all("attribution" in x for x in rows):
                med |= {key: statistics.median(x["attribution"][key] for x in rows) for key in hook_keys}
                med["noop_ticks_over_1.5ms_per_10k"] = statistics.median(
                    x["noop_late_ticks"]["over_1.5ms_per_10k"] for x in rows if "noop_late_ticks" in x)
                med["gw_ticks_over_1.5ms_per_10k"] = statistics.median(
                    x["attribution"]["late_ticks"]["over_1.5ms_per_10k"] for x in rows)
            print(f"median of {len(rows)} | {mode} | {root} | {json.dumps(med)}")
    print(f"work dir: {work}; load now: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
