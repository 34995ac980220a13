"""Type stub for plano_fast/_otlp.pyx; see plano_fast.otlp.OtlpEncoder._request_py, _span_py and
plano_fast.spans.upstream_head."""

from collections.abc import Iterable

from plano_fast.otlp import OtlpEncoder
from plano_fast.spans import TraceSpan

def request(encoder: OtlpEncoder, spans: Iterable[TraceSpan]) -> bytes: ...
def upstream_head(head: bytes, span: TraceSpan) -> bytes: ...
