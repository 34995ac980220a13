# The offsets of ``http_server.Responder``'s slots (``plano_fast/_slots.pxd``), for the two
# compiled modules that write a responder in place: ``_new_request.pyx`` (its constructor)
# and ``gateway/_answer.pyx`` (a whole plain answer sent).  Written once so a slot renamed
# or added in the class is met in both; at import, an offset that is not a slot raises
# ImportError and the including module's twin is used.  The including module has
# cimported ``slot_offset`` and imported ``Responder``.

cdef Py_ssize_t R_PROTO = slot_offset(Responder, "_proto")
cdef Py_ssize_t R_TRANSPORT = slot_offset(Responder, "_transport")
cdef Py_ssize_t R_HEAD_SENT = slot_offset(Responder, "head_sent")
cdef Py_ssize_t R_FINISHED = slot_offset(Responder, "finished")
cdef Py_ssize_t R_CHUNKED = slot_offset(Responder, "_chunked")
cdef Py_ssize_t R_CLOSE_AFTER = slot_offset(Responder, "_close_after")
cdef Py_ssize_t R_HTTP11 = slot_offset(Responder, "_http11")
cdef Py_ssize_t R_UPSTREAM = slot_offset(Responder, "upstream")
cdef Py_ssize_t R_BYTES_SENT = slot_offset(Responder, "bytes_sent")
cdef Py_ssize_t R_OUT = slot_offset(Responder, "_out")
cdef Py_ssize_t R_ON_CLIENT_GONE = slot_offset(Responder, "on_client_gone")
