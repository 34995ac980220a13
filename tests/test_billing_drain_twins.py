"""The drain's twins (plano_fast.billing._drain, compiled, and _drain_py, pure).

Pricing: against each other and against the registry's own ``quote`` (the pricer before either:
``TokenCounts`` in, ``Quote`` out): every entry of the vendored price table (tiers, cache
reads and writes, 1h writes, audio), the usage counts read from recorded provider traffic,
custom prices, and generated counts and prices up to and past the compiled path's limits
(2**62 per factor, a cost past 2**63), where it hands the event to the twin.  Equal
results, or the same exception type.

Rows and journal fields: the rows ``rows_of_events`` builds (every slot, the types too) and
the tuple ``event_fields`` reads, on generated events, equal between the twins and to
``UsageRow.from_event`` / ``dataclasses.astuple``; an event with an unset slot or of
another class gets the twin's behaviour (its AttributeError, or ``getattr``)."""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys
import textwrap
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast.billing import _drain_py, drain
from plano_fast.pricing import ModelPrice, PriceTier, PricingRegistry, TokenCounts, load_default_prices
from plano_fast.store.records import UsageRow
from plano_fast.usage import (
    STATUS_CLIENT_ABANDONED,
    STATUS_NOT_BILLABLE,
    STATUS_OK,
    STATUS_UPSTREAM_ERROR,
    STATUS_USAGE_MISSING,
    UsageEvent,
)

try:
    from plano_fast.billing import _drain as _compiled_drain
except ImportError:  # the extension is not built: only the twin is tested
    _compiled_drain = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled_drain is not None, "the compiled drain was not built"
    assert drain.DRAIN_IMPLEMENTATION == "cython"

MODULES: list[ModuleType] = [_drain_py] + ([_compiled_drain] if _compiled_drain is not None else [])
IDS = ["python", "cython"][: len(MODULES)]
TABLE = load_default_prices()
COUNT_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "cache_write_1h_tokens", "audio_input_tokens", "audio_output_tokens", "web_search_requests")  # fmt: skip


def _event(provider: str, model: str | None, counts: tuple[Any, ...] = (1200, 300, 0, 0, 0, 0, 0, 0), *,
           status: str = STATUS_OK, http_status: int = 200, has_usage: bool = True,
           project_id: str | None = "p1") -> UsageEvent:  # fmt: skip
    event = UsageEvent("r", 1, provider, model, False, status, http_status, has_usage=has_usage,
                       project_id=project_id)  # fmt: skip
    for name, value in zip(COUNT_FIELDS, counts):
        setattr(event, name, value)
    return event


def _reference(pricing: PricingRegistry, event: UsageEvent) -> tuple[int, bool, str] | None:
    """What the registry's ``quote`` (TokenCounts in) says the event costs."""
    inp, out, cr, cw, cw1h, ain, aout, ws = (getattr(event, name) for name in COUNT_FIELDS)
    assert event.model is not None
    quote = pricing.quote(event.provider, event.model, event.project_id,
                          TokenCounts(inp, out, cr, cw, 0, cw1h, ain, aout, web_search_requests=ws),
                          service_tier=event.service_tier)  # fmt: skip
    return None if quote is None else (quote.cost_nano_usd, quote.partial, quote.entry)


def _outcome(module: ModuleType, pricing: PricingRegistry, event: UsageEvent) -> Any:
    try:
        return module.price_of_event(pricing, event)
    except Exception as exc:  # noqa: BLE001 - the type is the result compared
        return type(exc)


def _agree(pricing: PricingRegistry, event: UsageEvent) -> Any:
    outcomes = [_outcome(module, pricing, event) for module in MODULES]
    assert all(o == outcomes[0] for o in outcomes), (event, outcomes)
    result = outcomes[0]
    if type(result) is tuple:  # the exact type too: a cost is an int, partial a bool
        assert [type(v) for v in result] == [int, bool, str], result
    return result


COUNT_MIXES = [
    (1200, 300, 0, 0, 0, 0, 0, 0),
    (250_000, 4_000, 64_000, 10_000, 2_000, 0, 0, 0),  # past every tier threshold, cache writes
    (300_000, 900, 0, 0, 0, 5_000, 700, 0),  # audio in and out
    (5, 0, 9, 7, 9, 3, 1, 0),  # parts larger than their totals (clamped)
    (1_000, 10, 1, 1, 1, 1, 1, 0),  # one token of each part: partial wherever a price is absent
    (1_000, 10, 0, 0, 0, 1, 0, 0),  # ... one part at a time
    (1_000, 10, 0, 1, 1, 0, 0, 0),
    (1_000, 10, 0, 1, 0, 0, 0, 0),
    (1_000, 10, 1, 0, 0, 0, 0, 0),
    (1_000, 10, 0, 0, 0, 0, 1, 0),
    (999_999, 1, 0, 0, 0, 0, 0, 0),  # half-way costs: rounding
    (0, 0, 0, 0, 0, 0, 0, 0),
    (1_000, 10, 0, 0, 0, 0, 0, 3),  # web searches: per request where priced, else partial
    (250_000, 4_000, 64_000, 10_000, 2_000, 0, 0, 2**40),
]


@pytest.mark.parametrize("counts", COUNT_MIXES, ids=str)
def test_every_vendored_price_agrees_with_the_registry_quote(counts: tuple[int, ...]) -> None:
    pricing = PricingRegistry()
    tiered = 0
    for provider, model in TABLE:
        event = _event(provider, model, counts)
        for _ in range(2):  # the first call resolves (and caches), the second hits the cache
            assert _agree(pricing, event) == _reference(pricing, event), (provider, model)
        tiered += bool(TABLE[provider, model].tiers)
    assert tiered > 0 and len(TABLE) > 500  # the table has what the cases are for


@pytest.mark.parametrize("custom", [False, True], ids=["table", "custom"])
def test_a_slice_of_repeated_models_prices_every_event_as_the_registry(custom: bool) -> None:
    """``rows_of_events`` keeps the last (provider, model)'s price within a call: a slice
    of every vendored model with each count mix, the same pair in runs and interleaved,
    unresolved before the call (its first event resolves it), with tiers and web searches
    among them, makes each twin's rows and the registry's quote of every event."""
    def registry() -> PricingRegistry:  # a fresh one per twin: nothing resolved yet
        pricing = PricingRegistry()
        if custom:
            pricing.set_overrides({"gpt-4o": ModelPrice(7_000, 9_000, None, None)},
                                  {("p1", "gpt-4o-mini"): ModelPrice(1, 2, 3, 4)})  # fmt: skip
        return pricing

    pairs = list(TABLE)[::7]
    events = [_event(p, m, c) for p, m in pairs for c in COUNT_MIXES[:4]]  # runs of one pair
    events += [_event(p, m, c) for c in COUNT_MIXES for p, m in pairs[:40]]  # interleaved
    events += [_event("openai", "gpt-4o-mini", c, project_id=project) for c in COUNT_MIXES
               for project in ("p1", "p2", None)]  # fmt: skip
    results = [_rows(module, registry(), events) for module in MODULES]
    assert all(r == results[0] for r in results)
    assert results[0][1] == _reference_rows(registry(), events)


def test_recorded_provider_usage_prices_alike() -> None:
    """The usage read from recorded traffic (tests/test_scan_fixtures.py's expectations),
    priced as its own model on every provider of the table that lists it."""
    cassettes = pytest.importorskip("tests.test_scan_fixtures").CASSETTES
    pricing = PricingRegistry()
    priced = 0
    for usage in cassettes.values():
        inp, out, cr, cw, _reasoning, has_usage, model, _err, _tool, cw1h, ain, aout, _searches, tier = usage
        if not has_usage:
            continue
        for provider in ("openai", "anthropic", "gemini", "mistral", "deepseek", "groq", "openrouter"):
            event = _event(provider, model, (inp, out, cr, cw, cw1h, ain, aout))
            event.service_tier = tier  # (the recorded gpt-5 stream was served at flex)
            expected = _reference(pricing, event)
            assert _agree(pricing, event) == expected
            priced += expected is not None
    assert priced > 10


def test_statuses_missing_usage_and_no_model() -> None:
    pricing = PricingRegistry()
    cases = [
        (_event("openai", "gpt-4o", status=STATUS_NOT_BILLABLE), (0, False, "")),
        (_event("openai", "gpt-4o", status=STATUS_CLIENT_ABANDONED, has_usage=False), (0, False, "")),
        (_event("openai", "gpt-4o", status=STATUS_UPSTREAM_ERROR, http_status=500, has_usage=False), (0, False, "")),
        (_event("openai", "gpt-4o", status=STATUS_USAGE_MISSING, has_usage=False), None),
        (_event("openai", None), None),
        (_event("openai", "no-such-model-anywhere"), None),
    ]  # fmt: skip
    for event, expected in cases:
        assert _agree(pricing, event) == expected


def test_an_event_charged_at_its_bound_keeps_that_charge() -> None:
    """A managed settle that failed hands its event to the journaled path with the charge
    it settled at (``bound_cost_nano_usd``): the drain writes that charge, whatever the
    status or usage (a missing usage would otherwise leave the row unpriced)."""
    pricing = PricingRegistry()
    for event in (_event("openai", "gpt-4o", status=STATUS_USAGE_MISSING, has_usage=False),
                  _event("openai", None, status=STATUS_USAGE_MISSING, has_usage=False),
                  _event("openai", "gpt-4o", (40, 1, 0, 0, 0, 0, 0))):  # fmt: skip
        event.bound_cost_nano_usd = 90_000
        assert _agree(pricing, event) == (90_000, False, "hard_limit_bound")
        for module in MODULES:
            out: collections.deque[UsageRow] = collections.deque()
            assert module.rows_of_events(pricing, [event], out) == 0
            assert (out[0].priced, out[0].cost_nano_usd, out[0].price_status, out[0].price_entry) == (
                True, 90_000, "priced", "hard_limit_bound")


def test_compiled_rows_of_scalars_leave_the_cyclic_gc() -> None:
    """Rows wait for the store by the hundred: the compiled drain takes a row whose fields
    are all scalars out of the cyclic GC (plano_fast/_slots.pxd), the twin's rows are
    tracked as any object; one holding anything else stays tracked."""
    import gc

    if _compiled_drain is None:
        return
    pricing = PricingRegistry()
    event = _event("openai", "gpt-4o")
    out: collections.deque[UsageRow] = collections.deque()
    _compiled_drain.rows_of_events(pricing, [event], out)
    assert not gc.is_tracked(out[0]) and _rows(_compiled_drain, pricing, [event]) == _rows(_drain_py, pricing, [event])
    event.usage_raw = ["not", "a", "scalar"]  # type: ignore[assignment]
    _compiled_drain.rows_of_events(pricing, [event], out)
    assert gc.is_tracked(out[1])


def test_custom_prices_project_then_global() -> None:
    pricing = PricingRegistry()
    pricing.set_overrides(
        {"gpt-4o": ModelPrice(1_000_000, 2_000_000, None, None, source="custom")},
        {("p1", "gpt-4o"): ModelPrice(3_000_000_000, 9_000_000_000, 1, None, source="custom")},
    )
    counts = (10_000, 2_000, 4_000, 500, 0, 0, 0)
    project = _agree(pricing, _event("openai", "gpt-4o", counts))
    other = _agree(pricing, _event("openai", "gpt-4o", counts, project_id="p2"))
    # (10,000 - 4,000 read - 500 written) x 3e9 + 4,000 x 1 + 500 written at the input price
    # (none of its own: partial) + 2,000 x 9e9, per 1M tokens, rounded half up
    assert project == (36_000_000, True, "custom")
    # every prompt token at 1e6 (no cache prices: partial), 2,000 output at 2e6
    assert other == (14_000, True, "custom")
    assert pricing.quote("openai", "gpt-4o", "p1", TokenCounts(10_000, 2_000, 4_000, 500, 0)) is not None


INT64 = 2**63
BIG = st.sampled_from([2**62 - 1, 2**62, 2**62 + 1, INT64 - 1, INT64, 2**64, 10**30])
COUNT = st.one_of(st.integers(0, 3), st.integers(0, 2_000_000), st.integers(0, 2**40), BIG, st.integers(-5, -1),
                  st.sampled_from([True, 1.0, None, "7"]))  # fmt: skip
RATE = st.one_of(st.integers(0, 10**12), BIG)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.tuples(*[COUNT] * 8),
    rates=st.tuples(RATE, RATE, st.none() | RATE, st.none() | RATE, st.none() | RATE, st.none() | RATE,
                    st.none() | RATE, st.none() | RATE),  # fmt: skip
    tier=st.none() | st.tuples(st.integers(0, 400_000), RATE, RATE, *[st.none() | RATE] * 5),
    custom=st.booleans(),
)
def test_generated_counts_and_prices_agree(
    counts: tuple[Any, ...], rates: tuple[Any, ...], tier: tuple[Any, ...] | None, custom: bool
) -> None:
    in_p, out_p, cr_p, cw_p, cw1h_p, ain_p, aout_p, ws_p = rates
    tiers = () if tier is None else (PriceTier(*tier),)
    price = ModelPrice(in_p, out_p, cr_p, cw_p, tiers, "gen", cw1h_p, ain_p, aout_p, ws_p)
    if custom:
        pricing = PricingRegistry({})
        pricing.set_overrides({"m": price}, {})
    else:
        pricing = PricingRegistry({("gen", "m"): price})
    event = _event("gen", "m", counts)
    result = _agree(pricing, event)  # resolves
    assert _agree(pricing, event) == result  # cached
    if all(type(c) is int and c >= 0 for c in counts):
        assert result == _reference(pricing, event)
    else:
        assert result in (TypeError, ValueError)


# ------------------------------------------------------------------------- rows and fields

TEXT = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["ok", "lone \udc80", "日本語"]))
DURATION = st.one_of(
    st.floats(allow_nan=True, allow_infinity=False), st.floats(0, 10**7),
    st.sampled_from([0.0, 0.0005, 0.0015, 0.0025, 2.5e-4, 1e15, 9.3e15, -1.0]), st.integers(-5, 10**6),
)  # fmt: skip
SMALL = st.one_of(st.integers(0, 3), st.integers(0, 10**6))
EVENTS = st.builds(
    UsageEvent,
    request_id=st.text(min_size=1, max_size=8), time_ns=st.integers(0, 2**63 - 1),
    provider=st.sampled_from(["openai", "anthropic", "gemini", "gen"]),
    model=st.one_of(st.none(), st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro", "m"])),
    streaming=st.booleans(),
    status=st.sampled_from([STATUS_OK, STATUS_UPSTREAM_ERROR, STATUS_USAGE_MISSING, STATUS_NOT_BILLABLE]),
    http_status=st.sampled_from([200, 400, 500]), input_tokens=SMALL, output_tokens=SMALL,
    cache_read_tokens=SMALL, cache_write_tokens=SMALL, reasoning_tokens=SMALL, has_usage=st.booleans(),
    project_id=TEXT, key_hash=TEXT, user_id=TEXT, token_id=TEXT, duration_ms=DURATION,
    wire_format=st.sampled_from(["openai", "anthropic"]), tool_use_prompt_tokens=SMALL,
    cache_write_1h_tokens=SMALL, audio_input_tokens=SMALL, audio_output_tokens=SMALL, usage_raw=TEXT,
    usage_api=TEXT, reservation_overrun_nano_usd=st.one_of(st.just(0), SMALL, st.none()),
    requested_model=TEXT, attempts=st.integers(0, 3), attempt_trail=TEXT,
    bound_cost_nano_usd=st.one_of(st.none(), st.none(), SMALL),
)  # fmt: skip


def _slots(row: UsageRow) -> list[tuple[Any, type]]:
    return [(getattr(row, f.name), type(getattr(row, f.name))) for f in dataclasses.fields(UsageRow)]


def _rows(module: ModuleType, pricing: PricingRegistry, events: list[UsageEvent]) -> Any:
    out: collections.deque[UsageRow] = collections.deque()
    try:
        unpriced = module.rows_of_events(pricing, events, out)
    except Exception as exc:  # noqa: BLE001 - the type is the result compared
        return type(exc), [_slots(r) for r in out]
    return unpriced, [_slots(r) for r in out]


def _reference_rows(pricing: PricingRegistry, events: list[UsageEvent]) -> list[list[tuple[Any, type]]]:
    """``UsageRow.from_event`` of each event, priced by the registry's quote."""
    out = []
    for e in events:
        priced = None
        if e.bound_cost_nano_usd is not None:
            priced = (e.bound_cost_nano_usd, False, "hard_limit_bound")
        elif e.status in _drain_py.FREE_STATUSES or (not e.has_usage and e.http_status >= 400):
            priced = (0, False, "")
        elif e.has_usage and e.model is not None:
            priced = _reference(pricing, e)
        if priced is None:
            row = UsageRow.from_event(e)
        else:
            row = UsageRow.from_event(e, cost_nano_usd=priced[0], price_status="priced_partial" if priced[1] else "priced",
                                      price_entry=priced[2] or None)  # fmt: skip
        out.append(_slots(row))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(EVENTS, max_size=6))
def test_generated_events_make_the_same_rows_and_journal_fields(events: list[UsageEvent]) -> None:
    pricing = PricingRegistry({**TABLE, ("gen", "m"): ModelPrice(3_000_000_000, 9, None, 7)})
    results = [_rows(module, pricing, events) for module in MODULES]
    assert all(r == results[0] for r in results), results
    unpriced, made = results[0]
    if unpriced in (OverflowError, ValueError):  # round() of a huge duration: the twin's error
        return
    assert made == _reference_rows(pricing, events)
    assert unpriced == sum(1 for r in made if r[16][0] is False)  # the ``priced`` slot
    for e in events:
        fields = [module.event_fields(e) for module in MODULES]
        assert all(f == dataclasses.astuple(e) for f in fields)
        assert all(type(f) is tuple for f in fields)
    _same_wal_lines(events)
    rows: collections.deque[UsageRow] = collections.deque()
    _drain_py.rows_of_events(pricing, events, rows)
    _same_row_totals(rows)


def _same_row_totals(rows: collections.deque[Any]) -> None:
    """``row_totals`` of every tail of ``rows``, in each twin: the same partial count and
    the same costs per (provider, model), in the same order, as summing them by hand."""
    for start in range(len(rows) + 1):
        expected: dict[tuple[str, str | None], int] = {("seen", None): 1}
        partial = 0
        for row in list(rows)[start:]:
            partial += row.price_status == "priced_partial"
            if row.cost_nano_usd:
                key = (row.provider, row.model)
                expected[key] = expected.get(key, 0) + row.cost_nano_usd
        for module in MODULES:
            costs: dict[tuple[str, str | None], int] = {("seen", None): 1}
            assert module.row_totals(rows, start, costs) == partial
            assert list(costs.items()) == list(expected.items())


def test_row_totals_of_other_rows_take_the_twins_path() -> None:
    """A row of another class, or with an unset slot, midway: the twin's sum (or error)."""
    pricing = PricingRegistry()
    events = [_event("openai", "gpt-4o-mini", (1000, 10, 0, 0, 0, 0, 0, 0)), _event("openai", "gpt-4o"),
              _event("gemini", "gemini-2.5-pro", (250_000, 4_000, 64_000, 0, 0, 0, 0, 0))]  # fmt: skip
    rows: collections.deque[Any] = collections.deque()
    _drain_py.rows_of_events(pricing, events, rows)
    rows.insert(1, dataclasses.replace(rows[0]))
    other = _OtherEvent(events[0])  # an object with the fields, not a UsageRow
    other.cost_nano_usd, other.price_status, other.model = 5, "priced_partial", "m"
    rows.insert(2, other)
    _same_row_totals(rows)
    del rows[3].cost_nano_usd
    for module in MODULES:
        with pytest.raises(AttributeError):
            module.row_totals(rows, 0, {})


def _same_wal_lines(events: list[Any]) -> None:
    """Each twin's write-ahead log line of every slice of ``events``: the same bytes, those
    of ``encode_line`` of the event tuples (orjson, else the stdlib encoder)."""
    # Each event's tuple made once, not once per slice holding it (``astuple`` was most of
    # this helper's time); no twin is called before the tuples are made.
    tuples = [dataclasses.astuple(e) if isinstance(e, UsageEvent) else _drain_py.event_fields(e) for e in events]
    for start in range(len(events) + 1):
        for stop in range(start, len(events) + 1):
            expected = _drain_py.encode_line(tuples[start:stop])
            for module in MODULES:
                assert module.wal_line(events, start, stop) == expected, (module, start, stop)


JSON_TEXT = st.one_of(TEXT, st.text(alphabet=st.characters(max_codepoint=0x2100), max_size=40),
                      st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
                      st.sampled_from(['{"prompt_tokens":12,"x":"a\\"b"}', "\x00\x1f\x7f\b\t\n\f\r", "\u2028"]))
DURATION_NS = st.integers(-(10**16), 10**16).map(lambda ns: ns / 1e6)
WAL_EVENTS = st.builds(
    UsageEvent,
    request_id=JSON_TEXT, time_ns=st.one_of(st.integers(0, 2**63 - 1), st.integers(-(2**65), 2**65)),
    provider=JSON_TEXT, model=JSON_TEXT, streaming=st.booleans(), status=JSON_TEXT,
    http_status=st.sampled_from([200, 400, 500]), input_tokens=st.integers(-(2**64), 2**64),
    duration_ms=st.one_of(DURATION, DURATION_NS, st.floats()), usage_raw=JSON_TEXT,
    reservation_overrun_nano_usd=st.one_of(st.integers(), st.none()),
    bound_cost_nano_usd=st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1)),
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(WAL_EVENTS, max_size=4))
def test_generated_events_make_the_same_wal_lines(events: list[UsageEvent]) -> None:
    """Strings with escapes and every UTF-8 length (and lone surrogates), integers in and
    past 64 bits, durations of every kind (n / 1e6 as the settle makes them, NaN, the
    infinities, tiny and huge ones): the compiled line is the twin's, byte for byte."""
    _same_wal_lines(events)


def test_wal_lines_at_the_edges_of_the_compiled_writer() -> None:
    """Values on both sides of what the compiled writer takes itself (see ``_put_value``):
    the line is always the twin's, and reads back as the events."""
    base = _event("openai", "gpt-4o")
    events: list[Any] = []
    for ms in (0.0, -0.0, 1e-5, 9e-6, 1e-6, 0.1, 1.25, 999999999.999999, 1e9, 1e10, 123456789 / 1e6, -2.5,
               0.1 + 0.2, float("nan"), float("inf"), -float("inf"), 5e-324):
        event = dataclasses.replace(base, duration_ms=ms)
        events.append(event)
    for n in (2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1):
        events.append(dataclasses.replace(base, time_ns=n))
    events.append(dataclasses.replace(base, usage_raw="lone \udc80"))
    events.append(dataclasses.replace(base, usage_raw="".join(map(chr, range(0x80))) + "é日😀"))
    events.append(_OtherEvent(base))
    for event in events:
        _same_wal_lines([event])
    _same_wal_lines(events[:3])
    for module in MODULES:
        assert module.wal_line(events, 0, len(events)) == _drain_py.wal_line(events, 0, len(events))
        assert module.wal_line(events, 2, 1) == b"[]\n"
        assert module.wal_line(events, 0, 99) == _drain_py.wal_line(events, 0, 99)
    unset = _event("openai", "gpt-4o-mini")
    del unset.attempt_trail
    for module in MODULES:
        with pytest.raises(AttributeError):
            module.wal_line([base, unset], 0, 2)


def test_durations_round_as_the_twin_does() -> None:
    """round(ms * 1000) half to even, 0 up to 0.5 and for NaN; an infinite one raises."""
    pricing = PricingRegistry()
    for ms in (0.0, 0.0005, 0.0015, 0.0025, 0.00051, 1.0000005, 123.456, 9.2e15, 1e16, float("nan"), 3, 10**20):
        event = _event("openai", "gpt-4o")
        event.duration_ms = ms
        made = [_rows(module, pricing, [event]) for module in MODULES]
        assert all(m == made[0] for m in made), (ms, made)
        assert made[0][1][0][18] == _slots(UsageRow.from_event(event))[18]
    event = _event("openai", "gpt-4o")
    event.duration_ms = float("inf")
    assert all(_rows(module, pricing, [event])[0] is OverflowError for module in MODULES)


class _OtherEvent:
    """Not a UsageEvent: the compiled drain must read it through getattr."""

    def __init__(self, event: UsageEvent) -> None:
        for f in dataclasses.fields(UsageEvent):
            setattr(self, f.name, getattr(event, f.name))


def test_an_unset_slot_or_another_class_takes_the_twins_path() -> None:
    pricing = PricingRegistry()
    base = _event("openai", "gpt-4o-mini", (1000, 10, 0, 0, 0, 0, 0))
    other: Any = _OtherEvent(base)
    made = [_rows(module, pricing, [other]) for module in MODULES]
    assert all(m == made[0] for m in made) and made[0][0] == 0
    assert made[0][1] == _rows(_drain_py, pricing, [base])[1]
    assert all(module.event_fields(other) == dataclasses.astuple(base) for module in MODULES)
    unset = _event("openai", "gpt-4o-mini")
    del unset.attempt_trail
    assert all(_rows(module, pricing, [unset])[0] is AttributeError for module in MODULES)
    for module in MODULES:
        with pytest.raises(AttributeError):
            module.event_fields(unset)
    del unset.input_tokens
    assert all(_outcome(module, pricing, unset) is AttributeError for module in MODULES)


# A finalizer that unsets an event's slot, run by the GC that allocating the result tuple
# starts (3.11 collects inside the allocation once generation 0 passes its threshold).
_SLOT_UNSET_BY_GC = textwrap.dedent("""
    import gc
    from plano_fast.billing import _drain
    from plano_fast.usage import UsageEvent

    event = UsageEvent("r", 1, "openai", "gpt-4o-mini", False, "ok", 200, has_usage=True)
    ran = []

    class Unsetter:
        def __del__(self):
            del event.attempt_trail
            ran.append(True)

    gc.collect()
    gc.disable()
    cycle = Unsetter()
    cycle.me = cycle
    del cycle
    gc.set_threshold(1)
    gc.enable()
    try:
        _drain.event_fields(event)
    except AttributeError:
        print("AttributeError", ran)
    else:
        print("no error", ran)
""")


@pytest.mark.skipif(_compiled_drain is None, reason="the compiled drain is not built")
def test_a_slot_unset_while_the_tuple_is_made_takes_the_twins_path() -> None:
    """Was: ``event_fields`` checked the 29 slots, then made the tuple (which can run the GC
    and a finalizer) and read them again: a slot emptied in between was read as NULL (a
    crash).  Now each slot is tested as it is read, after the tuple is made: the twin's
    AttributeError.  In a child process, since the failure is a segfault."""
    done = subprocess.run([sys.executable, "-c", _SLOT_UNSET_BY_GC], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["AttributeError", "[True]"], done.stdout
