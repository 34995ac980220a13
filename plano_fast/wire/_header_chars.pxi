# Header character classes both HTTP fast paths read (_request.pyx: request heads;
# _head.pyx: response heads), written once.  Included (textual): each module keeps its own
# 512 bytes of tables, filled when it is imported, and reads them with no indirection.

# RFC 9110 5.6.2 tchar (header names); field-value bytes (visible, SP, HTAB, obs-text).
cdef unsigned char TCHAR[256]
cdef unsigned char VALUE[256]


cdef void _init_header_chars():
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        VALUE[c] = 1 if c >= 32 and c != 127 else 0
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TCHAR[c] = 1
    VALUE[9] = 1


_init_header_chars()


# -- scanning (both modules read bytes objects, whose buffer CPython always ends with a NUL
# after the last byte: TCHAR[0] == 0 stops a name scan there at the latest)

from libc.stdint cimport uint64_t

cdef uint64_t ONES_01 = 0x0101010101010101ULL
cdef uint64_t ONES_20 = 0x2020202020202020ULL
cdef uint64_t ONES_7F = 0x7F7F7F7F7F7F7F7FULL
cdef uint64_t ONES_80 = 0x8080808080808080ULL


cdef inline Py_ssize_t skip_tchar(const unsigned char *s, Py_ssize_t i) noexcept nogil:
    """Index of the first byte at or after ``i`` that is not a tchar.  ``s`` must be a
    bytes object's buffer: the NUL CPython keeps after its last byte ends the scan, so the
    loop needs no bound of its own (callers check the index against theirs after it).
    With the bound test in the loop, the scan measured ~7 instructions a byte; ~4 now."""
    while TCHAR[s[i]]:
        i += 1
    return i


cdef extern from "_simd.h":
    const unsigned char *pf_value_run(const unsigned char *p, const unsigned char *end) noexcept nogil
    const unsigned char *pf_name_run(const unsigned char *p, const unsigned char *end) noexcept nogil


cdef inline Py_ssize_t skip_name(const unsigned char *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """``skip_tchar(s, i)``, sixteen bytes at a time over [A-Za-z0-9-] within s[:n]
    (``pf_name_run``; a provider's head has ~25 names of ~15 bytes)."""
    return skip_tchar(s, pf_name_run(s + i, s + n) - s)


cdef inline Py_ssize_t skip_value(const unsigned char *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index of the first byte in s[i:n] that cannot be in a field value (or n).  Sixteen
    bytes at a time with SSE2 (``pf_value_run``), then eight while none is a control byte
    (< 0x20, or DEL): the per-byte table loop cost ~5 instructions a byte, and a head is
    mostly values."""
    cdef uint64_t x, y
    cdef Py_ssize_t e
    i = pf_value_run(s + i, s + n) - s
    if i < n and not VALUE[s[i]]:
        return i  # pf_value_run stopped on it (a line's CR, usually): no word loop to find it again
    while True:
        while i + 8 <= n:
            memcpy(&x, s + i, 8)
            y = x ^ ONES_7F
            # some byte < 0x20, or some byte == 0x7F (bytes >= 0x80 never set the flag)
            if (((x - ONES_20) & ~x) | ((y - ONES_01) & ~y)) & ONES_80:
                break
            i += 8
        e = i + 8 if i + 8 < n else n
        while i < e and VALUE[s[i]]:
            i += 1
        if i < e or i >= n:
            return i
