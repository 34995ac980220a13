# cython: language_level=3
"""``ManagedExchange.start`` compiled for a plain request: the twin of
``plano_fast.gateway.modes.managed.start_py`` (installed as ``ManagedExchange.start`` by
that module).

The twin is ~12 Python frames per request -- ``start`` -> ``_identify`` -> ``key_hash``,
``ManagedState.lookup``, ``pipe_for``, ``_route``, ``HoldTerminal()``, then
``_with_ceiling`` -> ``_with_max_tokens``, ``_first_attempt`` -> ``_target_circuit``,
``_prepare_target`` -> ``upstream_path``, ``upstream_request`` -> ``finish_head``, then
``forward_now`` -- and ~90 attribute reads and writes.  Here the same steps run in that
order, with the same side effects, in one C function: the slots of the exchange, the
request, the client's headers, the token, the pipe's target and its provider are read and
written in place (``plano_fast/_slots.pxd``), the output ceiling inserted and the upstream
head joined inline (the target's credential lines joined once, ``Target.chat_lines`` /
``messages_lines``), and the request sent by the compiled ``forward_now`` (``_forward.pyx``).

Only the plain case is taken; everything else goes to the twin, before any side effect
(the token's digest and the pipe's route, both memos, may then be found again by the
twin): an exchange, request, context or state of another class; the state not loaded
yet (its 503); guardrails or rate limits configured; the Responses and count_tokens
endpoints; a request of a project or user with a hard limit (the reservation is awaited:
``_run_awaited``); a first target whose circuit is open; a Azure-style
provider with the model in its path.  And every refusal: no credential or one that is not
an ``xproxy_`` token, a token unknown, revoked or expired, no pipe, a body that is not
JSON, a model the pipe does not serve -- the twin raises each one with its access-log
line (``refused``), so nothing is forwarded that the twin would not forward, and nothing
is refused differently.

Beside it, the request's other managed-mode frames: ``aim`` (the exchange's own slots, set
by dispatch before ``start``; twin ``managed.aim_py``), and at the answer's end
``_complete`` for an answer with no reservation to settle (event, row, the writer's
hand-off; twin ``complete_py``) and ``_billed`` (the held end released once the row is
written; twin ``billed_py``).  The writer and the store's commit are called as they are.

The first request to a target is compiled too: its circuit breaker is made here
(``ExchangeContext.circuit_for``, as the twin's ``_target_circuit``), after every step
that can still send the request to the twin.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.stdint cimport int64_t
from libc.string cimport memchr

cdef extern from "string.h" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

from plano_fast._clock cimport now_ns as _now_ns
from plano_fast._slots cimport get_slot, new_instance, put_slot, slot_offset, slot_or_attr as _get
from plano_fast.gateway._forward cimport forward_now_c, request_id_line_c

import collections

from plano_fast import wire as _wire
from plano_fast.billing import rows as _rows
from plano_fast.config import ModelProvider
from plano_fast.credentials import ClientHeaders, Credential
from plano_fast.failover import CircuitBreaker
from plano_fast.gateway import endpoints as _endpoints
from plano_fast.gateway import phases as _phases
from plano_fast.gateway.endpoints import CHAT_COMPLETIONS, COUNT_TOKENS, MESSAGES, RESPONSES, Endpoint
from plano_fast.gateway.modes import managed as _managed
from plano_fast.gateway.modes.managed import HoldTerminal, ManagedExchange
from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.http_server import Request
from plano_fast.managed.context import ManagedContext
from plano_fast.managed.state import ManagedState, ResolvedPipe, Target
from plano_fast.store import ProxyToken

cdef extern from "string.h" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

include "_start_slots.pxi"

cdef Py_ssize_t X_PROJECT_ID = slot_offset(Exchange, "project_id")
cdef Py_ssize_t X_REQUESTED_MODEL = slot_offset(Exchange, "requested_model")
cdef Py_ssize_t X_BODY_FILTER = slot_offset(Exchange, "body_filter")
cdef Py_ssize_t X_OPERATOR_AUTH = slot_offset(Exchange, "operator_auth")
cdef Py_ssize_t X_CIRCUIT = slot_offset(Exchange, "circuit")
cdef Py_ssize_t M_MCTX = slot_offset(ManagedExchange, "mctx")
cdef Py_ssize_t M_ENDPOINT = slot_offset(ManagedExchange, "endpoint")
cdef Py_ssize_t M_TARGETS = slot_offset(ManagedExchange, "targets")
cdef Py_ssize_t M_FIELDS = slot_offset(ManagedExchange, "fields")
cdef Py_ssize_t M_BASE_BODY = slot_offset(ManagedExchange, "base_body")
cdef Py_ssize_t M_FINISH_IN_CALLBACK = slot_offset(ManagedExchange, "finish_in_callback")
cdef Py_ssize_t M_TOKEN_DIGEST = slot_offset(ManagedExchange, "token_digest")
cdef Py_ssize_t M_USER_ID = slot_offset(ManagedExchange, "user_id")
cdef Py_ssize_t M_TOKEN_ID = slot_offset(ManagedExchange, "token_id")
cdef Py_ssize_t M_RESERVATION = slot_offset(ManagedExchange, "reservation")
cdef Py_ssize_t M_BILLING = slot_offset(ManagedExchange, "billing")
cdef Py_ssize_t M_STATE_TURN = slot_offset(ManagedExchange, "state_turn")
cdef Py_ssize_t X_ENDPOINT_NAME = slot_offset(Exchange, "endpoint_name")
cdef Py_ssize_t X_OUTCOME = slot_offset(Exchange, "outcome")
cdef Py_ssize_t X_STATUS = slot_offset(Exchange, "status")
cdef Py_ssize_t X_CLIENT_LEFT = slot_offset(Exchange, "client_left")
cdef Py_ssize_t X_RESPONDER = slot_offset(Exchange, "responder")

cdef Py_ssize_t C_CIRCUITS = slot_offset(ExchangeContext, "circuits")
cdef Py_ssize_t G_STATE = slot_offset(ManagedContext, "state")
cdef Py_ssize_t G_MAX_OUTPUT_TOKENS = slot_offset(ManagedContext, "max_output_tokens")
cdef Py_ssize_t G_PRICING = slot_offset(ManagedContext, "pricing")
cdef Py_ssize_t G_WRITER = slot_offset(ManagedContext, "writer")
cdef Py_ssize_t C_POOL = slot_offset(ExchangeContext, "pool")


cdef Py_ssize_t H_SEEN_VERSION = slot_offset(ClientHeaders, "seen_version")

cdef Py_ssize_t P_ID = slot_offset(ProxyToken, "id")
cdef Py_ssize_t P_USER_ID = slot_offset(ProxyToken, "user_id")
cdef Py_ssize_t P_PROJECT_ID = slot_offset(ProxyToken, "project_id")
cdef Py_ssize_t P_PIPE_ID = slot_offset(ProxyToken, "pipe_id")
cdef Py_ssize_t P_EXPIRES_AT_NS = slot_offset(ProxyToken, "expires_at_ns")
cdef Py_ssize_t P_REVOKED = slot_offset(ProxyToken, "revoked")
cdef Py_ssize_t R_ROUTES = slot_offset(ResolvedPipe, "routes")
cdef Py_ssize_t T_PROVIDER = slot_offset(Target, "provider")
cdef Py_ssize_t T_MODEL = slot_offset(Target, "model")
cdef Py_ssize_t T_CHAT_AUTH = slot_offset(Target, "chat_auth")
cdef Py_ssize_t T_MESSAGES_AUTH = slot_offset(Target, "messages_auth")
cdef Py_ssize_t T_CHAT_LINES = slot_offset(Target, "chat_lines")
cdef Py_ssize_t T_MESSAGES_LINES = slot_offset(Target, "messages_lines")
cdef Py_ssize_t T_KEY_ID = slot_offset(Target, "key_id")
cdef Py_ssize_t V_NAME = slot_offset(ModelProvider, "name")
cdef Py_ssize_t V_PROVIDER = slot_offset(ModelProvider, "provider")
cdef Py_ssize_t V_MODEL_IN_PATH = slot_offset(ModelProvider, "model_in_path")
cdef Py_ssize_t V_UPSTREAM_PATHS = slot_offset(ModelProvider, "upstream_paths")
cdef Py_ssize_t V_EXTRA_LINES = slot_offset(ModelProvider, "extra_lines")
cdef Py_ssize_t V_HOST_LINE = slot_offset(ModelProvider, "host_line")
cdef Py_ssize_t V_ORIGIN = slot_offset(ModelProvider, "origin")
cdef Py_ssize_t N_NAME = slot_offset(Endpoint, "name")
cdef Py_ssize_t N_SCAN_API = slot_offset(Endpoint, "scan_api")
cdef Py_ssize_t N_WIRE_API = slot_offset(Endpoint, "wire_api")
cdef Py_ssize_t B_OPENED_AT = slot_offset(CircuitBreaker, "opened_at")
cdef Py_ssize_t F_STREAMING = slot_offset(HoldTerminal, "streaming")
cdef Py_ssize_t F_HELD = slot_offset(HoldTerminal, "held")
cdef Py_ssize_t F_TERMINAL = slot_offset(HoldTerminal, "terminal")

cdef type _Managed = ManagedExchange
cdef type _ManagedContext = ManagedContext
cdef type _State = ManagedState
cdef type _Endpoint = Endpoint
cdef type _Token = ProxyToken
cdef type _Pipe = ResolvedPipe
cdef type _Target = Target
cdef type _Provider = ModelProvider
cdef type _Circuit = CircuitBreaker
cdef type _HoldTerminal = HoldTerminal
cdef object _twin = _managed.start_py
cdef object _aim_twin = _managed.aim_py
cdef object _complete_twin = _managed.complete_py
cdef object _billed_twin = _managed.billed_py
cdef object _rows_of_events = _rows.rows_of_events
cdef object _deque = collections.deque
cdef object _CHAT_COMPLETIONS = CHAT_COMPLETIONS
cdef object _MESSAGES = MESSAGES
cdef object _COUNT_TOKENS = COUNT_TOKENS
cdef object _RESPONSES = RESPONSES
cdef object _key_hash = _phases.key_hash
cdef object _route = _managed._route
cdef object _with_max_tokens = _managed._with_max_tokens
cdef dict _CEILINGS = _managed._CEILINGS
cdef bytes _TOKEN_PREFIX = _managed._TOKEN_PREFIX_BYTES
if (_managed.start_py is not ManagedExchange.start or _managed.aim_py is not ManagedExchange.aim
        or _managed.complete_py is not ManagedExchange._complete or _managed.billed_py is not ManagedExchange._billed):
    raise ImportError("a ManagedExchange method is not its twin: the pure ones are used")


cdef inline bint _has(bytes body, bytes needle):
    """``body.find(needle) >= 0``."""
    return memmem(PyBytes_AS_STRING(body), <size_t>PyBytes_GET_SIZE(body),
                  PyBytes_AS_STRING(needle), <size_t>PyBytes_GET_SIZE(needle)) != NULL


cdef inline bint _space(char c):
    """A byte ``bytes.lstrip()`` strips (ASCII whitespace)."""
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r' or c == b'\x0b' or c == b'\x0c'


cdef bytes _with_ceiling(bytes body, object endpoint, object max_tokens, object provider_id):
    """``managed._with_max_tokens(body, endpoint, max_tokens, provider_id)``: the member
    inserted after the opening brace here when it can be; else (a ceiling not formatted
    yet, the name or an escape in the body) the twin's function, which parses."""
    ceiling = _CEILINGS.get((_get(endpoint, N_NAME, "name"), provider_id == "openai", max_tokens))
    if ceiling is None:
        return _with_max_tokens(body, endpoint, max_tokens, provider_id)
    cdef bytes quoted = (<tuple>ceiling)[1]
    cdef bytes member = (<tuple>ceiling)[2]
    cdef const char *data = PyBytes_AS_STRING(body)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t start = 0, after
    while start < size and _space(data[start]):
        start += 1
    if start == size or data[start] != b'{' or _has(body, quoted) or _has(body, b"\\u"):
        return _with_max_tokens(body, endpoint, max_tokens, provider_id)
    after = start + 1
    while after < size and _space(data[after]):
        after += 1
    sep = b"" if after < size and data[after] == b'}' else b","
    return b"".join((body[: start + 1], member, sep, body[start + 1 :]))


def aim(exchange, mctx, endpoint):
    """``ManagedExchange.aim`` (installed as it; ``managed.aim_py`` is the twin): the
    exchange's own slots written in place, not ~15 attribute writes of a Python frame."""
    if type(exchange) is not _Managed or type(endpoint) is not _Endpoint:
        return _aim_twin(exchange, mctx, endpoint)
    put_slot(exchange, M_MCTX, mctx)
    put_slot(exchange, M_ENDPOINT, endpoint)
    put_slot(exchange, X_ENDPOINT_NAME, _get(endpoint, N_NAME, "name"))
    put_slot(exchange, X_WIRE_FORMAT, _get(endpoint, N_WIRE_API, "wire_api"))
    put_slot(exchange, X_SCAN_API, _get(endpoint, N_SCAN_API, "scan_api"))
    put_slot(exchange, M_TARGETS, ())
    put_slot(exchange, M_FIELDS, None)
    put_slot(exchange, M_BASE_BODY, b"")
    put_slot(exchange, M_RESERVATION, None)
    put_slot(exchange, M_BILLING, None)
    put_slot(exchange, M_FINISH_IN_CALLBACK, False)
    put_slot(exchange, M_TOKEN_DIGEST, "")
    put_slot(exchange, M_USER_ID, None)
    put_slot(exchange, M_TOKEN_ID, None)
    put_slot(exchange, M_STATE_TURN, None)


cdef inline bint _names_a_container(bytes body) noexcept:
    """``responses_managed.names_a_container`` (the same three needles, by glibc's memmem:
    ~100 instructions for a 1 KB body where the twin's three ``bytes.find`` cost ~1k)."""
    cdef const char *p = PyBytes_AS_STRING(body)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(body)
    return (memmem(p, n, b"ontainer", 8) != NULL or memmem(p, n, b"\\u006", 5) != NULL
            or memmem(p, n, b"\\u007", 5) != NULL)


cdef inline bint _names_a_file(bytes body) noexcept:
    """``responses_managed.names_a_file`` (its four needles: the word by memmem, the three
    escapes only when the body holds a backslash at all, by memchr -- most bodies have
    none; the chat request's whole cost: +0.5k..1.5k instructions of ~324k, within
    callgrind's run-to-run spread, benchmarks/results/redfix-l-20261206.md)."""
    cdef const char *p = PyBytes_AS_STRING(body)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(body)
    if memmem(p, n, b"file_id", 7) != NULL:
        return True
    if memchr(p, 0x5c, n) == NULL:  # (no backslash: no escape)
        return False
    return (memmem(p, n, b"\\u006", 5) != NULL or memmem(p, n, b"\\u005f", 6) != NULL
            or memmem(p, n, b"\\u005F", 6) != NULL)


def start(exchange):
    """``ManagedExchange.start`` (installed as it; ``managed.start_py`` is the twin)."""
    if type(exchange) is not _Managed:
        return _twin(exchange)
    ctx = _get(exchange, X_CTX, "ctx")
    request = _get(exchange, X_REQUEST, "request")
    mctx = _get(exchange, M_MCTX, "mctx")
    endpoint = _get(exchange, M_ENDPOINT, "endpoint")
    if (type(ctx) is not _Context or type(request) is not _Request or type(mctx) is not _ManagedContext
            or type(endpoint) is not _Endpoint or endpoint is _RESPONSES or endpoint is _COUNT_TOKENS
            or _get(ctx, C_GUARDRAILS, "guardrails") is not None
            or _get(ctx, C_RATELIMITS, "ratelimits") is not None):
        return _twin(exchange)
    state = _get(mctx, G_STATE, "state")
    if type(state) is not _State or state.ready is not True:
        return _twin(exchange)  # (not loaded yet: its 503)
    client = _get(exchange, X_CLIENT, "client")
    if type(client) is not _ClientHeaders:
        return _twin(exchange)  # (read by dispatch; else client_headers and its refusals)
    credential = _get(client, H_CREDENTIAL, "credential")
    if type(credential) is not _Credential:
        return _twin(exchange)  # (no credential: its 401)
    secret = _get(credential, K_SECRET, "secret")
    if type(secret) is not bytes or not (<bytes>secret).startswith(_TOKEN_PREFIX):
        return _twin(exchange)  # (not a token: its 401)
    # -- identify: the token (ManagedState.lookup, its check without its note of the use)
    digest = _key_hash(secret)
    token = (<dict?>state.tokens).get(digest)
    if type(token) is not _Token or _get(token, P_REVOKED, "revoked") is not False:
        return _twin(exchange)  # (unknown or revoked: its 401)
    expires_at_ns = _get(token, P_EXPIRES_AT_NS, "expires_at_ns")
    cdef int64_t now_ns = _now_ns()
    if expires_at_ns is not None and expires_at_ns <= now_ns:
        return _twin(exchange)  # (expired: its 401)
    project_id = _get(token, P_PROJECT_ID, "project_id")
    user_id = _get(token, P_USER_ID, "user_id")
    hard_limits = state.hard_limits
    if hard_limits and state.hard_limited(project_id, user_id):
        return _twin(exchange)  # (a reservation to await: _run_awaited)
    pipe_id = _get(token, P_PIPE_ID, "pipe_id")
    pipe = (<dict?>state.pipes).get(pipe_id) if pipe_id is not None else state.pipe_for(token)
    if type(pipe) is not _Pipe:
        return _twin(exchange)  # (no pipe: its refusal)
    body = _get(request, Q_BODY, "body")
    if type(body) is not bytes or _names_a_file(<bytes>body) or (
            endpoint is _MESSAGES and _names_a_container(<bytes>body)):
        return _twin(exchange)  # (its refuse_stored_files / refuse_container_reuse parse it)
    try:
        fields = _scan_request(body)
    except _ScanError:
        return _twin(exchange)  # (its 400)
    model = fields.model
    endpoint_name = _get(endpoint, N_NAME, "name")
    targets = (<dict?>_get(pipe, R_ROUTES, "routes")).get((model, endpoint_name))
    if targets is None:
        targets = _route(pipe, model, endpoint)  # (kept on the pipe: a memo, no other effect)
    if type(targets) is not tuple or not targets:
        return _twin(exchange)  # (not served: its 400 naming the models)
    target = (<tuple>targets)[0]
    if type(target) is not _Target:
        return _twin(exchange)
    provider = _get(target, T_PROVIDER, "provider")
    if type(provider) is not _Provider or _get(provider, V_MODEL_IN_PATH, "model_in_path"):
        return _twin(exchange)
    target_model = _get(target, T_MODEL, "model")
    circuit_key = (_get(provider, V_NAME, "name"), target_model or model or "", _get(target, T_KEY_ID, "key_id"))
    circuit = (<dict?>_get(ctx, C_CIRCUITS, "circuits")).get(circuit_key)
    if circuit is not None and (type(circuit) is not _Circuit or _get(circuit, B_OPENED_AT, "opened_at") is not None):
        return _twin(exchange)  # (opened: _first_target's walk)
    upstream_model = target_model or model
    paths = _get(provider, V_UPSTREAM_PATHS, "upstream_paths")
    path = (<dict?>paths).get(endpoint_name) if endpoint_name in paths else (<dict?>paths)["responses"]
    if type(path) is not bytes:
        return _twin(exchange)
    provider_id = _get(provider, V_PROVIDER, "provider")
    stream = fields.stream
    inject = bool(stream) and endpoint is _CHAT_COMPLETIONS and fields.include_usage is not True
    changed = upstream_model != model
    try:
        max_out = fields.max_output_tokens
        if max_out is None:  # (_with_ceiling: the configured ceiling, sent so the bound holds)
            body = _with_ceiling(body, endpoint, _get(mctx, G_MAX_OUTPUT_TOKENS, "max_output_tokens"), provider_id)
        rewritten = body
        if inject or changed:
            # (looked up here, not at import: tests count its calls)
            rewritten = _wire.rewrite_request(
                body, model=upstream_model if changed else None, inject_include_usage=inject)
    except Exception:
        return _twin(exchange)  # (raised by the twin's own steps, after its side effects)
    scan_api = _get(exchange, X_SCAN_API, "scan_api")
    scanner = _UsageScanner(scan_api, stream, inject)
    native = endpoint is _MESSAGES
    auth = _get(target, T_MESSAGES_AUTH, "messages_auth") if native else _get(target, T_CHAT_AUTH, "chat_auth")
    lines = _get(target, T_MESSAGES_LINES, "messages_lines") if native else _get(target, T_CHAT_LINES, "chat_lines")
    head = (_get(request, Q_METHOD, "method"), b" ", path, b" HTTP/1.1\r\n",
            _get(client, H_OPERATOR_BLOCK, "operator_block"),
            (<tuple?>lines)[1] if _get(client, H_SEEN_VERSION, "seen_version") else (<tuple?>lines)[0],
            _get(provider, V_EXTRA_LINES, "extra_lines"),
            request_id_line_c(_get(client, H_REQUEST_ID, "request_id"), _get(exchange, X_REQUEST_ID, "request_id")),
            _get(provider, V_HOST_LINE, "host_line"),
            _content_length_line(len(rewritten), True))
    upstream_data = [b"".join(head), rewritten]
    if circuit is None:
        # The target's first request: its breaker made as the twin's _target_circuit(0)
        # makes it (a memo: a twin taking the request after this finds the same one), here
        # after the last step that can send the request to the twin.
        circuit = ctx.circuit_for(*circuit_key)
        if type(circuit) is not _Circuit or _get(circuit, B_OPENED_AT, "opened_at") is not None:
            return _twin(exchange)
    body_filter = new_instance(_HoldTerminal)
    put_slot(body_filter, F_STREAMING, stream)
    put_slot(body_filter, F_HELD, b"")
    put_slot(body_filter, F_TERMINAL, False)
    # -- the twin's side effects from here, in its order: _identify
    put_slot(exchange, M_TOKEN_DIGEST, digest)
    token_id = _get(token, P_ID, "id")
    state._last_used[token_id] = now_ns  # (ManagedState.lookup's note of the use)
    put_slot(exchange, X_REQUESTED_MODEL, model)
    put_slot(exchange, M_TARGETS, targets)
    put_slot(exchange, X_PROJECT_ID, project_id)
    put_slot(exchange, M_USER_ID, user_id)
    put_slot(exchange, M_TOKEN_ID, token_id)
    put_slot(exchange, X_STREAMING, stream)
    put_slot(exchange, X_BODY_FILTER, body_filter)
    # -- _first_attempt -> _prepare_target(0)
    put_slot(exchange, M_FIELDS, fields)
    put_slot(exchange, M_BASE_BODY, body)
    put_slot(exchange, X_CIRCUIT, circuit)
    put_slot(exchange, X_MODEL, upstream_model)
    put_slot(exchange, X_PROVIDER_ID, provider_id)
    put_slot(exchange, X_SCANNER, scanner)
    put_slot(exchange, X_OPERATOR_AUTH, auth)
    put_slot(exchange, X_UPSTREAM_DATA, upstream_data)
    put_slot(exchange, X_ORIGIN, _get(provider, V_ORIGIN, "origin"))
    # -- forward now (no task: the write's callback ends the response), or open first
    put_slot(exchange, M_FINISH_IN_CALLBACK, True)
    opening = forward_now_c(exchange)
    if opening is None:
        return None
    put_slot(exchange, M_FINISH_IN_CALLBACK, False)
    return exchange._finish_after(opening)


def complete(exchange, outcome):
    """``ManagedExchange._complete`` (installed as it; ``managed.complete_py`` is the twin)
    for an answer with no reservation to settle: its event, observed, its row, handed to
    the writer, and the held end released when the row is written already -- the twin's
    steps in its order, without its three frames (``_complete``, ``_event``,
    ``row_of_event``).  A reservation to settle goes to the twin."""
    if type(exchange) is not _Managed or _get(exchange, M_RESERVATION, "reservation") is not None:
        return _complete_twin(exchange, outcome)
    mctx = _get(exchange, M_MCTX, "mctx")
    ctx = _get(exchange, X_CTX, "ctx")
    if type(mctx) is not _ManagedContext or type(ctx) is not _Context:
        return _complete_twin(exchange, outcome)
    put_slot(exchange, X_OUTCOME, outcome)
    # -- _event
    event = exchange.make_event(outcome, _get(exchange, X_STATUS, "status"))
    event.user_id = _get(exchange, M_USER_ID, "user_id")
    event.token_id = _get(exchange, M_TOKEN_ID, "token_id")
    exchange.observe(event)
    put_slot(exchange, M_RESERVATION, None)
    # -- row_of_event
    out = _deque()
    _rows_of_events(_get(mctx, G_PRICING, "pricing"), (event,), out)
    row = out[0]
    # -- the writer owns the row now: a client leaving cancels only the wait
    writer = _get(mctx, G_WRITER, "writer")
    alone = writer.idle and writer.writes_now and _get(ctx, C_POOL, "pool").busy_count == 0
    then = exchange._billed if _get(exchange, M_FINISH_IN_CALLBACK, "finish_in_callback") else None
    billing = writer.write(row, event, alone, then)
    put_slot(exchange, M_BILLING, billing)
    if then is not None and billing.done():
        then(billing)  # written already: the end goes now, not a turn later


def billed(exchange, billing):
    """``ManagedExchange._billed`` (installed as it; ``managed.billed_py`` is the twin):
    unless the client has left, the held end released (``_release_end``, inline for
    managed mode's own body filter without a Responses turn)."""
    if type(exchange) is not _Managed:
        return _billed_twin(exchange, billing)
    responder = _get(exchange, X_RESPONDER, "responder")
    if _get(exchange, X_CLIENT_LEFT, "client_left") or not responder.client_connected:
        return None
    body_filter = _get(exchange, X_BODY_FILTER, "body_filter")
    if _get(exchange, M_STATE_TURN, "state_turn") is not None or type(body_filter) is not _HoldTerminal:
        return exchange._release_end()
    held = _get(body_filter, F_HELD, "held")
    if held:
        responder.send_body(held)
        put_slot(body_filter, F_HELD, b"")
    responder.end()


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
