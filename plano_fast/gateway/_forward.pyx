# cython: language_level=3
"""``Exchange.forward_now`` compiled: the twin of ``relay.forward_now_py`` (installed as
``Exchange.forward_now`` by ``plano_fast.gateway.relay``; ``_firewall.pyx`` calls it as a C
function).

The twin is four Python frames per forwarded request -- ``forward_now`` ->
``UpstreamPool.take_idle``, then ``_send`` -> ``UpstreamConnection.send_request`` -- and ~35
attribute reads and writes.  Here the same steps run in that order, with the same side
effects, in one C function: the slots of the exchange, its responder and the pooled
connection are read and written in place (``plano_fast/_slots.pxd``), the loop's clock
read once, and the head and the body written as one buffer.

Taken only when each object is of the class this pass knows, and the exchange's class
keeps ``Exchange._send``; otherwise the twin runs, before any side effect.  What a
subclass may override and this pass honours is called as a Python method: ``_forward``
(no idle connection: the coroutine that opens one), ``_client_gone`` (bound, as the twin
binds it), ``_trace_attempt`` (a sampled request).
"""

from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from plano_fast._clock cimport now_ns as _now_ns
from plano_fast._slots cimport get_slot, put_slot, slot_offset, slot_or_attr as _get

from plano_fast import wire as _wire
from plano_fast.gateway import relay as _relay
from plano_fast.gateway.upstream_request import MAX_CLIENT_REQUEST_ID_BYTES, VISIBLE_ASCII
from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.http_server import HeadResponder, Responder
from plano_fast.upstream import UpstreamConnection, UpstreamPool

cdef Py_ssize_t X_CTX = slot_offset(Exchange, "ctx")
cdef Py_ssize_t X_ORIGIN = slot_offset(Exchange, "origin")
cdef Py_ssize_t X_ATTEMPTS = slot_offset(Exchange, "attempts")
cdef Py_ssize_t X_RESPONDER = slot_offset(Exchange, "responder")
cdef Py_ssize_t X_SENT_NS = slot_offset(Exchange, "sent_ns")
cdef Py_ssize_t X_SPAN = slot_offset(Exchange, "span")
cdef Py_ssize_t X_CONN = slot_offset(Exchange, "conn")
cdef Py_ssize_t X_TIMEOUTS = slot_offset(Exchange, "timeouts")
cdef Py_ssize_t X_UPSTREAM_DATA = slot_offset(Exchange, "upstream_data")

cdef Py_ssize_t C_POOL = slot_offset(ExchangeContext, "pool")

cdef Py_ssize_t R_ON_CLIENT_GONE = slot_offset(Responder, "on_client_gone")
cdef Py_ssize_t R_UPSTREAM = slot_offset(Responder, "upstream")

cdef Py_ssize_t U_POOL = slot_offset(UpstreamConnection, "_pool")
cdef Py_ssize_t U_TRANSPORT = slot_offset(UpstreamConnection, "transport")
cdef Py_ssize_t U_SINK = slot_offset(UpstreamConnection, "_sink")
cdef Py_ssize_t U_HEAD_BUF = slot_offset(UpstreamConnection, "_head_buf")
cdef Py_ssize_t U_CHUNKED = slot_offset(UpstreamConnection, "_chunked")
cdef Py_ssize_t U_HAS_LENGTH = slot_offset(UpstreamConnection, "_has_length")
cdef Py_ssize_t U_HEAD_SEEN = slot_offset(UpstreamConnection, "_head_seen")
cdef Py_ssize_t U_RECEIVED_ANY = slot_offset(UpstreamConnection, "_received_any")
cdef Py_ssize_t U_DEADLINE = slot_offset(UpstreamConnection, "deadline")
cdef Py_ssize_t U_FIRST_BYTE = slot_offset(UpstreamConnection, "_first_byte_timeout_s")
cdef Py_ssize_t U_IDLE_TIMEOUT = slot_offset(UpstreamConnection, "_idle_timeout_s")
cdef Py_ssize_t U_LAST_RX = slot_offset(UpstreamConnection, "_last_rx")
cdef Py_ssize_t U_REUSED = slot_offset(UpstreamConnection, "reused")
cdef Py_ssize_t U_CLOSED = slot_offset(UpstreamConnection, "closed")
cdef Py_ssize_t U_IDLE_SINCE = slot_offset(UpstreamConnection, "idle_since")

cdef type _Context = ExchangeContext
cdef type _Responder = Responder
cdef type _HeadResponder = HeadResponder  # (no slots of its own: Responder's layout)
cdef type _Pool = UpstreamPool
cdef type _Connection = UpstreamConnection
cdef object _SEND = Exchange._send
cdef object _twin = _relay.forward_now_py
#: exchange class -> whether it keeps ``Exchange._send`` (the pass takes it)
cdef dict _PLANS = {}
cdef object _header_line = _wire.header_line
cdef Py_ssize_t _MAX_REQUEST_ID = MAX_CLIENT_REQUEST_ID_BYTES
cdef bytes _VISIBLE_ASCII = VISIBLE_ASCII


cdef bytes request_id_line_c(object client_request_id, object request_id):
    """``upstream_request.finish_head``'s x-request-id line: the client's own when it sent
    exactly one of 1 to 128 visible ASCII bytes, else the gateway's ``request_id``."""
    if (client_request_id and len(client_request_id) <= _MAX_REQUEST_ID
            and not client_request_id.translate(None, _VISIBLE_ASCII)):
        return b"x-request-id: " + client_request_id + b"\r\n"
    return _header_line(b"x-request-id: ", request_id)


cdef Py_ssize_t L_LOOP = slot_offset(UpstreamPool, "loop")
cdef Py_ssize_t L_IDLE = slot_offset(UpstreamPool, "_idle")
cdef Py_ssize_t L_IDLE_TIMEOUT = slot_offset(UpstreamPool, "idle_timeout_s")

#: the loop time ``_take_idle`` read from an exact pool's loop, for ``_send_request`` to
#: reuse in the same call (the twin asks the loop twice: uvloop's clock is the loop
#: iteration's, the same value; a method call each, ~0.2k instructions); None otherwise
cdef object _taken_at = None


cdef object _take_idle(object pool, object origin):
    """``UpstreamPool.take_idle(origin)``, the pool's and the connection's fields read in
    place (generic attribute lookups were ~1.4k instructions a request)."""
    global _taken_at
    _taken_at = None
    if type(pool) is not _Pool:
        return pool.take_idle(origin)
    stack = (<dict?>_get(pool, L_IDLE, "_idle")).get(origin)
    if not stack:
        return None
    now = _get(pool, L_LOOP, "loop").time()
    idle_timeout_s = _get(pool, L_IDLE_TIMEOUT, "idle_timeout_s")
    cdef list idle = <list?>stack
    while idle:
        conn = idle.pop()
        if type(conn) is _Connection:
            if _get(conn, U_CLOSED, "closed") or now - _get(conn, U_IDLE_SINCE, "idle_since") > idle_timeout_s:
                conn._close()
                continue
            put_slot(conn, U_REUSED, True)
            if get_slot(conn, U_POOL) == <PyObject *>pool:
                _taken_at = now
        else:
            if conn.closed or now - conn.idle_since > idle_timeout_s:
                conn._close()
                continue
            conn.reused = True
        return conn
    return None


cdef void _send_request(object conn, object data, object sink, object first_byte_s, object idle_s) except *:
    """``UpstreamConnection.send_request`` (``conn`` of exactly that class)."""
    transport = _get(conn, U_TRANSPORT, "transport")
    if transport is None or _get(conn, U_SINK, "_sink") is not None:
        raise AssertionError  # (the twin's assert)
    put_slot(conn, U_SINK, sink)
    put_slot(conn, U_RECEIVED_ANY, False)
    put_slot(conn, U_HEAD_BUF, b"")
    put_slot(conn, U_CHUNKED, False)
    put_slot(conn, U_HAS_LENGTH, False)
    put_slot(conn, U_HEAD_SEEN, False)
    put_slot(conn, U_FIRST_BYTE, first_byte_s)
    put_slot(conn, U_IDLE_TIMEOUT, idle_s)
    global _taken_at
    now = _taken_at
    _taken_at = None
    if now is None:
        now = _get(conn, U_POOL, "_pool").loop.time()
    put_slot(conn, U_LAST_RX, now)
    put_slot(conn, U_DEADLINE, now + first_byte_s)
    if type(data) is list and len(<list>data) == 2 and type((<list>data)[0]) is bytes and type((<list>data)[1]) is bytes:
        # the head and the body as one buffer: the bytes writelines sends, by the
        # transport's single-buffer write (no list walk, one buffer queued)
        transport.write((<bytes>(<list>data)[0]) + (<bytes>(<list>data)[1]))
    else:
        transport.writelines(data)


cdef object forward_now_c(object exchange):
    """``Exchange.forward_now``: send on an idle pooled connection now; the coroutine of
    ``_forward`` when one must be opened."""
    cls = type(exchange)
    cdef object known = _PLANS.get(cls)
    if known is None:
        known = _PLANS[cls] = issubclass(cls, Exchange) and cls._send is _SEND
    if known is False:
        return _twin(exchange)
    ctx = _get(exchange, X_CTX, "ctx")
    responder = _get(exchange, X_RESPONDER, "responder")
    kind = type(responder)
    if type(ctx) is not _Context or (kind is not _Responder and kind is not _HeadResponder):
        return _twin(exchange)
    conn = _take_idle(_get(ctx, C_POOL, "pool"), _get(exchange, X_ORIGIN, "origin"))
    if conn is None:
        return exchange._forward()
    put_slot(exchange, X_ATTEMPTS, 1)
    put_slot(responder, R_ON_CLIENT_GONE, exchange._client_gone)
    # -- _send
    put_slot(exchange, X_SENT_NS, _now_ns())
    if _get(exchange, X_SPAN, "span") is not None:
        exchange._trace_attempt()
    put_slot(exchange, X_CONN, conn)
    put_slot(responder, R_UPSTREAM, conn)
    timeouts = _get(exchange, X_TIMEOUTS, "timeouts")
    data = _get(exchange, X_UPSTREAM_DATA, "upstream_data")
    if type(conn) is _Connection:
        _send_request(conn, data, exchange, timeouts[1], timeouts[2])
    else:
        global _taken_at
        _taken_at = None
        conn.send_request(data, exchange, timeouts[1], timeouts[2])
    return None


def forward_now(exchange):
    """``Exchange.forward_now`` (installed as it; ``relay.forward_now_py`` is the twin)."""
    return forward_now_c(exchange)


def request_id_line(client_request_id, request_id):
    """``request_id_line_c``, for tests/test_header_tables.py (``finish_head``'s rule)."""
    return request_id_line_c(client_request_id, request_id)


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
