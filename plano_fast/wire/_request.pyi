"""Type stub for the compiled request fast path (plano_fast/wire/_request.pyx)."""

def parse_request(
    buf: bytes, start: int, max_head_bytes: int, max_body_bytes: int
) -> tuple[
    bytes, bytes, list[tuple[bytes, bytes]], bytes, bool, int, tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes]
] | None: ...
