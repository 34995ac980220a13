# cython: language_level=3
"""The wall clock for the compiled request passes (``gateway/_forward.pyx``, ``_answer.pyx``,
``_settle.pyx``): ``time.time_ns()`` without a Python-level call."""

from libc.stdint cimport int64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec


cdef inline int64_t now_ns() noexcept nogil:
    """``time.time_ns()`` (its clock, CLOCK_REALTIME)."""
    cdef timespec now
    clock_gettime(CLOCK_REALTIME, &now)
    return <int64_t>now.tv_sec * 1000000000 + now.tv_nsec
