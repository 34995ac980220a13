"""``plano_fast.ratelimit_headers: always`` (issue 22): admitted responses carry the
rate-limit headers too -- OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
and, for Anthropic-format clients, ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,
reset}`` (reset as an RFC 3339 time) -- computed from the check's own answer.  Over real
sockets with the official SDKs (``with_raw_response``), against a fake provider that sends
its own rate-limit headers (they are replaced, never doubled), for the Redis backend and
the instance-shared SQLite backend (no Redis, two workers); plus the pure functions."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from benchmarks.private_redis import PrivateRedis, available
from plano_fast.ratelimit import Bucket, admitted_headers, full_reset_s, parse_limits, with_headers
from tests.gateway_proc import GatewayProcess, write_config

#: the fake provider's usage per answer: 7 input + 5 output tokens
TOKENS = 12
LIMITS = "".join(
    f"  - model: {model}\n    selector: {{key: x-user-id, value: \"*\"}}\n    limit: {{{kind}: {n}, unit: hour}}\n"
    for model in ("gpt-4o-mini", "claude-sonnet-4-6")
    for kind, n in (("requests", 5), ("tokens", 1000))
)
#: OpenAI's reset format: "59m58s", "1h59m58s", "250ms", "0s"
RESET = re.compile(r"^(\d+h)?(\d+m)?\d+(m?s)$")


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProviderThread]:
    with FakeProviderThread(provider_headers=True, input_tokens=7, output_tokens=5) as fake:
        yield fake


def _gateway(provider: FakeProviderThread, path: Path, settings: dict[str, object], workers: int) -> GatewayProcess:
    config = write_config(path / "plano_config.yaml", provider.port, {"ratelimit_headers": "always", **settings})
    with open(config, "a") as f:
        f.write("ratelimits:\n" + LIMITS)
    return GatewayProcess(config, workers=workers)


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def gateway(request: pytest.FixtureRequest, provider: FakeProviderThread,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:  # fmt: skip
    """Redis (one worker: its own pending debits ride on its next check, so every count
    below is exact), or no Redis with two workers (the instance's SQLite file)."""
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "redis":
        if not available():
            pytest.skip("redis-server is not installed")
        with PrivateRedis(path) as redis, _gateway(provider, path, {"redis_url": redis.url}, 1) as gw:
            yield gw
    else:
        with _gateway(provider, path, {}, 2) as gw:
            yield gw


def _in_hours(text: str) -> float:
    """An OpenAI reset text in hours."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(\d+)(m?s)", text)
    assert m is not None, text
    h, mi, n, unit = m.groups()
    return int(h or 0) + int(mi or 0) / 60 + int(n) / (3600_000 if unit == "ms" else 3600)


def test_openai_clients_get_the_state_on_every_admitted_response(gateway: GatewayProcess) -> None:
    user = uuid.uuid4().hex
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        for k in range(1, 6):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-user-id": user})
            h = raw.headers
            # the gateway's limits, not the provider's (which says 10000 and 30000000)
            assert h.get_list("x-ratelimit-limit-requests") == ["5"]
            assert h.get_list("x-ratelimit-limit-tokens") == ["1000"]
            assert h["x-ratelimit-remaining-requests"] == str(5 - k)  # this request counted
            assert h["x-ratelimit-remaining-tokens"] == str(1000 - TOKENS * (k - 1))  # before its own
            assert RESET.match(h["x-ratelimit-reset-requests"]) and 1 < _in_hours(h["x-ratelimit-reset-requests"]) <= 2
            if k == 1:
                assert h["x-ratelimit-reset-tokens"] == "0s"  # nothing spent yet: already full
            else:
                assert 1 < _in_hours(h["x-ratelimit-reset-tokens"]) <= 2
            assert h["openai-processing-ms"] == "412"  # the provider's other headers pass
            assert raw.parse().choices[0].message.content
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"x-user-id": user})  # fmt: skip
        assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        # a request no limit applies to: the provider's headers as they were
        other = client.chat.completions.with_raw_response.create(
            model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-user-id": user})
        assert other.headers["x-ratelimit-limit-requests"] == "10000"


def test_anthropic_clients_get_anthropic_headers_with_rfc3339_resets(gateway: GatewayProcess) -> None:
    user = uuid.uuid4().hex
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-client", max_retries=0) as client:
        for k in range(1, 4):
            before = datetime.now(timezone.utc).replace(microsecond=0)
            raw = client.messages.with_raw_response.create(
                model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-user-id": user},
            )
            h = raw.headers
            assert h.get_list("anthropic-ratelimit-requests-limit") == ["5"]
            assert h.get_list("anthropic-ratelimit-tokens-limit") == ["1000"]  # the provider's said 2400000
            assert h["anthropic-ratelimit-requests-remaining"] == str(5 - k)
            assert h["anthropic-ratelimit-tokens-remaining"] == str(1000 - TOKENS * (k - 1))
            reset = datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"])
            assert h["anthropic-ratelimit-requests-reset"].endswith("Z") and reset.tzinfo is not None
            assert before + timedelta(hours=1) <= reset <= before + timedelta(hours=2, seconds=2)
            # the provider's headers the gateway has no counterpart of pass unchanged
            assert h["anthropic-ratelimit-input-tokens-limit"] == "2000000"
            assert "x-ratelimit-limit-requests" not in h  # no OpenAI-style ones for Anthropic clients
            assert raw.parse().content[0].text  # type: ignore[union-attr]


def test_a_converted_answer_gets_the_client_formats_headers(gateway: GatewayProcess) -> None:
    """An Anthropic-format client on an OpenAI provider (the answer's head is rebuilt by
    the converter): anthropic-ratelimit-* headers, not the OpenAI-style ones."""
    user = uuid.uuid4().hex
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-client", max_retries=0) as client:
        for k in (1, 2):
            raw = client.messages.with_raw_response.create(
                model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-user-id": user},
            )
            h = raw.headers
            assert h.get_list("anthropic-ratelimit-requests-limit") == ["5"]
            assert h["anthropic-ratelimit-requests-remaining"] == str(5 - k)
            assert h["anthropic-ratelimit-tokens-remaining"] == str(1000 - TOKENS * (k - 1))
            assert h.get_list("x-ratelimit-limit-requests") in ([], ["10000"])  # never ours
            assert raw.parse().content[0].text  # type: ignore[union-attr]


def test_default_is_refusals_only(provider: FakeProviderThread, tmp_path: Path) -> None:
    """Without ratelimit_headers an admitted response carries only what the provider sent;
    `plano-fast validate` says which policy is in force; a wrong value is refused."""
    config = write_config(tmp_path / "plano_config.yaml", provider.port)
    with open(config, "a") as f:
        f.write("ratelimits:\n" + LIMITS)
    with GatewayProcess(config) as gw, openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-c", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-user-id": "u"})
        assert raw.headers.get_list("x-ratelimit-limit-requests") == ["10000"]
    out = subprocess.run([sys.executable, "-m", "plano_fast", "validate", str(config)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "rate-limit headers: refused: x-ratelimit-* (anthropic-ratelimit-* for Anthropic clients)" in out.stdout
    bad = write_config(tmp_path / "plano_bad.yaml", provider.port, {"ratelimit_headers": "sometimes"})
    out = subprocess.run([sys.executable, "-m", "plano_fast", "validate", str(bad)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0 and "ratelimit_headers" in out.stdout + out.stderr
    assert "refused" in out.stdout + out.stderr and "always" in out.stdout + out.stderr


def test_admitted_headers_pick_the_tightest_bucket_per_kind() -> None:
    req_a, req_b, tok = parse_limits([
        {"model": "m", "selector": {"key": "a"}, "limit": {"requests": 10, "unit": "minute"}},
        {"model": "m", "selector": {"key": "b"}, "limit": {"requests": 100, "unit": "hour"}},
        {"model": "m", "selector": {"key": "c"}, "limit": {"tokens": 500, "unit": "minute"}},
    ])  # fmt: skip
    buckets = [Bucket(req_a, "0:x"), Bucket(req_b, "1:x"), Bucket(tok, "2:x")]
    now = 3600.0 * 1000 + 30.0  # 30 s into a minute, 30 s into an hour
    # counts: req_a 2 + 0 (8 left), req_b 95 now (5 left: the tighter), tok prev 200 * 0.5 + 50
    block = admitted_headers(buckets, [-1, 0, 2, 0, 95, 200, 50], now, anthropic=False)
    assert block == (b"x-ratelimit-limit-requests: 100\r\nx-ratelimit-remaining-requests: 5\r\n"
                     b"x-ratelimit-reset-requests: 1h59m30s\r\n"
                     b"x-ratelimit-limit-tokens: 500\r\nx-ratelimit-remaining-tokens: 350\r\n"
                     b"x-ratelimit-reset-tokens: 1m30s\r\n")  # fmt: skip
    ant = admitted_headers(buckets[2:], [-1, 200, 0], now, anthropic=True)
    stamp = datetime.fromtimestamp(now + 30, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    assert ant == (b"anthropic-ratelimit-tokens-limit: 500\r\nanthropic-ratelimit-tokens-remaining: 400\r\n"
                   b"anthropic-ratelimit-tokens-reset: " + stamp + b"\r\n")  # fmt: skip
    assert full_reset_s(0, 0, 60, now) == 0.0 and full_reset_s(5, 0, 60, now) == 30.0


def test_with_headers_replaces_the_providers_of_the_same_names() -> None:
    upstream = (b"X-RateLimit-Limit-Requests: 10000\r\nx-ratelimit-limit-tokens: 30000000\r\n"
                b"openai-version: 2020-10-01\r\n")  # fmt: skip
    ours = b"x-ratelimit-limit-requests: 5\r\nx-ratelimit-remaining-requests: 4\r\nx-ratelimit-reset-requests: 1s\r\n"
    assert with_headers(upstream, ours) == (b"x-ratelimit-limit-tokens: 30000000\r\nopenai-version: 2020-10-01\r\n"
                                            + ours)  # fmt: skip
    plain = b"content-type: application/json\r\n"
    assert with_headers(plain, ours) == plain + ours
