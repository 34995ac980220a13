"""Type stub for plano_fast/gateway/_forward.pyx; see plano_fast.gateway.relay.forward_now_py."""

from collections.abc import Coroutine
from typing import Any

from plano_fast.gateway.relay import Exchange

def forward_now(self: Exchange) -> Coroutine[Any, Any, None] | None: ...
def request_id_line(client_request_id: bytes | None, request_id: str) -> bytes: ...
