"""PriceCalculator: prices the rows that could not be priced when they were flushed.

Every ``interval_s`` it reloads custom prices from the store into the registry (project
override -> global override -> bundled table), then fetches up to ``batch_size`` unpriced
rows and prices them; ``set_prices`` adds their cost to the spending counters in the same
transaction, guarded so a repeat can never count twice.  A row that still has no price is
marked ``unpriced_unknown`` (counted in a metric) and retried only after custom pricing
changes.
"""

from __future__ import annotations

import logging

from plano_fast.billing.metrics import BillingMetrics
from plano_fast.billing.rows import cut_before_its_usage, quote_usage
from plano_fast.periodic import Periodic
from plano_fast.pricing import ModelPrice, PricingRegistry
from plano_fast.store.base import BillingStore
from plano_fast.store.records import (
    PRICE_STATUS_PARTIAL,
    PRICE_STATUS_PRICED,
    PRICE_STATUS_UNKNOWN,
    CustomPrice,
    PriceResult,
)

log = logging.getLogger("plano_fast.billing")



def model_price_of(price: CustomPrice) -> ModelPrice:
    """The registry price of a store-defined custom price."""
    return ModelPrice(
        input_per_mtok=price.input_per_mtok_nano_usd,
        output_per_mtok=price.output_per_mtok_nano_usd,
        cache_read_per_mtok=price.cache_read_per_mtok_nano_usd,
        cache_write_per_mtok=price.cache_write_per_mtok_nano_usd,
        source="custom",
    )


class PriceCalculator:
    def __init__(
        self,
        store: BillingStore,
        pricing: PricingRegistry,
        metrics: BillingMetrics,
        *,
        interval_s: float,
        batch_size: int = 1000,
    ) -> None:
        self.store = store
        self.pricing = pricing
        self.metrics = metrics
        self.interval_s = interval_s
        self.batch_size = batch_size
        self._custom_signature: tuple[tuple[object, ...], ...] | None = None
        self._loop = Periodic(
            "price-calculator", self.run_once, lambda: self.interval_s, on_error=self._cycle_failed
        )

    async def start(self) -> None:
        try:
            await self.reload_custom_prices()
        except Exception as exc:  # noqa: BLE001 - the loop retries
            log.warning("custom prices not loaded yet: %s", type(exc).__name__)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def _cycle_failed(self, exc: Exception) -> None:
        # logged, counted, retried next cycle
        self.metrics.price_failures += 1
        log.warning("pricing cycle failed: %s", type(exc).__name__)

    async def reload_custom_prices(self) -> bool:
        """Swap store-defined prices into the registry; True when they changed."""
        prices = await self.store.list_custom_prices()
        signature = tuple(
            (p.project_id, p.model, p.input_per_mtok_nano_usd, p.output_per_mtok_nano_usd,
             p.cache_read_per_mtok_nano_usd, p.cache_write_per_mtok_nano_usd)
            for p in prices
        )
        if signature == self._custom_signature:
            return False
        global_prices = {p.model: model_price_of(p) for p in prices if p.project_id is None}
        project_prices = {
            (p.project_id, p.model): model_price_of(p) for p in prices if p.project_id is not None
        }
        self.pricing.set_overrides(global_prices, project_prices)
        changed = self._custom_signature is not None
        self._custom_signature = signature
        if changed:
            # Rows no price was known for may have one now.
            await self.store.requeue_unpriced()
        return True

    async def run_once(self) -> int:
        """One cycle; returns the number of rows newly priced."""
        await self.reload_custom_prices()
        priced_total = 0
        while True:
            rows = await self.store.fetch_unpriced(self.batch_size)
            if not rows:
                return priced_total
            results: list[PriceResult] = []
            costs: list[tuple[str, str | None, int]] = []
            for row in rows:
                assert row.row_id is not None
                quote = None
                if row.model is not None and row.status != "usage_missing" and not cut_before_its_usage(row):
                    # rows are in the row convention: one formula for every provider
                    quote = quote_usage(self.pricing, row, row.model)
                if quote is None:
                    self.metrics.rows_unpriced_unknown += 1
                    results.append((row.row_id, None, PRICE_STATUS_UNKNOWN))
                elif quote.partial:
                    self.metrics.rows_priced_partial += 1
                    results.append((row.row_id, quote.cost_nano_usd, PRICE_STATUS_PARTIAL, quote.entry or None))
                else:
                    results.append((row.row_id, quote.cost_nano_usd, PRICE_STATUS_PRICED, quote.entry or None))
                if quote is not None and quote.cost_nano_usd:
                    costs.append((row.provider, row.model, quote.cost_nano_usd))
            priced = await self.store.set_prices(results)
            if priced == sum(1 for result in results if result[1] is not None):
                # Every worker runs a PriceCalculator; a row another one priced first is
                # not priced here (set_prices skips priced rows).  Only a batch that was
                # all ours is counted, so a cost is never counted twice.
                for provider, model, cost in costs:
                    self.metrics.add_cost(provider, model, cost)
            self.metrics.rows_priced_late += priced
            priced_total += priced
            if len(rows) < self.batch_size:
                return priced_total
