"""``plano-fast usage reprice`` on a database of N rows (issue 18): time, and counters equal to
the log before and after.

    python -m benchmarks.bench_reprice                      # both backends, 100k rows
    python -m benchmarks.bench_reprice --rows 20000 --backend sqlite

The rows are what the gateway writes: a mix of OpenAI chat, Responses, Anthropic (stream with
two usage objects) and Gemini usage scanned by the real scanner, each row keeping its provider
usage.  Three runs are timed:

1. ``stale``: every row's columns and cost were written under another convention (halved
   input, a third of the cost): all rows are re-derived from their usage and rewritten, the
   counters moved;
2. ``again``: nothing to change (idempotence): every row re-derived and compared, none written;
3. ``price change``: a custom price for one model: only its rows are rewritten.

Counters are checked against the log (sum of priced costs per scope and period) before and
after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
from dataclasses import replace

from benchmarks.bench_store import postgres_url
from plano_fast import wire as scan
from plano_fast.billing.rows import row_of_event
from plano_fast.billing.reprice import load_pricing, reprice
from plano_fast.pricing import PricingRegistry
from plano_fast.store import Store, UsageRow, counter_deltas, open_store
from plano_fast.store.migrate import migrate
from plano_fast.usage import USAGE_API_NAMES, UsageEvent

BODIES = [
    (scan.API_OPENAI_CHAT, False, "openai", "gpt-4o-mini",
     b'{"usage":{"prompt_tokens":4020,"completion_tokens":40,"total_tokens":4060,'
     b'"prompt_tokens_details":{"cached_tokens":4000,"audio_tokens":0},'
     b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}}'),
    (scan.API_OPENAI_RESPONSES, True, "openai", "gpt-5",
     b'data: {"type":"response.completed","response":{"usage":{"input_tokens":5000,'
     b'"input_tokens_details":{"cached_tokens":4000},"output_tokens":900,'
     b'"output_tokens_details":{"reasoning_tokens":850},"total_tokens":5900}}}\n\n'),
    (scan.API_ANTHROPIC, True, "anthropic", "claude-sonnet-4-5",
     b'data: {"type":"message_start","message":{"usage":{"input_tokens":12,'
     b'"cache_creation_input_tokens":2048,"cache_read_input_tokens":4096,"cache_creation":'
     b'{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":1024},"output_tokens":1}}}\n\n'
     b'data: {"type":"message_delta","usage":{"output_tokens":700,'
     b'"output_tokens_details":{"thinking_tokens":640}}}\n\n'),
    (scan.API_GEMINI, False, "gemini", "gemini-2.5-pro",
     b'{"usageMetadata":{"promptTokenCount":1200,"cachedContentTokenCount":1000,'
     b'"candidatesTokenCount":50,"toolUsePromptTokenCount":420,"thoughtsTokenCount":300}}'),
]  # fmt: skip


def make_rows(n: int) -> list[UsageRow]:
    pricing = PricingRegistry()
    keys = [hashlib.sha256(f"key{i}".encode()).hexdigest() for i in range(50)]
    templates = []
    for api, streaming, provider, model, body in BODIES:
        scanner = scan.UsageScanner(api, streaming)
        scanner.feed(body)
        scanner.finish()
        u = scanner.result()
        raw = scanner.raw_usage()
        assert u.has_usage and raw is not None
        templates.append(UsageEvent(
            "", 0, provider, model, streaming, "ok", 200, u.input_tokens, u.output_tokens,
            u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens, True,
            tool_use_prompt_tokens=u.tool_use_prompt_tokens, cache_write_1h_tokens=u.cache_write_1h_tokens,
            usage_raw=raw.decode(), usage_api=USAGE_API_NAMES[api],
        ))  # fmt: skip
    base = 1_717_200_000 * 1_000_000_000
    rows = []
    for i in range(n):
        t = templates[i % len(templates)]
        event = replace(
            t, request_id=f"r-{i:09d}", time_ns=base + i * 10_000_000_000,
            project_id=f"p{i % 7}", user_id=f"u{i % 11}", key_hash=keys[i % 50],
        )  # fmt: skip
        row = row_of_event(pricing, event)
        # written under "another convention": stale columns and costs
        rows.append(replace(row, input_tokens=row.input_tokens // 2, cost_nano_usd=(row.cost_nano_usd or 0) // 3))
    return rows


async def counters_equal_log(store: Store) -> bool:
    total = 0
    after = 0
    rows: list[UsageRow] = []
    while True:
        page = await store.usage_after(after, 20_000)
        if not page:
            break
        rows.extend(page)
        after = page[-1].row_id or 0
        total += len(page)
    expected = counter_deltas(rows)
    actual = {c.key: c.spent_nano_usd for c in await store.load_counters() if c.spent_nano_usd}
    return actual == expected


async def run_one(store: Store, rows: list[UsageRow], label: str) -> None:
    await migrate(store)
    for i in range(0, len(rows), 1000):
        await store.write_usage(rows[i : i + 1000])
    assert await counters_equal_log(store), "counters differ from the log before"
    for name in ("stale", "again", "price change"):
        if name == "price change":
            await store.set_custom_price("gpt-5", input_per_mtok_nano_usd=10**9, output_per_mtok_nano_usd=9 * 10**9)
        report = await reprice(store, await load_pricing(store))
        ok = await counters_equal_log(store)
        print(
            f"{label:>8} {name:>12}: {report.rows_seen} rows, {report.rows_rederived} re-derived, "
            f"{report.rows_changed} rewritten in {report.elapsed_s:.2f} s "
            f"({report.rows_seen / report.elapsed_s:,.0f} rows/s); counters equal the log: {ok}",
            flush=True,
        )
        assert ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    rows = make_rows(args.rows)
    print(f"scanner: {scan.IMPLEMENTATION}; {args.rows} rows", flush=True)
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:

            async def sqlite_main() -> None:
                async with open_store(None, os.path.join(tmp, "bench.db")) as store:
                    await run_one(store, rows, "sqlite")

            asyncio.run(sqlite_main())
    if args.backend in ("postgres", "both"):
        with postgres_url(args.database_url) as url:

            async def pg_main() -> None:
                async with open_store(url, "") as store:
                    await run_one(store, rows, "postgres")

            asyncio.run(pg_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
