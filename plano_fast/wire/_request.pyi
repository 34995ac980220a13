"""Type stub for the compiled request fast path (plano_fast/wire/_request.pyx)."""

from collections.abc import Iterator, Sequence
from typing import overload

class RequestHeaders(Sequence[tuple[bytes, bytes]]):
    """A fast-path request's ``[(lowercased name, value)]``, made on first use."""

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> tuple[bytes, bytes]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[bytes, bytes]]: ...
    def __contains__(self, item: object) -> bool: ...
    def has(self, name: bytes) -> bool: ...
    def last(self, name: bytes) -> bytes | None: ...

def parse_request(
    buf: bytes, start: int, max_head_bytes: int, max_body_bytes: int
) -> tuple[
    bytes, bytes, RequestHeaders, bytes, bool, int, tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes]
] | None: ...

def parse_request_begun(
    buf: bytes, start: int, max_head_bytes: int, max_body_bytes: int
) -> tuple[
    bytes, bytes, RequestHeaders, bytes | int, bool, int,
    tuple[bytes, bool, bytes | None, int, bytes | None, bytes | None, bytes],
] | None: ...
