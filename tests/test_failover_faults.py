"""The fault matrix (issue 20): config mode's retries, failover and circuit breaker over real
sockets, driven by the official openai and anthropic SDKs (their own retries off:
``max_retries=0``, so every retry counted here is the gateway's), against two fake
providers whose faults are injected server-side (``benchmarks/fake_faults.py``).

Each case checks where the request ended (the model that answered), how many requests each
fake provider received, the delays between attempts (read from the fake's receive times:
Retry-After honoured, backoff bounded) and that the request left exactly one usage row.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import http.client
import openai
import pytest

from benchmarks.fake_faults import Fault
from benchmarks.fake_provider import FakeProviderThread, RecordedRequest
from tests.gateway_proc import GatewayProcess
from tests.test_billing_e2e import read_rows

ADMIN_KEY = "admin-key-for-fault-matrix-0000000"
#: the gateway's first-byte timeout (the listener's ``timeout``): a stall longer than this
#: is a timeout before the first byte, which fails over
FIRST_BYTE_TIMEOUT_S = 1.0
#: the backoff of the failover route's same-model retries, without jitter: a wait before
#: another provider (which it must not get) would be this long, plain to see under any load
SAME_MODEL_BACKOFF_S = 5.0
#: a stall much longer than anything else here: its end is never what a request waited for
#: (the fake provider drops the stalled handler when the gateway closes the connection)
STALL_MS = 60_000
#: the same-model route's retry deadline
MAX_RETRY_DURATION_S = 5.0
MESSAGES = [{"role": "user", "content": "hi"}]


def config_text(work: Path, primary: str, secondary: str) -> str:
    return f"""\
version: v0.4.0
listeners:
  - {{type: model, name: faults, address: 127.0.0.1, port: 12000, timeout: {FIRST_BYTE_TIMEOUT_S:g}s}}
model_providers:
  # failover to another provider (converted: an OpenAI client answered by Anthropic)
  - model: openai/gpt-4o-mini
    base_url: {primary}
    access_key: sk-primary-openai
    default: true
    retry_policy:
      fallback_models: [anthropic/claude-sonnet-4-6]
      default_strategy: different_provider
      default_max_attempts: 2
      backoff: {{apply_to: same_model, base_ms: {SAME_MODEL_BACKOFF_S * 1000:g}, max_ms: {SAME_MODEL_BACKOFF_S * 1000:g}, jitter: false}}
  - model: anthropic/claude-sonnet-4-6
    base_url: {secondary}
    access_key: sk-ant-secondary
  # retries of the same model: bounded backoff, Retry-After honoured
  - model: openai/gpt-4.1
    base_url: {primary}
    access_key: sk-primary-openai
    retry_policy:
      default_strategy: same_model
      default_max_attempts: 3
      max_retry_duration_ms: {MAX_RETRY_DURATION_S * 1000:g}
      backoff: {{apply_to: all_retries, base_ms: 100, max_ms: 200, jitter: true}}
  # an Anthropic-format client whose fallback is an OpenAI model (converted for it)
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
  # the circuit breaker's own pair (its circuits are not shared with the cases above)
  - model: openai/gpt-4.1-nano
    base_url: {primary}
    access_key: sk-primary-openai
    retry_policy:
      fallback_models: [anthropic/claude-opus-4-1]
      default_strategy: different_provider
      default_max_attempts: 2
  - model: anthropic/claude-opus-4-1
    base_url: {secondary}
    access_key: sk-ant-secondary
plano_fast:
  sqlite_path: {work / "faults.db"}
  usage_journal_path: {work / "faults.journal"}
  usage_flush_interval_s: 0.2
  price_interval_s: 1
  admin_port: 0
  admin_key: {ADMIN_KEY}
"""


class Rig:
    """Two fake providers, one gateway, and the client requests made (for the row count)."""

    def __init__(self, primary: FakeProviderThread, secondary: FakeProviderThread, gateway: GatewayProcess,
                 sqlite_path: str) -> None:
        self.primary = primary
        self.secondary = secondary
        self.gateway = gateway
        self.sqlite_path = sqlite_path
        self.client_requests = 0

    def reset(self) -> None:
        for fake in (self.primary, self.secondary):
            fake.faults.clear()
            fake.clear()

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="sk-client", max_retries=0, timeout=20)

    def chat(self, model: str) -> tuple[str, Any]:
        """(request id, parsed answer) of one chat completion."""
        self.client_requests += 1
        with self.openai() as client:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
            return raw.headers["x-plano-request-id"], raw.parse()

    def chat_error(self, model: str) -> openai.APIStatusError:
        self.client_requests += 1
        with self.openai() as client, pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
        return err.value

    def calls(self, fake: FakeProviderThread) -> list[RecordedRequest]:
        return [r for r in fake.requests if not r.path.startswith("/_fake")]

    def row(self, request_id: str) -> Any:
        """The request's usage row (exactly one)."""
        deadline = time.monotonic() + 15
        while True:
            rows = [r for r in read_rows(None, self.sqlite_path) if r.request_id == request_id]
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(rows) == 1, rows
        return rows[0]

    def metrics(self) -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.gateway.admin_port}/metrics",
                                     headers={"authorization": f"Bearer {ADMIN_KEY}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.read().decode())


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("faults")
    with FakeProviderThread() as primary, FakeProviderThread() as secondary:
        path = work / "faults.yaml"
        path.write_text(config_text(work, primary.url, secondary.url))
        with GatewayProcess(path) as gateway:
            yield Rig(primary, secondary, gateway, str(work / "faults.db"))


@pytest.fixture
def r(rig: Rig) -> Rig:
    rig.reset()
    return rig


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# -- the fake's faults themselves ----------------------------------------------------------


def fake_call(port: int, method: str, path: str, doc: Any = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one request to a fake provider, on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, json.dumps(doc) if doc is not None else None, {"content-type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body) if body else None
    finally:
        conn.close()


def test_fake_faults_are_consumed_in_order_per_model_and_counted() -> None:
    with FakeProviderThread() as fake:
        body = {"model": "a", "messages": MESSAGES}

        def chat(doc: Any) -> tuple[int, dict[str, str], Any]:
            return fake_call(fake.port, "POST", "/v1/chat/completions", doc)

        doc = {"rules": [{"count": 2, "model": "a", "status": 429, "retry_after_ms": 250}]}
        assert fake_call(fake.port, "POST", "/_fake/faults", doc)[0] == 200
        assert chat({**body, "model": "b"})[0] == 200  # another model: not this rule's
        status, headers, _ = chat(body)
        assert status == 429 and headers["retry-after-ms"] == "250"
        assert "retry-after" not in headers  # only the headers the rule names
        assert chat(body)[0] == 429
        assert chat(body)[0] == 200  # the rule is used up (no fault left: not even counted)
        assert fake_call(fake.port, "GET", "/_fake/faults")[2]["counts"] == {"status_429": 2, "passed": 1}
        assert fake_call(fake.port, "POST", "/_fake/faults", {"rules": [{"action": "sideways"}]})[0] == 400
        fake.faults.add(Fault("reset"))
        with pytest.raises(ConnectionError):  # RST before any byte of a head
            chat(body)
        fake_call(fake.port, "POST", "/_fake/faults", {"random": {"rate": 0.25, "seed": 7, "status": 500}})
        statuses = [chat(body)[0] for _ in range(400)]
        assert 60 <= statuses.count(500) <= 140 and statuses.count(200) == 400 - statuses.count(500)
        assert fake_call(fake.port, "DELETE", "/_fake/faults")[2] == {"rules": [], "random": None, "counts": {}}
        assert not fake.faults.on


# -- failover to another provider -----------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault("status", 503), Fault("status", 500), Fault("status", 502), Fault("status", 504),
     Fault("status", 529), Fault("status", 429),
     Fault("stall", stall_ms=STALL_MS)],
    ids=lambda f: f.label,
)
def test_a_failed_first_attempt_fails_over_to_the_fallback(r: Rig, fault: Fault) -> None:
    r.primary.faults.add(fault, 1, model="gpt-4o-mini")
    started = time.monotonic()
    rid, reply = r.chat("gpt-4o-mini")
    elapsed = time.monotonic() - started
    assert reply.model == "claude-sonnet-4-6" and reply.choices[0].message.content  # converted answer
    ((first,), (fallback,)) = r.calls(r.primary), r.calls(r.secondary)
    assert (first.path, fallback.path) == ("/v1/chat/completions", "/v1/messages")
    # no wait before another provider (backoff applies to same-model retries only: here it
    # would be 5 s); a stall costs the first-byte timeout, not the stall (a minute).  Read
    # between the two providers' receipts, so the client's own time is not in it.
    gap_s = fallback.time - first.time
    waited_s = FIRST_BYTE_TIMEOUT_S if fault.action == "stall" else 0.0
    assert gap_s < waited_s + SAME_MODEL_BACKOFF_S / 2, gap_s
    if fault.action == "stall":
        assert elapsed >= FIRST_BYTE_TIMEOUT_S * 0.95
        deadline = time.monotonic() + 10  # (the gateway's close reaches the fake a moment later)
        while r.primary.abandoned < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.primary.abandoned == 1  # the stalled attempt was dropped, not waited for
    row = r.row(rid)
    assert (row.provider, row.model, row.status) == ("anthropic", "claude-sonnet-4-6", "ok")
    # the next request is the primary's again (one failure is far from opening its circuit;
    # this success also resets its count of consecutive failures for the next case)
    assert r.chat("gpt-4o-mini")[1].model == "gpt-4o-mini"


def test_a_reset_before_the_head_is_retried_on_a_fresh_connection_then_fails_over(r: Rig) -> None:
    """A reset on a pooled keep-alive connection looks like a stale connection: the gateway
    tries once more on a new one (same target); that one reset too, it fails over."""
    assert r.chat("gpt-4o-mini")[1].model == "gpt-4o-mini"  # leaves a pooled connection
    r.primary.faults.add(Fault("reset"), 2, model="gpt-4o-mini")
    rid, reply = r.chat("gpt-4o-mini")
    assert reply.model == "claude-sonnet-4-6"
    warm, pooled, fresh = r.calls(r.primary)
    assert pooled.peer == warm.peer and fresh.peer != pooled.peer
    assert [c.path for c in r.calls(r.secondary)] == ["/v1/messages"]
    assert r.row(rid).model == "claude-sonnet-4-6"
    assert r.chat("gpt-4o-mini")[1].model == "gpt-4o-mini"


def test_client_errors_are_relayed_without_a_retry(r: Rig) -> None:
    for status in (400, 401, 403, 404, 413, 422):
        r.primary.faults.add(Fault("status", status), 1, model="gpt-4o-mini")
        # (a 401/403 to the gateway's own key is its 502: docs/security.md, the operator's account)
        assert r.chat_error("gpt-4o-mini").status_code == (502 if status in (401, 403) else status)
    assert len(r.calls(r.primary)) == 6 and r.calls(r.secondary) == []


def test_exhausted_fallbacks_relay_the_last_error_and_leave_one_row(r: Rig) -> None:
    r.primary.faults.add(Fault("status", 503), 1, model="gpt-4o-mini")
    r.secondary.faults.add(Fault("status", 529), 1, model="claude-sonnet-4-6")
    err = r.chat_error("gpt-4o-mini")
    # the last attempt's error (Anthropic's 529 "overloaded"), converted to the client's
    # OpenAI shape, where overloaded is a 503
    assert err.status_code == 503 and "injected HTTP 529" in str(err.message)
    assert (len(r.calls(r.primary)), len(r.calls(r.secondary))) == (1, 1)
    row = r.row(err.response.headers["x-plano-request-id"])
    assert row.status != "ok" and row.model == "claude-sonnet-4-6" and row.input_tokens == 0
    assert row.http_status == 529  # the row keeps the status the provider answered


def test_an_anthropic_client_fails_over_to_an_openai_model(r: Rig) -> None:
    r.primary.faults.add(Fault("status", 529), 1, model="claude-haiku-4-5")
    r.client_requests += 1
    with anthropic.Anthropic(base_url=r.gateway.url, api_key="sk-client", max_retries=0) as client:
        raw = client.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]
        reply = raw.parse()
    assert reply.type == "message" and reply.content[0].type == "text" and reply.content[0].text
    assert [c.path for c in r.calls(r.primary)] == ["/v1/messages"]
    assert [c.path for c in r.calls(r.secondary)] == ["/v1/chat/completions"]
    row = r.row(raw.headers["x-plano-request-id"])
    assert (row.provider, row.model, row.status) == ("openai", "gpt-4.1-mini", "ok")


# -- retries of the same model: waits -----------------------------------------------------


def gaps_s(calls: list[RecordedRequest]) -> list[float]:
    return [b.time - a.time for a, b in zip(calls, calls[1:])]


def test_same_model_backoff_is_bounded(r: Rig) -> None:
    r.primary.faults.add(Fault("status", 503), 2, model="gpt-4.1")
    rid, reply = r.chat("gpt-4.1")
    assert reply.model == "gpt-4.1"
    calls = r.calls(r.primary)
    assert len(calls) == 3 and r.calls(r.secondary) == []
    first, second = gaps_s(calls)
    # full jitter: uniform(0, min(max_ms, base_ms * 2^n)) -> at most 100 ms, then 200 ms
    assert first <= 0.1 + 0.15 and second <= 0.2 + 0.15
    assert r.row(rid).status == "ok"


@pytest.mark.parametrize(("header", "wait_s"), [("retry_after_ms", 2000), ("retry_after", 2)])
def test_retry_after_is_honoured_before_retrying_the_same_model(r: Rig, header: str, wait_s: float) -> None:
    fault = Fault("status", 429, **{header: str(wait_s)})
    wait_s = wait_s / 1000 if header == "retry_after_ms" else wait_s
    r.primary.faults.add(fault, 1, model="gpt-4.1")
    rid, reply = r.chat("gpt-4.1")
    assert reply.model == "gpt-4.1"
    (gap,) = gaps_s(r.calls(r.primary))
    # at least the asked wait; not much more (a quarter: 0.5 s for the gateway's own
    # reaction under load, and the route's backoff, at most 0.1 s here, not added on top)
    assert wait_s * 0.95 <= gap <= wait_s * 1.25, gap
    assert r.row(rid).status == "ok"


def test_a_retry_after_past_the_retry_deadline_ends_the_retries(r: Rig) -> None:
    r.primary.faults.add(Fault("status", 429, retry_after="30"), 1, model="gpt-4.1")
    started = time.monotonic()
    err = r.chat_error("gpt-4.1")  # max_retry_duration_ms 5000 < 30 s: relayed at once
    # (not after waiting for the Retry-After, nor for the retry deadline)
    assert err.status_code == 429 and time.monotonic() - started < MAX_RETRY_DURATION_S / 2
    assert len(r.calls(r.primary)) == 1
    r.row(err.response.headers["x-plano-request-id"])


# -- never after the first byte --------------------------------------------------------------


def test_a_stream_cut_after_its_head_is_not_retried(r: Rig) -> None:
    r.primary.faults.add(Fault("stream_reset", after_events=2), 1, model="gpt-4o-mini")
    r.client_requests += 1
    with r.openai() as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        rid = raw.headers["x-plano-request-id"]
        with pytest.raises(Exception) as cut:  # noqa: PT011 - the SDK's HTTP library's error
            for _ in raw.parse():
                pass
        assert "RemoteProtocolError" in type(cut.value).__name__ or isinstance(cut.value, openai.APIError)
    assert len(r.calls(r.primary)) == 1 and r.calls(r.secondary) == []  # the client saw the cut
    assert r.row(rid).status != "ok"


# -- circuit breaker ---------------------------------------------------------------------------


def test_the_circuit_opens_skips_the_target_and_recovers(r: Rig) -> None:
    opens_before = metric(r.metrics(), "plano_fast_circuit_opens")
    r.primary.faults.add(Fault("status", 503), 5, model="gpt-4.1-nano")
    for _ in range(5):  # five consecutive failures, each one failed over
        assert r.chat("gpt-4.1-nano")[1].model == "claude-opus-4-1"
    assert len(r.calls(r.primary)) == 5
    r.reset()
    _, reply = r.chat("gpt-4.1-nano")  # open: skipped, not tried first
    assert reply.model == "claude-opus-4-1" and r.calls(r.primary) == []
    text = r.metrics()
    assert metric(text, "plano_fast_circuits_open_current") >= 1
    assert metric(text, "plano_fast_circuit_opens") == opens_before + 1
    # The fallback fails five times too: with nothing healthy left the client gets the error
    r.reset()
    r.secondary.faults.add(Fault("status", 503), 5, model="claude-opus-4-1")
    for _ in range(5):
        assert r.chat_error("gpt-4.1-nano").status_code == 503
    assert r.calls(r.primary) == [] and len(r.calls(r.secondary)) == 5
    # Every circuit open: the request's own route is tried; its success closes its circuit
    r.reset()
    assert r.chat("gpt-4.1-nano")[1].model == "gpt-4.1-nano"
    assert r.chat("gpt-4.1-nano")[1].model == "gpt-4.1-nano"  # recovered: tried first again
    assert len(r.calls(r.primary)) == 2 and r.calls(r.secondary) == []
    assert metric(r.metrics(), "plano_fast_circuit_opens") == opens_before + 2  # the fallback's


def test_one_usage_row_per_client_request(rig: Rig) -> None:
    """Across the module: as many rows as client requests, whatever the attempts."""
    deadline = time.monotonic() + 15
    while len(read_rows(None, rig.sqlite_path)) < rig.client_requests and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # more than one flush interval: a duplicate row would land by now
    rows = read_rows(None, rig.sqlite_path)
    assert len(rows) == rig.client_requests
    assert len({row.request_id for row in rows}) == len(rows)
