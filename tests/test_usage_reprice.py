"""Usage rows across schema and convention changes (issue 18), on both stores:

* migration 0002 on a database filled by version 1 (the schema and row meaning before the
  convention): rows are converted from their stored fields, costs and counters unchanged;
* ``plano-fast usage reprice``: re-derives columns from the provider usage kept on the row and
  costs from the current prices, counters equal to the log before and after, idempotent.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from plano_fast import wire as scan
from plano_fast.billing.reprice import load_pricing, reprice
from plano_fast.pricing import PricingRegistry, TokenCounts
from plano_fast.store import SqlStore, Store, UsageRow, counter_deltas, usage_row_from_event
from plano_fast.store.migrate import load_migrations, migrate
from plano_fast.usage import USAGE_API_NAMES, UsageEvent
from tests.test_store import Backend, all_usage, assert_counters_match_log, backend, ns  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
T0 = ns(2026, 11, 30, 23, 59)  # rows on both sides of a month boundary
T1 = ns(2026, 12, 1, 0, 1)

_V1_COLUMNS = (
    "request_id, time_ns, project_id, user_id, key_hash, token_id, provider, model, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, streaming, status, "
    "http_status, priced, cost_nano_usd, duration_us, price_status"
)


def _per_mtok(provider: str, model: str) -> tuple[int, int, int, int]:
    """(in, out, cache read, cache write) of the bundled table, cache prices defaulting to in."""
    price = PricingRegistry().price_for(provider, model, None)
    assert price is not None
    cr = price.input_per_mtok if price.cache_read_per_mtok is None else price.cache_read_per_mtok
    cw = price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
    return price.input_per_mtok, price.output_per_mtok, cr, cw


def _v1_cost(provider: str, model: str, i: int, o: int, cr: int, cw: int, r: int) -> int:
    """What version 1 charged (its per-provider reading of the raw counts), re-implemented
    here independently of plano_fast.pricing: Anthropic input excluded cache reads/writes,
    Gemini/xAI output excluded reasoning, everyone else included both."""
    p_in, p_out, p_cr, p_cw = _per_mtok(provider, model)
    if provider == "anthropic":
        total = i * p_in + cr * p_cr + cw * p_cw + o * p_out
    elif provider in ("gemini", "xai"):
        total = (i - cr - cw) * p_in + cr * p_cr + cw * p_cw + (o + r) * p_out
    else:
        total = (i - cr - cw) * p_in + cr * p_cr + cw * p_cw + o * p_out
    return (total + 500_000) // 1_000_000


# (provider, model, input, output, cache_read, cache_write, reasoning) as version 1 stored them
V1_ROWS = [
    ("anthropic", "claude-sonnet-4-5-20250929", 100, 700, 5000, 2000, 0),  # raw Anthropic usage
    ("gemini", "gemini-2.5-flash", 17713, 68, 17379, 0, 821),  # candidates without thoughts
    ("xai", "grok-3-mini", 291, 26, 244, 0, 189),  # reasoning outside completion_tokens
    ("openai", "gpt-4o-mini-2024-07-18", 4020, 4, 4012, 0, 0),
    ("deepseek", "deepseek-chat", 800, 50, 500, 0, 0),
]
# what the convention makes of them
CONVERTED = [
    (7100, 700, 5000, 2000, 0),
    (17713, 68 + 821, 17379, 0, 821),
    (291, 26 + 189, 244, 0, 189),
    (4020, 4, 4012, 0, 0),
    (800, 50, 500, 0, 0),
]


async def _fill_version_1(store: Store) -> list[UsageRow]:
    """A database at schema version 1 with rows and counters written the version-1 way."""
    first = load_migrations(store.kind)[0]
    assert first.version == 1
    assert await store.apply_migration(first.version, first.name, first.sql)
    assert isinstance(store, SqlStore)
    rows: list[UsageRow] = []
    for n, (provider, model, i, o, cr, cw, r) in enumerate(V1_ROWS * 2):
        late = n >= len(V1_ROWS)
        priced = not (late and n % 2)  # a few rows still pending
        cost = _v1_cost(provider, model, i, o, cr, cw, r) if priced else None
        rows.append(UsageRow(
            f"v1-{n}", T1 if late else T0, "p1", "u1" if n % 2 else None, "k" * 64, None, provider,
            model, i, o, cr, cw, r, bool(n % 3), "ok", 200, priced, cost, 10,
            "priced" if priced else "pending",
        ))  # fmt: skip
    # an error row (free) and a not billable one, as version 1 wrote them
    rows.append(UsageRow("v1-err", T0, "p1", None, None, None, "anthropic", "claude-sonnet-4-5", 0, 0, 0, 0, 0,
                         False, "upstream_error", 429, True, 0, 5, "priced"))  # fmt: skip
    rows.append(UsageRow("v1-models", T0, "p1", None, None, None, "openai", None, 0, 0, 0, 0, 0,
                         False, "not_billable", 200, True, 0, 5, "priced"))  # fmt: skip
    for row in rows:
        await store._execute(
            f"INSERT INTO usage_log ({_V1_COLUMNS}) VALUES ({', '.join('?' * 20)})",
            (row.request_id, row.time_ns, row.project_id, row.user_id, row.key_hash, row.token_id,
             row.provider, row.model, row.input_tokens, row.output_tokens, row.cache_read_tokens,
             row.cache_write_tokens, row.reasoning_tokens, row.streaming, row.status, row.http_status,
             row.priced, row.cost_nano_usd, row.duration_us, row.price_status),
        )  # fmt: skip
    for key, spent in counter_deltas(rows).items():
        await store._execute(
            "INSERT INTO spending_counters (scope_kind, scope_id, period, period_start, "
            "spent_nano_usd, reserved_nano_usd, updated_at_ns) VALUES (?, ?, ?, ?, ?, 0, 1)",
            (key.scope_kind, key.scope_id, key.period, key.period_start, spent),
        )
    return rows


def test_migration_converts_version_1_rows_then_reprice_keeps_their_cost(backend: Backend) -> None:
    async def body(store: Store) -> None:
        v1 = await _fill_version_1(store)
        assert (await migrate(store))[:1] == [2]  # and any later migration (0003: reservation owners)
        after = {r.request_id: r for r in await all_usage(store)}
        for before in v1:
            row = after[before.request_id]
            counts = (row.input_tokens, row.output_tokens, row.cache_read_tokens,
                      row.cache_write_tokens, row.reasoning_tokens)  # fmt: skip
            if before.request_id.startswith("v1-") and before.request_id[3:].isdigit():
                assert counts == CONVERTED[int(before.request_id[3:]) % len(V1_ROWS)], before
            else:
                assert counts == (0, 0, 0, 0, 0)
            # costs, status and everything else as they were
            assert (row.priced, row.cost_nano_usd, row.price_status, row.time_ns) == (
                before.priced, before.cost_nano_usd, before.price_status, before.time_ns)
            assert (row.tool_use_prompt_tokens, row.usage_raw, row.price_entry) == (0, None, None)
        await assert_counters_match_log(store)

        # Re-priced with the same prices: the convention's one formula gives back exactly
        # what version 1 charged, for every provider; pending rows get priced.
        report = await reprice(store, PricingRegistry(), page_rows=3)
        assert report.rows_seen == len(v1)
        assert report.rows_rederived == 0  # version-1 rows keep no provider usage
        repriced = {r.request_id: r for r in await all_usage(store)}
        for before in v1:
            row = repriced[before.request_id]
            if before.priced:
                assert row.cost_nano_usd == before.cost_nano_usd, before.request_id
            elif before.model is not None:
                provider, model, i, o, cr, cw, r = V1_ROWS[int(before.request_id[3:]) % len(V1_ROWS)]
                assert row.priced and row.cost_nano_usd == _v1_cost(provider, model, i, o, cr, cw, r)
            if before.status == "ok":
                assert row.price_entry and row.price_entry.split("/")[0] == before.provider
        assert report.cost_after_nano_usd - report.cost_before_nano_usd == sum(
            repriced[r.request_id].cost_nano_usd or 0 for r in v1 if not r.priced
        )
        await assert_counters_match_log(store)
        again = await reprice(store, PricingRegistry(), page_rows=7)
        assert (again.rows_seen, again.rows_changed) == (len(v1), 0)
        await assert_counters_match_log(store)

    backend.run(body, migrated=False)


def _event(api: int, body: bytes, streaming: bool, provider: str, model: str, i: int) -> UsageEvent:
    scanner = scan.UsageScanner(api, streaming)
    scanner.feed(body)
    scanner.finish()
    u = scanner.result()
    raw = scanner.raw_usage()
    assert u.has_usage and raw is not None
    return UsageEvent(
        f"raw-{i}", T0 + i, provider, model, streaming, "ok", 200, u.input_tokens, u.output_tokens,
        u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens, True, "p1", "k" * 64, None,
        None, 1.0, "openai", u.tool_use_prompt_tokens, u.cache_write_1h_tokens,
        u.audio_input_tokens, u.audio_output_tokens, raw.decode(), USAGE_API_NAMES[api],
        web_search_requests=u.web_search_requests,
    )  # fmt: skip


RAW_CASES = [
    (scan.API_ANTHROPIC, b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
     b'"usage":{"input_tokens":12,"cache_creation_input_tokens":2048,"cache_read_input_tokens":4096,'
     b'"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":1024},"output_tokens":1}}}\n\n'
     b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":700,'
     b'"output_tokens_details":{"thinking_tokens":640},"server_tool_use":{"web_search_requests":2}}}\n\n', True,
     "anthropic", "claude-sonnet-4-5"),
    (scan.API_GEMINI, b'{"usageMetadata":{"promptTokenCount":1200,"cachedContentTokenCount":1000,'
     b'"candidatesTokenCount":50,"toolUsePromptTokenCount":420,"thoughtsTokenCount":300}}', False,
     "gemini", "gemini-2.5-pro"),
    (scan.API_OPENAI_CHAT, b'{"usage":{"prompt_tokens":291,"completion_tokens":26,"total_tokens":506,'
     b'"prompt_tokens_details":{"cached_tokens":244},"completion_tokens_details":{"reasoning_tokens":189}}}',
     False, "xai", "grok-3-mini"),
    (scan.API_OPENAI_RESPONSES, b'data: {"type":"response.completed","response":{"usage":{"input_tokens":5000,'
     b'"input_tokens_details":{"cached_tokens":4000},"output_tokens":900,'
     b'"output_tokens_details":{"reasoning_tokens":850}}}}\n\n', True, "openai", "gpt-5"),
    (scan.API_OPENAI_CHAT, b'{"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}',
     False, "openai", "text-embedding-3-small"),
]  # fmt: skip


def test_reprice_rederives_from_the_kept_provider_usage(backend: Backend) -> None:
    async def body(store: Store) -> None:
        registry = PricingRegistry()
        events = [_event(api, b, s, p, m, i) for i, (api, b, s, p, m) in enumerate(RAW_CASES)]
        good = []
        for e in events:
            quote = registry.quote(e.provider, e.model or "", e.project_id, TokenCounts(
                e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens,
                e.reasoning_tokens, e.cache_write_1h_tokens, e.audio_input_tokens, e.audio_output_tokens,
                web_search_requests=e.web_search_requests))
            assert quote is not None, e.model
            good.append(usage_row_from_event(e, cost_nano_usd=quote.cost_nano_usd, price_entry=quote.entry,
                                             price_status="priced_partial" if quote.partial else "priced"))
        # rows written under some older convention: stale columns and costs
        stale = [replace(r, input_tokens=r.input_tokens // 2, output_tokens=1, reasoning_tokens=0,
                         cache_write_1h_tokens=0, tool_use_prompt_tokens=0,
                         cost_nano_usd=(r.cost_nano_usd or 0) // 3 + 1, price_entry=None) for r in good]  # fmt: skip
        assert await store.write_usage(stale) == len(stale)
        await assert_counters_match_log(store)
        report = await reprice(store, await load_pricing(store))
        assert (report.rows_seen, report.rows_rederived, report.rows_changed) == (len(good),) * 3
        rows = {r.request_id: r for r in await all_usage(store)}
        for want in good:
            got = rows[want.request_id]
            assert replace(got, row_id=None) == want
        assert rows["raw-1"].tool_use_prompt_tokens == 420 and rows["raw-0"].cache_write_1h_tokens == 1024
        # the two web searches ($10 per 1,000), read back from the kept usage object
        assert events[0].web_search_requests == 2 and rows["raw-0"].cost_nano_usd == (
            12 * 3_000 + 4096 * 300 + 1024 * 3_750 + 1024 * 6_000 + 700 * 15_000 + 2 * 10_000_000)
        await assert_counters_match_log(store)
        assert (await reprice(store, await load_pricing(store))).rows_changed == 0

        # a price change: reprice follows it, counters follow the rows
        await store.set_custom_price("gpt-5", input_per_mtok_nano_usd=10**9, output_per_mtok_nano_usd=2 * 10**9,
                                     cache_read_per_mtok_nano_usd=10**8)  # fmt: skip
        report = await reprice(store, await load_pricing(store))
        assert report.rows_changed == 1
        gpt5 = (await all_usage(store))
        row = next(r for r in gpt5 if r.model == "gpt-5")
        assert row.price_entry == "custom"
        assert row.cost_nano_usd == (1000 * 10**9 + 4000 * 10**8 + 900 * 2 * 10**9 + 500_000) // 10**6
        await assert_counters_match_log(store)

    backend.run(body)


def test_usage_reprice_command(tmp_path: Path) -> None:
    """``plano-fast usage reprice --config``: on the configured SQLite database."""
    db = tmp_path / "usage.db"
    config = tmp_path / "config.yaml"
    config.write_text(
        "version: v0.1.0\nlisteners:\n  - name: egress\n    type: model\n    port: 12000\n"
        "model_providers:\n  - model: openai/gpt-4o-mini\n    access_key: sk-x\n"
        f"plano_fast:\n  sqlite_path: {db}\n  price_as:\n    custom: openai\n"
    )
    cmd = [sys.executable, "-m", "plano_fast"]
    subprocess.run([*cmd, "migrate", "--config", str(config)], check=True, cwd=ROOT, capture_output=True)
    out = subprocess.run([*cmd, "usage", "reprice", "--config", str(config), "--dry-run"],
                         check=True, cwd=ROOT, capture_output=True, text=True).stdout  # fmt: skip
    assert out.startswith("0 rows read")
    bad = subprocess.run([*cmd, "usage", "reprice"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--config" in bad.stderr


@pytest.mark.parametrize("page_rows", [1, 1000])
def test_reprice_pages_in_transactions(backend: Backend, page_rows: int) -> None:
    """Pages of any size give the same result; a row that vanished meanwhile is skipped."""

    async def body(store: Store) -> None:
        events = [_event(api, b, s, p, m, i) for i, (api, b, s, p, m) in enumerate(RAW_CASES)]
        rows = [replace(usage_row_from_event(e), output_tokens=0) for e in events]
        await store.write_usage(rows)
        report = await reprice(store, PricingRegistry(), page_rows=page_rows)
        assert report.rows_changed == len(rows)
        assert all(r.priced and r.price_entry for r in await all_usage(store))
        await assert_counters_match_log(store)
        assert await store.apply_reprice([replace(rows[0], row_id=10**9)]) == 0

    backend.run(body)


def test_late_pricing_records_the_price_entry(backend: Backend) -> None:
    """Rows priced by the PriceCalculator (after a custom price appears) name their entry."""
    from plano_fast.billing.metrics import BillingMetrics
    from plano_fast.billing.pricer import PriceCalculator

    async def body(store: Store) -> None:
        event = _event(*RAW_CASES[2][:2], RAW_CASES[2][2], "xai", "grok-nobody-priced", 0)
        await store.write_usage([usage_row_from_event(event)])  # unknown model: unpriced
        pricer = PriceCalculator(store, PricingRegistry(), BillingMetrics(), interval_s=60)
        assert await pricer.run_once() == 0
        await store.set_custom_price("grok-nobody-priced", input_per_mtok_nano_usd=10**9,
                                     output_per_mtok_nano_usd=10**9)  # fmt: skip
        assert await pricer.run_once() == 1
        [row] = await all_usage(store)
        assert (row.priced, row.price_entry, row.price_status) == (True, "custom", "priced")
        assert row.cost_nano_usd == (291 - 244 + 215) * 1_000  # the custom cache-read price is 0
        await assert_counters_match_log(store)
        # the 3-tuple form still works (no entry)
        assert await store.set_prices([(row.row_id or 0, 5, "priced")]) == 0  # already priced

    backend.run(body)


def test_reprice_leaves_a_stream_cut_before_its_usage_unpriced(backend: Backend) -> None:
    """A 2xx stream cut before its usage came whole (``upstream_failed``): the Anthropic
    input of ``message_start`` alone, or nothing (a Responses stream) -- no price of it,
    left unpriced (main priced them at the input alone, and at 0).  One cut after its
    usage came whole (kept in ``usage_raw``) is priced from it."""
    async def body(store: Store) -> None:
        cut = [
            UsageEvent("cut-anthropic", T0, "anthropic", "claude-sonnet-4-5", True, "upstream_failed", 200,
                       25, 0, 0, 0, 0, False, "p1", "k" * 64, None, None, 1.0, "anthropic"),
            UsageEvent("cut-responses", T0 + 1, "openai", "gpt-5", True, "upstream_failed", 200,
                       0, 0, 0, 0, 0, False, "p1", "k" * 64, None, None, 1.0, "openai"),
        ]  # fmt: skip
        whole = _event(scan.API_OPENAI_CHAT, b'{"usage":{"prompt_tokens":25,"completion_tokens":9}}', False,
                       "openai", "gpt-4o-mini", 7)
        whole.status = "upstream_failed"  # its usage chunk came, then the reset
        assert await store.write_usage([usage_row_from_event(e) for e in (*cut, whole)]) == 3
        report = await reprice(store, await load_pricing(store))
        assert report.rows_changed == 1
        rows = {r.request_id: r for r in await all_usage(store)}
        for e in cut:
            assert (rows[e.request_id].priced, rows[e.request_id].cost_nano_usd) == (False, None)
        assert rows[whole.request_id].priced and (rows[whole.request_id].cost_nano_usd or 0) > 0
        await assert_counters_match_log(store)

    backend.run(body)
