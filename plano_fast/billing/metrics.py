"""Billing counters: plain integers owned by one process, exported by the metrics endpoint."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, fields

#: distinct (provider, model) pairs of ``cost_nano_usd`` per process; later ones: model "other"
MAX_COST_MODELS = 400


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
    #: managed: 2xx answers under a hard limit whose usage was missing or cut short, charged
    #: at the bound of their reservation (plano_fast.billing.rows.row_within_reservation),
    #: and the sum charged
    rows_charged_at_bound: int = 0
    rows_charged_at_bound_nano_usd: int = 0
    #: managed: synchronous billing writes that failed (the store away) and the rows they
    #: handed to the journaled path (plano_fast.managed.context.GroupWriter._failed)
    sync_write_failures: int = 0
    sync_rows_fallback: int = 0
    rows_rejected: int = 0  # refused by the store for their values; set aside (journal)
    flushes: int = 0
    flush_failures: int = 0
    price_failures: int = 0
    budget_check_failures: int = 0
    last_flush_s: float = 0.0
    #: (provider, model) -> nano-USD of the rows priced (at flush, or late by the
    #: PriceCalculator): ``plano_fast_cost_nano_usd_total``
    cost_nano_usd: dict[tuple[str, str], int] = field(default_factory=dict)
    #: usage flush durations: bucket counts (``plano_fast.metrics.FLUSH_BUCKETS_S``), +Inf, sum
    flush_row: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        """The plain counters and gauges (not the tables)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TABLES}

    def add_cost(self, provider: str, model: str | None, nano_usd: int) -> None:
        costs = self.cost_nano_usd
        key = (provider, model or "")
        if key not in costs and len(costs) >= MAX_COST_MODELS:
            key = (provider, "other")
        costs[key] = costs.get(key, 0) + nano_usd

    def observe_flush(self, seconds: float) -> None:
        row = self.flush_row
        if not row:
            row.extend([0.0] * (len(FLUSH_BUCKETS_S) + 2))
        row[bisect_left(FLUSH_BUCKETS_S, seconds)] += 1
        row[-1] += seconds


_TABLES = frozenset({"cost_nano_usd", "flush_row"})
#: seconds: a batch write to SQLite takes milliseconds, to a remote PostgreSQL more
FLUSH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
