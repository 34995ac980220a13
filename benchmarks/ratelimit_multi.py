"""Plano ``ratelimits`` across processes: 2 gateway instances x 2 workers sharing one Redis,
many concurrent clients on one selector value with a token limit per minute.

    python -m benchmarks.ratelimit_multi                     # 200 clients, the issue's must-show
    python -m benchmarks.ratelimit_multi --clients 200 --limit-tokens 3000 --requests-per-client 5  # one wave over

Every client sends its requests one after another (alternating the two instances by
client), each answered by the fake provider with ``--input-tokens`` + ``--output-tokens``
of usage after ``--latency-ms``.  Shows: the tokens served are at least the limit less the
documented under-admission bound (the unused Redis leases outstanding, at most 1/32 of the
limit per process) and at most the limit plus the documented overshoot bound (the tokens
of the requests admitted and not yet debited when the bucket emptied: at most one request
per client in flight), every
other request got 429 with ``Retry-After``, ``retry-after-ms`` and the
``x-ratelimit-*-tokens`` headers, and a second selector value is served throughout.  The
burst starts at the beginning of a window when the current one has too little left, so the
sliding window's carry-over from the previous window plays no part.

tests/test_ratelimit_shared.py runs the same burst, smaller, in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import openai

from plano_fast.ratelimit import RedisBackend

RESET_RE = re.compile(r"^(\d+h)?(\d+m)?\d+s$|^\d+ms$")


@dataclasses.dataclass
class Burst:
    served: int = 0
    refused: int = 0
    served_tokens: int = 0
    other: Counter[str] = dataclasses.field(default_factory=Counter)
    bad_refusals: list[str] = dataclasses.field(default_factory=list)
    control_served: int = 0
    control_total: int = 0
    elapsed_s: float = 0.0

    def bound(self, limit_tokens: int, clients: int, tokens_per_request: int) -> int:
        """The documented overshoot bound: the limit plus the tokens of the requests in
        flight (at most one per client) when the bucket emptied."""
        return limit_tokens + clients * tokens_per_request

    def floor(self, limit_tokens: int, processes: int) -> int:
        """The documented under-admission bound with Redis leases: the limit less the
        unused leases outstanding, at most ``max(1, limit // LEASE_FRACTION)`` per process
        (until returned: 100 ms after the process's last use)."""
        return limit_tokens - processes * max(1, limit_tokens // RedisBackend.LEASE_FRACTION)


def wait_for_window(window_s: int, need_s: float) -> None:
    """Start in a window with at least ``need_s`` left (sleep to the next one otherwise)."""
    left = window_s - time.time() % window_s
    if left < need_s:
        time.sleep(left + 0.05)


def _check_refusal(exc: openai.RateLimitError, limit_tokens: int, window_s: int) -> str | None:
    h = exc.response.headers
    body = exc.body if isinstance(exc.body, dict) else {}
    problems = []
    retry = h.get("retry-after", "")
    if not retry.isdigit() or not 1 <= int(retry) <= window_s:
        problems.append(f"retry-after {retry!r}")
    if not h.get("retry-after-ms", "").isdigit():
        problems.append("retry-after-ms")
    if h.get("x-ratelimit-limit-tokens") != str(limit_tokens):
        problems.append(f"x-ratelimit-limit-tokens {h.get('x-ratelimit-limit-tokens')!r}")
    if h.get("x-ratelimit-remaining-tokens") != "0":
        problems.append("x-ratelimit-remaining-tokens")
    if not RESET_RE.match(h.get("x-ratelimit-reset-tokens", "")):
        problems.append(f"x-ratelimit-reset-tokens {h.get('x-ratelimit-reset-tokens')!r}")
    if body.get("code") != "rate_limit_exceeded" or body.get("type") != "tokens":
        problems.append(f"body {body!r}")
    return "; ".join(problems) or None


async def burst(
    urls: Sequence[str], header: str, value: str, control_value: str, *, clients: int,
    requests_per_client: int, input_tokens: int, output_tokens: int, latency_ms: int,
    limit_tokens: int, window_s: int = 60,
) -> Burst:  # fmt: skip
    """``clients`` concurrent clients on selector value ``value`` (and one more on
    ``control_value``, unlimited by the same bucket) against ``urls`` in turn."""
    result = Burst()
    sdk = [openai.AsyncOpenAI(base_url=u + "/v1", api_key="sk-client", max_retries=0, timeout=30)
           for u in urls]  # fmt: skip
    fake = {"x-fake-input-tokens": str(input_tokens), "x-fake-output-tokens": str(output_tokens),
            "x-fake-latency-ms": str(latency_ms)}  # fmt: skip

    async def one(client: openai.AsyncOpenAI, selector_value: str) -> int | None:
        """Tokens served, None when refused (recorded)."""
        try:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                extra_headers={header: selector_value, **fake},
            )
        except openai.RateLimitError as exc:
            if selector_value == value:
                result.refused += 1
                problem = _check_refusal(exc, limit_tokens, window_s)
                if problem:
                    result.bad_refusals.append(problem)
            else:
                result.other["control 429"] += 1
            return None
        except openai.APIStatusError as exc:
            result.other[str(exc.status_code)] += 1
            return None
        except openai.APIConnectionError as exc:
            result.other[type(exc).__name__] += 1
            return None
        assert reply.usage is not None
        return reply.usage.total_tokens

    async def client_loop(i: int) -> None:
        client = sdk[i % len(sdk)]
        for _ in range(requests_per_client):
            tokens = await one(client, value)
            if tokens is not None:
                result.served += 1
                result.served_tokens += tokens

    async def control_loop() -> None:
        for i in range(requests_per_client * 2):
            result.control_total += 1
            if await one(sdk[i % len(sdk)], control_value) is not None:
                result.control_served += 1

    started = time.monotonic()
    await asyncio.gather(*(client_loop(i) for i in range(clients)), control_loop())
    result.elapsed_s = time.monotonic() - started
    for client in sdk:
        await client.close()
    return result


def limits_yaml(header: str, limit_tokens: int, unit: str = "minute") -> str:
    return (f"ratelimits:\n  - model: gpt-4o-mini\n    selector: {{key: {header}, value: \"*\"}}\n"
            f"    limit: {{tokens: {limit_tokens}, unit: {unit}}}\n")  # fmt: skip


def main() -> int:
    from benchmarks import run as bench
    from benchmarks.private_redis import PrivateRedis
    from tests.gateway_proc import GatewayProcess, write_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests-per-client", type=int, default=5)
    ap.add_argument("--limit-tokens", type=int, default=15000)
    ap.add_argument("--input-tokens", type=int, default=10)
    ap.add_argument("--output-tokens", type=int, default=20)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--redis-url", help="an existing Redis (default: a private redis-server)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rl-multi-"))
    fake, fake_port = bench.start_fake(1, work / "fake.log")
    redis = None if args.redis_url else PrivateRedis(work)
    url = args.redis_url or (redis.url if redis else "")
    gateways: list[GatewayProcess] = []
    try:
        for n in range(2):
            config = write_config(work / f"instance{n}.yaml", fake_port, {"redis_url": url})
            with open(config, "a") as fh:
                fh.write(limits_yaml("x-user-id", args.limit_tokens))
            gateways.append(GatewayProcess(config, workers=2))
        print(f"2 instances x 2 workers: pids {[g.pids for g in gateways]}, Redis {url}", flush=True)
        wait_for_window(60, 30)
        tokens = args.input_tokens + args.output_tokens
        r = asyncio.run(burst([g.url for g in gateways], "x-user-id", uuid.uuid4().hex, uuid.uuid4().hex,
                              clients=args.clients, requests_per_client=args.requests_per_client,
                              input_tokens=args.input_tokens, output_tokens=args.output_tokens,
                              latency_ms=args.latency_ms, limit_tokens=args.limit_tokens))  # fmt: skip
        bound = r.bound(args.limit_tokens, args.clients, tokens)
        floor = r.floor(args.limit_tokens, sum(len(g.pids) for g in gateways))
        print(f"{args.clients} clients x {args.requests_per_client} requests of {tokens} tokens in "
              f"{r.elapsed_s:.2f} s, limit {args.limit_tokens} tokens/minute")
        print(f"served {r.served} requests = {r.served_tokens} tokens (bound: {floor} .. {bound}; "
              f"overshoot {r.served_tokens - args.limit_tokens} tokens = "
              f"{(r.served_tokens - args.limit_tokens) / tokens:.0f} requests)")
        print(f"refused {r.refused} with 429, {len(r.bad_refusals)} with wrong headers "
              f"{r.bad_refusals[:3]}; other outcomes {dict(r.other)}")
        print(f"second selector value: {r.control_served}/{r.control_total} served")
        ok = (floor <= r.served_tokens <= bound and not r.bad_refusals and not r.other
              and r.control_served == r.control_total
              and r.served + r.refused == args.clients * args.requests_per_client)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for g in gateways:
            g.stop()
        if redis is not None:
            redis.stop()
        bench.stop_proc(fake)


if __name__ == "__main__":
    sys.exit(main())
