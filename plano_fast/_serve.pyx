# cython: language_level=3
"""The server's read of plain requests, compiled: the twin of
``plano_fast.http_server.data_received_py`` (``ServerProtocol.data_received`` ->
``_take_plain_requests`` -> ``_start``) and of ``start_py`` (``ServerProtocol._start``),
installed as those methods by ``plano_fast.http_server``.

A plain request read costs the twin three Python frames before the handler is called,
with ~25 reads and writes of the protocol's attributes; here the same steps run in that
order, with the same side effects, in one C function, the protocol's, the request's and
the responder's slots read and written in place (``plano_fast/_slots.pxd``).  What is not
a plain request at the front of a read goes to ``ServerProtocol._feed`` (httptools and its
callbacks), as in the twin; a protocol or request of another class, to the twins.

A plain head whose body is not all in the read is held, as the twin holds it
(``ServerProtocol._hold``), and its body completed here from the next reads
(``_take_held_body``); the rare steps (the head's identification past 64 KiB of body)
are the twin's methods.
"""

from cpython.object cimport PyObject

from plano_fast._slots cimport get_slot, put_slot, slot_offset, slot_or_attr as _get

from plano_fast import http_server as _server
from plano_fast.errors import GatewayError
from plano_fast.http_server import HeadResponder, Request, Responder, ServerLimits, ServerProtocol

cdef Py_ssize_t P_BROKEN = slot_offset(ServerProtocol, "_broken")
cdef Py_ssize_t P_MSG_STARTED = slot_offset(ServerProtocol, "_msg_started")
cdef Py_ssize_t P_LIMITS = slot_offset(ServerProtocol, "_limits")
cdef Py_ssize_t P_URL = slot_offset(ServerProtocol, "_url")
cdef Py_ssize_t P_ACTIVE = slot_offset(ServerProtocol, "_active")
cdef Py_ssize_t P_DEADLINE = slot_offset(ServerProtocol, "deadline")
cdef Py_ssize_t P_DRAINING = slot_offset(ServerProtocol, "draining")
cdef Py_ssize_t P_HANDLER = slot_offset(ServerProtocol, "_handler")
cdef Py_ssize_t P_ON_REFUSAL = slot_offset(ServerProtocol, "_on_refusal")
cdef Py_ssize_t P_HELD = slot_offset(ServerProtocol, "_held")
cdef Py_ssize_t P_HELD_BODY = slot_offset(ServerProtocol, "_held_body")
cdef Py_ssize_t P_HELD_LENGTH = slot_offset(ServerProtocol, "_held_length")

cdef Py_ssize_t L_MAX_HEADER = slot_offset(ServerLimits, "max_header_bytes")
cdef Py_ssize_t L_MAX_BODY = slot_offset(ServerLimits, "max_body_bytes")

cdef Py_ssize_t Q_METHOD = slot_offset(Request, "method")
cdef Py_ssize_t Q_PATH = slot_offset(Request, "path")
cdef Py_ssize_t Q_KEEP_ALIVE = slot_offset(Request, "keep_alive")
cdef Py_ssize_t Q_HTTP11 = slot_offset(Request, "http11")

cdef Py_ssize_t R_FINISHED = slot_offset(Responder, "finished")
cdef Py_ssize_t R_ON_CLIENT_GONE = slot_offset(Responder, "on_client_gone")

cdef type _Protocol = ServerProtocol
cdef type _Limits = ServerLimits
cdef type _Request = Request
cdef type _Responder = Responder
cdef type _HeadResponder = HeadResponder
cdef object _parse = _server._parse_request_begun
cdef object _new_request = _server.new_request
cdef object _new_responder = _server.new_responder
cdef object _data_received_twin = _server.data_received_py
cdef object _start_twin = _server.start_py
cdef object _GatewayError = GatewayError
cdef object _ZERO = 0.0
if _server.ServerProtocol.data_received is not _data_received_twin or ServerProtocol._start is not _start_twin:
    raise ImportError("ServerProtocol's methods are not the twins: the pure ones are used")


cdef object _start(object proto, object request):
    """``ServerProtocol._start`` (``proto`` of exactly that class)."""
    if type(request) is not _Request:
        return _start_twin(proto, request)
    put_slot(proto, P_DEADLINE, _ZERO)  # (_cancel_timer, inline)
    keep_alive = _get(request, Q_KEEP_ALIVE, "keep_alive")
    responder = _new_responder(
        _Responder if _get(request, Q_METHOD, "method") != b"HEAD" else _HeadResponder,
        proto, keep_alive and not _get(proto, P_DRAINING, "draining"), _get(request, Q_HTTP11, "http11"),
    )
    put_slot(proto, P_ACTIVE, responder)
    try:
        pending = _get(proto, P_HANDLER, "_handler")(request, responder)
    except _GatewayError as exc:
        on_refusal = _get(proto, P_ON_REFUSAL, "_on_refusal")
        if on_refusal is not None:
            on_refusal(exc, _get(request, Q_PATH, "path"), responder)
        responder.send_error(exc, request.api_format)
        return None
    except Exception as exc:  # a handler bug must not leave the client hanging
        proto._handler_bug(exc, request, responder)
        return None
    if pending is not None:
        proto.spawn(proto._run(pending, request, responder))
    elif type(responder) is _Responder or type(responder) is _HeadResponder:
        if not _get(responder, R_FINISHED, "finished") and _get(responder, R_ON_CLIENT_GONE, "on_client_gone") is None:
            # Neither answered nor handed to upstream callbacks: a handler bug.
            responder.send_error(_GatewayError("handler returned without a response"), request.api_format)
    elif not responder.finished and responder.on_client_gone is None:
        responder.send_error(_GatewayError("handler returned without a response"), request.api_format)
    return None


def start(proto, request):
    """``ServerProtocol._start`` (installed as it; ``http_server.start_py`` is the twin)."""
    if type(proto) is not _Protocol:
        return _start_twin(proto, request)
    return _start(proto, request)


cdef Py_ssize_t _take_plain_requests(object proto, bytes data) except -1:
    """``ServerProtocol._take_plain_requests``: the plain requests at the front of
    ``data`` dispatched; how many bytes they took."""
    limits = _get(proto, P_LIMITS, "_limits")
    if type(limits) is _Limits:
        max_header = _get(limits, L_MAX_HEADER, "max_header_bytes")
        max_body = _get(limits, L_MAX_BODY, "max_body_bytes")
    else:
        max_header, max_body = limits.max_header_bytes, limits.max_body_bytes
    cdef Py_ssize_t taken = 0
    cdef Py_ssize_t n = len(data)
    while True:
        parsed = _parse(data, taken, max_header, max_body)
        if parsed is None:
            return taken
        method, target, headers, body, keep_alive, end, forward = parsed
        if type(body) is not bytes:  # the head is here, not all of its body
            if _get(proto, P_ACTIVE, "_active") is not None:
                return taken  # (behind a running exchange: httptools' path, as before)
            proto._hold(parsed, data)
            return n
        taken = end
        put_slot(proto, P_URL, target)
        if not keep_alive:
            # Connection: close -- the client sends nothing after this request
            # (RFC 9112 9.6), so nothing after it is read.
            put_slot(proto, P_BROKEN, True)
        request = _new_request(method, target, headers, body, keep_alive, forward)
        if _get(proto, P_ACTIVE, "_active") is None:  # (_dispatch, inline)
            _start(proto, request)
        else:
            proto._dispatch(request)
        if _get(proto, P_BROKEN, "_broken") or taken == n:
            return taken


cdef Py_ssize_t _take_held_body(object proto, bytes data) except -1:
    """``ServerProtocol._take_held_body``: ``data`` continues the held request's body,
    dispatched once complete; how many bytes of ``data`` the body took."""
    have = _get(proto, P_HELD_BODY, "_held_body")
    cdef Py_ssize_t n = len(data)
    cdef Py_ssize_t need = <Py_ssize_t>_get(proto, P_HELD_LENGTH, "_held_length") - len(have)
    if n < need:
        return proto._take_held_body(data)  # (the twin: the body still arriving)
    parsed = _get(proto, P_HELD, "_held")
    body = (data if n == need else data[:need]) if not have else b"".join((have, data[:need]))
    put_slot(proto, P_HELD, None)
    put_slot(proto, P_HELD_BODY, b"")
    method, target, headers, _, keep_alive, _, forward = parsed
    if not keep_alive:
        put_slot(proto, P_BROKEN, True)  # (Connection: close: nothing after this request is read)
    request = _new_request(method, target, headers, body, keep_alive, forward)
    if _get(proto, P_ACTIVE, "_active") is None:  # (_dispatch, inline)
        _start(proto, request)
    else:
        proto._dispatch(request)
    return need


def data_received(proto, data):
    """``ServerProtocol.data_received`` (installed as it; ``http_server.data_received_py``
    is the twin)."""
    if type(proto) is not _Protocol or type(data) is not bytes or _parse is None:
        return _data_received_twin(proto, data)
    if _get(proto, P_BROKEN, "_broken"):
        return None  # after a framing error nothing more is read
    cdef Py_ssize_t taken
    if _get(proto, P_HELD, "_held") is not None:
        taken = _take_held_body(proto, <bytes>data)
        if taken == len(data) or _get(proto, P_BROKEN, "_broken"):
            return None
        data = data[taken:]
    if not _get(proto, P_MSG_STARTED, "_msg_started"):
        # httptools is between messages, so whole plain requests at the front of this
        # read can bypass it; it parses whatever the fast path leaves.
        taken = _take_plain_requests(proto, <bytes>data)
        if taken == len(data) or _get(proto, P_BROKEN, "_broken"):
            return None
        if taken:
            data = data[taken:]
    proto._feed(data)
    return None


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
