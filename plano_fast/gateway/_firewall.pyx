# cython: language_level=3
"""``FirewallExchange.start`` compiled for a plain request: the twin of
``plano_fast.gateway.modes.firewall.start_py`` (installed as ``FirewallExchange.start`` by
that module).

The twin is ~10 Python frames per request -- ``start`` -> ``metered_endpoint``,
``phases.client_headers``, ``identify`` -> ``key_hash``, ``ApiKeyRegistry.lookup``, then
``finish_head`` and ``forward_now`` (``take_idle``, ``_send``, ``send_request``) -- and ~60
attribute reads and writes.  Here the same steps run in that order, with the same side
effects, in one C function: the slots of the exchange, the request, the client's headers
and the pooled connection are read and written in place (``plano_fast/_slots.pxd``), the
client's headers and the key-hash memo read by C functions (``_new_credentials.pxd``: the
rules written once, there), the upstream head (``upstream_request.finish_head``) built
inline, and the request sent by the compiled ``forward_now`` (``_forward.pyx``).

Only the plain case is taken; everything else goes to the twin, before any side effect:
an exchange, request or context of another class, guardrails configured (their phase
runs in the twin), the key registry or budgets not loaded yet (the twin's
503), a path that is not one of the exact metered paths or that names a free endpoint
(model listings, token counting), the Responses endpoint (its ``background`` refusal),
Gemini's.  Refusals on the way (two credentials, no key, an unknown or blocked key, a body
that is not JSON, an Azure subscription key beside the key) are raised as the twin raises them -- by the twin's own functions
(``read_client_headers``, ``identify``) or with its message -- after the same side effects.
Rate limits are the twin's last phase, run by its functions (``phases.rate_limit``, and
``admitted_forward`` when a Redis check must be waited for).
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
from plano_fast.gateway import phases as _phases  # (installs the key-hash memo key_hash_c reads)
from plano_fast.gateway.modes import firewall as _firewall
from plano_fast.gateway.modes.firewall import FirewallExchange
from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.http_server import Request
from plano_fast.key_registry import ApiKeyRegistry, KeyRoute
from plano_fast.store import RegisteredApiKey

include "_start_slots.pxi"

cdef Py_ssize_t X_ENDPOINT_NAME = slot_offset(Exchange, "endpoint_name")
cdef Py_ssize_t X_KEY_HASH = slot_offset(Exchange, "key_hash")
cdef Py_ssize_t X_PROJECT_ID = slot_offset(Exchange, "project_id")
cdef Py_ssize_t F_UNBILLED = slot_offset(FirewallExchange, "unbilled")

cdef Py_ssize_t C_REGISTRY = slot_offset(ExchangeContext, "registry")
cdef Py_ssize_t C_BUDGET = slot_offset(ExchangeContext, "budget")

cdef Py_ssize_t Q_PATH = slot_offset(Request, "path")
cdef Py_ssize_t Q_QUERY = slot_offset(Request, "query")
cdef Py_ssize_t Q_HEADERS = slot_offset(Request, "headers")
cdef Py_ssize_t Q_FORWARD = slot_offset(Request, "forward")

cdef Py_ssize_t H_BLOCK = slot_offset(ClientHeaders, "block")
cdef Py_ssize_t H_QUERY = slot_offset(ClientHeaders, "query")
cdef Py_ssize_t K_LINE = slot_offset(Credential, "line")

cdef Py_ssize_t M_NAME = slot_offset(_firewall.MeteredEndpoint, "name")
cdef Py_ssize_t M_SCAN_API = slot_offset(_firewall.MeteredEndpoint, "scan_api")
cdef Py_ssize_t M_WIRE_FORMAT = slot_offset(_firewall.MeteredEndpoint, "wire_format")
cdef Py_ssize_t M_INCLUDE_USAGE = slot_offset(_firewall.MeteredEndpoint, "include_usage")
cdef Py_ssize_t T_KEY = slot_offset(KeyRoute, "key")
cdef Py_ssize_t T_ORIGIN = slot_offset(KeyRoute, "origin")
cdef Py_ssize_t T_BASE_PATH = slot_offset(KeyRoute, "base_path")
cdef Py_ssize_t T_HOST_LINE = slot_offset(KeyRoute, "host_line")
cdef Py_ssize_t A_PROJECT_ID = slot_offset(RegisteredApiKey, "project_id")
cdef Py_ssize_t A_PROVIDER = slot_offset(RegisteredApiKey, "provider")

cdef type _Endpoint = _firewall.MeteredEndpoint
cdef type _KeyRoute = KeyRoute
cdef type _ApiKey = RegisteredApiKey
cdef type _Firewall = FirewallExchange
cdef type _Registry = ApiKeyRegistry
cdef object _twin = _firewall.start_py
cdef dict _EXACT = _firewall._EXACT
cdef object _RESPONSES = _firewall._RESPONSES
cdef object _identify = _firewall.identify
cdef object _rate_limit = _phases.rate_limit
cdef object _admitted_forward = _phases.admitted_forward
cdef object _API_GEMINI = _wire.API_GEMINI
cdef object _rewrite_request = _wire.rewrite_request
cdef object _refuse_subscription_key = refuse_subscription_key
if _firewall.start_py is not FirewallExchange.start:
    raise ImportError("FirewallExchange.start is not the twin: the pure one is used")




def start(exchange):
    """``FirewallExchange.start`` (installed as it; ``firewall.start_py`` is the twin)."""
    if type(exchange) is not _Firewall:
        return _twin(exchange)
    ctx = _get(exchange, X_CTX, "ctx")
    request = _get(exchange, X_REQUEST, "request")
    if type(ctx) is not _Context or type(request) is not _Request:
        return _twin(exchange)
    if _get(ctx, C_GUARDRAILS, "guardrails") is not None:
        return _twin(exchange)
    registry = _get(ctx, C_REGISTRY, "registry")
    budget = _get(ctx, C_BUDGET, "budget")
    if registry is None or budget is None or not registry.ready or not budget.ready:
        return _twin(exchange)
    method = _get(request, Q_METHOD, "method")
    path = _get(request, Q_PATH, "path")
    endpoint = _EXACT.get((method, path))
    if type(endpoint) is not _Endpoint or endpoint is _RESPONSES:
        return _twin(exchange)
    scan_api = _get(endpoint, M_SCAN_API, "scan_api")
    if scan_api is None or scan_api == _API_GEMINI:
        return _twin(exchange)
    # -- the twin's steps from here, in its order
    put_slot(exchange, F_UNBILLED, False)
    put_slot(exchange, X_ENDPOINT_NAME, _get(endpoint, M_NAME, "name"))
    client = _get(exchange, X_CLIENT, "client")
    if client is None:  # (phases.client_headers)
        client = read_client_headers_c(
            _get(request, Q_HEADERS, "headers"), _get(request, Q_QUERY, "query"), _get(request, Q_FORWARD, "forward")
        )
        put_slot(exchange, X_CLIENT, client)
    if type(client) is not _ClientHeaders:
        route, digest = _identify(registry, budget, client)
        credential = client.credential
    else:
        # -- identify (its refusals: by the twin's function itself)
        credential = _get(client, H_CREDENTIAL, "credential")
        if type(credential) is not _Credential:
            route, digest = _identify(registry, budget, client)  # (no key: its 401)
        else:
            digest = key_hash_c(_get(credential, K_SECRET, "secret"))
            if type(registry) is _Registry:
                route = (<dict?>registry._routes).get(digest)
            else:
                route = registry.lookup(digest)
            if route is None or budget.blocked:
                route, digest = _identify(registry, budget, client)  # (its 401, its 429 check)
    put_slot(exchange, X_KEY_HASH, digest)
    # (the registry's records read at their slots; another class's, as attributes)
    cdef bint exact = type(route) is _KeyRoute
    key = _get(route, T_KEY, "key") if exact else route.key
    if type(key) is _ApiKey:
        put_slot(exchange, X_PROJECT_ID, _get(key, A_PROJECT_ID, "project_id"))
        put_slot(exchange, X_PROVIDER_ID, _get(key, A_PROVIDER, "provider"))
    else:
        put_slot(exchange, X_PROJECT_ID, key.project_id)
        put_slot(exchange, X_PROVIDER_ID, key.provider)
    put_slot(exchange, X_WIRE_FORMAT, _get(endpoint, M_WIRE_FORMAT, "wire_format"))
    body = _get(request, Q_BODY, "body")
    put_slot(exchange, X_SCAN_API, scan_api)
    try:
        fields = scan_request_c(body)
    except _ScanError as exc:
        raise BadRequestBody(f"request body is not valid JSON: {exc}") from None
    streaming = fields.stream
    put_slot(exchange, X_MODEL, fields.model)
    put_slot(exchange, X_STREAMING, streaming)
    inject = streaming and _get(endpoint, M_INCLUDE_USAGE, "include_usage") and fields.include_usage is not True
    if inject:
        body = _rewrite_request(body, inject_include_usage=True)
    put_slot(exchange, X_SCANNER, usage_scanner_c(scan_api, streaming, inject))
    base = _get(route, T_BASE_PATH, "base_path") if exact else route.base_path
    if base and not path.startswith(base + b"/"):
        path = base + path
    if type(client) is _ClientHeaders:
        query = _get(client, H_QUERY, "query")
        block = _get(client, H_BLOCK, "block")
        operator_block = _get(client, H_OPERATOR_BLOCK, "operator_block")
        client_request_id = _get(client, H_REQUEST_ID, "request_id")
    else:
        query, block, client_request_id = client.query, client.block, client.request_id
        operator_block = client.operator_block
    if operator_block is not block:
        # (a provider-account header was sent: an Azure subscription key beside the
        # verified one is a 401)
        _refuse_subscription_key(client)
    line = _get(credential, K_LINE, "line") if type(credential) is _Credential else credential.line
    # -- upstream_request.finish_head, the pieces joined once
    request_id_line = request_id_line_c(client_request_id, _get(exchange, X_REQUEST_ID, "request_id"))
    host_line = _get(route, T_HOST_LINE, "host_line") if exact else route.host_line
    if query:
        head = (method, b" ", path, b"?", query, b" HTTP/1.1\r\n", block, line,
                request_id_line, host_line, content_length_line_c(len(body), True))
    else:
        head = (method, b" ", path, b" HTTP/1.1\r\n", block, line,
                request_id_line, host_line, content_length_line_c(len(body), True))
    put_slot(exchange, X_UPSTREAM_DATA, [b"".join(head), body])
    put_slot(exchange, X_ORIGIN, _get(route, T_ORIGIN, "origin") if exact else route.origin)
    # -- rate limits: the twin's phase, by its functions (a Redis check that must wait
    # forwards from its reply)
    if _get(ctx, C_RATELIMITS, "ratelimits") is not None and _rate_limit(exchange, (fields.model,)):
        return _admitted_forward(exchange)
    return forward_now_c(exchange)


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
