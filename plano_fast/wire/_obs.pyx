# cython: language_level=3
"""Request metrics accumulator and access-log line writer, compiled.

Compiled twin of ``plano_fast/wire/_obs_py.py`` (the specification is its docstring): the
per-route numbers live in C arrays (the bucket search compares int64 ns, no float is boxed
per request), and the access log's lines are written byte by byte into one buffer per flush
(no dict, no per-line bytes).  The two are checked against each other in
tests/test_obs_twins.py.
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, strlen
from libc.stdio cimport snprintf
from libc.math cimport isfinite
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_READ

from plano_fast.wire._obs_shared import (
    FAST_MS_LIMIT_US,
    KEY_PREFIX_CHARS,
    LATENCY_BUCKETS_NS,
    N_HISTOGRAMS,
    N_STATUS_CLASSES,
    N_TOKEN_KINDS,
    RECORD,
)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
    tm *gmtime_r(const time_t *timep, tm *result)


cdef enum:
    N_BOUNDS = 21
    ROW = 22        # the buckets and +Inf
    N_HIST = 4
    N_TOK = 5
    N_STATUS = 6
    N_RECORD = 23

assert len(LATENCY_BUCKETS_NS) == N_BOUNDS and N_HISTOGRAMS == N_HIST and N_TOKEN_KINDS == N_TOK
assert N_STATUS_CLASSES == N_STATUS and len(RECORD) == N_RECORD

cdef int64_t BOUNDS[N_BOUNDS]
for _i, _bound in enumerate(LATENCY_BUCKETS_NS):
    BOUNDS[_i] = _bound
cdef int64_t MS_LIMIT = FAST_MS_LIMIT_US
cdef Py_ssize_t KEY_CHARS = KEY_PREFIX_CHARS


cdef inline int bucket(int64_t value) noexcept nogil:
    """bisect_left: the first bound >= value, N_BOUNDS (+Inf) when above them all."""
    cdef int lo = 0, hi = N_BOUNDS, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if BOUNDS[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef class RouteStats:
    """Everything counted for one route (zeroed by the allocator)."""

    cdef int64_t _statuses[N_STATUS]
    cdef int64_t _counts[N_HIST][ROW]
    cdef double _sums[N_HIST]
    cdef bint _seen[N_HIST]
    cdef int64_t _tokens[N_TOK]

    cdef inline void add(self, int index, int64_t value_ns) noexcept:
        self._seen[index] = True
        self._counts[index][bucket(value_ns)] += 1
        self._sums[index] += <double>value_ns / 1e9

    @property
    def statuses(self):
        return [self._statuses[i] for i in range(N_STATUS)]

    @property
    def hists(self):
        cdef int i, j
        out = []
        for i in range(N_HIST):
            if not self._seen[i]:
                out.append(None)
            else:
                row = [<double>self._counts[i][j] for j in range(ROW)]
                row.append(self._sums[i])
                out.append(row)
        return out

    @property
    def tokens(self):
        return [self._tokens[i] for i in range(N_TOK)]


cdef class RouteTable:
    """The per-route numbers of one process."""

    cdef public dict routes

    def __cinit__(self):
        self.routes = {}

    def observe_ns(self, object labels, long long status, int64_t started_ns, int64_t ended_ns,
                   int64_t sent_ns, int64_t head_ns, object tokens):
        cdef PyObject *found = PyDict_GetItem(self.routes, labels)
        cdef RouteStats stats
        cdef int64_t overhead_ns
        cdef int i
        if found == NULL:
            stats = RouteStats.__new__(RouteStats)
            PyDict_SetItem(self.routes, labels, stats)
        else:
            stats = <RouteStats>found
        stats._statuses[status // 100 if 0 < status < 600 else 0] += 1
        stats.add(0, ended_ns - started_ns)
        if sent_ns:
            stats.add(1, ended_ns - sent_ns)
            overhead_ns = sent_ns - started_ns
            stats.add(3, overhead_ns if overhead_ns > 0 else 0)
        if head_ns:
            stats.add(2, head_ns - started_ns)
        if tokens is not None:
            if type(tokens) is tuple and PyTuple_GET_SIZE(tokens) >= N_TOK:
                for i in range(N_TOK):
                    stats._tokens[i] += <int64_t><object>PyTuple_GET_ITEM(tokens, i)
            else:
                for i in range(N_TOK):
                    stats._tokens[i] += <int64_t>tokens[i]


# -- the access log's lines -----------------------------------------------------------------

cdef struct Buf:
    char *p
    Py_ssize_t n
    Py_ssize_t cap


cdef int reserve(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char *p
    if b.n + extra <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < b.n + extra + 256:
        cap = b.n + extra + 256
    p = <char *>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int put(Buf *b, const char *s, Py_ssize_t k) except -1:
    if b.n + k > b.cap:
        reserve(b, k)
    memcpy(b.p + b.n, s, k)
    b.n += k
    return 0


cdef inline int puts(Buf *b, const char *s) except -1:
    return put(b, s, strlen(s))


cdef int put_int(Buf *b, int64_t v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef uint64_t u = (<uint64_t>0 - <uint64_t>v) if v < 0 else <uint64_t>v
    while True:
        i -= 1
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        tmp[i] = b'-'
    return put(b, tmp + i, 24 - i)


cdef int put_ascii(Buf *b, str text) except -1:
    """Text known to be plain ASCII (a repr, an int's digits)."""
    data = text.encode("ascii")
    return put(b, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef const char *HEX = b"0123456789abcdef"


cdef int put_str(Buf *b, str text, Py_ssize_t limit) except -1:
    """A JSON string of text[:limit] (see the twin's docstring for the escapes)."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(text)
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef const unsigned char *latin
    cdef uint32_t c
    cdef char *out
    if n > limit:
        n = limit
    reserve(b, 6 * n + 2)  # the longest: \uXXXX per character
    out = b.p + b.n
    out[0] = b'"'
    out += 1
    if kind == 1:
        latin = <const unsigned char *>data
        if plain_ascii(latin, n):  # the usual text: copied as it is
            memcpy(out, latin, n)
            out[n] = b'"'
            b.n = out + n + 1 - b.p
            return 0
        for i in range(n):
            c = latin[i]
            if 0x20 <= c < 0x80 and c != 0x22 and c != 0x5c:
                out[0] = <char>c
                out += 1
            else:
                out = put_char(out, c)
    else:
        for i in range(n):
            c = PyUnicode_READ(kind, data, i)
            if 0x20 <= c < 0x80 and c != 0x22 and c != 0x5c:
                out[0] = <char>c
                out += 1
            else:
                out = put_char(out, c)
    out[0] = b'"'
    out += 1
    b.n = out - b.p
    return 0


cdef inline bint plain_ascii(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """No byte of p[:n] needs an escape or UTF-8 encoding (a loop without an early exit:
    the compiler vectorizes it)."""
    cdef Py_ssize_t i
    cdef unsigned char bad = 0
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        bad |= (c < 0x20) | (c == 0x22) | (c == 0x5c) | (c >= 0x80)
    return bad == 0


cdef inline char *put_char(char *out, uint32_t c) noexcept nogil:
    """One character that is not plain printable ASCII: escaped, or UTF-8."""
    if c == 0x22 or c == 0x5c:
        out[0] = b'\\'
        out[1] = <char>c
        return out + 2
    if c < 0x20:
        out[0] = b'\\'
        if c == 0x08:
            out[1] = b'b'
        elif c == 0x09:
            out[1] = b't'
        elif c == 0x0a:
            out[1] = b'n'
        elif c == 0x0c:
            out[1] = b'f'
        elif c == 0x0d:
            out[1] = b'r'
        else:
            out[1] = b'u'
            out[2] = b'0'
            out[3] = b'0'
            out[4] = HEX[c >> 4]
            out[5] = HEX[c & 15]
            return out + 6
        return out + 2
    if c < 0x80:
        out[0] = <char>c
        return out + 1
    # \uXXXX: a lone surrogate (UTF-8 cannot carry it, JSON can), and NEL, LS and PS, which
    # end a line for str.splitlines() and other readers: raw, a client's model name could
    # forge a log line
    if (0xd800 <= c <= 0xdfff) or c == 0x85 or c == 0x2028 or c == 0x2029:
        out[0] = b'\\'
        out[1] = b'u'
        out[2] = HEX[(c >> 12) & 15]
        out[3] = HEX[(c >> 8) & 15]
        out[4] = HEX[(c >> 4) & 15]
        out[5] = HEX[c & 15]
        return out + 6
    if c < 0x800:
        out[0] = <char>(0xc0 | (c >> 6))
        out[1] = <char>(0x80 | (c & 0x3f))
        return out + 2
    if c < 0x10000:
        out[0] = <char>(0xe0 | (c >> 12))
        out[1] = <char>(0x80 | ((c >> 6) & 0x3f))
        out[2] = <char>(0x80 | (c & 0x3f))
        return out + 3
    out[0] = <char>(0xf0 | (c >> 18))
    out[1] = <char>(0x80 | ((c >> 12) & 0x3f))
    out[2] = <char>(0x80 | ((c >> 6) & 0x3f))
    out[3] = <char>(0x80 | (c & 0x3f))
    return out + 4


cdef int put_value(Buf *b, object value) except -1:
    cdef int overflow = 0
    cdef long long v
    cdef Py_ssize_t i
    cdef double f
    if value is None:
        return put(b, b"null", 4)
    if value is True:
        return put(b, b"true", 4)
    if value is False:
        return put(b, b"false", 5)
    if isinstance(value, str):
        return put_str(b, <str>value, PyUnicode_GET_LENGTH(value))
    if isinstance(value, int):
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            return put_ascii(b, str(int(value)))
        return put_int(b, v)
    if isinstance(value, float):
        f = value
        if not isfinite(f):
            return put(b, b"null", 4)
        return put_ascii(b, repr(float(value)))
    if isinstance(value, (list, tuple)):
        put(b, b"[", 1)
        for i in range(len(value)):
            if i:
                put(b, b",", 1)
            put_value(b, value[i])
        return put(b, b"]", 1)
    raise TypeError(f"access log: cannot write a {type(value).__name__}")


cdef int put_ms(Buf *b, int64_t us) except -1:
    """``us / 1000`` as a JSON number (see the twin's ``_ms``)."""
    cdef int64_t frac
    cdef char tail[4]
    cdef int k
    if 0 <= us < MS_LIMIT:
        put_int(b, us // 1000)
        frac = us % 1000
        tail[0] = b'.'
        if frac == 0:
            tail[1] = b'0'
            return put(b, tail, 2)
        tail[1] = <char>(48 + frac // 100)
        tail[2] = <char>(48 + (frac // 10) % 10)
        tail[3] = <char>(48 + frac % 10)
        k = 4
        while tail[k - 1] == b'0':
            k -= 1
        return put(b, tail, k)
    return put_ascii(b, repr(<double>us / 1000.0))


cdef inline int64_t floordiv(int64_t a, int64_t d) noexcept nogil:
    """Python's ``a // d`` (d > 0): C's division truncates toward zero."""
    cdef int64_t q = a / d
    if a % d != 0 and a < 0:
        q -= 1
    return q


cdef inline int64_t ns_of(object value) except? -1:
    """A clock reading, 0 for none (None or 0)."""
    if value is None:
        return 0
    return value


cdef int64_t _stamp_second = -(1 << 62)
cdef char _stamp_text[32]


cdef int put_line(Buf *b, tuple values) except -1:
    global _stamp_second
    cdef int64_t started_ns, ended_ns, head_ns, sent_ns, seconds, duration_us, upstream_us
    cdef time_t when
    cdef tm parts
    cdef char frac[8]
    cdef int ms
    if PyTuple_GET_SIZE(values) != N_RECORD:
        raise ValueError(f"access log: a record has {N_RECORD} values, not {PyTuple_GET_SIZE(values)}")
    started_ns = <object>PyTuple_GET_ITEM(values, 0)
    ended_ns = <object>PyTuple_GET_ITEM(values, 15)
    head_ns = ns_of(<object>PyTuple_GET_ITEM(values, 16))
    sent_ns = ns_of(<object>PyTuple_GET_ITEM(values, 17))
    seconds = floordiv(started_ns, 1000000000)
    if seconds != _stamp_second:  # formatted once a second, not once a line
        when = <time_t>seconds
        if gmtime_r(&when, &parts) == NULL:
            raise ValueError("access log: a time out of range")
        snprintf(_stamp_text, 32, b"%04d-%02d-%02dT%02d:%02d:%02d", parts.tm_year + 1900, parts.tm_mon + 1,
                 parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec)
        _stamp_second = seconds
    put(b, b'{"time":"', 9)
    puts(b, _stamp_text)
    ms = <int>((started_ns - seconds * 1000000000) // 1000000)  # 0..999
    frac[0] = b'.'
    frac[1] = <char>(48 + ms // 100)
    frac[2] = <char>(48 + (ms // 10) % 10)
    frac[3] = <char>(48 + ms % 10)
    frac[4] = b'Z'
    frac[5] = b'"'
    put(b, frac, 6)
    put(b, b',"request_id":', 14)
    put_value(b, <object>PyTuple_GET_ITEM(values, 1))
    put(b, b',"mode":', 8)
    put_value(b, <object>PyTuple_GET_ITEM(values, 2))
    put(b, b',"project":', 11)
    put_value(b, <object>PyTuple_GET_ITEM(values, 3))
    put(b, b',"key":', 7)
    key_hash = <object>PyTuple_GET_ITEM(values, 4)
    if not key_hash:
        put(b, b"null", 4)
    elif type(key_hash) is str:
        put_str(b, <str>key_hash, KEY_CHARS)
    else:
        put_value(b, key_hash[:KEY_CHARS])
    put(b, b',"provider":', 12)
    put_value(b, <object>PyTuple_GET_ITEM(values, 5))
    put(b, b',"model":', 9)
    put_value(b, <object>PyTuple_GET_ITEM(values, 6))
    put(b, b',"endpoint":', 12)
    put_value(b, <object>PyTuple_GET_ITEM(values, 7))
    put(b, b',"status":', 10)
    put_value(b, <object>PyTuple_GET_ITEM(values, 8))
    put(b, b',"outcome":', 11)
    put_value(b, <object>PyTuple_GET_ITEM(values, 9))
    put(b, b',"stream":', 10)
    put_value(b, <object>PyTuple_GET_ITEM(values, 10))
    put(b, b',"input_tokens":', 16)
    put_value(b, <object>PyTuple_GET_ITEM(values, 11))
    put(b, b',"output_tokens":', 17)
    put_value(b, <object>PyTuple_GET_ITEM(values, 12))
    put(b, b',"cache_read_tokens":', 21)
    put_value(b, <object>PyTuple_GET_ITEM(values, 13))
    put(b, b',"reasoning_tokens":', 20)
    put_value(b, <object>PyTuple_GET_ITEM(values, 14))
    duration_us = floordiv(ended_ns - started_ns, 1000)
    put(b, b',"duration_ms":', 15)
    put_ms(b, duration_us)
    put(b, b',"ttft_ms":', 11)
    if head_ns:
        put_ms(b, floordiv(head_ns - started_ns, 1000))
    else:
        put(b, b"null", 4)
    if sent_ns:
        upstream_us = floordiv(ended_ns - sent_ns, 1000)
        put(b, b',"upstream_ms":', 15)
        put_ms(b, upstream_us)
        put(b, b',"overhead_us":', 15)
        put_int(b, duration_us - upstream_us)
    else:
        put(b, b',"upstream_ms":null,"overhead_us":null', 38)
    put(b, b',"attempts":', 12)
    put_value(b, <object>PyTuple_GET_ITEM(values, 18))
    put(b, b',"client":', 10)
    put_value(b, <object>PyTuple_GET_ITEM(values, 19))
    put(b, b',"guardrails":', 14)
    put_value(b, <object>PyTuple_GET_ITEM(values, 20))
    put(b, b',"route":', 9)
    put_value(b, <object>PyTuple_GET_ITEM(values, 21))
    put(b, b',"attempt_trail":', 17)
    put_value(b, <object>PyTuple_GET_ITEM(values, 22))
    return put(b, b"}\n", 2)


def lines(records):
    """The JSON lines of RECORD tuples, one after the other, as UTF-8."""
    cdef Buf b
    b.p = NULL
    b.n = 0
    b.cap = 0
    try:
        if type(records) is list or type(records) is tuple:
            reserve(&b, 640 * len(records))  # ~500 bytes a line: one allocation, usually
        else:
            records = list(records)
        for values in records:
            put_line(&b, tuple(values) if type(values) is not tuple else <tuple>values)
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        free(b.p)


def has_header(headers, bytes name):
    """Whether a header called ``name`` (lowercased) is in ``headers``: a list of pairs, or
    a fast-path request's ``RequestHeaders`` (asked: its lines are looked at, no pairs made)."""
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(name)
    cdef const char *want = PyBytes_AS_STRING(name)
    cdef object key
    if type(headers) is not list:
        has = getattr(headers, "has", None)
        if has is not None:
            return has(name)
        headers = list(headers)  # (any other sequence of pairs, as the twin takes)
    for i in range(PyList_GET_SIZE(headers)):
        key = (<tuple?><object>PyList_GET_ITEM(headers, i))[0]  # (name, value) pairs
        if type(key) is bytes:
            if PyBytes_GET_SIZE(key) == n and memcmp(PyBytes_AS_STRING(key), want, n) == 0:
                return True
        elif key == name:
            return True
    return False


def header_value(headers, bytes name):
    """The value of the last header called ``name`` (lowercase; the names in ``headers``
    compared lowercased) or None: a list of pairs, or a fast-path request's
    ``RequestHeaders`` (asked: its lines are looked at, no pairs made).  Preference
    routing's session headers on every routed request (issue 27: its Python loop over
    the pairs, and their making, was ~20k instructions)."""
    cdef Py_ssize_t i, k, n = PyBytes_GET_SIZE(name)
    cdef const unsigned char *want = <const unsigned char *>PyBytes_AS_STRING(name)
    cdef const unsigned char *got
    cdef object key
    cdef tuple pair
    cdef bint same
    if type(headers) is not list:
        last = getattr(headers, "last", None)
        if last is not None:
            return last(name)
        headers = list(headers)  # (any other sequence of pairs, as the twin takes)
    for i in range(PyList_GET_SIZE(headers) - 1, -1, -1):
        pair = <tuple?><object>PyList_GET_ITEM(headers, i)  # (name, value) pairs
        key = pair[0]
        if type(key) is bytes:
            if PyBytes_GET_SIZE(key) != n:
                continue
            got = <const unsigned char *>PyBytes_AS_STRING(key)
            same = True
            for k in range(n):
                if _lower(got[k]) != want[k]:
                    same = False
                    break
            if same:
                return pair[1]
        elif key.lower() == name:
            return pair[1]
    return None


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)
    int PyList_Append(object lst, object item) except -1


cdef inline bint scalar(PyObject *value) noexcept:
    """None, or an exact str, int, float or bool: refers to no other object."""
    cdef object v = <object>value
    return v is None or type(v) is str or type(v) is int or type(v) is float or type(v) is bool


def record_appender(list pending not None):
    """``pending.append`` for the access log's records (``AccessLog.record``), with each
    record tuple that holds only scalars taken out of the cyclic GC first.

    Why: the records wait for the writer (every 0.2 s) by the thousand at saturation, and
    were most of what each young collection scanned (~800 of ~1.1k objects, after the
    usage records left it) until the collection untracked them itself.  A record holding
    anything else (the ``guardrails`` list) stays tracked."""
    def record(values):
        cdef Py_ssize_t i
        if type(values) is tuple:
            for i in range(PyTuple_GET_SIZE(values)):
                if not scalar(PyTuple_GET_ITEM(values, i)):
                    break
            else:
                PyObject_GC_UnTrack(<void *>values)
        PyList_Append(pending, values)
    return record
