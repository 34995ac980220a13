# cython: language_level=3
"""``ConfigExchange.start`` compiled for a plain request: the twin of
``plano_fast.gateway.modes.config.start_py`` (installed as ``ConfigExchange.start`` by
that module).

The twin is ~9 Python frames per request -- ``start`` -> ``identify_caller`` ->
``key_hash``, ``_admit_and_forward`` -> ``_prepare`` -> ``provider_request`` ->
``finish_head``, then ``forward_now`` -- and ~70 attribute reads and writes.  Here the
same steps run in that order, with the same side effects, in one C function: the slots
of the exchange, the request and the client's headers are read and written in place
(``plano_fast/_slots.pxd``), the client's headers and the key-hash memo read by C
functions (``_new_credentials.pxd``: the rules written once, there), the upstream head
built inline, and the request sent by the compiled ``forward_now`` (``_forward.pyx``).

Only the plain case is taken; everything else goes to the twin, before any side effect
(the body's scan, which has none, is then done again by the twin): an exchange, request
or context of another class; rate limits, response checks configured (their phases run
in the twin); the Responses and count_tokens endpoints; a model that is not a
configured name (``Router.resolve``: wildcards, the default, an unknown model's refusal);
a route with fallbacks (an alias's target list), a converted or unserved target.  With
preference routing, the request of a live session is taken when its pinned decision's
first model is such a plain route (the twin's ``_route`` step: ``pinned_decision``, once);
a request the router must decide, or a decision naming another route, goes on from that
step in the twin's methods (``_route_by_preference``, ``_routed``).  A retry policy (the
provider's or the listener's) is taken: its plan is made by the twin's ``_plan_first``
(one call; a first target other than the route, its circuit open, is prepared by the
twin's ``_prepare``), the relay's failover callbacks are the exchange's as in the twin.
The DLP floor (``guardrails``) is taken: the twin's ``phases.guard`` is called where the
twin calls it (before the retry plan; its refusal raised from here, a redaction's body
read after it) -- it sent every request to the twin before, ~20k instructions more a
request (issue 27's DLP row).  Refusals on the way (a
body that is not JSON, two credentials, a key over its limit, a gateway token, an Azure
subscription key beside a passed-through key) are raised
as the twin raises them -- by the twin's own functions (``read_client_headers``,
``identify_caller``, ``_passed_through``) or with its message -- after the same side effects.
"""

from cpython.object cimport PyObject

from plano_fast._new_credentials cimport key_hash_c, read_client_headers_c
from plano_fast._slots cimport get_slot, put_slot, slot_offset, slot_or_attr as _get
from plano_fast.gateway._forward cimport forward_now_c, request_id_line_c
from plano_fast.wire._head cimport content_length_line_c
from plano_fast.wire._scan cimport scan_request_c, usage_scanner_c

from plano_fast import wire as _wire
from plano_fast.credentials import ClientHeaders, Credential, refuse_subscription_key
from plano_fast.errors import BadRequestBody
from plano_fast.gateway import phases as _phases
from plano_fast.gateway import routed as _routed
from plano_fast.gateway import upstream_request as _upstream_request
from plano_fast.gateway.endpoints import CHAT_COMPLETIONS, COUNT_TOKENS, GUARD_FORMATS, RESPONSES
from plano_fast.gateway.modes import config as _config
from plano_fast.gateway.modes.config import ConfigExchange
from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.gateway.routed import RoutedExchange
from plano_fast.http_server import Request
from plano_fast.config import ModelProvider
from plano_fast.gateway.endpoints import Endpoint
from plano_fast.routing import Route, Router

include "_start_slots.pxi"

cdef Py_ssize_t X_KEY_HASH = slot_offset(Exchange, "key_hash")
cdef Py_ssize_t X_REQUESTED_MODEL = slot_offset(Exchange, "requested_model")
cdef Py_ssize_t X_TIMEOUTS = slot_offset(Exchange, "timeouts")
cdef Py_ssize_t X_BODY_FILTER = slot_offset(Exchange, "body_filter")
cdef Py_ssize_t X_OPERATOR_AUTH = slot_offset(Exchange, "operator_auth")
cdef Py_ssize_t X_PLAN = slot_offset(Exchange, "plan")
cdef Py_ssize_t E_ENDPOINT = slot_offset(RoutedExchange, "endpoint")
cdef Py_ssize_t E_PROVIDER = slot_offset(RoutedExchange, "provider")
cdef Py_ssize_t E_FIELDS = slot_offset(RoutedExchange, "fields")

cdef Py_ssize_t C_BUDGET = slot_offset(ExchangeContext, "budget")
cdef Py_ssize_t C_ROUTER = slot_offset(ExchangeContext, "router")
cdef Py_ssize_t C_PREFERENCE = slot_offset(ExchangeContext, "preference")
cdef Py_ssize_t C_RESPONSE_CHECKS = slot_offset(ExchangeContext, "response_checks")
cdef Py_ssize_t C_DEFAULT_RETRY = slot_offset(ExchangeContext, "default_retry_policy")

cdef Py_ssize_t Q_QUERY = slot_offset(Request, "query")
cdef Py_ssize_t Q_HEADERS = slot_offset(Request, "headers")
cdef Py_ssize_t Q_FORWARD = slot_offset(Request, "forward")

cdef Py_ssize_t H_BLOCK = slot_offset(ClientHeaders, "block")
cdef Py_ssize_t H_SEEN_VERSION = slot_offset(ClientHeaders, "seen_version")
cdef Py_ssize_t H_QUERY = slot_offset(ClientHeaders, "query")
cdef Py_ssize_t K_LINE = slot_offset(Credential, "line")

cdef Py_ssize_t O_ROUTES = slot_offset(Router, "routes")
cdef Py_ssize_t T_PROVIDER = slot_offset(Route, "provider")
cdef Py_ssize_t T_UPSTREAM_MODEL = slot_offset(Route, "upstream_model")
cdef Py_ssize_t T_REWRITE = slot_offset(Route, "rewrite")
cdef Py_ssize_t T_FALLBACKS = slot_offset(Route, "fallbacks")
cdef Py_ssize_t T_PER_ENDPOINT = slot_offset(Route, "per_endpoint")
cdef Py_ssize_t V_PROVIDER = slot_offset(ModelProvider, "provider")
cdef Py_ssize_t V_TIMEOUTS = slot_offset(ModelProvider, "timeouts")
cdef Py_ssize_t V_RETRY_POLICY = slot_offset(ModelProvider, "retry_policy")
cdef Py_ssize_t V_EXTRA_LINES = slot_offset(ModelProvider, "extra_lines")
cdef Py_ssize_t V_HOST_LINE = slot_offset(ModelProvider, "host_line")
cdef Py_ssize_t V_ORIGIN = slot_offset(ModelProvider, "origin")
cdef Py_ssize_t N_WIRE_API = slot_offset(Endpoint, "wire_api")
cdef Py_ssize_t N_SCAN_API = slot_offset(Endpoint, "scan_api")
cdef Py_ssize_t N_NAME = slot_offset(Endpoint, "name")

cdef type _Provider = ModelProvider
cdef type _Endpoint = Endpoint
cdef type _Config = ConfigExchange
cdef type _Router = Router
cdef type _Route = Route
cdef object _twin = _config.start_py
cdef object _CHAT_COMPLETIONS = CHAT_COMPLETIONS
cdef object _COUNT_TOKENS = COUNT_TOKENS
cdef object _RESPONSES = RESPONSES
cdef object _rewrite_request = _wire.rewrite_request
cdef object _refuse_subscription_key = refuse_subscription_key
cdef object _identify_caller = _phases.identify_caller
cdef dict _GUARD_FORMATS = GUARD_FORMATS
cdef object _target_of = _routed.target_of
cdef object _passed_through = _upstream_request._passed_through
if _config.start_py is not ConfigExchange.start:
    raise ImportError("ConfigExchange.start is not the twin: the pure one is used")




def start(exchange):
    """``ConfigExchange.start`` (installed as it; ``config.start_py`` is the twin)."""
    if type(exchange) is not _Config:
        return _twin(exchange)
    ctx = _get(exchange, X_CTX, "ctx")
    request = _get(exchange, X_REQUEST, "request")
    endpoint = _get(exchange, E_ENDPOINT, "endpoint")
    if (type(ctx) is not _Context or type(request) is not _Request or type(endpoint) is not _Endpoint
            or endpoint is _RESPONSES or endpoint is _COUNT_TOKENS
            or _get(ctx, C_RATELIMITS, "ratelimits") is not None
            or _get(ctx, C_RESPONSE_CHECKS, "response_checks") is not None
            or _get(exchange, X_PLAN, "plan") is not None):
        return _twin(exchange)
    router = _get(ctx, C_ROUTER, "router")
    if type(router) is not _Router:
        return _twin(exchange)
    body = _get(request, Q_BODY, "body")
    try:
        fields = scan_request_c(body)
    except _ScanError as exc:
        raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
    model = fields.model
    routes = <dict?>_get(router, O_ROUTES, "routes")
    route = routes.get(model or "")  # (a configured name: resolve's lookup)
    if type(route) is not _Route:
        return _twin(exchange)
    preference = _get(ctx, C_PREFERENCE, "preference")
    target = None
    if preference is None:
        target = _plain_target(route, endpoint)
        if target is None:
            return _twin(exchange)
    # -- the twin's steps from here, in its order: identify_caller
    client = _get(exchange, X_CLIENT, "client")
    if client is None:
        client = read_client_headers_c(
            _get(request, Q_HEADERS, "headers"), _get(request, Q_QUERY, "query"), _get(request, Q_FORWARD, "forward")
        )
        put_slot(exchange, X_CLIENT, client)
    if type(client) is not _ClientHeaders:
        digest = _identify_caller(exchange)
    else:
        credential = _get(client, H_CREDENTIAL, "credential")
        if credential is None:
            digest = None
        elif type(credential) is _Credential:
            digest = key_hash_c(_get(credential, K_SECRET, "secret"))
            budget = _get(ctx, C_BUDGET, "budget")
            if budget is not None and budget.blocked:
                digest = _identify_caller(exchange)  # (its 429 check)
        else:
            digest = _identify_caller(exchange)
    put_slot(exchange, X_KEY_HASH, digest)
    put_slot(exchange, E_FIELDS, fields)
    put_slot(exchange, X_REQUESTED_MODEL, model)
    # -- _route: a session's pinned decision (a router call, or a decision naming a route
    # this pass does not take, goes on in the twin's methods from this step)
    decision = None
    fallbacks = ()
    if preference is not None:
        decision = preference.pinned_decision(request)
        if decision is None:
            return exchange._route_by_preference(preference)
        models = decision.models
        route = routes.get(models[0] if models else model)
        if type(route) is _Route:
            target = _plain_target(route, endpoint)
        if target is None:
            return exchange._routed(decision)
        fallbacks = models[1:]
    provider = _get(route, T_PROVIDER, "provider")
    converted, path, auth_lines = target
    # -- _admit_and_forward: the DLP floor (the twin's module's ``guard``: it may raise the
    # refusal, or redact -- the request's body replaced: read again)
    if _get(ctx, C_GUARDRAILS, "guardrails") is not None:
        _config.guard(exchange, _GUARD_FORMATS[_get(endpoint, N_NAME, "name")], _get(provider, V_PROVIDER, "provider"),
                      scanned=True)
        body = _get(request, Q_BODY, "body")
    # -- _admit_and_forward: the retry plan (routed.plans_retries, for a route without
    # fallbacks), by the twin's method; a first target other than the route (its circuit
    # open) is prepared by the twin's _prepare
    if _get(provider, V_RETRY_POLICY, "retry_policy") is not None or _get(ctx, C_DEFAULT_RETRY, "default_retry_policy") is not None:
        first = exchange._plan_first(route, fallbacks)
        if first is not route:
            exchange._prepare(first)
            return _sent(exchange, decision)
    # -- _prepare (no guardrails, limits: checked above)
    upstream_model = _get(route, T_UPSTREAM_MODEL, "upstream_model")
    served = upstream_model or model
    put_slot(exchange, E_PROVIDER, provider)
    put_slot(exchange, X_PROVIDER_ID, _get(provider, V_PROVIDER, "provider"))
    put_slot(exchange, X_TIMEOUTS, _get(provider, V_TIMEOUTS, "timeouts"))
    put_slot(exchange, X_MODEL, served)
    stream = fields.stream
    put_slot(exchange, X_STREAMING, stream)
    put_slot(exchange, X_WIRE_FORMAT, _get(endpoint, N_WIRE_API, "wire_api"))
    scan_api = _get(endpoint, N_SCAN_API, "scan_api")
    put_slot(exchange, X_SCAN_API, scan_api)
    put_slot(exchange, X_BODY_FILTER, None)
    inject = stream and endpoint is _CHAT_COMPLETIONS and fields.include_usage is not True
    new_model = upstream_model if _get(route, T_REWRITE, "rewrite") or served != model else None
    if new_model is not None or inject:
        body = _rewrite_request(body, model=new_model, inject_include_usage=inject)
    put_slot(exchange, X_SCANNER, usage_scanner_c(scan_api, stream, inject))
    client = _get(exchange, X_CLIENT, "client")
    if type(client) is _ClientHeaders:
        query = _get(client, H_QUERY, "query")
    else:
        query = client.query
    put_slot(exchange, X_OPERATOR_AUTH, None if auth_lines is None else auth_lines[0])
    # -- upstream_request.provider_request, the pieces joined once
    method = _get(request, Q_METHOD, "method")
    if type(client) is not _ClientHeaders:
        return _twin_tail(exchange, client, method, path, query, provider, auth_lines, body, decision)
    if auth_lines is None:  # (_passed_through)
        block = _get(client, H_BLOCK, "block")
        if _get(client, H_OPERATOR_BLOCK, "operator_block") is not block:
            _refuse_subscription_key(client)  # (a provider-account header was sent)
        credential = _get(client, H_CREDENTIAL, "credential")
        if credential is None:
            credential_line = b""
        elif type(credential) is _Credential and not (<bytes?>_get(credential, K_SECRET, "secret")).startswith(b"xproxy_"):
            credential_line = _get(credential, K_LINE, "line")
        else:
            parts = []
            _passed_through(parts, client)  # (a gateway token: its 401)
            credential_line = parts[0]
        lines = (block, credential_line, _get(provider, V_EXTRA_LINES, "extra_lines"))
    else:
        lines = (_get(client, H_OPERATOR_BLOCK, "operator_block"),
                 auth_lines[1] if _get(client, H_SEEN_VERSION, "seen_version") else auth_lines[0])
    request_id_line = request_id_line_c(_get(client, H_REQUEST_ID, "request_id"),
                                        _get(exchange, X_REQUEST_ID, "request_id"))
    host_line = _get(provider, V_HOST_LINE, "host_line")
    if query:
        head = (method, b" ", path, b"?", query, b" HTTP/1.1\r\n", *lines, request_id_line, host_line,
                content_length_line_c(len(body), True))
    else:
        head = (method, b" ", path, b" HTTP/1.1\r\n", *lines, request_id_line, host_line,
                content_length_line_c(len(body), True))
    put_slot(exchange, X_UPSTREAM_DATA, [b"".join(head), body])
    put_slot(exchange, X_ORIGIN, _get(provider, V_ORIGIN, "origin"))
    return _sent(exchange, decision)


cdef object _twin_tail(exchange, client, method, path, query, provider, auth_lines, body, decision):
    """The rest, by the twin's functions (a client's headers of another class)."""
    exchange.upstream_data = _upstream_request.provider_request(
        client, exchange.request_id,
        [method, b" ", path, b"?", query] if query else [method, b" ", path], provider, auth_lines, body,
    )
    exchange.origin = provider.origin
    return _sent(exchange, decision)


cdef object _plain_target(route, endpoint):
    """``route``'s (converted, path, auth lines) for ``endpoint`` when this pass takes it:
    no fallbacks (an alias's target list), a provider of the config's class, neither
    converted nor unserved; else None."""
    if _get(route, T_FALLBACKS, "fallbacks"):
        return None
    if type(_get(route, T_PROVIDER, "provider")) is not _Provider:
        return None
    target = (<dict?>_get(route, T_PER_ENDPOINT, "per_endpoint")).get(endpoint)
    if target is None:
        target = _target_of(route, endpoint)  # (kept on the route: no per-request effect)
    if target[0] or target[1] is None:
        return None
    return target


cdef object _sent(exchange, decision):
    """``forward_now``, then what ``_routed`` notes of a pinned decision after it."""
    pending = forward_now_c(exchange)
    if decision is not None:
        exchange._note_decision(decision)
    return pending


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
