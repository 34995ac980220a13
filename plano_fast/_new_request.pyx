# cython: language_level=3
"""``Request(...)`` for the server's fast path, compiled: the twin of the class's own
constructor, chosen in ``plano_fast.http_server`` (``new_request``); and
``new_responder(cls, proto, keep_alive, http11)``, the twin of ``Responder(...)`` (and
``HeadResponder``), every request's other record.

Why: a plain request builds one ``Request`` and, on 3.11, calling a class with a Python
``__init__`` costs ~1.5k instructions before its first store (the call is not specialized:
an argument tuple, a second interpreter frame).  Here the instance is allocated and its
slots written in place (``plano_fast/_slots.pxd``), the target split at its ``?`` in C:
the same instance ``__init__`` makes (tests/test_record_twins.py compares them slot by slot).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr

from plano_fast._slots cimport new_instance, put_slot, slot_offset

from plano_fast.http_server import HeadResponder, Request, Responder

FIELDS = ("method", "target", "path", "query", "headers", "body", "keep_alive", "forward", "http11")
DEF N = 9
if tuple(Request.__slots__) != FIELDS:
    raise ImportError("Request changed: _new_request.pyx must be updated (its constructor is used)")

cdef Py_ssize_t OFF[N]
for _i in range(N):
    OFF[_i] = slot_offset(Request, FIELDS[_i])

cdef type _Request = Request
cdef bytes _EMPTY = b""


def new_request(bytes method, bytes target not None, headers, body, keep_alive, forward=None, http11=True):
    """``Request(method, target, headers, body, keep_alive, forward, http11)``."""
    cdef const char *t = PyBytes_AS_STRING(target)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(target)
    cdef const char *q = <const char *>memchr(t, 63, n)  # "?"
    request = new_instance(_Request)
    put_slot(request, OFF[0], method)
    put_slot(request, OFF[1], target)
    if q == NULL:
        put_slot(request, OFF[2], target)
        put_slot(request, OFF[3], _EMPTY)
    else:
        put_slot(request, OFF[2], PyBytes_FromStringAndSize(t, q - t))
        put_slot(request, OFF[3], PyBytes_FromStringAndSize(q + 1, n - (q - t) - 1))
    put_slot(request, OFF[4], headers)
    put_slot(request, OFF[5], body)
    put_slot(request, OFF[6], keep_alive)
    put_slot(request, OFF[7], forward)
    put_slot(request, OFF[8], http11)
    return request


# -- the responder ----------------------------------------------------------------------

RESPONDER_FIELDS = ("_proto", "_transport", "head_sent", "finished", "_chunked", "_close_after", "_http11",
                    "upstream", "bytes_sent", "_out", "on_client_gone", "logged")
if tuple(Responder.__slots__) != RESPONDER_FIELDS or HeadResponder.__slots__ != ():
    raise ImportError("Responder changed: _new_request.pyx must be updated (its constructor is used)")

include "_responder_slots.pxi"

cdef type _Responder = Responder
cdef type _HeadResponder = HeadResponder
cdef object _ZERO = 0


def new_responder(cls, proto, keep_alive, http11=True):
    """``cls(proto, keep_alive, http11)``, ``cls`` Responder or HeadResponder (same slots).

    Why: the server builds one per request, and ``Responder.__init__`` is a Python frame
    behind an unspecialized class call (~1.5k instructions before its first store, as for
    ``Request``).  The slots ``__init__`` sets, written in place; ``logged`` stays unset."""
    if cls is not _Responder and cls is not _HeadResponder:
        raise TypeError("not a Responder class")
    responder = new_instance(<type>cls)
    put_slot(responder, R_OUT, [])
    put_slot(responder, R_PROTO, proto)
    put_slot(responder, R_TRANSPORT, proto.transport)
    put_slot(responder, R_HEAD_SENT, False)
    put_slot(responder, R_FINISHED, False)
    put_slot(responder, R_CHUNKED, False)
    put_slot(responder, R_CLOSE_AFTER, not keep_alive)
    put_slot(responder, R_HTTP11, http11)
    put_slot(responder, R_UPSTREAM, None)
    put_slot(responder, R_BYTES_SENT, _ZERO)
    put_slot(responder, R_ON_CLIENT_GONE, None)
    return responder
