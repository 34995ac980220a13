"""Type stub for plano_fast/gateway/_firewall.pyx; see plano_fast.gateway.modes.firewall.start_py."""

from collections.abc import Coroutine
from typing import Any

from plano_fast.gateway.modes.firewall import FirewallExchange

def start(self: FirewallExchange) -> Coroutine[Any, Any, None] | None: ...
