"""Usage event -> usage row, and what a usage costs: the one home of both.

The request path hands the billing pipeline ``UsageEvent``s (``plano_fast.usage``); the
store takes ``UsageRow``s.  Between the two, an event is priced here (``quote_event``:
free statuses, missing usage, then the pricing registry) and becomes a row through the
one constructor, ``UsageRow.from_event``.  The flusher (``rows_of_events``, a slice of
events per call), managed mode's synchronous settlement (``row_of_event``) and the late
pricers (``quote_usage`` on stored rows: ``PriceCalculator``, ``usage reprice``) all go
through these functions, so a new usage column is priced and carried in one place.

Hot path: ``rows_of_events`` runs per event on the flusher's drain and ``row_of_event``
per managed request: both are ``plano_fast.billing.drain``'s (compiled where built), and
build no dict or intermediate object beyond the price tuple.
"""

from __future__ import annotations

import collections
from typing import Protocol

from plano_fast.billing.drain import price_of_event as _price_of_event
from plano_fast.billing.drain import rows_of_events
from plano_fast.pricing import PricingRegistry, Quote
from plano_fast.store.records import UsageRow
from plano_fast.usage import UsageEvent

__all__ = ["Counted", "price_event", "quote_event", "quote_usage", "row_of_event", "rows_of_events"]


class Counted(Protocol):
    """What pricing reads of a usage: a ``UsageEvent`` and a ``UsageRow`` both are one."""

    @property
    def provider(self) -> str: ...
    @property
    def project_id(self) -> str | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def cache_write_1h_tokens(self) -> int: ...
    @property
    def audio_input_tokens(self) -> int: ...
    @property
    def audio_output_tokens(self) -> int: ...


def quote_usage(pricing: PricingRegistry, usage: Counted, model: str) -> Quote | None:
    """The registry's quote for ``usage``'s token counts as ``model`` (None: no price).
    The one place the priced count columns are listed."""
    return pricing.quote_counts(
        usage.provider, model, usage.project_id, usage.input_tokens, usage.output_tokens,
        usage.cache_read_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens,
        usage.audio_input_tokens, usage.audio_output_tokens,
    )  # fmt: skip


def quote_event(pricing: PricingRegistry, event: UsageEvent) -> Quote | None:
    """What one event costs (nano-USD, partial flag, price entry), or None when it cannot
    be priced."""
    priced = _price_of_event(pricing, event)
    return None if priced is None else Quote(*priced)


def price_event(pricing: PricingRegistry, event: UsageEvent) -> int | None:
    """Cost of one event in nano-USD, or None when it cannot be priced."""
    priced = _price_of_event(pricing, event)
    return None if priced is None else priced[0]


def row_of_event(pricing: PricingRegistry, event: UsageEvent) -> UsageRow:
    """The usage row of one event, priced when it can be (status and price entry set).
    Managed mode's synchronous settle calls it once per request: the flusher's own
    ``rows_of_events`` on one event (one path from event to row)."""
    out: collections.deque[UsageRow] = collections.deque()
    rows_of_events(pricing, (event,), out)
    return out[0]
