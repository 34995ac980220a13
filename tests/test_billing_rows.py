"""plano_fast.billing.rows and ``UsageRow.from_event``: the one event -> row constructor and
the one home of event pricing.

``from_event`` fills the row's slots itself (no ``__init__`` call, for the flusher's
drain), so these tests hold it to what the dataclass constructor, called by keyword,
gives: every field set, none forgotten when a column is added.
"""

from __future__ import annotations

import ast
import dataclasses
import random
from pathlib import Path

import pytest

from plano_fast.billing.rows import price_event, quote_event, quote_usage, row_of_event
from plano_fast.pricing import PricingRegistry
from plano_fast.store import PRICE_STATUS_PENDING, UsageRow
from plano_fast.usage import UsageEvent
from tests.test_billing_flusher import random_event, registry_with_overrides

_ROW_FIELDS = [f.name for f in dataclasses.fields(UsageRow)]


def expected_row(
    e: UsageEvent,
    *,
    cost_nano_usd: int | None = None,
    price_status: str = PRICE_STATUS_PENDING,
    price_entry: str | None = None,
    user_id: str | None = None,
    token_id: str | None = None,
) -> UsageRow:
    """The row by the dataclass constructor, by keyword, from the README's rules."""
    d = e.duration_ms * 1000
    return UsageRow(
        request_id=e.request_id, time_ns=e.time_ns, project_id=e.project_id,
        user_id=e.user_id if user_id is None else user_id, key_hash=e.key_hash,
        token_id=e.token_id if token_id is None else token_id, provider=e.provider,
        model=e.model, input_tokens=e.input_tokens, output_tokens=e.output_tokens,
        cache_read_tokens=e.cache_read_tokens, cache_write_tokens=e.cache_write_tokens,
        reasoning_tokens=e.reasoning_tokens, streaming=e.streaming, status=e.status,
        http_status=e.http_status, priced=cost_nano_usd is not None, cost_nano_usd=cost_nano_usd,
        duration_us=max(0, round(d)), price_status=price_status, row_id=None,
        tool_use_prompt_tokens=e.tool_use_prompt_tokens,
        cache_write_1h_tokens=e.cache_write_1h_tokens, audio_input_tokens=e.audio_input_tokens,
        audio_output_tokens=e.audio_output_tokens, usage_api=e.usage_api, usage_raw=e.usage_raw,
        price_entry=price_entry, requested_model=e.requested_model, attempts=e.attempts,
        attempt_trail=e.attempt_trail,
    )  # fmt: skip


def test_from_event_sets_every_field() -> None:
    e = random_event(random.Random(1), 1)
    row = UsageRow.from_event(e)
    for name in _ROW_FIELDS:
        getattr(row, name)  # an unset slot raises AttributeError
    assert type(row) is UsageRow


def test_from_event_equals_the_keyword_constructor() -> None:
    rng = random.Random(11)
    for i in range(2_000):
        e = random_event(rng, i)
        if i % 3 == 0:  # some requested by an alias, some retried (schema 6 and 7 columns)
            e = dataclasses.replace(e, requested_model=f"alias-{i}", attempts=1 + i % 4,
                                    attempt_trail=None if i % 4 == 0 else "503," * (i % 4) + "200")
        assert UsageRow.from_event(e) == expected_row(e)
        kw = dict(
            cost_nano_usd=rng.randrange(10**9), price_status=rng.choice(["priced", "priced_partial"]),
            price_entry=rng.choice([None, "openai/gpt-4o-mini"]),
            user_id=rng.choice([None, "u9"]), token_id=rng.choice([None, "t9"]),
        )  # fmt: skip
        assert UsageRow.from_event(e, **kw) == expected_row(e, **kw)  # type: ignore[arg-type]


def test_from_event_rows_are_ordinary_dataclass_rows() -> None:
    e = random_event(random.Random(2), 2)
    row = UsageRow.from_event(e, cost_nano_usd=5)
    assert dataclasses.asdict(row) == dataclasses.asdict(expected_row(e, cost_nano_usd=5))
    assert dataclasses.replace(row, cost_nano_usd=6).cost_nano_usd == 6
    assert repr(row) == repr(expected_row(e, cost_nano_usd=5))


@pytest.mark.parametrize("overrides", [False, True])
def test_row_of_event_prices_by_quote_event(overrides: bool) -> None:
    rng = random.Random(5)
    reg = registry_with_overrides() if overrides else PricingRegistry()
    for i in range(2_000):
        e = random_event(rng, i)
        quote = quote_event(reg, e)
        row = row_of_event(reg, e)
        if quote is None:
            assert row == expected_row(e)
            assert price_event(reg, e) is None
        else:
            assert row == expected_row(
                e, cost_nano_usd=quote.cost_nano_usd,
                price_status="priced_partial" if quote.partial else "priced",
                price_entry=quote.entry or None,
            )  # fmt: skip
            assert price_event(reg, e) == quote.cost_nano_usd


@pytest.mark.parametrize("overrides", [False, True])
def test_quote_usage_of_a_row_is_the_events_quote(overrides: bool) -> None:
    """The late pricers price a stored row by the same counts the flusher priced its event."""
    rng = random.Random(9)
    reg = registry_with_overrides() if overrides else PricingRegistry()
    seen = 0
    for i in range(2_000):
        e = random_event(rng, i)
        if not e.has_usage or e.model is None or e.http_status >= 400 or e.status == "not_billable":
            continue
        seen += 1
        assert quote_usage(reg, UsageRow.from_event(e), e.model) == quote_event(reg, e)
        assert quote_usage(reg, e, e.model) == quote_event(reg, e)
    assert seen > 100


def test_pricing_helpers_are_imported_from_rows_only() -> None:
    """Nobody takes event pricing or row building from the flusher any more."""
    root = Path(__file__).resolve().parent.parent
    moved = {"quote_event", "price_event", "row_of_event", "rows_of_events", "usage_row_from_event"}
    offenders = []
    for path in [*(root / "plano_fast").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "plano_fast.billing.flusher":
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name in moved]
    assert offenders == []
