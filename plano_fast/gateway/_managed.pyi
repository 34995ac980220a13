"""Type stub for plano_fast/gateway/_managed.pyx; see plano_fast.gateway.modes.managed.start_py."""

import asyncio
from collections.abc import Coroutine
from typing import Any

from plano_fast.gateway.endpoints import Endpoint
from plano_fast.gateway.modes.managed import ManagedExchange
from plano_fast.managed.context import ManagedContext

def aim(self: ManagedExchange, mctx: ManagedContext, endpoint: Endpoint) -> None: ...

def start(self: ManagedExchange) -> Coroutine[Any, Any, None] | None: ...
def complete(self: ManagedExchange, outcome: str) -> None: ...
def billed(self: ManagedExchange, billing: asyncio.Future[Any]) -> None: ...
