"""Type stub for the compiled chunk parameters (plano_fast/store/_params.pyx); see plano_fast.store._params_py."""

from collections.abc import Sequence

from plano_fast.store.records import UsageRow
from plano_fast.store.sql import DaySums

def chunk_params(rows: Sequence[UsageRow]) -> list[object]: ...
def insert_params(
    n: int,
    params: list[object],
    omittable: tuple[int, ...],
    zero_groups: tuple[tuple[int, ...], ...],
    share_groups: tuple[tuple[int, ...], ...],
) -> tuple[tuple[int, ...], tuple[int, ...], list[object]]: ...
def add_day_sums(rows: Sequence[UsageRow], sums: DaySums) -> None: ...
def normalize_usage(rows: Sequence[UsageRow], seen: set[str] | None = None) -> list[UsageRow]: ...
