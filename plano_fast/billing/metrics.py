"""Billing counters: plain integers owned by one process, exported by the metrics endpoint."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class BillingMetrics:
    events_submitted: int = 0
    rows_written: int = 0
    rows_duplicate: int = 0  # already in the store (journal replay, retried batch, collision)
    rows_duplicate_id: int = 0  # of those, in a first attempt: two requests with one id
    rows_unpriced_at_flush: int = 0
    rows_priced_late: int = 0  # priced by the PriceCalculator
    rows_unpriced_unknown: int = 0  # no price known even after a retry
    rows_priced_partial: int = 0  # priced, but a dimension had no price of its own (fallback)
    rows_spilled: int = 0
    rows_replayed: int = 0
    reservation_overruns: int = 0  # managed: a provider billed more than was reserved
    reservation_overrun_nano_usd: int = 0  # managed: by how much, in all (the rows' flags)
    rows_rejected: int = 0  # refused by the store for their values; set aside (journal)
    flushes: int = 0
    flush_failures: int = 0
    price_failures: int = 0
    budget_check_failures: int = 0
    last_flush_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
