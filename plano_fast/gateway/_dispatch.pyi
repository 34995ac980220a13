"""Type stub for plano_fast/gateway/_dispatch.pyx; see plano_fast.gateway.dispatch.dispatch_py."""

from collections.abc import Coroutine
from typing import Any

from plano_fast.app import Gateway
from plano_fast.http_server import Request, Responder

def dispatch(gw: Gateway, request: Request, responder: Responder) -> Coroutine[Any, Any, None] | None: ...
