# cython: language_level=3
"""Header relay in both directions, one pass each: the client's headers that go upstream,
and the upstream head's lines that go to the client.

Compiled twin of ``plano_fast/wire/_head_py.py``: the rules, and why this exists, are in its
docstrings; the two are checked against each other in tests/test_header_relay.py.
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeASCII

from plano_fast.wire._digits cimport put_decimal, put_hex
from plano_fast.wire._bytes cimport (
    R_CREDENTIAL, R_DROP, R_REQUEST_ID, R_VERSION, account_line, account_name, lower, name_is, request_kind, starts,
    without_account_lines,
)
from plano_fast.wire._shared import UPSTREAM_VERSION_ERROR, connection_tokens

cdef int64_t MAX_CONTENT_LENGTH = 4611686018427387903  # 2**62 - 1


cdef class ResponseHead:
    """An upstream response's head as the client will get it (twin: ``_head_py.ResponseHead``;
    the gateway's ``plano_fast.upstream.UpstreamHead``).

    An extension type, not a Python class with ``__slots__``: one is built for every
    upstream answer, and a Python ``__init__`` costs ~2k instructions on 3.11 before its
    first attribute (bench_request_path: -1.3k a request with this one)."""

    cdef readonly int status
    cdef readonly bytes block
    cdef readonly object content_length
    cdef readonly bint chunked

    def __init__(self, int status, bytes block not None, object content_length, bint chunked):
        self.status = status
        self.block = block
        self.content_length = content_length
        self.chunked = chunked

    def headers(self):
        """The kept headers as (lowercased name, value) pairs."""
        cdef list out = []
        cdef bytes line
        for line in self.block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                out.append((name.lower(), value.strip(b" \t")))
        return out

cdef enum:
    KEEP = 0
    DROP = 1
    CONTENT_LENGTH = 2
    TRANSFER_ENCODING = 3


# The response headers' table, hand-unrolled twice (``classify``, ``classify_tchar``: one
# compare each, inlined -- a table taking the compare as an argument was not, +2k
# instructions a request): tests/test_header_tables.py checks each against
# ``_head_py.DROPPED``, name for name, every case and near miss.
cdef int classify(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """What happens to a header called p[:n] (any case)."""
    if n == 2:
        return DROP if name_is(p, n, b"te", 2) else KEEP
    if n == 4:
        return DROP if name_is(p, n, b"date", 4) else KEEP
    if n == 6:
        return DROP if name_is(p, n, b"server", 6) else KEEP
    if n == 7:
        return DROP if name_is(p, n, b"trailer", 7) or name_is(p, n, b"upgrade", 7) else KEEP
    if n == 10:
        return DROP if name_is(p, n, b"connection", 10) or name_is(p, n, b"keep-alive", 10) else KEEP
    if n == 14:
        return CONTENT_LENGTH if name_is(p, n, b"content-length", 14) else KEEP
    if n == 16:
        return DROP if name_is(p, n, b"proxy-connection", 16) else KEEP
    if n == 17:
        return TRANSFER_ENCODING if name_is(p, n, b"transfer-encoding", 17) else KEEP
    if n == 18:
        return DROP if name_is(p, n, b"proxy-authenticate", 18) or name_is(p, n, b"x-plano-request-id", 18) else KEEP
    # the headers the gateway sets on an answer (_head_py.GATEWAY_RESPONSE_HEADERS)
    if n == 23:
        return DROP if name_is(p, n, b"x-plano-requested-model", 23) else KEEP
    if n == 25:
        return DROP if name_is(p, n, b"x-plano-guardrail-warning", 25) else KEEP
    if n == 29:
        return DROP if name_is(p, n, b"x-model-router-selected-route", 29) else KEEP
    if n == 19:
        return DROP if name_is(p, n, b"proxy-authorization", 19) else KEEP
    return KEEP


# -- names of tchars compared a word at a time (the fast path's names: skip_name checked them)

cdef inline uint64_t load8(const unsigned char *p) noexcept nogil:
    cdef uint64_t x
    memcpy(&x, p, 8)
    return x


cdef inline uint32_t load4(const unsigned char *p) noexcept nogil:
    cdef uint32_t x
    memcpy(&x, p, 4)
    return x


cdef inline bint tchar_name_is(const unsigned char *p, const char *name, Py_ssize_t n) noexcept nogil:
    """The n tchars at p equal the lowercase ``name`` (n bytes, at least 2) in any case.
    OR 0x20 on both sides, eight (or four) bytes at a time, overlapping at the end: it
    maps A-Z to a-z, and among tchars nothing else onto a letter, '-', '_' or a digit (the
    bytes the names hold), so it is ``name_is`` for tchar names, at ~1/4 of the
    instructions (``name_is``' byte loop with ``lower`` was ~0.8k a provider's head)."""
    cdef const unsigned char *t = <const unsigned char *>name
    cdef Py_ssize_t i = 0
    if n >= 8:
        while i + 8 < n:
            if (load8(p + i) | 0x2020202020202020ULL) != (load8(t + i) | 0x2020202020202020ULL):
                return False
            i += 8
        return (load8(p + n - 8) | 0x2020202020202020ULL) == (load8(t + n - 8) | 0x2020202020202020ULL)
    if n >= 4:
        return ((load4(p) | 0x20202020U) == (load4(t) | 0x20202020U)
                and (load4(p + n - 4) | 0x20202020U) == (load4(t + n - 4) | 0x20202020U))
    for i in range(n):
        if (p[i] | 0x20) != (t[i] | 0x20):
            return False
    return True


cdef int classify_tchar(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """``classify`` for a name of tchars (the fast path's), with ``tchar_name_is``; the
    names are classify's, length for length."""
    if n == 2:
        return DROP if tchar_name_is(p, b"te", 2) else KEEP
    if n == 4:
        return DROP if tchar_name_is(p, b"date", 4) else KEEP
    if n == 6:
        return DROP if tchar_name_is(p, b"server", 6) else KEEP
    if n == 7:
        return DROP if tchar_name_is(p, b"trailer", 7) or tchar_name_is(p, b"upgrade", 7) else KEEP
    if n == 10:
        return DROP if tchar_name_is(p, b"connection", 10) or tchar_name_is(p, b"keep-alive", 10) else KEEP
    if n == 14:
        return CONTENT_LENGTH if tchar_name_is(p, b"content-length", 14) else KEEP
    if n == 16:
        return DROP if tchar_name_is(p, b"proxy-connection", 16) else KEEP
    if n == 17:
        return TRANSFER_ENCODING if tchar_name_is(p, b"transfer-encoding", 17) else KEEP
    if n == 18:
        return DROP if (tchar_name_is(p, b"proxy-authenticate", 18)
                        or tchar_name_is(p, b"x-plano-request-id", 18)) else KEEP
    if n == 23:
        return DROP if tchar_name_is(p, b"x-plano-requested-model", 23) else KEEP
    if n == 25:
        return DROP if tchar_name_is(p, b"x-plano-guardrail-warning", 25) else KEEP
    if n == 29:
        return DROP if tchar_name_is(p, b"x-model-router-selected-route", 29) else KEEP
    if n == 19:
        return DROP if tchar_name_is(p, b"proxy-authorization", 19) else KEEP
    return KEEP


cdef inline bint tchar_account_name(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """``_bytes.account_line`` of a line whose name, p[:n], is of tchars (the line's first
    colon is right after it): the same names, compared with ``tchar_name_is`` (checked
    against ``_head_py.ACCOUNT_HEADERS`` by tests/test_header_tables.py)."""
    if n == 11:
        return tchar_name_is(p, b"x-ms-region", 11)
    if n == 14:
        return tchar_name_is(p, b"openai-project", 14) or tchar_name_is(p, b"openai_project", 14)
    if n == 19:
        return (tchar_name_is(p, b"openai-organization", 19) or tchar_name_is(p, b"openai_organization", 19)
                or tchar_name_is(p, b"x-goog-user-project", 19) or tchar_name_is(p, b"x_goog_user_project", 19))
    if n == 25:
        return (tchar_name_is(p, b"anthropic-organization-id", 25)
                or tchar_name_is(p, b"ocp-apim-subscription-key", 25)
                or tchar_name_is(p, b"ocp_apim_subscription_key", 25))
    return False


def header_verdicts(bytes name not None):
    """For tests/test_header_tables.py: what each compiled header table says of a header
    called ``name`` -- ``classify``, ``classify_tchar`` (meaningful for a name of tchars
    only), ``account_name`` (of the name as parsed), ``tchar_account_name``, and
    ``account_line`` of the line ``name: v``."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = len(name)
    line = name + b": v"
    return (classify(p, n), classify_tchar(p, n), account_name(p, n), tchar_account_name(p, n),
            account_line(<const unsigned char *>PyBytes_AS_STRING(line), len(line)))


cdef inline Py_ssize_t find_lf(const unsigned char *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index of the first LF in s[i:n], or n.  memchr, not a byte loop: glibc's is
    vectorised, and a provider's head is 1-2 KB (a byte loop cost ~20k instructions per
    response, 7% of a firewall request under callgrind)."""
    cdef const unsigned char *p
    if i >= n:
        return n
    p = <const unsigned char *>memchr(s + i, 10, n - i)
    return n if p == NULL else p - s


cdef Py_ssize_t head_end(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """Length of the head including its blank line, or -1."""
    cdef Py_ssize_t i = find_lf(s, 0, n)
    while i < n:
        if i + 1 < n and s[i + 1] == 10:
            return i + 2
        if i + 2 < n and s[i + 1] == 13 and s[i + 2] == 10:
            return i + 3
        i = find_lf(s, i + 1, n)
    return -1


cdef inline bint is_ows(unsigned char c) noexcept nogil:
    return c == 32 or c == 9


cdef int64_t parse_length(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """A Content-Length value (OWS around digits); -1 when it is not one."""
    cdef Py_ssize_t a = 0, b = n, i
    cdef int64_t v = 0, d
    while a < b and is_ows(p[a]):
        a += 1
    while b > a and is_ows(p[b - 1]):
        b -= 1
    if a == b or b - a > 19:
        return -1
    for i in range(a, b):
        if p[i] < 48 or p[i] > 57:
            return -1
        d = p[i] - 48
        if v > (MAX_CONTENT_LENGTH - d) // 10:
            return -1
        v = v * 10 + d
    return v


def response_head(bytes buf not None):
    """``(block, content_length, chunked, head_len)``; see ``plano_fast.wire._head_py``."""
    cdef const unsigned char *s = buf
    cdef Py_ssize_t n = len(buf)
    cdef Py_ssize_t end = head_end(s, n)
    if end < 0:
        return b"", -1, False, -1
    if end < 7 or memcmp(s, b"HTTP/1.", 7) != 0:
        # another version's status line (llhttp takes HTTP/2.0 and HTTP/0.9): the twin says why
        raise ValueError(UPSTREAM_VERSION_ERROR)
    # A kept line grows by one byte when it ended in a bare LF: 2x bounds it.
    cdef unsigned char *out = <unsigned char *>malloc(2 * end + 2)
    if out == NULL:
        raise MemoryError()
    cdef Py_ssize_t w = 0, i = 0, line, stop, colon, a
    cdef const unsigned char *p
    cdef int kind
    cdef bint keep_prev = False, chunked = False, bad_length = False, bad_te = False
    cdef int64_t content_length = -1
    cdef Py_ssize_t stop_te
    try:
        # skip the status line
        i = find_lf(s, 0, end) + 1
        while i < end:
            line = i
            i = find_lf(s, i, end)
            stop = i  # the LF (or end)
            i += 1
            if stop > line and s[stop - 1] == 13:
                stop -= 1
            if stop == line:
                break  # the blank line
            if is_ows(s[line]):  # obs-fold: joined to the kept header with one space
                if keep_prev:
                    a = line
                    while a < stop and is_ows(s[a]):
                        a += 1
                    while stop > a and is_ows(s[stop - 1]):
                        stop -= 1
                    w -= 2  # back over the previous line's CRLF
                    out[w] = 32
                    w += 1
                    memcpy(out + w, s + a, stop - a)
                    w += stop - a
                    out[w] = 13
                    out[w + 1] = 10
                    w += 2
                continue
            p = <const unsigned char *>memchr(s + line, 58, stop - line)
            colon = stop if p == NULL else p - s
            kind = classify(s + line, colon - line)
            if kind == CONTENT_LENGTH:
                content_length = parse_length(s + colon + 1, stop - colon - 1) if colon < stop else -1
                if content_length < 0:
                    bad_length = True
            elif kind == TRANSFER_ENCODING:
                # only one ``chunked`` (the twin, _head_py.response_head, says why)
                a = colon + 1
                while a < stop and is_ows(s[a]):
                    a += 1
                stop_te = stop
                while stop_te > a and is_ows(s[stop_te - 1]):
                    stop_te -= 1
                if chunked or not name_is(s + a, stop_te - a, b"chunked", 7):
                    bad_te = True
                chunked = True
            keep_prev = kind == KEEP
            if keep_prev:
                memcpy(out + w, s + line, stop - line)
                w += stop - line
                out[w] = 13
                out[w + 1] = 10
                w += 2
        if bad_length:
            raise ValueError("invalid Content-Length")
        if bad_te:
            raise ValueError("unsupported Transfer-Encoding: only a single 'chunked' is relayed")
        return PyBytes_FromStringAndSize(<char *>out, w), content_length, chunked, end
    finally:
        free(out)


def forward_request_headers(list headers not None):
    """``(block, seen_anthropic_version, client_x_request_id, credential_count,
    credential_name, credential_value, operator_block)``; see ``plano_fast.wire._head_py``."""
    cdef tuple pair
    cdef bytes name, value, block
    cdef Py_ssize_t total = 0, w = 0, nn, nv
    cdef int kind
    cdef int credentials = 0, accounts = 0
    cdef bint seen_version = False
    request_id = None
    credential_name = None
    credential_value = None
    tokens = None
    for pair in headers:
        name = <bytes?>pair[0]
        value = <bytes?>pair[1]
        total += len(name) + len(value) + 4
        if len(name) == 10 and name == b"connection":
            tokens = connection_tokens(value, tokens)
    cdef unsigned char *out = <unsigned char *>malloc(total + 1)
    if out == NULL:
        raise MemoryError()
    try:
        for pair in headers:
            name = <bytes>pair[0]
            value = <bytes>pair[1]
            nn = len(name)
            kind = request_kind(name, nn)
            if kind == R_CREDENTIAL:
                # counted whatever Connection says; the verified one is written back
                if credentials == 0:
                    credential_name = name
                    credential_value = value
                credentials += 1
                continue
            if kind == R_DROP:
                continue
            if tokens and name in tokens:
                continue
            if kind == R_VERSION:
                seen_version = True
            elif kind == R_REQUEST_ID:
                request_id = value if request_id is None else b""  # (two: b"", see _head_py)
                continue
            elif account_name(name, nn):
                accounts += 1
            nv = len(value)
            memcpy(out + w, <const char *>name, nn)
            w += nn
            out[w] = 58
            out[w + 1] = 32
            w += 2
            memcpy(out + w, <const char *>value, nv)
            w += nv
            out[w] = 13
            out[w + 1] = 10
            w += 2
        block = PyBytes_FromStringAndSize(<char *>out, w)
        return (block, seen_version, request_id, credentials, credential_name, credential_value,
                without_account_lines(block) if accounts else block)
    finally:
        free(out)


def has_content_encoding(bytes block not None):
    """Whether ``block`` (CRLF-ended header lines) has a Content-Encoding line, its name in
    any case (the twin, ``_head_py.has_content_encoding``, says what for)."""
    cdef const unsigned char *s = block
    cdef Py_ssize_t n = len(block), i = 0
    cdef const unsigned char *lf
    while i + 17 <= n:
        if (s[i] | 32) == 99 and s[i + 16] == 58 and name_is(s + i, 16, b"content-encoding", 16):  # 'c', ':'
            return True
        lf = <const unsigned char *>memchr(s + i, 10, n - i)
        if lf == NULL:
            break
        i = lf - s + 1
    return False


# --------------------------------------------------------------------------- the response fast path

# TCHAR (header names) and VALUE (field-value bytes), shared with _request.pyx
include "_header_chars.pxi"


def parse_response_head(bytes buf not None, Py_ssize_t max_head_bytes):
    """A whole plain upstream response in ``buf`` as ``(head, keep_alive, head_len)``,
    ``head`` the ``ResponseHead(status, block, content_length, False)`` built here (the body
    is ``buf[head_len:]``; ``block`` is what ``response_head`` keeps of the head), or None
    when it is not one this fast path takes: httptools then parses it, as it parses every
    other response.

    Taken: ``HTTP/1.1 NNN reason`` with a status from 200 to 599 other than 204 and 304, CRLF
    line ends, header names of tchar, values of visible bytes, SP, HTAB or obs-text, exactly
    one Content-Length (digits), no Transfer-Encoding, Upgrade, Proxy-Connection or
    Content-Encoding (a coded answer's usage is read decoded: gateway/coded_answer.py), a
    Connection of only ``keep-alive`` or ``close``, a head within ``max_head_bytes``, and the
    body complete with nothing after it.  Everything else -- an interim 1xx, a chunked or
    close-delimited body, obs-fold, a body split over reads -- goes to httptools as before.

    The pass is ``scan_response`` (``_head.pxd``: the compiled whole-answer pass calls it
    directly and builds the client's answer from its runs, with no ResponseHead)."""
    cdef HeadScan scan
    cdef int taken = scan_response_any(buf, len(buf), max_head_bytes, &scan)
    if taken < 0:
        raise MemoryError()
    try:
        return scan_result(buf, &scan) if taken else None
    finally:
        free_scan(&scan)


cdef object scan_result(bytes buf, HeadScan *scan):
    """``parse_response_head``'s answer for a head ``scan_response`` took: the block is its
    runs' bytes, in order (the ResponseHead's fields written in place: a class call with four
    arguments from a 5-tuple cost ~2.3k instructions a response on 3.11)."""
    cdef const unsigned char *s = buf
    cdef bytes block = PyBytes_FromStringAndSize(NULL, scan.kept)
    cdef char *out = PyBytes_AS_STRING(block)
    cdef Py_ssize_t w = 0
    cdef int r
    for r in range(scan.nruns):
        memcpy(out + w, s + scan.runs[r].start, scan.runs[r].stop - scan.runs[r].start)
        w += scan.runs[r].stop - scan.runs[r].start
    cdef ResponseHead head = ResponseHead.__new__(ResponseHead)
    head.status = scan.status
    head.block = block
    head.content_length = scan.content_length
    head.chunked = False
    return head, scan.keep_alive, scan.head_len


cdef int scan_response_any(const unsigned char *s, Py_ssize_t n, Py_ssize_t max_head_bytes,
                           HeadScan *scan) noexcept nogil:
    """``scan_response`` with room for the runs of any head: 1 taken, 0 not, -1 no memory
    (``free_scan`` afterwards, whatever the answer)."""
    scan.runs = scan.runs_here
    cdef int taken = scan_response(s, n, max_head_bytes, scan, HEAD_RUNS)
    if taken >= 0:
        return taken
    # more runs than HEAD_RUNS: one a line at most, a line is 4 bytes at least
    cdef Py_ssize_t capacity = (n if n <= max_head_bytes else max_head_bytes) // 4 + 1
    scan.runs = <HeadRun *>malloc(capacity * sizeof(HeadRun))
    if scan.runs == NULL:
        scan.runs = scan.runs_here
        return -1
    return scan_response(s, n, max_head_bytes, scan, capacity)


cdef void free_scan(HeadScan *scan) noexcept nogil:
    if scan.runs != scan.runs_here:
        free(scan.runs)
        scan.runs = scan.runs_here


cdef inline bint add_run(HeadScan *scan, Py_ssize_t capacity, Py_ssize_t start, Py_ssize_t stop,
                         int account) noexcept nogil:
    """Record the run s[start:stop]; False when there is no room left."""
    if scan.nruns >= capacity:
        return False
    scan.runs[scan.nruns].start = start
    scan.runs[scan.nruns].stop = stop
    scan.runs[scan.nruns].account = account
    scan.nruns += 1
    scan.kept += stop - start
    if account:
        scan.account += stop - start
    return True


cdef int scan_response(const unsigned char *s, Py_ssize_t n, Py_ssize_t max_head_bytes, HeadScan *scan,
                       Py_ssize_t capacity) noexcept nogil:
    """parse_response_head's pass over s[:n]: 1 taken (``scan`` filled), 0 not one of the
    answers it takes, -1 more runs than ``capacity`` (``scan.runs``' room)."""
    cdef Py_ssize_t limit = n if n <= max_head_bytes else max_head_bytes
    cdef Py_ssize_t i, a, colon, stop, run = -1  # run: where the open run starts (-1: none)
    cdef int status, kind
    cdef int64_t content_length = -1
    cdef bint keep_alive = True, seen_connection = False
    scan.nruns = 0
    scan.kept = 0
    scan.account = 0
    # status line: HTTP/1.1 SP 3DIGIT SP reason CRLF
    if limit < 17 or not starts(s, limit, b"HTTP/1.1 ", 9):
        return 0
    for i in range(9, 12):
        if s[i] < 48 or s[i] > 57:
            return 0
    status = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
    if status < 200 or status > 599 or status == 204 or status == 304 or s[12] != 32:
        return 0
    i = skip_value(s, 13, limit)
    if i + 1 >= limit or s[i] != 13 or s[i + 1] != 10:
        return 0
    i += 2
    while True:
        if i + 1 >= limit:
            return 0  # no complete head within the limit
        if s[i] == 13:
            if s[i + 1] != 10:
                return 0
            if run >= 0 and not add_run(scan, capacity, run, i, 0):
                return -1
            i += 2
            break
        a = i
        i = skip_name(s, i, limit)
        if i == a or i >= limit or s[i] != 58:
            return 0  # obs-fold, whitespace before the colon, a bad name byte
        colon = i
        i = skip_value(s, i + 1, limit)
        if i + 1 >= limit or s[i] != 13 or s[i + 1] != 10:
            return 0
        stop = i
        i += 2
        kind = classify_tchar(s + a, colon - a)
        if kind == KEEP:  # the line as it arrived (with its CRLF), in the open run
            if colon - a == 16 and tchar_name_is(s + a, b"content-encoding", 16):
                return 0  # a coded answer is read decoded (gateway/coded_answer.py): httptools' path
            if tchar_account_name(s + a, colon - a):  # a run of its own
                if run >= 0 and not add_run(scan, capacity, run, a, 0):
                    return -1
                run = -1
                if not add_run(scan, capacity, a, i, 1):
                    return -1
            elif run < 0:
                run = a
            continue
        if run >= 0:  # a line not kept ends the run
            if not add_run(scan, capacity, run, a, 0):
                return -1
            run = -1
        if kind == CONTENT_LENGTH:
            if content_length >= 0:
                return 0
            content_length = parse_length(s + colon + 1, stop - colon - 1)
            if content_length < 0:
                return 0
        elif kind == TRANSFER_ENCODING:
            return 0
        else:  # DROP
            if colon - a == 7 and tchar_name_is(s + a, b"upgrade", 7):
                return 0
            if colon - a == 16 and tchar_name_is(s + a, b"proxy-connection", 16):
                return 0  # llhttp reads it as Connection: left to it
            if colon - a == 10 and tchar_name_is(s + a, b"connection", 10):
                if seen_connection:
                    return 0
                seen_connection = True
                a = colon + 1
                while a < stop and is_ows(s[a]):
                    a += 1
                while stop > a and is_ows(s[stop - 1]):
                    stop -= 1
                if name_is(s + a, stop - a, b"close", 5):
                    keep_alive = False
                elif not name_is(s + a, stop - a, b"keep-alive", 10):
                    return 0
    if content_length < 0 or n - i != content_length:
        return 0  # no length, or the body is not exactly the rest of the read
    scan.status = status
    scan.content_length = content_length
    scan.keep_alive = keep_alive
    scan.head_len = i
    return 1


# -- the provider-account headers (twin: without_account_headers in _head_py.py) --

def without_account_headers(bytes block not None):
    """``block`` (CRLF-ended header lines) without its provider-account lines; ``block``
    itself when it has none (the common case: no copy).  (``_bytes.without_account_lines``:
    the request parsers apply it to the block they build, once, when they saw such a line.)"""
    return without_account_lines(block)


# -- the gateway's own header lines (twins: the functions of the same names in _head_py.py) --
# Formatted in C: on 3.11, ``b"content-length: %d\r\n" % n`` is ~1k instructions (the
# general %-formatter), ``name + value.encode() + b"\r\n"`` ~1.1k (an encode, two
# concatenations, three allocations); a request writes four such lines.

def content_length_line(Py_ssize_t n, bint blank_line):
    """``b"content-length: %d\\r\\n" % n``, and the head's closing CRLF after it when
    ``blank_line`` (``n`` >= 0)."""
    return content_length_line_c(n, blank_line)


cdef bytes content_length_line_c(Py_ssize_t n, bint blank_line):
    """``content_length_line`` for compiled callers (``_head.pxd``)."""
    cdef char buf[48]
    if n < 0:
        raise ValueError("negative content length")
    memcpy(buf, b"content-length: ", 16)
    cdef Py_ssize_t w = 16 + put_decimal(buf + 16, <unsigned long long>n)
    buf[w] = 13
    buf[w + 1] = 10
    w += 2
    if blank_line:
        buf[w] = 13
        buf[w + 1] = 10
        w += 2
    return PyBytes_FromStringAndSize(buf, w)


def chunk_size_line(Py_ssize_t n):
    """A chunk's size line, ``b"%x\\r\\n" % n`` (``n`` >= 0)."""
    cdef char buf[24]
    if n < 0:
        raise ValueError("negative chunk size")
    cdef Py_ssize_t w = put_hex(buf, <unsigned long long>n)
    buf[w] = 13
    buf[w + 1] = 10
    return PyBytes_FromStringAndSize(buf, w + 2)


def header_line(bytes start not None, str value not None):
    """``start + value.encode() + b"\\r\\n"`` (``start``: the name and ``": "``)."""
    cdef Py_ssize_t a = len(start), b
    cdef const char *v = PyUnicode_AsUTF8AndSize(value, &b)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, a + b + 2)
    cdef char *p = PyBytes_AS_STRING(out)
    memcpy(p, <const char *>start, a)
    memcpy(p + a, v, b)
    p[a + b] = 13
    p[a + b + 1] = 10
    return out


cdef class RequestIds:
    """Request ids: ``prefix`` (drawn by the caller), ``-``, then a counter from 1 in
    lowercase hex (``f"{prefix}-{n:x}"``; twin ``_head_py.RequestIds``).  ``reset`` starts
    over with a new prefix (a forked child), in place: ``next`` stays bound where it was
    taken.  ~0.2k instructions an id, against ~2.3k for the f-string and ``next()`` on an
    ``itertools.count``."""

    cdef str prefix
    cdef unsigned long long counter

    def __init__(self, str prefix not None):
        self.reset(prefix)

    def reset(self, str prefix not None):
        if not prefix.isascii() or len(prefix) > 64:
            raise ValueError("a request id prefix is at most 64 ASCII characters")
        self.prefix = prefix
        self.counter = 0

    def next(self):
        cdef char buf[96]
        cdef Py_ssize_t a
        cdef const char *p = PyUnicode_AsUTF8AndSize(self.prefix, &a)
        self.counter += 1
        memcpy(buf, p, a)
        buf[a] = 45  # "-"
        cdef Py_ssize_t w = a + 1 + put_hex(buf + a + 1, self.counter)
        return PyUnicode_DecodeASCII(buf, w, NULL)
