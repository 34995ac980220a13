"""The compiled whole-answer pass writes a plain JSON answer before it reads the answer's
usage (``gateway/_answer.pyx``, ``wire._scan.reads_json_aside_c``; issue 27).

At concurrency 1 a client waits for what the gateway runs before its write, not after it;
the usage scan of a JSON body (~7k instructions, half of the pass before the write) never
changes the bytes relayed when the scanner strips nothing (a request that does not
stream), so it runs after the client's answer is written.  Whether the bytes and the rows
are still the twin's is ``tests/test_whole_answer.py`` (both builds, byte for byte, rows
compared); here: a real gateway (its Gateway object on its own loop, a real client socket,
the fake provider over a real socket), its two transports observed (every call passed to
uvloop's), and at the moment the client's answer is written its scanner has not read the
usage yet; the row still has it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast import wire
from tests.gateway_proc import _migrate, write_config
from tests.test_billing_e2e import read_rows
from tests.test_billing_faults import InProcessGateway
from tests.test_hot_entries import read_answer

pytest.importorskip("plano_fast.gateway._answer", reason="the Cython extension is not built")
if os.environ.get(wire.PURE_ENV) == "1":
    pytest.skip("the pure build's callbacks scan a body before relaying it", allow_module_level=True)


class _Observed:
    """A transport whose every call goes to the real one; ``on_write`` sees each write's
    bytes first."""

    def __init__(self, real: Any, on_write: Callable[[bytes], None]) -> None:
        self._real = real
        self._on_write = on_write

    def write(self, data: Any) -> None:
        self._on_write(bytes(data))
        self._real.write(data)

    def writelines(self, parts: Any) -> None:
        parts = list(parts)
        self._on_write(b"".join(bytes(p) for p in parts))
        self._real.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def fake() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as provider:
        yield provider


def _ask(sock: socket.socket) -> tuple[int, bytes]:
    """One chat completion on the client's keep-alive connection: (status, body)."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "scan after"}]}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                 b"authorization: Bearer sk-client-scan-after\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    status, body, _ = read_answer(sock, b"")
    return status, body


def test_a_plain_json_answer_is_written_before_its_usage_is_read(fake: FakeProviderThread, tmp_path: Path) -> None:
    """Config mode, two requests on one client connection: after the first (the client's
    connection and a pooled upstream one exist) both transports are observed.  When the
    second answer is written to the client -- one write, the provider's body whole -- the
    exchange's scanner has read no usage yet (before this change it had: the walk ran
    before the write); once the answer is out it has, and the request's row carries the
    provider's token counts."""
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    _migrate(config, {})
    gateway = InProcessGateway(config)
    forwarded: list[Any] = []  # the exchange of each request written upstream
    written: list[tuple[bytes, bool]] = []  # each client write: its bytes, usage read by then

    def on_upstream_write(conn: Any) -> Callable[[bytes], None]:
        return lambda data: forwarded.append(conn._sink)  # (set before the request is written)

    def on_client_write(data: bytes) -> None:
        written.append((data, forwarded[-1].scanner.result().has_usage))

    async def observe() -> None:
        (proto,) = gateway.gateway.connections
        proto.transport = _Observed(proto.transport, on_client_write)
        ((_, (conn,)),) = gateway.gateway.pool._idle.items()
        conn.transport = _Observed(conn.transport, on_upstream_write(conn))

    try:
        with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=10) as sock:
            assert _ask(sock)[0] == 200
            asyncio.run_coroutine_threadsafe(observe(), gateway.loop).result(10)
            status, body = _ask(sock)
        assert status == 200
    finally:
        gateway.stop()
    usage = json.loads(body)["usage"]
    assert len(forwarded) == 1 and len(written) == 1, (forwarded, written)
    data, usage_read_at_write = written[0]
    assert data.endswith(body)  # the head and the provider's body, in one write
    assert usage_read_at_write is False
    assert forwarded[0].scanner.result().has_usage is True
    assert forwarded[0].outcome == "ok"
    rows = read_rows(None, str(config.with_suffix(".db")))
    row = next(r for r in rows if r.request_id == forwarded[0].request_id)
    assert (row.status, row.input_tokens, row.output_tokens) == (
        "ok", usage["prompt_tokens"], usage["completion_tokens"])
