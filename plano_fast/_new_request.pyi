"""Type stub for plano_fast/_new_request.pyx; see plano_fast.http_server.new_request."""

from typing import Any

from plano_fast.http_server import Request

FIELDS: tuple[str, ...]

def new_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool,
    forward: Any = None, http11: bool = True,
) -> Request: ...
