# cython: language_level=3
"""The compiled ``Exchange.forward_now`` (``_forward.pyx``), for the other compiled request
passes to call without a Python-level call (``_firewall.pyx``)."""

cdef object forward_now_c(object exchange)
