"""Type stub for plano_fast/gateway/_answer.pyx; see plano_fast.upstream.take_whole_answer_py
and plano_fast.upstream.UpstreamConnection.data_received_py."""

from plano_fast.upstream import UpstreamConnection

def plan_of(cls: type) -> int: ...
def data_received(conn: UpstreamConnection, data: bytes) -> None: ...
