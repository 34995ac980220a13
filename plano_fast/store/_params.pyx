# cython: language_level=3
"""The SQLite writer's parameters of a chunk of usage rows, compiled: the twin of
``plano_fast.store._params_py`` (whose docstring is the specification), chosen in
``plano_fast.store.sqlite``.

Why: the twin reads 31 attributes a row (~5.4k instructions a row, callgrind,
benchmarks/bench_billing_stages.py ``params``, issue 27).  Here a ``UsageRow`` (exactly
that class) has its slots read in place (``plano_fast/_slots.pxd``) and put straight into
the flat list; a row of another class, with an unset slot, or whose ``priced`` is not
exactly True or False goes through the twin's ``usage_params``, as in the twin.
"""

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF

from plano_fast._slots cimport get_slot, slot_offset

from plano_fast.store._params_py import usage_params as _usage_params
from plano_fast.store.records import PRICE_STATUS_PARTIAL, PRICE_STATUS_PENDING, PRICE_STATUS_PRICED, UsageRow
from plano_fast.store.sql import USAGE_WRITE_COLUMNS

DEF WIDTH = 31
if len(USAGE_WRITE_COLUMNS) != WIDTH or USAGE_WRITE_COLUMNS[16] != "priced" or USAGE_WRITE_COLUMNS[19] != "price_status":
    raise ImportError("usage_log's written columns changed: _params.pyx must be updated (the twin is used)")

cdef Py_ssize_t OFF[WIDTH]
for _i in range(WIDTH):
    OFF[_i] = slot_offset(UsageRow, USAGE_WRITE_COLUMNS[_i])

DEF C_STREAMING = 13
DEF C_PRICED = 16
DEF C_COST = 17
DEF C_PRICE_STATUS = 19

cdef object _Row = UsageRow
cdef object _partial = PRICE_STATUS_PARTIAL
cdef object _priced = PRICE_STATUS_PRICED
cdef object _pending = PRICE_STATUS_PENDING
cdef object _one = 1
cdef object _zero = 0


cdef inline void _set(list out, Py_ssize_t at, object value):
    Py_INCREF(value)  # PyList_SET_ITEM steals a reference
    PyList_SET_ITEM(out, at, value)


def chunk_params(rows):
    """The parameters of ``_multi_insert(len(rows))``: ``usage_params`` of each row, flat."""
    cdef Py_ssize_t n = len(rows)
    cdef list out = PyList_New(n * WIDTH)
    cdef Py_ssize_t r, i, at
    cdef PyObject *value
    cdef bint whole
    for r in range(n):
        row = rows[r]
        at = r * WIDTH
        whole = type(row) is _Row
        if whole:
            for i in range(WIDTH):
                if get_slot(row, OFF[i]) is NULL:
                    whole = False
                    break
        priced = <object>get_slot(row, OFF[C_PRICED]) if whole else None
        if whole and (priced is True or priced is False):
            for i in range(WIDTH):
                _set(out, at + i, <object>get_slot(row, OFF[i]))
            streaming = out[at + C_STREAMING]
            out[at + C_STREAMING] = _one if streaming else _zero
            if priced is True:
                out[at + C_PRICED] = _one
                out[at + C_PRICE_STATUS] = _partial if out[at + C_PRICE_STATUS] == _partial else _priced
            else:
                out[at + C_PRICED] = _zero
                out[at + C_COST] = None
                out[at + C_PRICE_STATUS] = _pending
        else:
            values = _usage_params(row)  # raises for an unset slot, as the twin does
            for i in range(WIDTH):
                _set(out, at + i, values[i])
    return out
