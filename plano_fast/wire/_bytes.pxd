# Byte helpers the compiled modules share (_head.pyx, _request.pyx); inline, so sharing
# them costs no call.

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
    """p[:n] begins with ``word`` (m bytes), exactly."""
    cdef Py_ssize_t i
    if n < m:
        return False
    for i in range(m):
        if p[i] != <unsigned char>word[i]:
            return False
    return True
