"""Type stub for plano_fast/_serve.pyx; see plano_fast.http_server.data_received_py and
plano_fast.http_server.start_py."""

from plano_fast.http_server import Request, ServerProtocol

def data_received(self: ServerProtocol, data: bytes) -> None: ...
def start(self: ServerProtocol, request: Request) -> None: ...
