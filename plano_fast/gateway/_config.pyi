"""Type stub for plano_fast/gateway/_config.pyx; see plano_fast.gateway.modes.config.start_py."""

from collections.abc import Coroutine
from typing import Any

from plano_fast.gateway.modes.config import ConfigExchange

def start(self: ConfigExchange) -> Coroutine[Any, Any, None] | None: ...
