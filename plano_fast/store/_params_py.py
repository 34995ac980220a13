"""The SQLite writer's parameters of a chunk of usage rows, in plain Python: the
specification of the compiled ``plano_fast.store._params`` (its twin).  Chosen in
``plano_fast.store.sqlite`` (``_chunk_params``), never imported from here elsewhere
(tests and benchmarks do, to run both).

``chunk_params(rows)``: ``usage_params`` of each row, flat: the parameters of
``_multi_insert(len(rows))``, in ``USAGE_WRITE_COLUMNS`` order.

``insert_params(n, params, omittable, zero_groups, share_groups)``: which columns a chunk's
INSERT leaves out (``omitted_columns``: each of ``omittable`` None in all ``n`` rows, each
group of ``zero_groups`` == 0 in all of them), then which kept columns of ``share_groups``
bind once for the whole chunk (each group's kept columns bind the same value in every row
of a chunk of two rows or more), and the parameters: the shared values once, in column
order, then each row's other kept values.

``add_day_sums(rows, sums)``: ``plano_fast.store.sql.add_day_sums`` (that function is this
twin's; the compiled one reads the slots in place and sums a run of rows of one scope and
day before it touches the dict).

``normalize_usage(rows, seen=None)``: ``plano_fast.store.sql.normalize_usage`` (likewise;
the compiled one checks the common rows in place and hands any other to it).
"""

from __future__ import annotations

from collections.abc import Sequence

from plano_fast.store.records import PRICE_STATUS_PARTIAL, PRICE_STATUS_PENDING, PRICE_STATUS_PRICED, UsageRow
from plano_fast.store.sql import add_day_sums, normalize_usage, written_price_status

__all__ = ["add_day_sums", "chunk_params", "insert_params", "normalize_usage", "omitted_columns", "same_binding",
           "usage_params"]


def usage_params(row: UsageRow) -> tuple[object, ...]:
    # Booleans are bound as the ints SQLite stores anyway: sqlite3 binds only exact int,
    # float, str and None-free types directly and sends the rest through its adapter
    # lookup, which formats and discards an AttributeError per value (~2,000 instructions).
    priced = 1 if row.priced else 0
    return (
        row.request_id, row.time_ns, row.project_id, row.user_id, row.key_hash, row.token_id,
        row.provider, row.model, row.input_tokens, row.output_tokens, row.cache_read_tokens,
        row.cache_write_tokens, row.reasoning_tokens, 1 if row.streaming else 0, row.status,
        row.http_status, priced, row.cost_nano_usd if priced else None, row.duration_us,
        written_price_status(row), row.tool_use_prompt_tokens, row.cache_write_1h_tokens,
        row.audio_input_tokens, row.audio_output_tokens, row.usage_api, row.usage_raw,
        row.price_entry, row.reservation_overrun_nano_usd, row.requested_model, row.attempts,
        row.attempt_trail,
    )  # fmt: skip


def chunk_params(rows: Sequence[UsageRow]) -> list[object]:
    """The parameters of ``_multi_insert(len(rows))``: ``usage_params`` of each row, flat."""
    params: list[object] = []
    add = params.extend
    for r in rows:
        if r.priced is True:  # the common shapes, without the per-row tuple and calls
            add((
                r.request_id, r.time_ns, r.project_id, r.user_id, r.key_hash, r.token_id,
                r.provider, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens,
                r.cache_write_tokens, r.reasoning_tokens, 1 if r.streaming else 0, r.status,
                r.http_status, 1, r.cost_nano_usd, r.duration_us,
                PRICE_STATUS_PARTIAL if r.price_status == PRICE_STATUS_PARTIAL else PRICE_STATUS_PRICED,
                r.tool_use_prompt_tokens, r.cache_write_1h_tokens, r.audio_input_tokens,
                r.audio_output_tokens, r.usage_api, r.usage_raw, r.price_entry,
                r.reservation_overrun_nano_usd, r.requested_model, r.attempts, r.attempt_trail,
            ))  # fmt: skip
        elif r.priced is False:
            add((
                r.request_id, r.time_ns, r.project_id, r.user_id, r.key_hash, r.token_id,
                r.provider, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens,
                r.cache_write_tokens, r.reasoning_tokens, 1 if r.streaming else 0, r.status,
                r.http_status, 0, None, r.duration_us, PRICE_STATUS_PENDING,
                r.tool_use_prompt_tokens, r.cache_write_1h_tokens, r.audio_input_tokens,
                r.audio_output_tokens, r.usage_api, r.usage_raw, r.price_entry,
                r.reservation_overrun_nano_usd, r.requested_model, r.attempts, r.attempt_trail,
            ))  # fmt: skip
        else:
            add(usage_params(r))
    return params


def omitted_columns(
    n: int, params: list[object], omittable: tuple[int, ...], zero_groups: tuple[tuple[int, ...], ...]
) -> tuple[int, ...]:
    """The columns left out of the INSERT of ``n`` rows whose ``chunk_params`` are
    ``params``: ascending ``omittable`` ones None in every row, then whole ``zero_groups``
    == 0 in every row, in order (``insert_params``' first step; the compiled
    ``insert_params`` tests each column in place, in the same order)."""
    width = len(params) // n if n else 0
    omitted = tuple([i for i in omittable if params[i::width].count(None) == n])
    for group in zero_groups:
        if all([params[i::width].count(0) == n for i in group]):
            omitted += group
    return omitted


def same_binding(a: object, b: object) -> bool:
    """Whether sqlite3 binds ``a`` and ``b`` alike: the same object, or an exact str or
    int equal to one of the same type (not 1 and True, 0 and 0.0, 0.0 and -0.0)."""
    return a is b or (type(a) is type(b) and (type(a) is str or type(a) is int) and a == b)


def insert_params(
    n: int,
    params: list[object],
    omittable: tuple[int, ...],
    zero_groups: tuple[tuple[int, ...], ...],
    share_groups: tuple[tuple[int, ...], ...],
) -> tuple[tuple[int, ...], tuple[int, ...], list[object]]:
    """The columns left out of the INSERT of ``n`` rows whose ``chunk_params`` are
    ``params`` (``omitted_columns``), the kept columns bound once for all rows (ascending:
    the kept columns of each of ``share_groups`` whose values bind alike in every row,
    when ``n`` >= 2), and the parameters: the shared columns' values (row 0's) in that
    order, then each row's other kept values (``params`` itself when nothing is left out
    or shared)."""
    omitted = omitted_columns(n, params, omittable, zero_groups)
    width = len(params) // n if n else 0
    shared: list[int] = []
    if n > 1:
        for group in share_groups:
            columns = [i for i in group if i not in omitted]
            if all(same_binding(params[i], params[r * width + i]) for i in columns for r in range(1, n)):
                shared += columns
    shared_columns = tuple(sorted(set(shared)))
    if not omitted and not shared_columns:
        return omitted, shared_columns, params
    per_row = [i for i in range(width) if i not in omitted and i not in shared_columns]
    return omitted, shared_columns, [params[i] for i in shared_columns] + [
        params[r * width + i] for r in range(n) for i in per_row
    ]
