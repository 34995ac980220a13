"""Config mode's soft spending limits per client key (README "The three modes": config
mode identifies a caller by its key's SHA-256).  A limit is set through the admin API on
the hash of a key the gateway has never registered (config mode has no key registry); the
request that crosses it is served, the next ones get 429 ``spending_limit_exceeded`` in the
client's format within the flush + check intervals (1 s each here), other keys and keyless
callers are unaffected, and raising the limit unblocks."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import anthropic
import openai

from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import GPT_4O_MINI_COST, USAGE_HEADERS
from tests.test_conversion_e2e import _gemini_post

ADMIN_KEY = "admin-key-for-config-limits-0123456789"
LIMITED = "sk-config-client-limited-0001"
OTHER = "sk-config-client-other-0002"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _admin(gateway: GatewayProcess, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{gateway.admin_port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _chat(key: str, gateway: GatewayProcess) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers=USAGE_HEADERS,
        )


def test_a_config_mode_key_limit_blocks_that_key_only_and_raising_it_unblocks(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = make_gateway({"admin_port": 0, "admin_key": "$PLANO_FAST_TEST_ADMIN"},
                           env={"PLANO_FAST_TEST_ADMIN": ADMIN_KEY})
    limit = 3 * GPT_4O_MINI_COST
    status, body = _admin(gateway, "PUT", "/limits", {
        "scope_kind": "key", "scope_id": _sha(LIMITED), "period": "total", "limit_nano_usd": limit,
    })
    assert status == 200, body
    assert body["scope_id"] == _sha(LIMITED) and LIMITED not in json.dumps(body)
    # not a SHA-256 hex: refused, whatever the mode
    assert _admin(gateway, "PUT", "/limits", {
        "scope_kind": "key", "scope_id": LIMITED, "period": "total", "limit_nano_usd": limit,
    })[0] == 400

    for _ in range(3):
        _chat(LIMITED, gateway)
    crossed = time.monotonic()
    blocked_after = None
    while time.monotonic() - crossed < 10:
        try:
            _chat(LIMITED, gateway)
        except openai.RateLimitError as exc:
            blocked_after = time.monotonic() - crossed
            assert exc.body["code"] == "spending_limit_exceeded"  # type: ignore[index]
            break
        time.sleep(0.05)
    assert blocked_after is not None, "the key over its limit was never blocked"
    assert blocked_after < 3.0, blocked_after
    assert ["key", _sha(LIMITED)] in _admin(gateway, "GET", "/budget/blocked")[1]["scopes"]

    # The same key in another client format is the same caller: refused in Anthropic's shape.
    with anthropic.Anthropic(base_url=gateway.url, api_key=LIMITED, max_retries=0) as ant:
        try:
            ant.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                                messages=[{"role": "user", "content": "x"}])
            raise AssertionError("the blocked key was served through /v1/messages")
        except anthropic.RateLimitError as exc:
            assert exc.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    # ... and in Gemini's (a Gemini-format client converted to the OpenAI provider)
    status, raw = _gemini_post(gateway.url + "/v1beta/models/gpt-4o-mini:generateContent",
                               {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}, key=LIMITED)
    assert status == 429, raw
    assert json.loads(raw)["error"]["status"] == "RESOURCE_EXHAUSTED"
    status, raw = _gemini_post(gateway.url + "/v1beta/models/gpt-4o-mini:generateContent",
                               {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}, key=OTHER)
    assert status == 200, raw
    _chat(OTHER, gateway)  # another key: served

    status, body = _admin(gateway, "PUT", "/limits", {
        "scope_kind": "key", "scope_id": _sha(LIMITED), "period": "total", "limit_nano_usd": 100 * limit,
    })
    assert status == 200, body
    deadline = time.monotonic() + 5
    while True:
        try:
            _chat(LIMITED, gateway)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "raising the limit did not unblock"
            time.sleep(0.1)


def test_the_readmes_cli_command_sets_a_config_mode_key_limit(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """README "The three modes": ``plano-fast limits set --scope-kind key --scope-id <the
    key's SHA-256> --period monthly --limit-usd ...`` against a config-mode gateway; the
    key is blocked once its usage crosses it, ``limits list`` shows it, ``limits delete``
    lifts it."""
    import os
    import subprocess
    import sys

    gateway = make_gateway({"admin_port": 0, "admin_key": "$PLANO_FAST_TEST_ADMIN"},
                           env={"PLANO_FAST_TEST_ADMIN": ADMIN_KEY})  # fmt: skip
    key = "sk-config-client-cli-0003"
    env = {**os.environ, "PLANO_FAST_ADMIN_URL": f"http://127.0.0.1:{gateway.admin_port}",
           "PLANO_FAST_ADMIN_KEY": ADMIN_KEY}  # fmt: skip

    def cli(*args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "plano_fast", *args], capture_output=True, text=True,
                             env=env, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    usd = f"{3 * GPT_4O_MINI_COST / 1e9:.9f}"  # three requests' cost
    made = cli("limits", "set", "--scope-kind", "key", "--scope-id", _sha(key), "--period", "monthly", "--limit-usd", usd)
    assert made["scope_kind"] == "key" and made["limit_nano_usd"] == 3 * GPT_4O_MINI_COST
    listed = cli("limits", "list", "--scope-kind", "key", "--scope-id", _sha(key))
    assert [limit["id"] for limit in listed["limits"]] == [made["id"]]
    for _ in range(3):
        _chat(key, gateway)
    deadline = time.monotonic() + 5
    while True:
        try:
            _chat(key, gateway)
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "spending_limit_exceeded"  # type: ignore[index]
            break
        assert time.monotonic() < deadline, "the key over its CLI-set limit was never blocked"
        time.sleep(0.05)
    _chat(OTHER, gateway)  # another key: served
    cli("limits", "delete", made["id"])
    deadline = time.monotonic() + 5
    while True:
        try:
            _chat(key, gateway)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "deleting the limit did not unblock"
            time.sleep(0.1)
