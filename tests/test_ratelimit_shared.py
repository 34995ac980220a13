"""Rate-limit state shared between processes (issue 22 must-shows, over real sockets):
4 gateway processes (2 instances x 2 workers) on one Redis; Redis killed mid-run and
brought back (fail_closed / fail_open, logged once per outage, /metrics, recovery without a
restart); two workers without Redis sharing the instance's SQLite bucket file.  The
200-client version of the first is ``python -m benchmarks.ratelimit_multi``."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from benchmarks.private_redis import PrivateRedis, available
from benchmarks.ratelimit_multi import burst, limits_yaml, wait_for_window
from tests.gateway_proc import GatewayProcess, write_config

ADMIN_KEY = "admin-key-for-ratelimit-shared-0123456"


def start(fake: FakeProviderThread, path: Path, limits: str, settings: dict[str, object],
          workers: int = 1) -> GatewayProcess:  # fmt: skip
    config = write_config(path, fake.port, {"admin_port": 0, "admin_key": "$PF_RL_ADMIN",
                                            "metrics_publish_interval_s": 0.25, **settings})
    with open(config, "a") as f:
        f.write(limits)
    return GatewayProcess(config, workers=workers, env={"PF_RL_ADMIN": ADMIN_KEY})


def metric(gateway: GatewayProcess, name: str) -> float | None:
    """The instance's value of ``plano_fast_<name>``, None while no worker has published it
    (the counter's line appears with the first snapshot that counts it)."""
    req = urllib.request.Request(f"http://127.0.0.1:{gateway.admin_port}/metrics",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(rf"^plano_fast_{name} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def status_of(gateway: GatewayProcess, user: str) -> int:
    # a new client (so a new connection: any worker may take it)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        try:
            return client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-user-id": user}).status_code  # fmt: skip
        except openai.APIStatusError as exc:
            return exc.status_code


def test_four_processes_share_one_redis_bucket(fake: FakeProviderThread, tmp_path: Path,
                                               redis: PrivateRedis) -> None:  # fmt: skip
    """2 instances x 2 workers, 40 concurrent clients on one x-user-id value with 1,500
    tokens per hour (30 tokens an answer, so the bucket empties during the second wave):
    at least the limit less the unused leases (the documented under-admission bound) and at
    most the documented overshoot bound served, every other request 429
    with the OpenAI headers, a second value served throughout."""
    clients, per_client, limit, tokens = 40, 4, 1500, 30
    with ThreadPoolExecutor(2) as pool:  # the two instances start side by side
        gateways = list(pool.map(lambda n: start(
            fake, tmp_path / f"instance{n}.yaml", limits_yaml("x-user-id", limit, "hour"),
            {"redis_url": redis.url}, workers=2), range(2)))  # fmt: skip
    try:
        assert len({pid for g in gateways for pid in g.pids}) == 4
        wait_for_window(3600, 30)
        r = asyncio.run(burst([g.url for g in gateways], "x-user-id", uuid.uuid4().hex, uuid.uuid4().hex,
                              clients=clients, requests_per_client=per_client, input_tokens=10,
                              output_tokens=20, latency_ms=30, limit_tokens=limit, window_s=3600))  # fmt: skip
        assert not r.other and r.served + r.refused == clients * per_client
        assert r.floor(limit, 4) <= r.served_tokens <= r.bound(limit, clients, tokens), r
        assert r.refused >= clients * per_client - r.bound(limit, clients, tokens) // tokens
        assert not r.bad_refusals, r.bad_refusals[:3]
        assert r.control_served == r.control_total > 0  # another value: its own bucket
        # (a worker's /metrics snapshot is at most 0.25 s old: a miscount never settles)
        assert settled(lambda: instance_sum(gateways, "ratelimit_refused"), r.refused)
    finally:
        for g in gateways:
            g.stop()


def instance_sum(gateways: list[GatewayProcess], name: str) -> float | None:
    """The sum of every gateway's ``plano_fast_<name>``, None while one has not published it."""
    values = [metric(g, name) for g in gateways]
    return None if None in values else sum(v for v in values if v is not None)


def settled(read: Callable[[], float | None], expected: float, timeout_s: float = 10) -> bool:
    """Whether ``read()`` comes to ``expected`` (the instance's metrics, read from the
    workers' snapshots, published every 0.25 s; None before a worker's first one that
    counts it) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while read() != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


REQUESTS_3 = "ratelimits:\n  - model: gpt-4o-mini\n    selector: {key: x-user-id, value: \"*\"}\n" \
             "    limit: {requests: 3, unit: hour}\n"  # fmt: skip


def test_redis_killed_mid_run_and_back(fake: FakeProviderThread, tmp_path: Path, redis: PrivateRedis) -> None:
    closed = start(fake, tmp_path / "closed.yaml", REQUESTS_3, {"redis_url": redis.url})
    opened = start(fake, tmp_path / "open.yaml", REQUESTS_3,
                   {"redis_url": redis.url, "ratelimit_on_backend_error": "fail_open"})  # fmt: skip
    try:
        for g in (closed, opened):
            user = uuid.uuid4().hex
            assert [status_of(g, user) for _ in range(4)] == [200, 200, 200, 429]
        redis.kill()
        user = uuid.uuid4().hex
        fake.clear()
        assert [status_of(closed, user) for _ in range(5)] == [503] * 5  # never forwarded unmetered
        assert not [r for r in fake.requests if not r.path.startswith("/_fake")]
        assert [status_of(opened, user) for _ in range(5)] == [200] * 5  # admitted, over its limit too
        for g in (closed, opened):
            assert settled(lambda: metric(g, "ratelimit_backend_down"), 1)
            errors = metric(g, "ratelimit_backend_errors")
            assert errors is not None and errors >= 5
            assert g.log_text().count("rate-limit backend unreachable") == 1  # once per outage
        redis.start()  # the same port, empty
        # A failed connect is not retried for 0.5 s (plano_fast.resp): the back-up Redis
        # serves checks from then on, without a restart.
        time.sleep(0.6)
        for g in (closed, opened):
            user = uuid.uuid4().hex
            assert [status_of(g, user) for _ in range(4)] == [200, 200, 200, 429]  # limited again
            assert settled(lambda: metric(g, "ratelimit_backend_down"), 0)
            assert g.log_text().count("rate-limit backend reachable again") == 1
    finally:
        closed.stop()
        opened.stop()
    assert "fail_closed" in closed.log_text() and "fail_open" in opened.log_text()


def test_two_workers_without_redis_share_the_instance_limit(fake: FakeProviderThread, tmp_path: Path) -> None:
    """No redis_url, --workers 2: the limit holds for the instance (one SQLite bucket file
    in the instance's run directory), not per worker -- each new client connection may
    land on either worker, and per-worker buckets would serve up to 6 of these 8."""
    gateway = start(fake, tmp_path / "workers.yaml", REQUESTS_3, {}, workers=2)
    try:
        assert len(gateway.pids) == 2
        user = uuid.uuid4().hex
        statuses = [status_of(gateway, user) for _ in range(8)]
        assert statuses == [200, 200, 200] + [429] * 5
        assert status_of(gateway, uuid.uuid4().hex) == 200
        # (the other worker's /metrics snapshot is at most 0.25 s old: a miscount never settles)
        assert settled(lambda: metric(gateway, "ratelimit_refused"), 5)
    finally:
        gateway.stop()


def test_resp_client_auth_db_and_a_stalled_redis(tmp_path: Path) -> None:
    """plano_fast.resp against a real redis-server with a password: AUTH and SELECT from
    the URL; a Redis that stops answering (SIGSTOP) fails the waiting call within the
    timeout instead of hanging the request; it answers again without a new client."""
    if not available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    from plano_fast.resp import RedisUnavailable, ReplyError, RespClient, command

    with PrivateRedis(tmp_path, extra_args=("--requirepass", "s3cret")) as server:
        async def scenario() -> None:
            key = f"pf-test:{uuid.uuid4().hex}".encode()
            client = RespClient(f"redis://:s3cret@127.0.0.1:{server.port}/3", timeout_s=0.5, retry_s=0.2)
            assert await client.call(command(b"INCRBY", key, b"7")) == 7
            other = RespClient(f"redis://:s3cret@127.0.0.1:{server.port}/0")
            assert await other.call(command(b"GET", key)) is None  # db 3, not db 0
            with pytest.raises(ReplyError, match="WRONGTYPE|ERR"):
                await client.call(command(b"HGET", key, b"field"))
            wrong = RespClient(f"redis://:nope@127.0.0.1:{server.port}/0")
            with pytest.raises(RedisUnavailable):
                await wrong.call(command(b"GET", key))
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(RedisUnavailable):
                    await client.call(command(b"GET", key))
                assert time.monotonic() - started < 2.0  # the 0.5 s timeout, checked every 0.25 s
            finally:
                server.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.3)  # past retry_s: the next call reconnects
            assert await client.call(command(b"GET", key)) == b"7"
            for c in (client, other, wrong):
                await c.aclose()

        asyncio.run(scenario())


def test_the_parent_prepares_the_shared_file_so_workers_only_read(tmp_path: Path) -> None:
    """Workers set up the shared SQLite file as they start; on a fresh file that setup
    writes (WAL mode, the table) and a worker racing another one failed with "database is
    locked" and exited (seen once in a full run).  The parent prepares the file first: a
    worker's setup then only reads, even while another connection holds a transaction."""
    import sqlite3

    from plano_fast.ratelimit import SHARED_FILE, SqliteBackend, prepare_shared

    limits = [{"model": "*", "selector": {"key": "x-user", "value": "*"}, "limit": {"requests": 5, "unit": "minute"}}]
    fresh = tmp_path / "fresh.sqlite3"
    holder = sqlite3.connect(fresh, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN")
    holder.execute("SELECT * FROM other").fetchall()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        SqliteBackend(str(fresh))  # the hazard: setting up a fresh file needs the write lock
    holder.execute("COMMIT")

    prepare_shared(limits, None, str(tmp_path))
    shared = tmp_path / SHARED_FILE
    reader = sqlite3.connect(shared, isolation_level=None)
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM rl_counts").fetchall()
    SqliteBackend(str(shared)).db.close()  # opens at once beside the open transaction
    reader.execute("COMMIT")
    prepare_shared(limits, "redis://127.0.0.1:1/0", str(tmp_path / "none"))  # Redis: no file made
    assert not (tmp_path / "none" / SHARED_FILE).exists()


def test_debits_ride_on_the_next_check_or_go_alone_after_5_ms(redis: PrivateRedis) -> None:
    """The Redis backend's debits: held (merged per key) until this process's next check,
    which applies them before it reads -- so its own checks always see them -- or sent
    alone after ``DEBIT_DELAY_S`` when no check comes; a key's TTL is set when created; a
    restarted (empty) Redis answers NOSCRIPT and the pending debits go with the EVAL; the
    last ones are sent when the backend closes (shutdown).  Limits below LEASE_FRACTION
    units: every grant is one unit (counted at once), so a request limit is the per-request
    check and a token limit's lease is the first token of the next response."""
    from plano_fast.ratelimit import BackendUnavailable, RedisBackend, Verdict, build
    from plano_fast.resp import RespClient, command

    async def scenario() -> None:
        user = uuid.uuid4().hex
        limits = build([
            {"model": "m", "selector": {"key": "x-user"}, "limit": {"requests": 10, "unit": "minute"}},
            {"model": "m", "selector": {"key": "x-user"}, "limit": {"tokens": 31, "unit": "minute"}},
        ], redis.url, False, None, "always")  # fmt: skip
        assert limits is not None and isinstance(limits.backend, RedisBackend)
        backend = limits.backend
        buckets = limits.buckets(("m",), [(b"x-user", user.encode())])
        raw = RespClient(redis.url)
        now = time.time()
        if now % 60 > 55:  # keep the test inside one window
            await asyncio.sleep(61 - now % 60)
            now = time.time()
        token_key = f"plano_fast:rl:1:{user}:{int(now // 60)}".encode()
        request_key = f"plano_fast:rl:0:{user}:{int(now // 60)}".encode()
        assert await backend.check(buckets, now) == [-1, 0, 1, 0, 0]
        assert await raw.call(command(b"GET", token_key)) == b"1"  # a one-token lease, counted
        limits.settle(buckets, 3)  # 1 from the lease
        limits.settle(buckets, 2)  # merged with the first: one INCRBY of 4
        assert await raw.call(command(b"GET", token_key)) == b"1"  # held, not sent
        assert await backend.check(buckets, time.time()) == [-1, 0, 2, 0, 5]  # carried and seen
        ttl = await raw.call(command(b"TTL", token_key))
        assert 60 < ttl <= 121  # two windows and a second, set by the INCRBY that created it
        assert await raw.call(command(b"GET", token_key)) == b"6"  # 5 used + the next lease of 1
        limits.settle(buckets, 4)
        await asyncio.sleep(backend.DEBIT_DELAY_S + 0.1)  # no check came: sent alone
        assert await raw.call(command(b"GET", token_key)) == b"9"
        limits.settle(buckets, 30)  # 39 once applied, by this very check: refused on tokens
        verdict = await backend.check(buckets, time.time())
        assert isinstance(verdict, Verdict) and verdict.limit.kind == "tokens"
        assert await raw.call(command(b"GET", token_key)) == b"39"
        assert await raw.call(command(b"GET", request_key)) == b"2"  # refused: nothing granted
        limits.settle(buckets, 7)
        redis.stop()
        redis.start()  # empty, and the old connection is gone
        outcome = await backend.check(buckets, time.time())  # fail_closed; the pending 7 lost, counted
        assert isinstance(outcome, BackendUnavailable) and backend.errors == 1 and backend.down
        await asyncio.sleep(0.6)  # past the client's reconnect delay
        limits.settle(buckets, 5)
        # NOSCRIPT, then EVAL with the same arguments: the debit goes with it
        assert await backend.check(buckets, time.time()) in ([-1, 0, 1, 0, 5], [-1, 0, 1, 5, 0])
        assert not backend.down
        settled_at = time.time()
        limits.settle(buckets, 9)  # 1 from the lease, 8 pending
        await backend.close()  # the pending debit is sent before the connection closes
        key_now = f"plano_fast:rl:1:{user}:{int(settled_at // 60)}".encode()
        assert await raw.call(command(b"GET", key_now)) in (b"14", b"9")  # (b"9": a new window began)
        await raw.aclose()

    asyncio.run(scenario())
