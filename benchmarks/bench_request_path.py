"""Instructions per request of the gateway's own Python request path, in one process.

    python -m benchmarks.bench_request_path --modes firewall,config              # callgrind
    python -m benchmarks.bench_request_path --modes firewall --profile           # cProfile table
    python -m benchmarks.bench_request_path --modes config --access-log --profile
    python -m benchmarks.bench_request_path --modes firewall --ratelimit tokens  # the feature's B - A

The end-to-end measures (``benchmarks.ab_refs --callgrind``) count whole requests -- the
loopback TCP, uvloop, the usage flush after them -- and spread by a few percent between
windows.  This one isolates what the gateway's code does for one request: a real
``Gateway`` is started (``benchmarks.run``'s setup of the mode: its config, store, keys;
request metrics on, the access log with ``--access-log``), and a loop hands its
``ServerProtocol`` the bytes of one request as a socket read would
(``data_received``: the openai SDK's headers, the harness's body), then hands the upstream
connection the exchange took the bytes of the fake provider's answer (captured once from
``benchmarks/fake_provider.py --provider-headers``: a 1.3 KB head, a 915-byte body).
Transports are stand-ins that drop what is written: no socket, no loop turn, nothing of
the kernel.  Everything a request runs synchronously is counted (parse, identify,
forward, relay, settle: the usage event handed to billing, metrics, the access-log
record); the billing pipeline's tasks (flush, pricing) and the access log's writer do not
run inside the loop.

Under ``valgrind --tool=callgrind --instr-atstart=no``, the child switches the
instrumentation on (``callgrind_control -i on``) right before its loop of N requests:
total / N is one request's instructions, start-up and warm-up not counted, stable
whatever the machine's load.  ``--profile`` instead runs the loop under
cProfile and prints the functions by own time (cProfile's overhead inflates calls, so read
it for where, callgrind for how much).  ``--root DIR`` measures another checkout's
``plano_fast`` (A/B of two trees with the same harness).

``--critical``: besides the total, what a request's latency at concurrency 1 waits for:
the instructions from the server's read to the upstream write (the request side) and from
the upstream read to the client's write (the answer side), each counted alone
(``--collect-atstart=no``; collection switched on right before the harness hands over
the bytes and off inside the stand-in transport's ``write``, by callgrind client requests
from ``benchmarks/cg_toggle.c``, built here with ``cc``; the switch's own cost, measured
by an empty on/off pair, subtracted).  What is left of the total runs after the writes
(the settle step, the usage sink, the metrics): a concurrency-1 client does not wait for
it (issue 27: the c=1 cost is paid with caches cold, so fewer instructions before each
write is what lowers the added latency).

``--ratelimit tokens|requests``: per mode, A is the config with ``redis_url`` set (a private
``redis-server``) and no limits, B the same plus ``benchmarks.ratelimit_ab``'s limit (every
request falls in it, never reached): B - A is the rate limit's cost on the request path,
leases and all.  Both run one loop turn after each request (the lease fetches and Redis's
replies are handled there, as the server's loop would) and wait for the forward when a
request waits on Redis (no lease yet).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class _Transport:
    """A transport that drops what is written (client side and upstream side)."""

    def __init__(self) -> None:
        self.closed = False
        self.writes = 0
        #: called first by every write (``--critical``: the end of a counted stretch)
        self.on_write: Any = None

    def write(self, data: Any) -> None:
        if self.on_write is not None:
            self.on_write()
        self.writes += 1

    def writelines(self, data: Any) -> None:
        if self.on_write is not None:
            self.on_write()
        self.writes += 1

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40312) if name == "peername" else default


def capture_answer(workdir: Path, request: bytes) -> bytes:
    """The fake provider's raw answer to ``request`` (its first response on a connection)."""
    from benchmarks import run as bench

    fake, port = bench.start_fake(1, workdir / "fake.log")
    try:
        request = re.sub(rb"\r\nHost: [^\r]*", b"\r\nHost: 127.0.0.1:%d" % port, request, count=1)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += sock.recv(65536)
        return head + b"\r\n\r\n" + body
    finally:
        bench.stop_proc(fake)


def prepare(mode: str, workdir: Path, access_log: bool, redis_url: str = "", limit: str = "") -> dict[str, Any]:
    """Config, store and keys as ``benchmarks.run`` sets them up, and the two byte strings;
    ``redis_url`` set, and ``limit`` (tokens, requests: ``ratelimit_ab``'s limit) added."""
    from benchmarks import ab_refs
    from benchmarks import run as bench

    setup = bench.MODES[mode](workdir, 9, 1, ["ab"])  # port 9: never connected to
    if mode == "config":
        bench._migrate(setup.config_path, setup.env)
    settings: dict[str, Any] = {"request_metrics": True}
    if access_log:
        settings["access_log"] = str(workdir / "access.jsonl")
    if redis_url:
        settings["redis_url"] = redis_url
    bench.append_settings(setup.config_path, settings)
    if limit:
        from benchmarks.ratelimit_ab import ratelimit_section

        with open(setup.config_path, "a") as fh:
            fh.write(ratelimit_section(limit))
    headers = bench.CLIENT_HEADERS + [tuple(h) for h in setup.headers_for("ab")]
    request = ab_refs.request_bytes("127.0.0.1", 12000, bench.BODY_JSON, headers)
    answer = capture_answer(workdir, request)
    return {"config": str(setup.config_path), "env": setup.env, "request": request.decode("latin-1"),
            "answer": answer.decode("latin-1"), "turns": bool(redis_url)}


async def _run_loop(prepared: dict[str, Any], n: int, profile: Path | None) -> None:
    from plano_fast.app import Gateway
    from plano_fast.config import load_config
    from plano_fast.upstream import UpstreamConnection

    os.environ.update(prepared["env"])
    gw = Gateway(load_config(prepared["config"]), port=0)
    await gw.start()
    gc.collect()  # as `plano_fast serve` does after start-up (plano_fast/cli.py)
    gc.freeze()
    for _ in range(500):  # the registry and budgets load in tasks
        if gw.store_ready and (not gw.firewall or (gw.registry.ready and gw.billing.budget.ready)):
            break
        await asyncio.sleep(0.01)
    pool = gw.pool
    conns: list[UpstreamConnection] = []
    upstream: list[_Transport] = []

    async def connect(origin: Any, timeout_s: float | None = None) -> UpstreamConnection:
        conn = UpstreamConnection(pool, origin)
        upstream.append(_Transport())
        conn.connection_made(upstream[-1])  # type: ignore[arg-type]
        conns.append(conn)
        return conn

    pool.connect = connect  # type: ignore[method-assign]
    proto = gw._protocol_factory()
    client = _Transport()
    proto.connection_made(client)  # type: ignore[arg-type]
    request = prepared["request"].encode("latin-1")
    answer = prepared["answer"].encode("latin-1")

    def one() -> None:
        proto.data_received(request)
        conns[-1].data_received(answer)

    async def one_turn() -> None:
        """A request, then a loop turn; waits for the forward when it waits on Redis."""
        written = upstream[-1].writes
        proto.data_received(request)
        while upstream[-1].writes == written:
            await asyncio.sleep(0.0005)
        conns[-1].data_received(answer)
        await asyncio.sleep(0)

    # Warm-up: the first request opens the (stand-in) connection in a task (and, with a
    # rate limit, waits for Redis's first answer).
    proto.data_received(request)
    for _ in range(5000):
        await asyncio.sleep(0.001)
        if upstream and upstream[-1].writes:
            break
    conns[-1].data_received(answer)
    turns = prepared.get("turns", False)
    for _ in range(200):
        if turns:
            await one_turn()
        else:
            one()
    assert proto.idle and not proto.lost, "the warm-up requests were not answered"
    gc.collect()  # every run's window starts from the same collector state
    if profile is not None:
        profiler = cProfile.Profile()
        profiler.enable()
    if os.environ.get("BENCH_RP_CALLGRIND"):
        # counted from here on (the child runs under --instr-atstart=no)
        subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
    critical = os.environ.get("BENCH_RP_CRITICAL", "")
    if critical:
        _critical_loop(critical, n, proto, request, answer, conns, upstream[-1], client)
    elif turns:
        for _ in range(n):
            await one_turn()
    else:
        for _ in range(n):
            one()
    if profile is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    assert proto.idle and len(conns) == 1, "a request was not answered on the pooled connection"
    os._exit(0)  # the loop's own length is measured, not the gateway's stop


def _critical_loop(side: str, n: int, proto: Any, request: bytes, answer: bytes, conns: list[Any],
                   upstream: _Transport, client: _Transport) -> None:
    """``n`` requests, callgrind collecting only one side's stretch before its write
    (``request``: the server's read up to the upstream write; ``answer``: the upstream
    read up to the client's write) or, ``calibrate``, only an empty on/off switch."""
    import ctypes

    toggle = ctypes.CDLL(os.environ["BENCH_RP_TOGGLE_LIB"]).cg_toggle
    armed = [False]

    def on() -> None:
        armed[0] = True
        toggle()

    def off() -> None:
        if armed[0]:
            armed[0] = False
            toggle()

    if side == "calibrate":
        for _ in range(n):
            on()
            off()
        return
    if side == "request":
        upstream.on_write = off
        for _ in range(n):
            on()
            proto.data_received(request)
            assert not armed[0], "the request was not written upstream"
            conns[-1].data_received(answer)
    elif side == "answer":
        client.on_write = off
        for _ in range(n):
            proto.data_received(request)
            on()
            conns[-1].data_received(answer)
            assert not armed[0], "the answer was not written to the client"
    else:
        raise ValueError(f"unknown side {side!r}")
    upstream.on_write = client.on_write = None


def toggle_lib(work: Path) -> Path:
    """``benchmarks/cg_toggle.c`` built into ``work`` (a shared object for ctypes)."""
    lib = work / "cg_toggle.so"
    if not lib.exists():
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(ROOT / "benchmarks" / "cg_toggle.c")],
                       check=True, capture_output=True)
    return lib


def child(prepared_path: str, n: int, profile: str) -> None:
    import uvloop

    prepared = json.loads(Path(prepared_path).read_text())
    uvloop.run(_run_loop(prepared, n, Path(profile) if profile else None))


def _child_cmd(root: Path, prepared: Path, n: int, profile: str = "") -> list[str]:
    # The measured tree's ``plano_fast`` first on the path, but this file's loop (another
    # tree's harness may not know the options given: loaded by its path, not as the
    # ``benchmarks`` package the measured tree puts first)
    return [sys.executable, "-c",
            f"import sys, importlib.util; sys.path[:0] = [{str(root)!r}, {str(ROOT)!r}]; "
            f"spec = importlib.util.spec_from_file_location('bench_request_path_loop', {__file__!r}); "
            "harness = importlib.util.module_from_spec(spec); spec.loader.exec_module(harness); "
            f"harness.child({str(prepared)!r}, {n}, {profile!r})"]


def callgrind_total(root: Path, prepared: Path, n: int, out: Path, critical: str = "", lib: Path | None = None) -> int:
    """Instructions of ``n`` requests: the child switches callgrind's instrumentation on
    right before its loop (start-up, imports and warm-up are not counted); with
    ``critical`` (a side of ``_critical_loop``), only that side's stretches."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "BENCH_RP_CALLGRIND": "1"}
    env.pop("PYTHONPATH", None)
    extra = []
    if critical:
        assert lib is not None
        env.update(BENCH_RP_CRITICAL=critical, BENCH_RP_TOGGLE_LIB=str(lib))
        extra = ["--collect-atstart=no"]
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", *extra, f"--callgrind-out-file={out}",
                    *_child_cmd(root, prepared, n)], cwd=root, env=env, check=True,
                   capture_output=True)  # fmt: skip
    match = re.search(r"^(?:totals|summary):\s+(\d+)", out.read_text(), re.M)
    assert match is not None, out
    return int(match.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="firewall,config")
    ap.add_argument("--root", type=Path, action="append",
                    help="checkout(s) whose plano_fast is measured (default: this one); twice for A/B")
    ap.add_argument("--n", type=int, default=3000, help="requests counted (callgrind) or profiled")
    ap.add_argument("--access-log", action="store_true", help="the JSON access log on (records only)")
    ap.add_argument("--profile", action="store_true", help="cProfile of the loop instead of callgrind")
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--critical", action="store_true",
                    help="also count the request side (read -> upstream write) and the answer side "
                         "(upstream read -> client write) alone: what a concurrency-1 client waits for")
    ap.add_argument("--ratelimit", choices=("tokens", "requests"),
                    help="A: redis_url and no limit, B: plus a limit every request falls in (B - A printed)")
    args = ap.parse_args()
    roots = args.root or [ROOT]
    work = Path(tempfile.mkdtemp(prefix="bench-rp-"))
    redis = None
    sides = [("", "")]
    per_side: dict[str, float] = {}
    if args.ratelimit:
        from benchmarks.private_redis import PrivateRedis

        redis = PrivateRedis(work)
        sides = [("A", ""), ("B", args.ratelimit)]
    try:
        for mode, root, (side, limit) in ((m, r, s) for m in args.modes.split(",") for r in roots for s in sides):
            mdir = work / f"{mode}-{roots.index(root)}{side}"
            mdir.mkdir()
            # the setup runs with the measured tree's code (its migrations, its store)
            prep = subprocess.run(
                [sys.executable, "-c",
                 f"import sys, json; sys.path[:0] = [{str(root)!r}, {str(ROOT)!r}]; "
                 "from benchmarks.bench_request_path import prepare; from pathlib import Path; "
                 f"print(json.dumps(prepare({mode!r}, Path({str(mdir)!r}), {args.access_log!r}, "
                 f"{redis.url if redis else ''!r}, {limit!r})))"],
                cwd=root, capture_output=True, text=True, check=False)  # fmt: skip
            if prep.returncode != 0:
                raise RuntimeError(prep.stderr[-3000:])
            prepared = mdir / "prepared.json"
            prepared.write_text(prep.stdout.strip().splitlines()[-1])
            if args.profile:
                stats_path = mdir / "profile.out"
                subprocess.run(_child_cmd(root, prepared, args.n, str(stats_path)), cwd=root, check=True)
                print(f"== {mode} {root}: cProfile of {args.n} requests (per request: calls, tottime µs)")
                stats = pstats.Stats(str(stats_path))
                rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
                total = sum(v[2] for _, v in rows)
                print(f"   total own time {total / args.n * 1e6:.2f} µs per request")
                for (file, line, fn), (cc, nc, tt, ct, _) in rows[: args.top]:
                    where = f"{Path(file).name}:{line}" if line else file
                    print(f"   {nc / args.n:6.2f} {tt / args.n * 1e6:7.2f} {ct / args.n * 1e6:7.2f}  {fn}  {where}")
                continue
            t0 = time.monotonic()
            per = callgrind_total(root, prepared, args.n, mdir / "callgrind.out") / args.n
            label = f"{side} ({f'{limit} limit' if limit else 'no limit'}, redis_url set) " if side else ""
            print(f"{mode} {label}{'access-log ' if args.access_log else ''}{root}: {per:,.0f} instructions "
                  f"per request ({time.monotonic() - t0:.0f} s)", flush=True)
            if args.critical:
                lib = toggle_lib(work)
                counts = {c: callgrind_total(root, prepared, args.n, mdir / f"callgrind.{c}.out", c, lib) / args.n
                          for c in ("calibrate", "request", "answer")}
                req = counts["request"] - counts["calibrate"]
                ans = counts["answer"] - counts["calibrate"]
                print(f"{mode} {root}: before the upstream write {req:,.0f}, before the client's write {ans:,.0f}, "
                      f"after the writes {per - req - ans:,.0f} (the switch's {counts['calibrate']:,.0f} "
                      "subtracted)", flush=True)
            if side:
                per_side[side] = per
                if side == "B":
                    print(f"{mode} B - A (rate limit in Redis): {per_side['B'] - per_side['A']:+,.0f} "
                          "instructions per request", flush=True)
    finally:
        if redis is not None:
            redis.stop()
        if args.keep:
            print("work directory:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
