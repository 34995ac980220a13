"""The write-ahead log's line encoding: orjson first, the stdlib for what orjson refuses,
and a reader that reads both and skips a line torn mid-write (unit tests of pure code)."""

from __future__ import annotations

import operator
from dataclasses import astuple
from pathlib import Path

from plano_fast.billing.drain import EVENT_FIELDS as _EVENT_FIELDS
from plano_fast.billing.journal import Journal, _encode_line
from plano_fast.usage import UsageEvent

_fields = operator.attrgetter(*_EVENT_FIELDS)


def _event(request_id: str, raw: str | None) -> UsageEvent:
    return UsageEvent(request_id, 1_733_000_000_000_000_000, "openai", "gpt-4o-mini", True, "ok", 200,
                      input_tokens=12, output_tokens=3, has_usage=True, duration_ms=1.25,
                      usage_raw=raw, usage_api="openai", reservation_overrun_nano_usd=7)


def test_lines_round_trip_through_the_reader_including_what_orjson_refuses(tmp_path: Path) -> None:
    events = [
        _event("r1", '{"prompt_tokens":12}'),
        _event("r2", "naïve — 日本語"),  # non-ASCII: orjson writes it as UTF-8
        _event("r3", "lone \udc80 surrogate"),  # orjson refuses: the stdlib line takes it
        _event("r4", None),
    ]
    path = tmp_path / "j.1.1.wal"
    with open(path, "wb") as fh:
        fh.write(_encode_line([_fields(e) for e in events[:2]]))
        fh.write(_encode_line([_fields(e) for e in events[2:]]))
    read = [e for batch in Journal.read_events(path, 10) for e in batch]
    assert [astuple(e) for e in read] == [astuple(e) for e in events]


def test_a_line_torn_inside_a_utf8_sequence_is_skipped(tmp_path: Path) -> None:
    whole = _encode_line([_fields(_event("r1", "ok"))])
    torn = _encode_line([_fields(_event("r2", "日本語"))])
    cut = torn.index("日".encode()) + 1  # in the middle of a 3-byte character
    path = tmp_path / "j.1.1.wal"
    path.write_bytes(whole + torn[:cut])
    read = [e.request_id for batch in Journal.read_events(path, 10) for e in batch]
    assert read == ["r1"]


def test_a_bound_charge_survives_the_log_and_an_old_line_reads_without_one(tmp_path: Path) -> None:
    """A managed settle that failed journals its event with the hard limit's bound
    (``bound_cost_nano_usd``): replayed, the row is charged it.  A line written before the
    field existed (29 fields) reads as None: priced from its usage, as then."""
    import collections

    from plano_fast.billing.drain import rows_of_events
    from plano_fast.pricing import PricingRegistry
    from plano_fast.store.records import UsageRow

    bound = UsageEvent("r1", 1, "openai", "gpt-4o-mini", True, "usage_missing", 200, bound_cost_nano_usd=90_000)
    old = _event("r2", None)
    path = tmp_path / "j.1.1.wal"
    with open(path, "wb") as fh:
        fh.write(_encode_line([_fields(bound), _fields(old)[:29]]))
    read = [e for batch in Journal.read_events(path, 10) for e in batch]
    assert [e.bound_cost_nano_usd for e in read] == [90_000, None]
    rows: collections.deque[UsageRow] = collections.deque()
    rows_of_events(PricingRegistry(), read, rows)
    assert [(r.cost_nano_usd, r.price_entry) for r in rows] == [
        (90_000, "hard_limit_bound"), (12 * 150 + 3 * 600, "openai/gpt-4o-mini")]
