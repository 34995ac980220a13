"""``plano-fast usage reprice``: re-derive every usage row and its cost, keeping counters
equal to the log.

After a change of the row convention or of prices, each row is rebuilt from what it keeps:

* its token columns are re-derived from ``usage_raw`` (the provider's usage objects as
  received) by scanning them again with the scan API named in ``usage_api`` -- the same
  code that read them off the wire; a row without them (written before schema version 2)
  keeps its columns, which migration 0002 already brought to the convention;
* its cost, price status and price entry are recomputed with the current prices (custom
  prices from the store over the bundled table, the config's ``price_as`` pins).

Rows are left as they are when they carry no usage (errors, cut streams, not billable), have
no model, were charged at a hard limit's bound (``price_entry`` ``hard_limit_bound``: their
usage was missing or cut short, plano_fast.billing.rows), or when no price is known any
more (a price that disappeared never unprices a row).  Each page of rows is rewritten in
one transaction that moves the spending counters by every row's change of counted cost,
read inside that transaction, so counters stay equal to the log throughout, concurrent
gateways included.  Running it twice changes nothing the
second time (only rows whose values differ are written).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from plano_fast.billing.pricer import model_price_of
from plano_fast.billing.rows import BOUND_PRICE_ENTRY, cut_before_its_usage, quote_usage, rederive_counts
from plano_fast.pricing import PricingRegistry
from plano_fast.store import open_store
from plano_fast.store.base import BillingStore, UsageStore
from plano_fast.store.records import PRICE_STATUS_PARTIAL, PRICE_STATUS_PRICED, UsageRow
from plano_fast.usage import STATUS_NOT_BILLABLE

DEFAULT_PAGE_ROWS = 2_000


@dataclass(slots=True)
class RepriceReport:
    rows_seen: int = 0
    rows_changed: int = 0
    rows_rederived: int = 0  # token columns rebuilt from usage_raw
    cost_before_nano_usd: int = 0  # counted cost of the changed rows, before
    cost_after_nano_usd: int = 0  # ... and after
    elapsed_s: float = 0.0


def _carries_usage(row: UsageRow) -> bool:
    return bool(row.input_tokens or row.output_tokens or (row.priced and row.cost_nano_usd))


def reprice_row(pricing: PricingRegistry, row: UsageRow) -> tuple[UsageRow, bool]:
    """The row as it should be now, and whether its columns were rebuilt from usage_raw."""
    if row.status == STATUS_NOT_BILLABLE or row.model is None or row.price_entry == BOUND_PRICE_ENTRY:
        # (a row charged at its hard limit's bound: its usage does not price it)
        return row, False
    if cut_before_its_usage(row):
        return row, False  # (what its columns hold is no price of it: left unpriced)
    derived = rederive_counts(row)
    new = row if derived is None else derived
    if derived is None and not _carries_usage(row):
        return row, False
    quote = quote_usage(pricing, new, new.model or "")
    if quote is not None:
        new = replace(
            new,
            priced=True,
            cost_nano_usd=quote.cost_nano_usd,
            price_status=PRICE_STATUS_PARTIAL if quote.partial else PRICE_STATUS_PRICED,
            price_entry=quote.entry or None,
        )
    return new, derived is not None


def _same(a: UsageRow, b: UsageRow) -> bool:
    return (
        a.input_tokens, a.output_tokens, a.cache_read_tokens, a.cache_write_tokens,
        a.reasoning_tokens, a.tool_use_prompt_tokens, a.cache_write_1h_tokens,
        a.audio_input_tokens, a.audio_output_tokens, bool(a.priced),
        a.cost_nano_usd if a.priced else None, a.price_status if a.priced else None, a.price_entry,
    ) == (
        b.input_tokens, b.output_tokens, b.cache_read_tokens, b.cache_write_tokens,
        b.reasoning_tokens, b.tool_use_prompt_tokens, b.cache_write_1h_tokens,
        b.audio_input_tokens, b.audio_output_tokens, bool(b.priced),
        b.cost_nano_usd if b.priced else None, b.price_status if b.priced else None, b.price_entry,
    )  # fmt: skip


async def load_pricing(store: BillingStore, pins: Mapping[str, str] | None = None) -> PricingRegistry:
    """The bundled table, the config's pins and the store's custom prices."""
    pricing = PricingRegistry(pins=pins)
    prices = await store.list_custom_prices()
    pricing.set_overrides(
        {p.model: model_price_of(p) for p in prices if p.project_id is None},
        {(p.project_id, p.model): model_price_of(p) for p in prices if p.project_id is not None},
    )
    return pricing


async def reprice(
    store: UsageStore,
    pricing: PricingRegistry,
    *,
    page_rows: int = DEFAULT_PAGE_ROWS,
    dry_run: bool = False,
    progress: Callable[[RepriceReport], None] | None = None,
) -> RepriceReport:
    """Re-derive and re-price every row (see the module docstring)."""
    report = RepriceReport()
    started = time.perf_counter()
    after = 0
    while True:
        rows = await store.usage_after(after, page_rows)
        if not rows:
            break
        assert rows[-1].row_id is not None
        after = rows[-1].row_id
        changed: list[UsageRow] = []
        for row in rows:
            new, derived = reprice_row(pricing, row)
            report.rows_rederived += derived
            if not _same(new, row):
                changed.append(new)
                report.cost_before_nano_usd += row.cost_nano_usd if row.priced and row.cost_nano_usd else 0
                report.cost_after_nano_usd += new.cost_nano_usd if new.priced and new.cost_nano_usd else 0
        report.rows_seen += len(rows)
        if changed and not dry_run:
            await store.apply_reprice(changed)
        report.rows_changed += len(changed)
        if progress is not None:
            progress(report)
    report.elapsed_s = time.perf_counter() - started
    return report


async def run_reprice(
    database_url: str | None,
    sqlite_path: str,
    pins: Mapping[str, str] | None = None,
    *,
    page_rows: int = DEFAULT_PAGE_ROWS,
    dry_run: bool = False,
) -> RepriceReport:
    """What ``plano-fast usage reprice`` does: open the configured store, reprice, close."""
    store = open_store(database_url, sqlite_path)
    await store.open()
    try:
        await store.check_schema()
        pricing = await load_pricing(store, pins)
        return await reprice(store, pricing, page_rows=page_rows, dry_run=dry_run)
    finally:
        await store.close()
