# cython: language_level=3
"""The response fast path's C interface (``_head.pyx``), for the compiled whole-answer
pass (``plano_fast/gateway/_answer.pyx``): it builds the client's answer straight from the
upstream read's bytes, with no ``ResponseHead``, no block copy and no join in between.

``scan_response`` is ``parse_response_head``'s one pass; instead of copying the kept header
lines it records them as runs: each a byte range of the read, consecutive kept lines
together (a dropped line ends a run), a provider-account line a run of its own, flagged
(``without_account_headers`` drops exactly those: ``_bytes.account_line``).  The kept
block is the runs' bytes in order (``parse_response_head`` builds it from them)."""

from libc.stdint cimport int64_t

# Runs a head's scan records in place; a head with more (a dropped or account line every
# other line, ~10 times) is scanned again with room for any (``scan_response_any``).
cdef enum:
    HEAD_RUNS = 24

ctypedef struct HeadRun:
    Py_ssize_t start  # offset in the read
    Py_ssize_t stop  # (its last line's CRLF included)
    int account  # a provider-account line (one line per such run)

ctypedef struct HeadScan:
    int status
    int64_t content_length
    bint keep_alive
    Py_ssize_t head_len  # the body is buf[head_len:]
    Py_ssize_t kept  # bytes of all runs (the block's length)
    Py_ssize_t account  # of these, bytes of account runs
    int nruns
    HeadRun *runs  # runs_here, or a heap array (scan_response_any); free_scan releases it
    HeadRun runs_here[HEAD_RUNS]

cdef int scan_response_any(const unsigned char *s, Py_ssize_t n, Py_ssize_t max_head_bytes,
                           HeadScan *scan) noexcept nogil
cdef void free_scan(HeadScan *scan) noexcept nogil
cdef object scan_result(bytes buf, HeadScan *scan)

# ``content_length_line(n, blank_line)`` from C (the firewall and config starts write one a
# request: the Python call was ~0.22k instructions of its ~0.1k)
cdef bytes content_length_line_c(Py_ssize_t n, bint blank_line)
