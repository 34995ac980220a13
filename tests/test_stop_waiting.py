"""SIGTERM while requests wait with nothing at a provider -- a connection still being
opened (TLS handshake to a silent upstream), a retry's backoff after a 503, a guard model
that has not answered -- once ``drain_timeout_s`` is over: each gets a 503 in its client's
API error shape with its ``x-plano-request-id`` and ``Connection: close``, and its usage row
is ``gateway_stopped`` with http_status 503 (nothing billed; the attempts that failed
before it on the row).  Before 2026-12-06 those connections were closed with no answer
(rows ``client_abandoned``, ``client_disconnected``, or none at a guard model).

And the 503 of a request already sent (tests/test_stop_unanswered.py) records what its
client got: http_status 503 (it was 0, the provider's none), its estimate unchanged.
A real gateway process, the fake provider and raw TCP peers over real sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import read_rows
from plano_fast.usage_estimate import tokens_of_bytes
from tests.test_stop_unanswered import SLOW, _answer, _raw, _read_all, _stop_and_read


class SilentPeer:
    """A TCP server that accepts and never sends a byte (a TLS handshake to it hangs; an
    HTTP request to it gets no answer), counting what it was sent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.received = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while chunk := conn.recv(65536):
                self.received += len(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentPeer]:
    peer = SilentPeer()
    yield peer
    peer.close()


def _stop_for_errors(gateway: GatewayProcess, socks: dict[str, socket.socket]) -> dict[str, tuple[str, Any]]:
    """SIGTERM, then each client's 503 (``_answer``): its request id and its error object."""
    errors = {}
    for kind, answer in _stop_and_read(gateway, socks).items():
        headers, body = _answer(answer)
        errors[kind] = (headers[b"x-plano-request-id"].decode(), json.loads(body))
    return errors


def test_sigterm_answers_503_to_requests_connecting_or_in_a_retry_backoff(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, silent: SilentPeer
) -> None:
    gateway = make_gateway(
        {"drain_timeout_s": 0.5},
        extra_providers=(
            # the TLS handshake never ends: the request waits in the connect (20 s allowed)
            f"  - model: openai/gpt-connecting\n    base_url: https://127.0.0.1:{silent.port}\n"
            "    access_key: sk-unused\n    connect_timeout: 20s\n"
            # a 503, then a 10 s backoff before the second attempt
            f"  - model: anthropic/claude-backoff\n    base_url: {fake.url}\n    access_key: sk-ant\n"
            "    headers: {x-fake-status: \"503\"}\n"
            "    retry_policy:\n      default_strategy: same_model\n      default_max_attempts: 3\n"
            "      backoff: {base_ms: 10000, max_ms: 10000, jitter: false}\n"
        ),
    )
    socks = {
        "connecting": _raw(b"/v1/chat/completions",
                           b'{"model":"gpt-connecting","messages":[{"role":"user","content":"hi"}]}'),
        "backoff": _raw(b"/v1/messages",
                        b'{"model":"claude-backoff","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'),
    }
    fake.clear()
    conns = {}
    for kind, raw in socks.items():
        conns[kind] = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        conns[kind].sendall(raw)
    deadline = time.monotonic() + 10
    while not silent.accepted or not [r for r in fake.requests if r.path == "/v1/messages"]:
        assert time.monotonic() < deadline  # (the handshake began; the 503 came back)
        time.sleep(0.05)
    time.sleep(0.3)  # (the 503 read: in its backoff)
    ids = {}
    for kind, (ids[kind], error) in _stop_for_errors(gateway, conns).items():
        if kind == "backoff":
            assert error["type"] == "error" and error["error"]["type"] == "overloaded_error", error
        else:
            assert error["error"]["type"] == "service_unavailable_error", error
    assert len([r for r in fake.requests if r.path == "/v1/messages"]) == 1  # never retried after
    rows = {row.request_id: row for row in read_rows(None, str(gateway.config_path.with_suffix(".db")))}
    connecting, backoff = rows[ids["connecting"]], rows[ids["backoff"]]
    assert (connecting.status, connecting.http_status, connecting.attempts) == ("gateway_stopped", 503, 0)
    assert (backoff.status, backoff.http_status, backoff.attempts) == ("gateway_stopped", 503, 1)
    assert backoff.attempt_trail == "503"  # (the attempt that failed before the backoff)
    for row in (connecting, backoff):
        assert row.priced and (row.cost_nano_usd or 0) == 0, row


def test_sigterm_answers_503_to_a_request_at_its_guard_model(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, silent: SilentPeer
) -> None:
    gateway = make_gateway(
        {"drain_timeout_s": 0.5,
         "guard_models": '{jailbreak: {url: "http://127.0.0.1:%d/guard", timeout_ms: 20000, on_error: fail_closed}}'
                         % silent.port},
        # (a top-level section after the providers: Plano's switch for the guard)
        extra_providers="prompt_guards:\n  input_guards:\n    jailbreak:\n      on_exception:\n"
                        "        message: blocked\n",
    )
    fake.clear()
    conn = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    conn.sendall(_raw(b"/v1/chat/completions", b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'))
    deadline = time.monotonic() + 10
    while silent.received == 0:
        assert time.monotonic() < deadline  # (the guard model was asked)
        time.sleep(0.05)
    answers = _stop_and_read(gateway, {"guard": conn})
    headers, body = _answer(answers["guard"])
    assert json.loads(body)["error"]["code"] == "unavailable"
    assert not [r for r in fake.requests if not r.path.startswith("/_fake")]  # never forwarded
    rows = read_rows(None, str(gateway.config_path.with_suffix(".db")))
    assert [(r.request_id, r.status, r.http_status, r.attempts) for r in rows] == [
        (headers[b"x-plano-request-id"].decode(), "gateway_stopped", 503, 0)
    ]


def test_sigterm_503_of_a_request_sent_records_the_503_on_its_row(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread
) -> None:
    gateway = make_gateway({"drain_timeout_s": 0.5})
    fake.clear()
    conn = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    body = b'{"model":"gpt-4o-mini","max_tokens":7,"messages":[{"role":"user","content":"hi"}]}'
    conn.sendall(_raw(b"/v1/chat/completions", body, SLOW))
    deadline = time.monotonic() + 10
    while not [r for r in fake.requests if r.path == "/v1/chat/completions"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answers = _stop_and_read(gateway, {"sent": conn})
    headers, _ = _answer(answers["sent"])
    (row,) = read_rows(None, str(gateway.config_path.with_suffix(".db")))
    assert row.request_id == headers[b"x-plano-request-id"].decode()
    # what the client got; the estimate as before, priced (a 503 with no usage would be free)
    assert (row.status, row.http_status) == ("client_disconnected_estimated", 503), row
    assert row.input_tokens == tokens_of_bytes(len(body)) and row.output_tokens <= 7, row
    assert row.priced and (row.cost_nano_usd or 0) > 0, row
