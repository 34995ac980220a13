"""Type stub for the compiled observability module (plano_fast/wire/_obs.pyx); see plano_fast.wire._obs_py."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

class RouteStats:
    @property
    def statuses(self) -> list[int]: ...
    @property
    def hists(self) -> list[list[float] | None]: ...
    @property
    def tokens(self) -> list[int]: ...

class RouteTable:
    routes: dict[tuple[str, ...], RouteStats]
    def observe_ns(
        self,
        labels: tuple[str, ...],
        status: int,
        started_ns: int,
        ended_ns: int,
        sent_ns: int,
        head_ns: int,
        tokens: Sequence[int] | None,
    ) -> None: ...

def lines(records: Iterable[Sequence[Any]]) -> bytes: ...
def has_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bool: ...
def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None: ...
def record_appender(pending: list[tuple[Any, ...]]) -> Callable[[tuple[Any, ...]], None]: ...
