"""Type stub for plano_fast/_new_request.pyx; see plano_fast.http_server.new_request and
new_responder."""

from typing import Any

from plano_fast.http_server import Request, Responder, ServerProtocol

FIELDS: tuple[str, ...]
RESPONDER_FIELDS: tuple[str, ...]

def new_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool,
    forward: Any = None, http11: bool = True,
) -> Request: ...

def new_responder(cls: type[Responder], proto: ServerProtocol, keep_alive: bool, http11: bool = True) -> Responder: ...
