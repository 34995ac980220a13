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
Upgrade, Origin and Sec-Fetch-Site (a browser's: ``gateway.cross_site``), a second
Content-Length, no Host or a second one or one that is not a plain
host[:port] (``wire._host``), a Connection other than ``keep-alive`` / ``close``, a
head over the size limit, a body over its limit or not complete in the buffer.
tests/test_request_fast_path.py checks the subset against httptools, byte for byte.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)

from plano_fast.wire._bytes cimport (
    R_CREDENTIAL, R_DROP, R_KEEP, R_REQUEST_ID, R_VERSION, account_name, lower, name_is, request_kind, starts,
    without_account_lines,
)

cdef int64_t MAX_DIGITS = 18
# the block's buffer on the stack, for a head (and what follows it in the read) up to ~4 KB
DEF STACK_BLOCK = 8192

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

# RFC 3986 reg-name bytes without the percent-escape (plano_fast.wire._host, written once):
# the Host values this path takes; any other (an IP literal, an escape, an invalid one) goes
# to httptools' path, which serves or refuses it (wire._host.valid_host)
from plano_fast.wire._host import PLAIN_HOST_CHARS

cdef unsigned char HOST[256]


cdef void _init_host_chars():
    cdef int c
    for c in range(256):
        HOST[c] = 0
    for c in PLAIN_HOST_CHARS:
        HOST[c] = 1


_init_host_chars()


cdef inline bint plain_host(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """``p[:n]`` is PLAIN_HOST_CHARS, at least one, then optionally ``:`` and digits."""
    cdef Py_ssize_t k = 0
    while k < n and HOST[p[k]]:
        k += 1
    if k == 0:
        return False
    if k < n:
        if p[k] != 58:
            return False
        k += 1
        while k < n and 48 <= p[k] <= 57:
            k += 1
    return k == n

# ASCII lowercase of each byte (the tail of ``lower_name``)
cdef unsigned char LOWER[256]


cdef void _init_lower():
    cdef int c
    for c in range(256):
        LOWER[c] = lower(c)


_init_lower()


cdef inline void lower8(unsigned char *w, const unsigned char *p) noexcept nogil:
    """w[:8] = p[:8] (tchars) in lowercase (see ``lower_name``)."""
    cdef uint64_t x, upper
    memcpy(&x, p, 8)
    upper = ((x + 0x3F3F3F3F3F3F3F3FULL) ^ (x + 0x2525252525252525ULL)) & 0x8080808080808080ULL
    x |= upper >> 2
    memcpy(w, &x, 8)


cdef inline void lower_name(unsigned char *w, const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """w[:n] = p[:n] in lowercase, p[:n] tchars (ASCII).  Eight bytes at a time: a byte
    below 0x80 plus 0x3F has its high bit set from 'A' on, plus 0x25 from past 'Z' on, so
    the two sums differ in that bit exactly for 'A'..'Z', which gets 0x20 (no carry crosses a
    byte: every byte is below 0x80).  A byte at a time, the branchy ``lower`` was ~2.4k
    instructions of a 17-header request."""
    cdef Py_ssize_t k = 0
    if n < 8:
        while k < n:
            w[k] = LOWER[p[k]]
            k += 1
        return
    while k + 8 < n:
        lower8(w + k, p + k)
        k += 8
    lower8(w + n - 8, p + n - 8)  # the last eight, overlapping what is done: no byte loop


# The methods taken here (others go to httptools), with the space after each.
cdef const char *METHOD_WORDS[7]
cdef Py_ssize_t METHOD_LENS[7]
METHOD_WORDS[:] = [b"POST ", b"GET ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ", b"HEAD "]
METHOD_LENS[:] = [5, 4, 4, 6, 7, 8, 5]
_METHODS = (b"POST", b"GET", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD")


# The credential headers' names as the block's pass finds them (lowercase): the name handed
# over is one of these constants, not a new bytes object per request.
_AUTHORIZATION = b"authorization"
_X_API_KEY = b"x-api-key"
_X_API_KEY_U = b"x_api_key"
_API_KEY = b"api-key"
_API_KEY_U = b"api_key"
_X_GOOG_API_KEY = b"x-goog-api-key"
_X_GOOG_API_KEY_U = b"x_goog_api_key"


cdef bytes credential_name(const unsigned char *w, Py_ssize_t n):
    """The lowercase name w[:n] of a credential header (``request_kind`` said R_CREDENTIAL)."""
    if n == 13:
        return _AUTHORIZATION
    if n == 9:
        return _X_API_KEY if w[1] == 45 else _X_API_KEY_U
    if n == 7:
        return _API_KEY if w[3] == 45 else _API_KEY_U
    if n == 14:
        return _X_GOOG_API_KEY if w[1] == 45 else _X_GOOG_API_KEY_U
    return PyBytes_FromStringAndSize(<const char *>w, n)  # (none: request_kind's list is the above)


@cython.final
@cython.no_gc
@cython.freelist(16)
cdef class RequestHeaders:
    """A fast-path request's headers, ``[(lowercased name, value)]`` as httptools' path
    builds them, made on first use from a copy of the head's header lines.

    Why lazy: the pass that parsed the request built what the hot path reads from the
    headers (the upstream block, the credential, the request id: ``forward``), so most
    requests never look at them; building ~17 pairs was ~37 bytes objects and 17 tuples a
    request (~4.5k instructions, and as much again to free them).  Only slow paths read
    them (tracing's traceparent, header-scoped rate limits, preference routing's session,
    the endpoints that identify without ``forward``).

    A read-only sequence: iteration, ``len``, indexing, ``in``, ``==`` (with a list: the
    pairs compared), and ``has(name)`` (a name looked for in the lines, no pairs made).
    No reference cycle is possible (bytes, and a list of pairs of bytes that is never
    handed out), hence ``no_gc``."""

    cdef bytes lines   # the header lines as received, each CRLF-ended (checked by the parse)
    cdef list pairs    # None until first use
    cdef Py_ssize_t count

    def __cinit__(self):
        self.pairs = None

    cdef list _list(self):
        if self.pairs is None:
            self.pairs = _pairs_of(self.lines)
        return self.pairs

    def __iter__(self):
        return iter(self._list())

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self._list()[index]

    def __contains__(self, item):
        return item in self._list()

    def __eq__(self, other):
        if isinstance(other, RequestHeaders):
            return self._list() == (<RequestHeaders>other)._list()
        if isinstance(other, list):
            return self._list() == other
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"RequestHeaders({self._list()!r})"

    def has(self, bytes name not None):
        """Whether a header called ``name`` (lowercase) is among them (no pairs made: what
        tracing asks of every request, ``_obs.has_header``)."""
        cdef Py_ssize_t end
        return self._value(name, True, &end) >= 0

    def last(self, bytes name not None):
        """The value of the last header called ``name`` (lowercase), or None (no pairs made:
        preference routing's session headers, ``_obs.header_value``)."""
        cdef Py_ssize_t end
        cdef Py_ssize_t start = self._value(name, False, &end)
        if start < 0:
            return None
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self.lines) + start, end - start)

    cdef Py_ssize_t _value(self, bytes name, bint first, Py_ssize_t *end):
        """Where the value of the first (``first``) or last header called ``name`` starts
        in the lines (``end[0]``: where it ends; cut as ``_pairs_of`` cuts it), or -1."""
        cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(self.lines)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.lines)
        cdef const unsigned char *want = <const unsigned char *>PyBytes_AS_STRING(name)
        cdef Py_ssize_t m = PyBytes_GET_SIZE(name), i = 0, a, k, start = -1
        cdef bint same
        while i < n:
            a = i
            while s[i] != 58:  # (every line has its colon: the parse checked it)
                i += 1
            same = i - a == m
            if same:
                for k in range(m):
                    if lower(s[a + k]) != want[k]:
                        same = False
                        break
            if same:
                i += 1
                while s[i] == 32 or s[i] == 9:
                    i += 1
                start = i
                while s[i] != 13:
                    i += 1
                end[0] = i
                if first:
                    return start
            while s[i] != 10:
                i += 1
            i += 1
        return start


cdef list _pairs_of(bytes lines):
    """The pairs of ``lines`` (header lines the parse checked: a name, a colon, optional
    spaces or tabs, a value that does not end with either, CRLF)."""
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(lines)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(lines)
    cdef Py_ssize_t i = 0, a, b
    cdef bytes name
    cdef tuple pair
    cdef list pairs = []
    while i < n:
        a = i
        while s[i] != 58:
            i += 1
        name = PyBytes_FromStringAndSize(NULL, i - a)
        lower_name(<unsigned char *>PyBytes_AS_STRING(name), s + a, i - a)
        i += 1
        while s[i] == 32 or s[i] == 9:
            i += 1
        b = i
        while s[i] != 13:
            i += 1
        pair = (name, PyBytes_FromStringAndSize(<const char *>s + b, i - b))
        # Two bytes objects: the pair can be in no reference cycle, so it leaves the
        # cyclic GC now rather than at the first collection that scans it (CPython
        # untracks such tuples itself, lazily).
        PyObject_GC_UnTrack(<void *>pair)
        pairs.append(pair)
        i += 2
    return pairs


def parse_request(bytes buf not None, Py_ssize_t start, Py_ssize_t max_head_bytes, Py_ssize_t max_body_bytes):
    """The request at ``buf[start:]`` as ``(method, target, headers, body, keep_alive,
    end, forward)``, ``headers`` a ``RequestHeaders`` (the sequence of ``(lowercased name,
    value)``, made on first use), ``end`` the offset after it, ``forward`` what
    ``forward_request_headers(list(headers))`` returns (the upstream header block and the
    credential), built in the same pass; or None when it is not a complete request this
    fast path accepts.

    A Connection header here is only ``keep-alive`` or ``close``, which name no header to
    drop, so the block follows from each header's own name (``request_kind``)."""
    return _parse_with_block(buf, start, max_head_bytes, max_body_bytes, False)


def parse_request_begun(bytes buf not None, Py_ssize_t start, Py_ssize_t max_head_bytes, Py_ssize_t max_body_bytes):
    """``parse_request``, and also a plain request whose head is complete in ``buf`` and
    whose Content-Length body (within ``max_body_bytes``) is not: then ``body`` is an int,
    the offset in ``buf`` where the body starts, and ``end`` where it will end.

    Why: an HTTP client library (httpx, under the openai and anthropic SDKs) writes a
    request's head and its body with two send() calls, so the server's first read usually
    holds the head alone.  The server keeps such a head (``ServerProtocol._hold``) and
    completes it from the next reads, instead of handing it to httptools, whose path is
    the slower one (a Python callback per header, no ``forward``, the twin dispatch)."""
    return _parse_with_block(buf, start, max_head_bytes, max_body_bytes, True)


cdef object _parse_with_block(bytes buf, Py_ssize_t start, Py_ssize_t max_head_bytes, Py_ssize_t max_body_bytes,
                              bint begun):
    """``_parse`` with the upstream block's buffer: on the stack for a usual head."""
    cdef Py_ssize_t head = len(buf) - start
    cdef unsigned char small[STACK_BLOCK]
    if head > max_head_bytes:
        head = max_head_bytes
    # the block holds head bytes only, and a forwarded line is at most one byte longer than
    # the line it came from (": " after the colon); a usual request's fits on the stack
    # (malloc and free of its ~2 KB were ~0.8k instructions)
    if head <= 0:
        head = 0
    if 2 * head + 16 <= STACK_BLOCK:
        return _parse(buf, start, max_head_bytes, max_body_bytes, small, begun)
    cdef unsigned char *out = <unsigned char *>malloc(2 * head + 16)
    if out == NULL:
        raise MemoryError()
    try:
        return _parse(buf, start, max_head_bytes, max_body_bytes, out, begun)
    finally:
        free(out)


cdef object _parse(bytes buf, Py_ssize_t start, Py_ssize_t max_head_bytes, Py_ssize_t max_body_bytes,
                   unsigned char *out, bint begun):
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = len(buf)
    cdef Py_ssize_t limit = n if n - start <= max_head_bytes else start + max_head_bytes
    cdef Py_ssize_t i = start, a, b, colon, name_len, lines_start, count = 0, target_start, target_end
    cdef int64_t content_length = -1, v
    cdef bint keep_alive = True, seen_connection = False
    cdef unsigned char c
    cdef bytes block
    cdef unsigned char *w
    cdef Py_ssize_t k, m, o = 0
    cdef int kind, credentials = 0, hosts = 0, accounts = 0
    cdef bint seen_version = False, whole
    cdef RequestHeaders headers
    request_id = None
    credential_name_ = None
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
    target_start = a
    target_end = i
    i += 1
    if not starts(s + i, limit - i, b"HTTP/1.1\r\n", 10):
        return None
    i += 10

    lines_start = i
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
        count += 1
        # the lowercase name, written where the block's next line would start (kept there
        # when the header is forwarded; the block so far plus this name fit: see the malloc)
        w = out + o
        lower_name(w, s + a, name_len)
        # framing and connection headers (w is lowercase: compared exactly)
        if name_len == 14 and starts(w, name_len, b"content-length", 14):
            if content_length >= 0 or i - b > MAX_DIGITS:
                return None
            v = 0
            for k in range(b, i):
                c = s[k]
                if c < 48 or c > 57:
                    return None
                v = v * 10 + (c - 48)
            content_length = v
        elif name_len == 10 and starts(w, name_len, b"connection", 10):
            if seen_connection:
                return None
            seen_connection = True
            if name_is(s + b, i - b, b"close", 5):
                keep_alive = False
            elif not name_is(s + b, i - b, b"keep-alive", 10):
                return None
        elif (
            (name_len == 17 and starts(w, name_len, b"transfer-encoding", 17))
            or (name_len == 6 and starts(w, name_len, b"expect", 6))
            or (name_len == 7 and starts(w, name_len, b"upgrade", 7))
            # a browser's: the twin's dispatch checks the request is not a cross-site one
            # (plano_fast.gateway.cross_site)
            or (name_len == 6 and starts(w, name_len, b"origin", 6))
            or (name_len == 14 and starts(w, name_len, b"sec-fetch-site", 14))
        ):
            return None
        # the upstream block, as forward_request_headers builds it from the pairs
        kind = request_kind(w, name_len)
        if kind == R_DROP and name_len == 4:
            hosts += 1  # (the only 4-byte name request_kind drops: host)
            if not plain_host(s + b, i - b):
                return None  # not a plain host[:port]: httptools' path serves or refuses it
        if kind == R_CREDENTIAL:
            if credentials == 0:
                credential_name_ = credential_name(w, name_len)
                credential_value = PyBytes_FromStringAndSize(<const char *>s + b, i - b)
            credentials += 1
        elif kind == R_REQUEST_ID:
            # never in the block: finish_head writes one (the client's if valid, else ours)
            request_id = PyBytes_FromStringAndSize(<const char *>s + b, i - b) if request_id is None else b""
        elif kind != R_DROP:
            if kind == R_VERSION:
                seen_version = True
            elif kind == R_KEEP and account_name(w, name_len):
                accounts += 1  # (in the block: the operator's block is cut from it below)
            o += name_len  # (the lowercase name is in place)
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
    if content_length > max_body_bytes:
        return None  # (httptools' path answers its 413 at once)
    whole = n - i >= content_length
    if not whole and not begun:
        return None
    target = PyBytes_FromStringAndSize(<const char *>s + target_start, target_end - target_start)
    headers = RequestHeaders.__new__(RequestHeaders)
    headers.lines = PyBytes_FromStringAndSize(<const char *>s + lines_start, i - 2 - lines_start)
    headers.count = count
    # (the body's start when only the head is here: parse_request_begun's held request)
    body = PyBytes_FromStringAndSize(<const char *>s + i, <Py_ssize_t>content_length) if whole else i
    block = PyBytes_FromStringAndSize(<const char *>out, o)
    forward = (block, seen_version, request_id, credentials, credential_name_, credential_value,
               without_account_lines(block) if accounts else block)
    return method, target, headers, body, keep_alive, i + <Py_ssize_t>content_length, forward
