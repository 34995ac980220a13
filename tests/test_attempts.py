"""Issue 20: the usage row records the upstream attempts of a client request (``attempts``,
``attempt_trail``, migration 0007), per-provider timeouts (connect, first byte, body idle),
and Gemini-format clients retried and failed over like the others.

Over real sockets (the official SDKs; raw HTTP for Gemini's format) against the fake
provider: a 503 then a fallback's 200 (one row: 2 attempts, "503,200", the target that
served); a first-byte timeout retried on the next target, the stalled attempt abandoned
long before it would answer; a body-idle timeout mid-stream (the client sees the cut, one
row billed from what the provider reported); Gemini clients failing over both ways (native
to converted, converted to native) and a 504 in Gemini's shape when no retry is left.
Pure parts (trail bound, journal, config) and the migration on a version-6 database for
both stores on top.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from benchmarks.fake_provider import FakeProviderThread
from plano_fast.billing.drain import EVENT_FIELDS as _EVENT_FIELDS
from plano_fast.billing.drain import event_fields as _event_fields
from plano_fast.billing.journal import Journal, _encode_line
from plano_fast.config import ConfigError, parse_config
from plano_fast.failover import MAX_TRAIL_CHARS, attempt_trail
from plano_fast.store import Store, UsageRow
from plano_fast.store.base import REQUIRED_SCHEMA_VERSION
from plano_fast.store.migrate import load_migrations, migrate
from plano_fast.usage import UsageEvent
from tests.gateway_proc import GatewayProcess, write_config
from tests.raw_upstream import RawUpstream
from tests.test_billing_e2e import read_rows
from tests.test_store import Backend, all_usage, backend, usage  # noqa: F401

# -- pure parts ---------------------------------------------------------------------------


def test_the_trail_is_bounded_and_keeps_whole_entries() -> None:
    assert attempt_trail(["503", "connect_error", "200"]) == "503,connect_error,200"
    long = attempt_trail(["connect_error"] * 40)
    assert len(long) <= MAX_TRAIL_CHARS and long.endswith(",...")
    assert set(long[:-4].split(",")) == {"connect_error"}  # no entry cut in half


def test_attempts_survive_the_write_ahead_log_and_old_lines_read_as_one_attempt(tmp_path: Path) -> None:
    event = UsageEvent("req-1", 1, "openai", "gpt-4o", False, "ok", 200, attempts=3,
                       attempt_trail="503,timeout,200")  # fmt: skip
    wal = tmp_path / "j.1.wal"
    # a line written before v7: the fields before ``attempts`` (later ones are newer still)
    old = json.loads(_encode_line([_event_fields(event)]))[0][: _EVENT_FIELDS.index("attempts")]
    wal.write_bytes(_encode_line([_event_fields(event)]) + json.dumps([old]).encode() + b"\n")
    (read,) = list(Journal.read_events(wal, 10))
    assert (read[0].attempts, read[0].attempt_trail) == (3, "503,timeout,200")
    assert (read[1].attempts, read[1].attempt_trail) == (1, None)
    row = UsageRow.from_event(read[0])
    assert (row.attempts, row.attempt_trail) == (3, "503,timeout,200")
    spilled = Journal(tmp_path / "spill")  # the spill journal keeps them too
    spilled.spill([row])
    (back,) = next(Journal.read_batches(spilled.path, 10))
    assert (back.attempts, back.attempt_trail) == (3, "503,timeout,200")


TIMEOUTS = """
version: v0.4.0
listeners: [{type: model, name: m, port: 12000, timeout: 40s}]
model_providers:
  - model: openai/gpt-4o
    access_key: k
    connect_timeout: 2s
    first_byte_timeout: 1500ms
    body_idle_timeout: 7
  - model: openai/gpt-4o-mini
    access_key: k
plano_fast: {SETTINGS}
"""


def test_per_provider_timeouts_and_their_defaults() -> None:
    config = parse_config(TIMEOUTS.replace("{SETTINGS}", "{}"), env={})
    own, default = config.providers
    assert own.timeouts == (2.0, 1.5, 7.0)
    assert default.timeouts == (5.0, 40.0, 40.0)  # connect default; the listener's timeout
    # the same defaults, resolved once, are what the gateway gives a target without its own
    # (a firewall key's upstream: ExchangeContext.timeouts)
    assert config.upstream_timeouts == (5.0, 40.0, 40.0)
    config = parse_config(TIMEOUTS.replace("{SETTINGS}", (
        "{upstream_connect_timeout_s: 3, upstream_first_byte_timeout_s: 20, "
        "upstream_body_idle_timeout_s: 30}")), env={})  # fmt: skip
    assert config.providers[1].timeouts == (3.0, 20.0, 30.0)
    assert config.upstream_timeouts == (3.0, 20.0, 30.0)
    assert config.providers[0].timeouts == (2.0, 1.5, 7.0)
    with pytest.raises(ConfigError, match=r"model_providers\[0\]\.first_byte_timeout"):
        parse_config(TIMEOUTS.replace("first_byte_timeout: 1500ms", "first_byte_timeout: soon")
                     .replace("{SETTINGS}", "{}"), env={})  # fmt: skip


# -- migration 0007 on a version-6 database ------------------------------------------------

_V6_COLUMNS = (
    "request_id, time_ns, project_id, user_id, key_hash, token_id, provider, model, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, streaming, status, "
    "http_status, priced, cost_nano_usd, duration_us, price_status, requested_model"
)


def test_migration_7_on_a_version_6_database(backend: Backend) -> None:  # noqa: F811
    async def body(store: Store) -> None:
        for m in load_migrations(store.kind)[:6]:
            assert await store.apply_migration(m.version, m.name, m.sql)
        old = usage(t=1_000, cost=5, request_id="v6-row")
        await store._execute(  # what a version-6 gateway wrote
            f"INSERT INTO usage_log ({_V6_COLUMNS}) VALUES ({', '.join('?' * 21)})",
            (old.request_id, old.time_ns, old.project_id, old.user_id, old.key_hash, old.token_id,
             old.provider, old.model, old.input_tokens, old.output_tokens, old.cache_read_tokens,
             old.cache_write_tokens, old.reasoning_tokens, old.streaming, old.status,
             old.http_status, old.priced, old.cost_nano_usd, old.duration_us, "priced", "alias"),
        )  # fmt: skip
        assert await migrate(store) == list(range(7, REQUIRED_SCHEMA_VERSION + 1))  # 7 and every later one
        new = usage(t=2_000, cost=7, request_id="v7-row")
        new.attempts, new.attempt_trail = 3, "503,connect_error,200"
        plain = usage(t=3_000, cost=7, request_id="v7-one")
        plain.attempts = 1
        await store.write_usage([new, plain])
        rows = {r.request_id: r for r in await all_usage(store)}
        assert (rows["v6-row"].attempts, rows["v6-row"].attempt_trail) == (None, None)
        assert rows["v6-row"].requested_model == "alias" and rows["v6-row"].cost_nano_usd == 5
        assert (rows["v7-row"].attempts, rows["v7-row"].attempt_trail) == (3, "503,connect_error,200")
        assert (rows["v7-one"].attempts, rows["v7-one"].attempt_trail) == (1, None)

    backend.run(body, migrated=False)


# -- over sockets --------------------------------------------------------------------------

PROVIDERS = """\
  - name: flaky
    model: openai/gpt-4.1
    base_url: {base}
    access_key: sk-server-openai-key
    headers: {{x-fake-status: "503"}}
    retry_policy:
      fallback_models: [anthropic/claude-sonnet-4-6]
      default_strategy: different_provider
      backoff: {{base_ms: 1, max_ms: 5}}
  - name: slow
    model: openai/gpt-4.1-nano
    base_url: {base}
    access_key: sk-server-openai-key
    headers: {{x-fake-latency-ms: "{stall_ms}"}}
    first_byte_timeout: 300ms
    retry_policy:
      fallback_models: [anthropic/claude-sonnet-4-6]
      default_strategy: different_provider
      backoff: {{base_ms: 1, max_ms: 5}}
  - name: slow-alone
    model: gemini/gemini-slow
    base_url: {base}/v1beta
    access_key: gemini-server-key
    headers: {{x-fake-latency-ms: "{stall_ms}"}}
    first_byte_timeout: 0.3
  - name: stalls
    model: anthropic/claude-stalls
    base_url: {base}
    access_key: sk-ant-server-key
    headers: {{x-fake-interval-ms: "{stall_ms}", x-fake-events: "3"}}
    body_idle_timeout: 300ms
  - name: gem-flaky
    model: gemini/gemini-flaky
    base_url: {base}/v1beta
    access_key: gemini-server-key
    headers: {{x-fake-status: "503"}}
    retry_policy:
      fallback_models: [openai/gpt-4o-mini]
      default_strategy: different_provider
      backoff: {{base_ms: 1, max_ms: 5}}
  - name: oai-flaky
    model: openai/gpt-flaky
    base_url: {base}
    access_key: sk-server-openai-key
    headers: {{x-fake-status: "503"}}
  - model: gemini/gemini-2.5-flash
    base_url: {base}/v1beta
    access_key: gemini-server-key
  - model: openai/gpt-closer
    base_url: http://127.0.0.1:{closer_port}
    access_key: sk-server-openai-key
"""

_ANSWER = (b'{"id":"c","object":"chat.completion","created":1,"model":"gpt-closer","choices":[{"index":0,'
           b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
           b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}')  # fmt: skip


class CloseSecondServer(RawUpstream):
    """An upstream that answers the first request of each connection (kept alive) and
    closes the connection, without a byte, when a second one arrives on it: what a
    provider's idle-connection reaper does to a pooled connection at the wrong moment."""

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        if on_connection:
            return False  # the second request on this connection: closed unanswered
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(_ANSWER), _ANSWER))  # fmt: skip
        return True


ADMIN_KEY = "admin-key-for-attempt-tests-0000000"
#: the stalls the 300 ms timeouts cut: a minute, so that an answer in a few seconds is
#: the cut, never the stall's end, however loaded the machine (the fake provider drops a
#: stalled handler when the gateway closes its connection: the stall costs no wait)
STALL_MS = 60_000
#: the bound on a cut's reaction, from the fake provider's receipt of the stalled request:
#: 10x the 300 ms timeout, under the default timeouts a wrong one would be (connect 5 s,
#: first byte and body idle 40 s), and under the stall
CUT_BOUND_S = 3.0


def abandoned_by_the_gateway(fake: FakeProviderThread, count: int = 1) -> bool:
    """Whether the gateway closed ``count`` stalled requests' connections unanswered (its
    close reaches the fake provider a moment after the client's answer)."""
    deadline = time.monotonic() + 10
    while fake.abandoned < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return fake.abandoned == count


def metrics(gateway: GatewayProcess) -> dict[str, float]:
    req = urllib.request.Request(f"http://127.0.0.1:{gateway.admin_port}/metrics",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return {k: float(v) for k, _, v in (line.partition(" ") for line in lines if line.startswith("plano_fast_"))
            if "{" not in k}  # fmt: skip


@pytest.fixture(scope="module")
def closer() -> Iterator[CloseSecondServer]:
    server = CloseSecondServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(
    fake: FakeProviderThread, closer: CloseSecondServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, Path]]:
    path = tmp_path_factory.mktemp("attempts") / "plano_config.yaml"
    access_log = path.with_suffix(".access.log")
    write_config(path, fake.port, {"access_log": str(access_log), "admin_port": 0, "admin_key": ADMIN_KEY},
                 PROVIDERS.format(base=f"http://127.0.0.1:{fake.port}", closer_port=closer.port,
                                  stall_ms=STALL_MS))  # fmt: skip
    path.write_text(path.read_text().replace("model_aliases:\n", (
        "model_aliases:\n  gem-list:\n    target: [openai/gpt-flaky, gemini/gemini-2.5-flash]\n")))
    with GatewayProcess(path) as proc:
        yield proc, path


def row_of(path: Path, request_id: str, model: str | None = None) -> UsageRow:
    """The one row of a request (by id, or by the model it asked for: the gateway's own
    error answers carry no request id)."""
    deadline = time.monotonic() + 15
    while True:
        found = [r for r in read_rows(None, str(path.with_suffix(".db")))
                 if r.request_id == request_id or r.requested_model == model]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"one row per client request, got {found}"
            return found[0]
        time.sleep(0.2)


def access_line(path: Path, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in path.with_suffix(".access.log").read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)
            if entry["request_id"] == request_id:
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {request_id}")


def fake_calls(fake: FakeProviderThread) -> list[str]:
    return [r.path for r in fake.requests if not r.path.startswith("/_fake")]


def chat(gateway: GatewayProcess, model: str, **kwargs: Any) -> Any:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}], **kwargs
        )


def gemini_post(gateway: GatewayProcess, model: str, method: str = "generateContent") -> tuple[int, bytes, str]:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    req = urllib.request.Request(
        f"{gateway.url}/v1beta/models/{model}:{method}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-goog-api-key": "client-goog-key"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), resp.headers["x-plano-request-id"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""


def test_one_attempt_is_recorded_as_one(gw: tuple[GatewayProcess, Path]) -> None:
    gateway, path = gw
    raw = chat(gateway, "gpt-4o-mini")
    row = row_of(path, raw.headers["x-plano-request-id"])
    assert (row.attempts, row.attempt_trail, row.status) == (1, None, "ok")
    assert access_line(path, row.request_id)["attempts"] == 1


def test_a_pooled_connection_found_dead_is_replaced_and_counted(
    gw: tuple[GatewayProcess, Path], closer: CloseSecondServer
) -> None:
    """No retry policy: the one retry every mode makes (a reused connection that closed
    before answering, tried again on a fresh one) is an attempt on the row too."""
    gateway, path = gw
    first = chat(gateway, "gpt-closer")
    second = chat(gateway, "gpt-closer")  # on the pooled connection, which the server closes
    assert second.parse().choices[0].message.content == "ok"
    assert closer.connections == 2
    row = row_of(path, first.headers["x-plano-request-id"])
    assert (row.attempts, row.attempt_trail) == (1, None)
    row = row_of(path, second.headers["x-plano-request-id"])
    assert (row.attempts, row.attempt_trail, row.status, row.input_tokens) == (2, "connect_error,200", "ok", 3)


def test_a_503_then_the_fallback_is_one_row_with_both_attempts(
    gw: tuple[GatewayProcess, Path], fake: FakeProviderThread
) -> None:
    gateway, path = gw
    before = metrics(gateway)
    fake.clear()
    raw = chat(gateway, "gpt-4.1")
    assert raw.parse().choices[0].message.content
    assert fake_calls(fake) == ["/v1/chat/completions", "/v1/messages"]
    row = row_of(path, raw.headers["x-plano-request-id"])
    assert (row.provider, row.model, row.status, row.http_status) == ("anthropic", "claude-sonnet-4-6", "ok", 200)
    assert (row.attempts, row.attempt_trail) == (2, "503,200")
    assert row.priced and row.input_tokens > 0  # the serving attempt's usage; the 503 cost nothing
    entry = access_line(path, row.request_id)
    assert (entry["attempts"], entry["attempt_trail"]) == (2, "503,200")
    after = metrics(gateway)
    assert after["plano_fast_requests_retried"] - before["plano_fast_requests_retried"] == 1
    assert after["plano_fast_upstream_attempts_failed"] - before["plano_fast_upstream_attempts_failed"] == 1


def test_when_every_attempt_fails_the_last_error_is_relayed_and_all_are_on_the_row(
    gw: tuple[GatewayProcess, Path], fake: FakeProviderThread
) -> None:
    gateway, path = gw
    fake.clear()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as err:  # the fallback answers 503 too
            client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"x-fake-status": "503"})  # fmt: skip
    assert err.value.status_code == 503
    assert fake_calls(fake) == ["/v1/chat/completions", "/v1/messages"]
    row = row_of(path, err.value.response.headers["x-plano-request-id"])
    assert (row.provider, row.status, row.http_status) == ("anthropic", "upstream_error", 503)
    assert (row.attempts, row.attempt_trail, row.cost_nano_usd or 0) == (2, "503,503", 0)


def test_a_first_byte_timeout_is_retried_on_the_next_target(
    gw: tuple[GatewayProcess, Path], fake: FakeProviderThread
) -> None:
    gateway, path = gw
    fake.clear()
    started = time.monotonic()
    raw = chat(gateway, "gpt-4.1-nano")
    elapsed = time.monotonic() - started
    assert raw.parse().choices[0].message.content
    assert fake_calls(fake) == ["/v1/chat/completions", "/v1/messages"]
    # the stalled attempt was abandoned at ~0.3 s, not waited for (it answers after a
    # minute): the fallback went out within the bound of the stalled request's receipt
    stalled, fallback = (r for r in fake.requests if not r.path.startswith("/_fake"))
    assert 0.3 <= elapsed and fallback.time - stalled.time < CUT_BOUND_S, (elapsed, fallback.time - stalled.time)
    assert abandoned_by_the_gateway(fake)
    row = row_of(path, raw.headers["x-plano-request-id"])
    assert (row.provider, row.status, row.attempts, row.attempt_trail) == ("anthropic", "ok", 2, "timeout,200")


def test_a_body_idle_timeout_cuts_the_stream_and_bills_what_was_reported(
    gw: tuple[GatewayProcess, Path], fake: FakeProviderThread
) -> None:
    gateway, path = gw
    seen: list[str] = []
    fake.clear()
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-client", max_retries=0) as client:
        with pytest.raises((anthropic.APIConnectionError, anthropic.APIError)):  # the cut
            with client.messages.with_streaming_response.create(
                model="claude-stalls", max_tokens=64, stream=True,
                messages=[{"role": "user", "content": "hi"}],
            ) as resp:  # fmt: skip
                request_id = resp.headers["x-plano-request-id"]
                for event in resp.parse():
                    seen.append(event.type)
    (stalled,) = (r for r in fake.requests if not r.path.startswith("/_fake"))
    cut_after_s = time.time() - stalled.time
    assert cut_after_s < CUT_BOUND_S, cut_after_s  # cut at ~0.3 s of silence, not after the minute
    assert abandoned_by_the_gateway(fake)
    assert seen[:1] == ["message_start"] and "message_stop" not in seen
    row = row_of(path, request_id)
    assert (row.status, row.http_status, row.attempts, row.attempt_trail) == ("upstream_failed", 200, 1, None)
    # billed from what the provider reported before the cut (message_start's input usage)
    assert row.input_tokens > 0


def test_gemini_clients_fail_over_native_to_converted(
    gw: tuple[GatewayProcess, Path], fake: FakeProviderThread
) -> None:
    gateway, path = gw
    for method in ("generateContent", "streamGenerateContent?alt=sse"):
        fake.clear()
        status, body, request_id = gemini_post(gateway, "gemini-flaky", method)
        assert status == 200, body
        text = body.decode()
        assert '"candidates"' in text and '"usageMetadata"' in text  # Gemini's shape
        assert [p.rsplit("/", 1)[-1] for p in fake_calls(fake)] == [
            "gemini-flaky:" + method, "completions"]  # fmt: skip
        row = row_of(path, request_id)
        assert (row.provider, row.model, row.status) == ("openai", "gpt-4o-mini", "ok")
        assert (row.attempts, row.attempt_trail, row.requested_model) == (2, "503,200", "gemini-flaky")


def test_gemini_clients_fail_over_converted_to_native(
    gw: tuple[GatewayProcess, Path], fake: FakeProviderThread
) -> None:
    gateway, path = gw
    fake.clear()
    status, body, request_id = gemini_post(gateway, "gem-list")
    assert status == 200, body
    assert json.loads(body)["candidates"][0]["content"]["parts"][0]["text"]
    assert [p.rsplit("/", 1)[-1] for p in fake_calls(fake)] == ["completions", "gemini-2.5-flash:generateContent"]
    row = row_of(path, request_id)
    assert (row.provider, row.model, row.attempts, row.attempt_trail) == ("gemini", "gemini-2.5-flash", 2, "503,200")


def test_no_retry_left_after_a_first_byte_timeout_is_a_504_in_the_clients_format(
    gw: tuple[GatewayProcess, Path], fake: FakeProviderThread
) -> None:
    gateway, path = gw
    fake.clear()
    started = time.monotonic()
    status, body, _ = gemini_post(gateway, "gemini-slow")
    answered = time.time()
    (stalled,) = (r for r in fake.requests if not r.path.startswith("/_fake"))
    assert time.monotonic() - started >= 0.3 and answered - stalled.time < CUT_BOUND_S, answered - stalled.time
    assert abandoned_by_the_gateway(fake)
    error = json.loads(body)["error"]
    assert (status, error["code"], error["status"]) == (504, 504, "DEADLINE_EXCEEDED")
    assert "first-byte timeout" in error["message"] and "0.3s" in error["message"]
    row = row_of(path, "", model="gemini-slow")
    assert (row.status, row.http_status, row.attempts, row.attempt_trail) == ("upstream_failed", 504, 1, None)
    assert not row.priced or row.cost_nano_usd == 0  # nothing consumed: nothing billed
