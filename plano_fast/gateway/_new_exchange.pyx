# cython: language_level=3
"""``new_exchange(cls, ctx, request, responder)`` compiled: the twin of
``plano_fast.gateway.relay.new_exchange`` (``cls.__new__`` then ``Exchange.__init__``).

Why: every forwarded request builds one exchange, and ``Exchange.__init__`` is ~45 slot
stores in a Python frame behind a class call that 3.11 does not specialize (an argument
tuple, a second interpreter frame: ~1.5k instructions before the first store).  Here the
instance is allocated and its slots written in place (``plano_fast/_slots.pxd``).  The
defaults are not written twice: they are read once, at import, from an exchange that
``Exchange.__init__`` itself built (a template), and copied; only what differs per request
is computed here -- ``ctx``, ``request``, ``responder``, ``started_ns`` (``time.time_ns``),
``request_id`` (``relay.new_request_id``), a fresh ``upstream_data`` list and ``timeouts``
(``ctx.timeouts``).  A template value that is not immutable, or a slot ``__init__`` sets
that is not known here, is an ImportError: the pure twin is used
(tests/test_record_twins.py compares the two slot by slot).
"""

import time

from plano_fast._slots cimport get_slot, new_instance, put_slot, slot_offset

from plano_fast.gateway import relay
from plano_fast.gateway.relay import Exchange

#: set per request here, not copied from the template
PER_REQUEST = ("ctx", "request", "responder", "started_ns", "request_id", "upstream_data", "timeouts")
_IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple)


class _TemplateContext:
    timeouts = (0.0, 0.0, 0.0)


_template = object.__new__(Exchange)
Exchange.__init__(_template, _TemplateContext(), None, None)

cdef list _copied = []  # [(offset, value)] of the template's slots set by __init__
for _name in Exchange.__slots__:
    _off = slot_offset(Exchange, _name)
    if get_slot(_template, _off) == NULL or _name in PER_REQUEST:
        continue  # unset by __init__ (drain_left, drain_timer), or computed per request
    _value = getattr(_template, _name)
    if type(_value) not in _IMMUTABLE or (type(_value) is tuple and any(type(v) not in _IMMUTABLE for v in _value)):
        raise ImportError(f"Exchange.{_name}'s default is mutable: the pure twin is used")
    _copied.append((_off, _value))
for _name in PER_REQUEST:
    if get_slot(_template, slot_offset(Exchange, _name)) == NULL:
        raise ImportError(f"Exchange.__init__ no longer sets {_name}: the pure twin is used")

cdef Py_ssize_t N = len(_copied)
cdef list VALUES = [v for _, v in _copied]
cdef Py_ssize_t _OFFS[64]
if N > 64:
    raise ImportError("Exchange has more slots than _new_exchange.pyx holds: the pure twin is used")
for _i in range(N):
    _OFFS[_i] = _copied[_i][0]

cdef Py_ssize_t O_CTX = slot_offset(Exchange, "ctx")
cdef Py_ssize_t O_REQUEST = slot_offset(Exchange, "request")
cdef Py_ssize_t O_RESPONDER = slot_offset(Exchange, "responder")
cdef Py_ssize_t O_STARTED = slot_offset(Exchange, "started_ns")
cdef Py_ssize_t O_ID = slot_offset(Exchange, "request_id")
cdef Py_ssize_t O_DATA = slot_offset(Exchange, "upstream_data")
cdef Py_ssize_t O_TIMEOUTS = slot_offset(Exchange, "timeouts")

cdef object _time_ns = time.time_ns
cdef dict _relay = relay.__dict__
del _template
_copied = None


def new_exchange(cls, ctx, request, responder):
    """``cls.__new__(cls)`` then what ``Exchange.__init__(exchange, ctx, request, responder)``
    sets (``cls``: Exchange or a subclass of it, whose own slots are left to the caller)."""
    if not issubclass(cls, Exchange):
        raise TypeError("not an Exchange class")
    exchange = new_instance(cls)
    cdef Py_ssize_t i
    put_slot(exchange, O_CTX, ctx)
    put_slot(exchange, O_REQUEST, request)
    put_slot(exchange, O_RESPONDER, responder)
    put_slot(exchange, O_STARTED, _time_ns())
    put_slot(exchange, O_ID, _relay["new_request_id"]())
    put_slot(exchange, O_DATA, [])
    put_slot(exchange, O_TIMEOUTS, ctx.timeouts)
    for i in range(N):
        put_slot(exchange, _OFFS[i], VALUES[i])
    return exchange
