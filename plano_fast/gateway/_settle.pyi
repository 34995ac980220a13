"""Type stub for plano_fast/gateway/_settle.pyx; see plano_fast.gateway.relay.make_event_py, observe_py."""

from plano_fast.gateway.relay import Exchange
from plano_fast.usage import UsageEvent

def make_event(self: Exchange, outcome: str, http_status: int) -> UsageEvent: ...
def observe(self: Exchange, event: UsageEvent) -> None: ...
