"""BudgetChecker: spend against limits -> the blocked set the hot path reads.

The database is the truth: each cycle reads the current-period counters (which the
flusher and the PriceCalculator update in the same transactions as the usage rows) and
the active limits, and swaps in a new frozen set.  The hot path does one set lookup.

Soft-limit delay bound: an over-limit request's row reaches the counters at the next
flush (<= flush interval, priced at flush time) and is seen at the next check
(<= check interval), so the first 429 comes at most flush + check intervals (+ one write)
after the request that crossed the limit ended.
"""

from __future__ import annotations

import logging
import time

from plano_fast.billing.metrics import BillingMetrics
from plano_fast.periodic import Periodic
from plano_fast.store.base import BillingStore
from plano_fast.store.records import CounterKey
from plano_fast.store.times import period_start

log = logging.getLogger("plano_fast.billing")


class BudgetChecker:
    def __init__(self, store: BillingStore, metrics: BillingMetrics, *, interval_s: float) -> None:
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s
        #: (scope_kind, scope_id) pairs over a limit: ("project", id), ("key", hash), ...
        self.blocked: frozenset[tuple[str, str]] = frozenset()
        #: False until the first successful check: callers that must fail closed look here
        self.ready = False
        self._loop = Periodic(
            "budget-checker", self.check_once, lambda: self.interval_s, on_error=self._check_failed
        )

    async def start(self) -> None:
        try:
            await self.check_once()
        except Exception as exc:  # noqa: BLE001 - the loop retries; callers see ready=False
            self.metrics.budget_check_failures += 1
            log.warning("budget state not loaded yet: %s", type(exc).__name__)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def _check_failed(self, exc: Exception) -> None:
        # keep the last known set, retry next cycle
        self.metrics.budget_check_failures += 1
        log.warning("budget check failed: %s", type(exc).__name__)

    async def check_once(self) -> frozenset[tuple[str, str]]:
        now_ns = time.time_ns()
        limits = await self.store.list_active_spending_limits()
        counters = {c.key: c.spent_nano_usd for c in await self.store.load_counters(at_ns=now_ns)}
        blocked: set[tuple[str, str]] = set()
        for limit in limits:
            key = CounterKey(limit.scope_kind, limit.scope_id, limit.period,
                             period_start(limit.period, now_ns))
            if counters.get(key, 0) >= limit.limit_nano_usd:
                blocked.add((limit.scope_kind, limit.scope_id))
        self.blocked = frozenset(blocked)
        self.ready = True
        return self.blocked
