"""The usage flusher in process: pricing and row building, slicing, backlog, metrics.

The end-to-end behaviour (a real gateway, real stores, outages, restarts) is in
tests/test_billing_e2e.py; these tests pin the flusher's own contract and that its
inlined hot loop gives exactly what the public helpers give.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from plano_fast.billing.flusher import DRAIN_SLICE, UsageFlusher
from plano_fast.billing.rows import price_event, quote_event, row_of_event, rows_of_events
from plano_fast.billing.journal import Journal
from plano_fast.billing.metrics import BillingMetrics
from plano_fast.pricing import ModelPrice, PricingRegistry, TokenCounts
from plano_fast.store import Store, UsageRow, normalize_usage, usage_row_from_event
from plano_fast.usage import (
    STATUS_CLIENT_GONE,
    STATUS_NOT_BILLABLE,
    STATUS_OK,
    STATUS_UPSTREAM_ERROR,
    STATUS_UPSTREAM_FAILED,
    STATUS_USAGE_MISSING,
    UsageEvent,
)

_TARGETS = (
    ("openai", "gpt-4o-mini", "openai"),
    ("openai", "gpt-4o-mini-2024-07-18", "openai"),
    ("anthropic", "claude-sonnet-4-5-20250929", "anthropic"),
    ("gemini", "gemini-2.5-pro", "openai"),  # OpenAI-shaped usage from Gemini
    ("gemini", "gemini-2.5-flash", "gemini"),
    ("xai", "grok-4", "openai"),
    ("openrouter", "anthropic/claude-sonnet-4-5", "openai"),
    ("groq", "no-such-model", "openai"),
)


def random_event(rng: random.Random, i: int) -> UsageEvent:
    provider, model, wire = rng.choice(_TARGETS)
    status, http_status, has_usage = rng.choice(
        [
            (STATUS_OK, 200, True),
            (STATUS_OK, 200, True),
            (STATUS_USAGE_MISSING, 200, False),
            (STATUS_UPSTREAM_ERROR, 429, False),
            (STATUS_UPSTREAM_ERROR, 500, True),
            (STATUS_UPSTREAM_FAILED, 502, False),
            (STATUS_CLIENT_GONE, 200, rng.random() < 0.5),
            (STATUS_NOT_BILLABLE, 200, False),
        ]
    )
    big = rng.random() < 0.2  # over the 200k context tiers now and then
    return UsageEvent(
        request_id=f"r-{i}",
        time_ns=1_717_200_000_000_000_000 + i * 7_919_000_000_000,
        provider=provider,
        model=None if rng.random() < 0.05 else model,
        streaming=rng.random() < 0.5,
        status=status,
        http_status=http_status,
        input_tokens=rng.randrange(300_000 if big else 5_000),
        output_tokens=rng.randrange(3_000),
        cache_read_tokens=rng.randrange(2_000),
        cache_write_tokens=rng.choice([0, 0, rng.randrange(1_000)]),
        reasoning_tokens=rng.choice([0, rng.randrange(1_000)]),
        has_usage=has_usage,
        project_id=rng.choice([None, "p1", "p2"]),
        key_hash=rng.choice([None, "k" * 64]),
        user_id=rng.choice([None, "u1"]),
        token_id=rng.choice([None, "t1"]),
        duration_ms=rng.choice([0.0, -1.0, 0.0004, 0.0005, 0.0015, 0.0025, rng.random() * 5_000]),
        wire_format=wire,
        cache_write_1h_tokens=rng.choice([0, 0, rng.randrange(500)]),
        audio_input_tokens=rng.choice([0, 0, 0, rng.randrange(200)]),
        audio_output_tokens=rng.choice([0, 0, 0, rng.randrange(200)]),
        tool_use_prompt_tokens=rng.choice([0, 0, rng.randrange(100)]),
        usage_raw=rng.choice([None, '{"usage":{"prompt_tokens":1}}']),
        usage_api=rng.choice([None, "openai_chat"]),
    )


def registry_with_overrides() -> PricingRegistry:
    reg = PricingRegistry()
    reg.set_overrides(
        {"gpt-4o-mini": ModelPrice(1_000, 2_000, None, None)},
        {("p2", "claude-sonnet-4-5"): ModelPrice(3_000_000, 15_000_000, 300_000, 3_750_000)},
    )
    return reg


@pytest.mark.parametrize("overrides", [False, True])
def test_inlined_rows_equal_the_public_helpers(overrides: bool) -> None:
    rng = random.Random(7)
    reg = registry_with_overrides() if overrides else PricingRegistry()
    events = [random_event(rng, i) for i in range(3_000)]
    out: collections.deque[UsageRow] = collections.deque()
    unpriced = rows_of_events(reg, events, out)
    expected = [row_of_event(reg, e) for e in events]
    assert list(out) == expected
    assert unpriced == sum(1 for r in expected if not r.priced)
    assert 0 < unpriced < len(events) // 2
    assert 0 < sum(1 for r in expected if r.price_status == "priced_partial") < len(events) // 2
    assert all(r.price_entry for r in expected if r.priced and r.cost_nano_usd)


def test_price_event_equals_the_registry_with_token_counts() -> None:
    """The hot path (``cost_of_counts``) against the documented API (``TokenCounts``)."""
    rng = random.Random(11)
    reg = registry_with_overrides()
    seen = 0
    for i in range(3_000):
        e = random_event(rng, i)
        if e.status == STATUS_NOT_BILLABLE or not e.has_usage or e.model is None:
            continue
        tokens = TokenCounts(e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens,
                             e.reasoning_tokens, e.cache_write_1h_tokens, e.audio_input_tokens,
                             e.audio_output_tokens, e.tool_use_prompt_tokens)  # fmt: skip
        assert price_event(reg, e) == reg.cost_nano_usd(e.provider, e.model, e.project_id, tokens)
        assert quote_event(reg, e) == reg.quote(e.provider, e.model, e.project_id, tokens)
        seen += 1
    assert seen > 1_000


def test_quote_counts_rejects_what_token_counts_rejects() -> None:
    reg = PricingRegistry()
    with pytest.raises(ValueError, match="must be >= 0"):
        reg.quote_counts("openai", "gpt-4o-mini", None, 10, -1, 0, 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        reg.quote_counts("openai", "gpt-4o-mini", None, 10, 1, 0, 0, 0, -1)
    with pytest.raises(TypeError, match="must be ints"):
        reg.quote_counts("openai", "gpt-4o-mini", None, 10, 1.0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be ints"):
        reg.quote_counts("openai", "gpt-4o-mini", None, True, 1, 0, 0)
    assert reg.quote_counts("openai", "no-such-model", None, 10, 1, 0, 0) is None


@pytest.mark.parametrize(
    "ms", [0.0, -0.0, -3.0, 0.0004, 0.0005, 0.0006, 0.0015, 0.0025, 0.0035, 1.2345, 12.3456, 1e6, 2.5e-3]
)
def test_duration_us_is_max_zero_round(ms: float) -> None:
    ev = UsageEvent(request_id="r", time_ns=1, provider="openai", model="m", streaming=False, status="ok",
                    http_status=200, duration_ms=ms)  # fmt: skip
    assert usage_row_from_event(ev).duration_us == max(0, round(ms * 1000))


def test_duration_us_of_nan_is_zero() -> None:
    ev = UsageEvent(request_id="r", time_ns=1, provider="openai", model="m", streaming=False, status="ok",
                    http_status=200, duration_ms=math.nan)  # fmt: skip
    assert usage_row_from_event(ev).duration_us == 0


# --------------------------------------------------------------------------- the flusher


class RecordingStore:
    """Takes batches like a store would (validated, after a hand-off); can be failed."""

    def __init__(self) -> None:
        self.rows: dict[str, UsageRow] = {}
        self.batches: list[int] = []
        self.failing = False
        self.delay_s = 0.0

    def rejects_data(self, exc: BaseException) -> bool:
        return Store.rejects_data(self, exc)  # type: ignore[arg-type]

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        batch = normalize_usage(rows)
        await asyncio.sleep(self.delay_s)
        if self.failing:
            raise ConnectionError("store down")
        self.batches.append(len(batch))
        new = 0
        for r in batch:
            if r.request_id not in self.rows:
                self.rows[r.request_id] = r
                new += 1
        return new


def make_flusher(tmp_path: Path, store: RecordingStore, **options: float) -> UsageFlusher:
    return UsageFlusher(
        store,  # type: ignore[arg-type]
        PricingRegistry(),
        Journal(tmp_path / "usage.journal"),
        BillingMetrics(),
        interval_s=float(options.pop("interval_s", 3600.0)),
        batch_size=int(options.pop("batch_size", 1000)),
        max_pending_rows=int(options.pop("max_pending_rows", 100_000)),
    )


def events(n: int, seed: int = 3) -> list[UsageEvent]:
    rng = random.Random(seed)
    return [random_event(rng, i) for i in range(n)]


def test_flush_now_writes_everything_with_exact_metrics(tmp_path: Path) -> None:
    async def main() -> None:
        store = RecordingStore()
        flusher = make_flusher(tmp_path, store, batch_size=400)
        evs = events(2_345)
        for e in evs:
            flusher.submit(e)
        assert flusher.backlog == 2_345
        await flusher.flush_now()
        assert flusher.backlog == 0
        expected = [row_of_event(flusher.pricing, e) for e in evs]
        assert [store.rows[e.request_id] for e in evs] == expected
        assert store.batches == [400] * 5 + [345]
        m = flusher.metrics
        assert (m.events_submitted, m.rows_written, m.rows_duplicate, m.flushes) == (2_345, 2_345, 0, 6)
        assert m.rows_unpriced_at_flush == sum(1 for r in expected if not r.priced)
        assert m.rows_priced_partial == sum(1 for r in expected if r.price_status == "priced_partial")
        cost_per_model: dict[tuple[str, str], int] = {}
        for r in expected:
            if r.cost_nano_usd:
                key = (r.provider, r.model or "")
                cost_per_model[key] = cost_per_model.get(key, 0) + r.cost_nano_usd
        assert len(cost_per_model) >= 5 and m.cost_nano_usd == cost_per_model

    asyncio.run(main())


def test_cost_metric_keeps_its_bound_on_models(tmp_path: Path) -> None:
    """Once MAX_COST_MODELS (provider, model) pairs are kept, new ones add to (provider,
    "other"), and the pairs kept are the first seen, in submission order."""
    from dataclasses import replace

    from plano_fast.billing import metrics as metrics_mod

    async def main() -> None:
        store = RecordingStore()
        flusher = make_flusher(tmp_path, store)
        flusher.pricing.set_overrides({f"m{i}": ModelPrice(1_000_000, 0, None, None) for i in range(8)}, {})
        base = UsageEvent("r", 1, "openai", "m0", False, STATUS_OK, 200, input_tokens=1000, has_usage=True)
        evs = [replace(base, request_id=f"r{i}", model=f"m{i % 8}", input_tokens=1000 * (1 + i % 8))
               for i in range(64)]  # fmt: skip
        for e in evs:
            flusher.submit(e)
        await flusher.flush_now()
        # 1,000 tokens at 1,000,000 nano-USD a million = 1,000 nano-USD; eight events a
        # model; m0..m5 kept (six pairs), m6 and m7 counted as "other"
        per = {f"m{k}": 8 * 1_000 * (1 + k) for k in range(8)}
        kept = {("openai", f"m{k}"): per[f"m{k}"] for k in range(6)}
        assert flusher.metrics.cost_nano_usd == {**kept, ("openai", "other"): per["m6"] + per["m7"]}

    bound = metrics_mod.MAX_COST_MODELS
    metrics_mod.MAX_COST_MODELS = 6  # six pairs, then "other"
    try:
        asyncio.run(main())
    finally:
        metrics_mod.MAX_COST_MODELS = bound


def test_drain_yields_to_the_loop_between_slices(tmp_path: Path) -> None:
    """No synchronous stretch converts more than DRAIN_SLICE events; backlog stays exact."""

    async def main() -> None:
        store = RecordingStore()
        flusher = make_flusher(tmp_path, store)
        for e in events(1_000):
            flusher.submit(e)
        seen: list[tuple[int, int]] = []
        running = True

        def probe() -> None:
            seen.append((len(flusher._pending), flusher.backlog))
            if running:
                asyncio.get_running_loop().call_soon(probe)

        asyncio.get_running_loop().call_soon(probe)
        await flusher._drain()
        running = False
        await asyncio.sleep(0)
        converted = [p for p, _ in seen]
        steps = [b - a for a, b in zip(converted, converted[1:], strict=False)]
        assert max(steps) <= DRAIN_SLICE
        assert len(set(converted)) >= 1_000 // DRAIN_SLICE
        assert all(backlog == 1_000 for _, backlog in seen)  # converted or queued: all counted

    asyncio.run(main())


def test_the_loop_task_flushes_on_size_and_on_time(tmp_path: Path) -> None:
    async def main() -> None:
        store = RecordingStore()
        flusher = make_flusher(tmp_path, store, batch_size=100, interval_s=0.2)
        await flusher.start()
        try:
            for e in events(250):
                flusher.submit(e)
                if len(flusher._queue) % 64 == 0:
                    await asyncio.sleep(0)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if flusher.metrics.rows_written >= 200:
                    break
            assert flusher.metrics.rows_written >= 200  # two full batches without waiting
            for _ in range(100):
                await asyncio.sleep(0.01)
                if flusher.metrics.rows_written == 250:
                    break
            assert flusher.metrics.rows_written == 250  # the rest on the interval
            assert flusher.backlog == 0
        finally:
            await flusher.stop()

    asyncio.run(main())


def test_flush_now_during_a_loop_flush_loses_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        store = RecordingStore()
        store.delay_s = 0.01
        flusher = make_flusher(tmp_path, store, batch_size=100, interval_s=0.01)
        await flusher.start()
        try:
            evs = events(1_050)
            for e in evs:
                flusher.submit(e)
            await asyncio.sleep(0.015)  # the loop task is mid-flush now
            await asyncio.gather(flusher.flush_now(), flusher.flush_now())
            assert flusher.backlog == 0
            assert set(store.rows) == {e.request_id for e in evs}
            assert flusher.metrics.rows_written == 1_050
        finally:
            await flusher.stop()

    asyncio.run(main())


def test_stop_drains_what_was_submitted(tmp_path: Path) -> None:
    async def main() -> None:
        store = RecordingStore()
        flusher = make_flusher(tmp_path, store, batch_size=300)
        await flusher.start()
        evs = events(1_234)
        for e in evs:
            flusher.submit(e)
        await flusher.stop()
        assert set(store.rows) == {e.request_id for e in evs}
        assert flusher.backlog == 0

    asyncio.run(main())


def test_overflow_and_shutdown_spill_to_the_journal(tmp_path: Path) -> None:
    async def main() -> None:
        store = RecordingStore()
        store.failing = True
        flusher = make_flusher(tmp_path, store, batch_size=100, max_pending_rows=300)
        evs = events(500)
        for e in evs:
            flusher.submit(e)
        await flusher.flush_now()  # the store fails: 200 oldest spilled, 300 kept
        assert flusher.metrics.rows_spilled == 200 and flusher.backlog == 300
        assert flusher.metrics.flush_failures == 1
        await flusher.stop(deadline_s=0.0)
        assert flusher.metrics.rows_spilled == 500 and flusher.backlog == 0
        spilled = [r for batch in Journal.read_batches(flusher.journal.path, 1_000) for r in batch]
        assert [r.request_id for r in spilled] == [e.request_id for e in evs]  # oldest first
        expected = [row_of_event(flusher.pricing, e) for e in evs]
        assert spilled == expected

    asyncio.run(main())


def test_an_invalid_event_is_set_aside_and_the_rest_are_written(tmp_path: Path) -> None:
    """An event that cannot be priced (a negative count) is kept in the journal's rejected
    file and counted; the events around it are written, and the flusher goes on."""

    async def main() -> None:
        store = RecordingStore()
        flusher = make_flusher(tmp_path, store)
        evs = events(10)
        for e in evs:
            e.status, e.http_status, e.has_usage, e.model, e.provider = STATUS_OK, 200, True, "gpt-4o", "openai"
        evs[4].output_tokens = -1
        for e in evs:
            flusher.submit(e)
        await flusher.flush_now()
        assert flusher.backlog == 0
        assert sorted(store.rows) == sorted(e.request_id for i, e in enumerate(evs) if i != 4)
        assert flusher.metrics.rows_rejected == 1
        kept = flusher.journal.rejected_path.read_text().splitlines()
        assert len(kept) == 1 and evs[4].request_id in kept[0] and "must be >= 0" in kept[0]

    asyncio.run(main())
