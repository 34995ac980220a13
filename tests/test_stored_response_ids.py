"""Every 404 for an unknown stored response id (Responses API ``previous_response_id``,
``GET`` / ``DELETE /v1/responses/{id}``) carries ``x-plano-request-id``, the id of its
access-log line, as every other refusal does (before 2026-12-06 the GET and DELETE 404s
were sent plain: no id, no line, not in errors_total).  Config and managed mode, real
gateway processes and the fake provider over real sockets."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_access_log_refusals import log_lines
from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

UNKNOWN = "resp_0123456789abcdef0123456789abcdef"


def _call(
    gw: GatewayProcess, method: str, path: str, key: str, body: bytes | None = None
) -> tuple[int, str | None, dict[str, Any]]:
    req = urllib.request.Request(gw.url + path, method=method, data=body, headers={
        "authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("x-plano-request-id"), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("x-plano-request-id"), json.loads(exc.read())


def _unknown_ids(gw: GatewayProcess, key: str, model: str) -> dict[str, str]:
    answers = {
        "get": _call(gw, "GET", f"/v1/responses/{UNKNOWN}", key),
        "delete": _call(gw, "DELETE", f"/v1/responses/{UNKNOWN}", key),
        "previous": _call(gw, "POST", "/v1/responses", key, json.dumps(
            {"model": model, "input": "hi", "previous_response_id": UNKNOWN}).encode()),
    }
    ids = {}
    for kind, (status, request_id, doc) in answers.items():
        assert status == 404, (kind, status, doc)
        assert doc["error"]["code"] == "not_found" and doc["error"]["type"] == "invalid_request_error", (kind, doc)
        assert UNKNOWN in doc["error"]["message"], (kind, doc)
        assert request_id, f"{kind}: no x-plano-request-id on the 404"
        ids[kind] = request_id
    assert len(set(ids.values())) == len(ids)
    return ids


def _lines_have(lines: list[dict[str, Any]], ids: dict[str, str]) -> None:
    by_id = {line["request_id"]: line for line in lines}
    for kind, request_id in ids.items():
        assert request_id in by_id, f"{kind}: no access-log line has the id {request_id}"
        assert by_id[request_id]["status"] == 404, (kind, by_id[request_id])


def test_config_mode_404s_of_unknown_stored_responses_carry_their_ids(
    fake: FakeProviderThread, tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    path = write_config(tmp_path / "plano_config.yaml", fake.port, {"access_log": access_log})
    path.write_text(path.read_text() + "state_storage:\n  type: memory\n")
    with GatewayProcess(path) as gw:
        ids = _unknown_ids(gw, "sk-client", "claude-sonnet-4-6")  # (converted: the gateway keeps the state)
        _lines_have(log_lines(access_log, len(ids)), ids)


def test_managed_mode_404s_of_unknown_stored_responses_carry_their_ids(
    fake: FakeProviderThread, tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    path = write_config(tmp_path / "plano_config.yaml", fake.port,
                        {"managed": "true", "managed_reload_s": 1, "access_log": access_log})
    path.write_text(path.read_text() + "state_storage:\n  type: store\n")
    tenants: list[Tenant] = []
    sqlite_path = str(path.with_suffix(".db"))
    with GatewayProcess(path, env=ENV, before_start=lambda: tenants.append(
            provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=10**9))) as gw:
        ids = _unknown_ids(gw, tenants[0].token, "gpt-4o-mini")
        _lines_have(log_lines(access_log, len(ids)), ids)
