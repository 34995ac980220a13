"""The SQLite writer's chunk parameters: the compiled ``plano_fast.store._params`` against
its twin ``_params_py`` on generated rows -- priced exactly True or False (the slots read
in place) and priced 1, 0 or None (the twin's per-row path), every price status, any
streaming value -- and on a row with an unset slot or of another class (the twin's path,
its AttributeError).  Equal lists, element types included (sqlite3 binds by type)."""

from __future__ import annotations

import dataclasses
import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast.store import _params_py
from plano_fast.store import sqlite as sqlite_store
from plano_fast.store.records import UsageRow

try:
    from plano_fast.store import _params as _compiled_params
except ImportError:  # the extension is not built: only the twin is tested
    _compiled_params = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_params is not None, "the compiled chunk parameters were not built"
    assert sqlite_store._chunk_params is _compiled_params.chunk_params

MODULES: list[ModuleType] = [_params_py] + ([_compiled_params] if _compiled_params is not None else [])

TEXT = st.one_of(st.none(), st.text(max_size=6))
INT = st.one_of(st.integers(0, 3), st.integers(-(2**70), 2**70))
ROWS = st.builds(
    UsageRow,
    request_id=st.text(max_size=6), time_ns=INT, project_id=TEXT, user_id=TEXT, key_hash=TEXT,
    token_id=TEXT, provider=st.text(max_size=6), model=TEXT, input_tokens=INT, output_tokens=INT,
    cache_read_tokens=INT, cache_write_tokens=INT, reasoning_tokens=INT,
    streaming=st.sampled_from([True, False, 0, 1, 2, None, ""]), status=st.text(max_size=6),
    http_status=INT, priced=st.sampled_from([True, False, 1, 0, None]), cost_nano_usd=st.none() | INT,
    duration_us=INT, price_status=st.sampled_from(["pending", "priced", "priced_partial", "unpriced_unknown"]),
    tool_use_prompt_tokens=INT, cache_write_1h_tokens=INT, audio_input_tokens=INT, audio_output_tokens=INT,
    usage_api=TEXT, usage_raw=TEXT, price_entry=TEXT, reservation_overrun_nano_usd=st.none() | INT,
    requested_model=TEXT, attempts=st.none() | INT, attempt_trail=TEXT,
)  # fmt: skip


def _typed(params: list[object]) -> list[tuple[object, type]]:
    return [(v, type(v)) for v in params]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROWS, max_size=8))
def test_generated_rows_bind_the_same_parameters(rows: list[UsageRow]) -> None:
    expected = _typed([v for r in rows for v in _params_py.usage_params(r)])
    for module in MODULES:
        assert _typed(module.chunk_params(rows)) == expected


class _OtherRow:
    def __init__(self, row: UsageRow) -> None:
        for f in dataclasses.fields(UsageRow):
            setattr(self, f.name, getattr(row, f.name))


def test_an_unset_slot_or_another_class_takes_the_twins_path() -> None:
    row = UsageRow("r", 1, "p", None, None, None, "openai", "m", 1, 2, 0, 0, 0, True, "ok", 200, True, 5)
    other: Any = _OtherRow(row)
    for module in MODULES:
        assert module.chunk_params([row, other]) == list(_params_py.usage_params(row)) * 2
    del row.attempt_trail
    for module in MODULES:
        with pytest.raises(AttributeError):
            module.chunk_params([row])
