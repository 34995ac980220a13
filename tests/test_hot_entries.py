"""The compiled request path's C entries (session i, helper hotc): what the firewall and
config starts, the whole-answer pass and the settle step call without a Python call.

* ``wire/_scan.pxd``: ``scan_request``, the ``UsageScanner`` constructor, ``feed_from``,
  ``finish`` and ``result().has_usage`` as C functions (the Python API
  calls the same bodies); ``wire/_head.pxd``: ``content_length_line``.  Whether the
  compiled gateway still answers, forwards and bills as the pure one does is
  ``tests/test_plain_request.py`` / ``test_whole_answer.py`` (both builds, byte for byte,
  rows compared); here: the entries exist, and the constructor's checks moved from
  ``__cinit__`` to ``__init__`` behave as before.
* ``_answer._release``: the pool's idle list for a connection's origin is kept on the
  connection (``UpstreamConnection.idle_stack``) the first time it is released, so no
  answer hashes the origin tuple again; it must be the pool's own list, and the pool's
  rules (reuse, the per-origin cap, a closed pool) unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast import wire
from plano_fast.wire import _scan_py
from tests.gateway_proc import _migrate, write_config
from tests.test_billing_faults import InProcessGateway

_scan = pytest.importorskip("plano_fast.wire._scan", reason="the Cython extension is not built")
_head = pytest.importorskip("plano_fast.wire._head", reason="the Cython extension is not built")


def test_the_c_entries_are_exported() -> None:
    """Each module's ``__pyx_capi__`` holds the entries its ``.pxd`` declares (a compiled
    caller cimports them: a missing one would fail that module's import, and the gateway
    would silently run the twin)."""
    assert {"scan_request_c", "usage_scanner_c", "feed_from_c", "finish_c", "has_usage_c",
            "reads_json_aside_c"} <= set(_scan.__pyx_capi__)
    assert "content_length_line_c" in _head.__pyx_capi__


@pytest.mark.parametrize("module", [_scan, _scan_py], ids=["cython", "python"])
def test_the_constructor_checks_as_before(module: Any) -> None:
    """Both builds: an unknown API is a ValueError, ``strip_usage_chunk`` outside a streamed
    chat completion a ValueError; a good scanner reads usage."""
    with pytest.raises(ValueError, match="unknown api"):
        module.UsageScanner(0, False)
    with pytest.raises(ValueError, match="unknown api"):
        module.UsageScanner(5, True)
    with pytest.raises(ValueError, match="strip_usage_chunk"):
        module.UsageScanner(module.API_ANTHROPIC, True, True)
    with pytest.raises(ValueError, match="strip_usage_chunk"):
        module.UsageScanner(module.API_OPENAI_CHAT, False, strip_usage_chunk=True)
    scanner = module.UsageScanner(module.API_OPENAI_CHAT, False)
    scanner.feed(b'{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4}}')
    assert scanner.finish() == b""
    usage = scanner.result()
    assert (usage.input_tokens, usage.output_tokens, usage.has_usage, usage.model) == (3, 4, True, "m")


def test_the_compiled_scanner_refuses_a_second_init() -> None:
    """``__init__`` sets the scanner up once (it was ``__cinit__``, which Python cannot call
    again): a second call is a TypeError and leaves what was read alone."""
    scanner = _scan.UsageScanner(_scan.API_OPENAI_CHAT, False)
    scanner.feed(b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}')
    with pytest.raises(TypeError, match="twice"):
        scanner.__init__(_scan.API_ANTHROPIC, True)
    scanner.finish()
    assert scanner.result().output_tokens == 2


def test_a_scanner_never_set_up_is_refused_not_a_crash() -> None:
    """``UsageScanner.__new__`` skips ``__init__`` (the set-up): its Python entries raise
    TypeError instead of walking pointers that point nowhere (a segfault before the
    guard). Run in a child process, so a crash fails this test and not the suite."""
    import subprocess
    import sys

    code = (
        "from plano_fast.wire import _scan\n"
        "s = _scan.UsageScanner.__new__(_scan.UsageScanner)\n"
        "for call in (lambda: s.feed(b'{}'), lambda: s.feed_from(b'{}', 0), s.finish, s.result,\n"
        "             s.raw_usage, s.usage_fields):\n"
        "    try:\n"
        "        call()\n"
        "    except TypeError as exc:\n"
        "        assert 'not initialised' in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('served')\n"
        "print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != wire.PURE_ENV})
    assert (done.returncode, done.stdout.strip()) == (0, "refused"), done.stderr[-2000:]


@pytest.fixture
def fake() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as provider:
        yield provider


def _post_keep_alive(port: int, count: int) -> list[int]:
    """``count`` chat completions over one keep-alive client connection; their statuses."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "idle-stack"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
    statuses = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        buf = b""
        for _ in range(count):
            sock.sendall(request)
            status, _, buf = read_answer(sock, buf)
            statuses.append(status)
    return statuses


def read_answer(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """The next Content-Length answer on ``sock`` (``buf``: bytes read before): its status,
    its body and what was read past it."""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(buf) < length:
        buf += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), buf[:length], buf[length:]


def _pool_state(gateway: InProcessGateway) -> list[tuple[Any, list[Any]]]:
    """The pool's idle lists, read on the gateway's own loop (its state is that thread's)."""

    async def read() -> list[tuple[Any, list[Any]]]:
        return [(origin, list(stack)) for origin, stack in gateway.gateway.pool._idle.items()]

    return asyncio.run_coroutine_threadsafe(read(), gateway.loop).result(10)


def test_a_released_connection_keeps_the_pools_own_idle_list(fake: FakeProviderThread, tmp_path: Path) -> None:
    """Config mode, three requests one after the other: one upstream connection, reused
    (the provider sees one connection), back in the pool after each answer; its
    ``idle_stack`` is the very list ``pool._idle[origin]`` holds (an append to a copy would
    lose the connection: the next request would connect again); a fourth request still
    reuses it.  The gateway's stop closes it (the pool's close walks the same lists)."""
    if os.environ.get(wire.PURE_ENV) == "1":
        pytest.skip("the pure build releases through UpstreamPool.release (no list kept)")
    config = write_config(tmp_path / "plano_config.yaml", fake.port)
    _migrate(config, {})
    gateway = InProcessGateway(config)
    try:
        assert _post_keep_alive(gateway.gateway.port, 3) == [200, 200, 200]
        state = _pool_state(gateway)
        assert len(state) == 1 and len(state[0][1]) == 1, state
        ((origin, (conn,)),) = state
        pool = gateway.gateway.pool
        assert conn.idle_stack is pool._idle[origin]
        assert conn.reused
        assert _post_keep_alive(gateway.gateway.port, 1) == [200]
        assert _pool_state(gateway)[0][1] == [conn]  # the same connection, back on the same list
    finally:
        gateway.stop()
    assert conn.closed  # (the pool closed it at stop)
