# cython: language_level=3
"""What one usage event costs, compiled: the twin of ``plano_fast.billing._price_py``
(whose docstring is the specification), chosen by ``plano_fast.billing.rows``.

Why: pricing was ~14k instructions of the ~24k an event cost on the flusher's drain
(callgrind, issue 27): the call chain (``price_counts``, ``price_tokens``), seven ``type()``
checks, and the arithmetic on prices of two 30-bit digits (a PyLong allocated per
operation).  Here the common event -- seven exact ``int`` counts in [0, 2**62], a
resolution already cached, prices in [0, 2**62] -- is priced in C: each of the seven
terms of the formula is below 2**124 and their sum below 2**127, so a signed 128-bit
integer holds the exact sum, divided once and rounded half up exactly as the twin does.
Everything else -- a count of another type, negative or past 2**62, a (provider, model)
not yet resolved, a price past 2**62, a cost past 2**63 -- goes to the twin, which gives
the result (or raises the error) itself: the two can only differ by a bug in the C
below, which the twin tests look for (tests/test_billing_price_twins.py).
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject

from plano_fast.billing._price_py import FREE, FREE_STATUSES
from plano_fast.billing._price_py import price_of_event as _twin
from plano_fast.pricing import _CUSTOM

cdef extern from *:
    """
    typedef __int128 pf_i128;
    """
    ctypedef long long pf_i128  # declared narrower for Cython; C sees __int128

cdef long long _LIMIT = 1LL << 62
cdef long long _MTOK = 1000000
cdef long long _HALF = 500000
cdef long long _INT64_MAX = 9223372036854775807LL

cdef object _free = FREE
cdef object _free_statuses = FREE_STATUSES
cdef object _custom_entry = _CUSTOM


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
    cdef int overflow = 0
    cdef long long v
    if value is None:
        absent[0] = True
        out[0] = 0
        return 1
    absent[0] = False
    if type(value) is not int:
        return 0
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or v < 0 or v > _LIMIT:
        return 0
    out[0] = v
    return 1


cdef int _price(object price, long long inp, long long out, long long cr, long long cw,
                long long cw1h, long long ain, long long aout, long long *cost_out, bint *partial_out) except -1:
    """``pricing.price_tokens``: 1 with ``(cost, partial)`` stored; 0 when the twin must do it."""
    cdef object in_o = price.input_per_mtok
    cdef object out_o = price.output_per_mtok
    cdef object cr_o = price.cache_read_per_mtok
    cdef object cw_o = price.cache_write_per_mtok
    cdef object cw1h_o = price.cache_write_1h_per_mtok
    cdef object ain_o = price.audio_input_per_mtok
    cdef object aout_o = price.audio_output_per_mtok
    cdef object tiers = price.tiers
    if tiers:
        for tier in tiers:  # ascending: the last one passed applies
            if inp <= tier.above_input_tokens:
                break
            in_o = tier.input_per_mtok
            out_o = tier.output_per_mtok
            cr_o = tier.cache_read_per_mtok
            cw_o = tier.cache_write_per_mtok
            cw1h_o = ain_o = aout_o = None  # no tier variants in the table
    cdef long long in_p = 0, out_p = 0, cr_p = 0, cw_p = 0, cw1h_p = 0, ain_p = 0, aout_p = 0
    cdef bint no_in, no_out, no_cr, no_cw, no_cw1h, no_ain, no_aout
    if not (_rate(in_o, &in_p, &no_in) and _rate(out_o, &out_p, &no_out)
            and _rate(cr_o, &cr_p, &no_cr) and _rate(cw_o, &cw_p, &no_cw)
            and _rate(cw1h_o, &cw1h_p, &no_cw1h) and _rate(ain_o, &ain_p, &no_ain)
            and _rate(aout_o, &aout_p, &no_aout)) or no_in or no_out:
        return 0
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
    if no_cr:
        cr_p = in_p
        partial = cr > 0
    if no_cw:
        cw_p = in_p
        partial = partial or cw > cw1h
    if no_cw1h:
        cw1h_p = cw_p
        partial = partial or cw1h > 0
    if no_ain:
        ain_p = in_p
        partial = partial or ain > 0
    if no_aout:
        aout_p = out_p
        partial = partial or aout > 0
    # every factor is in [0, 2**62]: each product is below 2**124, the sum below 2**127
    cdef pf_i128 total = (
        <pf_i128>(inp - cr - cw - ain) * in_p + <pf_i128>cr * cr_p + <pf_i128>(cw - cw1h) * cw_p
        + <pf_i128>cw1h * cw1h_p + <pf_i128>ain * ain_p + <pf_i128>(out - aout) * out_p
        + <pf_i128>aout * aout_p
    )
    cdef pf_i128 cost = (total + _HALF) // _MTOK
    if cost > _INT64_MAX:
        return 0
    cost_out[0] = <long long>cost
    partial_out[0] = partial
    return 1


def price_of_event(pricing, event):
    """``(cost_nano_usd, partial, entry)`` of one event, or None when it cannot be priced."""
    if event.status in _free_statuses:
        return _free
    if not event.has_usage:
        return _free if event.http_status >= 400 else None
    model = event.model
    if model is None:
        return None
    cdef long long inp = 0, out = 0, cr = 0, cw = 0, cw1h = 0, ain = 0, aout = 0
    if not (_count(event.input_tokens, &inp) and _count(event.output_tokens, &out)
            and _count(event.cache_read_tokens, &cr) and _count(event.cache_write_tokens, &cw)
            and _count(event.cache_write_1h_tokens, &cw1h) and _count(event.audio_input_tokens, &ain)
            and _count(event.audio_output_tokens, &aout)):
        return _twin(pricing, event)  # it raises TokenCounts' error for a bad count
    resolution = pricing._cache.get((event.provider, model))
    if resolution is None:
        return _twin(pricing, event)  # resolved (and cached) there
    global_prices, project_prices = pricing._overrides
    price = pricing._custom(resolution, event.project_id) if global_prices or project_prices else None
    if price is not None:
        entry = _custom_entry
    else:
        price = resolution.default
        if price is None:
            return None
        entry = resolution.entry
    cdef long long cost = 0
    cdef bint partial = False
    if not _price(price, inp, out, cr, cw, cw1h, ain, aout, &cost, &partial):
        return _twin(pricing, event)
    return (cost, partial, entry)
