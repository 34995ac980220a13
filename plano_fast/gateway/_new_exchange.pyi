"""Type stub for plano_fast/gateway/_new_exchange.pyx; see plano_fast.gateway.relay.new_exchange."""

from typing import TypeVar

from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.http_server import Request, Responder

_E = TypeVar("_E", bound=Exchange)

PER_REQUEST: tuple[str, ...]

def new_exchange(cls: type[_E], ctx: ExchangeContext, request: Request, responder: Responder) -> _E: ...
