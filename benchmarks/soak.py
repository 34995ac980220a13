"""The fault soak (issue 26): mixed traffic for a long time while the database is cut and
workers are killed; at the end, every answered request has its row and the counters equal
the log.

    python -m benchmarks.soak                          # 30 minutes, the defaults below
    python -m benchmarks.soak --duration-s 180         # a 3-minute smoke

One gateway (``serve --workers 2``, firewall mode and managed mode side by side) on a fresh
PostgreSQL database reached through ``tests.fault_proxy.FaultProxy``; the fake provider in
its own process.  ``--concurrency`` clients send, closed loop, a mix of firewall and managed
(hard spending limit, so every managed request reserves), JSON and streams, and client
hang-ups (before the first byte of a slow answer, or mid-stream).  Meanwhile:

* every ``--cut-every-s`` (120 s) the proxy cuts the database for ``--cut-s`` (5 s): open
  connections reset, new ones refused;
* every ``--kill-every-s`` (300 s) the oldest worker is SIGKILLed (so the slots take
  turns); the gateway's parent restarts it;
* every 60 s the ledger is checked in one statement each (counters' reserved = the open
  reservations, 'total' counters' spent = the priced rows of their scope), and each
  worker's RSS is sampled every 15 s.

At the end the gateway is stopped gracefully (and started once more, one worker, if a
journal is left to replay).  The report matches answers and rows by request id
(``x-plano-request-id``): a 2xx answer without a row is lost; the documented bound is the
answers of the last journal sync window (``usage_wal_sync_interval_s``, 0.1 s) before each
kill.  Rows equal to 2xx answers minus the lost, counters equal to the log plus the open
reservations, and RSS per worker are printed as a table (``--json`` writes the numbers).

The database: ``--dsn`` (default ``$PLANO_FAST_TEST_PG`` or the local server
``postgresql://postgres@127.0.0.1:5432/test``); a database ``plano_fast_soak_<hex>`` is
created on it and dropped at the end (``--keep-db`` keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks import run as bench
from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn
from tests.gateway_proc import GatewayProcess, write_config

DEFAULT_DSN = os.environ.get("PLANO_FAST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FIREWALL_KEY = "sk-soak-firewall-client-key-0123456789abcdef"
SYNC_S = 0.1  # usage_wal_sync_interval_s (the default)
PATH = "/v1/chat/completions"
STREAM_HEADERS = {"x-fake-events": "8", "x-fake-interval-ms": "10"}


@dataclass
class Tally:
    answers: dict[str, float] = field(default_factory=dict)  # request id -> time answered (2xx)
    statuses: dict[str, int] = field(default_factory=dict)
    client_errors: int = 0  # connection reset / refused (a worker killed under the request)
    hangups: dict[str, int] = field(default_factory=dict)
    hangup_ids: set[str] = field(default_factory=set)
    by_kind: dict[str, int] = field(default_factory=dict)

    def status(self, kind: str, code: int) -> None:
        key = f"{kind} {code}"
        self.statuses[key] = self.statuses.get(key, 0) + 1


def body(stream: bool, marker: int) -> bytes:
    doc: dict[str, Any] = {"model": bench.MODEL, "max_tokens": 40,
                           "messages": [{"role": "user", "content": f"soak {marker}"}]}
    if stream:
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
    return json.dumps(doc, separators=(",", ":")).encode()


async def one_request(session: aiohttp.ClientSession, url: str, auth: str, kind: str, stream: bool,
                      marker: int, tally: Tally) -> None:
    headers = {"authorization": f"Bearer {auth}", "content-type": "application/json",
               "x-fake-input-tokens": "30", "x-fake-output-tokens": "20"}
    if stream:
        headers.update(STREAM_HEADERS)
    try:
        async with session.post(url + PATH, data=body(stream, marker), headers=headers) as resp:
            await resp.read()
            tally.status(kind, resp.status)
            rid = resp.headers.get("x-plano-request-id")
            if 200 <= resp.status < 300 and rid:
                tally.answers[rid] = time.monotonic()
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
        tally.client_errors += 1


async def hang_up(port: int, auth: str, kind: str, marker: int, tally: Tally, phase: str) -> None:
    """Send a request and leave (a reset): before the first byte of a slow answer, or
    mid-stream."""
    stream = phase == "mid_stream"
    extra = (b"x-fake-events: 30\r\nx-fake-interval-ms: 20\r\n" if stream
             else b"x-fake-latency-ms: 300\r\n")
    payload = body(stream, marker)
    head = (b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + auth.encode() + b"\r\nx-fake-input-tokens: 30\r\n"
            b"x-fake-output-tokens: 20\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(payload))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        tally.client_errors += 1
        return
    try:
        writer.write(head + payload)
        await writer.drain()
        if stream:
            got = await asyncio.wait_for(reader.read(4096), 5)  # the head and first events
            text = got.decode("latin-1")
            for line in text.split("\r\n"):
                if line.lower().startswith("x-plano-request-id:"):
                    tally.hangup_ids.add(line.split(":", 1)[1].strip())
        else:
            await asyncio.sleep(0.1)  # forwarded; the provider answers after 300 ms
        key = f"{kind} {phase}"
        tally.hangups[key] = tally.hangups.get(key, 0) + 1
    except (OSError, asyncio.TimeoutError):
        tally.client_errors += 1
    finally:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # leave with a reset, as a killed client or a timeout would
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def traffic(url: str, port: int, token: str, stop_at: float, concurrency: int, tally: Tally,
                  seed: int) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=30)
    marker = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as s:
        async def client() -> None:
            nonlocal marker
            while time.monotonic() < stop_at:
                marker += 1
                managed = rng.random() < 0.5
                kind = "managed" if managed else "firewall"
                auth = token if managed else FIREWALL_KEY
                roll = rng.random()
                if roll < 0.06:
                    await hang_up(port, auth, kind, marker, tally, rng.choice(("before_first_byte", "mid_stream")))
                else:
                    stream = roll < 0.45
                    await one_request(s, url, auth, kind, stream, marker, tally)
                    k = f"{kind} {'stream' if stream else 'json'}"
                    tally.by_kind[k] = tally.by_kind.get(k, 0) + 1
                await asyncio.sleep(rng.uniform(0.005, 0.03))  # a shared machine: leave it some CPU

        await asyncio.gather(*(client() for _ in range(concurrency)))


def workers_of(parent: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    live = []
    for pid in out:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if state != "Z" and b"resource_tracker" not in cmd:
            live.append(pid)
    return sorted(live)


def started_ticks(pid: int) -> int:
    """When the process started (clock ticks after boot, /proc/<pid>/stat field 22)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# (A counter is the sum of its rows: one per shard, migration 11.)
_COUNTERS = ("(SELECT scope_kind, scope_id, period, period_start, SUM(spent_nano_usd) AS spent_nano_usd, "
             "SUM(reserved_nano_usd) AS reserved_nano_usd FROM spending_counters "
             "GROUP BY scope_kind, scope_id, period, period_start)")
LEDGER_RESERVED = (
    f"SELECT count(*) FROM {_COUNTERS} c WHERE c.reserved_nano_usd <> "
    "COALESCE((SELECT SUM(r.amount_nano_usd) FROM spending_reservations r WHERE r.scope_kind = c.scope_kind "
    "AND r.scope_id = c.scope_id AND r.period = c.period AND r.period_start = c.period_start), 0)"
)
LEDGER_SPENT = (
    f"SELECT count(*) FROM {_COUNTERS} c WHERE c.period = 'total' AND c.spent_nano_usd <> "
    "COALESCE((SELECT SUM(u.cost_nano_usd) FROM usage_log u WHERE u.priced AND "
    "((c.scope_kind = 'project' AND u.project_id = c.scope_id) OR (c.scope_kind = 'user' AND u.user_id = c.scope_id) "
    "OR (c.scope_kind = 'key' AND u.key_hash = c.scope_id))), 0)"
)


async def ledger(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        bad_reserved = await conn.fetchval(LEDGER_RESERVED)
        bad_spent = await conn.fetchval(LEDGER_SPENT)
        open_res = await conn.fetchval("SELECT count(DISTINCT id) FROM spending_reservations")
        reserved = await conn.fetchval(
            "SELECT COALESCE(SUM(reserved_nano_usd), 0) FROM spending_counters WHERE period = 'total'")
        spent = await conn.fetchval(
            "SELECT COALESCE(SUM(spent_nano_usd), 0) FROM spending_counters WHERE period = 'total' "
            "AND scope_kind = 'project'")
        logged = await conn.fetchval("SELECT COALESCE(SUM(cost_nano_usd), 0) FROM usage_log WHERE priced")
        rows = await conn.fetchval("SELECT count(*) FROM usage_log")
    finally:
        await conn.close()
    return {"counters_reserved_ne_open": int(bad_reserved), "counters_spent_ne_log": int(bad_spent),
            "open_reservations": int(open_res), "reserved_nano_usd": int(reserved),
            "spent_nano_usd": int(spent), "log_nano_usd": int(logged), "rows": int(rows)}


async def admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(dsn: str, name: str) -> str:
    from tests.pg import with_database as wd

    return wd(dsn, name)


def provision(db_dsn: str, fake_port: int) -> Any:
    from tests.test_managed import DEFAULT_PIPE, provision as managed_provision, store_call

    tenant = managed_provision(db_dsn, "", DEFAULT_PIPE, limit_nano_usd=10**15)

    async def register(store: Any) -> None:
        project = await store.create_project("soak-firewall")
        await store.register_api_key(bench._sha(FIREWALL_KEY), project.id, "openai",
                                     f"http://127.0.0.1:{fake_port}", "soak")

    store_call(db_dsn, "", register)
    return tenant


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration-s", type=float, default=1800)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--cut-every-s", type=float, default=120)
    ap.add_argument("--cut-s", type=float, default=5)
    ap.add_argument("--kill-every-s", type=float, default=300)
    ap.add_argument("--rss-every-s", type=float, default=15)
    ap.add_argument("--dsn", default=DEFAULT_DSN, help="a PostgreSQL server DSN (a database is created on it)")
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--seed", type=int, default=26)
    args = ap.parse_args()

    from tests.test_managed import ENV

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    db_name = f"plano_fast_soak_{secrets.token_hex(4)}"
    asyncio.run(admin(args.dsn, f'CREATE DATABASE "{db_name}"'))
    db_dsn = with_database(args.dsn, db_name)
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    proxy = FaultProxy(dsn_target(db_dsn)).start()
    gw: GatewayProcess | None = None
    events: list[tuple[float, str]] = []
    report: dict[str, Any] = {"duration_s": args.duration_s, "workers": args.workers, "workdir": str(work)}
    try:
        cfg = write_config(work / "plano_config.yaml", fake_port, {
            "mode": "firewall", "managed": "true", "managed_reload_s": 5,
            "database_url": f'"{proxied_dsn(db_dsn, proxy.port)}"',
            "usage_flush_interval_s": 1, "reservation_sweep_interval_s": 10,
            "usage_wal_sync_interval_s": SYNC_S, "drain_timeout_s": 5,
        })
        subprocess.run([sys.executable, "-m", "plano_fast", "migrate", "--config", str(cfg)], check=True,
                       cwd=bench.ROOT, capture_output=True, env={**os.environ, **ENV})
        tenant = provision(db_dsn, fake_port)
        gw = GatewayProcess(cfg, workers=args.workers, env=ENV, migrate=False,
                            log_path=work / "gateway.log")
        parent = gw.proc.pid
        t0 = time.monotonic()
        stop_at = t0 + args.duration_s
        tally = Tally()
        rss: dict[int, list[tuple[float, int]]] = {}
        ledger_checks: list[dict[str, int]] = []
        kills: list[float] = []
        stop_faults = threading.Event()

        def faults() -> None:
            next_cut = t0 + args.cut_every_s
            next_kill = t0 + args.kill_every_s
            next_rss = t0
            next_ledger = t0 + 60
            while not stop_faults.is_set():
                now = time.monotonic()
                if now >= next_rss:
                    for pid in workers_of(parent):
                        value = rss_kib(pid)
                        if value is not None:
                            rss.setdefault(pid, []).append((now - t0, value))
                    next_rss += args.rss_every_s
                if now >= next_cut and now < stop_at - args.cut_s:
                    proxy.cut()
                    events.append((now - t0, "database cut"))
                    time.sleep(args.cut_s)
                    proxy.restore()
                    events.append((time.monotonic() - t0, "database restored"))
                    next_cut += args.cut_every_s
                    continue
                if now >= next_kill and now < stop_at - 5:
                    pids = workers_of(parent)
                    if pids:
                        pid = min(pids, key=started_ticks)  # the oldest: the slots alternate
                        os.kill(pid, signal.SIGKILL)
                        kills.append(time.monotonic())
                        events.append((now - t0, f"SIGKILL worker pid {pid}"))
                    next_kill += args.kill_every_s
                if now >= next_ledger:
                    try:
                        check = asyncio.run(ledger(db_dsn))  # straight to the database
                        check["t_s"] = int(now - t0)
                        ledger_checks.append(check)
                    except Exception as exc:  # noqa: BLE001 - reported
                        events.append((now - t0, f"ledger check failed: {exc!r}"))
                    next_ledger += 60
                time.sleep(0.05)

        thread = threading.Thread(target=faults, daemon=True)
        thread.start()
        bench.log(f"soak: {args.duration_s:.0f} s, {args.workers} workers, database {db_name}, work {work}")
        asyncio.run(traffic(gw.url, gw.port, tenant.token, stop_at, args.concurrency, tally, args.seed))
        stop_faults.set()
        thread.join(30)
        proxy.restore()
        time.sleep(3)  # the last answers' rows: flushed within a second
        stop_started = time.monotonic()
        code = gw.stop()
        report["stop_s"] = round(time.monotonic() - stop_started, 1)
        report["exit_code"] = code
        log_text = (work / "gateway.log").read_text(errors="replace")
        left = sorted(p.name for p in work.glob("plano_config.journal.*"))
        if left:
            again = GatewayProcess(cfg, workers=1, env=ENV, migrate=False, log_path=work / "gateway2.log")
            time.sleep(3)
            again.stop()
        report["journal_files_left_at_stop"] = left
        final = asyncio.run(ledger(db_dsn))

        async def rows() -> list[Any]:
            conn = await asyncpg.connect(db_dsn, timeout=10)
            try:
                return list(await conn.fetch("SELECT request_id, status, priced, token_id FROM usage_log"))
            finally:
                await conn.close()

        stored = {r["request_id"]: r for r in asyncio.run(rows())}
        answered = tally.answers
        lost = sorted(rid for rid in answered if rid not in stored)
        window = SYNC_S + 0.05  # the sync interval and the time to answer
        in_window = sum(1 for t in answered.values() for k in kills if k - window <= t <= k)
        near_kill = sum(1 for rid in lost if any(k - 2 <= answered[rid] <= k + 0.5 for k in kills))
        ok_rows = sum(1 for r in stored.values() if r["status"] == "ok")
        statuses: dict[str, int] = {}
        for r in stored.values():
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        hangup_rows = sum(1 for rid in tally.hangup_ids if rid in stored)
        # Rows with no 2xx answer and no mid-stream hang-up id: hang-ups before the first
        # byte (forwarded, so billed), or a worker killed between its row and its answer.
        unanswered: dict[str, int] = {}
        for rid, r in stored.items():
            if rid not in answered and rid not in tally.hangup_ids:
                unanswered[r["status"]] = unanswered.get(r["status"], 0) + 1
        report.update({
            "answers_2xx": len(answered), "rows": len(stored), "rows_by_status": statuses, "rows_ok": ok_rows,
            "lost": len(lost), "lost_near_a_kill": near_kill, "kills": len(kills),
            "crash_window_bound": in_window, "answers_by_status": tally.statuses,
            "client_errors": tally.client_errors, "hangups": tally.hangups,
            "hangups_with_request_id": len(tally.hangup_ids), "hangups_with_a_row": hangup_rows,
            "ledger_final": final, "ledger_checks": ledger_checks,
            "ledger_checks_failed": sum(1 for c in ledger_checks
                                        if c["counters_reserved_ne_open"] or c["counters_spent_ne_log"]),
            "rows_without_an_answer": unanswered,
            "events": events, "tracebacks_in_log": log_text.count("Traceback"),
            "asyncpg_pool_floor_warnings": log_text.count("asyncpg.pool: Failed to restore the pool connection floor"),
            "restarts_logged": log_text.count(" restarted (pid "),
            "rss_kib": {str(pid): samples for pid, samples in rss.items()},
            "lost_ids": lost[:50],
        })
        print(render(report))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    finally:
        if gw is not None and gw.proc.poll() is None:
            gw.stop()
        proxy.stop()
        bench.stop_proc(fake)
        if not args.keep_db:
            try:
                asyncio.run(admin(args.dsn, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            except Exception as exc:  # noqa: BLE001
                print(f"could not drop {db_name}: {exc!r}", file=sys.stderr)
    return 0 if report.get("lost", 1) <= report.get("crash_window_bound", 0) and not report.get(
        "ledger_checks_failed") and not report["ledger_final"]["counters_spent_ne_log"] else 1


def render(r: dict[str, Any]) -> str:
    f = r["ledger_final"]
    lines = [
        f"| soak: {r['duration_s'] / 60:.0f} min, {r['workers']} workers | value |",
        "|---|---|",
        f"| 2xx answers (JSON + streams, firewall + managed) | {r['answers_2xx']} |",
        f"| answers by mode and status | {', '.join(f'{k}: {v}' for k, v in sorted(r['answers_by_status'].items()))} |",
        f"| connection errors (a worker killed under the request) | {r['client_errors']} |",
        f"| client hang-ups sent | {', '.join(f'{k}: {v}' for k, v in sorted(r['hangups'].items()))} |",
        f"| mid-stream hang-ups with a row / with a request id | {r['hangups_with_a_row']} / {r['hangups_with_request_id']} |",
        f"| rows in usage_log | {r['rows']} ({', '.join(f'{k}: {v}' for k, v in sorted(r['rows_by_status'].items()))}) |",
        f"| 2xx answers without a row (lost) | {r['lost']} (within 2 s before a kill: {r['lost_near_a_kill']}) |",
        f"| documented bound: 2xx answered in the {SYNC_S} s sync window (+0.05 s) before each of {r['kills']} kills | {r['crash_window_bound']} |",
        f"| database cuts / worker kills / restarts logged | {sum(1 for _, e in r['events'] if e == 'database cut')} / {r['kills']} / {r['restarts_logged']} |",
        f"| ledger checks every 60 s failing (reserved != open reservations, spent != log) | {r['ledger_checks_failed']} of {len(r['ledger_checks'])} |",
        f"| at the end: spent / log / reserved (nano-USD), open reservations | {f['spent_nano_usd']} / {f['log_nano_usd']} / {f['reserved_nano_usd']}, {f['open_reservations']} |",
        f"| counters != log / != open reservations (at the end) | {f['counters_spent_ne_log']} / {f['counters_reserved_ne_open']} |",
        f"| graceful stop took / exit code / journal files left | {r['stop_s']} s / {r['exit_code']} / {len(r['journal_files_left_at_stop'])} |",
        f"| rows without a 2xx answer or a mid-stream hang-up id | {', '.join(f'{k}: {v}' for k, v in sorted(r['rows_without_an_answer'].items())) or 0} |",
        f"| tracebacks in the gateway log / of them asyncpg's pool-floor warnings | {r['tracebacks_in_log']} / {r['asyncpg_pool_floor_warnings']} |",
    ]
    lines.append("")
    lines.append("| worker pid | lived (s) | RSS first | RSS at +60 s | RSS last | RSS max (MiB) |")
    lines.append("|---|---|---|---|---|---|")
    for pid, samples in r["rss_kib"].items():
        first_t = samples[0][0]
        at60 = next((v for t, v in samples if t >= first_t + 60), samples[-1][1])
        lines.append(f"| {pid} | {samples[-1][0] - first_t:.0f} | {samples[0][1] / 1024:.1f} | {at60 / 1024:.1f} | "
                     f"{samples[-1][1] / 1024:.1f} | {max(v for _, v in samples) / 1024:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
