"""Every forwarded request ends as a priced usage row: through the real gateway, with the
SDKs, into real SQLite and PostgreSQL — including a database outage, a restart, and a
shutdown while the database is away."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import openai

from plano_fast.store import Store, UsageRow, open_store
from tests.fault_proxy import FaultProxy, dsn_target, proxied_dsn
from tests.gateway_proc import GatewayProcess

USAGE_HEADERS = {
    "x-fake-input-tokens": "1000",
    "x-fake-cached-tokens": "200",
    "x-fake-output-tokens": "100",
}
# gpt-4o-mini (bundled table, Portkey): $0.15 / $0.60 / cached $0.075 per 1M tokens
# = 150 / 600 / 75 nano-USD per token.  OpenAI prompt_tokens include cached ones:
# (1000 - 200) * 150 + 200 * 75 + 100 * 600 = 120,000 + 15,000 + 60,000
GPT_4O_MINI_COST = 195_000
# claude-sonnet-4-6: $3 / $15 / cache write $3.75 / cache read $0.30 per 1M tokens.
# The fake reports Anthropic input excluding cache: 1000 - 200 - 100 = 700.
# 700 * 3000 + 100 * 3750 + 200 * 300 + 50 * 15000 = 2,100,000 + 375,000 + 60,000 + 750,000
CLAUDE_COST = 3_285_000


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _rows(store: Store) -> list[UsageRow]:
    return await store.recent_usage(None, limit=100_000)


def read_rows(database_url: str | None, sqlite_path: str) -> list[UsageRow]:
    async def go() -> list[UsageRow]:
        async with open_store(database_url, sqlite_path) as store:
            return await _rows(store)

    return run(go())  # type: ignore[no-any-return]


def wait_rows(
    database_url: str | None, sqlite_path: str, count: int, timeout_s: float = 15.0
) -> list[UsageRow]:
    deadline = time.monotonic() + timeout_s
    rows: list[UsageRow] = []
    while time.monotonic() < deadline:
        rows = read_rows(database_url, sqlite_path)
        if len(rows) >= count and all(r.priced or r.status != "ok" for r in rows):
            return rows
        time.sleep(0.2)
    return rows


def counters_match_log(database_url: str | None, sqlite_path: str) -> tuple[int, int]:
    """(sum of the per-key 'total' counters, sum of the log's costs for keyed rows)."""

    async def go() -> tuple[int, int]:
        async with open_store(database_url, sqlite_path) as store:
            rows = await _rows(store)
            counters = await store.load_counters()
            total_counters = sum(
                c.spent_nano_usd for c in counters if c.period == "total" and c.scope_kind == "key"
            )
            total_log = sum(r.cost_nano_usd or 0 for r in rows if r.key_hash is not None)
            return total_counters, total_log

    return run(go())  # type: ignore[no-any-return]


def _sqlite(gateway: GatewayProcess) -> str:
    return str(gateway.config_path.with_suffix(".db"))


def test_every_request_becomes_a_priced_row(make_gateway: Callable[..., GatewayProcess]) -> None:
    gateway = make_gateway()
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-c", max_retries=0)
    ant = anthropic.Anthropic(base_url=gateway.url, api_key="sk-c", max_retries=0)
    with oai, ant:
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}], extra_headers=USAGE_HEADERS
        )
        list(oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}], stream=True,
            extra_headers=USAGE_HEADERS,
        ))
        list(oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "c"}], stream=True,
            stream_options={"include_usage": True}, extra_headers=USAGE_HEADERS,
        ))
        with ant.messages.stream(
            model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "d"}],
            extra_headers={**USAGE_HEADERS, "x-fake-cache-write-tokens": "100",
                           "x-fake-output-tokens": "50"},
        ) as stream:
            stream.get_final_message()
        ant.messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "e"}],
            extra_headers={**USAGE_HEADERS, "x-fake-cache-write-tokens": "100",
                           "x-fake-output-tokens": "50"},
        )
        # A stream whose usage never arrives is recorded as such, not as zero tokens.
        list(oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "f"}], stream=True,
            extra_headers={"x-fake-omit-usage": "1"},
        ))
    rows = wait_rows(None, _sqlite(gateway), 6)
    assert len(rows) == 6
    by_cost = sorted((r.cost_nano_usd for r in rows if r.priced), key=lambda c: c or 0)
    assert by_cost == [GPT_4O_MINI_COST] * 3 + [CLAUDE_COST] * 2
    openai_rows = [r for r in rows if r.provider == "openai" and r.status == "ok"]
    assert {(r.input_tokens, r.cache_read_tokens, r.output_tokens) for r in openai_rows} == {
        (1000, 200, 100)
    }
    assert sorted(r.streaming for r in openai_rows) == [False, True, True]
    claude = [r for r in rows if r.provider == "anthropic"]
    # the row convention: Anthropic's input_tokens (700) plus its cache reads and writes
    assert {(r.input_tokens, r.cache_read_tokens, r.cache_write_tokens, r.output_tokens)
            for r in claude} == {(700 + 200 + 100, 200, 100, 50)}
    # every billed row keeps the provider's usage object and the price entry it was priced by
    assert all(r.usage_raw and r.usage_api and r.price_entry for r in rows if r.status == "ok")
    assert {r.usage_api for r in claude} == {"anthropic"}
    missing = [r for r in rows if r.status == "usage_missing"]
    assert len(missing) == 1 and not missing[0].priced and missing[0].cost_nano_usd is None
    assert len({r.request_id for r in rows}) == 6


def test_postgres_store_outage_loses_nothing(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str
) -> None:
    """Requests keep flowing while every database connection is cut; when the database
    is back there is exactly one row per request and counters equal the log."""
    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        gateway = make_gateway({"database_url": f'"{database_url}"'})
        sent = 0
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as client:
            def burst(n: int) -> None:
                nonlocal sent
                for _ in range(n):
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                        extra_headers=USAGE_HEADERS,
                    )
                    sent += 1

            burst(20)
            proxy.cut()
            burst(30)  # the gateway keeps serving: billing is not on the request path
            time.sleep(2.5)  # at least two failed flush attempts
            burst(10)
            proxy.restore()
            rows = wait_rows(pg_dsn, "", sent, timeout_s=45)
    assert len(rows) == sent == 60
    assert len({r.request_id for r in rows}) == sent
    assert all(r.cost_nano_usd == GPT_4O_MINI_COST for r in rows)
    assert "flush of" in gateway.log_text()  # the failures were logged


def test_restart_never_counts_twice(make_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    gateway = make_gateway()
    sqlite_path = _sqlite(gateway)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as client:
        for _ in range(5):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                extra_headers=USAGE_HEADERS,
            )
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(20) == 0
    before = counters_match_log(None, sqlite_path)
    assert before == (5 * GPT_4O_MINI_COST, 5 * GPT_4O_MINI_COST)
    again = GatewayProcess(gateway.config_path)
    try:
        with openai.OpenAI(base_url=again.url + "/v1", api_key="k", max_retries=0) as client:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                extra_headers=USAGE_HEADERS,
            )
    finally:
        again.stop()
    assert counters_match_log(None, sqlite_path) == (6 * GPT_4O_MINI_COST, 6 * GPT_4O_MINI_COST)


def test_shutdown_while_database_is_down_journals_then_replays(
    make_gateway: Callable[..., GatewayProcess], pg_dsn: str
) -> None:
    with FaultProxy(dsn_target(pg_dsn)) as proxy:
        database_url = proxied_dsn(pg_dsn, proxy.port)
        gateway = make_gateway(
            {"database_url": f'"{database_url}"', "usage_max_pending_events": 5,
             "usage_batch_size": 5, "drain_timeout_s": 1, "store_stop_timeout_s": 3}
        )
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as client:
            proxy.cut()
            for _ in range(12):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                    extra_headers=USAGE_HEADERS,
                )
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        journals = list(gateway.config_path.parent.glob("*.journal.*"))
        assert journals, "rows must have been spilled to the journal"
        assert read_rows(pg_dsn, "") == []
        proxy.restore()
        again = GatewayProcess(gateway.config_path)
        try:
            rows = wait_rows(pg_dsn, "", 12, timeout_s=30)
        finally:
            again.stop()
    assert len(rows) == 12 and len({r.request_id for r in rows}) == 12
    assert not list(gateway.config_path.parent.glob("*.journal.*"))


def test_client_leaving_mid_stream_is_billed_as_disconnected(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """A client that hangs up mid-stream (the exchange runs in upstream callbacks, with
    no task to cancel): the relay stops, the provider's response is read on to its end,
    the row says client_disconnected with the provider's own usage, and the gateway goes
    on serving."""
    import socket

    gateway = make_gateway()
    body = (b'{"model":"gpt-4o-mini","stream":true,'
            b'"messages":[{"role":"user","content":"long"}]}')
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-gone", max_retries=0)
    with oai:
        # Warm the pool, so the next request takes an idle connection (the no-task path).
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
        host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-gone\r\n"
                b"content-type: application/json\r\nx-fake-events: 100\r\nx-fake-interval-ms: 20\r\n"
                b"x-fake-input-tokens: 1000\r\nx-fake-cached-tokens: 200\r\nx-fake-output-tokens: 100\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first[:100]
        # ... and the gateway still serves.
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}])
    rows = wait_rows(None, _sqlite(gateway), 3)
    gateway.stop()
    assert sorted(r.status for r in rows) == ["client_disconnected", "ok", "ok"]
    gone = next(r for r in rows if r.status == "client_disconnected")
    assert gone.streaming and gone.http_status == 200
    # 100 events at 20 ms take 2 s: the row was settled when the provider finished, with
    # the provider's usage (include_usage was injected), not zero.
    assert gone.duration_us > 1_500_000
    assert (gone.input_tokens, gone.cache_read_tokens, gone.output_tokens) == (1000, 200, 100)
    assert gone.priced and gone.cost_nano_usd == GPT_4O_MINI_COST
