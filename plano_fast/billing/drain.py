"""The one place that chooses the flusher's per-event work: the compiled
``plano_fast.billing._drain`` where it is built (and ``PLANO_FAST_PURE_SCANNER`` is not
"1", the switch every compiled module obeys), else its twin ``_drain_py`` (whose docstring
is the specification).  Import these from here, never from the underscored modules (tests
and benchmarks do, to run both).

Measured per event under callgrind (benchmarks/bench_billing_stages.py, issue 27; see
benchmarks/results/billing2-20261205.md): pricing + row ~24k instructions in the twin,
~8k compiled; the write-ahead log's fields ~6.7k with ``attrgetter``, ~0.5k compiled.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable
from typing import Final

from plano_fast.billing import _drain_py
from plano_fast.pricing import PricingRegistry
from plano_fast.store.records import UsageRow
from plano_fast.usage import UsageEvent
from plano_fast.wire import PURE_ENV

price_of_event: Callable[[PricingRegistry, UsageEvent], tuple[int, bool, str] | None]
rows_of_events: Callable[[PricingRegistry, Iterable[UsageEvent], collections.deque[UsageRow]], int]
event_fields: Callable[[UsageEvent], tuple[object, ...]]
wal_line: Callable[[list[UsageEvent], int, int], bytes]
row_totals: Callable[[collections.deque[UsageRow], int, dict[tuple[str, str | None], int]], int]

try:
    if os.environ.get(PURE_ENV) == "1":
        raise ImportError(PURE_ENV)
    from plano_fast.billing._drain import event_fields, price_of_event, row_totals, rows_of_events, wal_line

    DRAIN_IMPLEMENTATION: Final = "cython"
except ImportError:
    price_of_event = _drain_py.price_of_event
    rows_of_events = _drain_py.rows_of_events
    event_fields = _drain_py.event_fields
    wal_line = _drain_py.wal_line
    row_totals = _drain_py.row_totals
    DRAIN_IMPLEMENTATION: Final = "python"  # type: ignore[misc]

BOUND_PRICE_ENTRY: Final = _drain_py.BOUND_PRICE_ENTRY
"""``price_entry`` of a row charged at a managed hard limit's bound (plano_fast.billing.rows)."""

encode_line: Final = _drain_py.encode_line
"""A write-ahead log line of field tuples (what ``wal_line`` writes for events)."""

EVENT_FIELDS: Final = _drain_py.EVENT_FIELDS
"""``UsageEvent``'s field names, in order: what ``event_fields`` returns the values of."""
