"""Conversation state in managed mode (plano_fast.responses_managed): with ``state_storage``
the gateway stores the provider's Responses answers and expands ``previous_response_id``
before the hard budget's reservation, so the reservation counts the history; another
project's or user's id is a 404, never sent to the provider; ``store: false`` keeps nothing.
Real gateway processes, the fake provider's native Responses endpoint, JSON and streams."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_managed import DEFAULT_PIPE, ENV, Tenant, provision

OUT = 50  # max_output_tokens of every request here
FAKE_USAGE = {"x-fake-input-tokens": "10", "x-fake-output-tokens": "5"}
ACTUAL = 10 * 150 + 5 * 600  # what each answer costs (gpt-4o-mini prices, nano-USD)


def b(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def bound(body: bytes) -> int:
    """The reservation of a plain-text body: its bytes as input tokens, OUT as output, at
    gpt-4o-mini's dearest listed tier (priority: 250 / 1,000 nano-USD), as the body does not
    pin its service tier (the answers, at the standard tier, cost ACTUAL)."""
    return len(body) * 250 + OUT * 1_000


def post(gw: GatewayProcess, token: str, doc: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(gw.url + "/v1/responses", data=b(doc), headers={
        "authorization": f"Bearer {token}", "content-type": "application/json", **FAKE_USAGE})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    if doc.get("stream"):
        events = [json.loads(line[5:]) for line in raw.split(b"\n") if line.startswith(b"data:")]
        return 200, next(e["response"] for e in events if e.get("type") == "response.completed")
    return 200, json.loads(raw)


def start(fake: FakeProviderThread, tmp_path: Path, limits: list[int | None]) -> tuple[GatewayProcess, list[Tenant], str]:
    path = write_config(tmp_path / "plano_config.yaml", fake.port, {"managed": "true", "managed_reload_s": 1})
    path.write_text(path.read_text() + "state_storage:\n  type: store\n")
    sqlite_path = str(path.with_suffix(".db"))
    tenants: list[Tenant] = []

    def provision_all() -> None:
        for limit in limits:
            tenants.append(provision(None, sqlite_path, DEFAULT_PIPE, limit_nano_usd=limit))
    gw = GatewayProcess(path, env=ENV, before_start=provision_all)
    return gw, tenants, sqlite_path


@pytest.fixture
def gateway(fake: FakeProviderThread, tmp_path: Path) -> Any:
    started: list[GatewayProcess] = []

    def make(limits: list[int | None]) -> tuple[GatewayProcess, list[Tenant], str]:
        where = tmp_path / str(len(started))
        where.mkdir()
        gw, tenants, db = start(fake, where, limits)
        started.append(gw)
        return gw, tenants, db
    yield make
    for gw in started:
        gw.stop()


def last_responses_request(fake: FakeProviderThread) -> dict[str, Any]:
    return [r for r in fake.requests if r.path.endswith("/responses")][-1].json()  # type: ignore[no-any-return]


HISTORY = "x" * 8000


def test_the_reservation_counts_the_expanded_history(gateway: Callable[..., Any], fake: FakeProviderThread) -> None:
    first_doc = {"model": "gpt-4o-mini", "input": HISTORY, "max_output_tokens": OUT}
    # the limit fits the first turn with 5,000 nano-USD to spare
    gw, [tenant], _ = gateway([bound(b(first_doc)) + 5000])
    status, first = post(gw, tenant.token, first_doc)
    assert status == 200
    second_doc = {"model": "gpt-4o-mini", "input": "and now?", "max_output_tokens": OUT}
    # the same small turn without history fits what is left ...
    assert bound(b(second_doc)) < bound(b(first_doc)) + 5000 - 2 * ACTUAL
    status, _ = post(gw, tenant.token, second_doc)
    assert status == 200
    # ... with the 8 KB history behind it, it does not: 402, nothing forwarded
    sent = len(fake.requests)
    status, err = post(gw, tenant.token, {**second_doc, "previous_response_id": first["id"]})
    assert status == 402 and err["error"]["code"] == "budget_exceeded", err
    assert len(fake.requests) == sent


@pytest.mark.parametrize("stream", [False, True])
def test_history_is_expanded_stored_and_owned(gateway: Callable[..., Any], fake: FakeProviderThread, stream: bool) -> None:
    gw, [alice, bob], db = gateway([None, None])
    previous = None
    for k in range(3):
        doc: dict[str, Any] = {"model": "gpt-4o-mini", "input": f"question {k}", "max_output_tokens": OUT,
                               "stream": stream}
        if previous is not None:
            doc["previous_response_id"] = previous
        status, resp = post(gw, alice.token, doc)
        assert status == 200, resp
        sent = last_responses_request(fake)
        assert "previous_response_id" not in sent  # the gateway holds the state
        items = [{"role": "user", "content": sent["input"]}] if k == 0 else sent["input"]
        assert [i["content"] for i in items if i.get("role") == "user"] == [f"question {j}" for j in range(k + 1)]
        assert len([i for i in items if i.get("type") == "message"]) == k  # the earlier answers
        previous = resp["id"]
    # another project's id: 404, never sent to the provider (where it would be found)
    sent_count = len(fake.requests)
    status, err = post(gw, bob.token, {"model": "gpt-4o-mini", "input": "x", "previous_response_id": previous})
    assert status == 404 and previous in err["error"]["message"]
    status, _ = post(gw, alice.token, {"model": "gpt-4o-mini", "input": "x", "previous_response_id": "resp_nope"})
    assert status == 404 and len(fake.requests) == sent_count
    # store: false keeps nothing
    status, off = post(gw, alice.token, {"model": "gpt-4o-mini", "input": "x", "store": False})
    assert status == 200
    conn = sqlite3.connect(db)
    ids = {r[0] for r in conn.execute("SELECT id FROM response_states")}
    owners = {r[0] for r in conn.execute("SELECT owner FROM response_states")}
    conn.close()
    assert previous in ids and off["id"] not in ids
    assert owners == {f"managed:{alice.project_id}:{alice.user_id}"}
    # GET / DELETE /v1/responses/{id}: the owner's only
    assert call(gw, bob.token, "GET", previous)[0] == 404
    assert call(gw, bob.token, "DELETE", previous)[0] == 404
    status, got = call(gw, alice.token, "GET", previous)
    assert status == 200 and got["id"] == previous and got["status"] == "completed"
    assert call(gw, "xproxy_not_a_token", "GET", previous)[0] == 401
    status, gone = call(gw, alice.token, "DELETE", previous)
    assert status == 200 and gone == {"id": previous, "object": "response", "deleted": True}
    assert call(gw, alice.token, "GET", previous)[0] == 404
    status, _ = post(gw, alice.token, {"model": "gpt-4o-mini", "input": "x", "previous_response_id": previous})
    assert status == 404


def call(gw: GatewayProcess, token: str, method: str, rid: str) -> tuple[int, Any]:
    req = urllib.request.Request(f"{gw.url}/v1/responses/{rid}", method=method,
                                 headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
