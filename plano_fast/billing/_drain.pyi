"""Type stub for the compiled drain (plano_fast/billing/_drain.pyx); see plano_fast.billing._drain_py."""

import collections
from collections.abc import Iterable

from plano_fast.pricing import PricingRegistry
from plano_fast.store.records import UsageRow
from plano_fast.usage import UsageEvent

ROW_FIELDS: tuple[str, ...]

def price_of_event(pricing: PricingRegistry, event: UsageEvent) -> tuple[int, bool, str] | None: ...
def rows_of_events(pricing: PricingRegistry, events: Iterable[UsageEvent], out: collections.deque[UsageRow]) -> int: ...
def event_fields(event: UsageEvent) -> tuple[object, ...]: ...
def wal_line(events: list[UsageEvent], start: int, stop: int) -> bytes: ...
