"""Where one managed request's time goes at concurrency 1 (issue 27), wall-clock, by phase.

    .venv/bin/python benchmarks/managed_c1_probe.py --mode managed -d 10 --rate 500
    .venv/bin/python benchmarks/managed_c1_probe.py --mode managed,firewall --rounds 2
    PLANO_FAST_BENCH_PG_DSN=postgresql://... .venv/bin/python benchmarks/managed_c1_probe.py --mode managed-pg

One fake provider, one gateway worker set up as ``benchmarks/run.py`` sets up the mode,
and ``benchmarks/tail_probe.py``'s open-loop client at concurrency 1.  The gateway runs
with hooks (this file, ``--gateway``) that stamp CLOCK_MONOTONIC -- the client's clock --
at each phase of a request; requests are sequential, so each one's stamps follow its
client send.  Reported: the median time between consecutive phases, over the requests
that went through every phase:

  sent (client) -> exchange (request parsed, exchange built) -> identified (token found)
  -> forwarded (request written to the provider connection) -> answered (provider's head
  read) -> complete (provider's body done) -> submitted (usage row given to the group
  writer) -> store_start (the writer's store call begins) -> committed (store call done)
  -> woken (the exchange resumes: terminal bytes released) -> ended (response ended:
  bytes handed to the socket) -> received (client has the whole answer).

Phases a mode does not have (firewall: no token, no synchronous write) are skipped.
The hooks cost a few µs per stamp: the total is above an unhooked run's; compare phases.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

now_ns = time.monotonic_ns
PHASES = ("sent", "exchange", "identified", "preparing", "sending", "forwarded", "answered", "complete",
          "submitted", "store_start", "committed", "woken", "ending", "ended", "received")

_marks: list[tuple[str, int]] = []


def _mark(name: str) -> None:
    _marks.append((name, now_ns()))


def _before(cls: Any, attr: str, name: str) -> None:
    original = getattr(cls, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(name)
        return original(*args, **kwargs)

    setattr(cls, attr, wrapper)


def _after(cls: Any, attr: str, name: str) -> None:
    original = getattr(cls, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _mark(name)
        return result

    setattr(cls, attr, wrapper)


def _around_async(cls: Any, attr: str, start: str, end: str) -> None:
    original = getattr(cls, attr)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(start)
        result = await original(*args, **kwargs)
        _mark(end)
        return result

    setattr(cls, attr, wrapper)


def _around_now(cls: Any, attr: str, start: str, end: str) -> None:
    """A store call that may decline (``None``): the end stamped only when it wrote
    (absent from trees older than it: nothing hooked)."""
    original = getattr(cls, attr, None)
    if original is None:
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(start)
        result = original(*args, **kwargs)
        if result is not None:
            _mark(end)
        return result

    setattr(cls, attr, wrapper)


def _install_hooks(out: str) -> None:
    from plano_fast.gateway.modes.managed import HoldTerminal, ManagedExchange
    from plano_fast.gateway.relay import Exchange
    from plano_fast.http_server import Responder
    from plano_fast.managed.context import GroupWriter
    from plano_fast.managed.state import ManagedState
    from plano_fast.store.postgres import PostgresStore
    from plano_fast.store.sqlite import SqliteStore

    _before(Exchange, "__init__", "exchange")
    _after(ManagedState, "lookup", "identified")
    _before(ManagedExchange, "_prepare_target", "preparing")
    _before(Exchange, "_send", "sending")
    _after(Exchange, "_send", "forwarded")
    _before(Exchange, "on_upstream_head", "answered")
    _before(Exchange, "on_upstream_complete", "complete")
    _before(GroupWriter, "write", "submitted")
    _around_async(SqliteStore, "write_usage", "store_start", "committed")
    _around_async(PostgresStore, "write_usage", "store_start", "committed")  # managed-pg
    _around_now(SqliteStore, "write_usage_now", "store_start", "committed")
    _before(HoldTerminal, "release", "woken")
    _before(Responder, "end", "ending")
    _after(Responder, "end", "ended")

    def dump() -> None:
        Path(out).write_text(json.dumps(_marks))

    atexit.register(dump)


def _gateway(argv: list[str]) -> int:
    _install_hooks(argv[0])
    from plano_fast.cli import main as cli_main

    return cli_main(argv[1:])


def breakdown(sends: list[tuple[int, int]], marks: list[tuple[str, int]]) -> dict[str, Any]:
    """Per request (client send, latency): the gateway's stamps from its send to the next
    request's send (the gateway may stamp ``ended`` after the client has read the answer);
    the median gap between consecutive phases, in the order of ``PHASES``."""
    gaps: dict[str, list[int]] = {}
    totals: list[int] = []
    j = 0
    for i, (sent, latency) in enumerate(sends):
        until = sends[i + 1][0] if i + 1 < len(sends) else sent + 10**9
        while j < len(marks) and marks[j][1] < sent:
            j += 1
        stamps: dict[str, int] = {"sent": sent, "received": sent + latency}
        k = j
        while k < len(marks) and marks[k][1] < until:
            name, t = marks[k]
            stamps.setdefault(name, t)  # the first of each
            k += 1
        if "exchange" not in stamps or "ended" not in stamps:
            continue
        totals.append(latency)
        seq = [(p, stamps[p]) for p in PHASES if p in stamps]
        for (a, ta), (b, tb) in zip(seq, seq[1:]):
            gaps.setdefault(f"{a} -> {b}", []).append(tb - ta)
    return {
        "requests": len(totals),
        "latency_p50_us": round(statistics.median(totals) / 1e3, 1) if totals else None,
        "phases_p50_us": {k: round(statistics.median(v) / 1e3, 1) for k, v in gaps.items() if len(v) * 2 > len(totals)},
    }


def one_run(root: Path, mode: str, fake_port: int, args: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    from benchmarks import run as bench
    from benchmarks import tail_probe as tp

    wd = work / tag
    wd.mkdir(parents=True)
    setup = bench.MODES[mode](wd, fake_port, 1, ["c1"])
    out = wd / "marks.json"
    env = {**os.environ, **setup.env, "PYTHONPATH": str(root)}
    log = wd / "gateway.log"
    proc = subprocess.Popen([bench.PY, str(Path(__file__).resolve()), "--gateway", str(out), "serve",
                             "--config", str(setup.config_path)],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=open(log, "ab"))
    try:
        port = bench.listening_port(proc, 60, log, "gateway")
        request = tp._request_bytes(port, setup.headers_for("c1"))
        reqs = asyncio.run(tp._c1("127.0.0.1", port, request, args.rate, args.duration_s, args.warmup_s))
    finally:
        tp._stop(proc)
        if setup.database_url is not None:
            bench._drop_pg_database(setup.database_url)
    marks = [tuple(m) for m in json.loads(out.read_text())]
    if args.dump:
        Path(args.dump).write_text(json.dumps({"sends": [(t, lat) for t, lat, _ in reqs], "marks": marks}))
    result = breakdown([(t, lat) for t, lat, _ in reqs], marks)  # type: ignore[arg-type]
    return {"mode": mode, "root": str(root), "load": os.getloadavg(), **result}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--gateway":
        return _gateway(argv[1:])  # the gateway of the tree on PYTHONPATH (--root)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="managed", help="comma list: managed, managed-pg, firewall, config")
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("-d", "--duration-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="gateway source tree")
    ap.add_argument("--json-out")
    ap.add_argument("--dump", help="write the raw client sends and gateway stamps here")
    args = ap.parse_args(argv)
    from benchmarks import run as bench

    results = []
    with tempfile.TemporaryDirectory(prefix="mgd_c1_") as tmp:
        work = Path(tmp)
        fake, fake_port = bench.start_fake(1, work / "fake.log")
        try:
            for r in range(args.rounds):
                for mode in args.mode.split(","):
                    res = one_run(Path(args.root), mode, fake_port, args, work, f"{mode}-{r}")
                    results.append(res)
                    print(json.dumps(res, indent=1), flush=True)
        finally:
            bench.stop_proc(fake)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
