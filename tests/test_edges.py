"""What the outside checker (benchmarks/attack_battery.py) found, each case over real sockets
against the real gateway and the fake provider: the request, what reached the provider,
the usage rows."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.attack_battery import exchange, post
from benchmarks.fake_provider import FakeProviderThread
from tests.test_managed import managed, rows  # noqa: F401 - fixture

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
MESSAGES = b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'


def provider_calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


# -- managed mode serves tokens only ---------------------------------------------------------


@pytest.mark.parametrize("credential", [b"", b"Authorization: Bearer sk-any-provider-key\r\n",
                                        b"x-api-key: sk-any-provider-key\r\n"])
@pytest.mark.parametrize(("path", "body", "status"), [
    (b"/v1/chat/completions", CHAT, 401),
    (b"/v1/messages", MESSAGES, 401),
    (b"/v1/responses", b'{"model":"gpt-4o-mini","input":"hi"}', 401),
    (b"/v1beta/models/gpt-4o-mini:generateContent", b'{"contents":[{"parts":[{"text":"hi"}]}]}', 404),
    (b"/routing/v1/chat/completions", CHAT, 404),
])
def test_managed_mode_refuses_requests_without_a_token(
    managed: Any, fake: FakeProviderThread, credential: bytes, path: bytes, body: bytes, status: int  # noqa: F811
) -> None:
    """Was: a request without an xproxy_ token went on to config-mode routing and was
    served with the config's own provider keys (200, a usage row with no project, no
    token and no budget): anyone reaching a managed gateway could spend past every hard
    limit.  Now refused in the client's format; nothing reaches the provider."""
    gateway, sqlite_path, tenant = managed
    fake.clear()
    answer = exchange(gateway.port, post(path, body, credential, b"anthropic-version: 2023-06-01\r\n"))
    assert answer.status == status, answer.raw[:300]
    assert "error" in (answer.error_json() or {})
    assert provider_calls(fake) == []
    # the tenant's token is served as before, and only its request is billed
    served = exchange(gateway.port, post(b"/v1/chat/completions", CHAT, b"Authorization: Bearer " + tenant.token.encode() + b"\r\n"))
    assert served.status == 200, served.raw[:300]
    billed = rows(sqlite_path)
    assert [r.token_id for r in billed] == [tenant.token_id]
