"""Billing under faults (issue 26), through the real gateway over real sockets.

The store unreachable at start (an unusable SQLite path; PostgreSQL refusing behind the
fault proxy): the gateway listens, answers 503 in each client's format without forwarding
anything, retries the store with one log line per attempt, and serves as soon as the store
opens — no restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.fake_provider import FakeProviderThread
from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn
from tests.gateway_proc import ROOT, GatewayProcess
from tests.test_billing_e2e import USAGE_HEADERS, read_rows, wait_rows


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(url: str, marker: str) -> tuple[int, dict[str, Any]]:
    return post(url + "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": marker}]},
                {"authorization": "Bearer sk-client", **USAGE_HEADERS})


def messages(url: str, marker: str) -> tuple[int, dict[str, Any]]:
    return post(url + "/v1/messages",
                {"model": "claude-sonnet-4-6", "max_tokens": 5,
                 "messages": [{"role": "user", "content": marker}]},
                {"x-api-key": "sk-client", "anthropic-version": "2023-06-01"})


def forwarded(fake: FakeProviderThread, marker: str) -> int:
    return sum(1 for r in fake.requests if marker.encode() in r.body)


def wait_serving(url: str, marker: str, timeout_s: float = 20.0) -> int:
    """Poll until a request is answered 200; returns how many 503s came before."""
    deadline = time.monotonic() + timeout_s
    refused = 0
    while time.monotonic() < deadline:
        status, _ = chat(url, marker)
        if status == 200:
            return refused
        assert status == 503
        refused += 1
        time.sleep(0.2)
    raise AssertionError(f"not serving after {timeout_s}s ({refused} x 503)")


def assert_fails_closed(gateway: Any, fake: FakeProviderThread, marker: str) -> None:
    status, body = chat(gateway.url, marker)
    assert status == 503
    assert body["error"]["code"] == "unavailable" and "store" in body["error"]["message"]
    status, body = messages(gateway.url, marker)
    assert status == 503
    assert body["type"] == "error" and body["error"]["type"]
    assert forwarded(fake, marker) == 0
    # Liveness is still answered.
    with urllib.request.urlopen(gateway.url + "/healthz", timeout=5) as resp:
        assert resp.status == 200


def assert_retried_without_traceback(gateway: GatewayProcess) -> None:
    log = gateway.log_text()
    assert "store unavailable at start" in log
    assert "Traceback" not in log
    assert "store opened after" in log


class InProcessGateway:
    """The Gateway object itself on its own uvloop thread, listening on a real socket
    (``serve`` refuses an unusable SQLite path before it builds a Gateway: see below)."""

    def __init__(self, config_path: Path) -> None:
        import asyncio
        import threading

        import uvloop

        from plano_fast.app import Gateway
        from plano_fast.config import load_config

        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway(load_config(str(config_path)), host="127.0.0.1", port=0)
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(30)
        self.url = f"http://127.0.0.1:{self.gateway.port}"

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.gateway.stop(1.0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_sqlite_path_unusable_at_start_then_usable(
    fake: FakeProviderThread, tmp_path: Path, caplog: Any
) -> None:
    """The Gateway with an SQLite path it cannot open (its directory is a file) listens,
    answers 503 without forwarding, retries, and once the path is usable creates the
    schema of the new database (as ``serve`` does) and serves.  (``plano-fast serve``
    itself refuses such a path with one line before starting, tests/test_cli.py.)"""
    import logging

    from tests.gateway_proc import write_config

    blocker = tmp_path / "state"
    blocker.write_text("a file where the database directory should be")
    db_path = blocker / "gw.db"
    config = write_config(tmp_path / "plano_config.yaml", fake.port, {"sqlite_path": db_path})
    marker = f"sqlite-start-{uuid.uuid4().hex}"
    caplog.set_level(logging.INFO, logger="plano_fast")
    gateway = InProcessGateway(config)
    try:
        assert_fails_closed(gateway, fake, marker)
        wait_until(lambda: "store still unavailable (attempt 2" in caplog.text, 10, "a retry")
        assert_fails_closed(gateway, fake, marker)  # still closed
        blocker.unlink()  # the operator fixes the path; no restart
        blocker.mkdir()
        wait_serving(gateway.url, marker)
        assert forwarded(fake, marker) == 1
    finally:
        gateway.stop()
    rows = read_rows(None, str(db_path))
    assert len(rows) == 1 and rows[0].status == "ok" and rows[0].priced
    assert "store unavailable at start" in caplog.text and "store opened after" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("plano_fast") and r.exc_info]


def test_postgres_down_at_start_then_up(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, pg_dsn: str
) -> None:
    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        marker = f"pg-start-{uuid.uuid4().hex}"
        # Migrated through the proxy, then the database goes away before the gateway starts.
        gateway = make_gateway({"database_url": f'"{database_url}"'}, before_start=proxy.cut)
        assert_fails_closed(gateway, fake, marker)
        assert read_rows(pg_dsn, "") == []
        proxy.restore()
        wait_serving(gateway.url, marker)
        assert forwarded(fake, marker) == 1
        rows = wait_rows(pg_dsn, "", 1)
        assert len(rows) == 1 and rows[0].status == "ok" and rows[0].priced
        assert_retried_without_traceback(gateway)


def test_postgres_starting_up_at_start_then_up(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, pg_dsn: str
) -> None:
    """A server in crash recovery refuses connections with 57P03 (asyncpg's
    CannotConnectNowError, not an OSError): ``serve`` starts anyway, answers 503 without
    forwarding, and serves once the server is up -- it used to exit with a traceback."""
    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        marker = f"pg-recovery-{uuid.uuid4().hex}"
        gateway = make_gateway({"database_url": f'"{database_url}"'}, before_start=proxy.starting_up)
        assert_fails_closed(gateway, fake, marker)
        assert "starting up" in gateway.log_text()
        proxy.restore()
        wait_serving(gateway.url, marker)
        assert forwarded(fake, marker) == 1
        rows = wait_rows(pg_dsn, "", 1)
        assert len(rows) == 1 and rows[0].status == "ok"
        assert_retried_without_traceback(gateway)


# --------------------------------------------------------------------------- request ids


def test_request_ids_are_128_bit_and_fresh_per_process() -> None:
    from plano_fast.gateway.relay import new_request_id

    code = "from plano_fast.gateway.relay import new_request_id as n; print(n(), n())"
    out = [subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True,
                          text=True).stdout.split() for _ in range(2)]
    ids = [new_request_id(), new_request_id()] + out[0] + out[1]
    assert len(set(ids)) == 6
    prefixes = {i.rsplit("-", 1)[0] for i in ids}
    assert len(prefixes) == 3 and all(len(p) == 32 for p in prefixes)  # 128 bits, hex
    # A fork draws a new prefix (the child must not repeat the parent's ids).
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    os.close(write)
    assert child.rsplit("-", 1)[0] not in prefixes


def test_a_duplicate_request_id_is_counted_and_logged(tmp_path: Path, caplog: Any) -> None:
    import asyncio
    import logging

    from plano_fast.billing.flusher import UsageFlusher
    from plano_fast.billing.journal import Journal
    from plano_fast.billing.metrics import BillingMetrics
    from plano_fast.pricing import PricingRegistry
    from plano_fast.store import open_store, usage_row_from_event
    from plano_fast.store.migrate import migrate
    from plano_fast.usage import STATUS_OK, UsageEvent

    def event(request_id: str) -> UsageEvent:
        return UsageEvent(request_id, time.time_ns(), "openai", "gpt-4o-mini", False, STATUS_OK, 200,
                          100, 10, has_usage=True, project_id="p")

    async def main() -> BillingMetrics:
        async with open_store(None, str(tmp_path / "d.db")) as store:
            await migrate(store)
            await store.write_usage([usage_row_from_event(event("same"), cost_nano_usd=1)])
            flusher = UsageFlusher(store, PricingRegistry(), Journal(tmp_path / "j"), BillingMetrics(),
                                   interval_s=3600)
            for rid in ("same", "other"):
                flusher.submit(event(rid))
            await flusher.flush_now()
            rows = await store.recent_usage(None)
            assert sorted(r.request_id for r in rows) == ["other", "same"]
            return flusher.metrics

    with caplog.at_level(logging.WARNING, logger="plano_fast.billing"):
        metrics = asyncio.run(main())
    assert (metrics.rows_written, metrics.rows_duplicate, metrics.rows_duplicate_id) == (1, 1, 1)
    assert "1 of 2 rows had a request id already stored" in caplog.text
    assert "duplicate request ids" in caplog.text


# --------------------------------------------------------------------------- reservations


def ledger(database_url: str | None, sqlite_path: str) -> dict[str, Any]:
    """The spending counters checked against the log and the open reservations, each
    check one statement (one snapshot, while requests run): for every counter, reserved ==
    the open reservations on it; for every 'total' counter, spent == the priced costs of
    its scope's rows."""
    from plano_fast.store import SqlStore
    from tests.test_managed import store_call

    async def go(store: Any) -> dict[str, Any]:
        assert isinstance(store, SqlStore)
        # (A counter is the sum of its rows: one per shard, migration 11.)
        for r in await store._fetch(
            "SELECT c.scope_kind, c.scope_id, c.period, c.reserved_nano_usd, "
            "COALESCE((SELECT SUM(r.amount_nano_usd) FROM spending_reservations r "
            "WHERE r.scope_kind = c.scope_kind AND r.scope_id = c.scope_id "
            "AND r.period = c.period AND r.period_start = c.period_start), 0) "
            "FROM (SELECT scope_kind, scope_id, period, period_start, SUM(reserved_nano_usd) AS reserved_nano_usd "
            "FROM spending_counters GROUP BY scope_kind, scope_id, period, period_start) c"
        ):
            assert int(r[3]) == int(r[4]), f"reserved != open reservations: {tuple(r)}"
        for r in await store._fetch(
            "SELECT c.scope_kind, c.scope_id, c.spent_nano_usd, "
            "COALESCE((SELECT SUM(u.cost_nano_usd) FROM usage_log u WHERE u.priced AND "
            "((c.scope_kind = 'project' AND u.project_id = c.scope_id) OR "
            "(c.scope_kind = 'user' AND u.user_id = c.scope_id) OR "
            "(c.scope_kind = 'key' AND u.key_hash = c.scope_id))), 0) "
            "FROM (SELECT scope_kind, scope_id, SUM(spent_nano_usd) AS spent_nano_usd FROM spending_counters "
            "WHERE period = 'total' GROUP BY scope_kind, scope_id) c"
        ):
            assert int(r[2]) == int(r[3]), f"spent != the log: {tuple(r)}"
        # The open reservations and the rows before the counters: a settle deletes its
        # reservation and frees the counters' amounts in one transaction, so once no
        # reservation is open every later read of the counters has them freed (read the other
        # way round, a settle committing between the reads showed a freed reservation's
        # amount still reserved).
        held = await store._fetch("SELECT DISTINCT id, owner FROM spending_reservations")
        rows = await store.recent_usage(None, limit=100_000)
        counters = await store.load_counters()
        return {"reserved": sum(c.reserved_nano_usd for c in counters if c.period == "total"
                                and c.scope_kind == "project"),
                "open": len(held), "rows": rows, "owners": {r[1] for r in held}}

    result: dict[str, Any] = store_call(database_url, sqlite_path, go)
    return result


def start_slow_stream(
    url: str, token: str, events: int = 60, interval_ms: int = 100, extra: dict[str, str] | None = None
) -> Any:
    """A managed stream that takes events * interval_ms, read on a thread."""
    import threading

    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
                       "messages": [{"role": "user", "content": "slow"}]}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
        "authorization": f"Bearer {token}", "content-type": "application/json",
        "x-fake-events": str(events), "x-fake-interval-ms": str(interval_ms),
        "x-fake-input-tokens": "100", "x-fake-output-tokens": "50", **(extra or {})})
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                outcome["status"] = resp.status
                outcome["body"] = resp.read()
        except Exception as exc:  # noqa: BLE001 - the gateway may be killed under it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_reservation_of_a_killed_instance_is_released_by_the_sweeper(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

    sqlite_path = str(tmp_path / "plano_config_0.db")
    tenants: list[Tenant] = []
    settings = {"managed": "true", "managed_reload_s": 1, "reservation_sweep_interval_s": 0.3}
    gateway = make_gateway(settings, env=ENV, before_start=lambda: tenants.append(
        provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=10**9)))
    token = tenants[0].token
    thread, _ = start_slow_stream(gateway.url, token)
    held = wait_until(lambda: ledger(None, sqlite_path)["open"] == 1 and ledger(None, sqlite_path),
                      10, "a reservation")
    assert held["reserved"] > 0
    gateway.proc.kill()  # SIGKILL: the reservation stays behind, owned by a dead instance
    gateway.wait(5)
    thread.join(10)
    after_kill = ledger(None, sqlite_path)
    assert after_kill["open"] == 1 and after_kill["reserved"] == held["reserved"]
    # Another instance on the same database: its sweeper releases it within about
    # 4 sweep intervals (the dead owner's heartbeat goes stale after 3).
    other = GatewayProcess(gateway.config_path, env=ENV)
    try:
        started = time.monotonic()
        healed = wait_until(lambda: (lambda s: s if s["open"] == 0 else None)(ledger(None, sqlite_path)),
                            10, "the sweeper")
        took_s = time.monotonic() - started
        assert healed["reserved"] == 0
        assert took_s < 4 * 0.3 + 3, took_s
        assert "orphaned reservations" in other.log_text()
    finally:
        other.stop()
    assert "Task exception was never retrieved" not in other.log_text()


def test_reservation_survives_a_database_reset_between_reserve_and_settle(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str
) -> None:
    """PostgreSQL goes away while a stream is in flight: settling fails, the row takes the
    asynchronous (journaled) path and the release is retried until the database is back —
    the reservation is not held forever and counters equal the log."""
    from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        tenants: list[Tenant] = []
        gateway = make_gateway(
            {"managed": "true", "managed_reload_s": 1, "database_url": f'"{database_url}"',
             "reservation_sweep_interval_s": 60},
            env=ENV, before_start=lambda: tenants.append(
                provision(pg_dsn, "", DEFAULT_PIPE, limit_nano_usd=10**9)))
        thread, outcome = start_slow_stream(gateway.url, tenants[0].token, events=20, interval_ms=100)
        wait_until(lambda: ledger(pg_dsn, "")["open"] == 1, 10, "a reservation")
        proxy.cut()
        thread.join(20)
        assert outcome.get("status") == 200, outcome
        assert ledger(pg_dsn, "")["open"] == 1  # still held: nothing reached the database
        proxy.restore()
        healed = wait_until(
            lambda: (lambda s: s if s["open"] == 0 and len(s["rows"]) == 1 else None)(ledger(pg_dsn, "")),
            20, "the settle and the row")
        assert healed["reserved"] == 0 and healed["rows"][0].priced
        log = gateway.log_text()
        # (a failed synchronous settle is retried as a settle: the reservation is freed by the
        # transaction that counts the row's cost, never released before it -- round i)
        assert "settling reservation" in log and "retrying until done" in log and "settled after" in log
        assert "Task exception was never retrieved" not in log


# --------------------------------------------------------------------------- stop deadline

STORE_STOP_S = 3.0
"""The stop's store bound in these tests (10 s by default): the deadline is what is tested,
not its length."""


def test_sigterm_while_the_database_hangs_keeps_its_deadline(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str
) -> None:
    """PostgreSQL accepts and never answers: SIGTERM -> exit within drain_timeout_s +
    store_stop_timeout_s (+ task cancellation), the rows it could not write journaled,
    then replayed by the next start; counters equal the log."""
    import signal

    from tests.test_billing_e2e import counters_match_log

    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        gateway = make_gateway({"database_url": f'"{database_url}"', "drain_timeout_s": 1,
                                "store_stop_timeout_s": STORE_STOP_S})
        for i in range(3):
            assert chat(gateway.url, f"before-{i}")[0] == 200
        assert len(wait_rows(pg_dsn, "", 3)) == 3
        proxy.hang()
        for i in range(7):
            assert chat(gateway.url, f"during-{i}")[0] == 200  # no database on this path
        time.sleep(1.5)  # a flush is now hanging on the database
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(60) == 0
        took_s = time.monotonic() - started
        print(f"SIGTERM -> exit in {took_s:.1f}s with the database hanging")
        assert took_s < 1 + STORE_STOP_S + 4, took_s
        assert f"the store did not finish within {STORE_STOP_S:g}s" in gateway.log_text()
        journals = list(gateway.config_path.parent.glob("*.journal.*"))
        assert journals, "the unwritten rows must be journaled"
        assert len(read_rows(pg_dsn, "")) == 3
        assert "Traceback" not in gateway.log_text()
        proxy.restore()
        again = GatewayProcess(gateway.config_path)
        try:
            rows = wait_rows(pg_dsn, "", 10, timeout_s=30)
        finally:
            again.stop()
    assert len(rows) == 10 and len({r.request_id for r in rows}) == 10
    total_counters, total_log = counters_match_log(pg_dsn, "")
    assert total_counters == total_log > 0


# --------------------------------------------------------------------------- write-ahead log


def test_sigkill_loses_no_synced_usage(make_gateway: Callable[..., GatewayProcess]) -> None:
    """Usage not yet flushed (a 60 s flush interval) survives a SIGKILL: every event is in
    the write-ahead log within its sync interval, and the next start replays it."""
    gateway = make_gateway({"usage_flush_interval_s": 60, "usage_wal_sync_interval_s": 0.05})
    sqlite_path = str(gateway.config_path.with_suffix(".db"))
    for i in range(40):
        assert chat(gateway.url, f"wal-{i}")[0] == 200
    wal_dir = gateway.config_path.parent
    wait_until(lambda: list(wal_dir.glob("*.journal.*.wal")), 5, "a synced segment")
    time.sleep(0.2)  # > the sync interval: the last requests are synced too
    assert read_rows(None, sqlite_path) == []  # nothing flushed: only the WAL has them
    gateway.proc.kill()
    gateway.wait(5)
    again = GatewayProcess(gateway.config_path, migrate=False)
    try:
        rows = wait_rows(None, sqlite_path, 40)
        assert len(rows) == 40 and len({r.request_id for r in rows}) == 40
        assert all(r.priced and r.status == "ok" for r in rows)
        assert "replayed 40 usage rows" in again.log_text()
        # Replayed, so deleted; a graceful stop deletes the new instance's segments too.
        for i in range(5):
            assert chat(again.url, f"wal-after-{i}")[0] == 200
        wait_until(lambda: list(wal_dir.glob("*.journal.*.wal")), 5, "a synced segment")
    finally:
        again.stop()
    assert not list(wal_dir.glob("*.journal.*"))
    assert len(read_rows(None, sqlite_path)) == 45


def test_sigkill_without_the_wal_loses_the_unflushed_rows(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """The comparison: the same SIGKILL with the write-ahead log off loses them all."""
    gateway = make_gateway({"usage_flush_interval_s": 60, "usage_wal": "false"})
    sqlite_path = str(gateway.config_path.with_suffix(".db"))
    for i in range(10):
        assert chat(gateway.url, f"nowal-{i}")[0] == 200
    gateway.proc.kill()
    gateway.wait(5)
    again = GatewayProcess(gateway.config_path, migrate=False)
    try:
        time.sleep(0.5)
        assert read_rows(None, sqlite_path) == []
    finally:
        again.stop()


# --------------------------------------------------------------------------- client hang-ups


def hang_up(url: str, body: bytes, headers: dict[str, str], *, wait_first_byte: bool) -> bytes:
    """Send a request and reset the connection: right after sending, or after the first
    bytes of the answer arrived.  Returns what was received."""
    import socket
    import struct

    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     + head.encode() + b"content-length: %d\r\n\r\n%s" % (len(body), body))
        got = b""
        if wait_first_byte:
            got = sock.recv(65536)
        else:
            time.sleep(0.2)  # forwarded, no answer yet (the provider waits latency-ms)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        return got
    finally:
        sock.close()


STREAM = (b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"cut"}]}')
JSON = (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"cut"}]}')
FAKE_USAGE = {"x-fake-input-tokens": "1000", "x-fake-cached-tokens": "200", "x-fake-output-tokens": "100"}


def test_client_hang_ups_are_billed_with_the_providers_usage(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """Before the first byte (JSON and stream) and mid-stream: the provider's own usage."""
    from tests.test_billing_e2e import GPT_4O_MINI_COST

    gateway = make_gateway()
    sqlite_path = str(gateway.config_path.with_suffix(".db"))
    auth = {"authorization": "Bearer sk-hangup", **FAKE_USAGE}
    hang_up(gateway.url, JSON, {**auth, "x-fake-latency-ms": "600"}, wait_first_byte=False)
    hang_up(gateway.url, STREAM, {**auth, "x-fake-latency-ms": "600"}, wait_first_byte=False)
    got = hang_up(gateway.url, STREAM, {**auth, "x-fake-events": "30", "x-fake-interval-ms": "20"},
                  wait_first_byte=True)
    assert got.startswith(b"HTTP/1.1 200")
    rows = wait_rows(None, sqlite_path, 3)
    assert len(rows) == 3, rows
    for row in rows:
        assert row.status == "client_disconnected" and row.http_status == 200, row
        assert (row.input_tokens, row.cache_read_tokens, row.output_tokens) == (1000, 200, 100)
        assert row.priced and row.cost_nano_usd == GPT_4O_MINI_COST
    assert sorted(r.streaming for r in rows) == [False, True, True]


def test_a_cut_stream_the_provider_cannot_finish_is_estimated_never_zero(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """The client leaves, then the provider resets before its usage: an estimate, flagged;
    and a response longer than the drain bound: the same, once the bound is reached."""
    gateway = make_gateway({"client_gone_drain_s": 0.5})
    sqlite_path = str(gateway.config_path.with_suffix(".db"))
    auth = {"authorization": "Bearer sk-hangup", **FAKE_USAGE}
    hang_up(gateway.url, STREAM, {**auth, "x-fake-events": "40", "x-fake-interval-ms": "10",
                                  "x-fake-reset-after-events": "20"}, wait_first_byte=True)
    started = time.monotonic()
    hang_up(gateway.url, STREAM, {**auth, "x-fake-events": "400", "x-fake-interval-ms": "20"},
            wait_first_byte=True)
    rows = wait_rows(None, sqlite_path, 2)
    assert time.monotonic() - started < 5  # the 8 s stream was given up after 0.5 s
    assert len(rows) == 2
    for row in rows:
        assert row.status == "client_disconnected_estimated", row
        assert row.input_tokens == (len(STREAM) + 3) // 4 and row.output_tokens > 0
        assert row.priced and (row.cost_nano_usd or 0) > 0


def test_the_estimate_of_a_cut_stream_counts_its_text_not_its_framing(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """The client leaves after the first bytes, the provider resets after 20 of its 40
    events: the output estimate is the text those events carried at 4 bytes a token
    (plano_fast.usage_estimate), not the SSE stream's bytes / 4 (~17 times more: each
    ~150-byte chunk carries ~10 bytes of text here)."""
    gateway = make_gateway()
    sqlite_path = str(gateway.config_path.with_suffix(".db"))
    text = "abcd " * 80  # 400 bytes of text in 40 events: 10 a event, 100 tokens in all
    hang_up(gateway.url, STREAM, {"authorization": "Bearer sk-hangup", "x-fake-text": text,
                                  "x-fake-events": "40", "x-fake-interval-ms": "10",
                                  "x-fake-reset-after-events": "20"}, wait_first_byte=True)
    (row,) = wait_rows(None, sqlite_path, 1)
    assert row.status == "client_disconnected_estimated", row
    # ~19 content events sent (the role chunk counts as one of the 20): ~190 bytes, ~48
    # tokens; bounded by the whole text's 100 (bytes / 4 of the stream was ~750)
    assert 30 <= row.output_tokens <= 100, row.output_tokens


def test_the_estimate_of_a_cut_stream_never_exceeds_the_requests_output_bound(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """The same cut with ``max_tokens: 50`` (and ``n: 2``: 100) on a stream whose text
    would be estimated at ~500 tokens: the estimate stops at the request's bound, which the
    provider cannot exceed (main recorded the ~500; a SIGTERM-cut stream 833 in a probe)."""
    gateway = make_gateway()
    sqlite_path = str(gateway.config_path.with_suffix(".db"))
    text = "abcdefghi " * 400  # 4,000 bytes in 40 events: ~25 tokens an event
    for extra, bound in (({"max_tokens": 50}, 50), ({"max_completion_tokens": 50, "n": 2}, 100)):
        body = json.dumps({"model": "gpt-4o-mini", "stream": True, **extra,
                           "messages": [{"role": "user", "content": "cut"}]}).encode()
        before = {r.request_id for r in read_rows(None, sqlite_path)}
        hang_up(gateway.url, body, {"authorization": "Bearer sk-hangup", "x-fake-text": text,
                                    "x-fake-events": "40", "x-fake-interval-ms": "10",
                                    "x-fake-reset-after-events": "20"}, wait_first_byte=True)
        deadline = time.monotonic() + 10
        while not (new := [r for r in read_rows(None, sqlite_path) if r.request_id not in before]):
            assert time.monotonic() < deadline, "no row"
            time.sleep(0.05)
        (row,) = new
        assert row.status == "client_disconnected_estimated", row
        assert row.output_tokens == bound, (row.output_tokens, bound)


def test_the_output_bound_of_a_request() -> None:
    from plano_fast.usage_estimate import capped, output_bound

    assert output_bound(b'{"model":"m","max_tokens":50}') == 50
    assert output_bound(b'{"max_tokens":50,"max_completion_tokens":70}') == 70  # the largest
    assert output_bound(b'{"input":"x","max_output_tokens":30}') == 30
    assert output_bound(b'{"contents":[],"generationConfig":{"maxOutputTokens":40,"candidateCount":3}}') == 120
    assert output_bound(b'{"max_tokens":50,"n":4}') == 200
    assert output_bound(b'{"max_tokens":50,"\\u006e":4}') == 200  # an escaped key is read
    assert output_bound(b'{"model":"m"}') is None  # no ceiling: no cap
    assert output_bound(b'{"max_tokens":50,"n":"4"}') is None  # unreadable choices: no cap
    # read as the managed reservation reads it (bounds._choices): a null candidateCount is
    # no override of n (a copy of that reading halved this cap), both spellings no cap
    assert output_bound(b'{"max_tokens":50,"n":2,"generationConfig":{"candidateCount":null}}') == 100
    assert output_bound(b'{"max_tokens":50,"generationConfig":{"candidateCount":2},'
                        b'"generation_config":{"candidateCount":1}}') is None
    assert output_bound(b'{"max_tokens":50,"n":true}') is None
    assert output_bound(b"not json") is None
    assert capped(833, b'{"max_tokens":50}') == 50 and capped(20, b'{"max_tokens":50}') == 20
    assert capped(833, b"{}") == 833


def test_managed_hang_ups_settle_the_reservation_against_the_providers_usage(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

    sqlite_path = str(tmp_path / "plano_config_0.db")
    tenants: list[Tenant] = []
    gateway = make_gateway({"managed": "true", "managed_reload_s": 1}, env=ENV,
                           before_start=lambda: tenants.append(
                               provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=10**9)))
    stream = (b'{"model":"gpt-4o-mini","stream":true,"max_tokens":100,'
              b'"messages":[{"role":"user","content":"cut"}]}')
    auth = {"authorization": f"Bearer {tenants[0].token}", "x-fake-input-tokens": "1000",
            "x-fake-output-tokens": "100"}
    hang_up(gateway.url, stream, {**auth, "x-fake-latency-ms": "600"}, wait_first_byte=False)
    got = hang_up(gateway.url, stream, {**auth, "x-fake-events": "30", "x-fake-interval-ms": "20"},
                  wait_first_byte=True)
    assert got.startswith(b"HTTP/1.1 200")
    state = wait_until(
        lambda: (lambda s: s if len(s["rows"]) == 2 and s["open"] == 0 else None)(ledger(None, sqlite_path)),
        10, "both rows settled")
    for row in state["rows"]:
        assert row.status == "client_disconnected" and row.streaming, row
        assert (row.input_tokens, row.output_tokens) == (1000, 100) and row.priced
        assert row.token_id == tenants[0].token_id
    assert state["reserved"] == 0  # and ledger() checked spent == the log


def test_managed_sigterm_while_the_database_hangs_journals_the_synchronous_rows(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str
) -> None:
    """Managed requests waiting on their synchronous billing when the database hangs: the
    stop keeps its bound, and their rows (held by the group writer) are journaled and
    replayed by the next start."""
    import signal
    import threading

    from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        tenants: list[Tenant] = []
        gateway = make_gateway(
            {"managed": "true", "managed_reload_s": 60, "database_url": f'"{database_url}"',
             "drain_timeout_s": 1, "store_stop_timeout_s": STORE_STOP_S},
            env=ENV, before_start=lambda: tenants.append(provision(pg_dsn, "", DEFAULT_PIPE)))
        token = tenants[0].token
        body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        headers = {"authorization": f"Bearer {token}", **USAGE_HEADERS}
        for _ in range(2):
            assert post(gateway.url + "/v1/chat/completions", body, headers)[0] == 200
        assert len(read_rows(pg_dsn, "")) == 2  # synchronous: written before the answer
        proxy.hang()
        waiting = [threading.Thread(target=lambda: _ignore(post, gateway.url + "/v1/chat/completions",
                                                           body, headers), daemon=True)
                   for _ in range(3)]
        for t in waiting:
            t.start()
        time.sleep(1.0)  # their rows are waiting on the hung database
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(60) == 0
        took_s = time.monotonic() - started
        assert took_s < 1 + STORE_STOP_S + 4, took_s
        assert "3 unwritten usage rows kept" in gateway.log_text()
        proxy.restore()
        again = GatewayProcess(gateway.config_path, env=ENV)
        try:
            rows = wait_rows(pg_dsn, "", 5, timeout_s=30)
        finally:
            again.stop()
    assert len(rows) == 5 and len({r.request_id for r in rows}) == 5


def _ignore(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the gateway stops under these requests
        pass


def test_pool_floor_warnings_are_one_line_during_a_cut(pg_dsn: str, caplog: Any) -> None:
    """While the database is away asyncpg's pool keeps trying to restore its connection
    floor and logged a traceback each time (84 in the 30-minute soak): now one line
    naming the error."""
    import asyncio
    import logging

    from plano_fast.store.postgres import PostgresStore

    caplog.set_level(logging.WARNING, logger="asyncpg")

    async def cut_under_the_pool(proxy: FaultProxy) -> None:
        store = PostgresStore(proxied_dsn(pg_dsn, proxy.port), min_size=1, max_size=2, connect_timeout_s=2)
        await store.open()
        try:
            await store.pool.fetchval("SELECT 1")
            proxy.cut()
            deadline = time.monotonic() + 10
            while not [r for r in caplog.records if "connection floor" in r.getMessage()]:
                assert time.monotonic() < deadline, "asyncpg never tried to restore its floor"
                await asyncio.sleep(0.1)
        finally:
            store.terminate()

    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        asyncio.run(cut_under_the_pool(proxy))
    floor = [r for r in caplog.records if "connection floor" in r.getMessage()]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in floor)
    assert "Error" in floor[0].getMessage() or "refused" in floor[0].getMessage().lower()


def test_a_journal_that_cannot_be_written_loses_no_row_and_stops_no_flush(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str, tmp_path: Path
) -> None:
    """The database away long enough for the backlog to pass ``usage_max_pending_events``,
    and the journal it overflows to unwritable (a full disk; here its directory is a
    file): the rows stay in memory, over the bound, and reach the database when it comes
    back.  On main the failed spill had already taken them off the backlog (lost) and its
    error ended the flusher's task: no row was written again until the restart; so did
    the write-ahead log's failed unlink of a segment in that directory after a flush."""
    import signal

    not_a_directory = tmp_path / "journal-dir"
    not_a_directory.write_text("a file where the journal's directory should be")
    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        gateway = make_gateway({
            "database_url": f'"{proxied_dsn(pg_dsn, proxy.port)}"', "usage_batch_size": 5,
            "usage_max_pending_events": 5, "usage_journal_path": str(not_a_directory / "usage.journal"),
        })  # fmt: skip
        proxy.cut()
        for i in range(20):
            assert chat(gateway.url, f"overflow-{i}")[0] == 200
        deadline = time.monotonic() + 10
        while "could not be journaled" not in gateway.log_text():
            assert time.monotonic() < deadline, [
                line for line in gateway.log_text().splitlines() if "plano_fast.billing: usage" in line]
            time.sleep(0.1)
        proxy.restore()
        rows = wait_rows(pg_dsn, "", 20, timeout_s=30)
        assert len(rows) == 20 and len({r.request_id for r in rows}) == 20, len(rows)
        # A stop with neither: a clean exit within its bound, saying what it could not keep.
        proxy.cut()
        for i in range(3):
            assert chat(gateway.url, f"at-stop-{i}")[0] == 200
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        assert time.monotonic() - started < 15
        log = gateway.log_text()
        assert "3 usage rows only in the write-ahead log" in log, log[-3000:]
        assert "Traceback" not in log
