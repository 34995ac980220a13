"""What one usage event costs, in plain Python: the specification of the compiled
``plano_fast.billing._price`` (its twin), and the path it hands every unusual event to.

``price_of_event(pricing, event)`` is ``(cost_nano_usd, partial, entry)``, or None when the
event cannot be priced: free statuses cost nothing, an event without usage costs nothing
when the provider refused it (HTTP >= 400) and is unpriced otherwise, an event without a
model is unpriced, anything else is ``PricingRegistry.price_counts`` of its counts (which
raises ``TokenCounts``' TypeError / ValueError for counts that are not non-negative ints).
Choose between the twins through ``plano_fast.billing.rows``, never here.
"""

from __future__ import annotations

from typing import Final

from plano_fast.pricing import PricingRegistry
from plano_fast.usage import STATUS_CLIENT_ABANDONED, STATUS_NOT_BILLABLE, UsageEvent

FREE_STATUSES: Final = frozenset((STATUS_NOT_BILLABLE, STATUS_CLIENT_ABANDONED))
"""Statuses that cost nothing: not an LLM call; abandoned before it was forwarded."""

FREE: Final = (0, False, "")


def price_of_event(pricing: PricingRegistry, event: UsageEvent) -> tuple[int, bool, str] | None:
    """``(cost_nano_usd, partial, entry)`` of one event, or None when it cannot be priced
    (no ``Quote`` built: the drain's form, see ``PricingRegistry.price_counts``)."""
    if event.status in FREE_STATUSES:
        return FREE
    if not event.has_usage:
        # A provider error or a failed connection bills nothing; a successful response
        # whose usage was never seen (stream cut, provider omitted it) cannot be priced:
        # it stays unpriced and visible, never silently zero.
        return FREE if event.http_status >= 400 else None
    model = event.model
    if model is None:
        return None
    # rows.quote_usage's call, inlined (one frame less per event on the drain)
    return pricing.price_counts(
        event.provider, model, event.project_id, event.input_tokens, event.output_tokens,
        event.cache_read_tokens, event.cache_write_tokens, event.cache_write_1h_tokens,
        event.audio_input_tokens, event.audio_output_tokens,
    )  # fmt: skip
