"""Plano's ratelimits (issue 22): the sliding-window arithmetic, then over real sockets
with the official SDKs -- in-process buckets for one worker, Redis buckets shared by two
workers, and Redis unreachable (fail_closed / fail_open)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.ratelimit import (
    Bucket,
    MemoryBackend,
    RateLimitConfigError,
    build,
    estimate,
    parse_limits,
    reset_text,
    retry_after,
)
from tests.gateway_proc import GatewayProcess, write_config


def test_parse_names_the_field() -> None:
    ok = parse_limits([{"model": "gpt-4o", "selector": {"key": "X-User", "value": "*"},
                        "limit": {"tokens": 100, "unit": "minute"}}])  # fmt: skip
    assert ok[0].header == b"x-user" and ok[0].window_s == 60 and ok[0].kind == "tokens"
    assert ok[0].describe() == "model gpt-4o, each distinct x-user: at most 100 tokens per minute"
    bad = [
        ([{"selector": {"key": "k"}, "limit": {"tokens": 1, "unit": "minute"}}], r"ratelimits\[0\]\.model"),
        ([{"model": "m", "selector": {}, "limit": {"tokens": 1, "unit": "minute"}}], r"selector\.key"),
        ([{"model": "m", "selector": {"key": "k"}, "limit": {"tokens": 1, "unit": "week"}}], r"limit\.unit"),
        ([{"model": "m", "selector": {"key": "k"}, "limit": {"tokens": 0, "unit": "day"}}], r"limit\.tokens"),
        ([{"model": "m", "selector": {"key": "k"}, "limit": {"tokens": 1, "requests": 1, "unit": "day"}}], "exactly one"),
    ]  # fmt: skip
    for raw, message in bad:
        with pytest.raises(RateLimitConfigError, match=message):
            parse_limits(raw)


def test_sliding_window_arithmetic() -> None:
    # 30 s into a minute: half of the previous window still counts
    assert estimate(100, 10, 60, 630.0) == 60.0
    # full current window: wait for its end; otherwise until the previous share decays
    assert retry_after(0, 100, 100, 60, 630.0) == 30.0
    assert abs(retry_after(100, 10, 50, 60, 630.0) - 6.0) < 1e-9  # 100*(1-(30+t)/60)+10 < 50
    assert [reset_text(x) for x in (0.25, 1, 59.2, 360, 3723)] == ["250ms", "1s", "1m0s", "6m0s", "1h2m3s"]


def test_memory_backend_requests_then_tokens() -> None:
    (req, tok) = parse_limits([
        {"model": "m", "selector": {"key": "k", "value": "*"}, "limit": {"requests": 2, "unit": "minute"}},
        {"model": "m", "selector": {"key": "k", "value": "*"}, "limit": {"tokens": 50, "unit": "minute"}},
    ])  # fmt: skip
    backend = MemoryBackend()
    buckets = [Bucket(req, "0:a"), Bucket(tok, "1:a")]
    assert backend.check_now(buckets, 60.0) is None and backend.check_now(buckets, 61.0) is None
    verdict = backend.check_now(buckets, 62.0)
    assert verdict is not None and verdict.limit is req and verdict.retry_after_s == 58.0
    backend.debit([Bucket(tok, "1:b")], 60, 62.0)
    assert backend.check_now([Bucket(tok, "1:b")], 63.0) is not None  # tokens over their limit
    assert backend.check_now([Bucket(tok, "1:c")], 63.0) is None  # another value: its own bucket


def start(fake: FakeProviderThread, tmp_path: Path, limits: str, settings: dict[str, object] | None = None,
          workers: int = 1) -> GatewayProcess:
    config = write_config(tmp_path / f"plano_config_{uuid.uuid4().hex[:6]}.yaml", fake.port, settings)
    with open(config, "a") as f:
        f.write("ratelimits:\n" + limits)
    return GatewayProcess(config, workers=workers)


def limits_text(value: str, requests: int) -> str:
    return (
        f"  - model: gpt-4o-mini\n    selector: {{key: x-user-id, value: \"{value}\"}}\n"
        f"    limit: {{requests: {requests}, unit: minute}}\n"
        f"  - model: claude-sonnet-4-6\n    selector: {{key: x-user-id, value: \"*\"}}\n"
        f"    limit: {{tokens: 30, unit: hour}}\n"
    )


def chat(gateway: GatewayProcess, user: str, model: str = "gpt-4o-mini") -> Any:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-user-id": user}
        )


def test_in_process_limits_refuse_with_the_sdks_headers(fake: FakeProviderThread, tmp_path: Path) -> None:
    gateway = start(fake, tmp_path, limits_text("*", 3))
    try:
        for _ in range(3):
            assert chat(gateway, "alice").status_code == 200
        with pytest.raises(openai.RateLimitError) as err:
            chat(gateway, "alice")
        headers = err.value.response.headers
        assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(headers["retry-after"]) <= 60 and headers["x-ratelimit-reset-requests"].endswith("s")
        assert err.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert chat(gateway, "bob").status_code == 200  # another selector value: its own bucket
        # token limit, Anthropic client: debited after each answer, refused once over
        with anthropic.Anthropic(base_url=gateway.url, api_key="sk-client", max_retries=0) as client:
            refused = None
            for _ in range(10):
                try:
                    client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"x-user-id": "carol"})  # fmt: skip
                except anthropic.RateLimitError as exc:
                    refused = exc
                    break
            assert refused is not None
            h = refused.response.headers
            assert h["anthropic-ratelimit-tokens-limit"] == "30" and "retry-after" in h
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis (127.0.0.1:6379) when it answers, else a private redis-server."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                yield "redis://127.0.0.1:6379/0"
                return
    except OSError:
        pass
    port = _closed_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_buckets_hold_across_two_workers(fake: FakeProviderThread, tmp_path: Path, redis_url: str) -> None:
    user = uuid.uuid4().hex  # a fresh bucket in the shared Redis
    gateway = start(fake, tmp_path, limits_text(user, 5), {"redis_url": redis_url}, workers=2)
    try:
        statuses = []
        for _ in range(9):
            try:
                statuses.append(chat(gateway, user).status_code)
            except openai.RateLimitError:
                statuses.append(429)
        assert statuses.count(200) == 5 and statuses.count(429) == 4
        assert chat(gateway, uuid.uuid4().hex).status_code == 200  # not limited
    finally:
        gateway.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("mode", "expect"), [("fail_closed", 503), ("fail_open", 200)])
def test_redis_unreachable_follows_the_configured_mode(
    fake: FakeProviderThread, tmp_path: Path, mode: str, expect: int
) -> None:
    settings = {"redis_url": f"redis://127.0.0.1:{_closed_port()}/0", "ratelimit_on_backend_error": mode}
    gateway = start(fake, tmp_path, limits_text("*", 5), settings)
    try:
        fake.clear()
        try:
            status = chat(gateway, "dave").status_code
        except openai.APIStatusError as exc:
            status = exc.status_code
        assert status == expect
        assert len([r for r in fake.requests if not r.path.startswith("/_fake")]) == (1 if expect == 200 else 0)
    finally:
        gateway.stop()
    assert "rate-limit backend unreachable" in gateway.log_path.read_text()


def test_validate_explains_each_limit(fake: FakeProviderThread, tmp_path: Path) -> None:
    import sys

    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    with open(config, "a") as f:
        f.write("ratelimits:\n" + limits_text("*", 3))
    out = subprocess.run([sys.executable, "-m", "plano_fast", "validate", str(config)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "rate limit: model gpt-4o-mini, each distinct x-user-id: at most 3 requests per minute" in out.stdout
    assert "rate limit: model claude-sonnet-4-6, each distinct x-user-id: at most 30 tokens per hour" in out.stdout
