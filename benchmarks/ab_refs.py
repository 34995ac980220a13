"""A/B of two git refs of the gateway: the same fake provider, load and settings, two codes.

    python -m benchmarks.ab_refs --a main~3 --b HEAD --modes config,firewall,managed --rounds 8
    python -m benchmarks.ab_refs --a 98bc9f4 --b cececd3 --callgrind --requests 2000

Each ref is checked out with ``git worktree add --detach`` into a cache directory (one per
commit, reused by later runs; ``--clean`` removes them at the end) and its Cython
extensions are built in place with this interpreter (``python setup.py -q build_ext
--inplace``, run by the ref's own setup.py, so a ref that moved its .pyx files still
builds).  Both refs run with this interpreter and its installed packages; only the
ref's top-level packages (``plano_fast``) differ: a per-ref run directory links them, and
the ref's gateway and its setup (migrate, provisioning of keys and tokens) run from it.
The harness's own code (fake provider, load, mode setup in ``benchmarks/run.py``) is the
checkout this file is in, for both refs.

Two measurements:

* default: both gateways (one worker each) run side by side; ``benchmarks.ab_settings.
  alternate`` runs the load A,B then B,A for ``--rounds`` rounds (wrk, or
  ``benchmarks.loadgen`` without it) and reads each gateway's CPU time from /proc.  Per
  mode: per-round and median CPU µs/request and req/s, the ratio B/A, and NOISY when
  the per-round B/A ratios spread over more than ``--noise`` (interquartile range):
  a difference smaller than that cannot be told from the machine's noise.
* ``--callgrind``: each gateway in turn runs under ``valgrind --tool=callgrind
  --instr-atstart=no``; after a warm-up the instrumentation is switched on with
  ``callgrind_control -i on``, the counters are zeroed, a fixed number of requests is sent
  at each ``--callgrind-concurrency`` and the counters are dumped.  Instructions per
  request = (dumped total - the idle rate measured right after x the load's wall time) /
  requests: independent of what else runs on the machine.  ``--split-writes-ms M``: each
  request's head and body are sent in two writes M ms apart, as httpx (the openai and
  anthropic SDKs) sends them; wrk and the default send one write.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import httptools

from benchmarks import run as bench
from benchmarks.ab_settings import Side, alternate
from tests.gateway_proc import GatewayProcess

ROOT = bench.ROOT
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "plano_fast_ab_refs"
HARNESS_PACKAGES = ("benchmarks", "tests")  # always the harness's, never the ref's
ENV_DROP = ("PYTHONPATH", "PLANO_FAST_PURE_SCANNER")  # both refs compiled, nothing injected
CG_RATE_HELP = ("callgrind: send the counted concurrency-1 requests at this many a second (0: back to back). "
                "Work done per unit of time (the usage WAL's 0.1 s syncs) is shared by the requests of that "
                "time, so an unpaced c=1 count moves with the rate the loaded machine allows (15 to 285 "
                "req/s measured for one ref); a fixed rate below the slowest side's makes A and B comparable")


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="git ref of A (the baseline)")
    ap.add_argument("--b", required=True, help="git ref of B")
    ap.add_argument("--modes", default="config,firewall,managed",
                    help="comma-separated, of: " + ",".join(bench.MODES))
    ap.add_argument("--rounds", type=int, default=8, help="alternated rounds per mode (A,B / B,A)")
    ap.add_argument("--duration-s", type=float, default=3.0, help="load per run")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--noise", type=float, default=0.03,
                    help="NOISY when the interquartile range of the per-round B/A ratios exceeds this")
    ap.add_argument("--callgrind", action="store_true", help="instructions per request under callgrind")
    ap.add_argument("--requests", type=int, default=1000, help="callgrind: requests counted per concurrency")
    ap.add_argument("--warmup", type=int, default=300, help="callgrind: requests before counting")
    ap.add_argument("--callgrind-concurrency", default="1,32", help="callgrind: comma-separated")
    ap.add_argument("--callgrind-repeats", dest="cg_repeats", type=int, default=1,
                    help="callgrind: measurements per concurrency (the median is reported)")
    ap.add_argument("--callgrind-rate", dest="cg_rate", type=float, default=0.0, help=CG_RATE_HELP)
    ap.add_argument("--idle-s", type=float, default=20.0, help="callgrind: idle baseline per measurement")
    ap.add_argument("--period-s", type=float, default=10.0,
                    help="callgrind: windows last whole multiples of this (the gateway's periodic tasks)")
    ap.add_argument("--settle-s", type=float, default=21.0,
                    help="callgrind: wait for deferred work (usage flush and pricing run every 10 s)")
    add_split_option(ap)
    ap.add_argument("--repo", type=Path, default=ROOT, help="the git repository the refs are in")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                    help="worktrees, one per commit, reused by later runs")
    ap.add_argument("--clean", action="store_true", help="remove the worktrees at the end")
    ap.add_argument("--json-out", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.mode_list if m not in bench.MODES]
    if unknown or not args.mode_list:
        ap.error(f"unknown mode(s) {unknown}; choose from {sorted(bench.MODES)}")
    args.cg_conc = [int(c) for c in args.callgrind_concurrency.split(",") if c.strip()]
    if args.rounds < 1 or args.requests < 1 or args.cg_repeats < 1 or not args.cg_conc or min(args.cg_conc) < 1:
        ap.error("--rounds, --requests, --callgrind-repeats and --callgrind-concurrency must be positive")
    if args.cg_rate < 0:
        ap.error("--callgrind-rate must be 0 or positive")
    return args


# --------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class Comparison:
    median_a: float
    median_b: float
    ratio: float  # median B / median A
    paired: list[float]  # B/A of each round
    spread: float  # interquartile range of ``paired`` (0 with fewer than two rounds)
    noisy: bool

    @property
    def verdict(self) -> str:
        return "NOISY" if self.noisy else "ok"


def iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def compare(a: Sequence[float], b: Sequence[float], noise: float) -> Comparison:
    """Medians of the rounds of each side, their ratio, and whether the rounds disagree
    by more than ``noise`` (as a fraction): the rounds are paired (A and B ran next to each
    other), so the spread of the per-round ratios is what the machine's drift leaves."""
    if not a or len(a) != len(b):
        raise ValueError("compare needs the same number (> 0) of rounds on each side")
    med_a, med_b = statistics.median(a), statistics.median(b)
    paired = [y / x for x, y in zip(a, b)]
    spread = iqr(paired)
    return Comparison(med_a, med_b, med_b / med_a, paired, spread, spread > noise)


# --------------------------------------------------------------------------- refs -> worktrees


@dataclasses.dataclass
class PreparedRef:
    ref: str
    sha: str
    worktree: Path  # the detached checkout, extensions built in place
    run_dir: Path  # cwd of the ref's processes: links to the ref's top-level packages
    extensions: list[str]  # built extension files, relative to the worktree


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def resolve(repo: Path, ref: str) -> str:
    return _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")


def built_extensions(worktree: Path) -> list[str]:
    """Extension files built in place (not the copies setuptools leaves under build/)."""
    return sorted(str(p.relative_to(worktree)) for p in worktree.rglob("*.so")
                  if p.relative_to(worktree).parts[0] != "build")


def prepare_ref(repo: Path, ref: str, cache_dir: Path, python: str = sys.executable) -> PreparedRef:
    """The ref checked out (detached) under ``cache_dir/<sha>``, built in place by its own
    setup.py with ``python``; reused as is when an earlier run built it.  Raises when the
    build fails or builds no extension (an A/B of a pure-Python fallback would mislead)."""
    sha = resolve(repo, ref)
    cache_dir.mkdir(parents=True, exist_ok=True)
    worktree = cache_dir / sha[:12]
    marker = cache_dir / f"{sha[:12]}.built"
    if not (marker.exists() and worktree.is_dir()):
        marker.unlink(missing_ok=True)
        if worktree.exists():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)
            shutil.rmtree(worktree, ignore_errors=True)
        _git(repo, "worktree", "prune")
        _git(repo, "worktree", "add", "--detach", str(worktree), sha)
        env = {**_clean_env(), "PLANO_FAST_REQUIRE_EXTENSION": "1"}
        build = subprocess.run([python, "setup.py", "-q", "build_ext", "--inplace"], cwd=worktree,
                               env=env, capture_output=True, text=True)
        if build.returncode != 0 or not built_extensions(worktree):
            raise RuntimeError(f"{ref} ({sha[:12]}): the in-place build failed or built no extension "
                               f"(exit {build.returncode}): {(build.stdout + build.stderr)[-3000:]}")
        marker.write_text(sha + "\n")
    return PreparedRef(ref, sha, worktree, _run_dir(worktree, cache_dir / f"{sha[:12]}.run"),
                       built_extensions(worktree))


def _run_dir(worktree: Path, run_dir: Path) -> Path:
    """A directory holding links to the worktree's top-level packages only (not its
    benchmarks or tests): the ref's processes start in it, so ``python -m plano_fast``
    imports the ref's code first whatever else is on the path."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    for entry in sorted(worktree.iterdir()):
        if entry.is_dir() and (entry / "__init__.py").exists() and entry.name not in HARNESS_PACKAGES:
            (run_dir / entry.name).symlink_to(entry)
    return run_dir


def remove_ref(repo: Path, prepared: PreparedRef) -> None:
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(prepared.worktree)],
                   capture_output=True)
    shutil.rmtree(prepared.worktree, ignore_errors=True)
    shutil.rmtree(prepared.run_dir, ignore_errors=True)
    (prepared.worktree.parent / f"{prepared.sha[:12]}.built").unlink(missing_ok=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def _clean_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- one ref's gateway


def ref_setup(prepared: PreparedRef, mode: str, workdir: Path, fake_port: int) -> dict[str, Any]:
    """``benchmarks.run``'s setup of ``mode`` (config, migrate, keys or tokens), run with the
    ref's code: a child started in the ref's run directory, the harness after it on the path."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab_refs", "_setup", mode, str(workdir), str(fake_port)],
        cwd=prepared.run_dir, env=_clean_env({"PYTHONPATH": str(ROOT)}), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"setup of {mode} for {prepared.ref} failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _setup_child(mode: str, workdir: str, fake_port: str) -> int:
    import plano_fast

    if Path(plano_fast.__file__).parent.parent.resolve() != Path.cwd().resolve():
        raise SystemExit(f"plano_fast imported from {plano_fast.__file__}, not the ref's run directory")
    bench.ROOT = Path.cwd()  # benchmarks.run migrates with ``cwd=ROOT``: the ref's code
    setup = bench.MODES[mode](Path(workdir), int(fake_port), 1, ["ab"])
    bench._migrate(setup.config_path, setup.env)  # as GatewayProcess does (config mode needs it)
    print(json.dumps({"config": str(setup.config_path), "env": setup.env,
                      "headers": setup.headers_for("ab"), "plano_fast": plano_fast.__file__}))
    return 0


class RefGateway(GatewayProcess):
    """``plano_fast serve`` (1 worker) of one ref, started in its run directory, optionally
    under a wrapper (valgrind)."""

    def __init__(self, prepared: PreparedRef, config_path: Path, env: dict[str, str], log_path: Path,
                 *, wrapper: Sequence[str] = (), ready_timeout_s: float = 60.0) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        args = [*wrapper, sys.executable, "-m", "plano_fast", "serve", "--config", str(config_path),
                "--port", "0", "--workers", "1"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=prepared.run_dir, env=_clean_env(env))
        self.port = 0
        self.admin_port = 0
        self.pids = []
        self._wait_ready(1, ready_timeout_s)
        self.url = f"http://127.0.0.1:{self.port}"


def _mapped_objects(pid: int) -> set[str]:
    """The shared objects ``pid`` maps (real paths: the kernel resolves links)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if line.rstrip().endswith(".so")}


def loaded_from(pid: int, worktree: Path) -> list[str]:
    """Shared objects of ``worktree`` mapped by ``pid``: proof the gateway runs the ref's
    compiled code (the kernel reports real paths, so links are resolved)."""
    root = str(worktree.resolve()) + os.sep
    return sorted(path[len(root):] for path in _mapped_objects(pid) if path.startswith(root))


def check_loaded(pid: int, prepared: PreparedRef) -> list[str]:
    """``loaded_from`` the ref's worktree (its run directory links there), refusing a
    gateway that runs none of it or any plano_fast extension from elsewhere: another
    ref's worktree (a cache shared between runs was seen to swap one under a run), or an
    installed copy.  Either would measure the wrong code under the ref's name."""
    root = str(prepared.worktree.resolve()) + os.sep
    foreign = sorted(path for path in _mapped_objects(pid)
                     if "/plano_fast/" in path and not path.startswith(root))
    loaded = loaded_from(pid, prepared.worktree)
    if foreign or not loaded:
        raise SystemExit(f"{prepared.ref} ({prepared.sha[:12]}): the gateway (pid {pid}, run in {prepared.run_dir}) "
                         f"loaded {', '.join(foreign) or 'no extension'} instead of {prepared.worktree}'s: refused")
    return loaded


# --------------------------------------------------------------------------- a fixed number of requests


def request_bytes(host: str, port: int, body: str, headers: Sequence[tuple[str, str]]) -> bytes:
    raw = body.encode()
    lines = [f"POST {bench.PATH} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(raw)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


class _Response:
    def __init__(self) -> None:
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


async def _drive(host: str, port: int, request: bytes, n: int, concurrency: int,
                 split_pause_s: float = 0.0, rate: float = 0.0) -> dict[int, int]:
    """``rate`` > 0 (one connection): request i is sent at i / rate s, or when the previous
    answer came if that is later."""
    statuses: dict[int, int] = {}
    head_end = request.index(b"\r\n\r\n") + 4
    loop = asyncio.get_running_loop()

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        t0 = loop.time()
        try:
            for i in range(count):
                if rate > 0 and (delay_s := t0 + i / rate - loop.time()) > 0:
                    await asyncio.sleep(delay_s)
                if split_pause_s > 0:
                    # the head, then the body in a second send, as httpx (the openai and
                    # anthropic SDKs) writes a request; the pause lets the server read
                    # the head alone first
                    writer.write(request[:head_end])
                    await writer.drain()
                    await asyncio.sleep(split_pause_s)
                    writer.write(request[head_end:])
                else:
                    writer.write(request)
                resp = _Response()
                parser = httptools.HttpResponseParser(resp)
                while not resp.done:
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise ConnectionError("the gateway closed the connection")
                    parser.feed_data(chunk)
                code = parser.get_status_code()
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            writer.close()

    conns = min(concurrency, n)
    await asyncio.gather(*(connection(n // conns + (1 if i < n % conns else 0)) for i in range(conns)))
    return statuses


def send(url: str, headers: Sequence[tuple[str, str]], n: int, concurrency: int,
         body: str = bench.BODY_JSON, split_pause_s: float = 0.0, rate: float = 0.0) -> float:
    """Send exactly ``n`` keep-alive requests over ``concurrency`` connections (``rate`` > 0:
    one connection, ``rate`` requests a second at most); returns the wall time.  Raises
    unless every response is a 2xx (a refusal would be measured instead).
    ``split_pause_s`` > 0: each request's head and body in two writes that far apart (an
    SDK client's two sends)."""
    if rate > 0 and concurrency != 1:
        raise ValueError("a paced send is one connection")
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    t0 = time.monotonic()
    statuses = asyncio.run(_drive(host, int(port), request_bytes(host, int(port), body, headers), n, concurrency,
                                  split_pause_s, rate))
    wall = time.monotonic() - t0
    bad = {k: v for k, v in statuses.items() if not 200 <= k < 300}
    if bad:
        raise RuntimeError(f"non-2xx responses from {url}: {bad}")
    return wall


# --------------------------------------------------------------------------- callgrind


def callgrind_total(path: Path) -> int:
    """The Ir total of a callgrind dump (``totals:``, else ``summary:``)."""
    found: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"(totals|summary):\s+(\d+)", line)
        if m:
            found[m.group(1)] = int(m.group(2))
    if not found:
        raise ValueError(f"no totals in {path}")
    return found.get("totals", found.get("summary", 0))


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def _dump(pid: int, out_dir: Path) -> int:
    before = set(out_dir.glob(f"callgrind.out.{pid}.*"))
    _control(pid, "--dump")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = set(out_dir.glob(f"callgrind.out.{pid}.*")) - before
        if new:
            path = max(new, key=lambda p: int(p.name.rsplit(".", 1)[1]))
            time.sleep(0.2)  # written by the time callgrind_control returns; be safe
            return callgrind_total(path)
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump for pid {pid}")


def add_split_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--split-writes-ms", type=float, default=0.0,
                    help="callgrind: send each request's head and body in two writes this many ms apart "
                    "(as the openai/anthropic SDKs' httpx does; 0: one write, as wrk)")


def add_window_options(ap: argparse.ArgumentParser, *, requests: int, concurrency: str, idle_s: float,
                       settle_s: float) -> None:
    """The options ``callgrind_side`` reads (``cg_conc`` is parsed from
    ``--callgrind-concurrency`` by the caller), with the caller's defaults."""
    ap.add_argument("--requests", type=int, default=requests, help="callgrind: requests counted per concurrency")
    ap.add_argument("--warmup", type=int, default=300, help="callgrind: requests before counting")
    ap.add_argument("--callgrind-concurrency", default=concurrency, help="callgrind: comma-separated")
    ap.add_argument("--callgrind-repeats", dest="cg_repeats", type=int, default=1)
    add_split_option(ap)
    ap.add_argument("--callgrind-rate", dest="cg_rate", type=float, default=0.0, help=CG_RATE_HELP)
    ap.add_argument("--idle-s", type=float, default=idle_s, help="callgrind: idle baseline per measurement")
    ap.add_argument("--period-s", type=float, default=10.0, help="callgrind: windows are whole multiples")
    ap.add_argument("--settle-s", type=float, default=settle_s, help="callgrind: wait for deferred work")


def whole_periods(seconds: float, period_s: float) -> float:
    """``seconds`` rounded up to a whole number of periods (at least one)."""
    return max(1, math.ceil(seconds / period_s - 1e-9)) * period_s


def _split_s(args: argparse.Namespace) -> float:
    return float(getattr(args, "split_writes_ms", 0.0)) / 1000.0


def _callgrind_window(gw: RefGateway, headers: list[tuple[str, str]], conc: int, workdir: Path,
                      args: argparse.Namespace, body: str = bench.BODY_JSON) -> dict[str, Any]:
    """One measurement: settle, idle baseline, the counted requests (``body``) and what they leave."""
    pid = gw.proc.pid
    time.sleep(args.settle_s)
    _control(pid, "--zero")
    t0 = time.monotonic()
    time.sleep(whole_periods(args.idle_s, args.period_s))
    idle_rate = _dump(pid, workdir) / (time.monotonic() - t0)
    _control(pid, "--zero")
    t0 = time.monotonic()
    wall = send(gw.url, headers, args.requests, conc, body, _split_s(args),
                getattr(args, "cg_rate", 0.0) if conc == 1 else 0.0)
    inline = _dump(pid, workdir)
    time.sleep(max(0.0, t0 + whole_periods(wall + args.settle_s, args.period_s) - time.monotonic()))
    deferred = _dump(pid, workdir)
    window = time.monotonic() - t0
    n = args.requests
    total = (inline + deferred - idle_rate * window) / n
    r: dict[str, Any] = {"requests": n, "wall_s": wall, "window_s": window, "idle_per_s": idle_rate,
                         "inline_raw": inline / n, "inline": (inline - idle_rate * wall) / n, "per_request": total}
    r["deferred"] = total - r["inline"]
    return r


def callgrind_side(prepared: PreparedRef, setup: dict[str, Any], workdir: Path, args: argparse.Namespace,
                   body: str = bench.BODY_JSON) -> dict[str, Any]:
    """Instructions per request of one ref's gateway at each concurrency (each request
    sends ``body`` with ``setup["headers"]``).

    Per concurrency: a few requests to translate the instrumented code, ``--settle-s`` for
    the deferred work they caused (usage flush, pricing: 10 s cycles by default), an idle
    baseline over ``--idle-s``; then the counted requests (dumped: ``inline``) and at
    least ``--settle-s`` more (dumped: ``deferred``, their rows written and priced).  The
    idle rate times the window is subtracted.  Both windows last whole multiples of
    ``--period-s`` (the gateway's periodic tasks: 10 s), so each holds as many firings of
    a periodic task as its length says, whatever their phase (otherwise one firing more
    or less in a window moves the result by thousands of instructions per request)."""
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
               f"--callgrind-out-file={workdir}/callgrind.out.%p"]
    gw = RefGateway(prepared, Path(setup["config"]), setup["env"], workdir / "gateway_callgrind.log",
                    wrapper=wrapper, ready_timeout_s=600)
    headers = bench.CLIENT_HEADERS + [tuple(h) for h in setup["headers"]]
    pid = gw.proc.pid
    try:
        out: dict[str, Any] = {"loaded": check_loaded(pid, prepared)}
        send(gw.url, headers, args.warmup, max(args.cg_conc), body, _split_s(args))
        _control(pid, "--instr=on")
        for conc in args.cg_conc:
            send(gw.url, headers, max(20, args.requests // 10), conc, body, _split_s(args))  # translate the instrumented code
            runs = [_callgrind_window(gw, headers, conc, workdir, args, body) for _ in range(args.cg_repeats)]
            runs.sort(key=lambda r: float(r["per_request"]))
            r = runs[(len(runs) - 1) // 2]  # the median run (the lower one of an even count)
            r["repeats"] = [x["per_request"] for x in runs]
            out[str(conc)] = r
            print(f"  {prepared.ref} c={conc}: {r['per_request']:,.0f} instructions/request = inline "
                  f"{r['inline']:,.0f} (raw {r['inline_raw']:,.0f}) + deferred {r['deferred']:,.0f}; "
                  f"idle {r['idle_per_s']:,.0f}/s; {r['requests']} requests in {r['wall_s']:.1f} s"
                  + (f"; repeats {', '.join(f'{x:,.0f}' for x in r['repeats'])}" if len(runs) > 1 else ""),
                  flush=True)
    finally:
        gw.stop()
    return out


# --------------------------------------------------------------------------- runs


def run_wrk(refs: dict[str, PreparedRef], args: argparse.Namespace, work: Path, fake_port: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode in args.mode_list:
        gateways: dict[str, RefGateway] = {}
        sides: dict[str, Side] = {}
        try:
            for name, prepared in refs.items():
                setup = ref_setup(prepared, mode, work / mode / name, fake_port)
                gw = RefGateway(prepared, Path(setup["config"]), setup["env"], work / mode / name / "gateway.log")
                gateways[name] = gw
                sides[name] = Side(gw.url, gw.proc.pid, bench.CLIENT_HEADERS + [tuple(h) for h in setup["headers"]])
                send(gw.url, sides[name].headers, 1, 1)  # answered 2xx, or stop here
                print(f"{mode} {name} = {prepared.ref} ({prepared.sha[:12]}): extensions loaded from its "
                      f"worktree: {', '.join(check_loaded(gw.proc.pid, prepared))}", flush=True)
            rounds = alternate(sides, args.rounds, args.concurrency, args.duration_s, label=f"{mode} ")
        finally:
            for gw in gateways.values():
                gw.stop()
        cpu = compare([c for c, _ in rounds["A"]], [c for c, _ in rounds["B"]], args.noise)
        rps = compare([r for _, r in rounds["A"]], [r for _, r in rounds["B"]], args.noise)
        results[mode] = {"rounds": rounds, "cpu": dataclasses.asdict(cpu), "rps": dataclasses.asdict(rps),
                         "verdict": cpu.verdict}
        print(f"{mode}: CPU µs/req A {cpu.median_a:.1f} B {cpu.median_b:.1f} B/A {cpu.ratio:.3f} "
              f"(round ratios IQR {cpu.spread:.3f}) {cpu.verdict}; req/s A {rps.median_a:.0f} "
              f"B {rps.median_b:.0f} B/A {rps.ratio:.3f}", flush=True)
    return results


def run_callgrind(refs: dict[str, PreparedRef], args: argparse.Namespace, work: Path, fake_port: int
                  ) -> dict[str, Any]:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("--callgrind needs valgrind and callgrind_control")
    results: dict[str, Any] = {}
    for mode in args.mode_list:
        results[mode] = {}
        for name, prepared in refs.items():
            wd = work / f"{mode}-callgrind" / name
            setup = ref_setup(prepared, mode, wd, fake_port)
            print(f"{mode} {name} = {prepared.ref}: under callgrind", flush=True)
            results[mode][name] = callgrind_side(prepared, setup, wd, args)
    return results


def render(refs: dict[str, PreparedRef], wrk: dict[str, Any], cg: dict[str, Any], args: argparse.Namespace,
           loadavg: float) -> str:
    lines = [f"A = {refs['A'].ref} ({refs['A'].sha[:12]})   B = {refs['B'].ref} ({refs['B'].sha[:12]})"]
    if wrk:
        lines += [f"load: {'wrk' if shutil.which('wrk') else 'benchmarks.loadgen'} -c{args.concurrency} "
                  f"{args.duration_s:g} s x {args.rounds} rounds alternated; load average "
                  f"{loadavg:.1f} at the end", "", "| mode | A CPU µs/req | B CPU µs/req | B/A | rounds' B/A (min-max, IQR) | A req/s | B req/s | "
                  "B/A | |", "|---|---|---|---|---|---|---|---|---|"]
        for mode, r in wrk.items():
            c, p = r["cpu"], r["rps"]
            lines.append(f"| {mode} | {c['median_a']:.1f} | {c['median_b']:.1f} | {c['ratio']:.3f} | "
                         f"{min(c['paired']):.3f}-{max(c['paired']):.3f}, {c['spread']:.3f} | {p['median_a']:.0f} | {p['median_b']:.0f} | {p['ratio']:.3f} | "
                         f"{r['verdict']} |")
    if cg:
        lines += ["", f"instructions per request under callgrind, {args.requests} requests per concurrency after "
                  f"{args.warmup}" + (f", concurrency 1 paced at {args.cg_rate:g} req/s" if args.cg_rate else "")
                  + f" (inline: while answering; deferred: the {args.settle_s:g} s after, usage flush and "
                  "pricing; both minus the idle rate)",
                  "| mode | concurrency | A inline | B inline | B/A | A inline+deferred | B inline+deferred | B/A |",
                  "|---|---|---|---|---|---|---|---|"]
        for mode, sides in cg.items():
            for conc in args.cg_conc:
                a, b = sides["A"][str(conc)], sides["B"][str(conc)]
                lines.append(f"| {mode} | {conc} | {a['inline']:,.0f} | {b['inline']:,.0f} | "
                             f"{b['inline'] / a['inline']:.3f} | {a['per_request']:,.0f} | {b['per_request']:,.0f} | "
                             f"{b['per_request'] / a['per_request']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_setup"]:
        return _setup_child(*argv[1:4])
    args = parse_args(argv)
    refs = {"A": prepare_ref(args.repo, args.a, args.cache_dir), "B": prepare_ref(args.repo, args.b, args.cache_dir)}
    for name, p in refs.items():
        print(f"{name} = {p.ref} ({p.sha[:12]}) in {p.worktree}: built {', '.join(p.extensions)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ab-refs-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    wrk: dict[str, Any] = {}
    cg: dict[str, Any] = {}
    try:
        if args.callgrind:
            cg = run_callgrind(refs, args, work, fake_port)
        else:
            wrk = run_wrk(refs, args, work, fake_port)
    finally:
        bench.stop_proc(fake)
        if args.clean:
            for p in refs.values():
                remove_ref(args.repo, p)
    loadavg = os.getloadavg()[0]
    print()
    print(render(refs, wrk, cg, args, loadavg))
    print(f"\nlogs: {work}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"refs": {k: dataclasses.asdict(v) for k, v in refs.items()},
                                             "wrk": wrk, "callgrind": cg, "loadavg": loadavg, "argv": argv},
                                            indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
