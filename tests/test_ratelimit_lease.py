"""Redis leases (plano_fast.ratelimit.RedisBackend): a process admits locally on a share of
a bucket granted (and counted) by Redis ahead of need.  Backend-level scenarios against a
real redis-server (grants, prefetch, idle return, window change, the key prefix), then
gateways over real sockets: a limit exact across ``--workers 2`` and across instances once
an idle process returned its lease, the headers of local admissions, and Redis killed
while a lease is held (fail_closed / fail_open)."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from benchmarks.private_redis import PrivateRedis
from benchmarks.ratelimit_multi import wait_for_window
from plano_fast.ratelimit import ADMITTED, MemoryBackend, RateLimits, RedisBackend, build, parse_limits
from plano_fast.resp import RespClient, command
from tests.gateway_proc import GatewayProcess, write_config


def _limits(redis: PrivateRedis, amount: int, unit: str = "hour") -> RateLimits:
    limits = build([{"model": "m", "selector": {"key": "x-user"}, "limit": {"requests": amount, "unit": unit}}],
                   redis.url, False, None, "always")  # fmt: skip
    assert limits is not None and isinstance(limits.backend, RedisBackend)
    return limits


def test_grants_prefetch_and_idle_return(redis: PrivateRedis) -> None:
    """320 requests/hour: a lease holds at most 10 (1/32).  First use asks 1 (the rate is
    unknown); the next grant follows the rate, capped; local admissions need no round trip
    and Redis's count is always the units used plus the lease held; at half the lease the
    next grant is fetched after the loop turn; unused lease goes back after LEASE_IDLE_S."""

    async def scenario() -> None:
        limits = _limits(redis, 320)
        backend = limits.backend
        assert isinstance(backend, RedisBackend)
        user = uuid.uuid4().hex
        buckets = limits.buckets(("m",), [(b"x-user", user.encode())])
        raw = RespClient(redis.url)
        t0 = time.time()
        key = f"plano_fast:rl:0:{user}:{int(t0 // 3600)}".encode()
        assert limits.admit_leased(buckets) is None  # no lease yet: wait on Redis
        assert await backend.check(buckets, t0) == [-1, 0, 1]
        assert await raw.call(command(b"GET", key)) == b"1"  # a grant of 1, used by this request
        # 1 request in 1 ms: 1,000/s x 50 ms = 50, capped at 10; this request takes one
        assert await backend.check(buckets, t0 + 0.001) == [-1, 0, 2]
        lease = backend.lease(buckets[0], t0 + 0.001)
        assert lease.left == 9 and await raw.call(command(b"GET", key)) == b"11"
        calls = (await raw.call(command(b"INFO", b"commandstats"))).count(b"evalsha")
        for used in range(3, 7):  # local: no script call; the headers count each request
            head = limits.admit_leased(buckets)
            assert head is not None and b"x-ratelimit-remaining-requests: %d\r\n" % (320 - used) in head
        assert lease.left == 5 and lease.asked > 0  # half of the last grant: the next is asked
        await asyncio.sleep(0.02)  # (the fetch goes after this loop turn)
        assert lease.asked == 0 and lease.left > 5
        assert int(await raw.call(command(b"GET", key))) == 6 + lease.left  # used + held
        assert (await raw.call(command(b"INFO", b"commandstats"))).count(b"evalsha") == calls
        await asyncio.sleep(backend.LEASE_IDLE_S * 3)  # idle: the lease goes back
        assert lease.left == 0 and await raw.call(command(b"GET", key)) == b"6"
        await backend.close()
        await raw.aclose()

    asyncio.run(scenario())


def test_concurrent_requests_without_a_lease_ask_only_what_is_missing(redis: PrivateRedis) -> None:
    """20 requests that find no lease, their checks all out at once: each asks at most the
    cap less what is held and already asked (at least its own unit), so the lease held
    once they are answered stays within the cap (the under-admission bound), not 20 caps."""

    async def scenario() -> None:
        limits = _limits(redis, 3200)  # cap 100
        backend = limits.backend
        assert isinstance(backend, RedisBackend)
        user = uuid.uuid4().hex
        buckets = limits.buckets(("m",), [(b"x-user", user.encode())])
        t0 = time.time()
        await backend.check(buckets, t0)  # (a grant of 1, used)
        outcomes = await asyncio.gather(*(backend.check(buckets, t0 + 0.0001 * (i + 1)) for i in range(20)))
        assert all(isinstance(o, list) for o in outcomes)
        lease = backend.lease(buckets[0], t0)
        raw = RespClient(redis.url)
        count = int(await raw.call(command(b"GET", f"plano_fast:rl:0:{user}:{int(t0 // 3600)}".encode())))
        assert count == 21 + lease.left and 0 < lease.left <= lease.cap == 100 and lease.asked == 0
        await backend.close()
        await raw.aclose()

    asyncio.run(scenario())


def test_a_lease_map_that_starts_over_returns_the_leases_first(redis: PrivateRedis,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Beyond _LEASES_MAX buckets (a selector "*") the lease map starts over; the leases it
    held go back to Redis first, so they are not lost to the window (under-admission)."""
    monkeypatch.setattr(RedisBackend, "_LEASES_MAX", 2)

    async def scenario() -> None:
        limits = _limits(redis, 3200)
        backend = limits.backend
        assert isinstance(backend, RedisBackend)
        t0 = time.time()
        raw = RespClient(redis.url)
        users = [uuid.uuid4().hex for _ in range(3)]
        for user in users[:2]:
            buckets = limits.buckets(("m",), [(b"x-user", user.encode())])
            await backend.check(buckets, t0)
            await backend.check(buckets, t0 + 0.0001)  # a lease of 100, 99 left
            assert backend.lease(buckets[0], t0).left == 99
        await backend.check(limits.buckets(("m",), [(b"x-user", users[2].encode())]), t0)  # the map starts over
        await backend.check(limits.buckets(("m",), [(b"x-user", users[2].encode())]), t0)  # (carries the returns)
        for user in users[:2]:
            assert await raw.call(command(b"GET", f"plano_fast:rl:0:{user}:{int(t0 // 3600)}".encode())) == b"2"
        await backend.close()
        await raw.aclose()

    asyncio.run(scenario())


def test_small_limits_never_lease_and_a_new_window_drops_the_lease(redis: PrivateRedis) -> None:
    """Below LEASE_FRACTION units every grant is 1, taken by the request that asked it: the
    per-request check, Redis's count = the requests admitted, the 6th of 5 refused.  A
    lease held at a window's end is dropped (it counted in the old window) and the next
    request waits on Redis again."""

    async def scenario() -> None:
        small = _limits(redis, 5, "minute")
        backend = small.backend
        assert isinstance(backend, RedisBackend)
        buckets = small.buckets(("m",), [(b"x-user", uuid.uuid4().hex.encode())])
        t0 = time.time()
        t0 -= t0 % 60 - 1  # 1 s into this minute: the whole burst in one window
        outcomes = []
        for i in range(6):
            assert small.admit_leased(buckets) is None  # never a lease to admit on
            outcomes.append(await backend.check(buckets, t0 + i * 0.001))
            assert backend.lease(buckets[0], t0).left == 0
        assert outcomes[:5] == [[-1, 0, n] for n in range(1, 6)] and not isinstance(outcomes[5], list)
        await backend.close()

        big = _limits(redis, 3200, "second")  # a lease of up to 100
        backend = big.backend
        assert isinstance(backend, RedisBackend)
        user = uuid.uuid4().hex
        buckets = big.buckets(("m",), [(b"x-user", user.encode())])
        t = float(int(time.time()) + 1)  # a window of its own (the clock is the gateway's)
        await backend.check(buckets, t + 0.1)
        await backend.check(buckets, t + 0.1001)  # 10,000/s x 50 ms, capped at 100
        lease = backend.lease(buckets[0], t + 0.1001)
        assert lease.left == 99
        assert backend.admit_leased(buckets, False, t + 0.5) is not None  # this window: local
        assert backend.admit_leased(buckets, False, t + 1.2) is None  # the next: dropped, wait on Redis
        raw = RespClient(redis.url)
        assert await raw.call(command(b"GET", f"plano_fast:rl:0:{user}:{int(t)}".encode())) == b"101"
        assert await backend.check(buckets, t + 1.2) == [-1, 101, 1]  # the old count carries over
        await backend.close()
        await raw.aclose()

    asyncio.run(scenario())


def test_the_backends_prefix_is_used_and_counts_are_built_only_for_headers(redis: PrivateRedis) -> None:
    """``RedisBackend(prefix=...)`` names the keys (it used to be ignored: the buckets
    carried the default prefix); in ``ratelimit_headers: refused`` mode an admission
    builds no Counts (it would be discarded), in ``always`` it does."""

    async def scenario() -> None:
        limits = parse_limits([{"model": "m", "selector": {"key": "x-user"}, "limit": {"requests": 9, "unit": "hour"}}])
        backend = RedisBackend(redis.url, False, prefix=b"other:")
        refused_mode = RateLimits(limits, backend)
        user = uuid.uuid4().hex
        buckets = refused_mode.buckets(("m",), [(b"x-user", user.encode())])
        now = time.time()
        assert await backend.check(buckets, now) is ADMITTED
        raw = RespClient(redis.url)
        assert await raw.call(command(b"GET", f"other:0:{user}:{int(now // 3600)}".encode())) == b"1"
        assert await raw.call(command(b"KEYS", b"plano_fast:rl:*")) == []
        await backend.close()
        await raw.aclose()

    asyncio.run(scenario())
    in_process = MemoryBackend()
    memory = RateLimits(parse_limits([{"model": "m", "selector": {"key": "x"}, "limit": {"requests": 9, "unit": "hour"}}]),
                        in_process)  # fmt: skip
    buckets = memory.buckets(("m",), [(b"x", b"v")])
    assert in_process.check_now(buckets, 10.0) is ADMITTED
    in_process.want_counts = True
    assert in_process.check_now(buckets, 10.0) == [-1, 0, 2]


# -- over real sockets ------------------------------------------------------------------------

LIMIT = 320  # requests per hour: a lease of up to 10 per process


def _yaml(amount: int = LIMIT) -> str:
    return ("ratelimits:\n  - model: gpt-4o-mini\n    selector: {key: x-user-id, value: \"*\"}\n"
            f"    limit: {{requests: {amount}, unit: hour}}\n")  # fmt: skip


def _start(fake: FakeProviderThread, path: Path, settings: dict[str, object], workers: int = 1) -> GatewayProcess:
    config = write_config(path, fake.port, settings)
    with open(config, "a") as f:
        f.write(_yaml())
    return GatewayProcess(config, workers=workers)


def _send(url: str, user: str, client: openai.OpenAI | None = None) -> tuple[int, dict[str, str]]:
    own = client is None
    client = client or openai.OpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-user-id": user})
        return raw.status_code, dict(raw.headers)
    except openai.APIStatusError as exc:
        return exc.status_code, dict(exc.response.headers)
    finally:
        if own:
            client.close()


def _served_until_refused(url: str, user: str, most: int) -> int:
    """Requests one after another on one connection until 3 refusals in a row."""
    served = refused_in_row = 0
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0) as client:
        for _ in range(most):
            status, _ = _send(url, user, client)
            assert status in (200, 429), status
            if status == 200:
                served, refused_in_row = served + 1, 0
            else:
                refused_in_row += 1
                if refused_in_row == 3:
                    break
    return served


def test_two_workers_share_leases_and_an_idle_instance_returns_its_own(
    fake: FakeProviderThread, tmp_path: Path, redis: PrivateRedis,
) -> None:  # fmt: skip
    """A request limit is exact across processes with leases: ``--workers 2`` under 8
    concurrent clients serve at most the limit (grants are counted before use), and once
    the processes are idle (leases returned) the rest of the limit is served, exactly.
    Then two instances: one serves a few requests and goes idle; the other can use all
    that is left -- the idle one's unused lease came back (without the return it would
    stay counted for the hour)."""
    with ThreadPoolExecutor(2) as pool:
        two, other = pool.map(lambda a: _start(fake, tmp_path / f"{a[0]}.yaml", {"redis_url": redis.url}, a[1]),
                              [("two", 2), ("one", 1)])  # fmt: skip
    try:
        assert len(two.pids) == 2
        wait_for_window(3600, 60)
        user = uuid.uuid4().hex
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: _send(two.url, user)[0], range(LIMIT + 40)))
        assert set(statuses) <= {200, 429} and statuses.count(429) >= 40
        burst_served = statuses.count(200)
        assert burst_served <= LIMIT
        time.sleep(0.5)  # idle: every lease held went back
        assert burst_served + _served_until_refused(two.url, user, LIMIT) == LIMIT

        user = uuid.uuid4().hex
        for _ in range(5):
            assert _send(two.url, user)[0] == 200
        time.sleep(0.5)
        assert _served_until_refused(other.url, user, LIMIT + 10) == LIMIT - 5
    finally:
        two.stop()
        other.stop()


def test_headers_of_local_admissions(fake: FakeProviderThread, tmp_path: Path, redis: PrivateRedis) -> None:
    """``ratelimit_headers: always``: remaining counts every request exactly, whether it was
    admitted on the lease (no round trip) or after one -- Redis's last answer minus the
    lease not used since."""
    gateway = _start(fake, tmp_path / "h.yaml", {"redis_url": redis.url, "ratelimit_headers": "always"})
    try:
        wait_for_window(3600, 30)
        user = uuid.uuid4().hex
        remaining = []
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            for _ in range(30):
                status, headers = _send(gateway.url, user, client)
                assert status == 200 and headers["x-ratelimit-limit-requests"] == str(LIMIT)
                remaining.append(int(headers["x-ratelimit-remaining-requests"]))
        assert remaining == list(range(LIMIT - 1, LIMIT - 31, -1))
    finally:
        gateway.stop()


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
def test_redis_killed_with_a_lease_held(fake: FakeProviderThread, tmp_path: Path, redis: PrivateRedis,
                                        mode: str) -> None:  # fmt: skip
    """A lease granted before the outage keeps admitting in both modes (it was counted);
    once it is used up, fail_closed answers 503 and fail_open admits.  Redis's count
    before the kill minus the requests served is the lease held."""
    gateway = _start(fake, tmp_path / "k.yaml", {"redis_url": redis.url, "ratelimit_on_backend_error": mode})
    try:
        wait_for_window(3600, 30)
        user = uuid.uuid4().hex
        key = f"plano_fast:rl:0:{user}:{int(time.time() // 3600)}"
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            served = held = 0
            while held < 2 and served < 40:  # until the process holds a lease (rate known)
                assert _send(gateway.url, user, client)[0] == 200
                served += 1
                time.sleep(0.01)  # (any fetch at half the lease answered)
                held = int(asyncio.run(_get(redis.url, key))) - served
            assert held >= 2, "no lease was granted"
            redis.kill()
            statuses = [_send(gateway.url, user, client)[0] for _ in range(held + 3)]
        assert statuses[:held] == [200] * held  # on the lease
        assert statuses[held:] == ([503] * 3 if mode == "fail_closed" else [200] * 3)
    finally:
        gateway.stop()


async def _get(url: str, key: str) -> bytes:
    raw = RespClient(url)
    try:
        return await raw.call(command(b"GET", key.encode())) or b"0"
    finally:
        await raw.aclose()


# -- the review's findings (issue 22) ---------------------------------------------------------


def _token_limits(url: str, amount: int, kind: str = "tokens") -> RateLimits:
    limits = build([{"model": "m", "selector": {"key": "x-user"}, "limit": {kind: amount, "unit": "hour"}}],
                   url, False, None, "refused")  # fmt: skip
    assert limits is not None and isinstance(limits.backend, RedisBackend)
    return limits


async def _count(url: str, user: str, now_s: float) -> int:
    raw = RespClient(url)
    try:
        return int(await raw.call(command(b"GET", f"plano_fast:rl:0:{user}:{int(now_s // 3600)}".encode())) or 0)
    finally:
        await raw.aclose()


def test_a_token_lease_stops_admitting_once_others_emptied_the_bucket(redis: PrivateRedis) -> None:
    """3,200 tokens/hour.  A process that checked once (a 1-token lease) used to admit
    every later request locally after another process emptied the bucket (a token lease
    was only consumed by responses); now each admission holds its estimate out of the
    lease, so the 1-token lease admits nothing more.  With a real lease (the estimate 30
    tokens per request) the process admits at most lease / estimate requests; the
    prefetch at half the lease answers "empty" and the lease goes back: the next request
    asks Redis (refused)."""

    async def scenario() -> None:
        a, b = _token_limits(redis.url, 3200), _token_limits(redis.url, 3200)
        user = uuid.uuid4().hex
        ba, bb = (x.buckets(("m",), [(b"x-user", user.encode())]) for x in (a, b))
        t0 = time.time()
        assert isinstance(await a.backend.check(ba, t0), list)
        b.settle(bb, 5000)
        await asyncio.sleep(0.02)
        assert not isinstance(await b.backend.check(bb, time.time()), list)  # empty for B
        assert sum(a.admit_leased(ba) is not None for _ in range(50)) == 0

        user = uuid.uuid4().hex
        ba, bb = (x.buckets(("m",), [(b"x-user", user.encode())]) for x in (a, b))
        t0 = time.time()
        assert isinstance(await a.backend.check(ba, t0), list)
        a.settle(ba, 30)  # the estimate: 30 tokens per request
        assert isinstance(await a.backend.check(ba, t0 + 0.001), list)  # a lease of 100 (the cap)
        lease = a.backend.lease(ba[0], time.time())
        assert lease.left == 100 - 30 and lease.held == 30
        b.settle(bb, 5000)
        await asyncio.sleep(0.02)
        admitted = 0
        for _ in range(50):
            admitted += a.admit_leased(ba) is not None
            await asyncio.sleep(0.005)  # (the prefetch's answer)
        assert 1 <= admitted <= 3 and lease.left == 0  # 70 / 30 at most, then dropped
        assert not isinstance(await a.backend.check(ba, time.time()), list)
        await a.backend.close()
        await b.backend.close()

    asyncio.run(scenario())


def test_a_token_limit_under_the_lease_threshold_is_a_per_request_check(redis: PrivateRedis) -> None:
    """10 tokens/hour (under LEASE_FRACTION units): each request is checked in Redis (no
    local admission after a check: its grant of 1 is the token the request holds), and
    Redis's count is the tokens settled, exactly; once they reach 10 the next is refused."""

    async def scenario() -> None:
        a = _token_limits(redis.url, 10)
        user = uuid.uuid4().hex
        ba = a.buckets(("m",), [(b"x-user", user.encode())])
        t0 = time.time()
        for tokens in (4, 5):
            assert isinstance(await a.backend.check(ba, time.time()), list)
            assert sum(a.admit_leased(ba) is not None for _ in range(20)) == 0
            a.settle(ba, tokens)
        await asyncio.sleep(0.02)
        assert await _count(redis.url, user, t0) == 9
        assert isinstance(await a.backend.check(ba, time.time()), list)  # 9 < 10
        a.settle(ba, 3)
        await asyncio.sleep(0.02)
        assert await _count(redis.url, user, t0) == 12
        assert not isinstance(await a.backend.check(ba, time.time()), list)
        await a.backend.close()

    asyncio.run(scenario())


def test_held_estimates_are_reconciled_exactly(redis: PrivateRedis) -> None:
    """Requests admitted by check and on the lease hold their estimates; settled with more,
    fewer or no tokens (no usage), Redis's count ends as the tokens settled, exactly,
    once the process returned its lease."""

    async def scenario() -> None:
        a = _token_limits(redis.url, 32_000)
        user = uuid.uuid4().hex
        ba = a.buckets(("m",), [(b"x-user", user.encode())])
        t0 = time.time()
        settled = 0
        admitted = 0
        for i, tokens in enumerate([40, 7, 0, 250, 13, 90, 1, 60, 0, 33] * 3):
            if a.admit_leased(ba) is None:
                assert isinstance(await a.backend.check(ba, time.time()), list)
            admitted += 1
            if i % 3 == 2:  # a few in flight at once
                await asyncio.sleep(0.002)
            a.settle(ba, tokens)
            settled += tokens
        lease = a.backend.lease(ba[0], time.time())
        assert lease.held == 0 and lease.inflight == 0
        await a.backend.close()  # returns the lease
        assert await _count(redis.url, user, t0) == settled

    asyncio.run(scenario())


async def _hold_a_lease_of_9(limits: RateLimits) -> tuple[str, float]:
    """A new user's bucket of a 320/hour request limit, with a lease of 9 held (2 used)."""
    user = uuid.uuid4().hex
    buckets = limits.buckets(("m",), [(b"x-user", user.encode())])
    t = time.time()
    assert isinstance(limits.backend, RedisBackend)
    await limits.backend.check(buckets, t)
    await limits.backend.check(buckets, t + 0.001)
    assert limits.backend.lease(buckets[0], t + 0.001).left == 9
    return user, t


def test_a_return_to_a_redis_that_lost_its_state(redis: PrivateRedis) -> None:
    """320 requests/hour, a process holds a lease of 9.  Redis restarted empty: the idle
    return used to recreate the key at -9 (NOSCRIPT, then EVAL) and a fresh process was
    then admitted 329 times; now the NOSCRIPT drops the leases and the returns, and the
    fresh process gets exactly 320.  A FLUSHDB keeps the scripts (no NOSCRIPT): the
    script itself skips a return to a missing key and never takes a key below 0."""

    async def scenario() -> None:
        a = _token_limits(redis.url, 320, "requests")
        user, t = await _hold_a_lease_of_9(a)
        redis.kill()
        redis.start()
        await asyncio.sleep(a.backend.LEASE_IDLE_S * 4)  # the idle return: NOSCRIPT, then EVAL
        raw = RespClient(redis.url)
        key = f"plano_fast:rl:0:{user}:{int(t // 3600)}".encode()
        assert await raw.call(command(b"GET", key)) is None
        c = _token_limits(redis.url, 320, "requests")
        bc = c.buckets(("m",), [(b"x-user", user.encode())])
        admitted = 0
        for _ in range(400):
            if c.admit_leased(bc) is None and not isinstance(await c.backend.check(bc, time.time()), list):
                break
            admitted += 1
        assert admitted == 320
        await c.backend.close()

        user, t = await _hold_a_lease_of_9(a)
        key = f"plano_fast:rl:0:{user}:{int(t // 3600)}".encode()
        await raw.call(command(b"FLUSHDB"))
        await asyncio.sleep(a.backend.LEASE_IDLE_S * 4)
        assert await raw.call(command(b"GET", key)) is None  # skipped, not -9
        await raw.call(command(b"SET", key, b"5"))
        assert isinstance(a.backend, RedisBackend)
        a.backend._add_debit(key, -9, 3600)  # a return larger than the count
        await asyncio.sleep(0.05)
        assert await raw.call(command(b"GET", key)) == b"0"
        await a.backend.close()
        await raw.aclose()

    asyncio.run(scenario())


def test_a_lease_map_full_of_outstanding_calls_is_not_rescanned_per_bucket(
    redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """While Redis stalls, every lease with a call out is kept by an eviction; a map full
    of them used to be rescanned for every new bucket (quadratic).  Now one scan, then no
    leasing for LEASE_IDLE_S (the per-request check); the map stays within its size, and
    every request is counted exactly once."""
    monkeypatch.setattr(RedisBackend, "_LEASES_MAX", 8)
    scans = []
    evict = RedisBackend._evict

    def counted(self: RedisBackend, now_s: float) -> bool:
        scans.append(now_s)
        return evict(self, now_s)

    monkeypatch.setattr(RedisBackend, "_evict", counted)

    async def scenario() -> None:
        a = _token_limits(redis.url, 320, "requests")
        backend = a.backend
        assert isinstance(backend, RedisBackend)
        raw = RespClient(redis.url)
        await raw.call(command(b"PING"))
        await backend.check(a.buckets(("m",), [(b"x-user", b"warm")]), time.time())  # (connected, script loaded)
        await raw.call(command(b"CLIENT", b"PAUSE", b"300"))
        users = [uuid.uuid4().hex for _ in range(40)]
        t = time.time()
        outcomes = await asyncio.gather(
            *(backend.check(a.buckets(("m",), [(b"x-user", u.encode())]), t) for u in users))
        assert all(isinstance(o, list) for o in outcomes)
        assert len(scans) == 1 and len(backend._leases) <= 8
        for u in users:
            assert await _count(redis.url, u, t) == 1
        await backend.close()
        await raw.aclose()

    asyncio.run(scenario())
