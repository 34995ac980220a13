# cython: language_level=3
"""The scanner's C entries (``_scan.pyx``), for the compiled request path
(``plano_fast/gateway/_firewall.pyx``, ``_config.pyx``, ``_answer.pyx``).

Each is the body of the Python API of the same name, which calls it: ``scan_request``,
``UsageScanner(api, streaming, strip_usage_chunk)``, its ``feed_from`` and ``finish``, and
``result().has_usage`` (and ``reads_json_aside_c``: whether the answer pass may read a
JSON body's usage after relaying it).  Called from C they skip the Python call (argument parsing, the
method lookup, a bound call; for the constructor the type call and its argument tuple; for
the flag a ``Usage`` object), ~1.7k instructions a firewall or config request (callgrind,
``benchmarks/bench_request_path``).  (``usage_fields`` from C measured no better: its
tuple is the cost, not the call.)  The scanner arguments must be the compiled
``UsageScanner`` (checked: a TypeError otherwise); callers test ``type(s) is UsageScanner``
first and call the pure twin's methods on anything else."""

cdef object scan_request_c(bytes body)
cdef object usage_scanner_c(int api, bint streaming, bint strip_usage_chunk)
cdef object feed_from_c(object scanner, bytes data, Py_ssize_t start)
cdef object finish_c(object scanner)
cdef int has_usage_c(object scanner) except -1
cdef int reads_json_aside_c(object scanner) except -1
