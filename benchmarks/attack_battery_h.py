"""The attack battery's round h (2026-12-06 "h", the compiled request paths): generated
adversarial requests (tests/differential_h.py: odd header case and spacing, duplicate
credentials, two Content-Lengths, CL+TE, obs-fold, CTL bytes, names near the 8-byte
boundaries of the lowercase pass, JSON bodies with a duplicate or escaped ``model``)
fired at the gateway, which must answer each once and whole, and forward at most the one
credential it verified; two plain requests pipelined in one write split at every byte;
and a provider's account headers (odd case, duplicates, underscores, after a 60 KB header
or 300 headers, at the end of the head) never relayed to a client who sent no provider
key.  Registered here, run by benchmarks/attack_battery.py (which adds ``CASES`` to its
own).  The differential check itself (compiled against the pure build, both modes) is
tests/test_differential_h.py.
"""

from __future__ import annotations

import random
import socket

from benchmarks.attack_battery import (
    ALL_MODES, CHAT, CHAT_PATH, Case, Result, Stack, _req, _scripted, exchange, registrar,
)  # fmt: skip
from benchmarks.attack_battery_c import _calls_since

CASES: list[Case] = []
case = registrar(CASES)

_CREDENTIALS = {"authorization", "x-api-key", "api-key", "x-goog-api-key", "x_api_key", "api_key", "x_goog_api_key"}


def _key_of(s: Stack) -> bytes:
    """The valid caller's key (``s.auth`` is its Authorization line)."""
    return s.auth.split(b"\r\n", 1)[0].rpartition(b" ")[2]


@case("framing", "400 generated adversarial requests (tests/differential_h.py, seed 1): each answered once with a "
      "complete 2xx/4xx in the client's format, never a 5xx or a hang; each forwarded one carries one credential")
def generated_requests(s: Stack) -> Result:
    from tests.differential_h import requests
    from tests.test_firewall import USER_KEY

    rng = random.Random(1)
    bad: list[str] = []
    statuses: dict[int, int] = {}
    for _ in range(400):
        data, count = requests(rng, "firewall")
        data = data.replace(USER_KEY.encode(), _key_of(s))
        before = len(s.provider_calls())
        answer = exchange(s.gateway.port, data, wait_s=5, close_wait_s=0)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        calls = _calls_since(s, before)
        if not (200 <= answer.status < 500) or answer.elapsed_s > 4:
            bad.append(f"{answer.status} {data[:80]!r}")
        for call in calls:
            sent = [n.lower() for n, _ in call.headers if n.lower() in _CREDENTIALS]
            if len(sent) > 1:
                bad.append(f"two credentials upstream {sent} {data[:80]!r}")
    return Result(not bad and statuses.get(200, 0) >= 20, "; ".join(bad)[:300] or f"statuses {sorted(statuses.items())}")


@case("framing", "two plain requests pipelined in one write, split at every byte: both answered 200, "
      "each forwarded once", modes=("config",))
def pipelined_split_everywhere(s: Stack) -> Result:
    pair = _req(s) + _req(s, CHAT.replace(b"hi", b"ho"))
    bad = []
    for at in range(1, len(pair)):
        before = len(s.provider_calls())
        with socket.create_connection(("127.0.0.1", s.gateway.port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(pair[:at])
            sock.sendall(pair[at:])
            raw = b""
            while raw.count(b"HTTP/1.1 200 OK") < 2:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                raw += chunk
        if raw.count(b"HTTP/1.1 200 OK") != 2 or len(_calls_since(s, before)) != 2:
            bad.append(f"split at {at}: {raw.count(b'HTTP/1.1 ')} answers, {len(_calls_since(s, before))} forwarded")
    return Result(not bad, "; ".join(bad)[:300] or f"{len(pair) - 1} splits, each 2 answers, 2 forwarded")


_ACCOUNT_RUNS = {
    "duplicates": b"openai-organization: org-SECRET1\r\nOpenAI-Organization: org-SECRET2\r\n",
    "odd case": (b"OPENAI-ORGANIZATION: org-SECRET\r\nAnthropic-Organization-Id: SECRET\r\nX-MS-Region: SECRET\r\n"
                 b"openai-PROJECT: proj_SECRET\r\nX-Goog-User-Project: SECRET\r\nocp-apim-subscription-key: SECRET\r\n"),
    "no space, tab": b"openai-organization:org-SECRET\r\nopenai-project:\tproj_SECRET\t\r\n",
    "underscores": b"openai_organization: org-SECRET\r\nx_goog_user_project: SECRET\r\nopenai_project: SECRET\r\n",
    "after 60 KB": b"x-big: " + b"a" * 60000 + b"\r\nopenai-organization: org-SECRET\r\n",
    "after 300 headers": b"".join(b"x-h%d: v\r\n" % i for i in range(300)) + b"openai-organization: org-SECRET\r\n",
    "between kept lines": b"x-a: b\r\nopenai-project: proj_SECRET\r\nx-c: d\r\n",
}
_ANSWER_BODY = (b'{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":'
                b'{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
                b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}')


@case("headers", "a provider's account headers (duplicates, odd case, no space, underscores, after a 60 KB header or "
      "300 headers, between kept lines) never reach a client who sent no provider key", modes=("config",))
def account_headers_in_answers(s: Stack) -> Result:
    bad = []
    for name, lines in _ACCOUNT_RUNS.items():
        answer_bytes = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + lines + b"x-kept: yes\r\n"
                        b"content-length: %d\r\n\r\n" % len(_ANSWER_BODY) + _ANSWER_BODY)
        answer, _ = _scripted(s, "acct-" + name.replace(" ", "-"), answer_bytes)
        if answer.status != 200 or b"SECRET" in answer.raw or b"x-kept: yes" not in answer.raw:
            bad.append(f"{name}: {answer.status} leaked={b'SECRET' in answer.raw}")
    return Result(not bad, "; ".join(bad)[:300] or f"{len(_ACCOUNT_RUNS)} heads, none leaked, other lines kept")


__all__ = ["ALL_MODES", "CASES", "CHAT_PATH"]
