"""Every forwarded request asks the provider for ``Accept-Encoding: identity``, exactly once,
whatever the client sent: a request without Accept-Encoding may be answered in any coding
(RFC 9110 12.5.3), and a compressed answer's usage cannot be read.  Real gateways (config,
firewall, managed mode) and the fake provider over real sockets, the official SDKs (whose
HTTP client sends ``Accept-Encoding: gzip, deflate`` by itself) and raw HTTP."""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_edges import CLOSE, exchange, post, provider_calls
from tests.test_firewall import ANT_KEY, USER_KEY, firewall  # noqa: F401 - fixture
from tests.test_managed import Tenant, managed  # noqa: F401 - fixture

MESSAGES = [{"role": "user", "content": "hi"}]


def _codings(call: Any) -> list[str]:
    return [value for name, value in call.headers if name.lower() in ("accept-encoding", "accept_encoding")]


def _openai_and_anthropic_calls(url: str, key: str, fake: FakeProviderThread, claude: str,
                                anthropic_key: str | None = None) -> list[Any]:
    """A chat request streamed and not, a Messages request streamed and not, through the SDKs."""
    fake.clear()
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            pass
    with anthropic.Anthropic(base_url=url, api_key=anthropic_key or key, max_retries=0) as ac:
        ac.messages.create(model=claude, max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
        with ac.messages.stream(model=claude, max_tokens=5, messages=MESSAGES) as stream:  # type: ignore[arg-type]
            stream.until_done()
    return provider_calls(fake)


def test_config_mode_asks_for_identity(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    """The gateway's own key and a passthrough provider, streamed and not, an answer
    converted (a chat request for a Messages provider), and a client that asks for gzip."""
    calls = _openai_and_anthropic_calls(gateway.url, "sk-client", fake, "claude-sonnet-4-6")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        client.chat.completions.create(model="claude-sonnet-4-6", messages=MESSAGES)  # type: ignore[arg-type]
        for _ in client.chat.completions.create(model="claude-sonnet-4-6", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            pass
        client.chat.completions.create(model="llama-passthrough", messages=MESSAGES)  # type: ignore[arg-type]
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-client", max_retries=0) as ac:
        ac.messages.create(model="claude-passthrough", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    for extra in (b"Accept-Encoding: gzip, br\r\n", b"accept_encoding: gzip\r\n", b""):
        answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b"", extra + CLOSE))
        assert answer.status == 200, answer.raw[:300]
    calls = provider_calls(fake)
    assert len(calls) == 11
    assert [call.path for call in calls].count("/v1/messages") >= 4  # the converted ones among them
    assert [_codings(call) for call in calls] == [["identity"]] * len(calls)


def test_firewall_mode_asks_for_identity(
    firewall: tuple[GatewayProcess, str, str], fake: FakeProviderThread  # noqa: F811
) -> None:
    gateway, _, _ = firewall
    calls = _openai_and_anthropic_calls(gateway.url, USER_KEY, fake, "claude-sonnet-4-6", ANT_KEY)
    assert len(calls) == 4
    assert [_codings(call) for call in calls] == [["identity"]] * len(calls)


def test_managed_mode_asks_for_identity(
    managed: tuple[GatewayProcess, str, Tenant], fake: FakeProviderThread  # noqa: F811
) -> None:
    gateway, _, tenant = managed
    calls = _openai_and_anthropic_calls(gateway.url, tenant.token, fake, "claude-sonnet-4-6")
    assert len(calls) == 4
    assert [_codings(call) for call in calls] == [["identity"]] * len(calls)
