# cython: language_level=3
"""``dispatch`` compiled for a firewall or config-mode request the exchange forwards: the
twin of ``plano_fast.gateway.dispatch.dispatch_py`` (installed as ``dispatch.dispatch`` by
that module, so the server's handler, ``functools.partial(dispatch, gateway)``, is this).

The twin is one Python frame between the server's read and the exchange's start, with ~15
attribute reads of the gateway, its context and the request (~2k instructions a request,
issue 27).  Here the same steps run in that order, with the same side effects: the
request's and the exchange's slots read and written in place (``plano_fast/_slots.pxd``),
the exchange built by ``relay.new_exchange`` and aimed (``RoutedExchange.aim``'s slots)
inline, the gateway's plain attributes read from its __dict__, a request tracing may
sample traced as the twin's ``trace`` does it (``Tracing.may_sample``, then ``sample``
and ``start_server``: its server span; no frame of its own), its ``start`` called and a
refusal logged as the twin does.

Managed mode's plain request too: a POST to one of the exact endpoints, its client
headers read (``read_client_headers_c``, the twin's ``read_client_headers`` and its
refusals for anything unusual), the ``ManagedExchange`` built, aimed and started as the
twin's managed branch does (its start decides everything else: ``_managed.pyx``).

Only the plain case is taken; everything else goes to the twin before any side effect:
a request or gateway context of another class, the store not open yet, a request the
fast parser did not read (``forward`` unset: the fragment check), prechecks configured, health
paths, a config- or managed-mode path that is not one of the exact endpoints or not a POST
(the twin's 405, managed mode's 404 and stored responses), Gemini's, the decision API.
"""

from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

cdef extern from "Python.h":
    PyObject **_PyObject_GetDictPtr(object obj)

from plano_fast._new_credentials cimport read_client_headers_c
from plano_fast._slots cimport get_slot, put_slot, slot_offset, slot_or_attr as _get

from plano_fast.errors import GatewayError
from plano_fast.gateway import dispatch as _dispatch
from plano_fast.gateway.modes.config import ConfigExchange
from plano_fast.gateway.modes.firewall import FirewallExchange
from plano_fast.gateway.modes.managed import ManagedExchange
from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.gateway.routed import RoutedExchange
from plano_fast.gateway.endpoints import Endpoint
from plano_fast.http_server import Request

cdef Py_ssize_t Q_PATH = slot_offset(Request, "path")
cdef Py_ssize_t Q_METHOD = slot_offset(Request, "method")
cdef Py_ssize_t Q_FORWARD = slot_offset(Request, "forward")
cdef Py_ssize_t Q_HEADERS = slot_offset(Request, "headers")
cdef Py_ssize_t Q_QUERY = slot_offset(Request, "query")
cdef Py_ssize_t C_TRACING = slot_offset(ExchangeContext, "tracing")
cdef Py_ssize_t C_PRECHECKS = slot_offset(ExchangeContext, "prechecks")
cdef Py_ssize_t E_ENDPOINT = slot_offset(RoutedExchange, "endpoint")
cdef Py_ssize_t E_PRIOR = slot_offset(RoutedExchange, "prior")
cdef Py_ssize_t E_PLAN_LATER = slot_offset(RoutedExchange, "plan_later")
cdef Py_ssize_t X_ENDPOINT_NAME = slot_offset(Exchange, "endpoint_name")
cdef Py_ssize_t X_WIRE_FORMAT = slot_offset(Exchange, "wire_format")
cdef Py_ssize_t X_SCAN_API = slot_offset(Exchange, "scan_api")
cdef Py_ssize_t X_CLIENT = slot_offset(Exchange, "client")
cdef Py_ssize_t N_NAME = slot_offset(Endpoint, "name")
cdef Py_ssize_t N_WIRE_API = slot_offset(Endpoint, "wire_api")
cdef Py_ssize_t N_SCAN_API = slot_offset(Endpoint, "scan_api")

cdef type _Request = Request
cdef type _Context = ExchangeContext
cdef type _Endpoint = Endpoint
cdef type _Firewall = FirewallExchange
cdef type _Config = ConfigExchange
cdef type _Managed = ManagedExchange
cdef object _twin = _dispatch.dispatch_py
cdef object _new_exchange = _dispatch.new_exchange
cdef dict _ENDPOINTS = _dispatch.ENDPOINTS
cdef tuple _HEALTH = _dispatch._HEALTH
if _HEALTH != (b"/healthz", b"/health"):
    raise ImportError("dispatch._HEALTH changed: _dispatch.pyx compares its two paths")
#: the gateway's attributes read here, and whether a gateway class defines none of them on
#: the class (plain instance attributes: read from the instance's __dict__)
cdef tuple _GW_NAMES = ("store_ready", "managed", "ctx", "firewall")
cdef dict _GW_PLAIN = {}
cdef object _GatewayError = GatewayError
cdef object _AIM = RoutedExchange.aim
if ConfigExchange.aim is not _AIM:
    raise ImportError("ConfigExchange.aim is not RoutedExchange.aim: the twin is used")


cdef object _attr(object obj, str name, bint plain):
    """``obj.name``; when ``plain`` (no class in its MRO defines the name) from the
    instance's __dict__ (the generic lookup walks the MRO first: ~180 instructions)."""
    cdef PyObject **dictptr
    cdef PyObject *value
    if plain:
        dictptr = _PyObject_GetDictPtr(obj)
        if dictptr != NULL and dictptr[0] != NULL:
            value = PyDict_GetItem(<object>dictptr[0], name)
            if value != NULL:
                return <object>value
    return getattr(obj, name)


cdef void _trace(object tracing, object exchange, object headers, object path) except *:
    """The twin's ``trace(gw, exchange)`` (``tracing``: the gateway context's; ``headers``,
    ``path``: the exchange's request's): sampled, the server span."""
    decision = tracing.sample(headers)
    if decision is not False:
        exchange.span = tracing.start_server(decision, headers, path)


cdef bint _plain(type cls):
    """Whether ``cls`` (a gateway's class) defines none of ``_GW_NAMES`` anywhere in its
    MRO nor its own ``__getattribute__`` (then an instance's value of each can only be its
    __dict__'s); memoized."""
    known = _GW_PLAIN.get(cls)
    if known is None:
        known = _GW_PLAIN[cls] = (cls.__getattribute__ is object.__getattribute__ and not any(
            name in vars(base) for base in cls.__mro__ for name in _GW_NAMES))
    return known is True


def dispatch(gw, request, responder):
    """``dispatch.dispatch`` (installed as it; ``dispatch.dispatch_py`` is the twin)."""
    if type(request) is not _Request or _get(request, Q_FORWARD, "forward") is None:
        return _twin(gw, request, responder)
    cdef bint plain = _plain(type(gw))
    if not _attr(gw, "store_ready", plain):
        return _twin(gw, request, responder)
    ctx = _attr(gw, "ctx", plain)
    if type(ctx) is not _Context:
        return _twin(gw, request, responder)
    tracing = _get(ctx, C_TRACING, "tracing")
    # (where tracing could sample -- a random draw, a client's traceparent -- the twin's
    # ``trace`` draws and opens the span once the exchange is built, as the twin does; else
    # nothing of tracing runs: issue 27's tracing rows, the twin's frame here before)
    cdef bint sampling = tracing is not None and tracing.may_sample(_get(request, Q_HEADERS, "headers"))
    path = _get(request, Q_PATH, "path")
    managed = _attr(gw, "managed", plain)
    if managed is not None:  # (the twin's managed branch: every exact endpoint is not ALWAYS_SERVED)
        endpoint = _ENDPOINTS.get(path)
        if type(endpoint) is not _Endpoint or _get(request, Q_METHOD, "method") != b"POST":
            return _twin(gw, request, responder)
        # (raises the twin's Unauthorized for two credentials or a malformed one, as its read does)
        client = read_client_headers_c(_get(request, Q_HEADERS, "headers"), _get(request, Q_QUERY, "query"),
                                       _get(request, Q_FORWARD, "forward"))
        exchange = _new_exchange(_Managed, ctx, request, responder)
        exchange.aim(managed, endpoint)
        if type(exchange) is _Managed:
            put_slot(exchange, X_CLIENT, client)
        else:
            exchange.client = client
        if sampling:
            _trace(tracing, exchange, _get(request, Q_HEADERS, "headers"), path)
        return exchange.start()  # (refusals logged by the exchange itself, as in the twin)
    if _attr(gw, "firewall", plain):
        if type(path) is not bytes or path == b"/healthz" or path == b"/health":  # (_HEALTH)
            return _twin(gw, request, responder)
        forwarded = _new_exchange(_Firewall, ctx, request, responder)
    else:
        endpoint = _ENDPOINTS.get(path)
        if (type(endpoint) is not _Endpoint or _get(request, Q_METHOD, "method") != b"POST"
                or _get(ctx, C_PRECHECKS, "prechecks")):
            return _twin(gw, request, responder)
        forwarded = _new_exchange(_Config, ctx, request, responder)
        if type(forwarded) is not _Config:
            forwarded.aim(endpoint)
        else:  # (RoutedExchange.aim, its slots written in place)
            put_slot(forwarded, E_ENDPOINT, endpoint)
            put_slot(forwarded, X_ENDPOINT_NAME, _get(endpoint, N_NAME, "name"))
            put_slot(forwarded, X_WIRE_FORMAT, _get(endpoint, N_WIRE_API, "wire_api"))
            put_slot(forwarded, X_SCAN_API, _get(endpoint, N_SCAN_API, "scan_api"))
            put_slot(forwarded, E_PRIOR, None)
            put_slot(forwarded, E_PLAN_LATER, None)
    if type(forwarded) is _Firewall or type(forwarded) is _Config:
        put_slot(forwarded, X_CLIENT, None)  # (the twin's: read on first use)
    else:
        forwarded.client = None
    if sampling:
        _trace(tracing, forwarded, _get(request, Q_HEADERS, "headers"), path)
    try:
        return forwarded.start()
    except _GatewayError as exc:  # refused (auth, budget, guardrails, rate limit): logged
        forwarded.refused(exc)
        raise


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
