"""Usage event -> usage row, and what a usage costs: the one home of both.

The request path hands the billing pipeline ``UsageEvent``s (``plano_fast.usage``); the
store takes ``UsageRow``s.  Between the two, an event is priced here (``quote_event``:
free statuses, missing usage, then the pricing registry) and becomes a row through the
one constructor, ``UsageRow.from_event``.  The flusher (``rows_of_events``, a slice of
events per call), managed mode's synchronous settlement (``row_of_event``) and the late
pricers (``quote_usage`` on stored rows: ``PriceCalculator``, ``usage reprice``) all go
through these functions, so a new usage column is priced and carried in one place.

Hot path: ``rows_of_events`` runs per event on the flusher's drain and ``row_of_event``
per managed request: both are ``plano_fast.billing.drain``'s (compiled where built), and
build no dict or intermediate object beyond the price tuple.

Managed hard limits (``row_within_reservation``): a 2xx answer whose usage was never read
(a provider omitting ``usage``, an OpenAI-compatible server ignoring
``stream_options.include_usage``) or that was cut short (a stream reset or timed out after
its 2xx head) cannot be priced from its usage, yet the provider may have billed up to the
request's maximum cost, which the reservation holds (plano_fast.managed.bounds).  Such a
row is charged at a bound of that bill (``charge_of_incomplete``):

* nothing seen (no usage, an OpenAI stream cut before its usage chunk), or only the
  gateway's estimate (``client_disconnected_estimated``: the client left and the answer
  could not be read to its usage): the reservation.  An estimate is no bound either way:
  a token can be one byte, and hidden reasoning is billed but never seen (the estimate
  once counted an SSE stream's framing as output: a 50-token answer at ~850, recorded as
  a reservation overrun);
* the input seen (a stream cut after Anthropic's ``message_start`` or a Gemini chunk's
  ``usageMetadata``: those input counts are the final ones, cache reads and writes
  included), the output not (generated after the cut; only ``max_tokens`` bounds it): the
  seen input with the reservation's output bound, priced at the model that served, capped
  at the reservation (it is tighter: the reservation bounds the input by the body's bytes
  and prices it as the dearest cache write of the dearest target);
* never less than the seen usage priced (above the reservation: an overrun, flagged).

The row keeps its status (``usage_missing``, ``upstream_failed``,
``client_disconnected_estimated``) and its token columns, and is priced with
``price_entry`` ``BOUND_PRICE_ENTRY`` (which ``usage reprice`` leaves alone).  The rule is
applied to the row of the synchronous settle, and the charge is kept on the event
(``UsageEvent.bound_cost_nano_usd``): an event that falls back to the journaled path (the
settle's store write failed or was stopped) is written by the flusher's drain, or replayed
from the write-ahead log, at that same charge (``price_of_event`` takes it first).
Without a reservation such a row stays unpriced (visible, never zero), as before.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Final, Protocol

from plano_fast.billing.drain import BOUND_PRICE_ENTRY
from plano_fast.billing.drain import price_of_event as _price_of_event
from plano_fast.billing.drain import rows_of_events
from plano_fast import wire
from plano_fast.billing.metrics import BillingMetrics
from plano_fast.pricing import PricingRegistry, Quote
from plano_fast.store.records import PRICE_STATUS_PRICED, UsageRow
from plano_fast.usage import (
    STATUS_CLIENT_GONE_ESTIMATED,
    STATUS_UPSTREAM_FAILED,
    STATUS_USAGE_MISSING,
    USAGE_API_NUMBERS,
    UsageEvent,
)

__all__ = [
    "BOUND_PRICE_ENTRY", "Counted", "charge_of_incomplete", "cut_before_its_usage", "incomplete_answer",
    "price_event", "quote_event", "quote_usage", "rederive_counts", "row_of_event", "row_within_reservation",
    "rows_of_events",
]  # fmt: skip

log = logging.getLogger("plano_fast.billing")

_INCOMPLETE_STATUSES: Final = frozenset((STATUS_USAGE_MISSING, STATUS_UPSTREAM_FAILED, STATUS_CLIENT_GONE_ESTIMATED))
"""Statuses of an answer whose usage may be missing or short of what the provider bills:
with a 2xx status and a reservation, charged at a bound (``charge_of_incomplete``)."""



class Counted(Protocol):
    """What pricing reads of a usage: a ``UsageEvent`` and a ``UsageRow`` both are one."""

    @property
    def provider(self) -> str: ...
    @property
    def project_id(self) -> str | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def cache_write_1h_tokens(self) -> int: ...
    @property
    def audio_input_tokens(self) -> int: ...
    @property
    def audio_output_tokens(self) -> int: ...


_NO_EXTRAS: Final = (0, None, 0, 0)


def kept_extras(row: UsageRow) -> tuple[int, str | None, int, int]:
    """``(web searches, service tier, image output tokens, cached audio tokens)`` of a
    stored row (Anthropic ``server_tool_use.web_search_requests``, priced per request; the
    tier that served it, priced at its rates; Gemini's IMAGE candidates and AUDIO cache
    tokens, priced at their rates): no column holds them, its kept provider usage document
    does."""
    raw, api = row.usage_raw, row.usage_api
    if raw is None or api not in USAGE_API_NUMBERS or (
        "web_search_requests" not in raw and "service_tier" not in raw and "IMAGE" not in raw
        and "cacheTokensDetails" not in raw
    ):  # (most rows: no second scan)
        return _NO_EXTRAS
    scanner = wire.UsageScanner(USAGE_API_NUMBERS[api], False)
    scanner.feed(raw.encode("utf-8"))
    scanner.finish()
    usage = scanner.result()
    if not usage.has_usage:
        return _NO_EXTRAS
    return usage.web_search_requests, usage.service_tier, usage.image_output_tokens, usage.audio_cache_read_tokens


def rederive_counts(row: UsageRow) -> UsageRow | None:
    """``row`` with its token columns rebuilt from ``usage_raw``; None when it has none or
    they do not scan to a usage."""
    if row.usage_raw is None or row.usage_api is None:
        return None
    api = USAGE_API_NUMBERS.get(row.usage_api)
    if api is None:
        return None
    scanner = wire.UsageScanner(api, False)
    scanner.feed(row.usage_raw.encode("utf-8"))
    scanner.finish()
    u = scanner.result()
    if not u.has_usage:
        return None
    return replace(
        row,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        reasoning_tokens=u.reasoning_tokens,
        tool_use_prompt_tokens=u.tool_use_prompt_tokens,
        cache_write_1h_tokens=u.cache_write_1h_tokens,
        audio_input_tokens=u.audio_input_tokens,
        audio_output_tokens=u.audio_output_tokens,
    )


def cut_before_its_usage(row: UsageRow) -> bool:
    """A 2xx answer cut before its usage came whole (``upstream_failed`` after the head: a
    reset, a stall, a short body): the flush left it unpriced, and its token columns --
    nothing, or the input of Anthropic's ``message_start`` -- are no price of it, so the
    late pricer and ``usage reprice`` leave it unpriced too (visible, never a silent zero
    or an input-only cost).  Its kept usage object tells: only a whole one scans to a
    usage.  (Under a hard limit it was charged at its bound when it settled.)"""
    return row.status == STATUS_UPSTREAM_FAILED and 200 <= row.http_status < 300 and rederive_counts(row) is None


def quote_usage(pricing: PricingRegistry, usage: Counted, model: str) -> Quote | None:
    """The registry's quote for ``usage``'s token counts as ``model`` (None: no price).
    The one place the priced count columns are listed (a stored row's web searches,
    service tier, image output and cached audio are read back from its usage document:
    ``kept_extras``)."""
    tier: str | None = None
    images = cached_audio = 0
    if isinstance(usage, UsageRow):
        searches, tier, images, cached_audio = kept_extras(usage)
    elif isinstance(usage, UsageEvent):
        searches, tier = usage.web_search_requests, usage.service_tier
        images, cached_audio = usage.image_output_tokens, usage.audio_cache_read_tokens
    else:
        searches = 0
    return pricing.quote_counts(
        usage.provider, model, usage.project_id, usage.input_tokens, usage.output_tokens,
        usage.cache_read_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens,
        usage.audio_input_tokens, usage.audio_output_tokens, searches, service_tier=tier,
        image_output_tokens=images, audio_cache_read_tokens=cached_audio,
    )  # fmt: skip


def quote_event(pricing: PricingRegistry, event: UsageEvent) -> Quote | None:
    """What one event costs (nano-USD, partial flag, price entry), or None when it cannot
    be priced."""
    priced = _price_of_event(pricing, event)
    return None if priced is None else Quote(*priced)


def price_event(pricing: PricingRegistry, event: UsageEvent) -> int | None:
    """Cost of one event in nano-USD, or None when it cannot be priced."""
    priced = _price_of_event(pricing, event)
    return None if priced is None else priced[0]


def row_of_event(pricing: PricingRegistry, event: UsageEvent) -> UsageRow:
    """The usage row of one event, priced when it can be (status and price entry set).
    Managed mode's synchronous settle calls it once per request: the flusher's own
    ``rows_of_events`` on one event (one path from event to row)."""
    out: collections.deque[UsageRow] = collections.deque()
    rows_of_events(pricing, (event,), out)
    return out[0]


def charge_of_incomplete(
    pricing: PricingRegistry, event: UsageEvent, reserved_nano_usd: int, output_bound_tokens: int
) -> int:
    """What a 2xx answer whose usage is missing or cut short is charged under a reservation
    of ``reserved_nano_usd`` that counted ``output_bound_tokens`` of output (module
    docstring): the reservation, or the seen input with that output bound when the input
    was seen, and never less than the seen usage priced."""
    model = event.model
    if model is None or event.status == STATUS_CLIENT_GONE_ESTIMATED:
        # (an estimate is no usage seen: bytes / 4 of an SSE stream's framing can price far
        # above what max_tokens allows, or below the input billed -- the reservation is
        # the bound of this answer either way)
        return reserved_nano_usd
    # (not gated on has_usage: a stream cut after Anthropic's message_start has its input
    # counts on the event without a complete usage)
    counts = (event.cache_read_tokens, event.cache_write_tokens, event.cache_write_1h_tokens,
              event.audio_input_tokens, event.audio_output_tokens)  # fmt: skip
    provider, project_id, input_tokens = event.provider, event.project_id, event.input_tokens
    tier = event.service_tier
    images, cached_audio = event.image_output_tokens, event.audio_cache_read_tokens
    seen = pricing.price_counts(provider, model, project_id, input_tokens, event.output_tokens, *counts,
                                service_tier=tier, image_output_tokens=images,
                                audio_cache_read_tokens=cached_audio)  # fmt: skip
    seen_nano_usd = 0 if seen is None else seen[0]
    bound = reserved_nano_usd
    if input_tokens and output_bound_tokens:
        output = max(event.output_tokens, output_bound_tokens)
        tight = pricing.price_counts(provider, model, project_id, input_tokens, output, *counts, service_tier=tier,
                                     image_output_tokens=images, audio_cache_read_tokens=cached_audio)  # fmt: skip
        if tight is not None:
            bound = min(tight[0], reserved_nano_usd)
    return max(seen_nano_usd, bound)


def incomplete_answer(status: str, http_status: int) -> bool:
    """Whether an exchange's outcome is a 2xx answer whose usage is missing or cut short
    (what a reservation settles at a bound, ``row_within_reservation``)."""
    return status in _INCOMPLETE_STATUSES and 200 <= http_status < 300


def row_within_reservation(
    pricing: PricingRegistry,
    row: UsageRow,
    event: UsageEvent,
    reserved_nano_usd: int,
    output_bound: Callable[[], int],
    metrics: BillingMetrics,
    unanswered: bool = False,
) -> UsageRow:
    """The row that settles a hard limit's reservation of ``reserved_nano_usd``: ``row``
    (``row_of_event(pricing, event)``) as it is, or for a 2xx answer whose usage is missing
    or cut short -- or, ``unanswered``, a request the provider received and never answered
    within the first-byte timeout (it may be generating, and billing, still) -- charged at
    the bound (``charge_of_incomplete``; ``output_bound`` gives the output tokens the
    reservation counted, asked only then), counted in ``metrics`` and logged (request id,
    model, amounts: no secrets), so an operator sees every one."""
    if not unanswered and (event.status not in _INCOMPLETE_STATUSES or not 200 <= event.http_status < 300):
        return row  # the usual case (incomplete_answer inlined: one call less per request)
    charge = charge_of_incomplete(pricing, event, reserved_nano_usd, output_bound())
    # On the event too: if the settle's write fails, the journaled path charges the same.
    event.bound_cost_nano_usd = charge
    row.priced = True
    row.cost_nano_usd = charge
    row.price_status = PRICE_STATUS_PRICED
    row.price_entry = BOUND_PRICE_ENTRY
    metrics.rows_charged_at_bound += 1
    metrics.rows_charged_at_bound_nano_usd += charge
    log.warning(
        "request %s: a %d answer with %s usage (%s); charged %d nano-USD, the bound of its "
        "%d nano-USD reservation (%s %s)", event.request_id, event.http_status,
        "partial" if event.input_tokens or event.output_tokens else "no", event.status, charge,
        reserved_nano_usd, event.provider, event.model,
    )  # fmt: skip
    return row
