# Byte helpers the compiled modules share (_head.pyx, _request.pyx); inline, so sharing
# them costs no call.  ``request_kind`` is the request-header relay rule both apply
# (forward_request_headers in _head.pyx; parse_request in _request.pyx, in the same pass),
# and ``account_name`` / ``without_account_lines`` the provider-account rule
# (``_head_py.ACCOUNT_HEADERS``) both apply to the block they build.

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


cdef enum:
    R_KEEP = 0
    R_DROP = 1
    R_CREDENTIAL = 2
    R_VERSION = 3
    R_REQUEST_ID = 4


cdef inline int request_kind(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """What happens to a request header called p[:n] (lowercase, as parsed).  (Its names
    are ``_head_py``'s request tables': tests/test_header_tables.py.)"""
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
# Hand-unrolled in each compare (here, and ``_head.tchar_account_name``), inlined where
# used: tests/test_header_tables.py checks each against ``_head_py.ACCOUNT_HEADERS``, name
# for name, every case and near miss.

cdef inline bint account_name(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """p[:n] (lowercase, as parsed) names a header that selects or reveals the provider
    account: 11, 14, 19 or 25 bytes."""
    if n == 11:
        return starts(p, n, b"x-ms-region", 11)
    if n == 14:
        return starts(p, n, b"openai-project", 14) or starts(p, n, b"openai_project", 14)
    if n == 19:
        return (starts(p, n, b"openai-organization", 19) or starts(p, n, b"openai_organization", 19)
                or starts(p, n, b"x-goog-user-project", 19) or starts(p, n, b"x_goog_user_project", 19))
    if n == 25:
        return (starts(p, n, b"anthropic-organization-id", 25) or starts(p, n, b"ocp-apim-subscription-key", 25)
                or starts(p, n, b"ocp_apim_subscription_key", 25))
    return False


cdef inline bint account_line(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """The line p[:n] (its end excluded) is a provider-account header (any case).  The
    names (11, 14, 19 or 25 bytes) hold no colon, so the colon is looked for at their
    lengths only (no scan of the line: a provider's head has ~25 lines, this runs on every
    answer where the key is the operator's)."""
    if n > 11 and p[11] == 58:
        return name_is(p, 11, b"x-ms-region", 11)
    if n > 14 and p[14] == 58:
        return name_is(p, 14, b"openai-project", 14) or name_is(p, 14, b"openai_project", 14)
    if n > 19 and p[19] == 58:
        return (name_is(p, 19, b"openai-organization", 19) or name_is(p, 19, b"openai_organization", 19)
                or name_is(p, 19, b"x-goog-user-project", 19) or name_is(p, 19, b"x_goog_user_project", 19))
    if n > 25 and p[25] == 58:
        return (name_is(p, 25, b"anthropic-organization-id", 25) or name_is(p, 25, b"ocp-apim-subscription-key", 25)
                or name_is(p, 25, b"ocp_apim_subscription_key", 25))
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
