# The offsets of a ``plano_fast.spans.TraceSpan``'s slots (``plano_fast/_slots.pxd``), for
# the compiled modules that read or write its records in place (``_otlp.pyx``: the export
# thread's encoding; ``_spans.pyx``: the records made and ended).  Written once so a slot
# renamed is renamed for both; at import, an offset that is not a slot raises ImportError
# and the including module's twin is used.  The including module has imported
# ``slot_offset`` (cimport) and ``TraceSpan``.

cdef type _Span = TraceSpan
cdef Py_ssize_t S_OWNER = slot_offset(TraceSpan, "owner")
cdef Py_ssize_t S_NAME = slot_offset(TraceSpan, "name")
cdef Py_ssize_t S_KIND = slot_offset(TraceSpan, "kind")
cdef Py_ssize_t S_TRACE_ID = slot_offset(TraceSpan, "trace_id")
cdef Py_ssize_t S_SPAN_ID = slot_offset(TraceSpan, "span_id")
cdef Py_ssize_t S_PARENT_ID = slot_offset(TraceSpan, "parent_id")
cdef Py_ssize_t S_REMOTE = slot_offset(TraceSpan, "remote_parent")
cdef Py_ssize_t S_ATTRIBUTES = slot_offset(TraceSpan, "attributes")
cdef Py_ssize_t S_DROPPED = slot_offset(TraceSpan, "dropped")
cdef Py_ssize_t S_START = slot_offset(TraceSpan, "start_ns")
cdef Py_ssize_t S_END = slot_offset(TraceSpan, "end_ns")
cdef Py_ssize_t S_ERROR = slot_offset(TraceSpan, "error")
