"""Managed mode's per-request work that issue 27 cut (in process, real sockets): a token is
hashed once, not on every request; a body with nothing to rewrite is forwarded as it is,
without walking it again; a pipe's route for a model is found once (kept on the pipe,
rebuilt at each reload); the exchange is built by the compiled constructor, not a class
call.  None of it changes what is refused or what is forwarded."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import plano_fast.wire
from benchmarks.fake_provider import FakeProviderThread
from plano_fast.gateway.modes import managed as managed_mode
from plano_fast.managed.state import ResolvedPipe, Target
from plano_fast.store.migrate import prepare_schema
from tests.gateway_proc import write_config
from tests.test_billing_faults import InProcessGateway
from tests.test_managed import DEFAULT_PIPE, MASTER_KEY, provision, store_call


def test_token_hashed_once_body_unchanged_forwarded_as_is_revocation_still_applies(
    fake: FakeProviderThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANO_FAST_MASTER_KEY", MASTER_KEY)
    config = write_config(tmp_path / "plano_config.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})
    sqlite_path = str(config.with_suffix(".db"))
    asyncio.run(prepare_schema(None, sqlite_path))
    tenant = provision(None, sqlite_path, DEFAULT_PIPE)
    token = tenant.token.encode()

    hashed: list[bytes] = []
    real_sha256 = hashlib.sha256

    def counting_sha256(data: bytes = b"", **kwargs: Any) -> Any:
        hashed.append(bytes(data))
        return real_sha256(data, **kwargs)

    rewrites: list[bytes] = []
    real_rewrite = plano_fast.wire.rewrite_request

    def counting_rewrite(body: bytes, *args: Any, **kwargs: Any) -> bytes:
        rewrites.append(body)
        return real_rewrite(body, *args, **kwargs)

    served: list[str | None] = []
    real_serves = Target.serves

    def counting_serves(self: Target, model: str | None) -> bool:
        served.append(model)
        return real_serves(self, model)

    def no_class_call(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ManagedExchange built by a class call on the request path")

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    monkeypatch.setattr(plano_fast.wire, "rewrite_request", counting_rewrite)
    monkeypatch.setattr(Target, "serves", counting_serves)
    monkeypatch.setattr(managed_mode.ManagedExchange, "__init__", no_class_call)
    gateway = InProcessGateway(config)
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.token, max_retries=0) as client:
            seen = len(fake.requests)
            for i in range(3):
                reply = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"hot {i}"}], max_tokens=50
                )
                assert reply.usage is not None and reply.usage.total_tokens > 0
            assert hashed.count(token) == 1  # three requests, one SHA-256 of the token
            assert served == ["gpt-4o-mini"] * 2  # the pipe's two targets asked once, not per request
            assert rewrites == []  # nothing to change: the client's bytes went as they were
            sent = [json.loads(r.body) for r in fake.requests[seen:]]
            assert [s["messages"][0]["content"] for s in sent] == ["hot 0", "hot 1", "hot 2"]
            assert all(s["max_tokens"] == 50 and "stream_options" not in s for s in sent)

            # A stream still gets include_usage injected (the rewrite runs when it must).
            chunks = list(client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "stream"}], max_tokens=50, stream=True,
            ))  # fmt: skip
            assert chunks and len(rewrites) == 1
            assert json.loads(fake.requests[-1].body)["stream_options"] == {"include_usage": True}

            # A route kept on the pipe does not outlive a reload: the key of the pipe's
            # only gpt-4o-mini target revoked, that model is no longer served.
            keys = store_call(None, sqlite_path, lambda s: s.list_provider_keys(tenant.project_id))
            openai_key = next(k for k in keys if k.provider == "openai")
            store_call(None, sqlite_path, lambda s: s.revoke_provider_key(openai_key.id))
            deadline = time.monotonic() + 5  # bound: managed_reload_s (1 s here)
            while True:
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
                except openai.BadRequestError as exc:
                    assert "is not served by pipe" in str(exc)
                    break
                assert time.monotonic() < deadline, "the revoked key's route was still used"
                time.sleep(0.2)

            # The memo maps a token to its digest only: a revoked token is refused.
            store_call(None, sqlite_path, lambda s: s.revoke_proxy_token(tenant.token_id))
            deadline = time.monotonic() + 5  # bound: managed_reload_s (1 s here)
            while True:
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
                except openai.AuthenticationError:
                    break
                except openai.BadRequestError:
                    pass  # the token still valid (the pipe serves no gpt-4o-mini now)
                assert time.monotonic() < deadline, "revocation never took effect"
                time.sleep(0.2)
            assert hashed.count(token) == 1
    finally:
        gateway.stop()


def test_routes_kept_per_pipe_are_bounded() -> None:
    pipe = ResolvedPipe(None, ())  # type: ignore[arg-type] - no target: every route is empty
    endpoint = managed_mode.CHAT_COMPLETIONS
    for i in range(managed_mode.ROUTES_PER_PIPE + 10):
        assert managed_mode._route(pipe, f"model-{i}", endpoint) == ()
        assert len(pipe.routes) <= managed_mode.ROUTES_PER_PIPE
    pipe.routes.clear()
    long_name = "m" * (managed_mode.ROUTE_MODEL_MAX_CHARS + 1)
    assert managed_mode._route(pipe, long_name, endpoint) == ()
    assert managed_mode._route(pipe, None, endpoint) == ()
    assert list(pipe.routes) == [(None, "chat_completions")]  # the long name is not kept
