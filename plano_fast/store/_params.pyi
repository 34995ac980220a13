"""Type stub for the compiled chunk parameters (plano_fast/store/_params.pyx); see plano_fast.store._params_py."""

from collections.abc import Sequence

from plano_fast.store.records import UsageRow

def chunk_params(rows: Sequence[UsageRow]) -> list[object]: ...
