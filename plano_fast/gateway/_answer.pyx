# cython: language_level=3
"""A whole plain answer relayed in one compiled call: the twin of
``plano_fast.upstream.take_whole_answer_py``, reached through the compiled
``UpstreamConnection.data_received`` below (installed by ``plano_fast.gateway.relay``; its
twin ``data_received_py`` calls ``take_whole_answer_py``).

When one upstream read holds a whole plain answer (``wire.parse_response_head`` took it:
a 2xx-5xx status, one Content-Length, the body complete), the twin runs the relay's
callbacks one after the other: ``on_upstream_head`` (+ ``Responder.send_head_block``),
``on_upstream_body`` (the usage scan, ``Responder.send_body``), the connection's
``_message_complete`` (back to the pool), ``on_upstream_complete`` -> ``_finish`` ->
``_complete`` (``Responder.end`` -> ``ServerProtocol.exchange_done``, then ``_settle``:
the usage event, its sink, ``observe``), then ``on_upstream_read_done``.  That is ~15
Python frames and ~80 attribute reads per answer, ~35% of a firewall request's
instructions (bench_request_path, issue 27).  Here the same steps run in that order, with
the same side effects, in one C function: the slots of the exchange, the responder and the
server protocol are read and written in place (``plano_fast/_slots.pxd``), the settle
step's compiled ``make_event`` / ``observe`` are called directly.

One step runs later here than in the twin: a JSON body whose scanner strips nothing
(``wire._scan.reads_json_aside_c``: a request that does not stream) is relayed first and
its usage read after ``Responder.end`` wrote the client's answer, where the twin reads it
in ``on_upstream_body``.  Such a scan forwards every byte unchanged and cannot fail, so
the bytes and the row are the twin's; what a concurrency-1 client waits for is shorter by
the JSON walk, ~7k of the ~15k instructions this pass ran before the write (issue 27,
``benchmarks/bench_request_path --critical``).

Only the plain case is taken; everything else goes to the twin, before any side effect:
a sink that is not an ``Exchange`` (a hedge, a side request), or one whose class overrides
a callback this pass does not know (see ``plan_of``), an error status (>= 400: retries,
circuit breakers, redaction), a client gone or an attempt swallowed, a body filter other
than managed mode's ``HoldTerminal`` of a JSON answer (conversion, held answers, stream
scans), a
streamed request (its answer may be rewritten: sent chunked), a hedge in flight, a
``HeadResponder`` or a responder already answering, managed mode's Responses state.
Methods a subclass overrides that stay cheap to honour are called as Python methods
(managed mode's ``_complete``, any other ``_settle``, ``make_event`` / ``observe`` when not
the compiled ones, ``_server_timing``, ``CircuitBreaker.record_success``).

Exceptions are handled as the twin's ``_take_whole_response`` does (the connection fails
with the error; ``on_upstream_read_done`` follows either way); since every step's side
effects happen in the twin's order, the bytes handed to the client's transport are the
same (tests/test_whole_answer.py compares the two on real sockets).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy

import sys
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from plano_fast._clock cimport now_ns as _now_ns
from plano_fast.wire._digits cimport put_decimal as _digits
from plano_fast._slots cimport get_slot, put_slot, slot_offset, slot_or_attr as _get
from plano_fast.wire._head cimport HeadScan, free_scan, scan_response_any, scan_result
from plano_fast.wire._scan cimport feed_from_c, finish_c, has_usage_c, reads_json_aside_c

from plano_fast import upstream as _upstream
from plano_fast.errors import UpstreamError
from plano_fast.upstream import UpstreamConnection
from plano_fast.gateway import _settle
from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.http_server import (
    _STATUS_LINES,
    DATE_HEADER,
    SERVER_HEADER,
    Responder,
    ServerLimits,
    ServerProtocol,
    _DateHeader,
    status_line,
)
from plano_fast.ratelimit import with_headers
from plano_fast.usage import STATUS_NOT_BILLABLE, STATUS_OK, STATUS_UNBILLED, STATUS_USAGE_MISSING
from plano_fast.wire import parse_response_head as _parse_response
from plano_fast.wire._scan import UsageScanner as _UsageScanner  # (the compiled one: its C entries)

import httptools

# -- the exchange's slots (a subclass keeps its base's layout: read at the base's offsets)
cdef Py_ssize_t X_CTX = slot_offset(Exchange, "ctx")
cdef Py_ssize_t X_RESPONDER = slot_offset(Exchange, "responder")
cdef Py_ssize_t X_CLIENT_LEFT = slot_offset(Exchange, "client_left")
cdef Py_ssize_t X_SWALLOW = slot_offset(Exchange, "swallow")
cdef Py_ssize_t X_OPERATOR_AUTH = slot_offset(Exchange, "operator_auth")
cdef Py_ssize_t X_BODY_FILTER = slot_offset(Exchange, "body_filter")
cdef Py_ssize_t X_STREAMING = slot_offset(Exchange, "streaming")
cdef Py_ssize_t X_HEDGE = slot_offset(Exchange, "hedge")
cdef Py_ssize_t X_CIRCUIT = slot_offset(Exchange, "circuit")
cdef Py_ssize_t X_HEAD_NS = slot_offset(Exchange, "head_ns")
cdef Py_ssize_t X_STATUS = slot_offset(Exchange, "status")
cdef Py_ssize_t X_SCANNER = slot_offset(Exchange, "scanner")
cdef Py_ssize_t X_RL_HEAD = slot_offset(Exchange, "rl_head")
cdef Py_ssize_t X_REQUEST_ID = slot_offset(Exchange, "request_id")
cdef Py_ssize_t X_GUARD_WARNING = slot_offset(Exchange, "guard_warning")
cdef Py_ssize_t X_ROUTE_HEADER = slot_offset(Exchange, "route_header")
cdef Py_ssize_t X_CONN = slot_offset(Exchange, "conn")
cdef Py_ssize_t X_DONE = slot_offset(Exchange, "done")
cdef Py_ssize_t X_OUTCOME = slot_offset(Exchange, "outcome")

cdef Py_ssize_t C_SERVER_TIMING = slot_offset(ExchangeContext, "server_timing")
cdef Py_ssize_t C_USAGE_SINK = slot_offset(ExchangeContext, "usage_sink")

# -- the responder's and the server protocol's
include "../_responder_slots.pxi"

cdef Py_ssize_t P_LOST = slot_offset(ServerProtocol, "lost")
cdef Py_ssize_t P_DRAINING = slot_offset(ServerProtocol, "draining")
cdef Py_ssize_t P_ACTIVE = slot_offset(ServerProtocol, "_active")
cdef Py_ssize_t P_PENDING = slot_offset(ServerProtocol, "_pending")
cdef Py_ssize_t P_READING_PAUSED = slot_offset(ServerProtocol, "_reading_paused")
cdef Py_ssize_t P_HEADERS_DONE = slot_offset(ServerProtocol, "_headers_done")
cdef Py_ssize_t P_MSG_STARTED = slot_offset(ServerProtocol, "_msg_started")
cdef Py_ssize_t P_DEADLINE = slot_offset(ServerProtocol, "deadline")
cdef Py_ssize_t P_ON_TIMEOUT = slot_offset(ServerProtocol, "_on_timeout")
cdef Py_ssize_t P_LOOP = slot_offset(ServerProtocol, "loop")
cdef Py_ssize_t P_LIMITS = slot_offset(ServerProtocol, "_limits")

cdef Py_ssize_t S_KEEPALIVE = slot_offset(ServerLimits, "keepalive_timeout_s")

cdef Py_ssize_t U_POOL = slot_offset(UpstreamConnection, "_pool")
cdef Py_ssize_t U_ORIGIN = slot_offset(UpstreamConnection, "origin")
cdef Py_ssize_t U_PARSER = slot_offset(UpstreamConnection, "_parser")
cdef Py_ssize_t U_SINK = slot_offset(UpstreamConnection, "_sink")
cdef Py_ssize_t U_HEAD_BUF = slot_offset(UpstreamConnection, "_head_buf")
cdef Py_ssize_t U_HAS_LENGTH = slot_offset(UpstreamConnection, "_has_length")
cdef Py_ssize_t U_HEAD_SEEN = slot_offset(UpstreamConnection, "_head_seen")
cdef Py_ssize_t U_RECEIVED_ANY = slot_offset(UpstreamConnection, "_received_any")
cdef Py_ssize_t U_DEADLINE = slot_offset(UpstreamConnection, "deadline")
cdef Py_ssize_t U_IDLE_TIMEOUT = slot_offset(UpstreamConnection, "_idle_timeout_s")
cdef Py_ssize_t U_LAST_RX = slot_offset(UpstreamConnection, "_last_rx")
cdef Py_ssize_t U_CLOSED = slot_offset(UpstreamConnection, "closed")
cdef Py_ssize_t U_TRANSPORT = slot_offset(UpstreamConnection, "transport")
cdef Py_ssize_t U_IDLE_SINCE = slot_offset(UpstreamConnection, "idle_since")
cdef Py_ssize_t U_IDLE_STACK = slot_offset(UpstreamConnection, "idle_stack")

cdef Py_ssize_t L_CLOSED = slot_offset(_upstream.UpstreamPool, "closed")
cdef Py_ssize_t L_IDLE = slot_offset(_upstream.UpstreamPool, "_idle")
cdef Py_ssize_t L_MAX_IDLE = slot_offset(_upstream.UpstreamPool, "max_idle_per_origin")
cdef Py_ssize_t L_LOOP = slot_offset(_upstream.UpstreamPool, "loop")

cdef Py_ssize_t D_SECOND = slot_offset(_DateHeader, "_second")
cdef Py_ssize_t D_VALUE = slot_offset(_DateHeader, "value")

cdef type _Exchange = Exchange
cdef type _Responder = Responder
cdef type _Protocol = ServerProtocol
cdef type _Limits = ServerLimits
cdef type _Pool = _upstream.UpstreamPool
cdef type _Connection = UpstreamConnection
cdef type _Scanner = _UsageScanner  # (feed_from: the body scanned inside the read)
cdef Py_ssize_t _MAX_HEAD = _upstream.MAX_RESPONSE_HEAD_BYTES
cdef object _CallbackError = httptools.HttpParserCallbackError
cdef object _ParserError = httptools.HttpParserError
cdef object _data_received_twin = UpstreamConnection.data_received_py
cdef dict _STATUS = _STATUS_LINES
cdef object _DATE = DATE_HEADER
cdef bytes _SERVER = SERVER_HEADER
cdef object _IDLE_TIMEOUT = ServerProtocol._on_idle_timeout
cdef object _twin = _upstream.take_whole_answer_py
cdef object _make_event = _settle.make_event
cdef object _observe = _settle.observe

# What a class's plan says (0: the twin takes its answers)
cdef enum:
    P_TAKEN = 1
    P_RETRYING_HEAD = 2  # RetryingExchange.on_upstream_head: circuit and hedge first
    P_STATE_TURN = 4  # ManagedExchange.on_upstream_body: the Responses state fed first
    P_CALL_COMPLETE = 8  # a _complete of its own (managed: billed synchronously)
    P_FIREWALL_SETTLE = 16  # FirewallExchange._settle: unbilled paths counted
    P_CALL_SETTLE = 32  # another _settle of its own
    P_CALL_MAKE_EVENT = 64  # make_event / observe are not the compiled ones
    P_CALL_OBSERVE = 128

cdef dict _PLANS = {}
#: managed mode's body filter (plano_fast.gateway.modes.managed.HoldTerminal), once a
#: managed exchange was planned: a JSON answer's body is held by it, then released once
#: billed (its methods called as they are)
cdef object _HOLD = None

#: (method name, the classes whose version this pass knows -> the plan bit it sets; a
#: class absent from the map is not taken).  Classes named, not imported: a mode whose
#: module is not loaded has no exchange here.
_KNOWN = (
    ("on_upstream_head", {"plano_fast.gateway.relay.Exchange": 0,
                          "plano_fast.gateway.retrying.RetryingExchange": P_RETRYING_HEAD}),
    ("on_upstream_body", {"plano_fast.gateway.relay.Exchange": 0,
                          "plano_fast.gateway.modes.managed.ManagedExchange": P_STATE_TURN}),
    ("on_upstream_complete", {"plano_fast.gateway.relay.Exchange": 0}),
    ("on_upstream_read_done", {"plano_fast.gateway.relay.Exchange": 0}),
    # (RoutedExchange._finish with no body filter is Exchange._finish)
    ("_finish", {"plano_fast.gateway.relay.Exchange": 0, "plano_fast.gateway.routed.RoutedExchange": 0}),
    ("_complete", {"plano_fast.gateway.relay.Exchange": 0,
                   "plano_fast.gateway.modes.managed.ManagedExchange": P_CALL_COMPLETE}),
    ("_settle", {"plano_fast.gateway.relay.Exchange": 0,
                 "plano_fast.gateway.modes.firewall.FirewallExchange": P_FIREWALL_SETTLE}),
    ("_may_rewrite_body", {"plano_fast.gateway.relay.Exchange": 0}),
)


def _owner(cls, name):
    """The qualified name of the class in ``cls``' MRO that defines ``name``."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return f"{klass.__module__}.{klass.__qualname__}"
    return ""


def plan_of(cls):
    """What this pass does for an answer to a ``cls`` exchange (0: the twin takes it)."""
    if not issubclass(cls, _Exchange):
        return 0
    cdef int plan = P_TAKEN
    for name, known in _KNOWN:
        bit = known.get(_owner(cls, name))
        if bit is None:
            if name == "_settle":
                plan |= P_CALL_SETTLE  # honoured as a Python call
                continue
            return 0
        plan |= bit
    if plan & P_STATE_TURN:
        global _HOLD
        _HOLD = getattr(sys.modules.get("plano_fast.gateway.modes.managed"), "HoldTerminal", None)
    if cls.make_event is not _make_event:
        plan |= P_CALL_MAKE_EVENT
    if cls.observe is not _observe:
        plan |= P_CALL_OBSERVE
    return plan


cdef inline bytes _date_line():
    """``DATE_HEADER.get()``: its cached line while the second has not changed."""
    cdef timespec now
    clock_gettime(CLOCK_REALTIME, &now)
    cdef PyObject *second = get_slot(_DATE, D_SECOND)
    if second != NULL and type(<object>second) is int and <object>second == now.tv_sec:
        return _get(_DATE, D_VALUE, "value")
    return _DATE.get()


cdef bint _plain(object sink, int status, int plan) except -1:
    """Whether this answer takes the compiled pass (read-only checks, before any effect;
    the head is one ``scan_response`` took: Content-Length framed, never chunked)."""
    if status >= 400:
        return False
    if (_get(sink, X_CLIENT_LEFT, "client_left") or _get(sink, X_SWALLOW, "swallow")
            or _get(sink, X_STREAMING, "streaming") or _get(sink, X_HEDGE, "hedge") is not None):
        return False
    body_filter = _get(sink, X_BODY_FILTER, "body_filter")
    if body_filter is not None and (type(body_filter) is not _HOLD or body_filter.streaming):
        return False  # (managed mode's HoldTerminal of a JSON answer: its methods are called)
    if plan & P_STATE_TURN and getattr(sink, "state_turn") is not None:
        return False
    responder = _get(sink, X_RESPONDER, "responder")
    if (type(responder) is not _Responder or _get(responder, R_FINISHED, "finished")
            or _get(responder, R_HEAD_SENT, "head_sent") or _get(responder, R_CHUNKED, "_chunked")):
        return False
    proto = _get(responder, R_PROTO, "_proto")
    if type(proto) is _Protocol:
        return not _get(proto, P_LOST, "lost")
    return not proto.lost


cdef void _send_body(object responder, object data) except *:
    """``Responder.send_body`` (not chunked: the answer has a Content-Length)."""
    cdef Py_ssize_t n = len(data)
    if n == 0:
        return
    put_slot(responder, R_BYTES_SENT, _get(responder, R_BYTES_SENT, "bytes_sent") + n)
    (<list>_get(responder, R_OUT, "_out")).append(data)


cdef void _end(object responder, object loop, object now) except *:
    """``Responder.end`` of a plain ``Responder`` (not chunked), then
    ``ServerProtocol.exchange_done``, whose usual keep-alive branch is inlined.  ``now`` is
    ``loop.time()`` read at the start of this upstream read: the client's loop is that
    one, whose clock (uvloop's: libuv's, updated once a loop iteration) has not moved."""
    if _get(responder, R_FINISHED, "finished"):
        return
    put_slot(responder, R_FINISHED, True)
    put_slot(responder, R_UPSTREAM, None)
    put_slot(responder, R_ON_CLIENT_GONE, None)
    proto = _get(responder, R_PROTO, "_proto")
    cdef bint exact = type(proto) is _Protocol
    # flush
    cdef list out = _get(responder, R_OUT, "_out")
    if out:
        put_slot(responder, R_OUT, [])
        if not (_get(proto, P_LOST, "lost") if exact else proto.lost):
            transport = _get(responder, R_TRANSPORT, "_transport")
            try:
                if len(out) == 1:
                    transport.write(out[0])
                else:
                    transport.writelines(out)
            except (OSError, RuntimeError):
                pass  # the client's connection failed under the write: as Responder.flush
    close = _get(responder, R_CLOSE_AFTER, "_close_after")
    if (not exact or _get(proto, P_ACTIVE, "_active") is not responder or _get(proto, P_LOST, "lost")
            or close or _get(proto, P_DRAINING, "draining") or _get(proto, P_PENDING, "_pending")
            or _get(proto, P_READING_PAUSED, "_reading_paused") or _get(proto, P_HEADERS_DONE, "_headers_done")
            or _get(proto, P_MSG_STARTED, "_msg_started")):
        proto.exchange_done(responder, close)
        return
    # the usual keep-alive wait (exchange_done's last branch)
    put_slot(proto, P_ACTIVE, None)
    proto_loop = _get(proto, P_LOOP, "loop")
    limits = _get(proto, P_LIMITS, "_limits")
    put_slot(proto, P_DEADLINE, (now if proto_loop is loop else proto_loop.time())
             + (_get(limits, S_KEEPALIVE, "keepalive_timeout_s") if type(limits) is _Limits
                else limits.keepalive_timeout_s))
    put_slot(proto, P_ON_TIMEOUT, _IDLE_TIMEOUT)


cdef void _release(object conn, object now) except *:
    """``UpstreamPool.release(conn)`` (the connection is open: checked by the caller), its
    fields read in place; ``now`` is the pool's ``loop.time()`` at the start of this read."""
    pool = _get(conn, U_POOL, "_pool")
    if type(pool) is not _Pool:
        pool.release(conn)
        return
    if _get(pool, L_CLOSED, "closed"):
        conn._close()
        return
    # (the pool's stack for the connection's origin, kept on the connection once found:
    # the origin tuple hashed and looked up on every answer was ~0.3k instructions)
    stack = _get(conn, U_IDLE_STACK, "idle_stack")
    if stack is None:
        stack = (<dict?>_get(pool, L_IDLE, "_idle")).setdefault(_get(conn, U_ORIGIN, "origin"), [])
        put_slot(conn, U_IDLE_STACK, stack)
    if len(stack) >= _get(pool, L_MAX_IDLE, "max_idle_per_origin"):
        conn._close()
        return
    put_slot(conn, U_IDLE_SINCE, now)
    (<list>stack).append(conn)


cdef void _settle_step(object sink, object ctx, object outcome, object status, int plan) except *:
    """``_settle`` (Exchange's, or FirewallExchange's then Exchange's)."""
    if plan & P_CALL_SETTLE:
        sink._settle(outcome, status)
        return
    if plan & P_FIREWALL_SETTLE:
        if sink.unbilled and not _get(sink, X_OUTCOME, "outcome"):
            ctx.unbilled_requests += 1
            if outcome == STATUS_NOT_BILLABLE:
                outcome = STATUS_UNBILLED
    if _get(sink, X_OUTCOME, "outcome"):
        return
    put_slot(sink, X_OUTCOME, outcome)
    if plan & P_CALL_MAKE_EVENT:
        event = sink.make_event(outcome, status)
    else:
        event = _make_event(sink, outcome, status)
    _get(ctx, C_USAGE_SINK, "usage_sink")(event)
    if plan & P_CALL_OBSERVE:
        sink.observe(event)
    else:
        _observe(sink, event)


def data_received(conn, data):
    """``UpstreamConnection.data_received`` (installed as it; the Python method is the twin,
    ``UpstreamConnection.data_received_py``): the same steps, the connection's slots read
    and written in place, for every upstream read (an answer's, a stream chunk's)."""
    if type(conn) is not _Connection:
        return _data_received_twin(conn, data)
    sink = _get(conn, U_SINK, "_sink")
    if sink is None:
        # Bytes on an idle connection: the server is confused; never reuse it.
        conn._close()
        return
    pool = _get(conn, U_POOL, "_pool")
    loop = _get(pool, L_LOOP, "loop") if type(pool) is _Pool else pool.loop
    now = loop.time()
    put_slot(conn, U_LAST_RX, now)
    if not _get(conn, U_RECEIVED_ANY, "_received_any"):
        put_slot(conn, U_RECEIVED_ANY, True)
        put_slot(conn, U_DEADLINE, now + _get(conn, U_IDLE_TIMEOUT, "_idle_timeout_s"))
    cdef HeadScan scan
    cdef int taken
    if not _get(conn, U_HEAD_SEEN, "_head_seen"):
        buf = _get(conn, U_HEAD_BUF, "_head_buf")
        if not buf:
            if type(data) is not bytes:
                parsed = _parse_response(data, _MAX_HEAD)  # (raises as it would)
                if parsed is not None:
                    return _twin(conn, sink, data, parsed)
            else:
                taken = scan_response_any(<const unsigned char *>PyBytes_AS_STRING(data),
                                          PyBytes_GET_SIZE(data), _MAX_HEAD, &scan)
                if taken < 0:
                    raise MemoryError()
                if taken:
                    try:
                        _take_whole(conn, sink, data, &scan, loop, now)
                    finally:
                        free_scan(&scan)
                    return
            put_slot(conn, U_HEAD_BUF, data)
        else:
            put_slot(conn, U_HEAD_BUF, buf + data)
    try:
        _get(conn, U_PARSER, "_parser").feed_data(data)
    except _CallbackError as exc:
        # The sink raised while handling a piece; it has already dealt with it.
        cause = exc.__context__
        conn._fail(UpstreamError(f"error relaying upstream response: {cause!r}"), False)
    except _ParserError as exc:
        conn._fail(UpstreamError(f"invalid response from upstream: {exc}"), False)
    else:
        if not _get(conn, U_HEAD_SEEN, "_head_seen") and len(_get(conn, U_HEAD_BUF, "_head_buf")) > _MAX_HEAD:
            conn._fail(UpstreamError(f"upstream response head exceeds {_MAX_HEAD} bytes"), False)
    sink.on_upstream_read_done()


# -- the client's answer, built in one bytes object --------------------------------------
# What Exchange.on_upstream_head + Responder.send_head_block + send_body put in the
# responder's out list (the status line, the kept block, the gateway's lines, the framing,
# date and server lines, then the body), written here in one pass into one object: no
# ResponseHead, no block copy, no per-line bytes, no join (~1.3k instructions for its nine
# parts), and one transport.write of it instead of a writelines of two (uvloop's
# writelines builds a write context of buffers: ~0.7k more).

cdef bytes _REQUEST_ID_START = b"x-plano-request-id: "
cdef bytes _CONNECTION_CLOSE = b"connection: close\r\n"
cdef bytes _CONNECTION_KEEP_ALIVE = b"connection: keep-alive\r\n"


ctypedef struct HeadParts:
    # the head's pieces: bytes objects (NULL: none), borrowed from _take_whole's locals
    PyObject *line
    PyObject *block  # NULL: the scan's runs
    PyObject *timing
    PyObject *warning
    PyObject *route
    PyObject *connection
    PyObject *date
    const char *request_id  # (UTF-8 of the request id, held by _take_whole)
    Py_ssize_t request_id_len
    char length_line[48]
    Py_ssize_t length_line_len
    bint skip_account
    Py_ssize_t size  # (_measure)


cdef inline int _need_bytes(object piece) except -1:
    """A head's piece is copied from a bytes object's buffer: anything else is refused."""
    if type(piece) is not bytes:
        raise TypeError(f"a head piece must be bytes, not {type(piece).__name__}")
    return 0


cdef inline PyObject *_piece(object piece) except? NULL:
    """An optional line piece: NULL for None or b"", else the bytes object (borrowed)."""
    if piece is None or not piece:
        return NULL
    _need_bytes(piece)
    return <PyObject *>piece


cdef inline Py_ssize_t _size(PyObject *piece) noexcept:
    return 0 if piece == NULL else PyBytes_GET_SIZE(<object>piece)


cdef inline char *_put(char *w, PyObject *piece) noexcept:
    """``piece`` (bytes, or NULL) copied at ``w``; returns the end."""
    cdef Py_ssize_t k
    if piece == NULL:
        return w
    k = PyBytes_GET_SIZE(<object>piece)
    memcpy(w, PyBytes_AS_STRING(<object>piece), k)
    return w + k


cdef void _measure(HeadParts *h, HeadScan *scan) noexcept:
    cdef Py_ssize_t size = _size(h.line)
    if h.block != NULL:
        size += _size(h.block)
    else:
        size += scan.kept - (scan.account if h.skip_account else 0)
    size += PyBytes_GET_SIZE(_REQUEST_ID_START) + h.request_id_len + 2
    size += _size(h.timing) + _size(h.warning) + _size(h.route) + h.length_line_len
    size += _size(h.connection) + _size(h.date) + PyBytes_GET_SIZE(_SERVER) + 2
    h.size = size


cdef bytes _answer(HeadParts *h, HeadScan *scan, bytes data, object body, Py_ssize_t start, Py_ssize_t n):
    """The head (``_measure`` first), then ``n`` bytes of ``body`` from ``start``, in one
    new bytes object."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h.size + n)
    cdef char *w = PyBytes_AS_STRING(out)
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef int r
    cdef Py_ssize_t k
    w = _put(w, h.line)
    if h.block != NULL:
        w = _put(w, h.block)
    else:
        for r in range(scan.nruns):
            if scan.runs[r].account and h.skip_account:
                continue  # (without_account_headers: the operator's key upstream)
            k = scan.runs[r].stop - scan.runs[r].start
            memcpy(w, s + scan.runs[r].start, k)
            w += k
    w = _put(w, <PyObject *>_REQUEST_ID_START)
    memcpy(w, h.request_id, h.request_id_len)
    w += h.request_id_len
    w[0] = 13
    w[1] = 10
    w += 2
    w = _put(w, h.timing)
    w = _put(w, h.warning)
    w = _put(w, h.route)
    memcpy(w, h.length_line, h.length_line_len)
    w += h.length_line_len
    w = _put(w, h.connection)
    w = _put(w, h.date)
    w = _put(w, <PyObject *>_SERVER)
    w[0] = 13
    w[1] = 10
    w += 2
    if n:
        memcpy(w, PyBytes_AS_STRING(body) + start, n)
    return out


cdef _take_whole(conn, sink, bytes data, HeadScan *scan, object loop, object now):
    cls = type(sink)
    cdef object known = _PLANS.get(cls)
    if known is None:
        known = _PLANS[cls] = plan_of(cls)
    cdef int plan = known
    cdef int code = scan.status
    if not plan or not _plain(sink, code, plan):
        return _twin(conn, sink, data, scan_result(data, scan))
    status = code
    cdef Py_ssize_t content_length = scan.content_length
    cdef Py_ssize_t head_len = scan.head_len
    cdef Py_ssize_t n
    cdef HeadParts h
    #: the body's usage is read after the client's write (a JSON body relayed as it is)
    cdef bint scan_after = False
    h.block = h.timing = h.warning = h.route = h.connection = NULL
    put_slot(conn, U_HEAD_SEEN, True)
    put_slot(conn, U_HAS_LENGTH, True)
    try:
        # -- on_upstream_head (RetryingExchange's for a status < 400, then Exchange's)
        if plan & P_RETRYING_HEAD:
            circuit = _get(sink, X_CIRCUIT, "circuit")
            if circuit is not None and circuit.failures:
                circuit.record_success()
        put_slot(sink, X_HEAD_NS, _now_ns())
        put_slot(sink, X_STATUS, status)
        scanner = _get(sink, X_SCANNER, "scanner")
        # the operator's key upstream: the account headers are not the client's to see
        h.skip_account = _get(sink, X_OPERATOR_AUTH, "operator_auth") is not None
        rl_head = _get(sink, X_RL_HEAD, "rl_head")
        if rl_head:
            block = with_headers(_block(data, scan, h.skip_account), rl_head)
            h.block = <PyObject *>block
            _need_bytes(block)
        request_id = _get(sink, X_REQUEST_ID, "request_id")
        h.request_id = PyUnicode_AsUTF8AndSize(request_id, &h.request_id_len)
        ctx = _get(sink, X_CTX, "ctx")
        if _get(ctx, C_SERVER_TIMING, "server_timing"):
            timing = sink._server_timing()
            h.timing = _piece(timing)
        guard_warning = _get(sink, X_GUARD_WARNING, "guard_warning")
        h.warning = _piece(guard_warning)
        route_header = _get(sink, X_ROUTE_HEADER, "route_header")
        h.route = _piece(route_header)
        # -- Responder.send_head_block (a Content-Length: never chunked)
        responder = _get(sink, X_RESPONDER, "responder")
        line = _STATUS.get(status)
        if line is None:
            line = status_line(status)
        h.line = <PyObject *>line
        _need_bytes(line)
        memcpy(h.length_line, b"content-length: ", 16)
        n = 16 + _digits(h.length_line + 16, <unsigned long long>content_length)
        h.length_line[n] = 13
        h.length_line[n + 1] = 10
        h.length_line_len = n + 2
        proto = _get(responder, R_PROTO, "_proto")
        if _get(responder, R_CLOSE_AFTER, "_close_after") or (
                _get(proto, P_DRAINING, "draining") if type(proto) is _Protocol else proto.draining):
            put_slot(responder, R_CLOSE_AFTER, True)
            h.connection = <PyObject *>_CONNECTION_CLOSE
        elif not _get(responder, R_HTTP11, "_http11"):
            h.connection = <PyObject *>_CONNECTION_KEEP_ALIVE
        date = _date_line()
        h.date = <PyObject *>date
        _need_bytes(date)
        _measure(&h, scan)
        put_slot(responder, R_HEAD_SENT, True)
        out = <list>_get(responder, R_OUT, "_out")
        # -- on_upstream_body (the client is still there: nothing above can change that)
        body_filter = _get(sink, X_BODY_FILTER, "body_filter")
        if content_length and _get(conn, U_SINK, "_sink") is not None:
            if body_filter is None:
                # the head and the body in one object (Responder.send_body's count)
                if scanner is None:
                    out.append(_answer(&h, scan, data, data, head_len, content_length))
                    n = content_length
                elif (type(scanner) is _Scanner and PyBytes_GET_SIZE(data) - head_len == content_length
                        and not plan & P_CALL_COMPLETE and reads_json_aside_c(scanner)):
                    # Relayed as it is, its usage read once the client's answer is written
                    # (_scan_after, below): such a scanner forwards every byte unchanged
                    # and cannot fail, so the bytes and the row are the twin's, and the
                    # JSON walk (~7k instructions, half of this pass before the write) is
                    # off what a concurrency-1 client waits for (issue 27).
                    out.append(_answer(&h, scan, data, data, head_len, content_length))
                    n = content_length
                    scan_after = True
                else:
                    try:
                        # (data[head_len:] scanned in place: the body is the read's tail,
                        # ``content_length`` bytes, checked by the head's scan)
                        if type(scanner) is _Scanner and PyBytes_GET_SIZE(data) - head_len == content_length:
                            body = feed_from_c(scanner, data, head_len)
                        else:
                            body = scanner.feed(PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + head_len,
                                                                          content_length))
                    except BaseException:
                        out.append(_answer(&h, scan, data, None, 0, 0))  # (sent before the body was read)
                        raise
                    if body is None:  # (forward the read's own tail)
                        n = content_length
                        out.append(_answer(&h, scan, data, data, head_len, content_length))
                    elif type(body) is bytes:
                        n = PyBytes_GET_SIZE(body)
                        out.append(_answer(&h, scan, data, body, 0, n))
                    else:
                        out.append(_answer(&h, scan, data, None, 0, 0))
                        n = len(body)
                        if n:
                            out.append(body)
                put_slot(responder, R_BYTES_SENT, _get(responder, R_BYTES_SENT, "bytes_sent") + n)
            else:
                out.append(_answer(&h, scan, data, None, 0, 0))
                body = data[head_len:]
                if scanner is not None:
                    body = scanner.feed(body)
                body_filter.relay(body, responder)
        else:
            out.append(_answer(&h, scan, data, None, 0, 0))
        # -- the connection's _message_complete
        put_slot(conn, U_SINK, None)
        put_slot(conn, U_DEADLINE, 0.0)
        # (not reused while part of the request is still being written: the twin's
        # UpstreamConnection.sending, inlined: no Python frame on every answer)
        if (scan.keep_alive and not _get(conn, U_CLOSED, "closed")
                and not _get(conn, U_TRANSPORT, "transport").get_write_buffer_size()):
            _release(conn, now)
        else:
            conn._close()
        # -- on_upstream_complete
        put_slot(sink, X_CONN, None)
        if scan_after:
            tail = b""
            outcome = None  # (read after the write)
        elif scanner is None:
            tail = b""
            outcome = STATUS_NOT_BILLABLE
        elif type(scanner) is _Scanner:  # (its C entries: no Usage object built for the flag)
            tail = finish_c(scanner)
            outcome = STATUS_OK if has_usage_c(scanner) else STATUS_USAGE_MISSING
        else:
            tail = scanner.finish()
            outcome = STATUS_OK if scanner.result().has_usage else STATUS_USAGE_MISSING
        # -- _finish, _complete
        body_filter = _get(sink, X_BODY_FILTER, "body_filter")
        if body_filter is None:
            if tail:
                _send_body(responder, tail)
        else:
            body_filter.finish(responder, tail)
        if plan & P_CALL_COMPLETE:
            sink._complete(outcome)
        else:
            _end(responder, loop, now)
            if scan_after:
                outcome = _scan_after(scanner, data, head_len)
            _settle_step(sink, ctx, outcome, status, plan)
        done = _get(sink, X_DONE, "done")
        if done is not None and not done.done():
            done.set_result(False)
    except Exception as exc:  # as a callback's error under httptools (the twin's handling)
        conn._fail(UpstreamError(f"error relaying upstream response: {exc!r}"), False)
    # -- on_upstream_read_done (Exchange's: flush what is left, if anything)
    body_filter = _get(sink, X_BODY_FILTER, "body_filter")
    responder = _get(sink, X_RESPONDER, "responder")
    if body_filter is not None:
        body_filter.read_done(responder)
    elif type(responder) is not _Responder or _get(responder, R_OUT, "_out"):
        responder.flush()


cdef str _scan_after(object scanner, bytes data, Py_ssize_t start):
    """The usage of a body already relayed (``reads_json_aside_c``: its scan returns
    nothing to forward and cannot fail): read, finished; the outcome, as the twin's
    ``on_upstream_complete`` gives it."""
    feed_from_c(scanner, data, start)
    finish_c(scanner)
    return STATUS_OK if has_usage_c(scanner) else STATUS_USAGE_MISSING


cdef bytes _block(bytes data, HeadScan *scan, bint skip_account):
    """The kept header lines (``ResponseHead.block``), without the account lines when
    ``skip_account`` (``without_account_headers``)."""
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef bytes block = PyBytes_FromStringAndSize(NULL, scan.kept - (scan.account if skip_account else 0))
    cdef char *w = PyBytes_AS_STRING(block)
    cdef int r
    cdef Py_ssize_t k
    for r in range(scan.nruns):
        if scan.runs[r].account and skip_account:
            continue
        k = scan.runs[r].stop - scan.runs[r].start
        memcpy(w, s + scan.runs[r].start, k)
        w += k
    return block


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
