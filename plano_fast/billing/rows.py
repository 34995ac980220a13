"""Usage event -> usage row, and what a usage costs: the one home of both.

The request path hands the billing pipeline ``UsageEvent``s (``plano_fast.usage``); the
store takes ``UsageRow``s.  Between the two, an event is priced here (``quote_event``:
free statuses, missing usage, then the pricing registry) and becomes a row through the
one constructor, ``UsageRow.from_event``.  The flusher (``rows_of_events``, a slice of
events per call), managed mode's synchronous settlement (``row_of_event``) and the late
pricers (``quote_usage`` on stored rows: ``PriceCalculator``, ``usage reprice``) all go
through these functions, so a new usage column is priced and carried in one place.

Hot path: ``rows_of_events`` runs per event on the flusher's drain and ``row_of_event``
per managed request; neither builds a dict or an intermediate object beyond the ``Quote``.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from plano_fast.billing import _price_py
from plano_fast.pricing import PricingRegistry, Quote
from plano_fast.store.records import PRICE_STATUS_PARTIAL, PRICE_STATUS_PRICED, UsageRow
from plano_fast.usage import UsageEvent
from plano_fast.wire import PURE_ENV

_price_of_event: Callable[[PricingRegistry, UsageEvent], tuple[int, bool, str] | None]
"""``quote_event`` as a plain ``(cost_nano_usd, partial, entry)`` tuple (no ``Quote``
built): the compiled pricer (``plano_fast/billing/_price.pyx``, ~1/5 of the twin's
instructions an event) where it is built and wanted, else its twin ``_price_py``."""
try:
    if os.environ.get(PURE_ENV) == "1":
        raise ImportError(PURE_ENV)
    from plano_fast.billing._price import price_of_event as _price_of_event

    PRICE_IMPLEMENTATION: Final = "cython"
except ImportError:
    _price_of_event = _price_py.price_of_event
    PRICE_IMPLEMENTATION: Final = "python"  # type: ignore[misc]


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
    Managed mode's synchronous settle calls it once per request: no ``Quote`` built."""
    priced = _price_of_event(pricing, event)
    if priced is None:
        return _from_event(event)
    cost, partial, entry = priced
    return _from_event(
        event,
        cost_nano_usd=cost,
        price_status=PRICE_STATUS_PARTIAL if partial else PRICE_STATUS_PRICED,
        price_entry=entry or None,
    )


_from_event: Final = UsageRow.from_event  # bound once (a lookup and a method object less per call)


def rows_of_events(
    pricing: PricingRegistry, events: Iterable[UsageEvent], out: collections.deque[UsageRow]
) -> int:
    """Append ``row_of_event(pricing, e)`` to ``out`` for each event, in one pass; returns
    how many rows are unpriced.  The flusher's loop: the same two calls per event as
    ``row_of_event``, with the lookups hoisted."""
    unpriced = 0
    append = out.append
    from_event = _from_event
    price_of = _price_of_event
    for e in events:
        priced = price_of(pricing, e)
        if priced is None:
            unpriced += 1
            append(from_event(e))
        else:
            cost, partial, entry = priced
            append(
                from_event(
                    e,
                    cost_nano_usd=cost,
                    price_status=PRICE_STATUS_PARTIAL if partial else PRICE_STATUS_PRICED,
                    price_entry=entry or None,
                )
            )
    return unpriced
