"""Plano's ratelimits (issue 22): the sliding-window arithmetic, then over real sockets
with the official SDKs -- in-process buckets for one worker, Redis buckets shared by two
workers, and Redis unreachable (fail_closed / fail_open)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.ratelimit import (
    Bucket,
    MemoryBackend,
    RateLimitConfigError,
    SqliteBackend,
    Verdict,
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
    # admitted: every bucket's (previous, current) window counts, this request counted
    assert backend.check_now(buckets, 60.0) == [-1, 0, 1, 0, 0]
    assert backend.check_now(buckets, 61.0) == [-1, 0, 2, 0, 0]
    verdict = backend.check_now(buckets, 62.0)
    assert isinstance(verdict, Verdict) and verdict.limit is req and verdict.retry_after_s == 58.0
    backend.debit([Bucket(tok, "1:b")], 60, 62.0)
    assert isinstance(backend.check_now([Bucket(tok, "1:b")], 63.0), Verdict)  # tokens over their limit
    assert backend.check_now([Bucket(tok, "1:c")], 63.0) == [-1, 0, 0]  # another value: its own bucket
    # the next window: the previous one counts by its overlap (60 x 10/60 = 10 < 50)
    assert backend.check_now([Bucket(tok, "1:b")], 170.0) == [-1, 60, 0]


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
    log_path = tmp_path / "access.jsonl"
    gateway = start(fake, tmp_path, limits_text("*", 3), {"access_log": str(log_path)})
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
        gateway.stop()  # writes what is pending
        # every answer has its access-log line, the two 429s too
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        refusals = [(x["status"], x["outcome"], x["attempt_trail"], x["endpoint"]) for x in lines if x["status"] == 429]
        assert refusals == [(429, "refused", "rate_limit_exceeded", "chat_completions"),
                            (429, "refused", "rate_limit_exceeded", "messages")]  # fmt: skip
        assert all(x["status"] == 200 and x["outcome"] == "ok" for x in lines if x["status"] != 429)
        assert len(lines) == 5 + sum(1 for x in lines if x["endpoint"] == "messages")
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


def test_project_and_api_key_selectors_parse_and_match() -> None:
    digest = "ab" * 32
    project, key, anymodel = parse_limits([
        {"model": "*", "selector": {"project": "*"}, "limit": {"requests": 3, "unit": "minute"}},
        {"model": "gpt-4o", "selector": {"api_key": digest}, "limit": {"tokens": 10, "unit": "second"}},
        {"model": "*", "selector": {"key": "x-team", "value": "red"}, "limit": {"tokens": 5, "unit": "day"}},
    ])  # fmt: skip
    assert project.describe() == "any model, each project: at most 3 requests per minute"
    assert key.describe() == "model gpt-4o, API key abababababab...: at most 10 tokens per second"
    assert key.window_s == 1 and key.scope == "api_key" and anymodel.scope == "header"
    with pytest.raises(RateLimitConfigError, match=r"api_key: .*never the key"):
        parse_limits([{"model": "m", "selector": {"api_key": "sk-live-secret"}, "limit": {"requests": 1, "unit": "day"}}])
    with pytest.raises(RateLimitConfigError, match="give one of"):
        parse_limits([{"model": "m", "selector": {"key": "k", "project": "*"}, "limit": {"requests": 1, "unit": "day"}}])
    limits = build([
        {"model": "*", "selector": {"project": "*"}, "limit": {"requests": 3, "unit": "minute"}},
        {"model": "gpt-4o", "selector": {"api_key": digest}, "limit": {"tokens": 10, "unit": "second"}},
    ], None, False, None)  # fmt: skip
    assert limits is not None and isinstance(limits.backend, MemoryBackend)
    keys = [b.key for b in limits.buckets(("gpt-4o",), [], "p1", digest)]
    assert keys == [f"1:{digest}", "0:p1"]
    assert [b.key for b in limits.buckets(("gpt-4o",), [], None, "cd" * 32)] == []  # no project, other key
    assert [b.key for b in limits.buckets(("other",), [], "p2", digest)] == ["0:p2"]  # "*" = any model


def _spec_buckets(limits: Any, models: tuple[str | None, ...], headers: list[tuple[bytes, bytes]],
                  project: str | None, key_hash: str | None) -> list[str]:  # fmt: skip
    """The documented match, written out: each name's own limits in config order, then the
    ``"*"`` ones, each limit once; a bucket per matching selector value."""
    out, seen = [], set()
    for group in [[lim for lim in limits.limits if lim.model == m] for m in models if m] + [
        [lim for lim in limits.limits if lim.model == "*"]
    ]:
        for lim in group:
            if lim.index in seen:
                continue
            if lim.scope == "header":
                value = next((v.decode("latin-1").strip() for n, v in headers if n == lim.header), None)
            else:
                value = project if lim.scope == "project" else key_hash
            if value is None or (lim.value != "*" and value != lim.value):
                continue
            seen.add(lim.index)
            out.append(f"{lim.index}:{value}")
    return out


def test_buckets_are_kept_per_caller_and_equal_the_full_match() -> None:
    """Without header-scoped limits a caller's buckets are made once and the same tuple
    answers its next requests; every answer is the documented match (names of the model
    with and without limits of their own, several names, value-specific selectors)."""
    digest, other = "ab" * 32, "cd" * 32
    limits = build([
        {"model": "*", "selector": {"project": "*"}, "limit": {"requests": 3, "unit": "minute"}},
        {"model": "gpt-4o", "selector": {"api_key": digest}, "limit": {"tokens": 10, "unit": "second"}},
        {"model": "gpt-4o", "selector": {"project": "p2"}, "limit": {"tokens": 99, "unit": "hour"}},
        {"model": "o3", "selector": {"api_key": "*"}, "limit": {"requests": 7, "unit": "day"}},
        {"model": "*", "selector": {"api_key": "*"}, "limit": {"tokens": 500, "unit": "minute"}},
    ], None, False, None)  # fmt: skip
    assert limits is not None
    names: list[tuple[str | None, ...]] = [("gpt-4o",), ("o3",), ("other",), (None,), ("x", "gpt-4o", "openai/gpt-4o"),
                                           ("gpt-4o", "gpt-4o"), ("gpt-4o", "o3"), ("o3", None, "gpt-4o")]  # fmt: skip
    for models in names:
        for project in ("p1", "p2", None):
            for key in (digest, other, None):
                first = limits.buckets(models, [], project, key)
                assert [b.key for b in first] == _spec_buckets(limits, models, [], project, key), (models, project, key)
                again = limits.buckets(models, [(b"x-any", b"1")], project, key)
                assert [b.key for b in again] == [b.key for b in first]
                if len(set(models) & {"gpt-4o", "o3"}) < 2:  # (two names' limits merged are not kept)
                    assert again is first, (models, project, key)


def test_bucket_memo_is_bounded_and_keyed_by_caller_ids_only() -> None:
    """Many key hashes (a config-mode client can send any key) and model names (configured
    ones, and the client's own strings): the plans' memos together start over at their
    bound, hold no model name, and answer right after starting over."""
    limits = build([
        {"model": "*", "selector": {"api_key": "*"}, "limit": {"requests": 9, "unit": "minute"}},
        {"model": "gpt-4o", "selector": {"project": "p"}, "limit": {"requests": 9, "unit": "minute"}},
        {"model": "o3", "selector": {"api_key": "*"}, "limit": {"requests": 9, "unit": "minute"}},
    ], None, False, None)  # fmt: skip
    assert limits is not None
    plans = [limits._any, *limits._plans.values()]
    bound = plans[0].MEMO_MAX
    for i in range(bound + 10):
        digest = "%064x" % i
        model = ("gpt-4o", "o3", f"model-{i}" * 50)[i % 3]
        want = {"gpt-4o": [f"0:{digest}"], "o3": [f"2:{digest}", f"0:{digest}"]}.get(model, [f"0:{digest}"])
        assert [b.key for b in limits.buckets((model,), [], "x", digest)] == want
        assert sum(len(p.memo) for p in plans) <= bound
    assert sum(len(p.memo) for p in plans) == 10  # started over once
    assert sorted(limits._plans) == ["gpt-4o", "o3"]  # no client's model name kept
    ids = [x for p in plans for k in p.memo for x in (k if isinstance(k, tuple) else (k,))]
    assert ids and all(x == "x" or len(x) == 64 for x in ids)  # the project and key hashes only


def test_header_scoped_limits_are_matched_per_request_never_kept() -> None:
    """A header-scoped limit makes a bucket per header value: those requests are matched
    each time (their values are the client's), the other limits' answers too."""
    limits = build([
        {"model": "m", "selector": {"key": "x-user", "value": "*"}, "limit": {"requests": 3, "unit": "minute"}},
        {"model": "*", "selector": {"project": "*"}, "limit": {"requests": 3, "unit": "minute"}},
    ], None, False, None)  # fmt: skip
    assert limits is not None
    for user in ("u1", "u2", "u1", " u3 "):
        got = [b.key for b in limits.buckets(("m",), [(b"x-user", user.encode())], "p", None)]
        assert got == [f"0:{user.strip()}", "1:p"]
    assert [b.key for b in limits.buckets(("m",), [], "p", None)] == ["1:p"]  # no header: that limit not
    assert [b.key for b in limits.buckets(("n",), [(b"x-user", b"u1")], "p", None)] == ["1:p"]  # other model
    assert not limits._plans["m"].memo and len(limits._any.memo) == 1  # header values never kept


def test_sqlite_backend_is_one_store_for_every_worker(tmp_path: Path) -> None:
    """Two connections to the instance's file stand for two workers: one count."""
    (req, tok) = parse_limits([
        {"model": "m", "selector": {"key": "k"}, "limit": {"requests": 3, "unit": "minute"}},
        {"model": "m", "selector": {"key": "k"}, "limit": {"tokens": 50, "unit": "minute"}},
    ])  # fmt: skip
    assert build([], None, False, str(tmp_path)) is None  # no limits: nothing built
    a = SqliteBackend(str(tmp_path / "rl.sqlite3"))
    b = SqliteBackend(str(tmp_path / "rl.sqlite3"))
    buckets = [Bucket(req, "0:x")]
    assert a.check_now(buckets, 60.0) == [-1, 0, 1] and b.check_now(buckets, 60.5) == [-1, 0, 2]
    assert a.check_now(buckets, 61.0) == [-1, 0, 3]
    verdict = b.check_now(buckets, 62.0)
    assert isinstance(verdict, Verdict) and verdict.limit is req and verdict.retry_after_s == 58.0
    a.debit([Bucket(tok, "1:x")], 60, 62.0)
    assert isinstance(b.check_now([Bucket(tok, "1:x")], 63.0), Verdict)  # the other worker's debit counts
    assert b.check_now([Bucket(tok, "1:y")], 63.0) == [-1, 0, 0]


def _fw_limits(other_key_hash: str) -> str:
    return (
        "  - model: \"*\"\n    selector: {project: \"*\"}\n    limit: {requests: 3, unit: minute}\n"
        f"  - model: \"*\"\n    selector: {{api_key: \"{other_key_hash}\"}}\n    limit: {{tokens: 1, unit: hour}}\n"
    )


def test_firewall_limits_per_project_and_per_key(fake: FakeProviderThread, tmp_path: Path) -> None:
    """Firewall mode: three requests per project per minute (two keys of one project share
    it, another project has its own), and one key of the other project has a token limit."""
    from tests.test_firewall import ANT_KEY, USER_KEY, sha, setup_keys, with_store

    other_key = "sk-fw-other-project-key-000000000"
    sqlite_path = tmp_path / "plano_fw.db"
    config = write_config(tmp_path / "plano_fw.yaml", fake.port, {"mode": "firewall"})
    with open(config, "a") as f:
        f.write("ratelimits:\n" + _fw_limits(sha(other_key)))

    def register() -> None:
        setup_keys(str(sqlite_path), fake.url)

        async def other(store: Any) -> None:
            project = await store.create_project("fw-other")
            await store.register_api_key(sha(other_key), project.id, "openai", fake.url, "other", None)

        with_store(str(sqlite_path), other)

    gateway = GatewayProcess(config, before_start=register)
    try:
        def ask(key: str) -> Any:
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
                return client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        assert ask(USER_KEY).status_code == 200 and ask(USER_KEY).status_code == 200
        with anthropic.Anthropic(base_url=gateway.url, api_key=ANT_KEY, max_retries=0) as ant:
            def ant_ask() -> Any:
                return ant.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}])  # fmt: skip

            ant_ask()  # the project's third request, through its other key
            with pytest.raises(anthropic.RateLimitError) as ant_err:
                ant_ask()
        h = ant_err.value.response.headers
        assert h["anthropic-ratelimit-requests-limit"] == "3" and h["anthropic-ratelimit-requests-remaining"] == "0"
        assert ant_err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        with pytest.raises(openai.RateLimitError) as err:
            ask(USER_KEY)
        assert err.value.response.headers["x-ratelimit-limit-requests"] == "3"
        # the other project: its own request bucket; its key's token limit (1/hour) is
        # crossed by the first answer, so the second request is refused on tokens
        assert ask(other_key).status_code == 200
        with pytest.raises(openai.RateLimitError) as err:
            ask(other_key)
        headers = err.value.response.headers
        assert headers["x-ratelimit-limit-tokens"] == "1" and err.value.body["type"] == "tokens"  # type: ignore[index]
        assert 1 <= int(headers["retry-after"]) <= 3600 and int(headers["retry-after-ms"]) > 0
        assert other_key not in gateway.log_text() and sha(other_key) not in err.value.response.text
    finally:
        gateway.stop()


def test_the_openai_sdk_retries_after_the_advertised_delay(fake: FakeProviderThread, tmp_path: Path) -> None:
    """Config mode, one request per second per client key (``unit: second``, a plano_fast
    extension): a call made in the same second as the one before gets 429 with
    ``retry-after-ms``; the SDK (max_retries=2) waits that long and its retry is served."""
    config = write_config(tmp_path / "plano_retry.yaml", fake.port)
    with open(config, "a") as f:
        f.write("ratelimits:\n  - model: gpt-4o-mini\n    selector: {api_key: \"*\"}\n"
                "    limit: {requests: 1, unit: second}\n")  # fmt: skip
    seen: list[tuple[float, int, str | None]] = []

    def record(response: httpx.Response) -> None:
        seen.append((time.monotonic(), response.status_code, response.headers.get("retry-after-ms")))

    gateway = GatewayProcess(config)
    try:
        http = httpx.Client(event_hooks={"response": [record]})
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=f"sk-{uuid.uuid4().hex}",
                           max_retries=2, http_client=http) as client:  # fmt: skip
            retried = None
            for _ in range(6):
                del seen[:]
                fake.clear()
                reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                assert reply.choices[0].message.content  # every call ends served
                if [s for _, s, _ in seen] == [429, 200]:
                    retried = list(seen)
                    break
        assert retried is not None, "no call was refused and retried"
        (refused_at, _, wait_ms), (served_at, _, _) = retried
        assert wait_ms is not None and 0 < int(wait_ms) <= 1000
        assert served_at - refused_at >= int(wait_ms) / 1000 * 0.9  # waited as advertised
        assert len([r for r in fake.requests if not r.path.startswith("/_fake")]) == 1  # refusal never forwarded
    finally:
        gateway.stop()


def test_gemini_format_clients_are_limited_too(fake: FakeProviderThread, tmp_path: Path) -> None:
    """Config mode's Gemini-format endpoint (native and converted) counts against the same
    limits: it was a way around them.  Refused: 429 RESOURCE_EXHAUSTED, Gemini's shape."""
    import json

    from tests.test_conversion_e2e import GEMINI_NATIVE, _gemini_post

    config = write_config(tmp_path / "plano_gemini.yaml", fake.port,
                          extra_providers=GEMINI_NATIVE.format(port=fake.port))  # fmt: skip
    with open(config, "a") as f:
        f.write("ratelimits:\n"
                "  - model: \"*\"\n    selector: {api_key: \"*\"}\n    limit: {requests: 2, unit: minute}\n")  # fmt: skip
    gateway = GatewayProcess(config)
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    try:
        key = f"goog-{uuid.uuid4().hex}"
        native = gateway.url + "/v1beta/models/gemini-2.5-flash:generateContent"
        converted = gateway.url + "/v1beta/models/gpt-4o-mini:generateContent"  # an OpenAI provider
        assert _gemini_post(native, body, key)[0] == 200
        assert _gemini_post(converted, body, key)[0] == 200
        for url in (native, converted):
            status, raw = _gemini_post(url, body, key)
            assert status == 429, raw
            assert json.loads(raw)["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert _gemini_post(native, body, f"goog-{uuid.uuid4().hex}")[0] == 200  # another key
    finally:
        gateway.stop()


def test_managed_limits_per_project_and_per_token(fake: FakeProviderThread, tmp_path: Path) -> None:
    """Managed mode: two requests per project per minute (another project has its own
    bucket) and a token limit on one token's hash, before any budget reservation."""
    from plano_fast.managed.state import token_hash
    from tests.test_managed import DEFAULT_PIPE, ENV, provision

    sqlite_path = str(tmp_path / "plano_managed.db")
    tenants: list[Any] = []
    config = write_config(tmp_path / "plano_managed.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})

    def setup() -> None:
        tenants.append(provision(None, sqlite_path, DEFAULT_PIPE))
        tenants.append(provision(None, sqlite_path, DEFAULT_PIPE))
        with open(config, "a") as f:
            f.write("ratelimits:\n"
                    "  - model: \"*\"\n    selector: {project: \"*\"}\n    limit: {requests: 2, unit: minute}\n"
                    f"  - model: gpt-4o-mini\n    selector: {{api_key: \"{token_hash(tenants[1].token)}\"}}\n"
                    "    limit: {tokens: 1, unit: hour}\n")  # fmt: skip

    gateway = GatewayProcess(config, env=ENV, before_start=setup)
    try:
        def ask(token: str) -> int:
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0) as client:
                try:
                    return client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).status_code
                except openai.RateLimitError as exc:
                    assert exc.response.headers["retry-after"]
                    return 429

        first, second = tenants
        assert [ask(first.token) for _ in range(3)] == [200, 200, 429]  # the project's requests
        assert [ask(second.token) for _ in range(2)] == [200, 429]  # its token's tokens (1/hour)
        assert second.token not in gateway.log_text()
    finally:
        gateway.stop()
