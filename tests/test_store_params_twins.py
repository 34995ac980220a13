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


# -- omitted_columns: the columns a chunk's INSERT leaves out (insert_params' first step) ----

from plano_fast.store.sql import add_day_sums as _add_day_sums_spec  # noqa: E402
from plano_fast.store.sqlite import _OMITTABLE, _OMITTABLE_ZERO_GROUPS  # noqa: E402

# values a column can hold, None and 0 (and things equal to 0 that are not 0 itself) often
PARAM = st.one_of(st.none(), st.just(0), st.integers(-3, 3), st.just(0.0), st.just(False), st.text(max_size=3))


def _omitted_spec(
    n: int, params: list[object], omittable: tuple[int, ...], zero_groups: tuple[tuple[int, ...], ...]
) -> tuple[int, ...]:
    # the specification, spelled out apart from the twin: a column is left out when None
    # in every row, a group when == 0 in every row
    width = len(params) // n
    expected = tuple(i for i in omittable if all(params[r * width + i] is None for r in range(n)))
    for group in zero_groups:
        if all(params[r * width + i] == 0 for i in group for r in range(n)):
            expected += group
    return expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 6), width=st.integers(1, 9))
def test_omitted_columns_match_the_twin(data: st.DataObject, n: int, width: int) -> None:
    """Nothing shared (no share groups): ``insert_params`` is the left-out columns and the
    kept parameters, the same in both builds (``params`` itself when none is left out)."""
    params = data.draw(st.lists(PARAM, min_size=n * width, max_size=n * width))
    omittable = tuple(sorted(data.draw(st.sets(st.integers(0, width - 1)))))
    zero_groups = tuple(tuple(g) for g in data.draw(st.lists(st.lists(st.integers(0, width - 1), min_size=1,
                                                                        max_size=3, unique=True), max_size=3)))
    omitted = _params_py.omitted_columns(n, params, omittable, zero_groups)
    assert omitted == _omitted_spec(n, params, omittable, zero_groups)
    left = [i for i in range(width) if i not in omitted]
    kept = [params[r * width + i] for r in range(n) for i in left]
    for module in MODULES:
        got = module.insert_params(n, params, omittable, zero_groups, ())
        assert got == (omitted, (), kept) and [type(v) for v in got[2]] == [type(v) for v in kept]
        if not omitted:
            assert got[2] is params


def test_omitted_columns_of_real_chunks() -> None:
    """On the usage columns: one row, a full chunk, every optional column set (params
    unchanged, the same list)."""
    row = UsageRow("r", 1, "p", None, None, None, "openai", "m", 1, 2, 0, 0, 0, True, "ok", 200, True, 5)
    for rows in ([row], [row] * 32):
        params = _params_py.chunk_params(rows)
        expected = _params_py.omitted_columns(len(rows), params, _OMITTABLE, _OMITTABLE_ZERO_GROUPS)
        assert expected  # user, key, token ... None: left out
        for module in MODULES:
            assert module.insert_params(len(rows), params, _OMITTABLE, _OMITTABLE_ZERO_GROUPS, ())[0] == expected
    full = dataclasses.replace(row, user_id="u", key_hash="k", token_id="t", usage_api="a", usage_raw="{}",
                               price_entry="e", reservation_overrun_nano_usd=1, requested_model="r", attempts=1,
                               attempt_trail="200", cache_write_tokens=1, tool_use_prompt_tokens=1)  # fmt: skip
    params = _params_py.chunk_params([full])
    for module in MODULES:
        omitted, shared, bound = module.insert_params(1, params, _OMITTABLE, _OMITTABLE_ZERO_GROUPS, ())
        assert omitted == () and shared == () and bound is params


# -- insert_params: left-out columns, columns bound once per chunk, the parameters ----------

from plano_fast.store.sql import USAGE_WRITE_COLUMNS as _USAGE_WRITE_COLUMNS  # noqa: E402
from plano_fast.store.sqlite import _SHARE_GROUPS  # noqa: E402

# values that compare equal across types (0, 0.0, -0.0, False; 1, True), equal strs that
# are not the same object, None
SHARE_PARAM = st.one_of(
    st.none(), st.sampled_from([0, 0.0, -0.0, False, 1, True, 2**70, "a", "é", ""]),
    st.text(alphabet="ab", max_size=2).map(lambda t: "".join(list(t))),  # a new str object each time
)  # fmt: skip


def _copy(v: object) -> object:
    """An equal value of the same type, a new object where CPython makes one."""
    if type(v) is str:
        return (v + "_")[:-1]
    return int(str(v)) if type(v) is int else v


def _binds_alike(a: object, b: object) -> bool:
    # spelled out apart from the twin: what sqlite3 binds is decided by the exact type
    return a is b or (type(a) in (str, int) and type(b) is type(a) and a == b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 6), width=st.integers(1, 9))
def test_insert_params_match_the_twin(data: st.DataObject, n: int, width: int) -> None:
    rows = data.draw(st.lists(st.lists(SHARE_PARAM, min_size=width, max_size=width), min_size=n, max_size=n))
    if data.draw(st.booleans()):  # columns alike in every row, often
        for i in data.draw(st.sets(st.integers(0, width - 1))):
            for row in rows[1:]:
                row[i] = data.draw(st.sampled_from([rows[0][i], _copy(rows[0][i]), f"{rows[0][i]}"]))
    params = [v for row in rows for v in row]
    columns = st.lists(st.integers(0, width - 1), min_size=1, max_size=3, unique=True)
    omittable = tuple(sorted(data.draw(st.sets(st.integers(0, width - 1)))))
    zero_groups = tuple(tuple(g) for g in data.draw(st.lists(columns, max_size=2)))
    share_groups = tuple(tuple(g) for g in data.draw(st.lists(columns, max_size=3)))
    omitted, shared, bound = _params_py.insert_params(n, params, omittable, zero_groups, share_groups)
    # the specification, spelled out
    assert omitted == _omitted_spec(n, params, omittable, zero_groups)
    expected: set[int] = set()
    for group in share_groups:
        kept = [i for i in group if i not in omitted]
        if n > 1 and all(_binds_alike(params[i], params[r * width + i]) for i in kept for r in range(n)):
            expected.update(kept)
    assert shared == tuple(sorted(expected))
    per_row = [i for i in range(width) if i not in omitted and i not in expected]
    assert bound == [params[i] for i in shared] + [params[r * width + i] for r in range(n) for i in per_row]
    assert [type(v) for v in bound] == [type(params[i]) for i in shared] + [
        type(params[r * width + i]) for r in range(n) for i in per_row
    ]
    for module in MODULES:
        got = module.insert_params(n, params, omittable, zero_groups, share_groups)
        assert got == (omitted, shared, bound) and [type(v) for v in got[2]] == [type(v) for v in bound]
        if not omitted and not shared:
            assert got[2] is params


def test_insert_params_of_real_chunks() -> None:
    """On the usage columns: a chunk of one key's rows binds its scope, model and outcome
    once; a chunk of two projects and two models only its outcome; one row nothing."""
    row = UsageRow("r", 1, "p", None, "k" * 64, None, "openai", "m", 1, 2, 0, 0, 0, True, "ok", 200, True, 5,
                   usage_api="openai_chat", usage_raw="{}", price_entry="openai/m")  # fmt: skip
    rows = [dataclasses.replace(row, request_id=f"r{i}", usage_raw=f'{{"i":{i}}}') for i in range(5)]
    names = _USAGE_WRITE_COLUMNS
    for module in MODULES:
        params = module.chunk_params(rows)
        omitted, shared, bound = module.insert_params(5, params, _OMITTABLE, _OMITTABLE_ZERO_GROUPS, _SHARE_GROUPS)
        assert [names[i] for i in shared] == ["project_id", "key_hash", "provider", "model", "status", "http_status",
                                              "priced", "price_status", "usage_api", "price_entry"]  # fmt: skip
        assert len(bound) == len(shared) + 5 * (len(names) - len(omitted) - len(shared))
        mixed = [dataclasses.replace(r, project_id=f"p{i % 2}", model=f"m{i % 2}") for i, r in enumerate(rows)]
        params = module.chunk_params(mixed)
        _, shared, _ = module.insert_params(5, params, _OMITTABLE, _OMITTABLE_ZERO_GROUPS, _SHARE_GROUPS)
        assert [names[i] for i in shared] == ["status", "http_status", "priced", "price_status"]
        params = module.chunk_params(rows[:1])
        _, shared, _ = module.insert_params(1, params, _OMITTABLE, _OMITTABLE_ZERO_GROUPS, _SHARE_GROUPS)
        assert shared == ()


# -- add_day_sums: what priced rows cost, per (project, user, key, UTC day) --------------

DAY_NS = 86_400 * 10**9
SCOPE = st.sampled_from([None, "p1", "p2"])
SUM_ROWS = st.builds(
    UsageRow,
    request_id=st.just("r"), time_ns=st.one_of(st.integers(0, 3 * DAY_NS), st.integers(-(2**70), 2**70)),
    project_id=SCOPE, user_id=SCOPE, key_hash=SCOPE, token_id=st.none(), provider=st.just("openai"),
    model=st.none(), input_tokens=st.just(1), output_tokens=st.just(1), cache_read_tokens=st.just(0),
    cache_write_tokens=st.just(0), reasoning_tokens=st.just(0), streaming=st.just(False), status=st.just("ok"),
    http_status=st.just(200), priced=st.sampled_from([True, False, 1, 0, None]),
    cost_nano_usd=st.one_of(st.none(), st.integers(0, 10**12), st.integers(0, 2**80)), duration_us=st.just(1),
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(SUM_ROWS, max_size=12), runs=st.integers(1, 4), start=st.dictionaries(
    st.tuples(SCOPE, SCOPE, SCOPE, st.integers(0, 3)), st.integers(0, 10**6), max_size=3))
def test_add_day_sums_match_the_twin(rows: list[UsageRow], runs: int, start: dict[Any, int]) -> None:
    # runs of equal rows (a group commit's rows of one token and day) as well as mixed ones
    rows = [r for r in rows for _ in range(runs)]
    expected = dict(start)
    _add_day_sums_spec(rows, expected)
    for module in MODULES:
        got = dict(start)
        module.add_day_sums(rows, got)
        assert got == expected and list(got) == list(expected)  # the same keys, in the same order
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_add_day_sums_of_another_class_or_an_unset_slot() -> None:
    row = UsageRow("r", 5 * DAY_NS + 1, "p", "u", None, None, "openai", "m", 1, 2, 0, 0, 0, True, "ok", 200, True, 5)
    other: Any = _OtherRow(row)
    for module in MODULES:
        sums: dict[Any, int] = {}
        module.add_day_sums([row, other, row], sums)
        assert sums == {("p", "u", None, 5): 15}
    del row.key_hash
    for module in MODULES:
        with pytest.raises(AttributeError):
            module.add_day_sums([row], {})


# -- normalize_usage: rows checked for writing, repeated request ids dropped ---------------

from plano_fast.store.records import StoreError  # noqa: E402

NORM_ROWS = st.builds(
    UsageRow,
    request_id=st.sampled_from(["a", "b", "c", "d"]), time_ns=st.just(1), project_id=st.none(),
    user_id=st.none(), key_hash=st.none(), token_id=st.none(), provider=st.just("openai"),
    model=st.one_of(st.none(), st.sampled_from(["", "m", "a\x00b", "\x00"])), input_tokens=st.just(1),
    output_tokens=st.just(1), cache_read_tokens=st.just(0), cache_write_tokens=st.just(0),
    reasoning_tokens=st.just(0), streaming=st.just(False), status=st.just("ok"), http_status=st.just(200),
    priced=st.sampled_from([True, False, 1, 0, None, "yes"]),
    cost_nano_usd=st.one_of(st.none(), st.integers(-3, 2**70), st.just(True), st.just(2.5)),
    duration_us=st.just(1), usage_raw=st.one_of(st.none(), st.sampled_from(['{"a":1}', "x\x00y", ""])),
    requested_model=st.one_of(st.none(), st.sampled_from(["alias", "b\x00"])),
)  # fmt: skip


def _outcome(module: ModuleType, rows: list[UsageRow], seen: set[str] | None) -> tuple[object, ...]:
    copies = [dataclasses.replace(r) for r in rows]
    given = None if seen is None else set(seen)
    try:
        out = module.normalize_usage(copies, given)
    except StoreError as exc:
        return ("raised", type(exc), str(exc), copies, given)
    # the same rows (by position: identity of the copies), rewritten the same way
    return ([copies.index(r) for r in out], copies, given)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(NORM_ROWS, max_size=8), seen=st.none() | st.sets(st.sampled_from(["a", "b", "x"])))
def test_normalize_usage_matches_the_twin(rows: list[UsageRow], seen: set[str] | None) -> None:
    expected = _outcome(_params_py, rows, seen)
    for module in MODULES:
        assert _outcome(module, rows, seen) == expected


def test_normalize_usage_of_another_class_or_an_unset_slot() -> None:
    row = UsageRow("r", 1, "p", None, None, None, "openai", "m\x00", 1, 2, 0, 0, 0, True, "ok", 200, True, 5)
    other: Any = _OtherRow(dataclasses.replace(row, request_id="o"))
    for module in MODULES:
        a, b = dataclasses.replace(row), _OtherRow(other)
        assert module.normalize_usage([a, b, dataclasses.replace(a)], None) == [a, b]
        assert a.model == b.model == "m\ufffd"
    del row.usage_raw
    for module in MODULES:
        with pytest.raises(AttributeError):
            module.normalize_usage([row], None)


@pytest.mark.skipif(_compiled_params is None, reason="the extension is not built")
def test_normalize_usage_checks_the_common_rows_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A priced (or unpriced) row with plain text is kept without the twin (it was the
    whole cost once: a bare True compared as a pointer sent every row there)."""
    handed: list[UsageRow] = []

    def twin(rows: list[UsageRow], seen: set[str] | None) -> list[UsageRow]:
        handed.extend(rows)
        return _params_py.normalize_usage(rows, seen)

    monkeypatch.setattr(_compiled_params, "_normalize_usage_py", twin)
    row = UsageRow("r", 1, "p", None, None, None, "openai", "m", 1, 2, 0, 0, 0, True, "ok", 200, True, 5)
    rows = [row, dataclasses.replace(row, request_id="u", priced=False, cost_nano_usd=None, usage_raw="{}"),
            dataclasses.replace(row, request_id="n", model="a\x00")]  # fmt: skip
    assert _compiled_params.normalize_usage(rows, None) == rows
    assert handed == [rows[2]]  # only the one with a NUL to rewrite
