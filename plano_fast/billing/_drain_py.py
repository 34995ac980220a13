"""The flusher's per-event work in plain Python: the specification of the compiled
``plano_fast.billing._drain`` (its twin), and the path it hands every unusual event to.

* ``price_of_event(pricing, event)``: ``(cost_nano_usd, partial, entry)``, or None when the
  event cannot be priced: an event charged at a managed hard limit's bound
  (``bound_cost_nano_usd`` set) costs that, entry ``BOUND_PRICE_ENTRY``; free statuses
  cost nothing, an event without usage costs nothing when the provider refused it (HTTP
  >= 400) and is unpriced otherwise, an event without a model is unpriced, anything else is ``PricingRegistry.price_counts`` of its counts (which
  raises ``TokenCounts``' TypeError / ValueError for counts that are not non-negative ints).
* ``rows_of_events(pricing, events, out)``: each event priced and turned into its
  ``UsageRow`` (``UsageRow.from_event``), appended to ``out``; returns how many are unpriced.
* ``event_fields(event)``: the event's fields as a tuple, in ``UsageEvent`` field order
  (what the write-ahead log writes and ``UsageEvent(*fields)`` reads back).
* ``row_totals(rows, start, costs)``: for the rows of ``rows`` from index ``start`` on
  (those a drain slice just appended), each nonzero cost added to ``costs[(provider,
  model)]`` (pairs in order of first appearance); returns how many are priced partial.
* ``wal_line(events, start, stop)``: one write-ahead log line, ``events[start:stop]``'s
  fields (``event_fields``) as a JSON list of lists plus a newline, encoded by orjson (the
  stdlib encoder takes what orjson refuses: a lone surrogate, an integer past 64 bits).
  The compiled twin writes the same bytes.

Choose between the twins through ``plano_fast.billing.rows`` / ``journal``, never here.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import operator
from collections.abc import Iterable
from typing import Final

import orjson

from plano_fast.pricing import PricingRegistry
from plano_fast.store.records import PRICE_STATUS_PARTIAL, PRICE_STATUS_PRICED, UsageRow
from plano_fast.usage import STATUS_CLIENT_ABANDONED, STATUS_GATEWAY_STOPPED, STATUS_NOT_BILLABLE, UsageEvent

FREE_STATUSES: Final = frozenset((STATUS_NOT_BILLABLE, STATUS_CLIENT_ABANDONED, STATUS_GATEWAY_STOPPED))
"""Statuses that cost nothing: not an LLM call; abandoned before it was forwarded."""

FREE: Final = (0, False, "")

BOUND_PRICE_ENTRY: Final = "hard_limit_bound"
"""``price_entry`` of a row charged at its hard limit's bound (usage missing or cut short):
its cost is ``plano_fast.billing.rows.charge_of_incomplete``'s, not a price table entry's
quote of its usage."""

EVENT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(UsageEvent))

event_fields: Final = operator.attrgetter(*EVENT_FIELDS)
"""One C call per event (measured: 17% less than building the tuple in Python)."""

_ENCODE_STD: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def encode_line(fields: list[tuple[object, ...]]) -> bytes:
    """One journal line of field tuples.  orjson is ~10x cheaper than the stdlib encoder
    here (callgrind: the stdlib encoder was ~23k instructions per event); the stdlib
    encoder takes what orjson refuses (a lone surrogate in a string, an integer past 64
    bits), so no event is ever unencodable.  Both write JSON that reads back the same."""
    try:
        return orjson.dumps(fields) + b"\n"
    except TypeError:
        return (_ENCODE_STD(fields) + "\n").encode("utf-8", "surrogatepass")


def wal_line(events: list[UsageEvent], start: int, stop: int) -> bytes:
    """The write-ahead log line of ``events[start:stop]``."""
    return encode_line(list(map(event_fields, events[start:stop])))


def price_of_event(pricing: PricingRegistry, event: UsageEvent) -> tuple[int, bool, str] | None:
    """``(cost_nano_usd, partial, entry)`` of one event, or None when it cannot be priced
    (no ``Quote`` built: the drain's form, see ``PricingRegistry.price_counts``)."""
    bound = event.bound_cost_nano_usd
    if bound is not None:
        # Charged at its hard limit's bound by the synchronous settle, whose write failed:
        # the journaled path writes that charge, not a price of the missing usage.
        return (bound, False, BOUND_PRICE_ENTRY)
    if event.status in FREE_STATUSES:
        return FREE
    if not event.has_usage:
        # A provider error or a failed connection bills nothing; a successful response
        # whose usage was never seen (stream cut, provider omitted it) cannot be priced:
        # it stays unpriced and visible, never silently zero.
        return FREE if event.http_status >= 400 else None
    model = event.model
    if model is None:
        return None
    # rows.quote_usage's call, inlined (one frame less per event on the drain)
    return pricing.price_counts(
        event.provider, model, event.project_id, event.input_tokens, event.output_tokens,
        event.cache_read_tokens, event.cache_write_tokens, event.cache_write_1h_tokens,
        event.audio_input_tokens, event.audio_output_tokens, event.web_search_requests,
        service_tier=event.service_tier, image_output_tokens=event.image_output_tokens,
        audio_cache_read_tokens=event.audio_cache_read_tokens,
    )  # fmt: skip


_from_event: Final = UsageRow.from_event  # bound once (a lookup and a method object less per call)


def rows_of_events(pricing: PricingRegistry, events: Iterable[UsageEvent], out: collections.deque[UsageRow]) -> int:
    """Append each event's priced row to ``out``, in one pass; returns how many rows are
    unpriced."""
    unpriced = 0
    append = out.append
    from_event = _from_event
    price_of = price_of_event
    for e in events:
        priced = price_of(pricing, e)
        if priced is None:
            unpriced += 1
            append(from_event(e))
        else:
            cost, partial, entry = priced
            append(
                from_event(
                    e,
                    cost_nano_usd=cost,
                    price_status=PRICE_STATUS_PARTIAL if partial else PRICE_STATUS_PRICED,
                    price_entry=entry or None,
                )
            )
    return unpriced


def row_totals(rows: collections.deque[UsageRow], start: int, costs: dict[tuple[str, str | None], int]) -> int:
    """Add the costs of ``rows[start:]`` to ``costs`` per (provider, model); returns how
    many of those rows are priced partial."""
    partial = 0
    for row in itertools.islice(rows, start, None):
        if row.price_status == PRICE_STATUS_PARTIAL:
            partial += 1
        cost = row.cost_nano_usd
        if cost:
            key = (row.provider, row.model)
            costs[key] = costs.get(key, 0) + cost
    return partial
