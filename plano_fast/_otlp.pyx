"""``request(encoder, spans)`` compiled: the twin of ``plano_fast.otlp.OtlpEncoder._request_py``
and, span by span, ``_span_py`` (an export request's bytes, each ``Span`` message's: their
docstrings are the specification).

Why: the span encoding was the largest part of a traced request's cost (~77k instructions
for its two spans in the twin: the cache keys, the lookups and the parts joined in
bytecode).  Here the cache lookups are C calls, the ids and stamps are written in place
and the message is one allocation.  The caches stay the encoder's (``_heads``, ``_kv``,
``_statuses``) and so do the misses (``_head``, ``_miss``, ``_status``: the twin's code),
but for the commonest, a string attribute's (the request id's, each request), written
here (tests/test_tracing_otlp.py compares both builds with the SDK's bytes).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from plano_fast._slots cimport slot_offset, slot_or_attr as _get

from plano_fast.spans import TraceSpan

#: a record's fields read in place (its slots) when it is a ``TraceSpan`` itself: ~11
#: attribute lookups a span less in the export thread
include "_span_slots.pxi"


cdef inline object _of(object span, bint exact, Py_ssize_t offset, str name):
    """``getattr(span, name)``: in place for a ``TraceSpan`` (``exact``)."""
    return _get(span, offset, name) if exact else getattr(span, name)


cdef extern from "string.h":
    void* memmem(const void* haystack, size_t haystack_size, const void* needle, size_t needle_size)

#: SpanFlags field (16): CONTEXT_HAS_IS_REMOTE, | CONTEXT_IS_REMOTE for a client's parent
cdef bytes FLAGS_LOCAL = b"\x85\x01\x00\x01\x00\x00"
cdef bytes FLAGS_REMOTE = b"\x85\x01\x00\x03\x00\x00"
cdef bytes STATUS_UNSET = b"\x7a\x00"
#: what ``plano_fast.spans._TRACEPARENT_LINE`` starts with, and the line written instead
cdef bytes TRACEPARENT_LINE = b"\r\ntraceparent:"
cdef bytes TRACEPARENT_NAME = b"traceparent: 00-"
cdef const char* HEX = b"0123456789abcdef"


cdef inline char* _put(char* out, bytes data):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    memcpy(out, PyBytes_AS_STRING(data), n)
    return out + n


cdef inline char* _put_be(char* out, uint64_t value, int width):
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char>(value & 0xFF)
        value >>= 8
    return out + width


cdef inline char* _put_le64(char* out, uint64_t value):
    cdef int i
    for i in range(8):
        out[i] = <char>(value & 0xFF)
        value >>= 8
    return out + 8


cdef inline int _varint_size(uint64_t n):
    cdef int size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


cdef inline char* _put_varint(char* out, uint64_t n):
    while n >= 0x80:
        out[0] = <char>((n & 0x7F) | 0x80)
        n >>= 7
        out += 1
    out[0] = <char>n
    return out + 1


cdef bytes _string_attribute(str key, str value):
    """``Span.attributes`` field (9) of a string's ``KeyValue`` (``_miss``'s bytes), or None
    when a text is not UTF-8 (a lone surrogate: ``_miss`` logs and leaves it out)."""
    cdef Py_ssize_t key_size, value_size
    cdef const char* key_text
    cdef const char* value_text
    try:
        key_text = PyUnicode_AsUTF8AndSize(key, &key_size)
        value_text = PyUnicode_AsUTF8AndSize(value, &value_size)
    except UnicodeError:
        return None
    # KeyValue { key = 1; value = 2: AnyValue { string_value = 1 } }
    cdef Py_ssize_t any_size = 1 + _varint_size(value_size) + value_size
    cdef Py_ssize_t kv_size = 1 + _varint_size(key_size) + key_size + 1 + _varint_size(any_size) + any_size
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 1 + _varint_size(kv_size) + kv_size)
    cdef char* p = PyBytes_AS_STRING(out)
    p[0] = 0x4a
    p = _put_varint(p + 1, kv_size)
    p[0] = 0x0a
    p = _put_varint(p + 1, key_size)
    memcpy(p, key_text, key_size)
    p[key_size] = 0x12
    p = _put_varint(p + key_size + 1, any_size)
    p[0] = 0x0a
    p = _put_varint(p + 1, value_size)
    memcpy(p, value_text, value_size)
    return out


def request(encoder, spans):
    """The ``ExportTraceServiceRequest`` of ``spans``, in their order (``encoder``'s
    resource and scope): ``OtlpEncoder._request_py``'s bytes, written once."""
    cdef bytes resource = encoder._resource, resource_schema = encoder._resource_schema
    cdef bytes scope = encoder._scope, scope_schema = encoder._scope_schema
    cdef list encoded = [_span(encoder, s) for s in spans]
    cdef bytes one
    cdef Py_ssize_t n
    cdef Py_ssize_t scope_spans = PyBytes_GET_SIZE(scope) + PyBytes_GET_SIZE(scope_schema)
    for one in encoded:
        n = PyBytes_GET_SIZE(one)
        scope_spans += 1 + _varint_size(n) + n
    cdef Py_ssize_t resource_spans = (PyBytes_GET_SIZE(resource) + 1 + _varint_size(scope_spans) + scope_spans
                                      + PyBytes_GET_SIZE(resource_schema))
    cdef Py_ssize_t size = 1 + _varint_size(resource_spans) + resource_spans
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* start = PyBytes_AS_STRING(out)
    cdef char* p = start
    p[0] = 0x0a  # ExportTraceServiceRequest.resource_spans
    p = _put(_put_varint(p + 1, resource_spans), resource)
    p[0] = 0x12  # ResourceSpans.scope_spans
    p = _put(_put_varint(p + 1, scope_spans), scope)
    for one in encoded:
        p[0] = 0x12  # ScopeSpans.spans
        p = _put(_put_varint(p + 1, PyBytes_GET_SIZE(one)), one)
    p = _put(_put(p, scope_schema), resource_schema)
    if p - start != size:  # pragma: no cover - the sizes above are the writes below
        raise AssertionError("request size")
    return out


cdef int _trace_id(object trace_id, uint64_t* high, uint64_t* low) except -1:
    """A 128-bit trace id's two halves (``int.to_bytes(16)``'s range check)."""
    if not 0 <= trace_id < (1 << 128):
        raise OverflowError("trace id out of range")
    high[0] = trace_id >> 64
    low[0] = trace_id & 0xFFFFFFFFFFFFFFFF
    return 0


cdef bytes _span(encoder, span):
    """The ``Span`` message of ``span`` (a ``plano_fast.spans.TraceSpan``), with
    ``encoder``'s caches (an ``OtlpEncoder``)."""
    cdef bint exact = type(span) is _Span
    cdef uint64_t trace_hi, trace_lo
    _trace_id(_of(span, exact, S_TRACE_ID, "trace_id"), &trace_hi, &trace_lo)
    cdef uint64_t span_id = _of(span, exact, S_SPAN_ID, "span_id")
    cdef uint64_t parent_id = _of(span, exact, S_PARENT_ID, "parent_id")
    cdef uint64_t start_ns = _of(span, exact, S_START, "start_ns")
    cdef uint64_t end_ns = _of(span, exact, S_END, "end_ns")
    cdef uint64_t dropped = _of(span, exact, S_DROPPED, "dropped")
    cdef bytes head = (<dict>encoder._heads).get((_of(span, exact, S_NAME, "name"), _of(span, exact, S_KIND, "kind")))
    if head is None:
        head = encoder._head(span)
    cdef dict kv_cache = encoder._kv
    cdef dict attributes = _of(span, exact, S_ATTRIBUTES, "attributes")
    cdef list kvs = []
    cdef bytes kv
    cdef Py_ssize_t size = 18 + 10 + 2 * 9 + PyBytes_GET_SIZE(head) + 6
    for key, value in attributes.items():
        try:  # (key, value, type of value): True == 1 == 1.0
            kv = kv_cache.get((key, value, type(value)))
        except TypeError:  # an unhashable value
            kv = None
        if kv is None:
            kv = None if type(value) is not str or type(key) is not str else _string_attribute(key, value)
            if kv is None:
                kv = encoder._miss(key, value)
            elif PyBytes_GET_SIZE(kv) <= encoder.kv_entry_max:  # remembered as _miss does
                if len(kv_cache) >= encoder.cache_max:
                    kv_cache.clear()
                kv_cache[(key, value, str)] = kv
        kvs.append(kv)
        size += PyBytes_GET_SIZE(kv)
    error = _of(span, exact, S_ERROR, "error")
    cdef bytes status
    if error is None:
        status = STATUS_UNSET
    else:
        status = (<dict>encoder._statuses).get(error)
        if status is None:
            status = encoder._status(error)
    size += PyBytes_GET_SIZE(status)
    if parent_id:
        size += 10
    if dropped:
        size += 1 + _varint_size(dropped)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* start = PyBytes_AS_STRING(out)
    cdef char* p = start
    p[0] = 0x0a; p[1] = 0x10
    p = _put_be(_put_be(p + 2, trace_hi, 8), trace_lo, 8)
    p[0] = 0x12; p[1] = 0x08
    p = _put_be(p + 2, span_id, 8)
    if parent_id:
        p[0] = 0x22; p[1] = 0x08
        p = _put_be(p + 2, parent_id, 8)
    p = _put(p, head)
    p[0] = 0x39
    p = _put_le64(p + 1, start_ns)
    p[0] = 0x41
    p = _put_le64(p + 1, end_ns)
    for kv in kvs:
        p = _put(p, kv)
    if dropped:
        p[0] = 0x50
        p = _put_varint(p + 1, dropped)
    p = _put(p, status)
    p = _put(p, FLAGS_REMOTE if _of(span, exact, S_REMOTE, "remote_parent") else FLAGS_LOCAL)
    if p - start != size:  # pragma: no cover - the sizes above are the writes below
        raise AssertionError("span size")
    return out


cdef inline char* _put_hex(char* out, uint64_t value, int digits):
    cdef int i
    for i in range(digits - 1, -1, -1):
        out[i] = HEX[value & 0xF]
        value >>= 4
    return out + digits


cdef Py_ssize_t _strip(const char* src, Py_ssize_t n, char* out):
    """The bytes of ``src`` but each "\\r\\ntraceparent:" and the rest of its line (the
    twin's regular expression), copied to ``out`` unless it is NULL; their count."""
    cdef const char* needle = PyBytes_AS_STRING(TRACEPARENT_LINE)
    cdef Py_ssize_t needle_size = PyBytes_GET_SIZE(TRACEPARENT_LINE)
    cdef Py_ssize_t pos = 0, kept = 0, end, size
    cdef const char* hit
    while True:
        hit = <const char*>memmem(src + pos, n - pos, needle, needle_size)
        size = (n if hit == NULL else hit - src) - pos
        if out != NULL:
            memcpy(out + kept, src + pos, size)
        kept += size
        if hit == NULL:
            return kept
        end = (hit - src) + needle_size
        while end < n and src[end] != 13 and src[end] != 10:
            end += 1
        pos = end


def upstream_head(bytes head, span):
    """``head`` without its ``traceparent`` lines and with ``span``'s, last: the twin of
    ``plano_fast.spans.upstream_head`` (a regular expression's strip, then the line)."""
    cdef bint exact = type(span) is _Span
    cdef uint64_t trace_hi, trace_lo
    _trace_id(_of(span, exact, S_TRACE_ID, "trace_id"), &trace_hi, &trace_lo)
    cdef uint64_t span_id = _of(span, exact, S_SPAN_ID, "span_id")
    cdef const char* src = PyBytes_AS_STRING(head)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(head)
    cdef Py_ssize_t kept = _strip(src, n, NULL)
    # head[:-2] of what is kept, then "traceparent: 00-<trace>-<span>-01" and the empty line
    # (the kept bytes are copied whole: the last two are written over)
    cdef Py_ssize_t base = kept - 2 if kept >= 2 else 0
    cdef bytes out = PyBytes_FromStringAndSize(NULL, base + 16 + 32 + 1 + 16 + 3 + 4)
    _strip(src, n, PyBytes_AS_STRING(out))
    cdef char* p = _put(PyBytes_AS_STRING(out) + base, TRACEPARENT_NAME)
    p = _put_hex(_put_hex(p, trace_hi, 16), trace_lo, 16)
    p[0] = 0x2d  # -
    p = _put_hex(p + 1, span_id, 16)
    memcpy(p, b"-01\r\n\r\n", 7)
    return out
