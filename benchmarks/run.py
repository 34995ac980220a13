"""One command for the gateway benchmark: start everything, run the scenarios, stop
everything, write the report.

    .venv/bin/python benchmarks/run.py                       # full run (~6-7 min)
    .venv/bin/python benchmarks/run.py --quick --modes config --workers 1    # CI smoke (<60 s)
    .venv/bin/python benchmarks/run.py --with-litellm --duration-s 8 --repeats 3
    # issue 27's table, everything on (what `make bench` runs; ~25 min on 2 cores):
    .venv/bin/python benchmarks/run.py --modes config:1+2,firewall:1+2,managed:1,managed-pg:1 \
        --with-portkey --with-features --c1-runs 3

Targets, all measured in the same run and interleaved (repeat r of a scenario runs every
target before repeat r+1 starts), against one fake provider process
(``benchmarks/fake_provider.py``, 64 SSE events at 20 ms by default):

* ``direct``   -- the fake provider itself: the floor;
* ``nginx``    -- nginx ``proxy_pass`` with an upstream keep-alive pool, one worker
  (skipped with a message when nginx is not installed);
* ``plano_fast <mode> wN`` -- the gateway in each ``--modes`` mode with each ``--workers``
  count.  A mode is a function that writes the config, does any setup, and says what a
  client must send (``MODES``); ``config`` is implemented, ``firewall`` and ``managed``
  are skipped ("mode not available yet") unless the gateway's config schema accepts them;
* ``litellm``  -- only with ``--with-litellm`` (``benchmarks/litellm_setup.py``);
* ``portkey``  -- only with ``--with-portkey``: the Portkey AI gateway's pinned npm package
  on the machine's Node (``benchmarks/portkey_setup.py``).

Every gateway runs with the per-route request metrics on and the JSON access log to a file
of its work dir (``observability_settings``; ``--no-access-log`` turns the log off); the
log's lines are counted against the requests served, like the usage rows.

Scenarios (``SCENARIOS``): non-streaming small body at saturation (64 connections: wrk
when installed, else ``benchmarks/loadgen.py``) and at concurrency 1 at a fixed rate
(open loop; wrk2 when installed, else loadgen); streaming (64 events x 20 ms) at
concurrency 1, 64 and 1,000 (loadgen).

``--c1-runs N``: the concurrency-1 scenario runs N times in a row per target (instead of
its interleaved repeats), and each run gets its own verdict against issue 27's added-latency
targets (p50 <= 0.15 ms and p99 <= 1 ms in config and firewall mode, managed p50 <= 0.35
ms).  The floor of every concurrency-1 run is a direct run measured right before it (the
machine's speed drifts over a run: a floor measured minutes earlier charges the drift to
the targets after it; ``c1_added``); ``--c1-unpaired``: direct's median over its own runs,
measured first, as before.

``--features LIST`` / ``--with-features``: feature-cost A/B rows (``benchmarks/features.py``:
rate limit in Redis, the DLP floor, tracing at 0% and 100%, preference routing with a
pinned session, retries configured but not triggered), each a one-worker gateway with the
feature against the same without it, interleaved, after the main scenarios: req/s ratio,
CPU µs per request, added p50/p99 at concurrency 1, and a check that the feature was on.

Measured: requests/s; latency percentiles; added latency (target minus direct, same
scenario, medians over repeats); CPU microseconds per request of the proxy's processes
(/proc/<pid>/stat utime+stime over the run, all processes of the tree, divided by the
requests the load tool completed) and of the fake provider; the CPU the load tool
(wrk/loadgen, via RUSAGE_CHILDREN) and the fake provider used over the same measurement,
so the ``--workers 2`` check can say what ceiling the machine's cores put on the run; RSS
(VmRSS, VmHWM); non-2xx
and errors; stalled streams; usage rows recorded by the gateway per scenario (one API key
per scenario, rows grouped by key hash after a graceful stop) against requests sent.
A row whose requests mostly failed (over ``T_FAILED_SHARE``: non-2xx, socket errors,
streams cut short) is reported as FAILED with that share and what one request sent again
got, not with numbers.

Output: ``benchmarks/results/<timestamp>/{results.md, results.json, latency.png,
raw/*.txt}`` and a copy of results.md as ``benchmarks/results/latest.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.nginx import NginxProxy, nginx_binary  # noqa: E402

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

MODEL = "gpt-4o-mini"
BODY_JSON = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one short sentence."}]},
    separators=(",", ":"),
)
BODY_STREAM = json.dumps(
    {
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    },
    separators=(",", ":"),
)
PATH = "/v1/chat/completions"
STREAM_EVENTS = 64
STREAM_INTERVAL_MS = 20.0

# Thresholds (issue 8)
T_RPS_RATIO = 0.5
#: issue 27's targets per mode (one worker): requests/s as a share of nginx's, added p50
T_RPS_RATIO_BY_MODE = {"firewall": 0.80, "config": 0.75, "managed": 0.60, "managed-pg": 0.60,
                       "managed-pg-unflushed": 0.60}
T_ADDED_P50_MS = 0.15
T_ADDED_P50_MS_BY_MODE = {"managed": 0.35, "managed-pg": 0.35, "managed-pg-unflushed": 0.35}
#: two workers' requests/s over one worker's, same mode (where the machine has the cores)
T_SCALE_W2 = 1.7
T_ADDED_P99_MS = 1.0
T_RSS_MB = 200.0
# RSS after the last round of 1,000 streams <= 110% of after the round before it.  Three
# rounds, because the first one sets a high-water mark that the second can still raise a
# little (allocator arenas, SQLite caches: measured 82 -> 90 -> 90 -> 90 -> 91 MiB over
# five rounds); a leak grows round after round, which the last two rounds show.
T_RSS_FLAT = 0.10
RSS_FLAT_CHECK = "RSS flat after load (last round vs the one before)"
#: a row whose requests failed (non-2xx, socket errors, streams cut short) more often than
#: this measured error responses, not the target: it says FAILED with the share, no numbers
T_FAILED_SHARE = 0.5


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- /proc


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (via /proc/<pid>/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if not Path(f"/proc/{p}").exists():
            continue
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        except OSError:
            pass
    return sorted(set(out))


def cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def cpu_steal_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of the whole machine since boot (/proc/stat): time this
    virtual machine was runnable but the host ran something else.  Reported per
    measurement, since it moves the numbers and no process of ours can see it otherwise."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0, 0
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def cpu_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine since boot (/proc/stat: all but idle
    and iowait): with our processes' own CPU, it shows what else ran during a measurement
    (other users of a shared machine), which the ``--workers 2`` ceiling must leave out."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0, 0
    ticks = [int(f) for f in fields[:8]]
    total = sum(ticks)
    return total - ticks[3] - (ticks[4] if len(ticks) > 4 else 0), total


def wait_quiet(pids: list[int], *, window_s: float = 0.25, max_cpu_frac: float = 0.05,
               max_wait_s: float = 15.0) -> float:
    """Wait until ``pids`` together use under ``max_cpu_frac`` of a core over a window.

    Targets share the machine: a target still working off a backlog after its own
    measurement (LiteLLM at a rate it cannot keep up with, a gateway flushing usage)
    would steal CPU from the next one.  Returns the seconds waited (reported in raw/).
    """
    start = time.monotonic()
    while True:
        c0 = cpu_s(pids)
        time.sleep(window_s)
        if (cpu_s(pids) - c0) / window_s < max_cpu_frac or time.monotonic() - start > max_wait_s:
            return time.monotonic() - start


def rss_kib(pids: list[int]) -> dict[str, float]:
    """Sum and max over processes of VmRSS and VmHWM, in MiB."""
    rss: list[int] = []
    hwm: list[int] = []
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        vals = {}
        for line in status.splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                vals[k] = int(v.split()[0])
        if vals:
            rss.append(vals.get("VmRSS", 0))
            hwm.append(vals.get("VmHWM", 0))
    return {
        "rss_mb": sum(rss) / 1024, "rss_max_mb": max(rss, default=0) / 1024,
        "hwm_mb": sum(hwm) / 1024, "hwm_max_mb": max(hwm, default=0) / 1024,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- machine


_NOISE_PROBE = """
import asyncio, time, uvloop
async def main():
    loop = asyncio.get_running_loop()
    lags = []
    due = [time.perf_counter() + 0.001]
    def tick():
        now = time.perf_counter()
        lags.append(now - due[0])
        due[0] = now + 0.001
        loop.call_later(0.001, tick)
    loop.call_later(0.001, tick)
    await asyncio.sleep(%(seconds)s)
    over = [x for x in lags if x > 0.002]  # libuv timers have 1 ms granularity
    print(len(over), max(lags) * 1e3)
uvloop.run(main())
"""


def scheduler_noise(seconds: float = 3.0) -> str:
    """How often this machine stalls a process that does nothing but keep a 1 ms timer.

    On a shared VM the hypervisor deschedules vCPUs now and then; a stall of a few ms
    lands in every target's tail latency alike and bounds what a p99 can show here.
    """
    try:
        r = subprocess.run([PY, "-c", _NOISE_PROBE % {"seconds": seconds}], capture_output=True,
                           text=True, timeout=seconds + 30)
        count, worst = r.stdout.split()
        return f"{count} stalls > 2 ms in {seconds:g} s of an idle 1 ms timer, longest {float(worst):.1f} ms"
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return f"not measured ({exc})"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        mem = f"{mem_kib / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass

    def git(*args: str) -> str:
        try:
            r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return r.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    nginx = nginx_binary()
    nginx_v = ""
    if nginx:
        r = subprocess.run([nginx, "-v"], capture_output=True, text=True)
        nginx_v = (r.stderr or r.stdout).strip().replace("nginx version: ", "")
    wrk = shutil.which("wrk")
    wrk_v = ""
    if wrk:
        r = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        wrk_v = (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "wrk"
        wrk_v = wrk_v.split(" Copyright")[0]
    try:
        from plano_fast import wire

        scanner = wire.IMPLEMENTATION
    except Exception as exc:  # pragma: no cover
        scanner = f"? ({exc})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gateway_commit": commit + (" (uncommitted changes)" if dirty else ""),
        "scanner": scanner,
        "nginx": nginx_v or "not installed",
        "wrk": wrk_v or "not installed",
        "wrk2": "installed" if shutil.which("wrk2") else "not installed",
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "scheduler_noise": scheduler_noise(),
    }


# --------------------------------------------------------------------------- targets and modes


@dataclasses.dataclass
class Target:
    name: str
    kind: str  # direct | nginx | plano_fast | litellm | portkey
    url: str
    root_pid: Optional[int]
    headers_for: Callable[[str], list[tuple[str, str]]]
    stop: Callable[[], None]
    usage_group_for: Optional[Callable[[str], tuple[str, str]]] = None  # (column, value) of a scenario's rows
    sqlite_path: Optional[Path] = None
    database_url: Optional[str] = None  # PostgreSQL-backed rows (managed-pg)
    log_path: Optional[Path] = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    access_log_path: Optional[Path] = None  # the gateway's JSON access log (one line per request)
    body_json: Optional[str] = None  # the non-streaming request's body, when not BODY_JSON

    def pids(self) -> list[int]:
        return proc_tree(self.root_pid) if self.root_pid else []


@dataclasses.dataclass
class ModeSetup:
    """What a mode gives the harness: the config to serve and what a client must send.

    ``usage_group_for(scenario)`` names the usage_log column and value that identify the
    scenario's rows (one key or token per scenario), e.g. ``("key_hash", "ab12...")``.
    """

    config_path: Path
    headers_for: Callable[[str], list[tuple[str, str]]]
    usage_group_for: Callable[[str], tuple[str, str]]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    post_start: Optional[Callable[[Any], None]] = None  # e.g. register keys via the admin API
    database_url: Optional[str] = None  # the rows are in this PostgreSQL database, not SQLite


class ModeUnavailable(Exception):
    """The gateway (or this harness) cannot run this mode; str() says why."""


def write_gateway_config(path: Path, fake_port: int, settings: dict[str, Any]) -> Path:
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in settings.items())
    path.write_text(
        f"""\
# written by benchmarks/run.py
version: v0.4.0
listeners:
  - type: model
    name: bench_listener
    address: 127.0.0.1
    port: 12000
    timeout: 120s
model_providers:
  - model: openai/{MODEL}
    base_url: http://127.0.0.1:{fake_port}
    access_key: sk-bench-upstream-key
    default: true
plano_fast:
{extra}"""
    )
    return path


def _base_settings(workdir: Path) -> dict[str, Any]:
    return {
        "sqlite_path": str(workdir / "usage.db"),
        "usage_journal_path": str(workdir / "usage.journal"),
        # The production defaults (10 s cycles): rows are counted after a graceful stop,
        # which drains the usage queue, so the check does not need short intervals.
    }


#: ``--no-access-log`` turns it off; request metrics stay on (the gateway's default)
ACCESS_LOG = True


def observability_settings(workdir: Path) -> dict[str, Any]:
    """What every gateway of the harness runs with besides its mode: the per-route request
    metrics of /metrics and the JSON access log to a file of its work dir (issue 27: the
    numbers with everything on).  The log's lines are counted against requests served."""
    settings: dict[str, Any] = {"request_metrics": True}
    if ACCESS_LOG:
        settings["access_log"] = str(workdir / "access.jsonl")
    return settings


def append_settings(config_path: Path, settings: dict[str, Any]) -> None:
    """Add ``settings`` to the config's ``plano_fast:`` block (``write_gateway_config``
    writes it last)."""
    with open(config_path, "a") as fh:
        fh.write("".join(f"  {k}: {json.dumps(v)}\n" for k, v in settings.items()))


def _scenario_key(mode: str, scenario: str) -> str:
    return f"sk-bench-{mode}-{scenario}-0123456789abcdef"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _migrate(config_path: Path, env: Optional[dict[str, str]] = None) -> None:
    subprocess.run([PY, "-m", "plano_fast", "migrate", "--config", str(config_path)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, **(env or {})})


def _store_call(sqlite_path: Path, fn: Callable[[Any], Any], database_url: Optional[str] = None) -> Any:
    import asyncio

    from plano_fast.store import open_store

    async def go() -> Any:
        async with open_store(database_url, str(sqlite_path)) as store:
            return await fn(store)

    return asyncio.run(go())


#: the PostgreSQL server for ``managed-pg`` (``--pg-dsn``; the one the tests use)
PG_DSN = os.environ.get("PLANO_FAST_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _fresh_pg_database(base_dsn: str) -> str:
    """A new, empty database on ``base_dsn``'s server for one gateway's rows."""
    import asyncio
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    name = f"plano_bench_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        con = await asyncpg.connect(base_dsn, timeout=10)
        try:
            await con.execute(f'CREATE DATABASE "{name}"')
        finally:
            await con.close()

    try:
        asyncio.run(create())
    except (OSError, asyncpg.PostgresError) as exc:
        raise ModeUnavailable(f"PostgreSQL at {base_dsn} not usable ({exc})") from None
    return urlunsplit(urlsplit(base_dsn)._replace(path=f"/{name}"))


def _drop_pg_database(database_url: str) -> None:
    import asyncio
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")

    async def drop() -> None:
        con = await asyncpg.connect(urlunsplit(parts._replace(path=urlsplit(PG_DSN).path)), timeout=10)
        try:
            await con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await con.close()

    asyncio.run(drop())


def mode_config(workdir: Path, fake_port: int, workers: int, scenarios: list[str]) -> ModeSetup:
    """Config mode: the gateway holds the provider key; callers are told apart by the
    hash of the key they send (one key per scenario, so usage rows are counted per
    scenario)."""
    cfg = write_gateway_config(workdir / "plano_config.yaml", fake_port, _base_settings(workdir))
    return ModeSetup(
        config_path=cfg,
        headers_for=lambda s: [("authorization", f"Bearer {_scenario_key('config', s)}")],
        usage_group_for=lambda s: ("key_hash", _sha(_scenario_key("config", s))),
    )


def mode_firewall(workdir: Path, fake_port: int, workers: int, scenarios: list[str]) -> ModeSetup:
    """Firewall mode: clients send their own provider key, registered beforehand (here
    straight in the store, before the gateway starts, so every worker's registry loads
    them at start-up); one key per scenario."""
    ok, why = gateway_supports_mode("firewall")
    if not ok:
        raise ModeUnavailable(f"mode not available yet ({why})")
    settings = {**_base_settings(workdir), "mode": "firewall"}
    cfg = write_gateway_config(workdir / "plano_config.yaml", fake_port, settings)
    _migrate(cfg)
    fake_url = f"http://127.0.0.1:{fake_port}"

    async def register(store: Any) -> None:
        for s in scenarios:
            project = await store.create_project(f"bench-{s}")
            await store.register_api_key(_sha(_scenario_key("firewall", s)), project.id, "openai", fake_url,
                                         f"bench {s}")

    _store_call(workdir / "usage.db", register)
    return ModeSetup(
        config_path=cfg,
        headers_for=lambda s: [("authorization", f"Bearer {_scenario_key('firewall', s)}")],
        usage_group_for=lambda s: ("key_hash", _sha(_scenario_key("firewall", s))),
    )


def mode_managed(workdir: Path, fake_port: int, workers: int, scenarios: list[str]) -> ModeSetup:
    """Managed mode: one project with an encrypted server-side OpenAI key and a pipe to
    the configured provider; one ``xproxy_`` token per scenario (rows grouped by token)."""
    return _managed(workdir, fake_port, scenarios, None)


def mode_managed_pg(workdir: Path, fake_port: int, workers: int, scenarios: list[str]) -> ModeSetup:
    """Managed mode with its budgets, reservations and rows in PostgreSQL (a fresh
    database on ``PG_DSN``'s server, dropped after its rows are counted)."""
    return _managed(workdir, fake_port, scenarios, _fresh_pg_database(PG_DSN))


def mode_managed_pg_hard(workdir: Path, fake_port: int, workers: int, scenarios: list[str]) -> ModeSetup:
    """``managed-pg`` with hard limits (a monthly one on the project, a daily one on the
    user, never reached): every request reserves its maximum cost before it is forwarded
    and settles after, the path a hard budget costs (not one of the issue's targets)."""
    return _managed(workdir, fake_port, scenarios, _fresh_pg_database(PG_DSN), hard_limit_nano_usd=10**17)


def mode_managed_pg_unflushed(workdir: Path, fake_port: int, workers: int, scenarios: list[str]) -> ModeSetup:
    """``managed-pg`` with ``usage_synchronous_commit: false``: usage writes and settles
    commit without waiting for their WAL flush (README, "Durability of usage writes")."""
    return _managed(workdir, fake_port, scenarios, _fresh_pg_database(PG_DSN),
                    extra_settings={"usage_synchronous_commit": False})


def _managed(workdir: Path, fake_port: int, scenarios: list[str], database_url: Optional[str],
             hard_limit_nano_usd: Optional[int] = None, extra_settings: Optional[dict[str, Any]] = None) -> ModeSetup:
    ok, why = gateway_supports_mode("managed")
    if not ok:
        raise ModeUnavailable(f"mode not available yet ({why})")
    from plano_fast.managed.crypto import KeyCipher, generate_master_key, parse_master_key
    from plano_fast.managed.state import new_token, token_hash
    from plano_fast.store import PipeTarget

    master = generate_master_key()
    env = {"PLANO_FAST_MASTER_KEY": master}
    settings = {**_base_settings(workdir), "managed": True, "managed_reload_s": 5}
    if database_url is not None:
        settings["database_url"] = database_url
    settings.update(extra_settings or {})
    cfg = write_gateway_config(workdir / "plano_config.yaml", fake_port, settings)
    _migrate(cfg, env)
    cipher = KeyCipher(parse_master_key(master))
    tokens: dict[str, tuple[str, str]] = {}

    async def provision(store: Any) -> None:
        project = await store.create_project("bench-managed")
        user = await store.create_user("bench")
        ciphertext, nonce, key_id = cipher.encrypt("sk-bench-managed-server-key", "openai")
        pkey = await store.create_provider_key("openai", ciphertext, nonce, key_id, project_id=project.id)
        pipe = await store.create_pipe(project.id, "default",
                                       [PipeTarget(f"openai/{MODEL}", None, f"{MODEL}*", pkey.id)])
        if hard_limit_nano_usd is not None:
            await store.set_spending_limit("project", project.id, "monthly", hard_limit_nano_usd, "hard")
            await store.set_spending_limit("user", user.id, "daily", hard_limit_nano_usd, "hard")
        for s in scenarios:
            token = new_token()
            row = await store.create_proxy_token(token_hash(token), project.id, user_id=user.id, pipe_id=pipe.id)
            tokens[s] = (token, row.id)

    _store_call(workdir / "usage.db", provision, database_url)
    return ModeSetup(
        config_path=cfg,
        headers_for=lambda s: [("authorization", f"Bearer {tokens[s][0]}")],
        usage_group_for=lambda s: ("token_id", tokens[s][1]),
        env=env,
        database_url=database_url,
    )


def gateway_supports_mode(name: str) -> tuple[bool, str]:
    """Capability check against the gateway's config schema: ``config``/``firewall`` are
    values of ``plano_fast.mode``; ``managed`` is the ``plano_fast.managed`` switch."""
    try:
        from pydantic import ValidationError

        from plano_fast.config import GatewaySettings
    except Exception as exc:  # pragma: no cover
        return False, f"cannot import plano_fast.config ({exc})"
    fields = GatewaySettings.model_fields
    if name in ("managed", "managed-pg", "managed-pg-hard", "managed-pg-unflushed"):
        if "managed" not in fields:
            return False, "plano_fast has no 'managed' setting"
        try:
            import plano_fast.managed.crypto  # noqa: F401
            import plano_fast.managed.state  # noqa: F401
        except ImportError as exc:
            return False, f"plano_fast.managed is incomplete ({exc})"
        return True, ""
    if "mode" not in fields:
        return False, "plano_fast has no 'mode' setting"
    try:
        GatewaySettings.model_validate({"mode": name})
    except ValidationError:
        return False, f"the config schema rejects 'mode: {name}'"
    return True, ""


MODES: dict[str, Callable[[Path, int, int, list[str]], ModeSetup]] = {
    "config": mode_config,
    "firewall": mode_firewall,
    "managed": mode_managed,
    "managed-pg": mode_managed_pg,
    "managed-pg-hard": mode_managed_pg_hard,
    "managed-pg-unflushed": mode_managed_pg_unflushed,
}


def start_fake(workers: int, log_path: Path, provider_headers: bool = True) -> tuple[subprocess.Popen[bytes], int]:
    args = [PY, "-m", "benchmarks.fake_provider", "--port", "0", "--no-record",
            "--events", str(STREAM_EVENTS), "--interval-ms", str(STREAM_INTERVAL_MS),
            "--workers", str(workers)]
    if provider_headers:
        args.append("--provider-headers")
    logf = open(log_path, "ab")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=logf)
    return proc, listening_port(proc, 20, log_path, "fake provider")


def listening_port(proc: subprocess.Popen[bytes], timeout_s: float, log_path: Path, what: str) -> int:
    """The port of a started process's ``listening on host:port`` line (the fake provider's
    and the gateway's); kills it and raises with its log's tail when it never comes."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if "listening on" in line:
            return int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{what} did not start: {log_path.read_text(errors='replace')[-2000:]}")


def stop_proc(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_gateway(mode: str, workers: int, workdir: Path, fake_port: int, scenarios: list[str]) -> Target:
    from tests.gateway_proc import GatewayProcess

    setup = MODES[mode](workdir, fake_port, workers, scenarios)
    obs = observability_settings(workdir)
    append_settings(setup.config_path, obs)
    gw = GatewayProcess(setup.config_path, workers=workers, log_path=workdir / "gateway.log", env=setup.env)
    if setup.post_start is not None:
        setup.post_start(gw)
    settings_path = workdir / "usage.db"
    info: dict[str, Any] = {"mode": mode, "workers": workers, "worker_pids": gw.pids,
                            "config": str(setup.config_path)}

    def stop() -> None:
        info["alive_at_stop"] = gw.proc.poll() is None
        info["exit_code"] = gw.stop()

    return Target(
        name=f"plano_fast {mode} w{workers}",
        kind="plano_fast",
        url=gw.url,
        root_pid=gw.proc.pid,
        headers_for=setup.headers_for,
        stop=stop,
        usage_group_for=setup.usage_group_for,
        sqlite_path=settings_path,
        database_url=setup.database_url,
        log_path=workdir / "gateway.log",
        info=info,
        access_log_path=Path(obs["access_log"]) if "access_log" in obs else None,
    )


# --------------------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Scenario:
    name: str
    title: str
    stream: bool
    concurrency: int
    rate: Optional[float] = None  # open loop when set
    duration_s: float = 5.0
    warmup_s: float = 1.0
    repeats: int = 1
    saturation: bool = False  # wrk when installed
    rounds_plano: int = 1  # rounds for the gateway (RSS flat after load)
    consecutive: int = 1  # runs in a row per target and repeat (--c1-runs), each with its own verdict
    #: a direct run right before each run of every other target, its floor (c1_added)
    paired_baseline: bool = False
    timeout_s: float = 30.0
    settle_s: float = 2.0  # wait after the run before reading after-load RSS


def build_scenarios(args: argparse.Namespace) -> list[Scenario]:
    """The scenario list.  Full run: ``--duration-s`` (5 s) per measurement, non-streaming
    scenarios ``--repeats`` (3) times, streaming ones once (three rounds of 1,000 streams
    for the gateway, to see whether RSS is flat after load).  ``--quick``: ~1 s each."""
    d = args.duration_s
    q = args.quick
    reps = args.repeats
    w = 0.2 if q else 1.0  # warm-up (wrk: whole seconds; skipped when < 0.5 s)
    ds = 0.5 if q else d  # streaming: streams are *started* during ds, then drained
    return [
        Scenario("ns_sat", "non-streaming, saturation (64 connections, closed loop)", False, 64,
                 duration_s=d, warmup_s=w, repeats=reps, saturation=True, timeout_s=10),
        Scenario("ns_c1", f"non-streaming, concurrency 1 at {args.rate:g} req/s (open loop)"
                 + (f", {args.c1_runs} consecutive runs per target" if args.c1_runs > 1 else ""), False, 1,
                 rate=args.rate, duration_s=d, warmup_s=w, repeats=1 if args.c1_runs > 1 else reps, timeout_s=10,
                 consecutive=args.c1_runs, paired_baseline=not args.c1_unpaired),
        Scenario("st_c1", f"streaming {STREAM_EVENTS} events x {STREAM_INTERVAL_MS:g} ms, concurrency 1",
                 True, 1, duration_s=ds, warmup_s=0.0, repeats=1),
        Scenario("st_c64", f"streaming {STREAM_EVENTS} x {STREAM_INTERVAL_MS:g} ms, concurrency 64", True, 64,
                 duration_s=ds, warmup_s=0.0, repeats=1),
        Scenario("st_c1000", f"streaming {STREAM_EVENTS} x {STREAM_INTERVAL_MS:g} ms, concurrency 1,000",
                 True, 1000, duration_s=ds, warmup_s=0.0, repeats=1, rounds_plano=3, timeout_s=120,
                 settle_s=1.0 if q else 3.0),
    ]


# --------------------------------------------------------------------------- load tools


# What the openai Python SDK (3.60) sends besides host, content-length, content-type and
# authorization, recorded against the fake provider.  A benchmark client that sends only
# those four flatters a proxy, which pays per request header.  --minimal-headers drops them.
SDK_HEADERS: list[tuple[str, str]] = [
    ("accept-encoding", "gzip, deflate"),
    ("connection", "keep-alive"),
    ("accept", "application/json"),
    ("user-agent", "OpenAI/Python 3.60.0"),
    ("x-stainless-lang", "python"),
    ("x-stainless-package-version", "3.60.0"),
    ("x-stainless-os", "Linux"),
    ("x-stainless-arch", "x64"),
    ("x-stainless-runtime", "CPython"),
    ("x-stainless-runtime-version", "3.11.7"),
    ("x-stainless-async", "false"),
    ("x-stainless-retry-count", "0"),
    ("x-stainless-read-timeout", "600"),
]
CLIENT_HEADERS: list[tuple[str, str]] = list(SDK_HEADERS)


def _wrk_script(path: Path, body: str, headers: list[tuple[str, str]]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers]
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _dur_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    r: dict[str, Any] = {"latency_ms": {}}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        r["completed"] = int(m.group(1))
        r["elapsed_s"] = _dur_ms(m.group(2) + m.group(3)) / 1000
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups())} if m else {}
    r["errors"] = {k: v for k, v in errs.items() if v}
    r["error_count"] = sum(errs.values())
    r["timeouts"] = errs.get("timeout", 0)
    # wrk: "     50%    1.43ms"; wrk2: " 50.000%    1.23ms"
    for pm in re.finditer(r"^\s+([\d.]+)%\s+([\d.]+(?:us|ms|s|m))\s*$", out, re.M):
        p = float(pm.group(1))
        key = "p" + ("%g" % p).replace(".", "_")
        r["latency_ms"].setdefault(key, _dur_ms(pm.group(2)))
    return r


def run_tool(target: Target, sc: Scenario, raw_dir: Path, tag: str, wrk: Optional[str],
             wrk2: Optional[str]) -> dict[str, Any]:
    """Run one measurement; returns the parsed result (+ 'tool', 'raw', 'completed_total')."""
    headers = CLIENT_HEADERS + target.headers_for(sc.name)
    url = target.url + PATH
    body = BODY_STREAM if sc.stream else (target.body_json or BODY_JSON)
    raw = raw_dir / f"{sc.name}__{target.name.replace(' ', '_')}__{tag}.txt"
    use_wrk = wrk if (sc.saturation and not sc.stream) else (wrk2 if (sc.rate and not sc.stream) else None)
    if use_wrk:
        script = _wrk_script(raw_dir / f".{sc.name}_{target.name.replace(' ', '_')}.lua", body, headers)
        base = [use_wrk, "-t1", f"-c{sc.concurrency}", "--latency", "-s", str(script)]
        if sc.rate:
            base += [f"-R{int(sc.rate)}"]
        base += [f"--timeout={int(sc.timeout_s)}s"]
        text = ""
        completed_total = 0
        in_flight_bound = 0
        if sc.warmup_s >= 0.5:
            wcmd = base + [f"-d{max(1, round(sc.warmup_s))}s", url]
            w = subprocess.run(wcmd, capture_output=True, text=True)
            text += "$ " + shlex.join(wcmd) + "\n" + w.stdout + w.stderr + "\n"
            completed_total += parse_wrk(w.stdout).get("completed", 0)
            in_flight_bound += sc.concurrency
        cmd = base + [f"-d{max(1, round(sc.duration_s))}s", url]
        p = subprocess.run(cmd, capture_output=True, text=True)
        text += "$ " + shlex.join(cmd) + "\n" + p.stdout + p.stderr
        raw.write_text(text)
        r = parse_wrk(p.stdout)
        completed_total += r.get("completed", 0)
        in_flight_bound += sc.concurrency
        r.update({
            "tool": Path(use_wrk).name, "raw": raw.name, "completed_total": completed_total,
            "completed_2xx_total": completed_total - r["non2xx"],
            # wrk closes its connections at the end: up to -c requests per invocation may
            # have reached the server without their response being counted
            "sent_total_max": completed_total + in_flight_bound + r["error_count"],
            "sent_total_min": completed_total,
            "requests": r.get("completed", 0),
        })
        return r
    cmd = [PY, "-m", "benchmarks.loadgen", "--url", url, "--body", body,
           "-c", str(sc.concurrency), "-d", str(sc.duration_s), "--warmup-s", str(sc.warmup_s),
           "--timeout-s", str(sc.timeout_s), "--json"]
    if sc.rate:
        cmd += ["--rate", str(sc.rate)]
    if sc.stream:
        cmd += ["--stream"]
    for k, v in headers:
        cmd += ["-H", f"{k}: {v}"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    raw.write_text("$ " + shlex.join(cmd) + "\n" + p.stdout + p.stderr)
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"tool": "python-loadgen", "raw": raw.name, "failed": f"loadgen failed: {p.stderr[-500:]}",
                "rps": 0.0, "requests": 0, "latency_ms": {}, "non2xx": 0, "error_count": 1,
                "completed_total": 0, "completed_2xx_total": 0, "sent_total_min": 0, "sent_total_max": 0}
    r.update({
        "tool": "python-loadgen", "raw": raw.name, "completed_total": r["completed"],
        "completed_2xx_total": r["completed_2xx"],
        "sent_total_min": r["completed"], "sent_total_max": r["sent"],
        "loadgen_cpu_frac": r["loadgen_cpu_s"] / max(1e-9, r["wall_s"]),
    })
    return dict(r)


def _children_cpu_s() -> float:
    """utime+stime of this process's terminated, waited-for children (wrk, loadgen)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(target: Target, fake_pids: list[int], sc: Scenario, raw_dir: Path, tag: str,
            wrk: Optional[str], wrk2: Optional[str]) -> dict[str, Any]:
    pids = target.pids()
    if target.root_pid is not None and not pids:
        return {"tool": "-", "failed": "target process is not running", "rps": 0.0, "requests": 0,
                "latency_ms": {}, "non2xx": 0, "error_count": 0, "completed_total": 0,
                "completed_2xx_total": 0, "sent_total_min": 0, "sent_total_max": 0, "dead": True}
    mem_before = rss_kib(pids)
    cpu0 = cpu_s(pids)
    fcpu0 = cpu_s(fake_pids)
    steal0, total0 = cpu_steal_ticks()
    load0 = _children_cpu_s()
    busy0, btotal0 = cpu_busy_ticks()
    t0 = time.monotonic()
    r = run_tool(target, sc, raw_dir, tag, wrk, wrk2)
    wall = time.monotonic() - t0
    load_cpu = _children_cpu_s() - load0  # the load tool: our only child that ran and was waited for
    busy1, btotal1 = cpu_busy_ticks()
    # cores busy machine-wide (every process, ours and others'), over the measurement
    r["machine_busy_cores"] = (busy1 - busy0) / (btotal1 - btotal0) * (os.cpu_count() or 1) \
        if btotal1 > btotal0 else None
    steal1, total1 = cpu_steal_ticks()
    r["steal_frac"] = (steal1 - steal0) / (total1 - total0) if total1 > total0 else None
    pids_after = target.pids()
    cpu1 = cpu_s(sorted(set(pids) | set(pids_after)))
    fcpu1 = cpu_s(fake_pids)
    n = max(1, r.get("completed_total", 0))
    if target.kind != "direct":
        r["proxy_cpu_s"] = cpu1 - cpu0
        # /proc counts CPU in clock ticks (10 ms): below ~10 ticks per run the
        # per-request figure is mostly quantization, so it is not reported
        r["proxy_cpu_us_per_req"] = (cpu1 - cpu0) / n * 1e6 if cpu1 - cpu0 >= 10 / CLK_TCK else None
        r["proxy_cpu_frac"] = (cpu1 - cpu0) / wall
    r["fake_cpu_us_per_req"] = (fcpu1 - fcpu0) / n * 1e6
    r["fake_cpu_frac"] = (fcpu1 - fcpu0) / wall
    r["load_cpu_us_per_req"] = load_cpu / n * 1e6
    r["load_cpu_frac"] = load_cpu / wall
    r["wall_s"] = wall
    if target.kind != "direct":
        r["mem_before"] = mem_before
        if sc.settle_s and sc.concurrency >= 1000:
            time.sleep(sc.settle_s)
        pids_after = target.pids()
        if pids_after:
            r["mem_peak_end"] = rss_kib(pids_after)
            r["mem_after"] = rss_kib(pids_after)
        else:
            r["dead"] = True
            r.setdefault("failed", "target process died during the run")
    return r


# --------------------------------------------------------------------------- summaries


def _med(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and v == v]
    return statistics.median(vals) if vals else None


def paired_direct(r: dict[str, Any]) -> Optional[dict[str, Any]]:
    """What a target's run keeps of the direct run measured right before it (its floor):
    None when that run failed (the target's run then falls back to direct's medians)."""
    lat = r.get("latency_ms", {})
    if run_failed(r) or lat.get("p50") is None or lat.get("p99") is None:
        return None
    return {"p50": lat["p50"], "p99": lat["p99"], "fake_cpu_us_per_req": r.get("fake_cpu_us_per_req")}


#: a floor run whose p50 is over this many times direct's own median was queued by the
#: machine itself (a burst of another process: 3.2 ms against 0.08 ms seen), not slowed by
#: a drift (the twelfth run's was 1.5x): such a run is judged against direct's medians
FLOOR_DISTURBED_X = 2.0


def c1_floor(run: dict[str, Any], direct: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The paired floor of a concurrency-1 run (``paired_direct``) when there is one and
    it was not disturbed (``FLOOR_DISTURBED_X``), else None: direct's medians apply.

    A floor above direct's median p50 is credited only as far as the machine measurably
    slowed: up to direct's median times the fake provider's CPU a request in the floor run
    over its median in direct's runs (the same work each time, so the machine's speed).  A
    floor run slower for any other reason (a wake-up that lingered) would otherwise hide
    up to its excess of the target's added latency; without the CPU figures, no credit."""
    floor = run.get("paired_direct")
    if not floor:
        return None
    base = direct.get("lat_p50")
    if base is None:
        return floor
    if floor["p50"] > FLOOR_DISTURBED_X * base:
        return None
    if floor["p50"] > base:
        cpu, base_cpu = floor.get("fake_cpu_us_per_req"), direct.get("fake_cpu_us_per_req")
        slowdown = cpu / base_cpu if cpu and base_cpu else 1.0
        floor = {**floor, "p50": min(floor["p50"], base * max(1.0, slowdown))}
    return floor


def c1_added(run: dict[str, Any], direct: dict[str, Any]) -> tuple[Optional[float], Optional[float]]:
    """A concurrency-1 run's added p50 and p99 (ms): over the direct run measured right
    before it when there is one and it was not disturbed (``c1_floor``), else over
    direct's medians.  A disturbed floor never makes a run pass that its medians fail.

    Why paired: the machine's speed drifts during a run (a guest on a shared host; the
    fake provider's CPU per request -- the same work for every target -- went 87-100 µs in
    direct's runs to 140-160 µs in firewall's in the twelfth run, 20261206-133755), and a
    floor measured minutes earlier charges that drift to whichever target runs after it:
    there firewall's "+0.233 ms" was config's added latency on a 1.5x slower machine
    (benchmarks/results/fwc1-l-20261206.md)."""
    lat = run.get("latency_ms", {})
    floor = c1_floor(run, direct) or {"p50": direct.get("lat_p50"), "p99": direct.get("lat_p99")}
    if floor.get("p99") is not None and direct.get("lat_p99") is not None:
        # The p99 floor is never above direct's own median: one run's tail is that run's
        # hiccups (a higher floor would hide the target's), and a drift of the p99 is small
        # beside its 1 ms target.
        floor = {**floor, "p99": min(floor["p99"], direct["lat_p99"])}
    a50 = None if lat.get("p50") is None or floor.get("p50") is None else lat["p50"] - floor["p50"]
    a99 = None if lat.get("p99") is None or floor.get("p99") is None else lat["p99"] - floor["p99"]
    return a50, a99


def add_paired_c1(summary: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> None:
    """A scenario's summary rows get the medians over each target's runs of ``c1_added``
    (``added_p50_paired``, ``added_p99_paired``) and of their floors' p50 where some run
    of the target had its own direct run; direct's row (its own runs) is the fallback."""
    direct = summary.get("direct", {})
    if direct.get("row_failed"):
        direct = {}
    for name, rs in runs.items():
        if name == "direct" or name not in summary or not any(r.get("paired_direct") for r in rs):
            continue
        added = [c1_added(r, direct) for r in rs]
        row = summary[name]
        row["added_p50_paired"] = _med([a for a, _ in added])
        row["added_p99_paired"] = _med([b for _, b in added])
        row["paired_direct_p50"] = _med([r["paired_direct"]["p50"] for r in rs if r.get("paired_direct")])
        row["floors_disturbed"] = sum(1 for r in rs if r.get("paired_direct") and c1_floor(r, direct) is None)


def failed_counts(r: dict[str, Any]) -> tuple[int, int]:
    """(failed, attempted) requests of one run: responses with a non-2xx status, requests
    that ended in a socket error or timeout, and 2xx streams that did not end (loadgen's
    ``incomplete_streams``), out of every response plus every error."""
    errors = r.get("error_count", 0)
    return (r.get("non2xx", 0) + errors + r.get("incomplete_streams", 0),
            r.get("completed", r.get("completed_total", 0)) + errors)


def run_failed(r: dict[str, Any]) -> bool:
    """Whether one run measured mostly failures (or its load tool failed)."""
    failed, attempted = failed_counts(r)
    return bool(r.get("failed")) or (attempted > 0 and failed / attempted > T_FAILED_SHARE)


def failed_row_text(s: dict[str, Any]) -> str:
    """What a FAILED row (``summarize_runs``' ``row_failed``) says instead of its numbers."""
    what = "non-2xx, errors or incomplete streams" if "streams" in s else "non-2xx or errors"
    if s.get("attempted"):
        text = (f"FAILED: {s['failed_requests']:,} of {s['attempted']:,} requests "
                f"({s['failed_share']:.0%}) {what}; no numbers reported")
    else:
        text = "FAILED: no request completed; no numbers reported"
    if s.get("statuses"):
        text += " (statuses " + ", ".join(f"{k}: {v:,}" for k, v in s["statuses"].items()) + ")"
    if s.get("error_sample"):
        text += f"; a request sent again got {s['error_sample']}"
    return text


def error_sample(target: Target, sc: Scenario, timeout_s: float = 10.0) -> str:
    """One request of scenario ``sc`` sent to ``target`` again, after a run that mostly
    failed: its status and the start of its body (what the target says is wrong)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(target.url)
    body = BODY_STREAM if sc.stream else (target.body_json or BODY_JSON)
    headers = dict(CLIENT_HEADERS + target.headers_for(sc.name))
    headers["content-type"] = "application/json"
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout_s)
    try:
        conn.request("POST", PATH, body=body.encode(), headers=headers)
        resp = conn.getresponse()
        text = resp.read(300).decode(errors="replace")
        return f"{resp.status} {' '.join(text.split())!r}"
    except (OSError, http.client.HTTPException) as exc:
        return f"no response ({exc.__class__.__name__}: {exc})"
    finally:
        conn.close()


def summarize_runs(runs: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
    s: dict[str, Any] = {"runs": len(runs)}
    counts = [failed_counts(r) for r in runs]
    s["failed_requests"] = sum(f for f, _ in counts)
    s["attempted"] = sum(a for _, a in counts)
    s["failed_share"] = s["failed_requests"] / s["attempted"] if s["attempted"] else None
    s["row_failed"] = (s["failed_share"] or 0.0) > T_FAILED_SHARE or (bool(runs) and all(r.get("failed") for r in runs))
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in (r.get("status") or {}).items():
            statuses[k] = statuses.get(k, 0) + v
    s["statuses"] = statuses
    s["error_sample"] = next((r["error_sample"] for r in runs if r.get("error_sample")), None)
    s["rps"] = _med([r.get("rps", 0.0) for r in runs])
    s["rps_runs"] = [r.get("rps", 0.0) for r in runs]
    s["steal_frac"] = _med([r.get("steal_frac") for r in runs])
    for k in ("p50", "p90", "p99", "p99_9", "p100"):
        s[f"lat_{k}"] = _med([r.get("latency_ms", {}).get(k) for r in runs])
    s["proxy_cpu_us_per_req"] = _med([r.get("proxy_cpu_us_per_req") for r in runs])
    s["proxy_cpu_frac"] = _med([r.get("proxy_cpu_frac") for r in runs])
    s["fake_cpu_us_per_req"] = _med([r.get("fake_cpu_us_per_req") for r in runs])
    s["loadgen_cpu_frac"] = _med([r.get("loadgen_cpu_frac") for r in runs])
    s["load_cpu_frac"] = _med([r.get("load_cpu_frac") for r in runs])
    s["load_cpu_us_per_req"] = _med([r.get("load_cpu_us_per_req") for r in runs])
    s["fake_cpu_frac"] = _med([r.get("fake_cpu_frac") for r in runs])
    s["machine_busy_cores"] = _med([r.get("machine_busy_cores") for r in runs])
    sent = sum(r.get("sent", 0) for r in runs)
    s["late_frac"] = sum(r.get("late_sends", 0) for r in runs) / sent if sent else None
    s["non2xx"] = sum(r.get("non2xx", 0) for r in runs)
    s["errors"] = sum(r.get("error_count", 0) for r in runs)
    s["timeouts"] = sum(r.get("timeouts", 0) for r in runs)
    s["tool"] = runs[0].get("tool") if runs else None
    s["failed"] = [r["failed"] for r in runs if r.get("failed")]
    s["dead"] = any(r.get("dead") for r in runs)
    if stream:
        for k in ("p50", "p99", "p100"):
            s[f"ttfb_{k}"] = _med([r.get("ttfb_ms", {}).get(k) for r in runs])
        s["stalled"] = sum(r.get("stalled_streams", 0) for r in runs)
        s["incomplete"] = sum(r.get("incomplete_streams", 0) for r in runs)
        s["streams"] = sum(r.get("completed", 0) for r in runs)
        s["streams_sent"] = sum(r.get("sent", 0) for r in runs)
        s["events_per_s"] = _med([r.get("events_per_s") for r in runs])
        s["max_gap_ms"] = max((r.get("max_gap_ms", {}).get("p100", 0) for r in runs), default=0)
    mems = [r["mem_after"] for r in runs if "mem_after" in r]
    if mems:
        s["rss_after_mb"] = [m["rss_mb"] for m in mems]
        s["rss_after_max_proc_mb"] = [m["rss_max_mb"] for m in mems]
        s["hwm_mb"] = max(r["mem_peak_end"]["hwm_max_mb"] for r in runs if "mem_peak_end" in r)
        s["rss_before_mb"] = runs[0]["mem_before"]["rss_mb"]
    if s["dead"]:
        s["rss_after_mb"] = []
        s["hwm_mb"] = None
    return s


def count_usage(target: Target) -> dict[str, Any]:
    """Rows per (key_hash, token_id) and status in the gateway's store (read after the
    gateway stopped gracefully, so its usage queue has been drained)."""
    query = "SELECT key_hash, token_id, status, COUNT(*) FROM usage_log GROUP BY key_hash, token_id, status"
    if target.database_url is not None:
        rows = _pg_rows(target.database_url, query)
        _drop_pg_database(target.database_url)
    else:
        assert target.sqlite_path is not None
        if not target.sqlite_path.exists():
            return {"error": f"{target.sqlite_path} does not exist"}
        con = sqlite3.connect(f"file:{target.sqlite_path}?mode=ro", uri=True)
        try:
            rows = con.execute(query).fetchall()
        finally:
            con.close()
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for key_hash, token_id, status, n in rows:
        for col, val in (("key_hash", key_hash), ("token_id", token_id)):
            if val is not None:
                g = groups.setdefault((col, val), {})
                g[status] = g.get(status, 0) + n
        if key_hash is None and token_id is None:
            g = groups.setdefault(("none", ""), {})
            g[status] = g.get(status, 0) + n
    return {"groups": groups, "total": sum(r[3] for r in rows)}


def _pg_rows(database_url: str, query: str) -> list[tuple[Any, ...]]:
    import asyncio

    import asyncpg

    async def read() -> list[tuple[Any, ...]]:
        con = await asyncpg.connect(database_url, timeout=10)
        try:
            return [tuple(r) for r in await con.fetch(query)]
        finally:
            await con.close()

    return asyncio.run(read())


def gateway_log_problems(path: Optional[Path]) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    bad = [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln or "Traceback" in ln]
    warn = [ln for ln in lines if " WARNING " in ln]
    return {"error_lines": len(bad), "warning_lines": len(warn), "first_errors": bad[:10],
            "first_warnings": warn[:5]}


# --------------------------------------------------------------------------- report


def _f(v: Optional[float], fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def ratio_verdict(mine: list[float], base: list[float], threshold: float) -> tuple[float, list[float], str]:
    """Throughput of one target against a baseline over repeated, interleaved runs:
    (ratio of the medians, the ratio within each repeat, verdict).

    The two estimates disagree when the machine's noise is larger than the effect (runs of
    one repeat are seconds apart, not simultaneous): then the verdict is NOISY, not a
    PASS or FAIL that a rerun would flip.  Both must clear the threshold to PASS."""
    med_ratio = statistics.median(mine) / statistics.median(base) if mine and base and statistics.median(base) \
        else 0.0
    paired = [m / b for m, b in zip(mine, base) if b]
    paired_med = statistics.median(paired) if paired else med_ratio
    if med_ratio >= threshold and paired_med >= threshold:
        verdict = "PASS"
    elif med_ratio < threshold and paired_med < threshold:
        verdict = "FAIL"
    else:
        verdict = "NOISY"
    return med_ratio, paired, verdict


def evaluate(report: dict[str, Any]) -> list[dict[str, str]]:
    """The PASS/FAIL table against the issue-8 targets."""
    checks: list[dict[str, str]] = []
    summ = report["summary"]
    names = report["target_names"]
    pfs = [n for n in names if n.startswith("plano_fast")]
    nginx = "nginx" if "nginx" in names else None

    def add(target: str, what: str, measured: str, threshold: str, ok: Optional[bool],
            result: Optional[str] = None) -> None:
        checks.append({"target": target, "check": what, "measured": measured, "threshold": threshold,
                       "result": result or ("n/a" if ok is None else ("PASS" if ok else "FAIL"))})

    for pf in pfs:
        _, mode, workers = pf.split(" ")
        t_ratio = T_RPS_RATIO_BY_MODE.get(mode, T_RPS_RATIO) if workers == "w1" else T_RPS_RATIO
        t_p50 = T_ADDED_P50_MS_BY_MODE.get(mode, T_ADDED_P50_MS)
        sat = summ.get("ns_sat", {})
        pf_rps = sat.get(pf, {}).get("rps")
        if nginx and sat.get(nginx, {}).get("rps") and not sat[nginx].get("row_failed"):
            ratio, paired, verdict = ratio_verdict(sat.get(pf, {}).get("rps_runs") or [pf_rps or 0.0],
                                                   sat[nginx].get("rps_runs") or [sat[nginx]["rps"]], t_ratio)
            per_repeat = " / ".join(f"{x:.0%}" for x in paired)
            add(pf, "req/s at saturation vs nginx", f"{ratio:.0%} ({_f(pf_rps, '{:.0f}')} vs "
                f"{sat[nginx]['rps']:.0f} req/s, medians); within each repeat {per_repeat}",
                f">= {t_ratio:.0%} both ways", None, verdict)
        else:
            add(pf, "req/s at saturation vs nginx", f"{_f(pf_rps, '{:.0f}')} req/s; nginx "
                + ("row FAILED" if nginx and sat.get(nginx, {}).get("row_failed") else "not measured"),
                f">= {t_ratio:.0%}", None)
        one = sat.get(f"plano_fast {mode} w1", {}).get("rps")
        if workers != "w1" and one and pf_rps:
            measured, result = scaling_verdict(pf_rps, one, sat.get(pf, {}), report.get("machine", {}).get("cores")
                                               or os.cpu_count() or 1)
            add(pf, f"req/s over one worker's ({mode})", measured,
                f">= {T_SCALE_W2}x where the cores exist (the load tool and the fake provider share them)", None,
                result)
        c1 = summ.get("ns_c1", {})
        direct = c1.get("direct", {})
        mine = c1.get(pf, {})
        if mine.get("added_p50_paired") is not None and mine.get("added_p99_paired") is not None:
            # (each run over the direct run right before it: c1_added)
            a50, a99, how = mine["added_p50_paired"], mine["added_p99_paired"], " (over the direct run before each)"
        elif not direct.get("row_failed") and direct.get("lat_p50") is not None and mine.get("lat_p50") is not None:
            a50, a99, how = mine["lat_p50"] - direct["lat_p50"], mine["lat_p99"] - direct["lat_p99"], ""
        else:
            a50 = a99 = None
        if a50 is not None and a99 is not None:
            add(pf, "added latency p50, concurrency 1", f"{a50:.3f} ms{how}", f"<= {t_p50} ms",
                a50 <= t_p50)
            add(pf, "added latency p99, concurrency 1", f"{a99:.3f} ms{how}", f"<= {T_ADDED_P99_MS} ms",
                a99 <= T_ADDED_P99_MS)
        c1_runs = report.get("runs", {}).get("ns_c1", {})
        consecutive = next((s.get("consecutive", 1) for s in report.get("scenarios", []) if s["name"] == "ns_c1"), 1)
        if consecutive > 1 and not direct.get("row_failed") and direct.get("lat_p50") is not None \
                and c1_runs.get(pf):
            measured, ok = consecutive_c1_verdict(c1_runs[pf], direct, t_p50, T_ADDED_P99_MS if mode in (
                "config", "firewall") else None)
            add(pf, f"added latency, concurrency 1, each of {len(c1_runs[pf])} consecutive runs", measured,
                f"p50 <= {t_p50} ms" + (f", p99 <= {T_ADDED_P99_MS} ms" if mode in ("config", "firewall") else "")
                + " in every run", ok)
        dead_in = [sn for sn in summ if summ[sn].get(pf, {}).get("dead")]
        if dead_in:
            add(pf, "gateway process stays up", f"exited during/before {dead_in[0]} (see gateway log)",
                "running", False)
        big = summ.get("st_c1000", {}).get(pf)
        if big:
            stalled = big.get("stalled", 0) + big.get("errors", 0) + big.get("non2xx", 0)
            add(pf, "1,000 streams: every stream completes",
                f"{big.get('streams', 0)} of {big.get('streams_sent', 0)} completed, {stalled} stalled/failed, "
                f"longest gap {big.get('max_gap_ms', 0):.0f} ms", "0 stalled", stalled == 0)
            hwm = big.get("hwm_mb")
            add(pf, "peak RSS (largest process)", f"{_f(hwm, '{:.1f}')} MiB", f"< {T_RSS_MB:.0f} MiB",
                hwm is not None and hwm < T_RSS_MB)
            after = big.get("rss_after_mb", [])
            if big.get("dead"):
                add(pf, RSS_FLAT_CHECK, "gateway not running", f"<= +{T_RSS_FLAT:.0%}",
                    False)
            elif len(after) >= 2:
                growth = after[-1] / after[-2] - 1 if after[-2] else 0
                add(pf, RSS_FLAT_CHECK,
                    " -> ".join(f"{a:.1f}" for a in after) + f" MiB ({growth:+.1%}); before load "
                    f"{_f(big.get('rss_before_mb'), '{:.1f}')} MiB", f"<= +{T_RSS_FLAT:.0%}", growth <= T_RSS_FLAT)
        usage = report["usage"].get(pf)
        if usage is not None:
            if "error" in usage:
                add(pf, "usage rows = requests served", usage["error"], "every scenario", False)
            else:
                bad = [s for s, u in usage["scenarios"].items() if not u["ok"]]
                tot_rows = sum(u["rows"] for u in usage["scenarios"].values())
                tot_served = sum(u["completed"] for u in usage["scenarios"].values())
                add(pf, "usage rows = requests served (every scenario)",
                    f"{tot_rows} rows / {tot_served} served" + (f"; mismatch in {', '.join(bad)}" if bad else ""),
                    "equal per scenario", not bad)
        acc = report.get("access_logs", {}).get(pf)
        if acc is not None:
            add(pf, "access-log lines = requests served (all scenarios)",
                f"{acc['lines']} lines / {acc['completed']} served" + (
                    f" (up to {acc['sent_max']} sent)" if acc["sent_max"] != acc["completed"] else ""),
                "served <= lines <= sent", acc["completed"] <= acc["lines"] <= acc["sent_max"])
        errs = sum(summ.get(s, {}).get(pf, {}).get("non2xx", 0) + summ.get(s, {}).get(pf, {}).get("errors", 0)
                   for s in summ)
        add(pf, "non-2xx + errors (all scenarios)", str(errs), "0", errs == 0)
    for base in [n for n in names if not n.startswith("plano_fast")]:
        rows = {sn: summ[sn][base] for sn in summ if base in summ[sn]}
        failed = [f"{sn} ({r.get('failed_requests', 0):,} of {r.get('attempted', 0):,})" for sn, r in rows.items()
                  if r.get("row_failed")]
        worst = max((r.get("failed_share") or 0.0 for r in rows.values()), default=0.0)
        add(base, "baseline rows measured (requests failed, each scenario)",
            ("FAILED in " + ", ".join(failed) + ": those rows are not reported") if failed
            else f"at most {worst:.1%} failed", f"<= {T_FAILED_SHARE:.0%}", not failed)
    if report.get("features"):
        from benchmarks.features import checks as feature_checks

        checks += feature_checks(report["features"])
    return checks


def scaling_verdict(rps: float, one_rps: float, s: dict[str, Any], cores: int) -> tuple[str, str]:
    """``--workers N`` against one worker, and what this machine allows: every process of
    the run (gateway, load tool, fake provider) shares ``cores``, less what other processes
    of the machine took during the measurement (``machine_busy_cores`` minus ours), so at
    most ``free cores / (their CPU µs per request together)`` requests per second fit,
    whatever the gateway's worker count.  PASS at >= T_SCALE_W2; below it, FAIL only where
    that ceiling leaves room for T_SCALE_W2, else n/a (the machine, not the gateway, is
    the limit)."""
    ratio = rps / one_rps
    gw, load, fake = s.get("proxy_cpu_us_per_req"), s.get("load_cpu_us_per_req"), s.get("fake_cpu_us_per_req")
    text = f"{ratio:.2f}x ({rps:.0f} vs {one_rps:.0f} req/s)"
    if gw is None or load is None or fake is None:
        return text + "; CPU per request not measured", "PASS" if ratio >= T_SCALE_W2 else "n/a"
    ours = sum(s.get(k) or 0.0 for k in ("proxy_cpu_frac", "load_cpu_frac", "fake_cpu_frac"))
    others = max(0.0, (s.get("machine_busy_cores") or 0.0) - ours)
    free = max(0.0, cores - others)
    ceiling_rps = free * 1e6 / (gw + load + fake)
    ceiling = ceiling_rps / one_rps
    text += (f"; CPU µs/request: gateway {gw:.0f} + load tool {load:.0f} + fake provider {fake:.0f}"
             f" (cores busy: gateway {_f(s.get('proxy_cpu_frac'), '{:.2f}')}, load tool "
             f"{_f(s.get('load_cpu_frac'), '{:.2f}')}, fake {_f(s.get('fake_cpu_frac'), '{:.2f}')}, other "
             f"processes {others:.2f} of {cores})"
             f" -> ceiling on {free:.2f} free cores {ceiling_rps:.0f} req/s = {ceiling:.2f}x one worker")
    if ratio >= T_SCALE_W2:
        return text, "PASS"
    return text, "FAIL" if ceiling >= T_SCALE_W2 else "n/a"


def consecutive_c1_verdict(runs: list[dict[str, Any]], direct: dict[str, Any], t_p50_ms: float,
                           t_p99_ms: Optional[float]) -> tuple[str, bool]:
    """Each consecutive concurrency-1 run of a target against its floor (the direct run
    measured right before it, else direct's medians over its own runs: ``c1_added``): its
    added p50 (and p99 where a target is set) and a verdict per run; the check passes only
    if every run does."""
    parts = []
    all_ok = True
    for i, r in enumerate(runs, 1):
        a50, a99 = c1_added(r, direct)
        if a50 is None or a99 is None:
            parts.append(f"run {i}: not measured")
            all_ok = False
            continue
        ok = a50 <= t_p50_ms and (t_p99_ms is None or a99 <= t_p99_ms)
        all_ok = all_ok and ok
        parts.append(f"run {i}: {a50:+.3f} / {a99:+.3f} ms {'PASS' if ok else 'FAIL'}")
    return "added p50 / p99: " + "; ".join(parts), all_ok


def render_md(report: dict[str, Any]) -> str:
    m = report["machine"]
    out: list[str] = []
    out.append(f"# plano_fast benchmark — {report['started']}\n")
    out.append(f"Command: `{report['command']}`\n")
    out.append("| machine | |\n|---|---|")
    for k in ("cpu", "cores", "memory", "kernel", "python", "gateway_commit", "scanner", "nginx", "wrk",
              "wrk2", "loadavg_at_start", "scheduler_noise"):
        v = m.get(k)
        out.append(f"| {k} | {' '.join(v) if isinstance(v, list) else v} |")
    for n, info in report["targets"].items():
        if info.get("kind") == "litellm":
            out.append(f"| litellm | {info.get('version')} (own venv, no database: no usage rows) |")
        if info.get("kind") == "portkey":
            pins = "".join(f", {d} {v}" for d, v in (info.get("pinned") or {}).items())
            out.append(f"| portkey | @portkey-ai/gateway {info.get('version')} on Node {info.get('node')}{pins} "
                       "(one process, no database: no usage rows) |")
    headers = "4 response headers" if report["args"].get("minimal_headers") else \
        "a real provider's ~20 response headers"
    out.append(f"| fake provider | {report['fake_workers']} process(es), {STREAM_EVENTS} events x "
               f"{STREAM_INTERVAL_MS:g} ms per stream, {headers} |")
    out.append("| client headers | " + ("host, content-length, content-type, authorization" if report["args"].get(
        "minimal_headers") else "the openai Python SDK's 17 (x-stainless-*, user-agent, accept...)") + " |")
    out.append("| gateway observability | request metrics on" + (
        "; JSON access log to a file (its lines counted against requests served)"
        if not report["args"].get("no_access_log") else "; access log off (--no-access-log)") + " |")
    c1_runs = report["args"].get("c1_runs", 1)
    out.append(f"| durations | {report['args']['duration_s']:g} s per measurement, medians of "
               f"{report['args']['repeats']} repeat(s) for the non-streaming scenarios, targets interleaved"
               + (f"; concurrency 1: {c1_runs} consecutive runs per target" if c1_runs > 1 else "")
               + (f"; feature A/B: {report['args'].get('feature_repeats')} interleaved repeat(s) per feature"
                  if report["args"].get("features") else "") + " |")
    out.append("")
    out.append("All processes (load tool, proxy, fake provider) share this machine's cores, so absolute "
               "numbers are bounded by it; compare the rows of one table (same run). CPU µs/req is the proxy "
               "processes' utime+stime over the measurement (warm-up included) divided by the requests "
               "completed; '—' where the run used under 10 clock ticks of CPU (too coarse to divide). Fake and load "
               "tool CPU % are the fake provider's and the load tool's (wrk or loadgen) CPU time over the "
               "measurement's wall time, in cores x 100: with the proxy's, what the machine's cores were spent on; "
               "machine CPU % is every process's (ours and anyone else's on the machine, /proc/stat). "
               "'Added' = target minus direct, medians over the repeats. CPU steal % is the share of "
               "the machine's CPU time the host gave to other guests during the measurement. The throughput "
               "check compares the medians and also each repeat's pair; NOISY means the two disagree about the "
               "threshold, so the machine's noise is larger than the margin and a rerun could flip it.\n")
    if report["skipped"]:
        out.append("Skipped:\n")
        for s in report["skipped"]:
            out.append(f"* {s['target']}: {s['reason']}")
        out.append("")

    out.append("## Targets\n")
    out.append("| target | check | measured | threshold | result |\n|---|---|---|---|---|")
    for c in report["checks"]:
        out.append(f"| {c['target']} | {c['check']} | {c['measured']} | {c['threshold']} | **{c['result']}** |")
    out.append("")
    if report.get("features"):
        from benchmarks.features import render_rows

        out += render_rows(report["features"])

    names = report["target_names"]
    summ = report["summary"]
    for sc in report["scenarios"]:
        s = summ.get(sc["name"], {})
        out.append(f"## {sc['name']}: {sc['title']}\n")
        direct = s.get("direct", {})
        if direct.get("row_failed"):
            direct = {}  # nothing to add latency to
        if not sc["stream"]:
            out.append("| target | tool | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | added p50 ms "
                       "| added p99 ms | proxy CPU µs/req | proxy CPU % | fake CPU µs/req | fake CPU % | load tool CPU % "
                       "| machine CPU % | CPU steal % | non-2xx | errors |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for n in names:
                r = s.get(n)
                if not r:
                    continue
                if r.get("row_failed"):
                    out.append(f"| {n} | {r['tool']} | {failed_row_text(r)} | " + "— | " * 14
                               + f"{r['non2xx']} | {r['errors']} |")
                    continue
                a50 = None if n == "direct" or r["lat_p50"] is None or direct.get("lat_p50") is None \
                    else r["lat_p50"] - direct["lat_p50"]
                a99 = None if n == "direct" or r["lat_p99"] is None or direct.get("lat_p99") is None \
                    else r["lat_p99"] - direct["lat_p99"]
                if r.get("added_p50_paired") is not None:  # (over the direct run before each: c1_added)
                    a50, a99 = r["added_p50_paired"], r["added_p99_paired"]
                out.append(
                    f"| {n} | {r['tool']} | {_f(r['rps'], '{:.0f}')} | {_f(r['lat_p50'], '{:.3f}')} | "
                    f"{_f(r['lat_p90'], '{:.3f}')} | {_f(r['lat_p99'], '{:.3f}')} | {_f(r['lat_p99_9'], '{:.3f}')} | "
                    f"{_f(r['lat_p100'], '{:.3f}')} | {_f(a50, '{:+.3f}')} | {_f(a99, '{:+.3f}')} | "
                    f"{_f(r['proxy_cpu_us_per_req'], '{:.0f}')} | "
                    f"{_f(None if r['proxy_cpu_frac'] is None else r['proxy_cpu_frac'] * 100, '{:.0f}')} | "
                    f"{_f(r['fake_cpu_us_per_req'], '{:.0f}')} | "
                    f"{_f(None if r.get('fake_cpu_frac') is None else r['fake_cpu_frac'] * 100, '{:.0f}')} | "
                    f"{_f(None if r.get('load_cpu_frac') is None else r['load_cpu_frac'] * 100, '{:.0f}')} | "
                    f"{_f(None if r.get('machine_busy_cores') is None else r['machine_busy_cores'] * 100, '{:.0f}')} | "
                    f"{_f(None if r.get('steal_frac') is None else r['steal_frac'] * 100, '{:.1f}')} | "
                    f"{r['non2xx']} | {r['errors']} |"
                )
        else:
            out.append("| target | streams done/sent | streams started/s | events/s | TTFB p50 ms | TTFB p99 ms | "
                       "added TTFB p50 ms | total p50 ms | total p99 ms | max ms | stalled | longest gap ms | "
                       "proxy CPU µs/stream | RSS before → after MiB (all processes) | peak RSS MiB (largest process) "
                       "| non-2xx | errors |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for n in names:
                r = s.get(n)
                if not r:
                    continue
                if r.get("row_failed"):
                    out.append(f"| {n} | {failed_row_text(r)} | " + "— | " * 13 + f"{r['non2xx']} | {r['errors']} |")
                    continue
                at = None if n == "direct" or r.get("ttfb_p50") is None or direct.get("ttfb_p50") is None \
                    else r["ttfb_p50"] - direct["ttfb_p50"]
                mem = "—"
                if r.get("rss_after_mb"):
                    mem = f"{r['rss_before_mb']:.1f} → " + " → ".join(f"{a:.1f}" for a in r["rss_after_mb"])
                out.append(
                    f"| {n} | {r['streams']}/{r['streams_sent']} | {_f(r['rps'], '{:.1f}')} | "
                    f"{_f(r['events_per_s'], '{:.0f}')} | {_f(r.get('ttfb_p50'), '{:.3f}')} | "
                    f"{_f(r.get('ttfb_p99'), '{:.3f}')} | {_f(at, '{:+.3f}')} | {_f(r['lat_p50'], '{:.1f}')} | "
                    f"{_f(r['lat_p99'], '{:.1f}')} | {_f(r['lat_p100'], '{:.1f}')} | {r['stalled']} | "
                    f"{r['max_gap_ms']:.0f} | {_f(r['proxy_cpu_us_per_req'], '{:.0f}')} | {mem} | "
                    f"{_f(r.get('hwm_mb'), '{:.1f}')} | {r['non2xx']} | {r['errors']} |"
                )
        floors = [f"{n}: {s[n]['paired_direct_p50']:.3f}" for n in names if s.get(n, {}).get("added_p50_paired")
                  is not None]
        if floors:
            out.append("\nAdded p50 / p99 here: the median over a target's runs of its run minus the direct run "
                       "measured right before it (the machine's speed drifts over a run; direct's row is its own "
                       f"runs, measured first), or minus direct's row where that run's p50 was over "
                       f"{FLOOR_DISTURBED_X:g}x direct's (disturbed). Those direct runs' median p50 ms: "
                       f"{', '.join(floors)}.")
        if sc.get("consecutive", 1) > 1:
            out += consecutive_runs_md(report["runs"].get(sc["name"], {}), s.get("direct", {}), names)
        if sc.get("rate"):
            late = [f"{n}: {s[n]['late_frac']:.1%}" for n in names if s.get(n, {}).get("late_frac") is not None]
            if late:
                out.append(f"\nOpen loop: share of requests sent behind schedule because the previous response "
                           f"was still pending (their latency counts from the intended send time, so a target "
                           f"that cannot keep up with {sc['rate']:g} req/s shows queueing): {', '.join(late)}.")
        lg = [f"{n}: {s[n]['loadgen_cpu_frac']:.0%}" for n in names if s.get(n, {}).get("loadgen_cpu_frac")]
        if lg:
            out.append(f"\nLoad generator CPU (fraction of one core): {', '.join(lg)}.")
        fails = [f"{n}: {f}" for n in names for f in s.get(n, {}).get("failed", [])]
        if fails:
            out.append("\nFailed runs: " + "; ".join(fails))
        out.append("")

    if report["usage"]:
        out.append("## Usage rows (gateway SQLite store, after a graceful stop)\n")
        out.append("| target | scenario | requests sent (client) | responses completed | 2xx | rows | rows ok | "
                   "other statuses | result |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for n, u in report["usage"].items():
            if "error" in u:
                out.append(f"| {n} | — | — | — | — | — | — | {u['error']} | FAIL |")
                continue
            for sname, x in u["scenarios"].items():
                sent = str(x["sent_min"]) if x["sent_min"] == x["sent_max"] else f"{x['sent_min']}–{x['sent_max']}"
                other = ", ".join(f"{k}: {v}" for k, v in x["statuses"].items() if k != "ok") or "—"
                out.append(f"| {n} | {sname} | {sent} | {x['completed']} | {x['completed_2xx']} | {x['rows']} | "
                           f"{x['rows_ok']} | {other} | {'PASS' if x['ok'] else 'FAIL'} |")
            if u.get("unattributed"):
                out.append(f"| {n} | (other keys) | | | | {u['unattributed']} | | | |")
        out.append("\nwrk counts only responses it completed; it closes its connections at the end of a run, so "
                   "up to `-c` requests per wrk invocation may reach the gateway uncounted (hence a range for "
                   "'sent'). The Python load generator drains in-flight requests, so its 'sent' is exact.\n")

    if report["gateway_logs"]:
        out.append("## Gateway logs\n")
        for n, g in report["gateway_logs"].items():
            state = "running until the end" if g.get("alive_at_stop") else "**had exited before the end of the run**"
            out.append(f"* {n}: {state}, exit code {g.get('exit_code')}; {g.get('error_lines', 0)} error lines, "
                       f"{g.get('warning_lines', 0)} warning lines (log: `raw/{n.replace(' ', '_')}.log`)")
            for ln in g.get("first_errors", [])[:5]:
                out.append(f"  * `{ln[:300]}`")
        out.append("")
    plotted = not any(s.get("target") == "plot" for s in report["skipped"])
    out.append("Raw outputs: `raw/`; all numbers: `results.json`"
               + ("; plot: `latency.png`.\n" if plotted else ".\n"))
    return "\n".join(out)


def consecutive_runs_md(runs: dict[str, list[dict[str, Any]]], direct: dict[str, Any], names: list[str]) -> list[str]:
    """The consecutive runs of a scenario (``--c1-runs``), one column per run: each run's
    added p50 / p99 over its floor (``c1_added``: the direct run right before it, else
    direct's medians), and the floor's p50 where it was a run of its own."""
    width = max((len(runs.get(n, [])) for n in names), default=0)
    if not width or direct.get("row_failed") or direct.get("lat_p50") is None or direct.get("lat_p99") is None:
        return []
    paired = any(r.get("paired_direct") for n in names if n != "direct" for r in runs.get(n, []))
    out = ["", "Consecutive runs (added p50 / p99 ms over "
           + ("the direct run measured right before each run [that run's p50 ms]" if paired else "direct's medians")
           + ", in the order they ran):", "",
           "| target | " + " | ".join(f"run {i}" for i in range(1, width + 1)) + " |",
           "|---" * (width + 1) + "|"]
    for n in names:
        if n == "direct" or not runs.get(n):
            continue
        cells = []
        for r in runs[n]:
            lat = r.get("latency_ms", {})
            if run_failed(r):
                failed, attempted = failed_counts(r)
                cells.append(f"FAILED ({failed} of {attempted} failed)")
                continue
            a50, a99 = c1_added(r, direct)
            floor = r.get("paired_direct")
            mark = "" if not floor else f" [{floor['p50']:.3f}]" if c1_floor(r, direct) else \
                f" [{floor['p50']:.3f}: disturbed, over direct's medians]"
            cells.append("—" if a50 is None or a99 is None else f"{a50:+.3f} / {a99:+.3f}{mark}")
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return out


def plot(report: dict[str, Any], path: Path) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot (pip install matplotlib)"
    names = report["target_names"]
    summ = report["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    # 1: latency percentile spectrum at concurrency 1 (median run per target)
    ax = axes[0]
    pts = ["p50", "p75", "p90", "p95", "p99", "p99_9", "p99_99", "p100"]
    for n in names:
        runs = report["runs"].get("ns_c1", {}).get(n, [])
        if not runs or summ.get("ns_c1", {}).get(n, {}).get("row_failed"):
            continue
        mid = sorted(runs, key=lambda r: r.get("latency_ms", {}).get("p50", 0))[len(runs) // 2]
        lat = mid.get("latency_ms", {})
        xs = [p for p in pts if p in lat]
        ax.plot(range(len(xs)), [lat[p] for p in xs], marker="o", label=n)
        ax.set_xticks(range(len(xs)), [p.replace("_", ".") for p in xs])
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title(f"non-streaming, concurrency 1 at {report['args']['rate']:g} req/s")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    # 2: req/s at saturation
    ax = axes[1]
    sat = summ.get("ns_sat", {})
    xs = [n for n in names if n in sat]
    ok_rps = {n: 0.0 if sat[n].get("row_failed") else (sat[n]["rps"] or 0.0) for n in xs}  # FAILED rows: no bar
    ax.bar(range(len(xs)), [ok_rps[n] for n in xs], color="tab:blue")
    ax.set_xticks(range(len(xs)), xs, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("requests/s")
    ax.set_title("non-streaming saturation, 64 connections")
    for i, n in enumerate(xs):
        ax.annotate("FAILED" if sat[n].get("row_failed") else f"{ok_rps[n]:.0f}", (i, ok_rps[n]), ha="center",
                    va="bottom", fontsize=8)
    # 3: streams: TTFB and total p50/p99 at 1000
    ax = axes[2]
    width = 0.2
    for j, (sname, label) in enumerate((("st_c1", "c=1"), ("st_c64", "c=64"), ("st_c1000", "c=1000"))):
        s = summ.get(sname, {})
        xs2 = [n for n in names if n in s]
        ax.bar([i + (j - 1) * width for i in range(len(xs2))],
               [0 if s[n].get("row_failed") else (s[n]["lat_p99"] or 0) for n in xs2], width,
               label=f"{label} total p99")
        ax.set_xticks(range(len(xs2)), xs2, rotation=20, ha="right", fontsize=8)
    ideal = (STREAM_EVENTS - 1) * STREAM_INTERVAL_MS
    ax.axhline(ideal, color="k", ls="--", lw=1, label=f"ideal {ideal:.0f} ms")
    ax.set_yscale("log")
    ax.set_ylabel("stream duration p99, ms (log)")
    ax.set_title(f"streams of {STREAM_EVENTS} events x {STREAM_INTERVAL_MS:g} ms")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.suptitle(f"plano_fast benchmark {report['started']} — {report['machine']['cpu']}, "
                 f"{report['machine']['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def run_features(args: argparse.Namespace, work: Path, raw_dir: Path, fake_port: int, fake_pids: list[int],
                 targets: list[Target], wrk: Optional[str], wrk2: Optional[str],
                 skipped: list[dict[str, str]]) -> dict[str, Any]:
    """The feature-cost A/B rows (``benchmarks/features.py``): after the main scenarios,
    with the main targets idle; the saturation and concurrency-1 scenarios of this run."""
    from benchmarks.features import FEATURES, FeaturePairs, feature_row

    scenarios = [s for s in build_scenarios(args) if s.name in ("ns_sat", "ns_c1")]
    log(f"feature A/B: {args.features} ({args.feature_repeats} interleaved repeat(s))")
    try:
        pairs = FeaturePairs(args.features.split(","), work / "features", fake_port, observability_settings, log)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        skipped.append({"target": "features", "reason": f"FAILED TO START: {str(exc)[-1500:]}"})
        log(f"feature A/B: FAILED TO START: {exc}")
        return {}
    skipped += pairs.skipped

    def one(target: Target, sc: Scenario, tag: str) -> dict[str, Any]:
        everyone = [p for t in targets for p in t.pids()] + pairs.pids() + fake_pids
        quiet_wait_s = wait_quiet(everyone)
        r = measure(target, fake_pids, sc, raw_dir, tag, wrk, wrk2)
        r["quiet_wait_s"] = quiet_wait_s
        return r

    try:
        runs = pairs.measure(scenarios, args.feature_repeats, one)
    finally:
        pairs.stop()
    probes = pairs.probes(runs)
    for side in [*pairs.a.values(), *pairs.b.values()]:
        if side.target.log_path is not None and side.target.log_path.exists():
            shutil.copyfile(side.target.log_path, raw_dir / f"{side.target.name.replace(' ', '_')}.log")
    return {name: {"title": FEATURES[name][1], "mode": FEATURES[name][0], "runs": r, "row": feature_row(r),
                   "probe": probes.get(name)} for name, r in runs.items()}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short durations, one repeat (CI smoke)")
    ap.add_argument("--duration-s", type=float, default=None, help="seconds per measurement (default 5; quick 1)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of the non-streaming scenarios (default 3)")
    ap.add_argument("--modes", default="config",
                    help="comma list of gateway modes: config,firewall,managed,managed-pg; MODE:W1+W2 gives that mode "
                         "its own worker counts (e.g. config,firewall:1,managed:1)")
    ap.add_argument("--workers", default=None, help="comma list of gateway worker counts (default 1,<cores>)")
    ap.add_argument("--with-litellm", action="store_true", help="add the LiteLLM proxy baseline")
    ap.add_argument("--litellm-version", default=None)
    ap.add_argument("--pg-dsn", default=None,
                    help="PostgreSQL server for the managed-pg mode (default $PLANO_FAST_BENCH_PG_DSN or the local test database)")
    ap.add_argument("--with-portkey", action="store_true",
                    help="add the Portkey AI gateway baseline (npm; skipped with a message without node)")
    ap.add_argument("--no-nginx", action="store_true", help="skip the nginx baseline")
    ap.add_argument("--no-wrk", action="store_true", help="use the Python load generator for saturation too")
    ap.add_argument("--rate", type=float, default=500.0, help="fixed rate of the concurrency-1 scenario")
    ap.add_argument("--fake-workers", type=int, default=1, help="fake provider processes")
    ap.add_argument("--minimal-headers", action="store_true",
                    help="clients send 4 request headers instead of the openai SDK's 17, and the fake "
                         "provider 4 response headers instead of a real provider's ~20")
    ap.add_argument("--scenarios", default=None, help="comma list to run a subset (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results directory")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work dir (configs, dbs)")
    ap.add_argument("--no-access-log", action="store_true",
                    help="gateways without the JSON access log (on by default, to a file of the work dir)")
    ap.add_argument("--c1-runs", type=int, default=1,
                    help="the concurrency-1 scenario N times in a row per target, a verdict per run "
                         "(replaces its --repeats; the full run uses 3)")
    ap.add_argument("--c1-unpaired", action="store_true",
                    help="no direct run before each concurrency-1 run of another target: added latency over "
                         "direct's medians, measured before every other target (half the scenario's time)")
    ap.add_argument("--features", default="",
                    help="feature-cost A/B rows: comma list of " + ",".join(_feature_names()) + " or all")
    ap.add_argument("--with-features", action="store_true", help="every feature-cost A/B row (--features all)")
    ap.add_argument("--feature-repeats", type=int, default=None,
                    help="interleaved A/B repeats per feature (default --repeats)")
    args = ap.parse_args(argv)
    if args.with_features:
        args.features = "all"
    if args.features:
        from benchmarks.features import parse_features

        try:
            args.features = ",".join(parse_features(args.features))
        except ValueError as exc:
            ap.error(str(exc))
    if args.c1_runs < 1:
        ap.error("--c1-runs must be >= 1")
    if args.duration_s is None:
        args.duration_s = 1.0 if args.quick else 5.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.workers is None:
        args.workers = "1" if args.quick else f"1,{max(2, os.cpu_count() or 2)}"
    if args.feature_repeats is None:
        args.feature_repeats = args.repeats
    return args


def _feature_names() -> list[str]:
    from benchmarks.features import FEATURES

    return list(FEATURES)


def main(argv: Optional[list[str]] = None) -> int:
    global PG_DSN, ACCESS_LOG
    args = parse_args(argv)
    if args.pg_dsn:
        PG_DSN = args.pg_dsn
    ACCESS_LOG = not args.no_access_log
    started = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_root = Path(args.out)
    out_dir = out_root / stamp
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="plano-bench-"))
    command = shlex.join([os.path.relpath(PY, ROOT) if PY.startswith(str(ROOT)) else PY,
                          "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    log(f"results -> {out_dir}; work dir {work}")

    machine = machine_info()
    wrk = None if args.no_wrk else shutil.which("wrk")
    wrk2 = None if args.no_wrk else shutil.which("wrk2")
    scenarios = build_scenarios(args)
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = [s for s in scenarios if s.name in wanted]
    skipped: list[dict[str, str]] = []
    targets: list[Target] = []
    fake_proc = None
    t_start = time.monotonic()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s.name: {} for s in scenarios}
    usage: dict[str, Any] = {}
    gateway_logs: dict[str, Any] = {}
    features: dict[str, Any] = {}
    try:
        if args.minimal_headers:
            CLIENT_HEADERS.clear()
        fake_proc, fake_port = start_fake(args.fake_workers, work / "fake_provider.log", not args.minimal_headers)
        fake_pids = proc_tree(fake_proc.pid)
        log(f"fake provider on :{fake_port} (pids {fake_pids})")
        targets.append(Target("direct", "direct", f"http://127.0.0.1:{fake_port}", None,
                              lambda s: [("authorization", "Bearer sk-bench-direct")], lambda: None))
        if args.no_nginx:
            skipped.append({"target": "nginx", "reason": "--no-nginx"})
        elif nginx_binary() is None:
            skipped.append({"target": "nginx", "reason": "nginx is not installed — baseline skipped "
                            "(apt-get install nginx)"})
            log("nginx not installed: skipping the nginx baseline")
        else:
            ng = NginxProxy(fake_port, prefix=work / "nginx")
            targets.append(Target("nginx", "nginx", ng.url, ng.proc.pid,
                                  lambda s: [("authorization", "Bearer sk-bench-nginx")], ng.stop,
                                  info={"version": machine["nginx"]}))
            log(f"nginx on {ng.url}")
        for mode_spec in [m.strip() for m in args.modes.split(",") if m.strip()]:
            mode, _, own_workers = mode_spec.partition(":")
            if mode not in MODES:
                skipped.append({"target": f"plano_fast {mode}", "reason": f"unknown mode (known: {', '.join(MODES)})"})
                continue
            worker_list = own_workers.replace("+", ",") if own_workers else str(args.workers)
            for w in [int(x) for x in worker_list.split(",") if x.strip()]:
                wd = work / f"gw-{mode}-w{w}"
                wd.mkdir()
                try:
                    t = start_gateway(mode, w, wd, fake_port, [sc.name for sc in scenarios])
                except ModeUnavailable as exc:
                    skipped.append({"target": f"plano_fast {mode} w{w}", "reason": str(exc)})
                    log(f"plano_fast {mode} w{w}: skipped: {exc}")
                    continue
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    detail = str(exc) + (f" {exc.stderr!r}" if isinstance(exc, subprocess.CalledProcessError) else "")
                    skipped.append({"target": f"plano_fast {mode} w{w}",
                                    "reason": f"FAILED TO START: {detail[-1500:]}"})
                    log(f"plano_fast {mode} w{w}: FAILED TO START: {detail[-1500:]}")
                    continue
                targets.append(t)
                log(f"{t.name} on {t.url} (pids {t.pids()})")
        if args.with_litellm:
            from benchmarks.litellm_setup import LITELLM_VERSION, LiteLLMProxy, LiteLLMUnavailable

            version = args.litellm_version or LITELLM_VERSION
            try:
                log(f"LiteLLM {version}: installing/starting (benchmarks/.litellm-venv)")
                ll = LiteLLMProxy(fake_port, free_port(), work, version=version)
                ll_headers = [("authorization", f"Bearer {ll.master_key}")]
                targets.append(Target("litellm", "litellm", ll.url, ll.proc.pid, lambda s: ll_headers, ll.stop,
                                      info={"version": version}))
                log(f"LiteLLM {version} on {ll.url}")
            except LiteLLMUnavailable as exc:
                skipped.append({"target": "litellm", "reason": f"LiteLLM: not available ({exc})"})
                log(f"LiteLLM: not available ({exc})")
        if args.with_portkey:
            from benchmarks.portkey_setup import PINNED, PortkeyGateway, PortkeyUnavailable, portkey_headers

            try:
                log("Portkey: installing/starting (benchmarks/.portkey)")
                pk = PortkeyGateway(free_port(), work)
                pk_headers = portkey_headers(fake_port)
                node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
                targets.append(Target("portkey", "portkey", pk.url, pk.proc.pid, lambda s: pk_headers, pk.stop,
                                      log_path=pk.log_path,  # copied to raw/portkey.log
                                      info={"version": pk.version, "node": node, "pinned": dict(PINNED)}))
                log(f"Portkey {pk.version} on {pk.url}")
            except PortkeyUnavailable as exc:
                skipped.append({"target": "portkey", "reason": f"Portkey: not available ({exc})"})
                log(f"Portkey: not available ({exc})")

        time.sleep(0.5)
        direct_target = next((x for x in targets if x.kind == "direct"), None)
        for sc in scenarios:
            for rep in range(sc.repeats):
                for t in targets:
                    rounds = max(sc.consecutive, sc.rounds_plano if t.kind == "plano_fast" else 1)
                    for rnd in range(rounds):
                        tag = f"r{rep + 1}" + (f"_run{rnd + 1}" if sc.consecutive > 1 else
                                               f"_round{rnd + 1}" if rounds > 1 else "")
                        everyone = [p for other in targets for p in other.pids()] + fake_pids
                        pair = None
                        if sc.paired_baseline and direct_target is not None and t is not direct_target:
                            wait_quiet(everyone)
                            pair = measure(direct_target, fake_pids, sc, raw_dir,
                                           f"{tag}_before_{t.name.replace(' ', '_')}", wrk, wrk2)
                            log(f"{sc.name} {tag} direct (the floor of {t.name}'s run): p50 "
                                f"{pair.get('latency_ms', {}).get('p50', float('nan')):.3f} ms, fake provider "
                                f"{pair.get('fake_cpu_us_per_req', float('nan')):.0f} CPU µs/request")
                        quiet_wait_s = wait_quiet(everyone)
                        r = measure(t, fake_pids, sc, raw_dir, tag, wrk, wrk2)
                        r["quiet_wait_s"] = quiet_wait_s
                        if pair is not None:
                            r["paired_direct"] = paired_direct(pair)
                        runs[sc.name].setdefault(t.name, []).append(r)
                        desc = (f"{r.get('rps', 0):.0f} req/s p50 {r.get('latency_ms', {}).get('p50', float('nan')):.3f} ms"
                                f" p99 {r.get('latency_ms', {}).get('p99', float('nan')):.3f} ms")
                        if sc.stream:
                            desc += f" stalled {r.get('stalled_streams')} ttfb50 {r.get('ttfb_ms', {}).get('p50', 0):.2f} ms"
                        if "mem_after" in r:
                            desc += f" rss {r['mem_after']['rss_mb']:.1f} MiB"
                        if r.get("non2xx") or r.get("error_count"):
                            desc += f" NON2XX {r.get('non2xx')} ERRORS {r.get('errors')}"
                        if run_failed(r):
                            failed, attempted = failed_counts(r)
                            if not r.get("dead"):
                                r["error_sample"] = error_sample(t, sc)
                            desc += (f" FAILED ({failed} of {attempted} requests failed"
                                     + (f"; sent again: {r['error_sample']}" if r.get("error_sample") else "") + ")")
                        log(f"{sc.name} {tag} {t.name}: {desc}")
        if args.features:
            features = run_features(args, work, raw_dir, fake_port, fake_pids, targets, wrk, wrk2, skipped)
    finally:
        # graceful stops: the gateway drains its usage queue on SIGTERM
        for t in targets:
            try:
                t.stop()
            except Exception as exc:  # pragma: no cover
                log(f"stopping {t.name}: {exc}")
        if fake_proc is not None:
            stop_proc(fake_proc)

    # keep every gateway's log (and the fake provider's) with the results
    for t in targets:
        if t.log_path is not None and t.log_path.exists():
            shutil.copyfile(t.log_path, raw_dir / f"{t.name.replace(' ', '_')}.log")
    if (work / "fake_provider.log").exists():
        shutil.copyfile(work / "fake_provider.log", raw_dir / "fake_provider.log")

    # access-log lines per gateway target: one per request it served
    access_logs: dict[str, Any] = {}
    for t in targets:
        if t.kind != "plano_fast" or t.access_log_path is None:
            continue
        served = [r for sc in scenarios for r in runs[sc.name].get(t.name, [])]
        access_logs[t.name] = {
            "lines": count_lines(t.access_log_path),
            "completed": sum(r.get("completed_total", 0) for r in served),
            "sent_max": sum(r.get("sent_total_max", 0) for r in served),
        }

    # usage accounting per gateway target and scenario
    for t in targets:
        if t.kind != "plano_fast" or t.usage_group_for is None:
            continue
        gateway_logs[t.name] = {**gateway_log_problems(t.log_path),
                                "alive_at_stop": t.info.get("alive_at_stop"), "exit_code": t.info.get("exit_code")}
        counted = count_usage(t)
        if "error" in counted:
            usage[t.name] = counted
            continue
        groups = counted["groups"]
        scen: dict[str, Any] = {}
        attributed = 0
        for sc in scenarios:
            statuses = groups.get(t.usage_group_for(sc.name), {})
            rs = runs[sc.name].get(t.name, [])
            completed = sum(r.get("completed_total", 0) for r in rs)
            c2xx = sum(r.get("completed_2xx_total", 0) for r in rs)
            smin = sum(r.get("sent_total_min", 0) for r in rs)
            smax = sum(r.get("sent_total_max", 0) for r in rs)
            rows = sum(statuses.values())
            attributed += rows
            rows_ok = statuses.get("ok", 0)
            ok = completed <= rows <= smax and rows_ok >= c2xx
            scen[sc.name] = {"sent_min": smin, "sent_max": smax, "completed": completed, "completed_2xx": c2xx,
                             "rows": rows, "rows_ok": rows_ok, "statuses": statuses, "ok": ok}
        usage[t.name] = {"scenarios": scen, "unattributed": counted["total"] - attributed}

    summary = {sc.name: {n: summarize_runs(rs, sc.stream) for n, rs in runs[sc.name].items()} for sc in scenarios}
    for sc in scenarios:
        if sc.paired_baseline:
            add_paired_c1(summary[sc.name], runs[sc.name])
    report: dict[str, Any] = {
        "started": started,
        "command": command,
        "args": vars(args),
        "machine": machine,
        "fake_workers": args.fake_workers,
        "target_names": [t.name for t in targets],
        "targets": {t.name: {"kind": t.kind, "url": t.url, **t.info} for t in targets},
        "skipped": skipped,
        "scenarios": [dataclasses.asdict(s) for s in scenarios],
        "runs": runs,
        "summary": summary,
        "usage": usage,
        "access_logs": access_logs,
        "features": features,
        "gateway_logs": gateway_logs,
        "elapsed_s": time.monotonic() - t_start,
    }
    report["checks"] = evaluate(report)
    note = plot(report, out_dir / "latency.png")
    if note:
        report["skipped"].append({"target": "plot", "reason": note})
    (out_dir / "results.json").write_text(json.dumps(report, indent=1, default=str))
    md = render_md(report)
    (out_dir / "results.md").write_text(md)
    shutil.copyfile(out_dir / "results.md", out_root / "latest.md")
    if args.keep_work:
        log(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {report['elapsed_s']:.0f} s: {out_dir / 'results.md'}")
    for c in report["checks"]:
        log(f"{c['result']:4} {c['target']}: {c['check']}: {c['measured']} ({c['threshold']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
