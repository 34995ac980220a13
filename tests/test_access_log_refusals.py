"""Every answer has one access-log line, refusals before a mode handles the request
included (unparseable, oversized, timed out, 404, 405, the store not open yet), and no
line carries key material.  Real gateways over real sockets: raw HTTP for what an SDK
cannot send, the official OpenAI SDK for the rest."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.access_log import refusal_record
from plano_fast.errors import NotFound
from plano_fast.wire import access_log_lines
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_billing_faults import InProcessGateway, chat

SECRET = "sk-SECRET-never-logged-0123456789"
QUERY_SECRET = "AIzaSECRET-query-key-never-logged"


def exchange_raw(port: int, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send ``data`` on a new connection; everything the gateway answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def log_lines(path: Path, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The log's lines once there are ``count`` (written every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            if len(lines) >= count:
                break
        time.sleep(0.1)
    return lines


def test_refusals_before_a_mode_each_have_one_line_and_no_key(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.jsonl"
    gateway = make_gateway({
        "access_log": str(log_path), "max_header_bytes": 4096, "max_body_bytes": 1000,
        "request_head_timeout_s": 0.5,
    })  # fmt: skip
    port = gateway.port
    auth = f"authorization: Bearer {SECRET}\r\nx-api-key: {SECRET}\r\n".encode()
    answers = {
        "unparseable": exchange_raw(port, b"\x16\x03\x01 not http at all\r\n\r\n"),
        "404": exchange_raw(port, b"GET /v1/nowhere?key=" + QUERY_SECRET.encode()
                            + b" HTTP/1.1\r\nhost: x\r\n" + auth + b"connection: close\r\n\r\n"),
        "405": exchange_raw(port, b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + auth
                            + b"connection: close\r\n\r\n"),
        "431": exchange_raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + auth
                            + b"x-big: " + b"a" * 5000 + b"\r\n\r\n"),
        "413": exchange_raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + auth
                            + b"content-type: application/json\r\ncontent-length: 5000\r\n\r\n"),
        "408": exchange_raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + auth),
    }
    assert {kind: status_of(a) for kind, a in answers.items()} == {
        "unparseable": 400, "404": 404, "405": 405, "431": 431, "413": 413, "408": 408,
    }
    # An exchange's own refusal (an unknown model) and a served request: their lines are
    # the exchange's, one each (not one more from the server).
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=SECRET, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    lines = log_lines(log_path, 8)
    time.sleep(0.5)  # (a second line for any of them would have been written by now)
    lines = log_lines(log_path, 8)
    pre_mode = sorted(
        (line["status"], line["attempt_trail"], line["endpoint"]) for line in lines if line["mode"] is None
    )
    assert pre_mode == [
        (400, "malformed_request", None),
        (404, "not_found", "/v1/nowhere"),  # the path, never its query string
        (405, "method_not_allowed", "/v1/chat/completions"),
        (408, "request_timeout", "/v1/chat/completions"),
        (413, "request_too_large", "/v1/chat/completions"),
        (431, "request_header_fields_too_large", "/v1/chat/completions"),
    ]
    for line in lines:
        if line["mode"] is None:
            assert line["outcome"] == "refused" and line["key"] is None and line["request_id"]
            assert line["client"].startswith("127.0.0.1:")
    by_exchange = [(line["mode"], line["status"], line["outcome"]) for line in lines if line["mode"] is not None]
    assert by_exchange == [("config", 400, "refused"), ("config", 200, "ok")]
    text = log_path.read_text()
    assert SECRET not in text and QUERY_SECRET not in text and "Bearer" not in text


def test_a_refusal_while_the_store_is_not_open_has_its_line(fake: FakeProviderThread, tmp_path: Path) -> None:
    """The 503 of a gateway whose store has not opened (its SQLite directory is a file)."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the database directory should be")
    log_path = tmp_path / "access.jsonl"
    config = write_config(tmp_path / "plano_config.yaml", fake.port,
                          {"sqlite_path": blocker / "gw.db", "access_log": str(log_path)})  # fmt: skip
    gateway = InProcessGateway(config)
    try:
        status, _ = chat(gateway.url, "store-not-open")
    finally:
        gateway.stop()
    assert status == 503
    (line,) = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert (line["mode"], line["status"], line["outcome"], line["attempt_trail"], line["endpoint"]) == (
        None, 503, "refused", "unavailable", "/v1/chat/completions"
    )
    assert line["key"] is None and "sk-client" not in log_path.read_text()


def test_refusal_record_writes_a_parseable_line() -> None:
    """The record fits the writer's RECORD (the compiled one, or its twin) and a long
    path is cut."""
    record = refusal_record(NotFound("x"), b"/" + b"p" * 500, "rid-1", "127.0.0.1:5")
    (line,) = [json.loads(text) for text in access_log_lines([record]).splitlines()]
    assert (line["status"], line["outcome"], line["attempt_trail"], line["duration_ms"]) == (
        404, "refused", "not_found", 0.0
    )
    assert len(line["endpoint"]) == 200 and line["key"] is None and line["mode"] is None
