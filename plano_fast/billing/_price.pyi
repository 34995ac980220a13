"""Type stub for the compiled pricer (plano_fast/billing/_price.pyx); see plano_fast.billing._price_py."""

from plano_fast.pricing import PricingRegistry
from plano_fast.usage import UsageEvent

def price_of_event(pricing: PricingRegistry, event: UsageEvent) -> tuple[int, bool, str] | None: ...
