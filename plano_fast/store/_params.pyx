# cython: language_level=3
"""The SQLite writer's parameters of a chunk of usage rows, compiled: the twin of
``plano_fast.store._params_py`` (whose docstring is the specification), chosen in
``plano_fast.store.sqlite``: ``chunk_params``, ``insert_params``,
``add_day_sums`` and ``normalize_usage``.

Why: the twin reads 31 attributes a row (~5.4k instructions a row, callgrind,
benchmarks/bench_billing_stages.py ``params``, issue 27).  Here a ``UsageRow`` (exactly
that class) has its slots read in place (``plano_fast/_slots.pxd``) and put straight into
the flat list; a row of another class, with an unset slot, or whose ``priced`` is not
exactly True or False goes through the twin's ``usage_params``, as in the twin.
"""

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport Py_EQ, Py_TYPE, PyObject, PyObject_RichCompareBool
from cpython.ref cimport Py_INCREF

from plano_fast._slots cimport get_slot, slot_offset

from plano_fast.store._params_py import usage_params as _usage_params
from plano_fast.store.records import PRICE_STATUS_PARTIAL, PRICE_STATUS_PENDING, PRICE_STATUS_PRICED, UsageRow
from plano_fast.store.times import _NS_PER_DAY as _ns_per_day
from plano_fast.store.sql import USAGE_WRITE_COLUMNS
from plano_fast.store.sql import normalize_usage as _normalize_usage_py

DEF WIDTH = 31
if (len(USAGE_WRITE_COLUMNS) != WIDTH or USAGE_WRITE_COLUMNS[16] != "priced" or USAGE_WRITE_COLUMNS[19] != "price_status"
        or USAGE_WRITE_COLUMNS[:5] != ("request_id", "time_ns", "project_id", "user_id", "key_hash")
        or (USAGE_WRITE_COLUMNS[7], USAGE_WRITE_COLUMNS[25], USAGE_WRITE_COLUMNS[28]) != ("model", "usage_raw", "requested_model")):
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
cdef object _true = True  # objects: a bare True cast to a pointer is Cython's C 1
cdef object _false = False
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


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int *overflow) except? -1
    bint PyLong_CheckExact(object obj)
    PyObject *PyList_GET_ITEM(object lst, Py_ssize_t i)


DEF MAX_WIDTH = 64


cdef inline bint _is_null(PyObject *value) except -1:
    # list.count(None)'s test, the identity first (every None, no call)
    return value == <PyObject*>None or PyObject_RichCompareBool(<object>value, None, Py_EQ)


cdef inline bint _is_zero(PyObject *value) except -1:
    # list.count(0)'s test: 0 is one object in CPython, the identity first
    return value == <PyObject*>_zero or PyObject_RichCompareBool(<object>value, _zero, Py_EQ)


from plano_fast.store._params_py import insert_params as _insert_params_py


cdef inline bint _same_binding(PyObject *a, PyObject *b) except -1:
    # the twin's same_binding: the same object, or an exact str / int equal to one of its type
    if a == b:
        return True
    if Py_TYPE(<object>a) is not Py_TYPE(<object>b):
        return False
    if not (type(<object>a) is str or type(<object>a) is int):
        return False
    return PyObject_RichCompareBool(<object>a, <object>b, Py_EQ)


def insert_params(Py_ssize_t n, list params, tuple omittable, tuple zero_groups, tuple share_groups):
    """The twin's ``insert_params`` (``omitted_columns``' left-out columns, the kept columns
    of each share group bound once when every row binds them alike, and the parameters:
    the shared values, then each row's other kept values), each column tested in place and
    the values copied in one pass."""
    cdef Py_ssize_t size = len(params)
    if n <= 0 or size % n:
        return _insert_params_py(n, params, omittable, zero_groups, share_groups)
    cdef Py_ssize_t width = size // n
    if width > MAX_WIDTH:
        return _insert_params_py(n, params, omittable, zero_groups, share_groups)
    cdef Py_ssize_t r, i, k, at, nrow, nshared
    cdef bint left_out, alike
    cdef char state[MAX_WIDTH]  # 0: bound per row, 1: left out, 2: bound once
    cdef Py_ssize_t per_row[MAX_WIDTH]
    cdef PyObject *first
    for i in range(width):
        state[i] = 0
    for column in omittable:
        i = column
        if i < 0 or i >= width:
            return _insert_params_py(n, params, omittable, zero_groups, share_groups)
    for group in zero_groups:
        for column in group:
            i = column
            if i < 0 or i >= width:
                return _insert_params_py(n, params, omittable, zero_groups, share_groups)
    if n > 1:  # a chunk of one row shares nothing: its groups are not read
        for group in share_groups:
            for column in group:
                i = column
                if i < 0 or i >= width:
                    return _insert_params_py(n, params, omittable, zero_groups, share_groups)
    omitted = []
    for column in omittable:
        i = column
        left_out = True
        for r in range(n):
            if not _is_null(PyList_GET_ITEM(params, r * width + i)):
                left_out = False
                break
        if left_out:
            omitted.append(column)
            state[i] = 1
    for group in zero_groups:
        left_out = True
        for column in group:
            i = column
            for r in range(n):
                if not _is_zero(PyList_GET_ITEM(params, r * width + i)):
                    left_out = False
                    break
            if not left_out:
                break
        if left_out:
            omitted.extend(group)
            for column in group:
                i = column
                state[i] = 1
    nshared = 0
    if n > 1:
        for group in share_groups:
            alike = True
            for column in group:
                i = column
                if state[i] == 1:
                    continue
                first = PyList_GET_ITEM(params, i)
                for r in range(1, n):
                    if not _same_binding(first, PyList_GET_ITEM(params, r * width + i)):
                        alike = False
                        break
                if not alike:
                    break
            if alike:
                for column in group:
                    i = column
                    if state[i] == 0:
                        state[i] = 2
                        nshared += 1
    if not omitted and not nshared:
        return (), (), params
    shared = []
    nrow = 0
    for i in range(width):
        if state[i] == 2:
            shared.append(i)
        elif state[i] == 0:
            per_row[nrow] = i
            nrow += 1
    cdef list out = PyList_New(nshared + n * nrow)
    at = 0
    for i in range(width):
        if state[i] == 2:
            _set(out, at, <object>PyList_GET_ITEM(params, i))
            at += 1
    for r in range(n):
        for k in range(nrow):
            _set(out, at, <object>PyList_GET_ITEM(params, r * width + per_row[k]))
            at += 1
    return tuple(omitted), tuple(shared), out


cdef object _NS_PER_DAY = _ns_per_day
cdef long long NS_PER_DAY_C = _ns_per_day
DEF C_TIME = 1
DEF C_PROJECT = 2
DEF C_USER = 3
DEF C_KEY = 4


cdef inline bint _same(object a, object b) except -1:
    # a tuple key's element test, the identity first
    return a is b or a == b


def add_day_sums(rows, dict sums):
    """``plano_fast.store.sql.add_day_sums``: what priced ``rows`` cost added to ``sums``
    per (project_id, user_id, key_hash, UTC day).  A run of rows of one key (a group
    commit's rows of one token and day) is summed first and added to ``sums`` once, the
    key tuple built and hashed once a run instead of twice a row; for int costs (what
    ``normalize_usage`` lets through) the sums are the twin's, in the twin's key order.
    A row not exactly a ``UsageRow`` with those slots set is read by attribute, in the
    twin's order (its AttributeError for an unset field).  When a row raises, the run
    before it is not in ``sums`` yet (the twin's would be): the caller's transaction is
    rolled back and its sums dropped either way."""
    cdef Py_ssize_t n = len(rows), r
    cdef bint whole, run_open = False, fast, run_fast = False
    cdef int overflow
    cdef long long t_c, day_c = 0, run_day_c = 0
    run_project = run_user = run_key = run_day = run_cost = None
    for r in range(n):
        row = rows[r]
        whole = type(row) is _Row
        if whole:
            whole = (get_slot(row, OFF[C_COST]) is not NULL and get_slot(row, OFF[C_PRICED]) is not NULL
                     and get_slot(row, OFF[C_PROJECT]) is not NULL and get_slot(row, OFF[C_USER]) is not NULL
                     and get_slot(row, OFF[C_KEY]) is not NULL and get_slot(row, OFF[C_TIME]) is not NULL)
        if whole:
            cost = <object>get_slot(row, OFF[C_COST])
            if not <object>get_slot(row, OFF[C_PRICED]) or not cost:
                continue
            project = <object>get_slot(row, OFF[C_PROJECT])
            user = <object>get_slot(row, OFF[C_USER])
            key = <object>get_slot(row, OFF[C_KEY])
            time_ns = <object>get_slot(row, OFF[C_TIME])
        else:
            cost = row.cost_nano_usd
            if not row.priced or not cost:
                continue
            project = row.project_id
            user = row.user_id
            key = row.key_hash
            time_ns = row.time_ns
        fast = False
        if PyLong_CheckExact(time_ns):
            overflow = 0
            t_c = PyLong_AsLongLongAndOverflow(time_ns, &overflow)
            if overflow == 0 and t_c >= 0:  # C's division is the floor one here
                fast = True
                day_c = t_c // NS_PER_DAY_C
        if run_open:
            if fast and run_fast:
                if day_c == run_day_c and _same(project, run_project) and _same(user, run_user) and _same(key, run_key):
                    run_cost = run_cost + cost
                    continue
                day = day_c
            else:
                day = day_c if fast else time_ns // _NS_PER_DAY
                if _same(day, run_day) and _same(project, run_project) and _same(user, run_user) and _same(key, run_key):
                    run_cost = run_cost + cost
                    continue
            k = (run_project, run_user, run_key, run_day)
            sums[k] = sums.get(k, 0) + run_cost
        else:
            day = day_c if fast else time_ns // _NS_PER_DAY
        run_open = True
        run_fast = fast
        run_day_c = day_c
        run_project, run_user, run_key, run_day, run_cost = project, user, key, day, cost
    if run_open:
        k = (run_project, run_user, run_key, run_day)
        sums[k] = sums.get(k, 0) + run_cost


cdef extern from "Python.h":
    Py_ssize_t PyUnicode_FindChar(object s, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end, int direction) except -2
    bint PyUnicode_CheckExact(object obj)

DEF C_REQUEST_ID = 0
DEF C_MODEL = 7
DEF C_USAGE_RAW = 25
DEF C_REQUESTED_MODEL = 28


cdef inline bint _plain_text(PyObject *value) except -1:
    # None, or a str without a NUL: nothing for normalize_usage to rewrite
    if value == <PyObject*>None:
        return True
    if not PyUnicode_CheckExact(<object>value):
        return False
    return PyUnicode_FindChar(<object>value, 0, 0, len(<object>value), 1) == -1


def normalize_usage(rows, set seen=None):
    """``plano_fast.store.sql.normalize_usage`` (the twin, the specification): rows
    validated for writing, repeated request ids within the batch dropped (first wins).
    A ``UsageRow`` whose checks all pass as read in place (priced exactly True with an
    int cost >= 0, or exactly False; model, requested model and raw usage None or a str
    without a NUL) is kept here; any other row goes through the twin, one row at a time
    with the same ``seen``: its errors, its rewrites, its duplicate test."""
    if seen is None:
        seen = set()
    cdef list out = []
    cdef bint whole
    cdef PyObject *priced
    cdef PyObject *cost
    for row in rows:
        whole = type(row) is _Row
        if whole:
            for i in (C_REQUEST_ID, C_PRICED, C_COST, C_MODEL, C_REQUESTED_MODEL, C_USAGE_RAW):
                if get_slot(row, OFF[i]) is NULL:
                    whole = False
                    break
        if whole:
            priced = get_slot(row, OFF[C_PRICED])
            if priced == <PyObject*>_true:
                cost = get_slot(row, OFF[C_COST])
                whole = PyLong_CheckExact(<object>cost) and (<object>cost) >= 0
            else:
                whole = priced == <PyObject*>_false
        if whole:
            whole = (_plain_text(get_slot(row, OFF[C_MODEL])) and _plain_text(get_slot(row, OFF[C_REQUESTED_MODEL]))
                     and _plain_text(get_slot(row, OFF[C_USAGE_RAW])))
        if not whole:
            out += _normalize_usage_py([row], seen)
            continue
        request_id = <object>get_slot(row, OFF[C_REQUEST_ID])
        if request_id in seen:
            continue
        seen.add(request_id)
        out.append(row)
    return out
