"""The billing pipeline as one owned unit: start in order, stop in reverse, drain first."""

from __future__ import annotations

from plano_fast.billing.budget import BudgetChecker
from plano_fast.billing.flusher import UsageFlusher
from plano_fast.billing.journal import Journal, WriteAheadLog
from plano_fast.billing.metrics import BillingMetrics
from plano_fast.billing.pricer import PriceCalculator
from plano_fast.config import GatewaySettings
from plano_fast.pricing import PricingRegistry
from plano_fast.store.base import BillingStore
from plano_fast.usage import UsageEvent


class BillingPipeline:
    def __init__(self, store: BillingStore, settings: GatewaySettings, pricing: PricingRegistry | None = None) -> None:
        self.store = store
        self.metrics = BillingMetrics()
        self.pricing = pricing or PricingRegistry(pins=settings.price_as)
        self.journal = Journal(settings.usage_journal_path)
        self.wal = WriteAheadLog(self.journal, settings.usage_wal_sync_interval_s) if settings.usage_wal else None
        self.flusher = UsageFlusher(
            store,
            self.pricing,
            self.journal,
            self.metrics,
            interval_s=settings.usage_flush_interval_s,
            batch_size=settings.usage_batch_size,
            max_pending_rows=settings.usage_max_pending_events,
            wal=self.wal,
        )
        self.pricer = PriceCalculator(
            store, self.pricing, self.metrics,
            interval_s=settings.price_interval_s, batch_size=settings.usage_batch_size,
        )
        self.budget = BudgetChecker(store, self.metrics, interval_s=settings.budget_check_interval_s)

    def submit(self, event: UsageEvent) -> None:
        self.flusher.submit(event)

    async def start(self) -> None:
        # Custom prices first, so the first flush already prices with them.
        await self.pricer.start()
        await self.flusher.start()
        await self.budget.start()

    async def stop(self, drain_deadline_s: float = 10.0) -> None:
        await self.budget.stop()
        await self.pricer.stop()
        await self.flusher.stop(drain_deadline_s)
