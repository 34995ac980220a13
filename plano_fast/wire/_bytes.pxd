# Byte helpers the compiled modules share (_head.pyx, _request.pyx); inline, so sharing
# them costs no call.  ``request_kind`` is the request-header relay rule both apply
# (forward_request_headers in _head.pyx; parse_request in _request.pyx, in the same pass),
# and ``account_name`` / ``without_account_lines`` the provider-account rule
# (``_head_py.ACCOUNT_HEADERS``) both apply to the block they build.

from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

cdef inline unsigned char lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint name_is(const unsigned char *p, Py_ssize_t n, const char *name, Py_ssize_t m) noexcept nogil:
    """p[:n] equals the lowercase ``name`` (m bytes), in any case."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if lower(p[i]) != <unsigned char>name[i]:
            return False
    return True


cdef inline bint starts(const unsigned char *p, Py_ssize_t n, const char *word, Py_ssize_t m) noexcept nogil:
    """p[:n] begins with ``word`` (m bytes), exactly.  (memcmp: the callers' words and
    lengths are constants, which the compiler compares a word at a time, not a byte.)"""
    if n < m:
        return False
    return memcmp(p, word, m) == 0


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


# How a header table's classifier compares a name p[:n] with one of its lowercase names
# of that length: each table is written once (``classify_as`` in _head.pyx,
# ``account_name_as`` below) and each caller passes a constant ``how``, which the C
# compiler folds where the table is inlined.
cdef enum:
    AS_PARSED = 0  # exactly: the parsers lowercased the name (memcmp of a constant)
    ANY_CASE = 1  # any case (``name_is``)
    TCHARS_ANY_CASE = 2  # any case, a name of tchars (``tchar_name_is``, a word at a time)


cdef inline bint name_matches(const unsigned char *p, Py_ssize_t n, const char *name, int how) noexcept nogil:
    """p[:n] is the lowercase ``name`` (n bytes), compared as ``how`` says."""
    if how == AS_PARSED:
        return memcmp(p, name, n) == 0
    if how == ANY_CASE:
        return name_is(p, n, name, n)
    return tchar_name_is(p, name, n)


cdef enum:
    R_KEEP = 0
    R_DROP = 1
    R_CREDENTIAL = 2
    R_VERSION = 3
    R_REQUEST_ID = 4


cdef inline int request_kind(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """What happens to a request header called p[:n] (lowercase, as parsed)."""
    if n >= 9 and starts(p, n, b"x-xproxy-", 9):
        return R_DROP
    if n == 2:
        return R_DROP if starts(p, n, b"te", 2) else R_KEEP
    if n == 4:
        return R_DROP if starts(p, n, b"host", 4) else R_KEEP
    if n == 6:
        return R_DROP if starts(p, n, b"expect", 6) else R_KEEP
    if n == 7:
        if starts(p, n, b"trailer", 7) or starts(p, n, b"upgrade", 7):
            return R_DROP
        return R_CREDENTIAL if starts(p, n, b"api-key", 7) or starts(p, n, b"api_key", 7) else R_KEEP
    if n == 9:
        return R_CREDENTIAL if starts(p, n, b"x-api-key", 9) or starts(p, n, b"x_api_key", 9) else R_KEEP
    if n == 10:
        return R_DROP if starts(p, n, b"connection", 10) or starts(p, n, b"keep-alive", 10) else R_KEEP
    if n == 12:
        # (the underscore spelling too: CGI/WSGI servers read it as x-request-id)
        return R_REQUEST_ID if starts(p, n, b"x-request-id", 12) or starts(p, n, b"x_request_id", 12) else R_KEEP
    if n == 13:
        if starts(p, n, b"x-http-method", 13) or starts(p, n, b"x_http_method", 13):
            return R_DROP
        return R_CREDENTIAL if starts(p, n, b"authorization", 13) else R_KEEP
    if n == 14:
        if starts(p, n, b"content-length", 14):
            return R_DROP
        if starts(p, n, b"x-goog-api-key", 14) or starts(p, n, b"x_goog_api_key", 14):
            return R_CREDENTIAL
        return R_KEEP
    if n == 15:
        # (and the underscore spellings of what is dropped below: CGI/WSGI servers read
        # accept_encoding as Accept-Encoding -- a gzip answer's usage is unreadable --,
        # transfer_encoding as Transfer-Encoding, x_http_method_override as the override)
        return R_DROP if starts(p, n, b"accept-encoding", 15) or starts(p, n, b"accept_encoding", 15) else R_KEEP
    if n == 16:
        # (x-goog-fieldmask: Google's response field mask could cut the usage from an answer)
        return R_DROP if (starts(p, n, b"proxy-connection", 16) or starts(p, n, b"x-goog-fieldmask", 16)
                          or starts(p, n, b"x_goog_fieldmask", 16)) else R_KEEP
    if n == 17:
        if (starts(p, n, b"transfer-encoding", 17) or starts(p, n, b"x-method-override", 17)
                or starts(p, n, b"transfer_encoding", 17) or starts(p, n, b"x_method_override", 17)):
            return R_DROP
        return R_VERSION if starts(p, n, b"anthropic-version", 17) else R_KEEP
    if n == 18:
        return R_DROP if starts(p, n, b"proxy-authenticate", 18) else R_KEEP
    if n == 19:
        return R_DROP if starts(p, n, b"proxy-authorization", 19) else R_KEEP
    if n == 22:
        return R_DROP if starts(p, n, b"x-http-method-override", 22) or starts(p, n, b"x_http_method_override", 22) else R_KEEP
    return R_KEEP


# -- the provider-account headers (twin: ACCOUNT_HEADERS, without_account_headers in _head_py.py)

cdef inline bint account_name_as(const unsigned char *p, Py_ssize_t n, int how) noexcept nogil:
    """p[:n] names a header that selects or reveals the provider account, compared as
    ``how`` says: the one compiled copy of ``_head_py.ACCOUNT_HEADERS`` (11, 14, 19 or 25
    bytes; tests/test_header_tables.py checks the two name for name)."""
    if n == 11:
        return name_matches(p, n, b"x-ms-region", how)
    if n == 14:
        return name_matches(p, n, b"openai-project", how) or name_matches(p, n, b"openai_project", how)
    if n == 19:
        return (name_matches(p, n, b"openai-organization", how) or name_matches(p, n, b"openai_organization", how)
                or name_matches(p, n, b"x-goog-user-project", how) or name_matches(p, n, b"x_goog_user_project", how))
    if n == 25:
        return (name_matches(p, n, b"anthropic-organization-id", how)
                or name_matches(p, n, b"ocp-apim-subscription-key", how)
                or name_matches(p, n, b"ocp_apim_subscription_key", how))
    return False


cdef inline bint account_name(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """p[:n] (lowercase, as parsed) names a provider-account header."""
    return account_name_as(p, n, AS_PARSED)


cdef inline bint account_line(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """The line p[:n] (its end excluded) is a provider-account header (any case).  The
    names (11, 14, 19 or 25 bytes) hold no colon, so the colon is looked for at their
    lengths only (no scan of the line: a provider's head has ~25 lines, this runs on every
    answer where the key is the operator's)."""
    if n > 11 and p[11] == 58:
        return account_name_as(p, 11, ANY_CASE)
    if n > 14 and p[14] == 58:
        return account_name_as(p, 14, ANY_CASE)
    if n > 19 and p[19] == 58:
        return account_name_as(p, 19, ANY_CASE)
    if n > 25 and p[25] == 58:
        return account_name_as(p, 25, ANY_CASE)
    return False


cdef inline bytes without_account_lines(bytes block):
    """``block`` (CRLF-ended header lines) without its provider-account lines; ``block``
    itself when it has none (no copy)."""
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(block)
    cdef Py_ssize_t n = len(block)
    cdef Py_ssize_t i = 0, line, stop, w = 0
    cdef const unsigned char *lf
    cdef unsigned char *out = NULL
    try:
        while i < n:
            line = i
            lf = <const unsigned char *>memchr(s + i, 10, n - i)
            stop = n if lf == NULL else lf - s  # the LF, or n (a last line without one)
            i = stop + 1 if stop < n else n
            if account_line(s + line, stop - line):
                if out == NULL:
                    out = <unsigned char *>malloc(n + 1)
                    if out == NULL:
                        raise MemoryError()
                    memcpy(out, s, line)
                    w = line
                continue
            if out != NULL:
                memcpy(out + w, s + line, i - line)
                w += i - line
        if out == NULL:
            return block
        return PyBytes_FromStringAndSize(<char *>out, w)
    finally:
        free(out)
