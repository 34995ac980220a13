# cython: language_level=3
"""The flusher's per-event work, compiled: the twin of ``plano_fast.billing._drain_py``
(whose docstring is the specification), chosen by ``plano_fast.billing.rows`` and
``plano_fast.billing.journal``.

Why (callgrind, issue 27): on the drain an event cost ~24k instructions: ~14k pricing it
(the call chain, seven ``type()`` checks, arithmetic on prices of two 30-bit digits, a
PyLong allocated per operation) and ~7.5k building its ``UsageRow`` (32 attribute stores,
28 loads); the write-ahead log then read its 29 fields again (~6.7k, ``attrgetter``).

Two things make it cheap here:

* The arithmetic in C.  The common event -- seven exact ``int`` counts in [0, 2**62], a
  resolution already cached, prices in [0, 2**62] -- is priced with a signed 128-bit
  integer: each of the seven terms of the formula is below 2**124, their sum below
  2**127, so the sum is exact, then divided once and rounded half up as the twin does.
  Anything else -- a count of another type, negative or past 2**62, a (provider, model) not
  resolved yet, a price past 2**62, a cost past 2**63 -- goes to the twin, which gives the
  result (or raises the error) itself.
* The slots read and written in place (``plano_fast/_slots.pxd``): ``UsageEvent`` and
  ``UsageRow`` are dataclasses with ``__slots__``; their offsets are read at import (an
  import error, and so the twin, if either class stops being one), and for an instance of
  exactly that class a field is read or written where it is (~140 instructions a field
  less).  An unset slot, or another class, takes ``getattr`` / ``UsageRow.from_event``.

The two can only differ by a bug in the C below, which the twin tests look for
(tests/test_billing_drain_twins.py).
"""

from cpython.dict cimport PyDict_GetItemWithError
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_ITEM
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, strlen
from cpython.ref cimport Py_INCREF
from libc.math cimport nearbyint

import collections
import itertools

from plano_fast.wire._digits cimport put_decimal
from plano_fast._slots cimport get_slot, new_instance, put_slot, slot_offset, untrack_if_scalars

from plano_fast.billing._drain_py import BOUND_PRICE_ENTRY, EVENT_FIELDS, FREE, FREE_STATUSES
from plano_fast.billing._drain_py import event_fields as _event_fields_twin
from plano_fast.billing._drain_py import price_of_event as _price_twin
from plano_fast.billing._drain_py import row_totals as _row_totals_twin
from plano_fast.billing._drain_py import wal_line as _wal_line_twin
from plano_fast.pricing import _CUSTOM
from plano_fast.store.records import PRICE_STATUS_PARTIAL, PRICE_STATUS_PENDING, PRICE_STATUS_PRICED, UsageRow
from plano_fast.usage import UsageEvent

cdef extern from *:
    """
    typedef __int128 pf_i128;
    """
    ctypedef long long pf_i128  # declared narrower for Cython; C sees __int128

cdef long long _LIMIT = 1LL << 62
cdef long long _MTOK = 1000000
cdef long long _HALF = 500000
cdef long long _WS_RATE_MAX = 1LL << 42  # a web search price above it: the twin prices it
cdef long long _INT64_MAX = 9223372036854775807LL

cdef object _free = FREE
# 0, the interpreter's one small int: an event's image output / cached audio count is it unless
# it has some (an identity test, ~100 instructions an event less than two truth tests; any
# other object, a 0 included, takes the twin, which is exact for all of them)
cdef object _zero = 0
cdef object _free_statuses = FREE_STATUSES
cdef object _custom_entry = _CUSTOM
cdef object _bound_entry = BOUND_PRICE_ENTRY
cdef object _partial = PRICE_STATUS_PARTIAL
cdef object _priced = PRICE_STATUS_PRICED
cdef object _pending = PRICE_STATUS_PENDING
cdef object _Event = UsageEvent
cdef object _Row = UsageRow
cdef object _from_event = UsageRow.from_event


# -------------------------------------------------------------------------------- slots

ROW_FIELDS = (
    "request_id", "time_ns", "project_id", "user_id", "key_hash", "token_id", "provider", "model",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "streaming", "status", "http_status", "priced", "cost_nano_usd", "duration_us", "price_status",
    "row_id", "tool_use_prompt_tokens", "cache_write_1h_tokens", "audio_input_tokens",
    "audio_output_tokens", "usage_api", "usage_raw", "price_entry", "reservation_overrun_nano_usd",
    "requested_model", "attempts", "attempt_trail",
)
if ROW_FIELDS != tuple(f for f in UsageRow.__dataclass_fields__):
    raise ImportError("UsageRow's fields changed: _drain.pyx must be updated (the twin is used)")

# UsageEvent's fields, by index in EVENT_FIELDS
DEF N_EVENT = 34
DEF E_REQUEST_ID = 0
DEF E_TIME_NS = 1
DEF E_PROVIDER = 2
DEF E_MODEL = 3
DEF E_STREAMING = 4
DEF E_STATUS = 5
DEF E_HTTP_STATUS = 6
DEF E_INPUT = 7
DEF E_OUTPUT = 8
DEF E_CACHE_READ = 9
DEF E_CACHE_WRITE = 10
DEF E_REASONING = 11
DEF E_HAS_USAGE = 12
DEF E_PROJECT_ID = 13
DEF E_KEY_HASH = 14
DEF E_USER_ID = 15
DEF E_TOKEN_ID = 16
DEF E_DURATION_MS = 17
DEF E_TOOL_USE = 19
DEF E_CACHE_WRITE_1H = 20
DEF E_AUDIO_IN = 21
DEF E_AUDIO_OUT = 22
DEF E_USAGE_RAW = 23
DEF E_USAGE_API = 24
DEF E_OVERRUN = 25
DEF E_REQUESTED_MODEL = 26
DEF E_ATTEMPTS = 27
DEF E_TRAIL = 28
DEF E_BOUND = 29
DEF E_WEB_SEARCHES = 30
DEF E_SERVICE_TIER = 31
DEF E_IMAGE_OUT = 32
DEF E_AUDIO_CACHE_READ = 33
DEF N_ROW = 32

if (len(EVENT_FIELDS) != N_EVENT or EVENT_FIELDS[E_TRAIL] != "attempt_trail"
        or EVENT_FIELDS[E_INPUT] != "input_tokens" or EVENT_FIELDS[E_BOUND] != "bound_cost_nano_usd"
        or EVENT_FIELDS[E_WEB_SEARCHES] != "web_search_requests"
        or EVENT_FIELDS[E_SERVICE_TIER] != "service_tier"
        or EVENT_FIELDS[E_IMAGE_OUT] != "image_output_tokens"
        or EVENT_FIELDS[E_AUDIO_CACHE_READ] != "audio_cache_read_tokens"):
    raise ImportError("UsageEvent's fields changed: _drain.pyx must be updated (the twin is used)")

cdef Py_ssize_t EV[N_EVENT]
cdef Py_ssize_t RW[N_ROW]
for _i in range(N_EVENT):
    EV[_i] = slot_offset(UsageEvent, EVENT_FIELDS[_i])
for _i in range(N_ROW):
    RW[_i] = slot_offset(UsageRow, ROW_FIELDS[_i])


cdef inline object _ev(object event, int i):
    """Field ``i`` of an event: read in place for a ``UsageEvent``, else ``getattr``."""
    cdef PyObject *value
    if type(event) is _Event:
        value = get_slot(event, EV[i])
        if value is not NULL:
            return <object>value
    return getattr(event, EVENT_FIELDS[i])  # another class, or an unset slot (its error)


cdef inline void _put(object row, int i, object value) noexcept:
    """Set slot ``i`` of a ``UsageRow``."""
    put_slot(row, RW[i], value)


def event_fields(event):
    """The event's fields as a tuple, in ``UsageEvent`` field order."""
    cdef PyObject *value
    cdef int i
    if type(event) is not _Event:
        return _event_fields_twin(event)
    # The slots are read after the tuple is made, not checked before it: PyTuple_New may
    # run the GC and so finalizers, which could empty a slot checked earlier.  Nothing in
    # the loop runs Python code.
    out = PyTuple_New(N_EVENT)
    for i in range(N_EVENT):
        value = get_slot(event, EV[i])
        if value is NULL:
            # An unset slot: the twin raises its AttributeError.  ``out`` is dropped with
            # the items set so far (a tuple's NULL items are skipped when it is freed).
            return _event_fields_twin(event)
        Py_INCREF(<object>value)  # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(out, i, <object>value)
    return out


# -------------------------------------------------------------------------------- pricing

cdef inline int _count(object value, long long *out):
    """1: an exact int in [0, 2**62] (stored in ``out``); 0: anything else."""
    cdef int overflow = 0
    cdef long long v
    if type(value) is not int:
        return 0
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or v < 0 or v > _LIMIT:
        return 0
    out[0] = v
    return 1


cdef inline int _rate(object value, long long *out, bint *absent):
    """1: None (``absent``) or an int in [0, 2**62] (``out``); 0: anything else."""
    absent[0] = value is None
    if absent[0]:
        out[0] = 0
        return 1
    return _count(value, out)


cdef struct Rates:
    # nano-USD per 1M tokens: input, output, cache read, cache write, 1h cache write, audio
    # in, audio out; nano-USD per web search.  ``no_*``: the price has none (None).
    long long in_p, out_p, cr_p, cw_p, cw1h_p, ain_p, aout_p, ws_p
    bint no_cr, no_cw, no_cw1h, no_ain, no_aout, no_ws


cdef int _read_rates(object src, object ws_o, Rates *r) except -1:
    """1: the rates of ``src`` (a ModelPrice or a PriceTier) and the web search price
    ``ws_o`` read into ``r``; 0: one the C arithmetic does not take (the twin prices it)."""
    cdef bint no_in, no_out
    if not (_rate(src.input_per_mtok, &r.in_p, &no_in) and _rate(src.output_per_mtok, &r.out_p, &no_out)
            and _rate(src.cache_read_per_mtok, &r.cr_p, &r.no_cr)
            and _rate(src.cache_write_per_mtok, &r.cw_p, &r.no_cw)
            and _rate(src.cache_write_1h_per_mtok, &r.cw1h_p, &r.no_cw1h)
            and _rate(src.audio_input_per_mtok, &r.ain_p, &r.no_ain)
            and _rate(src.audio_output_per_mtok, &r.aout_p, &r.no_aout)
            and _rate(ws_o, &r.ws_p, &r.no_ws)) or no_in or no_out:
        return 0
    if r.ws_p > _WS_RATE_MAX:
        return 0  # (the twin's exact integers: ws * ws_p * 1e6 must stay within 127 bits)
    return 1


cdef int _cost(const Rates *rates, long long inp, long long out, long long cr, long long cw,
               long long cw1h, long long ain, long long aout, long long ws, long long *cost_out,
               bint *partial_out) noexcept:
    """``pricing.price_tokens`` of counts in [0, 2**62] at ``rates``: 1 with ``(cost,
    partial)`` stored; 0 (a cost past 2**63) when the twin must do it."""
    cdef long long in_p = rates.in_p, out_p = rates.out_p, cr_p = rates.cr_p, cw_p = rates.cw_p
    cdef long long cw1h_p = rates.cw1h_p, ain_p = rates.ain_p, aout_p = rates.aout_p, ws_p = rates.ws_p
    # parts, each within what is left of its total
    if cr > inp:
        cr = inp
    if cw > inp - cr:
        cw = inp - cr
    if cw1h > cw:
        cw1h = cw
    if ain > inp - cr - cw:
        ain = inp - cr - cw
    if aout > out:
        aout = out
    cdef bint partial = False
    if rates.no_cr:
        cr_p = in_p
        partial = cr > 0
    if rates.no_cw:
        cw_p = in_p
        partial = partial or cw > cw1h
    if rates.no_cw1h:
        cw1h_p = cw_p
        partial = partial or cw1h > 0
    if rates.no_ain:
        ain_p = in_p
        partial = partial or ain > 0
    if rates.no_aout:
        aout_p = out_p
        partial = partial or aout > 0
    if rates.no_ws:
        partial = partial or ws > 0  # (ws_p 0: no token price to fall back to)
    # every factor is in [0, 2**62]: each product is below 2**124; ws * ws_p * 1e6 below
    # 2**62 * 2**42 * 2**20 = 2**124; the eight terms below 2**127
    cdef pf_i128 total = (
        <pf_i128>(inp - cr - cw - ain) * in_p + <pf_i128>cr * cr_p + <pf_i128>(cw - cw1h) * cw_p
        + <pf_i128>cw1h * cw1h_p + <pf_i128>ain * ain_p + <pf_i128>(out - aout) * out_p
        + <pf_i128>aout * aout_p + <pf_i128>ws * ws_p * _MTOK
    )
    cdef pf_i128 cost = (total + _HALF) // _MTOK
    if cost > _INT64_MAX:
        return 0
    cost_out[0] = <long long>cost
    partial_out[0] = partial
    return 1


cdef int _price(object price, long long inp, long long out, long long cr, long long cw,
                long long cw1h, long long ain, long long aout, long long ws, long long *cost_out,
                bint *partial_out) except -1:
    """``pricing.price_tokens``: 1 with ``(cost, partial)`` stored; 0 when the twin must do it."""
    cdef Rates rates
    # (read only for an event with searches: one attribute lookup less for every other one)
    cdef object ws_o = price.web_search_per_request if ws else None
    cdef object src = price
    cdef object tiers = price.tiers
    if tiers:
        for tier in tiers:  # ascending: the last one passed applies
            if inp <= tier.above_input_tokens:
                break
            src = tier
    if not _read_rates(src, ws_o, &rates):
        return 0
    return _cost(&rates, inp, out, cr, cw, cw1h, ain, aout, ws, cost_out, partial_out)


cdef object _price_event(object pricing, object event):
    bound = _ev(event, E_BOUND)
    if bound is not None:
        return (bound, False, _bound_entry)  # charged at a hard limit's bound (the twin's note)
    if _ev(event, E_STATUS) in _free_statuses:
        return _free
    if not _ev(event, E_HAS_USAGE):
        return _free if _ev(event, E_HTTP_STATUS) >= 400 else None
    model = _ev(event, E_MODEL)
    if model is None:
        return None
    if _ev(event, E_SERVICE_TIER) is not None:
        return _price_twin(pricing, event)  # a tier's prices (rare): the twin picks them
    if _ev(event, E_IMAGE_OUT) is not _zero or _ev(event, E_AUDIO_CACHE_READ) is not _zero:
        # Gemini's image output or cached audio (rare: image models, cached audio), priced
        # at their own rates by the twin; two slot reads for every other event
        return _price_twin(pricing, event)
    cdef long long inp = 0, out = 0, cr = 0, cw = 0, cw1h = 0, ain = 0, aout = 0, ws = 0
    if not (_count(_ev(event, E_INPUT), &inp) and _count(_ev(event, E_OUTPUT), &out)
            and _count(_ev(event, E_CACHE_READ), &cr) and _count(_ev(event, E_CACHE_WRITE), &cw)
            and _count(_ev(event, E_CACHE_WRITE_1H), &cw1h) and _count(_ev(event, E_AUDIO_IN), &ain)
            and _count(_ev(event, E_AUDIO_OUT), &aout) and _count(_ev(event, E_WEB_SEARCHES), &ws)):
        return _price_twin(pricing, event)  # it raises TokenCounts' error for a bad count
    resolution = pricing._cache.get((_ev(event, E_PROVIDER), model))
    if resolution is None:
        return _price_twin(pricing, event)  # resolved (and cached) there
    global_prices, project_prices = pricing._overrides
    price = pricing._custom(resolution, _ev(event, E_PROJECT_ID)) if global_prices or project_prices else None
    if price is not None:
        entry = _custom_entry
    else:
        price = resolution.default
        if price is None:
            return None
        entry = resolution.entry
    cdef long long cost = 0
    cdef bint partial = False
    if not _price(price, inp, out, cr, cw, cw1h, ain, aout, ws, &cost, &partial):
        return _price_twin(pricing, event)
    return (cost, partial, entry)


def price_of_event(pricing, event):
    """``(cost_nano_usd, partial, entry)`` of one event, or None when it cannot be priced."""
    return _price_event(pricing, event)


# -------------------------------------------------------------------------------- rows

cdef object _duration_us(object duration_ms):
    """``UsageRow.from_event``'s ``duration_us``: ``round(ms * 1000)``, 0 up to 0.5."""
    cdef double d
    if type(duration_ms) is float:
        d = PyFloat_AS_DOUBLE(duration_ms) * 1000.0
        if not d > 0.5:  # NaN too, as the twin's ``d > 0.5``
            return 0
        if d < 9.0e18:
            # nearbyint rounds half to even in the default rounding mode, as round() does
            return <long long>nearbyint(d)
    d_obj = duration_ms * 1000
    return round(d_obj) if d_obj > 0.5 else 0


cdef object _row(object event, object cost, object status, object entry):
    """``UsageRow.from_event(event, cost_nano_usd=cost, price_status=status,
    price_entry=entry)``, its slots written in place.

    The row is allocated, and the two fields that may run Python code (``duration_us``:
    arithmetic on what may not be a float; ``overrun or None``: a truth test) computed,
    before the event's slots are read into ``ev``: either may run the cyclic GC and so
    finalizers, which could empty a slot read earlier (and free its value).  Nothing
    after those reads runs Python code or allocates a GC-tracked object."""
    cdef PyObject *ev[N_EVENT]
    cdef PyObject *value
    cdef int i
    if type(event) is not _Event:
        return _from_event(event, cost_nano_usd=cost, price_status=status, price_entry=entry)
    row = new_instance(_Row)
    value = get_slot(event, EV[E_DURATION_MS])
    if value is NULL:
        return _from_event(event, cost_nano_usd=cost, price_status=status, price_entry=entry)
    duration_us = _duration_us(<object>value)
    value = get_slot(event, EV[E_OVERRUN])
    if value is NULL:
        return _from_event(event, cost_nano_usd=cost, price_status=status, price_entry=entry)
    overrun = <object>value or None
    for i in range(N_EVENT):
        ev[i] = get_slot(event, EV[i])
        if ev[i] is NULL:
            # an unset slot: the twin raises its AttributeError
            return _from_event(event, cost_nano_usd=cost, price_status=status, price_entry=entry)
    _put(row, 0, <object>ev[E_REQUEST_ID])
    _put(row, 1, <object>ev[E_TIME_NS])
    _put(row, 2, <object>ev[E_PROJECT_ID])
    _put(row, 3, <object>ev[E_USER_ID])
    _put(row, 4, <object>ev[E_KEY_HASH])
    _put(row, 5, <object>ev[E_TOKEN_ID])
    _put(row, 6, <object>ev[E_PROVIDER])
    _put(row, 7, <object>ev[E_MODEL])
    _put(row, 8, <object>ev[E_INPUT])
    _put(row, 9, <object>ev[E_OUTPUT])
    _put(row, 10, <object>ev[E_CACHE_READ])
    _put(row, 11, <object>ev[E_CACHE_WRITE])
    _put(row, 12, <object>ev[E_REASONING])
    _put(row, 13, <object>ev[E_STREAMING])
    _put(row, 14, <object>ev[E_STATUS])
    _put(row, 15, <object>ev[E_HTTP_STATUS])
    _put(row, 16, cost is not None)
    _put(row, 17, cost)
    _put(row, 18, duration_us)
    _put(row, 19, status)
    _put(row, 20, None)
    _put(row, 21, <object>ev[E_TOOL_USE])
    _put(row, 22, <object>ev[E_CACHE_WRITE_1H])
    _put(row, 23, <object>ev[E_AUDIO_IN])
    _put(row, 24, <object>ev[E_AUDIO_OUT])
    _put(row, 25, <object>ev[E_USAGE_API])
    _put(row, 26, <object>ev[E_USAGE_RAW])
    _put(row, 27, entry)
    _put(row, 28, overrun)
    _put(row, 29, <object>ev[E_REQUESTED_MODEL])
    _put(row, 30, <object>ev[E_ATTEMPTS])
    _put(row, 31, <object>ev[E_TRAIL])
    untrack_if_scalars(row, RW, N_ROW)  # scalars only: out of the cyclic GC (plano_fast/_slots.pxd)
    return row


cdef inline bint _same_str(object a, object b):
    """``a == b`` for two exact strs (a dict key's equality), identity first."""
    return a is b or (type(a) is str and type(b) is str and <str>a == <str>b)


DEF N_KEPT = 8

cdef struct Kept:
    # a (provider, model) resolved within one ``rows_of_events`` call (the objects are
    # owned by the call's ``hold`` list): its price (None: unpriced), entry, and the price's
    # rates read into C (``have_rates``: a price without tiers whose rates C takes)
    PyObject *provider
    PyObject *model
    PyObject *price
    PyObject *entry
    Rates rates
    bint have_rates


def rows_of_events(pricing, events, out):
    """Append each event's priced row to ``out``, in one pass; returns how many rows are
    unpriced.

    Within one call, the prices of the last ``N_KEPT`` (provider, model) pairs resolved
    are kept (their rates read into C once): a slice's events mostly share a few models,
    and the registry's lookup (a key tuple, a dict method call, ten attribute reads of the
    price) was ~2.5k instructions an event.  Only while no custom price is set (a custom
    price depends on the project too: those events take ``_price_event``'s full path), and
    only for an exact ``UsageEvent`` with every slot set (else ``_price_event``).  Nothing
    in the call can change a resolution (one, once made, is the same until ``set_pins``,
    which no event runs)."""
    cdef Py_ssize_t unpriced = 0
    cdef PyObject *ev[N_EVENT]
    cdef int i
    cdef bint slotted
    cdef Kept kept[N_KEPT]
    cdef Kept *k
    cdef int n_kept = 0, next_kept = 0
    cdef long long inp = 0, outp = 0, cr = 0, cw = 0, cw1h = 0, ain = 0, aout = 0, ws = 0
    cdef long long cost = 0
    cdef bint partial = False
    append = out.append
    global_prices, project_prices = pricing._overrides
    cdef bint custom = bool(global_prices) or bool(project_prices)
    cdef list hold = []  # owns what ``kept`` points to
    for event in events:
        # (the slots read here are used before anything is allocated: see ``_row``)
        slotted = type(event) is _Event and not custom
        if slotted:
            for i in range(N_EVENT):
                ev[i] = get_slot(event, EV[i])
                if ev[i] is NULL:
                    slotted = False
                    break
        if not slotted:
            priced = _price_event(pricing, event)
            _append_priced(append, event, priced)
            unpriced += priced is None
            continue
        # _price_event, on the slots read above (the same steps, in the same order)
        bound = <object>ev[E_BOUND]
        if bound is not None:
            append(_row(event, bound, _priced, _bound_entry))
            continue
        if <object>ev[E_STATUS] in _free_statuses or (
                not <object>ev[E_HAS_USAGE] and <object>ev[E_HTTP_STATUS] >= 400):
            append(_row(event, 0, _priced, None))
            continue
        model = <object>ev[E_MODEL]
        if not <object>ev[E_HAS_USAGE] or model is None:
            unpriced += 1
            append(_row(event, None, _pending, None))
            continue
        if (<object>ev[E_SERVICE_TIER] is not None  # a tier's prices (rare): the twin picks them
                or ev[E_IMAGE_OUT] is not <PyObject *>_zero
                or ev[E_AUDIO_CACHE_READ] is not <PyObject *>_zero):  # (as _price_event)
            priced = _price_twin(pricing, event)
            _append_priced(append, event, priced)
            unpriced += priced is None
            continue
        provider = <object>ev[E_PROVIDER]
        if not (_count(<object>ev[E_INPUT], &inp) and _count(<object>ev[E_OUTPUT], &outp)
                and _count(<object>ev[E_CACHE_READ], &cr) and _count(<object>ev[E_CACHE_WRITE], &cw)
                and _count(<object>ev[E_CACHE_WRITE_1H], &cw1h) and _count(<object>ev[E_AUDIO_IN], &ain)
                and _count(<object>ev[E_AUDIO_OUT], &aout) and _count(<object>ev[E_WEB_SEARCHES], &ws)):
            priced = _price_twin(pricing, event)  # it raises TokenCounts' error for a bad count
            _append_priced(append, event, priced)
            unpriced += priced is None
            continue
        k = NULL
        for i in range(n_kept):
            if (_same_str(provider, <object>kept[i].provider)
                    and _same_str(model, <object>kept[i].model)):
                k = &kept[i]
                break
        if k is NULL:
            resolution = pricing._cache.get((provider, model))
            if resolution is None or type(provider) is not str or type(model) is not str:
                priced = _price_twin(pricing, event)  # resolved (and cached) there
                _append_priced(append, event, priced)
                unpriced += priced is None
                continue
            price = resolution.default
            entry = resolution.entry or None
            hold.append((provider, model, price, entry))
            k = &kept[next_kept]
            next_kept = (next_kept + 1) % N_KEPT
            if n_kept < N_KEPT:
                n_kept += 1
            k.provider = <PyObject *>provider
            k.model = <PyObject *>model
            k.price = <PyObject *>price
            k.entry = <PyObject *>entry
            k.have_rates = (price is not None and not price.tiers and _read_rates(price, None, &k.rates))
        if <object>k.price is None:
            unpriced += 1
            append(_row(event, None, _pending, None))
            continue
        if k.have_rates and ws == 0:
            if _cost(&k.rates, inp, outp, cr, cw, cw1h, ain, aout, 0, &cost, &partial):
                append(_row(event, cost, _partial if partial else _priced, <object>k.entry))
                continue
        elif _price(<object>k.price, inp, outp, cr, cw, cw1h, ain, aout, ws, &cost, &partial):
            append(_row(event, cost, _partial if partial else _priced, <object>k.entry))
            continue
        priced = _price_twin(pricing, event)
        _append_priced(append, event, priced)
        unpriced += priced is None
    return unpriced


cdef Py_ssize_t R_PROVIDER = RW[6]
cdef Py_ssize_t R_MODEL = RW[7]
cdef Py_ssize_t R_COST = RW[17]
cdef Py_ssize_t R_STATUS = RW[19]


def row_totals(rows, Py_ssize_t start, dict costs):
    """``_drain_py.row_totals``: the rows' slots read in place (a Python loop of attribute
    reads per row in the flusher before, issue 27); another class, or an unset slot, takes
    the twin for the rest."""
    cdef Py_ssize_t partial = 0, i = 0, n, j
    cdef PyObject *status
    cdef PyObject *cost
    cdef PyObject *provider
    cdef PyObject *model
    cdef PyObject *found
    if type(rows) is not collections.deque or start < 0:
        return _row_totals_twin(rows, start, costs)
    # The tail taken from the deque's end (``islice(rows, start, None)`` walks the
    # ``start`` rows before it first: the whole backlog, every slice), then read in order.
    n = len(rows) - start
    if n <= 0:
        return 0
    tail = list(itertools.islice(reversed(rows), n))
    tail.reverse()
    for j in range(n):
        row = tail[j]
        if type(row) is not _Row:
            return partial + _row_totals_twin(rows, start + i, costs)
        status = get_slot(row, R_STATUS)
        cost = get_slot(row, R_COST)
        provider = get_slot(row, R_PROVIDER)
        model = get_slot(row, R_MODEL)
        if status is NULL or cost is NULL or provider is NULL or model is NULL:
            return partial + _row_totals_twin(rows, start + i, costs)  # its AttributeError
        # held before anything is allocated (an allocation may run the GC and a finalizer
        # that empties a slot: see ``_row``)
        cost_o = <object>cost
        provider_o = <object>provider
        model_o = <object>model
        i += 1
        if <object>status is _partial or <object>status == _partial:
            partial += 1
        if cost_o:
            key = (provider_o, model_o)
            found = PyDict_GetItemWithError(costs, key)
            if found is NULL:
                costs[key] = 0 + cost_o
            else:
                costs[key] = <object>found + cost_o
    return partial


cdef inline void _append_priced(object append, object event, object priced) except *:
    """The row of ``event`` priced ``priced`` (``price_of_event``'s result) appended."""
    if priced is None:
        append(_row(event, None, _pending, None))
    else:
        cost_o, partial_o, entry = priced
        append(_row(event, cost_o, _partial if partial_o else _priced, entry or None))


# -------------------------------------------------------------------------------- journal line

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL
    int PyUnicode_IS_ASCII(object text)
    void *PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)
    object PyBytes_FromStringAndSize(const char *data, Py_ssize_t size)
    char *PyOS_double_to_string(double val, char format_code, int precision, int flags, int *ptype)
    int Py_DTSF_ADD_DOT_0
    void PyMem_Free(void *p)

cdef extern from "<math.h>":
    long long llrint(double x)
    int signbit(double x)
    int isfinite(double x)

cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
    #include <emmintrin.h>
    #define PF_JSON_SSE2 1
    #endif

    /* One byte as JSON writes it inside a string: copied, or its escape from ``esc``
       (0: none; 'u': \\u00xx; else a backslash and that letter). */
    static inline char *pf_json_byte(char *out, unsigned char c, const char *esc, const char *hex) {
        char e = esc[c];
        if (e == 0) { *out = (char)c; return out + 1; }
        out[0] = '\\\\';
        if (e != 'u') { out[1] = e; return out + 2; }
        out[1] = 'u'; out[2] = '0'; out[3] = '0'; out[4] = hex[c >> 4]; out[5] = hex[c & 15];
        return out + 6;
    }

    /* s[0:n] written at ``out`` as the inside of a JSON string; the caller made room for
       6 * n + 16 bytes (a 16- or 8-byte block is stored whole before its tail is written
       over).  Returns the new end.  Blocks of 16 (SSE2) or 8 (SWAR) bytes are tested for
       a byte to escape -- '"', '\\\\' or below 0x20 -- and copied up to the first one. */
    static inline char *pf_json_body(char *out, const unsigned char *s, Py_ssize_t n,
                                     const char *esc, const char *hex) {
        const unsigned char *end = s + n;
    #ifdef PF_JSON_SSE2
        const __m128i q = _mm_set1_epi8('"'), b = _mm_set1_epi8('\\\\');
        const __m128i flip = _mm_set1_epi8((char)0x80), lim = _mm_set1_epi8((char)0xA0);
        while (end - s >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)s);
            /* x ^ 0x80 < 0xA0, signed: exactly x < 0x20 */
            __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, q), _mm_cmpeq_epi8(x, b)),
                                        _mm_cmplt_epi8(_mm_xor_si128(x, flip), lim));
            unsigned int m = (unsigned int)_mm_movemask_epi8(stop);
            _mm_storeu_si128((__m128i *)out, x);
            if (m == 0) { out += 16; s += 16; continue; }
            int k = __builtin_ctz(m);
            out += k; s += k;
            out = pf_json_byte(out, *s, esc, hex); s += 1;
        }
    #endif
        {
            /* The SWAR word tests ("has a zero byte", "has a byte below n") can flag a
               byte above a true one falsely (a borrow), never below it: the lowest flag
               (the first byte in memory, little-endian) is exact. */
            const unsigned long long ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
            while (end - s >= 8) {
                unsigned long long w, qq, bb, m;
                memcpy(&w, s, 8);
                qq = w ^ (ones * 0x22); bb = w ^ (ones * 0x5c);
                m = (((w - ones * 0x20) & ~w) | ((qq - ones) & ~qq) | ((bb - ones) & ~bb)) & highs;
                memcpy(out, &w, 8);
                if (m == 0) { out += 8; s += 8; continue; }
                int k = __builtin_ctzll(m) >> 3;
                out += k; s += k;
                out = pf_json_byte(out, *s, esc, hex); s += 1;
            }
        }
        while (s < end) out = pf_json_byte(out, *s++, esc, hex);
        return out;
    }
    """
    char *pf_json_body(char *out, const unsigned char *s, Py_ssize_t n, const char *esc, const char *hex) nogil

cdef struct Out:
    char *p
    Py_ssize_t n
    Py_ssize_t cap


cdef int _grow(Out *o, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = o.cap * 2
    cdef char *p
    if cap < o.n + extra + 1024:
        cap = o.n + extra + 1024
    p = <char *>realloc(o.p, cap)
    if p == NULL:
        raise MemoryError()
    o.p = p
    o.cap = cap
    return 0


cdef inline int _room(Out *o, Py_ssize_t k) except -1:
    """At least ``k`` bytes free at ``o.p + o.n``."""
    if o.n + k > o.cap:
        _grow(o, k)
    return 0


cdef inline void _raw(Out *o, const char *s, Py_ssize_t k) noexcept:
    """Append ``k`` bytes (room made by the caller)."""
    memcpy(o.p + o.n, s, k)
    o.n += k


cdef inline void _digits(Out *o, unsigned long long u) noexcept:
    """``u`` in decimal (room for 20 bytes made by the caller)."""
    o.n += put_decimal(o.p + o.n, u)


# Bytes a JSON string cannot hold as they are, and what orjson writes for them: the
# control characters (\b \t \n \f \r by name, the rest as \u00xx), the quote and the
# backslash.  Every other byte, UTF-8 sequences included, is copied.
cdef char _ESCAPE[256]
for _i in range(256):
    _ESCAPE[_i] = 0
for _i in range(0x20):
    _ESCAPE[_i] = b'u'
_ESCAPE[0x08] = b'b'
_ESCAPE[0x09] = b't'
_ESCAPE[0x0a] = b'n'
_ESCAPE[0x0c] = b'f'
_ESCAPE[0x0d] = b'r'
_ESCAPE[0x22] = b'"'
_ESCAPE[0x5c] = b'\\'
cdef const char *_HEX = b"0123456789abcdef"


cdef int _put_str(Out *o, object text) except -1:
    """``text`` (an exact str with a UTF-8 form: the caller checked) as a JSON string, as
    orjson writes it (``pf_json_body``)."""
    cdef Py_ssize_t n
    cdef const unsigned char *s
    cdef char *end
    if PyUnicode_IS_ASCII(text):
        s = <const unsigned char *>PyUnicode_DATA(text)
        n = PyUnicode_GET_LENGTH(text)
    else:
        s = <const unsigned char *>PyUnicode_AsUTF8AndSize(text, &n)
    _room(o, 6 * n + 2 + 16)
    o.p[o.n] = b'"'
    end = pf_json_body(o.p + o.n + 1, s, n, _ESCAPE, _HEX)
    end[0] = b'"'
    o.n = end + 1 - o.p
    return 0


cdef long long _POW10_15 = 1000000000000000LL


cdef int _put_float(Out *o, double d) except -1:
    """1: ``d`` written as orjson writes it (its shortest round-trip digits, in plain
    notation): ``_put_micros``'s doubles, else any from 1e-4 up to 1e16 through Python's
    repr; 0: not written (orjson's plain range starts at 1e-5, but repr turns to exponent
    notation below 1e-4), the caller hands the line to the twin."""
    cdef char *text
    cdef double m = -d if d < 0 else d
    if _put_micros(o, d):
        return 1
    if not (1e-4 <= m < 1e16):
        return 0
    # Python's repr: the same shortest round-trip digits (both ryu and dtoa's mode 0 give
    # the shortest, and of those the closest), in plain notation from 1e-4 up to 1e16,
    # with ".0" on a whole number, as orjson.
    text = PyOS_double_to_string(d, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    if text == NULL:
        raise MemoryError()
    try:
        _room(o, strlen(text))
        _raw(o, text, strlen(text))
    finally:
        PyMem_Free(text)
    return 1


cdef int _put_micros(Out *o, double d) except -1:
    """1: ``d`` written as orjson writes it, for 0.0, -0.0 and the usual duration: a double
    that is exactly ``n / 1e6`` (IEEE division, as the settle computes ``duration_ms``) for
    an integer 10 <= |n| < 10**15; 0: none of those, nothing written.

    Such a double is the correctly rounded value of the decimal n * 10**-6, so that
    decimal reads back as it; with at most 15 significant digits it is the only decimal of
    15 digits or fewer that does (DBL_DIG), so it is also the shortest -- the digits ryu
    (orjson) writes, here in plain notation as orjson writes [1e-5, 1e16)."""
    cdef long long n
    cdef unsigned long long u, frac
    cdef int digits, i
    cdef char tmp[8]
    if d == 0.0:
        if signbit(d):
            _raw(o, "-0.0", 4)
        else:
            _raw(o, "0.0", 3)
        return 1
    if not isfinite(d) or d > 1e10 or d < -1e10:
        return 0
    n = llrint(d * 1e6)
    if <double>n / 1e6 != d:
        return 0
    u = <unsigned long long>(-n if n < 0 else n)
    if u < 10 or u >= <unsigned long long>_POW10_15:
        return 0
    if n < 0:
        _raw(o, "-", 1)
    _digits(o, u // 1000000)
    frac = u % 1000000
    if frac == 0:
        _raw(o, ".0", 2)
        return 1
    digits = 6
    while frac % 10 == 0:
        frac //= 10
        digits -= 1
    # ".", then frac's digits left-padded with zeros to ``digits``
    tmp[0] = b'.'
    for i in range(digits, 0, -1):
        tmp[i] = <char>(48 + frac % 10)
        frac //= 10
    _raw(o, tmp, digits + 1)
    return 1


cdef int _put_value(Out *o, PyObject *value) except -1:
    """1: one field written; 0: a value this writer leaves to the twin (another type, an
    integer past 64 bits, a float outside ``_put_float``'s, a string with no UTF-8 form).
    The caller made room for 32 bytes: a number's, up to ``_put_micros``' 1 + 9 + 1 + 6."""
    cdef object v = <object>value
    cdef int overflow = 0
    cdef long long i
    if type(v) is str:
        if not PyUnicode_IS_ASCII(v):
            try:
                PyUnicode_AsUTF8AndSize(v, NULL)
            except UnicodeEncodeError:
                return 0  # a lone surrogate: the twin's stdlib line
        _put_str(o, v)
        return 1
    if v is None:
        _raw(o, "null", 4)
        return 1
    if type(v) is int:
        i = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow:
            return 0
        if i < 0:
            _raw(o, "-", 1)
            _digits(o, <unsigned long long>0 - <unsigned long long>i)
        else:
            _digits(o, <unsigned long long>i)
        return 1
    if v is True:
        _raw(o, "true", 4)
        return 1
    if v is False:
        _raw(o, "false", 5)
        return 1
    if type(v) is float:
        return _put_float(o, PyFloat_AS_DOUBLE(v))
    return 0


cdef int _put_events(Out *o, list events, Py_ssize_t start, Py_ssize_t stop) except -1:
    """1: ``events[start:stop]`` written as the twin's line; 0: the twin must write it."""
    cdef Py_ssize_t k
    cdef int i
    cdef PyObject *value
    _room(o, 1)
    _raw(o, "[", 1)
    for k in range(start, stop):
        event = <object>PyList_GET_ITEM(events, k)
        if type(event) is not _Event:
            return 0
        _room(o, 2)
        if k > start:
            _raw(o, ",", 1)
        _raw(o, "[", 1)
        for i in range(N_EVENT):
            value = get_slot(event, EV[i])
            if value is NULL:
                return 0  # an unset slot: the twin raises its AttributeError
            _room(o, 32)  # the comma and any value but a string or a dtoa float (their own)
            if i:
                _raw(o, ",", 1)
            if not _put_value(o, value):
                return 0
        _room(o, 1)
        _raw(o, "]", 1)
    _room(o, 2)
    _raw(o, "]\n", 2)
    return 1


def wal_line(list events, Py_ssize_t start, Py_ssize_t stop):
    """``_drain_py.wal_line(events, start, stop)``: the same bytes, written from the
    events' slots into one buffer (no field tuple, no list, no orjson call); whatever it
    does not write itself (see ``_put_value``) goes to the twin, for the whole line."""
    cdef Out o
    if start < 0 or stop > len(events) or start > stop:
        return _wal_line_twin(events, start, stop)
    o.n = 0
    o.cap = 0
    o.p = NULL
    try:
        _grow(&o, (stop - start) * 1024)
        # No Python code runs while the events are read (PyUnicode_AsUTF8AndSize only
        # allocates the string's cached UTF-8 form): the list and its events stay as they are.
        if _put_events(&o, events, start, stop):
            return PyBytes_FromStringAndSize(o.p, o.n)
    finally:
        free(o.p)
    return _wal_line_twin(events, start, stop)
