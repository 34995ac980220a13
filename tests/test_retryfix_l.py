"""A 2xx answer is never followed by another attempt once received (session l, helper
retryfix).

Config mode's retry engine (``plano_fast/gateway/retrying.py``, ``_failed``) refused a retry
only once the answer's head had gone out to the client.  A conversion of a JSON answer (an
OpenAI client on an Anthropic model, or the reverse) holds the head back until the whole
answer is in; so a 200 whose gzip (a provider ignoring ``Accept-Encoding: identity``) never
ended failed at the body's end as if no answer had come, and the route's fallback got the
request too: the provider had answered (and billed) the first attempt, its usage row was
lost (the row was the fallback's; the first attempt only ``upstream_error`` on the trail).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.attack_battery import exchange, post
from benchmarks.fake_faults import Fault
from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess


def _config(work: Path, primary: str, secondary: str, extra: str = "") -> Path:
    path = work / "retryfix.yaml"
    path.write_text(f"""\
version: v0.4.0
listeners:
  - {{type: model, name: retryfix, address: 127.0.0.1, port: 12000, timeout: 5s}}
model_providers:
  # an OpenAI model whose fallback is Anthropic's (an Anthropic client: converted)
  - model: openai/gpt-4o-mini
    base_url: {primary}
    access_key: sk-primary-openai
    default: true
    retry_policy:
      fallback_models: [anthropic/claude-sonnet-4-6]
      default_strategy: different_provider
      default_max_attempts: 2
  - model: anthropic/claude-sonnet-4-6
    base_url: {secondary}
    access_key: sk-ant-secondary
  # an Anthropic model whose fallback is OpenAI's (an OpenAI client: converted)
  - model: anthropic/claude-haiku-4-5
    base_url: {primary}
    access_key: sk-ant-primary
    retry_policy:
      fallback_models: [openai/gpt-4.1-mini]
      default_strategy: different_provider
      default_max_attempts: 2
  - model: openai/gpt-4.1-mini
    base_url: {secondary}
    access_key: sk-secondary-openai
plano_fast:
  sqlite_path: {work / "retryfix.db"}
  usage_journal_path: {work / "retryfix.journal"}
  usage_flush_interval_s: 0.2
  price_interval_s: 0.2
{extra}""")
    return path


class _Rig:
    def __init__(self, primary: FakeProviderThread, secondary: FakeProviderThread, gateway: GatewayProcess,
                 db_path: Path) -> None:
        self.primary, self.secondary, self.gateway, self.db_path = primary, secondary, gateway, db_path

    def calls(self, fake: FakeProviderThread) -> list[Any]:
        return [r for r in fake.requests if not r.path.startswith("/_fake")]

    def rows(self, request_id: bytes | None, timeout_s: float = 8.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            with sqlite3.connect(self.db_path) as db:
                db.row_factory = sqlite3.Row
                rows = [dict(r) for r in db.execute("select * from usage_log where request_id = ?",
                                                    ((request_id or b"").decode(),))]
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Rig]:
    work = tmp_path_factory.mktemp("retryfix")
    with FakeProviderThread() as primary, FakeProviderThread() as secondary:
        with GatewayProcess(_config(work, primary.url, secondary.url)) as gateway:
            yield _Rig(primary, secondary, gateway, work / "retryfix.db")


_CASES = [
    # (client path, model) -- a JSON answer converted for the client (its head held)
    pytest.param(b"/v1/messages", "openai/gpt-4o-mini", id="anthropic-client-openai-provider"),
    pytest.param(b"/v1/chat/completions", "anthropic/claude-haiku-4-5", id="openai-client-anthropic-provider"),
]


@pytest.mark.parametrize("path, model", _CASES)
def test_a_held_2xx_cut_in_its_coding_is_not_retried(rig: _Rig, path: bytes, model: str) -> None:
    """A 200 in gzip that never ended, under a conversion that holds the head: the client
    gets the gateway's 502 (the answer cannot be whole), the request one row,
    ``usage_missing`` (the provider answered and billed it), and the fallback no request.
    (Before the fix: the fallback answered, 200, its row ``ok`` with the trail
    ``upstream_error`` then 200, and the first attempt's usage was gone.)"""
    rig.primary.clear()
    rig.secondary.clear()
    body = json.dumps({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}).encode()
    answer = exchange(rig.gateway.port, post(path, body, b"",
                                             b"x-fake-content-encoding: gzip\r\nx-fake-coding-cut: 1\r\n"),
                      wait_s=8, close_wait_s=0.5)
    assert answer.status == 502, answer.raw[-300:]
    assert "content coding never ended" in answer.body.decode(errors="replace"), answer.raw[-300:]
    assert len(rig.calls(rig.primary)) == 1
    assert rig.calls(rig.secondary) == []  # no second upstream call
    rows = rig.rows(answer.header(b"x-plano-request-id"))
    assert [(r["status"], r["attempt_trail"]) for r in rows] == [("usage_missing", None)], rows


@pytest.mark.parametrize("path, model", _CASES)
def test_a_held_503_still_fails_over(rig: _Rig, path: bytes, model: str) -> None:
    """The control: a 503 from the first target (no coding) goes to the fallback, which
    answers 200; one row, ``ok``, the trail 503 then 200."""
    rig.primary.clear()
    rig.secondary.clear()
    body = json.dumps({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}).encode()
    rig.primary.faults.add(Fault("status", 503))  # the first target's next request only
    try:
        answer = exchange(rig.gateway.port, post(path, body, b""), wait_s=8, close_wait_s=0.5)
    finally:
        rig.primary.faults.clear()
    assert answer.status == 200, answer.raw[-300:]
    assert len(rig.calls(rig.primary)) == 1 and len(rig.calls(rig.secondary)) == 1
    rows = rig.rows(answer.header(b"x-plano-request-id"))
    assert [(r["status"], r["attempt_trail"]) for r in rows] == [("ok", "503,200")], rows


def test_a_2xx_held_by_the_response_guardrails_cut_in_its_coding_is_not_retried(tmp_path: Path) -> None:
    """The same without a conversion (an OpenAI client on an OpenAI model): the response
    guardrails' hold (``ResponseHold``) keeps the JSON answer's head back.  A 502, one row
    ``usage_missing``, no request to the fallback.  (Before the fix: the fallback's 200 and
    its row only.)"""
    with FakeProviderThread() as primary, FakeProviderThread() as secondary:
        config = _config(tmp_path, primary.url, secondary.url, '  response_guardrails: {detectors: {email: warn}}\n')
        with GatewayProcess(config) as gateway:
            rig = _Rig(primary, secondary, gateway, tmp_path / "retryfix.db")
            body = b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
            answer = exchange(gateway.port, post(b"/v1/chat/completions", body, b"",
                                                 b"x-fake-content-encoding: gzip\r\nx-fake-coding-cut: 1\r\n"),
                              wait_s=8, close_wait_s=0.5)
            assert answer.status == 502, answer.raw[-300:]
            assert len(rig.calls(primary)) == 1
            assert rig.calls(secondary) == []  # no second upstream call
            rows = rig.rows(answer.header(b"x-plano-request-id"))
    assert [(r["status"], r["attempt_trail"]) for r in rows] == [("usage_missing", None)], rows
