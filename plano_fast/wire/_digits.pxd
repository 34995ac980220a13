# cython: language_level=3
"""Decimal and hexadecimal digits written into a C buffer, for the compiled modules that
format numbers themselves (``wire/_head.pyx``: the Content-Length and chunk-size lines,
request ids; ``gateway/_answer.pyx``: an answer's Content-Length; ``billing/_drain.pyx``:
the journal's JSON): one writer, so the formats cannot drift apart.  The callers make the
room (20 bytes for a decimal, 16 for a hexadecimal ``unsigned long long``)."""

from libc.string cimport memcpy

cdef inline Py_ssize_t put_decimal(char *out, unsigned long long n) noexcept nogil:
    """``n`` in decimal at ``out``; returns the digits written.  Two digits a division
    ("00" .. "99": half the divisions of a digit at a time)."""
    cdef const char *DIGIT_PAIRS = (
        b"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849"
        b"5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899")
    cdef char tmp[24]
    cdef int i = 24
    cdef unsigned long long r
    while n >= 100:
        r = n % 100
        n //= 100
        i -= 2
        tmp[i] = DIGIT_PAIRS[2 * r]
        tmp[i + 1] = DIGIT_PAIRS[2 * r + 1]
    if n >= 10:
        i -= 2
        tmp[i] = DIGIT_PAIRS[2 * n]
        tmp[i + 1] = DIGIT_PAIRS[2 * n + 1]
    else:
        i -= 1
        tmp[i] = <char>(48 + n)
    memcpy(out, tmp + i, 24 - i)
    return 24 - i


cdef inline Py_ssize_t put_hex(char *out, unsigned long long n) noexcept nogil:
    """``n`` in lowercase hexadecimal at ``out``; returns the digits written."""
    cdef char tmp[24]
    cdef int i = 24
    while True:
        i -= 1
        tmp[i] = b"0123456789abcdef"[n & 15]
        n >>= 4
        if n == 0:
            break
    memcpy(out, tmp + i, 24 - i)
    return 24 - i
