from __future__ import annotations
from typing import Any
import pytest
from benchmarks.fake_provider import FakeProviderThread
from tests.test_firewall_hardening import hardened, provider_calls, post_chat, REGISTERED, UNREGISTERED  # noqa: F401

@pytest.mark.parametrize("name", [b"x-api-key", b"x_api_key", b"ocp-apim-subscription-key", b"api_token", b"token"])
def test_unlisted_credential_names_go_upstream_beside_the_verified_key(hardened: Any, fake: FakeProviderThread, name: bytes) -> None:
    gateway, _, _ = hardened
    path = b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&" + name + b"=" + UNREGISTERED
    fake.clear()
    status, _, answer = post_chat(gateway, [b"x-goog-api-key: " + REGISTERED], path, b'{"contents":[{"parts":[{"text":"hi"}]}]}')
    calls = provider_calls(fake)
    assert status == 401 and calls == [], (status, [c.path for c in calls])

def test_alt_sse_sharing_a_semicolon_part_with_key_is_dropped(hardened: Any, fake: FakeProviderThread) -> None:
    gateway, _, _ = hardened
    fake.clear()
    status, _, _ = post_chat(gateway, [], b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse;key=" + REGISTERED,
                             b'{"contents":[{"parts":[{"text":"hi"}]}]}')
    (seen,) = provider_calls(fake)
    assert "alt=sse" in seen.path, (status, seen.path)
