# cython: language_level=3
"""The compiled ``Exchange.forward_now`` (``_forward.pyx``) and the upstream head's
x-request-id line, for the other compiled request passes to call without a Python-level
call (``_firewall.pyx``, ``_config.pyx``)."""

cdef object forward_now_c(object exchange)
cdef bytes request_id_line_c(object client_request_id, object request_id)
