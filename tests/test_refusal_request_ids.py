"""Every refusal the gateway answers itself carries ``x-plano-request-id``, the id of its
access-log line (and of its usage row where one is written), as a relayed answer and the
gateway's own 502/504 do.  Real gateways and the fake provider over real sockets: raw HTTP
for what an SDK cannot send, the official SDKs for the rest."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_access_log_refusals import exchange_raw, log_lines, status_of
from tests.test_firewall import OTHER_KEY, USER_KEY, firewall  # noqa: F401 - fixture
from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
RATE_LIMITS = (
    "ratelimits:\n"
    "  - model: gpt-4o-mini\n    selector: {key: x-user-id, value: \"*\"}\n"
    "    limit: {requests: 1, unit: minute}\n"
)


def _head_id(answer: bytes) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-plano-request-id":
            return value.strip().decode()
    return None


def _raw(method: bytes, path: bytes, body: bytes = b"", extra: bytes = b"") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n" + extra
            + b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


def _ids_match_lines(answers: dict[str, tuple[int, str | None]], lines: list[dict[str, Any]]) -> None:
    """Each refusal has an id, a fresh one, and the line of that id has the refusal's status."""
    by_id = {line["request_id"]: line for line in lines}
    for kind, (status, request_id) in answers.items():
        assert request_id, f"{kind}: no x-plano-request-id on the {status}"
        assert request_id in by_id, f"{kind}: no access-log line has the id {request_id}"
        assert by_id[request_id]["status"] == status, (kind, by_id[request_id])
    ids = [request_id for _, request_id in answers.values()]
    assert len(set(ids)) == len(ids)


def test_config_mode_refusals_carry_the_id_of_their_line(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    """Refusals before a mode handles the request (404, 405, 413, an unparseable head) and
    those of the exchange (an unknown model, a guardrail's 403, a rate limit's 429).  Was:
    only a relayed answer and the gateway's own 502/504 carried the id."""
    log_path = tmp_path / "access.jsonl"

    def with_rate_limits() -> None:
        with open(tmp_path / "plano_config_0.yaml", "a") as f:
            f.write(RATE_LIMITS)

    gateway = make_gateway({
        "access_log": str(log_path), "max_body_bytes": 2000,
        "guardrails": json.dumps({"detectors": {"ssn": "block"}}),
    }, before_start=with_rate_limits)  # fmt: skip
    port = gateway.port
    answers: dict[str, tuple[int, str | None]] = {}
    for kind, data in {
        "404 path": _raw(b"POST", b"/v1/nowhere", CHAT),
        "405": _raw(b"GET", b"/v1/chat/completions"),
        "413": _raw(b"POST", b"/v1/chat/completions", b"x" * 3000),
        "400 unparseable": b"\x16\x03\x01 not http\r\n\r\n",
    }.items():
        answer = exchange_raw(port, data)
        answers[kind] = (status_of(answer), _head_id(answer))
    assert [s for s, _ in answers.values()] == [404, 405, 413, 400]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as unknown:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        answers["400 unknown model"] = (400, unknown.value.response.headers.get("x-plano-request-id"))
        with pytest.raises(openai.PermissionDeniedError) as blocked:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "my ssn is 123-45-6789"}])
        answers["403 guardrail"] = (403, blocked.value.response.headers.get("x-plano-request-id"))
        served = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-user-id": "a"})
        answers["200"] = (200, served.headers.get("x-plano-request-id"))
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"x-user-id": "a"})
        answers["429 rate limit"] = (429, limited.value.response.headers.get("x-plano-request-id"))
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-client", max_retries=0) as ac:
        with pytest.raises(anthropic.PermissionDeniedError) as ablocked:
            ac.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                               messages=[{"role": "user", "content": "my ssn is 123-45-6789"}])
        answers["403 guardrail anthropic"] = (403, ablocked.value.response.headers.get("x-plano-request-id"))
    gateway.stop()  # (the writer's last lines are flushed at stop)
    _ids_match_lines(answers, [json.loads(line) for line in log_path.read_text().splitlines()])


def test_firewall_refusals_carry_the_id_of_their_line(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread, tmp_path: Path  # noqa: F811
) -> None:
    """401 for an unknown key and for none, 404 for a path firewall mode does not meter."""
    gateway, _, _ = firewall
    port = gateway.port
    answers: dict[str, tuple[int, str | None]] = {}
    for kind, data in {
        "401 unknown key": _raw(b"POST", b"/v1/chat/completions", CHAT, f"authorization: Bearer {OTHER_KEY}\r\n".encode()),
        "401 no key": _raw(b"POST", b"/v1/chat/completions", CHAT),
        "404 unmetered path": _raw(b"POST", b"/v1/fine_tuning/jobs", b"{}",
                                   f"authorization: Bearer {USER_KEY}\r\n".encode()),
    }.items():
        answer = exchange_raw(port, data)
        answers[kind] = (status_of(answer), _head_id(answer))
    assert [s for s, _ in answers.values()] == [401, 401, 404]
    _ids_match_lines(answers, log_lines(tmp_path / "access.jsonl", len(answers)))


def test_managed_refusals_carry_the_id_of_their_line(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """402 of a hard budget the reservation does not fit (answered by the exchange itself),
    401 of an unknown token, 400 of a model the pipe does not serve."""
    sqlite_path = str(tmp_path / "plano_config_0.db")
    log_path = tmp_path / "access.jsonl"
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1, "access_log": str(log_path)}, env=ENV,
        before_start=lambda: tenants.append(provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=1)),
    )
    answers: dict[str, tuple[int, str | None]] = {}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenants[0].token, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as held:
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                           messages=[{"role": "user", "content": "x"}])
        answers["402 budget"] = (held.value.status_code, held.value.response.headers.get("x-plano-request-id"))
        with pytest.raises(openai.BadRequestError) as wrong:
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
        answers["400 model"] = (400, wrong.value.response.headers.get("x-plano-request-id"))
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="xproxy_" + "B" * 43, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as unknown:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        answers["401 token"] = (401, unknown.value.response.headers.get("x-plano-request-id"))
    assert answers["402 budget"][0] == 402
    deadline = time.monotonic() + 5
    while len(log_lines(log_path, len(answers))) < len(answers) and time.monotonic() < deadline:
        time.sleep(0.1)
    _ids_match_lines(answers, log_lines(log_path, len(answers)))
