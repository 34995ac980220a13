"""SIGTERM while a request waits holding, or asking for, a hard limit's reservation
(managed mode), and while a request waits at the preference router or for its stored
Responses conversation (config mode), once ``drain_timeout_s`` is over: each gets a 503
in its client's API error shape with its ``x-plano-request-id`` and ``Connection: close``,
its usage row is ``gateway_stopped`` (http_status 503, free), and -- managed -- nothing is
left reserved: every counter's reserved amount equals its open reservations (none), and
its spend equals the priced log (tests/test_billing_faults.ledger).

The waits with nothing at a provider are ``ExchangeContext.waiting``
(tests/test_stop_waiting.py has the unreserved connect, backoff and guard-model cases).
A real gateway process, the fake provider, raw TCP peers and real SQLite / PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess
from tests.test_billing_faults import ledger
from tests.test_managed import ENV, REQUEST_BODY, Tenant, provision, request_cost, rows
from tests.test_stop_unanswered import _answer, _raw, _read_all, _stop_and_read
from tests.test_stop_waiting import SilentPeer, _stop_for_errors, silent  # noqa: F401 - fixture

MINI = ("openai/gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini")


def _bearer(token: str) -> bytes:
    return b"authorization: Bearer " + token.encode() + b"\r\n"


def _send(gateway: GatewayProcess, path: bytes, body: bytes, extra: bytes = b"") -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", gateway.port), timeout=15)
    conn.sendall(_raw(path, body, extra))
    return conn


def _open_reservations(sqlite_path: str) -> int:
    with sqlite3.connect(sqlite_path) as db:
        return int(db.execute("SELECT count(DISTINCT id) FROM spending_reservations").fetchone()[0])


def _wait_for(condition: Callable[[], bool], what: str | Callable[[], str], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


def _stopped_rows(sqlite_path: str, ids: dict[str, str]) -> dict[str, Any]:
    by_id = {r.request_id: r for r in rows(sqlite_path)}
    found = {kind: by_id[rid] for kind, rid in ids.items()}
    for row in found.values():
        assert (row.status, row.http_status) == ("gateway_stopped", 503), row
        assert row.priced and (row.cost_nano_usd or 0) == 0, row
    return found


def test_sigterm_answers_503_and_releases_a_reservation_held_while_connecting_or_in_a_backoff(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, silent: SilentPeer, tmp_path: Path
) -> None:
    """Two hard-limited tenants, each request holding its reservation: one whose pipe's
    target is a TLS handshake that never ends, one whose target answered 503 and is in a
    10 s backoff.  Both reservations are open before the stop; after it each client has
    its 503 (OpenAI's error shape), the rows are ``gateway_stopped`` 503 free (the backoff
    one with its failed attempt), no reservation is open and the ledger balances."""
    sqlite_path = str(tmp_path / "plano_config_0.db")
    tenants: dict[str, Tenant] = {}
    limit = 10 * request_cost(REQUEST_BODY)

    def before_start() -> None:
        tenants["connecting"] = provision(None, sqlite_path, [("silent-tls", "gpt-4o-mini", "gpt-4o-mini")],
                                          limit_nano_usd=limit)  # fmt: skip
        tenants["backoff"] = provision(None, sqlite_path, [("always-503", "gpt-4o-mini", "gpt-4o-mini")],
                                       limit_nano_usd=limit)  # fmt: skip

    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1, "drain_timeout_s": 0.5,
         # a 503 is retried on the same target after a 10 s backoff
         "managed_retry_policy": "{default_strategy: same_provider, default_max_attempts: 3,"
                                 " backoff: {base_ms: 10000, max_ms: 10000, jitter: false},"
                                 " on_status_codes: [{codes: [503], strategy: same_model, max_attempts: 3}]}"},
        extra_providers=(
            f"  - name: silent-tls\n    model: openai/silent-model\n    base_url: https://127.0.0.1:{silent.port}\n"
            "    access_key: sk-unused\n    connect_timeout: 20s\n"
            f"  - name: always-503\n    model: openai/always-503-model\n    base_url: {fake.url}\n"
            "    access_key: sk-unused\n    headers: {x-fake-status: \"503\"}\n"
        ),
        env=ENV, before_start=before_start,
    )
    fake.clear()
    conns = {kind: _send(gateway, b"/v1/chat/completions", REQUEST_BODY, _bearer(t.token))
             for kind, t in tenants.items()}  # fmt: skip
    _wait_for(lambda: bool(silent.accepted) and any(r.path == "/v1/chat/completions" for r in fake.requests),
              "the handshake began and the 503 came back")  # fmt: skip
    def debug() -> str:
        with sqlite3.connect(sqlite_path) as db:
            held = db.execute("SELECT scope_id FROM spending_reservations").fetchall()
        out = []
        for k, c in conns.items():
            c.setblocking(False)
            try:
                out.append((k, c.recv(3000)))
            except BlockingIOError:
                out.append((k, None))
            c.setblocking(True)
        return f"{held} {[(r.status, r.http_status, r.attempt_trail) for r in rows(sqlite_path)]} {out}"

    _wait_for(lambda: _open_reservations(sqlite_path) == 2, debug)
    time.sleep(0.3)  # (the 503 read: in its backoff)
    ids = {}
    for kind, (ids[kind], error) in _stop_for_errors(gateway, conns).items():
        assert error["error"]["type"] == "service_unavailable_error", error
    assert len([r for r in fake.requests if r.path == "/v1/chat/completions"]) == 1  # never retried after
    stopped = _stopped_rows(sqlite_path, ids)
    assert (stopped["connecting"].attempts, stopped["backoff"].attempts) == (0, 1)
    books = ledger(None, sqlite_path)
    assert (books["open"], books["reserved"]) == (0, 0), books


def test_sigterm_answers_503_to_a_request_waiting_for_its_reservation(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    """Was: a request whose reservation the store had not answered yet (here: another
    process holds SQLite's write lock) was not a wait the stop knew of: its connection
    was closed with no answer.  Now the 503 (Anthropic's shape on /v1/messages), and
    the reservation the store grants once the lock is let go, after the request stopped
    waiting for it, is given back before the gateway exits: nothing open, the ledger
    balanced, the row ``gateway_stopped`` 503 free, nothing sent to the provider."""
    sqlite_path = str(tmp_path / "plano_config_0.db")
    tenants: list[Tenant] = []
    gateway = make_gateway(
        {"managed": "true", "managed_reload_s": 1, "drain_timeout_s": 0.5, "store_stop_timeout_s": 20},
        env=ENV,
        before_start=lambda: tenants.append(provision(
            None, sqlite_path, [("anthropic/claude-sonnet-4-6", None, "claude-*")],
            limit_nano_usd=10 * request_cost(REQUEST_BODY))),
    )  # fmt: skip
    fake.clear()
    lock = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the write lock: the reservation waits for it
        body = b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
        conn = _send(gateway, b"/v1/messages", body, b"x-api-key: " + tenants[0].token.encode() + b"\r\n")
        time.sleep(1.0)  # (at the reservation: the store retries its BEGIN IMMEDIATE)
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        with conn:
            answer = _read_all(conn)  # (the 503, then the close: the lock still held)
        assert time.monotonic() - started < 5
    finally:
        lock.execute("ROLLBACK")  # the store may go on: it grants the reservation now
        lock.close()
    assert gateway.wait(20) == 0
    headers, payload = _answer(answer)
    error = json.loads(payload)
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error", error
    assert not [r for r in fake.requests if not r.path.startswith("/_fake")]
    _stopped_rows(sqlite_path, {"reserving": headers[b"x-plano-request-id"].decode()})
    books = ledger(None, sqlite_path)
    assert (books["open"], books["reserved"]) == (0, 0), books


def test_sigterm_answers_503_to_a_request_at_the_preference_router(
    fake: FakeProviderThread, silent: SilentPeer, tmp_path: Path
) -> None:
    """A preference-routed config whose router model never answers (20 s allowed): the
    request waits at the router; the stop answers it 503 (OpenAI's shape) with its id,
    row ``gateway_stopped`` 503 free, nothing sent to a provider."""
    from tests.test_preference_routing import routing_config

    config = routing_config(tmp_path / "plano_config.yaml", fake.port, silent.port)
    text = config.read_text().replace("routing: {timeout_ms: 300,", "routing: {timeout_ms: 20000,")
    config.write_text(text.replace("plano_fast:\n", "plano_fast:\n  drain_timeout_s: 0.5\n"))
    with GatewayProcess(config) as gateway:
        fake.clear()
        conn = _send(gateway, b"/v1/chat/completions",
                     b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"write code"}]}')
        _wait_for(lambda: silent.received > 0, "the router model was asked")
        answers = _stop_and_read(gateway, {"router": conn})
        headers, body = _answer(answers["router"])
        assert json.loads(body)["error"]["type"] == "service_unavailable_error", body
        assert not [r for r in fake.requests if not r.path.startswith("/_fake")]
        _stopped_rows(str(config.with_suffix(".db")), {"router": headers[b"x-plano-request-id"].decode()})


def test_sigterm_answers_503_to_a_request_reading_its_stored_conversation(
    fake: FakeProviderThread, tmp_path: Path, pg_database: str
) -> None:
    """Config mode, Plano's ``state_storage: postgres``: a Responses request converted for
    Anthropic that names a ``previous_response_id`` reads the conversation before anything
    else (``_with_history``); the test holds an ACCESS EXCLUSIVE lock on the state table,
    so that read waits.  Was: the stop closed the connection with no answer.  Now the 503
    (OpenAI's shape) with its id, row ``gateway_stopped`` 503 free, nothing forwarded."""
    import threading

    import asyncpg  # type: ignore[import-untyped]

    from tests import pg
    from tests.gateway_proc import write_config

    with pg.temp_schema(pg_database, "state") as dsn:
        config = write_config(tmp_path / "plano_config.yaml", fake.port, {"drain_timeout_s": 0.5})
        config.write_text(config.read_text() + f'state_storage:\n  type: postgres\n  connection_string: "{dsn}"\n')
        turn = b'{"model":"claude-sonnet-4-6","input":"hi","previous_response_id":"resp_%s"}'
        with GatewayProcess(config) as gateway:
            # (a first turn naming an unknown id: the state store opened, its table made, a 404)
            first = _send(gateway, b"/v1/responses", turn % b"0", b"connection: close\r\n")
            with first:
                assert _read_all(first).startswith(b"HTTP/1.1 404 "), "first turn"
            locked, release = threading.Event(), threading.Event()

            def hold() -> None:
                async def go() -> None:
                    conn = await asyncpg.connect(dsn)
                    try:
                        async with conn.transaction():
                            await conn.execute("LOCK TABLE response_states IN ACCESS EXCLUSIVE MODE")
                            locked.set()
                            await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
                    finally:
                        await conn.close()

                asyncio.run(go())

            holder = threading.Thread(target=hold, daemon=True)
            holder.start()
            try:
                assert locked.wait(10)
                fake.clear()
                conn = _send(gateway, b"/v1/responses", turn % b"1")
                time.sleep(1.0)  # (at the state read: the table is locked)
                answers = _stop_and_read(gateway, {"prefetch": conn})
            finally:
                release.set()
                holder.join(10)
            headers, body = _answer(answers["prefetch"])
            assert json.loads(body)["error"]["type"] == "service_unavailable_error", body
            assert not [r for r in fake.requests if not r.path.startswith("/_fake")]
            _stopped_rows(str(config.with_suffix(".db")), {"prefetch": headers[b"x-plano-request-id"].decode()})
