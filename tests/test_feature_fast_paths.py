"""Configured features on the compiled request starts (issue 27's feature rows).

``plano_fast/gateway/_config.pyx`` now takes a request whose route has a retry policy (the
provider's or the listener's: the plan made by the twin's ``ConfigExchange._plan_first``)
and, under preference routing, a live session's pinned decision (the twin's ``_route``
step: ``pinned_decision`` once, ``_note_decision`` after the forward);
``plano_fast/gateway/_firewall.pyx`` takes a request under rate limits (the twin's
``phases.rate_limit`` as its last step).  Before, any of these sent every request through
the pure twin.  Also taken by the compiled config start: the DLP floor (``guardrails``: the
twin's ``phases.guard`` where the twin calls it).  A retry plan is made at the first
failure (``RoutedExchange._late_plan``), not for a request its route serves.

1. Compiled vs pure gateways (``PLANO_FAST_PURE_SCANNER=1``), each with its own recording
   upstream, get the same client requests; what each upstream received, what each client
   read (but for ``date`` and request ids) and the usage rows must be the same:
   * config mode with a retry policy on the default provider (fallback: an Anthropic
     model): plain and streamed requests; requests the upstream answers 503 first (retried
     on the fallback, converted); after five of those the primary's circuit is open and a
     plain request goes first to the fallback (the compiled start's ``_prepare`` of the
     plan's first target) -- every one 200;
   * config mode with preference routing (a fake router model): a session's first request
     (the router is asked: 200 with the route header), its pinned ones (plain and streamed:
     200, the same route header, no router call), a session the router gives no route
     (the body's model), a request without a session;
   * firewall mode with a local rate limit of 3 requests a minute: 200, 200, 200, then
     429 (the limit's refusal) -- both builds refuse the same request;
   * config mode under the DLP floor: no finding, a logged one, a warned one (the warning
     header), a blocked one (403, nothing upstream), a stream.
2. In process, the twin's steps counted: with a retry policy, pinned sessions, rate
   limits and the DLP floor the compiled start is taken (``ConfigExchange._admit_and_forward``
   / ``firewall.metered_endpoint`` never called for those requests); a session's first
   request still goes through the twin's router call.  With a retry policy, a request its
   route serves makes no ``RetryPlan``; one answered 503 makes one and is served by the
   fallback.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.chaos import retry_policy_yaml
from benchmarks.features import _add_retry_policy
from plano_fast.wire import PURE_ENV
from tests.gateway_proc import GatewayProcess, _migrate, write_config
from tests.test_firewall import USER_KEY, setup_keys
from tests.test_plain_request import _ANSWER, _OWN_ID, RecordingUpstream, _exchange, _request
from tests.test_preference_routing import FakeRouter, routing_yaml
from tests.test_whole_answer import _usage

# (any compiled module would do: each installs its methods at its own end, whatever the
# order of imports, plano_fast.twins.install_deferred)
pytest.importorskip("plano_fast.gateway._forward", reason="the Cython extension is not built")
if os.environ.get(PURE_ENV) == "1":  # both gateways would run the twins
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

FALLBACK = "anthropic/claude-sonnet-4-6"
_MESSAGE = json.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 11, "output_tokens": 7},
}).encode()  # fmt: skip
_MESSAGE_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_MESSAGE), _MESSAGE)
_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class FlakyUpstream(RecordingUpstream):
    """``RecordingUpstream``, but a chat request whose body says ``fail-first`` is answered
    503 (its retry goes to the Anthropic fallback), and ``/v1/messages`` gets a message."""

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        with self.lock:  # (as RecordingUpstream records)
            seen = _OWN_ID.sub(b"x-request-id: <gateway's>\r\n", head).replace(b":%d" % self.port, b":<port>")
            self.seen.append(seen + b"\r\n\r\n" + body)
        if head.startswith(b"POST /v1/messages"):
            conn.sendall(_MESSAGE_ANSWER)
        elif b"fail-first" in body:
            conn.sendall(_UNAVAILABLE)
        else:
            conn.sendall(_ANSWER)
        return True


@pytest.fixture
def upstreams() -> Iterator[tuple[FlakyUpstream, FlakyUpstream]]:
    pair = (FlakyUpstream(), FlakyUpstream())
    yield pair
    for server in pair:
        server.close()


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    r = FakeRouter()
    yield r
    r.stop()


def _chat(content: str = "hello", model: str = "gpt-4o-mini", **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()


def _retry_config(path: Path, upstream_port: int, settings: dict[str, object] | None = None) -> Path:
    config = write_config(path, upstream_port, settings)
    _add_retry_policy(config, retry_policy_yaml(FALLBACK), "")
    return config


def _routing_config(path: Path, upstream_port: int, router_port: int) -> Path:
    path.write_text(f"""\
version: v0.4.0
listeners:
  - {{type: model, name: m, address: 127.0.0.1, port: 12000, timeout: 5s}}
{routing_yaml(upstream_port, router_port, session_ttl_s=3600)}plano_fast:
  sqlite_path: {path.with_suffix('.db')}
  usage_journal_path: {path.with_suffix('.journal')}
  usage_flush_interval_s: 0.2
  price_interval_s: 0.2
""")
    return path


#: the DLP floor of the compare test: one detector at each action
_DLP = {"guardrails": json.dumps({"detectors": {"ssn": "block", "credit_card": "redact", "ip_address": "warn",
                                               "email": "log"}})}


def _rate_limited_config(path: Path, upstream_port: int) -> Path:
    config = write_config(path, upstream_port, {"mode": "firewall"})
    text = config.read_text().replace("plano_fast:\n", "ratelimits:\n  - model: \"*\"\n    selector: {project: \"*\"}\n"
                                      "    limit: {requests: 3, unit: minute}\nplano_fast:\n", 1)
    config.write_text(text)
    return config


#: a rate-limit refusal's waits count down with the clock, and a converted answer's
#: ``created`` is the second it was made: the two gateways answer apart, so a second's
#: boundary may fall between them (a retry case failed so under load)
_WAITS = re.compile(rb"(retry-after: |retry-after-ms: |x-ratelimit-reset-requests: |retry in |\"created\": ?)\d+")


def _timeless(answers: list[bytes]) -> list[bytes]:
    return [_WAITS.sub(rb"\1<n>", a) for a in answers]


def _compare(gateways: tuple[GatewayProcess, GatewayProcess], dbs: tuple[str, str],
             upstreams: tuple[FlakyUpstream, FlakyUpstream], cases: dict[str, list[bytes]],
             rows_expected: int) -> dict[str, list[bytes]]:
    answers: dict[str, list[bytes]] = {}
    with gateways[0], gateways[1]:
        for case, requests in cases.items():
            seen = [len(u.seen) for u in upstreams]
            answers[case] = _timeless(_exchange(gateways[0], requests))
            twins = _timeless(_exchange(gateways[1], requests))
            assert twins == answers[case], case
            assert upstreams[0].seen[seen[0]:] == upstreams[1].seen[seen[1]:], case
        compiled_rows, twin_rows = _usage(dbs[0], rows_expected), _usage(dbs[1], rows_expected)
    assert len(compiled_rows) == rows_expected, compiled_rows
    assert compiled_rows == twin_rows, (compiled_rows, twin_rows)
    return answers


def _pair(tmp_path: Path, upstreams: tuple[FlakyUpstream, FlakyUpstream], make: Any,
          before_start: Any = None) -> tuple[tuple[GatewayProcess, GatewayProcess], tuple[str, str]]:
    gateways: list[GatewayProcess] = []
    dbs: list[str] = []
    for name, upstream, env in (("compiled", upstreams[0], {}), ("pure", upstreams[1], {PURE_ENV: "1"})):
        config = make(tmp_path / f"{name}.yaml", upstream)
        db = str(config.with_suffix(".db"))
        start = None if before_start is None else (lambda db=db, port=upstream.port: before_start(db, port))
        gateways.append(GatewayProcess(config, env=env, before_start=start))
        dbs.append(db)
    return (gateways[0], gateways[1]), (dbs[0], dbs[1])


def test_config_with_a_retry_policy_goes_upstream_as_the_twin(
    upstreams: tuple[FlakyUpstream, FlakyUpstream], tmp_path: Path
) -> None:
    gateways, dbs = _pair(tmp_path, upstreams, lambda path, up: _retry_config(path, up.port))
    cases = {
        "chat": [_request(b"/v1/chat/completions", _chat(), b"")],
        "prefixed model": [_request(b"/v1/chat/completions", _chat(model="openai/gpt-4o-mini"), b"")],
        "stream": [_request(b"/v1/chat/completions", _chat(stream=True), b"")],
        "pipelined": [_request(b"/v1/chat/completions", _chat(), b""),
                      _request(b"/v1/chat/completions", _chat(stream=True), b"")],
        **{f"503, retried on the fallback ({i})": [_request(b"/v1/chat/completions", _chat("fail-first"), b"")]
           for i in range(5)},
        "circuit open: the fallback first": [_request(b"/v1/chat/completions", _chat(), b"")],
    }
    answers = _compare(gateways, dbs, upstreams, cases, rows_expected=11)
    for case, got in answers.items():
        assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in got), case
    seen = upstreams[0].seen
    assert sum(1 for s in seen if s.startswith(b"POST /v1/messages")) == 6  # 5 retries + the open circuit's
    assert seen[-1].startswith(b"POST /v1/messages") and b"sk-ant-server-key" in seen[-1]


def test_config_with_pinned_sessions_goes_upstream_as_the_twin(
    upstreams: tuple[FlakyUpstream, FlakyUpstream], router: FakeRouter, tmp_path: Path
) -> None:
    gateways, dbs = _pair(tmp_path, upstreams, lambda path, up: _routing_config(path, up.port, router.port))
    pinned = b"x-model-affinity: s-code\r\n"
    cases = {
        "session's first request (router)": [_request(b"/v1/chat/completions", _chat("write code"), pinned)],
        "pinned": [_request(b"/v1/chat/completions", _chat("write code"), pinned)],
        "pinned, another prompt": [_request(b"/v1/chat/completions", _chat("hello"), pinned)],
        "pinned, stream": [_request(b"/v1/chat/completions", _chat("write code", stream=True), pinned)],
        "pinned, pipelined": [_request(b"/v1/chat/completions", _chat("write code"), pinned)] * 2,
        "no route for the session (router)": [
            _request(b"/v1/chat/completions", _chat("hello"), b"x-model-affinity: s-none\r\n")],
        "no route, pinned": [_request(b"/v1/chat/completions", _chat("hello"), b"x-model-affinity: s-none\r\n")],
        "no session (router)": [_request(b"/v1/chat/completions", _chat("write code"), b"")],
    }
    # router calls are rows of their own (tests/test_preference_routing.py): 3 per gateway
    answers = _compare(gateways, dbs, upstreams, cases, rows_expected=9 + 3)
    for case, got in answers.items():
        assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in got), case
    for case in ("session's first request (router)", "pinned", "pinned, another prompt", "pinned, stream",
                 "no session (router)"):
        assert b"x-model-router-selected-route: code generation\r\n" in answers[case][0].lower(), case
    assert b"x-model-router-selected-route" not in answers["no route, pinned"][0].lower()
    assert len(router.prompts) == 6  # 3 per gateway: the pinned requests asked nothing


def test_firewall_with_rate_limits_goes_upstream_as_the_twin(
    upstreams: tuple[FlakyUpstream, FlakyUpstream], tmp_path: Path
) -> None:
    gateways, dbs = _pair(tmp_path, upstreams, lambda path, up: _rate_limited_config(path, up.port),
                          before_start=lambda db, port: setup_keys(db, f"http://127.0.0.1:{port}"))
    auth = b"authorization: Bearer %s\r\n" % USER_KEY.encode()
    cases = {f"request {i}": [_request(b"/v1/chat/completions", _chat(), auth)] for i in range(1, 5)}
    answers = _compare(gateways, dbs, upstreams, cases, rows_expected=3)
    assert [answers[f"request {i}"][0].split(b"\r\n", 1)[0] for i in range(1, 5)] == [
        b"HTTP/1.1 200 OK"] * 3 + [b"HTTP/1.1 429 Too Many Requests"]
    assert len(upstreams[0].seen) == 3


def test_config_with_the_dlp_floor_goes_upstream_as_the_twin(
    upstreams: tuple[FlakyUpstream, FlakyUpstream], tmp_path: Path
) -> None:
    gateways, dbs = _pair(tmp_path, upstreams, lambda path, up: write_config(path, up.port, _DLP))
    cases = {
        "no finding": [_request(b"/v1/chat/completions", _chat(), b"")],
        "logged": [_request(b"/v1/chat/completions", _chat("mail jane.doe@example.com"), b"")],
        "warned": [_request(b"/v1/chat/completions", _chat("from 10.1.2.3"), b"")],
        "blocked": [_request(b"/v1/chat/completions", _chat("ssn 123-45-6789"), b"")],
        "stream": [_request(b"/v1/chat/completions", _chat("mail jane.doe@example.com", stream=True), b"")],
        "pipelined": [_request(b"/v1/chat/completions", _chat("from 10.1.2.3"), b""),
                      _request(b"/v1/chat/completions", _chat(), b"")],
        # a redaction: both twins splice the marker into the body as sent (json.dumps' spacing
        # kept); until session l the pure twin re-encoded the body compactly (other bytes)
        "redacted": [_request(b"/v1/chat/completions", _chat("card 4111 1111 1111 1111 ok"), b"")],
    }
    answers = _compare(gateways, dbs, upstreams, cases, rows_expected=7)
    status = {case: [a.split(b"\r\n", 1)[0] for a in got] for case, got in answers.items()}
    assert status.pop("blocked") == [b"HTTP/1.1 403 Forbidden"]
    assert all(s == [b"HTTP/1.1 200 OK"] * len(s) for s in status.values()), status
    assert b"x-plano-guardrail-warning: ip_address\r\n" in answers["warned"][0]
    assert b"123-45-6789" not in b"".join(upstreams[0].seen)
    redacted = [seen for seen in upstreams[0].seen if b"REDACTED" in seen]
    assert len(redacted) == 1 and b'"content": "card [REDACTED:credit_card] ok"' in redacted[0]


def _post(url: str, body: bytes, headers: bytes = b"") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request(b"/v1/chat/completions", body, headers))
        from tests.test_whole_answer import _read_answer

        return _read_answer(sock, bytearray())


def test_configured_features_take_the_compiled_starts(
    upstreams: tuple[FlakyUpstream, FlakyUpstream], router: FakeRouter, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: ``_admit_and_forward`` (config) and ``metered_endpoint`` (firewall) are the
    twins' steps the compiled starts never call; a ``RetryPlan`` is made for a failure only."""
    from plano_fast.gateway import routed
    from plano_fast.gateway.modes import config as config_mode
    from plano_fast.gateway.modes import firewall as firewall_mode
    from tests.test_billing_faults import InProcessGateway

    twin_steps: list[str] = []
    real_plan = routed.RetryPlan

    def counting_plan(*args: Any) -> Any:
        twin_steps.append("plan")
        return real_plan(*args)

    monkeypatch.setattr(routed, "RetryPlan", counting_plan)
    real_admit = config_mode.ConfigExchange._admit_and_forward
    real_metered = firewall_mode.metered_endpoint

    def counting_admit(self: Any, *args: Any) -> Any:
        twin_steps.append("config")
        return real_admit(self, *args)

    def counting_metered(*args: Any) -> Any:
        twin_steps.append("firewall")
        return real_metered(*args)

    monkeypatch.setattr(config_mode.ConfigExchange, "_admit_and_forward", counting_admit)
    monkeypatch.setattr(firewall_mode, "metered_endpoint", counting_metered)

    def served(config: Path, requests: list[tuple[bytes, bytes]], before: Any = None) -> list[tuple[bytes, list[str]]]:
        _migrate(config, dict(os.environ))
        if before is not None:
            before()
        gateway = InProcessGateway(config)
        out = []
        try:
            for body, headers in requests:
                twin_steps.clear()
                answer = _post(gateway.url, body, headers)
                out.append((answer.split(b"\r\n", 1)[0], list(twin_steps)))
        finally:
            gateway.stop()
        return out

    ok = b"HTTP/1.1 200 OK"
    up = upstreams[0]
    retry = served(_retry_config(tmp_path / "retry.yaml", up.port),
                   [(_chat(), b"")] * 3 + [(_chat("fail-first"), b""), (_chat(), b"")])
    assert retry == [(ok, [])] * 3 + [(ok, ["plan"]), (ok, [])]  # (the 503's retry: the plan made then)
    assert sum(1 for s in up.seen if s.startswith(b"POST /v1/messages")) == 1  # served by the fallback
    dlp = served(write_config(tmp_path / "dlp.yaml", up.port, _DLP),
                 [(_chat(), b""), (_chat("mail jane.doe@example.com"), b""), (_chat("card 4111 1111 1111 1111"), b"")])
    assert dlp == [(ok, [])] * 3
    assert b"card [REDACTED:credit_card]" in up.seen[-1] and b"4111" not in up.seen[-1]  # redacted upstream
    pinned = b"x-model-affinity: s-1\r\n"
    routed = served(_routing_config(tmp_path / "routing.yaml", up.port, router.port),
                    [(_chat("write code"), pinned)] + [(_chat("write code"), pinned)] * 3)
    assert routed == [(ok, ["config"])] + [(ok, [])] * 3  # the router's decision: the twin's steps
    config = _rate_limited_config(tmp_path / "fw.yaml", up.port)
    auth = b"authorization: Bearer %s\r\n" % USER_KEY.encode()
    limited = served(config, [(_chat(), auth)] * 4,
                     before=lambda: setup_keys(str(config.with_suffix(".db")), f"http://127.0.0.1:{up.port}"))
    assert limited == [(ok, [])] * 3 + [(b"HTTP/1.1 429 Too Many Requests", [])]


def test_the_compiled_starts_are_installed() -> None:
    """Built, the compiled starts replace the twins (else every test above compares the
    twin with itself)."""
    from plano_fast.gateway.modes import config, firewall

    assert config.ConfigExchange.start is not config.start_py
    assert firewall.FirewallExchange.start is not firewall.start_py
