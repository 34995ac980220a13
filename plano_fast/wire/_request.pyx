# cython: language_level=3
"""The request fast path: one pass over a complete, plain HTTP/1.1 request in a read.

httptools calls back into Python once per header (17 for the openai SDK: ~4 µs of a
~55 µs request), so the common request -- HTTP/1.1, a Content-Length body that arrived
whole -- is parsed here instead, in one pass that builds the same ``Request`` fields.

It is a strict subset, never a second opinion: it accepts only requests whose framing
cannot be read two ways, and returns None for anything else, which httptools then parses
(and accepts or refuses) exactly as before.  Declined: another method or HTTP version,
a target or header byte outside the plain RFC 9110/9112 grammar, bare LF, obs-fold,
whitespace before a colon or after a value, empty values, Transfer-Encoding, Expect,
Upgrade, a second Content-Length, no Host or a second one, a Connection other than ``keep-alive`` / ``close``, a
head over the size limit, a body over its limit or not complete in the buffer.
tests/test_request_fast_path.py checks the subset against httptools, byte for byte.
"""

from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)

from plano_fast.wire._bytes cimport (
    R_CREDENTIAL, R_DROP, R_KEEP, R_REQUEST_ID, R_VERSION, account_name, lower, name_is, request_kind, starts,
    without_account_lines,
)

cdef int64_t MAX_DIGITS = 18

# Character classes: TCHAR (header names) and VALUE (field-value bytes), shared with
# _head.pyx; RFC 3986 for the target, without '#' (a fragment is never sent).
include "_header_chars.pxi"

cdef unsigned char TARGET[256]


cdef void _init_target_chars():
    cdef int c
    for c in range(256):
        TARGET[c] = 0
    for c in b"-._~:/?[]@!$&'()*+,;=%0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TARGET[c] = 1


_init_target_chars()

# The methods taken here (others go to httptools), with the space after each.
cdef const char *METHOD_WORDS[7]
cdef Py_ssize_t METHOD_LENS[7]
METHOD_WORDS[:] = [b"POST ", b"GET ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ", b"HEAD "]
METHOD_LENS[:] = [5, 4, 4, 6, 7, 8, 5]
_METHODS = (b"POST", b"GET", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD")


def parse_request(bytes buf not None, Py_ssize_t start, Py_ssize_t max_head_bytes, Py_ssize_t max_body_bytes):
    """The request at ``buf[start:]`` as ``(method, target, headers, body, keep_alive,
    end, forward)``, headers as ``[(lowercased name, value)]``, ``end`` the offset after
    it, ``forward`` what ``forward_request_headers(headers)`` returns (the upstream header
    block and the credential), built in the same pass; or None when it is not a complete
    request this fast path accepts.

    A Connection header here is only ``keep-alive`` or ``close``, which name no header to
    drop, so the block follows from each header's own name (``request_kind``)."""
    cdef Py_ssize_t head = len(buf) - start
    if head > max_head_bytes:
        head = max_head_bytes
    # the block holds head bytes only, and a forwarded line is at most one byte longer than
    # the line it came from (": " after the colon)
    cdef unsigned char *out = <unsigned char *>malloc(2 * head + 16 if head > 0 else 16)
    if out == NULL:
        raise MemoryError()
    try:
        return _parse(buf, start, max_head_bytes, max_body_bytes, out)
    finally:
        free(out)


cdef object _parse(bytes buf, Py_ssize_t start, Py_ssize_t max_head_bytes, Py_ssize_t max_body_bytes,
                   unsigned char *out):
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = len(buf)
    cdef Py_ssize_t limit = n if n - start <= max_head_bytes else start + max_head_bytes
    cdef Py_ssize_t i = start, a, b, colon, name_len
    cdef int64_t content_length = -1, v
    cdef bint keep_alive = True, seen_connection = False
    cdef unsigned char c
    cdef bytes name, block
    cdef unsigned char *w
    cdef Py_ssize_t k, m, o = 0
    cdef int kind, credentials = 0, hosts = 0, accounts = 0
    cdef bint seen_version = False
    request_id = None
    cdef bytes value
    cdef tuple pair
    credential_name = None
    credential_value = None

    # request line: METHOD SP target SP HTTP/1.1 CRLF
    method = None
    for k in range(7):
        m = METHOD_LENS[k]
        if starts(s + i, n - i, METHOD_WORDS[k], m):
            method = _METHODS[k]
            i += m
            break
    if method is None:
        return None
    a = i
    if i >= limit or s[i] != 47:
        return None  # origin-form only ("/..."); absolute and asterisk forms go to httptools
    while TARGET[s[i]]:  # (TARGET[0] == 0: the NUL after the buffer's last byte stops it)
        i += 1
    if i == a or i >= limit or s[i] != 32:
        return None
    target = PyBytes_FromStringAndSize(<const char *>s + a, i - a)
    i += 1
    if not starts(s + i, limit - i, b"HTTP/1.1\r\n", 10):
        return None
    i += 10

    headers = []
    while True:
        if i + 1 >= limit:
            return None  # incomplete, or longer than the head limit
        if s[i] == 13:
            if s[i + 1] != 10:
                return None
            i += 2
            break
        # field-name ":"
        a = i
        i = skip_name(s, i, limit)
        if i == a or i >= limit or s[i] != 58:
            return None
        colon = i
        i += 1
        while i < limit and (s[i] == 32 or s[i] == 9):
            i += 1
        b = i
        i = skip_value(s, i, limit)
        if i + 1 >= limit or s[i] != 13 or s[i + 1] != 10:
            return None
        if i == b or s[i - 1] == 32 or s[i - 1] == 9:
            return None  # an empty value, or trailing whitespace: httptools decides
        name_len = colon - a
        name = PyBytes_FromStringAndSize(NULL, name_len)
        w = <unsigned char *>PyBytes_AS_STRING(name)
        for k in range(name_len):
            w[k] = lower(s[a + k])
        # framing and connection headers
        if name_len == 14 and name_is(w, name_len, b"content-length", 14):
            if content_length >= 0 or i - b > MAX_DIGITS:
                return None
            v = 0
            for k in range(b, i):
                c = s[k]
                if c < 48 or c > 57:
                    return None
                v = v * 10 + (c - 48)
            content_length = v
        elif name_len == 10 and name_is(w, name_len, b"connection", 10):
            if seen_connection:
                return None
            seen_connection = True
            if name_is(s + b, i - b, b"close", 5):
                keep_alive = False
            elif not name_is(s + b, i - b, b"keep-alive", 10):
                return None
        elif (
            (name_len == 17 and name_is(w, name_len, b"transfer-encoding", 17))
            or (name_len == 6 and name_is(w, name_len, b"expect", 6))
            or (name_len == 7 and name_is(w, name_len, b"upgrade", 7))
        ):
            return None
        value = PyBytes_FromStringAndSize(<const char *>s + b, i - b)
        pair = (name, value)
        # Two bytes objects: the pair can be in no reference cycle, so it leaves the
        # cyclic GC now rather than at the first collection that scans it (CPython
        # untracks such tuples itself, lazily): an in-flight request's ~18 pairs were a
        # third of what each young collection scanned at saturation.
        PyObject_GC_UnTrack(<void *>pair)
        headers.append(pair)
        # the upstream block, as forward_request_headers builds it from ``headers``
        kind = request_kind(w, name_len)
        if kind == R_DROP and name_len == 4:
            hosts += 1  # (the only 4-byte name request_kind drops: host)
        if kind == R_CREDENTIAL:
            if credentials == 0:
                credential_name = name
                credential_value = value
            credentials += 1
        elif kind == R_REQUEST_ID:
            # never in the block: finish_head writes one (the client's if valid, else ours)
            request_id = value if request_id is None else b""
        elif kind != R_DROP:
            if kind == R_VERSION:
                seen_version = True
            elif kind == R_KEEP and account_name(w, name_len):
                accounts += 1  # (in the block: the operator's block is cut from it below)
            memcpy(out + o, w, name_len)
            o += name_len
            out[o] = 58
            out[o + 1] = 32
            o += 2
            memcpy(out + o, s + b, i - b)
            o += i - b
            out[o] = 13
            out[o + 1] = 10
            o += 2
        i += 2

    if hosts != 1:
        return None  # no Host or several (RFC 9112 §3.2: a 400): httptools' path refuses it
    if content_length < 0:
        content_length = 0
    if content_length > max_body_bytes or n - i < content_length:
        return None
    body = PyBytes_FromStringAndSize(<const char *>s + i, <Py_ssize_t>content_length)
    block = PyBytes_FromStringAndSize(<const char *>out, o)
    forward = (block, seen_version, request_id, credentials, credential_name, credential_value,
               without_account_lines(block) if accounts else block)
    return method, target, headers, body, keep_alive, i + <Py_ssize_t>content_length, forward
