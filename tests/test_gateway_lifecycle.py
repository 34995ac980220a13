"""Process-level behaviour: memory under a huge stream, graceful shutdown, workers, CLI."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.gateway_proc import ROOT, GatewayProcess
from tests.test_http_protocol import connect, read_response, request

STREAM_BODY = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"x"}]}'
GIB = 1024**3


def test_one_gib_stream_to_a_slow_reader_keeps_memory_bounded(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = make_gateway()
    with connect(gateway.port) as sock:  # warm up: imports, pools, first allocations
        sock.sendall(request())
        read_response(sock)
    baseline_kib, _ = gateway.rss_kib()
    peak_kib = baseline_kib
    received = 0
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", gateway.port))
    with sock:
        sock.sendall(request(body=STREAM_BODY, extra=b"x-fake-stream-bytes: %d\r\n" % GIB))
        sock.settimeout(30)
        tail = b""
        next_sample = time.monotonic()
        throttle_every = 8 * 1024 * 1024
        next_pause = throttle_every
        while True:
            data = sock.recv(256 * 1024)
            if not data:
                break
            received += len(data)
            tail = (tail + data)[-16:]
            if tail.endswith(b"\r\n0\r\n\r\n"):
                break
            if received >= next_pause:  # a deliberately slow reader
                next_pause += throttle_every
                time.sleep(0.02)
            if time.monotonic() >= next_sample:
                next_sample += 0.25
                peak_kib = max(peak_kib, gateway.rss_kib()[0])
    assert received >= GIB
    growth_mib = (peak_kib - baseline_kib) / 1024
    print(f"gateway RSS baseline {baseline_kib / 1024:.1f} MiB, peak {peak_kib / 1024:.1f} MiB, "
          f"growth {growth_mib:.1f} MiB over {received / GIB:.2f} GiB")
    # Bounded by the write-buffer high-water mark plus one socket read per side; 32 MiB
    # leaves room for allocator noise and is still 1/32 of what went through.
    assert growth_mib < 32


def test_graceful_shutdown_lets_streams_finish(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = make_gateway({"drain_timeout_s": 10})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-x", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_headers={"x-fake-events": "8", "x-fake-interval-ms": "150"},
    )
    chunks = []
    iterator = iter(stream)
    chunks.append(next(iterator))
    gateway.signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()
    chunks.extend(iterator)
    assert len(chunks) >= 8
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert gateway.wait(10) == 0
    client.close()


def test_shutdown_drain_timeout_cuts_long_streams(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = make_gateway({"drain_timeout_s": 0.5})
    with connect(gateway.port) as sock:
        sock.sendall(request(body=STREAM_BODY, extra=b"x-fake-events: 100\r\nx-fake-interval-ms: 100\r\n"))
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(10) == 0
        assert time.monotonic() - started < 3
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert not data.endswith(b"0\r\n\r\n")  # cut, not falsely completed


def test_sigterm_writes_a_row_for_every_stream_it_served_or_cut(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """SIGTERM with streams in flight: one that ends within ``drain_timeout_s`` is billed
    ``ok``; those the drain timeout cuts are billed too -- an estimate, never zero
    (``client_disconnected_estimated``): main aborted their connections and gave up the
    drains in the same turn, before the exchanges learnt their clients were gone, so they
    never settled and had no row at all."""
    from tests.test_billing_e2e import read_rows

    gateway = make_gateway({"drain_timeout_s": 0.5})
    socks = []
    for events in (3, 100, 100):
        sock = connect(gateway.port)
        sock.sendall(request(body=STREAM_BODY, extra=b"x-fake-events: %d\r\nx-fake-interval-ms: 50\r\n"
                                                     b"x-fake-input-tokens: 100\r\nx-fake-output-tokens: 10\r\n"
                                                     % events))
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        socks.append(sock)
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(10) == 0
    endings = []
    for sock in socks:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        endings.append(data.endswith(b"0\r\n\r\n"))
    assert endings == [True, False, False]
    rows = read_rows(None, str(gateway.config_path.with_suffix(".db")))
    assert sorted(r.status for r in rows) == ["client_disconnected_estimated"] * 2 + ["ok"], rows
    for row in rows:
        assert row.priced and (row.cost_nano_usd or 0) > 0 and row.output_tokens > 0, row


def test_workers_share_the_port(make_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = make_gateway(workers=2)
    assert len(set(gateway.pids)) == 2
    for _ in range(20):
        with connect(gateway.port) as sock:
            sock.sendall(request())
            response, _ = read_response(sock)
            assert response.status_code == 200
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(15) == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plano_fast", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_validate_accepts_the_example_config() -> None:
    result = _cli("validate", "examples/plano_config.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("version: v0.4.0\nlisteners: []\nmodel_providers:\n  - model: openai/x\n    pasthrough_auth: true\n",
         "pasthrough_auth"),
        ("version: v9\nlisteners: []\nmodel_providers:\n  - model: openai/x\n", "version"),
        ("version: v0.4.0\nlisteners: []\nmodel_providers:\n  - model: openai/x\n    default: maybe\n",
         "default"),
        ("version: v0.4.0\nlisteners: [\n", "line"),
    ],
)
def test_validate_rejects_broken_configs_naming_the_field(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    result = _cli("validate", str(path))
    assert result.returncode == 1
    assert "bad.yaml" in result.stderr and expected in result.stderr


def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: v0.4.0\nlisteners: []\nmodel_providers: 3\n")
    result = _cli("serve", "--config", str(path))
    assert result.returncode == 1
    assert "model_providers" in result.stderr


def test_concurrent_streams_are_isolated(gateway: GatewayProcess) -> None:
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as client:
                text = "".join(
                    c.choices[0].delta.content or ""
                    for c in client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": str(i)}],
                        stream=True,
                        extra_headers={"x-fake-events": "5", "x-fake-interval-ms": "20"},
                    )
                    if c.choices
                )
                assert text
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
